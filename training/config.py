"""The training config with its features resolved from the one feature spec.

A config file may say ``feature_spec: ../feature_repo/features.yaml`` instead of listing
``features`` and ``feature_groups``; the model library does not know feature specs, so the
training library (which knows both) resolves the spec into the model's config here.
"""

from pathlib import Path
from typing import Any

from feature_repo.spec import SpecError, load_spec
from model import config as model_config
from model.config import Config, ConfigError


def resolve_feature_spec(data: dict[str, Any], path: Path) -> None:
    """Fill ``features``, ``feature_groups`` and the label, timestamp and group_key defaults
    (``data.*``, where the config does not set them; group_key where the spec has one) of a
    config's plain data from the feature spec its ``feature_spec`` key names (relative to
    the config file ``path``), in place."""
    spec_path = Path(str(data.pop("feature_spec")))
    if not spec_path.is_absolute():
        spec_path = path.parent / spec_path
    for key in ("features", "feature_groups"):
        if key in data:
            raise ConfigError(
                f"{path}: {key}: comes from feature_spec {spec_path}; do not list it too"
            )
    try:
        spec = load_spec(spec_path)
        section = spec.model_section()
    except SpecError as e:
        raise ConfigError(f"{path}: feature_spec: {e}") from None
    data["features"] = section["features"]
    data["feature_groups"] = section["feature_groups"]
    block = data.setdefault("data", {})
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: data: expected a mapping")
    block.setdefault("label", section["label"])
    block.setdefault("timestamp", section["timestamp"])
    if spec.group_key is not None:
        block.setdefault("group_key", spec.group_key)


def read_config_dict(path: str | Path) -> dict[str, Any]:
    """The plain data of a config file with its feature spec resolved (not validated)."""
    return model_config.read_config_dict(path, resolve_feature_spec)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """``model.config.load_config`` with ``feature_spec`` resolved: the config every
    training entry point (component, CLI, TrainJob node) trains with."""
    return model_config.load_config(path, overrides, resolve_spec=resolve_feature_spec)

"""The one feature spec (DESIGN.md section 4): ``features.yaml``, parsed and checked.

``load_spec()`` reads ``feature_repo/features.yaml`` into a ``FeatureSpec``. The rest of the
project derives from it or is checked against it: the Feast definitions (``definitions.py``),
the model's feature config (``FeatureSpec.model_section()``, ``check_model_config()``) and the
data validation suites (each column's ``dtype``, ``valid`` and ``nullable``). A wrong spec fails
on load with a ``SpecError`` that names the key, e.g.
``features.yaml: features[3] (age_level).view: unknown feature view 'user_profil' (known:
user_profile, ad_feature)``.

This module imports only the standard library and PyYAML, never Feast: the model library
reads the spec too.

Example::

    spec = load_spec()
    spec.columns()[:5]                            # user_id, adgroup_id, pid, event_timestamp, clk
    [f.name for f in spec.view_features("ad_feature")]  # cate_id, campaign_id, ..., price
    spec.feature("age_level").entity              # 'user'
    spec.feature_views["user_profile"].ttl        # timedelta(days=90)
    spec.model_section()["feature_groups"]["deep"][-1]  # 'log_price'
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

REPO_DIR = Path(__file__).resolve().parent
"""The Feast feature repo: this folder (feature_store.yaml, features.yaml, definitions.py)."""

SPEC_FILE = "features.yaml"
DATA_DIR_ENV = "DEEPFM_DATA_DIR"
"""Environment variable naming the folder of the source files (default: ``<repo>/data``)."""

DTYPES = ("int64", "float64", "string", "list<int64>")
"""Column types a spec may use (Feast: Int64, Float64, String, Array(Int64))."""

GROUPS = ("wide", "fm", "deep")
"""DeepFM feature groups, in the order of ``model_section()["feature_groups"]``."""

ENCODING_KEYS = (
    "type",
    "vocab",
    "hash_bucket_size",
    "num_buckets",
    "boundaries",
    "normalizer",
    "pooling",
    "max_length",
    "embedding_dim",
    "init_fn",
)
"""Keys of a model feature passed on verbatim to ``model.config.FeatureConfig`` (which
validates their values)."""

# model feature type -> the column dtypes it can encode
_MODEL_TYPES = {
    "id": ("int64", "string"),
    "multi_id": ("list<int64>",),
    "raw": ("int64", "float64"),
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class SpecError(ValueError):
    """The feature spec is wrong, or something disagrees with it; the message names the key."""


# ------------------------------------------------------------------------ the spec


@dataclass(frozen=True)
class Valid:
    """Allowed values of a column (of each element, for a list column): the closed range
    ``[min, max]`` (either end may be open) or the set ``values``."""

    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Entity:
    """What features describe, identified by one join key column (``user`` -> ``user_id``)."""

    name: str
    join_key: str
    description: str = ""


@dataclass(frozen=True)
class Source:
    """A table of rows with an event time: ``path`` is relative to the data directory."""

    name: str
    path: str
    timestamp_field: str
    description: str = ""


@dataclass(frozen=True)
class View:
    """A Feast feature view: the features of one entity read from one source. A version of
    an entity's features is valid from its timestamp until the next version, for at most
    ``ttl_days`` days."""

    name: str
    source: str
    entity: str
    ttl_days: int
    description: str = ""

    @property
    def ttl(self) -> timedelta:
        return timedelta(days=self.ttl_days)


@dataclass(frozen=True)
class ModelFeature:
    """One input of the model, made from ``column``: ``encoding`` holds FeatureConfig keys
    (``type``, ``vocab``, ``boundaries``, ...), ``groups`` the DeepFM groups it joins."""

    name: str
    column: str
    encoding: dict[str, Any]
    groups: tuple[str, ...]

    def config(self) -> dict[str, Any]:
        """This feature as one entry of a model config's ``features`` list."""
        column = {} if self.column == self.name else {"column": self.column}
        return {"name": self.name, **column, **copy.deepcopy(self.encoding)}


@dataclass(frozen=True)
class Feature:
    """A column of the training table, listed once in the spec.

    ``source`` is the table it is read from; ``view`` the feature view serving it (None for
    the entity rows' own columns: entity keys, request context, the label). ``entity`` is
    the entity it describes (for an entity key, the entity it identifies; None for context
    columns such as ``pid``).
    """

    name: str
    dtype: str
    source: str
    view: str | None = None
    entity: str | None = None
    valid: Valid | None = None
    nullable: bool = False
    description: str = ""
    model_features: tuple[ModelFeature, ...] = ()


@dataclass(frozen=True)
class FeatureSpec:
    """The parsed ``features.yaml``; see the file's header for what each key means."""

    path: Path
    label: Feature
    entities: dict[str, Entity]
    sources: dict[str, Source]
    entity_rows: str
    feature_views: dict[str, View]
    feature_service: str
    features: tuple[Feature, ...]

    @property
    def timestamp(self) -> str:
        """The event-time column of the entity rows and of the training table."""
        return self.sources[self.entity_rows].timestamp_field

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise SpecError(f"{self.path.name}: no feature named {name!r}")

    def view_features(self, view: str) -> list[Feature]:
        """The features served by feature view ``view``, in spec order."""
        if view not in self.feature_views:
            raise SpecError(
                f"{self.path.name}: unknown feature view {view!r} "
                f"(known: {', '.join(self.feature_views)})"
            )
        return [f for f in self.features if f.view == view]

    def entity_row_features(self) -> list[Feature]:
        """Features that are columns of the entity rows (entity keys, context), in spec order."""
        return [f for f in self.features if f.view is None]

    def columns(self) -> list[str]:
        """The training table's columns, in order: the entity rows' features, the timestamp,
        the label, then every view's features (the sample generator's ``flat`` table)."""
        return [
            *(f.name for f in self.entity_row_features()),
            self.timestamp,
            self.label.name,
            *(f.name for f in self.features if f.view is not None),
        ]

    def source_columns(self, source: str) -> dict[str, str]:
        """Column -> dtype that source ``source`` must hold, besides its timestamp field: the
        entity rows' features and the label, or a view's join key and features."""
        if source not in self.sources:
            raise SpecError(f"{self.path.name}: no source named {source!r}")
        if source == self.entity_rows:
            return {f.name: f.dtype for f in [*self.entity_row_features(), self.label]}
        (view,) = (v for v in self.feature_views.values() if v.source == source)
        key = self.entities[view.entity].join_key
        return {key: self.feature(key).dtype} | {
            f.name: f.dtype for f in self.view_features(view.name)
        }

    def source_path(self, source: str, repo_dir: str | Path | None = None) -> Path:
        """Absolute path of a source's file: its ``path`` under ``data_dir(repo_dir)``."""
        return data_dir(repo_dir) / self.sources[source].path

    def model_features(self) -> list[ModelFeature]:
        """Every model feature, in spec order (a column's in its own order)."""
        return [m for f in self.features for m in f.model_features]

    def model_section(self) -> dict[str, Any]:
        """The model config's feature part::

        {"features": [{"name": "user_id", "type": "id", ...}, ...],   # FeatureConfig YAML
         "feature_groups": {"wide": [...], "fm": [...], "deep": [...]},
         "label": "clk", "timestamp": "event_timestamp"}
        """
        model_features = self.model_features()
        return {
            "features": [m.config() for m in model_features],
            "feature_groups": {
                g: [m.name for m in model_features if g in m.groups] for g in GROUPS
            },
            "label": self.label.name,
            "timestamp": self.timestamp,
        }

    def check_model_config(
        self,
        features: list[dict[str, Any]],
        feature_groups: dict[str, list[str] | None],
        where: str = "the model config",
    ) -> None:
        """Raise SpecError naming the first feature in which a model config's ``features``
        and ``feature_groups`` (model.config YAML format) differ from ``model_section()``."""
        expected = self.model_section()
        want = {f["name"]: f for f in expected["features"]}
        have = {f.get("name"): f for f in features}
        spec = self.path.name
        for name in have:
            if name not in want:
                raise SpecError(f"{where}: feature {name!r} is not in {spec}")
        for name, config in want.items():
            if name not in have:
                raise SpecError(f"{where}: feature {name!r} of {spec} is missing")
            for key in sorted(set(config) | set(have[name])):
                if have[name].get(key) != config.get(key):
                    raise SpecError(
                        f"{where}: feature {name!r}.{key} is {have[name].get(key)!r}, "
                        f"{spec} says {config.get(key)!r}"
                    )
        for group in GROUPS:
            got, wanted = list(feature_groups.get(group) or []), expected["feature_groups"][group]
            for name in [*got, *wanted]:
                if (name in got) != (name in wanted):
                    state = "is in" if name in got else "is missing from"
                    raise SpecError(
                        f"{where}: feature {name!r} {state} feature_groups.{group}, unlike {spec}"
                    )
            if got != wanted:
                raise SpecError(
                    f"{where}: feature_groups.{group} is ordered {got}, {spec} gives {wanted}"
                )


def data_dir(repo_dir: str | Path | None = None) -> Path:
    """The absolute folder of the source files: ``$DEEPFM_DATA_DIR`` (a relative value is
    taken relative to the feature repo ``repo_dir``, as Feast takes its own paths), else
    ``<repo_dir>/data``. ``repo_dir`` defaults to ``REPO_DIR``."""
    repo = Path(repo_dir or REPO_DIR).resolve()
    return (repo / (os.environ.get(DATA_DIR_ENV) or "data")).resolve()


# ------------------------------------------------------------------------- loading


def load_spec(path: str | Path | None = None) -> FeatureSpec:
    """Read and validate a feature spec (default: ``features.yaml`` beside this file).

    Raises:
        SpecError: the file is missing or not YAML, or a key is unknown, missing or wrong;
            the message starts with the file name and the key.
    """
    path = Path(path) if path is not None else REPO_DIR / SPEC_FILE
    if not path.is_file():
        raise SpecError(f"feature spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"feature spec {path} is not valid YAML: {e}") from None
    try:
        return _parse(data, path)
    except SpecError as e:
        raise SpecError(f"{path.name}: {e}") from None


def _parse(data: Any, path: Path) -> FeatureSpec:
    top = _mapping(
        data,
        "",
        required=(
            "label",
            "entities",
            "sources",
            "entity_rows",
            "feature_views",
            "feature_service",
            "features",
        ),
    )
    entities = {
        name: Entity(name, **_fields(value, f"entities.{name}", ("join_key",), ("description",)))
        for name, value in _named(top["entities"], "entities").items()
    }
    sources = {
        name: Source(
            name,
            **_fields(value, f"sources.{name}", ("path", "timestamp_field"), ("description",)),
        )
        for name, value in _named(top["sources"], "sources").items()
    }
    entity_rows = _choice(top["entity_rows"], "entity_rows", sources, "source")
    views = {
        name: _view(value, f"feature_views.{name}", name, entities, sources, entity_rows)
        for name, value in _named(top["feature_views"], "feature_views").items()
    }
    service = _identifier(top["feature_service"], "feature_service")
    if not isinstance(top["features"], list) or not top["features"]:
        raise SpecError(f"features: expected a non-empty list, got {top['features']!r}")
    join_keys = {e.join_key: e.name for e in entities.values()}
    features = tuple(
        _feature(value, f"features[{i}]", entity_rows, views, join_keys)
        for i, value in enumerate(top["features"])
    )
    label = _label(top["label"], entity_rows)
    spec = FeatureSpec(path, label, entities, sources, entity_rows, views, service, features)
    _check_references(spec)
    return spec


def _view(
    value: Any,
    key: str,
    name: str,
    entities: dict[str, Entity],
    sources: dict[str, Source],
    entity_rows: str,
) -> View:
    raw = _mapping(value, key, ("source", "entity", "ttl_days"), ("description",))
    source = _choice(raw["source"], f"{key}.source", sources, "source")
    if source == entity_rows:
        raise SpecError(f"{key}.source: {entity_rows!r} holds the entity rows, not features")
    ttl = raw["ttl_days"]
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise SpecError(f"{key}.ttl_days: expected a whole number of days > 0, got {ttl!r}")
    return View(
        name=name,
        source=source,
        entity=_choice(raw["entity"], f"{key}.entity", entities, "entity"),
        ttl_days=ttl,
        description=_text(raw.get("description", ""), f"{key}.description"),
    )


def _feature(
    value: Any,
    key: str,
    entity_rows: str,
    views: dict[str, View],
    join_keys: dict[str, str],
) -> Feature:
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        key = f"{key} ({value['name']})"
    raw = _mapping(
        value,
        key,
        required=("name", "dtype"),
        optional=("source", "view", "valid", "nullable", "description", "model_features"),
    )
    name = _identifier(raw["name"], f"{key}.name")
    if ("source" in raw) == ("view" in raw):
        raise SpecError(
            f"{key}: give exactly one of source (for a column of the entity rows, "
            f"{entity_rows!r}) or view (the feature view serving it)"
        )
    if "view" in raw:
        view = views[_choice(raw["view"], f"{key}.view", views, "feature view")]
        source, entity = view.source, view.entity
    else:
        if raw["source"] != entity_rows:
            raise SpecError(
                f"{key}.source: must be the entity rows ({entity_rows!r}), got "
                f"{raw['source']!r}; columns of other sources are served by a view"
            )
        view, source, entity = None, entity_rows, join_keys.get(name)
    dtype = _dtype(raw["dtype"], f"{key}.dtype")
    nullable = raw.get("nullable", False)
    if not isinstance(nullable, bool):
        raise SpecError(f"{key}.nullable: expected true or false, got {nullable!r}")
    model_features = raw.get("model_features", [])
    if not isinstance(model_features, list):
        raise SpecError(f"{key}.model_features: expected a list, got {model_features!r}")
    return Feature(
        name=name,
        dtype=dtype,
        source=source,
        view=view.name if view else None,
        entity=entity,
        valid=_valid(raw["valid"], f"{key}.valid", dtype) if "valid" in raw else None,
        nullable=nullable,
        description=_text(raw.get("description", ""), f"{key}.description"),
        model_features=tuple(
            _model_feature(m, f"{key}.model_features[{j}]", name, dtype)
            for j, m in enumerate(model_features)
        ),
    )


def _label(value: Any, entity_rows: str) -> Feature:
    raw = _mapping(value, "label", ("name", "dtype"), ("valid", "description"))
    name = _identifier(raw["name"], "label.name")
    dtype = _dtype(raw["dtype"], "label.dtype")
    return Feature(
        name=name,
        dtype=dtype,
        source=entity_rows,
        valid=_valid(raw["valid"], "label.valid", dtype) if "valid" in raw else None,
        description=_text(raw.get("description", ""), "label.description"),
    )


def _model_feature(value: Any, key: str, column: str, dtype: str) -> ModelFeature:
    raw = _mapping(value, key, required=("type", "groups"), optional=("name", *ENCODING_KEYS))
    name = _identifier(raw.get("name", column), f"{key}.name")
    kind = _choice(raw["type"], f"{key}.type", _MODEL_TYPES, "model feature type")
    if dtype not in _MODEL_TYPES[kind]:
        raise SpecError(
            f"{key}.type: type {kind} needs dtype {' or '.join(_MODEL_TYPES[kind])}, "
            f"the column is {dtype}"
        )
    groups = raw["groups"]
    if not isinstance(groups, list) or not groups:
        raise SpecError(f"{key}.groups: expected a non-empty list of {GROUPS}, got {groups!r}")
    for j, group in enumerate(groups):
        _choice(group, f"{key}.groups[{j}]", GROUPS, "group")
    if len(set(groups)) != len(groups):
        raise SpecError(f"{key}.groups: a group is listed twice in {groups}")
    encoding = {k: v for k, v in raw.items() if k in ENCODING_KEYS}
    return ModelFeature(name, column, encoding, tuple(groups))


def _valid(value: Any, key: str, dtype: str) -> Valid:
    raw = _mapping(value, key, optional=("min", "max", "values"))
    if not raw or ("values" in raw and len(raw) > 1):
        raise SpecError(f"{key}: give min and/or max, or values, got {raw!r}")
    element = dtype.removeprefix("list<").removesuffix(">")
    if "values" in raw:
        values = raw["values"]
        if not isinstance(values, list) or not values:
            raise SpecError(f"{key}.values: expected a non-empty list, got {values!r}")
        for j, v in enumerate(values):
            if not _is_scalar(v, element):
                quote = " (quote it in YAML)" if element == "string" else ""
                raise SpecError(f"{key}.values[{j}]: {v!r} is not a {element} value{quote}")
        if len(set(values)) != len(values):
            raise SpecError(f"{key}.values: a value is listed twice in {values}")
        return Valid(values=tuple(values))
    if element == "string":
        raise SpecError(f"{key}: a string column takes values, not min/max")
    for end in ("min", "max"):
        if end in raw and not _is_scalar(raw[end], "float64"):
            raise SpecError(f"{key}.{end}: expected a number, got {raw[end]!r}")
    low, high = raw.get("min"), raw.get("max")
    if low is not None and high is not None and low > high:
        raise SpecError(f"{key}: min {low} is greater than max {high}")
    return Valid(min=low, max=high)


def _check_references(spec: FeatureSpec) -> None:
    """Cross-key checks: unique names, join keys, every view, source and entity used."""
    seen: dict[str, str] = {}
    columns = [
        *((f"features[{i}]", f.name) for i, f in enumerate(spec.features)),
        ("label", spec.label.name),
        (f"sources.{spec.entity_rows}.timestamp_field", spec.timestamp),
    ]
    for key, name in columns:
        if name in seen:
            raise SpecError(f"{key}: duplicate column name {name!r} (also {seen[name]})")
        seen[name] = key
    model_names: dict[str, str] = {}
    for i, f in enumerate(spec.features):
        for j, m in enumerate(f.model_features):
            key = f"features[{i}] ({f.name}).model_features[{j}]"
            if m.name in model_names:
                raise SpecError(
                    f"{key}.name: duplicate model feature name {m.name!r} "
                    f"(also {model_names[m.name]})"
                )
            model_names[m.name] = key
    for name, entity in spec.entities.items():
        key = next((f for f in spec.features if f.name == entity.join_key), None)
        if key is None or key.view is not None:
            raise SpecError(
                f"entities.{name}.join_key: {entity.join_key!r} must be a feature with "
                f"source {spec.entity_rows!r} (a column of the entity rows)"
            )
        if key.dtype not in ("int64", "string"):
            raise SpecError(
                f"entities.{name}.join_key: {entity.join_key!r} has dtype {key.dtype}; "
                "a join key is int64 or string"
            )
        if not any(v.entity == name for v in spec.feature_views.values()):
            raise SpecError(f"entities.{name}: no feature view describes this entity")
    for name in spec.sources:
        readers = [v.name for v in spec.feature_views.values() if v.source == name]
        if name != spec.entity_rows and len(readers) != 1:
            raise SpecError(
                f"sources.{name}: read by {len(readers)} feature views {readers}; "
                "each feature source feeds exactly one"
            )
    for name in spec.feature_views:
        if not spec.view_features(name):
            raise SpecError(f"feature_views.{name}: no feature names this view")


# -------------------------------------------------------------------------- helpers


def _mapping(
    value: Any, key: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check that ``value`` is a mapping with all ``required`` keys and no others."""
    where = key or "the top level"
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a mapping, got {value!r}")
    prefix = f"{key}." if key else ""
    allowed = tuple(dict.fromkeys((*required, *optional)))
    for k in value:
        if k not in allowed:
            raise SpecError(f"{prefix}{k}: unknown key (allowed: {', '.join(allowed)})")
    for k in required:
        if k not in value:
            raise SpecError(f"{prefix}{k}: required key is missing")
    return value


def _fields(
    value: Any, key: str, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, Any]:
    """A mapping of strings: the required and optional keys, checked."""
    raw = _mapping(value, key, required, optional)
    return {k: _text(v, f"{key}.{k}", empty=k == "description") for k, v in raw.items()}


def _named(value: Any, key: str) -> dict[str, Any]:
    """A non-empty mapping of name -> definition, each name a valid identifier."""
    if not isinstance(value, dict) or not value:
        raise SpecError(f"{key}: expected a non-empty mapping of name -> definition")
    for name in value:
        _identifier(name, f"{key}.{name}")
    return value


def _identifier(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise SpecError(f"{key}: expected a name of letters, digits and _, got {value!r}")
    return value


def _text(value: Any, key: str, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise SpecError(f"{key}: expected a {'' if empty else 'non-empty '}string, got {value!r}")
    return value


def _choice(value: Any, key: str, known: Any, what: str) -> str:
    if not isinstance(value, str) or value not in known:
        raise SpecError(f"{key}: unknown {what} {value!r} (known: {', '.join(known)})")
    return value


def _dtype(value: Any, key: str) -> str:
    if value not in DTYPES:
        raise SpecError(f"{key}: unknown dtype {value!r} (known: {', '.join(DTYPES)})")
    return value


def _is_scalar(value: Any, dtype: str) -> bool:
    """Whether a YAML value fits a column of scalar ``dtype`` (int64, float64 or string)."""
    if dtype == "string":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (dtype == "float64" and isinstance(value, float))

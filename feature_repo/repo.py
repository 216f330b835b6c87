"""A feature repo as a directory, written from a spec's text.

A feature repo is a folder holding ``features.yaml`` (the spec), ``feature_store.yaml``
(Feast's local profile: duckdb offline store, sqlite online store and a registry file, all
under the folder's ``data/``), a three-line ``definitions.py`` that builds the Feast objects
from the spec beside it (``feature_repo.definitions.objects_for_repo``), ``deepfm.yaml`` (a
model config reading its features from the spec) and ``data/``, the default folder of the
source files (``$DEEPFM_DATA_DIR`` overrides it, see ``spec.data_dir``). The project's own
``feature_repo/`` is such a folder for the sample data.

Example::

    repo = write_repo_files("retail", Path("retail.yaml").read_text())
    # then: deepfm features apply --repo retail
"""

from __future__ import annotations

import re
from pathlib import Path

from feature_repo.spec import SPEC_FILE, load_spec

FEATURE_STORE_FILE = "feature_store.yaml"
DEFINITIONS_FILE = "definitions.py"
MODEL_CONFIG_FILE = "deepfm.yaml"
DATA_DIR = "data"

DEFINITIONS_SHIM = """\
from pathlib import Path
from feature_repo.definitions import objects_for_repo
globals().update(objects_for_repo(Path(__file__).resolve().parent))
"""
"""The ``definitions.py`` of a repo other than the project's own: every Feast object built
from the ``features.yaml`` beside it, as module globals (what ``feast apply`` collects)."""

FEATURE_STORE_YAML = """\
# Local profile of this feature repo: `deepfm features apply --repo <this folder>`.
# Relative paths are relative to this folder (Feast resolves them against the repo).
project: {project}
provider: local
registry: {data}/registry.db
online_store:
  type: sqlite
  path: {data}/online_store.db
# duckdb, not the `file` (dask) store: the file store drops entity rows older than a TTL.
offline_store:
  type: duckdb
entity_key_serialization_version: 3
"""

MODEL_CONFIG_YAML = f"""\
# Model and training config; the features, groups, label and timestamp come from the spec.
feature_spec: {SPEC_FILE}
model:
  deep: {{hidden_units: [256, 128, 64]}}
  wide_embedding_dim: 4
  metrics: [auc, logloss, grouped_auc, normalized_entropy, calibration]
# up to 10 epochs, stopped early on the last 10% of the training rows (as configs/deepfm.yaml)
train:
  batch_size: 1024
  num_epochs: 10
  seed: 42
  sparse_optimizer: {{type: adam, lr: 0.001}}
  dense_optimizer: {{type: adam, lr: 0.001}}
"""


def project_name(name: str) -> str:
    """A Feast project name from a folder name: letters, digits and underscores, starting
    with a letter (``my-data.v2`` -> ``my_data_v2``, ``2024`` -> ``repo_2024``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "repo"
    return cleaned if cleaned[0].isalpha() else f"repo_{cleaned}"


def write_repo_files(
    repo_dir: str | Path,
    spec_text: str,
    *,
    project: str | None = None,
    check: bool = True,
) -> Path:
    """Write a feature repo into ``repo_dir`` (created if missing): ``features.yaml`` with
    ``spec_text``, ``feature_store.yaml`` (Feast project ``project``, default derived from
    the folder's name), the ``definitions.py`` shim, ``deepfm.yaml`` and an empty ``data/``.
    Existing files of those names are replaced; source files in ``data/`` are kept.

    ``check``: load the written spec first, so a wrong one fails with the ``SpecError`` of
    ``load_spec`` before the other files are written.

    Returns the repo folder (absolute).
    """
    repo = Path(repo_dir).resolve()
    repo.mkdir(parents=True, exist_ok=True)
    (repo / SPEC_FILE).write_text(spec_text)
    if check:
        load_spec(repo / SPEC_FILE)
    name = project_name(project if project is not None else repo.name)
    (repo / FEATURE_STORE_FILE).write_text(FEATURE_STORE_YAML.format(project=name, data=DATA_DIR))
    (repo / DEFINITIONS_FILE).write_text(DEFINITIONS_SHIM)
    (repo / MODEL_CONFIG_FILE).write_text(MODEL_CONFIG_YAML)
    (repo / DATA_DIR).mkdir(exist_ok=True)
    return repo

"""End to end (slow): the whole pipeline under kfp.local, as ``make run`` runs it.

A copy of the Feast repo over a small sample; the registry in a temporary folder. Each
run's components execute in subprocesses of this interpreter (SubprocessRunner).
"""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_datasets import check_the_pushed_model_serves_as_evaluated

from feature_repo import store
from feature_repo.sample_data import generate
from feature_repo.spec import REPO_DIR, load_spec
from model.export import load
from model.metrics import auc
from pipelines.local_run import run_local
from registry.model_registry import POINTER, read_current

pytestmark = pytest.mark.slow

ROWS = 40_000
# One epoch per run (the run's `epochs` parameter): on the sample early stopping keeps the
# first epoch's weights anyway (the same AUCs as up to 10 epochs with early stopping).
EPOCHS = 1
REPO_FILES = ["features.yaml", "feature_store.yaml", ".feastignore"]
# Names come from the project's spec (the sample's).
SPEC = load_spec()
SOURCES = list(SPEC.sources)
LABEL = SPEC.label.name
# the weak model's inputs: the request context and a view's feature with a small value set
(CONTEXT,) = (f.name for f in SPEC.context_features())
FEW_VALUES = next(f.name for f in SPEC.features if f.view and f.valid and f.valid.values)


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("DEEPFM_DATA_DIR", raising=False)
    root = tmp_path / "feature_repo"
    (root / "data").mkdir(parents=True)
    for name in REPO_FILES:
        shutil.copy(REPO_DIR / name, root / name)
    sample = tmp_path / "sample"
    generate(ROWS, seed=3, out_dir=sample)
    for name in SOURCES:
        shutil.copy(sample / f"{name}.parquet", root / "data")
    store.apply(root)
    return root


def _config(tmp_path: Path, name: str, **overrides) -> str:
    """configs/deepfm.yaml with smaller layers (and ``overrides``), as a file."""
    raw = yaml.safe_load((REPO_DIR.parent / "configs" / "deepfm.yaml").read_text())
    raw["feature_spec"] = str(REPO_DIR.parent / "feature_repo" / "features.yaml")
    raw["model"]["deep"]["hidden_units"] = [64, 32]
    raw["train"]["batch_size"] = 512
    for key, value in overrides.items():
        raw[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _weak_config(tmp_path: Path) -> str:
    """A model that sees only the request context and one feature of a few values: clearly
    worse."""
    weak = [CONTEXT, FEW_VALUES]
    raw = {
        "data": {"label": LABEL, "timestamp": SPEC.timestamp, "group_key": SPEC.group_key},
        "features": [
            {"name": name, "type": "id", "vocab": {"min_count": 1}, "embedding_dim": 8}
            for name in weak
        ],
        "feature_groups": {"wide": weak, "deep": weak},
        "model": {"deep": {"hidden_units": [8]}},
        "train": {"batch_size": 512},
    }
    path = tmp_path / "weak.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _run(tmp_path, repo, registry, **params):
    return run_local(
        params,
        pipeline_root=tmp_path / "runs",
        feature_repo=repo,
        push_destination=registry,
    )


def test_a_blessed_model_is_pushed_then_a_worse_one_is_not(tmp_path, repo):
    registry = tmp_path / "registry"
    first = _run(
        tmp_path,
        repo,
        registry,
        model_config=_config(tmp_path, "good"),
        min_auc=0.6,
        max_auc_drop=0.01,
        epochs=EPOCHS,
    )
    assert first["blessed"] is True and first["pushed"] is True
    assert first["baseline_auc"] is None  # nothing to compare with: the threshold alone
    current = read_current(str(registry))
    assert current is not None and current["metrics"]["auc"] == pytest.approx(first["auc"])

    # the pushed directory alone reproduces the evaluation's scores
    run_dir = Path(first["run_dir"])
    eval_df = pd.read_parquet(run_dir / "features" / "eval_data")
    model = load(current["uri"])
    scores = model.predict(eval_df)
    assert auc(eval_df[LABEL].to_numpy(), scores) == first["auc"]
    assert np.isfinite(scores).all()
    assert first["report"].endswith("report.html")
    assert first["validation_report"].endswith("report.html")
    assert Path(first["report"]).read_text().count("BLESSED") >= 1
    assert "Data validation passed" in Path(first["validation_report"]).read_text()
    pointer_before = (registry / POINTER).read_bytes()

    # a clearly worse model: gated against the blessed one on the same eval rows
    second = _run(
        tmp_path,
        repo,
        registry,
        model_config=_weak_config(tmp_path),
        min_auc=0.0,  # no threshold: only the comparison with the blessed model can refuse
        max_auc_drop=0.01,
        epochs=EPOCHS,
    )
    assert second["blessed"] is False and second["pushed"] is False
    assert second["baseline_auc"] == pytest.approx(first["auc"])
    assert second["auc"] < first["auc"] - 0.01
    assert (registry / POINTER).read_bytes() == pointer_before
    assert (Path(second["run_dir"]) / "record-not-pushed").is_dir()
    report = Path(second["report"]).read_text()
    assert "NOT BLESSED" in report and "worse than the blessed model" in report

    # the sample's whole pipeline run (test_datasets runs none of its own): the blessed
    # model, still the current one, scores as evaluated, offline, online and served
    check_the_pushed_model_serves_as_evaluated(
        load_spec(repo / "features.yaml"), repo, registry, first
    )


def test_corrupted_data_stops_at_validation_with_the_report(tmp_path, repo):
    path = SPEC.source_path(SPEC.entity_rows, repo)
    df = pd.read_parquet(path)
    df.loc[df.index[:5], LABEL] = 2
    df.to_parquet(path, index=False)
    registry = tmp_path / "registry"
    with pytest.raises(RuntimeError, match="require-valid-data"):
        _run(tmp_path, repo, registry, model_config=_config(tmp_path, "good"))
    (run_dir,) = (tmp_path / "runs").glob("deepfm-ctr-*")
    report = (run_dir / "validate" / "report.html").read_text()
    assert "expect_column_values_to_be_in_set" in report and LABEL in report
    for step in ("features", "train", "evaluate", "push"):
        assert not (run_dir / step).exists(), step
    assert read_current(str(registry)) is None

"""Run the SAME pipeline locally with ``kfp.local`` (``SubprocessRunner(use_venv=False)``:
every component runs in this virtual environment), on the local Feast repo, pushing to a
local registry folder. This is what ``make run`` does after preparing the data.
"""

from __future__ import annotations

import json
import math
import warnings
from datetime import timedelta
from pathlib import Path

import pandas as pd

from pipelines.pipeline import PIPELINE_NAME, PipelineOptions, build_pipeline

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PIPELINE_ROOT = PROJECT_ROOT / "local_outputs"
DEFAULT_REGISTRY = PROJECT_ROOT / "artifacts" / "registry"
DEFAULT_FEATURE_REPO = PROJECT_ROOT / "feature_repo"


def sample_window(feature_repo: str | Path) -> dict:
    """The window that covers every impression of the local data: ``window_end`` just
    after the last one, ``window_days`` back to (before) the first."""
    from feature_repo.spec import load_spec

    repo = Path(feature_repo)
    spec = load_spec(repo / "features.yaml")
    path = spec.source_path(spec.entity_rows, repo)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: generate the sample first "
            f"(deepfm data generate --out {path.parent})"
        )
    ts = pd.read_parquet(path, columns=[spec.timestamp])[spec.timestamp]
    end = ts.max() + timedelta(seconds=1)
    days = math.ceil((end - ts.min()) / timedelta(days=1) * 1000) / 1000
    return {"window_end": end.isoformat(), "window_days": days}


def run_local(
    params: dict | None = None,
    *,
    pipeline_root: str | Path = DEFAULT_PIPELINE_ROOT,
    feature_repo: str | Path = DEFAULT_FEATURE_REPO,
    push_destination: str | Path = DEFAULT_REGISTRY,
) -> dict:
    """Run the pipeline with ``kfp.local``; returns a summary: the run folder, the
    evaluation (AUC, baseline AUC, blessed), where the model went and the report."""
    from kfp import local

    feature_repo = Path(feature_repo).resolve()
    run_params = {
        **sample_window(feature_repo),
        "feature_repo": str(feature_repo),
        "push_destination": str(push_destination),
        **(params or {}),
    }
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.glob(f"{PIPELINE_NAME}-*"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    pipeline = build_pipeline(PipelineOptions(image="python:3.11"))
    with warnings.catch_warnings():
        # resources and accelerators have no effect locally; kfp says so for every task
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        pipeline(**run_params)
    runs = sorted(set(root.glob(f"{PIPELINE_NAME}-*")) - before)
    if not runs:
        raise RuntimeError(f"the local run left no output under {root}")
    return summarize(runs[-1], run_params["push_destination"])


def _outputs(task_dir: Path) -> dict:
    path = task_dir / "executor_output.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("parameterValues", {})


def summarize(run_dir: Path, push_destination: str) -> dict:
    """What a local run did, read from its folder and the registry pointer."""
    from registry.model_registry import read_current

    evaluation = _outputs(run_dir / "evaluate")
    pushed = (run_dir / "push").is_dir()
    summary = {
        "run_dir": str(run_dir),
        "auc": evaluation.get("auc"),
        "baseline_auc": None
        if evaluation.get("baseline_auc", -1) < 0
        else evaluation["baseline_auc"],
        "blessed": evaluation.get("blessed"),
        "pushed": pushed,
        "report": str(run_dir / "evaluate" / "report"),
        "validation_report": str(run_dir / "validate" / "report"),
        "current_model": read_current(str(push_destination)),
    }
    return summary

"""Step 4, evaluate and gate: metrics of the candidate and of the current blessed model on
the same eval data, and the blessing decision (``evaluation.gate``).

The baseline is the model the push destination's pointer names, scored here on the SAME
rows, not its recorded AUC. A baseline that cannot score these rows (its features are not
in the data) is reported and ignored, so a changed feature set is not blocked forever.
"""

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation.curves import calibration_table, confusion_at_base_rate, roc_curve
from evaluation.gate import gate


@dataclass
class Evaluation:
    """The gate's inputs and decision; ``roc`` is (fpr, tpr, threshold) triples,
    ``calibration`` (mean prediction, positive rate, rows) per score decile, both for the
    candidate; ``baseline_roc`` and ``baseline_calibration`` the same for the blessed model
    (empty without one); ``history`` the candidate's per-epoch training records (``epoch``
    and metric keys such as ``train_loss``, ``eval_auc``, ``eval_logloss``)."""

    blessed: bool
    reason: str
    auc: float
    baseline_auc: float | None
    metrics: dict[str, float]
    baseline_metrics: dict[str, float] | None
    baseline_version: str | None
    min_auc: float
    max_auc_drop: float
    roc: list[tuple[float, float, float]] = field(default_factory=list)
    confusion_threshold: float = 0.5
    confusion_matrix: list[list[int]] = field(default_factory=list)
    calibration: list[tuple[float, float, int]] = field(default_factory=list)
    baseline_roc: list[tuple[float, float, float]] = field(default_factory=list)
    baseline_calibration: list[tuple[float, float, int]] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def read_history(model_dir: str | Path) -> list[dict]:
    """The per-epoch records of ``metrics.json``'s ``history`` in a model directory (those
    with a numeric ``epoch``); empty when the file or the history is missing."""
    path = Path(model_dir) / "metrics.json"
    try:
        history = json.loads(path.read_text()).get("history") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [
        r
        for r in history
        if isinstance(r, dict) and isinstance(r.get("epoch"), int | float) and r["epoch"] >= 0
    ]


def _score(model_dir: str | Path, eval_df):
    from model.export import load
    from model.metrics import binary_metrics

    model = load(model_dir)
    labels = eval_df[model.cfg.data.label].to_numpy(dtype=np.float64)
    scores = model.predict(eval_df)
    key = model.cfg.data.group_key
    groups = eval_df[key].to_numpy() if key and key in eval_df.columns else None
    names = [m for m in model.cfg.model.metrics if m != "grouped_auc" or groups is not None]
    return binary_metrics(labels, scores, names, groups), labels, scores, model.cfg.data.label


def evaluate_model(
    model_dir: str | Path,
    eval_path: str | Path,
    destination: str,
    min_auc: float,
    max_auc_drop: float,
) -> Evaluation:
    """Score the candidate and the destination's current blessed model on ``eval_path``
    (a parquet file or a shard folder) and apply the gate."""
    import pandas as pd

    from feature_repo import shards
    from registry.model_registry import fetch_model, read_current

    if shards.is_shard_folder(eval_path):
        eval_df = shards.load_frame(eval_path)
    else:
        eval_df = pd.read_parquet(eval_path)
    if eval_df.empty:
        raise ValueError(f"eval data {eval_path}: no rows; the AUC cannot be computed")
    metrics, labels, scores, label = _score(model_dir, eval_df)
    if not np.isfinite(metrics["auc"]):
        raise ValueError(
            f"eval data {eval_path}: the AUC is undefined: column {label!r} holds one class only "
            f"({labels[0]:g}) in {len(labels):,} rows"
        )
    metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}  # JSON has no NaN
    baseline_metrics, baseline_scores, baseline_version, note = None, None, None, ""
    current = read_current(destination) if destination else None
    if current is not None:
        baseline_version = current["version"]
        with tempfile.TemporaryDirectory() as tmp:
            local = fetch_model(destination, Path(tmp) / "baseline")
            try:
                baseline_metrics, _, baseline_scores, _ = _score(local, eval_df)
            except (KeyError, ValueError) as e:  # its features are not in this data
                note = f" (blessed model {baseline_version} cannot score this data: {e})"
                baseline_metrics, baseline_scores = None, None
    baseline_auc = None if baseline_metrics is None else baseline_metrics["auc"]
    blessed, reason = gate(metrics["auc"], baseline_auc, min_auc, max_auc_drop)
    threshold, matrix = confusion_at_base_rate(labels, scores)
    has_baseline = baseline_scores is not None
    return Evaluation(
        blessed=blessed,
        reason=reason + note,
        auc=metrics["auc"],
        baseline_auc=baseline_auc,
        metrics=metrics,
        baseline_metrics=baseline_metrics,
        baseline_version=baseline_version,
        min_auc=min_auc,
        max_auc_drop=max_auc_drop,
        roc=roc_curve(labels, scores),
        confusion_threshold=threshold,
        confusion_matrix=matrix,
        calibration=calibration_table(labels, scores),
        baseline_roc=roc_curve(labels, baseline_scores) if has_baseline else [],
        baseline_calibration=calibration_table(labels, baseline_scores) if has_baseline else [],
        history=read_history(model_dir),
    )

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

from evaluation.curves import (
    CALIBRATION_BINS,
    ROC_POINTS,
    calibration_table,
    confusion_at_base_rate,
    roc_curve,
)
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


def _streams(model_dir: str | Path, rows: int) -> bool:
    """Whether the candidate's ``data.streaming`` streams ``rows`` rows."""
    from model.export import load
    from model.stream import should_stream

    return should_stream(load(model_dir).cfg, rows)


def evaluate_model(
    model_dir: str | Path,
    eval_path: str | Path,
    destination: str,
    min_auc: float,
    max_auc_drop: float,
) -> Evaluation:
    """Score the candidate and the destination's current blessed model on ``eval_path``
    (a parquet file or a shard folder) and apply the gate. A shard folder that the
    candidate's ``data.streaming`` streams (``model.stream.should_stream``) is scored a
    batch at a time (``_evaluate_streamed``), never loaded whole."""
    import pandas as pd

    from feature_repo import shards
    from registry.model_registry import fetch_model, read_current

    if shards.is_shard_folder(eval_path):
        manifest = shards.read_manifest(eval_path)
        if _streams(model_dir, manifest.rows):
            return _evaluate_streamed(model_dir, manifest, destination, min_auc, max_auc_drop)
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


def _evaluate_streamed(
    model_dir: str | Path, manifest, destination: str, min_auc: float, max_auc_drop: float
) -> Evaluation:
    """``evaluate_model`` on a shard folder read a batch at a time: the candidate and the
    blessed model score each batch into ``model.stream.StreamedMetrics`` (memory: one batch
    and the score histograms, whatever the rows). The AUC comes with ``auc_error_bound``
    (the most it can differ from the exact AUC); ROC points, the confusion matrix at the
    base rate and the calibration deciles are read off the same histograms, at the
    resolution of a bin (1/``AUC_BINS`` of the score range): the deciles split at bin
    edges, the threshold is a bin's lower edge. ``grouped_auc`` is exact, as in memory
    (where the data has the model's ``data.group_key`` column): the rows' group key hashes,
    labels and scores are spilled to hash partitions on disk, read back one at a time
    (``model.group_spill``)."""
    from model.export import load
    from model.stream import StreamedMetrics, file_pieces, iter_frames
    from registry.model_registry import fetch_model, read_current

    pieces = file_pieces([str(p) for p in manifest.paths()], [f.rows for f in manifest.files])
    if not pieces:
        raise ValueError(f"eval data {manifest.folder}: no rows; the AUC cannot be computed")
    candidate = load(model_dir)
    label = candidate.cfg.data.label
    key = _group_key(candidate, manifest)
    names = [m for m in candidate.cfg.model.metrics if m != "grouped_auc" or key]
    ours = StreamedMetrics(grouped=key is not None, rows=manifest.rows)
    theirs, baseline, baseline_version, note = None, None, None, ""
    their_key = None
    current = read_current(destination) if destination else None
    with tempfile.TemporaryDirectory() as tmp, ours:
        if current is not None:
            baseline_version = current["version"]
            baseline = load(fetch_model(destination, Path(tmp) / "baseline"))
            their_key = _group_key(baseline, manifest)
            theirs = StreamedMetrics(grouped=their_key is not None, rows=manifest.rows)
        try:
            for df in iter_frames(pieces):
                if label not in df.columns:
                    raise ValueError(f"eval data {manifest.folder}: column {label!r} is missing")
                groups = None if key is None else df[key].to_numpy()
                ours.add(df[label].to_numpy(dtype=np.float64), candidate.predict(df), groups)
                if theirs is not None:
                    try:
                        y = df[baseline.cfg.data.label].to_numpy(dtype=np.float64)
                        groups = None if their_key is None else df[their_key].to_numpy()
                        theirs.add(y, baseline.predict(df), groups)
                    except (KeyError, ValueError) as e:  # its features are not in this data
                        note = f" (blessed model {baseline_version} cannot score this data: {e})"
                        theirs.close()
                        theirs = None
            metrics = ours.result(names)
            their_names = [m for m in names if m != "grouped_auc" or their_key]
            baseline_metrics = None if theirs is None else theirs.result(their_names)
        finally:
            if theirs is not None:
                theirs.close()
    if not np.isfinite(metrics["auc"]):
        raise ValueError(
            f"eval data {manifest.folder}: the AUC is undefined: column {label!r} holds one "
            f"class only in {ours.count:,} rows"
        )
    metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}
    baseline_auc = None if baseline_metrics is None else baseline_metrics["auc"]
    blessed, reason = gate(metrics["auc"], baseline_auc, min_auc, max_auc_drop)
    threshold, matrix = _histogram_confusion(ours)
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
        roc=_histogram_roc(ours),
        confusion_threshold=threshold,
        confusion_matrix=matrix,
        calibration=_histogram_calibration(ours),
        baseline_roc=[] if theirs is None else _histogram_roc(theirs),
        baseline_calibration=[] if theirs is None else _histogram_calibration(theirs),
        history=read_history(model_dir),
    )


def _group_key(model, manifest) -> str | None:
    """The model's grouping key when it reports ``grouped_auc`` and the data has the column
    (as ``_score`` in memory), else None."""
    key = model.cfg.data.group_key
    wanted = "grouped_auc" in model.cfg.model.metrics
    return key if wanted and key and key in manifest.schema else None


def _histogram_roc(m, points: int = ROC_POINTS) -> list[tuple[float, float, float]]:
    """(fpr, tpr, threshold) at each non-empty bin's lower edge, from the top, thinned to
    about ``points`` points (as ``evaluation.curves.roc_curve``)."""
    filled = np.flatnonzero(m.pos + m.neg)[::-1]
    tps, fps = np.cumsum(m.pos[filled]), np.cumsum(m.neg[filled])
    pos, neg = max(int(m.pos.sum()), 1), max(int(m.neg.sum()), 1)
    fpr, tpr = np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]
    thr = np.r_[1.0, filled / m.bins]
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).round().astype(int))
    return [(float(fpr[i]), float(tpr[i]), float(thr[i])) for i in keep]


def _histogram_confusion(m) -> tuple[float, list[list[int]]]:
    """``confusion_at_base_rate`` at bin resolution: the threshold is the lower edge of the
    highest bin from which down as many rows as there are positives are predicted positive."""
    k = int(m.pos.sum())
    from_top = np.cumsum((m.pos + m.neg)[::-1])
    b = m.bins - 1 - int(np.searchsorted(from_top, max(k, 1)))
    tp, fp = int(m.pos[b:].sum()), int(m.neg[b:].sum())
    fn, tn = k - tp, int(m.neg.sum()) - fp
    return float(b / m.bins), [[tn, fp], [fn, tp]]


def _histogram_calibration(m, bins: int = CALIBRATION_BINS) -> list[tuple[float, float, int]]:
    """Per score decile (split at bin edges): (mean prediction, positive rate, rows)."""
    counts = m.pos + m.neg
    cum = np.cumsum(counts)
    edges = np.searchsorted(cum, np.linspace(0, cum[-1], bins + 1)[1:-1], side="left") + 1
    out = []
    for lo, hi in zip(np.r_[0, edges], np.r_[edges, m.bins], strict=True):
        rows = int(counts[lo:hi].sum())
        if rows:
            mean = float(m.score_sums[lo:hi].sum() / rows)
            out.append((mean, float(m.pos[lo:hi].sum() / rows), rows))
    return out

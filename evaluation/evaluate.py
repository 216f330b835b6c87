"""Step 4, evaluate and gate: metrics of the candidate and of the current blessed model on
the same eval data, and the blessing decision (TFX Evaluator semantics).

    blessed = auc >= min_auc and (no baseline or auc >= baseline_auc - max_auc_drop)

With no blessed model yet only the threshold applies (TFX's "rubber stamp"). The baseline
is the model the push destination's pointer names, scored here on the SAME rows, not its
recorded AUC. A baseline that cannot score these rows (its features are not in the data)
is reported and ignored, so a changed feature set is not blocked forever.
"""

import html
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROC_POINTS = 200  # points of the ROC curve kept for the Kubeflow UI
CALIBRATION_BINS = 10


@dataclass
class Evaluation:
    """The gate's inputs and decision; ``roc`` is (fpr, tpr, threshold) triples,
    ``calibration`` (mean prediction, positive rate, rows) per score decile."""

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


def gate(
    auc: float, baseline_auc: float | None, min_auc: float, max_auc_drop: float
) -> tuple[bool, str]:
    """The blessing rule; returns (blessed, a one-line reason)."""
    if not np.isfinite(auc):
        return False, "the candidate's AUC is undefined (one class in the eval data)"
    if auc < min_auc:
        return False, f"AUC {auc:.4f} is below min_auc {min_auc:.4f}"
    if baseline_auc is None:
        return True, f"AUC {auc:.4f} >= min_auc {min_auc:.4f}; no blessed model to compare"
    if auc < baseline_auc - max_auc_drop:
        return False, (
            f"AUC {auc:.4f} is worse than the blessed model's {baseline_auc:.4f} by more "
            f"than max_auc_drop {max_auc_drop:.4f}"
        )
    return True, (
        f"AUC {auc:.4f} >= min_auc {min_auc:.4f} and within {max_auc_drop:.4f} of the "
        f"blessed model's {baseline_auc:.4f}"
    )


def roc_curve(labels: np.ndarray, scores: np.ndarray, points: int = ROC_POINTS) -> list[tuple]:
    """Exact ROC (one point per distinct score), thinned to about ``points`` points.
    Returns (fpr, tpr, threshold) with threshold = the lowest score predicted positive."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order] > 0.5
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    pos, neg = max(tps[-1], 1), max(fps[-1], 1)
    fpr, tpr, thr = np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[1.0, s[distinct]]
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).round().astype(int))
    return [(float(fpr[i]), float(tpr[i]), float(min(thr[i], 1.0))) for i in keep]


def confusion_at_base_rate(labels: np.ndarray, scores: np.ndarray) -> tuple[float, list[list[int]]]:
    """Confusion matrix [[TN, FP], [FN, TP]] at the threshold that predicts as many
    positives as there are (for rare clicks a 0.5 cut predicts almost nothing positive)."""
    y = labels > 0.5
    k = int(y.sum())
    threshold = float(np.sort(scores)[::-1][k - 1]) if k > 0 else 1.0
    pred = scores >= threshold
    return threshold, [
        [int((~y & ~pred).sum()), int((~y & pred).sum())],
        [int((y & ~pred).sum()), int((y & pred).sum())],
    ]


def calibration_table(
    labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[tuple]:
    """Per score decile: (mean prediction, observed positive rate, rows)."""
    order = np.argsort(scores, kind="stable")
    out = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            out.append((float(scores[chunk].mean()), float(labels[chunk].mean()), int(len(chunk))))
    return out


def _score(model_dir: str | Path, eval_df):
    from model.export import load
    from model.metrics import binary_metrics

    model = load(model_dir)
    labels = eval_df[model.cfg.data.label].to_numpy(dtype=np.float64)
    scores = model.predict(eval_df)
    key = model.cfg.data.group_key
    groups = eval_df[key].to_numpy() if key and key in eval_df.columns else None
    names = [m for m in model.cfg.model.metrics if m != "grouped_auc" or groups is not None]
    return binary_metrics(labels, scores, names, groups), labels, scores


def evaluate_model(
    model_dir: str | Path,
    eval_path: str | Path,
    destination: str,
    min_auc: float,
    max_auc_drop: float,
) -> Evaluation:
    """Score the candidate and the destination's current blessed model on ``eval_path``
    (parquet) and apply the gate."""
    import pandas as pd

    from registry.model_registry import fetch_model, read_current

    eval_df = pd.read_parquet(eval_path)
    metrics, labels, scores = _score(model_dir, eval_df)
    baseline_metrics, baseline_version, note = None, None, ""
    current = read_current(destination) if destination else None
    if current is not None:
        baseline_version = current["version"]
        with tempfile.TemporaryDirectory() as tmp:
            local = fetch_model(destination, Path(tmp) / "baseline")
            try:
                baseline_metrics = _score(local, eval_df)[0]
            except (KeyError, ValueError) as e:  # its features are not in this data
                note = f" (blessed model {baseline_version} cannot score this data: {e})"
                baseline_metrics = None
    baseline_auc = None if baseline_metrics is None else baseline_metrics["auc"]
    blessed, reason = gate(metrics["auc"], baseline_auc, min_auc, max_auc_drop)
    threshold, matrix = confusion_at_base_rate(labels, scores)
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
    )


# ----------------------------------------------------------------------- report


def _svg_plot(
    series: list[tuple[str, list[tuple[float, float]], str]],
    title: str,
    xlabel: str,
    ylabel: str,
    diagonal: bool = True,
) -> str:
    """A small SVG line chart on [0, 1] x [0, 1] axes (no plotting dependency)."""
    w, h, pad = 360, 300, 40

    def xy(x: float, y: float) -> str:
        return f"{pad + x * (w - 2 * pad):.1f},{h - pad - y * (h - 2 * pad):.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">',
        f"<title>{html.escape(title)}</title>",
        f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" fill="none" stroke="#888"/>',
        f'<text x="{w / 2}" y="{pad - 12}" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
        f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle" font-size="12">{html.escape(xlabel)}</text>',
        f'<text x="12" y="{h / 2}" font-size="12" transform="rotate(-90 12 {h / 2})" text-anchor="middle">{html.escape(ylabel)}</text>',
    ]
    if diagonal:
        parts.append(
            f'<polyline points="{xy(0, 0)} {xy(1, 1)}" stroke="#bbb" stroke-dasharray="4" fill="none"/>'
        )
    for i, (name, points, color) in enumerate(series):
        pts = " ".join(xy(min(max(x, 0), 1), min(max(y, 0), 1)) for x, y in points)
        parts.append(f'<polyline points="{pts}" stroke="{color}" stroke-width="2" fill="none"/>')
        parts.append(
            f'<text x="{pad + 8}" y="{pad + 16 + 14 * i}" font-size="12" fill="{color}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def render_report(ev: Evaluation) -> str:
    """An HTML report: decision, metrics vs the blessed model, ROC and calibration plots."""
    names = sorted(set(ev.metrics) | set(ev.baseline_metrics or {}))
    rows = []
    for n in names:
        c = ev.metrics.get(n)
        b = (ev.baseline_metrics or {}).get(n)
        delta = "" if c is None or b is None else f"{c - b:+.5f}"
        spec = ",.0f" if n == "count" else ".5f"
        cand = "" if c is None else format(c, spec)
        base = "" if b is None else format(b, spec)
        rows.append(f"<tr><td>{n}</td><td>{cand}</td><td>{base}</td><td>{delta}</td></tr>")
    top = max((p[0] for p in ev.calibration), default=1.0)
    top = max(top, max((p[1] for p in ev.calibration), default=1.0), 1e-9)
    calib = [(p[0] / top, p[1] / top) for p in ev.calibration]
    (tn, fp), (fn, tp) = ev.confusion_matrix or [[0, 0], [0, 0]]
    verdict = "BLESSED" if ev.blessed else "NOT BLESSED"
    color = "#1a7f37" if ev.blessed else "#cf222e"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>DeepFM evaluation</title>
<style>body{{font-family:sans-serif;margin:24px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body>
<h1>DeepFM evaluation: <span style="color:{color}">{verdict}</span></h1>
<p>{html.escape(ev.reason)}</p>
<p>Gate: AUC &ge; min_auc ({ev.min_auc}) and AUC &ge; blessed AUC &minus; max_auc_drop
({ev.max_auc_drop}). Blessed model: {html.escape(ev.baseline_version or "none yet")}.</p>
<table><tr><th>metric</th><th>candidate</th><th>blessed model</th><th>difference</th></tr>
{"".join(rows)}</table>
<h2>ROC and calibration</h2>
{_svg_plot([("candidate", [(f, t) for f, t, _ in ev.roc], "#0969da")], f"ROC (AUC {ev.auc:.4f})", "false positive rate", "true positive rate")}
{_svg_plot([("per score decile", calib, "#8250df")], f"Calibration (axes scaled to {top:.3f})", "mean prediction", "observed click rate")}
<h2>Confusion matrix</h2>
<p>At threshold {ev.confusion_threshold:.5f} (as many predicted positives as positives).</p>
<table><tr><th></th><th>predicted 0</th><th>predicted 1</th></tr>
<tr><td>actual 0</td><td>{tn}</td><td>{fp}</td></tr><tr><td>actual 1</td><td>{fn}</td><td>{tp}</td></tr></table>
</body></html>
"""

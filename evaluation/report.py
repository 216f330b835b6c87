"""The evaluation report: one self-contained HTML page (decision, metrics against the
blessed model, ROC and calibration of both models, the candidate's training curves, the
confusion matrix). The plots are inline SVG; the page references no URL, so it opens in
an air-gapped cluster and straight from the Kubeflow UI."""

from html import escape
from typing import TYPE_CHECKING

from evaluation.plots import calibration_svg, roc_svg, training_svg

if TYPE_CHECKING:
    from evaluation.evaluate import Evaluation

_STYLE = (
    "body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
    "td:first-child{text-align:left}figure{display:inline-block;margin:0 24px 24px 0}"
    "figcaption{font-size:0.9em;color:#555;max-width:480px}"
)


def candidate_label(ev: "Evaluation") -> str:
    return f"candidate (AUC {ev.auc:.4f})"


def baseline_label(ev: "Evaluation") -> str:
    return f"blessed model {ev.baseline_version} (AUC {ev.baseline_auc:.4f})"


def _metrics_table(ev: "Evaluation") -> str:
    rows = []
    for n in sorted(set(ev.metrics) | set(ev.baseline_metrics or {})):
        c = ev.metrics.get(n)
        b = (ev.baseline_metrics or {}).get(n)
        delta = "" if c is None or b is None else f"{c - b:+.5f}"
        spec = ",.0f" if n == "count" else ".5f"
        cand = "" if c is None else format(c, spec)
        base = "" if b is None else format(b, spec)
        rows.append(f"<tr><td>{escape(n)}</td><td>{cand}</td><td>{base}</td><td>{delta}</td></tr>")
    return (
        "<table><tr><th>metric</th><th>candidate</th><th>blessed model</th>"
        f"<th>difference</th></tr>{''.join(rows)}</table>"
    )


def _figure(figure_id: str, svg: str, caption: str) -> str:
    return f'<figure id="{figure_id}">{svg}<figcaption>{escape(caption)}</figcaption></figure>'


def _plots(ev: "Evaluation") -> str:
    with_baseline = bool(ev.baseline_roc) and ev.baseline_auc is not None
    roc = [(candidate_label(ev), [(f, t) for f, t, _ in ev.roc])]
    calibration = [(candidate_label(ev), [(p, r) for p, r, _ in ev.calibration])]
    if with_baseline:
        roc.append((baseline_label(ev), [(f, t) for f, t, _ in ev.baseline_roc]))
        calibration.append((baseline_label(ev), [(p, r) for p, r, _ in ev.baseline_calibration]))
    compared = "the candidate and the blessed model" if with_baseline else "the candidate"
    rows = "on the same eval rows" if with_baseline else "on the eval rows"
    parts = [
        _figure("roc", roc_svg(roc), f"ROC of {compared} {rows}."),
        _figure(
            "calibration",
            calibration_svg(calibration),
            f"Mean prediction against observed click rate per score decile, {compared}; "
            "points on the diagonal are calibrated.",
        ),
    ]
    training = training_svg(ev.history) if ev.history else None
    if training is None:
        parts.append("<p>No per-epoch training history in the model's metrics.json.</p>")
    else:
        n = len(ev.history)
        parts.append(
            _figure(
                "training",
                training,
                f"The candidate's training, {n} epoch{'s' * (n != 1)} "
                "(from its metrics.json history).",
            )
        )
    return "\n".join(parts)


def render_report(ev: "Evaluation") -> str:
    """An HTML report: decision, metrics vs the blessed model, ROC and calibration plots of
    both models, the training curves, the confusion matrix."""
    (tn, fp), (fn, tp) = ev.confusion_matrix or [[0, 0], [0, 0]]
    verdict = "BLESSED" if ev.blessed else "NOT BLESSED"
    color = "#1a7f37" if ev.blessed else "#cf222e"
    blessed_model = escape(ev.baseline_version or "none yet")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>DeepFM evaluation</title>
<style>{_STYLE}</style>
</head><body>
<h1>DeepFM evaluation: <span style="color:{color}">{verdict}</span></h1>
<p>{escape(ev.reason)}</p>
<p>Gate: AUC &ge; min_auc ({ev.min_auc}) and AUC &ge; blessed AUC &minus; max_auc_drop
({ev.max_auc_drop}). Blessed model: {blessed_model}.</p>
{_metrics_table(ev)}
<h2>ROC, calibration and training</h2>
{_plots(ev)}
<h2>Confusion matrix</h2>
<p>At threshold {ev.confusion_threshold:.5f} (as many predicted positives as positives).</p>
<table><tr><th></th><th>predicted 0</th><th>predicted 1</th></tr>
<tr><td>actual 0</td><td>{tn}</td><td>{fp}</td></tr>
<tr><td>actual 1</td><td>{fn}</td><td>{tp}</td></tr></table>
</body></html>
"""

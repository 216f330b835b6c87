"""Step 4, evaluate and gate: the thin face of ``evaluation.evaluate.evaluate_model`` (the
candidate and the blessed model on the same rows, TFX Evaluator's blessing) and of
``evaluation.report.render_report``.

The HTML report's artifact URI gets an ``.html`` suffix before it is written: KFP records
the URI the function leaves on the artifact (the executor output), so the Kubeflow UI and a
browser see ``report.html``, not an extensionless ``report``."""

from typing import NamedTuple

from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import component


@component
def evaluate(
    model: Input[Model],
    eval_data: Input[Dataset],
    push_destination: str,
    min_auc: float,
    max_auc_drop: float,
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    report: Output[HTML],
) -> NamedTuple("Outputs", [("blessed", bool), ("auc", float), ("baseline_auc", float)]):
    """Evaluate the candidate against the blessed model; ``blessed`` drives the push."""
    from collections import namedtuple

    from evaluation.evaluate import evaluate_model
    from evaluation.report import render_report

    ev = evaluate_model(model.path, eval_data.path, push_destination, min_auc, max_auc_drop)
    for name, value in ev.metrics.items():
        metrics.log_metric(name, float(value))
    if ev.baseline_auc is not None:
        metrics.log_metric("baseline_auc", float(ev.baseline_auc))
    metrics.log_metric("blessed", 1.0 if ev.blessed else 0.0)
    roc.log_roc_curve([p[0] for p in ev.roc], [p[1] for p in ev.roc], [p[2] for p in ev.roc])
    roc.log_confusion_matrix(["no click", "click"], ev.confusion_matrix)
    if not report.uri.endswith(".html"):
        report.uri += ".html"
    with open(report.path, "w", encoding="utf-8") as f:
        f.write(render_report(ev))
    print(ev.reason)
    outputs = namedtuple("Outputs", ["blessed", "auc", "baseline_auc"])
    baseline = -1.0 if ev.baseline_auc is None else float(ev.baseline_auc)
    return outputs(ev.blessed, float(ev.auc), baseline)

"""Step 1, validate: the thin face of ``validation.validate.validate_window`` (Great
Expectations suites derived from the feature spec over the window's raw sources).

The HTML report's artifact URI gets an ``.html`` suffix before it is written: KFP records
the URI the function leaves on the artifact (the executor output), so the Kubeflow UI and a
browser see ``report.html``, not an extensionless ``report``."""

# No `from __future__ import annotations`: KFP reads the component signatures at runtime.
from typing import NamedTuple

from kfp.dsl import HTML, Metrics, Output

from components import component


@component
def validate(
    feature_repo: str,
    window_end: str,
    window_days: float,
    metrics: Output[Metrics],
    report: Output[HTML],
    scheduled_at: str = "",
) -> NamedTuple("Outputs", [("passed", bool), ("failures", str)]):
    """Validate the raw sources of the window (ending at ``window_end``, else at the run's
    ``scheduled_at``): the report and the metrics are outputs either way. The step itself
    succeeds so that Kubeflow keeps them (a failed task's output artifacts are not
    uploaded); ``require_valid_data`` then stops the run."""
    from components.settings import check_cluster_settings, window_end_of_run

    check_cluster_settings(needs_feast=False)  # before the heavy imports: a missing setting
    window_end = window_end_of_run(window_end, scheduled_at)  # fails in the first second

    from collections import namedtuple

    from validation.results import DataValidationError
    from validation.validate import validate_window

    outputs = namedtuple("Outputs", ["passed", "failures"])
    if not report.uri.endswith(".html"):
        report.uri += ".html"
    try:
        summary = validate_window(feature_repo, window_end, window_days, report.path)
    except DataValidationError as e:
        for name, value in e.summary.metrics().items():
            metrics.log_metric(name, value)
        print(str(e))
        return outputs(False, str(e))
    for name, value in summary.metrics().items():
        metrics.log_metric(name, value)
    print(summary.message())
    return outputs(True, "")


@component
def require_valid_data(passed: bool, failures: str):
    """Fail the run, listing each failed expectation, when validation did not pass: nothing
    after this step (features, training, push) runs."""
    if not passed:
        raise RuntimeError(f"data validation failed; nothing is trained or pushed.\n{failures}")
    print("data validation passed")

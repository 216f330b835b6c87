"""The outcome of a validation run: each failed expectation as one readable line (source:
column: expectation: what was found), counts per source, and the error raised on failure."""

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

_EXAMPLES = 3  # unexpected values quoted per failed expectation


class DataValidationError(ValueError):
    """The raw data failed validation; ``summary`` holds every result, the message one line
    per failed expectation. Raised after the Data Docs are written."""

    def __init__(self, message: str, summary: "ValidationSummary"):
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class FailedExpectation:
    """One failed expectation: ``column`` is None for table-level ones (column set, row
    count), ``observed`` a short account of what was found."""

    source: str
    expectation: str
    column: str | None
    observed: str

    def __str__(self) -> str:
        return f"{self.source}: {self.column or '(table)'}: {self.expectation}: {self.observed}"


@dataclass
class SourceResult:
    """Expectation counts of one source (its element batches included) and rows read."""

    rows: int = 0
    evaluated: int = 0
    successful: int = 0
    failed: int = 0


@dataclass
class ValidationSummary:
    """The outcome of one validation run. ``pages``: batch name -> its Data Docs page."""

    success: bool
    window_start: datetime
    window_end: datetime
    sources: dict[str, SourceResult]
    failures: list[FailedExpectation]
    report_dir: Path
    pages: dict[str, Path] = field(default_factory=dict)

    @property
    def index(self) -> Path:
        """The Data Docs site's ``index.html``."""
        return self.report_dir / "index.html"

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a KFP ``Metrics`` artifact, e.g. ``visits_rows``."""
        out: dict[str, float] = {"passed": float(self.success)}
        out["failed_expectations"] = float(len(self.failures))
        for name, result in self.sources.items():
            out[f"{name}_rows"] = float(result.rows)
            out[f"{name}_expectations"] = float(result.evaluated)
            out[f"{name}_failed"] = float(result.failed)
        return out

    def message(self) -> str:
        """A header line, then each failed expectation on its own line."""
        n = len(self.failures)
        status = "passed" if self.success else f"failed ({n} expectation{'s' * (n != 1)})"
        header = f"data validation {status} for [{self.window_start}, {self.window_end})"
        return "\n".join([header, *(f"  {f}" for f in self.failures)])


def failed_expectation(source: str, batch: str, r: Any) -> FailedExpectation:
    """A failed expectation result -> source, expectation (with what it asked for), column
    and a short observation: unexpected values, the observed value, or the error raised."""
    kwargs = r.expectation_config.kwargs
    column = kwargs.get("column") or ", ".join(kwargs.get("column_list") or []) or None
    if column and batch != source:
        column = f"{column} (each element)"
    expectation = r.expectation_config.type + _asked(kwargs)
    result = r.result or {}
    if error := _exception(r.exception_info or {}):
        observed = f"raised {error}"
    elif "unexpected_count" in result:
        examples = ", ".join(_fmt(v) for v in result.get("partial_unexpected_list", [])[:_EXAMPLES])
        observed = f"{result['unexpected_count']} of {result['element_count']} values unexpected"
        observed += f", e.g. {examples}" if examples else ""
    elif mismatched := (result.get("details") or {}).get("mismatched"):
        observed = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in mismatched.items() if v)
    else:
        observed = f"observed {_short(str(result.get('observed_value')))}"
    return FailedExpectation(source, expectation, column, observed)


def _exception(info: dict) -> str | None:
    """The last line of the first error GX caught; ``info`` is flat for the expectation or
    keyed by metric."""
    for entry in [info, *(v for v in info.values() if isinstance(v, dict))]:
        if entry.get("raised_exception") or entry.get("exception_traceback"):
            message = entry.get("exception_message") or entry.get("exception_traceback") or ""
            return message.strip().splitlines()[-1] if message.strip() else "an error"
    return None


def _asked(kwargs: dict) -> str:
    """What an expectation asked for, briefly: `` [0, 6]``, `` {1, 2}``, `` int64``."""
    if "value_set" in kwargs:
        return " {" + ", ".join(_fmt(v) for v in kwargs["value_set"]) + "}"
    if "type_" in kwargs:
        return f" {kwargs['type_']}"
    if "min_value" in kwargs or "max_value" in kwargs:
        low, high = (kwargs.get(k) for k in ("min_value", "max_value"))
        close = ")" if kwargs.get("strict_max") else "]"
        return f" [{'' if low is None else _fmt(low)}, {'' if high is None else _fmt(high)}{close}"
    return ""


def _fmt(value: Any) -> str:
    """A value as a failure line shows it: strings quoted, whole floats without ``.0``."""
    if isinstance(value, str):
        return _short(repr(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _short(str(value))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."

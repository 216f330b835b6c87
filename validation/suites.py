"""Step 1, validate: Great Expectations suites over the raw sources of the run's window; a
failed expectation stops the run before any feature is computed (DESIGN.md section 3).

The suites are derived from the feature spec (``features.yaml``), never listed by hand. Per
source (``impressions``, ``user_profile``, ``ad_feature``):

- the exact column set: the spec's columns of the source plus its timestamp field;
- at least ``min_rows`` rows (impressions in the window) or at least 1 (feature sources);
- each column's type (``int64``, ``float64``, ``string`` -> ``str`` values, ``list<int64>``
  -> list values), not null unless ``nullable`` (keys and the label never), and its
  ``valid`` set or range;
- each element of a list column: its type, not null and its ``valid`` set or range, on a
  helper batch ``<source>.<column>`` of the exploded elements;
- the timestamp: timezone-aware, never null; impressions in ``[window_start, window_end)``,
  feature versions not after ``window_end``;
- feature sources: one version per (entity key, timestamp).

What is validated is what the features step can use: the impressions in the window and the
feature versions up to its end (rows with a null timestamp are kept, so they fail). Each run
writes Data Docs into ``report_dir`` and raises ``DataValidationError`` afterwards, listing
every failed expectation on its own line (source: column: expectation: what was found)::

    data validation failed (2 expectations) for [2026-11-01 00:00:00+00:00, 2026-11-09 ...
      impressions: clk: expect_column_values_to_be_in_set {0, 1}: 1 of 500 values unexpected, e.g. 2
      user_profile: (table): expect_table_columns_to_match_set: missing: cms_segid
"""

import html
import itertools
import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import great_expectations as gx

    from feature_repo.spec import Feature, FeatureSpec

DOCS_SITE = "validation_site"
"""Name of the filesystem Data Docs site (the ephemeral context's ``local_site`` is taken)."""

# spec dtype -> the GX ``type_`` of its pandas column. Numbers are numpy dtypes; strings and
# lists are object columns, which GX checks value by value against a Python type (list
# cells are handed to GX as Python lists, see ``_batches``).
_COLUMN_TYPES = {"int64": "int64", "float64": "float64", "string": "str", "list<int64>": "list"}
# a timezone-aware datetime64 column has ``type`` pd.Timestamp; a naive one np.datetime64
_TIMESTAMP_TYPE = "Timestamp"
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
        """Flat numbers for a KFP ``Metrics`` artifact, e.g. ``impressions_rows``."""
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


# ------------------------------------------------------------------------- suites


def build_suites(
    spec: "FeatureSpec",
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    *,
    min_rows: int = 1,
) -> "dict[str, gx.ExpectationSuite]":
    """Expectation suites derived from ``spec``, keyed by batch name: each source's name,
    plus ``<source>.<column>`` for the elements of each list column. The window bounds the
    timestamps (left out when None); ``min_rows`` is the impressions' minimum row count.

    Example: ``build_suites(load_spec(), start, end)["user_profile"]`` holds
    ``expect_column_values_to_be_between(age_level, 0, 6)``, and
    ``["user_profile.interest_cates"]`` ``expect_column_values_to_be_between(interest_cates,
    1, None)`` on each element."""
    gx, gxe = _gx()
    keys = {e.join_key for e in spec.entities.values()}
    suites = {}
    for name, source in spec.sources.items():
        columns = spec.source_columns(name)
        ts = source.timestamp_field
        expectations = [
            gxe.ExpectTableColumnsToMatchSet(column_set=[*columns, ts], exact_match=True),
            gxe.ExpectTableRowCountToBeBetween(
                min_value=min_rows if name == spec.entity_rows else 1
            ),
        ]
        for column, dtype in columns.items():
            feature = spec.label if column == spec.label.name else spec.feature(column)
            expectations.append(
                gxe.ExpectColumnValuesToBeOfType(column=column, type_=_COLUMN_TYPES[dtype])
            )
            if not feature.nullable or column in keys:
                expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
            if dtype.startswith("list<"):
                suites[f"{name}.{column}"] = gx.ExpectationSuite(
                    name=f"{name}.{column}", expectations=_element_expectations(feature)
                )
            else:
                expectations += _valid_expectations(feature)
        expectations += [
            gxe.ExpectColumnValuesToBeOfType(column=ts, type_=_TIMESTAMP_TYPE),
            gxe.ExpectColumnValuesToNotBeNull(column=ts),
        ]
        if name == spec.entity_rows:
            if window_start is not None and window_end is not None:
                expectations.append(
                    gxe.ExpectColumnValuesToBeBetween(
                        column=ts,
                        min_value=pd.Timestamp(window_start),
                        max_value=pd.Timestamp(window_end),
                        strict_max=True,
                    )
                )
        else:
            (view,) = (v for v in spec.feature_views.values() if v.source == name)
            key = spec.entities[view.entity].join_key
            expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=[key, ts]))
            if window_end is not None:
                expectations.append(
                    gxe.ExpectColumnValuesToBeBetween(column=ts, max_value=pd.Timestamp(window_end))
                )
        suites[name] = gx.ExpectationSuite(name=name, expectations=expectations)
    return suites


def _valid_expectations(feature: "Feature") -> list:
    """The ``valid`` set or range of a scalar column (of each element, for the elements)."""
    _, gxe = _gx()
    valid = feature.valid
    if valid is None:
        return []
    if valid.values is not None:
        return [gxe.ExpectColumnValuesToBeInSet(column=feature.name, value_set=list(valid.values))]
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column=feature.name, min_value=valid.min, max_value=valid.max
        )
    ]


def _element_expectations(feature: "Feature") -> list:
    """Expectations on the exploded elements of a list column (one row per element)."""
    _, gxe = _gx()
    element = feature.dtype.removeprefix("list<").removesuffix(">")
    return [
        gxe.ExpectColumnValuesToBeOfType(column=feature.name, type_=_COLUMN_TYPES[element]),
        gxe.ExpectColumnValuesToNotBeNull(column=feature.name),
        *_valid_expectations(feature),
    ]


# ------------------------------------------------------------------------- reading


def read_sources(
    spec: "FeatureSpec",
    repo_dir: str | Path | None,
    window_start: datetime | str,
    window_end: datetime | str,
) -> dict[str, pd.DataFrame]:
    """Each source's rows that the run can use, as pandas reads the parquet file: the
    impressions with ``window_start <= timestamp < window_end``, the feature sources'
    versions with ``timestamp <= window_end``. Rows with a null timestamp are kept; a file
    whose timestamp is missing or not timezone-aware is read whole (its suite fails).

    Raises:
        FileNotFoundError: a source file is missing; the message names the source.
    """
    start, end = _utc(window_start, "window_start"), _utc(window_end, "window_end")
    frames = {}
    for name, source in spec.sources.items():
        path = spec.source_path(name, repo_dir)
        if not path.is_file():
            raise FileNotFoundError(
                f"source {name!r}: {path} does not exist (data directory: {path.parent}; "
                "set DEEPFM_DATA_DIR or generate the sample data)"
            )
        frame = pd.read_parquet(path)
        ts = frame.get(source.timestamp_field)
        if ts is not None and isinstance(ts.dtype, pd.DatetimeTZDtype):
            usable = (ts >= start) & (ts < end) if name == spec.entity_rows else ts <= end
            frame = frame[usable | ts.isna()].reset_index(drop=True)
        frames[name] = frame
    return frames


def _utc(t: datetime | str, what: str) -> pd.Timestamp:
    ts = pd.Timestamp(t)
    if ts.tz is None:
        raise ValueError(f"{what} {t!r} has no time zone")
    return ts.tz_convert("UTC")


def _batches(spec: "FeatureSpec", frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Batch name -> dataframe: each source (list cells as Python lists) and the exploded
    elements of each of its list columns (cells that are not lists are left to the source's
    type check)."""
    batches = {}
    for name, frame in frames.items():
        lists = [c for c, d in spec.source_columns(name).items() if d.startswith("list<")]
        batches[name] = frame = frame.copy(deep=False)
        for column in (c for c in lists if c in frame):
            cells = [v.tolist() if isinstance(v, np.ndarray) else v for v in frame[column]]
            frame[column] = pd.Series(cells, index=frame.index, dtype=object)
            elements = itertools.chain.from_iterable(c for c in cells if isinstance(c, list))
            batches[f"{name}.{column}"] = pd.DataFrame({column: pd.Series(list(elements))})
    return batches


# ---------------------------------------------------------------------- validating


def validate_sources(
    repo_dir: str | Path | None,
    window_start: datetime | str,
    window_end: datetime | str,
    report_dir: str | Path,
    *,
    min_rows: int = 1,
) -> ValidationSummary:
    """Validate the raw sources of the feature repo ``repo_dir`` (its ``features.yaml`` and
    data directory; None or "" = the default repo) for the window ``[window_start,
    window_end)`` (timezone-aware); Data Docs go to ``report_dir``.

    Raises:
        DataValidationError: an expectation failed (after the Data Docs are written).
        FileNotFoundError: a source file is missing.
    """
    from feature_repo.spec import load_spec

    spec = load_spec(Path(repo_dir) / "features.yaml" if repo_dir else None)
    frames = read_sources(spec, repo_dir or None, window_start, window_end)
    return validate_frames(spec, frames, window_start, window_end, report_dir, min_rows=min_rows)


def validate_frames(
    spec: "FeatureSpec",
    frames: dict[str, pd.DataFrame],
    window_start: datetime | str,
    window_end: datetime | str,
    report_dir: str | Path,
    *,
    min_rows: int = 1,
) -> ValidationSummary:
    """Run ``build_suites(spec, ...)`` on ``frames`` (each source's rows, as
    ``read_sources`` returns them) in an ephemeral GX context: one pandas dataframe asset
    and one Checkpoint per batch, each Checkpoint updating the filesystem Data Docs site in
    ``report_dir`` (UpdateDataDocsAction).

    Raises:
        DataValidationError: an expectation failed (after the Data Docs are written).
        ValueError: ``frames`` does not hold exactly the spec's sources.
    """
    if set(frames) != set(spec.sources):
        raise ValueError(
            f"frames of {sorted(frames)} given; the spec's sources are {sorted(spec.sources)}"
        )
    gx, _ = _gx()
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    start, end = _utc(window_start, "window_start"), _utc(window_end, "window_end")
    report_dir = Path(report_dir).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="ephemeral")
    ctx.enable_analytics(False)
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.add_data_docs_site(
        site_name=DOCS_SITE,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(report_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    pandas = ctx.data_sources.add_pandas(name="raw_sources")
    run_id = RunIdentifier(run_name=f"{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}")
    suites = build_suites(spec, start, end, min_rows=min_rows)
    summary = ValidationSummary(
        success=True,
        window_start=start,
        window_end=end,
        sources={name: SourceResult() for name in spec.sources},
        failures=[],
        report_dir=report_dir,
    )
    for batch, df in _batches(spec, frames).items():
        asset = pandas.add_dataframe_asset(batch)
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(
                name=batch,
                data=asset.add_batch_definition_whole_dataframe("whole"),
                suite=ctx.suites.add(suites[batch]),
            )
        )
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"validate {batch}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[DOCS_SITE])],
                result_format={"result_format": "SUMMARY"},
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": df}, run_id=run_id)
        ((result_id, result),) = run.run_results.items()
        source = batch.split(".")[0]
        counts = summary.sources[source]
        counts.rows += len(df) if batch == source else 0
        counts.evaluated += result.statistics["evaluated_expectations"]
        counts.successful += result.statistics["successful_expectations"]
        counts.failed += result.statistics["unsuccessful_expectations"]
        summary.success &= bool(result.success)
        failed = [_failure(source, batch, r) for r in result.results if not r.success]
        summary.failures += sorted(failed, key=lambda f: (f.column or "", f.expectation))
        (url,) = ctx.get_docs_sites_urls(resource_identifier=result_id, site_name=DOCS_SITE)
        summary.pages[batch] = Path(url2pathname(urlparse(url["site_url"]).path))
    if not summary.success:
        raise DataValidationError(summary.message(), summary)
    return summary


def _failure(source: str, batch: str, r: Any) -> FailedExpectation:
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


def _gx():
    """great_expectations and its expectations, imported with telemetry and progress bars
    off and its logging quiet (imported lazily: compiling the pipeline does not need it)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    return gx, gxe


# -------------------------------------------------------------------------- report


def validate_window(
    feature_repo: str, window_end: str, window_days: float, report_path: str | Path
) -> ValidationSummary:
    """What the component does: resolve the window, validate, and write ONE self-contained
    HTML file ``report_path`` either way (a summary, then every Data Docs validation page
    inlined), before any error propagates."""
    from feature_repo.window import resolve_window

    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="data_docs_") as docs:
        try:
            start, end = resolve_window(window_end, window_days)
            summary = validate_sources(feature_repo or None, start, end, docs)
        except DataValidationError as e:
            report_path.write_text(render_report(e.summary), encoding="utf-8")
            raise
        except Exception as e:
            error = _page("Data validation could not run", f"<pre>{_esc(e)}</pre>")
            report_path.write_text(error, encoding="utf-8")
            raise
        report_path.write_text(render_report(summary), encoding="utf-8")
    return summary


def render_report(summary: ValidationSummary) -> str:
    """One HTML file: the outcome, per-source counts, the failed expectations, then each
    batch's Data Docs validation page in an ``iframe srcdoc`` (self-contained; the pages'
    styling loads from public CDNs, their tables read without it)."""
    rows = "".join(
        f"<tr><td>{_esc(name)}</td><td>{r.rows}</td><td>{r.evaluated}</td>"
        f"<td>{r.successful}</td><td>{r.failed}</td></tr>"
        for name, r in summary.sources.items()
    )
    failures = "".join(f"<li><code>{_esc(f)}</code></li>" for f in summary.failures)
    pages = "".join(_inlined(batch, page) for batch, page in summary.pages.items())
    status = "passed" if summary.success else "FAILED"
    body = (
        f"<p>Window [{_esc(summary.window_start)}, {_esc(summary.window_end)})</p>"
        "<table><tr><th>source</th><th>rows</th><th>expectations</th><th>successful</th>"
        f"<th>failed</th></tr>{rows}</table>"
        + (f"<h2>Failed expectations</h2><ul>{failures}</ul>" if failures else "")
        + pages
    )
    return _page(f"Data validation {status}", body)


def _inlined(batch: str, page: Path) -> str:
    """A Data Docs page in an iframe of its own, so its scripts and styles stay apart."""
    doc = _esc(page.read_text(encoding="utf-8"))
    return f'<h2>{_esc(batch)}</h2><iframe title="{_esc(batch)}" srcdoc="{doc}"></iframe>'


def _page(title: str, body: str) -> str:
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child{text-align:left}iframe{width:100%;height:80vh;border:1px solid #ccc}"
    )
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{style}</style></head><body><h1>{_esc(title)}</h1>{body}</body></html>\n"
    )


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)

"""Step 1, validate: the suites of ``validation.suites`` over the raw sources of the run's
window; a failed expectation stops the run before any feature is computed.

What is validated is what the features step can use: the impressions in the window and the
feature versions up to its end (rows with a null timestamp are kept, so they fail). Each run
writes Data Docs into ``report_dir`` and raises ``DataValidationError`` afterwards, listing
every failed expectation on its own line (source: column: expectation: what was found)::

    data validation failed (2 expectations) for [2026-11-01 00:00:00+00:00, 2026-11-09 ...
      impressions: clk: expect_column_values_to_be_in_set {0, 1}: 1 of 500 values unexpected, e.g. 2
      user_profile: (table): expect_table_columns_to_match_set: missing: cms_segid

``validate_window`` is what the component runs: it also writes the one-file HTML report
(``validation.report``) either way.
"""

import itertools
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd

from validation.report import error_page, render_report
from validation.results import (
    DataValidationError,
    SourceResult,
    ValidationSummary,
    failed_expectation,
)
from validation.suites import build_suites, import_gx

if TYPE_CHECKING:
    from feature_repo.spec import FeatureSpec

DOCS_SITE = "validation_site"
"""Name of the filesystem Data Docs site (the ephemeral context's ``local_site`` is taken)."""


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
    gx, _ = import_gx()
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
        failed = [failed_expectation(source, batch, r) for r in result.results if not r.success]
        summary.failures += sorted(failed, key=lambda f: (f.column or "", f.expectation))
        (url,) = ctx.get_docs_sites_urls(resource_identifier=result_id, site_name=DOCS_SITE)
        summary.pages[batch] = Path(url2pathname(urlparse(url["site_url"]).path))
    if not summary.success:
        raise DataValidationError(summary.message(), summary)
    return summary


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
            error = error_page("Data validation could not run", e)
            report_path.write_text(error, encoding="utf-8")
            raise
        report_path.write_text(render_report(summary), encoding="utf-8")
    return summary

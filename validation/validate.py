"""Step 1, validate: the suites of ``validation.suites`` over the raw sources of the run's
window; a failed expectation stops the run before any feature is computed.

What is validated is what the features step can use: the entity rows in the window and the
feature versions up to its end (rows with a null timestamp are kept, so they fail). Each
column is read as the one pandas dtype of its spec dtype (``as_spec_dtypes``), so a nullable
int column is an int column however a writer or reader typed it. Each run writes Data Docs
into ``report_dir`` and raises ``DataValidationError`` afterwards, listing every failed
expectation on its own line (source: column: expectation: what was found)::

    data validation failed (2 expectations) for [2026-11-01 00:00:00+00:00, 2026-11-09 ...
      visits: purchased: expect_column_values_to_be_in_set {0, 1}: 1 of 500 values unexpected, ...
      customers: (table): expect_table_columns_to_match_set: missing: segment

``validate_window`` is what the component runs: it also writes the one-file HTML report
(``validation.report``) either way.
"""

import itertools
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
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
from validation.suites import PANDAS_DTYPES, build_suites, import_gx

if TYPE_CHECKING:
    from feature_repo.spec import FeatureSpec

DOCS_SITE = "validation_site"
"""Name of the filesystem Data Docs site (the ephemeral context's ``local_site`` is taken)."""


def read_sources(
    spec: "FeatureSpec",
    repo_dir: str | Path | None,
    window_start: datetime | str,
    window_end: datetime | str,
    *,
    only: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Each source's rows that the run can use, read from its parquet file with pandas'
    nullable dtypes and then typed by ``as_spec_dtypes``: the entity rows with
    ``window_start <= timestamp < window_end``, the feature sources' versions with
    ``timestamp <= window_end``. Rows with a null timestamp are kept; a file whose timestamp
    is missing or not timezone-aware is read whole (its suite fails). ``only``: that source
    alone (every file is still checked to exist).

    Raises:
        FileNotFoundError: a source file is missing; the message names the source.
    """
    start, end = _utc(window_start, "window_start"), _utc(window_end, "window_end")
    for name in spec.sources:
        path = spec.source_path(name, repo_dir)
        if not path.is_file():
            raise FileNotFoundError(
                f"source {name!r}: {path} does not exist (data directory: {path.parent}; "
                "set DEEPFM_DATA_DIR or generate the sample data)"
            )
    frames = {}
    for name, source in spec.sources.items():
        if only is not None and name != only:
            continue
        path = spec.source_path(name, repo_dir)
        frame = pd.read_parquet(path, dtype_backend="numpy_nullable")
        frame = as_spec_dtypes(frame, spec.source_columns(name))
        ts = frame.get(source.timestamp_field)
        if ts is not None and isinstance(ts.dtype, pd.DatetimeTZDtype):
            usable = (ts >= start) & (ts < end) if name == spec.entity_rows else ts <= end
            frame = frame[usable | ts.isna()].reset_index(drop=True)
        frames[name] = frame
    return frames


def as_spec_dtypes(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """``frame`` with each of ``columns`` (column -> spec dtype) as the pandas dtype
    ``PANDAS_DTYPES`` names, where its values allow it without loss: e.g. a float64 column
    of whole numbers and NaN (how pandas reads a parquet int column with nulls) becomes
    ``Int64``, an object column of True/False/None ``boolean``, numpy arrays in list cells
    Python lists. A column whose values do not fit (``"abc"`` or 1.5 in an int column)
    becomes an object column of Python values (whole floats as ints, nulls as None), which
    the type expectation checks value by value, naming the values that do not fit. Columns
    not named (the timestamp) are left as they are. Returns a shallow copy."""
    out = frame.copy(deep=False)
    for column, dtype in columns.items():
        if column in out:
            out[column] = _as_dtype(out[column], dtype)
    return out


def _as_dtype(s: pd.Series, dtype: str) -> pd.Series:
    """One column as spec ``dtype`` (see ``as_spec_dtypes``)."""
    if dtype.startswith("list<"):
        return _as_objects(s)
    inferred = pd.api.types.infer_dtype(s, skipna=True)
    if inferred == "empty":  # every value null: any dtype holds it
        return s.astype(PANDAS_DTYPES[dtype])
    if inferred == "boolean" and dtype != "bool":  # not numbers: GX would take True as an int
        return s.astype("boolean")
    if dtype == "int64":
        if inferred == "integer":
            return s.astype("Int64")
        if inferred in ("floating", "mixed-integer-float") and _whole(s):
            return s.astype("Float64").astype("Int64")
    elif dtype == "float64" and inferred in ("floating", "mixed-integer-float"):
        values = pd.to_numeric(s).to_numpy(dtype=np.float64, na_value=np.nan)
        return pd.Series(values, index=s.index, name=s.name)
    elif dtype == "bool" and inferred == "boolean":
        return s.astype("boolean")
    elif dtype == "string" and inferred == "string":
        return s.astype("string")
    return _as_objects(s)


def _whole(s: pd.Series) -> bool:
    """Whether every non-null number of ``s`` is a whole number within int64."""
    values = pd.to_numeric(s).to_numpy(dtype=np.float64, na_value=np.nan)
    known = values[~np.isnan(values)]
    return bool(
        np.isfinite(known).all() and (known == np.round(known)).all() and (abs(known) < 2**63).all()
    )


def _as_objects(s: pd.Series) -> pd.Series:
    """``s`` as an object column of Python values: lists for arrays, ints for whole floats,
    None for nulls."""
    return pd.Series([_python(v) for v in s], index=s.index, dtype=object, name=s.name)


def _python(value):
    if isinstance(value, np.ndarray):
        return [_python(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        return None if np.isnan(value) else int(value) if value.is_integer() else value
    return value


def _utc(t: datetime | str, what: str) -> pd.Timestamp:
    ts = pd.Timestamp(t)
    if ts.tz is None:
        raise ValueError(f"{what} {t!r} has no time zone")
    return ts.tz_convert("UTC")


def _batches(spec: "FeatureSpec", frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Batch name -> dataframe: each source, its columns typed by ``as_spec_dtypes`` (list
    cells as Python lists), and the exploded elements of each of its list columns, typed as
    the element dtype (cells that are not lists are left to the source's type check)."""
    batches = {}
    for name, frame in frames.items():
        columns = spec.source_columns(name)
        batches[name] = frame = as_spec_dtypes(frame, columns)
        for column in (c for c, d in columns.items() if d.startswith("list<") and c in frame):
            cells = (c for c in frame[column] if isinstance(c, list))
            elements = pd.Series(list(itertools.chain.from_iterable(cells)), dtype=object)
            element = columns[column].removeprefix("list<").removesuffix(">")
            batches[f"{name}.{column}"] = pd.DataFrame({column: _as_dtype(elements, element)})
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
    from feature_repo.definitions import offline_store_type
    from feature_repo.spec import REPO_DIR, load_spec

    spec = load_spec(Path(repo_dir) / "features.yaml" if repo_dir else None)
    if offline_store_type(repo_dir or REPO_DIR) == "spark":  # the Spark profile: on Spark
        from validation.spark import spark_batches

        start, end = _utc(window_start, "window_start"), _utc(window_end, "window_end")
        batches = spark_batches(spec, repo_dir or None, start.to_pydatetime(), end.to_pydatetime())
        return _validate_batches(
            spec,
            batches.items(),
            window_start,
            window_end,
            report_dir,
            min_rows=min_rows,
            spark=True,
        )
    read_sources(spec, repo_dir or None, window_start, window_end, only="")  # files exist

    def one_source_at_a_time():  # sources are read one at a time, as they are validated
        for name in spec.sources:
            frames = read_sources(spec, repo_dir or None, window_start, window_end, only=name)
            yield from _batches(spec, frames).items()

    return _validate_batches(
        spec, one_source_at_a_time(), window_start, window_end, report_dir, min_rows=min_rows
    )


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
    batches = _batches(spec, frames)
    return _validate_batches(
        spec, batches.items(), window_start, window_end, report_dir, min_rows=min_rows
    )


def _validate_batches(
    spec: "FeatureSpec",
    batches: Iterable[tuple[str, Any]],
    window_start: datetime | str,
    window_end: datetime | str,
    report_dir: str | Path,
    *,
    min_rows: int = 1,
    spark: bool = False,
) -> ValidationSummary:
    """The suites on each batch (pandas frames, or Spark DataFrames with ``spark``: GX's
    Spark datasource, the type expectations naming Spark's types)."""
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
    if spark:
        from validation.spark import spark_suites

        datasource = ctx.data_sources.add_spark(name="raw_sources")
    else:
        datasource = ctx.data_sources.add_pandas(name="raw_sources")
    run_id = RunIdentifier(run_name=f"{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}")
    suites = build_suites(spec, start, end, min_rows=min_rows)
    if spark:
        suites = spark_suites(suites, spec)
    summary = ValidationSummary(
        success=True,
        window_start=start,
        window_end=end,
        sources={name: SourceResult() for name in spec.sources},
        failures=[],
        report_dir=report_dir,
    )
    for batch, df in batches:
        asset = datasource.add_dataframe_asset(batch)
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
        if batch == source:
            counts.rows += _row_count(result) if spark else len(df)
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


def _row_count(result) -> int:
    """The rows a Spark batch had, from its row-count expectation's observed value (GX
    counted them on Spark)."""
    for r in result.results:
        if r.expectation_config.type == "expect_table_row_count_to_be_between":
            return int(r.result.get("observed_value") or 0)
    return 0


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

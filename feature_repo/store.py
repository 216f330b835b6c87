"""The feature store for training and serving: Feast on a feature repo (default
``feature_repo/``; any folder ``feature_repo.repo.write_repo_files`` wrote works the same).

- ``apply()``: register the definitions of ``definitions.py`` (what ``feast apply`` does).
- ``get_training_data(start, end)``: the entity rows (events) of the spec's ``entity_rows``
  source in ``[start, end)`` with the features valid at each event's time (point-in-time
  join through the spec's feature service), in the source's order, with ``spec.columns()``.
- ``get_features(entity_df)``: the same join for any entity rows.
- ``materialize(start, end)`` / ``materialize_incremental(end)``: load the latest feature
  values into the online store (a view that loads nothing is a warning);
  ``online_features({"shopper_id": "s000123", ...}, {"channel": "web"})`` reads them.

Every call first checks that the spec (``features.yaml``), the source files and the deployed
registry agree, and fails with a ``SpecError`` naming the feature that differs. Bad input fails
before anything is written, with a ValueError naming the file, column or value: a
``definitions.SourceError`` for a missing or unreadable source file, a ``FeatureStoreError``
for entity rows without a timezone-aware timestamp or a window without rows. Times are
timezone-aware; naive ones are refused rather than read as UTC.

``repo_path`` defaults to ``feature_repo/``; its ``feature_store.yaml`` (or the file named by
Feast's ``FEAST_FS_YAML_FILE_PATH``) says where the registry and online store are, and
``DEEPFM_DATA_DIR`` where the source files are (see ``spec.data_dir``).

Retrieval and materialization show tqdm progress bars on stderr when it is a terminal
(``DEEPFM_PROGRESS=1`` forces them, ``0`` turns them off). What Feast prints on stdout is
logged at DEBUG (logger ``deepfm.features``) instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast import FeatureStore
from feast.repo_operations import apply_total_with_repo_instance
from feast.utils import get_default_yaml_file_path

from feature_repo import shards, spark_engine
from feature_repo.definitions import (
    ARROW_TYPES,
    Definitions,
    build,
    check_definitions,
    check_sources,
    quiet_spark_warnings,
)
from feature_repo.spec import REPO_DIR, SPEC_FILE, FeatureSpec, load_spec

_ROW = "__entity_row"  # position of each entity row, to restore the order Feast does not keep
PROGRESS_ENV = "DEEPFM_PROGRESS"

log = logging.getLogger("deepfm.features")


class FeatureStoreError(ValueError):
    """Bad input to a feature store operation; the message names the file, column or value."""


@dataclass(frozen=True)
class _Repo:
    dir: Path
    spec: FeatureSpec
    store: FeatureStore


# ------------------------------------------------------------------------ the store


def get_store(repo_path: str | Path | None = None) -> FeatureStore:
    """Feast's ``FeatureStore`` on the repo (default ``feature_repo/``).

    Raises:
        FeatureStoreError: if the repo folder or its feature_store.yaml does not exist.
    """
    repo_dir = _repo_dir(repo_path)
    config = get_default_yaml_file_path(repo_dir)
    if not config.is_file():
        raise FeatureStoreError(f"Feast config {config} does not exist")
    store = FeatureStore(repo_path=str(repo_dir))
    if spark_engine.is_spark(store):
        quiet_spark_warnings()
    return store


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did: the definitions, and one line per registry or infrastructure
    object it created, updated or deleted (none: the registry was up to date)."""

    definitions: Definitions
    changes: tuple[str, ...]
    objects: int
    """Objects of the definitions (entities, sources, views, services)."""

    def summary(self) -> list[str]:
        """``["feature store is up to date (7 objects)"]`` or the changes."""
        if not self.changes:
            return [f"feature store is up to date ({self.objects} objects)"]
        return list(self.changes)


def apply(repo_path: str | Path | None = None) -> Applied:
    """Register the repo's entities, sources, views and feature service in its registry,
    deleting ones no longer defined; like ``feast -c <repo> apply``, with the objects
    ``definitions.build`` makes from the repo's ``features.yaml``.

    The registry is compared with the definitions first (Feast's plan, ignoring the
    creation and update times Feast stamps on every object); when nothing differs nothing
    is written. Returns the definitions and the changes (``Applied``).

    Raises:
        SourceError: a source file is missing or unreadable, or its timestamps are naive.
        SpecError: the spec is wrong or a source file lacks a column of the spec.
    """
    repo_dir = _repo_dir(repo_path)
    spec = load_spec(repo_dir / SPEC_FILE)
    check_sources(spec, repo_dir)
    definitions = build(spec, repo_dir)
    store = get_store(repo_dir)
    contents = definitions.repo_contents(store.project)
    objects = sum(
        len(getattr(definitions, kind))
        for kind in ("entities", "sources", "feature_views", "feature_services")
    )
    with _feast_output():
        registry_diff, infra_diff, _ = store.plan(contents)
    changes = _changes(registry_diff, infra_diff)
    if changes:
        with _feast_output():
            apply_total_with_repo_instance(
                store, store.project, store.registry, contents, skip_source_validation=False
            )
    for line in changes:
        log.debug("feast apply: %s", line)
    return Applied(definitions, tuple(changes), objects)


def _changes(registry_diff: Any, infra_diff: Any) -> list[str]:
    """``"created feature view shopper_profile"``, ``"updated feature view shop_info (ttl)"``,
    ... for every object that differs, ignoring the ``meta`` of every message (creation and
    update times, materialization intervals: Feast's own diff reports those as updates)."""
    from feast.diff.property_diff import TransitionType
    from feast.feature_view import DUMMY_ENTITY_NAME

    verbs = {
        TransitionType.CREATE: "created",
        TransitionType.DELETE: "deleted",
        TransitionType.UPDATE: "updated",
    }
    lines = []
    for diff in registry_diff.feast_object_diffs:
        verb = verbs.get(diff.transition_type)
        if verb is None or diff.name == DUMMY_ENTITY_NAME:
            continue
        kind = diff.feast_object_type.value
        if verb != "updated":
            lines.append(f"{verb} {kind} {diff.name}")
            continue
        changed = [
            d.property_name
            for d in diff.feast_object_property_diffs
            if _without_meta(d.val_existing) != _without_meta(d.val_declared)
        ]
        if changed:
            lines.append(f"{verb} {kind} {diff.name} ({', '.join(changed)})")
    for diff in infra_diff.infra_object_diffs:
        verb = verbs.get(diff.transition_type)
        if verb is not None:
            kind = diff.infra_object_type.rpartition(".")[2]
            lines.append(f"{verb} {kind} {diff.name}")
    return lines


def _without_meta(value: Any) -> Any:
    """A protobuf message with every ``meta`` field cleared, at any depth (other values as
    they are)."""
    from google.protobuf.message import Message

    if not isinstance(value, Message):
        if isinstance(value, list | tuple) or type(value).__name__.startswith("Repeated"):
            return [_without_meta(v) for v in value]
        return value
    copy = type(value)()
    copy.CopyFrom(value)
    _clear_meta(copy)
    return copy


def _clear_meta(message: Any) -> None:
    for descriptor, value in message.ListFields():
        if descriptor.name == "meta":
            message.ClearField("meta")
        elif descriptor.message_type is not None:
            if descriptor.message_type.GetOptions().map_entry:
                if descriptor.message_type.fields_by_name["value"].message_type is not None:
                    for item in value.values():
                        _clear_meta(item)
            elif _is_repeated(descriptor):
                for item in value:
                    _clear_meta(item)
            else:
                _clear_meta(value)


def _is_repeated(descriptor: Any) -> bool:
    if hasattr(descriptor, "is_repeated"):  # protobuf >= 6 (``label`` is deprecated there)
        return descriptor.is_repeated
    return descriptor.label == descriptor.LABEL_REPEATED


# ------------------------------------------------------------------------- training


def get_training_data(
    window_start: datetime | str,
    window_end: datetime | str,
    *,
    repo_path: str | Path | None = None,
    out: str | Path | None = None,
) -> pd.DataFrame:
    """The training table of the entity rows (events) with ``window_start <= timestamp <
    window_end``.

    Returns one row per event, in the entity rows source's order, with ``spec.columns()``:
    the entity rows' columns (entity keys, request context, timestamp, label) as in the
    file, then each view's features as valid at the event time. Integer and bool features
    are pandas ``Int64`` and ``boolean`` (null where no version is valid: no version yet, or
    only ones older than the view's TTL), floats float64 (NaN), strings object (None), lists
    object columns of arrays (None). ``out``: also written there as parquet (to a temporary
    file, then renamed). 1M events take about 4 s on 2 cores, half of it in Feast's join.

    Raises:
        FeatureStoreError: a time has no time zone, start >= end, or no entity row is in
            the window (nothing is written then).
        SourceError: a source file is missing or unreadable.
        SpecError: the spec, the source files and the registry disagree.
    """
    start, end = to_utc(window_start, "window_start"), to_utc(window_end, "window_end")
    if start >= end:
        raise FeatureStoreError(f"window_start {start} is not before window_end {end}")
    repo = _open(repo_path)
    spec = repo.spec
    if spark_engine.is_spark(repo.store):
        table = _spark_training_data(repo, start, end)
        if out is not None:
            _write_parquet(table, Path(out))
        return table
    path = spec.source_path(spec.entity_rows, repo.dir)
    timestamp = spec.timestamp
    columns = [*(f.name for f in spec.entity_row_features()), timestamp, spec.label.name]
    events = pq.read_table(path, columns=columns)
    times = events[timestamp]
    in_window = pc.and_(
        pc.greater_equal(times, pa.scalar(start, times.type)),
        pc.less(times, pa.scalar(end, times.type)),
    )
    rows = events.filter(in_window).to_pandas()
    for f in spec.entity_row_features():  # a nullable int or bool column keeps its dtype
        if f.nullable and f.dtype in ("int64", "bool"):
            rows[f.name] = rows[f.name].astype(_NULLABLE[ARROW_TYPES[f.dtype]])
    if rows.empty:
        span = f"{pc.min(times)} .. {pc.max(times)}" if len(times) else "none"
        raise FeatureStoreError(f"no entity rows in [{start}, {end}) in {path} (its times: {span})")
    table = _join_features(repo, rows)
    if out is not None:
        _write_parquet(table, Path(out))
    return table


def write_training_shards(
    window_start: datetime | str,
    window_end: datetime | str,
    folder: str | Path,
    *,
    repo_path: str | Path | None = None,
    rows_per_file: int = shards.ROWS_PER_FILE,
    overwrite: bool = False,
) -> shards.Manifest:
    """The training table of ``get_training_data`` written as a shard folder
    (``feature_repo.shards``: one subfolder per UTC day, at most ``rows_per_file`` rows a
    file, rows in time order, ``_manifest.json`` with the row counts, schema and time range).

    On the Spark engine the table is computed and written by Spark and never held in this
    process; on duckdb it is retrieved in memory (as ``get_training_data``), then written.

    Raises:
        as ``get_training_data``; ShardError: ``folder`` exists and is not empty (without
        ``overwrite``).
    """
    start, end = to_utc(window_start, "window_start"), to_utc(window_end, "window_end")
    if start >= end:
        raise FeatureStoreError(f"window_start {start} is not before window_end {end}")
    repo = _open(repo_path)
    spec = repo.spec
    if spark_engine.is_spark(repo.store):
        table = spark_engine.training_table(
            repo.store, spec, repo.dir, start.to_pydatetime(), end.to_pydatetime()
        )
        if table is None:
            path = spec.source_path(spec.entity_rows, repo.dir)
            raise FeatureStoreError(f"no entity rows in [{start}, {end}) in {path}")
        with _quiet_warnings(), _feast_output():
            return spark_engine.write_shards(
                table, folder, spec.timestamp, rows_per_file=rows_per_file, overwrite=overwrite
            )
    table = get_training_data(start, end, repo_path=repo.dir)
    return shards.write_table(
        table, folder, spec.timestamp, rows_per_file=rows_per_file, overwrite=overwrite
    )


def _spark_training_data(repo: _Repo, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """``get_training_data`` on the Spark offline store: Spark reads, filters and joins, and
    the result is collected here in the entity rows' order (the in-memory path)."""
    spec = repo.spec
    t0 = time.perf_counter()
    with _quiet_warnings(), _feast_output():
        sdf = spark_engine.training_table(
            repo.store, spec, repo.dir, start.to_pydatetime(), end.to_pydatetime()
        )
        table = None if sdf is None else sdf.orderBy(spark_engine.ROW).toArrow()
    path = spec.source_path(spec.entity_rows, repo.dir)
    if table is None or not table.num_rows:
        raise FeatureStoreError(f"no entity rows in [{start}, {end}) in {path}")
    log.debug(
        "spark joined %s entity rows in %.1fs", f"{table.num_rows:,}", time.perf_counter() - t0
    )
    ts_type = pq.read_schema(path).field(spec.timestamp).type
    columns: dict[str, pd.Series] = {}
    for f in spec.entity_row_features():
        mapper = _NULLABLE.get if f.nullable and f.dtype in ("int64", "bool") else None
        columns[f.name] = table[f.name].to_pandas(types_mapper=mapper)
    columns[spec.timestamp] = pc.cast(table[spec.timestamp], ts_type).to_pandas()
    columns[spec.label.name] = table[spec.label.name].to_pandas()
    for view in spec.feature_views:
        for f in spec.view_features(view):
            columns[f.name] = _to_pandas(table[f.name], f.dtype)
    return pd.DataFrame(columns)


def get_features(entity_df: pd.DataFrame, *, repo_path: str | Path | None = None) -> pd.DataFrame:
    """``entity_df`` with every feature of the feature service joined as of each row's time.

    ``entity_df`` needs every entity's join key and the entity rows' timezone-aware
    timestamp column (``spec.timestamp``); other columns are kept as they are. Returns
    ``len(entity_df)`` rows in its order (index reset), its columns, then the features (types
    as in ``get_training_data``).

    Raises:
        FeatureStoreError: a column is missing, a timestamp is naive or null, a join key is
            null, a feature name is already a column, or there are no rows.
        SpecError: the spec, the source files and the registry disagree.
    """
    repo = _open(repo_path)
    return _join_features(repo, entity_df)


def _join_features(repo: _Repo, entity_df: pd.DataFrame) -> pd.DataFrame:
    spec, store = repo.spec, repo.store
    rows = _check_entity_rows(entity_df, spec)
    keys = [spec.entities[v.entity].join_key for v in spec.feature_views.values()]
    entity = rows[[*dict.fromkeys(keys), spec.timestamp]].copy()
    entity[_ROW] = np.arange(len(rows))
    t0 = time.perf_counter()
    progress = _progress("point-in-time join", total=len(rows), unit="rows")
    with progress as bar, _quiet_warnings(), _feast_output():
        job = store.get_historical_features(
            entity_df=entity, features=store.get_feature_service(spec.feature_service)
        )
        table = job.to_arrow()
        bar.update(table.num_rows)
    log.debug("joined %s entity rows in %.1fs", f"{len(rows):,}", time.perf_counter() - t0)
    if table.num_rows != len(rows):
        raise FeatureStoreError(
            f"Feast returned {table.num_rows:,} rows for {len(rows):,} entity rows"
        )
    table = table.take(pc.sort_indices(table[_ROW]))
    if not np.array_equal(table[_ROW].to_numpy(), np.arange(len(rows))):
        raise FeatureStoreError("Feast returned a different set of entity rows than it was given")
    features = {
        f.name: _to_pandas(table[f.name], f.dtype)
        for view in spec.feature_views
        for f in spec.view_features(view)
    }
    return pd.concat([rows, pd.DataFrame(features)], axis=1, copy=False)


def _check_entity_rows(entity_df: Any, spec: FeatureSpec) -> pd.DataFrame:
    """The entity rows with index ``0..n-1``, after checking what Feast needs."""
    if not isinstance(entity_df, pd.DataFrame):
        raise FeatureStoreError(f"entity rows must be a pandas DataFrame, got {type(entity_df)}")
    if entity_df.empty:
        raise FeatureStoreError("no entity rows")
    ts = spec.timestamp
    if ts not in entity_df.columns:
        raise FeatureStoreError(
            f"entity rows have no {ts!r} column (each row's event time, timezone-aware)"
        )
    dtype = entity_df[ts].dtype
    if not isinstance(dtype, pd.DatetimeTZDtype):
        hint = ""
        if pd.api.types.is_datetime64_dtype(dtype):
            hint = " (Feast would take naive times as UTC: use .dt.tz_localize(...) first)"
        raise FeatureStoreError(f"entity rows' {ts!r} is {dtype}, not timezone-aware{hint}")
    keys = [e.join_key for e in spec.entities.values()]
    for column in keys:
        if column not in entity_df.columns:
            raise FeatureStoreError(f"entity rows have no {column!r} column (a join key)")
    for column in [ts, *keys]:
        if entity_df[column].isna().any():
            raise FeatureStoreError(f"entity rows' {column!r} has nulls")
    for view in spec.feature_views:
        for f in spec.view_features(view):
            if f.name in entity_df.columns:
                raise FeatureStoreError(
                    f"entity rows already have a {f.name!r} column, a feature of view {view!r}"
                )
    return entity_df.reset_index(drop=True)


_NULLABLE = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
"""Arrow -> pandas types of columns that may hold nulls: ints and bools as pandas' nullable
dtypes (numpy's would turn them into floats and objects)."""


def _to_pandas(column: pa.ChunkedArray, dtype: str) -> pd.Series:
    """A Feast feature column -> pandas: ints as nullable Int64, bools as nullable boolean,
    lists as arrays or None."""
    if dtype in ("int64", "bool"):
        return column.to_pandas(types_mapper=_NULLABLE.get)
    return column.to_pandas()


def _write_parquet(table: pd.DataFrame, out: Path) -> None:
    """Write ``table`` to ``out`` all at once: a temporary file beside it, then a rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


# -------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class Materialized:
    """One feature view's materialization: its interval and the source rows (feature
    versions) in it, each entity's latest of which went to the online store. ``first``: an
    incremental materialization of a view never materialized before, which starts at the
    earliest feature time of the view's source."""

    view: str
    start: datetime
    end: datetime
    rows: int
    seconds: float = field(default=0.0, compare=False)
    first: bool = False

    def summary(self) -> str:
        since = " (first time: from the earliest feature time of its source)" if self.first else ""
        empty = "; nothing loaded" if not self.rows else ""
        return (
            f"materialized {self.view}: {self.rows:,} rows from {self.start:%Y-%m-%d %H:%M} "
            f"to {self.end:%Y-%m-%d %H:%M} UTC{since} in {self.seconds:.1f}s{empty}"
        )


def materialize(
    start: datetime | str, end: datetime | str, *, repo_path: str | Path | None = None
) -> list[Materialized]:
    """Load into the online store each entity's latest feature version with a timestamp in
    ``[start, end]``, for every online view; returns what each view loaded. Views that load
    no row are named in one warning (logger ``deepfm.features``) with the interval."""
    start_utc, end_utc = to_utc(start, "start"), to_utc(end, "end")
    if start_utc >= end_utc:
        raise FeatureStoreError(f"start {start_utc} is not before end {end_utc}")
    return _materialize(_open(repo_path), start_utc, end_utc)


def materialize_incremental(
    end: datetime | str, *, repo_path: str | Path | None = None
) -> list[Materialized]:
    """Load into the online store the versions since each online view's last
    materialization, up to ``end``; returns what each view loaded. A view never
    materialized starts at the earliest feature time of its source (``first`` in its
    ``Materialized``, and logged), whatever period the data covers. Views that load no row
    are named in one warning with the interval."""
    return _materialize(_open(repo_path), None, to_utc(end, "end"))


def _materialize(repo: _Repo, start: pd.Timestamp | None, end: pd.Timestamp) -> list[Materialized]:
    """Materialize view by view (``start`` None: incremental), one progress step each."""
    store, spec = repo.store, repo.spec
    order = {name: i for i, name in enumerate(spec.feature_views)}  # in spec order
    views = sorted(
        (v for v in store.list_feature_views() if v.online),
        key=lambda v: order.get(v.name, len(order)),
    )
    done = []
    with _progress("materialize", total=len(views), unit="view") as bar:
        for view in views:
            t0 = time.perf_counter()
            bar.set_postfix_str(view.name)
            view_start, first = start, False
            if view_start is None and view.most_recent_end_time:
                view_start = _utc(pd.Timestamp(view.most_recent_end_time))
            elif view_start is None:  # never materialized: from its source's first version
                first = True
                view_start = _earliest(spec, repo.dir, view.name)
                log.info(
                    "feature view %s was never materialized: from its source's earliest "
                    "feature time, %s",
                    view.name,
                    "none (empty source)" if view_start is None else view_start,
                )
            if view_start is not None and view_start <= end:
                with _feast_output(), _quiet_warnings():
                    store.materialize(
                        start_date=view_start.to_pydatetime(),
                        end_date=end.to_pydatetime(),
                        feature_views=[view.name],
                    )
            view_start = end if view_start is None else view_start
            rows = _source_rows(spec, repo.dir, view.name, view_start, end)
            done.append(
                Materialized(
                    view.name, view_start, end, rows, time.perf_counter() - t0, first=first
                )
            )
            bar.set_postfix_str(f"{view.name}: {rows:,} rows")
            bar.update()
    _warn_empty(spec, repo.dir, done)
    return done


def _warn_empty(spec: FeatureSpec, repo_dir: Path, done: list[Materialized]) -> None:
    """One warning per interval in which views loaded no row, naming them and the times
    their sources hold."""
    empty: dict[tuple[datetime, datetime], list[str]] = {}
    for m in done:
        if not m.rows:
            empty.setdefault((m.start, m.end), []).append(m.view)
    for (start, end), names in empty.items():
        spans = "; ".join(f"{name}: {_span(spec, repo_dir, name)}" for name in names)
        log.warning(
            "materialization loaded 0 rows of feature views %s in [%s, %s] UTC (their "
            "sources' feature times: %s)",
            ", ".join(names),
            f"{start:%Y-%m-%d %H:%M}",
            f"{end:%Y-%m-%d %H:%M}",
            spans,
        )


def _times(spec: FeatureSpec, repo_dir: Path, view: str) -> pa.ChunkedArray | None:
    """The feature times of view ``view``'s source file (None: not a view of the spec)."""
    spec_view = spec.feature_views.get(view)
    if spec_view is None:
        return None
    field_name = spec.sources[spec_view.source].timestamp_field
    path = spec.source_path(spec_view.source, repo_dir)
    return pq.read_table(path, columns=[field_name])[field_name]


def _earliest(spec: FeatureSpec, repo_dir: Path, view: str) -> pd.Timestamp | None:
    times = _times(spec, repo_dir, view)
    first = pc.min(times).as_py() if times is not None and len(times) else None
    return None if first is None else _utc(pd.Timestamp(first))


def _span(spec: FeatureSpec, repo_dir: Path, view: str) -> str:
    times = _times(spec, repo_dir, view)
    if times is None or not len(times) or pc.min(times).as_py() is None:
        return "none"
    low, high = (_utc(pd.Timestamp(pc.min_max(times)[k].as_py())) for k in ("min", "max"))
    return f"{low:%Y-%m-%d %H:%M} .. {high:%Y-%m-%d %H:%M}"


def _utc(ts: pd.Timestamp) -> pd.Timestamp:
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def _source_rows(spec: FeatureSpec, repo_dir: Path, view: str, start: Any, end: Any) -> int:
    """Rows of view ``view``'s source file with a timestamp in ``[start, end]``."""
    times = _times(spec, repo_dir, view)
    if times is None or not len(times):
        return 0
    in_range = pc.and_(
        pc.greater_equal(times, pa.scalar(start, times.type)),
        pc.less_equal(times, pa.scalar(end, times.type)),
    )
    return int(pc.sum(in_range).as_py() or 0)


@dataclass(frozen=True)
class Unstored:
    """An entity of an online request with no stored features in some of its views."""

    entity: str
    join_key: str
    value: Any
    views: tuple[str, ...]

    def note(self) -> str:
        """``no stored features for shopper_id=s9 (views: shopper_profile)``."""
        return (
            f"no stored features for {self.join_key}={self.value} (views: {', '.join(self.views)})"
        )


@dataclass(frozen=True)
class OnlineResult:
    """An online feature vector and the entities it found nothing stored for (their
    features are None in ``vector``)."""

    vector: dict[str, Any]
    unstored: tuple[Unstored, ...] = ()


def online_features(
    entities: dict[str, Any],
    context: dict[str, Any] | None = None,
    *,
    repo_path: str | Path | None = None,
) -> OnlineResult:
    """The online feature vector of one request, a model input row::

        online_features({"shopper_id": "s000123", "item_id": "i00042", "shop_id": 7},
                        {"channel": "web"}).vector
        # {"shopper_id": "s000123", "item_id": "i00042", "shop_id": 7, "channel": "web",
        #  "age": 41, "segment": "family", ..., "launch_year": None, ...}

    ``entities``: every entity's join key with its value; ``context``: request-context
    features (``spec.context_features()``), any of them. Values are typed by the spec: an
    int64 key or feature given as ``"12"`` becomes 12, a bool one as ``"true"`` True, a list
    one as ``"1,2"`` or ``"[1, 2]"`` a list. The vector's keys are in ``spec.columns()``
    order: the keys, the context given, then every online view's features (None where the
    entity has no stored version; the online store does not enforce TTLs). Entities with no
    stored features in a view are listed in ``OnlineResult.unstored``.

    Raises:
        FeatureStoreError: an unknown or missing join key, an unknown context name, or a
            value that does not fit its dtype; the message names the key and the valid ones.
    """
    repo = _open(repo_path, with_sources=False)
    spec, store = repo.spec, repo.store
    keys = spec.join_keys()
    request = _typed_values(spec, entities or {}, keys, "entity key")
    missing = [k for k in keys if k not in request]
    if missing:
        raise FeatureStoreError(
            f"missing entity keys: {', '.join(missing)} (give every one of: {', '.join(keys)})"
        )
    contexts = {f.name: f.dtype for f in spec.context_features()}
    given = _typed_values(spec, context or {}, contexts, "context feature")
    online = [v for v in spec.feature_views.values() if v.online]
    refs = [f"{v.name}:{f.name}" for v in online for f in spec.view_features(v.name)]
    values: dict[str, Any] = {**request, **given}
    unstored: list[Unstored] = []
    if refs:
        needed = {spec.entities[v.entity].join_key for v in online}
        with _feast_output(), _quiet_warnings():
            response = store.get_online_features(
                features=refs, entity_rows=[{k: v for k, v in request.items() if k in needed}]
            )
        found = _found(response)
        values |= {name: column[0] for name, column in response.to_dict().items()}
        for entity in spec.entities.values():
            empty = tuple(
                v.name
                for v in online
                if v.entity == entity.name
                and not any(found.get(f.name) for f in spec.view_features(v.name))
            )
            if empty:
                unstored.append(
                    Unstored(entity.name, entity.join_key, request[entity.join_key], empty)
                )
    vector = {name: values[name] for name in spec.columns() if name in values}
    return OnlineResult(vector, tuple(unstored))


def _found(response: Any) -> dict[str, bool]:
    """Feature name -> whether the online store had a stored value (present or null) for
    the request's entity."""
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    names = response.proto.metadata.feature_names.val
    return {
        name: any(s not in (FieldStatus.NOT_FOUND, FieldStatus.INVALID) for s in result.statuses)
        for name, result in zip(names, response.proto.results, strict=True)
    }


def _typed_values(
    spec: FeatureSpec, given: dict[str, Any], dtypes: dict[str, str], what: str
) -> dict[str, Any]:
    """``given`` with each value converted to its name's dtype; FeatureStoreError naming
    unknown names (and the valid ones) or a value that does not fit."""
    unknown = [name for name in given if name not in dtypes]
    if unknown:
        valid = ", ".join(dtypes) or "none"
        raise FeatureStoreError(
            f"unknown {what}{'s' if len(unknown) > 1 else ''}: {', '.join(map(str, unknown))} "
            f"(valid: {valid})"
        )
    return {
        name: _typed(value, dtypes[name], name, nullable=_nullable(spec, name))
        for name, value in given.items()
    }


def _nullable(spec: FeatureSpec, name: str) -> bool:
    join_keys = spec.join_keys()
    return name not in join_keys and spec.feature(name).nullable


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _typed(value: Any, dtype: str, name: str, *, nullable: bool = False) -> Any:
    """``value`` as a Python value of spec dtype ``dtype``: a string (from a command line) is
    parsed, a value of the right type is kept; FeatureStoreError naming ``name`` otherwise."""

    def bad(why: str = "") -> FeatureStoreError:
        return FeatureStoreError(f"{name}: expected {dtype}, got {value!r}{why}")

    if value is None:
        if nullable:
            return None
        raise bad(" (not nullable)")
    if dtype.startswith("list<"):
        element = dtype[5:-1]
        items = value
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    items = json.loads(text)
                except ValueError:
                    raise bad() from None
            else:
                items = [v.strip() for v in text.split(",")] if text else []
        if not isinstance(items, list | tuple | np.ndarray):
            raise bad()
        return [_typed(v, element, f"{name}[{i}]") for i, v in enumerate(items)]
    if dtype == "string":
        if not isinstance(value, str):
            raise bad()
        return value
    if dtype == "bool":
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
            return value.strip().lower() in _TRUE
        raise bad()
    if isinstance(value, bool | np.bool_):
        raise bad()
    if dtype == "int64":
        if isinstance(value, int | np.integer):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad() from None
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return int(value)
        raise bad()
    if isinstance(value, int | float | np.integer | np.floating):  # float64
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise bad() from None
    raise bad()


# -------------------------------------------------------------------------- helpers


def _progress_enabled() -> bool:
    """Progress bars: ``$DEEPFM_PROGRESS`` 1 or 0, else whether stderr is a terminal."""
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    return sys.stderr.isatty()


@contextlib.contextmanager
def _progress(desc: str, *, total: int, unit: str) -> Iterator[Any]:
    """A tqdm bar on stderr (disabled unless ``_progress_enabled``), redrawn twice a second
    so that its elapsed time moves while one long call (Feast's join) runs."""
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "rows",
        file=sys.stderr,
        disable=not _progress_enabled(),
        leave=False,
        dynamic_ncols=True,
    )
    stop = threading.Event()

    def redraw() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    ticker = threading.Thread(target=redraw, daemon=True)
    if not bar.disable:
        ticker.start()
    try:
        yield bar
    finally:
        stop.set()
        if ticker.is_alive():
            ticker.join()
        bar.close()


@contextlib.contextmanager
def _feast_output() -> Iterator[None]:
    """What Feast prints on stdout (apply's diffs, materialization's intervals), logged at
    DEBUG instead; printed as it comes when that level is on."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        for line in captured.getvalue().splitlines():
            if line.strip():
                log.debug("feast: %s", line)


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    """Library deprecation warnings (e.g. ibis' ``fetch_arrow_table() is deprecated`` inside
    Feast's duckdb reads) hidden unless DEBUG logging is on: a user can do nothing about
    them."""
    with warnings.catch_warnings():
        if not log.isEnabledFor(logging.DEBUG):
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module="(feast|ibis)")
        yield


def _repo_dir(repo_path: str | Path | None) -> Path:
    repo_dir = Path(repo_path or REPO_DIR).resolve()
    if not repo_dir.is_dir():
        raise FeatureStoreError(f"feature repo {repo_dir} is not a folder")
    return repo_dir


def _open(repo_path: str | Path | None, *, with_sources: bool = True) -> _Repo:
    """Load the repo's spec and store, and check the source files (``with_sources``) and
    the registry against the spec."""
    repo_dir = _repo_dir(repo_path)
    spec = load_spec(repo_dir / SPEC_FILE)
    if with_sources:
        check_sources(spec, repo_dir)
    store = get_store(repo_dir)
    registry = store.config.registry.path
    if "://" not in registry:
        registry = str(repo_dir / registry)
    views = store.list_feature_views()
    if not views:
        raise FeatureStoreError(
            f"the Feast registry {registry} has no feature views of project "
            f"{store.project!r}: run `deepfm features apply` first"
        )
    deployed = Definitions(
        entities=tuple(e for e in store.list_entities() if not e.name.startswith("__")),
        sources=tuple(store.list_data_sources()),
        feature_views=tuple(views),
        feature_services=tuple(store.list_feature_services()),
    )
    check_definitions(
        spec,
        deployed,
        repo_dir,
        where=f"the Feast registry {registry}",
        hint="; run `deepfm features apply` to update the registry",
    )
    return _Repo(repo_dir, spec, store)


def to_utc(value: datetime | str, name: str) -> pd.Timestamp:
    """A timezone-aware time (datetime, pandas Timestamp or ISO 8601 string) in UTC;
    FeatureStoreError naming ``name`` if it is naive or not a time."""
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as e:
        raise FeatureStoreError(f"{name} {value!r} is not a time: {e}") from None
    if ts is pd.NaT:
        raise FeatureStoreError(f"{name} is missing")
    if ts.tz is None:
        raise FeatureStoreError(
            f"{name} {value!s} has no time zone; give one, e.g. 2026-11-01T00:00:00Z"
        )
    return ts.tz_convert("UTC")

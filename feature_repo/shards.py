"""The training table as shards: parquet files partitioned by day, with a manifest.

A shard folder holds one subfolder per UTC day of the table's timestamp column and in each
at most ``rows_per_file`` rows per file, in time order (ties in the table's order)::

    <folder>/_manifest.json
    <folder>/2026-11-01/part-00000.parquet
    <folder>/2026-11-01/part-00001.parquet
    <folder>/2026-11-02/part-00000.parquet

The day folders are plain names, not ``day=...``, so any parquet reader of the folder
(``pd.read_parquet(folder)``) sees the table's own columns and nothing more; the manifest's
name starts with ``_``, which parquet dataset readers skip. The manifest lists every file
in order with its row count and time range, the schema, the rows and the time range of the
whole table (``Manifest``); it is written last, so a folder with a manifest is complete.

Writers: ``ShardWriter`` (record batches in time order, memory bounded by one batch and
one open file per day in flight), ``write_table`` (a whole table, sorted here) and
``write_parquet_file`` (a parquet file in time order, streamed in batches); Spark writes its
shards itself (``feature_repo.spark_engine.write_shards``) and ``finish`` writes the
manifest from the files' footers. Readers: ``read_manifest``, ``rank_files`` (each rank
its own files, balanced by rows), ``iter_batches`` (bounded batches of one rank's files in
order) and ``load_frame`` (the whole folder as one pandas frame, for the in-memory path).
``split_tail`` splits a folder into its first rows and the rest (the features step's train
and eval folders: ``model.train.time_split``'s rows), moving whole files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
FORMAT = "deepfm-shards/1"
ROWS_PER_FILE = 1_000_000
"""Default file size: about 100-200 MB of parquet for the sample's columns."""


class ShardError(ValueError):
    """A shard folder without a manifest, or input the writer cannot shard; the message
    names the folder, file or column."""


@dataclass(frozen=True)
class ShardFile:
    path: str
    """Relative to the shard folder: ``2026-11-01/part-00000.parquet``."""
    rows: int
    min_time: str | None
    max_time: str | None


@dataclass(frozen=True)
class Manifest:
    folder: Path
    timestamp: str
    rows: int
    min_time: str | None
    max_time: str | None
    schema: dict[str, str]
    """Column -> Arrow type, in the files' column order."""
    files: tuple[ShardFile, ...] = field(default=())
    partitioning: str = "day"

    def paths(self) -> list[Path]:
        return [self.folder / f.path for f in self.files]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "timestamp": self.timestamp,
            "partitioning": self.partitioning,
            "rows": self.rows,
            "min_time": self.min_time,
            "max_time": self.max_time,
            "schema": self.schema,
            "files": [f.__dict__ for f in self.files],
        }


# --------------------------------------------------------------------------- writing


class ShardWriter:
    """Write record batches whose timestamps never decrease into a new shard folder.

    ``with ShardWriter(folder, "event_ts") as w: w.write(batch) ...`` writes into a temporary
    folder beside ``folder`` and, on a clean exit, the manifest and then a rename: the
    folder appears complete or not at all (an existing one is replaced only with
    ``overwrite``).

    Raises:
        ShardError: the timestamp column is missing, not a timezone-aware or naive
            timestamp, null, or goes back in time.
    """

    def __init__(
        self,
        folder: str | Path,
        timestamp: str,
        *,
        rows_per_file: int = ROWS_PER_FILE,
        overwrite: bool = False,
    ) -> None:
        if rows_per_file < 1:
            raise ShardError(f"rows_per_file must be at least 1, got {rows_per_file}")
        self.folder = Path(folder)
        self.timestamp = timestamp
        self.rows_per_file = rows_per_file
        self.overwrite = overwrite
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self._day: str | None = None
        self._part = 0
        self._in_file = 0
        self._last: Any = None
        self._schema: pa.Schema | None = None

    def __enter__(self) -> ShardWriter:
        _check_target(self.folder, self.overwrite)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", dir=self.folder.parent))
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        self._close_file()
        assert self._tmp is not None
        if kind is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        try:
            finish(self._tmp, self.timestamp)
            _replace(self._tmp, self.folder)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        if not table.num_rows:
            return
        if self._schema is None:
            self._schema = table.schema
        elif not table.schema.equals(self._schema):
            table = table.cast(self._schema)
        micros = _micros(table, self.timestamp)
        start = micros[:1] if self._last is None else np.r_[self._last, micros[:1]]
        if (np.diff(micros) < 0).any() or (np.diff(start) < 0).any():
            raise ShardError(f"{self.timestamp!r} goes back in time: write rows in time order")
        days = micros.astype("datetime64[us]").astype("datetime64[D]")
        # split where the day changes
        cuts = np.flatnonzero(days[1:] != days[:-1]) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(days)], strict=True):
            self._write_day(str(days[lo]), table.slice(int(lo), int(hi - lo)))
        self._last = micros[-1]

    def _write_day(self, day: str, table: pa.Table) -> None:
        if day != self._day:
            self._close_file()
            self._day, self._part = day, 0
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                assert self._tmp is not None
                path = self._tmp / day / f"part-{self._part:05d}.parquet"
                path.parent.mkdir(exist_ok=True)
                self._writer = pq.ParquetWriter(path, table.schema)
                self._in_file = 0
            take = min(self.rows_per_file - self._in_file, table.num_rows - offset)
            self._writer.write_table(table.slice(offset, take))
            self._in_file += take
            offset += take
            if self._in_file >= self.rows_per_file:
                self._close_file()
                self._part += 1

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_table(
    table: pa.Table | pd.DataFrame,
    folder: str | Path,
    timestamp: str,
    *,
    rows_per_file: int = ROWS_PER_FILE,
    overwrite: bool = False,
) -> Manifest:
    """Write ``table`` as shards (sorted by ``timestamp``, ties in the table's order)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    _check_timestamp(table.schema, timestamp, "the table")
    order = pc.sort_indices(table, sort_keys=[(timestamp, "ascending")])  # stable
    with ShardWriter(folder, timestamp, rows_per_file=rows_per_file, overwrite=overwrite) as w:
        w.write(table.take(order))
    return read_manifest(folder)


def write_parquet_file(
    path: str | Path,
    folder: str | Path,
    timestamp: str,
    *,
    rows_per_file: int = ROWS_PER_FILE,
    batch_rows: int = 65_536,
    overwrite: bool = False,
) -> Manifest:
    """Shard the parquet file ``path``, whose rows are in time order (as the features
    step's train and eval files are), reading ``batch_rows`` rows at a time."""
    source = pq.ParquetFile(path)
    _check_timestamp(source.schema_arrow, timestamp, str(path))
    with ShardWriter(folder, timestamp, rows_per_file=rows_per_file, overwrite=overwrite) as w:
        for batch in source.iter_batches(batch_size=batch_rows):
            w.write(batch)
    return read_manifest(folder)


def finish(folder: str | Path, timestamp: str) -> Manifest:
    """Write the manifest of the parquet files under ``folder`` (its day subfolders, in
    path order) from their footers alone; returns it.

    Raises:
        ShardError: no parquet file, or files whose columns differ.
    """
    folder = Path(folder)
    paths = sorted(p for p in folder.glob("*/*.parquet") if not p.name.startswith((".", "_")))
    if not paths:
        raise ShardError(f"{folder}: no parquet files to list in a manifest")
    schema = pq.read_schema(paths[0])
    _check_timestamp(schema, timestamp, str(paths[0]))
    files = []
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        if meta.schema.to_arrow_schema().names != schema.names:
            raise ShardError(f"{path}: columns {meta.schema.names} differ from {schema.names}")
        low, high = _time_range(meta, schema.get_field_index(timestamp))
        files.append(ShardFile(str(path.relative_to(folder)), meta.num_rows, low, high))
    lows = [f.min_time for f in files if f.min_time]
    highs = [f.max_time for f in files if f.max_time]
    manifest = Manifest(
        folder=folder,
        timestamp=timestamp,
        rows=sum(f.rows for f in files),
        min_time=min(lows) if lows else None,
        max_time=max(highs) if highs else None,
        schema={f.name: str(f.type) for f in schema},
        files=tuple(files),
    )
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest.to_json(), indent=1))
    os.replace(tmp, folder / MANIFEST)
    return manifest


# --------------------------------------------------------------------------- reading


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of the shard folder ``folder``.

    Raises:
        ShardError: ``folder`` has no manifest (not a shard folder, or an unfinished one).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(f"{folder} is not a shard folder: it has no {MANIFEST}") from None
    except ValueError as e:
        raise ShardError(f"{path} is not valid JSON: {e}") from None
    if data.get("format") != FORMAT:
        raise ShardError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    return Manifest(
        folder=folder,
        timestamp=data["timestamp"],
        rows=int(data["rows"]),
        min_time=data["min_time"],
        max_time=data["max_time"],
        schema=dict(data["schema"]),
        files=tuple(ShardFile(**f) for f in data["files"]),
        partitioning=data.get("partitioning", "day"),
    )


def rank_files(manifest: Manifest, rank: int = 0, world_size: int = 1) -> list[ShardFile]:
    """The files rank ``rank`` of ``world_size`` reads: every file goes to exactly one rank,
    the next file (in time order) to the rank with the fewest rows so far (the lowest rank
    on ties); each rank's files stay in time order.

    Raises:
        ShardError: ``rank`` is not in ``[0, world_size)``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ShardError(f"rank {rank} is not in [0, {world_size})")
    loads = [0] * world_size
    mine = []
    for f in manifest.files:  # one step per file, not per row
        to = loads.index(min(loads))
        loads[to] += f.rows
        if to == rank:
            mine.append(f)
    return mine


def iter_batches(
    folder: str | Path,
    *,
    batch_rows: int = 65_536,
    rank: int = 0,
    world_size: int = 1,
    columns: Iterable[str] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_rows`` rows of rank ``rank``'s files
    (``rank_files``), in order; memory is bounded by one batch and one file's reader."""
    manifest = read_manifest(folder)
    wanted = list(columns) if columns is not None else None
    for f in rank_files(manifest, rank, world_size):
        reader = pq.ParquetFile(manifest.folder / f.path)
        yield from reader.iter_batches(batch_size=batch_rows, columns=wanted)


def load_table(folder: str | Path, columns: Iterable[str] | None = None) -> pa.Table:
    """Every file of the shard folder, in order, as one Arrow table."""
    manifest = read_manifest(folder)
    wanted = list(columns) if columns is not None else None
    tables = [pq.read_table(p, columns=wanted) for p in manifest.paths()]
    return pa.concat_tables(tables) if tables else pa.table({})


def load_frame(
    folder: str | Path,
    nullable: Iterable[str] = (),
    columns: Iterable[str] | None = None,
) -> pd.DataFrame:
    """The shard folder as one pandas frame (the in-memory path), rows in order: int and
    bool columns named in ``nullable`` as pandas' nullable ``Int64`` / ``boolean`` (as the
    feature store returns features), other columns as the files' pandas metadata or
    Arrow's defaults give them."""
    table = load_table(folder, columns)
    nullable = set(nullable)
    mapping = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    frame = {}
    for name in table.column_names:
        column = table[name]
        if name in nullable and column.type in mapping:
            frame[name] = column.to_pandas(types_mapper=mapping.get)
        else:
            frame[name] = table.select([name]).to_pandas()[name]
    return pd.DataFrame(frame)


# ---------------------------------------------------------------------------- helpers


def _check_timestamp(schema: pa.Schema, timestamp: str, where: str) -> None:
    if timestamp not in schema.names:
        raise ShardError(f"{where} has no timestamp column {timestamp!r}")
    if not pa.types.is_timestamp(schema.field(timestamp).type):
        raise ShardError(f"{where}: {timestamp!r} is {schema.field(timestamp).type}, not a time")


def _micros(table: pa.Table, timestamp: str) -> np.ndarray:
    """Each row's time in microseconds since the epoch (UTC); ShardError on nulls."""
    ts = table[timestamp]
    if ts.null_count:
        raise ShardError(f"{timestamp!r} has {ts.null_count} null values: rows need a time")
    micros = pc.cast(ts, pa.timestamp("us", tz=ts.type.tz), safe=False)
    return pc.cast(micros, pa.int64()).to_numpy()


def _time_range(meta: pq.FileMetaData, column: int) -> tuple[str | None, str | None]:
    """The min and max of column ``column`` over the row groups' statistics, ISO 8601."""
    low = high = None
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max:
            continue
        low = stats.min if low is None else min(low, stats.min)
        high = stats.max if high is None else max(high, stats.max)
    return _iso(low), _iso(high)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")).isoformat()


def _check_target(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not overwrite and (not folder.is_dir() or any(folder.iterdir())):
        raise ShardError(f"{folder} exists and is not empty (overwrite it explicitly)")


def _replace(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` to ``folder``, replacing an old one after the move."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old.{os.getpid()}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def split_tail(
    source: str | Path,
    eval_fraction: float,
    head: str | Path,
    tail: str | Path,
    *,
    batch_rows: int = 65_536,
    overwrite: bool = False,
) -> tuple[Manifest, Manifest]:
    """Split the shard folder ``source`` (rows in time order) into ``head``, its first
    ``round(rows * (1 - eval_fraction))`` rows, and ``tail``, the rest: the rows
    ``model.train.time_split`` gives, as two shard folders. Whole files are moved (same
    file system), only the file the cut falls in is read, in batches; ``source`` is
    consumed. Both folders appear complete or not at all.

    Raises:
        ShardError: ``eval_fraction`` not in (0, 1), or a cut that leaves one side empty.
    """
    manifest = read_manifest(source)
    if not 0.0 < eval_fraction < 1.0:
        raise ShardError(f"eval fraction must be in (0, 1), got {eval_fraction}")
    cut = int(round(manifest.rows * (1.0 - eval_fraction)))
    if cut <= 0 or cut >= manifest.rows:
        raise ShardError(f"a time split of {manifest.rows} rows leaves one side empty")
    head, tail = Path(head), Path(tail)
    for folder in (head, tail):
        _check_target(folder, overwrite)
        folder.parent.mkdir(parents=True, exist_ok=True)
    tmps = [Path(tempfile.mkdtemp(prefix=f".{f.name}.", dir=f.parent)) for f in (head, tail)]
    try:
        offset = 0
        for f in manifest.files:  # one step per file
            src = manifest.folder / f.path
            if offset + f.rows <= cut or offset >= cut:
                dest = tmps[0 if offset + f.rows <= cut else 1] / f.path
                dest.parent.mkdir(exist_ok=True)
                os.replace(src, dest)
            else:  # the cut is in this file: its first rows to head, the rest to tail
                _split_file(src, cut - offset, [t / f.path for t in tmps], batch_rows)
            offset += f.rows
        done = tuple(finish(t, manifest.timestamp) for t in tmps)
        for t, folder in zip(tmps, (head, tail), strict=True):
            _replace(t, folder)
    finally:
        for t in tmps:
            shutil.rmtree(t, ignore_errors=True)
    shutil.rmtree(manifest.folder, ignore_errors=True)
    return tuple(  # type: ignore[return-value]
        Manifest(**{**m.__dict__, "folder": folder})
        for m, folder in zip(done, (head, tail), strict=True)
    )


def _split_file(src: Path, first: int, dests: list[Path], batch_rows: int) -> None:
    """The first ``first`` rows of the parquet file ``src`` to ``dests[0]``, the rest to
    ``dests[1]``, streamed in batches."""
    reader = pq.ParquetFile(src)
    writers = []
    for d in dests:
        d.parent.mkdir(exist_ok=True)
        writers.append(pq.ParquetWriter(d, reader.schema_arrow))
    try:
        seen = 0
        for batch in reader.iter_batches(batch_size=batch_rows):
            take = min(max(first - seen, 0), batch.num_rows)
            if take:
                writers[0].write_batch(batch.slice(0, take))
            if take < batch.num_rows:
                writers[1].write_batch(batch.slice(take))
            seen += batch.num_rows
    finally:
        for w in writers:
            w.close()


def is_shard_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a shard manifest."""
    return (Path(path) / MANIFEST).is_file()

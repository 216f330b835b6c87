"""A starting feature spec inferred from the user's tables (``deepfm features init``).

Like TFDV's schema inference: read the events table (the entity rows: entity keys, request
context, label, timestamp) and one table per entity (its join key, a timestamp, its
features), look at the values, and propose a ``features.yaml`` for the user to review. The
proposal loads with ``load_spec`` as written; its comments say what was inferred
(``# inferred: 12 distinct values seen``) and what to look at (``# review: ...``).

What is inferred, per column (statistics on at most ``SAMPLE_ROWS`` rows of each table):

- ``dtype``: int64, float64, string, bool, list<int64> or list<string> from the Parquet
  type (narrower ints and floats widen; a dictionary column is its values' type); a column
  of another type (a second timestamp, a struct, a list of floats) is left out, said so;
- ``nullable``: any null (or NaN) seen;
- ``valid``: the set of values seen when there are at most ``SMALL_VOCAB`` of them, else
  the ``{min, max}`` range seen for numbers (only ``min`` for an entity key: ids grow);
- ``model_features`` (``model.config.FeatureConfig`` keys) with groups:
  a small vocabulary -> ``id`` with ``vocab``; a large one (strings, entity keys, int
  columns named like ids) -> ``id`` with ``vocab: {min_count: 2}``, or
  ``hash_bucket_size`` beyond ``VOCAB_LIMIT`` distinct values; a list -> ``multi_id``
  pooled by mean; another number -> bucketised by its deciles (wide, fm, deep) plus a
  normalised dense input (deep only); a list of ids and an id column (or list) of another
  table holding the same ids -> a ``match`` feature (``<key>_in_<list>``), see
  ``_propose_matches``.

A feature view per entity table, its ``ttl_days`` the days between the table's oldest
version and the last event, rounded up; the grouping key of grouped AUC is the first
entity's key unless given. Example::

    text = infer_spec(
        Path("orders.parquet"),
        {"shopper": ("shopper_id", Path("shoppers.parquet"))},
        label="bought",
        timestamp="order_time",
    )
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import yaml

from feature_repo.spec import REPO_DIR, SPEC_FILE, SpecError, load_spec

SAMPLE_ROWS = 1_000_000
"""At most this many rows of each table (chosen at random, seeded) feed the statistics."""

SMALL_VOCAB = 50
"""A column with at most this many distinct values is a small vocabulary: its values are
listed in ``valid`` and it is encoded as an id with a vocabulary of every value."""

VOCAB_LIMIT = 100_000
"""Beyond this many distinct values an id is hashed (``hash_bucket_size``) rather than
given a fitted vocabulary."""

EMBEDDING_DIM = 16
MATCH_OVERLAP = 0.5
"""Two columns hold the same ids (and a list of them gets a match feature) when the smaller
set of distinct ids is at least this share of the larger and this share of it is shared."""
MAX_LIST_LENGTH = 64
"""The largest ``max_length`` proposed for a list column (its longest list seen, capped)."""

ID_DENSITY = 0.001
"""An int column with fewer distinct values than this fraction of its range is taken for
ids (e.g. 60 maker ids between 400000 and 9900000), not for a number."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ID_LIKE = re.compile(r"(^id$|_id$|[a-z]Id$|_key$|_code$)")


@dataclass
class _Table:
    """A table read for inference: its sample, its size and its timestamp's full range."""

    path: Path
    data: pa.Table
    rows: int
    timestamp: str = ""
    first: datetime | None = None
    last: datetime | None = None

    @property
    def columns(self) -> list[str]:
        return self.data.column_names

    @property
    def note(self) -> str:
        sampled = f", statistics on a sample of {self.data.num_rows:,}"
        return f"{self.rows:,} rows" + (sampled if self.data.num_rows < self.rows else "")


@dataclass
class _Column:
    """What was inferred about one column."""

    name: str
    dtype: str
    nullable: bool
    valid: dict[str, Any] | None
    model_features: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ids: set | None = None  # the distinct ids of an id or id-list column (for matches)


# --------------------------------------------------------------------------- reading


def _read(path: Path, what: str, sample_rows: int) -> _Table:
    """The table at ``path`` (a Parquet file or folder), sampled to ``sample_rows`` rows."""
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        dataset = ds.dataset(str(path), format="parquet")
        rows = dataset.count_rows()
        if rows > sample_rows:
            rng = np.random.default_rng(0)
            data = dataset.take(np.sort(rng.choice(rows, sample_rows, replace=False)))
        else:
            data = dataset.to_table()
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{what}: {path} is not a readable Parquet table: {e}") from None
    if rows == 0:
        raise ValueError(f"{what}: {path} has no rows")
    return _Table(path, data, rows)


def _column(table: _Table, name: str, flag: str) -> pa.ChunkedArray:
    if name not in table.columns:
        known = ", ".join(table.columns)
        raise ValueError(f"{flag}: no column {name!r} in {table.path.name} (columns: {known})")
    return table.data.column(name)


def _set_time_range(table: _Table, column: str, flag: str) -> None:
    """Record ``column`` as the table's timestamp and its range over every row."""
    if not pa.types.is_timestamp(_column(table, column, flag).type):
        got = table.data.column(column).type
        raise ValueError(
            f"{flag}: column {column!r} of {table.path.name} is {got}, not a timestamp"
        )
    full = ds.dataset(str(table.path), format="parquet").to_table(columns=[column])
    bounds = pc.min_max(full.column(column))
    first, last = bounds["min"].as_py(), bounds["max"].as_py()
    if first is None:
        raise ValueError(f"{flag}: column {column!r} of {table.path.name} holds no time")
    table.timestamp, table.first, table.last = column, _utc(first), _utc(last)


def _utc(t: datetime) -> datetime:
    """A time with its zone; a naive one is taken as UTC (as Feast takes it)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _feature_timestamp(table: _Table, timestamp: str, entity: str) -> str:
    """An entity table's timestamp: the events' timestamp name, else its only
    timezone-aware timestamp column."""
    if timestamp in table.columns:
        return timestamp
    aware = [
        f.name for f in table.data.schema if pa.types.is_timestamp(f.type) and f.type.tz is not None
    ]
    if len(aware) != 1:
        found = f"found {', '.join(aware)}" if aware else "found none"
        raise ValueError(
            f"--entity {entity}: {table.path.name} needs a timestamp column: {timestamp!r} or "
            f"exactly one timezone-aware timestamp column ({found})"
        )
    return aware[0]


# ------------------------------------------------------------------------ statistics


def _dtype(arrow: pa.DataType) -> str | None:
    """The spec dtype of an Arrow type, or None when the spec has none for it."""
    if pa.types.is_dictionary(arrow):
        arrow = arrow.value_type
    if pa.types.is_boolean(arrow):
        return "bool"
    if pa.types.is_integer(arrow):
        return "int64"
    if pa.types.is_floating(arrow):
        return "float64"
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return "string"
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow):
        element = _dtype(arrow.value_type)
        return f"list<{element}>" if element in ("int64", "string") else None
    return None


def _plain(values: pa.ChunkedArray) -> pa.Array:
    array = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _missing(array: pa.Array) -> int:
    """How many values are null (or NaN, for floats)."""
    missing = array.null_count
    if pa.types.is_floating(array.type):
        missing += pc.sum(pc.is_nan(array)).as_py() or 0
    return missing


def _present(array: pa.Array) -> pa.Array:
    """The non-missing values (list elements for a list column)."""
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        array = pc.list_flatten(array)
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
    array = array.drop_null()
    if pa.types.is_floating(array.type):
        array = array.filter(pc.invert(pc.is_nan(array)))
    return array


def _scalar(value: Any, element: str) -> Any:
    if element == "int64":
        return int(value)
    if element == "float64":
        return float(value)
    return value


def _round_out(x: float, direction: Any) -> float:
    """``x`` to four significant digits, rounded by ``direction`` (math.floor for a
    minimum, math.ceil for a maximum) so that the range still holds every value seen."""
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10.0 ** (math.floor(math.log10(abs(x))) - 3)
    return float(f"{direction(x / scale) * scale:.4g}")


def _boundaries(values: pa.Array, element: str) -> list[float | int]:
    """Distinct deciles of the values (strictly increasing; ints as ints, floats to four
    significant digits)."""
    qs = np.quantile(values.to_numpy(zero_copy_only=False).astype(float), np.linspace(0.1, 0.9, 9))
    out: list[float | int] = []
    for q in qs:
        b: float | int = int(round(q)) if element == "int64" else float(f"{q:.4g}")
        if not out or b > out[-1]:
            out.append(b)
    return out


def _sparse(values: pa.Array, distinct: int) -> bool:
    """Whether ints look like ids rather than numbers: few distinct values over a range
    more than ``1 / ID_DENSITY`` times wider."""
    bounds = pc.min_max(values)
    width = bounds["max"].as_py() - bounds["min"].as_py() + 1
    return distinct < ID_DENSITY * width


def _id_encoding(distinct: int, small: bool) -> dict[str, Any]:
    if small:
        return {"vocab": {"min_count": 1}}
    if distinct <= VOCAB_LIMIT:
        return {"vocab": {"min_count": 2}}
    return {"hash_bucket_size": 1 << math.ceil(math.log2(2 * distinct))}


def _infer_column(name: str, values: pa.ChunkedArray, *, key: bool = False) -> _Column | str:
    """What the values of column ``name`` say about it, or why it is left out."""
    dtype = _dtype(values.type)
    if dtype is None:
        return f"its type {values.type} has no spec dtype"
    array = _plain(values)
    element = dtype.removeprefix("list<").removesuffix(">")
    missing = _missing(array)
    present = _present(array)
    distinct_values = pc.unique(present)
    distinct = len(distinct_values)
    small = distinct <= SMALL_VOCAB
    col = _Column(name, dtype, missing > 0, None)
    what = "elements" if dtype.startswith("list") else "values"
    col.comments.append(f"inferred: {distinct:,} distinct {what} seen")
    if missing:
        col.comments.append(f"inferred: nullable, {missing:,} of {len(array):,} rows missing")
    if distinct == 0:
        col.comments.append("review: no value seen; nothing could be inferred")
        return col
    if small and not key and element != "float64":
        seen = sorted(_scalar(v, element) for v in distinct_values.to_pylist())
        col.valid = {"values": seen}
        col.comments.append("review: valid lists the values seen; add any the sample missed")
    elif element in ("int64", "float64"):
        bounds = pc.min_max(present)
        lo, hi = (_scalar(bounds[k].as_py(), element) for k in ("min", "max"))
        if element == "float64":
            lo, hi = _round_out(lo, math.floor), _round_out(hi, math.ceil)
        col.valid = {"min": lo} if key else {"min": lo, "max": hi}
        col.comments.append(
            "inferred: valid from the smallest value seen (ids grow)"
            if key
            else "review: valid is the range seen; widen it if values may go beyond"
        )
    groups = ["wide", "fm", "deep"]
    ids = set(distinct_values.to_pylist()) if element in ("int64", "string") else None
    if dtype.startswith("list"):
        col.ids = ids
        lengths = pc.list_value_length(array).drop_null()
        longest = max(1, min(MAX_LIST_LENGTH, pc.max(lengths).as_py() or 1))
        col.model_features.append(
            {"type": "multi_id", **_id_encoding(distinct, small), "embedding_dim": EMBEDDING_DIM,
             "pooling": "mean", "max_length": longest, "groups": ["fm", "deep"]}
        )  # fmt: skip
        col.comments.append(f"inferred: lists of up to {longest} elements -> ids pooled by mean")
    elif key or element in ("string", "bool") or (small and element == "int64"):
        col.model_features.append(
            {"type": "id", **_id_encoding(distinct, small), "embedding_dim": EMBEDDING_DIM,
             "groups": groups}
        )  # fmt: skip
        # a few small ints (a level, an age) are codes, not ids another table shares
        col.ids = None if small and element == "int64" and not _ID_LIKE.search(name) else ids
        encoding = "a vocabulary of every value" if small else "a vocabulary (min_count 2)"
        if not small and distinct > VOCAB_LIMIT:
            encoding = "hashed ids"
        col.comments.append(f"inferred: {'small' if small else 'large'} vocabulary -> {encoding}")
    elif element == "int64" and (_ID_LIKE.search(name) or _sparse(present, distinct)):
        col.model_features.append(
            {"type": "id", **_id_encoding(distinct, False), "embedding_dim": EMBEDDING_DIM,
             "groups": groups}
        )  # fmt: skip
        col.ids = ids
        col.comments.append(
            "inferred: ids (by the name, or few values spread over a wide range); review: "
            "a number? bucketise it"
        )
    else:
        numbers = present.to_numpy(zero_copy_only=False).astype(float)
        bounds = _boundaries(present, element)
        if bounds:
            col.model_features.append(
                {"type": "raw", "boundaries": bounds, "embedding_dim": EMBEDDING_DIM,
                 "groups": groups}
            )  # fmt: skip
        median, p99 = np.quantile(numbers, [0.5, 0.99])
        skewed = numbers.min() >= 0 and p99 > 10 * max(median, 1e-12)
        normalizer = "log1p_standard" if skewed else "standard"
        col.model_features.append(
            {"name": f"{name}_dense", "type": "raw", "normalizer": normalizer, "groups": ["deep"]}
        )
        col.comments.append(
            f"inferred: a number -> {len(bounds)} decile boundaries (wide, fm, deep) and a "
            f"{normalizer} dense input (deep)"
        )
    return col


# -------------------------------------------------------------------------- the spec


def _flow(value: Any) -> str:
    """``value`` as one line of flow-style YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 30)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _identifier(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if _NAME.match(name) else f"t_{name}"


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


def _days(first: datetime, last: datetime) -> int:
    return max(1, math.ceil((last - first).total_seconds() / 86400))


def infer_spec(
    events: str | Path,
    entities: dict[str, tuple[str, str | Path]],
    label: str,
    timestamp: str,
    *,
    service: str | None = None,
    group_key: str | None = None,
    sample_rows: int = SAMPLE_ROWS,
    paths: dict[Path, str] | None = None,
) -> str:
    """A proposed ``features.yaml`` (YAML text with comments) for the events table
    ``events`` and, per entity name, its ``(join key, table)``.

    ``paths`` (filled when given) maps each table to its path relative to the data
    directory, as the spec names it (the file's name, made unique).

    Raises:
        ValueError: a table, the label, the timestamp or a key is missing or of a wrong
            type; one line naming it (``--label``, ``--timestamp``, ``--entity NAME``).
        FileNotFoundError: a table does not exist.
    """
    events_table = _read(Path(events), "--events", sample_rows)
    for flag, column in (("--label", label), ("--timestamp", timestamp)):
        _column(events_table, column, flag)
    for flag, column in (("--label", label),):
        if not _NAME.match(column):
            raise ValueError(f"{flag}: {column!r} is not a name of letters, digits and _")
    _set_time_range(events_table, timestamp, "--timestamp")
    if not entities:
        raise ValueError("--entity: give at least one entity (NAME=KEY:TABLE)")
    keys: dict[str, str] = {}
    tables: dict[str, _Table] = {}
    for entity, (key, path) in entities.items():
        flag = f"--entity {entity}"
        if not _NAME.match(entity):
            raise ValueError(f"{flag}: the entity name must be letters, digits and _")
        if key in (label, timestamp):
            raise ValueError(f"{flag}: the key {key!r} is the label or the timestamp")
        if key in keys.values():
            other = next(e for e, k in keys.items() if k == key)
            raise ValueError(f"{flag}: {key!r} is already the key of entity {other!r}")
        if not _NAME.match(key):
            raise ValueError(f"{flag}: the key {key!r} is not a name of letters, digits and _")
        key_type = _dtype(_column(events_table, key, flag).type)
        table = _read(Path(path), flag, sample_rows)
        table_type = _dtype(_column(table, key, flag).type)
        if key_type not in ("int64", "string") or key_type != table_type:
            raise ValueError(
                f"{flag}: key {key!r} is {key_type or events_table.data.column(key).type} in "
                f"{events_table.path.name} and {table_type or table.data.column(key).type} in "
                f"{table.path.name}; a key is int64 or string in both"
            )
        _set_time_range(table, _feature_timestamp(table, timestamp, entity), flag)
        keys[entity], tables[entity] = key, table
    if group_key is not None:
        _column(events_table, group_key, "--group-key")
        if group_key in (label, timestamp):
            raise ValueError(f"--group-key: {group_key!r} is the label or the timestamp")

    # names: sources and views after their tables' files, each unique
    taken: set[str] = set()
    files: set[str] = set()
    relative: dict[Path, str] = {}

    def source_for(table: _Table) -> str:
        name = _unique(_identifier(table.path.stem), taken)
        file = table.path.name
        if file in files:
            file = f"{name}{''.join(table.path.suffixes) or '.parquet'}"
        files.add(file)
        relative[table.path] = file
        return name

    rows = source_for(events_table)
    sources = {entity: source_for(t) for entity, t in tables.items()}
    views = dict(sources)  # a view is named after its source
    service = service or f"{rows}_ranking"
    if not _NAME.match(service):
        raise ValueError(f"--service: {service!r} is not a name of letters, digits and _")
    if paths is not None:
        paths.update(relative)

    # columns: the entity rows' (keys first), then each entity table's
    skipped: list[str] = []
    used = {label, timestamp}
    row_columns: list[_Column] = []
    for name in [*keys.values(), *(c for c in events_table.columns if c not in keys.values())]:
        if name in used:
            continue
        got = _infer_one(events_table, name, key=name in keys.values(), skipped=skipped)
        if got is not None:
            row_columns.append(got)
            used.add(name)
    view_columns: dict[str, list[_Column]] = {}
    for entity, table in tables.items():
        view_columns[entity] = []
        for name in table.columns:
            if name in (keys[entity], table.timestamp):
                continue
            if name in used:
                skipped.append(
                    f"{name} of {table.path.name}: the name is taken by another column; "
                    "rename one to use both"
                )
                continue
            got = _infer_one(table, name, key=False, skipped=skipped)
            if got is not None:
                view_columns[entity].append(got)
                used.add(name)
        if not view_columns[entity]:
            raise ValueError(f"--entity {entity}: {table.path.name} has no feature column")
    _propose_matches([row_columns, *view_columns.values()], used)
    _unique_model_names([*row_columns, *(c for cs in view_columns.values() for c in cs)], used)

    label_col = _infer_column(label, events_table.data.column(label))
    if isinstance(label_col, str) or label_col.dtype not in ("int64", "bool"):
        raise ValueError(f"--label: column {label!r} must hold 0/1 ints or bools")
    last_event = events_table.last
    assert last_event is not None
    group_key = group_key or next(iter(keys.values()))

    lines = [
        "# A starting feature spec inferred by `deepfm features init` (docs/ARCHITECTURE.md,",
        '# "One feature spec"). Review it: every "# review:" line, the valid values and',
        "# ranges (seen in the data, not the rules of the data), the encodings and groups.",
        f"# Tables: {events_table.path.name} ({events_table.note})"
        + "".join(f", {t.path.name} ({t.note})" for t in tables.values())
        + ".",
        "",
        f"label: {_flow(_label_mapping(label_col))}",
        *_comments(label_col.comments[:1], indent=""),
        *(
            ["# review: the label is nullable in the data; rows without one cannot train"]
            if label_col.nullable
            else []
        ),
        "",
        f"group_key: {group_key}  # grouped AUC averages over its groups"
        + ("" if group_key != next(iter(keys.values())) else " (the first entity's key)"),
        "",
        "entities:",
    ]
    for entity, key in keys.items():
        lines.append(f"  {entity}: {_flow({'join_key': key})}")
    lines += [
        "",
        "# Paths are relative to the data directory (<repo>/data unless $DEEPFM_DATA_DIR).",
    ]
    lines.append("sources:")
    span = f"{events_table.first:%Y-%m-%d} to {last_event:%Y-%m-%d}"
    lines.append(
        f"  {rows}: {_flow({'path': relative[events_table.path], 'timestamp_field': timestamp})}"
        f"  # the entity rows, events {span}"
    )
    for entity, table in tables.items():
        mapping = {"path": relative[table.path], "timestamp_field": table.timestamp}
        lines.append(f"  {sources[entity]}: {_flow(mapping)}")
    lines += ["", f"entity_rows: {rows}", "", "feature_views:"]
    for entity, table in tables.items():
        assert table.first is not None
        ttl = _days(table.first, last_event)
        mapping = {"source": sources[entity], "entity": entity, "ttl_days": ttl}
        lines.append(
            f"  {views[entity]}: {_flow(mapping)}  # inferred: oldest version "
            f"{table.first:%Y-%m-%d}, last event {last_event:%Y-%m-%d}; review: versions "
            "older than the TTL come back null"
        )
    lines += ["", f"feature_service: {service}", "", "features:"]
    lines.append(f"  # ---- entity rows ({rows}): entity keys and request context")
    for col in row_columns:
        lines += _feature_lines(col, f"source: {rows}")
    for entity in tables:
        lines += ["", f"  # ---- view {views[entity]} (entity {entity})"]
        for col in view_columns[entity]:
            lines += _feature_lines(col, f"view: {views[entity]}")
    if skipped:
        lines += ["", "# Left out (review):"]
        lines += [f"#   {s}" for s in skipped]
    text = "\n".join(lines) + "\n"
    _check_loads(text)
    return text


def _infer_one(table: _Table, name: str, *, key: bool, skipped: list[str]) -> _Column | None:
    if not _NAME.match(name):
        skipped.append(f"{name} of {table.path.name}: not a name of letters, digits and _")
        return None
    got = _infer_column(name, table.data.column(name), key=key)
    if isinstance(got, str):
        skipped.append(f"{name} of {table.path.name}: {got}")
        return None
    return got


def _propose_matches(tables: list[list[_Column]], taken: set[str]) -> None:
    """A ``match`` feature for each list of ids and each id column (or list of ids) of
    another table drawn from the same ids: a cross of two entities (the ad's category among
    the user's interest categories) that the FM's dot products learn slowly. "The same ids":
    the two hold ids of one dtype, the smaller set of distinct ids is at least
    ``MATCH_OVERLAP`` of the larger one's size, and at least that share of it is in the
    other (so a 6-value store id is not matched against 20 interest ids). A column of at
    most ``SMALL_VOCAB`` ints not named like ids (a level, an age) is taken for codes, not
    ids, and gets none."""
    paired: set[frozenset[str]] = set()  # two lists match once, not both ways
    for i, lists in enumerate(tables):
        for col in lists:
            if not col.dtype.startswith("list") or not col.ids:
                continue
            element = col.dtype.removeprefix("list<").removesuffix(">")
            longest = col.model_features[0]["max_length"]
            for other in (c for j, cs in enumerate(tables) if j != i for c in cs):
                if other.dtype not in (element, col.dtype) or not other.ids:
                    continue
                small, large = sorted((len(col.ids), len(other.ids)))
                shared = len(col.ids & other.ids)
                pair = frozenset((col.name, other.name))
                if (
                    small < MATCH_OVERLAP * large
                    or shared < MATCH_OVERLAP * small
                    or pair in paired
                ):
                    continue
                paired.add(pair)
                is_list = other.dtype == col.dtype
                cap = min(longest, other.model_features[0]["max_length"]) if is_list else 1
                # final name in _unique_model_names (the same unless it clashes)
                name = _unique(f"{other.name}_in_{col.name}", set(taken))
                col.model_features.append(
                    {"name": name, "type": "match", "key": other.name, "max_length": cap,
                     "embedding_dim": EMBEDDING_DIM, "groups": ["wide", "fm", "deep"]}
                )  # fmt: skip
                what = "how many of its ids are" if is_list else "whether its id is"
                col.comments.append(
                    f"inferred: {other.name} holds the same ids ({shared:,} of "
                    f"{len(other.ids):,} seen in both) -> {name}: {what} in the list; review: "
                    "drop it if they are different things"
                )


def _unique_model_names(columns: list[_Column], taken: set[str]) -> None:
    """Rename the extra model features (``<column>_dense``) that clash with a column or
    with each other."""
    names = set(taken) | {c.name for c in columns}
    for col in columns:
        for m in col.model_features:
            if "name" in m:
                m["name"] = _unique(m["name"], names)


def _label_mapping(col: _Column) -> dict[str, Any]:
    mapping: dict[str, Any] = {"name": col.name, "dtype": col.dtype}
    if col.valid is not None:
        mapping["valid"] = col.valid
    return mapping


def _comments(comments: list[str], indent: str) -> list[str]:
    return [f"{indent}# {c}" for c in comments]


def _feature_lines(col: _Column, where: str) -> list[str]:
    lines = [f"  - name: {col.name}", f"    {where}", f"    dtype: {col.dtype}"]
    if col.nullable:
        lines.append("    nullable: true")
    if col.valid is not None:
        lines.append(f"    valid: {_flow(col.valid)}")
    lines += _comments(col.comments, indent="    ")
    if col.model_features:
        lines.append("    model_features:")
        lines += [f"      - {_flow(m)}" for m in col.model_features]
    return lines


def _check_loads(text: str) -> None:
    """The proposal must load as written; a failure here is a bug of the inference."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SPEC_FILE
        path.write_text(text)
        try:
            load_spec(path)
        except SpecError as e:
            raise RuntimeError(f"the inferred feature spec does not load: {e}") from None


# ---------------------------------------------------------------------------- init


def parse_entity(text: str) -> tuple[str, tuple[str, Path]]:
    """``NAME=KEY:TABLE`` -> ``(NAME, (KEY, Path(TABLE)))``."""
    name, eq, rest = text.partition("=")
    key, colon, table = rest.partition(":")
    if not (eq and colon and name and key and table):
        raise ValueError(
            f"--entity {text}: expected NAME=KEY:TABLE, e.g. shopper=shopper_id:shoppers.parquet"
        )
    return name, (key, Path(table))


def init_repo(
    repo: str | Path,
    events: str | Path,
    entities: dict[str, tuple[str, str | Path]],
    label: str,
    timestamp: str,
    *,
    service: str | None = None,
    group_key: str | None = None,
    force: bool = False,
    sample_rows: int = SAMPLE_ROWS,
) -> Path:
    """Infer a spec (``infer_spec``) and write a feature repo to ``repo``: the repo's files
    (``feature_repo.repo.write_repo_files``) and a copy of each table in its ``data/``.
    Returns the spec's path.

    Raises:
        ValueError: ``repo`` already has a ``features.yaml`` (and not ``force``) or is the
            project's own feature repo; bad input as ``infer_spec`` says.
    """
    from feature_repo.repo import write_repo_files

    repo = Path(repo)
    if repo.resolve() == REPO_DIR:
        raise ValueError(f"--repo: {repo} is the project's own feature repo; give a new folder")
    if (repo / SPEC_FILE).exists() and not force:
        raise ValueError(f"--repo: {repo / SPEC_FILE} exists; give --force to replace it")
    paths: dict[Path, str] = {}
    text = infer_spec(
        events, entities, label, timestamp,
        service=service, group_key=group_key, sample_rows=sample_rows, paths=paths,
    )  # fmt: skip
    write_repo_files(repo, text)
    data = repo / "data"
    data.mkdir(parents=True, exist_ok=True)
    for source, relative in paths.items():
        target = data / relative
        if target.exists() and source.resolve() == target.resolve():
            continue
        if target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
    return repo / SPEC_FILE


def cmd_init(args: argparse.Namespace) -> None:
    """``deepfm features init``: write the inferred repo; say where on stderr, and print
    ``{"repo", "spec", "features"}`` as JSON."""
    entities: dict[str, tuple[str, Path]] = {}
    for text in args.entity or []:
        name, value = parse_entity(text)
        if name in entities:
            raise ValueError(f"--entity {name}: given twice")
        entities[name] = value
    repo = Path(args.repo or ".")
    spec_path = init_repo(
        repo, args.events, entities, args.label, args.timestamp,
        service=args.service, group_key=args.group_key, force=args.force,
    )  # fmt: skip
    spec = load_spec(spec_path)
    print(
        f"wrote {spec_path}: {len(spec.features)} features, {len(spec.feature_views)} feature "
        "views; review it (the lines marked '# review:'), then `deepfm features apply "
        f"--repo {repo}`",
        file=sys.stderr,
    )
    print(json.dumps({"repo": str(repo), "spec": str(spec_path), "features": len(spec.features)}))

"""Streamed training: rows read from parquet files in bounded batches, never all in memory.

The in-memory path (``model.train.train``) encodes the whole table once; this one reads
the training rows as ``Piece`` s (a row range of a parquet file; the shard folders of
``feature_repo.shards`` give one piece per file, in time order) and keeps at most a
bounded number of rows:

- **Encoders** are fitted in one pass (``fit_encoder``): per batch each id feature's
  counts (summed, then the same ``min_count`` / ``max_size`` / order as
  ``IdEncoder.fit``, through ``IdEncoder.set_vocab``), its kind (int or str ids), and each
  normalised number's count, mean and sum of squared deviations (merged exactly as
  Chan et al.'s parallel variance). The result equals the in-memory fit on the same rows
  (the mean and std to float rounding).
- **Epochs** (``StreamedRows``): each process reads its own pieces (``assign_pieces``: the
  next piece in time order to the process with the fewest rows so far, the rule of
  ``feature_repo.shards.rank_files``), encodes a batch of rows at a time and passes them
  through a **shuffle buffer**: ``buffer_rows`` rows (at most the rows of the epoch),
  allocated once and filled in place. Once it is full, each read batch's rows take the
  places of as many rows drawn at random from it (distinct slots drawn in time
  proportional to the read batch, not to the buffer), which are trained on; at the end
  of the epoch the rows it holds, permuted. Every row is trained on once an epoch, and the
  memory is the buffer plus a read batch in and one out, whatever the number of rows.
  The next read batch is read and encoded in a background thread while the current one
  trains (``read_ahead``; validation and evaluation score the same way).
  Every process trains the same number of rows (the largest share; a process with fewer
  rows starts its pieces again for the rest), so the processes take the same steps.
  The permutations come from the generator the in-memory path seeds for the epoch, so
  with a buffer of at least the rows (one process) the order of the rows, and hence the
  model, is the in-memory path's. ``buffer_rows=0`` trains in file order.
- **Validation and evaluation** (``StreamedEval``): scored a batch at a time into
  ``StreamedMetrics``: the AUC from a histogram of the scores (``AUC_BINS`` bins over
  [0, 1] per class; pairs in different bins are counted exactly, pairs in one bin as
  half, so the error is at most ``auc_error_bound`` = (pairs of a positive and a negative
  in one bin) / (2 x all such pairs), reported with it), logloss, normalized entropy,
  calibration, the positive rate, mean prediction and count exactly (sums), and
  ``grouped_auc`` exactly: each row's group key hash, label and score spilled to hash
  partitions on disk, read back one partition at a time (``model.group_spill``).

``train_streamed`` is ``model.train.train`` on pieces: the validation split is the
trailing ``train.validation_fraction`` of the rows (the pieces are in time order), the
epochs, checkpoints, resume and early stop are ``model.train``'s own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from model.config import Config, check_columns
from model.deepfm import DeepFM
from model.features import (
    EncodedFeatures,
    FeatureEncoder,
    IdEncoder,
    MatchEncoder,
    RawEncoder,
    _id_kind,
    _id_values,
)
from model.group_spill import GroupSpill
from model.train import (
    EncodedDataset,
    TrainResult,
    _checkpoint_split,
    _fit,
    _log_to_stderr,
    _one_class,
    _set_up_processes,
    encode_dataset,
    score,
)

log = logging.getLogger("deepfm.train")

BATCH_ROWS = 65_536
"""Rows read (and encoded) at a time."""
AUC_BINS = 2**20
_MERGE_IDS = 250_000  # batches' id counts held before they are merged (beyond 2x merged)
_EPS = 1e-7


@dataclass(frozen=True)
class Piece:
    """Rows ``skip .. skip + rows`` of the parquet file ``path``."""

    path: str
    skip: int
    rows: int


def file_pieces(paths: Iterable[str], rows: Iterable[int] | None = None) -> list[Piece]:
    """One piece per whole file (row counts from ``rows`` or the files' footers)."""
    paths = [str(p) for p in paths]
    counts = (
        list(rows) if rows is not None else [pq.ParquetFile(p).metadata.num_rows for p in paths]
    )
    return [Piece(p, 0, int(n)) for p, n in zip(paths, counts, strict=True) if n]


def row_range(pieces: list[Piece], lo: int, hi: int) -> list[Piece]:
    """The rows ``lo .. hi`` of the pieces taken one after another, as pieces."""
    out, offset = [], 0
    for p in pieces:  # one step per piece
        a, b = max(lo - offset, 0), min(hi - offset, p.rows)
        if b > a:
            out.append(Piece(p.path, p.skip + a, b - a))
        offset += p.rows
    return out


def total_rows(pieces: Iterable[Piece]) -> int:
    return sum(p.rows for p in pieces)


def assign_pieces(pieces: list[Piece], world: int) -> list[list[Piece]]:
    """Each process's pieces: the next piece (in order) to the process with the fewest
    rows so far, the lowest on ties (``feature_repo.shards.rank_files``' rule)."""
    loads, out = [0] * world, [[] for _ in range(world)]
    for p in pieces:
        to = loads.index(min(loads))
        loads[to] += p.rows
        out[to].append(p)
    return out


def iter_frames(
    pieces: Iterable[Piece], columns: list[str] | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[pd.DataFrame]:
    """The pieces' rows as DataFrames of at most ``batch_rows`` rows, in order (the files'
    pandas metadata applies, as for ``pd.read_parquet``)."""
    for p in pieces:
        reader = pq.ParquetFile(p.path)
        seen, end = 0, p.skip + p.rows
        for batch in reader.iter_batches(batch_size=batch_rows, columns=columns):
            lo, hi = max(p.skip - seen, 0), min(end - seen, batch.num_rows)
            seen += batch.num_rows
            if hi > lo:
                table = pa.Table.from_batches([batch.slice(lo, hi - lo)])
                yield table.to_pandas(types_mapper=_lists_as_arrow)
            if seen >= end:
                break


def _lists_as_arrow(t: pa.DataType):
    """List columns stay Arrow arrays in the frame (``pd.ArrowDtype``): the encoder reads
    them back as Arrow without building a Python object per row and per value."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pd.ArrowDtype(t)
    return None


def needed_columns(cfg: Config, available: list[str]) -> list[str]:
    """The columns training reads: the features' sources, label, weight, grouping key."""
    data = cfg.data
    wanted = {*cfg.input_columns(), data.label}
    if data.sample_weight:
        wanted.add(data.sample_weight)
    if data.group_key and data.group_key in available:
        wanted.add(data.group_key)
    return [c for c in available if c in wanted]


# -------------------------------------------------------------------------- fit


class _IdFit:
    """One id feature's kind and counts over batches."""

    def __init__(self, enc: IdEncoder) -> None:
        self.enc = enc
        self.first_kind: str | None = None
        self.kinds: set[str] = set()
        self.floats = False  # a float column: str ids of whole floats read '7.0'
        self.parts: dict[str, list[pd.Series]] = {"int": [], "str": []}
        self.pending = 0
        self.merged: dict[str, pd.Series | None] = {"int": None, "str": None}

    def add(self, df: pd.DataFrame) -> None:
        f = self.enc.feature
        raw = pd.Series(self.enc._raw(df), copy=False)
        kind = _id_kind(raw)
        self.first_kind = self.first_kind or kind
        if not raw.notna().any():
            return
        self.kinds.add(kind)
        self.floats |= pd.api.types.is_float_dtype(raw.dtype)
        if f.vocab is not None:
            values, missing = _id_values(raw, kind, f.name)
            counts = pd.Series(values[~missing]).value_counts(sort=False)
            self.parts[kind].append(counts)
            self.pending += len(counts)
            # merged when the batches' counts outgrow the merged ones: memory follows the
            # distinct ids (which the tables hold anyway), not the rows
            merged = sum(len(m) for m in self.merged.values() if m is not None)
            if self.pending > 2 * merged + _MERGE_IDS:
                self._merge()
        elif f.num_buckets is not None:
            self.enc.kind = kind
            self.enc.encode_values(raw)  # fails early on out-of-range ids

    def _merge(self) -> None:
        for kind, parts in self.parts.items():
            old = self.merged[kind]
            if old is not None:
                parts.insert(0, old)
            if parts:
                self.merged[kind] = pd.concat(parts).groupby(level=0, sort=False).sum()
            self.parts[kind] = []
        self.pending = 0

    def finish(self) -> None:
        kind = "str" if "str" in self.kinds else "int" if self.kinds else self.first_kind
        self.enc.kind = kind or "int"
        if self.enc.feature.vocab is None:
            return
        self._merge()
        ints, strs = self.merged["int"], self.merged["str"]
        if kind == "str" and ints is not None:  # ids read as ints in some batches only
            name = (lambda v: str(float(v))) if self.floats else str
            ints.index = pd.Index([name(v) for v in ints.index], dtype=object)
            strs = ints if strs is None else pd.concat([strs, ints]).groupby(level=0).sum()
            ints = None
        counts = strs if kind == "str" else ints
        if counts is None:
            counts = pd.Series([], dtype="int64")
        self.enc.set_vocab(counts.astype("int64"))


class _RawFit:
    """One normalised number's count, mean and sum of squared deviations over batches."""

    def __init__(self, enc: RawEncoder) -> None:
        self.enc = enc
        f = enc.feature
        self.active = f.boundaries is None and f.normalizer != "none"
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, df: pd.DataFrame) -> None:
        if not self.active:
            return
        values = self.enc._values(df)
        finite = values[~np.isnan(values)]
        if not len(finite):
            return
        nb, mb = len(finite), float(finite.mean())
        m2b = float(((finite - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    def finish(self) -> None:
        if self.active and self.n:
            self.enc.mean = self.mean
            std = math.sqrt(self.m2 / self.n)
            self.enc.std = std if std > 0 else 1.0


def fit_encoder(cfg: Config, frames: Iterable[pd.DataFrame]) -> FeatureEncoder:
    """``FeatureEncoder(cfg).fit`` over the rows of ``frames`` taken together, one pass."""
    encoder = FeatureEncoder(cfg)
    fits = [
        _RawFit(e) if isinstance(e, RawEncoder) else _IdFit(e)
        for e in encoder.encoders.values()
        if not isinstance(e, MatchEncoder)  # nothing to fit
    ]
    rows = 0
    for df in frames:
        rows += len(df)
        for fit in fits:
            fit.add(df)
    if rows == 0:
        raise ValueError("cannot fit feature encoders on an empty training set")
    for fit in fits:
        fit.finish()
    encoder.fitted = True
    return encoder


# ----------------------------------------------------------------------- epochs


def _cat(chunks: list[EncodedDataset]) -> EncodedDataset:
    if len(chunks) == 1:
        return chunks[0]
    f = [c.features for c in chunks]
    weights = None if chunks[0].weights is None else torch.cat([c.weights for c in chunks])
    return EncodedDataset(
        EncodedFeatures(
            torch.cat([x.sparse for x in f]),
            torch.cat([x.multi for x in f]),
            torch.cat([x.dense for x in f]),
        ),
        torch.cat([c.labels for c in chunks]),
        weights,
    )


def _take(data: EncodedDataset, rows: torch.Tensor) -> EncodedDataset:
    weights = None if data.weights is None else data.weights[rows]
    return EncodedDataset(data.features.index(rows), data.labels[rows], weights)


def _slice(data: EncodedDataset, start: int, stop: int) -> EncodedDataset:
    weights = None if data.weights is None else data.weights[start:stop]
    return EncodedDataset(data.features.slice(start, stop), data.labels[start:stop], weights)


_END = object()


def read_ahead(items: Iterator):
    """``items``, each produced in a background thread while the previous one is used:
    reading and encoding the next batch of rows overlaps training on this one (pyarrow,
    pandas and the training step release the GIL for their heavy parts). The same items
    in the same order; an error in producing one is raised where it would be used. At
    most one item is ahead, so memory grows by one read batch."""
    with ThreadPoolExecutor(1, thread_name_prefix="deepfm-read-ahead") as pool:
        ahead = pool.submit(next, items, _END)
        while True:
            item = ahead.result()
            if item is _END:
                return
            ahead = pool.submit(next, items, _END)
            yield item


def _empty_like(data: EncodedDataset, rows: int) -> EncodedDataset:
    """A dataset of ``rows`` rows shaped like ``data``'s, to be filled by ``_put``."""

    def empty(t: torch.Tensor) -> torch.Tensor:
        return torch.empty((rows, *t.shape[1:]), dtype=t.dtype)

    f = data.features
    weights = None if data.weights is None else empty(data.weights)
    return EncodedDataset(
        EncodedFeatures(empty(f.sparse), empty(f.multi), empty(f.dense)),
        empty(data.labels),
        weights,
    )


def _put(into: EncodedDataset, rows: torch.Tensor, data: EncodedDataset) -> None:
    """Writes ``data``'s rows at ``rows`` of ``into`` (in place)."""
    f, g = into.features, data.features
    f.sparse[rows], f.multi[rows], f.dense[rows] = g.sparse, g.multi, g.dense
    into.labels[rows] = data.labels
    if into.weights is not None:
        into.weights[rows] = data.weights


class StreamedRows:
    """One process's training rows, streamed (the module docstring): ``rows_per_rank``
    rows an epoch from ``pieces``, through a shuffle buffer of ``buffer_rows`` rows."""

    def __init__(
        self,
        cfg: Config,
        encoder: FeatureEncoder,
        pieces: list[Piece],
        rows_per_rank: int,
        *,
        columns: list[str],
        buffer_rows: int,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        if rows_per_rank and not total_rows(pieces):
            raise ValueError(
                "streamed training: this process has no rows to read (fewer files than "
                "processes: write the shards with smaller files)"
            )
        self.cfg, self.encoder, self.pieces = cfg, encoder, pieces
        self.rows_per_rank = rows_per_rank
        self.columns, self.buffer_rows, self.batch_rows = columns, buffer_rows, batch_rows
        self.peak_buffered = 0  # the most rows the shuffle buffer held

    def __len__(self) -> int:
        return self.rows_per_rank

    def _encoded(self) -> Iterator[EncodedDataset]:
        """This process's rows, encoded a read batch at a time; its pieces again from the
        start until ``rows_per_rank`` rows are given."""
        left = self.rows_per_rank
        while left > 0:
            for df in iter_frames(self.pieces, self.columns, self.batch_rows):
                df = df.iloc[:left]
                data = encode_dataset(self.cfg, self.encoder, df, "the training data")
                left -= len(df)
                yield EncodedDataset(data.features, data.labels, data.weights)
                if left <= 0:
                    return

    def shuffled(self, gen: torch.Generator) -> Iterator[EncodedDataset]:
        """The epoch's rows through the shuffle buffer (module docstring), in chunks."""
        if self.buffer_rows <= 0:
            yield from read_ahead(self._encoded())
            return
        cap = min(self.buffer_rows, self.rows_per_rank)
        buf: EncodedDataset | None = None
        held = 0
        swap: np.random.Generator | None = None  # seeded from ``gen`` at the first swap
        for chunk in read_ahead(self._encoded()):
            if buf is None:
                buf = _empty_like(chunk, cap)
            fill = min(cap - held, len(chunk))
            _put(buf, torch.arange(held, held + fill), _slice(chunk, 0, fill))
            held += fill
            self.peak_buffered = max(self.peak_buffered, held)
            for start in range(fill, len(chunk), cap):  # full: rows in, random rows out
                rest = _slice(chunk, start, min(start + cap, len(chunk)))
                if swap is None:
                    swap = np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)[0]))
                # distinct random slots in O(rows in), not a permutation of the whole buffer
                slots = torch.from_numpy(swap.choice(cap, len(rest), replace=False))
                out = _take(buf, slots)
                _put(buf, slots, rest)
                yield out
        if held:
            order = torch.randperm(held, generator=gen)
            for start in range(0, held, self.batch_rows):
                yield _take(buf, order[start : start + self.batch_rows])

    def batches(
        self, epoch: int, first: int, dev: torch.device
    ) -> Iterator[tuple[EncodedFeatures, torch.Tensor, torch.Tensor | None]]:
        """The epoch's batches of ``train.batch_size`` rows (the last one smaller) from
        batch ``first`` on, on ``dev``; the generator is the in-memory path's."""
        size = self.cfg.train.batch_size
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + epoch)
        carry: EncodedDataset | None = None
        step = 0
        for chunk in self.shuffled(gen):
            if carry is not None and len(carry):
                chunk = _cat([carry, chunk])
            full = len(chunk) // size * size
            for start in range(0, full, size):
                if step >= first:
                    yield _on(_slice(chunk, start, start + size), dev)
                step += 1
            carry = _slice(chunk, full, len(chunk))
        if carry is not None and len(carry) and step >= first:
            yield _on(carry, dev)


def _on(data: EncodedDataset, dev: torch.device):
    weights = None if data.weights is None else data.weights.to(dev)
    return data.features.to(dev), data.labels.to(dev), weights


# ------------------------------------------------------------------- evaluation


class StreamedMetrics:
    """Metrics accumulated over batches of (labels, scores) (the module docstring): the
    binary ones of ``model.metrics.binary_metrics`` with the AUC by score histogram and
    its ``auc_error_bound``, or ``mse`` / ``mae`` for regression. ``grouped``: each batch
    comes with its rows' group keys, spilled for an exact ``grouped_auc``
    (``model.group_spill.GroupSpill``, sized for ``rows`` rows); ``close`` (or leaving a
    ``with`` block) removes the spill, ``result`` too once it has read it."""

    def __init__(
        self,
        regression: bool = False,
        bins: int = AUC_BINS,
        *,
        grouped: bool = False,
        rows: int | None = None,
    ) -> None:
        self.regression, self.bins = regression, bins
        self.groups = GroupSpill(rows=rows) if grouped and not regression else None
        self.pos = np.zeros(bins, dtype=np.int64)
        self.neg = np.zeros(bins, dtype=np.int64)
        self.score_sums = np.zeros(bins)  # per bin: the sum of its scores (calibration)
        self.count = 0
        self.sums = dict.fromkeys(("label", "score", "logloss", "sq", "abs"), 0.0)

    def add(self, labels: np.ndarray, scores: np.ndarray, groups=None) -> None:
        y = np.asarray(labels, dtype=np.float64)
        s = np.asarray(scores, dtype=np.float64)
        if self.groups is not None:
            if groups is None:
                raise ValueError("grouped_auc needs the grouping key's values")
            self.groups.add(y, s, groups)
        self.count += len(y)
        self.sums["label"] += float(y.sum())
        self.sums["score"] += float(s.sum())
        if self.regression:
            err = s - y
            self.sums["sq"] += float((err**2).sum())
            self.sums["abs"] += float(np.abs(err).sum())
            return
        p = np.clip(s, _EPS, 1 - _EPS)
        self.sums["logloss"] += float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).sum())
        at = np.clip((s * self.bins).astype(np.int64), 0, self.bins - 1)
        positive = y > 0.5
        self.pos += np.bincount(at[positive], minlength=self.bins)
        self.neg += np.bincount(at[~positive], minlength=self.bins)
        self.score_sums += np.bincount(at, weights=s, minlength=self.bins)

    def auc(self) -> tuple[float, float]:
        """(AUC, the most it can differ from the exact AUC); NaN with one class."""
        n_pos, n_neg = int(self.pos.sum()), int(self.neg.sum())
        if n_pos == 0 or n_neg == 0:
            return float("nan"), 0.0
        pos, neg = self.pos.astype(np.float64), self.neg.astype(np.float64)
        below = np.cumsum(neg) - neg  # negatives in lower bins
        pairs = float(n_pos) * float(n_neg)
        value = float((pos * (below + 0.5 * neg)).sum() / pairs)
        return value, float((pos * neg).sum() / (2.0 * pairs))

    def result(self, names: Iterable[str]) -> dict[str, float]:
        n = max(self.count, 1)
        if self.regression:
            return {"mse": self.sums["sq"] / n, "mae": self.sums["abs"] / n}
        rate = self.sums["label"] / n
        out: dict[str, float] = {}
        for name in names:
            if name == "auc":
                out["auc"], out["auc_error_bound"] = self.auc()
            elif name == "logloss":
                out["logloss"] = self.sums["logloss"] / n
            elif name == "grouped_auc":
                if self.groups is None:
                    raise ValueError("grouped_auc needs the grouping key's values")
                out["grouped_auc"] = self.groups.result()
            elif name == "normalized_entropy":
                r = float(np.clip(rate, _EPS, 1 - _EPS))
                out["normalized_entropy"] = (self.sums["logloss"] / n) / -(
                    r * math.log(r) + (1 - r) * math.log1p(-r)
                )
            elif name == "calibration":
                out["calibration"] = (self.sums["score"] / n) / rate if rate > 0 else math.nan
        out["positive_rate"] = rate
        out["mean_prediction"] = self.sums["score"] / n
        out["count"] = float(self.count)
        return out

    def close(self) -> None:
        if self.groups is not None:
            self.groups.close()

    def __enter__(self) -> StreamedMetrics:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StreamedEval:
    """Rows to score a batch at a time (the validation split, the evaluation data)."""

    def __init__(
        self,
        cfg: Config,
        encoder: FeatureEncoder,
        pieces: list[Piece],
        *,
        columns: list[str],
        where: str,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self.cfg, self.encoder, self.pieces, self.columns = cfg, encoder, pieces, columns
        self.where, self.batch_rows = where, batch_rows
        self.rows = total_rows(pieces)

    def __len__(self) -> int:
        return self.rows

    def evaluate(self, model: DeepFM) -> dict[str, float]:
        regression = model.loss_kind == "l2_loss"
        grouped = "grouped_auc" in self.cfg.model.metrics  # encode_dataset reads the key
        with StreamedMetrics(regression, grouped=grouped, rows=self.rows) as metrics:
            frames = iter_frames(self.pieces, self.columns, self.batch_rows)
            encoded = (encode_dataset(self.cfg, self.encoder, df, self.where) for df in frames)
            for data in read_ahead(encoded):
                scores = score(model, data.features, self.cfg.train.eval_batch_size)
                metrics.add(data.labels.numpy(), scores, data.groups)
            return metrics.result(self.cfg.model.metrics)


# ------------------------------------------------------------------------ train


def should_stream(cfg: Config, rows: int) -> bool:
    """``data.streaming``: true, false, or auto (from ``data.stream_min_rows`` rows on)."""
    setting = cfg.data.streaming
    return rows >= cfg.data.stream_min_rows if setting == "auto" else bool(setting)


def train_streamed(
    cfg: Config,
    train_pieces: list[Piece],
    eval_pieces: list[Piece] | None = None,
    *,
    columns: list[str],
    model_dir=None,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
    batch_rows: int = BATCH_ROWS,
) -> TrainResult:
    """``model.train.train`` on the rows of ``train_pieces`` (in time order) and
    ``eval_pieces``, streamed (the module docstring). ``columns``: the files' columns."""
    tc = cfg.train
    check_columns(cfg, columns, "the training data")
    read = needed_columns(cfg, columns)
    dev, rank, world = _set_up_processes(device, tc.num_threads)
    if progress and rank == 0:
        _log_to_stderr()
    torch.manual_seed(tc.seed)
    n = total_rows(train_pieces)
    split = tc.num_epochs > 1 and tc.validation_fraction > 0
    if resume and model_dir is not None:
        split = _checkpoint_split(model_dir, split)  # as the run being resumed did
    valid_pieces = None
    if split:
        cut = int(round(n * (1.0 - tc.validation_fraction)))
        if cut <= 0 or cut >= n:
            raise ValueError(
                f"train.validation_fraction: {tc.validation_fraction} of {n} training rows "
                "leaves one side empty"
            )
        held_out = row_range(train_pieces, cut, n)
        if _one_class_pieces(cfg, held_out):
            log.warning(
                f"train.validation_fraction: the last {n - cut:,} training rows hold one "
                "label class, so they cannot pick an epoch; training on every row for all "
                f"{tc.num_epochs} epochs and keeping the last"
            )
        else:
            train_pieces, valid_pieces = row_range(train_pieces, 0, cut), held_out
    encoder = fit_encoder(cfg, iter_frames(train_pieces, read, batch_rows))
    shares = assign_pieces(train_pieces, world)
    train_data = StreamedRows(
        cfg,
        encoder,
        shares[rank],
        max(total_rows(s) for s in shares),
        columns=read,
        buffer_rows=cfg.data.shuffle_buffer_rows,
        batch_rows=batch_rows,
    )
    valid_data = eval_data = None
    if valid_pieces is not None:
        valid_data = StreamedEval(
            cfg,
            encoder,
            valid_pieces,
            columns=read,
            where="the validation split",
            batch_rows=batch_rows,
        )
    if eval_pieces is not None:
        eval_data = StreamedEval(
            cfg,
            encoder,
            eval_pieces,
            columns=read,
            where="the evaluation data",
            batch_rows=batch_rows,
        )
    log.info(
        f"streaming {total_rows(train_pieces):,} training rows "
        f"({len(train_data):,} a process, shuffle buffer {cfg.data.shuffle_buffer_rows:,})"
        + (f", {len(valid_data):,} validation rows" if valid_data else "")
        + (f", {len(eval_data):,} eval rows" if eval_data else "")
    )
    return _fit(
        cfg,
        encoder,
        (dev, rank, world),
        train_data,
        valid_data,
        eval_data,
        model_dir=model_dir,
        resume=resume,
        progress=progress,
    )


def _one_class_pieces(cfg: Config, pieces: list[Piece]) -> bool:
    """``model.train._one_class`` of the pieces' rows, reading the label column alone."""
    seen: set[float] = set()
    label = cfg.data.label
    for df in iter_frames(pieces, [label]):
        if not _one_class(cfg, df):
            return False
        seen.update(pd.unique(df[label]).tolist())
        if len(seen) > 1:
            return False
    return bool(seen) and cfg.model.losses[0].kind == "binary_cross_entropy"

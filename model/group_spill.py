"""Exact grouped AUC over any number of rows, in bounded memory: an external hash partition.

``model.metrics.grouped_auc`` needs each group's rows together; streamed evaluation
(``model.stream.StreamedMetrics``) sees them a batch at a time, a group's rows spread over
any number of batches. ``GroupSpill`` keeps none of them in memory:

- ``add``: each row's grouping key is hashed to 64 bits (``key_hashes``: ints, whole floats
  and bools by their integer value, so a key read as int in one batch and as float in
  another, as a nullable int column with missing values is, hashes alike; other values by
  ``pd.util.hash_pandas_object``), and the row's (hash, score, label), 17 bytes, is
  appended to one of ``partitions`` spill files, chosen by the hash: every row of a group
  lands in the same file. Rows without a key are in no group, as in memory.
- ``result``: each file is read alone, its groups' (size x AUC, size) sums computed at once
  (``model.metrics.grouped_auc_parts``), the file deleted; the sums over the files give
  ``grouped_auc`` of all the rows. Memory: one partition (``peak_rows`` rows read at once,
  about rows / partitions, but at least the largest group), not the rows.

The number of files comes from the rows expected (``partitions_for``: one per
``ROWS_PER_PARTITION`` rows, at most ``MAX_PARTITIONS``; past 512M rows the partitions grow
beyond 2M rows each). Disk: 17 bytes a row, in a temporary folder that ``close`` (also
``result``, leaving the ``with`` block, or the object being collected) removes.
Exactness: equal to the in-memory ``grouped_auc`` to float rounding, unless two distinct
keys share a 64-bit hash (chance about groups^2 / 2^65) and are taken as one group; a
string key that spells an integer ("7") hashes as that integer's text, as pandas hashes
objects.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import pandas as pd

from model.metrics import grouped_auc_parts

ROWS_PER_PARTITION = 2_000_000
"""Rows a spill file is sized for (about 35 MB on disk, a few hundred MB to rank)."""
MAX_PARTITIONS = 256
"""The most spill files (and files written per batch)."""
RECORD = np.dtype([("h", "<u8"), ("s", "<f8"), ("y", "?")])
"""One spilled row: the key's hash, the score, whether the label is positive."""


def partitions_for(rows: int | None) -> int:
    """Spill files for ``rows`` rows: one per ``ROWS_PER_PARTITION``, 1 to
    ``MAX_PARTITIONS``; ``MAX_PARTITIONS`` when the rows are not known."""
    if rows is None:
        return MAX_PARTITIONS
    return int(min(max(math.ceil(rows / ROWS_PER_PARTITION), 1), MAX_PARTITIONS))


def key_hashes(groups) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash of each present key, mask of the rows whose key is present)."""
    s = pd.Series(groups).reset_index(drop=True)
    present = s.notna().to_numpy()
    s = s[present]
    kind = pd.api.types.infer_dtype(s, skipna=False)
    if kind in ("integer", "boolean"):
        try:
            return pd.util.hash_array(s.to_numpy(dtype=np.int64)), present
        except (OverflowError, TypeError, ValueError):  # past int64: hashed as objects
            pass
    elif kind in ("floating", "mixed-integer-float"):
        f = s.to_numpy(dtype=np.float64)
        whole = np.isfinite(f) & (f == np.round(f)) & (np.abs(f) < 2.0**63)
        out = np.empty(len(f), dtype=np.uint64)
        out[whole] = pd.util.hash_array(f[whole].astype(np.int64))
        out[~whole] = pd.util.hash_array(f[~whole])
        return out, present
    return pd.util.hash_pandas_object(s, index=False).to_numpy(dtype=np.uint64), present


class GroupSpill:
    """Rows' (group key, label, score) spilled to hash partitions (the module docstring);
    ``result`` is ``grouped_auc`` of every row added."""

    def __init__(
        self,
        partitions: int | None = None,
        *,
        rows: int | None = None,
        folder: str | Path | None = None,
    ) -> None:
        self.partitions = int(partitions) if partitions else partitions_for(rows)
        if self.partitions < 1:
            raise ValueError(f"grouped AUC spill: partitions must be >= 1, got {partitions}")
        self.folder = Path(tempfile.mkdtemp(prefix="deepfm-grouped-auc-", dir=folder))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
        self.rows = 0  # rows added (with a key)
        self.peak_rows = 0  # the most rows held at once by ``result``
        self._value: float | None = None

    def path(self, k: int) -> Path:
        return self.folder / f"part-{k:03d}.bin"

    def files(self) -> list[Path]:
        """The spill files written so far."""
        return sorted(self.folder.glob("part-*.bin")) if self.folder.exists() else []

    def add(self, labels, scores, groups) -> None:
        if self._value is not None or not self._cleanup.alive:
            raise RuntimeError("grouped AUC spill: rows added after the result or close")
        h, present = key_hashes(groups)
        y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
        if not (len(y) == len(s) == len(present)):
            raise ValueError(
                f"grouped AUC spill: {len(y)} labels, {len(s)} scores and {len(present)} group keys"
            )
        rec = np.empty(len(h), dtype=RECORD)
        rec["h"], rec["s"], rec["y"] = h, s[present], y[present] > 0.5
        part = (h % np.uint64(self.partitions)).astype(np.intp)
        order = np.argsort(part, kind="stable")
        rec = rec[order]
        counts = np.bincount(part, minlength=self.partitions)
        ends = np.cumsum(counts)
        for k in np.flatnonzero(counts):  # one write per partition hit, not per row
            with open(self.path(int(k)), "ab") as f:
                rec[ends[k] - counts[k] : ends[k]].tofile(f)
        self.rows += len(rec)

    def parts(self) -> tuple[float, float]:
        """``model.metrics.grouped_auc_parts`` of every row, one partition at a time (each
        file deleted once read); the spill folder is removed after."""
        total, weight = 0.0, 0.0
        try:
            for k in range(self.partitions):
                path = self.path(k)
                if not path.exists():
                    continue
                rec = np.fromfile(path, dtype=RECORD)
                self.peak_rows = max(self.peak_rows, len(rec))
                t, w = grouped_auc_parts(rec["y"], rec["s"], rec["h"])
                total, weight = total + t, weight + w
                del rec
                path.unlink()
        finally:
            self.close()
        return total, weight

    def result(self) -> float:
        """``grouped_auc`` of every row added (NaN when no group has both classes); the
        spill is removed, the value kept for later calls."""
        if self._value is None:
            if not self._cleanup.alive:
                raise RuntimeError("grouped AUC spill: closed before its result")
            total, weight = self.parts()
            self._value = total / weight if weight > 0 else float("nan")
        return self._value

    def close(self) -> None:
        """Remove the spill folder (idempotent)."""
        self._cleanup()

    def __enter__(self) -> GroupSpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

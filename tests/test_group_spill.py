"""The exact streamed grouped AUC (model/group_spill.py): rows spilled to hash partitions
by group key, each partition read alone, equal to ``model.metrics.grouped_auc`` of all
the rows, with the spill files removed after (also on error)."""

import math

import numpy as np
import pandas as pd
import pytest

from model import group_spill
from model.group_spill import GroupSpill, key_hashes, partitions_for
from model.metrics import grouped_auc, grouped_auc_parts


def _rows(seed: int, n: int, groups: int, string_keys: bool):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    y = (rng.random(n) < 0.3).astype(np.float64)
    y[g % 11 == 3] = 1.0  # one-class groups, skipped
    y[g % 11 == 5] = 0.0
    s = np.round(rng.random(n), 2)  # ties inside groups
    keys = np.array([f"u{k}" for k in g], dtype=object) if string_keys else g
    return y, s, keys


def _batches(n: int, seed: int):
    """Random batch bounds, so that groups are split across batches."""
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), 12, replace=False))
    return list(zip(np.r_[0, cuts], np.r_[cuts, n], strict=True))


@pytest.mark.parametrize("string_keys", [False, True])
@pytest.mark.parametrize("partitions", [1, 7, None])
def test_the_spilled_grouped_auc_equals_the_in_memory_one(string_keys, partitions):
    n = 20_000
    y, s, keys = _rows(5, n, 900, string_keys)
    expected = grouped_auc(y, s, keys)
    with GroupSpill(partitions, rows=n) as spill:
        for lo, hi in _batches(n, 6):
            spill.add(y[lo:hi], s[lo:hi], keys[lo:hi])
        got = spill.result()
    assert spill.partitions == (partitions or 1)  # 20,000 rows fit one default partition
    assert abs(got - expected) <= 1e-12
    assert 0.3 < got < 0.7  # random scores: a real value, not a skipped or empty one
    assert spill.rows == n
    # the parts of disjoint sets of groups add up to the whole
    half = np.isin(keys, np.unique(keys)[::2])
    a, b = grouped_auc_parts(y[half], s[half], keys[half])
    c, d = grouped_auc_parts(y[~half], s[~half], keys[~half])
    assert (a + c) / (b + d) == pytest.approx(expected, abs=1e-12)


def test_a_nullable_int_key_read_as_int_or_float_per_batch_hashes_alike():
    n = 6_000
    y, s, g = _rows(8, n, 300, False)
    keys = pd.Series(g, dtype="Int64")
    keys[np.random.default_rng(9).random(n) < 0.05] = pd.NA  # rows without a key: no group
    keys[:1000] = keys[:1000].fillna(0)  # the first batches: no missing key, read as int64
    whole = keys.to_numpy()  # floats with NaN, as the in-memory path reads the column
    assert whole.dtype == np.float64
    expected = grouped_auc(y, s, whole)
    with GroupSpill(5) as spill:
        kinds = set()
        for lo, hi in [(0, 500), (500, 1000), (1000, 3000), (3000, n)]:
            part = keys[lo:hi].to_numpy()
            kinds.add(part.dtype.kind)
            spill.add(y[lo:hi], s[lo:hi], part)
        assert kinds == {"i", "f"}
        assert spill.rows == int(keys.notna().sum())
        assert spill.result() == pytest.approx(expected, abs=1e-12)
    h, present = key_hashes(np.array([1.0, np.nan, 2.5, -0.0]))
    assert present.tolist() == [True, False, True, True]
    assert len(h) == 3  # the present keys' hashes
    assert h[0] == key_hashes(np.array([1]))[0][0] != h[1]
    assert h[1] == pd.util.hash_array(np.array([2.5]))[0]
    assert h[2] == key_hashes(np.array([0]))[0][0]


def test_partitions_are_spilled_while_adding_read_one_at_a_time_and_removed():
    n = 12_000
    y, s, keys = _rows(3, n, 2_000, False)
    spill = GroupSpill(8)
    folder = spill.folder
    for lo, hi in _batches(n, 4):
        spill.add(y[lo:hi], s[lo:hi], keys[lo:hi])
    files = spill.files()
    assert len(files) == 8 and folder.is_dir()
    size = group_spill.RECORD.itemsize
    assert size == 17  # bytes a row on disk (the README)
    assert all(f.stat().st_size % size == 0 for f in files)  # whole records
    sizes = [f.stat().st_size // size for f in files]
    assert sum(sizes) == n
    assert spill.result() == pytest.approx(grouped_auc(y, s, keys), abs=1e-12)
    assert spill.peak_rows == max(sizes) < n / 4  # one partition held at a time
    assert not folder.exists()
    assert spill.result() == spill.result()  # kept after the files are gone
    with pytest.raises(RuntimeError, match="after the result"):
        spill.add(y, s, keys)


def test_the_spill_is_removed_on_error_and_when_closed():
    y, s, keys = _rows(1, 1_000, 50, True)
    with pytest.raises(ZeroDivisionError), GroupSpill(4) as spill:
        spill.add(y, s, keys)
        assert spill.files()
        raise ZeroDivisionError  # whatever fails while streaming
    assert not spill.folder.exists()
    other = GroupSpill(4)
    other.add(y, s, keys)
    other.close()
    assert not other.folder.exists()
    with pytest.raises(RuntimeError, match="closed before"):
        other.result()
    with pytest.raises(ValueError, match="3 labels, 3 scores and 2 group keys"):
        GroupSpill(2).add(y[:3], s[:3], keys[:2])


def test_no_group_with_both_classes_is_nan_and_the_partition_count():
    with GroupSpill(3) as spill:
        spill.add(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 2, 2]))
        assert math.isnan(spill.result())
    rows = group_spill.ROWS_PER_PARTITION
    assert [partitions_for(r) for r in (0, rows, rows + 1, 10**12)] == [1, 1, 2, 256]
    assert partitions_for(None) == group_spill.MAX_PARTITIONS

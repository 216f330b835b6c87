"""The training table as shards (feature_repo/shards.py): day folders, files of bounded
size in time order, the manifest, each rank its own files, bounded batches; and the duckdb
path's ``store.write_training_shards`` on both example datasets (the Spark path is in
tests/test_spark.py). The synthetic tables here use their own column names."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_datasets import DATASETS, cell, make_repo, window

from feature_repo import shards, store
from feature_repo.spec import SPEC_FILE, load_spec


def table(rows: int = 1_000, days: int = 4, seed: int = 0) -> pd.DataFrame:
    """Rows over ``days`` UTC days in random order, with ties in time, a nullable int and
    a list column."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-11-01", tz="UTC")
    seconds = rng.integers(0, days * 86_400, rows) // 600 * 600  # ties
    return pd.DataFrame(
        {
            "t": start + pd.to_timedelta(seconds, unit="s"),
            "pos": np.arange(rows),
            "n": pd.array([None if i % 7 == 0 else i for i in range(rows)], dtype="Int64"),
            "v": [np.arange(i % 3) for i in range(rows)],
        }
    )


def sorted_by_time(df: pd.DataFrame) -> pd.DataFrame:
    return df.iloc[np.argsort(df["t"].to_numpy(), kind="stable")].reset_index(drop=True)


def test_a_table_becomes_day_folders_of_bounded_files_in_time_order(tmp_path):
    df = table()
    manifest = shards.write_table(df, tmp_path / "s", "t", rows_per_file=90)
    expected = sorted_by_time(df)
    assert manifest.rows == len(df) == sum(f.rows for f in manifest.files)
    assert all(0 < f.rows <= 90 for f in manifest.files)
    days = sorted({f.path.split("/")[0] for f in manifest.files})
    assert days == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    for f in manifest.files:
        times = pq.read_table(tmp_path / "s" / f.path)["t"].to_pandas()
        assert {f"{t:%Y-%m-%d}" for t in times} == {f.path.split("/")[0]}
        assert f.min_time == times.min().isoformat() and f.max_time == times.max().isoformat()
    assert manifest.min_time == expected["t"].min().isoformat()
    assert manifest.max_time == expected["t"].max().isoformat()
    assert list(manifest.schema) == ["t", "pos", "n", "v"]
    assert manifest.schema["n"] == "int64" and manifest.schema["t"] == "timestamp[ns, tz=UTC]"
    # the files in manifest order hold the table sorted by time, ties in the table's order
    loaded = shards.load_frame(tmp_path / "s")
    pd.testing.assert_frame_equal(loaded.drop(columns="v"), expected.drop(columns="v"))
    assert [list(v) for v in loaded["v"]] == [list(v) for v in expected["v"]]
    # any parquet reader of the folder sees the table's own columns and rows, no day column
    assert sorted(pd.read_parquet(tmp_path / "s").columns) == sorted(df.columns)
    assert len(pd.read_parquet(tmp_path / "s")) == len(df)
    on_disk = json.loads((tmp_path / "s" / shards.MANIFEST).read_text())
    assert on_disk["rows"] == len(df) and on_disk["format"] == shards.FORMAT


def test_a_time_ordered_file_is_sharded_in_bounded_batches_as_the_whole_table(tmp_path):
    df = sorted_by_time(table(seed=3))
    df.to_parquet(tmp_path / "in.parquet", index=False)
    streamed = shards.write_parquet_file(
        tmp_path / "in.parquet", tmp_path / "a", "t", rows_per_file=120, batch_rows=37
    )
    whole = shards.write_table(df, tmp_path / "b", "t", rows_per_file=120)
    assert [(f.path, f.rows) for f in streamed.files] == [(f.path, f.rows) for f in whole.files]
    pd.testing.assert_frame_equal(
        shards.load_frame(tmp_path / "a").drop(columns="v"), df.drop(columns="v")
    )


def test_rows_out_of_time_order_are_refused_and_nothing_is_left(tmp_path):
    df = table()  # not sorted
    df.to_parquet(tmp_path / "in.parquet", index=False)
    with pytest.raises(shards.ShardError, match="'t' goes back in time"):
        shards.write_parquet_file(tmp_path / "in.parquet", tmp_path / "s", "t")
    assert not (tmp_path / "s").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.parquet"]  # no temporary folder
    with pytest.raises(shards.ShardError, match="no timestamp column 'when'"):
        shards.write_table(df, tmp_path / "s", "when")
    with pytest.raises(shards.ShardError, match="'pos' is int64, not a time"):
        shards.write_table(df, tmp_path / "s", "pos")


def test_an_existing_folder_is_replaced_only_when_asked(tmp_path):
    shards.write_table(table(rows=50), tmp_path / "s", "t")
    with pytest.raises(shards.ShardError, match="exists and is not empty"):
        shards.write_table(table(rows=80), tmp_path / "s", "t")
    assert shards.read_manifest(tmp_path / "s").rows == 50
    shards.write_table(table(rows=80), tmp_path / "s", "t", overwrite=True)
    assert shards.read_manifest(tmp_path / "s").rows == 80
    assert len(pd.read_parquet(tmp_path / "s")) == 80  # no file of the old folder is left


def test_each_rank_reads_its_own_files_in_bounded_batches(tmp_path):
    df = table(rows=2_000, days=6)
    manifest = shards.write_table(df, tmp_path / "s", "t", rows_per_file=150)
    world = 3
    per_rank = [shards.rank_files(manifest, r, world) for r in range(world)]
    paths = [f.path for files in per_rank for f in files]
    assert sorted(paths) == sorted(f.path for f in manifest.files)  # each file exactly once
    rows = [sum(f.rows for f in files) for files in per_rank]
    assert max(rows) - min(rows) <= 150  # balanced within one file
    for files in per_rank:
        assert [f.path for f in files] == sorted(f.path for f in files)  # in time order
    seen = []
    for r in range(world):
        batches = list(shards.iter_batches(tmp_path / "s", batch_rows=64, rank=r, world_size=3))
        assert all(0 < b.num_rows <= 64 for b in batches)
        assert sum(b.num_rows for b in batches) == rows[r]
        seen += [v for b in batches for v in b.column("pos").to_pylist()]
    assert sorted(seen) == list(range(len(df)))
    one = list(shards.iter_batches(tmp_path / "s", batch_rows=500, columns=["pos"]))
    assert [b.schema.names for b in one][0] == ["pos"]
    assert [v for b in one for v in b.column("pos").to_pylist()] == list(sorted_by_time(df)["pos"])
    with pytest.raises(shards.ShardError, match=r"rank 3 is not in \[0, 3\)"):
        shards.rank_files(manifest, 3, 3)


def test_a_folder_without_a_manifest_is_not_a_shard_folder(tmp_path):
    (tmp_path / "half" / "2026-11-01").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "half" / "2026-11-01" / "part-00000.parquet")
    with pytest.raises(shards.ShardError, match=r"is not a shard folder: it has no _manifest"):
        shards.read_manifest(tmp_path / "half")
    (tmp_path / "half" / shards.MANIFEST).write_text("{")
    with pytest.raises(shards.ShardError, match="is not valid JSON"):
        shards.load_frame(tmp_path / "half")


@pytest.fixture(scope="module", params=DATASETS)
def repo(request, tmp_path_factory) -> Path:
    folder = make_repo(request.param, tmp_path_factory.mktemp(request.param), rows=3_000)
    store.apply(folder)
    return folder


def test_the_duckdb_store_writes_the_window_as_shards(repo, tmp_path):
    spec = load_spec(repo / SPEC_FILE)
    start, end = window(spec, repo)
    manifest = store.write_training_shards(start, end, tmp_path / "s", repo_path=repo)
    table = store.get_training_data(start, end, repo_path=repo)
    assert manifest.rows == len(table) and list(manifest.schema) == spec.columns()
    order = np.argsort(table[spec.timestamp].to_numpy(), kind="stable")
    expected = table.iloc[order].reset_index(drop=True)
    features = [f.name for v in spec.feature_views for f in spec.view_features(v)]
    loaded = shards.load_frame(tmp_path / "s", nullable=features)
    lists = [f.name for f in spec.features if f.dtype.startswith("list<")]
    pd.testing.assert_frame_equal(loaded.drop(columns=lists), expected.drop(columns=lists))
    for column in lists:
        assert [cell(v) for v in loaded[column]] == [cell(v) for v in expected[column]]


def test_the_features_step_writes_each_split_as_a_shard_folder(repo, tmp_path):
    from kfp.dsl import Dataset

    from components.features import features
    from model.train import time_split

    spec = load_spec(repo / SPEC_FILE)
    start, end = window(spec, repo)
    out = {n: Dataset(uri=str(tmp_path / n)) for n in ("train", "eval")}
    rows = features.python_func(
        feature_repo=str(repo),
        window_end=end.isoformat(),
        window_days=(end - start).total_seconds() / 86_400,
        eval_fraction=0.25,
        train_data=out["train"],
        eval_data=out["eval"],
    )
    table = store.get_training_data(start, end, repo_path=repo)
    expected = dict(zip(("train", "eval"), time_split(table, spec.timestamp, 0.25), strict=True))
    features_ = [f.name for v in spec.feature_views for f in spec.view_features(v)]
    lists = [f.name for f in spec.features if f.dtype.startswith("list<")]
    for split in ("train", "eval"):
        manifest = shards.read_manifest(out[split].path)
        assert manifest.rows == len(expected[split]) == out[split].metadata["rows"]
        assert out[split].metadata["files"] == len(manifest.files) > 1  # several days
        loaded = shards.load_frame(out[split].path, nullable=features_)
        pd.testing.assert_frame_equal(
            loaded.drop(columns=lists), expected[split].drop(columns=lists)
        )
        for column in lists:
            assert [cell(v) for v in loaded[column]] == [cell(v) for v in expected[split][column]]
    assert rows == len(expected["train"])
    assert (
        shards.read_manifest(out["train"].path).max_time
        <= shards.read_manifest(out["eval"].path).min_time
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "train"]  # nothing left over


def test_a_shard_folder_splits_at_the_time_splits_row_moving_whole_files(tmp_path):
    from model.train import time_split

    df = table(rows=1_000, days=4)
    shards.write_table(df, tmp_path / "all", "t", rows_per_file=90)
    head, tail = shards.split_tail(tmp_path / "all", 0.3, tmp_path / "h", tmp_path / "t")
    first, rest = time_split(df, "t", 0.3)
    assert (head.rows, tail.rows) == (len(first), len(rest)) == (700, 300)
    for m, part in ((head, first), (tail, rest)):
        assert all(0 < f.rows <= 90 for f in m.files)
        loaded = shards.load_frame(m.folder)
        pd.testing.assert_frame_equal(loaded.drop(columns="v"), part.drop(columns="v"))
    assert not (tmp_path / "all").exists()
    shards.write_table(df.head(1), tmp_path / "one", "t")
    with pytest.raises(shards.ShardError, match="leaves one side empty"):
        shards.split_tail(tmp_path / "one", 0.3, tmp_path / "h2", tmp_path / "t2")
    assert not (tmp_path / "h2").exists() and (tmp_path / "one").exists()


def test_the_retrieval_benchmark_prints_consistent_figures(tmp_path):
    """benchmarks/retrieval_engines.py (README, Performance) on a small duckdb run."""
    import subprocess
    import sys

    out = tmp_path / "r.jsonl"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "retrieval_engines.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rows", "3000", "--engines", "duckdb", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (result,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert result["engine"] == "duckdb" and result["rows"] == 3000
    rounding = 0.005 / 3000 * 1e6 + 0.01  # seconds are printed to 0.01
    for kind in ("in_memory", "shards"):
        per_million = result[f"{kind}_s"] / 3000 * 1e6
        assert result[f"{kind}_s_per_million"] == pytest.approx(per_million, abs=rounding)
        assert result[f"{kind}_s"] > 0
    assert result["shard_files"] >= 8  # the sample's 8 days
    assert json.loads(done.stdout.strip().splitlines()[-1]) == result

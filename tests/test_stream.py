"""Streamed training and evaluation (model/stream.py) on shard folders of both example
datasets (the two-dataset pattern of tests/test_datasets.py: every column name comes from
the dataset's spec): the one-pass encoder fit equals the in-memory fit, the shuffle buffer
is bounded and gives every row once an epoch, each process reads its own rows, the
streamed model equals the in-memory one on the same order of rows, and the streamed AUC
is the exact one within its stated bound."""

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_datasets import DATASETS, make_repo, window

from feature_repo import shards, store
from feature_repo.spec import SPEC_FILE, load_spec
from model import stream
from model import train as train_module
from model.features import EncodedFeatures, FeatureEncoder, IdEncoder, MatchEncoder
from model.metrics import auc, logloss
from model.train import EncodedDataset, latest_checkpoint, train
from training.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "deepfm.yaml"


@pytest.fixture(scope="module", params=DATASETS)
def data(request, tmp_path_factory) -> dict:
    """The dataset's window as shards (files of 400 rows): train and eval folders."""
    root = tmp_path_factory.mktemp(request.param)
    repo = make_repo(request.param, root / "repo", rows=3_000)
    store.apply(repo)
    spec = load_spec(repo / SPEC_FILE)
    start, end = window(spec, repo)
    store.write_training_shards(start, end, root / "all", repo_path=repo, rows_per_file=400)
    train_m, eval_m = shards.split_tail(root / "all", 0.2, root / "train", root / "eval")
    raw = yaml.safe_load(CONFIG.read_text())
    raw["feature_spec"] = str(repo / SPEC_FILE)
    raw["model"]["deep"]["hidden_units"] = [16, 8]
    raw["train"].update(batch_size=128, num_epochs=2, num_threads=1)
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    return {
        "cfg": cfg_path,
        "train": train_m,
        "eval": eval_m,
        "pieces": stream.file_pieces(map(str, train_m.paths()), [f.rows for f in train_m.files]),
        "eval_pieces": stream.file_pieces(map(str, eval_m.paths())),
    }


@pytest.mark.parametrize("merge_ids", [stream._MERGE_IDS, 10])  # 10: merged batch by batch
def test_the_one_pass_encoder_fit_equals_the_in_memory_fit(data, merge_ids, monkeypatch):
    monkeypatch.setattr(stream, "_MERGE_IDS", merge_ids)
    cfg = load_config(data["cfg"])
    frame = shards.load_frame(data["train"].folder)
    in_memory = FeatureEncoder(cfg).fit(frame)
    streamed = stream.fit_encoder(cfg, stream.iter_frames(data["pieces"], batch_rows=97))
    vocabularies = 0
    for name, enc in in_memory.encoders.items():
        got, want = streamed.encoders[name].state(), enc.state()
        if isinstance(enc, IdEncoder):
            assert got == want, name  # kind, and vocabulary in order
            vocabularies += "vocab" in want and len(want["vocab"]) > 0
        elif isinstance(enc, MatchEncoder):
            assert got == want == {}, name  # nothing to fit
        else:
            assert got["mean"] == pytest.approx(want["mean"], rel=1e-12, abs=1e-12), name
            assert got["std"] == pytest.approx(want["std"], rel=1e-12), name
    assert vocabularies > 0  # the configs' vocabularies were fitted, not left empty
    a, b = in_memory.transform(frame), streamed.transform(frame)
    assert torch.equal(a.sparse, b.sparse) and torch.equal(a.multi, b.multi)
    torch.testing.assert_close(a.dense, b.dense, rtol=1e-6, atol=1e-6)


def _ids(n: int, chunk: int):
    """Encoded chunks whose labels are the rows' numbers 0..n-1 (so rows can be told apart)."""
    for lo in range(0, n, chunk):
        ids = torch.arange(lo, min(lo + chunk, n), dtype=torch.float32)
        k = len(ids)
        features = EncodedFeatures(
            ids.long().view(k, 1), torch.zeros(k, 0, 1, dtype=torch.long), ids.view(k, 1)
        )
        yield EncodedDataset(features, ids.clone(), None)


def test_read_ahead_makes_the_next_item_in_another_thread_and_raises_where_it_is_used():
    made_in, second_started = [], threading.Event()

    def items():
        for i in range(5):
            made_in.append(threading.current_thread().name)
            if i == 1:
                second_started.set()
            yield i

    got = stream.read_ahead(items())
    assert next(got) == 0
    assert second_started.wait(10)  # made while the first is in use
    assert [0, *got] == list(range(5))  # the same items, in order
    assert all(name.startswith("deepfm-read-ahead") for name in made_in)

    def failing():
        yield 1
        raise ValueError("part-3.parquet: bad row group")

    got = stream.read_ahead(failing())
    assert next(got) == 1
    with pytest.raises(ValueError, match="part-3.parquet"):
        next(got)
    endless = stream.read_ahead(iter(range(10**9)))
    assert next(endless) == 0
    endless.close()  # stops at once: one item ahead, never the rest


def _rows(n: int, buffer_rows: int, batch_size: int = 64, chunk: int = 100):
    cfg = load_config(CONFIG, {"train.batch_size": batch_size, "train.seed": 3})
    pieces = [stream.Piece("ids", 0, n)]
    rows = stream.StreamedRows(cfg, None, pieces, n, columns=[], buffer_rows=buffer_rows)
    rows._encoded = lambda: _ids(n, chunk)  # the encoding is tested above; rows here are ids
    return rows


def test_the_shuffle_buffer_holds_a_bounded_number_of_rows_and_gives_each_row_once():
    n, buffer_rows, chunk = 5_000, 1_000, 100
    rows = _rows(n, buffer_rows, chunk=chunk)
    epochs = []
    for epoch in range(2):
        batches = list(rows.batches(epoch, 0, torch.device("cpu")))
        assert [len(b[1]) for b in batches] == [64] * (n // 64) + [n % 64]
        order = torch.cat([b[1] for b in batches]).long()
        assert sorted(order.tolist()) == list(range(n))  # every row once
        assert torch.equal(batches[0][0].dense.view(-1), batches[0][1])  # rows kept whole
        epochs.append(order)
    assert rows.peak_buffered == buffer_rows  # filled, never more
    assert not torch.equal(epochs[0], epochs[1])  # another shuffle each epoch
    # mixed across read chunks: rows move by more than half a buffer, both ways
    moved = epochs[0] - torch.arange(n)
    assert moved.max() > buffer_rows / 2 and moved.min() < -buffer_rows / 2
    # a resumed epoch continues with the batches it had not trained
    again = list(rows.batches(1, 10, torch.device("cpu")))
    assert torch.equal(torch.cat([b[1] for b in again]).long(), epochs[1][640:])
    # a buffer of every row: the in-memory path's permutation of the epoch
    whole = _rows(n, n)
    order = torch.cat([b[1] for b in whole.batches(1, 0, torch.device("cpu"))]).long()
    assert torch.equal(order, torch.randperm(n, generator=torch.Generator().manual_seed(3001)))
    # a buffer smaller than a read chunk: still every row once
    small = _rows(n, 30)
    order = torch.cat([b[1] for b in small.batches(0, 0, torch.device("cpu"))]).long()
    assert sorted(order.tolist()) == list(range(n)) and small.peak_buffered == 30
    assert not torch.equal(order, torch.arange(n))
    # no buffer: file order
    plain = _rows(n, 0)
    order = torch.cat([b[1] for b in plain.batches(0, 0, torch.device("cpu"))]).long()
    assert torch.equal(order, torch.arange(n))


def test_each_process_reads_its_own_rows_and_all_take_the_same_steps(data):
    pieces = data["pieces"]
    n = stream.total_rows(pieces)
    held = stream.row_range(pieces, 0, n - 333)  # a cut inside a file, as the splits make
    for world in (2, 3):
        shares = stream.assign_pieces(held, world)
        seen = [(p.path, r) for s in shares for p in s for r in range(p.skip, p.skip + p.rows)]
        assert len(seen) == len(set(seen)) == n - 333  # disjoint, and every row
        loads = [stream.total_rows(s) for s in shares]
        assert max(loads) - min(loads) <= max(p.rows for p in held)
    cfg = load_config(data["cfg"])
    encoder = stream.fit_encoder(cfg, stream.iter_frames(held))
    columns = stream.needed_columns(cfg, list(data["train"].schema))
    shares = stream.assign_pieces(held, 2)
    target = max(stream.total_rows(s) for s in shares)
    steps = []
    for share in shares:
        rows = stream.StreamedRows(cfg, encoder, share, target, columns=columns, buffer_rows=500)
        batches = list(rows.batches(0, 0, torch.device("cpu")))
        assert sum(len(b[1]) for b in batches) == target  # the smaller share starts again
        steps.append([len(b[1]) for b in batches])
    assert steps[0] == steps[1]


def test_streamed_training_gives_the_in_memory_model_on_the_same_order_of_rows(data):
    cfg = load_config(data["cfg"], {"data.shuffle_buffer_rows": 10**6})
    frame = shards.load_frame(data["train"].folder)
    eval_frame = shards.load_frame(data["eval"].folder)
    columns = list(data["train"].schema)
    a = train(cfg, frame, eval_frame, device="cpu", progress=False)
    b = stream.train_streamed(
        cfg, data["pieces"], data["eval_pieces"], columns=columns, progress=False
    )
    assert a.global_step == b.global_step > 0 and a.rows_valid == b.rows_valid > 0
    assert a.best_epoch == b.best_epoch
    assert a.encoder.state().keys() == b.encoder.state().keys()
    for name, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    assert abs(a.metrics["auc"] - b.metrics["auc"]) <= b.metrics["auc_error_bound"] + 1e-9
    assert b.metrics["logloss"] == pytest.approx(a.metrics["logloss"], rel=1e-5)
    assert b.metrics["count"] == a.metrics["count"] == data["eval"].rows
    for x, y in zip(a.history, b.history, strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5)
        bound = y["valid_auc_error_bound"] + 1e-9  # inclusive, to float rounding
        assert y["valid_auc"] == pytest.approx(x["valid_auc"], abs=bound)


class _Interrupt(Exception):
    pass


def test_a_streamed_run_resumed_in_the_middle_of_an_epoch_ends_as_the_uninterrupted_one(
    data, tmp_path, monkeypatch
):
    # 1,944 training rows, 16 steps an epoch: the buffer of 500 rows is full and being
    # swapped when the run stops at step 22 (epoch 2) and when it resumes there
    cfg = load_config(
        data["cfg"],
        {"data.shuffle_buffer_rows": 500, "train.save_checkpoints_steps": 11},
    )
    columns = list(data["train"].schema)

    def run(out, **more):
        return stream.train_streamed(
            cfg,
            data["pieces"],
            data["eval_pieces"],
            columns=columns,
            model_dir=out,
            progress=False,
            **more,
        )

    full = run(tmp_path / "full")
    real = train_module._save_checkpoint

    def save_then_stop(root, state):
        real(root, state)
        if state["global_step"] == 22:
            raise _Interrupt

    with monkeypatch.context() as m:
        m.setattr(train_module, "_save_checkpoint", save_then_stop)
        with pytest.raises(_Interrupt):
            run(tmp_path / "cut")
    state = torch.load(latest_checkpoint(tmp_path / "cut"), weights_only=True)
    per_epoch = full.global_step // 2
    # one epoch done, in the middle of the second
    assert (state["epoch"], state["step_in_epoch"]) == (1, 22 - per_epoch)
    assert 0 < state["step_in_epoch"] < per_epoch
    resumed = run(tmp_path / "cut", resume=True)
    assert resumed.global_step == full.global_step
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert resumed.metrics == full.metrics


def test_run_training_streams_a_shard_folder_as_data_streaming_says(data, tmp_path):
    from training.run import TrainRequest, run_training

    def summary(streaming, name, **more):
        request = TrainRequest(
            data["cfg"],
            data["train"].folder,
            tmp_path / name,
            eval_data=data["eval"].folder,
            overrides={"data.streaming": streaming, "train.num_epochs": 1, **more},
        )
        return run_training(request)

    streamed, in_memory = summary(True, "s"), summary(False, "m")
    assert "auc_error_bound" in streamed and "auc_error_bound" not in in_memory
    assert streamed["rows_train"] == in_memory["rows_train"] == data["train"].rows
    assert streamed["rows_eval"] == data["eval"].rows
    # auto: streams from data.stream_min_rows rows of the manifest on
    auto = summary("auto", "a")
    assert "auc_error_bound" not in auto  # 2,400 rows is under the default threshold
    auto = summary("auto", "b", **{"data.stream_min_rows": data["train"].rows})
    assert "auc_error_bound" in auto

    # the evaluate step streams a shard folder for a model whose data.streaming says so,
    # with the in-memory evaluation's figures (of the same model, from one parquet file)
    from evaluation.evaluate import evaluate_model

    single = tmp_path / "eval.parquet"
    shards.load_frame(data["eval"].folder).to_parquet(single)
    a = evaluate_model(tmp_path / "s", single, "", 0.5, 0.01)
    b = evaluate_model(tmp_path / "s", data["eval"].folder, "", 0.5, 0.01)
    assert "auc_error_bound" in b.metrics and "auc_error_bound" not in a.metrics
    assert abs(a.auc - b.auc) <= b.metrics["auc_error_bound"] + 1e-9
    assert a.auc == pytest.approx(streamed["auc"], abs=b.metrics["auc_error_bound"] + 1e-9)
    for name in ("logloss", "positive_rate", "mean_prediction", "count"):
        assert b.metrics[name] == pytest.approx(a.metrics[name], rel=1e-9), name
    assert (a.blessed, a.reason) == (b.blessed, b.reason)
    assert sum(map(sum, b.confusion_matrix)) == data["eval"].rows
    assert b.confusion_matrix[1] == a.confusion_matrix[1]  # positives: same split at this size
    assert sum(r for *_, r in b.calibration) == data["eval"].rows
    assert b.roc[0][:2] == (0.0, 0.0) and b.roc[-1][:2] == (1.0, 1.0)
    # with a blessed model at the destination, both are scored on the same streamed rows
    from registry.model_registry import push_model

    push_model(tmp_path / "m", tmp_path / "registry", "v1")
    c = evaluate_model(tmp_path / "s", data["eval"].folder, str(tmp_path / "registry"), 0.5, 1)
    d = evaluate_model(tmp_path / "m", data["eval"].folder, "", 0.5, 1)  # in memory, alone
    bound = c.baseline_metrics["auc_error_bound"] + 1e-9
    assert c.baseline_version == "v1" and abs(c.baseline_auc - d.auc) <= bound
    # the scores of a batch depend a little on its size (float32 products): rel 1e-9 as above
    assert c.baseline_metrics["logloss"] == pytest.approx(d.metrics["logloss"], rel=1e-9)
    assert len(c.baseline_roc) > 2 and c.auc == b.auc


def test_the_streamed_auc_is_sklearns_within_its_stated_bound():
    rng = np.random.default_rng(0)
    labels = (rng.random(200_000) < 0.1).astype(np.float64)
    scores = np.clip(0.1 + 0.1 * labels + rng.normal(0, 0.08, len(labels)), 0, 1)
    scores = scores.astype(np.float32).astype(np.float64)  # the model's float32 scores
    exact = auc(labels, scores)  # exact, by midranks (sklearn's roc_auc_score is not installed)
    few = rng.choice(len(labels), 2_000, replace=False)  # and by its definition, on a sample
    y, s = labels[few] > 0.5, scores[few]
    pairs = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
    assert auc(labels[few], s) == pytest.approx(pairs.mean(), rel=1e-12)
    for bins in (64, stream.AUC_BINS):
        m = stream.StreamedMetrics(bins=bins)
        for lo in range(0, len(labels), 30_000):
            m.add(labels[lo : lo + 30_000], scores[lo : lo + 30_000])
        got = m.result(["auc", "logloss"])
        assert abs(got["auc"] - exact) <= got["auc_error_bound"] + 1e-12
        assert got["logloss"] == pytest.approx(logloss(labels, scores), rel=1e-12)
        assert got["count"] == len(labels) and got["positive_rate"] == labels.mean()
    assert got["auc_error_bound"] < 1e-3  # the default bins: close to exact
    one = stream.StreamedMetrics()
    one.add(np.ones(5), np.linspace(0, 1, 5))
    assert np.isnan(one.result(["auc"])["auc"])
    assert pd.isna(one.auc()[0])


@pytest.mark.slow
def test_two_gloo_processes_stream_their_own_shards(data, tmp_path):
    """``torchrun`` with 2 processes (gloo): each streams its own files, both take the same
    steps, rank 0 writes the model. One dataset suffices for the process wiring."""
    import math
    import os
    import subprocess
    import sys

    if "retail" in str(data["cfg"]):
        pytest.skip("the process wiring does not depend on the dataset")
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += ["2", "-m", "pipelines.cli", "train", "--config", str(data["cfg"])]
    cmd += ["--data", str(data["train"].folder), "--eval-data", str(data["eval"].folder)]
    cmd += ["--model-dir", str(tmp_path / "m"), "--device", "cpu", "--epochs", "1"]
    cmd += ["--set", "data.streaming=true"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    shares = stream.assign_pieces(data["pieces"], 2)
    share = max(stream.total_rows(s) for s in shares)
    assert min(stream.total_rows(s) for s in shares) > 0
    assert f"({share:,} a process," in done.stderr  # each process its own share
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["global_step"] == math.ceil(share / 128)  # the same steps on both
    assert metrics["rows_train"] == data["train"].rows and metrics["rows_eval"] > 0
    assert 0.0 < metrics["auc"] < 1.0


def test_streamed_grouped_auc_is_the_in_memory_one(data, tmp_path, monkeypatch):
    """``grouped_auc`` streams exactly (model/group_spill.py): streamed training's
    validation and evaluation (``StreamedEval``) and the evaluate step on a shard folder
    report the in-memory value for the same model, the rows spilled to several hash
    partitions, kept on disk only until read."""
    import tempfile

    from evaluation.evaluate import evaluate_model
    from model import group_spill
    from model.export import save_model_dir
    from model.train import encode_dataset, evaluate

    spill_root = tmp_path / "tmp"
    spill_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_root))
    monkeypatch.setattr(group_spill, "ROWS_PER_PARTITION", 100)  # several partitions
    spills, parts = [], group_spill.GroupSpill.parts

    def counted(spill):  # the files each spill holds before its partitions are read
        spills.append((len(spill.files()), spill.partitions, spill.rows))
        return parts(spill)

    monkeypatch.setattr(group_spill.GroupSpill, "parts", counted)
    cfg = load_config(data["cfg"], {"data.streaming": True})  # the evaluate step streams
    assert "grouped_auc" in cfg.model.metrics and cfg.train.num_epochs == 2
    columns = list(data["train"].schema)
    result = stream.train_streamed(
        cfg, data["pieces"], data["eval_pieces"], columns=columns, progress=False
    )
    assert [("valid_grouped_auc" in r, "eval_grouped_auc" in r) for r in result.history] == [
        (True, True)
    ] * 2  # reported each epoch, under the in-memory path's names
    eval_rows = data["eval"].rows
    assert spills and all(1 < files <= k for files, k, _ in spills)
    assert (6, eval_rows) in {(k, rows) for _, k, rows in spills}  # 600 eval rows / 100

    frame = shards.load_frame(data["eval"].folder)
    whole = encode_dataset(cfg, result.encoder, frame, "the eval data")
    want = evaluate(cfg, result.model, whole)[0]["grouped_auc"]
    assert 0.0 < want < 1.0
    assert result.metrics["grouped_auc"] == pytest.approx(want, abs=1e-12)
    read = stream.needed_columns(cfg, columns)  # in batches of 97 rows: groups split
    valid = stream.StreamedEval(
        cfg, result.encoder, data["eval_pieces"], columns=read, where="v", batch_rows=97
    )
    assert valid.evaluate(result.model)["grouped_auc"] == pytest.approx(want, abs=1e-12)

    model_dir = save_model_dir(
        tmp_path / "m", cfg, result.encoder, result.model, export_program=False
    )
    single = tmp_path / "eval.parquet"
    frame.to_parquet(single)
    in_memory = evaluate_model(model_dir, single, "", 0.5, 1).metrics
    streamed = evaluate_model(model_dir, data["eval"].folder, "", 0.5, 1).metrics
    assert "auc_error_bound" in streamed and "auc_error_bound" not in in_memory
    assert in_memory["grouped_auc"] == pytest.approx(want, abs=1e-6)  # the exported model
    assert streamed["grouped_auc"] == pytest.approx(in_memory["grouped_auc"], abs=1e-12)
    assert not list(spill_root.glob("deepfm-grouped-auc-*"))  # every spill removed

"""Resume that resumes (model.train, training.run): checkpoints by default every N steps or
M seconds and at each epoch end; a run killed mid-epoch and resumed ends with the weights
of an uninterrupted run; ``--resume`` without a checkpoint says so; a resume with another
model shape names the setting that changed (one line, exit 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.config import TrainConfig
from pipelines.cli import main
from tests.toy_data import toy_config, toy_table, write_config
from training.run import TrainRequest, run_training

ROOT = Path(__file__).resolve().parents[1]


def test_checkpoint_defaults_write_several_per_epoch_of_a_million_rows() -> None:
    tc = TrainConfig()
    assert tc.save_checkpoints_steps == 200 and tc.save_checkpoints_secs == 600
    steps = 1_000_000 // tc.batch_size  # one epoch of 1M rows at the default batch
    assert steps // tc.save_checkpoints_steps >= 4


def _ckpts(model_dir: Path) -> list[str]:
    return sorted(p.name for p in (model_dir / "checkpoints").glob("ckpt-*.pt"))


def test_checkpoints_by_steps_by_time_and_at_epoch_end(tmp_path) -> None:
    df = toy_table(rows=3000)
    df.to_parquet(tmp_path / "t.parquet")
    # 3000 rows at batch 256: 12 steps; every 5 steps and at the end (step 12)
    config = write_config(tmp_path / "c.yaml", toy_config(save_checkpoints_steps=5))
    seen: list[int] = []
    import model.train as train_module

    real = train_module._save_checkpoint

    def record(root, state):
        seen.append(state["global_step"])
        real(root, state)

    train_module._save_checkpoint = record
    try:
        run_training(TrainRequest(config, tmp_path / "t.parquet", tmp_path / "a", device="cpu"))
        assert seen == [5, 10, 12]
        seen.clear()
        # by time: a checkpoint after every step (0 s), steps off
        timed = toy_config(save_checkpoints_steps=0, save_checkpoints_secs=1e-9)
        config = write_config(tmp_path / "d.yaml", timed)
        run_training(TrainRequest(config, tmp_path / "t.parquet", tmp_path / "b", device="cpu"))
        assert seen == list(range(1, 13))
    finally:
        train_module._save_checkpoint = real
    assert _ckpts(tmp_path / "b") == [f"ckpt-{s:09d}.pt" for s in (10, 11, 12)]  # 3 kept


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path) -> None:
    # 6000 rows, 10% for evaluation, 10% of the rest for validation: 4860 rows at batch 32,
    # 152 steps per epoch, 2 epochs
    df = toy_table()
    df.to_parquet(tmp_path / "t.parquet")
    cfg = toy_config(num_epochs=2, batch_size=32, save_checkpoints_steps=20)
    config = write_config(tmp_path / "c.yaml", cfg)
    killed = tmp_path / "killed"
    args = ["train", "--config", str(config), "--data", str(tmp_path / "t.parquet")]
    args += ["--device", "cpu", "--eval-fraction", "0.1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args, "--model-dir", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoints").is_dir() or not _ckpts(killed):
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "MANIFEST.json").exists()  # killed mid-run
    at_kill = int(_ckpts(killed)[-1][5:14])
    assert at_kill < 2 * 152

    data = tmp_path / "t.parquet"
    resumed = run_training(TrainRequest(config, data, killed, eval_fraction=0.1, resume=True))
    whole = run_training(TrainRequest(config, data, tmp_path / "whole", eval_fraction=0.1))
    assert resumed["global_step"] == whole["global_step"] == 2 * 152
    assert resumed["auc"] == whole["auc"]
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a = torch.load(killed / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "whole" / "weights.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys) -> None:
    toy_table(rows=1000).to_parquet(tmp_path / "t.parquet")
    config = write_config(tmp_path / "c.yaml", toy_config())
    out = tmp_path / "model"
    run_training(TrainRequest(config, tmp_path / "t.parquet", out, device="cpu", resume=True))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "no checkpoint" in line]
    assert lines == [f"resume: no checkpoint in {out / 'checkpoints'}; training from the start"]


def test_resume_with_another_model_shape_names_the_setting(tmp_path, capsys) -> None:
    toy_table(rows=1000).to_parquet(tmp_path / "t.parquet")
    config = write_config(tmp_path / "c.yaml", toy_config())
    out = tmp_path / "model"
    args = ["train", "--config", str(config), "--data", str(tmp_path / "t.parquet")]
    args += ["--model-dir", str(out), "--device", "cpu"]
    assert main(args) == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    capsys.readouterr()
    status = main([*args, "--resume", "--set", "model.deep.hidden_units=[8, 4]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    errors = [line for line in err if line.startswith("deepfm train: error: ")]
    assert len(errors) == 1, err
    assert "model.deep.hidden_units changed from [16] to [8, 4] since the checkpoint" in errors[0]
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before  # nothing touched


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("model.wide_embedding_dim", "2", "model.wide_embedding_dim changed from 4 to 2"),
        ("train.sparse_optimizer.type", "adagrad", "train.sparse_optimizer.type changed"),
    ],
)
def test_other_changed_settings_are_named(tmp_path, key, value, named) -> None:
    from model.config import config_from_dict
    from model.train import train

    df = toy_table(rows=1000)
    train(config_from_dict(toy_config()), df, model_dir=tmp_path, progress=False)
    changed = toy_config()
    section, *rest = key.split(".")
    node = changed.setdefault(section, {})
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = int(value) if value.isdigit() else value
    with pytest.raises(ValueError, match=named):
        train(config_from_dict(changed), df, model_dir=tmp_path, resume=True, progress=False)

"""Tests of the ``deepfm`` command line (pipelines/cli.py): data generate, train, evaluate and
predict round trip; --help everywhere; bad input exits 2 with one line naming the problem."""

import contextlib
import importlib
import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from feature_repo.spec import load_spec
from model.export import load
from model.metrics import auc
from model.train import time_split
from pipelines.cli import main
from training.config import read_config_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "deepfm.yaml"
SETS = {"model.deep.hidden_units": "[32,16]", "train.batch_size": 512, "train.num_threads": 1}
SMALL = [*(a for k, v in SETS.items() for a in ("--set", f"{k}={v}")), "--device", "cpu"]
# Column names come from the project's spec (the sample's, which `data generate` writes).
SPEC = load_spec()
FILES = {*SPEC.sources, "click_prob", "flat"}  # one file per source, and the generator's own
LABEL, TS = SPEC.label.name, SPEC.timestamp
USER_KEY, AD_KEY = SPEC.join_keys()
(LIST_COL,) = (f.name for f in SPEC.features if f.dtype.startswith("list"))
VIEW_INT = [f.name for f in SPEC.features if f.view and f.dtype == "int64"][-1]


def run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def usage_error(argv: list[str], command: str) -> str:
    """Run a command that must fail with exit 2 and one line; return that line's message."""
    code, out, err = run(argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    prefix = f"deepfm {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0].removeprefix(prefix)


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, str, str]:
    out = tmp_path_factory.mktemp("sample")
    code, stdout, stderr = run(["data", "generate", "--rows", 20_000, "--seed", 3, "--out", out])
    assert code == 0, stderr
    return out, stdout, stderr


@pytest.fixture(scope="module")
def split(generated, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The eval rows the train command's default time split (10%) holds out, as a file."""
    flat = pd.read_parquet(generated[0] / "flat.parquet")
    _, eval_df = time_split(flat, TS, 0.1)
    path = tmp_path_factory.mktemp("eval") / "eval.parquet"
    eval_df.to_parquet(path)
    return path, eval_df


@pytest.fixture(scope="module")
def trained(generated, tmp_path_factory) -> tuple[Path, dict]:
    model_dir = tmp_path_factory.mktemp("train") / "model"
    argv = ["train", "--config", CONFIG, "--data", generated[0] / "flat.parquet"]
    code, stdout, stderr = run([*argv, "--model-dir", model_dir, *SMALL])
    assert code == 0, stderr
    return model_dir, json.loads(stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------- commands


def test_data_generate_writes_the_files(generated):
    out, stdout, stderr = generated
    assert {p.stem for p in out.glob("*.parquet")} == FILES
    listed = dict(line.split(": ", 1) for line in stdout.strip().splitlines())
    assert set(listed) == FILES
    assert all(Path(p) == out / f"{name}.parquet" for name, p in listed.items())
    assert len(pd.read_parquet(out / "flat.parquet")) == 20_000
    assert f"generating 20,000 {SPEC.entity_rows} (seed 3)" in stderr and "done in" in stderr


def test_data_generate_is_deterministic_for_a_seed(generated, tmp_path):
    code, _, _ = run(["data", "generate", "--rows", 20_000, "--seed", 3, "--out", tmp_path])
    assert code == 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "flat.parquet"), pd.read_parquet(generated[0] / "flat.parquet")
    )


def test_train_writes_a_model_directory_and_prints_a_summary(trained, split):
    model_dir, summary = trained
    assert summary["model_dir"] == str(model_dir.resolve())
    assert summary["count"] == len(split[1]) == 2_000
    # the config's up-to-10 epochs with early stopping: 10% of the 18,000 training rows
    # pick the epoch, so each epoch is ceil(16,200 / 512) = 32 steps
    epochs = summary["epochs_run"]
    assert summary["rows_valid"] == 1_800 and 1 <= summary["best_epoch"] < epochs <= 10
    assert summary["global_step"] == 32 * epochs
    assert 0.5 < summary["auc"] < 1
    model = load(model_dir)
    assert model.cfg.model.deep.hidden_units == [32, 16]  # --set reached the config
    assert model.cfg.train.batch_size == 512
    assert model.metrics["auc"] == pytest.approx(summary["auc"], abs=1e-6)
    assert model.metrics["global_step"] == 32 * epochs
    assert [h["epoch"] for h in model.metrics["history"]] == list(range(1, epochs + 1))


def test_the_train_component_and_the_cli_write_the_same_metrics(generated, trained, tmp_path):
    """One training entry point: the pipeline's train step on the CLI's own time split and
    settings writes a metrics.json with the same keys, and the same counts."""
    from kfp.dsl import Dataset, Metrics, Model

    from components.train import train as train_component

    flat = pd.read_parquet(generated[0] / "flat.parquet")
    paths = {"train": tmp_path / "train.parquet", "eval": tmp_path / "eval.parquet"}
    for path, rows in zip(paths.values(), time_split(flat, TS, 0.1), strict=True):
        rows.to_parquet(path)
    config = read_config_dict(CONFIG)
    config["model"]["deep"]["hidden_units"] = yaml.safe_load(SETS["model.deep.hidden_units"])
    config["train"]["batch_size"] = SETS["train.batch_size"]
    config["train"]["num_threads"] = SETS["train.num_threads"]
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(config))
    model, metrics = Model(uri=str(tmp_path / "model")), Metrics(uri=str(tmp_path / "metrics"))
    auc_logged = train_component.python_func(
        train_data=Dataset(uri=str(paths["train"])),
        eval_data=Dataset(uri=str(paths["eval"])),
        model_config=str(tmp_path / "small.yaml"),
        epochs=0,
        batch_size=0,
        model=model,
        metrics=metrics,
    )

    cli_dir, printed = trained
    from_cli = json.loads((cli_dir / "metrics.json").read_text())
    from_component = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert set(from_component) == set(from_cli) == set(printed) - {"model_dir"}
    assert {"train_samples_per_s", "global_step", "epochs_run", "rows_train", "rows_eval"} <= set(
        from_cli
    )
    assert [set(h) for h in from_component["history"]] == [set(h) for h in from_cli["history"]]
    for key in ("rows_train", "rows_eval", "count", "global_step", "epochs_run"):
        assert from_component[key] == from_cli[key], key
    assert from_cli["rows_train"] + from_cli["rows_eval"] == len(flat)
    assert auc_logged == from_component["auc"] and 0.5 < auc_logged < 1
    assert metrics.metadata["rows_eval"] == from_cli["rows_eval"]


def test_train_evaluate_predict_round_trip(trained, split, tmp_path):
    model_dir, _ = trained
    eval_path, eval_df = split
    saved = json.loads((model_dir / "metrics.json").read_text())

    metrics_path = tmp_path / "metrics.json"
    code, stdout, stderr = run(
        ["evaluate", "--model", model_dir, "--data", eval_path, "--output", metrics_path]
    )
    assert code == 0, stderr
    metrics = json.loads(stdout)
    assert json.loads(metrics_path.read_text()) == metrics
    # the same rows the train command evaluated: the same numbers
    for key in ("auc", "logloss", "grouped_auc", "calibration", "count"):
        assert metrics[key] == saved[key], key

    scores_path = tmp_path / "scores.parquet"
    code, _, stderr = run(
        [
            "predict",
            "--model",
            model_dir,
            "--input",
            eval_path,
            "--output",
            scores_path,
            "--keep",
            USER_KEY,
        ]
    )
    assert code == 0, stderr
    assert f"wrote 2,000 scores to {scores_path}" in stderr
    scores = pd.read_parquet(scores_path)
    assert list(scores.columns) == [USER_KEY, "score"]
    assert scores[USER_KEY].tolist() == eval_df[USER_KEY].tolist()
    assert np.array_equal(scores["score"].to_numpy(), load(model_dir).predict(eval_df))
    assert auc(eval_df[LABEL].to_numpy(), scores["score"].to_numpy()) == saved["auc"]


def test_predict_writes_csv_to_stdout_without_output(trained, split):
    model_dir, _ = trained
    eval_path, eval_df = split
    code, stdout, stderr = run(
        ["predict", "--model", model_dir, "--input", eval_path, "--keep", f"{USER_KEY},{AD_KEY}"]
    )
    assert code == 0, stderr
    table = pd.read_csv(io.StringIO(stdout))
    assert list(table.columns) == [USER_KEY, AD_KEY, "score"]
    assert len(table) == len(eval_df)
    np.testing.assert_allclose(table["score"], load(model_dir).predict(eval_df), rtol=1e-12)


def test_floating_point_error_exits_1_naming_the_step(generated, tmp_path):
    code, _, err = run(
        [
            "train",
            "--config",
            CONFIG,
            "--data",
            generated[0] / "flat.parquet",
            "--model-dir",
            tmp_path / "m",
            *SMALL,
            "--set",
            "train.dense_optimizer.lr=1.0e+30",
        ]
    )
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("deepfm train: error: training loss became nan at step ")
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- --help


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["data", "--help"],
        ["data", "generate", "--help"],
        ["train", "--help"],
        ["evaluate", "--help"],
        ["predict", "--help"],
    ],
    ids=lambda a: " ".join(a),
)
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: deepfm")
    assert "--help" in out


@pytest.mark.parametrize(
    "argv",
    [[], ["train"], ["train", "--config", "x.yaml"], ["nope"], ["data"], ["predict", "--model"]],
    ids=lambda a: " ".join(a) or "nothing",
)
def test_argparse_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_module_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert "usage: deepfm" in done.stdout


def test_console_script_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["scripts"]["deepfm"]
    assert target == "pipelines.cli:main"
    module, func = target.split(":")
    assert getattr(importlib.import_module(module), func) is main


# ----------------------------------------------------------------------- bad inputs


def _train(data: Path, config: Path = CONFIG, *extra) -> list:
    return ["train", "--config", config, "--data", data, *SMALL, *extra]


def test_missing_data_file(tmp_path):
    missing = tmp_path / "nope.parquet"
    message = usage_error([*_train(missing), "--model-dir", tmp_path / "m"], "train")
    assert message == f"--data {missing} does not exist"


def test_unreadable_data_file(tmp_path):
    bad = tmp_path / "rows.parquet"
    bad.write_text("not parquet")
    message = usage_error(_train(bad), "train")
    assert message.startswith(f"--data {bad} is not a readable parquet file")


def test_missing_config_file(generated, tmp_path):
    missing = tmp_path / "cfg.yaml"
    message = usage_error(_train(generated[0] / "flat.parquet", missing), "train")
    assert message == f"config file {missing} does not exist"


def test_config_with_an_unknown_key(generated, tmp_path):
    data = read_config_dict(CONFIG)
    data["train"]["batch_sise"] = 64
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    message = usage_error(_train(generated[0] / "flat.parquet", bad), "train")
    assert message.startswith(f"{bad}: train.batch_sise: unknown key")


def test_set_without_equals(generated):
    message = usage_error(
        [*_train(generated[0] / "flat.parquet"), "--set", "train.batch_size"], "train"
    )
    assert message.startswith("--set 'train.batch_size': expected KEY=VALUE")


def test_set_of_an_unknown_or_invalid_key(generated):
    flat = generated[0] / "flat.parquet"
    message = usage_error([*_train(flat), "--set", "train.epochs=3"], "train")
    assert "train.epochs: unknown key" in message
    message = usage_error([*_train(flat), "--set", "train.batch_size=-4"], "train")
    assert "train.batch_size: must be > 0, got -4" in message


def test_set_accepts_a_float_in_exponent_notation(generated, tmp_path):
    code, _, err = run(
        [
            *_train(generated[0] / "flat.parquet"),
            "--model-dir",
            tmp_path / "m",
            "--set",
            "train.dense_optimizer.lr=1e-3",
            "--eval-fraction",
            "0",
        ]
    )
    assert code == 0, err
    assert load(tmp_path / "m").cfg.train.dense_optimizer.lr == 0.001


def test_data_without_a_feature_column(generated, tmp_path):
    rows = pd.read_parquet(generated[0] / "flat.parquet").drop(columns=[VIEW_INT])
    path = tmp_path / "rows.parquet"
    rows.to_parquet(path)
    message = usage_error([*_train(path), "--model-dir", tmp_path / "m"], "train")
    assert f"features.{VIEW_INT}: column '{VIEW_INT}'" in message
    assert not (tmp_path / "m").exists()


def test_eval_data_without_the_label(generated, tmp_path):
    rows = pd.read_parquet(generated[0] / "flat.parquet")
    path = tmp_path / "eval.parquet"
    rows.tail(500).drop(columns=[LABEL]).to_parquet(path)
    message = usage_error(
        [*_train(generated[0] / "flat.parquet"), "--eval-data", path, "--model-dir", tmp_path],
        "train",
    )
    assert message == f"data.label: column '{LABEL}' is not in the evaluation data"


def test_evaluate_data_without_the_label(trained, split, tmp_path):
    path = tmp_path / "rows.parquet"
    split[1].drop(columns=[LABEL]).to_parquet(path)
    message = usage_error(["evaluate", "--model", trained[0], "--data", path], "evaluate")
    assert message == f"data.label: column '{LABEL}' is not in {path}"


def test_predict_input_without_a_feature_column(trained, split, tmp_path):
    path = tmp_path / "rows.parquet"
    split[1].drop(columns=[LIST_COL]).to_parquet(path)
    message = usage_error(["predict", "--model", trained[0], "--input", path], "predict")
    readers = [m.name for m in SPEC.feature(LIST_COL).model_features]  # the list, its match
    assert any(f"features.{name}: column '{LIST_COL}'" in message for name in readers), message


def test_predict_keep_of_a_missing_column(trained, split):
    message = usage_error(
        ["predict", "--model", trained[0], "--input", split[0], "--keep", f"{USER_KEY},nope"],
        "predict",
    )
    assert message == f"--keep: column 'nope' is not in {split[0]}"


def test_predict_with_a_directory_that_is_not_a_model(split, tmp_path):
    message = usage_error(["predict", "--model", tmp_path, "--input", split[0]], "predict")
    assert message == f"{tmp_path} is not a model directory (no MANIFEST.json)"


def test_time_split_without_a_timestamp_in_the_config(generated):
    message = usage_error(
        [*_train(generated[0] / "flat.parquet"), "--set", "data.timestamp=null"], "train"
    )
    assert "data.timestamp" in message


# ------------------------------------------------------------------ the model directory kept


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (relative path -> sha256 of a file, 'dir' for a folder)."""
    import hashlib

    return {
        str(p.relative_to(root)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def few_rows(generated, tmp_path_factory) -> Path:
    """The first 3,000 event rows: enough for a quick run of train."""
    path = tmp_path_factory.mktemp("few") / "few.parquet"
    pd.read_parquet(generated[0] / "flat.parquet").head(3_000).to_parquet(path)
    return path


def test_train_refuses_a_folder_that_is_not_a_model_directory(few_rows, tmp_path):
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine\n")
    (folder / "sub" / "data.bin").write_bytes(bytes(range(256)))
    before = _tree(tmp_path)
    for extra in ([], ["--overwrite"], ["--resume"]):
        message = usage_error([*_train(few_rows), "--model-dir", folder, *extra], "train")
        assert message == (
            f"{folder} exists and is not a model directory; refusing to replace it "
            "(choose another --model-dir)"
        )
    assert _tree(tmp_path) == before


def test_train_refuses_a_model_directory_without_overwrite(trained, few_rows, tmp_path):
    import shutil

    model_dir = shutil.copytree(trained[0], tmp_path / "model")
    before = _tree(tmp_path)
    message = usage_error([*_train(few_rows), "--model-dir", model_dir], "train")
    assert message == f"{model_dir} already holds a model directory; pass --overwrite to replace it"
    assert _tree(tmp_path) == before


def test_train_overwrite_replaces_and_resume_keeps_the_checkpoints(few_rows, tmp_path):
    """A run with checkpoints keeps them in its model directory; --overwrite replaces the
    model (starting afresh); --resume continues from them into the same directory."""
    model_dir = tmp_path / "model"
    sibling = tmp_path / "model.tmp"  # the name the save used to delete
    sibling.mkdir()
    (sibling / "keep.txt").write_text("mine")
    ckpt = ["--set", "train.save_checkpoints_steps=2", "--set", "train.seed=1"]
    base = [*_train(few_rows), "--model-dir", model_dir, "--eval-fraction", "0", *ckpt]

    code, out, err = run([*base, "--epochs", "1"])
    assert code == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir())[-1] == (
        f"ckpt-{first['global_step']:09d}.pt"
    )
    manifest = (model_dir / "MANIFEST.json").read_text()

    code, out, err = run([*base, "--epochs", "1", "--set", "train.seed=2", "--overwrite"])
    assert code == 0, err
    again = json.loads(out.strip().splitlines()[-1])
    assert again["global_step"] == first["global_step"]  # from scratch, not resumed
    assert (model_dir / "MANIFEST.json").read_text() != manifest  # other weights

    code, out, err = run([*base, "--epochs", "2", "--set", "train.seed=2", "--resume"])
    assert code == 0, err
    resumed = json.loads(out.strip().splitlines()[-1])
    assert resumed["global_step"] == 2 * first["global_step"]
    assert resumed["epochs_run"] == 2
    assert "resumed from" in err
    load(model_dir)  # verified
    assert (sibling / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.tmp"]


def test_eval_data_and_eval_fraction_together_are_refused(generated, tmp_path):
    flat = generated[0] / "flat.parquet"
    command = [*_train(flat), "--eval-data", flat, "--eval-fraction", "0.2"]
    message = usage_error([*command, "--model-dir", tmp_path / "m"], "train")
    assert message.startswith("--eval-fraction: does not apply with --eval-data")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu"])
def test_an_unknown_device_names_the_flag(generated, tmp_path, device):
    command = [*_train(generated[0] / "flat.parquet"), "--device", device]
    message = usage_error([*command, "--model-dir", tmp_path / "m"], "train")
    assert message == f"--device {device!r}: expected auto, cpu, cuda or cuda:N"
    assert not (tmp_path / "m").exists()

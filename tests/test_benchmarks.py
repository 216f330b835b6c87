"""The two training benchmarks run end to end on a small generated set and print the JSON
line the README's figures come from, with figures that agree with each other."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from feature_repo.spec import load_spec
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
# The columns of the generated sample, from its spec: every single-valued id, every float.
SPEC = load_spec()
CATEGORICAL = [f.name for f in SPEC.features if f.dtype in ("int64", "string")]
NUMERIC = [f.name for f in SPEC.features if f.dtype == "float64"]
COLUMNS = [
    "--label", SPEC.label.name, "--categorical", ",".join(CATEGORICAL),
    "--numeric", ",".join(NUMERIC), "--hidden", "32,16", "--batch-size", "512", "--threads", "1",
]  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["data", "generate", "--rows", "40000", "--seed", "1", "--out", str(out)]) == 0
    return out / "flat.parquet"


def run_script(name: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1])


def test_train_throughput_prints_consistent_figures(flat):
    out = run_script("train_throughput.py", "--data", str(flat), *COLUMNS, "--bound-steps", "5",
                     "--epochs", "2")  # fmt: skip
    rows = len(pd.read_parquet(flat))
    assert out["rows_train"] + out["rows_test"] == rows
    assert out["rows_test"] == pytest.approx(rows * 0.1, abs=rows * 0.02)
    assert out["train_samples_per_s"] > 0 and out["mlp_bound_samples_per_s"] > 0
    ratio = out["train_samples_per_s"] / out["mlp_bound_samples_per_s"]
    assert out["ratio_to_mlp_bound"] == pytest.approx(ratio, abs=1e-3)
    assert 0.5 < out["test_auc"] < 1.0  # the generator's clicks are learnable
    assert out["test_logloss"] > 0
    assert out["cpu_kernels"] is True
    # the host, since figures from hosts without native bf16 do not compare
    assert out["host"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert out["host"]["native_bf16"] is torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert out["host"]["cpu"]  # the model name, on Linux
    # each id embedded (dim 16), each number as it is
    assert len(CATEGORICAL) == 13 and len(NUMERIC) == 1
    assert out["deep_input_width"] == len(CATEGORICAL) * 16 + len(NUMERIC)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step_vs_bound_prints_per_pair_ratios(flat, precision):
    out = run_script("step_vs_bound.py", "--data", str(flat), *COLUMNS, "--rounds", "3",
                     "--chunk", "2", "--precision", precision)  # fmt: skip
    assert out["rounds"] == 3 and out["chunk"] == 2 and out["batch_size"] == 512
    assert out["deepfm_step_ms"] > 0 and out["bound_step_ms"] > 0
    assert out["ratio_min"] <= out["ratio_median"] <= out["ratio_max"]
    assert out["host"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # both steps in the precision asked for; the tables on the library's default optimizer
    assert out["precision"] == precision and out["fused_forward"] is True
    assert out["sparse_optimizer"] == "adam" and out["sparse_lr"] == 0.001


def test_step_vs_bound_refuses_settings_it_does_not_interleave(flat):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_vs_bound.py"), "--data", str(flat),
         *COLUMNS, "--compile"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--compile" in proc.stderr


def test_train_throughput_with_a_busy_neighbour_reports_both_runs(flat):
    out = run_script("train_throughput.py", "--data", str(flat), *COLUMNS, "--bound-steps", "2",
                     "--neighbour")  # fmt: skip
    assert out["quiet_train_samples_per_s"] == out["train_samples_per_s"]
    assert out["loaded_train_samples_per_s"] > 0
    ratio = out["loaded_train_samples_per_s"] / out["quiet_train_samples_per_s"]
    assert out["loaded_to_quiet"] == pytest.approx(ratio, abs=1e-3)
    assert out["loaded_weights_identical"] is True  # the load changes the speed only
    assert out["omp_wait_policy"] == "PASSIVE" and out["torch_runtime_spins"] is False


def test_auc_headroom_scores_the_models_test_rows_against_the_true_click_model(flat, tmp_path):
    """On the rows the model was evaluated on (the last tenth by time): the model's AUC is
    the one its training reported, the Bayes AUC that of the generator's true
    probabilities, and each term's leftover is a weight in [-0.5, 1.5]."""
    from model.metrics import auc

    model_dir = tmp_path / "model"
    config = str(ROOT / "configs" / "deepfm.yaml")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--config", config, "--data", str(flat), "--epochs", "1",
                     "--model-dir", str(model_dir)]) == 0  # fmt: skip
    out = run_script("auc_headroom.py", "--model", str(model_dir), "--rows", "40000",
                     "--seed", "1")  # fmt: skip
    reported = json.loads((model_dir / "metrics.json").read_text())
    assert out["model_auc"] == pytest.approx(reported["auc"], abs=2e-4)
    rows = pd.read_parquet(flat)
    truth = pd.read_parquet(flat.with_name("click_prob.parquet")).iloc[:, 0].to_numpy()
    order = rows[SPEC.timestamp].argsort(kind="stable").to_numpy()
    test = order[int(0.9 * len(rows)) :]
    assert out["test_rows"] == len(test) == reported["rows_eval"]
    bayes = auc(rows[SPEC.label.name].to_numpy()[test], truth[test])
    assert out["bayes_auc"] == pytest.approx(bayes, abs=1e-5)
    assert set(out["terms"]) >= {"user_bias", "ad_quality", "interest_boost", "price_penalty"}
    for name, term in out["terms"].items():
        assert term["std"] > 0 and -0.5 < term["left_over"] < 1.5, name

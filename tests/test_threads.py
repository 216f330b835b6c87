"""Thread counts follow the CPU quota (cgroup v2 / v1, affinity), the trainer uses it when no
thread count is given, and OpenMP runtimes loaded after the library put idle threads to
sleep."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import kernels, threads
from model import train as train_module

ROOT = Path(__file__).resolve().parents[1]
EIGHT = set(range(8))


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("files", "affinity", "expected"),
    [
        ({"cpu.max": "max 100000"}, EIGHT, 8),  # v2, no limit: the affinity mask
        ({"cpu.max": "200000 100000"}, EIGHT, 2),  # v2: a 2-CPU limit
        ({"cpu.max": "150000 100000"}, EIGHT, 1),  # 1.5 CPUs: rounded down
        ({"cpu.max": "50000 100000"}, EIGHT, 1),  # half a CPU: still one thread
        ({"cpu.max": "400000 100000"}, {0, 1}, 2),  # the mask is smaller than the quota
        ({"cpu.max": "garbage"}, {0, 1, 2}, 3),  # unreadable: no quota
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, EIGHT, 8),
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, EIGHT, 3),
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "200000", "cpu,cpuacct/cpu.cfs_period_us": "50000"},
            EIGHT,
            4,
        ),
        ({"cpu/cpu.cfs_quota_us": "300000"}, EIGHT, 8),  # no period: no quota
        ({}, {0, 1, 2, 3, 4}, 5),  # no cgroup files at all
    ],
)
def test_cpu_quota_is_the_smaller_of_the_cgroup_limit_and_the_affinity_mask(
    tmp_path, files, affinity, expected
):
    assert threads.cpu_quota(cgroup(tmp_path, files), affinity=affinity) == expected


def test_cgroup_v2_wins_over_v1_files(tmp_path):
    root = cgroup(
        tmp_path,
        {
            "cpu.max": "100000 100000",
            "cpu/cpu.cfs_quota_us": "400000",
            "cpu/cpu.cfs_period_us": "100000",
        },
    )
    assert threads.cpu_quota(root, affinity=EIGHT) == 1


def test_cpu_quota_defaults_to_this_process_affinity(tmp_path):
    assert threads.cpu_quota(tmp_path) == len(os.sched_getaffinity(0))


def test_sleep_when_idle_sets_passive_unless_a_policy_was_chosen(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert threads.sleep_when_idle() is True
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.sleep_when_idle() is False
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    if kernels.numba is not None:
        kernels.set_threads(before)
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("quota", "local_world", "given", "expected"),
    [(1, None, None, 1), (2, None, None, 2), (2, "2", None, 1), (1, None, 2, 2)],
)
def test_the_trainer_uses_the_cpu_quota_unless_threads_are_given(
    monkeypatch, restore_threads, quota, local_world, given, expected
):
    monkeypatch.setattr(threads, "cpu_quota", lambda: quota)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    torch.set_num_threads(2 if expected == 1 else 1)  # a different count before
    dev, _, _ = train_module._set_up_processes("cpu", given)
    assert dev.type == "cpu"
    assert torch.get_num_threads() == expected
    if kernels.numba is not None:
        assert kernels.numba.get_num_threads() == min(
            expected, kernels.numba.config.NUMBA_NUM_THREADS
        )


@pytest.mark.parametrize(
    ("batch", "available", "min_samples", "expected"),
    [(256, 2, 1024, 1), (1024, 2, 1024, 1), (2048, 2, 1024, 2), (4096, 2, 1024, 2),
     (4096, 8, 1024, 4), (65536, 8, 1024, 8), (100, 4, 1024, 1), (256, 2, 0, 2)],
)  # fmt: skip
def test_a_small_step_takes_fewer_threads(batch, available, min_samples, expected):
    """One thread per ``min_samples`` samples at most, within what is available."""
    assert threads.step_threads(batch, available, min_samples) == expected


@pytest.mark.parametrize(
    ("batch", "per_thread", "step"), [(256, 1024, 1), (256, 0, 2), (2048, 1024, 2)]
)
def test_training_steps_run_on_the_step_threads_and_evaluation_on_all(
    monkeypatch, caplog, restore_threads, batch, per_thread, step
):
    """At batch 256 the steps run on one thread of two (waking the second costs more than
    its share); evaluation after the epoch, and the process after training, have both."""
    sys.path.insert(0, str(ROOT / "tests"))
    from toy_data import toy_config, toy_table

    from model.config import config_from_dict

    seen = {"step": set(), "eval": set()}
    step_fn, eval_fn = train_module._train_step, train_module.evaluate

    def counting_step(*args):
        seen["step"].add((torch.get_num_threads(), _numba_threads()))
        return step_fn(*args)

    def counting_eval(*args, **kw):
        seen["eval"].add(torch.get_num_threads())
        return eval_fn(*args, **kw)

    monkeypatch.setattr(train_module, "_train_step", counting_step)
    monkeypatch.setattr(train_module, "evaluate", counting_eval)
    cfg = toy_config(
        batch_size=batch, num_epochs=1, num_threads=2, min_samples_per_thread=per_thread
    )
    df = toy_table(3000)
    with caplog.at_level("INFO", logger=train_module.log.name):
        train_module.train(config_from_dict(cfg), df.iloc[:2500], df.iloc[2500:], progress=False)
    told = [r.message for r in caplog.records if "training steps run on" in r.message]
    # said once, when a step takes fewer threads than the process has
    expected = f"training steps run on 1 of 2 threads: batch {batch}, at most one thread per"
    assert [m.startswith(expected) for m in told] == ([True] if step == 1 else [])
    numba_step = step if _numba_threads() is not None else None
    assert seen["step"] == {(step, numba_step)}
    assert seen["eval"] == {2}
    assert torch.get_num_threads() == 2


def _numba_threads() -> int | None:
    if kernels.numba is None or kernels.numba.config.NUMBA_NUM_THREADS < 2:
        return None
    return kernels.numba.get_num_threads()


def _policy_in_child(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.slow
def test_the_library_makes_runtimes_loaded_after_it_passive():
    # the trainer imported first: PyTorch's and numba's runtimes load with PASSIVE
    out = _policy_in_child(
        "import os, model.train as t\n"
        "from model import kernels, threads\n"
        "kernels.available()\n"
        "print(os.environ['OMP_WAIT_POLICY'], threads.torch_runtime_spins())"
    )
    assert out == ["PASSIVE", "False"]
    # PyTorch imported before the library: its runtime spins, and the library says so
    out = _policy_in_child(
        "import os, torch\n"
        "from model import threads\n"
        "print(os.environ['OMP_WAIT_POLICY'], threads.torch_runtime_spins())"
    )
    assert out == ["PASSIVE", "True"]


@pytest.mark.parametrize(
    "entry",
    [
        # what the train component and every TrainJob node (`deepfm train`) run
        "from training.run import run_training, TrainRequest\n"
        "try:\n"
        "    run_training(TrainRequest(config='configs/deepfm.yaml', train_data='/no/such.parquet',"
        " model_dir='/tmp/unused-model-dir'))\n"
        "except Exception:\n"
        "    pass\n",
        # the command line, up to the data it cannot find
        "from pipelines.cli import main\n"
        "try:\n"
        "    main(['train', '--config', 'configs/deepfm.yaml', '--data', '/no/such.parquet',"
        " '--model-dir', '/tmp/unused-model-dir'])\n"
        "except SystemExit:\n"
        "    pass\n",
    ],
    ids=["run_training", "deepfm train"],
)
def test_the_training_entry_points_load_torch_after_the_policy(entry):
    """On the real paths PyTorch's runtime is loaded after the library set the policy
    (a failure before training still imports what training imports)."""
    out = _policy_in_child(
        entry + "import sys\nloaded = 'torch' in sys.modules\nfrom model import threads\n"
        "print(loaded, threads.torch_runtime_spins())"
    )
    assert out[-2:] == ["True", "False"]  # torch was loaded, after the policy

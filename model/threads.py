"""CPU threads: how many this process may use, and idle threads that sleep instead of spin.

**Idle threads sleep.** A CPU training step alternates PyTorch's parallel regions (the deep
MLP) with the compiled kernels' (``model.kernels``, numba's OpenMP pool). With PyTorch
loaded first, both run on PyTorch's GNU OpenMP runtime (numba's pool binds to the
``libgomp`` already loaded), and by default a GNU OpenMP thread that finishes its share
spins for a while before sleeping. Alone on its cores that costs little; beside one other
busy process on a shared CPU the spinning threads take the cores the working threads and
the neighbour need, and a step gets 4-40x slower (even ``GOMP_SPINCOUNT=10000`` still
collapses; passive waiting does not). ``sleep_when_idle`` sets ``OMP_WAIT_POLICY=PASSIVE``
(idle threads sleep at once) in this process's environment unless the user chose a
policy. GNU OpenMP reads the variable once, when the runtime is loaded (for PyTorch's:
``import torch``), so it acts on runtimes loaded afterwards: this module calls it when it
is imported, and ``model.kernels`` and ``model.train`` import it before PyTorch or numba.
Where PyTorch was imported earlier (a caller that imports ``torch`` before the library),
its runtime keeps spinning; ``torch_runtime_spins`` says so, and setting
``OMP_WAIT_POLICY=PASSIVE`` in the environment before Python starts covers that case. The
policy changes when threads sleep, never what they compute: the same seed trains the same
weights. Child processes inherit the variable.

**Thread counts follow the CPU quota.** ``cpu_quota`` is the number of CPUs this process
may run on at once: the smallest of the cgroup's CPU quota (cgroup v2 ``cpu.max``, or v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; a pod's CPU limit) rounded down, and the
CPUs of its affinity mask (``os.sched_getaffinity``); at least 1. Rounded down because a
thread more than the quota allows is throttled mid-step, which stalls the others at the
next barrier.

**Small steps take fewer threads.** Every parallel region first wakes the sleeping threads,
about 0.1 ms on a virtual machine whose idle vCPU halts (an empty two-thread numba
``prange`` takes 82 us on this project's 2-core VM, one thread 0.8 us), and a training
step starts about 15 regions (its matrix products and kernels). Below some batch size a
step's share per thread no longer pays for that: ``step_threads`` gives a step one thread
per ``min_samples`` samples at most (``train.min_samples_per_thread``, 1024 by default),
within the quota. Measured here (300k generated rows, one epoch, 1 against 2 threads):
batch 256 106k against 66k samples/s, 512 153k against 117k, 1024 190k against 181k, 2048
245k against 271k, 4096 260k against 320k. Evaluation and scoring (large batches) keep
every thread.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_POLICY = "OMP_WAIT_POLICY"


def sleep_when_idle() -> bool:
    """Make OpenMP runtimes loaded from now on put idle threads to sleep at once
    (``OMP_WAIT_POLICY=PASSIVE``) unless the environment already chose a policy. Returns
    True when the process's policy is passive."""
    os.environ.setdefault(_POLICY, "PASSIVE")
    return os.environ[_POLICY].strip().upper() == "PASSIVE"


def torch_runtime_spins() -> bool:
    """True when PyTorch's OpenMP runtime was loaded before the policy was passive (its
    idle threads spin): PyTorch imported first and no ``OMP_WAIT_POLICY`` in the
    environment when it was."""
    return "torch" in sys.modules and _POLICY_AT_START != "PASSIVE"


@functools.cache
def openmp_backend() -> bool:
    """PyTorch's intra-op threads are OpenMP's, so ``torch.set_num_threads`` may change
    them between steps (the native backend refuses once parallel work has started, with a
    warning). Imports PyTorch: call it after the policy is set."""
    import torch

    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def step_threads(batch: int, available: int, min_samples: int) -> int:
    """Threads for one CPU training step of ``batch`` samples: ``available``, but at most
    one per ``min_samples`` samples (``train.min_samples_per_thread``; at least 1);
    ``min_samples`` 0: ``available``."""
    if min_samples <= 0:
        return max(1, available)
    return max(1, min(available, batch // min_samples))


def cpu_quota(root: str | Path = CGROUP_ROOT, affinity: set[int] | list[int] | None = None) -> int:
    """How many CPUs this process may use at once: the smallest of the cgroup CPU quota
    (rounded down) under ``root`` and the affinity mask (``affinity``, by default
    ``os.sched_getaffinity(0)``); ``os.cpu_count()`` where neither limits it; at least 1."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # not on Linux
            affinity = range(os.cpu_count() or 1)
    limits = [len(affinity)]
    quota = _cgroup_quota(Path(root))
    if quota is not None:
        limits.append(int(quota))
    return max(1, min(limits))


def _cgroup_quota(root: Path) -> float | None:
    """CPUs the cgroup's quota allows (quota / period), or None without a quota."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:  # cgroup v2: "max 100000" or "200000 100000"
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            return _ratio(parts[0], parts[1])
        return None
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):  # cgroup v1; -1 = no quota
        quota = _read(root / folder / "cpu.cfs_quota_us")
        period = _read(root / folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _ratio(quota, period)
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


_POLICY_AT_START = os.environ.get(_POLICY, "").strip().upper() or (
    None if "torch" in sys.modules else "PASSIVE"
)
sleep_when_idle()

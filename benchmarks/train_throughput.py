"""Training throughput and quality of DeepFM on any flat parquet table.

    python benchmarks/train_throughput.py --data flat.parquet --label clk \
        --categorical user_id,adgroup_id,pid --numeric price --embedding-dim 16 \
        --hidden 256,128,64 --batch-size 4096 --epochs 1 --threads 2 [--device cpu|cuda]

Rows with ``split == "train"``/``"test"`` are used when a ``split`` column exists, else the
last ``--test-fraction`` by ``--timestamp`` is the test set. Prints ONE JSON line:

- ``train_samples_per_s``: DeepFM training loop only (encoding and evaluation excluded);
- ``mlp_bound_samples_per_s``: the deep MLP alone (forward + backward + Adam step) on random
  input of the same width, same batch size, threads (those a training step takes at that
  batch size: model.threads.step_threads) and precision: the compute bound;
- ``ratio_to_mlp_bound``: the first divided by the second;
- ``mlp_with_input_grad_samples_per_s`` and ``ratio_to_mlp_with_input_grad``: the same MLP
  also computing the gradient of its input, as it must inside DeepFM (to reach the
  embeddings): one more matrix product per step, so a slightly lower bound;
- ``test_auc``, ``test_logloss``, ``rows_train``, ``rows_test``;
- with ``--baseline``: the same figures for a plain PyTorch DeepFM (one ``nn.Embedding`` per
  feature looped in Python, dense gradients, one Adam) trained for the same epochs;
- with ``--neighbour``: the same training run a second time beside one busy process (a
  process spinning in pure Python for the whole run, as another job on a shared machine
  would): ``quiet_train_samples_per_s`` (the first run), ``loaded_train_samples_per_s``,
  their ratio ``loaded_to_quiet`` and ``loaded_weights_identical`` (same seed, same
  threads: the load must change the speed only).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# first: idle OpenMP threads sleep in every runtime loaded after it (see model/threads.py)
from model import threads  # noqa: E402, I001  # isort: skip

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from model import kernels  # noqa: E402
from model.config import config_from_dict  # noqa: E402
from model.metrics import auc, logloss  # noqa: E402
from model.modules import MLP  # noqa: E402
from model.optim import optimizer_step  # noqa: E402
from model.train import native_precision, score, time_split, train  # noqa: E402


def build_config(args: argparse.Namespace) -> dict:
    cats = [c for c in args.categorical.split(",") if c]
    nums = [c for c in (args.numeric or "").split(",") if c]
    features = [
        {
            "name": c,
            "type": "id",
            "vocab": {"min_count": args.min_count},
            "embedding_dim": args.embedding_dim,
            "init_fn": args.init_fn,
        }
        for c in cats
    ] + [{"name": c, "type": "raw", "normalizer": "log1p_standard"} for c in nums]
    return {
        "data": {"label": args.label, "timestamp": args.timestamp, "group_key": None},
        "features": features,
        "feature_groups": {"wide": cats, "fm": cats, "deep": cats + nums},
        "model": {
            "deep": {"hidden_units": [int(h) for h in args.hidden.split(",")]},
            "metrics": ["auc", "logloss"],
        },
        "train": {
            "batch_size": args.batch_size,
            "eval_batch_size": max(args.batch_size, 65536),
            "num_epochs": args.epochs,
            "num_threads": args.threads,
            "seed": args.seed,
            "sparse_optimizer": {
                "type": args.sparse_optimizer,
                "lr": args.sparse_lr,
                "initial_accumulator_value": args.sparse_initial_accumulator,
            },
            "dense_optimizer": {"type": "adam", "lr": args.dense_lr},
            "mixed_precision": None if args.precision == "fp32" else args.precision,
            "log_steps": 10**9,
            "compile": args.compile,
        },
    }


def bound_step(
    width: int,
    hidden: list[int],
    batch: int,
    device: torch.device,
    precision: str,
    input_grad: bool = False,
):
    """One step of the deep MLP + output layer alone on random input of the DeepFM's deep
    width: forward, backward, Adam step (with ``input_grad``, also the gradient of the
    input). The Adam step is the trainer's (``model.optim.optimizer_step``: fused Adam, on
    one thread for an MLP this small), so the bound gains what the step gains there.
    Returns the step function."""
    torch.manual_seed(0)
    net = nn.Sequential(MLP(width, hidden), nn.Linear(hidden[-1], 1)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    x = torch.randn(batch, width, device=device, requires_grad=input_grad)
    y = (torch.rand(batch, device=device) < 0.05).float()
    ctx = (
        torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        if precision != "fp32"
        else torch.autocast(device.type, enabled=False)
    )

    def step() -> None:
        with ctx:
            logits = net(x).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        x.grad = None
        loss.backward()
        optimizer_step(opt)  # as the trainer steps its dense Adam (one thread when small)

    return step


def mlp_bound(
    width: int,
    hidden: list[int],
    batch: int,
    device: torch.device,
    precision: str,
    steps: int,
    input_grad: bool = False,
) -> float:
    """Samples/s of ``bound_step`` (the compute bound)."""
    step = bound_step(width, hidden, batch, device, precision, input_grad)
    for _ in range(10):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The data and model settings ``build_config`` reads (shared with step_vs_bound.py)."""
    p.add_argument("--data", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--categorical", required=True, help="comma-separated id columns")
    p.add_argument("--numeric", default="", help="comma-separated numeric columns")
    p.add_argument("--timestamp", default="event_timestamp", help="for the time split")
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--hidden", default="256,128,64")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    # the library's defaults (model.config.SparseOptimizerConfig): Adam on the tables, its
    # learning rate the one that optimizer's type defaults to
    p.add_argument("--sparse-optimizer", default="adam")
    p.add_argument("--sparse-lr", type=float, default=None, help="default: the type's")
    p.add_argument("--sparse-initial-accumulator", type=float, default=0.0)
    p.add_argument("--init-fn", help='embedding init, e.g. "nn.init.normal_,std=0.0001"')
    p.add_argument("--dense-lr", type=float, default=0.001)
    p.add_argument("--min-count", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the network after the lookups"
    )


class PlainDeepFM(nn.Module):
    """A textbook DeepFM (as in DeepCTR-Torch): one embedding per feature looped in Python,
    dense gradients, one Adam for everything."""

    def __init__(
        self, cardinalities: list[int], dim: int, num_dense: int, hidden: list[int]
    ) -> None:
        super().__init__()
        self.first_order = nn.ModuleList(nn.Embedding(c, 1) for c in cardinalities)
        self.embeddings = nn.ModuleList(nn.Embedding(c, dim) for c in cardinalities)
        for e in [*self.first_order, *self.embeddings]:
            nn.init.normal_(e.weight, std=1e-4)  # DeepCTR's default init_std
        layers, width = [], len(cardinalities) * dim + num_dense
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        first = sum(e(ids[:, i]) for i, e in enumerate(self.first_order))
        v = torch.stack([e(ids[:, i]) for i, e in enumerate(self.embeddings)], dim=1)
        fm = 0.5 * (v.sum(1).square() - v.square().sum(1)).sum(1, keepdim=True)
        return (first + fm + self.mlp(torch.cat([v.flatten(1), dense], dim=1))).squeeze(1)


def plain_baseline(cfg, train_df, test_df, args) -> dict:
    from model.features import FeatureEncoder

    enc = FeatureEncoder(cfg).fit(train_df)
    tr, te = enc.transform(train_df), enc.transform(test_df)
    y = torch.from_numpy(train_df[args.label].to_numpy(np.float32))
    spec = enc.input_spec()
    torch.manual_seed(args.seed)
    net = PlainDeepFM(
        [s.num_embeddings for s in spec.sparse],
        args.embedding_dim,
        len(spec.dense),
        [int(h) for h in args.hidden.split(",")],
    )
    opt = torch.optim.Adam(net.parameters(), lr=args.dense_lr)
    n = len(y)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for s in range(0, n, args.batch_size):
            rows = perm[s : s + args.batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(
                net(tr.sparse[rows], tr.dense[rows]), y[rows]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        p = torch.sigmoid(net(te.sparse, te.dense)).numpy()
    labels = test_df[args.label].to_numpy()
    return {
        "baseline_train_samples_per_s": round(n * args.epochs / seconds, 1),
        "baseline_test_auc": round(auc(labels, p), 5),
        "baseline_test_logloss": round(logloss(labels, p), 5),
    }


def _spin(stop) -> None:
    """A busy neighbour: pure Python arithmetic until ``stop`` is set."""
    x = 0
    while not stop.is_set():
        for i in range(10_000):
            x = (x + i) % 1_000_003


@contextmanager
def busy_neighbour():
    """One other process spinning on a CPU for the duration of the block."""
    ctx = multiprocessing.get_context("fork")  # the child runs only _spin: no threads used
    stop = ctx.Event()
    proc = ctx.Process(target=_spin, args=(stop,), daemon=True)
    proc.start()
    try:
        time.sleep(0.2)  # let it start spinning before the clock does
        yield
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()


def neighbour_figures(cfg, train_df, quiet) -> dict:
    """The same training again beside one busy process, compared with the quiet run."""
    with busy_neighbour():
        loaded = train(cfg, train_df, None, device=quiet_device(quiet), progress=False)
    same = all(
        torch.equal(a, b)
        for a, b in zip(
            quiet.model.state_dict().values(), loaded.model.state_dict().values(), strict=True
        )
    )
    return {
        "quiet_train_samples_per_s": round(quiet.samples_per_s, 1),
        "loaded_train_samples_per_s": round(loaded.samples_per_s, 1),
        "loaded_to_quiet": round(loaded.samples_per_s / quiet.samples_per_s, 4),
        "loaded_weights_identical": same,
    }


def host() -> dict:
    """The CPU the figures were taken on (hosts of one machine type differ: a bf16 figure
    means little where bf16 is emulated): its model name, PyTorch's vector capability, and
    whether bf16 / fp16 matrix products run natively (``model.train.native_precision``)."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        pass
    cpu = torch.device("cpu")
    return {
        "cpu": name,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_precision(cpu, "bf16"),
        "native_fp16": native_precision(cpu, "fp16"),
    }


def quiet_device(result) -> str:
    return str(next(result.model.parameters()).device)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(p)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bound-steps", type=int, default=50)
    p.add_argument("--baseline", action="store_true", help="also train a plain PyTorch DeepFM")
    p.add_argument(
        "--neighbour",
        action="store_true",
        help="train again beside one busy process; report loaded vs quiet samples/s",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    df = pd.read_parquet(args.data)
    if "split" in df.columns:
        train_df = df[df["split"] == "train"].reset_index(drop=True)
        test_df = df[df["split"] == "test"].reset_index(drop=True)
    else:
        train_df, test_df = time_split(df, args.timestamp, args.test_fraction)
    cfg = config_from_dict(build_config(args))

    result = train(cfg, train_df, None, device=args.device, progress=False)
    loaded = neighbour_figures(cfg, train_df, result) if args.neighbour else {}
    test = result.encoder.transform(test_df)
    scores = score(result.model, test, cfg.train.eval_batch_size)
    labels = test_df[args.label].to_numpy()

    device = next(result.model.parameters()).device
    hidden = [int(h) for h in args.hidden.split(",")]
    # the bound on the threads a training step takes at this batch size (model.threads)
    step_threads = threads.step_threads(
        args.batch_size, args.threads, cfg.train.min_samples_per_thread
    )
    torch.set_num_threads(step_threads)
    bound, bound_in = (
        mlp_bound(
            result.model.deep_in_features,
            hidden,
            args.batch_size,
            device,
            args.precision,
            args.bound_steps,
            input_grad=input_grad,
        )
        for input_grad in (False, True)
    )
    torch.set_num_threads(args.threads)
    out = {
        "device": str(device),
        "cpu_kernels": device.type == "cpu" and kernels.available(),
        "compile": args.compile,
        "threads": args.threads,
        "step_threads": step_threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch_runtime_spins": threads.torch_runtime_spins(),
        "host": host(),
        "precision": args.precision,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "rows_train": len(train_df),
        "rows_test": len(test_df),
        "deep_input_width": result.model.deep_in_features,
        "train_seconds": round(result.train_seconds, 3),
        "train_samples_per_s": round(result.samples_per_s, 1),
        "epoch_samples_per_s": [round(h["train_samples_per_s"], 1) for h in result.history],
        "mlp_bound_samples_per_s": round(bound, 1),
        "ratio_to_mlp_bound": round(result.samples_per_s / bound, 4),
        "mlp_with_input_grad_samples_per_s": round(bound_in, 1),
        "ratio_to_mlp_with_input_grad": round(result.samples_per_s / bound_in, 4),
        "test_auc": round(auc(labels, scores), 5),
        "test_logloss": round(logloss(labels, scores), 5),
    }
    out.update(loaded)
    if args.baseline:
        out.update(plain_baseline(cfg, train_df, test_df, args))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

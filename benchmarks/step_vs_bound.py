"""The training step against the MLP-alone bound, interleaved to cancel machine drift.

    python benchmarks/step_vs_bound.py --data flat.parquet --label clk \
        --categorical user_id,adgroup_id,pid --numeric price [--rounds 12] [--chunk 20]

``train_throughput.py`` times one epoch, then the bound: on a machine whose speed drifts
within minutes (a shared VM) the two figures can come from different speeds. Here chunks
of ``--chunk`` DeepFM training steps alternate with chunks of bound steps (the deep MLP
and output layer alone, forward + backward + Adam, on random input of the same width; with
``--precision bf16|fp16`` both under that autocast), so each pair of chunks runs at one
speed. Prints ONE JSON line: the median step times and
the median, min and max of the per-pair ratios (bound time / DeepFM step time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# first, as the library runs: idle OpenMP threads sleep (imported after PyTorch, its
# runtime's threads would spin between parallel regions, and both steps would be timed
# on a policy the trainer does not use; see model/threads.py)
from model import threads  # noqa: E402, I001  # isort: skip

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from train_throughput import add_config_args, bound_step, build_config, host  # noqa: E402

from model import kernels  # noqa: E402
from model.config import config_from_dict  # noqa: E402
from model.features import FeatureEncoder  # noqa: E402
from model.train import _build_run, _train_step, _training_forward, encode_dataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(p)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--chunk", type=int, default=20)
    args = p.parse_args()
    if args.compile:
        p.error("the interleaved steps run eager: leave --compile")
    torch.set_num_threads(args.threads)

    df = pd.read_parquet(args.data)
    cfg = config_from_dict(build_config(args))
    encoder = FeatureEncoder(cfg).fit(df)
    data = encode_dataset(cfg, encoder, df, "the data")
    torch.manual_seed(0)
    # the trainer's own step: its model, optimizers and forward (the kernels where they
    # serve the model, else the model's own forward; model.train._training_forward)
    run = _build_run(cfg, encoder, torch.device("cpu"), 0, 1, None, False)
    run.forward, run.sync_sparse = _training_forward(run)
    model = run.model
    model.train()
    batch = args.batch_size
    perm = torch.randperm(len(data))
    features, labels = data.features.index(perm), data.labels[perm]
    steps = len(labels) // batch
    state = {"step": 0}

    def deepfm_step() -> None:
        start = (state["step"] % steps) * batch
        state["step"] += 1
        stop = start + batch
        _train_step(run, features.slice(start, stop), labels[start:stop], None).item()

    # both steps on the threads a training step takes at this batch size (model.threads)
    step_threads = threads.step_threads(batch, args.threads, cfg.train.min_samples_per_thread)
    kernels.set_threads(step_threads)
    torch.set_num_threads(step_threads)
    hidden = [int(h) for h in args.hidden.split(",")]
    # the bound in the same precision (autocast to bf16 / fp16 as the trainer does)
    bound = bound_step(model.deep_in_features, hidden, batch, torch.device("cpu"), args.precision)

    def timed(step) -> float:
        t0 = time.perf_counter()
        for _ in range(args.chunk):
            step()
        return (time.perf_counter() - t0) / args.chunk * 1000

    for _ in range(10):
        deepfm_step()
        bound()
    ours, bounds = [], []
    for _ in range(args.rounds):
        ours.append(timed(deepfm_step))
        bounds.append(timed(bound))
    ratios = [b / o for o, b in zip(ours, bounds, strict=True)]
    print(
        json.dumps(
            {
                "cpu_kernels": kernels.available(),
                "fused_forward": run.forward is not model,
                "sparse_optimizer": run.cfg.train.sparse_optimizer.type,
                "sparse_lr": run.cfg.train.sparse_optimizer.lr,
                "precision": args.precision,
                "threads": args.threads,
                "step_threads": step_threads,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "torch_runtime_spins": threads.torch_runtime_spins(),
                "host": host(),
                "batch_size": batch,
                "deepfm_step_ms": round(statistics.median(ours), 3),
                "bound_step_ms": round(statistics.median(bounds), 3),
                "ratio_median": round(statistics.median(ratios), 4),
                "ratio_min": round(min(ratios), 4),
                "ratio_max": round(max(ratios), 4),
                "rounds": args.rounds,
                "chunk": args.chunk,
            }
        )
    )


if __name__ == "__main__":
    main()

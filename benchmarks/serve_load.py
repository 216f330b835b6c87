"""Latency and throughput of ``deepfm serve`` under load.

    python benchmarks/serve_load.py [--requests 2000] [--seconds 20] [--concurrency 4] \
        [--batch-sizes 1,100] [--rows 100000] [--url http://HOST:PORT --ids impressions.parquet]

Without ``--url`` it builds its own service in a temporary folder: a ``--rows`` sample
(``feature_repo/sample_data.py``), a copy of the Feast repo over it (applied, materialized
into sqlite), the DeepFM of ``configs/deepfm.yaml`` with encoders fitted on the sample
(weights untrained: scoring costs the same) pushed to a local registry, and ``deepfm
serve`` on 127.0.0.1 in a subprocess (so the clients do not share its interpreter).

Each batch size runs ``--requests`` requests or ``--seconds`` seconds, whichever ends first,
from ``--concurrency`` client threads (one keep-alive connection each), after 20 warm-up
requests. A request of B candidates is one user and B ads (ids only: the features come from
the online store), as a ranking call. Prints ONE JSON line: per batch size ``requests``,
``errors``, ``p50_ms``, ``p99_ms`` (client-side latency), ``requests_per_s`` and
``candidates_per_s``; and the setup (``cpus``, ``concurrency``, ``url``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REPO_FILES = ("feature_store.yaml", "features.yaml", "definitions.py", "spec.py", ".feastignore")
WARMUP = 20


def build_service(work: Path, rows: int) -> tuple[Path, Path]:
    """A materialized feature repo and a registry with one model under ``work``."""
    import torch

    from feature_repo import store
    from feature_repo.sample_data import generate
    from feature_repo.spec import REPO_DIR
    from model.deepfm import DeepFM
    from model.export import save_model_dir
    from model.features import FeatureEncoder
    from registry.model_registry import push_model
    from training.config import load_config

    repo = work / "feature_repo"
    (repo / "data").mkdir(parents=True)
    paths = generate(rows, seed=0, out_dir=work / "sample", start="2026-11-01", days=8)
    for name in REPO_FILES:
        shutil.copy(REPO_DIR / name, repo / name)
    for name in ("impressions", "user_profile", "ad_feature"):
        shutil.copy(paths[name], repo / "data")
    store.apply(repo)
    store.materialize("2026-07-01T00:00Z", "2026-11-09T00:00Z", repo_path=repo)

    cfg = load_config(ROOT / "configs" / "deepfm.yaml")
    encoder = FeatureEncoder(cfg).fit(pd.read_parquet(paths["flat"]))
    torch.manual_seed(0)
    network = DeepFM(cfg.model, cfg.feature_groups, encoder.input_spec())
    model_dir = save_model_dir(work / "model", cfg, encoder, network, export_program=False)
    registry = work / "registry"
    push_model(model_dir, registry, "bench")
    return repo, registry


def run_server(registry: Path, repo: Path, port: int) -> None:
    from serving.server import ServeOptions, serve

    options = ServeOptions(model=str(registry), feature_repo=str(repo), reload_interval_s=30)
    serve(options, "127.0.0.1", port, access_log=False)


def wait_ready(url: str, process: multiprocessing.Process | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and not process.is_alive():
            raise SystemExit(f"the server exited with status {process.exitcode}")
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout_s:.0f} s")


def load_phase(
    url: str, bodies: list[bytes], requests_total: int, seconds: float, concurrency: int
) -> dict:
    """Send ``bodies`` (cycled) from ``concurrency`` threads; latency figures in ms."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    issued = iter(range(requests_total))
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(out: list[float]) -> None:
        with requests.Session() as session:
            headers = {"Content-Type": "application/json"}
            while time.monotonic() < deadline:
                with lock:
                    i = next(issued, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = session.post(url, data=bodies[i % len(bodies)], headers=headers, timeout=60)
                out.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(out,)) for out in latencies]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ms = np.array([x for out in latencies for x in out]) * 1e3
    return {
        "requests": len(ms),
        "errors": len(errors),
        **({"first_error": errors[0]} if errors else {}),
        "seconds": round(elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "requests_per_s": round(len(ms) / elapsed, 1),
    }


def request_bodies(impressions: pd.DataFrame, batch: int, count: int, seed: int) -> list[bytes]:
    """``count`` request bodies, each one user and ``batch`` ads of the impressions."""
    rng = np.random.default_rng(seed)
    users = impressions["user_id"].unique()
    ads = impressions["adgroup_id"].unique()
    pids = impressions["pid"].unique()
    bodies = []
    for _ in range(count):
        user, pid = int(rng.choice(users)), str(rng.choice(pids))
        candidates = rng.choice(ads, size=batch, replace=len(ads) < batch)
        instances = [{"user_id": user, "adgroup_id": int(a), "pid": pid} for a in candidates]
        bodies.append(json.dumps({"instances": instances}).encode())
    return bodies


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="a running service (default: start one here)")
    p.add_argument("--name", default="deepfm", help="the model name in its URLs")
    p.add_argument("--ids", help="impressions parquet to draw ids from (with --url)")
    p.add_argument("--rows", type=int, default=100_000, help="sample size of the own service")
    p.add_argument("--requests", type=int, default=2000, help="per batch size")
    p.add_argument("--seconds", type=float, default=20.0, help="per batch size, at most")
    p.add_argument("--concurrency", type=int, default=4, help="client threads")
    p.add_argument("--batch-sizes", default="1,100", help="candidates per request")
    args = p.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]

    process, work = None, None
    try:
        if args.url:
            if not args.ids:
                p.error("--url needs --ids (a parquet with user_id, adgroup_id, pid)")
            base, impressions = args.url.rstrip("/"), pd.read_parquet(args.ids)
        else:
            from serving.server import bind

            work = Path(tempfile.mkdtemp(prefix="serve-load-"))
            print(f"building a {args.rows:,}-row service in {work} ...", file=sys.stderr)
            repo, registry = build_service(work, args.rows)
            impressions = pd.read_parquet(repo / "data" / "impressions.parquet")
            free = bind("127.0.0.1", 0)
            port = free.getsockname()[1]
            free.close()
            spawn = multiprocessing.get_context("spawn")
            process = spawn.Process(target=run_server, args=(registry, repo, port))
            process.start()
            base = f"http://127.0.0.1:{port}"
        wait_ready(base, process, timeout_s=300)
        url = f"{base}/v1/models/{args.name}:predict"
        out: dict = {
            "url": url,
            "server": "external" if args.url else "deepfm serve (subprocess, access log off)",
            "cpus": os.cpu_count(),
            "concurrency": args.concurrency,
        }
        for batch in batch_sizes:
            bodies = request_bodies(impressions, batch, 200, seed=batch)
            load_phase(url, bodies, WARMUP, args.seconds, args.concurrency)
            phase = load_phase(url, bodies, args.requests, args.seconds, args.concurrency)
            phase["candidates_per_s"] = round(phase["requests_per_s"] * batch, 1)
            out[f"batch_{batch}"] = phase
        print(json.dumps(out))
    finally:
        if process is not None:
            process.terminate()  # SIGTERM: a graceful shutdown
            process.join(60)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Scaling figures of the shard path: peak memory and throughput of training from 1M to
10M+ rows, streamed and in memory, and retrieval seconds per million rows on both engines.

    python benchmarks/scaling.py --rows 1000000 10000000 [--engines duckdb,spark]
        [--out benchmarks/results/scaling.jsonl] [--workdir DIR]

1. The smallest ``--rows`` of sample impressions are generated into a feature repo and
   retrieved with duckdb as a shard folder (``store.write_training_shards``).
2. Retrieval seconds per million rows on each of ``--engines``:
   ``benchmarks/retrieval_engines.py --shards-only`` on that many rows (a process of its
   own; skipped with ``--engines ''``).
3. Each larger table is that window repeated, each copy shifted by the window's length,
   written file by file (bounded memory): the same ids and feature values, so the model's
   parameters and optimizer state do not grow with the rows and any growth of memory is
   the data's.
4. ``deepfm train`` (one epoch, no evaluation, CPU) in a process of its own per run, its
   peak RSS from ``wait4``: at the smallest size in memory (``data.streaming=false``),
   streamed, and streamed in 2 processes under torchrun (gloo, one thread each, each
   reading its own shards; the peak is the largest process's); at each larger size
   streamed (``--processes``: in 1 or more processes). Throughput is the run's
   ``train_samples_per_s`` (metrics.json).

Prints one JSON line per run (appended to ``--out``). Each run's figures depend on what
else the machine runs: say so next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "deepfm.yaml"


PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants now."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm") as f:
                pages = int(f.read().split()[1])
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = pages * PAGE
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def run_measured(
    cmd: list[str], env: dict | None = None, *, tree: bool = False
) -> tuple[float, float, float, str, str]:
    """Run ``cmd``: (wall seconds, peak RSS in GB of it or its largest waited-for child, by
    ``wait4``, with ``tree`` the peak of its whole process tree's summed RSS in GB sampled
    every 0.2 s (else 0), stdout, stderr). Raises on a non-zero exit."""
    t0 = time.perf_counter()
    peak = [0]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.posix_spawn(
            cmd[0],
            cmd,
            env if env is not None else dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
            ],
        )
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], tree_rss(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        if tree:
            sampler.start()
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - t0
        done.set()
        if tree:
            sampler.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise RuntimeError(f"{' '.join(cmd[:8])} ... exit {code}:\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024**2, peak[0] / 1024**3, stdout, stderr


def prepare(rows: int, folder: Path) -> dict:
    """Generate ``rows`` sample impressions and retrieve them as shards with duckdb."""
    from feature_repo import store
    from feature_repo.repo import write_repo_files
    from feature_repo.sample_data import generate
    from feature_repo.spec import REPO_DIR, SPEC_FILE, load_spec

    repo = folder / "repo"
    write_repo_files(repo, (REPO_DIR / SPEC_FILE).read_text())
    generate(rows, seed=1, out_dir=repo / "data")
    store.apply(repo)
    spec = load_spec(repo / SPEC_FILE)
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    times = pq.read_table(spec.source_path(spec.entity_rows, repo), columns=[spec.timestamp])
    low, high = (v.as_py() for v in pc.min_max(times[spec.timestamp]).values())
    import pandas as pd

    start, end = pd.Timestamp(low), pd.Timestamp(high) + pd.Timedelta(seconds=1)
    t0 = time.perf_counter()
    manifest = store.write_training_shards(start, end, folder / "shards", repo_path=repo)
    return {"rows": manifest.rows, "duckdb_shards_s": round(time.perf_counter() - t0, 2)}


def repeat(base: Path, copies: int, folder: Path) -> int:
    """``copies`` copies of the shard folder ``base``, each shifted by its time span (plus
    a day), as a new shard folder, one file at a time; returns its rows."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from feature_repo import shards

    m = shards.read_manifest(base)
    span = pd.Timestamp(m.max_time) - pd.Timestamp(m.min_time) + pd.Timedelta(days=1)
    span = pd.Timedelta(days=span.days)  # whole days: every copy's day folders line up
    with shards.ShardWriter(folder, m.timestamp) as w:
        for k in range(copies):
            for path in m.paths():
                table = pq.read_table(path)
                ts = table[m.timestamp]
                shift = pa.scalar(int(span.value * k) // 1000, pa.duration("us"))
                moved = pc.add(pc.cast(ts, pa.timestamp("us", tz=ts.type.tz)), shift)
                idx = table.schema.get_field_index(m.timestamp)
                w.write(table.set_column(idx, m.timestamp, pc.cast(moved, ts.type)))
    return shards.read_manifest(folder).rows


def train(data: Path, model_dir: Path, streaming: bool, processes: int = 1) -> dict:
    """One epoch of ``deepfm train`` on ``data``; its figures."""
    cli = ["-m", "pipelines.cli", "train", "--config", str(CONFIG), "--data", str(data)]
    cli += ["--model-dir", str(model_dir), "--overwrite", "--epochs", "1"]
    cli += ["--eval-fraction", "0", "--device", "cpu"]
    cli += ["--set", f"data.streaming={'true' if streaming else 'false'}"]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    if processes > 1:
        cli += ["--set", "train.num_threads=1"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node", str(processes), *cli]
    else:
        cmd = [sys.executable, *cli]
    seconds, rss, _, _, _ = run_measured(cmd, env)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    return {
        "wall_s": round(seconds, 1),
        "peak_rss_gb": round(rss, 2),
        "train_samples_per_s": round(metrics["train_samples_per_s"]),
        "rows_train": metrics["rows_train"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--engines", default="duckdb,spark")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    parser.add_argument(
        "--streamed-only",
        action="store_true",
        help="only the streamed runs (no in-memory run at the smallest size)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1],
        help="the process counts of the streamed runs (more than 1: gloo under torchrun, "
        "one thread and its own shards each); without --streamed-only the smallest size "
        "also runs 1 and 2",
    )
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # the child's task
    args = parser.parse_args()
    if args.prepare is not None:
        print(json.dumps(prepare(args.rows[0], args.prepare)))
        return
    sizes = sorted(args.rows)
    base = sizes[0]
    if any(n % base for n in sizes):
        parser.error(f"--rows: every size must be a multiple of the smallest ({base})")

    def emit(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(line + "\n")

    with tempfile.TemporaryDirectory(prefix="scaling_", dir=args.workdir) as tmp:
        work = Path(tmp)
        script = str(Path(__file__).resolve())
        _, rss, _, out, _ = run_measured(
            [sys.executable, script, "--rows", str(base), "--prepare", str(work)]
        )
        emit({"run": "prepare", **json.loads(out), "peak_rss_gb": round(rss, 2)})
        if args.engines:
            retrieval = ROOT / "benchmarks" / "retrieval_engines.py"
            cmd = [sys.executable, str(retrieval), "--rows", str(base)]
            _, _, _, out, _ = run_measured(cmd + ["--engines", args.engines, "--shards-only"])
            for line in out.splitlines():
                if line.startswith("{"):
                    emit({"run": "retrieval", **json.loads(line)})
        folders = {base: work / "shards"}
        for n in sizes[1:]:
            t0 = time.perf_counter()
            rows = repeat(folders[base], n // base, work / f"shards_{n}")
            assert rows == n, (rows, n)
            folders[n] = work / f"shards_{n}"
            emit({"run": "repeat", "rows": n, "seconds": round(time.perf_counter() - t0, 1)})
        runs = [(n, True, p) for n in sizes for p in args.processes]
        if not args.streamed_only:
            runs = [(base, False, 1), (base, True, 1), (base, True, 2)] + [
                r for r in runs if r[0] != base
            ]
        for n, streaming, processes in runs:
            model_dir = work / "model"
            record = train(folders[n], model_dir, streaming, processes)
            emit(
                {
                    "run": "train",
                    "rows": n,
                    "streamed": streaming,
                    "processes": processes,
                    **record,
                }
            )


if __name__ == "__main__":
    main()

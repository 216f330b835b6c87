"""Point-in-time retrieval seconds per million rows on both offline engines.

    python benchmarks/retrieval_engines.py --rows 1000000 [--out results.jsonl]

Generates ``--rows`` sample impressions into a temporary feature repo, applies it once with
the duckdb profile (``feature_store.yaml``) and once with the Spark profile
(``feature_store.spark.yaml``, local mode), and times for each engine:

- ``get_training_data``: the table in this process (the in-memory path);
- ``write_training_shards``: the table as shards (on Spark written by Spark, never held
  here; on duckdb retrieved in memory, then written).

Spark's first query in a process pays for the JVM and code generation: a warm-up retrieval
over an eighth of the window runs first and is reported apart (it also counts in the
peak RSS; ``--shards-only`` skips the in-memory retrieval). Prints one JSON line per engine.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature_repo import store  # noqa: E402
from feature_repo.repo import FEATURE_STORE_FILE, write_repo_files  # noqa: E402
from feature_repo.sample_data import generate  # noqa: E402
from feature_repo.spec import REPO_DIR, SPEC_FILE, load_spec  # noqa: E402


def _window(spec, repo: Path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    times = pq.read_table(spec.source_path(spec.entity_rows, repo), columns=[spec.timestamp])
    low, high = pc.min_max(times[spec.timestamp]).values()
    import pandas as pd

    return pd.Timestamp(low.as_py()), pd.Timestamp(high.as_py()) + pd.Timedelta(seconds=1)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run(engine: str, repo: Path, rows: int, *, in_memory: bool = True) -> dict:
    config = REPO_DIR / ("feature_store.spark.yaml" if engine == "spark" else FEATURE_STORE_FILE)
    (repo / FEATURE_STORE_FILE).write_text(config.read_text())
    store.apply(repo)
    spec = load_spec(repo / SPEC_FILE)
    start, end = _window(spec, repo)
    result: dict = {"engine": engine, "rows": rows}
    t0 = time.perf_counter()
    store.get_training_data(start, start + (end - start) / 8, repo_path=repo)
    result["warmup_s"] = round(time.perf_counter() - t0, 2)
    if in_memory:
        t0 = time.perf_counter()
        table = store.get_training_data(start, end, repo_path=repo)
        seconds = time.perf_counter() - t0
        assert len(table) == rows, (len(table), rows)
        del table
        result["in_memory_s"] = round(seconds, 2)
        result["in_memory_s_per_million"] = round(seconds / rows * 1e6, 2)
    out = repo / "shards"
    t0 = time.perf_counter()
    manifest = store.write_training_shards(start, end, out, repo_path=repo, overwrite=True)
    seconds = time.perf_counter() - t0
    assert manifest.rows == rows
    result["shards_s"] = round(seconds, 2)
    result["shards_s_per_million"] = round(seconds / rows * 1e6, 2)
    result["shard_files"] = len(manifest.files)
    result["python_peak_rss_gb"] = round(_peak_rss_gb(), 2)
    shutil.rmtree(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--engines", default="duckdb,spark")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--shards-only",
        action="store_true",
        help="skip the in-memory retrieval (the peak RSS is then the shard path's alone)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="retrieval_") as tmp:
        repo = Path(tmp) / "repo"
        write_repo_files(repo, (REPO_DIR / SPEC_FILE).read_text())
        generate(args.rows, seed=1, out_dir=repo / "data")
        for engine in args.engines.split(","):
            result = run(engine, repo, args.rows, in_memory=not args.shards_only)
            line = json.dumps(result)
            print(line, flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()

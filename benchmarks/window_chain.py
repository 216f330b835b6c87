"""A window of N impressions through validate -> features -> train -> evaluate on the Spark
profile, each step a process of its own: its wall time and peak memory.

    python benchmarks/window_chain.py --rows 30000000 [--base-rows 1000000]
        [--out benchmarks/results/window_chain.jsonl] [--workdir DIR] [--keep]

1. ``write``: ``--base-rows`` sample impressions are generated (``generate``, seed 1, the
   sample's 8 days) and written ``rows / base-rows`` times, row group by row group, into
   one ``impressions.parquet`` of a feature repo whose ``feature_store.yaml`` is the Spark
   profile (``feature_store.spark.yaml``); copy k's event times are moved k milliseconds
   later, so every copy stays inside the same window and finds the same feature versions
   in the point-in-time join (a shift by the window's length would take later copies past
   the views' TTLs). The entity tables (``user_profile``, ``ad_feature``) are the
   generated ones. Then ``feast apply`` (``store.apply``). Memory: the base window only.
2. ``validate``: ``validation.validate.validate_window`` (the validate component's call):
   Great Expectations on Spark DataFrames of the window's sources.
3. ``features``: ``training.data.retrieve_features`` (the features component's call): the
   point-in-time join on Spark, written as shards by Spark, split into the train and eval
   shard folders (eval fraction 0.1, the pipeline's default).
4. ``train``: ``training.run.run_training`` (the train component's call), one epoch on CPU,
   ``data.streaming=true`` (the default ``auto`` streams from 5M rows; forced here so that
   every size takes the same path), evaluated on the eval shards.
5. ``evaluate``: ``evaluation.evaluate.evaluate_model`` (the evaluate component's call)
   against an empty local registry folder (no blessed model yet), the pipeline's gate
   (min AUC 0.70, max drop 0.005): the streamed AUC with its error bound.

Each step runs as ``python window_chain.py --step NAME`` in a process of its own. Its peak
memory is given twice: ``peak_rss_gb``, the Python process's own peak (``wait4``, as
``scaling.py``), and ``tree_peak_rss_gb``, the largest sum of the resident memory of the
process and all its descendants (Spark's JVM included), sampled from ``/proc`` every
0.2 s. Prints one JSON line per step (appended to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scaling import run_measured  # noqa: E402  (benchmarks/, the script's folder)

CONFIG = ROOT / "configs" / "deepfm.yaml"
EVAL_FRACTION = 0.1  # the pipeline's defaults (pipelines/pipeline.py)
MIN_AUC, MAX_AUC_DROP = 0.70, 0.005
STEPS = ("write", "validate", "features", "train", "evaluate")


def _run(cmd: list[str]) -> tuple[float, float, float, str]:
    """Run ``cmd``: (wall seconds, its peak RSS in GB by ``wait4``, the peak of its process
    tree's summed RSS in GB, sampled, stdout). Raises on a non-zero exit."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", DEEPFM_PROGRESS="0")
    seconds, rss, tree, stdout, _ = run_measured(cmd, env, tree=True)
    return seconds, rss, tree, stdout


def _window(work: Path) -> tuple[str, float]:
    info = json.loads((work / "window.json").read_text())
    return info["window_end"], info["window_days"]


def step_write(work: Path, rows: int, base_rows: int) -> dict:
    """The window's sources in a Spark-profile feature repo, written copy by copy."""
    import shutil

    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from feature_repo import store
    from feature_repo.repo import FEATURE_STORE_FILE, write_repo_files
    from feature_repo.sample_data import generate
    from feature_repo.spec import REPO_DIR, SPEC_FILE, load_spec

    repo = work / "repo"
    write_repo_files(repo, (REPO_DIR / SPEC_FILE).read_text())
    spec_text = (REPO_DIR / "feature_store.spark.yaml").read_text()
    (repo / FEATURE_STORE_FILE).write_text(spec_text)
    spec = load_spec(repo / SPEC_FILE)
    paths = generate(base_rows, seed=1, out_dir=work / "base")
    for name in spec.sources:
        if name != spec.entity_rows:
            shutil.copy(paths[name], spec.source_path(name, repo))
    base = pq.read_table(paths[spec.entity_rows])
    shutil.rmtree(work / "base")
    ts_name = spec.sources[spec.entity_rows].timestamp_field
    ts = base[ts_name]
    idx = base.schema.get_field_index(ts_name)
    copies = rows // base_rows
    with pq.ParquetWriter(spec.source_path(spec.entity_rows, repo), base.schema) as writer:
        for k in range(copies):
            shift = pa.scalar(k * 1000, pa.duration("us"))
            moved = pc.add(pc.cast(ts, pa.timestamp("us", tz=ts.type.tz)), shift)
            writer.write_table(base.set_column(idx, ts_name, pc.cast(moved, ts.type)))
    low, high = (pd.Timestamp(v.as_py()) for v in pc.min_max(ts).values())
    end = high + pd.Timedelta(milliseconds=copies) + pd.Timedelta(seconds=1)
    days = (end - low + pd.Timedelta(seconds=1)) / pd.Timedelta(days=1)
    window = {"window_end": end.isoformat(), "window_days": days}
    (work / "window.json").write_text(json.dumps(window))
    store.apply(repo)
    size = spec.source_path(spec.entity_rows, repo).stat().st_size
    return {"copies": copies, "impressions_gb": round(size / 1024**3, 2), **window}


def step_validate(work: Path) -> dict:
    from validation.validate import validate_window

    end, days = _window(work)
    summary = validate_window(str(work / "repo"), end, days, work / "validate" / "report.html")
    return {"passed": True, **{k: v for k, v in summary.metrics().items()}}


def step_features(work: Path) -> dict:
    from training.data import retrieve_features

    end, days = _window(work)
    return retrieve_features(
        str(work / "repo"), end, days, EVAL_FRACTION, work / "train", work / "eval"
    )


def step_train(work: Path) -> dict:
    from training.run import TrainRequest, run_training

    result = run_training(
        TrainRequest(
            config=CONFIG,
            train_data=work / "train",
            eval_data=work / "eval",
            model_dir=work / "model",
            epochs=1,
            device="cpu",
            overrides={"data.streaming": True},
            overwrite=True,
        )
    )
    keys = ("rows_train", "rows_valid", "rows_eval", "train_samples_per_s", "auc", "logloss")
    return {k: result[k] for k in keys if k in result}


def step_evaluate(work: Path) -> dict:
    from evaluation.evaluate import evaluate_model

    registry = work / "registry"
    registry.mkdir(exist_ok=True)
    ev = evaluate_model(work / "model", work / "eval", str(registry), MIN_AUC, MAX_AUC_DROP)
    keep = ("auc", "auc_error_bound", "logloss", "count")
    out = {k: ev.metrics[k] for k in keep if k in ev.metrics}
    return {**out, "blessed": ev.blessed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--base-rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--note", default="", help="added to each JSON line")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # the child's task
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows % args.base_rows:
        parser.error(f"--rows must be a multiple of --base-rows ({args.base_rows})")
    if args.step:
        if args.step == "write":
            result = step_write(args.work, args.rows, args.base_rows)
        else:
            result = globals()[f"step_{args.step}"](args.work)
        print(json.dumps(result, default=str))
        return

    work = Path(tempfile.mkdtemp(prefix="window_chain_", dir=args.workdir))
    script = str(Path(__file__).resolve())
    try:
        for step in STEPS:
            cmd = [sys.executable, script, "--step", step, "--work", str(work)]
            cmd += ["--rows", str(args.rows), "--base-rows", str(args.base_rows)]
            seconds, rss, tree, stdout = _run(cmd)
            result = json.loads(stdout.strip().splitlines()[-1])
            record = {"step": step, "rows": args.rows, "wall_s": round(seconds, 1)}
            record |= {"peak_rss_gb": round(rss, 2), "tree_peak_rss_gb": round(tree, 2)}
            record |= result
            if args.note:
                record["note"] = args.note
            line = json.dumps(record, default=str)
            print(line, flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(line + "\n")
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The ``deepfm`` command line.

    deepfm data generate --rows N --seed S --out DIR
    deepfm train --config configs/deepfm.yaml --data flat.parquet --model-dir DIR
    deepfm evaluate --model DIR --data rows.parquet
    deepfm predict --model DIR --input rows.parquet --output scores.parquet

Wrong input exits with status 2 and one line naming the setting, file or column at fault.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import yaml

from model.config import ConfigError


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _read_parquet(path: str, what: str):
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} {p} does not exist")
    try:
        return pd.read_parquet(p)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise UsageError(f"{what} {p} is not a readable parquet file: {e}") from None


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. train.batch_size=4096")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 as a string
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        out[key] = parsed
    return out


# ---------------------------------------------------------------------- commands


def cmd_data_generate(args: argparse.Namespace) -> None:
    from feature_repo.sample_data import generate

    t0 = time.perf_counter()
    print(
        f"generating {args.rows:,} impressions (seed {args.seed}) into {args.out} ...",
        file=sys.stderr,
    )
    paths = generate(args.rows, args.seed, args.out, start=args.start, days=args.days)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> None:
    from model.config import load_config
    from model.export import save_model_dir
    from model.train import time_split, train

    overrides = _parse_sets(args.set)
    if args.epochs is not None:
        overrides["train.num_epochs"] = args.epochs
    if args.batch_size is not None:
        overrides["train.batch_size"] = args.batch_size
    cfg = load_config(args.config, overrides)
    df = _read_parquet(args.data, "--data")
    if args.eval_data:
        train_df, eval_df = df, _read_parquet(args.eval_data, "--eval-data")
    elif args.eval_fraction > 0:
        if not cfg.data.timestamp:
            raise UsageError(
                "a time split needs data.timestamp in the config (or pass --eval-data)"
            )
        train_df, eval_df = time_split(df, cfg.data.timestamp, args.eval_fraction)
    else:
        train_df, eval_df = df, None
    result = train(
        cfg, train_df, eval_df, model_dir=args.model_dir, device=args.device, resume=args.resume
    )
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        dist.destroy_process_group()
        return
    metrics = {
        **result.metrics,
        "train_samples_per_s": result.samples_per_s,
        "global_step": result.global_step,
    }
    out = save_model_dir(
        args.model_dir, cfg, result.encoder, result.model, {**metrics, "history": result.history}
    )
    if dist.is_initialized():
        dist.destroy_process_group()
    summary = {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}
    if "auc" in metrics:
        nan = float("nan")
        print(
            f"eval AUC {metrics['auc']:.4f} (grouped AUC {metrics.get('grouped_auc', nan):.4f}, "
            f"logloss {metrics.get('logloss', nan):.4f}) on {int(metrics['count']):,} rows; "
            f"model directory: {out.resolve()}",
            file=sys.stderr,
        )
    print(json.dumps({"model_dir": str(out.resolve()), **summary}))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from model.export import load
    from model.train import encode_dataset, evaluate

    model = load(args.model)
    df = _read_parquet(args.data, "--data")
    data = encode_dataset(model.cfg, model.encoder, df, str(args.data))
    metrics, _ = evaluate(model.cfg, model.network, data)
    text = json.dumps(metrics)
    if args.output:
        Path(args.output).write_text(text)
    print(text)


def cmd_predict(args: argparse.Namespace) -> None:
    import pandas as pd

    from model.export import load

    model = load(args.model)
    df = _read_parquet(args.input, "--input")
    scores = model.predict(df)
    keep = [c for c in args.keep.split(",") if c] if args.keep else []
    missing = [c for c in keep if c not in df.columns]
    if missing:
        raise UsageError(f"--keep: column {missing[0]!r} is not in {args.input}")
    out = pd.DataFrame({c: df[c] for c in keep})
    out["score"] = scores
    if args.output:
        out.to_parquet(args.output, index=False)
        print(f"wrote {len(out):,} scores to {args.output}", file=sys.stderr)
    else:
        out.to_csv(sys.stdout, index=False)


# ------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfm", description="DeepFM click-through-rate ranking: data, training, scoring."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="sample data").add_subparsers(
        dest="data_command", required=True
    )
    gen = data.add_parser("generate", help="write the synthetic ad-click sample as parquet")
    gen.add_argument("--rows", type=int, default=200_000, help="impressions to generate")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default="data/sample", help="output folder")
    gen.add_argument("--start", default="2026-11-01", help="first day (UTC)")
    gen.add_argument("--days", type=int, default=8, help="days of impressions")
    gen.set_defaults(func=cmd_data_generate)

    tr = sub.add_parser("train", help="train DeepFM and write a model directory")
    tr.add_argument("--config", required=True, help="YAML config, e.g. configs/deepfm.yaml")
    tr.add_argument("--data", required=True, help="flat training table (parquet)")
    tr.add_argument("--eval-data", help="evaluation table (parquet); default: a time split")
    tr.add_argument(
        "--eval-fraction",
        type=float,
        default=0.1,
        help="without --eval-data, evaluate on this last fraction by time (0 = no evaluation)",
    )
    tr.add_argument("--model-dir", default="artifacts/model", help="where the model goes")
    tr.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    tr.add_argument("--epochs", type=int, help="override train.num_epochs")
    tr.add_argument("--batch-size", type=int, help="override train.batch_size")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    tr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.sparse_optimizer.lr=0.05",
    )
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="metrics of a model directory on labelled rows")
    ev.add_argument("--model", required=True, help="model directory")
    ev.add_argument("--data", required=True, help="labelled rows (parquet)")
    ev.add_argument("--output", help="also write the metrics JSON here")
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="score raw rows with a model directory")
    pr.add_argument("--model", required=True, help="model directory")
    pr.add_argument("--input", required=True, help="rows to score (parquet)")
    pr.add_argument("--output", help="parquet file for the scores (default: CSV on stdout)")
    pr.add_argument("--keep", help="comma-separated input columns to copy into the output")
    pr.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UsageError, ConfigError, ValueError, FileNotFoundError) as e:
        print(f"deepfm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"deepfm {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``deepfm`` command line.

    deepfm data generate [--dataset sample|retail] --rows N --seed S --out DIR
    deepfm train --config configs/deepfm.yaml --data flat.parquet --model-dir DIR
    deepfm evaluate --model DIR --data rows.parquet
    deepfm predict --model DIR --input rows.parquet --output scores.parquet
    deepfm features apply | materialize | online | training-data ...
    deepfm pipeline compile | run-local | upload | run | schedule ...
    deepfm serve --model artifacts/registry [--port 8080]

Wrong input exits with status 2 and one line naming the setting, file or column at fault.
``-v``/``--verbose`` (before the command) shows every library's log; by default each step
says what it did in a line or two, and warnings and errors are always shown.

Building the parser imports the standard library only (and light modules of this project):
each command imports kfp, pandas, torch, Feast... when it runs, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

# Library loggers kept at WARNING by default: they log at INFO what a user need not read
# (Great Expectations registers its functions, Feast refreshes its registry cache, ...).
_NOISY_LOGGERS = (
    "great_expectations",
    "feast",
    "kfp",
    "urllib3",
    "numba",
    "matplotlib",
    "botocore",
    "google",
    "httpx",
)


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _rounded(value):
    """Floats of a summary to 6 decimals, inside lists and dicts too (for printing)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# ---------------------------------------------------------------------- commands


def cmd_data_generate(args: argparse.Namespace) -> None:
    """``sample``: the source files and ``flat.parquet`` into ``--out``. ``retail``: ``--out``
    becomes a whole feature repo (its spec, Feast config, definitions shim and model config)
    with the data under ``--out/data``."""
    from datetime import datetime

    from common.paths import check_output_dir

    if args.rows < 1:
        raise UsageError(f"--rows must be >= 1, got {args.rows}")
    if args.days < 1:
        raise UsageError(f"--days must be >= 1, got {args.days}")
    try:
        datetime.fromisoformat(args.start)
    except ValueError:
        raise UsageError(f"--start {args.start!r}: expected a date, e.g. 2026-11-01") from None
    check_output_dir(args.out or f"data/{args.dataset}", "--out")
    if args.dataset == "sample":
        _generate_sample(args)
    else:
        _generate_retail(args)


def _generate_sample(args: argparse.Namespace) -> None:
    from feature_repo.sample_data import generate
    from feature_repo.spec import load_spec

    out = args.out or "data/sample"
    t0 = time.perf_counter()
    rows = load_spec().entity_rows  # what the sample's event rows are called
    print(
        f"generating {args.rows:,} {rows} (seed {args.seed}) into {out} ...",
        file=sys.stderr,
    )
    paths = generate(args.rows, args.seed, out, start=args.start, days=args.days)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)


def _generate_retail(args: argparse.Namespace) -> None:
    from feature_repo import retail_data
    from feature_repo.repo import DATA_DIR, write_repo_files

    out = Path(args.out or f"data/{args.dataset}")
    t0 = time.perf_counter()
    print(
        f"generating the {args.dataset} dataset, {args.rows:,} event rows (seed {args.seed}), "
        f"as a feature repo in {out} ...",
        file=sys.stderr,
    )
    repo = write_repo_files(out, retail_data.SPEC_PATH.read_text())
    summary = retail_data.generate(
        args.rows, args.seed, repo / DATA_DIR, start=args.start, days=args.days
    )
    print(f"repo: {repo}")
    for name in ("features.yaml", "feature_store.yaml", "definitions.py", "deepfm.yaml"):
        print(f"{name}: {repo / name}")
    for name, path in summary["paths"].items():
        print(f"{name}: {path}")
    print(
        f"done in {time.perf_counter() - t0:.1f}s: purchase rate {summary['purchase_rate']:.2%}, "
        f"Bayes AUC {summary['bayes_auc']:.4f} (AUC of truth.parquet's true probabilities), "
        f"window {summary['start']} to {summary['end']}\n"
        f"next: deepfm features apply --repo {out}",
        file=sys.stderr,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from common.params import parse_assignments
    from common.paths import check_output_dir
    from training.run import TrainRequest, run_training

    model_dir = check_output_dir(args.model_dir, "--model-dir")
    check_output_dir(model_dir.absolute().parent, "--model-dir")  # the swap happens beside it
    if args.eval_data and args.eval_fraction is not None:
        raise UsageError(
            "--eval-fraction: does not apply with --eval-data (that table is the evaluation)"
        )
    request = TrainRequest(
        config=args.config,
        train_data=args.data,
        model_dir=args.model_dir,
        eval_data=args.eval_data,
        eval_fraction=0.1 if args.eval_fraction is None else args.eval_fraction,
        overrides=parse_assignments(
            args.set, "--set", last_wins=True, example="train.batch_size=4096"
        ),
        epochs=args.epochs or 0,
        batch_size=args.batch_size or 0,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        data_names=("--data", "--eval-data"),
    )
    summary = run_training(request)
    if summary is None:  # a DDP rank other than 0: rank 0 reports
        return
    out = Path(args.model_dir).resolve()
    if "auc" in summary:
        nan = float("nan")
        print(
            f"eval AUC {summary['auc']:.4f} (grouped AUC {summary.get('grouped_auc', nan):.4f}, "
            f"logloss {summary.get('logloss', nan):.4f}) on {int(summary['count']):,} rows; "
            f"model directory: {out}",
            file=sys.stderr,
        )
    print(json.dumps({"model_dir": str(out), **_rounded(summary)}))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Metrics as JSON; an AUC that cannot be computed (no rows, one class) is an error and
    nothing is written. Other undefined metrics (grouped AUC with no group holding both
    classes) are left out with a warning: JSON has no NaN."""
    import math

    from common.paths import check_output_file
    from model.export import load
    from model.train import encode_dataset, evaluate
    from training.run import read_table

    if args.output:
        check_output_file(args.output, "--output")
    model = load(args.model, what="--model")
    df = read_table(args.data, "--data")
    if df.empty:
        raise UsageError(f"--data {args.data}: the table has no rows to evaluate")
    data = encode_dataset(model.cfg, model.encoder, df, str(args.data))
    metrics, _ = evaluate(model.cfg, model.network, data)
    if "auc" in metrics and not math.isfinite(metrics["auc"]):
        label = model.cfg.data.label
        classes = sorted(set(df[label].dropna().unique().tolist()))
        raise UsageError(
            f"--data {args.data}: AUC is undefined: column {label!r} holds one class only "
            f"({', '.join(map(str, classes))}) in {len(df):,} rows; it needs both 0 and 1"
        )
    for name in [k for k, v in metrics.items() if not math.isfinite(v)]:
        logging.getLogger("deepfm").warning(f"{name} is undefined on {args.data}: left out")
        del metrics[name]
    text = json.dumps(metrics, allow_nan=False)
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as e:
            raise UsageError(f"--output {args.output}: {error_line(e)}") from None
    print(text)


def cmd_predict(args: argparse.Namespace) -> None:
    import pandas as pd

    from common.paths import check_output_file
    from model.export import load
    from training.run import read_table

    if args.output:
        check_output_file(args.output, "--output")
    model = load(args.model, what="--model")
    df = read_table(args.input, "--input")
    keep = [c for c in args.keep.split(",") if c] if args.keep else []
    missing = [c for c in keep if c not in df.columns]
    if missing:
        raise UsageError(f"--keep: column {missing[0]!r} is not in {args.input}")
    scores = model.predict(df)
    out = pd.DataFrame({c: df[c] for c in keep})
    out["score"] = scores
    if args.output:
        try:
            out.to_parquet(args.output, index=False)
        except OSError as e:
            raise UsageError(f"--output {args.output}: {error_line(e)}") from None
        print(f"wrote {len(out):,} scores to {args.output}", file=sys.stderr)
    else:
        out.to_csv(sys.stdout, index=False)


def _parse_toleration(text: str):
    from pipelines.pipeline import Toleration

    # KEY[=VALUE]:EFFECT, as kubectl taint prints it; KEY alone tolerates any value/effect
    key_value, _, effect = text.partition(":")
    key, eq, value = key_value.partition("=")
    if not key:
        raise UsageError(f"--toleration {text!r}: expected KEY[=VALUE][:EFFECT]")
    return Toleration(
        key=key, operator="Equal" if eq else "Exists", value=value or None, effect=effect or None
    )


def _pipeline_options(args: argparse.Namespace):
    from common.params import parse_assignments
    from pipelines.pipeline import PipelineOptions

    node_selector = parse_assignments(args.node_selector, "--node-selector", typed=False)
    if args.gpus < 0:
        raise UsageError(f"--gpus must be >= 0, got {args.gpus}")
    if args.num_nodes < 1:
        raise UsageError(f"--num-nodes must be >= 1, got {args.num_nodes}")
    return PipelineOptions(
        platform=args.platform,
        resources=_step_resources(args),
        retries=_step_ints(args.retries, "--retries", "push=5"),
        timeouts=_step_ints(args.timeout, "--timeout", "train=86400"),
        image=args.image,
        gpus=args.gpus,
        accelerator_type=args.accelerator_type,
        train_cpu=args.train_cpu,
        train_memory=args.train_memory,
        node_selector=node_selector,
        tolerations=[_parse_toleration(t) for t in args.toleration],
        push_destination=args.push_destination,
        feature_repo=args.feature_repo,
        trainer=args.trainer,
        num_nodes=args.num_nodes,
        overlay=args.overlay or "",
        data_mount=args.data_mount or "",
        feast_config_mount=args.feast_config_mount,
        spark=args.spark,
        store_settings=parse_assignments(
            args.store_setting,
            "--store-setting",
            typed=False,
            example="DEEPFM_DATA_DIR=gs://bucket/feast/data",
        ),
    )


def _check_steps(given, flag: str) -> None:
    from pipelines.defaults import STEPS

    unknown = sorted(set(given) - set(STEPS))
    if unknown:
        raise UsageError(
            f"{flag}: unknown step {', '.join(unknown)}; the steps: {', '.join(STEPS)}"
        )


def _step_ints(items: list[str], flag: str, example: str) -> dict[str, int]:
    from common.params import parse_assignments

    values = parse_assignments(items, flag, typed=False, example=example)
    _check_steps(values, flag)
    out = {}
    for step, value in values.items():
        if value is None or not value.strip().isdigit():
            raise UsageError(f"{flag} {step}={value}: expected a whole number >= 0")
        out[step] = int(value)
    return out


def _step_resources(args: argparse.Namespace):
    """``--cpu``/``--memory STEP=REQUEST[/LIMIT]`` over the step's defaults (limit = request
    when not given)."""
    from common.params import parse_assignments
    from pipelines.defaults import STEP_RESOURCES
    from pipelines.pipeline import Resources

    cpu = parse_assignments(args.cpu, "--cpu", typed=False, example="features=2/4")
    memory = parse_assignments(args.memory, "--memory", typed=False, example="features=8G")
    _check_steps(cpu, "--cpu")
    _check_steps(memory, "--memory")
    out = {}
    for step in sorted(set(cpu) | set(memory)):
        if step == "train":
            base = (args.train_cpu, args.train_cpu, args.train_memory, args.train_memory)
        else:
            base = STEP_RESOURCES[step]
        cpu_req, cpu_lim, mem_req, mem_lim = base
        for flag, given in (("--cpu", cpu), ("--memory", memory)):
            if step not in given:
                continue
            request, _, limit = (given[step] or "").partition("/")
            if not request:
                raise UsageError(f"{flag} {step}=: expected REQUEST[/LIMIT]")
            if flag == "--cpu":
                cpu_req, cpu_lim = request, limit or request
            else:
                mem_req, mem_lim = request, limit or request
        out[step] = Resources(cpu_req, cpu_lim, mem_req, mem_lim)
    return out


def cmd_pipeline_compile(args: argparse.Namespace) -> None:
    from pipelines.pipeline import compile_pipeline

    path = compile_pipeline(args.output, _pipeline_options(args))
    print(f"compiled the pipeline to {path}")


def cmd_pipeline_run_local(args: argparse.Namespace) -> None:
    from common.params import parse_assignments
    from pipelines.local_run import run_local
    from registry.model_registry import check_destination

    check_destination(args.push_destination, "--push-destination")  # before any training
    params = parse_assignments(args.param, "--param", typed=False)  # typed by run_local
    if params.get("push_destination") is not None:
        check_destination(params["push_destination"], "--param push_destination")
    summary = run_local(
        params,
        pipeline_root=args.pipeline_root,
        feature_repo=args.feature_repo,
        push_destination=args.push_destination,
    )
    current = summary["current_model"]
    lines = [
        f"run folder:        {summary['run_dir']}",
        f"eval AUC:          {summary['auc']:.4f}"
        + (f" (blessed model: {summary['baseline_auc']:.4f})" if summary["baseline_auc"] else ""),
        f"gate:              {'BLESSED' if summary['blessed'] else 'NOT BLESSED'}"
        f" -> {'pushed' if summary['pushed'] else 'not pushed'}",
        f"evaluation report: {summary['report']}",
        f"validation report: {summary['validation_report']}",
        "current model:     "
        + (f"{current['uri']} (version {current['version']})" if current else "none"),
    ]
    print("\n".join(lines))


# ------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The ``deepfm`` parser; building it imports no heavy library (see the module doc)."""
    parser = argparse.ArgumentParser(
        prog="deepfm", description="DeepFM click-through-rate ranking: data, training, scoring."
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every log line (kfp.local's task logs, Feast, Great Expectations...)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="sample data").add_subparsers(
        dest="data_command", required=True
    )
    gen = data.add_parser(
        "generate",
        help="write a synthetic dataset as parquet",
        description="Write a synthetic dataset with a known true model. sample: the ad-click "
        "sample's source files and flat table into --out. retail: a second example shaped "
        "unlike it (string and integer keys, nullable ints, bools, lists); --out becomes a "
        "whole feature repo (features.yaml, feature_store.yaml, definitions.py, deepfm.yaml) "
        "with the data in --out/data.",
    )
    gen.add_argument(
        "--dataset", choices=("sample", "retail"), default="sample", help="which dataset"
    )
    gen.add_argument("--rows", type=int, default=200_000, help="event rows to generate")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", help="output folder (default: data/<dataset>)")
    gen.add_argument("--start", default="2026-11-01", help="first day (UTC)")
    gen.add_argument("--days", type=int, default=8, help="days of event rows")
    gen.set_defaults(func=cmd_data_generate)

    tr = sub.add_parser("train", help="train DeepFM and write a model directory")
    tr.add_argument("--config", required=True, help="YAML config, e.g. configs/deepfm.yaml")
    tr.add_argument("--data", required=True, help="training table: parquet file or shard folder")
    tr.add_argument("--eval-data", help="eval table (parquet or shards); default: a time split")
    tr.add_argument(
        "--eval-fraction",
        type=float,
        help="without --eval-data, evaluate on this last fraction by time (default 0.1; "
        "0 = no evaluation)",
    )
    tr.add_argument("--model-dir", default="artifacts/model", help="where the model goes")
    tr.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    tr.add_argument("--epochs", type=int, help="override train.num_epochs")
    tr.add_argument("--batch-size", type=int, help="override train.batch_size")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    tr.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the model directory at --model-dir (never a folder of other files)",
    )
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
    ev.add_argument("--data", required=True, help="labelled rows (parquet file or shard folder)")
    ev.add_argument("--output", help="also write the metrics JSON here")
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="score raw rows with a model directory")
    pr.add_argument("--model", required=True, help="model directory")
    pr.add_argument("--input", required=True, help="rows to score (parquet)")
    pr.add_argument("--output", help="parquet file for the scores (default: CSV on stdout)")
    pr.add_argument("--keep", help="comma-separated input columns to copy into the output")
    pr.set_defaults(func=cmd_predict)
    from feature_repo.cli import add_features_parser

    add_features_parser(sub)
    _add_pipeline_parser(sub)
    from serving.rollout import add_rollout_parser
    from serving.server import add_serve_parser

    add_serve_parser(sub)
    add_rollout_parser(sub)
    return parser


def _add_pipeline_parser(sub: argparse._SubParsersAction) -> None:
    from pipelines import defaults
    from pipelines.kfp_client import DEFAULT_PACKAGE, add_pipeline_client_commands

    pipeline = sub.add_parser(
        "pipeline", help="compile, run locally, upload, run or schedule the Kubeflow pipeline"
    ).add_subparsers(dest="pipeline_command", required=True)
    comp = pipeline.add_parser("compile", help="write the pipeline spec (YAML)")
    comp.add_argument("-o", "--output", default=DEFAULT_PACKAGE, help="spec file to write")
    comp.add_argument("--image", default=defaults.DEFAULT_IMAGE, help="the component image")
    comp.add_argument(
        "--platform",
        choices=defaults.PLATFORMS,
        default=defaults.DEFAULT_PLATFORM,
        help="a Kubeflow Pipelines server, or Vertex AI Pipelines (one YAML document, no "
        "Kubernetes settings)",
    )
    comp.add_argument("--gpus", type=int, default=0, help="GPUs for the train step")
    comp.add_argument(
        "--accelerator-type",
        default=None,
        help="the GPU: a Kubernetes resource name on kubeflow (default "
        f"{defaults.DEFAULT_ACCELERATOR_TYPES['kubeflow']}), Vertex AI's name on vertex "
        f"(default {defaults.DEFAULT_ACCELERATOR_TYPES['vertex']}; "
        f"{', '.join(defaults.VERTEX_ACCELERATOR_TYPES)})",
    )
    comp.add_argument(
        "--train-cpu",
        default=defaults.DEFAULT_TRAIN_CPU,
        help="CPU request (and limit) of train",
    )
    comp.add_argument(
        "--train-memory",
        default=defaults.DEFAULT_TRAIN_MEMORY,
        help="memory request (and limit) of train",
    )
    steps = ", ".join(defaults.STEPS)
    comp.add_argument(
        "--cpu",
        action="append",
        default=[],
        metavar="STEP=REQUEST[/LIMIT]",
        help=f"a step's CPU (repeatable; limit = request if not given); steps: {steps}",
    )
    comp.add_argument(
        "--memory",
        action="append",
        default=[],
        metavar="STEP=REQUEST[/LIMIT]",
        help="a step's memory, e.g. features=16G (repeatable; limit = request if not given)",
    )
    comp.add_argument(
        "--retries",
        action="append",
        default=[],
        metavar="STEP=N",
        help="a step's retries, 0 for none (repeatable; defaults: "
        + ", ".join(f"{k}={v[0]}" for k, v in defaults.STEP_RETRIES.items())
        + ")",
    )
    comp.add_argument(
        "--timeout",
        action="append",
        default=[],
        metavar="STEP=SECONDS",
        help="a step's timeout (repeatable; kubeflow only: the pod's activeDeadlineSeconds)",
    )
    comp.add_argument(
        "--node-selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="node label the train step must run on (repeatable)",
    )
    comp.add_argument(
        "--toleration",
        action="append",
        default=[],
        metavar="KEY[=VALUE][:EFFECT]",
        help="taint the train step tolerates (repeatable), e.g. nvidia.com/gpu:NoSchedule",
    )
    comp.add_argument(
        "--push-destination",
        default=defaults.DEFAULT_DESTINATION,
        help="default push_destination parameter (gs://bucket/prefix)",
    )
    comp.add_argument(
        "--feature-repo",
        default=defaults.DEFAULT_FEATURE_REPO,
        help="default feature_repo parameter (the repo's path in the image)",
    )
    comp.add_argument(
        "--trainer",
        choices=["local", "trainjob"],
        default=defaults.DEFAULT_TRAINER,
        help="train in the step's pod, or launch a Kubeflow Trainer TrainJob",
    )
    comp.add_argument(
        "--num-nodes", type=int, default=defaults.DEFAULT_NUM_NODES, help="TrainJob nodes"
    )
    comp.add_argument(
        "--overlay",
        choices=defaults.OVERLAYS,
        help="the manifests/ overlay whose ConfigMaps (deepfm-settings, feast-config) and "
        "data volume claim the feature-store steps mount (default: gcp on kubeflow; none: "
        "no cluster settings, on vertex always)",
    )
    comp.add_argument(
        "--data-mount",
        metavar="PATH",
        help="where the overlay's data claim is mounted; it must hold the overlay's "
        "DEEPFM_DATA_DIR (default: the overlay's, /var/lib/deepfm/...)",
    )
    comp.add_argument(
        "--feast-config-mount",
        metavar="PATH",
        default=defaults.FEAST_CONFIG_MOUNT,
        help=f"where feast-config is mounted (default {defaults.FEAST_CONFIG_MOUNT})",
    )
    comp.add_argument(
        "--spark",
        action="store_true",
        help="the Spark profile (kubectl apply -k manifests/spark): validate and features "
        "mount feast-config-spark and run the Spark driver in their pod (SPARK_DRIVER_HOST: "
        "the pod's IP; DEEPFM_IMAGE: --image, for the executors)",
    )
    comp.add_argument(
        "--store-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="vertex: a feature store variable of validate and features (repeatable; "
        "gs:// paths become Vertex AI's /gcs/ mount), e.g. DEEPFM_REDIS_ADDRESS=10.0.0.3:6379; "
        "defaults: FEAST_FS_YAML_FILE_PATH=gs://BUCKET/feast/feature_store.yaml, "
        "DEEPFM_DATA_DIR=gs://BUCKET/feast/data, DEEPFM_GCS_BUCKET=BUCKET (the push "
        "destination's bucket)",
    )
    comp.set_defaults(func=cmd_pipeline_compile)

    loc = pipeline.add_parser("run-local", help="run the whole pipeline here with kfp.local")
    loc.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    loc.add_argument("--pipeline-root", default=str(defaults.LOCAL_PIPELINE_ROOT))
    loc.add_argument("--feature-repo", default=str(defaults.LOCAL_FEATURE_REPO))
    loc.add_argument("--push-destination", default=str(defaults.LOCAL_REGISTRY))
    loc.set_defaults(func=cmd_pipeline_run_local)

    add_pipeline_client_commands(pipeline)


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr: ``deepfm``'s INFO lines as plain text, every WARNING and ERROR with
    its level; library loggers at WARNING unless ``verbose`` (then everything at INFO and
    ``deepfm`` at DEBUG). Processes started from here (kfp.local's tasks) see the level in
    ``$DEEPFM_LOG_LEVEL``."""
    from pipelines.defaults import LOG_LEVEL_ENV

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(verbose))
    handler.set_name("deepfm-cli")
    root = logging.getLogger()
    for old in root.handlers[:]:
        if old.get_name() == "deepfm-cli":  # a previous main() in this process
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("deepfm").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    os.environ[LOG_LEVEL_ENV] = "DEBUG" if verbose else "INFO"


class _Formatter(logging.Formatter):
    """``message`` for INFO and below, ``LEVEL: message`` above; with the logger's name
    and the time when verbose."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.verbose:
            return f"{self.formatTime(record, '%H:%M:%S')} {record.levelname} {record.name}: {text}"
        return text if record.levelno <= logging.INFO else f"{record.levelname}: {text}"


def error_line(exc: BaseException) -> str:
    """The one line printed for an expected failure: an ``OSError`` as ``<file>: <reason>``
    (the file at fault first), anything else as its message."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__  # a multi-line message (YAML's) on one line


def exit_status(exc: BaseException) -> int | None:
    """The exit status of an exception raised by a command, or None for a bug (its
    traceback is shown). Status 2: wrong input or an environment the command cannot use
    (a ValueError from any check: config, spec, data, flags, model files; an OSError on a
    path; a refusal of the model registry or of the KFP API). Status 1: a run that failed
    after it started (training diverged, a pipeline step or a TrainJob failed)."""
    if isinstance(exc, UsageError | ValueError | OSError) or any(
        _raised(exc, module, name) for module, name in _EXPECTED
    ):
        return 2
    if isinstance(exc, FloatingPointError | RuntimeError) and not type(exc).__module__.startswith(
        "torch"
    ):
        return 1  # incl. TrainJobError and a failed local run; a torch error is a bug
    return None


# expected failures that are not ValueErrors: (module, class), matched only when the module
# is loaded (an instance implies it is), so classifying an error imports nothing heavy
_EXPECTED = (
    ("yaml", "YAMLError"),
    ("registry.model_registry", "RegistryError"),
    ("pipelines.kfp_client", "KfpApiError"),
)


def _raised(exc: BaseException, module: str, name: str) -> bool:
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(exc, cls)


def main(argv: list[str] | None = None) -> int:
    """Run one command. An expected failure (``exit_status``) prints one line,
    ``deepfm <command>: error: <message>``, and returns its status; anything else is a bug
    and propagates with its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        args.func(args)
    except Exception as e:
        status = exit_status(e)
        if status is None:
            raise
        print(f"deepfm {args.command}: error: {error_line(e)}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``deepfm features`` commands, on a Feast feature repo (default ``feature_repo/``).

    deepfm features apply
    deepfm features materialize --start 2026-11-01T00:00Z --end 2026-11-09T00:00Z
    deepfm features materialize --incremental [--end 2026-11-09T00:00Z]
    deepfm features online --entity shopper_id=s000123 --entity shop_id=7 \\
        [--context channel=web]
    deepfm features training-data --start 2026-11-01T00:00Z --end 2026-11-09T00:00Z \\
        --out data/train.parquet

Each takes ``--repo DIR`` (default: ``feature_repo/``). Times are ISO 8601 with a time zone.
``online`` types each value by the spec and notes on stderr each entity with no stored
features (``no stored features for shopper_id=s9 (views: shopper_profile)``; exit 0).
Bad input raises a ValueError with one line naming the flag, file, column or key;
``pipelines/cli.py`` prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime


def add_features_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``features {apply, materialize, online, training-data}`` on ``subparsers``;
    each sets ``func`` (call it with the parsed namespace)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repo", help="Feast feature repo folder (default: feature_repo/)")

    features = subparsers.add_parser("features", help="the Feast feature store")
    commands = features.add_subparsers(dest="features_command", required=True)

    ap = commands.add_parser(
        "apply", parents=[common], help="register the feature definitions (feast apply)"
    )
    ap.set_defaults(func=cmd_apply)

    mat = commands.add_parser(
        "materialize", parents=[common], help="load the latest feature values online"
    )
    mat.add_argument("--start", help="first event time to load (with --end)")
    mat.add_argument("--end", help="last event time to load (default with --incremental: now)")
    mat.add_argument(
        "--incremental",
        action="store_true",
        help="load what changed since the last materialization, up to --end",
    )
    mat.set_defaults(func=cmd_materialize)

    online = commands.add_parser(
        "online", parents=[common], help="print one online feature vector as JSON"
    )
    online.add_argument(
        "--entity",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an entity's join key and value (repeat for each entity of the spec)",
    )
    online.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a request-context feature's value, copied into the vector (repeatable)",
    )
    online.set_defaults(func=cmd_online)

    data = commands.add_parser(
        "training-data",
        parents=[common],
        help="write the point-in-time-correct training table of a time window",
    )
    data.add_argument("--start", required=True, help="window start (included)")
    data.add_argument("--end", required=True, help="window end (excluded)")
    data.add_argument("--out", required=True, help="parquet file to write")
    data.set_defaults(func=cmd_training_data)

    add_init_parser(commands)


def cmd_apply(args: argparse.Namespace) -> None:
    from feature_repo.store import apply

    for line in apply(args.repo).summary():
        print(line, file=sys.stderr)


def cmd_materialize(args: argparse.Namespace) -> None:
    from feature_repo.store import materialize, materialize_incremental, to_utc

    if args.incremental:
        if args.start:
            raise ValueError("--start: not allowed with --incremental")
        end = to_utc(args.end, "--end") if args.end else datetime.now(UTC)
        done = materialize_incremental(end, repo_path=args.repo)
    else:
        for flag, value in (("--start", args.start), ("--end", args.end)):
            if not value:
                raise ValueError(f"{flag}: required unless --incremental is given")
        start, end = to_utc(args.start, "--start"), to_utc(args.end, "--end")
        done = materialize(start, end, repo_path=args.repo)
    for view in done:
        print(view.summary(), file=sys.stderr)


def cmd_online(args: argparse.Namespace) -> None:
    from common.params import parse_assignments
    from feature_repo.store import online_features

    # typed by the spec, not by YAML: "007" stays a string id
    entities = parse_assignments(args.entity, "--entity", typed=False)
    context = parse_assignments(args.context, "--context", typed=False)
    _check_int64_range(args.repo, entities, "--entity")
    _check_int64_range(args.repo, context, "--context")
    result = online_features(entities, context, repo_path=args.repo)
    for entity in result.unstored:
        print(entity.note(), file=sys.stderr)
    print(json.dumps(result.vector))


def _check_int64_range(repo: str | None, given: dict, flag: str) -> None:
    """A value given for an int64 key or context feature past int64's range is refused
    naming the flag and the key (Feast's typing would fail without naming either). The
    spec is read only when some value is such a number."""
    from pathlib import Path

    from feature_repo.spec import SPEC_FILE, load_spec

    huge = {}
    for name, value in given.items():
        try:
            number = int(str(value).strip())
        except ValueError:
            continue  # not an integer: the store types it
        if not -(2**63) <= number < 2**63:
            huge[name] = value
    if not huge:
        return
    spec = load_spec(Path(repo) / SPEC_FILE if repo else None)
    dtypes = {**spec.join_keys(), **{f.name: f.dtype for f in spec.context_features()}}
    for name, value in huge.items():
        if dtypes.get(name) == "int64":
            raise ValueError(f"{flag} {name}={value}: out of the int64 range of {name}")


def cmd_training_data(args: argparse.Namespace) -> None:
    from common.paths import check_output_file
    from feature_repo.store import get_training_data, to_utc

    start, end = to_utc(args.start, "--start"), to_utc(args.end, "--end")
    check_output_file(args.out, "--out")
    t0 = time.perf_counter()
    table = get_training_data(start, end, repo_path=args.repo, out=args.out)
    print(
        f"wrote {len(table):,} rows to {args.out} in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    print(json.dumps({"out": args.out, "rows": len(table), "columns": list(table.columns)}))


# ---- deepfm features init: a starting spec inferred from the user's tables (infer.py)


def add_init_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``features init`` (its work is in ``feature_repo/infer.py``, imported only
    when it runs)."""
    init = commands.add_parser(
        "init",
        help="write a new feature repo whose spec is inferred from your tables, to review",
    )
    init.add_argument("--repo", help="folder of the new feature repo (default: the current folder)")
    init.add_argument(
        "--events", required=True, help="parquet table of the events: keys, context, label, time"
    )
    init.add_argument(
        "--entity",
        action="append",
        required=True,
        metavar="NAME=KEY:TABLE",
        help="an entity, its join key and its parquet table of features (repeatable)",
    )
    init.add_argument("--label", required=True, help="the events' label column (0/1)")
    init.add_argument("--timestamp", required=True, help="the events' event-time column")
    init.add_argument("--service", help="feature service name (default: <events>_ranking)")
    init.add_argument("--group-key", help="grouped AUC's column (default: the first key)")
    init.add_argument("--force", action="store_true", help="replace an existing features.yaml")
    init.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> None:
    from feature_repo.infer import cmd_init as run_init

    run_init(args)

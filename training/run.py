"""Training DeepFM into a model directory: the one entry point of the pipeline's train
component, the ``deepfm train`` command and each node of a TrainJob (which runs that
command under ``torchrun``).

``run_training(TrainRequest(...))`` reads the data, loads the config, trains, writes the
model directory and returns the summary that is also its ``metrics.json``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given when it exists, else relative to the project when that
    exists (``configs/deepfm.yaml`` works from any working directory, in the image too),
    else as given (loading it then says it does not exist)."""
    p = Path(path)
    if p.is_file():
        return p
    candidate = PROJECT_ROOT / p
    return candidate if candidate.is_file() else p


def read_table(path: str | Path, what: str):
    """The parquet file, shard folder (``feature_repo.shards``, read in the manifest's
    order) or folder of parquet files at ``path`` as a DataFrame.

    Raises:
        FileNotFoundError: ``"{what} {path} does not exist"``.
        ValueError: ``"{what} {path} is not a readable parquet file: ..."``.
    """
    import pandas as pd

    from feature_repo import shards

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} does not exist")
    try:
        if shards.is_shard_folder(p):
            return shards.load_frame(p)
        return pd.read_parquet(p)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise ValueError(f"{what} {p} is not a readable parquet file: {e}") from None


@dataclass
class TrainRequest:
    """What to train on, with which config, and where the model directory goes.

    ``eval_data`` is a second table; without it the last ``eval_fraction`` of
    ``train_data`` by the config's ``data.timestamp`` is held out (0: no evaluation).
    ``overrides`` are dotted config keys (``{"train.batch_size": 4096}``); ``epochs`` and
    ``batch_size`` of 0 keep the config's. ``resume`` continues from the latest checkpoint
    under ``model_dir`` (and implies ``overwrite``: the folder is the run's own).
    ``overwrite`` lets an existing model directory be replaced (its checkpoints too: they
    are deleted when training starts, unless resuming); a folder that is not a model
    directory is never replaced. ``data_names`` name the two tables in errors (a command line
    passes its flags).
    """

    config: str | Path
    train_data: str | Path
    model_dir: str | Path
    eval_data: str | Path | None = None
    eval_fraction: float = 0.0
    overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    batch_size: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    data_names: tuple[str, str] = ("train data", "eval data")


def run_training(request: TrainRequest) -> dict[str, Any] | None:
    """Train as ``request`` says and write the model directory (replacing an earlier one).

    Returns the summary, the same dict as the directory's ``metrics.json``: the final
    evaluation metrics (``auc``, ``logloss``, ``grouped_auc``, ``count``, ... ; none
    without evaluation data) plus ``train_samples_per_s``, ``global_step``,
    ``epochs_run``, ``best_epoch`` (the epoch whose weights were kept), ``rows_train``,
    ``rows_valid`` (of those, the validation split that chose the epoch, not trained on),
    ``rows_eval`` and the per-epoch ``history``. Under
    ``torchrun`` (DDP) only rank 0 writes the directory; the other ranks return None.

    Raises:
        FileNotFoundError, ValueError (``ConfigError``): naming the file, setting or
            column at fault, before anything is written.
        FileExistsError: ``model_dir`` is not a model directory, or is one and neither
            ``overwrite`` nor ``resume`` is set, or holds an earlier run's checkpoints
            and neither is set; raised before training, nothing touched.
        FloatingPointError: the training loss became NaN or infinite.
    """
    # the model package before torch: importing it sets OpenMP's wait policy, which PyTorch
    # reads once, when it loads (model.threads)
    from model.config import check_columns
    from model.export import save_model_dir
    from model.train import time_split, train
    from training.config import load_config

    overrides = dict(request.overrides)
    if request.epochs > 0:
        overrides["train.num_epochs"] = request.epochs
    if request.batch_size > 0:
        overrides["train.batch_size"] = request.batch_size
    cfg = load_config(resolve_config_path(request.config), overrides)
    train_name, eval_name = request.data_names
    if request.eval_fraction > 0 and request.eval_data is None and not cfg.data.timestamp:
        raise ValueError(
            f"data.timestamp: a time split needs it in the config (or give {eval_name})"
        )
    streamed = _streamed_inputs(request, cfg)
    train_df = eval_df = None
    if streamed is None:
        train_df = read_table(request.train_data, train_name)
        if request.eval_data is not None:
            eval_df = read_table(request.eval_data, eval_name)
        elif request.eval_fraction > 0:
            train_df, eval_df = time_split(train_df, cfg.data.timestamp, request.eval_fraction)
        check_columns(cfg, train_df.columns, "the training data")
        if eval_df is not None:
            check_columns(cfg, eval_df.columns, "the evaluation data")
    overwrite = request.overwrite or request.resume
    _prepare_model_dir(Path(request.model_dir), overwrite, request.resume)
    if request.resume and os.environ.get("RANK", "0") == "0":
        from model.train import CHECKPOINT_DIR, latest_checkpoint

        if latest_checkpoint(request.model_dir) is None:
            print(
                f"resume: no checkpoint in {Path(request.model_dir) / CHECKPOINT_DIR}; "
                "training from the start",
                file=sys.stderr,
            )
    import torch.distributed as dist  # loaded by the model package already

    try:
        if streamed is None:
            result = train(
                cfg,
                train_df,
                eval_df,
                model_dir=request.model_dir,
                device=request.device,
                resume=request.resume,
            )
            rows_train, rows_eval = len(train_df), 0 if eval_df is None else len(eval_df)
        else:
            from model.stream import total_rows, train_streamed

            train_pieces, eval_pieces, columns = streamed
            result = train_streamed(
                cfg,
                train_pieces,
                eval_pieces,
                columns=columns,
                model_dir=request.model_dir,
                device=request.device,
                resume=request.resume,
            )
            rows_train = total_rows(train_pieces)
            rows_eval = 0 if eval_pieces is None else total_rows(eval_pieces)
        if dist.is_initialized() and dist.get_rank() != 0:
            return None
        summary = {
            **result.metrics,
            "train_samples_per_s": result.samples_per_s,
            "global_step": result.global_step,
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "rows_train": rows_train,
            "rows_valid": result.rows_valid,
            "rows_eval": rows_eval,
            "history": result.history,
        }
        save_model_dir(
            request.model_dir, cfg, result.encoder, result.model, summary, overwrite=overwrite
        )
        return summary
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _streamed_inputs(request: TrainRequest, cfg) -> tuple | None:
    """(training pieces, evaluation pieces or None, the training files' columns) when the
    training data is a shard folder that ``data.streaming`` streams
    (``model.stream.should_stream``: auto from ``data.stream_min_rows`` rows of the
    manifest), else None (the in-memory path). The evaluation data may be a shard folder or
    a parquet file; without it ``eval_fraction`` holds out the trailing rows."""
    import pyarrow.parquet as pq

    from feature_repo import shards
    from model.config import check_columns
    from model.stream import file_pieces, row_range, should_stream, total_rows

    train_name, eval_name = request.data_names
    path = Path(request.train_data)
    if not shards.is_shard_folder(path):
        return None
    try:
        manifest = shards.read_manifest(path)
    except shards.ShardError as e:
        raise ValueError(f"{train_name} {e}") from None
    if not should_stream(cfg, manifest.rows):
        return None
    train_pieces = file_pieces([str(p) for p in manifest.paths()], [f.rows for f in manifest.files])
    columns = list(manifest.schema)
    eval_pieces = None
    if request.eval_data is not None:
        e = Path(request.eval_data)
        if not e.exists():
            raise FileNotFoundError(f"{eval_name} {e} does not exist")
        try:
            if shards.is_shard_folder(e):
                m = shards.read_manifest(e)
                eval_pieces = file_pieces([str(p) for p in m.paths()], [f.rows for f in m.files])
                eval_columns = list(m.schema)
            else:
                eval_pieces = file_pieces([str(e)])
                eval_columns = pq.read_schema(e).names
        except Exception as err:  # pyarrow raises several unrelated types for a bad file
            raise ValueError(f"{eval_name} {e} is not a readable parquet file: {err}") from None
        check_columns(cfg, eval_columns, "the evaluation data")
    elif request.eval_fraction > 0:
        n = total_rows(train_pieces)
        if not 0.0 < request.eval_fraction < 1.0:
            raise ValueError(f"eval fraction must be in (0, 1), got {request.eval_fraction}")
        cut = int(round(n * (1.0 - request.eval_fraction)))
        if cut <= 0 or cut >= n:
            raise ValueError(f"a time split of {n} rows leaves one side empty")
        # the shards are in time order: the trailing rows are time_split's
        train_pieces, eval_pieces = row_range(train_pieces, 0, cut), row_range(train_pieces, cut, n)
    check_columns(cfg, columns, "the training data")
    return train_pieces, eval_pieces, columns


def _prepare_model_dir(model_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse, before any training, a ``model_dir`` the final save would refuse
    (``model.export.check_model_dir_target``) or whose checkpoints are an earlier run's
    while not resuming; with ``overwrite`` and without ``resume`` delete those
    checkpoints (process of rank 0), so that the new run's are not mixed with them."""
    import shutil

    from model.export import check_model_dir_target
    from model.train import CHECKPOINT_DIR

    state = check_model_dir_target(model_dir, overwrite)
    old = model_dir / CHECKPOINT_DIR
    if resume or state == "absent" or not old.is_dir():
        return
    if not overwrite:
        raise FileExistsError(
            f"{model_dir} holds the checkpoints of an earlier run; pass --resume to "
            "continue it or --overwrite to start afresh"
        )
    if os.environ.get("RANK", "0") == "0":
        shutil.rmtree(old)

"""Training and evaluation of DeepFM on in-memory tensors (CPU or GPU, one or many processes).

Data is encoded once (``FeatureEncoder``) and kept as tensors; a batch is one gather of
rows, not a ``Dataset.__getitem__`` + collate per sample. Embedding tables get a sparse
optimizer, the MLPs a dense one. Under ``torchrun`` (``WORLD_SIZE > 1``) each process
trains on its shard of every epoch's shuffle: the dense part is wrapped in
DistributedDataParallel, the embedding tables' sparse gradients are all-gathered (NCCL
cannot all-reduce sparse tensors), so every process applies the same update.

``train`` reads as its phases: set-up (processes, encoding, model and optimizers, the
training forward: ``model.fused`` on CPU where it applies), resume, then per epoch
``_train_epoch`` / ``_evaluate_epoch`` / checkpoint / early stop. It logs through the
``deepfm.train`` logger.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from model import threads  # isort: skip - before torch loads its OpenMP runtime

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from model import kernels
from model.config import Config, check_columns
from model.deepfm import DeepFM, score_of
from model.features import EncodedFeatures, FeatureEncoder
from model.fused import FusedForward
from model.losses import compute_loss
from model.metrics import binary_metrics
from model.optim import build_dense_optimizer, build_sparse_optimizer, optimizer_step

CHECKPOINT_DIR = "checkpoints"
_KEEP_CHECKPOINTS = 3
_DENSE_GRADIENT_MAX_VALUES = 2**27

log = logging.getLogger("deepfm.train")


@dataclass
class EncodedDataset:
    """Rows ready for the network: features, labels ``[N]``, optional weights ``[N]`` and
    the grouping key's raw values (for grouped AUC)."""

    features: EncodedFeatures
    labels: torch.Tensor
    weights: torch.Tensor | None = None
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> EncodedDataset:
        return EncodedDataset(
            self.features.to(device),
            self.labels.to(device),
            None if self.weights is None else self.weights.to(device),
            self.groups,
        )


class _BatchSource(Protocol):
    """Training rows that are not in memory (``model.stream.StreamedRows``): each process
    trains ``rows_per_rank`` rows an epoch, in the batches ``batches`` yields."""

    rows_per_rank: int

    def __len__(self) -> int: ...

    def evaluate(self, model: DeepFM) -> dict[str, float]: ...

    def batches(
        self, epoch: int, first: int, dev: torch.device
    ) -> Iterator[tuple[EncodedFeatures, torch.Tensor, torch.Tensor | None]]: ...


@dataclass
class TrainResult:
    model: DeepFM
    encoder: FeatureEncoder
    metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    global_step: int = 0
    train_seconds: float = 0.0
    train_samples: int = 0
    best_epoch: int = 0  # the epoch whose weights were kept (1-based; 0: none trained)
    rows_valid: int = 0  # rows of the validation split (0: none)

    @property
    def samples_per_s(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else 0.0


# ------------------------------------------------------------------------ helpers


def encode_dataset(
    cfg: Config, encoder: FeatureEncoder, df: pd.DataFrame, where: str
) -> EncodedDataset:
    """Encode a DataFrame with the label (and weight) columns the config names."""
    check_columns(cfg, df.columns, where)
    labels = torch.from_numpy(_label_values(cfg, df[cfg.data.label], where))
    weights = None
    if cfg.data.sample_weight:
        w = df[cfg.data.sample_weight].to_numpy(dtype=np.float32)
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(
                f"data.sample_weight: {cfg.data.sample_weight!r} needs finite values >= 0"
            )
        weights = torch.from_numpy(w)
    groups = None
    key = cfg.data.group_key
    if key and "grouped_auc" in cfg.model.metrics:
        if key not in df.columns:
            raise ValueError(f"data.group_key: column {key!r} is not in {where}")
        groups = df[key].to_numpy()
    return EncodedDataset(encoder.transform(df), labels, weights, groups)


def _label_values(cfg: Config, label: pd.Series, where: str) -> np.ndarray:
    """The label column as float32 ``[N]``, checked against the loss it trains: binary
    cross-entropy takes 0 and 1, softmax cross-entropy the class indices ``0..C-1``, the L2
    loss any finite number. ValueError naming the column and a few offending values."""
    if label.isna().any():
        raise ValueError(f"data.label: column {label.name!r} has missing values in {where}")
    name = f"data.label: column {label.name!r} in {where}"
    values = pd.to_numeric(label, errors="coerce")
    if values.isna().any():
        bad = label[values.isna()].drop_duplicates().head(3).tolist()
        raise ValueError(f"{name} is not numeric, e.g. {', '.join(map(repr, bad))}")
    x = values.to_numpy(dtype=np.float64)
    kind = cfg.model.losses[0].kind
    if kind == "binary_cross_entropy":
        ok, expected = (x == 0) | (x == 1), "0 or 1 (binary_cross_entropy)"
    elif kind == "softmax_cross_entropy":
        c = cfg.model.num_class
        ok = (x == np.floor(x)) & (x >= 0) & (x < c)
        expected = f"a class index 0..{c - 1} (softmax_cross_entropy)"
    else:
        ok, expected = np.isfinite(x), "a finite number (l2_loss)"
    if not ok.all():
        bad = pd.unique(x[~ok])[:3]
        shown = ", ".join(f"{v:g}" for v in bad)
        raise ValueError(f"{name} holds {shown}; each label must be {expected}")
    return x.astype(np.float32)


def time_split(
    df: pd.DataFrame, timestamp: str, eval_fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on the earlier ``1 - eval_fraction`` of the rows by time, evaluate on the rest."""
    if timestamp not in df.columns:
        raise ValueError(f"data.timestamp: column {timestamp!r} is not in the data")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval fraction must be in (0, 1), got {eval_fraction}")
    order = np.argsort(df[timestamp].to_numpy(), kind="stable")
    cut = int(round(len(df) * (1.0 - eval_fraction)))
    if cut <= 0 or cut >= len(df):
        raise ValueError(f"a time split of {len(df)} rows leaves one side empty")
    return df.iloc[order[:cut]].reset_index(drop=True), df.iloc[order[cut:]].reset_index(drop=True)


def validation_split(cfg: Config, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training rows without and with the validation split: the last
    ``train.validation_fraction`` of ``df`` by ``data.timestamp`` (by row order when the
    config names no timestamp)."""
    frac = cfg.train.validation_fraction
    ts = cfg.data.timestamp
    if ts:
        if ts not in df.columns:
            raise ValueError(
                f"data.timestamp: column {ts!r} is not in the training data (the validation "
                "split of train.validation_fraction needs it)"
            )
        return time_split(df, ts, frac)
    cut = int(round(len(df) * (1.0 - frac)))
    if cut <= 0 or cut >= len(df):
        raise ValueError(
            f"train.validation_fraction: {frac} of {len(df)} training rows leaves one side empty"
        )
    return df.iloc[:cut].reset_index(drop=True), df.iloc[cut:].reset_index(drop=True)


def _one_class(cfg: Config, df: pd.DataFrame) -> bool:
    """A binary label column of ``df`` with one class only (its AUC is undefined)."""
    if cfg.model.losses[0].kind != "binary_cross_entropy" or cfg.data.label not in df:
        return False
    return df[cfg.data.label].nunique() < 2


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the local GPU when there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here")
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(device)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


# oneDNN's checks for native low-precision matrix kernels, and what each needs
ONEDNN_NATIVE = {
    "bf16": ("_is_mkldnn_bf16_supported", "AVX512 or AMX"),
    "fp16": ("_is_mkldnn_fp16_supported", "AVX512-FP16 or AMX-FP16"),
}


def native_precision(device: torch.device, precision: str | None) -> bool:
    """False when ``precision`` (``train.mixed_precision``: bf16 or fp16) would run its
    matrix products emulated: on a CPU where oneDNN, which runs PyTorch's low-precision
    CPU matrix products, has no native kernels for it (bf16: AVX512 or AMX; fp16:
    AVX512-FP16 or AMX-FP16). True for fp32, for GPUs, and where PyTorch cannot say."""
    if precision is None or device.type != "cpu":
        return True
    check = ONEDNN_NATIVE[precision][0]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # a build without oneDNN or without the check
        return True


def _autocast(device: torch.device, precision: str | None):
    if precision is None:
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def score(model: DeepFM, features: EncodedFeatures, batch_size: int = 65536) -> np.ndarray:
    """Scores (probabilities; ``y`` for regression; P(class 1) for 2-class softmax) in fp32,
    eval mode. ``[N]`` float64 numpy."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(features), batch_size):
        b = features.slice(start, start + batch_size).to(device)
        out.append(score_of(model.predict(b.sparse, b.multi, b.dense)).float().cpu())
    model.train(was_training)
    if not out:
        return np.zeros(0)
    return torch.cat(out).numpy().astype(np.float64)


def evaluate(
    cfg: Config, model: DeepFM, data: EncodedDataset | _BatchSource
) -> tuple[dict[str, float], np.ndarray | None]:
    """Metrics of ``model`` on ``data`` and the scores they were computed from (None for
    streamed rows, ``model.stream``: their metrics are accumulated batch by batch)."""
    if not isinstance(data, EncodedDataset):
        return data.evaluate(model), None
    scores = score(model, data.features, cfg.train.eval_batch_size)
    labels = data.labels.cpu().numpy()
    if model.loss_kind == "l2_loss":
        err = scores - labels
        return {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}, scores
    return binary_metrics(labels, scores, cfg.model.metrics, data.groups), scores


def _checkpoints(model_dir: Path) -> list[Path]:
    return sorted((model_dir / CHECKPOINT_DIR).glob("ckpt-*.pt"))


def latest_checkpoint(model_dir: str | Path) -> Path | None:
    found = _checkpoints(Path(model_dir))
    return found[-1] if found else None


class _SparseGradSync:
    """All-gather the embedding tables' sparse gradients and average them (every process
    must use the same batch size, which the equal shards guarantee)."""

    def __init__(self, params: list[torch.nn.Parameter], world_size: int) -> None:
        self.params = params
        self.world_size = world_size

    def __call__(self) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            g = p.grad
            idx, val = g._indices().contiguous(), g._values().contiguous()
            all_idx = [torch.empty_like(idx) for _ in range(self.world_size)]
            all_val = [torch.empty_like(val) for _ in range(self.world_size)]
            dist.all_gather(all_idx, idx)
            dist.all_gather(all_val, val)
            p.grad = torch.sparse_coo_tensor(
                torch.cat(all_idx, dim=1), torch.cat(all_val) / self.world_size, g.shape
            )


class _DdpScope(nn.Module):
    """What DistributedDataParallel wraps: ``forward`` is the training step's logits
    function, and the registered sub-modules are those whose gradients DDP all-reduces. With
    sparse table gradients that is every sub-module of the model but the embedding tables
    (NCCL cannot all-reduce sparse tensors: ``_SparseGradSync`` all-gathers them); the
    forward still looks the tables up, they are only not DDP's. Keeping them out of the
    wrapped module is the public way to have DDP leave parameters alone."""

    def __init__(self, model: DeepFM, logits: Callable, with_tables: bool) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(
            {name: m for name, m in model.named_children() if with_tables or name != "tables"}
        )
        # a plain attribute, not a sub-module: ``logits`` may be the model itself
        self.__dict__["logits"] = logits
        wanted = model.parameters() if with_tables else model.dense_parameters()
        assert {id(p) for p in self.parameters()} == {id(p) for p in wanted}

    def forward(self, sparse: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor):
        return self.logits(sparse, multi, dense)


@dataclass
class _Progress:
    """Where training stands: what a checkpoint keeps besides weights and optimizers."""

    epoch: int = 0  # epochs done (the current epoch's index)
    step_in_epoch: int = 0  # steps done in the current epoch
    global_step: int = 0
    history: list[dict] = field(default_factory=list)  # one record per epoch done
    best: tuple[float, dict] | None = None  # the best validation score and its weights
    best_epoch: int = 0  # the epoch (1-based) of ``best``


@dataclass
class _Run:
    """One call of ``train``: its settings, model, optimizers and progress."""

    cfg: Config
    dev: torch.device
    rank: int
    world: int
    encoder: FeatureEncoder
    model: DeepFM
    sparse_opt: torch.optim.Optimizer
    dense_opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    ckpt_root: Path | None
    show_bar: bool
    at: _Progress = field(default_factory=_Progress)
    # the training step's logits function and the tables' gradient exchange (set-up)
    forward: Callable | None = None
    sync_sparse: _SparseGradSync | None = None
    train_seconds: float = 0.0
    train_samples: int = 0
    validation_split: bool = False  # a validation split was held out of the training rows
    last_checkpoint: float = field(default_factory=time.monotonic)
    params: list[nn.Parameter] = field(default_factory=list)  # the model's, for the step
    told_threads: bool = False  # the steps' thread count was logged

    def __post_init__(self) -> None:
        if not self.params:  # the step sets their gradients to None: never miss one
            self.params = list(self.model.parameters())


# ------------------------------------------------------------------------- train


def train(
    cfg: Config,
    train_df: pd.DataFrame,
    eval_df: pd.DataFrame | None = None,
    *,
    valid_df: pd.DataFrame | None = None,
    model_dir: str | Path | None = None,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Fit encoders on ``train_df``, train DeepFM, evaluate on ``eval_df`` after each epoch.

    With ``train.num_epochs > 1`` a validation split picks the epoch: ``valid_df``, or the
    last ``train.validation_fraction`` of ``train_df`` by time (``validation_split``; never
    ``eval_df``). Training stops when its AUC has not improved for
    ``train.early_stop_patience`` epochs and the best epoch's weights are kept.
    Checkpoints go to ``model_dir/checkpoints`` every ``train.save_checkpoints_steps``
    steps and at each epoch end; ``resume=True`` continues from the latest one.
    Raises FloatingPointError when the loss becomes NaN or infinite.

    ``progress`` (process of rank 0 only): log to stderr through the ``deepfm.train`` logger
    when the application has not configured logging, and show a progress bar per epoch
    when stderr is a terminal. Each ``history`` record holds the epoch, its ``train_loss``
    (mean over its steps), time, throughput and ``eval_*`` metrics.
    """
    tc = cfg.train
    dev, rank, world = _set_up_processes(device, tc.num_threads)
    if progress and rank == 0:
        _log_to_stderr()
    torch.manual_seed(tc.seed)
    split = tc.num_epochs > 1 and tc.validation_fraction > 0
    if resume and model_dir is not None:
        split = _checkpoint_split(model_dir, split)  # as the run being resumed did
    if valid_df is None and split:
        rest, held_out = validation_split(cfg, train_df)
        if _one_class(cfg, held_out):
            log.warning(
                f"train.validation_fraction: the last {len(held_out):,} training rows hold one "
                "label class, so they cannot pick an epoch; training on every row for all "
                f"{tc.num_epochs} epochs and keeping the last"
            )
        else:
            train_df, valid_df = rest, held_out
    encoder = FeatureEncoder(cfg).fit(train_df)
    train_data = encode_dataset(cfg, encoder, train_df, "the training data").to(dev)
    eval_data = (
        encode_dataset(cfg, encoder, eval_df, "the evaluation data")
        if eval_df is not None
        else None
    )
    valid_data = (
        encode_dataset(cfg, encoder, valid_df, "the validation split")
        if valid_df is not None
        else None
    )
    binary = cfg.model.losses[0].kind == "binary_cross_entropy"
    if valid_data is not None and binary and len(torch.unique(valid_data.labels)) < 2:
        raise ValueError(
            f"the validation split ({len(valid_data):,} rows) holds one label class, so its "
            "AUC cannot pick an epoch; give it rows of both classes"
        )
    log.info(
        f"encoded {len(train_data):,} training rows"
        + (f", {len(valid_data):,} validation rows" if valid_data else "")
        + (f", {len(eval_data):,} eval rows" if eval_data else "")
    )
    return _fit(
        cfg,
        encoder,
        (dev, rank, world),
        train_data,
        valid_data,
        eval_data,
        model_dir=model_dir,
        resume=resume,
        progress=progress,
    )


def _fit(
    cfg: Config,
    encoder: FeatureEncoder,
    processes: tuple[torch.device, int, int],
    train_data: EncodedDataset | _BatchSource,
    valid_data: EncodedDataset | _BatchSource | None,
    eval_data: EncodedDataset | _BatchSource | None,
    *,
    model_dir: str | Path | None,
    resume: bool,
    progress: bool,
) -> TrainResult:
    """The model, its optimizers and the epochs (resumed, validated, evaluated, stopped
    early), on in-memory rows or streamed ones (``model.stream``); the best epoch's weights
    and the final metrics."""
    tc = cfg.train
    dev, rank, world = processes
    run = _build_run(cfg, encoder, dev, rank, world, model_dir, progress and _stderr_is_tty())
    run.validation_split = valid_data is not None
    if resume and run.ckpt_root is not None:
        _resume(run)
    run.forward, run.sync_sparse = _training_forward(run)

    run.model.train()
    stopped = run.at.epoch < tc.num_epochs and _no_recent_improvement(run)
    for epoch in range(run.at.epoch, tc.num_epochs if not stopped else run.at.epoch):
        record = _train_epoch(run, train_data, epoch)
        if valid_data is not None:
            record.update(_validate_epoch(run, valid_data, epoch))
        if eval_data is not None:
            record.update(_evaluate_epoch(run, eval_data, epoch))
        run.at.history.append(record)
        run.at.epoch, run.at.step_in_epoch = epoch + 1, 0
        _checkpoint(run)
        if _no_recent_improvement(run):
            log.info(
                f"early stop after epoch {epoch + 1}: validation AUC has not improved for "
                f"{tc.early_stop_patience} epoch(s); keeping epoch {run.at.best_epoch}"
            )
            break
    model = run.model
    best_epoch = run.at.epoch
    if run.at.best is not None:
        model.load_state_dict(run.at.best[1])
        best_epoch = run.at.best_epoch
    metrics = evaluate(cfg, model, eval_data)[0] if eval_data is not None else {}
    return TrainResult(
        model,
        encoder,
        metrics,
        run.at.history,
        run.at.global_step,
        run.train_seconds,
        run.train_samples,
        best_epoch=best_epoch,
        rows_valid=0 if valid_data is None else len(valid_data),
    )


# ------------------------------------------------------------------------ set-up


def _set_up_processes(device: str, num_threads: int | None) -> tuple[torch.device, int, int]:
    """Join the process group under torchrun; the device, this process's rank, the world
    size."""
    world = _world_size()
    if world > 1 and not dist.is_initialized():
        backend = (
            "nccl"
            if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
            else "gloo"
        )
        dist.init_process_group(backend=backend)
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dev.type == "cpu":
        # numba's pool first: starting it sets the OpenMP thread count PyTorch reads back
        # to numba's maximum, which would undo a smaller count set before
        _use_threads(num_threads or _default_threads())
        if threads.torch_runtime_spins():
            log.info(
                "PyTorch was imported before deepfm could make idle OpenMP threads sleep; "
                "on a shared CPU set OMP_WAIT_POLICY=PASSIVE in the environment "
                "(see model.threads)"
            )
    return dev, _rank(), world


def _default_threads() -> int:
    """Threads per process without ``train.num_threads``: the CPU quota (``threads.
    cpu_quota``: the cgroup's CPU limit and the affinity mask) shared by this node's
    processes under torchrun (``LOCAL_WORLD_SIZE``), at least 1."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, threads.cpu_quota() // max(1, local))


def _build_run(
    cfg: Config,
    encoder: FeatureEncoder,
    dev: torch.device,
    rank: int,
    world: int,
    model_dir: str | Path | None,
    show_bar: bool,
) -> _Run:
    """The model (sparse or dense table gradients, see ``train.sparse_gradients``), its two
    optimizers and, for fp16, the gradient scaler."""
    tc = cfg.train
    spec = encoder.input_spec()
    sparse_grads = tc.sparse_gradients
    if sparse_grads is None:
        table_values = sum(
            s.num_embeddings * (s.embedding_dim + cfg.model.wide_embedding_dim)
            for s in spec.sparse + spec.multi
        )
        sparse_grads = dev.type != "cuda" or table_values > _DENSE_GRADIENT_MAX_VALUES
    model = DeepFM(cfg.model, cfg.feature_groups, spec, sparse_gradients=sparse_grads).to(dev)
    if rank == 0 and not native_precision(dev, tc.mixed_precision):
        log.warning(
            f"train.mixed_precision is {tc.mixed_precision}, but this CPU has no native "
            f"{tc.mixed_precision} matrix instructions (PyTorch reports "
            f"{torch.backends.cpu.get_cpu_capability()}; native needs "
            f"{ONEDNN_NATIVE[tc.mixed_precision][1]}): its "
            "matrix products are emulated and training runs many times slower than in fp32 "
            "(20x and more on AVX2 CPUs); leave train.mixed_precision unset on this CPU"
        )
    return _Run(
        cfg=cfg,
        dev=dev,
        rank=rank,
        world=world,
        encoder=encoder,
        model=model,
        sparse_opt=build_sparse_optimizer(
            model.embedding_parameters(),
            tc.sparse_optimizer,
            [t.field_rows for t in model.tables],
        ),
        dense_opt=build_dense_optimizer(model.dense_parameters(), tc.dense_optimizer, dev),
        scaler=torch.amp.GradScaler(dev.type) if tc.mixed_precision == "fp16" else None,
        ckpt_root=Path(model_dir) if model_dir is not None else None,
        show_bar=show_bar and rank == 0,
    )


def _training_forward(run: _Run) -> tuple[Callable, _SparseGradSync | None]:
    """The training step's logits function ``(sparse, multi, dense) -> [B, C]`` and, under
    several processes with sparse table gradients, their all-gather.

    The one place the CPU kernels are chosen: ``FusedForward.attach`` where they serve the
    model (CPU, float32 tables with sparse gradients, a layout they handle), else the
    model's own forward (with ``train.compile``, ``torch.compile``-d after the lookups).
    Evaluation always runs the model's own forward.
    """
    model, tc = run.model, run.cfg.train
    sparse_grads = model.tables[0].embedding.sparse
    forward: Callable | None = None
    if run.dev.type == "cpu" and sparse_grads:
        # compile (or load from numba's cache) the kernels before the clock starts; the
        # sparse optimizer uses them too. Without them the PyTorch path runs.
        kernels.available()
        forward = FusedForward.attach(model, compile=tc.compile)
    if forward is None:
        forward = _compiled_forward(model) if tc.compile else model
    if run.world == 1:
        return forward, None
    ddp = DistributedDataParallel(
        _DdpScope(model, forward, with_tables=not sparse_grads),
        device_ids=[run.dev.index] if run.dev.type == "cuda" else None,
    )
    sync = _SparseGradSync(model.embedding_parameters(), run.world) if sparse_grads else None
    return ddp, sync


def _compiled_forward(model: DeepFM) -> Callable:
    """``model.forward`` with a ``torch.compile``-d ``head`` (it fuses the FM, wide and
    deep-input element-wise work); the lookups stay eager so their gradients stay sparse."""
    head = torch.compile(model.head, dynamic=False)

    def forward(sparse: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor):
        return head(model.embed(sparse, multi), dense)

    return forward


# ------------------------------------------------------------------------ resume


def _checkpoint_split(model_dir: str | Path, default: bool) -> bool:
    """Whether the run whose latest checkpoint is in ``model_dir`` held out a validation
    split (``default`` without a checkpoint, or one from before the split was recorded)."""
    ckpt = latest_checkpoint(model_dir)
    if ckpt is None:
        return default
    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    return bool(state.get("validation_split", default))


# what a checkpoint's weights and optimizer states depend on: a resume must not change them
_RESUME_KEYS = ("features", "feature_groups", "model")
_RESUME_TRAIN_KEYS = ("sparse_optimizer.type", "dense_optimizer.type")


def _changed_setting(saved: dict, now: dict) -> str | None:
    """The first dotted setting that differs between a checkpoint's config and this run's
    (only those the weights and optimizer states depend on), as one line, or None."""

    def leaves(value, key: str):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from leaves(v, f"{key}.{k}" if key else k)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                yield from leaves(v, f"{key}[{i}]")
        else:
            yield key, value

    def pick(cfg: dict) -> dict:
        out = {k: cfg.get(k) for k in _RESUME_KEYS}
        for dotted in _RESUME_TRAIN_KEYS:
            node = cfg.get("train", {})
            for part in dotted.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            out[f"train.{dotted}"] = node
        return out

    old, new = dict(leaves(pick(saved), "")), dict(leaves(pick(now), ""))
    for key in list(old) + [k for k in new if k not in old]:
        if old.get(key) != new.get(key):
            return f"{key} changed from {old.get(key)!r} to {new.get(key)!r}"
    return None


def _resume(run: _Run) -> None:
    """Load the latest checkpoint of ``run.ckpt_root``, if any: weights, optimizers and
    progress. Refuses one written with other model settings (naming the first that changed)
    or for other data (other feature encoders)."""
    ckpt = latest_checkpoint(run.ckpt_root)
    if ckpt is None:
        return
    state = torch.load(ckpt, map_location=run.dev, weights_only=True)
    if "config" in state:
        now = json.loads(json.dumps(run.cfg.to_dict()))
        changed = _changed_setting(state["config"], now)
        if changed:
            raise ValueError(
                f"{changed} since the checkpoint {ckpt}; resume with the same settings or "
                "start afresh with --overwrite"
            )
    if state["encoders"] != json.loads(json.dumps(run.encoder.state())):
        raise ValueError(f"{ckpt}: was trained on other data (feature encoders differ)")
    run.model.load_state_dict(state["model"])
    run.sparse_opt.load_state_dict(state["sparse_optimizer"])
    run.dense_opt.load_state_dict(state["dense_optimizer"])
    best = state["best"]
    run.at = _Progress(
        epoch=state["epoch"],
        step_in_epoch=state["step_in_epoch"],
        global_step=state["global_step"],
        history=state["history"],
        best=None if best is None else (best["score"], best["model"]),
        best_epoch=state.get("best_epoch", 0),
    )
    log.info(f"resumed from {ckpt} (epoch {run.at.epoch + 1}, step {run.at.global_step})")


def _checkpoint(run: _Run) -> None:
    """Write ``ckpt-<global_step>.pt`` (rank 0, with a model directory): weights,
    optimizers, progress, best epoch."""
    run.last_checkpoint = time.monotonic()
    if run.rank != 0 or run.ckpt_root is None:
        return
    at = run.at
    _save_checkpoint(
        run.ckpt_root,
        {
            "model": run.model.state_dict(),
            "sparse_optimizer": run.sparse_opt.state_dict(),
            "dense_optimizer": run.dense_opt.state_dict(),
            "encoders": json.loads(json.dumps(run.encoder.state())),
            "epoch": at.epoch,
            "step_in_epoch": at.step_in_epoch,
            "global_step": at.global_step,
            "history": json.loads(json.dumps(at.history)),
            "best": None if at.best is None else {"score": at.best[0], "model": at.best[1]},
            "best_epoch": at.best_epoch,
            "validation_split": run.validation_split,
            "config": json.loads(json.dumps(run.cfg.to_dict())),
        },
    )


def _save_checkpoint(root: Path, state: dict) -> None:
    folder = root / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{state['global_step']:09d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a reader never sees a half-written checkpoint
    for old in _checkpoints(root)[:-_KEEP_CHECKPOINTS]:
        old.unlink()


# ------------------------------------------------------------------------- epoch


def _train_epoch(run: _Run, data: EncodedDataset | _BatchSource, epoch: int) -> dict:
    """Train one epoch (from step ``run.at.step_in_epoch`` when resuming into it) -> its
    history record: ``epoch``, ``train_loss`` (mean over the steps run),
    ``train_seconds``, ``train_samples_per_s``."""
    tc, dev, world = run.cfg.train, run.dev, run.world
    first = run.at.step_in_epoch
    run.at.epoch = epoch
    if isinstance(data, EncodedDataset):
        shard = math.ceil(len(data) / world)
        batches = _shuffled_batches(data, epoch, run, first)
    else:  # streamed rows (model.stream.StreamedRows): this process's batches from shards
        shard = data.rows_per_rank
        batches = data.batches(epoch, first, dev)
    steps = math.ceil(shard / tc.batch_size)
    samples = max(shard - first * tc.batch_size, 0) * world
    check_every = 1 if dev.type == "cpu" else tc.log_steps
    # the bar shows what the step lines say: they go to DEBUG while it is on screen
    line_level = logging.DEBUG if run.show_bar else logging.INFO
    epoch_loss = torch.zeros((), device=dev)
    t0 = time.perf_counter()
    with _epoch_bar(run, epoch, samples) as bar, _step_threads(run):
        for step, (features, labels, weights) in zip(range(first, steps), batches, strict=True):
            loss = _train_step(run, features, labels, weights)
            run.at.global_step += 1
            epoch_loss += loss.detach()
            last = step == steps - 1
            if (run.at.global_step % check_every == 0 or last) and not math.isfinite(loss.item()):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at step {run.at.global_step} "
                    f"(epoch {epoch + 1}); lower train.dense_optimizer.lr or "
                    "train.sparse_optimizer.lr, or check the inputs"
                )
            if run.at.global_step % tc.log_steps == 0 or last:
                done = step + 1 - first
                seen = done * tc.batch_size * world
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                log.log(
                    line_level,
                    f"epoch {epoch + 1}/{tc.num_epochs} step {step + 1}/{steps} "
                    f"loss {loss.item():.5f} {rate:,.0f} samples/s",
                )
                if bar is not None:
                    bar.set_postfix(loss=f"{float(epoch_loss) / done:.5f}", refresh=False)
                    bar.update(min(seen, samples) - bar.n)
            if not last and _checkpoint_due(run):
                run.at.step_in_epoch = step + 1
                _checkpoint(run)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    run.train_seconds += seconds
    run.train_samples += samples
    return {
        "epoch": epoch + 1,
        "train_loss": float(epoch_loss) / max(steps - first, 1),
        "train_seconds": seconds,
        "train_samples_per_s": samples / max(seconds, 1e-9),
    }


@contextmanager
def _step_threads(run: _Run) -> Iterator[None]:
    """The training steps' thread count on a CPU (``threads.step_threads``: at most one
    thread per ``train.min_samples_per_thread`` samples of a batch), the process's own
    count restored after (evaluation keeps every thread)."""
    available = torch.get_num_threads()
    tc = run.cfg.train
    n = threads.step_threads(tc.batch_size, available, tc.min_samples_per_thread)
    # (PyTorch's native thread pool cannot change its size once it has run: OpenMP only)
    if run.dev.type != "cpu" or n == available or not threads.openmp_backend():
        yield
        return
    if not run.told_threads:
        log.info(
            f"training steps run on {n} of {available} threads: batch {tc.batch_size}, at "
            f"most one thread per {tc.min_samples_per_thread} samples "
            "(train.min_samples_per_thread; 0 uses every thread)"
        )
        run.told_threads = True
    _use_threads(n)
    try:
        yield
    finally:
        _use_threads(available)


def _use_threads(n: int) -> None:
    """``n`` threads for PyTorch and the kernels (numba's pool first, as at set-up)."""
    if kernels.numba is not None and not os.environ.get("DEEPFM_NO_KERNELS"):
        kernels.set_threads(n)
    torch.set_num_threads(n)


def _checkpoint_due(run: _Run) -> bool:
    """Every ``train.save_checkpoints_steps`` steps or ``save_checkpoints_secs`` seconds
    since the last checkpoint, whichever comes first (rank 0's clock decides under DDP:
    only rank 0 writes, and nothing here is collective)."""
    tc = run.cfg.train
    if run.ckpt_root is None:
        return False
    if tc.save_checkpoints_steps and run.at.global_step % tc.save_checkpoints_steps == 0:
        return True
    secs = tc.save_checkpoints_secs
    return bool(secs) and time.monotonic() - run.last_checkpoint >= secs


def _shuffled_batches(
    data: EncodedDataset, epoch: int, run: _Run, first: int
) -> Iterator[tuple[EncodedFeatures, torch.Tensor, torch.Tensor | None]]:
    """This process's batches of the epoch's shuffle from step ``first`` on."""
    tc = run.cfg.train
    features, labels, weights = _epoch_shuffle(data, epoch, tc.seed, run.rank, run.world, run.dev)
    for start in range(first * tc.batch_size, len(labels), tc.batch_size):
        stop = start + tc.batch_size
        yield (
            features.slice(start, stop),
            labels[start:stop],
            None if weights is None else weights[start:stop],
        )


def _epoch_shuffle(
    data: EncodedDataset, epoch: int, seed: int, rank: int, world: int, dev: torch.device
) -> tuple[EncodedFeatures, torch.Tensor, torch.Tensor | None]:
    """This process's rows of the epoch's shuffle, as one shuffled copy (then every batch
    is a contiguous slice, cheaper than a gather per batch): features, labels, weights."""
    n = len(data)
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n, generator=gen)
    if world > 1:  # pad by wrapping so every process gets ``ceil(n / world)`` rows
        shard = math.ceil(n / world)
        perm = torch.cat([perm, perm[: shard * world - n]])[rank::world]
    perm = perm.to(dev)
    weights = None if data.weights is None else data.weights[perm]
    return data.features.index(perm), data.labels[perm], weights


def _train_step(
    run: _Run, batch: EncodedFeatures, labels: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """Forward, loss, backward and both optimizers' steps on one batch -> the loss."""
    with _autocast(run.dev, run.cfg.train.mixed_precision):
        logits = run.forward(batch.sparse, batch.multi, batch.dense)
    # losses in fp32, also under autocast
    predictions = _loss_inputs(logits.float(), run.model.loss_kind)
    loss = compute_loss(predictions, labels, run.cfg.model.losses[0], weights)
    for p in run.params:  # both optimizers' zero_grad(set_to_none=True), without their Python
        p.grad = None
    scaler = run.scaler
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    if run.sync_sparse is not None:
        run.sync_sparse()
    if scaler is not None:
        scaler.step(run.dense_opt)
        scaler.step(run.sparse_opt)
        scaler.update()
    else:
        optimizer_step(run.dense_opt)
        optimizer_step(run.sparse_opt)
    return loss


def _loss_inputs(logits: torch.Tensor, loss_kind: str) -> dict[str, torch.Tensor]:
    """What ``compute_loss`` reads of ``to_predictions(logits, loss_kind)``: the same tensors,
    without the probabilities it does not use (each one more autograd node a step)."""
    if loss_kind == "binary_cross_entropy":
        return {"logits": logits.squeeze(1)}
    if loss_kind == "softmax_cross_entropy":
        return {"logits": logits}
    return {"y": logits.squeeze(1)}


@contextmanager
def _epoch_bar(run: _Run, epoch: int, samples: int) -> Iterator[tqdm | None]:
    """The epoch's tqdm bar over its ``samples`` (it shows samples/s; the caller updates it
    with the running loss every ``train.log_steps`` steps), or None when it is off."""
    if not run.show_bar:
        yield None
        return
    # log lines go above the bar, not through it
    with (
        logging_redirect_tqdm(loggers=[log, logging.getLogger()]),
        tqdm(
            total=samples,
            desc=f"epoch {epoch + 1}/{run.cfg.train.num_epochs}",
            unit=" samples",
            unit_scale=True,
            mininterval=1.0,
            dynamic_ncols=True,
        ) as bar,
    ):
        yield bar


# ---------------------------------------------------------------------- evaluate


def _evaluate_epoch(run: _Run, eval_data: EncodedDataset, epoch: int) -> dict:
    """Evaluate after an epoch -> its ``eval_*`` metrics (reported, never used to choose)."""
    metrics, _ = evaluate(run.cfg, run.model, eval_data)
    log.info(
        "epoch {} eval {}".format(epoch + 1, " ".join(f"{k}={v:.5f}" for k, v in metrics.items()))
    )
    return {f"eval_{k}": v for k, v in metrics.items()}


def _validate_epoch(run: _Run, valid_data: EncodedDataset, epoch: int) -> dict:
    """Score the validation split after an epoch -> its ``valid_*`` metrics; remember the
    best weights (by AUC, or -MSE for regression; the earlier epoch on a tie)."""
    metrics, _ = evaluate(run.cfg, run.model, valid_data)
    log.info(
        "epoch {} validation {}".format(
            epoch + 1, " ".join(f"{k}={v:.5f}" for k, v in metrics.items())
        )
    )
    current = _selection_score(metrics)
    if run.at.best is None or current > run.at.best[0]:
        weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        run.at.best, run.at.best_epoch = (current, weights), epoch + 1
    return {f"valid_{k}": v for k, v in metrics.items()}


def _selection_score(metrics: dict) -> float:
    """What picks the epoch: the AUC, or -MSE (regression); NaN (one class) never wins."""
    value = metrics.get("auc", -metrics.get("mse", math.inf))
    return value if math.isfinite(value) else -math.inf


def _no_recent_improvement(run: _Run) -> bool:
    """True when the best validated epoch is ``train.early_stop_patience`` or more epochs
    behind the last one."""
    if run.at.best is None:
        return False
    return run.at.epoch - run.at.best_epoch >= run.cfg.train.early_stop_patience


# ----------------------------------------------------------------------- logging


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when it writes (as ``print`` is)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_to_stderr() -> None:
    """Show ``deepfm.train``'s INFO lines on stderr as ``[train] ...`` when the application
    has configured no logging handler (an application's own configuration wins)."""
    if log.handlers or logging.getLogger().handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("[train] %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False

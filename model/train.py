"""Training and evaluation of DeepFM on in-memory tensors (CPU or GPU, one or many processes).

Data is encoded once (``FeatureEncoder``) and kept as tensors; a batch is one gather of
rows, not a ``Dataset.__getitem__`` + collate per sample. Embedding tables get a sparse
optimizer, the MLPs a dense one. Under ``torchrun`` (``WORLD_SIZE > 1``) each process
trains on its shard of every epoch's shuffle: the dense part is wrapped in
DistributedDataParallel, the embedding tables' sparse gradients are all-gathered (NCCL
cannot all-reduce sparse tensors), so every process applies the same update.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from model import kernels
from model.config import Config, check_columns
from model.deepfm import DeepFM, score_of, to_predictions
from model.features import EncodedFeatures, FeatureEncoder
from model.losses import compute_loss
from model.metrics import binary_metrics
from model.optim import build_dense_optimizer, build_sparse_optimizer

CHECKPOINT_DIR = "checkpoints"
_KEEP_CHECKPOINTS = 3
_DENSE_GRADIENT_MAX_VALUES = 2**27


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


@dataclass
class TrainResult:
    model: DeepFM
    encoder: FeatureEncoder
    metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    global_step: int = 0
    train_seconds: float = 0.0
    train_samples: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else 0.0


# ------------------------------------------------------------------------ helpers


def encode_dataset(
    cfg: Config, encoder: FeatureEncoder, df: pd.DataFrame, where: str
) -> EncodedDataset:
    """Encode a DataFrame with the label (and weight) columns the config names."""
    check_columns(cfg, df.columns, where)
    label = df[cfg.data.label]
    if label.isna().any():
        raise ValueError(f"data.label: column {cfg.data.label!r} has missing values in {where}")
    labels = torch.from_numpy(label.to_numpy(dtype=np.float32))
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


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the local GPU when there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here")
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(device)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


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
    cfg: Config, model: DeepFM, data: EncodedDataset
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of ``model`` on ``data`` and the scores they were computed from."""
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


# ------------------------------------------------------------------------- train


def train(
    cfg: Config,
    train_df: pd.DataFrame,
    eval_df: pd.DataFrame | None = None,
    *,
    model_dir: str | Path | None = None,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Fit encoders on ``train_df``, train DeepFM, evaluate on ``eval_df`` after each epoch.

    Stops early when the eval AUC has not improved for ``train.early_stop_patience`` epochs
    and keeps the best epoch's weights. Checkpoints go to ``model_dir/checkpoints`` every
    ``train.save_checkpoints_steps`` steps; ``resume=True`` continues from the latest one.
    Raises FloatingPointError when the loss becomes NaN or infinite.
    """
    tc = cfg.train
    world = _world_size()
    if world > 1 and not dist.is_initialized():
        backend = (
            "nccl"
            if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
            else "gloo"
        )
        dist.init_process_group(backend=backend)
    rank = _rank()
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dev.type == "cpu" and tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    log = _Logger(progress and rank == 0)

    torch.manual_seed(tc.seed)
    encoder = FeatureEncoder(cfg).fit(train_df)
    train_data = encode_dataset(cfg, encoder, train_df, "the training data").to(dev)
    eval_data = (
        encode_dataset(cfg, encoder, eval_df, "the evaluation data")
        if eval_df is not None
        else None
    )
    log(
        f"encoded {len(train_data):,} training rows"
        + (f", {len(eval_data):,} eval rows" if eval_data else "")
    )

    spec = encoder.input_spec()
    sparse_grads = tc.sparse_gradients
    if sparse_grads is None:
        table_values = sum(
            s.num_embeddings * (s.embedding_dim + cfg.model.wide_embedding_dim)
            for s in spec.sparse + spec.multi
        )
        sparse_grads = dev.type != "cuda" or table_values > _DENSE_GRADIENT_MAX_VALUES
    model = DeepFM(cfg.model, cfg.feature_groups, spec, sparse_gradients=sparse_grads).to(dev)
    sparse_params = model.embedding_parameters()
    sparse_opt = build_sparse_optimizer(sparse_params, tc.sparse_optimizer)
    dense_opt = build_dense_optimizer(model.dense_parameters(), tc.dense_optimizer, dev)
    scaler = torch.amp.GradScaler(dev.type) if tc.mixed_precision == "fp16" else None

    start_epoch, skip_steps, global_step = 0, 0, 0
    history: list[dict] = []
    best: tuple[float, dict] | None = None
    ckpt_root = Path(model_dir) if model_dir is not None else None
    if resume and ckpt_root is not None:
        ckpt = latest_checkpoint(ckpt_root)
        if ckpt is not None:
            state = torch.load(ckpt, map_location=dev, weights_only=True)
            if state["encoders"] != json.loads(json.dumps(encoder.state())):
                raise ValueError(f"{ckpt}: was trained on other data (feature encoders differ)")
            model.load_state_dict(state["model"])
            sparse_opt.load_state_dict(state["sparse_optimizer"])
            dense_opt.load_state_dict(state["dense_optimizer"])
            start_epoch, skip_steps = state["epoch"], state["step_in_epoch"]
            global_step, history = state["global_step"], state["history"]
            if state["best"] is not None:
                best = (state["best"]["score"], state["best"]["model"])
            log(f"resumed from {ckpt} (epoch {start_epoch + 1}, step {global_step})")

    def checkpoint(epoch: int, step_in_epoch: int) -> None:
        """Write ``ckpt-<global_step>.pt`` (rank 0): weights, optimizers, progress, best."""
        if rank != 0 or ckpt_root is None:
            return
        _save_checkpoint(
            ckpt_root,
            {
                "model": model.state_dict(),
                "sparse_optimizer": sparse_opt.state_dict(),
                "dense_optimizer": dense_opt.state_dict(),
                "encoders": json.loads(json.dumps(encoder.state())),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "history": json.loads(json.dumps(history)),
                "best": None if best is None else {"score": best[0], "model": best[1]},
            },
        )

    if tc.compile:
        model.compile_training_head()
    if dev.type == "cpu" and sparse_grads:
        # compile (or load from numba's cache) the CPU embedding kernels before the clock
        # starts; without them the PyTorch path runs
        kernels.available()
    train_model: torch.nn.Module = model
    sync_sparse = None
    if world > 1:
        if sparse_grads:  # DDP cannot all-reduce sparse gradients on NCCL: gather them
            names = [n for n, p in model.named_parameters() if any(p is s for s in sparse_params)]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
            sync_sparse = _SparseGradSync(sparse_params, world)
        train_model = DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )

    n = len(train_data)
    shard = math.ceil(n / world)
    steps_per_epoch = math.ceil(shard / tc.batch_size)
    loss_cfg = cfg.model.losses[0]
    train_seconds, train_samples = 0.0, 0
    check_every = 1 if dev.type == "cpu" else tc.log_steps
    model.train()
    for epoch in range(start_epoch, tc.num_epochs):
        gen = torch.Generator().manual_seed(tc.seed * 1000 + epoch)
        perm = torch.randperm(n, generator=gen)
        if world > 1:  # pad by wrapping so every process gets ``shard`` rows
            perm = torch.cat([perm, perm[: shard * world - n]])[rank::world]
        # One shuffled copy per epoch, then every batch is a contiguous slice (cheaper than
        # a gather per batch).
        perm = perm.to(dev)
        epoch_features = train_data.features.index(perm)
        epoch_labels = train_data.labels[perm]
        epoch_weights = None if train_data.weights is None else train_data.weights[perm]
        epoch_loss = torch.zeros((), device=dev)
        t0 = time.perf_counter()
        first = skip_steps if epoch == start_epoch else 0
        for step in range(first, steps_per_epoch):
            start, stop = step * tc.batch_size, (step + 1) * tc.batch_size
            batch = epoch_features.slice(start, stop)
            with _autocast(dev, tc.mixed_precision):
                logits = train_model(batch.sparse, batch.multi, batch.dense)
            # losses in fp32, also under autocast
            predictions = to_predictions(logits.float(), model.loss_kind)
            weights = None if epoch_weights is None else epoch_weights[start:stop]
            loss = compute_loss(predictions, epoch_labels[start:stop], loss_cfg, weights)
            sparse_opt.zero_grad(set_to_none=True)
            dense_opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if sync_sparse is not None:
                sync_sparse()
            if scaler is not None:
                scaler.step(dense_opt)
                scaler.step(sparse_opt)
                scaler.update()
            else:
                dense_opt.step()
                sparse_opt.step()
            global_step += 1
            epoch_loss += loss.detach()
            last = step == steps_per_epoch - 1
            if (global_step % check_every == 0 or last) and not math.isfinite(loss.item()):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at step {global_step} "
                    f"(epoch {epoch + 1}); lower train.dense_optimizer.lr or "
                    "train.sparse_optimizer.lr, or check the inputs"
                )
            if global_step % tc.log_steps == 0 or last:
                seen = (step + 1 - first) * tc.batch_size * world
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                log(
                    f"epoch {epoch + 1}/{tc.num_epochs} step {step + 1}/{steps_per_epoch} "
                    f"loss {loss.item():.5f} {rate:,.0f} samples/s"
                )
            if (
                ckpt_root is not None
                and tc.save_checkpoints_steps
                and global_step % tc.save_checkpoints_steps == 0
                and not last
            ):
                checkpoint(epoch, step + 1)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds = time.perf_counter() - t0
        epoch_samples = max(shard - first * tc.batch_size, 0) * world
        train_seconds += epoch_seconds
        train_samples += epoch_samples
        record = {
            "epoch": epoch + 1,
            "train_loss": float(epoch_loss) / max(steps_per_epoch - first, 1),
            "train_seconds": epoch_seconds,
            "train_samples_per_s": epoch_samples / max(epoch_seconds, 1e-9),
        }
        if eval_data is not None:
            metrics, _ = evaluate(cfg, model, eval_data)
            record.update({f"eval_{k}": v for k, v in metrics.items()})
            log(
                "epoch {} eval {}".format(
                    epoch + 1, " ".join(f"{k}={v:.5f}" for k, v in metrics.items())
                )
            )
            current = metrics.get("auc", -metrics.get("mse", 0.0))
            if best is None or current > best[0]:
                best = (current, {k: v.detach().clone() for k, v in model.state_dict().items()})
        history.append(record)
        if ckpt_root is not None and tc.save_checkpoints_steps:
            checkpoint(epoch + 1, 0)
        if best is not None and eval_data is not None and len(history) > tc.early_stop_patience:
            recent = [
                h.get("eval_auc", -h.get("eval_mse", 0.0))
                for h in history[-tc.early_stop_patience :]
            ]
            if max(recent) < best[0]:
                log(
                    f"early stop after epoch {epoch + 1}: eval AUC has not improved for "
                    f"{tc.early_stop_patience} epoch(s)"
                )
                break
    model.release_training_head()
    if best is not None:
        model.load_state_dict(best[1])
    metrics = evaluate(cfg, model, eval_data)[0] if eval_data is not None else {}
    return TrainResult(model, encoder, metrics, history, global_step, train_seconds, train_samples)


def _save_checkpoint(root: Path, state: dict) -> None:
    folder = root / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{state['global_step']:09d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a reader never sees a half-written checkpoint
    for old in _checkpoints(root)[:-_KEEP_CHECKPOINTS]:
        old.unlink()


class _Logger:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[train] {message}", file=sys.stderr, flush=True)

"""Optimizers: a sparse one for the embedding tables and a dense one for the rest, as
TorchEasyRec splits them.

``SparseAdagrad`` applies Adagrad to the rows a batch touched, from the sparse gradient of
an ``nn.Embedding(sparse=True)``: duplicate lookups of a row are summed first (one update
per row), the accumulator is per element or, with ``rowwise=True``, one scalar per row
(the mean of the squared gradient, as fbgemm's row-wise Adagrad), which saves memory on
large tables.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from model.config import DenseOptimizerConfig, SparseOptimizerConfig

# CSR tensors are "beta" in PyTorch; the product used here is stable since 1.13.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class SparseAdagrad(torch.optim.Optimizer):
    """Adagrad on sparse (or dense) gradients: ``w -= lr * g / (sqrt(G) + eps)``, ``G += g^2``."""

    def __init__(
        self,
        params,
        lr: float = 0.02,
        eps: float = 1e-8,
        initial_accumulator_value: float = 0.0,
        rowwise: bool = False,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"SparseAdagrad lr must be > 0, got {lr}")
        defaults = {
            "lr": lr,
            "eps": eps,
            "initial_accumulator_value": initial_accumulator_value,
            "rowwise": rowwise,
        }
        super().__init__(params, defaults)
        self._scratch: dict[torch.Tensor, tuple[np.ndarray, ...]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                shape = p.shape[:1] if rowwise else p.shape
                self.state[p]["sum"] = torch.full(
                    shape, initial_accumulator_value, dtype=torch.float32, device=p.device
                )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, eps, rowwise = group["lr"], group["eps"], group["rowwise"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                acc = self.state[p]["sum"]
                if grad.is_sparse and self._kernel_update(p, grad, acc, lr, eps, rowwise):
                    continue
                if grad.is_sparse:
                    rows, g = _sum_duplicate_rows(grad)
                else:
                    rows = None
                    g = grad.float()
                sq = g.square().mean(dim=1) if rowwise else g.square()
                if rows is None:
                    acc.add_(sq)
                    denom = acc.sqrt().add_(eps)
                    if rowwise:
                        denom = denom[:, None]
                    p.addcdiv_(g.to(p.dtype), denom.to(p.dtype), value=-lr)
                else:
                    # rows are unique: read-modify-write with index_copy_ (parallel), which is
                    # about 3x faster than index_add_ on CPU
                    acc_rows = acc.index_select(0, rows).add_(sq)
                    acc.index_copy_(0, rows, acc_rows)
                    denom = acc_rows.sqrt_().add_(eps)
                    if rowwise:
                        denom = denom[:, None]
                    w_rows = p.index_select(0, rows).float().addcdiv_(g, denom, value=-lr)
                    p.index_copy_(0, rows, w_rows.to(p.dtype))
        return loss

    def _kernel_update(self, p, grad, acc, lr, eps, rowwise) -> bool:
        """The CPU path: ``model.kernels.adagrad_update`` sums duplicate rows without a sort
        and updates each row once. False when it does not apply (GPU, not float32, no
        kernels), and the PyTorch path below runs instead."""
        if p.device.type != "cpu" or p.dtype != torch.float32 or p.dim() != 2:
            return False
        from model import kernels

        if not kernels.available():
            return False
        rows = grad._indices()[0].contiguous()
        values = grad._values().float().contiguous()
        # threads sum duplicates in parallel, each with its own row -> slot map; a few
        # suffice (the maps cost 4 bytes per table row each)
        parts = min(kernels.set_threads(torch.get_num_threads()), 4)
        n, width = values.shape
        scratch = self._scratch.get(p)
        if scratch is None or scratch[0].shape[0] != parts or scratch[1].shape[0] < n:
            # per thread a slot map row -> scratch position (the kernel leaves it all -1),
            # the distinct rows, their summed gradients, the slices' ends. Kept between
            # steps: fresh pages every step cost more than the update.
            scratch = (
                np.full((parts, p.shape[0]), -1, dtype=np.int32),
                np.empty(n, dtype=np.int64),
                np.empty((n, width), dtype=np.float32),
                np.empty(parts, dtype=np.int64),
            )
            self._scratch[p] = scratch
        kernels.adagrad_update(
            p.detach().numpy(), acc.view(p.shape[0], -1).numpy(), rows.numpy(),
            values.numpy(), np.float32(lr), np.float32(eps), bool(rowwise), *scratch,
        )  # fmt: skip
        return True


def _sum_duplicate_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse COO gradient -> (unique rows [U], summed row gradients [U, D] float32).

    One sort of the row ids, then the per-row sums as a product with the CSR matrix
    ``[U, nnz]`` of ones that groups equal ids: about 1.5x faster on CPU than
    ``unique`` + ``index_add_`` (which scatters one row at a time). Sorting int32 ids is
    about twice as fast as int64, hence the cast.
    """
    rows = grad._indices()[0]
    values = grad._values().float()
    if grad.shape[0] < 2**31:
        rows = rows.to(torch.int32)
    sorted_rows, order = torch.sort(rows)
    unique, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    crow = torch.zeros(unique.shape[0] + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(counts, 0, out=crow[1:])
    group = torch.sparse_csr_tensor(
        crow,
        order.long(),
        torch.ones(rows.shape[0], device=values.device),
        (unique.shape[0], rows.shape[0]),
        check_invariants=False,
    )
    return unique.long(), group @ values


def build_sparse_optimizer(params, cfg: SparseOptimizerConfig) -> torch.optim.Optimizer:
    if cfg.type in ("adagrad", "rowwise_adagrad"):
        return SparseAdagrad(
            params,
            lr=cfg.lr,
            eps=cfg.eps,
            initial_accumulator_value=cfg.initial_accumulator_value,
            rowwise=cfg.type == "rowwise_adagrad",
        )
    if cfg.type == "sparse_adam":
        return torch.optim.SparseAdam(params, lr=cfg.lr, eps=cfg.eps)
    return torch.optim.SGD(params, lr=cfg.lr)


def build_dense_optimizer(params, cfg: DenseOptimizerConfig, device: torch.device):
    params = list(params)
    if cfg.type in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.type == "adam" else torch.optim.AdamW
        # fused kernels run one pass over all parameters (CPU and CUDA)
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.type == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

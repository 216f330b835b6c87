"""Optimizers: a sparse one for the embedding tables and a dense one for the rest, as
TorchEasyRec splits them.

``SparseAdagrad`` applies Adagrad to the rows a batch touched, from the sparse gradient of
an ``nn.Embedding(sparse=True)``: duplicate lookups of a row are summed first (one update
per row), the accumulator is per element or, with ``rowwise=True``, one scalar per row
(the mean of the squared gradient, as fbgemm's row-wise Adagrad), which saves memory on
large tables.

``TableAdam`` is Adam for the tables. Rows of fields with at most ``dense_max_rows`` rows
are updated every step, as ``torch.optim.Adam`` updates a dense table (rows a batch did not
touch see a zero gradient: their moments decay and the weights keep moving), so on small
tables it equals Adam on a dense copy. Rows of larger fields are updated lazily, only when
a batch touches them (``torch.optim.SparseAdam``'s rule: their moments decay once per
touch), so a step costs the small fields' rows plus the rows touched, never a pass over a
large table. ``lazy=True`` makes every row lazy. ``l2`` is FuxiCTR's
``embedding_regularizer``: the loss gains ``l2 / 2 * ||w||^2`` over the rows updated,
so ``l2 * w`` is added to their gradient (every row of the dense fields each step; a lazy
row when it is touched). On a CPU both run as one compiled call per table
(``model.kernels.adagrad_update``, ``adam_update``), PyTorch ops elsewhere.
"""

from __future__ import annotations

import math
import warnings

from model import threads  # isort: skip - before torch loads its OpenMP runtime

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

    def step(self, closure=None):  # noqa: D102
        loss = closure() if closure is not None else None
        self.update()
        return loss

    @torch.no_grad()
    def update(self) -> None:
        """The step itself (``step`` without the closure; ``optimizer_step`` calls it)."""
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

    def _kernel_update(self, p, grad, acc, lr, eps, rowwise) -> bool:
        """The CPU path: ``model.kernels.adagrad_update`` sums duplicate rows without a sort
        and updates each row once. False when it does not apply (GPU, not float32, no
        kernels), and the PyTorch path below runs instead."""
        inputs = _kernel_inputs(p, grad)
        if inputs is None:
            return False
        kernels, rows, values, parts = inputs
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


def _kernel_inputs(p: torch.Tensor, grad: torch.Tensor):
    """``(model.kernels, rows [N], values [N, C] float32, parts)`` for a compiled kernel's
    update of the table ``p`` from its sparse gradient (rows of values, as an embedding's);
    None where the kernels do not apply (GPU, not float32, no kernels). ``parts``: the
    threads that sum duplicate rows in parallel, each with its own row -> slot map (a few
    suffice: the maps cost 4 bytes per table row each)."""
    if p.device.type != "cpu" or p.dtype != torch.float32 or p.dim() != 2:
        return None
    if grad.sparse_dim() != 1:
        return None
    from model import kernels

    if not kernels.available():
        return None
    rows = grad._indices()[0].contiguous()
    values = grad._values().float().contiguous()
    parts = min(kernels.set_threads(torch.get_num_threads()), 4)
    return kernels, rows, values, parts


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


class TableAdam(torch.optim.Optimizer):
    """Adam for embedding tables with sparse (or dense) gradients; see the module doc.

    ``field_rows`` (one list per parameter, or None): the rows of each field in table order
    (a table's rows past their sum, such as a padding row, are lazy). Without it every
    row is dense, unless ``lazy``."""

    def __init__(
        self,
        params,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        l2: float = 0.0,
        lazy: bool = False,
        dense_max_rows: int = 65536,
        field_rows: list[list[int]] | None = None,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"TableAdam lr must be > 0, got {lr}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "l2": l2}
        super().__init__(params, defaults)
        # per parameter: the sorted dense rows and each row's position among them (-1 lazy);
        # None = every row dense. Derived from the layout, not state.
        self._dense: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self._scratch: dict[torch.Tensor, dict[str, np.ndarray]] = {}  # the kernel's
        params_all = [p for g in self.param_groups for p in g["params"]]
        for i, p in enumerate(params_all):
            rows = p.shape[0]
            blocks = field_rows[i] if field_rows is not None else [rows]
            keep = np.zeros(rows, dtype=bool)
            start = 0
            for n in blocks:
                if not lazy and n <= dense_max_rows:
                    keep[start : start + n] = True
                start += n
            if keep.all():
                self._dense[p] = None
            else:
                idx = torch.from_numpy(np.flatnonzero(keep)).to(p.device)
                pos = torch.full((rows,), -1, dtype=torch.long, device=p.device)
                pos[idx] = torch.arange(len(idx), device=p.device)
                self._dense[p] = (idx, pos)
            state = self.state[p]
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)

    def step(self, closure=None):  # noqa: D102
        loss = closure() if closure is not None else None
        self.update()
        return loss

    @torch.no_grad()
    def update(self) -> None:
        """The step itself (``step`` without the closure; ``optimizer_step`` calls it)."""
        for group in self.param_groups:
            lr, (b1, b2), eps, l2 = group["lr"], group["betas"], group["eps"], group["l2"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                t = float(state["step"])
                coef = (lr / (1 - b1**t), math.sqrt(1 - b2**t), b1, b2, eps, l2)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                dense = self._dense[p]
                grad = p.grad
                if grad.is_sparse and self._kernel_update(p, grad, m, v, dense, coef):
                    continue
                if dense is None:  # every row, as torch.optim.Adam on a dense table
                    if grad.is_sparse:
                        g = torch.zeros_like(m)
                        rows, values = _sum_duplicate_rows(grad)
                        g.index_copy_(0, rows, values)
                    else:
                        g = grad.float()
                    _adam(p, m, v, g, *coef)
                    continue
                if grad.is_sparse:
                    rows, values = _sum_duplicate_rows(grad)
                else:
                    rows = grad.abs().sum(dim=1).nonzero().squeeze(1)
                    values = grad.float().index_select(0, rows)
                idx, pos = dense
                where = pos.index_select(0, rows)
                is_lazy = where < 0
                if len(idx):  # the dense fields' rows: all of them, zero where untouched
                    g = torch.zeros(len(idx), p.shape[1], dtype=torch.float32, device=p.device)
                    g.index_copy_(0, where[~is_lazy], values[~is_lazy])
                    _adam_rows(p, m, v, idx, g, coef)
                lazy_rows = rows[is_lazy]
                if len(lazy_rows):  # the large fields' rows: those touched
                    _adam_rows(p, m, v, lazy_rows, values[is_lazy], coef)

    def _kernel_update(self, p, grad, m, v, dense, coef) -> bool:
        """The CPU path: ``model.kernels.adam_update`` does the whole step in one call (the
        duplicate sums, every dense row, the touched lazy rows). False when it does not
        apply (GPU, not float32, no kernels), and the PyTorch path runs instead."""
        if not (p.is_contiguous() and m.is_contiguous() and v.is_contiguous()):
            return False
        if m.dtype != torch.float32 or v.dtype != torch.float32:
            return False
        inputs = _kernel_inputs(p, grad)
        if inputs is None:
            return False
        kernels, rows, values, parts = inputs
        n, width = values.shape
        scratch = self._scratch.get(p)
        if scratch is None or scratch["ends"].shape[0] != parts or scratch["uniq"].shape[0] < n:
            scratch = self._scratch[p] = _adam_scratch(p.shape[0], width, parts, n, dense)
        step_size, bc2_sqrt, b1, b2, eps, l2 = coef
        # the scalars as PyTorch takes them: computed in float64, then float32
        factors = np.array([step_size, bc2_sqrt, 1 - b1, b2, 1 - b2, eps, l2], dtype=np.float32)
        kernels.adam_update(
            p.detach().numpy(), m.numpy(), v.numpy(), rows.numpy(), values.numpy(),
            scratch["dense_rows"], scratch["dense_pos"], scratch["dense_starts"], factors,
            scratch["slot"], scratch["uniq"], scratch["gsum"], scratch["ends"],
        )  # fmt: skip
        return True


def _adam_scratch(rows: int, width: int, parts: int, n: int, dense) -> dict[str, np.ndarray]:
    """``kernels.adam_update``'s arrays for a table of ``rows`` rows: the dense rows, each
    row's position among them (``dense``: ``TableAdam._dense``'s entry) and where each
    block of ``kernels.DENSE_ROWS`` table rows starts among them, a slot map row -> scratch
    position (the kernel leaves it all -1), the distinct rows and their summed gradients for
    ``n`` lookups and the ``parts`` threads' first positions there. Kept between steps:
    fresh pages every step cost more than the update."""
    if dense is None:
        dense_rows = np.arange(rows, dtype=np.int64)
        dense_pos = dense_rows
    else:
        dense_rows = dense[0].cpu().numpy().astype(np.int64)
        dense_pos = dense[1].cpu().numpy().astype(np.int64)
    from model import kernels  # (imported where the kernels run: numba loads with it)

    block = dense_rows // kernels.DENSE_ROWS
    starts = np.flatnonzero(np.diff(block, prepend=-1)) if len(block) else np.empty(0, np.int64)
    return {
        "dense_rows": dense_rows,
        "dense_pos": dense_pos,
        "dense_starts": np.append(starts, len(dense_rows)).astype(np.int64),
        "slot": np.full(rows, -1, dtype=np.int32),
        "uniq": np.empty(n, dtype=np.int64),
        "gsum": np.empty((n, width), dtype=np.float32),
        "ends": np.empty(parts, dtype=np.int64),
    }


def _adam(p, m, v, g, step_size, bc2_sqrt, b1, b2, eps, l2) -> None:
    """One Adam update of whole tensors, in torch.optim.Adam's order of operations."""
    if l2:
        g = g.add(p.float(), alpha=l2)
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (v.sqrt() / bc2_sqrt).add_(eps)
    if p.dtype == torch.float32:
        p.addcdiv_(m, denom, value=-step_size)
    else:
        p.copy_(p.float().addcdiv_(m, denom, value=-step_size))


def _adam_rows(p, m, v, rows: torch.Tensor, g: torch.Tensor, coef: tuple) -> None:
    """``_adam`` on the (unique) ``rows`` of ``p``, ``m``, ``v``, with their gradients ``g``."""
    w, mr, vr = p.index_select(0, rows).float(), m.index_select(0, rows), v.index_select(0, rows)
    _adam(w, mr, vr, g, *coef)
    m.index_copy_(0, rows, mr)
    v.index_copy_(0, rows, vr)
    p.index_copy_(0, rows, w.to(p.dtype))


# a fused Adam step on the CPU runs on one thread up to this many parameters: about 1.4 ns an
# element on one thread, against 10-80 us to wake the others per tensor (_fused_adam_step)
SERIAL_ADAM_MAX_ELEMENTS = 1 << 20


def optimizer_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()`` without torch.optim's per-call Python where that changes nothing: the
    same updates, bit for bit. ``torch.optim.Optimizer.step`` runs inside a wrapper (a
    profiler range, the step hooks) and fused Adam rebuilds its lists of tensors, grouped
    by device and dtype, every call: together about 0.1 ms a step, a few percent of a step
    at batch 256. Here ``TableAdam`` and ``SparseAdagrad`` run ``update`` and a fused
    ``torch.optim.Adam``/``AdamW`` calls its fused kernel with the arguments its ``step``
    would pass. Anything else, and any optimizer while step hooks are registered, takes
    ``opt.step()``."""
    if _has_step_hooks(opt):
        opt.step()
    elif isinstance(opt, (TableAdam, SparseAdagrad)):
        opt.update()
    elif not (isinstance(opt, torch.optim.Adam) and _fused_adam_step(opt)):
        opt.step()


def _has_step_hooks(opt: torch.optim.Optimizer) -> bool:
    from torch.optim import optimizer as torch_optimizer

    return bool(
        opt._optimizer_step_pre_hooks
        or opt._optimizer_step_post_hooks
        or torch_optimizer._global_optimizer_pre_hooks
        or torch_optimizer._global_optimizer_post_hooks
    )


def _fused_adam_step(opt: torch.optim.Adam) -> bool:
    """``opt.step()`` of a ``fused=True`` Adam/AdamW as ``torch.optim.adam._fused_adam``
    makes it (``_foreach_add_`` on the steps, then ``torch._fused_adam_`` or
    ``_fused_adamw_``) on one device and dtype; False, with nothing done, where that is not
    the whole of its step: the first step (no state yet), options that change the call
    (amsgrad, maximize, capturable, differentiable, a tensor lr, a gradient scaler's
    inputs), sparse or complex gradients, several devices or dtypes.

    On a CPU with at most ``SERIAL_ADAM_MAX_ELEMENTS`` parameters it runs on one thread:
    the fused kernel opens a parallel region per tensor, and waking the other threads for
    each costs more than the update of a DeepFM's MLP (about 95k parameters: 0.13 ms on
    one thread, 0.76 ms on two on this project's 2-core VM). Each element's update is the
    same on any number of threads, so the weights are bit for bit the same."""
    if getattr(opt, "grad_scale", None) is not None or getattr(opt, "found_inf", None) is not None:
        return False
    calls = []
    kind = None
    for group in opt.param_groups:
        if (
            not group.get("fused")
            or group["amsgrad"]
            or group["maximize"]
            or group["capturable"]
            or group["differentiable"]
            or isinstance(group["lr"], torch.Tensor)
            or isinstance(group["betas"][0], torch.Tensor)
            or isinstance(group["betas"][1], torch.Tensor)
        ):
            return False
        params, grads, avgs, sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = opt.state.get(p)
            grad = p.grad
            if not state or grad.is_sparse or p.is_complex():
                return False
            if kind is None:
                kind = (p.device, p.dtype)
            elif (p.device, p.dtype) != kind or grad.device != p.device:
                return False
            params.append(p)
            grads.append(grad)
            avgs.append(state["exp_avg"])
            sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        calls.append((group, params, grads, avgs, sqs, steps))
    numel = sum(p.numel() for _, params, *_ in calls for p in params)
    serial = (
        kind is not None
        and kind[0].type == "cpu"
        and numel <= SERIAL_ADAM_MAX_ELEMENTS
        and threads.openmp_backend()
    )
    count = torch.get_num_threads()
    if serial and count > 1:
        torch.set_num_threads(1)
    try:
        _fused_adam_calls(calls)
    finally:
        if serial and count > 1:
            torch.set_num_threads(count)
    return True


def _fused_adam_calls(calls) -> None:
    with torch.no_grad():  # as torch.optim.Adam.step (not differentiable)
        for group, params, grads, avgs, sqs, steps in calls:
            if not params:
                continue
            torch._foreach_add_(steps, 1)
            decoupled = group["decoupled_weight_decay"]
            fused = torch._fused_adamw_ if decoupled else torch._fused_adam_
            fused(
                params, grads, avgs, sqs, [], steps,
                amsgrad=False, lr=group["lr"], beta1=group["betas"][0],
                beta2=group["betas"][1], weight_decay=group["weight_decay"], eps=group["eps"],
                maximize=False, grad_scale=None, found_inf=None,
            )  # fmt: skip


def build_sparse_optimizer(
    params, cfg: SparseOptimizerConfig, field_rows: list[list[int]] | None = None
) -> torch.optim.Optimizer:
    """The tables' optimizer; ``field_rows`` (per table, the rows of each field in order)
    tells ``adam`` which fields are small enough to update densely."""
    if cfg.type in ("adam", "lazy_adam"):
        return TableAdam(
            params,
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            l2=cfg.embedding_regularizer,
            lazy=cfg.type == "lazy_adam",
            dense_max_rows=cfg.dense_max_rows,
            field_rows=field_rows,
        )
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

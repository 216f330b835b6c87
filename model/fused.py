"""DeepFM's CPU training forward through the compiled kernels of ``model.kernels``.

``DeepFM.forward`` is the reference computation. On a CPU with sparse table gradients the
trainer may instead run ``FusedForward``, which computes the same logits (and, through its
autograd function, the same gradients) with the embedding side of DeepFM and the deep MLP's
first ``Linear`` in a few kernel passes (docs/ARCHITECTURE.md, "The model"), the later
``Linear -> ReLU`` layers' bias and activation in one pass each (``_LinearReLU``) and, for
one class without a final MLP, the output layer and the sums in one (``_FusedLogits``):
each saves PyTorch's parallel regions, which cost a thread's wake-up apiece. It is the one
seam: ``FusedForward.attach(model)`` returns it when it applies, else None, and the caller
then trains through ``model`` itself. Evaluation, export and GPUs always use the model.

Two plans drive the kernels, both computed once and cached:

- ``TableLayout`` (per model): the table's fields, which of them feed the FM, the wide sum
  and the deep MLP, the first layer's width and whether it is ``Linear -> ReLU``;
- ``BatchPlan`` (per batch shape): which small-vocabulary fields have their first-layer
  product computed per table row instead of per sample (see ``_FusedFirstLayer``), and the
  column bookkeeping that follows from that choice.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model import kernels
from model.deepfm import DeepFM
from model.modules import MLP

# the per-value fields may hold at least this many table rows (or a quarter of the batch)
MIN_VALUE_BUDGET = 64
_EMPTY = torch.empty(0, 0)
_EMPTY_BITS = np.empty((0, 0), np.uint16)  # no bfloat16 array (the kernels' uint16 bits)
_NO_BIAS = torch.empty(0)
# the first layer's output (and its gradient) dtypes the kernels read and write directly
KERNEL_DTYPES = (torch.float32, torch.bfloat16)


_NO_CONTEXT = contextlib.nullcontext()


def _without_autocast():
    """Autocast off inside: its context where it is on, else nothing (entering a disabled
    autocast costs a few microseconds, several times a step)."""
    if torch.is_autocast_enabled("cpu"):
        return torch.autocast("cpu", enabled=False)
    return _NO_CONTEXT


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's memory as numpy: bfloat16 (which numpy lacks) as its uint16 bits,
    which the kernels read and write as bfloat16 (``kernels.load`` / ``kernels.store``)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def split_first_linear(mlp: MLP) -> tuple[nn.Linear, nn.Sequential, nn.Sequential | None]:
    """An MLP as its first ``Linear`` and the rest, sharing its modules: ``mlp(x) ==
    rest(linear(x))``. The third item, when the first layer is ``Linear -> ReLU`` (no
    normalisation between), is the rest after that ReLU: ``mlp(x) ==
    after_relu(relu(linear(x)))``; else None."""
    first, others = list(mlp.mlp[0]), list(mlp.mlp)[1:]
    relu = len(first) > 1 and type(first[1]) is nn.ReLU
    after_relu = nn.Sequential(*first[2:], *others) if relu else None
    return first[0], nn.Sequential(*first[1:], *others), after_relu


@dataclass(frozen=True)
class TableLayout:
    """What the kernels need to know about a model with one embedding table (``F`` fields,
    single-valued first): fixed for the model's life."""

    dim: int  # the table's deep part
    wide_dim: int  # the table's wide part
    deep_fields: tuple[int, ...]  # the deep group's fields, in deep-input order
    fm_mask: np.ndarray  # [F] bool: the field feeds the FM
    wide_mask: np.ndarray  # [F] bool: the field feeds the wide sum
    offsets: tuple[int, ...]  # [F] each field's first table row
    sizes: tuple[int, ...]  # [F] each field's number of table rows
    num_sparse: int  # single-valued fields
    num_dense: int  # dense columns of the deep input (after the embeddings)
    hidden: int  # the first layer's width
    first_is_relu: bool  # the first layer is Linear -> ReLU
    fm_summed: bool  # the logits take the FM output summed (no final MLP): [B, 1] is enough

    @classmethod
    def of(cls, model: DeepFM) -> TableLayout | None:
        """The layout of ``model``, or None when it is not one the kernels serve: one table,
        every multi-valued FM field also in the deep group (its pooled embedding is read
        back from the deep input). So an FM field outside the deep group is single-valued,
        and its one lookup is column ``f`` of the lookups (single-valued fields come
        first)."""
        if len(model.tables) != 1:
            return None
        table = model.tables[0]
        deep_fields = model.deep_fields[0].cols_list
        fm_fields = model.fm_fields.cols_list
        if any(f >= table.num_sparse and f not in deep_fields for f in fm_fields):
            return None
        fm_mask = np.zeros(table.num_fields, dtype=np.bool_)
        fm_mask[fm_fields] = True
        wide_mask = np.zeros(table.num_fields, dtype=np.bool_)
        wide_mask[model.wide_fields[0].cols_list] = True
        offsets = table.sparse_offsets.tolist() + table.multi_offsets.tolist()
        ends = [*offsets[1:], table.pad_row]
        linear, _, after_relu = split_first_linear(model.deep)
        return cls(
            dim=table.dim,
            wide_dim=model.wide_dim,
            deep_fields=tuple(deep_fields),
            fm_mask=fm_mask,
            wide_mask=wide_mask,
            offsets=tuple(offsets),
            sizes=tuple(e - o for o, e in zip(offsets, ends, strict=True)),
            num_sparse=table.num_sparse,
            num_dense=len(model.dense_fields),
            hidden=linear.out_features,
            first_is_relu=after_relu is not None,
            fm_summed=model.final is None,
        )


@dataclass(frozen=True)
class BatchPlan:
    """The kernels' plan for one batch shape (``B`` samples, ``K`` lookups each). The
    ``small`` fields are single-valued fields of few table rows whose first-layer product is
    computed once per table row (their "value rows", field by field); ``x`` is the matrix
    product's input: the other deep fields' embeddings, then the dense columns."""

    relu: bool  # the first layer's ReLU runs in the kernels (it is Linear -> ReLU)
    deep_pos: np.ndarray  # [F] each field's slot in x (-1: small or not in deep)
    x_cols: torch.Tensor  # x's columns among the deep input's (rows of W1^T)
    small_lookup: np.ndarray  # [S] the small fields (each is its own lookup column)
    small_shift: np.ndarray  # [S] table row -> value row, per small field
    value_rows: np.ndarray  # [V] the table row of each value row
    value_col: np.ndarray  # [V] its field's first deep-input column (-1: not in deep)
    deep_fields: np.ndarray  # the small fields in deep (positions in small_lookup)
    deep_lo: np.ndarray  # their first value row
    deep_hi: np.ndarray  # their value rows' end
    deep_col: np.ndarray  # their first deep-input column
    seg_lo: np.ndarray  # [S] the part of a sample's gradient row [first layer | FM | FM]
    seg_hi: np.ndarray  # [S] each small field sums per value (see kernels.value_sums)
    wide_fields: np.ndarray  # the small fields in the wide group (positions in small_lookup)
    lookups: np.ndarray  # the lookups whose gradient is written per sample (not small)

    @classmethod
    def build(cls, layout: TableLayout, batch: int, lookups: int, min_budget: int) -> BatchPlan:
        """Choose the small fields: smallest first, while their rows together stay a small
        fraction of the batch (projecting V rows costs like V samples)."""
        dim, sizes, offsets = layout.dim, layout.sizes, layout.offsets
        budget = max(batch // 4, min_budget)
        small, rows_used = [], 0
        for f in sorted(range(layout.num_sparse), key=lambda f: sizes[f]):
            if rows_used + sizes[f] > budget:
                break
            small.append(f)
            rows_used += sizes[f]
        small.sort()
        deep_index = {f: i for i, f in enumerate(layout.deep_fields)}
        big_deep = [f for f in layout.deep_fields if f not in small]
        deep_pos = np.full(len(sizes), -1, dtype=np.int64)
        deep_pos[big_deep] = np.arange(len(big_deep))
        w1_cols = [deep_index[f] * dim + d for f in big_deep for d in range(dim)]
        dense_start = len(layout.deep_fields) * dim
        dense_cols = list(range(dense_start, dense_start + layout.num_dense))
        bases = np.cumsum([0] + [sizes[f] for f in small])
        small_set = set(small)
        hidden, ext = layout.hidden, layout.hidden + 2 * dim
        small_deep = [i for i, f in enumerate(small) if f in deep_index]
        seg = {
            (True, True): (0, ext),
            (True, False): (0, hidden),
            (False, True): (hidden, ext),
            (False, False): (0, 0),
        }
        segments = [seg[(f in deep_index, bool(layout.fm_mask[f]))] for f in small]
        return cls(
            relu=layout.first_is_relu,
            deep_pos=deep_pos,
            x_cols=torch.tensor(w1_cols + dense_cols, dtype=torch.long),
            small_lookup=np.array(small, dtype=np.int64),
            small_shift=np.array(
                [int(bases[i]) - offsets[f] for i, f in enumerate(small)], dtype=np.int64
            ),
            value_rows=np.array(
                [r for f in small for r in range(offsets[f], offsets[f] + sizes[f])],
                dtype=np.int64,
            ),
            value_col=np.repeat(
                [deep_index[f] * dim if f in deep_index else -1 for f in small],
                [sizes[f] for f in small],
            ).astype(np.int64),
            deep_fields=np.array(small_deep, dtype=np.int64),
            deep_lo=bases[small_deep].astype(np.int64),
            deep_hi=bases[[i + 1 for i in small_deep]].astype(np.int64),
            deep_col=np.array([deep_index[small[i]] * dim for i in small_deep], dtype=np.int64),
            seg_lo=np.array([lo for lo, _ in segments], dtype=np.int64),
            seg_hi=np.array([hi for _, hi in segments], dtype=np.int64),
            wide_fields=np.flatnonzero(layout.wide_mask[small]).astype(np.int64),
            lookups=np.array([k for k in range(lookups) if k not in small_set], dtype=np.int64),
        )


class FusedForward:
    """``(sparse [B, F_s], multi [B, F_m, L], dense [B, F_d]) -> logits [B, C]``: a DeepFM's
    training forward with the embedding side and the deep MLP's first ``Linear`` in the
    kernels, then the rest of the deep MLP and ``DeepFM.logits`` as PyTorch modules (the
    model's own, so the parameters and their gradients are the model's).

    Build it with ``attach``; ``compile`` ``torch.compile``-s the part after the kernels.
    ``min_value_budget`` bounds how many table rows the per-value fields may hold.
    """

    def __init__(
        self,
        model: DeepFM,
        layout: TableLayout,
        *,
        compile: bool = False,
        min_value_budget: int = MIN_VALUE_BUDGET,
    ) -> None:
        self.model = model
        self.layout = layout
        self.min_value_budget = min_value_budget
        self.first_linear, self.after_linear, self.after_relu = split_first_linear(model.deep)
        self.batch_plans: dict[tuple[int, int], BatchPlan] = {}
        self._lookup_fields: dict[int, np.ndarray] = {}
        self._finish = torch.compile(self.finish, dynamic=False) if compile else self.finish
        # the later layers when each is Linear -> ReLU: the products in PyTorch, bias and
        # ReLU (and their backward) in the kernels (eager only, as the logits below)
        self.relu_layers = None if compile else _relu_layers(self.after_relu)
        # the logits of one class without a final MLP: the output layer and the sums in one
        # kernel (eager only: a compiled finish keeps the model's own logits)
        output = model.output
        self.fused_logits = (
            not compile
            and layout.fm_summed
            and isinstance(output, nn.Linear)
            and output.out_features == 1
        )

    @classmethod
    def attach(
        cls, model: DeepFM, *, compile: bool = False, min_value_budget: int = MIN_VALUE_BUDGET
    ) -> FusedForward | None:
        """The fused forward of ``model``, or None where it does not apply: the kernels do
        not compile here, the table is not a float32 CPU table with sparse gradients, or
        the layout is not one they serve (``TableLayout.of``)."""
        weight = model.tables[0].embedding.weight
        if (
            weight.device.type != "cpu"
            or weight.dtype != torch.float32
            or not model.tables[0].embedding.sparse
        ):
            return None
        layout = TableLayout.of(model)
        if layout is None or not kernels.available():
            return None
        return cls(model, layout, compile=compile, min_value_budget=min_value_budget)

    def __call__(
        self, sparse: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        y_wide, y_fm, h1, relu = self.first_layer(sparse, multi, dense)
        return self._finish(y_wide, y_fm, h1, relu)

    def first_layer(
        self, sparse: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """``y_wide [B, 1]``, ``y_fm [B, D]`` (``[B, 1]``, summed, when the logits sum it:
        ``TableLayout.fm_summed``), the first layer's output ``h1 [B, H]`` and whether ``h1``
        has been through its ReLU."""
        table = self.model.tables[0]
        rows, pool_weight, field = self.lookup_rows(sparse, multi)
        plan = self.batch_plan(*rows.shape)
        linear = self.first_linear
        h1, y_fm, y_wide = _FusedFirstLayer.apply(
            table.embedding.weight,
            linear.weight,
            linear.bias,
            rows,
            pool_weight,
            self.model.dense_fields(dense),
            field,
            self.layout,
            plan,
        )
        return y_wide, y_fm, h1, plan.relu

    def finish(
        self, y_wide: torch.Tensor, y_fm: torch.Tensor, h1: torch.Tensor, relu: bool
    ) -> torch.Tensor:
        """The rest of the deep MLP after its first ``Linear`` (``relu``: and its ReLU), then
        ``DeepFM.logits``: ``[B, 1], [B, D], [B, H] -> [B, C]``."""
        if relu and self.relu_layers is not None:
            y_deep = h1
            for linear in self.relu_layers:
                y_deep = _LinearReLU.apply(y_deep, linear.weight, linear.bias)
        else:
            y_deep = (self.after_relu if relu else self.after_linear)(h1)
        if self.fused_logits:
            output = self.model.output
            return _FusedLogits.apply(y_deep, output.weight, output.bias, y_wide, y_fm)
        return self.model.logits(y_wide, y_fm, y_deep)

    def batch_plan(self, batch: int, lookups: int) -> BatchPlan:
        """The (cached) ``BatchPlan`` of a batch of ``batch`` samples, ``lookups`` each."""
        key = (batch, lookups)
        plan = self.batch_plans.get(key)
        if plan is None:
            plan = BatchPlan.build(self.layout, batch, lookups, self.min_value_budget)
            self.batch_plans[key] = plan
        return plan

    def lookup_rows(
        self, sparse: torch.Tensor, multi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
        """The table rows a batch looks up, ``rows [B, K]`` (the single-valued fields, then
        each multi-valued field's ``L`` values, padding -> the zero pad row), their pooling
        weights ``[B, K]`` (None when every field is single-valued) and each lookup's field
        ``[K]``."""
        table = self.model.tables[0]
        parts, weights = [], []
        if table.num_sparse > 0:  # table.sparse_rows, in numpy: one thread, no wake-up
            idx = sparse if table.sparse_all else sparse.index_select(1, table.sparse_cols)
            parts.append(torch.from_numpy(np.add(idx.numpy(), table.sparse_offsets.numpy())))
        length = 0
        if table.num_fields > table.num_sparse:
            rows, pool = table.multi_rows(multi)
            length = rows.shape[2]
            parts.append(rows.flatten(1))
            if table.num_sparse > 0:
                weights.append(torch.ones(rows.shape[0], table.num_sparse, device=rows.device))
            weights.append(pool.flatten(1))
        rows = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        pool_weight = None if not weights else torch.cat(weights, dim=1)
        field = self._lookup_fields.get(length)
        if field is None:
            field = np.concatenate(
                [
                    np.arange(table.num_sparse),
                    np.repeat(np.arange(table.num_sparse, table.num_fields), length),
                ]
            ).astype(np.int64)
            self._lookup_fields[length] = field
        return rows.contiguous(), pool_weight, field


class _FusedFirstLayer(torch.autograd.Function):
    """The embedding side of DeepFM and the deep MLP's first ``Linear`` on CPU, through
    ``model.kernels``: table rows -> (first-layer output ``h1 [B, H]``, FM output
    ``[B, D]``, wide sum ``[B, 1]``).

    ``h1 = b + x W^T`` splits by field. The fields with few table rows (``small``) are
    projected once per row, ``P_v = e_v W_f^T``, and ``h1`` sums the projected rows of each
    sample's values; the other fields' embeddings and the dense columns form ``x`` and go
    through one matrix product. Backward mirrors it: the gradient of ``h1`` is summed per
    value of a small field (``G``), so ``dW_f = G^T E_f`` and the rows' gradients ``G W_f``
    cost per table row, not per sample; the FM and wide gradients of those fields are
    summed per value too. The table's gradient is a sparse COO tensor (per-lookup rows for
    the other fields, per-value rows for the small ones), so the sparse optimizers and the
    multi-process gradient exchange see what the PyTorch path gives them.

    With ``plan.relu`` (the first layer is ``Linear -> ReLU``) ``h1`` is returned through
    the ReLU and the backward applies its mask while summing per value: the MLP then
    continues after its first activation (``split_first_linear``'s ``after_relu``).

    Under autocast (bf16 / fp16) the two matrix products over ``x`` run in its dtype, as the
    ``Linear`` would run them, and ``h1`` is returned in it; the per-value projections, the
    sums and the table's gradient stay float32 (few rows, and the table is float32).
    """

    @staticmethod
    def forward(ctx, weight, w1, b1, rows, pool_weight, dense, field, layout, plan):
        # under autocast the matrix products run in its dtype, as they would in the Linear
        mm_dtype = _mm_dtype()
        ctx.mm_dtype = mm_dtype
        with _without_autocast():
            kernels.set_threads(torch.get_num_threads())
            batch, dim = rows.shape[0], layout.dim
            table = weight.detach()
            w1 = w1.detach().float()
            hidden = w1.shape[0]
            dense = dense.float().contiguous()
            x = torch.empty(batch, len(plan.x_cols))  # big fields, then dense columns
            s = torch.empty(batch, dim)
            fm = torch.empty(batch, 1 if layout.fm_summed else dim)
            wide = torch.empty(batch, 1)
            small_idx = torch.empty(batch, len(plan.small_lookup), dtype=torch.long)
            pool = _EMPTY if pool_weight is None else pool_weight.float().contiguous()
            # under bf16 autocast the gather also writes x in bfloat16 for the products
            narrow = mm_dtype == torch.bfloat16
            x_mm = torch.empty(batch, x.shape[1], dtype=mm_dtype) if narrow else None
            kernels.pooled_forward(
                table.numpy(), rows.numpy(), field, pool.numpy(), plan.deep_pos,
                layout.fm_mask, layout.wide_mask, dim, dense.numpy(),
                plan.small_lookup, plan.small_shift, layout.num_sparse, x.numpy(),
                _numpy(x_mm) if narrow else _EMPTY_BITS, s.numpy(), fm.numpy(),
                wide.numpy(), small_idx.numpy(),
            )  # fmt: skip
            if not narrow:
                x_mm = x.to(mm_dtype)
            w1t = w1.t().contiguous()  # [in, H]
            w1t_x = w1t.index_select(0, plan.x_cols)  # [x columns, H]
            relu = plan.relu
            # the matrix product over x (in the autocast dtype: as the Linear would run it),
            # then each sample adds the bias and its values' projected rows in float32, and
            # the ReLU when the first layer has one; under autocast h1 returns in its dtype
            w1t_x_mm = w1t_x.to(mm_dtype)
            h1 = torch.mm(x_mm, w1t_x_mm)
            proj = torch.empty(len(plan.value_rows), hidden)
            kernels.project_values(
                table.numpy(), dim, plan.value_rows, plan.value_col, w1t.numpy(), proj.numpy()
            )
            h1_k = h1 if h1.dtype in KERNEL_DTYPES else h1.float()  # what the kernels read
            bias = _NO_BIAS if b1 is None else b1.detach().float().contiguous()
            kernels.add_values(
                proj.numpy(),
                small_idx.numpy(),
                plan.deep_fields,
                bias.numpy(),
                _numpy(h1_k),
                relu,
            )
            h1 = h1_k.to(mm_dtype)
        ctx.save_for_backward(
            rows, pool, x, x_mm, s, small_idx, w1t, w1t_x_mm, h1 if relu else None
        )
        ctx.field, ctx.layout, ctx.plan = field, layout, plan
        ctx.table, ctx.has_bias, ctx.relu = weight, b1 is not None, relu
        return h1, fm, wide

    @staticmethod
    def backward(ctx, grad_h1, grad_fm, grad_wide):
        with _without_autocast():
            return _FusedFirstLayer._backward(ctx, grad_h1, grad_fm, grad_wide)

    @staticmethod
    def _backward(ctx, grad_h1, grad_fm, grad_wide):
        rows, pool, x, x_mm, s, small_idx, w1t, w1t_x_mm, act = ctx.saved_tensors
        layout, plan = ctx.layout, ctx.plan
        dim, wide_dim = layout.dim, layout.wide_dim
        batch, hidden = rows.shape[0], w1t.shape[1]
        table = ctx.table.detach()
        mm = ctx.mm_dtype
        if grad_fm is None:
            gfm = torch.zeros(batch, 1)
        elif grad_fm.stride(1) == 0:  # the same for every component (the FM output summed)
            gfm = grad_fm[:, :1].float().contiguous()
        else:
            gfm = grad_fm.float().contiguous()
        gwide = torch.zeros(batch, 1) if grad_wide is None else grad_wide.float().contiguous()
        kernels.set_threads(torch.get_num_threads())
        lookups, value_rows = plan.lookups, plan.value_rows
        n_lookup = batch * len(lookups)
        values = torch.empty(n_lookup + len(value_rows), dim + wide_dim)
        indices = torch.empty(n_lookup + len(value_rows), dtype=torch.long)
        grad_w1 = torch.empty(hidden, w1t.shape[0])  # every column is written below
        # the small fields' per-value sums first (in float32): they also write the first
        # layer's output gradient (through the ReLU's mask) that the matrix products use,
        # into gh: in bfloat16 under bf16 autocast, else float32 (cast after for fp16)
        parts = min(torch.get_num_threads(), 4)
        direct = mm in KERNEL_DTYPES
        grad = grad_h1.to(mm if direct else torch.float32).contiguous()
        act = grad if act is None else (act if direct else act.float())
        gh = torch.empty(batch, hidden, dtype=torch.bfloat16 if mm == torch.bfloat16 else None)
        g_sum = torch.empty(parts, len(value_rows), hidden + 2 * dim)
        w_sum = torch.empty(parts, len(value_rows))
        b_sum = torch.empty(parts, hidden)
        bias_field = 0 if len(plan.deep_fields) else -1
        kernels.value_sums(
            small_idx.numpy(), plan.seg_lo, plan.seg_hi, plan.wide_fields,
            _numpy(grad), _numpy(act), ctx.relu, gfm.numpy(), s.numpy(), gwide.numpy(),
            _numpy(gh), g_sum.numpy(), w_sum.numpy(), b_sum.numpy(),
            ctx.has_bias and bias_field < 0,
        )  # fmt: skip
        grad_b1 = torch.empty(hidden if ctx.has_bias else 0)
        kernels.value_grads(
            value_rows, plan.value_col, plan.deep_lo, plan.deep_hi,
            plan.deep_col, table.numpy(), w1t.numpy(), g_sum.numpy(), w_sum.numpy(),
            b_sum.numpy(), bias_field, values[n_lookup:].numpy(), grad_w1.numpy(),
            grad_b1.numpy(), np.empty((len(plan.deep_fields) * dim, hidden), np.float32),
        )  # fmt: skip
        # the other columns' products in the autocast dtype (float32 without it)
        gh = gh.to(mm)  # (fp16 autocast: from float32)
        if x.shape[1] > 0:  # x^T gh, then transposed: faster than gh^T x for few columns
            grad_w1.index_copy_(1, plan.x_cols, (x_mm.t() @ gh).t().float())
        # the gradient of x's embedding columns only (the dense columns after them take
        # none), read in bfloat16 as it comes, else in float32
        gx = gh @ w1t_x_mm[: x.shape[1] - layout.num_dense].t()
        gx = (gx if gx.dtype in KERNEL_DTYPES else gx.float()).contiguous()
        kernels.pooled_backward(
            rows.numpy(), ctx.field, pool.numpy(), plan.deep_pos, layout.fm_mask,
            layout.wide_mask, dim, wide_dim, table.numpy(), x.numpy(),
            s.numpy(), _numpy(gx), gfm.numpy(), gwide.numpy(), lookups,
            values[:n_lookup].numpy(), indices[:n_lookup].numpy(),
        )  # fmt: skip
        indices[n_lookup:] = torch.from_numpy(value_rows)
        grad_table = torch.sparse_coo_tensor(
            indices[None], values, ctx.table.shape, check_invariants=False
        )
        grads = (grad_table, grad_w1, grad_b1 if ctx.has_bias else None)
        return (*grads, None, None, None, None, None, None)


def _relu_layers(rest: nn.Sequential | None) -> list[nn.Linear] | None:
    """The ``Linear`` of each of the MLP's layers after its first ReLU when every one is a
    plain ``Linear -> ReLU`` (no normalisation, other activation or dropout), else None."""
    if rest is None:
        return None
    layers = []
    for block in rest:
        parts = list(block) if isinstance(block, nn.Sequential) else [block]
        if len(parts) != 2 or type(parts[0]) is not nn.Linear or type(parts[1]) is not nn.ReLU:
            return None
        layers.append(parts[0])
    return layers


def _mm_dtype() -> torch.dtype:
    """The dtype a ``Linear`` runs its products in here: autocast's, else float32."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32


class _LinearReLU(torch.autograd.Function):
    """``relu(x W^T + b)``: one of the MLP's later layers, its matrix products in PyTorch
    (in autocast's dtype, as the ``Linear`` would run them), the bias and ReLU in one
    serial pass after (``kernels.bias_relu``) and, backward, the ReLU's mask with the
    bias's gradient in one (``kernels.relu_grad_bias``). PyTorch runs the bias copy, the
    ReLU, its mask and the bias's sum as four parallel regions a layer, each costing more
    to start (waking the other threads) than its work at these sizes."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        mm = _mm_dtype()
        with _without_autocast():
            xm, wm = x.to(mm), weight.to(mm)
            y = torch.mm(xm, wm.t())
            y_k = y if y.dtype in KERNEL_DTYPES else y.float()  # what the kernel reads
            b = _NO_BIAS if bias is None else bias.detach().float().contiguous()
            kernels.bias_relu(_numpy(y_k), b.numpy())
            y = y_k.to(mm)
        ctx.save_for_backward(xm, wm, y)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        xm, wm, y = ctx.saved_tensors
        with _without_autocast():
            direct = y.dtype in KERNEL_DTYPES
            g = grad.to(y.dtype if direct else torch.float32).contiguous()
            y_k = y if direct else y.float()
            masked = torch.empty_like(g)
            grad_b = torch.empty(y.shape[1])
            kernels.relu_grad_bias(_numpy(g), _numpy(y_k), _numpy(masked), grad_b.numpy())
            masked = masked.to(y.dtype)
            grad_x = masked @ wm if ctx.needs_input_grad[0] else None
            grad_w = masked.t() @ xm
        return grad_x, grad_w, grad_b if ctx.has_bias else None


class _FusedLogits(torch.autograd.Function):
    """``DeepFM.logits`` of one class without a final MLP, ``(y_wide + y_fm) + output(y_deep)``
    with ``y_fm`` already summed (``[B, 1]``), as one serial kernel each way
    (``kernels.output_forward`` / ``output_backward``). The output layer's matrix products
    are ``[B, H] x [H, 1]`` and its transposes: three parallel regions in PyTorch, each
    costing more to start (waking the other threads) than the work. Under autocast the
    deep output comes in its dtype and its gradient goes back in it; the sums are float32
    (the products ``Linear`` would run in bfloat16, rounded, here are not)."""

    @staticmethod
    def forward(ctx, y_deep, weight, bias, y_wide, y_fm):
        with _without_autocast():
            y = (y_deep if y_deep.dtype in KERNEL_DTYPES else y_deep.float()).contiguous()
            w = weight.detach().float().reshape(-1).contiguous()
            b = torch.zeros(1) if bias is None else bias.detach().float().reshape(1)
            out = torch.empty(y.shape[0], 1)
            kernels.output_forward(
                _numpy(y), w.numpy(), b.numpy(), y_wide.detach().float().contiguous().numpy(),
                y_fm.detach().float().contiguous().numpy(), out.numpy(),
            )  # fmt: skip
        ctx.save_for_backward(y, w)
        ctx.deep_dtype, ctx.weight_shape = y_deep.dtype, weight.shape
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        y, w = ctx.saved_tensors
        g = grad.float().contiguous()
        gy = torch.empty_like(y)
        gw, gb = torch.empty(w.shape[0]), torch.empty(1)
        kernels.output_backward(_numpy(y), w.numpy(), g.numpy(), _numpy(gy), gw.numpy(), gb.numpy())
        return (
            gy.to(ctx.deep_dtype),
            gw.view(ctx.weight_shape),
            gb if ctx.has_bias else None,
            g,
            g,
        )

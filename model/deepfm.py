"""DeepFM with TorchEasyRec's semantics (docs/ARCHITECTURE.md, "The model").

Inputs are the encoder's tensors (see ``model.features``):
``sparse [B, F_s] int64``, ``multi [B, F_m, L] int64`` (-1 = padding), ``dense [B, F_d] float``.

    y_wide = sum over wide features and wide_embedding_dim components      [B, 1]
    y_fm   = FM(fm group embeddings [B, N, D])                              [B, D]
    y_deep = deep_MLP(cat(deep group embeddings, deep dense numbers))      [B, H]
    no final:   logits = y_wide + sum_d y_fm + Linear(y_deep)               [B, C]
    with final: logits = Linear(final_MLP(cat(y_wide, y_fm, y_deep)))       [B, C]

Embeddings live in one concatenated table per embedding dim (per-feature row offsets, one
gather for all fields of that dim); the wide part has its own table of
``wide_embedding_dim``. A feature in both the fm and deep groups shares its rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.config import FeatureGroups, ModelConfig
from model.features import InputSpec, SparseInput
from model.modules import MLP, FactorizationMachine
from model.modules.init import parse_init_fn


class EmbeddingTable(nn.Module):
    """Several features' embeddings in one table; each row is ``[deep part (dim) | wide part
    (wide_dim)]``, so one gather serves the deep, fm and wide groups.

    ``forward(sparse [B, F_s], multi [B, F_m, L]) -> [B, F_s + F_m, dim + wide_dim]``:
    single-valued lookups, then pooled (sum or mean) multi-valued lookups. The two parts of a
    row are separate parameters of the model that share storage: elementwise optimizers
    (Adagrad, Adam, SGD) update them exactly as two tables; row-wise Adagrad keeps one
    accumulator for the whole row. Padding ids (-1) of multi-valued features are
    masked out of the pooling.
    """

    def __init__(
        self,
        dim: int,
        wide_dim: int,
        sparse: list[tuple[int, SparseInput]],
        multi: list[tuple[int, SparseInput]],
        num_sparse_inputs: int,
        wide_init_fn=None,
        sparse_gradients: bool = True,
    ) -> None:
        super().__init__()
        feats = [s for _, s in sparse] + [m for _, m in multi]
        offsets = [0]
        for f in feats:
            offsets.append(offsets[-1] + f.num_embeddings)
        self.dim = dim
        self.field_names = [f.name for f in feats]
        self.num_fields = len(feats)
        self.num_sparse = len(sparse)
        # Padding (-1) looks up a last, unused row with weight 0 in the pooling, so its
        # gradient is always zero (cheaper than nn.Embedding's padding_idx, which filters
        # the sparse gradient; and no real row is touched, so momentum optimizers leave
        # every real row alone).
        self.pad_row = offsets[-1]
        self.embedding = nn.Embedding(offsets[-1] + 1, dim + wide_dim, sparse=sparse_gradients)
        with torch.no_grad():
            for f, start in zip(feats, offsets, strict=False):
                block = self.embedding.weight[start : start + f.num_embeddings]
                bound = math.sqrt(1.0 / f.num_embeddings)  # torchrec's default init
                nn.init.uniform_(block, -bound, bound)
                if f.init_fn:
                    init = torch.empty(f.num_embeddings, dim)
                    parse_init_fn(f.init_fn)(init)
                    block[:, :dim] = init
                if wide_init_fn is not None and wide_dim > 0:
                    wide = torch.empty(f.num_embeddings, wide_dim)
                    wide_init_fn(wide)
                    block[:, dim:] = wide
            self.embedding.weight[self.pad_row].zero_()
        self.sparse_all = [c for c, _ in sparse] == list(range(num_sparse_inputs))
        self.register_buffer("sparse_cols", _long([c for c, _ in sparse]))
        self.register_buffer("multi_cols", _long([c for c, _ in multi]))
        self.register_buffer("sparse_offsets", _long(offsets[: len(sparse)]))
        self.register_buffer("multi_offsets", _long(offsets[len(sparse) : len(feats)]))
        self.register_buffer(
            "multi_mean", torch.tensor([m.pooling == "mean" for _, m in multi], dtype=torch.bool)
        )
        self._lookup_fields: dict[int, np.ndarray] = {}

    def _lookup(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows [*] -> [*, dim + wide_dim]``. With dense gradients a plain index_select,
        whose backward is one atomic index_add on a GPU (nn.Embedding's dense backward
        sorts the indices first)."""
        if self.embedding.sparse:
            return self.embedding(rows)
        flat = self.embedding.weight.index_select(0, rows.reshape(-1))
        return flat.view(*rows.shape, flat.shape[-1])

    def lookup_rows(
        self, sparse: torch.Tensor, multi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
        """The table rows a batch looks up, for the fused CPU kernels: ``rows [B, K]`` (the
        single-valued fields, then each multi-valued field's ``L`` values, padding -> the
        zero pad row), their pooling weights ``[B, K]`` (None when every field is
        single-valued) and each lookup's field ``[K]``."""
        parts, weights = [], []
        if self.num_sparse > 0:
            idx = sparse if self.sparse_all else sparse.index_select(1, self.sparse_cols)
            parts.append(idx + self.sparse_offsets)
        length = 0
        if self.num_fields > self.num_sparse:
            rows, pool = self._multi_rows(multi)
            length = rows.shape[2]
            parts.append(rows.flatten(1))
            if self.num_sparse > 0:
                weights.append(torch.ones(rows.shape[0], self.num_sparse, device=rows.device))
            weights.append(pool.flatten(1))
        rows = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        pool_weight = None if not weights else torch.cat(weights, dim=1)
        field = self._lookup_fields.get(length)
        if field is None:
            field = np.concatenate(
                [
                    np.arange(self.num_sparse),
                    np.repeat(np.arange(self.num_sparse, self.num_fields), length),
                ]
            ).astype(np.int64)
            self._lookup_fields[length] = field
        return rows.contiguous(), pool_weight, field

    def forward(self, sparse: torch.Tensor, multi: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.num_sparse > 0:
            idx = sparse if self.sparse_all else sparse.index_select(1, self.sparse_cols)
            parts.append(self._lookup(idx + self.sparse_offsets))
        if self.num_fields > self.num_sparse:
            rows, weight = self._multi_rows(multi)
            pooled = (self._lookup(rows) * weight.unsqueeze(-1)).sum(dim=2)
            parts.append(pooled)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _multi_rows(self, multi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The multi-valued fields' table rows ``[B, F_m, L]`` (padding -> the zero pad row)
        and pooling weights: 1 (sum) or 1 / count (mean) per value, 0 for padding."""
        ids = multi.index_select(1, self.multi_cols)  # [B, F_m, L]
        valid = ids >= 0
        rows = torch.where(valid, ids + self.multi_offsets[:, None], self.pad_row)
        count = valid.sum(dim=2, keepdim=True).clamp_min(1)  # [B, F_m, 1]
        weight = torch.where(self.multi_mean[:, None], 1.0 / count, 1.0) * valid
        return rows, weight


def _long(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _select(x: torch.Tensor, cols: torch.Tensor, take_all: bool) -> torch.Tensor:
    return x if take_all else x.index_select(1, cols)


class DeepFM(nn.Module):
    """``forward(sparse [B, F_s], multi [B, F_m, L], dense [B, F_d]) -> logits [B, C]``.

    Build it with ``DeepFM(model_cfg, feature_groups, input_spec)``; ``predict`` returns
    TorchEasyRec's prediction dict (``logits``/``probs`` or ``y``). ``sparse_gradients``
    makes the tables' gradients sparse (rows touched by the batch only: right for large
    tables and on CPU); dense gradients avoid the sort that deduplicates rows, which is
    faster on a GPU for tables that fit comfortably in its memory.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        groups: FeatureGroups,
        spec: InputSpec,
        sparse_gradients: bool = True,
    ) -> None:
        super().__init__()
        self.loss_kind = cfg.losses[0].kind
        self.num_class = cfg.num_class
        self.wide_dim = cfg.wide_embedding_dim
        inputs = {s.name: s for s in spec.sparse + spec.multi}
        fm_names = groups.fm or groups.deep
        deep_fm = set(fm_names) | {n for n in groups.deep if n in inputs}
        # One table per embedding dim of the deep/fm features; a wide-only feature joins
        # the FM's table (its deep part is then unused).
        fm_dim = inputs[fm_names[0]].embedding_dim
        dims = sorted({inputs[n].embedding_dim for n in deep_fm})
        embedded = [n for n in spec_order(spec) if n in deep_fm or n in groups.wide]

        def table_dim(name: str) -> int:
            return inputs[name].embedding_dim if name in deep_fm else fm_dim

        init_fn = parse_init_fn(cfg.wide_init_fn) if cfg.wide_init_fn else None
        wide_dim = cfg.wide_embedding_dim
        sparse_pos = {s.name: i for i, s in enumerate(spec.sparse)}
        multi_pos = {m.name: i for i, m in enumerate(spec.multi)}
        tables = []
        for d in dims:
            members = [n for n in embedded if table_dim(n) == d]
            tables.append(
                EmbeddingTable(
                    d,
                    wide_dim,
                    [(sparse_pos[n], inputs[n]) for n in members if n in sparse_pos],
                    [(multi_pos[n], inputs[n]) for n in members if n in multi_pos],
                    num_sparse_inputs=len(spec.sparse),
                    wide_init_fn=init_fn,
                    sparse_gradients=sparse_gradients,
                )
            )
        self.tables = nn.ModuleList(tables)

        # Which fields of each table's output feed the wide sum and the deep MLP.
        wide = set(groups.wide)
        deep = set(groups.deep)
        self._wide_all: list[bool] = []
        self._deep_all: list[bool] = []
        self._has_wide: list[bool] = []
        self._has_deep: list[bool] = []
        deep_in = 0
        for t, table in enumerate(tables):
            w_cols = [i for i, n in enumerate(table.field_names) if n in wide]
            d_cols = [i for i, n in enumerate(table.field_names) if n in deep]
            self.register_buffer(f"wide_cols_{t}", _long(w_cols))
            self.register_buffer(f"deep_cols_{t}", _long(d_cols))
            self._wide_all.append(len(w_cols) == table.num_fields)
            self._deep_all.append(len(d_cols) == table.num_fields)
            self._has_wide.append(len(w_cols) > 0)
            self._has_deep.append(len(d_cols) > 0)
            deep_in += len(d_cols) * table.dim

        # FM: the fm group (or the deep group), all of one dim, in one table.
        self.fm_table = dims.index(fm_dim)
        fm_fields = tables[self.fm_table].field_names
        fm_cols = [fm_fields.index(n) for n in fm_names]
        self.fm_all = fm_cols == list(range(len(fm_fields)))
        self.register_buffer("fm_cols", _long(fm_cols))
        self.fm = FactorizationMachine()

        dense_pos = {n: i for i, n in enumerate(spec.dense)}
        dense_cols = [dense_pos[n] for n in groups.deep if n in dense_pos]
        self.register_buffer("dense_cols", _long(dense_cols))
        self.num_dense = len(dense_cols)
        self.dense_all = dense_cols == list(range(len(spec.dense)))
        self.deep_in_features = deep_in + len(dense_cols)

        self.deep = MLP(self.deep_in_features, **_mlp_kwargs(cfg.deep))
        out_dim = self.deep.output_dim()
        self.final: MLP | None = None
        if cfg.final is not None:
            self.final = MLP(1 + fm_dim + out_dim, **_mlp_kwargs(cfg.final))
            out_dim = self.final.output_dim()
        self.output = nn.Linear(out_dim, cfg.num_class)
        self._train_head = None
        self._train_combine = None
        self._fused_plan = self._plan_fused_lookup()

    def _plan_fused_lookup(self) -> dict | None:
        """What the fused CPU kernels need (see ``model.kernels``), or None when this layout
        is not one they serve: one table, every multi-valued FM field also in the deep group
        (its pooled embedding is read back from the deep input). So an FM field outside the
        deep group is single-valued, and its one lookup is column ``f`` of the lookups
        (single-valued fields come first)."""
        if len(self.tables) != 1:
            return None
        table = self.tables[0]
        deep_cols = self.deep_cols_0.tolist()
        fm_cols = self.fm_cols.tolist()
        if any(f >= table.num_sparse and f not in deep_cols for f in fm_cols):
            return None
        fm_mask = np.zeros(table.num_fields, dtype=np.bool_)
        fm_mask[fm_cols] = True
        wide_mask = np.zeros(table.num_fields, dtype=np.bool_)
        wide_mask[self.wide_cols_0.tolist()] = True
        offsets = table.sparse_offsets.tolist() + table.multi_offsets.tolist()
        sizes = [
            (offsets[f + 1] if f + 1 < table.num_fields else table.pad_row) - offsets[f]
            for f in range(table.num_fields)
        ]
        return {
            "dim": table.dim,
            "wide_dim": self.wide_dim,
            "deep_cols": deep_cols,  # fields in deep-input order
            "fm_mask": fm_mask,
            "wide_mask": wide_mask,
            "offsets": offsets,
            "sizes": sizes,
            "num_sparse": table.num_sparse,
            "num_dense": self.num_dense,
            "hidden": self.deep.first_linear.out_features,
            "first_is_relu": self.deep.first_activation_is_relu,
            "by_batch": {},
        }

    def _fused_batch_plan(self, batch: int, lookups: int, per_value: bool = True) -> dict:
        """The fused plan for one batch size: which single-valued fields are summed per value
        (their first-layer product is computed once per table row, see
        ``_FusedFirstLayer``; none without ``per_value``) and the column bookkeeping that
        follows from it."""
        plan = self._fused_plan
        key = (batch, lookups, per_value)
        cached = plan["by_batch"].get(key)
        if cached is not None:
            return cached
        dim, sizes = plan["dim"], plan["sizes"]
        # small-vocabulary single-valued fields, smallest first, while their rows together
        # stay a small fraction of the batch (projecting V rows costs like V samples)
        budget = max(batch // 4, _MIN_VALUE_BUDGET) if per_value else 0
        small, rows_used = [], 0
        for f in sorted(range(plan["num_sparse"]), key=lambda f: sizes[f]):
            if rows_used + sizes[f] > budget:
                break
            small.append(f)
            rows_used += sizes[f]
        small.sort()
        deep_cols = plan["deep_cols"]
        deep_index = {f: i for i, f in enumerate(deep_cols)}
        big_deep = [f for f in deep_cols if f not in small]
        deep_pos = np.full(len(sizes), -1, dtype=np.int64)
        deep_pos[big_deep] = np.arange(len(big_deep))

        def w1_cols(fields: list[int]) -> list[int]:
            return [deep_index[f] * dim + d for f in fields for d in range(dim)]

        dense_start = len(deep_cols) * dim
        dense_cols = list(range(dense_start, dense_start + plan["num_dense"]))
        bases = np.cumsum([0] + [sizes[f] for f in small])
        offsets = plan["offsets"]
        small_set = set(small)
        hidden, ext = plan["hidden"], plan["hidden"] + 2 * dim
        small_deep = [i for i, f in enumerate(small) if f in deep_index]
        # the part of the per-sample gradient row [first layer | FM | FM] each small field
        # sums per value (see kernels.value_sums)
        seg = {
            (True, True): (0, ext),
            (True, False): (0, hidden),
            (False, True): (hidden, ext),
            (False, False): (0, 0),
        }
        segments = [seg[(f in deep_index, bool(plan["fm_mask"][f]))] for f in small]
        cached = {
            # the first layer's ReLU runs in the kernels: Linear -> ReLU, per-value (fp32) path
            "relu": plan["first_is_relu"] and per_value,
            "deep_pos": deep_pos,
            "x_cols": torch.tensor(w1_cols(big_deep) + dense_cols, dtype=torch.long),
            "small_lookup": np.array(small, dtype=np.int64),
            "small_shift": np.array(
                [int(bases[i]) - offsets[f] for i, f in enumerate(small)], dtype=np.int64
            ),
            # the value rows: every table row of the small fields, field by field
            "value_rows": np.array(
                [r for f in small for r in range(offsets[f], offsets[f] + sizes[f])],
                dtype=np.int64,
            ),
            # each value row's first deep-input column (-1: its field is not in deep)
            "value_col": np.repeat(
                [deep_index[f] * dim if f in deep_index else -1 for f in small],
                [sizes[f] for f in small],
            ).astype(np.int64),
            # the small fields in deep (positions in small), their value rows and columns
            "deep_fields": np.array(small_deep, dtype=np.int64),
            "deep_lo": bases[small_deep].astype(np.int64),
            "deep_hi": bases[[i + 1 for i in small_deep]].astype(np.int64),
            "deep_col": np.array([deep_index[small[i]] * dim for i in small_deep], dtype=np.int64),
            "seg_lo": np.array([lo for lo, _ in segments], dtype=np.int64),
            "seg_hi": np.array([hi for _, hi in segments], dtype=np.int64),
            "wide_fields": np.flatnonzero(plan["wide_mask"][small]).astype(np.int64),
            # the lookups whose gradient is written per sample (all but the small fields')
            "lookups": np.array([k for k in range(lookups) if k not in small_set], dtype=np.int64),
        }
        plan["by_batch"][key] = cached
        return cached

    def _use_fused_lookup(self, weight: torch.Tensor) -> bool:
        if (
            self._fused_plan is None
            or not self.training
            or not torch.is_grad_enabled()
            or weight.device.type != "cpu"
            or weight.dtype != torch.float32
            or not self.tables[0].embedding.sparse
        ):
            return False
        from model import kernels

        return kernels.available()

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The sparse-gradient tables (for the sparse optimizer)."""
        return [t.embedding.weight for t in self.tables]

    def dense_parameters(self) -> list[nn.Parameter]:
        sparse = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    def compile_training_head(self) -> None:
        """Train through a ``torch.compile``-d ``head`` (it fuses the FM, wide and deep-input
        element-wise work), or ``combine`` when the CPU kernels do the embedding side. The
        embedding lookups stay eager so their gradients stay sparse; evaluation and export
        use the eager modules."""
        self._train_head = torch.compile(self.head, dynamic=False)
        self._train_combine = torch.compile(self.combine_after_first_linear, dynamic=False)

    def release_training_head(self) -> None:
        self._train_head = None
        self._train_combine = None

    def embed(self, sparse: torch.Tensor, multi: torch.Tensor) -> list[torch.Tensor]:
        """Each table's lookups: ``[B, N_t, D_t + wide_embedding_dim]`` per table."""
        return [table(sparse, multi) for table in self.tables]

    def combine(
        self, y_wide: torch.Tensor, y_fm: torch.Tensor, deep_in: torch.Tensor
    ) -> torch.Tensor:
        """The two output paths (docs/ARCHITECTURE.md, "The model"): ``y_wide [B, 1]``,
        ``y_fm [B, D]`` and the deep MLP's input ``[B, deep_in_features]`` -> logits ``[B, C]``."""
        return self._logits(y_wide, y_fm, self.deep(deep_in))

    def combine_after_first_linear(
        self, y_wide: torch.Tensor, y_fm: torch.Tensor, h1: torch.Tensor, activated: bool = False
    ) -> torch.Tensor:
        """``combine`` given the deep MLP's first ``Linear`` output ``h1`` instead of its
        input (the fused CPU path computes that layer itself; ``activated``: and its ReLU)."""
        deep = self.deep.forward_after_first_linear(h1, activated=activated)
        return self._logits(y_wide, y_fm, deep)

    def _logits(self, y_wide: torch.Tensor, y_fm: torch.Tensor, y_deep: torch.Tensor):
        if self.final is None:
            return y_wide + y_fm.sum(dim=1, keepdim=True) + self.output(y_deep)
        return self.output(self.final(torch.cat([y_wide, y_fm, y_deep], dim=1)))

    def head(self, embedded: list[torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        """Embeddings and dense numbers -> logits ``[B, C]`` (docs/ARCHITECTURE.md, "The model")."""
        y_wide = torch.zeros(dense.shape[0], 1, dtype=torch.float32, device=dense.device)
        deep_parts = []
        y_fm = None
        for t, table in enumerate(self.tables):
            # split (not slicing) so the backward is one concatenation, no zero-filled copies
            emb, wide_emb = embedded[t].split([table.dim, self.wide_dim], dim=2)
            if self._has_wide[t]:
                w = _select(wide_emb, getattr(self, f"wide_cols_{t}"), self._wide_all[t])
                y_wide = y_wide + w.sum(dim=(1, 2)).unsqueeze(1)  # [B, 1]
            if t == self.fm_table:
                y_fm = self.fm(_select(emb, self.fm_cols, self.fm_all))  # [B, D]
            if self._has_deep[t]:
                x = _select(emb, getattr(self, f"deep_cols_{t}"), self._deep_all[t])
                deep_parts.append(x.reshape(x.shape[0], -1))
        if self.num_dense > 0:
            deep_parts.append(_select(dense, self.dense_cols, self.dense_all))
        deep_in = deep_parts[0] if len(deep_parts) == 1 else torch.cat(deep_parts, dim=1)
        assert y_fm is not None
        return self.combine(y_wide, y_fm, deep_in)

    def forward(
        self, sparse: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        weight = self.tables[0].embedding.weight
        if self._use_fused_lookup(weight):
            rows, pool_weight, field = self.tables[0].lookup_rows(sparse, multi)
            # under autocast the first layer runs in its dtype over all fields, as in Linear
            per_value = not torch.is_autocast_enabled("cpu")
            plan = {**self._fused_plan, **self._fused_batch_plan(*rows.shape, per_value)}
            first = self.deep.first_linear
            h1, y_fm, y_wide = _FusedFirstLayer.apply(
                weight,
                first.weight,
                first.bias,
                rows,
                pool_weight,
                _select(dense, self.dense_cols, self.dense_all),
                field,
                plan,
            )
            combine = self._train_combine or self.combine_after_first_linear
            return combine(y_wide, y_fm, h1, activated=plan["relu"])
        embedded = self.embed(sparse, multi)
        if self.training and self._train_head is not None:
            return self._train_head(embedded, dense)
        return self.head(embedded, dense)

    def predict(
        self, sparse: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return to_predictions(self(sparse, multi, dense), self.loss_kind)


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

    With ``plan["relu"]`` (the first layer is ``Linear -> ReLU``, fp32) ``h1`` is returned
    through the ReLU and the backward applies its mask while summing per value: the MLP then
    continues after its first activation (``forward_after_first_linear(activated=True)``).
    """

    @staticmethod
    def forward(ctx, weight, w1, b1, rows, pool_weight, dense, field, plan):
        from model import kernels

        # under autocast the matrix products run in its dtype, as they would in the Linear
        mm_dtype = (
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
        )
        ctx.mm_dtype = mm_dtype
        with torch.autocast("cpu", enabled=False):
            kernels.set_threads(torch.get_num_threads())
            batch, dim = rows.shape[0], plan["dim"]
            table = weight.detach()
            w1 = w1.detach().float()
            hidden = w1.shape[0]
            dense = dense.float().contiguous()
            x = torch.empty(batch, len(plan["x_cols"]))  # big fields, then dense columns
            s = torch.empty(batch, dim)
            fm = torch.empty(batch, dim)
            wide = torch.empty(batch, 1)
            small_idx = torch.empty(batch, len(plan["small_lookup"]), dtype=torch.long)
            pool = _EMPTY if pool_weight is None else pool_weight.float().contiguous()
            kernels.pooled_forward(
                table.numpy(), rows.numpy(), field, pool.numpy(), plan["deep_pos"],
                plan["fm_mask"], plan["wide_mask"], dim, dense.numpy(),
                plan["small_lookup"], plan["small_shift"], x.numpy(), s.numpy(), fm.numpy(),
                wide.numpy(), small_idx.numpy(),
            )  # fmt: skip
            w1t = w1.t().contiguous()  # [in, H]
            w1t_x = w1t.index_select(0, plan["x_cols"])  # [x columns, H]
            relu = plan["relu"]  # only without autocast: per_value in _fused_batch_plan
            if mm_dtype == torch.float32:
                # the matrix product over x, then each sample adds its values' projected
                # rows (and the ReLU, when the first layer has one)
                h1 = torch.mm(x, w1t_x) if b1 is None else torch.addmm(b1.detach(), x, w1t_x)
                proj = torch.empty(len(plan["value_rows"]), hidden)
                kernels.project_values(
                    table.numpy(), dim, plan["value_rows"], plan["value_col"], w1t.numpy(),
                    proj.numpy(),
                )  # fmt: skip
                kernels.add_values(
                    proj.numpy(), small_idx.numpy(), plan["deep_fields"], h1.numpy(), relu
                )
            else:  # autocast (no per-value fields in the plan): the Linear in its dtype
                bias = torch.zeros(hidden) if b1 is None else b1.detach().float()
                h1 = torch.addmm(bias.to(mm_dtype), x.to(mm_dtype), w1t_x.to(mm_dtype))
        ctx.save_for_backward(rows, pool, x, s, small_idx, w1t, w1t_x, h1 if relu else None)
        ctx.field, ctx.plan, ctx.table, ctx.has_bias = field, plan, weight, b1 is not None
        ctx.relu = relu
        return h1, fm, wide

    @staticmethod
    def backward(ctx, grad_h1, grad_fm, grad_wide):
        with torch.autocast("cpu", enabled=False):
            return _FusedFirstLayer._backward(ctx, grad_h1, grad_fm, grad_wide)

    @staticmethod
    def _backward(ctx, grad_h1, grad_fm, grad_wide):
        from model import kernels

        rows, pool, x, s, small_idx, w1t, w1t_x, act = ctx.saved_tensors
        plan, dim, wide_dim = ctx.plan, ctx.plan["dim"], ctx.plan["wide_dim"]
        batch, hidden = rows.shape[0], w1t.shape[1]
        table = ctx.table.detach()
        mm = ctx.mm_dtype
        gfm = torch.zeros_like(s) if grad_fm is None else grad_fm.float().contiguous()
        gwide = torch.zeros(batch, 1) if grad_wide is None else grad_wide.float().contiguous()
        kernels.set_threads(torch.get_num_threads())
        lookups, value_rows = plan["lookups"], plan["value_rows"]
        n_lookup = batch * len(lookups)
        values = torch.empty(n_lookup + len(value_rows), dim + wide_dim)
        indices = torch.empty(n_lookup + len(value_rows), dtype=torch.long)
        grad_w1 = torch.empty(hidden, w1t.shape[0])  # every column is written below
        if mm == torch.float32:
            # the small fields' per-value sums first: they also write the first layer's
            # output gradient (through the ReLU's mask) that the matrix products use
            parts = min(torch.get_num_threads(), 4)
            grad = grad_h1.float().contiguous()
            ext = torch.empty(batch, hidden + 2 * dim)
            g_sum = torch.empty(parts, len(value_rows), hidden + 2 * dim)
            w_sum = torch.empty(parts, len(value_rows))
            b_sum = torch.empty(parts, hidden)
            bias_field = 0 if len(plan["deep_fields"]) else -1
            kernels.value_sums(
                small_idx.numpy(), plan["seg_lo"], plan["seg_hi"], plan["wide_fields"],
                grad.numpy(), (grad if act is None else act).numpy(), ctx.relu, gfm.numpy(),
                s.numpy(), gwide.numpy(), ext.numpy(), g_sum.numpy(), w_sum.numpy(),
                b_sum.numpy(), ctx.has_bias and bias_field < 0,
            )  # fmt: skip
            gh = ext[:, :hidden]
            grad_b1 = torch.empty(hidden if ctx.has_bias else 0)
            kernels.value_grads(
                value_rows, plan["value_col"], plan["deep_lo"], plan["deep_hi"],
                plan["deep_col"], table.numpy(), w1t.numpy(), g_sum.numpy(), w_sum.numpy(),
                b_sum.numpy(), bias_field, values[n_lookup:].numpy(), grad_w1.numpy(),
                grad_b1.numpy(), np.empty((len(plan["deep_fields"]) * dim, hidden), np.float32),
            )  # fmt: skip
            if x.shape[1] > 0:  # x^T gh, then transposed: faster than gh^T x for few columns
                grad_w1.index_copy_(1, plan["x_cols"], (x.t() @ gh).t())
            gx = gh @ w1t_x.t()
        else:  # autocast: as the Linear's backward, in its dtype; no per-value fields
            gh = grad_h1.to(mm)
            grad_w1.index_copy_(1, plan["x_cols"], (gh.t() @ x.to(mm)).float())
            gx = (gh @ w1t_x.t().to(mm)).float()
            grad_b1 = gh.float().sum(0)
        kernels.pooled_backward(
            rows.numpy(), ctx.field, pool.numpy(), plan["deep_pos"], plan["fm_mask"],
            plan["wide_mask"], dim, wide_dim, table.numpy(), x.numpy(),
            s.numpy(), gx.contiguous().numpy(), gfm.numpy(), gwide.numpy(), lookups,
            values[:n_lookup].numpy(), indices[:n_lookup].numpy(),
        )  # fmt: skip
        indices[n_lookup:] = torch.from_numpy(value_rows)
        grad_table = torch.sparse_coo_tensor(
            indices[None], values, ctx.table.shape, check_invariants=False
        )
        return grad_table, grad_w1, grad_b1 if ctx.has_bias else None, None, None, None, None, None


_MIN_VALUE_BUDGET = 64
_EMPTY = torch.empty(0, 0)


def spec_order(spec: InputSpec) -> list[str]:
    """Embedded input names: single-valued, then multi-valued (the tables' field order)."""
    return [s.name for s in spec.sparse] + [m.name for m in spec.multi]


def to_predictions(logits: torch.Tensor, loss_kind: str) -> dict[str, torch.Tensor]:
    """``logits [B, C]`` -> ``{"logits": [B], "probs": [B]}`` (binary), ``{"logits": [B, C],
    "probs": [B, C], "probs1": [B]}`` (softmax, probs1 when C == 2) or ``{"y": [B]}`` (L2)."""
    if loss_kind == "binary_cross_entropy":
        z = logits.squeeze(1)
        return {"logits": z, "probs": torch.sigmoid(z)}
    if loss_kind == "softmax_cross_entropy":
        probs = F.softmax(logits, dim=1)
        out = {"logits": logits, "probs": probs}
        if logits.shape[1] == 2:
            out["probs1"] = probs[:, 1]
        return out
    return {"y": logits.squeeze(1)}


def score_of(predictions: dict[str, torch.Tensor]) -> torch.Tensor:
    """The [B] score that AUC-type metrics rank: probs, probs1 or y."""
    for key in ("probs1", "y"):
        if key in predictions:
            return predictions[key]
    return predictions["probs"]


def _mlp_kwargs(m) -> dict:
    return {
        "hidden_units": m.hidden_units,
        "dropout_ratio": m.dropout_ratio,
        "activation": m.activation,
        "use_bn": m.use_bn,
        "use_ln": m.use_ln,
        "bias": m.bias,
    }

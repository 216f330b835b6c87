"""DeepFM with TorchEasyRec's semantics (docs/ARCHITECTURE.md, "The model").

Inputs are the encoder's tensors (see ``model.features``):
``sparse [B, F_s] int64``, ``multi [B, F_m, L] int64`` (-1 = padding), ``dense [B, F_d] float``.

    y_wide = sum over wide features and wide_embedding_dim components      [B, 1]
    y_fm   = FM(fm group embeddings [B, N, D])                              [B, D]
    y_deep = deep_MLP(cat(deep group embeddings, deep dense numbers))      [B, H]
    no final:   logits = y_wide + sum_d y_fm + Linear(y_deep)               [B, C]
    with final: logits = Linear(final_MLP(cat(y_wide, y_fm, y_deep)))       [B, C]

Embeddings live in one concatenated table per embedding dim (per-feature row offsets, one
gather for all fields of that dim); each row is ``[deep part | wide part]``, the wide part
``wide_embedding_dim`` wide. A feature in both the fm and deep groups shares its rows.

This is the reference computation, used for evaluation, export, GPUs and every layout. On a
CPU the trainer may run the same function through compiled kernels (``model.fused``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import FeatureGroups, ModelConfig
from model.features import InputSpec, SparseInput
from model.modules import MLP, FactorizationMachine
from model.modules.init import parse_init_fn

# ----------------------------------------------------------------- embedding groups


def default_init_std(rows: int) -> float:
    """The default embedding initialiser's std for a field of ``rows`` rows:
    ``min(0.01, sqrt(1 / rows))``. Small fields start near zero (torchrec's uniform
    ``+-sqrt(1 / rows)`` starts a field of 2 values at +-0.7, which trains worse on data
    nobody tuned for); very large ones a little closer."""
    return min(0.01, math.sqrt(1.0 / rows))


class EmbeddingTable(nn.Module):
    """Several features' embeddings in one table; each row is ``[deep part (dim) | wide part
    (wide_dim)]``, so one gather serves the deep, fm and wide groups.

    Initialised with ``default_init_std`` per field (or a feature's ``init_fn``), the wide
    part at zero (or ``wide_init_fn``).

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
        self.field_rows = [f.num_embeddings for f in feats]  # table rows per field, in order
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
                init = torch.empty(f.num_embeddings, dim)
                if f.init_fn:
                    parse_init_fn(f.init_fn)(init)
                else:
                    nn.init.normal_(init, std=default_init_std(f.num_embeddings))
                block[:, :dim] = init
                block[:, dim:] = 0.0  # the wide part starts at zero
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

    def forward(self, sparse: torch.Tensor, multi: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.num_sparse > 0:
            parts.append(self._lookup(self.sparse_rows(sparse)))  # [B, F_s, dim + wide_dim]
        if self.num_fields > self.num_sparse:
            rows, weight = self.multi_rows(multi)  # [B, F_m, L]
            pooled = (self._lookup(rows) * weight.unsqueeze(-1)).sum(dim=2)
            parts.append(pooled)  # [B, F_m, dim + wide_dim]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def sparse_rows(self, sparse: torch.Tensor) -> torch.Tensor:
        """The single-valued fields' table rows: ``sparse [B, F_s] -> [B, this table's F_s]``."""
        idx = sparse if self.sparse_all else sparse.index_select(1, self.sparse_cols)
        return idx + self.sparse_offsets

    def multi_rows(self, multi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The multi-valued fields' table rows ``[B, F_m, L]`` (padding -> the zero pad row)
        and pooling weights ``[B, F_m, L]``: 1 (sum) or 1 / count (mean) per value, 0 for
        padding."""
        ids = multi.index_select(1, self.multi_cols)  # [B, F_m, L]
        valid = ids >= 0
        rows = torch.where(valid, ids + self.multi_offsets[:, None], self.pad_row)
        count = valid.sum(dim=2, keepdim=True).clamp_min(1)  # [B, F_m, 1]
        weight = torch.where(self.multi_mean[:, None], 1.0 / count, 1.0) * valid
        return rows, weight

    def _lookup(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows [*] -> [*, dim + wide_dim]``. With dense gradients a plain index_select,
        whose backward is one atomic index_add on a GPU (nn.Embedding's dense backward
        sorts the indices first)."""
        if self.embedding.sparse:
            return self.embedding(rows)
        flat = self.embedding.weight.index_select(0, rows.reshape(-1))
        return flat.view(*rows.shape, flat.shape[-1])


class Fields(nn.Module):
    """Some fields of a tensor, in a fixed order: ``x [B, N, ...] -> [B, len(cols), ...]``
    (``x`` itself when ``cols`` are all of its ``N`` fields in order)."""

    def __init__(self, cols: list[int], num_fields: int) -> None:
        super().__init__()
        self.cols_list = list(cols)
        self.take_all = self.cols_list == list(range(num_fields))
        # derived from the config, so not part of the state dict
        self.register_buffer("cols", _long(self.cols_list), persistent=False)

    def __len__(self) -> int:
        return len(self.cols_list)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.take_all else x.index_select(1, self.cols)


# -------------------------------------------------------------------------- DeepFM


class DeepFM(nn.Module):
    """``forward(sparse [B, F_s], multi [B, F_m, L], dense [B, F_d]) -> logits [B, C]``.

    Build it with ``DeepFM(model_cfg, feature_groups, input_spec)``; ``predict`` returns
    TorchEasyRec's prediction dict (``logits``/``probs`` or ``y``). ``sparse_gradients``
    makes the tables' gradients sparse (rows touched by the batch only: right for large
    tables and on CPU); dense gradients avoid the sort that deduplicates rows, which is
    faster on a GPU for tables that fit comfortably in its memory.

    Sub-modules: ``tables`` (one ``EmbeddingTable`` per embedding dim); per table the fields
    of the wide and deep groups (``wide_fields[t]``, ``deep_fields[t]``), the FM's fields of
    table ``fm_table`` (``fm_fields``) and the deep group's dense columns (``dense_fields``);
    ``fm``, ``deep`` (MLP), ``final`` (MLP or None) and ``output`` (Linear).
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

        # Embedding groups: one table per embedding dim of the deep/fm features; a
        # wide-only feature joins the FM's table (its deep part is then unused).
        inputs = {s.name: s for s in spec.sparse + spec.multi}
        fm_names = groups.fm or groups.deep
        deep_fm = set(fm_names) | {n for n in groups.deep if n in inputs}
        fm_dim = inputs[fm_names[0]].embedding_dim
        dims = sorted({inputs[n].embedding_dim for n in deep_fm})
        embedded = [n for n in spec_order(spec) if n in deep_fm or n in groups.wide]

        def table_dim(name: str) -> int:
            return inputs[name].embedding_dim if name in deep_fm else fm_dim

        init_fn = parse_init_fn(cfg.wide_init_fn) if cfg.wide_init_fn else None
        sparse_pos = {s.name: i for i, s in enumerate(spec.sparse)}
        multi_pos = {m.name: i for i, m in enumerate(spec.multi)}
        tables = []
        for d in dims:
            members = [n for n in embedded if table_dim(n) == d]
            tables.append(
                EmbeddingTable(
                    d,
                    self.wide_dim,
                    [(sparse_pos[n], inputs[n]) for n in members if n in sparse_pos],
                    [(multi_pos[n], inputs[n]) for n in members if n in multi_pos],
                    num_sparse_inputs=len(spec.sparse),
                    wide_init_fn=init_fn,
                    sparse_gradients=sparse_gradients,
                )
            )
        self.tables = nn.ModuleList(tables)

        def fields_of(table: EmbeddingTable, names) -> Fields:
            names = set(names)
            cols = [i for i, n in enumerate(table.field_names) if n in names]
            return Fields(cols, table.num_fields)

        self.wide_fields = nn.ModuleList([fields_of(t, groups.wide) for t in tables])
        self.deep_fields = nn.ModuleList([fields_of(t, groups.deep) for t in tables])
        # the FM's fields (the fm group, else the deep group) are all of one dim: one table
        self.fm_table = dims.index(fm_dim)
        fm_names_in_table = tables[self.fm_table].field_names
        self.fm_fields = Fields(
            [fm_names_in_table.index(n) for n in fm_names], len(fm_names_in_table)
        )
        dense_pos = {n: i for i, n in enumerate(spec.dense)}
        self.dense_fields = Fields(
            [dense_pos[n] for n in groups.deep if n in dense_pos], len(spec.dense)
        )
        self.deep_in_features = sum(
            len(f) * t.dim for f, t in zip(self.deep_fields, tables, strict=True)
        ) + len(self.dense_fields)

        # FM, deep MLP, optional final MLP, output layer
        self.fm = FactorizationMachine()
        self.deep = MLP(self.deep_in_features, **_mlp_kwargs(cfg.deep))
        out_dim = self.deep.output_dim()
        self.final: MLP | None = None
        if cfg.final is not None:
            self.final = MLP(1 + fm_dim + out_dim, **_mlp_kwargs(cfg.final))
            out_dim = self.final.output_dim()
        self.output = nn.Linear(out_dim, cfg.num_class)

    # ------------------------------------------------------------------ the math

    def forward(
        self, sparse: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        """``sparse [B, F_s], multi [B, F_m, L], dense [B, F_d] -> logits [B, C]``."""
        return self.head(self.embed(sparse, multi), dense)

    def embed(self, sparse: torch.Tensor, multi: torch.Tensor) -> list[torch.Tensor]:
        """Each table's lookups: ``[B, N_t, D_t + wide_embedding_dim]`` per table ``t``."""
        return [table(sparse, multi) for table in self.tables]

    def head(self, embedded: list[torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        """Each table's lookups ``[B, N_t, D_t + W]`` and ``dense [B, F_d]`` -> logits
        ``[B, C]``: everything after the embedding lookups."""
        # split (not slicing) so the backward is one concatenation, no zero-filled copies
        parts = [
            e.split([t.dim, self.wide_dim], dim=2)
            for e, t in zip(embedded, self.tables, strict=True)
        ]
        deep_parts = [d for d, _ in parts]  # [B, N_t, D_t] per table
        wide_parts = [w for _, w in parts]  # [B, N_t, W] per table
        y_wide = self.wide_term(wide_parts)
        y_fm = self.fm(self.fm_fields(deep_parts[self.fm_table]))  # [B, N_fm, D] -> [B, D]
        y_deep = self.deep(self.deep_input(deep_parts, dense))  # [B, deep_in] -> [B, H]
        return self.logits(y_wide, y_fm, y_deep)

    def wide_term(self, wide_parts: list[torch.Tensor]) -> torch.Tensor:
        """The wide parts ``[B, N_t, W]`` per table -> ``y_wide [B, 1]``: the sum over the wide
        group's fields and their ``W`` components."""
        batch, device = wide_parts[0].shape[0], wide_parts[0].device
        y_wide = torch.zeros(batch, 1, dtype=torch.float32, device=device)
        for fields, part in zip(self.wide_fields, wide_parts, strict=True):
            if len(fields):
                y_wide = y_wide + fields(part).sum(dim=(1, 2)).unsqueeze(1)
        return y_wide

    def deep_input(self, deep_parts: list[torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        """The deep parts ``[B, N_t, D_t]`` per table and ``dense [B, F_d]`` -> the deep MLP's
        input ``[B, deep_in_features]``: the deep group's embeddings, table by table, then
        its dense numbers."""
        parts = [
            fields(part).flatten(1)
            for fields, part in zip(self.deep_fields, deep_parts, strict=True)
            if len(fields)
        ]
        if len(self.dense_fields):
            parts.append(self.dense_fields(dense))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def logits(self, y_wide: torch.Tensor, y_fm: torch.Tensor, y_deep: torch.Tensor):
        """``y_wide [B, 1]``, ``y_fm [B, D]``, ``y_deep [B, H]`` -> logits ``[B, C]``: their
        sum through the output layer, or the final MLP over their concatenation."""
        if self.final is None:
            return y_wide + y_fm.sum(dim=1, keepdim=True) + self.output(y_deep)
        return self.output(self.final(torch.cat([y_wide, y_fm, y_deep], dim=1)))

    def predict(
        self, sparse: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """TorchEasyRec's prediction dict (see ``to_predictions``)."""
        return to_predictions(self(sparse, multi, dense), self.loss_kind)

    # ------------------------------------------------------------- for optimizers

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding tables (for the sparse optimizer)."""
        return [t.embedding.weight for t in self.tables]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: the MLPs and the output layer (for the dense optimizer)."""
        sparse = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]


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


def _long(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _mlp_kwargs(m) -> dict:
    return {
        "hidden_units": m.hidden_units,
        "dropout_ratio": m.dropout_ratio,
        "activation": m.activation,
        "use_bn": m.use_bn,
        "use_ln": m.use_ln,
        "bias": m.bias,
    }

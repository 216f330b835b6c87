"""Tests of the DeepFM model (model/deepfm.py) against a by-hand computation from its weights,
and of the config checks that guard it (model/config.py)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.config import Config, ConfigError, config_from_dict
from model.deepfm import DeepFM, score_of
from model.features import FeatureEncoder, InputSpec
from model.modules.init import parse_init_fn

B = 6  # batch rows

# Every kind of input: ids (one wide-only, with a different embedding_dim that the wide part
# ignores), a bucketised number, a dense number and two multi-valued ids (mean and sum).
FEATURES = [
    {"name": "u", "type": "id", "num_buckets": 7, "embedding_dim": 4},
    {"name": "i", "type": "id", "num_buckets": 5, "embedding_dim": 4},
    {"name": "c", "type": "id", "num_buckets": 3, "embedding_dim": 4},
    {"name": "w", "type": "id", "num_buckets": 4, "embedding_dim": 8},
    {"name": "p", "type": "raw", "boundaries": [1.0, 2.0, 3.0], "embedding_dim": 4},
    {"name": "x", "type": "raw"},
    {"name": "tags", "type": "multi_id", "num_buckets": 6, "embedding_dim": 4,
     "pooling": "mean", "max_length": 4},
    {"name": "hist", "type": "multi_id", "num_buckets": 5, "embedding_dim": 4,
     "pooling": "sum", "max_length": 3},
]  # fmt: skip
GROUPS = {
    "wide": ["u", "w", "p", "tags"],
    "fm": ["u", "i", "c", "tags", "hist"],
    "deep": ["u", "i", "p", "x", "tags", "hist"],
}


def make_cfg(
    features: list[dict] | None = None,
    groups: dict | None = None,
    **model: Any,
) -> Config:
    model.setdefault("deep", {"hidden_units": [5, 3]})
    return config_from_dict(
        {
            "features": copy.deepcopy(features or FEATURES),
            "feature_groups": copy.deepcopy(groups or GROUPS),
            "model": model,
        }
    )


def build(cfg: Config, seed: int = 0, spread: bool = False) -> tuple[DeepFM, InputSpec]:
    """The model; ``spread``: every table row (but padding) uniform in +-0.5, so that no
    term is negligible (the default init starts near zero, the wide part at zero)."""
    # num_buckets ids and bucketised numbers need no fitted state for their table sizes
    spec = FeatureEncoder(cfg).input_spec()
    torch.manual_seed(seed)
    model = DeepFM(cfg.model, cfg.feature_groups, spec)
    if spread:
        with torch.no_grad():
            for t in model.tables:
                nn.init.uniform_(t.embedding.weight[: t.pad_row], -0.5, 0.5)
    model.eval()
    return model, spec


def random_inputs(
    spec: InputSpec, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sparse = torch.zeros(B, len(spec.sparse), dtype=torch.long)
    for j, s in enumerate(spec.sparse):
        sparse[:, j] = torch.randint(0, s.num_embeddings, (B,), generator=gen)
    length = spec.max_length
    multi = torch.full((B, len(spec.multi), length), -1, dtype=torch.long)
    for j, m in enumerate(spec.multi):
        for b in range(B):
            n = b % (length + 1)  # row 0 has no values, others 1..length
            multi[b, j, :n] = torch.randint(0, m.num_embeddings, (n,), generator=gen)
        # padding in the middle too: it must be skipped, not only trailing -1s
        if length >= 3:
            multi[B - 1, j, :] = torch.tensor([1] + [-1] * (length - 2) + [2])
    dense = torch.randn(B, len(spec.dense), generator=gen)
    return sparse, multi, dense


# ------------------------------------------------------------- by-hand reference


def expected_layout(cfg: Config, spec: InputSpec) -> list[tuple[int, list[str]]]:
    """The documented table layout: one table per embedding dim of the fm/deep features
    (ascending), a wide-only feature in the FM's table; fields single-valued then
    multi-valued, each in input order."""
    g = cfg.feature_groups
    inputs = {s.name: s for s in spec.sparse + spec.multi}
    fm_names = g.fm or g.deep
    deep_fm = set(fm_names) | {n for n in g.deep if n in inputs}
    fm_dim = inputs[fm_names[0]].embedding_dim

    def table_dim(n: str) -> int:
        return inputs[n].embedding_dim if n in deep_fm else fm_dim

    embedded = [n for n in inputs if n in deep_fm or n in g.wide]
    dims = sorted({table_dim(n) for n in embedded})
    return [(d, [n for n in embedded if table_dim(n) == d]) for d in dims]


def lookup_rows(
    model: DeepFM,
    cfg: Config,
    spec: InputSpec,
    sparse: torch.Tensor,
    multi: torch.Tensor,
) -> dict[str, tuple[int, torch.Tensor]]:
    """name -> (deep dim, [B, dim + wide_dim] float64 row, pooled for multi-valued ids),
    read straight from the table weights."""
    sizes = {s.name: s for s in spec.sparse + spec.multi}
    sparse_col = {s.name: j for j, s in enumerate(spec.sparse)}
    multi_col = {m.name: j for j, m in enumerate(spec.multi)}
    out = {}
    for table, (dim, names) in zip(model.tables, expected_layout(cfg, spec), strict=True):
        weight = table.embedding.weight.detach().double()
        offset = 0
        for n in names:
            if n in sparse_col:
                row = weight[sparse[:, sparse_col[n]] + offset]
            else:
                pooled = []
                for b in range(sparse.shape[0]):
                    ids = [int(v) for v in multi[b, multi_col[n]] if v >= 0]
                    vecs = [weight[offset + v] for v in ids]
                    total = torch.stack(vecs).sum(0) if vecs else torch.zeros(weight.shape[1])
                    if sizes[n].pooling == "mean" and vecs:
                        total = total / len(vecs)
                    pooled.append(total)
                row = torch.stack(pooled)
            out[n] = (dim, row)
            offset += sizes[n].num_embeddings
    return out


def fm_brute_force(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape[0], x.shape[2], dtype=x.dtype)
    for a, b in itertools.combinations(range(x.shape[1]), 2):
        out += x[:, a] * x[:, b]
    return out


def manual_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Linear -> ReLU layers by hand (the configs here use neither norm nor dropout)."""
    for layer in mlp.mlp:
        assert [type(m) for m in layer] == [nn.Linear, nn.ReLU]
        lin = layer[0]
        x = torch.relu(F.linear(x, lin.weight.detach().double(), lin.bias.detach().double()))
    return x


def reference_parts(model, cfg, spec, sparse, multi, dense) -> dict[str, torch.Tensor]:
    g = cfg.feature_groups
    rows = lookup_rows(model, cfg, spec, sparse, multi)
    y_wide = torch.zeros(sparse.shape[0], dtype=torch.float64)
    for n in g.wide:
        dim, row = rows[n]
        y_wide += row[:, dim:].sum(1)
    fm_in = torch.stack([rows[n][1][:, : rows[n][0]] for n in (g.fm or g.deep)], dim=1)
    deep_emb = [n for _, names in expected_layout(cfg, spec) for n in names if n in g.deep]
    deep_in = torch.cat(
        [rows[n][1][:, : rows[n][0]] for n in deep_emb]
        + [dense[:, [spec.dense.index(n)]].double() for n in g.deep if n in spec.dense],
        dim=1,
    )
    return {
        "y_wide": y_wide[:, None],
        "fm_in": fm_in,
        "y_fm": fm_brute_force(fm_in),
        "deep_in": deep_in,
        "y_deep": manual_mlp(model.deep, deep_in),
    }


def reference_logits(model, cfg, spec, sparse, multi, dense) -> torch.Tensor:
    r = reference_parts(model, cfg, spec, sparse, multi, dense)
    out = model.output
    w, b = out.weight.detach().double(), out.bias.detach().double()
    if model.final is None:
        return r["y_wide"] + r["y_fm"].sum(1, keepdim=True) + F.linear(r["y_deep"], w, b)
    h = manual_mlp(model.final, torch.cat([r["y_wide"], r["y_fm"], r["y_deep"]], dim=1))
    return F.linear(h, w, b)


class Capture:
    """Records the first positional input of a module's forward."""

    def __init__(self, module: nn.Module) -> None:
        self.inputs: list[torch.Tensor] = []
        self.handle = module.register_forward_pre_hook(
            lambda _m, args: self.inputs.append(args[0].detach().clone())
        )

    @property
    def last(self) -> torch.Tensor:
        return self.inputs[-1]


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ layout


def table_rows(model: DeepFM, spec: InputSpec) -> list[int]:
    """Rows of each table that belong to features (a trailing padding row, if the
    implementation keeps one, is not counted)."""
    sizes = {s.name: s.num_embeddings for s in spec.sparse + spec.multi}
    return [sum(sizes[n] for n in t.field_names) for t in model.tables]


def test_table_layout_and_parameter_count() -> None:
    cfg = make_cfg(wide_embedding_dim=3)
    model, spec = build(cfg)
    # inputs in first-use order (wide, fm, deep); one 4-dim table with every embedded
    # feature, the wide-only w included (its own dim 8 is unused)
    assert len(model.tables) == 1
    layout = expected_layout(cfg, spec)
    assert layout == [(4, ["u", "w", "p", "i", "c", "tags", "hist"])]
    assert model.tables[0].field_names == layout[0][1]
    (rows,) = table_rows(model, spec)
    assert rows == 7 + 4 + 5 + 5 + 3 + 6 + 5
    weight = model.tables[0].embedding.weight
    assert weight.shape[1] == 4 + 3  # [deep part | wide part]
    assert weight.shape[0] - rows in (0, 1)  # at most one padding row
    emb_params = sum(p.numel() for p in model.embedding_parameters())
    assert emb_params == weight.numel()
    # the embedding tables are the only parameters besides the MLP and the output layer
    other = sum(p.numel() for p in model.deep.parameters()) + sum(
        p.numel() for p in model.output.parameters()
    )
    assert sum(p.numel() for p in model.parameters()) == emb_params + other
    assert {id(p) for p in model.dense_parameters()} == {
        id(p) for p in list(model.deep.parameters()) + list(model.output.parameters())
    }


def test_deep_input_width() -> None:
    model, _ = build(make_cfg())
    # u, i, p, tags, hist (4 each) + x
    assert model.deep_in_features == 5 * 4 + 1
    assert model.deep.mlp[0][0].in_features == 21


# ------------------------------------------------------------------------ wide part


@pytest.mark.parametrize("wide_dim", [4, 1, 3])
def test_wide_part_sums_wide_embedding_rows(wide_dim: int) -> None:
    cfg = make_cfg(wide_embedding_dim=wide_dim, final={"hidden_units": [2]})
    model, spec = build(cfg, seed=wide_dim, spread=True)
    inputs = random_inputs(spec, seed=wide_dim)
    cap = Capture(model.final)
    with torch.no_grad():
        model(*inputs)
    ref = reference_parts(model, cfg, spec, *inputs)
    assert model.tables[0].embedding.weight.shape[1] == 4 + wide_dim
    close(cap.last[:, :1], ref["y_wide"])
    # the reference is not trivially zero
    assert ref["y_wide"].abs().max() > 1e-3


def test_wide_part_hand_value_with_constant_init() -> None:
    cfg = make_cfg(
        groups={"wide": ["u", "i", "tags", "hist"], "fm": ["u", "i"], "deep": ["u", "i"]},
        wide_embedding_dim=3,
        wide_init_fn="nn.init.constant_,val=0.5",
        final={"hidden_units": [2]},
    )
    model, spec = build(cfg)
    sparse, multi, dense = random_inputs(spec)
    cap = Capture(model.final)
    with torch.no_grad():
        model(sparse, multi, dense)
    hist = spec.multi.index(next(m for m in spec.multi if m.name == "hist"))
    tags = spec.multi.index(next(m for m in spec.multi if m.name == "tags"))
    n_hist = (multi[:, hist] >= 0).sum(1).double()  # sum pooling counts every value
    has_tags = (multi[:, tags] >= 0).any(1).double()  # mean pooling: 0.5 if any value
    expected = 0.5 * 3 * (2 + has_tags + n_hist)
    close(cap.last[:, 0], expected)


def test_feature_init_fn_sets_only_that_features_deep_part() -> None:
    features = copy.deepcopy(FEATURES)
    features[1]["init_fn"] = "nn.init.constant_,val=0.25"  # feature i
    model, spec = build(make_cfg(features=features))
    table = next(t for t in model.tables if "i" in t.field_names)
    start = sum(
        s.num_embeddings
        for s in spec.sparse[: [x.name for x in spec.sparse].index("i")]
        if s.name in table.field_names
    )
    wide = table.embedding.weight[start : start + 5, table.dim :]
    assert torch.all(wide == 0)  # the wide part keeps its default, zero
    cfg = make_cfg(features=features, wide_init_fn="nn.init.zeros_")
    model, spec = build(cfg)
    table = next(t for t in model.tables if "i" in t.field_names)
    start = sum(
        s.num_embeddings
        for s in spec.sparse[: [x.name for x in spec.sparse].index("i")]
        if s.name in table.field_names
    )
    rows = table.embedding.weight[start : start + 5]
    assert torch.all(rows[:, : table.dim] == 0.25)
    assert torch.all(rows[:, table.dim :] == 0.0)  # the wide part keeps wide_init_fn
    other = table.embedding.weight[:start]
    assert not torch.all(other[:, : table.dim] == 0.25)  # u keeps the default init
    with pytest.raises(ConfigError, match=r"features\[1\] \(i\)\.init_fn"):
        features[1]["init_fn"] = "nn.init.kaiming_"
        make_cfg(features=features)


# ---------------------------------------------------------------------- full logits


@pytest.mark.parametrize("wide_dim", [4, 3])
def test_logits_without_final_equal_reference(wide_dim: int) -> None:
    cfg = make_cfg(wide_embedding_dim=wide_dim)
    model, spec = build(cfg, seed=10 + wide_dim)
    assert model.final is None
    inputs = random_inputs(spec, seed=wide_dim)
    with torch.no_grad():
        logits = model(*inputs)
    assert logits.shape == (B, 1)
    close(logits, reference_logits(model, cfg, spec, *inputs))


def test_logits_without_final_parts() -> None:
    """The FM and the deep MLP see the by-hand inputs, and each of the three terms enters
    the logit (none is negligible here, so dropping one would break the sum)."""
    cfg = make_cfg()
    model, spec = build(cfg, seed=3, spread=True)
    inputs = random_inputs(spec, seed=3)
    cap_fm, cap_deep = Capture(model.fm), Capture(model.deep)
    with torch.no_grad():
        logits = model(*inputs).double()
    r = reference_parts(model, cfg, spec, *inputs)
    close(cap_fm.last, r["fm_in"])
    close(cap_deep.last, r["deep_in"])
    out = model.output
    deep_logit = F.linear(r["y_deep"], out.weight.detach().double(), out.bias.detach().double())
    fm_sum = r["y_fm"].sum(1, keepdim=True)
    close(logits, r["y_wide"] + fm_sum + deep_logit)
    for part in (r["y_wide"], fm_sum, deep_logit):
        assert (logits - (r["y_wide"] + fm_sum + deep_logit - part)).abs().max() > 1e-3


def test_logits_with_final_equal_reference() -> None:
    cfg = make_cfg(final={"hidden_units": [6, 2]}, wide_embedding_dim=2)
    model, spec = build(cfg, seed=5)
    assert model.final is not None
    # final input = [y_wide (1) | FM vector (fm dim 4) | deep output (3)]
    assert model.final.mlp[0][0].in_features == 1 + 4 + 3
    assert model.output.in_features == 2
    inputs = random_inputs(spec, seed=5)
    cap = Capture(model.final)
    with torch.no_grad():
        logits = model(*inputs)
    r = reference_parts(model, cfg, spec, *inputs)
    close(cap.last, torch.cat([r["y_wide"], r["y_fm"], r["y_deep"]], dim=1))
    close(logits, reference_logits(model, cfg, spec, *inputs))


def test_final_in_features_follow_fm_dim_and_deep_width() -> None:
    features = [dict(f, embedding_dim=6) if f["name"] != "x" else f for f in FEATURES]
    cfg = make_cfg(features, deep={"hidden_units": [9, 7]}, final={"hidden_units": [4]})
    model, _ = build(cfg)
    assert model.final.mlp[0][0].in_features == 1 + 6 + 7


def test_binary_predictions() -> None:
    cfg = make_cfg()
    model, spec = build(cfg)
    inputs = random_inputs(spec)
    with torch.no_grad():
        pred = model.predict(*inputs)
        logits = model(*inputs)
    assert set(pred) == {"logits", "probs"}
    assert pred["logits"].shape == (B,)
    torch.testing.assert_close(pred["logits"], logits[:, 0])
    torch.testing.assert_close(pred["probs"], torch.sigmoid(logits[:, 0]))
    torch.testing.assert_close(score_of(pred), pred["probs"])


# --------------------------------------------------------------- shared embeddings


def test_shared_embeddings_between_fm_and_deep() -> None:
    groups = {"wide": ["u"], "fm": ["u", "i"], "deep": ["u", "i"]}
    cfg = make_cfg(groups=groups, wide_embedding_dim=2)
    model, spec = build(cfg)
    # one table with exactly u's and i's rows (+ padding): no second copy for the deep group
    assert len(model.tables) == 1
    assert table_rows(model, spec) == [7 + 5]
    (weight,) = model.embedding_parameters()
    assert weight.shape[1] == 4 + 2 and weight.shape[0] - (7 + 5) in (0, 1)
    sparse, multi, dense = random_inputs(spec)
    cap_fm, cap_deep = Capture(model.fm), Capture(model.deep)
    with torch.no_grad():
        model(sparse, multi, dense)
        fm0, deep0 = cap_fm.last, cap_deep.last
        # u is field 0 of the table at offset 0: perturb the deep part of row sparse[0, 0]
        u_id = int(sparse[0, 0])
        model.tables[0].embedding.weight[u_id, :4] += 1.0
        model(sparse, multi, dense)
    fm1, deep1 = cap_fm.last, cap_deep.last
    hit = sparse[:, 0] == u_id
    torch.testing.assert_close(fm1[hit, 0] - fm0[hit, 0], torch.ones(int(hit.sum()), 4))
    torch.testing.assert_close(deep1[hit, :4] - deep0[hit, :4], torch.ones(int(hit.sum()), 4))
    # nothing else moved
    torch.testing.assert_close(fm1[~hit], fm0[~hit])
    torch.testing.assert_close(fm1[:, 1], fm0[:, 1])
    torch.testing.assert_close(deep1[:, 4:], deep0[:, 4:])


def test_without_fm_group_the_deep_group_feeds_the_fm() -> None:
    groups = {"wide": ["u", "i"], "deep": ["u", "c", "tags"]}
    cfg = make_cfg(groups=groups)
    assert cfg.feature_groups.fm is None
    model, spec = build(cfg, seed=2)
    inputs = random_inputs(spec, seed=2)
    cap = Capture(model.fm)
    with torch.no_grad():
        logits = model(*inputs)
    r = reference_parts(model, cfg, spec, *inputs)
    assert cap.last.shape == (B, 3, 4)
    close(cap.last, r["fm_in"])
    close(logits, reference_logits(model, cfg, spec, *inputs))


def test_fm_group_differs_from_deep_group() -> None:
    groups = {"wide": ["u"], "fm": ["i", "c"], "deep": ["u", "x"]}
    cfg = make_cfg(groups=groups)
    model, spec = build(cfg, seed=4)
    inputs = random_inputs(spec, seed=4)
    cap = Capture(model.fm)
    with torch.no_grad():
        logits = model(*inputs)
    assert cap.last.shape == (B, 2, 4)
    close(logits, reference_logits(model, cfg, spec, *inputs))


# ------------------------------------------------------------------ multi-valued


def test_multi_valued_pooling_mean_and_sum() -> None:
    groups = {"wide": ["u"], "fm": ["tags", "hist"], "deep": ["tags", "hist"]}
    cfg = make_cfg(groups=groups, wide_embedding_dim=2)
    model, spec = build(cfg, seed=6)
    assert [(m.name, m.pooling) for m in spec.multi] == [("tags", "mean"), ("hist", "sum")]
    sparse = torch.tensor([[0], [1], [2]])
    # tags: 6 rows at offset 7 (after u); hist: 5 rows at offset 13
    multi = torch.tensor(
        [
            [[0, 3, 3, -1], [4, -1, -1, -1]],
            [[-1, -1, -1, -1], [0, 1, 2, -1]],
            [[5, -1, 2, -1], [-1, -1, -1, -1]],
        ]
    )
    weight = model.tables[0].embedding.weight.detach()
    tags = weight[7:13, :4]
    hist = weight[13:18, :4]
    expected_tags = torch.stack(
        [(tags[0] + 2 * tags[3]) / 3, torch.zeros(4), (tags[5] + tags[2]) / 2]
    )
    expected_hist = torch.stack([hist[4], hist[0] + hist[1] + hist[2], torch.zeros(4)])
    cap = Capture(model.fm)
    with torch.no_grad():
        model(sparse, multi, torch.zeros(3, 0))
    torch.testing.assert_close(cap.last[:, 0], expected_tags)
    torch.testing.assert_close(cap.last[:, 1], expected_hist)
    # the table output keeps the wide columns too
    with torch.no_grad():
        emb = model.tables[0](sparse, multi)
    assert emb.shape == (3, 3, 4 + 2)
    torch.testing.assert_close(emb[:, 1, :4], expected_tags)
    torch.testing.assert_close(emb[0, 2, 4:], weight[13 + 4, 4:])


def test_multi_valued_padding_is_ignored() -> None:
    groups = {"wide": ["tags"], "deep": ["tags", "hist"]}
    cfg = make_cfg(groups=groups)
    model, spec = build(cfg, seed=7)
    sparse, multi, dense = random_inputs(spec, seed=7)
    with torch.no_grad():
        base = model(sparse, multi, dense)
        # where the padding sits does not matter: move every row's values to the end
        moved = torch.full_like(multi, -1)
        for b, j in itertools.product(range(B), range(len(spec.multi))):
            values = multi[b, j][multi[b, j] >= 0]
            moved[b, j, multi.shape[2] - len(values) :] = values
        assert not torch.equal(moved, multi)
        again = model(sparse, moved, dense)
        # an all-padding row pools to zeros (row 0 of random_inputs has no values)
        emb = model.tables[0](sparse, multi)
    torch.testing.assert_close(base, again)
    assert torch.equal(emb[0], torch.zeros_like(emb[0]))
    close(base, reference_logits(model, cfg, spec, sparse, multi, dense))


# --------------------------------------------------------------------- gradients


def test_embedding_gradients_are_sparse() -> None:
    cfg = make_cfg()
    model, spec = build(cfg)
    model.train()
    sparse, multi, dense = random_inputs(spec)
    model(sparse, multi, dense).sum().backward()
    tables = model.embedding_parameters()
    assert len(tables) == 1
    for p in tables:
        assert p.grad is not None and p.grad.is_sparse
        assert p.grad.to_dense().abs().sum() > 0
    for p in model.dense_parameters():
        assert p.grad is not None and not p.grad.is_sparse


def test_embedding_gradient_matches_reference() -> None:
    """The table's gradient equals autograd through the by-hand reference: only rows that
    valid ids look up get a gradient (padding contributes nothing)."""
    cfg = make_cfg()
    model, spec = build(cfg, seed=8)
    inputs = random_inputs(spec, seed=8)
    model(*inputs).sum().backward()
    got = model.tables[0].embedding.weight.grad.to_dense().double()
    leaf = model.tables[0].embedding.weight.detach().double().requires_grad_(True)
    _reference_with_grad(model, leaf, cfg, spec, *inputs).sum().backward()
    torch.testing.assert_close(got, leaf.grad, rtol=1e-4, atol=1e-5)
    assert leaf.grad.abs().sum() > 0


def _reference_with_grad(model, weight, cfg, spec, sparse, multi, dense) -> torch.Tensor:
    """The no-final reference logits as a function of a single table's ``weight``."""
    g = cfg.feature_groups
    sizes = {s.name: s for s in spec.sparse + spec.multi}
    sparse_col = {s.name: j for j, s in enumerate(spec.sparse)}
    multi_col = {m.name: j for j, m in enumerate(spec.multi)}
    ((dim, names),) = expected_layout(cfg, spec)
    rows, offset = {}, 0
    for n in names:
        if n in sparse_col:
            rows[n] = weight[sparse[:, sparse_col[n]] + offset]
        else:
            pooled = []
            for b in range(sparse.shape[0]):
                ids = [int(v) + offset for v in multi[b, multi_col[n]] if v >= 0]
                vec = weight[ids].sum(0) if ids else torch.zeros(weight.shape[1])
                pooled.append(vec / len(ids) if ids and sizes[n].pooling == "mean" else vec)
            rows[n] = torch.stack(pooled)
        offset += sizes[n].num_embeddings
    y_wide = sum(rows[n][:, dim:].sum(1, keepdim=True) for n in g.wide)
    fm = fm_brute_force(torch.stack([rows[n][:, :dim] for n in g.fm or g.deep], dim=1))
    deep_in = torch.cat(
        [rows[n][:, :dim] for n in names if n in g.deep]
        + [dense[:, [spec.dense.index(n)]].double() for n in g.deep if n in spec.dense],
        dim=1,
    )
    out = model.output
    w, b = out.weight.detach().double(), out.bias.detach().double()
    return y_wide + fm.sum(1, keepdim=True) + F.linear(manual_mlp(model.deep, deep_in), w, b)


# ---------------------------------------------------------------------- wide init


def test_wide_init_fn_constant_sets_wide_columns() -> None:
    cfg = make_cfg(wide_embedding_dim=3, wide_init_fn="nn.init.constant_,val=0.5")
    model, spec = build(cfg)
    (rows,) = table_rows(model, spec)
    w = model.tables[0].embedding.weight.detach()[:rows]
    assert torch.equal(w[:, 4:], torch.full((rows, 3), 0.5))
    # the deep part keeps its own (uniform) init
    assert not torch.any(w[:, :4] == 0.5)
    assert 0 < w[:, :4].abs().max() <= 1.0


def test_default_init_wide_zero_deep_small() -> None:
    model, spec = build(make_cfg(wide_embedding_dim=3))
    (rows,) = table_rows(model, spec)
    w = model.tables[0].embedding.weight.detach()[:rows]
    assert torch.all(w[:, 4:] == 0)  # the wide part starts at zero
    # the deep part: normal with std min(0.01, sqrt(1 / rows)) per feature (u has 7 rows)
    assert w[:7, :4].std() > 0 and w[:7, :4].abs().max() < 0.06


def test_parse_init_fn() -> None:
    t = torch.empty(3, 2)
    parse_init_fn("nn.init.constant_,val=-1.5")(t)
    assert torch.equal(t, torch.full((3, 2), -1.5))
    parse_init_fn("torch.nn.init.uniform_, a=2.0, b=2.5")(t)
    assert t.min() >= 2.0 and t.max() <= 2.5
    parse_init_fn("zeros_")(t)
    assert torch.equal(t, torch.zeros(3, 2))


@pytest.mark.parametrize(
    "spec, match",
    [
        ("nn.init.ones_", "unknown init function"),
        ("nn.init.bogus_,a=1", "unknown init function"),
        ("nn.init.constant_,0.5", "key=value"),
        ("nn.init.constant_,val=abc", "not a literal"),
    ],
)
def test_bad_init_fn_raises(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_init_fn(spec)
    with pytest.raises(ConfigError, match=match) as err:
        make_cfg(wide_init_fn=spec)
    assert str(err.value).startswith("model.wide_init_fn")


# ---------------------------------------------------------------------- config errors


def _base_dict() -> dict:
    return {
        "features": copy.deepcopy(FEATURES),
        "feature_groups": copy.deepcopy(GROUPS),
        "model": {"deep": {"hidden_units": [5, 3]}},
    }


def _set(path: str, value: Any):
    def mutate(d: dict) -> None:
        *parents, leaf = path.split(".")
        node = d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value

    return mutate


_DELETE = object()


CONFIG_ERRORS = [
    # (mutation, the key the message must start with, other words it must name)
    (_set("feature_groups.wide", ["u", "x"]), "feature_groups.wide[1]", ["'x'", "wide"]),
    (_set("feature_groups.fm", ["u", "w"]), "feature_groups.fm", ["embedding_dim", "w=8"]),
    (_set("feature_groups.fm", ["u", "x"]), "feature_groups.fm", ["dense", "'x'"]),
    (
        _set("feature_groups", {"wide": ["u"], "deep": ["u", "x"]}),
        "feature_groups.deep",
        ["dense", "'x'"],
    ),
    (_set("feature_groups.deep", ["u", "nope"]), "feature_groups.deep[1]", ["'nope'"]),
    (_set("model.deep.units", 3), "model.deep.units", ["unknown key"]),
    (_set("model.oops", 1), "model.oops", ["unknown key"]),
    (_set("model.deep.hidden_units", ["a"]), "model.deep.hidden_units[0]", ["integer"]),
    (_set("model.deep.use_bn", "yes"), "model.deep.use_bn", ["true or false"]),
    (_set("model.deep", {"hidden_units": [4], "use_bn": True, "use_ln": True}), "model.deep",
     ["use_bn", "use_ln"]),
    (_set("model.deep.dropout_ratio", [0.1, 0.2, 0.3]), "model.deep.dropout_ratio", ["3 values"]),
    (_set("model.deep.hidden_units", [4, -3]), "model.deep.hidden_units[1]", ["> 0", "-3"]),
    (_set("model.final", {"hidden_units": []}), "model.final.hidden_units", ["at least one"]),
    (_set("model.deep.activation", "nn.Nope"), "model.deep.activation", ["unknown activation"]),
    (
        _set("model.losses", [{"softmax_cross_entropy": {}}]),
        "model.losses[0]",
        ["softmax_cross_entropy", "num_class"],
    ),
    (
        _set("model", {"deep": {"hidden_units": [4]}, "num_class": 3}),
        "model.losses[0]",
        ["binary_cross_entropy", "num_class"],
    ),
    (_set("model.deep.hidden_units", _DELETE), "model.deep.hidden_units", ["required"]),
    (_set("model.deep", _DELETE), "model.deep", ["required"]),
    (_set("features.0.type", _DELETE), "features[0].type", ["required"]),
    (_set("features.0.type", "idd"), "features[0].type", ["'id'"]),
    (_set("model.wide_embedding_dim", 0), "model.wide_embedding_dim", ["> 0"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "mutate, key, words",
    CONFIG_ERRORS,
    ids=[c[1] + "-" + str(i) for i, c in enumerate(CONFIG_ERRORS)],
)
def test_config_errors_name_the_key(mutate, key: str, words: list[str]) -> None:
    data = _base_dict()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    message = str(err.value)
    assert message.startswith(key), message
    for w in words:
        assert w in message, message


def test_base_config_is_valid() -> None:
    cfg = config_from_dict(_base_dict())
    assert cfg.model.wide_embedding_dim == 4
    assert cfg.model.losses[0].kind == "binary_cross_entropy"


# --------------------------------------------------------- multi-class / regression


@pytest.mark.parametrize("num_class", [2, 3])
@pytest.mark.parametrize("final", [None, {"hidden_units": [4]}])
def test_softmax_predictions(num_class: int, final: dict | None) -> None:
    cfg = make_cfg(num_class=num_class, losses=[{"softmax_cross_entropy": {}}], final=final)
    model, spec = build(cfg, seed=num_class)
    assert model.output.out_features == num_class
    inputs = random_inputs(spec)
    with torch.no_grad():
        pred = model.predict(*inputs)
        logits = model(*inputs)
    assert pred["logits"].shape == (B, num_class)
    torch.testing.assert_close(pred["logits"], logits)
    torch.testing.assert_close(pred["probs"], torch.softmax(logits, dim=1))
    torch.testing.assert_close(pred["probs"].sum(1), torch.ones(B))
    if num_class == 2:
        assert set(pred) == {"logits", "probs", "probs1"}
        torch.testing.assert_close(pred["probs1"], pred["probs"][:, 1])
        torch.testing.assert_close(score_of(pred), pred["probs1"])
    else:
        assert set(pred) == {"logits", "probs"}
    if final is None:
        ref = reference_logits(model, cfg, spec, *inputs)
        close(logits, ref)


def test_l2_predictions() -> None:
    cfg = make_cfg(losses=[{"l2_loss": {}}])
    model, spec = build(cfg)
    inputs = random_inputs(spec)
    with torch.no_grad():
        pred = model.predict(*inputs)
        logits = model(*inputs)
    assert set(pred) == {"y"}
    torch.testing.assert_close(pred["y"], logits[:, 0])
    torch.testing.assert_close(score_of(pred), pred["y"])


# ------------------------------------------------------------ with a fitted encoder


def test_fitted_encoder_end_to_end() -> None:
    features = [
        {"name": "user", "type": "id", "vocab": {"min_count": 1}, "embedding_dim": 4},
        {"name": "ad", "type": "id", "hash_bucket_size": 11, "embedding_dim": 4},
        {"name": "price_b", "column": "price", "type": "raw", "boundaries": [10, 100],
         "embedding_dim": 4},
        {"name": "price", "type": "raw", "normalizer": "log1p_standard"},
        {"name": "cates", "type": "multi_id", "vocab": {"min_count": 1}, "embedding_dim": 4,
         "pooling": "mean", "max_length": 3},
    ]  # fmt: skip
    groups = {
        "wide": ["user", "ad", "price_b"],
        "fm": ["user", "ad", "price_b", "cates"],
        "deep": ["user", "ad", "price_b", "cates", "price"],
    }
    cfg = make_cfg(features, groups, wide_embedding_dim=2)
    df = pd.DataFrame(
        {
            "user": ["a", "b", "a", "c", "d", None],
            "ad": [10, 11, 12, 10, 13, 14],
            "price": [5.0, 50.0, 500.0, np.nan, 20.0, 1.0],
            "cates": [[1, 2], [2], [], [3, 1, 2, 4], None, [7]],
        }
    )
    enc = FeatureEncoder(cfg).fit(df)
    spec = enc.input_spec()
    assert [s.name for s in spec.sparse] == ["user", "ad", "price_b"]
    assert [m.name for m in spec.multi] == ["cates"]
    assert spec.dense == ["price"]
    torch.manual_seed(0)
    model = DeepFM(cfg.model, cfg.feature_groups, spec).eval()
    x = enc.transform(df)
    with torch.no_grad():
        logits = model(x.sparse, x.multi, x.dense)
    close(logits, reference_logits(model, cfg, spec, x.sparse, x.multi, x.dense))


# ------------------------------------------------------------ several embedding dims


MIXED_FEATURES = [
    {"name": "a", "type": "id", "num_buckets": 5, "embedding_dim": 4},
    {"name": "b", "type": "id", "num_buckets": 6, "embedding_dim": 8},
    {"name": "c", "type": "id", "num_buckets": 7, "embedding_dim": 8},
    {"name": "m", "type": "multi_id", "num_buckets": 4, "embedding_dim": 4, "max_length": 3},
]


def test_several_embedding_dims_equal_reference() -> None:
    # inputs in first-use order b, a, c: no table's single-valued columns are a proper
    # prefix of the input columns
    features = MIXED_FEATURES[:3]
    groups = {"wide": ["b", "a"], "fm": ["b", "c"], "deep": ["a", "b", "c"]}
    cfg = make_cfg(features, groups)
    model, spec = build(cfg)
    assert [t.dim for t in model.tables] == [4, 8]
    assert [t.field_names for t in model.tables] == [["a"], ["b", "c"]]
    assert model.deep_in_features == 4 + 8 + 8
    inputs = random_inputs(spec)
    with torch.no_grad():
        logits = model(*inputs)
    close(logits, reference_logits(model, cfg, spec, *inputs))


@pytest.mark.parametrize(
    "groups",
    [
        # a table holding the first of several columns (once a crash)
        {"wide": ["a", "b", "c"], "fm": ["b", "c"], "deep": ["a", "b", "c"]},
        # the FM and wide parts must not read b and c through a's rows (once silently wrong)
        {"wide": ["a", "m"], "fm": ["a", "m"], "deep": ["a", "b", "c"]},
    ],
    ids=["crash", "silent"],
)
def test_table_holding_a_prefix_of_the_columns(groups: dict) -> None:
    cfg = make_cfg(MIXED_FEATURES, groups)
    model, spec = build(cfg)
    inputs = random_inputs(spec)
    with torch.no_grad():
        logits = model(*inputs)
    close(logits, reference_logits(model, cfg, spec, *inputs))


def test_a_model_directory_of_the_previous_layout_loads_and_scores_the_same():
    """tests/fixtures/model_dir_v1 was written before the model's field indices stopped being
    saved with the weights (by the code of commit f9cca9e, with the scores it gave for
    twenty sample rows): a blessed model of that layout still loads, as the gate and the
    server need, and scores the same."""
    from model.export import load

    data = Path(__file__).resolve().parent / "fixtures"
    model = load(data / "model_dir_v1")
    rows = pd.read_parquet(data / "model_dir_v1_rows.parquet")
    expected = np.load(data / "model_dir_v1_scores.npy")
    np.testing.assert_allclose(model.predict(rows), expected, rtol=1e-6, atol=1e-7)

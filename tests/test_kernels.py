"""The compiled CPU kernels (model/kernels.py) and the fused training forward built on them
(model/fused.py) against the PyTorch path they replace (DeepFM.forward): the same logits,
the same gradients, the same optimizer updates."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_deepfm import FEATURES, build, make_cfg, random_inputs
from test_deepfm import GROUPS as DEEPFM_GROUPS
from torch import nn

from model import kernels
from model.config import config_from_dict
from model.deepfm import DeepFM
from model.fused import FusedForward, TableLayout, split_first_linear
from model.modules import MLP
from model.optim import SparseAdagrad, _sum_duplicate_rows
from model.train import train

# Every FM field is also a deep field (what the fused lookup serves); a wide-only id, a
# bucketised number in wide and deep but not in the FM, a dense number, and multi-valued ids
# pooled by mean and by sum.
GROUPS = {
    "wide": ["u", "w", "p", "tags"],
    "fm": ["u", "i", "tags", "hist"],
    "deep": ["u", "i", "p", "x", "tags", "hist"],
}
SINGLE_VALUED = [f for f in FEATURES if f["type"] != "multi_id"]
SINGLE_GROUPS = {"wide": ["u", "i", "w"], "fm": ["u", "i", "p"], "deep": ["u", "i", "p", "x"]}


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch):
    assert kernels.available(), "numba kernels must compile here"
    yield


def step(model: DeepFM, inputs, fused: FusedForward | None = None) -> dict:
    """One forward and backward through ``fused`` (the kernels) or, without it, the model's
    own forward (the PyTorch path)."""
    model.train()
    model.zero_grad(set_to_none=True)
    logits = (fused or model)(*inputs)
    # a loss that weights every logit differently, so each gradient path matters
    weights = torch.linspace(-1.0, 2.0, logits.numel()).view_as(logits)
    (logits * weights).sum().backward()
    table = model.tables[0].embedding.weight
    return {
        "logits": logits.detach(),
        "table_grad": table.grad.coalesce().to_dense(),
        "grad_is_sparse": table.grad.is_sparse,
        "dense_grads": [p.grad.clone() for p in model.dense_parameters()],
    }


@pytest.mark.parametrize("value_budget", [64, 12, 0], ids=["all-small", "mixed", "none-small"])
@pytest.mark.parametrize(
    "features, groups, model_cfg",
    [
        (FEATURES, GROUPS, {}),
        (FEATURES, GROUPS, {"final": {"hidden_units": [4]}}),
        (FEATURES, GROUPS, {"wide_embedding_dim": 1}),
        (FEATURES, DEEPFM_GROUPS, {}),
        (SINGLE_VALUED, SINGLE_GROUPS, {}),
        (SINGLE_VALUED, {"wide": ["u"], "deep": ["u", "i", "p"]}, {}),
        (SINGLE_VALUED, SINGLE_GROUPS, {"deep": {"hidden_units": [5], "use_bn": True}}),
        (SINGLE_VALUED, SINGLE_GROUPS, {"deep": {"hidden_units": [5, 3], "bias": False}}),
        (SINGLE_VALUED, SINGLE_GROUPS, {"deep": {"hidden_units": [5], "activation": "nn.Tanh"}}),
        (SINGLE_VALUED, {"wide": ["w"], "fm": ["u", "i"], "deep": ["i", "p", "x"]}, {}),
    ],
    ids=[
        "multi-valued",
        "final-mlp",
        "wide-dim-1",
        "fm-field-outside-deep",
        "single-valued",
        "fm-from-deep-no-dense",
        "batch-norm-no-bias",
        "relu-no-bias",
        "tanh",
        "deep-only-fm-only-wide-only-fields",
    ],
)
def test_fused_lookup_equals_the_pytorch_path(
    features, groups, model_cfg, value_budget, monkeypatch
):
    """Small-vocabulary fields are summed per value (their share of the first layer is
    computed per table row) up to ``value_budget`` rows: all, some or none of them."""
    cfg = make_cfg(features, groups, **model_cfg)
    model, spec = build(cfg, seed=3)
    fused_forward = FusedForward.attach(model, min_value_budget=value_budget)
    assert fused_forward is not None
    inputs = random_inputs(spec, seed=4)
    calls = []
    forward = kernels.pooled_forward
    monkeypatch.setattr(kernels, "pooled_forward", lambda *a: (calls.append(1), forward(*a))[1])
    torch_path = step(copy.deepcopy(model), inputs)
    fused = step(model, inputs, fused_forward)
    assert calls == [1]  # the fused path ran once, the PyTorch path not at all
    # the first layer's ReLU runs in the kernels when the layer is Linear -> ReLU
    first = list(model.deep.mlp[0])
    first_is_relu = len(first) > 1 and type(first[1]) is nn.ReLU
    assert fused_forward.layout.first_is_relu is first_is_relu
    assert fused_forward.batch_plans
    assert all(p.relu is first_is_relu for p in fused_forward.batch_plans.values())
    # without a final MLP the logits take the FM output summed: the kernels write [B, 1]
    assert fused_forward.layout.fm_summed is ("final" not in model_cfg)
    # and the output layer runs in the logits kernel then (one class)
    assert fused_forward.fused_logits is ("final" not in model_cfg)
    # the later Linear -> ReLU layers run their bias and ReLU in the kernels
    layers = fused_forward.relu_layers
    plain = first_is_relu and all(len(list(p)) == 2 for p in list(model.deep.mlp)[1:])
    assert (layers is not None) is plain
    assert layers is None or len(layers) == len(model.deep.mlp) - 1
    assert fused["grad_is_sparse"]
    torch.testing.assert_close(fused["logits"], torch_path["logits"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused["table_grad"], torch_path["table_grad"], rtol=1e-5, atol=1e-6)
    assert torch_path["table_grad"].abs().sum() > 0
    for a, b in zip(fused["dense_grads"], torch_path["dense_grads"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("value_budget", [64, 0], ids=["all-small", "none-small"])
@pytest.mark.parametrize(
    "features, groups, model_cfg",
    [
        (FEATURES, GROUPS, {}),
        (SINGLE_VALUED, SINGLE_GROUPS, {"deep": {"hidden_units": [5, 3], "bias": False}}),
        (SINGLE_VALUED, SINGLE_GROUPS, {"deep": {"hidden_units": [5], "activation": "nn.Tanh"}}),
    ],
    # (not batch norm: over these 6 samples it divides by a std of 0.06, and bf16's rounding
    # of the first layer then moves a gradient by 2-7% either way, in both paths)
    ids=["multi-valued", "relu-no-bias", "tanh"],
)
def test_fused_lookup_under_autocast_equals_the_pytorch_path(
    features, groups, model_cfg, value_budget, dtype
):
    """Under autocast the products over the per-sample columns run in its dtype, the
    per-value fields' share in float32: the logits come back in the autocast dtype, close
    to the PyTorch path's, and the table's gradient in float32."""
    model, spec = build(make_cfg(features, groups, **model_cfg), seed=5)
    fused_forward = FusedForward.attach(model, min_value_budget=value_budget)
    inputs = random_inputs(spec, seed=6)
    with torch.autocast("cpu", dtype=dtype):
        torch_path = step(copy.deepcopy(model), inputs)
        fused = step(model, inputs, fused_forward)
    assert [len(p.value_rows) > 0 for p in fused_forward.batch_plans.values()] == [value_budget > 0]
    assert fused["logits"].dtype == torch_path["logits"].dtype
    torch.testing.assert_close(fused["logits"], torch_path["logits"], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(fused["table_grad"], torch_path["table_grad"], rtol=1e-2, atol=1e-3)
    assert fused["table_grad"].dtype == torch.float32
    assert torch_path["table_grad"].abs().sum() > 0
    for a, b in zip(fused["dense_grads"], torch_path["dense_grads"], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def _bf16_bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy().view(np.uint16)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("relu", [True, False])
def test_add_values_on_bfloat16_rounds_once_as_pytorch_does(relu, bias):
    """``h1`` in bfloat16: each sample's sum (with the first layer's bias, when it has one)
    is taken in float32 and rounded once to the nearest bfloat16, ties to even, NaN and
    infinities kept: bit for bit what PyTorch gives for the same float32 sum."""
    gen = torch.Generator().manual_seed(0)
    h1 = torch.randn(70, 33, generator=gen).bfloat16()  # more rows than one block of 64
    h1[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])
    proj = torch.randn(5, 33, generator=gen)
    # exact ties between two bfloat16 values: 1 + 2^-8 (rounds down to even) and
    # 1 + 3 * 2^-8 (rounds up)
    proj[0, :2] = torch.tensor([2.0**-8, 3 * 2.0**-8])
    proj[3, :2] = 0.0
    idx = torch.randint(0, 5, (70, 3), generator=gen)
    idx[1] = torch.tensor([0, 1, 3])
    h1[1, :2] = 1.0
    deep = np.array([0, 2], dtype=np.int64)  # small fields 0 and 2 of the three are deep
    b1 = torch.randn(33, generator=gen) if bias else torch.zeros(0)
    b1[:2] = 0.0  # keeps the ties below
    # in the kernel's order: output + bias, then the two value rows' sum
    expected = (h1.float() + (b1 if bias else 0.0)) + (proj[idx[:, 0]] + proj[idx[:, 2]])
    if relu:
        expected = torch.relu(expected)
    expected = expected.bfloat16()
    out = h1.clone()
    kernels.add_values(proj.numpy(), idx.numpy(), deep, b1.numpy(), _bf16_bits(out), relu)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(out), nan)  # NaN stays NaN (its payload may differ)
    assert torch.equal(out[~nan].view(torch.int16), expected[~nan].view(torch.int16))
    assert out[1, 0] == 1.0 and out[1, 1] == 1.0 + 2.0**-6  # the ties, to even
    assert nan[0, 0] and out[0, 1] == float("inf")


def test_pooled_forward_writes_x_in_bfloat16_and_the_fm_output_summed():
    """Beside ``x`` the gather writes it rounded to bfloat16 (the products' input under bf16
    autocast: no cast pass after), bit for bit PyTorch's rounding; with a ``[B, 1]`` FM
    output it writes each sample's FM components summed, as the logits take them."""
    gen = np.random.default_rng(0)
    batch, dim, wide_dim, rows_n = 70, 4, 1, 12
    weight = gen.standard_normal((rows_n, dim + wide_dim)).astype(np.float32)
    rows = gen.integers(0, rows_n, (batch, 3)).astype(np.int64)
    field = np.arange(3, dtype=np.int64)
    deep_pos = np.array([0, 1, -1], dtype=np.int64)  # field 2: FM and wide only
    fm_mask = np.array([True, False, True])
    wide_mask = np.array([True, True, False])
    dense = gen.standard_normal((batch, 2)).astype(np.float32)
    none = np.empty(0, dtype=np.int64)

    def gather(x16: np.ndarray, fm_width: int):
        x = np.empty((batch, 2 * dim + 2), np.float32)
        s, fm = np.empty((batch, dim), np.float32), np.empty((batch, fm_width), np.float32)
        wide = np.empty((batch, 1), np.float32)
        kernels.pooled_forward(
            weight, rows, field, np.empty((0, 0), np.float32), deep_pos, fm_mask, wide_mask,
            dim, dense, none, none, 3, x, x16, s, fm, wide, np.empty((batch, 0), np.int64),
        )  # fmt: skip
        return x, fm

    x, fm = gather(np.empty((0, 0), np.uint16), dim)
    x16 = np.empty((batch, 2 * dim + 2), np.uint16)
    x_again, fm_sum = gather(x16, 1)
    np.testing.assert_array_equal(x_again, x)
    assert np.array_equal(x16, _bf16_bits(torch.from_numpy(x).bfloat16()))
    e0, e2 = weight[rows[:, 0], :dim], weight[rows[:, 2], :dim]
    np.testing.assert_allclose(fm, e0 * e2, rtol=1e-6, atol=1e-6)  # FM of two fields
    np.testing.assert_allclose(fm_sum[:, 0], fm.sum(axis=1), rtol=1e-5, atol=1e-6)


def test_value_sums_on_bfloat16_equal_the_float32_sums_and_round_the_gradient():
    """The first layer's output gradient and activation in bfloat16: the per-value sums are
    the float32 path's on the same (widened) values, and the masked gradient comes back
    rounded to bfloat16 for the products."""
    gen = torch.Generator().manual_seed(1)
    batch, hidden, dim, values = 50, 12, 4, 6
    g = torch.randn(batch, hidden, generator=gen).bfloat16()
    act = torch.randn(batch, hidden, generator=gen).bfloat16()
    idx = torch.randint(0, values, (batch, 2), generator=gen)
    seg_lo = np.array([0, hidden], dtype=np.int64)  # field 0: deep and FM; field 1: FM only
    seg_hi = np.array([hidden + 2 * dim, hidden + 2 * dim], dtype=np.int64)
    wide = np.array([1], dtype=np.int64)
    gfm, s = torch.randn(batch, dim, generator=gen), torch.randn(batch, dim, generator=gen)
    gwide = torch.randn(batch, 1, generator=gen)

    def run(g_in, act_in, gh):
        sums = [np.zeros((2, values, hidden + 2 * dim), np.float32),
                np.zeros((2, values), np.float32), np.zeros((2, hidden), np.float32)]  # fmt: skip
        kernels.value_sums(
            idx.numpy(), seg_lo, seg_hi, wide, g_in, act_in, True, gfm.numpy(), s.numpy(),
            gwide.numpy(), gh, *sums, True,
        )  # fmt: skip
        return sums

    gh32 = np.empty((batch, hidden), np.float32)
    reference = run(g.float().numpy(), act.float().numpy(), gh32)
    gh = torch.empty(batch, hidden, dtype=torch.bfloat16)
    got = run(_bf16_bits(g), _bf16_bits(act), _bf16_bits(gh))
    for a, b in zip(got, reference, strict=True):
        np.testing.assert_array_equal(a, b)
    masked = torch.where(act.float() <= 0, 0.0, g.float())
    assert torch.equal(gh, masked.bfloat16())
    np.testing.assert_array_equal(gh32, masked.numpy())
    assert np.abs(reference[0]).sum() > 0


def test_the_model_forward_never_runs_the_kernels(monkeypatch):
    """Only the trainer's FusedForward does: evaluation, export and every other use of the
    model run its PyTorch forward, in eval and in train mode."""
    cfg = make_cfg(FEATURES, GROUPS)
    model, spec = build(cfg)
    inputs = random_inputs(spec)
    calls = []
    monkeypatch.setattr(kernels, "pooled_forward", lambda *a: calls.append(1))
    model.eval()
    model(*inputs)
    model.train()
    with torch.no_grad():
        model(*inputs)
    model(*inputs).sum().backward()
    assert calls == []
    assert model.tables[0].embedding.weight.grad.is_sparse


def test_the_fused_forward_is_only_for_float32_cpu_tables():
    model, _ = build(make_cfg(FEATURES, GROUPS))
    assert FusedForward.attach(model) is not None
    assert FusedForward.attach(copy.deepcopy(model).double()) is None


def test_layouts_the_fused_lookup_does_not_serve_fall_back():
    # a multi-valued FM field outside the deep group: its pooled embedding is not at hand
    groups = {"wide": ["u"], "fm": ["u", "tags"], "deep": ["u", "x"]}
    model, _ = build(make_cfg(FEATURES, groups))
    assert TableLayout.of(model) is None and FusedForward.attach(model) is None
    # two embedding dims in the deep group: two tables
    features = [*FEATURES, {"name": "z", "type": "id", "num_buckets": 3, "embedding_dim": 2}]
    model, _ = build(make_cfg(features, {**GROUPS, "deep": [*GROUPS["deep"], "z"]}))
    assert len(model.tables) == 2
    assert TableLayout.of(model) is None and FusedForward.attach(model) is None


def test_fused_lookup_with_dense_tables_uses_autograd(monkeypatch):
    cfg = make_cfg(FEATURES, GROUPS)
    spec = build(cfg)[1]
    model = DeepFM(cfg.model, cfg.feature_groups, spec, sparse_gradients=False)
    assert FusedForward.attach(model) is None  # the trainer runs the model's forward
    model.train()
    calls = []
    monkeypatch.setattr(kernels, "pooled_forward", lambda *a: calls.append(1))
    model(*random_inputs(spec)).sum().backward()
    assert calls == [] and not model.tables[0].embedding.weight.grad.is_sparse


def test_a_kernel_that_fails_to_run_means_the_pytorch_path(monkeypatch):
    def broken(*_args):
        raise TypeError("no matching definition")

    monkeypatch.setattr(kernels, "_ready", None)
    monkeypatch.setattr(kernels, "pooled_forward", broken)
    with pytest.warns(UserWarning, match="CPU embedding kernels unavailable"):
        assert kernels.available() is False
    model, spec = build(make_cfg(FEATURES, GROUPS))
    assert FusedForward.attach(model) is None  # the trainer runs the model's forward
    model.train()
    model(*random_inputs(spec)).sum().backward()  # runs, through PyTorch ops
    assert model.tables[0].embedding.weight.grad.is_sparse


def test_deepfm_no_kernels_turns_them_off(monkeypatch):
    monkeypatch.setattr(kernels, "_ready", None)
    monkeypatch.setenv("DEEPFM_NO_KERNELS", "1")
    assert kernels.available() is False


# --------------------------------------------------------- the MLP after its first Linear


@pytest.mark.parametrize(
    "options", [{}, {"use_bn": True}, {"use_ln": True, "dropout_ratio": 0.3}, {"activation": None}]
)
def test_mlp_after_its_first_linear_is_the_rest_of_the_mlp(options: dict) -> None:
    torch.manual_seed(0)
    mlp = MLP(6, [5, 4, 3], **options).eval()
    x = torch.randn(7, 6)
    linear, rest, _ = split_first_linear(mlp)
    assert isinstance(linear, nn.Linear) and linear.in_features == 6
    assert linear is mlp.mlp[0][0]  # the MLP's own modules, not copies
    torch.testing.assert_close(rest(linear(x)), mlp(x))


@pytest.mark.parametrize(
    "options, relu",
    [
        ({}, True),
        ({"dropout_ratio": 0.3, "bias": False}, True),
        ({"activation": "nn.LeakyReLU(negative_slope=0.1)"}, False),
        ({"use_bn": True}, False),
        ({"use_ln": True}, False),
        ({"activation": None}, False),
    ],
)
def test_mlp_after_its_first_relu_is_the_rest_of_the_mlp(options: dict, relu: bool) -> None:
    torch.manual_seed(0)
    mlp = MLP(6, [5, 4], **options).eval()
    x = torch.randn(7, 6)
    linear, _, after_relu = split_first_linear(mlp)
    assert (after_relu is not None) is relu
    if relu:
        h = torch.relu(linear(x))
        assert (h == 0).any() and (h > 0).any()
        torch.testing.assert_close(after_relu(h), mlp(x))


# ------------------------------------------------------------------ sparse Adagrad


def _rows_and_grads(num_rows: int, n: int, width: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    # long-tailed ids: many duplicates of a few rows, and rows seen once
    rows = torch.cat([torch.randint(0, 3, (n // 2,), generator=gen),
                      torch.randint(0, num_rows, (n - n // 2,), generator=gen)])  # fmt: skip
    rows = rows[torch.randperm(n, generator=gen)]
    return rows, torch.randn(n, width, generator=gen)


@pytest.mark.parametrize("parts", [1, 2, 3, 4])
@pytest.mark.parametrize("rowwise", [False, True])
def test_adagrad_kernel_equals_the_reference_update(parts, rowwise):
    num_rows, width = 50, 5
    rows, grads = _rows_and_grads(num_rows, 301, width, seed=parts)
    weight = torch.randn(num_rows, width)
    acc = torch.rand(num_rows, 1 if rowwise else width)
    lr, eps = 0.1, 1e-8
    # reference, by hand: one update per distinct row with its summed gradient
    expected_w, expected_acc = weight.clone().double(), acc.clone().double()
    for r in rows.unique().tolist():
        g = grads[rows == r].double().sum(0)
        sq = g.square().mean(0, keepdim=True) if rowwise else g.square()
        expected_acc[r] += sq
        expected_w[r] -= lr * g / (expected_acc[r].sqrt() + eps)
    slot = np.full((parts, num_rows), -1, dtype=np.int32)
    kernels.adagrad_update(
        weight.numpy(), acc.numpy(), rows.numpy(), grads.numpy(), np.float32(lr),
        np.float32(eps), rowwise, slot, np.empty(len(rows), np.int64),
        np.empty((len(rows), width), np.float32), np.empty(parts, np.int64),
    )  # fmt: skip
    torch.testing.assert_close(weight.double(), expected_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acc.double(), expected_acc, rtol=1e-5, atol=1e-5)
    assert (slot == -1).all()  # the scratch map is clean for the next step
    untouched = torch.ones(num_rows, dtype=torch.bool)
    untouched[rows] = False
    assert untouched.any()


@pytest.mark.parametrize("rowwise", [False, True])
def test_sparse_adagrad_with_and_without_kernels_agree(rowwise, monkeypatch):
    num_rows, width = 40, 6
    start = torch.randn(num_rows, width)
    results = []
    for use_kernels in (True, False):
        monkeypatch.setattr(kernels, "_ready", use_kernels)
        p = torch.nn.Parameter(start.clone())
        opt = SparseAdagrad([p], lr=0.05, rowwise=rowwise, initial_accumulator_value=0.1)
        for seed in range(3):
            rows, grads = _rows_and_grads(num_rows, 64, width, seed)
            p.grad = torch.sparse_coo_tensor(rows[None], grads, p.shape, check_invariants=True)
            opt.step()
        results.append((p.detach().clone(), opt.state[p]["sum"].clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    assert not torch.equal(results[0][0], start)


def test_sum_duplicate_rows_reference():
    rows, grads = _rows_and_grads(10, 40, 3, seed=0)
    unique, sums = _sum_duplicate_rows(
        torch.sparse_coo_tensor(rows[None], grads, (10, 3), check_invariants=True)
    )
    for r, s in zip(unique.tolist(), sums, strict=True):
        torch.testing.assert_close(s, grads[rows == r].sum(0))


# ------------------------------------------------------------------------- training


def test_training_with_and_without_kernels_reaches_the_same_model(monkeypatch):
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame(
        {
            "a": rng.integers(0, 50, n).astype(str),
            "b": rng.integers(0, 7, n).astype(str),
            "x": rng.normal(size=n),
            "event_timestamp": pd.date_range("2024-01-01", periods=n, freq="min", tz="UTC"),
        }
    )
    df["label"] = (rng.random(n) < 0.2 + 0.5 * (df["b"] == "3")).astype(int)
    cfg = config_from_dict(
        {
            "data": {"label": "label", "group_key": None},
            "features": [
                {"name": "a", "type": "id", "vocab": {}, "embedding_dim": 4},
                {"name": "b", "type": "id", "vocab": {}, "embedding_dim": 4},
                {"name": "x", "type": "raw", "normalizer": "standard"},
            ],
            "feature_groups": {"wide": ["a", "b"], "fm": ["a", "b"], "deep": ["a", "b", "x"]},
            "model": {"deep": {"hidden_units": [8]}, "metrics": ["auc"]},
            "train": {
                "batch_size": 256,
                "num_epochs": 2,
                "validation_fraction": 0.0,  # train on all rows, both epochs
                "seed": 3,
                "num_threads": 2,
            },
        }
    )
    models, calls = [], []
    forward = kernels.pooled_forward
    monkeypatch.setattr(kernels, "pooled_forward", lambda *a: (calls.append(1), forward(*a))[1])
    for use_kernels in (True, False):
        monkeypatch.setattr(kernels, "_ready", use_kernels)
        calls.clear()
        models.append(train(cfg, df, None, progress=False).model)
        # the trainer chose the fused forward with the kernels (every step), else not
        assert len(calls) == (24 if use_kernels else 0)  # 2 epochs of 12 steps
    for (name, a), (_, b) in zip(
        models[0].state_dict().items(), models[1].state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)


def test_the_retail_example_trains_the_same_model_with_and_without_kernels(tmp_path, monkeypatch):
    """The second example dataset (string and integer keys, nullable ints, lists) with its
    own spec and the shipped config: the fused path runs every step, including the later
    Linear -> ReLU layers and the fused logits, and reaches the model the PyTorch ops do."""
    from feature_repo import retail_data
    from feature_repo.spec import load_spec
    from training.config import read_config_dict

    root = Path(__file__).resolve().parents[1]
    out = retail_data.generate(3000, seed=0, out_dir=tmp_path / "retail")
    df = pd.read_parquet(out["paths"]["flat"])
    section = load_spec(root / "feature_repo" / "retail_features.yaml").model_section()
    settings = read_config_dict(root / "configs" / "deepfm.yaml")
    settings["features"], settings["feature_groups"] = (
        section["features"],
        section["feature_groups"],
    )
    settings["data"] = {"label": section["label"], "timestamp": section["timestamp"]}
    settings["model"]["metrics"] = ["auc"]
    settings["train"].update(
        {"batch_size": 256, "num_epochs": 1, "validation_fraction": 0.0, "seed": 3}
    )
    cfg = config_from_dict(settings)
    fused, calls = [], []
    attach = FusedForward.attach.__func__

    def spy(cls, model, **kw):
        forward = attach(cls, model, **kw)
        fused.append(forward)
        return forward

    monkeypatch.setattr(FusedForward, "attach", classmethod(spy))
    logits = kernels.output_forward
    monkeypatch.setattr(kernels, "output_forward", lambda *a: (calls.append(1), logits(*a))[1])
    models = []
    for use_kernels in (True, False):
        monkeypatch.setattr(kernels, "_ready", use_kernels)
        models.append(train(cfg, df, None, progress=False).model)
    assert fused[0] is not None and fused[0].relu_layers and fused[0].fused_logits
    assert fused[1] is None  # without the kernels: the model's own forward
    assert len(calls) == -(-len(df) // 256)  # the fused logits ran every step
    for (name, a), (_, b) in zip(
        models[0].state_dict().items(), models[1].state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)

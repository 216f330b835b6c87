"""The compiled CPU kernels (model/kernels.py) and the fused training forward built on them
(model/fused.py) against the PyTorch path they replace (DeepFM.forward): the same logits,
the same gradients, the same optimizer updates."""

from __future__ import annotations

import copy

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
    assert fused["grad_is_sparse"]
    torch.testing.assert_close(fused["logits"], torch_path["logits"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused["table_grad"], torch_path["table_grad"], rtol=1e-5, atol=1e-6)
    assert torch_path["table_grad"].abs().sum() > 0
    for a, b in zip(fused["dense_grads"], torch_path["dense_grads"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_lookup_under_bf16_autocast_equals_the_pytorch_path():
    model, spec = build(make_cfg(FEATURES, GROUPS), seed=5)
    inputs = random_inputs(spec, seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch_path = step(copy.deepcopy(model), inputs)
        fused = step(model, inputs, FusedForward.attach(model))
    torch.testing.assert_close(fused["logits"], torch_path["logits"], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(fused["table_grad"], torch_path["table_grad"], rtol=1e-2, atol=1e-3)
    assert fused["table_grad"].dtype == torch.float32


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

"""benchmarks/fuxictr_compare.py: the DeepFM it assembles from FuxiCTR's parts is LR + FM +
MLP -> sigmoid, and BaseModel.train_step trains it. Skipped where FuxiCTR is not installed
(it is only in the `bench` extra, not in `make test`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fuxictr")

ROOT = Path(__file__).resolve().parents[1]
CATS = {"a": 5, "b": 3, "c": 7}  # field -> vocabulary size
NUMERIC = ["x"]
DIM, HIDDEN = 4, [8, 6]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location(
        "fuxictr_compare", ROOT / "benchmarks" / "fuxictr_compare.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def model_and_batch(compare, tmp_path):
    fmap = compare.feature_map(CATS, NUMERIC, "y", DIM, tmp_path)
    model = compare.fuxictr_deepfm(fmap, DIM, HIDDEN, lr=0.01, seed=3, tmp=tmp_path)
    with torch.no_grad():  # large weights: every term of the sum must matter
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(0)
    sparse = torch.stack([torch.randint(0, v, (6,), generator=g) for v in CATS.values()], 1)
    dense = torch.randn(6, len(NUMERIC), generator=g)
    batch = compare.column_dict([*CATS, *NUMERIC], sparse, dense, len(CATS))
    batch["y"] = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    return model, batch


def by_hand(model, batch) -> dict[str, np.ndarray]:
    """LR, FM and MLP logits from the model's own weights, in float64 numpy."""

    def w(t: torch.Tensor) -> np.ndarray:
        return t.detach().double().numpy()

    def field(layers, name: str) -> np.ndarray:  # (batch, width) of one field
        if name in CATS:
            return w(layers[name].weight)[batch[name].numpy()]
        return batch[name].double().numpy()[:, None] * w(layers[name].weight)[:, 0]

    deep = model.embedding_layer.embedding_layer.embedding_layers
    wide = model.fm.lr_layer.embedding_layer.embedding_layer.embedding_layers
    names = [*CATS, *NUMERIC]
    v = np.stack([field(deep, n) for n in names], 1)  # (batch, fields, dim)
    lr = sum(field(wide, n)[:, 0] for n in names) + w(model.fm.lr_layer.bias)[0]
    fm = 0.5 * (v.sum(1) ** 2 - (v**2).sum(1)).sum(1)
    h = v.reshape(len(v), -1)
    linears = [m for m in model.mlp.mlp if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [*HIDDEN, 1]
    for i, m in enumerate(linears):
        h = h @ w(m.weight).T + w(m.bias)
        if i < len(linears) - 1:
            h = np.maximum(h, 0.0)
    return {"lr": lr, "fm": fm, "mlp": h[:, 0]}


def test_output_is_sigmoid_of_lr_plus_fm_plus_mlp(model_and_batch) -> None:
    model, batch = model_and_batch
    model.eval()
    with torch.no_grad():
        got = model(batch)["y_pred"].double().numpy()[:, 0]
    parts = by_hand(model, batch)
    expected = 1 / (1 + np.exp(-(parts["lr"] + parts["fm"] + parts["mlp"])))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for name in parts:  # each part moves the output: leaving one out is detectably wrong
        rest = sum(parts[k] for k in parts if k != name)
        assert np.abs(1 / (1 + np.exp(-rest)) - got).max() > 1e-3, name


def test_train_step_is_bce_backward_and_adam(model_and_batch) -> None:
    model, batch = model_and_batch
    model.train()
    with torch.no_grad():
        p = model(batch)["y_pred"][:, 0]
    bce = torch.nn.functional.binary_cross_entropy(p, batch["y"]).item()
    table = model.embedding_layer.embedding_layer.embedding_layers["a"].weight
    before = table.detach().clone()
    loss = model.train_step(batch)
    assert loss.item() == pytest.approx(bce, rel=1e-6)
    changed = (table.detach() != before).any(1)
    seen = torch.zeros(CATS["a"], dtype=torch.bool)
    seen[batch["a"]] = True
    assert torch.equal(changed, seen)  # first Adam step: only the looked-up rows move

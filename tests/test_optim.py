"""The tables' Adam (model.optim.TableAdam), embedding L2 and the default initialisation.

Adam on small tables must equal ``torch.optim.Adam`` on a dense copy (rows a batch did not
touch included), the lazy rows ``torch.optim.SparseAdam``; L2 adds exactly ``l2 * w`` to the
gradient; small fields start near zero and the wide part at zero.
"""

from __future__ import annotations

import pytest
import torch

from model.config import ConfigError, SparseOptimizerConfig
from model.deepfm import EmbeddingTable, default_init_std
from model.features import SparseInput
from model.optim import TableAdam, build_sparse_optimizer
from training.config import load_config
from training.run import resolve_config_path

FIELDS = [3, 5, 40]  # rows per field of one table
DIM = 4
STEPS = 25


def sparse_grads(steps: int, rows: int, touched: list[int] | None = None, seed: int = 0):
    """``steps`` sparse COO gradients of a ``[rows, DIM]`` table, with duplicate lookups;
    ``touched`` limits the rows a batch may look up (others never get a gradient)."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.tensor(touched if touched is not None else range(rows))
    out = []
    for _ in range(steps):
        n = int(torch.randint(3, 12, (1,), generator=gen))
        idx = pool[torch.randint(0, len(pool), (n,), generator=gen)]
        values = torch.randn(n, DIM, generator=gen)
        out.append(torch.sparse_coo_tensor(idx[None], values, (rows, DIM), check_invariants=True))
    return out


def run(opt_cls, weight: torch.Tensor, grads, dense_grad: bool, **kw) -> torch.Tensor:
    p = torch.nn.Parameter(weight.clone())
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.to_dense() if dense_grad else g.clone()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("grad_kind", ["sparse", "dense"])
@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_adam_equals_torch_adam_on_a_dense_copy(grad_kind: str, l2: float) -> None:
    rows = sum(FIELDS)
    w0 = torch.randn(rows, DIM, generator=torch.Generator().manual_seed(1)) * 0.1
    # every row in the first batches, then rows 0..9 only: under dense Adam the others
    # keep moving on their momentum (and L2), under lazy Adam they stop
    grads = sparse_grads(4, rows, seed=8) + sparse_grads(STEPS, rows, touched=list(range(10)))
    ours = run(TableAdam, w0, grads, grad_kind == "dense", lr=0.01, l2=l2, field_rows=[FIELDS])
    ref = run(torch.optim.Adam, w0, grads, True, lr=0.01, weight_decay=l2, foreach=False)
    lazy = run(TableAdam, w0, grads, False, lr=0.01, l2=l2, lazy=True, field_rows=[FIELDS])
    assert (ref - lazy)[10:].abs().max() > 1e-3  # the untouched rows' updates matter here
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_lazy_adam_equals_torch_sparse_adam() -> None:
    rows = sum(FIELDS)
    w0 = torch.randn(rows, DIM, generator=torch.Generator().manual_seed(2)) * 0.1
    grads = sparse_grads(STEPS, rows, seed=3)
    ours = run(TableAdam, w0, grads, False, lr=0.01, lazy=True, field_rows=[FIELDS])
    ref = run(torch.optim.SparseAdam, w0, grads, False, lr=0.01)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_large_fields_are_lazy_and_small_fields_dense() -> None:
    """``dense_max_rows=5``: the 40-row field is updated only where touched (as SparseAdam),
    the 3- and 5-row fields every step (as Adam)."""
    rows = sum(FIELDS)
    w0 = torch.randn(rows, DIM, generator=torch.Generator().manual_seed(4)) * 0.1
    grads = sparse_grads(STEPS, rows, touched=[0, 3, 8, 9, 10], seed=5)
    ours = run(TableAdam, w0, grads, False, lr=0.01, dense_max_rows=5, field_rows=[FIELDS])
    dense = run(torch.optim.Adam, w0, grads, True, lr=0.01, foreach=False)
    lazy = run(torch.optim.SparseAdam, w0, grads, False, lr=0.01)
    torch.testing.assert_close(ours[:8], dense[:8], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[8:], lazy[8:], atol=1e-5, rtol=0)
    assert torch.equal(ours[11:], w0[11:])  # the large field's untouched rows never moved
    assert (dense[:8] - lazy[:8]).abs().max() > 1e-3  # the two rules differ on these rows


def test_l2_adds_exactly_l2_times_the_weight_to_the_gradient() -> None:
    """After one step Adam's first moment is ``(1 - beta1) * gradient``: with
    ``embedding_regularizer`` it holds ``(1 - beta1) * (g + l2 * w)`` on every dense row
    (untouched rows: ``(1 - beta1) * l2 * w``) and on the touched lazy rows only."""
    rows, l2 = sum(FIELDS), 0.3
    w0 = torch.randn(rows, DIM, generator=torch.Generator().manual_seed(6))
    (g,) = sparse_grads(1, rows, touched=[1, 9, 20], seed=7)
    p = torch.nn.Parameter(w0.clone())
    opt = TableAdam([p], lr=0.01, l2=l2, dense_max_rows=8, field_rows=[FIELDS])
    p.grad = g
    opt.step()
    m = opt.state[p]["exp_avg"]
    expected = 0.1 * (g.to_dense() + l2 * w0)
    torch.testing.assert_close(m[:8], expected[:8], atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(m[[9, 20]], expected[[9, 20]], atol=1e-7, rtol=1e-6)
    assert torch.equal(m[8], torch.zeros(DIM))  # a lazy row the batch did not touch
    without = TableAdam([torch.nn.Parameter(w0.clone())], lr=0.01, field_rows=[FIELDS])
    q = without.param_groups[0]["params"][0]
    q.grad = g
    without.step()
    diff = m - without.state[q]["exp_avg"]
    torch.testing.assert_close(diff[:8], 0.1 * l2 * w0[:8], atol=1e-7, rtol=1e-5)


def test_sparse_optimizer_config() -> None:
    assert SparseOptimizerConfig().type == "adam"
    assert SparseOptimizerConfig().lr == 0.001
    assert SparseOptimizerConfig(type="adagrad").lr == 0.02
    assert SparseOptimizerConfig(type="lazy_adam", lr=0.005).lr == 0.005
    bad = {"train.sparse_optimizer.type": "adagrad"}
    bad["train.sparse_optimizer.embedding_regularizer"] = 1e-5
    with pytest.raises(ConfigError, match=r"train\.sparse_optimizer\.embedding_regularizer: "):
        load_config(resolve_config_path("configs/deepfm.yaml"), bad)
    cfg = SparseOptimizerConfig(type="lazy_adam", embedding_regularizer=1e-4)
    opt = build_sparse_optimizer([torch.nn.Parameter(torch.zeros(4, 2))], cfg, [[4]])
    assert isinstance(opt, TableAdam) and opt.param_groups[0]["l2"] == 1e-4


def test_default_init_per_field_size_and_wide_at_zero() -> None:
    torch.manual_seed(0)
    sizes = [2, 30, 40000]
    feats = [SparseInput(f"f{i}", n, 16) for i, n in enumerate(sizes)]
    table = EmbeddingTable(16, 4, list(enumerate(feats)), [], num_sparse_inputs=3)
    w = table.embedding.weight.detach()
    start = 0
    for n in sizes:
        block = w[start : start + n]
        start += n
        std = default_init_std(n)
        assert torch.equal(block[:, 16:], torch.zeros(n, 4))  # wide part
        assert block[:, :16].abs().max() < 6 * std  # never torchrec's +-sqrt(1/rows)
        if n >= 30:
            assert block[:, :16].std().item() == pytest.approx(std, rel=0.2)
    assert default_init_std(2) == 0.01 and default_init_std(40000) == pytest.approx(0.005)
    assert torch.equal(w[-1], torch.zeros(20))  # padding row
    # a feature's init_fn and wide_init_fn still win
    feats = [SparseInput("f", 10, 4, init_fn="nn.init.constant_,val=0.5")]
    table = EmbeddingTable(
        4, 2, [(0, feats[0])], [], 1, wide_init_fn=lambda t: torch.nn.init.constant_(t, 2.0)
    )
    w = table.embedding.weight.detach()[:10]
    assert torch.equal(w[:, :4], torch.full((10, 4), 0.5))
    assert torch.equal(w[:, 4:], torch.full((10, 2), 2.0))

"""The training step's fixed cost cut without changing results (issue 14, item 4).

Each faster path is checked against the PyTorch path it replaces on a fixed seed: the
tables' Adam in one compiled call (``kernels.adam_update``) against ``TableAdam``'s
PyTorch ops.
"""

from __future__ import annotations

import pytest
import torch

from model import kernels
from model.optim import TableAdam

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba kernels do not compile")


def _table_adam_run(kernel: bool, steps: int = 30, **kw) -> tuple[torch.Tensor, dict, TableAdam]:
    """``steps`` TableAdam steps on a 4-field table (3, 7, 90 and 400 rows and a padding
    row) from sparse gradients of 200 lookups each (many duplicate rows)."""
    rows, width = 500, 5
    w0 = torch.randn(rows + 1, width, generator=torch.Generator().manual_seed(0)) * 0.1
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(w0.clone())
    opt = TableAdam([p], lr=0.01, field_rows=[[3, 7, 90, 400]], **kw)
    if not kernel:
        opt._kernel_update = lambda *args: False  # the PyTorch ops it replaces
    for _ in range(steps):
        idx = torch.randint(0, rows, (200,), generator=gen)
        values = torch.randn(200, width, generator=gen)
        p.grad = torch.sparse_coo_tensor(idx[None], values, p.shape, check_invariants=True)
        opt.step()
    return p.detach(), opt.state[p], opt


@pytest.mark.parametrize(
    "kw",
    [{}, {"l2": 0.05}, {"dense_max_rows": 50}, {"lazy": True}, {"dense_max_rows": 10**9}],
    ids=["default", "l2", "dense-and-lazy", "lazy", "all-dense"],
)
def test_table_adam_kernel_equals_its_pytorch_ops(kw: dict) -> None:
    fast, fast_state, opt = _table_adam_run(True, **kw)
    ref, ref_state, _ = _table_adam_run(False, **kw)
    assert opt._scratch  # the kernel ran
    w0 = torch.randn(501, 5, generator=torch.Generator().manual_seed(0)) * 0.1
    assert (ref - w0).abs().max() > 0.05  # the steps moved the weights
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=0)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(fast_state[key], ref_state[key], atol=1e-6, rtol=0)
    assert torch.equal(fast_state["step"], ref_state["step"])
    # the kernel leaves its maps clean for the next step
    for scratch in opt._scratch.values():
        assert (scratch["slot"] == -1).all() and (scratch["dmap"] == -1).all()

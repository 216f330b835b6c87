"""The training step's fixed cost cut without changing results (issue 14, item 4).

Each faster path is checked against the path it replaces on a fixed seed: the tables'
Adam in one compiled call (``kernels.adam_update``) against ``TableAdam``'s PyTorch ops;
``optimizer_step`` against ``opt.step()`` (bit for bit); the loss without the unused
probabilities against ``to_predictions``; and whole training runs through the new step
against the step as it was (``opt.zero_grad``, ``to_predictions``, ``opt.step()``, the
tables' Adam in PyTorch ops).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from model import kernels, optim, threads
from model import train as train_module
from model.config import config_from_dict
from model.deepfm import DeepFM, to_predictions
from model.losses import compute_loss
from model.optim import SparseAdagrad, TableAdam, optimizer_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_data import toy_config, toy_table  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba kernels do not compile")


def _table_adam_run(
    kernel: bool, steps: int = 30, fields: tuple = (3, 7, 90, 400), **kw
) -> tuple[torch.Tensor, dict, TableAdam]:
    """``steps`` TableAdam steps on a 4-field table (``fields``: 3, 7, 90 and 400 rows by
    default, and a padding row) from sparse gradients of 200 lookups each (many duplicate
    rows)."""
    rows, width = 500, 5
    w0 = torch.randn(rows + 1, width, generator=torch.Generator().manual_seed(0)) * 0.1
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(w0.clone())
    opt = TableAdam([p], lr=0.01, field_rows=[list(fields)], **kw)
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
    [
        {},
        {"l2": 0.05},
        {"dense_max_rows": 50},
        # dense rows 0-2 and 93-99: a block of dense rows that are not consecutive rows
        {"dense_max_rows": 50, "fields": (3, 90, 7, 400)},
        {"lazy": True},
        {"dense_max_rows": 10**9},
    ],
    ids=["default", "l2", "dense-and-lazy", "dense-apart", "lazy", "all-dense"],
)
@pytest.mark.parametrize("threads", [1, 2], ids=["one-thread", "two-threads"])
def test_table_adam_kernel_equals_its_pytorch_ops(kw: dict, threads: int) -> None:
    """With two threads the table's rows are shared by blocks of ``kernels.DENSE_ROWS``:
    each thread sums and updates its own rows, lazy and dense (a dense block that is not
    consecutive rows goes row by row)."""
    fast, fast_state, opt = _threaded_run(threads, **kw)
    assert next(iter(opt._scratch.values()))["ends"].shape[0] == threads
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
        assert (scratch["slot"] == -1).all()


def _threaded_run(threads: int, **kw) -> tuple[torch.Tensor, dict, TableAdam]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _table_adam_run(True, **kw)
    finally:
        torch.set_num_threads(before)


def test_table_adam_kernel_gives_the_same_table_on_any_number_of_threads() -> None:
    """Each row's gradients are summed in lookup order by the one thread that owns the row,
    so one and two threads give the same weights and moments bit for bit."""
    one, one_state, _ = _threaded_run(1, dense_max_rows=50)
    two, two_state, _ = _threaded_run(2, dense_max_rows=50)
    assert torch.equal(one, two)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(one_state[key], two_state[key])


def _optimizers(kind: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, lr=0.01, fused=True)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=0.01, weight_decay=0.1, fused=True)
    if kind == "adam-unfused":
        return torch.optim.Adam(params, lr=0.01, foreach=False)
    if kind == "table-adam":
        return TableAdam(params, lr=0.01, field_rows=[[10, 30]], dense_max_rows=20)
    return SparseAdagrad(params, lr=0.05)


@pytest.mark.parametrize("kind", ["adam", "adamw", "adam-unfused", "table-adam", "adagrad"])
def test_optimizer_step_is_step_bit_for_bit(kind: str) -> None:
    """Two parameter groups (a second lr), a parameter without a gradient in some steps."""
    sparse = kind in ("table-adam", "adagrad")
    gen = torch.Generator().manual_seed(3)
    shapes = [(40, 3)] if sparse else [(6, 5), (5,), (2, 6)]
    w0 = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(12)]
    results = []
    for fast in (False, True):
        params = [torch.nn.Parameter(w.clone()) for w in w0]
        opt = _optimizers(kind, params[:1])
        for p in params[1:]:
            opt.add_param_group({"params": [p], "lr": 0.003})
        step_calls = []
        if fast:  # count the steps optimizer_step leaves to opt.step()
            step = opt.step
            opt.step = lambda step=step, calls=step_calls: (calls.append(1), step())
        for i, step_grads in enumerate(grads):
            for j, (p, g) in enumerate(zip(params, step_grads, strict=True)):
                skip = j == len(params) - 1 and i % 3 == 1
                p.grad = None if skip else (g.to_sparse(1) if sparse else g.clone())
            optimizer_step(opt) if fast else opt.step()
        results.append((params, opt))
    # fused Adam: only the first step (which makes the state); ours never; else every step
    assert len(step_calls) == {"adam": 1, "adamw": 1, "adam-unfused": 12}.get(kind, 0)
    (slow_params, slow_opt), (fast_params, fast_opt) = results
    for a, b, w in zip(slow_params, fast_params, w0, strict=True):
        assert not torch.equal(a, w)  # it trained
        assert torch.equal(a, b)
    for a, b in zip(slow_params, fast_params, strict=True):
        for key, value in slow_opt.state[a].items():
            assert torch.equal(value, fast_opt.state[b][key]), key


@pytest.mark.parametrize("limit", [0, 1 << 20], ids=["threaded", "one-thread"])
def test_small_fused_adam_steps_on_one_thread_bit_for_bit(limit: int, monkeypatch) -> None:
    """A fused Adam this small steps on one thread (waking the others per tensor costs more
    than the update), then gives the threads back; the weights are the threaded step's, bit
    for bit (the tensors are large enough for PyTorch to split them across threads)."""
    monkeypatch.setattr(optim, "SERIAL_ADAM_MAX_ELEMENTS", limit)
    gen = torch.Generator().manual_seed(5)
    w0 = [torch.randn(s, generator=gen) for s in [(300, 200), (300,), (70000,)]]
    grads = [[torch.randn_like(w) for w in w0] for _ in range(4)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = torch.optim.Adam(params, lr=0.01, fused=True)
    step = torch._fused_adam_
    monkeypatch.setattr(
        torch, "_fused_adam_", lambda *a, **k: (seen.append(torch.get_num_threads()), step(*a, **k))
    )
    try:
        for g in grads:
            for p, gi in zip(params, g, strict=True):
                p.grad = gi.clone()
            optimizer_step(opt)
        assert torch.get_num_threads() == 2  # given back
    finally:
        torch.set_num_threads(before)
    # the first step is opt.step() (it makes the state), at the process's threads
    # (where PyTorch's threads are not OpenMP's, the threads are left alone)
    one = bool(limit) and threads.openmp_backend()
    assert seen == [2] + [1 if one else 2] * 3
    reference = [torch.nn.Parameter(w.clone()) for w in w0]
    ref_opt = torch.optim.Adam(reference, lr=0.01, fused=True)
    torch.set_num_threads(2)
    try:
        for g in grads:
            for p, gi in zip(reference, g, strict=True):
                p.grad = gi.clone()
            ref_opt.step()
    finally:
        torch.set_num_threads(before)
    for a, b in zip(params, reference, strict=True):
        assert torch.equal(a, b)


def test_optimizer_step_keeps_step_hooks() -> None:
    """With a step hook registered ``optimizer_step`` runs ``opt.step()``: the hook runs."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=0.1, fused=True)
    calls = []
    opt.register_step_post_hook(lambda *args: calls.append(1))
    for _ in range(2):
        p.grad = torch.ones(3)
        optimizer_step(opt)
    assert calls == [1, 1]


@pytest.mark.parametrize("kind", ["binary_cross_entropy", "softmax_cross_entropy", "l2_loss"])
def test_loss_inputs_give_the_loss_of_to_predictions(kind: str) -> None:
    classes = 3 if kind == "softmax_cross_entropy" else 1
    cfg = toy_config()
    cfg["model"]["losses"] = [{kind: {}}]
    if kind == "softmax_cross_entropy":
        cfg["model"]["num_class"] = classes
    if kind != "binary_cross_entropy":
        cfg["model"]["metrics"] = []
    loss_cfg = config_from_dict(cfg).model.losses[0]
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(64, classes, generator=gen)
    labels = torch.randint(0, 2 if classes == 1 else classes, (64,), generator=gen).float()
    weights = torch.rand(64, generator=gen)
    values = []
    for inputs in (to_predictions, train_module._loss_inputs):
        x = logits.clone().requires_grad_()
        loss = compute_loss(inputs(x, kind), labels, loss_cfg, weights)
        loss.backward()
        values.append((loss.detach(), x.grad))
    assert torch.equal(values[0][0], values[1][0]) and torch.equal(values[0][1], values[1][1])


def _step_as_it_was(run, batch, labels, weights):
    """``model.train._train_step`` before issue 14 item 4 (fp32, one process)."""
    logits = run.forward(batch.sparse, batch.multi, batch.dense)
    predictions = to_predictions(logits.float(), run.model.loss_kind)
    loss = compute_loss(predictions, labels, run.cfg.model.losses[0], weights)
    run.sparse_opt.zero_grad(set_to_none=True)
    run.dense_opt.zero_grad(set_to_none=True)
    loss.backward()
    run.dense_opt.step()
    run.sparse_opt.step()
    return loss


@pytest.mark.parametrize(
    "sparse_optimizer, dense_optimizer",
    [("adam", "adam"), ("adagrad", "adamw")],
)
def test_training_weights_equal_the_step_as_it_was(
    sparse_optimizer: str, dense_optimizer: str, monkeypatch
) -> None:
    """15 steps of ``train`` (one field large enough to be lazy under the tables' Adam)
    through today's step and through the step as it was: weights within 1e-6 (the tables'
    Adam sums duplicate rows in another order); bit-identical with Adagrad on the tables."""
    data = toy_config(
        num_epochs=1,
        sparse_optimizer={"type": sparse_optimizer, "dense_max_rows": 100},
        dense_optimizer={"type": dense_optimizer, "weight_decay": 0.01},
    )
    data["features"][0]["num_buckets"] = 500
    cfg = config_from_dict(data)
    df = toy_table(rows=15 * 256, seed=2)
    new = train_module.train(cfg, df, progress=False)
    with monkeypatch.context() as m:
        m.setattr(train_module, "_train_step", _step_as_it_was)
        m.setattr(TableAdam, "_kernel_update", lambda *args: False)
        old = train_module.train(cfg, df, progress=False)
    assert old.global_step == new.global_step == 15
    torch.manual_seed(cfg.train.seed)  # the model train() started from
    init = DeepFM(cfg.model, cfg.feature_groups, new.encoder.input_spec()).state_dict()
    old_state, new_state = old.model.state_dict(), new.model.state_dict()
    moved = 0.0
    for key, before in init.items():
        if not before.is_floating_point():
            continue
        if sparse_optimizer == "adagrad":
            assert torch.equal(new_state[key], old_state[key]), key
        torch.testing.assert_close(new_state[key], old_state[key], atol=1e-6, rtol=0)
        moved = max(moved, (new_state[key] - before).abs().max().item())
    assert moved > 1e-2  # it trained

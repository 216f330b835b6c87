"""Compiled CPU kernels for the embedding side of a training step (numba).

On a CPU the DeepFM step is the deep MLP's matrix products plus memory-bound work around
the embedding tables: gathering rows, pooling them, the FM and wide sums, their backward,
and the sparse optimizer's update of the rows a batch touched. Written as PyTorch ops that
work is a dozen passes over ``[batch, fields, dim]`` tensors plus a sort to sum duplicate
rows; these kernels do it in three passes:

- ``pooled_forward``: one pass over the lookups writes the deep MLP's input (pooled
  embeddings of the deep fields, then the dense columns), the FM's sum vector and output,
  and the wide sum;
- ``pooled_backward``: one pass writes each lookup's gradient (deep input gradient, FM
  gradient, wide gradient, times its pooling weight): the values of a sparse COO gradient;
- ``adagrad_update``: sums the gradients of duplicate rows without sorting (each thread
  numbers the distinct rows of its slice of the lookups in a slot map, then slices are
  merged) and applies Adagrad to each touched row once.

``model.deepfm`` and ``model.optim`` use them when numba imports and compiles here (and
fall back to PyTorch ops otherwise); the tests check both paths against each other.
"""

from __future__ import annotations

import os
import threading

import numpy as np

try:  # numba is a dependency, but the PyTorch path must keep working without it
    import numba
    from numba import njit, prange
except Exception:  # pragma: no cover - exercised only where numba is missing
    numba = None

_lock = threading.Lock()
_ready: bool | None = None


def available() -> bool:
    """True once the kernels compiled (or loaded from numba's cache) and ran here."""
    global _ready
    if _ready is None:
        with _lock:
            if _ready is None:
                _ready = _warm_up()
    return _ready


def set_threads(n: int) -> int:
    """Use ``n`` threads (capped by numba's pool); returns how many are used."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def _jit(fn):
    """``njit`` with numba's on-disk cache where it finds a writable place for it (next to
    this file or in the user's cache directory); without one, compile in each process."""
    try:
        return njit(parallel=True, cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(parallel=True, cache=False, nogil=True)(fn)


if numba is not None:

    @_jit
    def pooled_forward(
        weight, rows, field, pool_weight, deep_pos, fm_mask, wide_mask, dim, dense,
        x, s, fm, wide,
    ):  # fmt: skip
        """``weight [R, dim + W]``, ``rows [B, K]`` (K lookups per sample), ``field [K]``
        (the field of each lookup), ``pool_weight [B, K]`` or ``[0, 0]`` (all ones),
        ``deep_pos [F]`` (slot in the deep input, -1 if not deep), ``fm_mask``/``wide_mask``
        ``[F]``, ``dense [B, nd]`` -> ``x [B, n_deep * dim + nd]``, ``s [B, dim]`` (sum of
        the FM fields), ``fm [B, dim]`` (FM output), ``wide [B, 1]``."""
        B, K = rows.shape
        F = deep_pos.shape[0]
        W = weight.shape[1] - dim
        nd = dense.shape[1]
        base = x.shape[1] - nd
        weighted = pool_weight.shape[0] > 0
        for b in prange(B):
            if weighted:  # pooled fields add up several lookups into their slot
                for j in range(base):
                    x[b, j] = 0.0
            wsum = np.float32(0.0)
            for k in range(K):
                r = rows[b, k]
                f = field[k]
                p = deep_pos[f]
                if weighted:
                    w = pool_weight[b, k]
                    if p >= 0:
                        o = p * dim
                        for d in range(dim):
                            x[b, o + d] += w * weight[r, d]
                elif p >= 0:  # one lookup per field: copy the row
                    o = p * dim
                    for d in range(dim):
                        x[b, o + d] = weight[r, d]
                if wide_mask[f]:
                    t = np.float32(0.0)
                    for j in range(W):
                        t += weight[r, dim + j]
                    wsum += pool_weight[b, k] * t if weighted else t
            for d in range(dim):
                sv = np.float32(0.0)
                qv = np.float32(0.0)
                for f in range(F):
                    if fm_mask[f]:
                        v = x[b, deep_pos[f] * dim + d]
                        sv += v
                        qv += v * v
                s[b, d] = sv
                fm[b, d] = np.float32(0.5) * (sv * sv - qv)
            wide[b, 0] = wsum
            for j in range(nd):
                x[b, base + j] = dense[b, j]

    @_jit
    def pooled_backward(
        rows, field, pool_weight, deep_pos, fm_mask, wide_mask, dim, wide_dim,
        x, s, gx, gfm, gwide, grad,
    ):  # fmt: skip
        """The gradient of each lookup, ``grad [B * K, dim + wide_dim]`` (row ``b * K + k``),
        from the gradients of ``pooled_forward``'s outputs ``gx``, ``gfm``, ``gwide``. The FM
        gradient of field ``f`` is ``gfm * (s - e_f)``, with ``e_f`` read back from ``x``."""
        B, K = rows.shape
        weighted = pool_weight.shape[0] > 0
        for b in prange(B):
            for k in range(K):
                n = b * K + k
                f = field[k]
                w = pool_weight[b, k] if weighted else np.float32(1.0)
                p = deep_pos[f]
                if p >= 0:
                    o = p * dim
                    if fm_mask[f]:
                        for d in range(dim):
                            grad[n, d] = w * (gx[b, o + d] + gfm[b, d] * (s[b, d] - x[b, o + d]))
                    else:
                        for d in range(dim):
                            grad[n, d] = w * gx[b, o + d]
                else:
                    for d in range(dim):
                        grad[n, d] = 0.0
                gw = w * gwide[b, 0] if wide_mask[f] else np.float32(0.0)
                for j in range(wide_dim):
                    grad[n, dim + j] = gw

    @_jit
    def adagrad_update(weight, acc, rows, grads, lr, eps, rowwise, slot, uniq, gsum, ends):
        """Adagrad on the rows of a sparse gradient (``rows [N]``, ``grads [N, C]``, rows may
        repeat): per distinct row ``g = sum of its gradients``, ``acc += g^2`` (or the mean
        of ``g^2`` into ``acc[:, 0]`` when ``rowwise``), ``w -= lr * g / (sqrt(acc) + eps)``.

        ``P = slot.shape[0]`` threads each sum the duplicates in one slice of the lookups,
        numbering their distinct rows in their own slot map ``slot[t] [R]`` (int32, -1
        everywhere on entry and on exit); a row also seen by an earlier slice is then added
        into that one, and every distinct row is updated once. ``uniq [N]``,
        ``gsum [N, C]`` and ``ends [P]`` are scratch."""
        N, C = grads.shape
        parts = slot.shape[0]
        chunk = (N + parts - 1) // parts
        for t in prange(parts):
            lo = t * chunk
            end = lo
            for n in range(lo, min(N, lo + chunk)):
                r = rows[n]
                u = slot[t, r]
                if u < 0:
                    u = end
                    slot[t, r] = u
                    uniq[u] = r
                    end += 1
                    for c in range(C):
                        gsum[u, c] = grads[n, c]
                else:
                    for c in range(C):
                        gsum[u, c] += grads[n, c]
            ends[t] = end
        for t in range(1, parts):  # few rows: serial
            for i in range(t * chunk, ends[t]):
                r = uniq[i]
                for earlier in range(t):
                    u = slot[earlier, r]
                    if u >= 0:
                        for c in range(C):
                            gsum[u, c] += gsum[i, c]
                        uniq[i] = -1 - r  # merged: skip below
                        break
        for t in prange(parts):
            for i in range(t * chunk, ends[t]):
                r = uniq[i]
                if r < 0:
                    slot[t, -1 - r] = -1
                    continue
                slot[t, r] = -1
                if rowwise:
                    sq = np.float32(0.0)
                    for c in range(C):
                        sq += gsum[i, c] * gsum[i, c]
                    a = acc[r, 0] + sq / C
                    acc[r, 0] = a
                    scale = lr / (np.sqrt(a) + eps)
                    for c in range(C):
                        weight[r, c] -= scale * gsum[i, c]
                else:
                    for c in range(C):
                        g = gsum[i, c]
                        a = acc[r, c] + g * g
                        acc[r, c] = a
                        weight[r, c] -= lr * g / (np.sqrt(a) + eps)


def _warm_up() -> bool:
    """Compile (or load from numba's cache) and run every kernel once on tiny inputs.

    numba's OpenMP pool is a second OpenMP runtime next to PyTorch's; its idle threads are
    made to sleep at once (``OMP_WAIT_POLICY=PASSIVE``, read when the pool starts here) so
    they never spin against PyTorch's threads. PyTorch's own runtime is not affected."""
    if numba is None or os.environ.get("DEEPFM_NO_KERNELS"):
        return False
    previous = os.environ.get("OMP_WAIT_POLICY")
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        f32, i64 = np.float32, np.int64
        weight = np.ones((3, 3), f32)
        rows = np.array([[0, 2], [1, 2]], i64)
        field = np.array([0, 1], i64)
        deep_pos = np.array([0, 1], i64)
        masks = np.ones(2, np.bool_)
        x = np.empty((2, 5), f32)
        s, fm = np.empty((2, 2), f32), np.empty((2, 2), f32)
        wide = np.empty((2, 1), f32)
        for pool in (np.empty((0, 0), f32), np.ones((2, 2), f32)):
            pooled_forward(
                weight, rows, field, pool, deep_pos, masks, masks, 2, np.ones((2, 1), f32),
                x, s, fm, wide,
            )  # fmt: skip
            grad = np.empty((4, 3), f32)
            pooled_backward(
                rows, field, pool, deep_pos, masks, masks, 2, 1, x, s, x, fm, wide, grad
            )
        slot = np.full((2, 3), -1, np.int32)
        for rowwise in (False, True):
            acc = np.zeros((3, 1 if rowwise else 3), f32)
            adagrad_update(
                weight, acc, rows.reshape(-1), grad, f32(0.1), f32(1e-8), rowwise, slot,
                np.empty(4, i64), np.empty((4, 3), f32), np.empty(2, i64),
            )  # fmt: skip
        return True
    except Exception as err:  # noqa: BLE001 - any failure means: use the PyTorch path
        import warnings

        warnings.warn(f"CPU embedding kernels unavailable ({err}); using PyTorch ops", stacklevel=2)
        return False
    finally:
        if previous is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = previous

"""Compiled CPU kernels for the embedding side of a training step (numba).

On a CPU the DeepFM step is the deep MLP's matrix products plus memory-bound work around
the embedding tables: gathering rows, pooling them, the FM and wide sums, their backward,
and the sparse optimizer's update of the rows a batch touched. Written as PyTorch ops that
work is a dozen passes over ``[batch, fields, dim]`` tensors plus a sort to sum duplicate
rows. Here:

- ``pooled_forward``: one pass over the lookups writes the deep MLP's input for the fields
  with many table rows (then the dense columns), the FM's sum vector and output, the wide
  sum, and the value rows of the small-vocabulary fields;
- ``project_values`` and ``add_values``: for the small-vocabulary fields the first
  ``Linear`` is computed once per table row (``e_v W_f^T``) and each sample adds its
  values' rows to the matrix product of the other columns, instead of a matrix product
  over every sample; the first layer's ReLU is applied in the same pass;
- ``pooled_backward``: one pass writes the per-lookup gradients of the other fields (the
  values of a sparse COO gradient);
- ``value_sums`` and ``value_grads``: the ReLU's mask applied to the first layer's output
  gradient, the small fields' gradients (first layer, FM, wide) summed per table row, and
  from those the rows' gradients and the first layer's weight and bias gradients;
- ``sum_duplicates``: sums the gradients of duplicate rows without sorting (each thread
  numbers the distinct rows of its slice of the lookups in a slot map, then slices are
  merged), for the two updates below;
- ``adagrad_update``: applies Adagrad to each touched row once, after those sums;
- ``bias_relu`` and ``relu_grad_bias``: the deep MLP's later ``Linear -> ReLU`` layers'
  bias and activation after their matrix product, and their backward with the bias's
  gradient, one pass each on one thread;
- ``output_forward`` and ``output_backward``: the logits from the deep MLP's output (the
  output layer's one-column matrix product) plus the wide and FM sums, on one thread;
- ``adam_update``: the tables' Adam (``model.optim.TableAdam``) in one call: the
  duplicate sums, then one pass over the small fields' rows (every step, as dense Adam)
  and the touched rows of the large ones, instead of a dozen PyTorch passes and index
  copies, which at small batches cost more than the rest of the step's embedding work.

The gathers and the update prefetch the random table rows a few iterations ahead
(``prefetch_row``), which matters once the matrix products have evicted the tables from
the core's caches. ``add_values`` and ``value_sums`` take the first layer's output and its
gradient in float32 or, under bf16 autocast, in bfloat16 (its bits as uint16: ``load``
widens, ``store`` rounds to nearest even as PyTorch does), so no cast of ``[batch,
hidden]`` runs between them and the bf16 matrix products. Work that stays small whatever
the batch runs on one thread (``_jit_serial``): waking the others costs more.

``model.fused`` and ``model.optim`` use them when numba imports and compiles here (and
fall back to PyTorch ops otherwise); the tests check both paths against each other.
"""

from __future__ import annotations

import os
import threading

from model import threads  # isort: skip - before numba's OpenMP pool loads: idle threads sleep

import numpy as np

try:  # numba is a dependency, but the PyTorch path must keep working without it
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic, overload
except Exception:  # pragma: no cover - exercised only where numba is missing
    numba = None

_lock = threading.Lock()
_AHEAD = 4  # how many samples (or rows) ahead the kernels prefetch table rows
_BLOCK = 64  # samples a thread takes at a time where it needs a scratch row for them
DENSE_SHIFT = 5
DENSE_ROWS = 1 << DENSE_SHIFT  # rows of a dense table a thread updates as one flat slice
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


def _jit(fn, parallel=True, **options):
    """``njit`` with numba's on-disk cache where it finds a writable place for it (next to
    this file or in the user's cache directory); without one, compile in each process."""
    try:
        return njit(parallel=parallel, cache=True, nogil=True, **options)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(parallel=parallel, cache=False, nogil=True, **options)(fn)


def _jit_serial(fn):
    """``_jit`` for a kernel whose work is too small to share: waking the other threads
    for a parallel region costs 10-80 microseconds (more on a virtual machine), more
    than such a kernel's whole run."""
    return _jit(fn, parallel=False)


def _jit_reassoc(fn, parallel=True):
    """``_jit`` allowing float sums to be reordered (so dot products vectorise)."""
    return _jit(fn, parallel=parallel, fastmath={"reassoc", "contract"})


def _jit_serial_reassoc(fn):
    """``_jit_serial`` allowing float sums to be reordered."""
    return _jit_reassoc(fn, parallel=False)


if numba is not None:

    @intrinsic
    def prefetch_row(typingctx, array, row):
        """Hint the CPU to fetch ``array[row]`` (a row of a C-contiguous 2-D array: its
        first and last cache line) into the caches; no effect on results. The table rows
        a batch gathers are random, so each load would otherwise wait for the memory."""

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            width = cgutils.unpack_tuple(builder, ary.strides)[0]  # bytes per row
            index = context.cast(builder, args[1], signature.args[1], types.intp)
            start = builder.gep(
                builder.bitcast(ary.data, cgutils.voidptr_t), [builder.mul(width, index)]
            )
            last = builder.gep(start, [builder.sub(width, ir.Constant(width.type, 1))])
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            # read access, high locality, data cache
            flags = [ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
            builder.call(fn, [start, *flags])
            builder.call(fn, [last, *flags])
            return context.get_dummy_value()

        return types.void(array, row), codegen

    @intrinsic
    def _bits(typingctx, value):
        """A float32's bits as a uint32."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.uint32(types.float32), codegen

    @intrinsic
    def _float(typingctx, bits):
        """The float32 with these bits (a uint32)."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.uint32), codegen

    def load(row, j):
        """``row[j]`` as a float32: ``row`` holds float32, or bfloat16 as uint16 (a bfloat16
        tensor's memory, ``bf16_numpy``)."""

    def store(row, j, value):
        """``row[j] = value`` (a float32), rounded to the nearest bfloat16 (ties to even,
        NaN kept: as PyTorch converts) when ``row`` holds bfloat16 as uint16."""

    @overload(load, inline="always")
    def _load(row, j):
        if row.dtype == types.uint16:
            return lambda row, j: _float(np.uint32(np.uint32(row[j]) << np.uint32(16)))
        return lambda row, j: row[j]

    @overload(store, inline="always")
    def _store(row, j, value):
        if row.dtype == types.uint16:

            def to_bf16(row, j, value):
                bits = _bits(value)
                if (bits & 0x7FFFFFFF) > 0x7F800000:  # NaN: a quiet NaN
                    row[j] = np.uint16(0x7FC0)
                else:  # round to nearest, ties to even
                    row[j] = np.uint16((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)

            return to_bf16

        def plain(row, j, value):
            row[j] = value

        return plain

    @_jit
    def pooled_forward(
        weight, rows, field, pool_weight, deep_pos, fm_mask, wide_mask, dim, dense,
        small_lookup, small_shift, singles, x, x16, s, fm, wide, small_idx,
    ):  # fmt: skip
        """``weight [R, dim + W]``, ``rows [B, K]`` (K lookups per sample), ``field [K]``
        (the field of each lookup), ``pool_weight [B, K]`` or ``[0, 0]`` (all ones),
        ``deep_pos [F]`` (slot in ``x``, -1 if not there), ``fm_mask``/``wide_mask`` ``[F]``,
        ``dense [B, nd]``, ``small_lookup``/``small_shift [F_s]`` (the small fields' lookup
        column and table row -> value row shift), ``singles`` (fields ``0 .. singles - 1``
        are single-valued: lookup ``f`` is field ``f``) -> ``x [B, slots * dim + nd]``,
        ``x16`` (``x`` rounded to bfloat16, as uint16, for the first layer's products under
        bf16 autocast; ``[0, 0]`` for none), ``s [B, dim]`` (sum of the FM fields), ``fm [B,
        dim]`` (FM output; ``[B, 1]``: summed over its components), ``wide [B, 1]``,
        ``small_idx [B, F_s]`` (value rows).

        One pass over a sample's lookups: each row read once is copied into its slot and,
        for a single-valued field, added into the FM sums there; the pooled (multi-valued)
        FM fields are added from their slots after (their lookups only pool). The FM adds
        the fields in field order either way."""
        B, K = rows.shape
        F = deep_pos.shape[0]
        W = weight.shape[1] - dim
        nd = dense.shape[1]
        base = x.shape[1] - nd
        weighted = pool_weight.shape[0] > 0
        narrow = x16.shape[0] > 0
        summed = fm.shape[1] == 1 and dim > 1
        blocks = (B + _BLOCK - 1) // _BLOCK
        for blk in prange(blocks):
            q = np.empty(dim, np.float32)  # the sums of squares when fm is [B, 1]
            for b in range(blk * _BLOCK, min(B, blk * _BLOCK + _BLOCK)):
                if b + _AHEAD < B:  # the rows of a sample a few iterations ahead
                    for k in range(K):
                        prefetch_row(weight, rows[b + _AHEAD, k])
                xb = x[b]
                sb = s[b]
                qb = q if summed else fm[b]
                for d in range(dim):
                    sb[d] = 0.0
                    qb[d] = 0.0
                if weighted:  # pooled fields add up several lookups into their slot
                    for j in range(base):
                        xb[j] = 0.0
                wsum = np.float32(0.0)
                for k in range(K):
                    e = weight[rows[b, k]]
                    f = field[k]
                    p = deep_pos[f]
                    single = f < singles
                    if p >= 0:
                        slot = xb[p * dim : p * dim + dim]
                        if single:  # one lookup: copy the row
                            for d in range(dim):
                                slot[d] = e[d]
                        else:
                            w = pool_weight[b, k]
                            for d in range(dim):
                                slot[d] += w * e[d]
                    if single and fm_mask[f]:  # FM: sum (s) and sum of squares (fm, for now)
                        for d in range(dim):
                            ed = e[d]
                            sb[d] += ed
                            qb[d] += ed * ed
                    if wide_mask[f]:
                        t = np.float32(0.0)
                        for j in range(W):
                            t += e[dim + j]
                        wsum += t if single else pool_weight[b, k] * t
                # the pooled FM fields, from their slots (a multi-valued FM field is in x:
                # fused.TableLayout.of)
                for f in range(singles, F):
                    if fm_mask[f]:
                        p = deep_pos[f]
                        e = xb[p * dim : p * dim + dim]
                        for d in range(dim):
                            ed = e[d]
                            sb[d] += ed
                            qb[d] += ed * ed
                if summed:  # the FM output summed over its components, as the logits take it
                    t = np.float32(0.0)
                    for d in range(dim):
                        t += np.float32(0.5) * (sb[d] * sb[d] - qb[d])
                    fm[b, 0] = t
                else:
                    for d in range(dim):
                        qb[d] = np.float32(0.5) * (sb[d] * sb[d] - qb[d])
                wide[b, 0] = wsum
                for j in range(nd):
                    xb[base + j] = dense[b, j]
                if narrow:  # while the sample's row is in the core's cache
                    xh = x16[b]
                    for j in range(base + nd):
                        store(xh, j, xb[j])
                for i in range(small_lookup.shape[0]):
                    small_idx[b, i] = rows[b, small_lookup[i]] + small_shift[i]

    @_jit
    def pooled_backward(
        rows, field, pool_weight, deep_pos, fm_mask, wide_mask, dim, wide_dim,
        weight, x, s, gx, gfm, gwide, lookups, grad, grad_rows,
    ):  # fmt: skip
        """The gradient of the lookups in columns ``lookups [K']``: ``grad [B * K', dim +
        wide_dim]`` (row ``b * K' + j`` for column ``lookups[j]``, its table row in
        ``grad_rows``), from the gradients of ``pooled_forward``'s outputs ``gx`` (float32, or
        bfloat16 as uint16), ``gfm`` (``[B, dim]``, or ``[B, 1]`` when it is the same for
        every component: the FM output summed) and ``gwide``. The FM gradient of field ``f``
        is ``gfm * (s - e_f)``, ``e_f`` read back from ``x`` or the table."""
        B = rows.shape[0]
        K = lookups.shape[0]
        weighted = pool_weight.shape[0] > 0
        full = gfm.shape[1] == dim
        blocks = (B + _BLOCK - 1) // _BLOCK
        for blk in prange(blocks):
            gf = np.empty(dim, np.float32)  # a sample's FM gradient
            for b in range(blk * _BLOCK, min(B, blk * _BLOCK + _BLOCK)):
                for d in range(dim):
                    gf[d] = gfm[b, d] if full else gfm[b, 0]
                gxb = gx[b]
                xb = x[b]
                sb = s[b]
                for j in range(K):
                    k = lookups[j]
                    n = b * K + j
                    grad_rows[n] = rows[b, k]
                    f = field[k]
                    w = pool_weight[b, k] if weighted else np.float32(1.0)
                    p = deep_pos[f]
                    out = grad[n]
                    if p >= 0:
                        for d in range(dim):
                            out[d] = load(gxb, p * dim + d)
                    else:
                        for d in range(dim):
                            out[d] = 0.0
                    if fm_mask[f]:
                        e = xb[p * dim : p * dim + dim] if p >= 0 else weight[rows[b, k]]
                        for d in range(dim):
                            out[d] += gf[d] * (sb[d] - e[d])
                    if weighted:
                        for d in range(dim):
                            out[d] *= w
                    gw = w * gwide[b, 0] if wide_mask[f] else np.float32(0.0)
                    for i in range(wide_dim):
                        out[dim + i] = gw

    @_jit_serial
    def project_values(weight, dim, value_rows, value_col, w1t, proj):
        """The deep MLP's first ``Linear`` per value row of the small-vocabulary fields:
        ``proj[v] = e_v W_f^T`` (table row ``value_rows[v]``, first-layer input columns from
        ``value_col[v]``, zeros for a field outside the deep group; ``w1t [in, H]`` is the
        weight transposed). Serial: a few hundred rows (``fused.BatchPlan`` keeps them at
        most a quarter of the batch)."""
        V = value_rows.shape[0]
        H = proj.shape[1]
        for v in range(V):
            p = proj[v]
            for j in range(H):
                p[j] = 0.0
            c0 = value_col[v]
            if c0 >= 0:
                e = weight[value_rows[v]]
                for d in range(dim):
                    ed = e[d]
                    w = w1t[c0 + d]
                    for j in range(H):
                        p[j] += ed * w[j]

    @_jit
    def add_values(proj, idx, deep_fields, bias, h1, relu):
        """``h1[b] += bias + sum of proj[idx[b, i]]`` over the small fields ``i`` in
        ``deep_fields`` (``bias [H]``, or ``[0]`` for none), then ``h1 = max(h1, 0)`` when
        ``relu`` (the first layer's ReLU; NaN stays NaN, as in ``torch.relu``). ``h1`` holds
        the matrix product of the other columns, in float32 or bfloat16 (as uint16: the
        sum is taken in float32 and rounded once). The bias is added here rather than by
        ``addmm``, which would first copy it into every row of ``h1``: one pass less."""
        B = idx.shape[0]
        F = deep_fields.shape[0]
        H = h1.shape[1]
        has_bias = bias.shape[0] > 0
        blocks = (B + _BLOCK - 1) // _BLOCK
        for blk in prange(blocks):
            acc = np.empty(H, np.float32)
            for b in range(blk * _BLOCK, min(B, blk * _BLOCK + _BLOCK)):
                o = h1[b]
                if has_bias:
                    for j in range(H):
                        acc[j] = load(o, j) + bias[j]
                else:
                    for j in range(H):
                        acc[j] = load(o, j)
                i = 0
                while i + 1 < F:  # two rows per pass over the sum
                    p = proj[idx[b, deep_fields[i]]]
                    q = proj[idx[b, deep_fields[i + 1]]]
                    for j in range(H):
                        acc[j] += p[j] + q[j]
                    i += 2
                if i < F:
                    p = proj[idx[b, deep_fields[i]]]
                    for j in range(H):
                        acc[j] += p[j]
                for j in range(H):
                    v = acc[j]
                    if relu and v < 0:
                        v = np.float32(0.0)
                    store(o, j, v)

    @_jit
    def value_sums(
        idx, seg_lo, seg_hi, wide_fields, g, act, relu, gfm, s, gwide, gh, g_sum, w_sum,
        b_sum, bias_per_sample,
    ):  # fmt: skip
        """First half of the small fields' backward: each sample's gradient row ``[gh | gfm *
        s | gfm]`` (``gh`` is ``g`` through the ReLU's mask when ``relu``: zero where ``act
        <= 0``) and its sums per value row, ``g_sum[t, v]`` over one slice of the batch per
        thread ``t`` (small field ``i`` adds the row's ``seg_lo[i]:seg_hi[i]``: the
        first-layer part if it is deep, the FM part if it is in FM), ``w_sum[t, v]`` the
        wide gradient's sums, ``b_sum[t]`` the bias's when ``bias_per_sample`` (else it is
        read off ``g_sum``). ``gh [B, H]`` receives the first layer's output gradient, a
        contiguous operand for the matrix products of the other columns: float32, or
        bfloat16 as uint16 (rounded) for products in bfloat16.

        ``g`` and ``act`` hold float32 or bfloat16 (as uint16); ``gfm`` is ``[B, dim]``, or
        ``[B, 1]`` when the same for every component (the FM output summed); the sums are
        float32 either way."""
        B = idx.shape[0]
        T = g_sum.shape[0]
        H = g.shape[1]
        dim = s.shape[1]
        F = seg_lo.shape[0]
        chunk = (B + T - 1) // T
        full = gfm.shape[1] == dim
        for t in prange(T):
            g_t = g_sum[t]
            w_t = w_sum[t]
            b_t = b_sum[t]
            g_t[:] = 0
            w_t[:] = 0
            b_t[:] = 0
            row = np.empty(H + 2 * dim, np.float32)
            for b in range(t * chunk, min(B, (t + 1) * chunk)):
                eb = row
                src = g[b]
                if relu:
                    ab = act[b]
                    for j in range(H):
                        eb[j] = np.float32(0.0) if load(ab, j) <= 0 else load(src, j)
                else:
                    for j in range(H):
                        eb[j] = load(src, j)
                out = gh[b]
                for j in range(H):
                    store(out, j, eb[j])
                sb = s[b]
                if full:
                    gf = gfm[b]
                    for d in range(dim):
                        eb[H + d] = gf[d] * sb[d]
                        eb[H + dim + d] = gf[d]
                else:  # the same FM gradient for every component
                    g0 = gfm[b, 0]
                    for d in range(dim):
                        eb[H + d] = g0 * sb[d]
                        eb[H + dim + d] = g0
                if bias_per_sample:
                    for j in range(H):
                        b_t[j] += eb[j]
                for i in range(F):
                    lo = seg_lo[i]
                    n = seg_hi[i] - lo
                    dst = g_t[idx[b, i], lo : lo + n]  # slices: the loop vectorises
                    part = eb[lo : lo + n]
                    for j in range(n):
                        dst[j] += part[j]
                for i in wide_fields:
                    w_t[idx[b, i]] += gwide[b, 0]

    @_jit_serial_reassoc
    def value_grads(
        value_rows, value_col, deep_lo, deep_hi, deep_col, weight, w1t, g_sum, w_sum, b_sum,
        bias_field, grad_values, grad_w1, grad_b1, col_scratch,
    ):  # fmt: skip
        """Second half: the slices of ``value_sums`` added up (into ``g_sum[0]``), then

        - ``grad_values [V, dim + W]``: each value row's table gradient, ``G_v W_f`` (deep,
          ``G_v`` the summed first-layer gradient) plus ``sum gfm * s - e_v * sum gfm``
          (FM) and ``sum gwide`` (wide);
        - ``grad_w1[:, deep_col[k]:deep_col[k] + dim]``: the first layer's weight gradient
          of deep small field ``k`` (value rows ``deep_lo[k]:deep_hi[k]``), ``G^T E``;
        - ``grad_b1 [H]`` (size 0 without a bias): the sum of ``G_v`` over one deep small
          field's values (every sample has one value of it), or of ``b_sum`` when
          ``bias_field < 0``.

        ``col_scratch [deep fields * dim, H]`` is scratch."""
        T, V, C = g_sum.shape
        H = w1t.shape[1]
        dim = (C - H) // 2
        W = grad_values.shape[1] - dim
        for v in prange(V):
            gv = g_sum[0, v]
            for t in range(1, T):
                other = g_sum[t, v]
                for j in range(C):
                    gv[j] += other[j]
                w_sum[0, v] += w_sum[t, v]
            e = weight[value_rows[v]]
            out = grad_values[v]
            c0 = value_col[v]
            for d in range(dim):
                acc = gv[H + d] - e[d] * gv[H + dim + d]
                if c0 >= 0:
                    wr = w1t[c0 + d]
                    for j in range(H):
                        acc += gv[j] * wr[j]
                out[d] = acc
            for k in range(W):
                out[dim + k] = w_sum[0, v]
        K = deep_lo.shape[0]
        blocks = (H + 31) // 32
        for jb in prange(blocks):  # by blocks of the first layer's outputs: even shares
            j0 = jb * 32
            n = min(H, j0 + 32) - j0
            for q in range(K * dim):
                row = col_scratch[q, j0 : j0 + n]
                for j in range(n):
                    row[j] = 0.0
            for k in range(K):
                for v in range(deep_lo[k], deep_hi[k]):
                    e = weight[value_rows[v]]
                    gv = g_sum[0, v, j0 : j0 + n]
                    for d in range(dim):
                        ed = e[d]
                        row = col_scratch[k * dim + d, j0 : j0 + n]
                        for j in range(n):
                            row[j] += gv[j] * ed
            for q in range(K * dim):
                row = col_scratch[q, j0 : j0 + n]
                c = deep_col[q // dim] + q % dim
                for j in range(n):
                    grad_w1[j0 + j, c] = row[j]
        if grad_b1.shape[0] > 0:
            for j in range(H):
                grad_b1[j] = 0.0
            if bias_field >= 0:
                for v in range(deep_lo[bias_field], deep_hi[bias_field]):
                    gv = g_sum[0, v]
                    for j in range(H):
                        grad_b1[j] += gv[j]
            else:
                for t in range(T):
                    bt = b_sum[t]
                    for j in range(H):
                        grad_b1[j] += bt[j]

    @_jit_serial_reassoc
    def output_forward(y, w, bias, wide, fm, out):
        """DeepFM's logits without a final MLP, for one class: ``out [B, 1] = (wide + fm) +
        (y w + bias)`` (``y [B, H]`` the deep MLP's output in float32 or bfloat16 as uint16,
        ``w [H]``, ``bias [1]``, ``wide``/``fm [B, 1]``: the wide sum, the FM output summed),
        in the order ``DeepFM.logits`` adds them. One thread: a matrix-vector product this
        small is done before a second thread would wake."""
        B, H = y.shape
        for i in range(B):
            yi = y[i]
            acc = np.float32(0.0)
            for j in range(H):
                acc += load(yi, j) * w[j]
            out[i, 0] = (wide[i, 0] + fm[i, 0]) + (acc + bias[0])

    @_jit_serial_reassoc
    def output_backward(y, w, g, gy, gw, gb):
        """``output_forward``'s backward for the logits' gradient ``g [B, 1]``: ``gy [B, H] =
        g w`` (in ``y``'s dtype: bfloat16 as uint16 is rounded), ``gw [H] = g^T y``, ``gb [1] =
        sum g``. One thread, as the forward."""
        B, H = y.shape
        for j in range(H):
            gw[j] = 0.0
        total = np.float32(0.0)
        for i in range(B):
            gi = g[i, 0]
            total += gi
            yi = y[i]
            out = gy[i]
            for j in range(H):
                gw[j] += gi * load(yi, j)
                store(out, j, gi * w[j])
        gb[0] = total

    @_jit_serial
    def bias_relu(y, bias):
        """A hidden layer's bias and ReLU on its matrix product, in place: ``y = max(y +
        bias, 0)`` (``y [B, H]`` float32 or bfloat16 as uint16, rounded once; ``bias [H]``
        or ``[0]``; NaN stays NaN, as in ``torch.relu``). One pass on one thread instead of
        ``addmm``'s copy of the bias into every row and a separate ReLU, each a parallel
        region that costs more to start than its work."""
        B, H = y.shape
        has_bias = bias.shape[0] > 0
        for i in range(B):
            row = y[i]
            for j in range(H):
                v = load(row, j)
                if has_bias:
                    v += bias[j]
                if v < 0:
                    v = np.float32(0.0)
                store(row, j, v)

    @_jit_serial
    def relu_grad_bias(g, y, out, gb):
        """``bias_relu``'s backward: ``out = g`` where the layer's output ``y > 0``, else 0
        (``g``, ``y`` and ``out`` float32, or bfloat16 as uint16), and the bias's gradient
        ``gb [H]`` (float32), the column sums of ``out``; one pass, one thread."""
        B, H = g.shape
        for j in range(H):
            gb[j] = 0.0
        for i in range(B):
            gi, yi, oi = g[i], y[i], out[i]
            for j in range(H):
                if load(yi, j) > 0:
                    oi[j] = gi[j]
                    gb[j] += load(gi, j)
                else:
                    oi[j] = 0

    @njit(cache=True, nogil=True, inline="always")
    def _accumulate(slot, r, grads, n, uniq, gsum, end):
        """Add lookup ``n``'s gradient into the sum of its row ``r``: the row gets the next
        free position ``end`` in ``uniq``/``gsum`` (noted in ``slot[r]``) the first time it
        is seen. Returns the next free position."""
        u = slot[r]
        if u < 0:
            u = end
            slot[r] = u
            uniq[u] = r
            end += 1
            for c in range(grads.shape[1]):
                gsum[u, c] = grads[n, c]
        else:
            for c in range(grads.shape[1]):
                gsum[u, c] += grads[n, c]
        return end

    @_jit
    def sum_duplicates(rows, grads, slot, uniq, gsum, ends):
        """Sum the gradients of repeated rows (``rows [N]``, ``grads [N, C]``): ``P =
        slot.shape[0]`` threads each number the distinct rows of one slice of ``chunk`` lookups
        in their own slot map ``slot[t]`` (``uniq[i]`` the row, ``gsum[i]`` its sum, slice ``t``
        in ``t * chunk .. ends[t]``); a row also seen by an earlier slice is then added into
        that one and marked ``uniq[i] = -1 - row``. Returns ``chunk``; the caller updates each
        distinct row once and resets ``slot`` to -1."""
        N, C = grads.shape
        parts = slot.shape[0]
        chunk = (N + parts - 1) // parts
        for t in prange(parts):
            lo = t * chunk
            end = lo
            for n in range(lo, min(N, lo + chunk)):
                if n + _AHEAD < N:
                    prefetch_row(slot[t], rows[n + _AHEAD])
                end = _accumulate(slot[t], rows[n], grads, n, uniq, gsum, end)
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
        return chunk

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
        chunk = sum_duplicates(rows, grads, slot, uniq, gsum, ends)
        for t in prange(parts):
            for i in range(t * chunk, ends[t]):
                if i + _AHEAD < ends[t] and uniq[i + _AHEAD] >= 0:
                    prefetch_row(weight, uniq[i + _AHEAD])
                    prefetch_row(acc, uniq[i + _AHEAD])
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

    @njit(cache=True, nogil=True, inline="always")
    def _adam(weight, m, v, g, coef):
        """Adam on flat slices of ``weight`` and its moments with the gradient ``g`` (zeros
        where the batch did not touch a row), in ``torch.optim.Adam``'s order of operations
        (``coef``: ``adam_update``'s). One row, or several consecutive rows as one long
        loop (full vectors instead of one short loop per row)."""
        step_size, bc2_sqrt, one_b1, b2 = coef[0], coef[1], coef[2], coef[3]
        one_b2, eps, l2 = coef[4], coef[5], coef[6]
        for c in range(weight.shape[0]):
            gc = g[c]
            if l2 != 0:
                gc = gc + l2 * weight[c]
            mc = m[c] + one_b1 * (gc - m[c])
            vc = v[c] * b2 + one_b2 * gc * gc
            m[c] = mc
            v[c] = vc
            weight[c] -= step_size * mc / (np.sqrt(vc) / bc2_sqrt + eps)

    @njit(cache=True, nogil=True, inline="always")
    def _owner(row, parts):
        """The thread (of ``parts``) that sums and updates table row ``row`` in
        ``adam_update``: by blocks of ``DENSE_ROWS`` rows, in turn (a mask, not a division,
        for a power of two)."""
        block = row >> DENSE_SHIFT
        if parts & (parts - 1) == 0:
            return block & (parts - 1)
        return block % parts

    @_jit
    def adam_update(
        weight, m, v, rows, grads, dense_rows, dense_pos, dense_starts, coef, slot, uniq, gsum,
        ends,
    ):  # fmt: skip
        """``model.optim.TableAdam``'s step in one call: the rows of a sparse gradient
        (``rows [N]``, ``grads [N, C]``, rows may repeat) summed per distinct row, then Adam
        on every dense row (``dense_rows [D]``, sorted; a zero gradient where the batch did
        not touch it; ``dense_pos [R]`` each row's position among them, -1 for a lazy row;
        ``dense_starts`` the positions where a new block of ``DENSE_ROWS`` table rows
        starts among them, then ``D``) and on each touched lazy row, in
        ``torch.optim.Adam``'s order of operations. ``coef`` (float32) is ``[step_size,
        sqrt(1 - b2^t), 1 - b1, b2, 1 - b2, eps, l2]``, each computed in float64 first as
        PyTorch does with Python scalars.

        The table's rows are shared among ``P = ends.shape[0]`` threads by blocks of
        ``DENSE_ROWS`` rows (block ``r // DENSE_ROWS`` to thread ``block % P``): each
        thread sums the gradients of its rows over the lookups, in lookup order (the same
        sums whatever ``P``), numbering them in the slot map ``slot [R]`` (-1 everywhere on
        entry and on exit; ``uniq [N]`` the rows, ``gsum [N, C]`` their sums, thread ``t``'s
        from ``ends[t]``), updates its touched lazy rows, then its dense rows, a block of
        consecutive rows as one flat slice. No thread reads another's rows: one parallel
        region (each wake-up of the threads costs about as much as updating a thousand
        rows) and no merge of per-thread sums."""
        N, C = grads.shape
        parts = ends.shape[0]
        for t in range(parts):  # where each thread's rows go: at most its lookups
            ends[t] = 0
        for n in range(N):
            ends[_owner(rows[n], parts)] += 1
        first = 0
        for t in range(parts):
            count = ends[t]
            ends[t] = first
            first += count
        blocks = dense_starts.shape[0] - 1
        flat_w = weight.reshape(weight.size)
        flat_m = m.reshape(m.size)
        flat_v = v.reshape(v.size)
        for t in prange(parts):
            lo = ends[t]
            end = lo
            for n in range(N):
                if n + _AHEAD < N:
                    prefetch_row(slot, rows[n + _AHEAD])
                r = rows[n]
                if _owner(r, parts) != t:
                    continue
                end = _accumulate(slot, r, grads, n, uniq, gsum, end)
            # the touched lazy rows (a dense row's slot entry is left to below)
            for i in range(lo, end):
                if i + _AHEAD < end:
                    ahead = uniq[i + _AHEAD]
                    if dense_pos[ahead] < 0:
                        prefetch_row(weight, ahead)
                        prefetch_row(m, ahead)
                        prefetch_row(v, ahead)
                r = uniq[i]
                if dense_pos[r] >= 0:
                    continue
                slot[r] = -1
                _adam(weight[r], m[r], v[r], gsum[i], coef)
            # every dense row of this thread's blocks, touched or not
            g = np.empty(DENSE_ROWS * C, np.float32)
            for j in range(blocks):
                d0, d1 = dense_starts[j], dense_starts[j + 1]
                r0 = dense_rows[d0]
                if _owner(r0, parts) != t:
                    continue
                for d in range(d0, d1):
                    r = dense_rows[d]
                    i = slot[r]
                    gd = g[(d - d0) * C : (d - d0 + 1) * C]
                    if i >= 0:
                        slot[r] = -1
                        src = gsum[i]
                        for c in range(C):
                            gd[c] = src[c]
                    else:
                        for c in range(C):
                            gd[c] = 0.0
                if dense_rows[d1 - 1] - r0 == d1 - 1 - d0:  # consecutive rows: one slice
                    lo_c, hi_c = r0 * C, (r0 + d1 - d0) * C
                    _adam(
                        flat_w[lo_c:hi_c], flat_m[lo_c:hi_c], flat_v[lo_c:hi_c],
                        g[: hi_c - lo_c], coef,
                    )  # fmt: skip
                else:  # row by row
                    for d in range(d0, d1):
                        r = dense_rows[d]
                        _adam(weight[r], m[r], v[r], g[(d - d0) * C : (d - d0 + 1) * C], coef)


def _warm_up() -> bool:
    """Compile (or load from numba's cache) and run every kernel once on tiny inputs.

    numba's OpenMP pool starts at the first kernel call, on the OpenMP runtime already
    loaded (PyTorch's, when PyTorch is imported first); a runtime reads ``OMP_WAIT_POLICY``
    when it loads, and ``model.threads`` (imported above) made it ``PASSIVE`` unless the
    environment chose a policy, so idle threads sleep instead of spinning (see
    ``model.threads``)."""
    if numba is None or os.environ.get("DEEPFM_NO_KERNELS"):
        return False
    threads.sleep_when_idle()
    try:
        f32, i64 = np.float32, np.int64
        weight = np.ones((3, 3), f32)
        rows = np.array([[0, 2], [1, 2]], i64)
        field = np.array([0, 1], i64)
        deep_pos = np.array([0, -1], i64)
        masks = np.ones(2, np.bool_)
        x = np.empty((2, 3), f32)
        s, fm = np.empty((2, 2), f32), np.empty((2, 2), f32)
        wide = np.empty((2, 1), f32)
        small = np.array([0], i64)
        idx = np.empty((2, 1), i64)
        for pool, x16 in (
            (np.empty((0, 0), f32), np.empty((0, 0), np.uint16)),
            (np.ones((2, 2), f32), np.empty((2, 3), np.uint16)),  # x in bfloat16 too
        ):
            pooled_forward(
                weight, rows, field, pool, deep_pos, masks, masks, 2, np.ones((2, 1), f32),
                small, small, 2 if pool.shape[0] == 0 else 1, x, x16, s, fm, wide, idx,
            )  # fmt: skip
            grad = np.empty((4, 3), f32)
            # the gradient of x in float32, then in bfloat16 (as uint16) with a summed FM
            gx, gfm = (x, fm) if pool.shape[0] == 0 else (x16, wide)
            pooled_backward(
                rows, field, pool, deep_pos, masks, masks, 2, 1, weight, x, s, gx, gfm, wide,
                field, grad, np.empty(4, i64),
            )  # fmt: skip
        h = np.ones((2, 3), f32)
        value_col = np.array([0, -1], i64)
        proj = np.empty((2, 3), f32)
        project_values(weight, 2, field, value_col, weight, proj)
        bias = np.zeros(3, f32)
        add_values(proj, idx, small, bias, h, True)
        ends = np.array([3], i64)
        g_sum, w_sum, b_sum = np.empty((2, 2, 7), f32), np.empty((2, 2), f32), np.empty((2, 3), f32)
        value_sums(
            idx, small, ends * 2 + 1, small, h, h, True, fm, s, wide, np.empty((2, 3), f32),
            g_sum, w_sum, b_sum, False,
        )  # fmt: skip
        # bfloat16 (as uint16) first-layer outputs and gradients, for autocast
        h16 = np.full((2, 3), 0x3F80, np.uint16)  # 1.0
        add_values(proj, idx, small, bias[:0], h16, True)
        value_sums(
            idx, small, ends * 2 + 1, small, h16, h16, True, fm, s, wide, h16.copy(), g_sum,
            w_sum, b_sum, False,
        )  # fmt: skip
        for y in (h, h16):  # a hidden layer's bias and ReLU, and its backward
            bias_relu(y, bias)
            relu_grad_bias(y, y, np.empty_like(y), np.empty(3, f32))
        for y in (h, h16):  # the logits from a float32 and a bfloat16 deep output
            out = np.empty((2, 1), f32)
            output_forward(y, bias, bias[:1], wide, wide, out)
            output_backward(y, bias, out, np.empty_like(y), np.empty(3, f32), np.empty(1, f32))
        value_grads(
            field, value_col, small, ends - 1, small, weight, weight, g_sum, w_sum, b_sum, 0,
            np.empty((2, 3), f32), np.empty((3, 3), f32), np.empty(3, f32),
            np.empty((2, 3), f32),
        )  # fmt: skip
        slot = np.full((2, 3), -1, np.int32)
        for rowwise in (False, True):
            acc = np.zeros((3, 1 if rowwise else 3), f32)
            adagrad_update(
                weight, acc, rows.reshape(-1), grad, f32(0.1), f32(1e-8), rowwise, slot,
                np.empty(4, i64), np.empty((4, 3), f32), np.empty(2, i64),
            )  # fmt: skip
        dense_rows = np.array([0, 2], i64)
        dense_pos = np.array([0, -1, 1], i64)
        coef = np.array([0.1, 0.5, 0.1, 0.999, 0.001, 1e-8, 0.01], f32)
        m, v = np.zeros((3, 3), f32), np.zeros((3, 3), f32)
        adam_update(
            weight, m, v, rows.reshape(-1), grad, dense_rows, dense_pos,
            np.array([0, 2], i64), coef, slot[0], np.empty(4, i64), np.empty((4, 3), f32),
            np.empty(2, i64),
        )  # fmt: skip
        return True
    except Exception as err:  # noqa: BLE001 - any failure means: use the PyTorch path
        import warnings

        warnings.warn(f"CPU embedding kernels unavailable ({err}); using PyTorch ops", stacklevel=2)
        return False

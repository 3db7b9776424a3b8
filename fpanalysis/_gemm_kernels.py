"""Private numba kernels for emulated matrix products ``C = A @ B`` (see fpanalysis.linalg).

Three families, all computing every output entry with the summation order documented in
:mod:`fpanalysis.linalg` (sums start from +0 for the sequential and blocked orders; pairwise is
Higham's recursive pairing of the terms):

* ``h16_*`` -- the ``ieee`` profile for IEEE binary16 with round-to-nearest-even, on ``uint16``
  bit patterns.  Each product and each sum is one LLVM ``half`` operation (``fmul``/``fadd``),
  which LLVM defines as the correctly rounded IEEE binary16 operation: on CPUs with
  AVX512-FP16 it becomes ``vmulph``/``vaddph`` (32 lanes); elsewhere LLVM promotes to float32
  and rounds back after every operation, which is also exact (an fp16 product is exact in
  float32, and float32 is wide enough, 24 >= 2*11 + 2, for double rounding of a sum of two
  fp16 numbers to be innocuous; Figueroa, ACM SIGNUM 1995).
* ``f32_*`` -- the ``fp32-accumulate`` profile on float32 values: products rounded to float32
  (exact for fp16 operands) and float32 additions, both IEEE round-to-nearest-even.  When the
  products are exact the kernels use a float32 fused multiply-add, which then gives the same
  bits as a multiply followed by an add.
* ``ieee_general`` -- the ``ieee`` profile for any format with ``p <= 26`` and any rounding mode,
  in float64: products are exact in float64 and rounded with ``round_scalar``; a sum (or an
  ``fma``) is computed exactly as ``z + err`` (TwoSum, Knuth), turned into the float64 number
  rounded to odd, and rounded to the format.  Rounding to odd at 53 bits followed by rounding to
  ``p <= 51`` bits is a correct single rounding for every mode (Boldo & Melquiond, IEEE Trans.
  Computers 57(4), 2008).

The loops are written so that LLVM vectorises the innermost ``j`` loop; ``_wide_vectors`` asks
LLVM for 512-bit vectors (its default on recent Intel server cores is 256 bits).  The test
oracle for all of them is the exact-rational twin in ``tests/test_linalg.py``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ._bits import EXP64, U64, counter_random, f64_to_u64, u64_to_f64
from ._bits import f32_to_h16 as _f32_to_h16
from ._bits import h16_to_f32 as _h16_to_f32
from ._round_kernels import RD, RNA, RNE, RTO, RU, RZ, SR, SRK, round_scalar

SEQUENTIAL, PAIRWISE, BLOCKED = 0, 1, 2
# Kinds of rounding, for the counters of stochastic rounding (index = (entry*K + k)*4 + kind).
_K_PROD, _K_ADD, _K_BLOCK = 0, 1, 2


@intrinsic
def _wide_vectors(typingctx):  # type: ignore[no-untyped-def]
    """Mark the enclosing function with LLVM's ``"prefer-vector-width"="512"``.

    A code-generation hint only (results do not change).  llvmlite has no API for string
    function attributes, so the attribute is added to the set it prints verbatim.
    """

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _fma32(typingctx, a, b, c):  # type: ignore[no-untyped-def]
    """float32 fused multiply-add ``a*b + c`` with a single rounding (``llvm.fma.f32``)."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        f = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f], ir.FunctionType(f, [f, f, f]))
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


def _half_binop(op: str):  # type: ignore[no-untyped-def]
    @intrinsic
    def impl(typingctx, a, b):  # type: ignore[no-untyped-def]
        if not (a == types.uint16 and b == types.uint16):
            return None

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            h = ir.HalfType()
            x, y = (builder.bitcast(v, h) for v in args)
            r = builder.fmul(x, y) if op == "mul" else builder.fadd(x, y)
            return builder.bitcast(r, ir.IntType(16))

        return types.uint16(types.uint16, types.uint16), codegen

    return impl


_h16_mul = _half_binop("mul")
_h16_add = _half_binop("add")


# --- conversions ----------------------------------------------------------------------------


CHUNK = 16384  # elements per parallel work item of the elementwise kernels
SERIAL_ELEMENTS = 1 << 20  # arrays shorter than this use the one-thread variants (a parallel
# launch costs about 0.1 ms, the serial conversion runs at several G values/s)


@njit(cache=True)
def _to_h16_range(x, out, s, e):  # type: ignore[no-untyped-def]
    _wide_vectors()
    bad = 0
    for i in range(s, e):
        v = x[i]
        h = _f32_to_h16(v)
        out[i] = h
        bad += np.int64((_h16_to_f32(h) != v) & (not np.isnan(v)))
    return bad


@njit(parallel=True, cache=True)
def f32_to_h16_checked(x, out):  # type: ignore[no-untyped-def]
    """Convert float32 ``x`` (1-D) to binary16 bits (nearest even); return how many values were
    not binary16 numbers (NaNs count as binary16 numbers)."""
    n = x.shape[0]
    bad = 0
    for c in prange((n + CHUNK - 1) // CHUNK):
        bad += _to_h16_range(x, out, c * CHUNK, min(n, (c + 1) * CHUNK))
    return bad


@njit(cache=True)
def f32_to_h16_checked_serial(x, out):  # type: ignore[no-untyped-def]
    return _to_h16_range(x, out, 0, x.shape[0])


@njit(cache=True)
def _round_h16_range(x, out, s, e):  # type: ignore[no-untyped-def]
    _wide_vectors()
    for i in range(s, e):
        out[i] = _h16_to_f32(_f32_to_h16(x[i]))


@njit(parallel=True, cache=True)
def f32_round_h16(x, out):  # type: ignore[no-untyped-def]
    """Round float32 ``x`` (1-D) to binary16, nearest even; the results as ``out``'s dtype."""
    n = x.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        _round_h16_range(x, out, c * CHUNK, min(n, (c + 1) * CHUNK))


@njit(cache=True)
def f32_round_h16_serial(x, out):  # type: ignore[no-untyped-def]
    _round_h16_range(x, out, 0, x.shape[0])


@njit(cache=True)
def _from_h16_range(b, out, s, e):  # type: ignore[no-untyped-def]
    _wide_vectors()
    for i in range(s, e):
        out[i] = _h16_to_f32(b[i])


@njit(parallel=True, cache=True)
def h16_to_f32(b, out):  # type: ignore[no-untyped-def]
    """Convert binary16 bit patterns (1-D) to float32."""
    n = b.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        _from_h16_range(b, out, c * CHUNK, min(n, (c + 1) * CHUNK))


@njit(cache=True)
def h16_to_f32_serial(b, out):  # type: ignore[no-untyped-def]
    _from_h16_range(b, out, 0, b.shape[0])


# --- ieee profile, binary16, round to nearest even -------------------------------------------


@njit(cache=True)
def _h16_sequential_rows(A, B, C, r0, r1):  # type: ignore[no-untyped-def]
    """C[i,j] = (((0 + a_i0 b_0j) + a_i1 b_1j) + ...), every product and sum rounded (RNE)."""
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        c = C[i]
        for j in range(N):
            c[j] = np.uint16(0)
        for k in range(K):
            a = A[i, k]
            b = B[k]
            for j in range(N):
                c[j] = _h16_add(c[j], _h16_mul(a, b[j]))


@njit(cache=True)
def _h16_blocked_rows(A, B, C, block, r0, r1):  # type: ignore[no-untyped-def]
    """Blocked order: each block of ``block`` terms summed sequentially from +0, then the block
    sums added sequentially to a total that starts at +0."""
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        c = C[i]
        s = np.zeros(N, dtype=np.uint16)
        for j in range(N):
            c[j] = np.uint16(0)
        for k0 in range(0, K, block):
            for j in range(N):
                s[j] = np.uint16(0)
            for k in range(k0, min(K, k0 + block)):
                a = A[i, k]
                b = B[k]
                for j in range(N):
                    s[j] = _h16_add(s[j], _h16_mul(a, b[j]))
            for j in range(N):
                c[j] = _h16_add(c[j], s[j])


@njit(cache=True)
def _h16_pairwise_rows(A, B, C, r0, r1):  # type: ignore[no-untyped-def]
    """Pairwise order (Higham 2002, sec. 4.1): the rounded products are added in adjacent pairs,
    an odd last term passes to the next level unchanged, and this repeats until one is left.

    Computed with a stack of partial sums (a binary counter over k): after term k is pushed,
    the two top blocks are merged while they have equal sizes; at the end the stack is merged
    from the top down.  This performs exactly the additions of the level-by-level description.
    """
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        S = np.empty((66, N), dtype=np.uint16)
        top = -1
        for k in range(K):
            top += 1
            a = A[i, k]
            b = B[k]
            t = S[top]
            for j in range(N):
                t[j] = _h16_mul(a, b[j])
            c = k + 1
            while c % 2 == 0:
                u = S[top - 1]
                v = S[top]
                for j in range(N):
                    u[j] = _h16_add(u[j], v[j])
                top -= 1
                c //= 2
        while top > 0:
            u = S[top - 1]
            v = S[top]
            for j in range(N):
                u[j] = _h16_add(u[j], v[j])
            top -= 1
        c = C[i]
        for j in range(N):
            c[j] = S[0, j] if K > 0 else np.uint16(0)


# --- fp32-accumulate profile -----------------------------------------------------------------


@njit(cache=True)
def _f32_sequential_fma_rows(A, B, C, r0, r1):  # type: ignore[no-untyped-def]
    """float32 C = 0 + a_i0 b_0j + a_i1 b_1j + ... in k order, each step one float32 FMA.

    Register-blocked: 8 rows of C and 4 consecutive k at a time, so that one load of B feeds 8
    FMAs; each C entry still receives its terms one at a time in increasing k.
    """
    M, K = A.shape
    N = B.shape[1]
    R = 8
    _wide_vectors()
    for ib in range(r0 // R, (r1 + R - 1) // R):  # r0 is a multiple of 8
        i0 = ib * R
        if i0 + R <= M:
            c0 = C[i0]
            c1 = C[i0 + 1]
            c2 = C[i0 + 2]
            c3 = C[i0 + 3]
            c4 = C[i0 + 4]
            c5 = C[i0 + 5]
            c6 = C[i0 + 6]
            c7 = C[i0 + 7]
            for j in range(N):
                c0[j] = 0.0
                c1[j] = 0.0
                c2[j] = 0.0
                c3[j] = 0.0
                c4[j] = 0.0
                c5[j] = 0.0
                c6[j] = 0.0
                c7[j] = 0.0
            k = 0
            while k + 4 <= K:
                b0 = B[k]
                b1 = B[k + 1]
                b2 = B[k + 2]
                b3 = B[k + 3]
                a0 = A[i0, k : k + 4]
                a1 = A[i0 + 1, k : k + 4]
                a2 = A[i0 + 2, k : k + 4]
                a3 = A[i0 + 3, k : k + 4]
                a4 = A[i0 + 4, k : k + 4]
                a5 = A[i0 + 5, k : k + 4]
                a6 = A[i0 + 6, k : k + 4]
                a7 = A[i0 + 7, k : k + 4]
                x00, x01, x02, x03 = a0[0], a0[1], a0[2], a0[3]
                x10, x11, x12, x13 = a1[0], a1[1], a1[2], a1[3]
                x20, x21, x22, x23 = a2[0], a2[1], a2[2], a2[3]
                x30, x31, x32, x33 = a3[0], a3[1], a3[2], a3[3]
                x40, x41, x42, x43 = a4[0], a4[1], a4[2], a4[3]
                x50, x51, x52, x53 = a5[0], a5[1], a5[2], a5[3]
                x60, x61, x62, x63 = a6[0], a6[1], a6[2], a6[3]
                x70, x71, x72, x73 = a7[0], a7[1], a7[2], a7[3]
                for j in range(N):
                    y0 = b0[j]
                    y1 = b1[j]
                    y2 = b2[j]
                    y3 = b3[j]
                    c0[j] = _fma32(x03, y3, _fma32(x02, y2, _fma32(x01, y1, _fma32(x00, y0, c0[j]))))
                    c1[j] = _fma32(x13, y3, _fma32(x12, y2, _fma32(x11, y1, _fma32(x10, y0, c1[j]))))
                    c2[j] = _fma32(x23, y3, _fma32(x22, y2, _fma32(x21, y1, _fma32(x20, y0, c2[j]))))
                    c3[j] = _fma32(x33, y3, _fma32(x32, y2, _fma32(x31, y1, _fma32(x30, y0, c3[j]))))
                    c4[j] = _fma32(x43, y3, _fma32(x42, y2, _fma32(x41, y1, _fma32(x40, y0, c4[j]))))
                    c5[j] = _fma32(x53, y3, _fma32(x52, y2, _fma32(x51, y1, _fma32(x50, y0, c5[j]))))
                    c6[j] = _fma32(x63, y3, _fma32(x62, y2, _fma32(x61, y1, _fma32(x60, y0, c6[j]))))
                    c7[j] = _fma32(x73, y3, _fma32(x72, y2, _fma32(x71, y1, _fma32(x70, y0, c7[j]))))
                k += 4
            while k < K:
                b0 = B[k]
                for r in range(R):
                    x = A[i0 + r, k]
                    c = C[i0 + r]
                    for j in range(N):
                        c[j] = _fma32(x, b0[j], c[j])
                k += 1
        else:
            for i in range(i0, M):
                c = C[i]
                for j in range(N):
                    c[j] = 0.0
                for k in range(K):
                    x = A[i, k]
                    b = B[k]
                    for j in range(N):
                        c[j] = _fma32(x, b[j], c[j])


@njit(cache=True)
def _f32_sequential_rows(A, B, C, fma, r0, r1):  # type: ignore[no-untyped-def]
    """Sequential order, one row at a time; ``fma=False``: product rounded to float32, then add."""
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        c = C[i]
        for j in range(N):
            c[j] = 0.0
        for k in range(K):
            x = A[i, k]
            b = B[k]
            if fma:
                for j in range(N):
                    c[j] = _fma32(x, b[j], c[j])
            else:
                for j in range(N):
                    c[j] = c[j] + x * b[j]


@njit(cache=True)
def _f32_blocked_rows(A, B, C, block, fma, r0, r1):  # type: ignore[no-untyped-def]
    """Blocked order in float32 (see :func:`h16_blocked`)."""
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        c = C[i]
        s = np.empty(N, dtype=np.float32)
        for j in range(N):
            c[j] = 0.0
        for k0 in range(0, K, block):
            for j in range(N):
                s[j] = 0.0
            for k in range(k0, min(K, k0 + block)):
                x = A[i, k]
                b = B[k]
                if fma:
                    for j in range(N):
                        s[j] = _fma32(x, b[j], s[j])
                else:
                    for j in range(N):
                        s[j] = s[j] + x * b[j]
            for j in range(N):
                c[j] = c[j] + s[j]


@njit(cache=True)
def _f32_pairwise_rows(A, B, C, r0, r1):  # type: ignore[no-untyped-def]
    """Pairwise order in float32 (see :func:`h16_pairwise`); products rounded to float32."""
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        S = np.empty((66, N), dtype=np.float32)
        top = -1
        for k in range(K):
            top += 1
            x = A[i, k]
            b = B[k]
            t = S[top]
            for j in range(N):
                t[j] = x * b[j]
            c = k + 1
            while c % 2 == 0:
                u = S[top - 1]
                v = S[top]
                for j in range(N):
                    u[j] = u[j] + v[j]
                top -= 1
                c //= 2
        while top > 0:
            u = S[top - 1]
            v = S[top]
            for j in range(N):
                u[j] = u[j] + v[j]
            top -= 1
        c = C[i]
        for j in range(N):
            c[j] = S[0, j] if K > 0 else np.float32(0.0)


# --- ieee profile, any format and mode (float64) ---------------------------------------------


@njit(inline="always", cache=True)
def _add_odd(x, y):  # type: ignore[no-untyped-def]
    """The float64 number nearest ``x + y`` rounded to odd (exact sum if representable)."""
    z = x + y
    bp = z - x
    err = (x - (z - bp)) + (y - bp)
    zb = f64_to_u64(z)
    adjust = (err != 0.0) & ((zb & EXP64) != EXP64) & ((zb & U64(1)) == U64(0))
    up = (err > 0.0) == (z > 0.0)  # move away from zero when the error has z's sign
    zb2 = (zb + U64(1)) if up else (zb - U64(1))
    return u64_to_f64(zb2) if adjust else z


@njit(inline="always", cache=True)
def _round_add(x, y, p, emin, minnorm, maxval, subnormals, ovf, mode, key, idx, kbits):  # type: ignore[no-untyped-def]
    """fl(x + y) in the format: correctly rounded for every mode, IEEE signs of exact zeros."""
    r = counter_random(key, idx) if mode >= SR else U64(0)
    z = _add_odd(x, y)
    out = round_scalar(z, p, emin, minnorm, maxval, subnormals, ovf, mode, r, kbits)[0]
    # IEEE 754 sec. 6.3: an exact zero sum is -0 under roundTowardNegative (unless both +0).
    both_pos_zero = (f64_to_u64(x) == U64(0)) & (f64_to_u64(y) == U64(0))
    return -0.0 if ((z == 0.0) & (mode == RD) & (not both_pos_zero)) else out


@njit(inline="always", cache=True)
def _round_mul(a, b, p, emin, minnorm, maxval, subnormals, ovf, mode, key, idx, kbits):  # type: ignore[no-untyped-def]
    r = counter_random(key, idx) if mode >= SR else U64(0)
    return round_scalar(a * b, p, emin, minnorm, maxval, subnormals, ovf, mode, r, kbits)[0]


# Row operations of the general kernel.  ``fmt`` is the tuple (p, emin, minnorm, maxval,
# subnormals, ovf, kbits); element j draws the random counter ``base + j*stride``.  Each one
# dispatches once on the mode to a loop compiled for that mode (so the loop vectorises).


@njit(inline="always", cache=True)
def _prod_loop(t, b, a, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    p, emin, minnorm, maxval, sub, ovf, kbits = fmt
    for j in range(t.shape[0]):
        t[j] = _round_mul(
            a, b[j], p, emin, minnorm, maxval, sub, ovf, mode, key, base + U64(j) * stride, kbits
        )


@njit(inline="always", cache=True)
def _add_loop(u, v, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    p, emin, minnorm, maxval, sub, ovf, kbits = fmt
    for j in range(u.shape[0]):
        u[j] = _round_add(
            u[j], v[j], p, emin, minnorm, maxval, sub, ovf, mode, key, base + U64(j) * stride, kbits
        )


@njit(inline="always", cache=True)
def _fma_loop(s, b, a, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    p, emin, minnorm, maxval, sub, ovf, kbits = fmt
    for j in range(s.shape[0]):
        s[j] = _round_add(
            a * b[j], s[j], p, emin, minnorm, maxval, sub, ovf, mode, key, base + U64(j) * stride, kbits
        )


@njit(cache=True)
def _prod_row(t, b, a, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    """t[j] = fl(a * b[j])."""
    if mode == RNE:
        _prod_loop(t, b, a, fmt, RNE, key, base, stride)
    elif mode == RNA:
        _prod_loop(t, b, a, fmt, RNA, key, base, stride)
    elif mode == RZ:
        _prod_loop(t, b, a, fmt, RZ, key, base, stride)
    elif mode == RU:
        _prod_loop(t, b, a, fmt, RU, key, base, stride)
    elif mode == RD:
        _prod_loop(t, b, a, fmt, RD, key, base, stride)
    elif mode == RTO:
        _prod_loop(t, b, a, fmt, RTO, key, base, stride)
    elif mode == SR:
        _prod_loop(t, b, a, fmt, SR, key, base, stride)
    else:
        _prod_loop(t, b, a, fmt, SRK, key, base, stride)


@njit(cache=True)
def _add_row(u, v, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    """u[j] = fl(u[j] + v[j])."""
    if mode == RNE:
        _add_loop(u, v, fmt, RNE, key, base, stride)
    elif mode == RNA:
        _add_loop(u, v, fmt, RNA, key, base, stride)
    elif mode == RZ:
        _add_loop(u, v, fmt, RZ, key, base, stride)
    elif mode == RU:
        _add_loop(u, v, fmt, RU, key, base, stride)
    elif mode == RD:
        _add_loop(u, v, fmt, RD, key, base, stride)
    elif mode == RTO:
        _add_loop(u, v, fmt, RTO, key, base, stride)
    elif mode == SR:
        _add_loop(u, v, fmt, SR, key, base, stride)
    else:
        _add_loop(u, v, fmt, SRK, key, base, stride)


@njit(cache=True)
def _fma_row(s, b, a, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    """s[j] = fl(a * b[j] + s[j]) with one rounding."""
    if mode == RNE:
        _fma_loop(s, b, a, fmt, RNE, key, base, stride)
    elif mode == RNA:
        _fma_loop(s, b, a, fmt, RNA, key, base, stride)
    elif mode == RZ:
        _fma_loop(s, b, a, fmt, RZ, key, base, stride)
    elif mode == RU:
        _fma_loop(s, b, a, fmt, RU, key, base, stride)
    elif mode == RD:
        _fma_loop(s, b, a, fmt, RD, key, base, stride)
    elif mode == RTO:
        _fma_loop(s, b, a, fmt, RTO, key, base, stride)
    elif mode == SR:
        _fma_loop(s, b, a, fmt, SR, key, base, stride)
    else:
        _fma_loop(s, b, a, fmt, SRK, key, base, stride)


@njit(cache=True)
def _ieee_general_rows(
    A, B, C, order, block, fma, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits, r0, r1
):  # type: ignore[no-untyped-def]
    """The ``ieee`` profile in float64 for any format (``p <= 26``) and rounding mode.

    The rounding of ``kind`` (0 product, 1 addition, 2 addition of a block sum) for term ``k``
    of entry ``(i, j)`` draws its random bits from counter ``offset + ((i*N + j)*K + k)*4 +
    kind``; a pairwise addition uses the ``k`` of the first term of its right operand, a block
    addition the block's number.  So results do not depend on threads.
    """
    K = A.shape[1]
    N = B.shape[1]
    fmt = (p, emin, minnorm, maxval, subnormals, ovf, kbits)
    stride = U64(K) * U64(4)
    t = np.empty(N, dtype=np.float64)
    s = np.empty(N, dtype=np.float64)
    S = np.empty((66, N), dtype=np.float64)
    lo = np.empty(66, dtype=np.int64)
    for i in range(r0, r1):
        c = C[i]
        row = U64(offset) + U64(i) * U64(N) * stride  # counter of (i, j=0, k=0, kind 0)
        if order == PAIRWISE:
            # the stack of partial sums of h16_pairwise; lo[l] = first term of stack entry l
            top = -1
            for k in range(K):
                top += 1
                lo[top] = k
                _prod_row(S[top], B[k], A[i, k], fmt, mode, key, row + U64(k) * U64(4), stride)
                cnt = k + 1
                while cnt % 2 == 0 or (k == K - 1 and top > 0):
                    split = U64(lo[top])
                    _add_row(S[top - 1], S[top], fmt, mode, key, row + split * U64(4) + U64(_K_ADD), stride)
                    top -= 1
                    cnt //= 2
            for j in range(N):
                c[j] = S[0, j] if K > 0 else 0.0
        else:
            blk = block if order == BLOCKED else max(K, 1)
            c[:] = 0.0
            for k0 in range(0, K, blk):
                s[:] = 0.0
                for k in range(k0, min(K, k0 + blk)):
                    base = row + U64(k) * U64(4)
                    if fma:
                        _fma_row(s, B[k], A[i, k], fmt, mode, key, base + U64(_K_ADD), stride)
                    else:
                        _prod_row(t, B[k], A[i, k], fmt, mode, key, base, stride)
                        _add_row(s, t, fmt, mode, key, base + U64(_K_ADD), stride)
                if order == BLOCKED:
                    _add_row(c, s, fmt, mode, key, row + U64(k0 // blk) * U64(4) + U64(_K_BLOCK), stride)
                else:
                    c[:] = s


# --- parallel and one-thread entry points ----------------------------------------------------

ROWS = 8  # rows of C per parallel work item (the fp32 kernel works on blocks of 8 rows)
SERIAL_BELOW = 1 << 22  # multiply-adds below which the one-thread kernels are used


@njit(parallel=True, cache=True)
def h16_sequential(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_h16_sequential_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _h16_sequential_rows(A, B, C, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def h16_sequential_serial(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_h16_sequential_rows` over all rows on one thread (small products)."""
    _h16_sequential_rows(A, B, C, 0, A.shape[0])


@njit(parallel=True, cache=True)
def h16_blocked(A, B, C, block):  # type: ignore[no-untyped-def]
    """:func:`_h16_blocked_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _h16_blocked_rows(A, B, C, block, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def h16_blocked_serial(A, B, C, block):  # type: ignore[no-untyped-def]
    """:func:`_h16_blocked_rows` over all rows on one thread (small products)."""
    _h16_blocked_rows(A, B, C, block, 0, A.shape[0])


@njit(parallel=True, cache=True)
def h16_pairwise(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_h16_pairwise_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _h16_pairwise_rows(A, B, C, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def h16_pairwise_serial(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_h16_pairwise_rows` over all rows on one thread (small products)."""
    _h16_pairwise_rows(A, B, C, 0, A.shape[0])


@njit(parallel=True, cache=True)
def f32_sequential_fma(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_f32_sequential_fma_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _f32_sequential_fma_rows(A, B, C, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def f32_sequential_fma_serial(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_f32_sequential_fma_rows` over all rows on one thread (small products)."""
    _f32_sequential_fma_rows(A, B, C, 0, A.shape[0])


@njit(parallel=True, cache=True)
def f32_sequential(A, B, C, fma):  # type: ignore[no-untyped-def]
    """:func:`_f32_sequential_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _f32_sequential_rows(A, B, C, fma, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def f32_sequential_serial(A, B, C, fma):  # type: ignore[no-untyped-def]
    """:func:`_f32_sequential_rows` over all rows on one thread (small products)."""
    _f32_sequential_rows(A, B, C, fma, 0, A.shape[0])


@njit(parallel=True, cache=True)
def f32_blocked(A, B, C, block, fma):  # type: ignore[no-untyped-def]
    """:func:`_f32_blocked_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _f32_blocked_rows(A, B, C, block, fma, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def f32_blocked_serial(A, B, C, block, fma):  # type: ignore[no-untyped-def]
    """:func:`_f32_blocked_rows` over all rows on one thread (small products)."""
    _f32_blocked_rows(A, B, C, block, fma, 0, A.shape[0])


@njit(parallel=True, cache=True)
def f32_pairwise(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_f32_pairwise_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _f32_pairwise_rows(A, B, C, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def f32_pairwise_serial(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_f32_pairwise_rows` over all rows on one thread (small products)."""
    _f32_pairwise_rows(A, B, C, 0, A.shape[0])


@njit(parallel=True, cache=True)
def ieee_general(
    A, B, C, order, block, fma, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits
):  # type: ignore[no-untyped-def]
    """:func:`_ieee_general_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _ieee_general_rows(
            A,
            B,
            C,
            order,
            block,
            fma,
            p,
            emin,
            minnorm,
            maxval,
            subnormals,
            ovf,
            mode,
            key,
            offset,
            kbits,
            c * ROWS,
            min(M, (c + 1) * ROWS),
        )


@njit(cache=True)
def ieee_general_serial(
    A, B, C, order, block, fma, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits
):  # type: ignore[no-untyped-def]
    """:func:`_ieee_general_rows` over all rows on one thread (small products)."""
    _ieee_general_rows(
        A,
        B,
        C,
        order,
        block,
        fma,
        p,
        emin,
        minnorm,
        maxval,
        subnormals,
        ovf,
        mode,
        key,
        offset,
        kbits,
        0,
        A.shape[0],
    )


@njit(cache=True)
def _final_range(x, out, s, e, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    for i in range(s, e):
        r = counter_random(key, U64(offset + i)) if mode >= SR else U64(0)
        out[i] = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, mode, r, kbits)[0]


@njit(parallel=True, cache=True)
def round_final(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    """Round the 1-D ``x`` (the accumulated sums) to the format; counter of entry e: offset+e."""
    n = x.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        _final_range(
            x,
            out,
            c * CHUNK,
            min(n, (c + 1) * CHUNK),
            p,
            emin,
            minnorm,
            maxval,
            subnormals,
            ovf,
            mode,
            key,
            offset,
            kbits,
        )


@njit(cache=True)
def round_final_serial(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    _final_range(x, out, 0, x.shape[0], p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits)

"""Private kernels of the tensor-core multi-term fused dot product (see fpanalysis.tensorcore).

One fused step of a tensor core computes ``d = a_1 b_1 + ... + a_n b_n + c`` as follows (the
model of Fasi, Higham, Mikaitis & Pranesh, "Numerical behavior of NVIDIA tensor cores", PeerJ
Comput. Sci. 7:e330, 2021, refined by Khattak & Mikaitis, "Accurate models of NVIDIA tensor
cores", 2025, and by the MMA-Sim simulator, package ``mmasim`` 2.1.1, ``arithmetic/fdpa.py``):

1. every input is decoded as ``s * 2**e`` with ``e = max(floor(log2|x|), emin_fmt)`` (subnormal
   inputs keep a significand below 1); a product's exponent is ``e_a + e_b`` (not renormalised,
   so its significand lies in [0, 4));
2. a zero term (zero product or zero ``c``) gets the exponent ``e_zero``; ``E`` is the largest
   exponent of the ``n + 1`` terms (so ``E >= e_zero`` whenever some term is zero: the
   "zero-exponent floor");
3. every term is truncated toward zero to a multiple of ``2**(E - F)`` (``F`` extra bits below
   the leading position ``2**E``) and the truncated terms are added exactly;
4. the sum is rounded to the accumulator format: binary32 toward zero (``RZ_FP32``), binary32
   toward zero to 13 fraction bits (``RZ_E8M13``, the FP8 accumulator of Ada and Hopper) or
   binary16 to nearest even (``RNE_FP16``), subnormals kept, overflow to infinity; a zero
   result is +0 and a NaN is the canonical quiet NaN.

Infinities and NaNs follow IEEE 754 for the exact sum (NaN if any NaN, ``inf * 0`` or
``inf - inf``, else the infinity).

The kernels work on float64 values: a product of two inputs (at most 11 significant bits each)
is exact in float64, scaling by ``2**(F - E)`` is exact (no over- or underflow for the formats
served: ``E`` lies in [-252, 255]), ``trunc`` is exact, and the truncated terms are integers
below ``(n + 1) * 2**(F + 2) < 2**53``, so their float64 sum is exact.  Rounding to the output
uses integer exponent arithmetic on the float64 bits and either ``trunc`` (toward zero) or the
``1.5 * 2**52`` addition trick (nearest even), which is exact under the default IEEE rounding
(no fastmath anywhere).

``block_python`` and ``dot_python`` are the pure-Python twins (``fractions.Fraction``
arithmetic, written from the description above) and serve as the test oracle.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .bits import f32_to_u32, f64_to_u64, h16_to_f32, u64_to_f64

RZ_FP32, RZ_E8M13, RNE_FP16 = 0, 1, 2
# (precision p, emin, overflow threshold 2**(emax + 1)) of each output rounding
_OUT_P = (24, 14, 11)
_OUT_EMIN = (-126, -126, -14)
_OUT_LIMIT = (2.0**128, 2.0**128, 2.0**16)
ZNEG = -(1 << 20)  # exponent recorded for a zero input: never the maximum
_ENEG = -(1 << 24)
_RNE_MAGIC = 6755399441055744.0  # 1.5 * 2**52


@njit(inline="always", cache=True)
def _pow2(k):  # type: ignore[no-untyped-def]
    """2.0**k for integer -1022 <= k <= 1023, built from the bits."""
    return u64_to_f64(np.uint64(k + 1023) << np.uint64(52))


@njit(inline="always", cache=True)
def _exp(x):  # type: ignore[no-untyped-def]
    """floor(log2|x|) of a normal float64 ``x``."""
    return np.int64((f64_to_u64(x) >> np.uint64(52)) & np.uint64(0x7FF)) - 1023


@njit(inline="always", cache=True)
def round_out(v, rho):  # type: ignore[no-untyped-def]
    """Round the exact float64 value ``v`` (zero or normal) to the output of rounding ``rho``."""
    if v == 0.0:
        return 0.0
    ev = _exp(v)
    if rho == RNE_FP16:
        q = max(ev, -14) - 10
        r = ((v * _pow2(-q) + _RNE_MAGIC) - _RNE_MAGIC) * _pow2(q)
        lim = 65536.0
    else:
        p = 24 if rho == RZ_FP32 else 14
        q = max(ev, -126) - (p - 1)
        r = np.trunc(v * _pow2(-q)) * _pow2(q)
        lim = 2.0**128
    if abs(r) >= lim:
        r = math.copysign(math.inf, v)
    return r + 0.0  # -0 -> +0


@njit(cache=True)
def block(a, b, k0, k1, c, F, rho, e_zero, emin_a, emin_b, emin_c):  # type: ignore[no-untyped-def]
    """One fused step ``a[k0:k1] . b[k0:k1] + c`` (float64 values) rounded by ``rho``."""
    nan = math.isnan(c)
    pinf = c == math.inf
    ninf = c == -math.inf
    for k in range(k0, k1):
        x = a[k]
        y = b[k]
        if math.isnan(x) or math.isnan(y):
            nan = True
        elif math.isinf(x) or math.isinf(y):
            if x == 0.0 or y == 0.0:
                nan = True
            elif (x > 0.0) == (y > 0.0):
                pinf = True
            else:
                ninf = True
    if nan or (pinf and ninf):
        return math.nan
    if pinf:
        return math.inf
    if ninf:
        return -math.inf
    E = _ENEG
    zero = c == 0.0
    if not zero:
        E = max(_exp(c), emin_c)
    for k in range(k0, k1):
        x = a[k]
        y = b[k]
        if x == 0.0 or y == 0.0:
            zero = True
        else:
            E = max(E, max(_exp(x), emin_a) + max(_exp(y), emin_b))
    if zero:
        E = max(E, e_zero)
    sc = _pow2(F - E)
    S = np.trunc(c * sc)
    for k in range(k0, k1):
        S += np.trunc((a[k] * b[k]) * sc)
    return round_out(S * _pow2(E - F), rho)


@njit(cache=True)
def dot_chain(a, b, c, n, F, rho, e_zero, emin_a, emin_b, emin_c, promote):  # type: ignore[no-untyped-def]
    """Chain of fused steps over ``a``, ``b`` (length a multiple of ``n``) from the accumulator
    ``c``; with ``promote > 0`` the chain restarts from +0 every ``promote`` terms and each chunk
    result is added to a binary32 total (from ``c``) with round-to-nearest-even."""
    K = a.shape[0]
    if promote <= 0:
        acc = c
        for k0 in range(0, K, n):
            acc = block(a, b, k0, k0 + n, acc, F, rho, e_zero, emin_a, emin_b, emin_c)
        return acc
    tot = np.float32(c)
    for p0 in range(0, K, promote):
        acc = 0.0
        for k0 in range(p0, min(p0 + promote, K), n):
            acc = block(a, b, k0, k0 + n, acc, F, rho, e_zero, emin_a, emin_b, emin_c)
        tot = np.float32(tot + np.float32(acc))
    return np.float64(tot)


@njit(cache=True)
def dot_rows(A, B, C, n, F, rho, e_zero, emin_a, emin_b, emin_c, promote):  # type: ignore[no-untyped-def]
    """``dot_chain`` of every row of ``A`` (R, K) with the same row of ``B``, from ``C[r]``."""
    R = A.shape[0]
    out = np.empty(R)
    for r in range(R):
        out[r] = dot_chain(A[r], B[r], C[r], n, F, rho, e_zero, emin_a, emin_b, emin_c, promote)
    return out


@njit(cache=True)
def exponents(X, emin):  # type: ignore[no-untyped-def]
    """Per-entry ``max(floor(log2|x|), emin)`` (``ZNEG`` for zeros and non-finite entries) and the
    array with non-finite entries replaced by 0."""
    E = np.empty(X.shape, np.int32)
    Y = np.empty(X.shape)
    for i in range(X.shape[0]):
        for k in range(X.shape[1]):
            x = X[i, k]
            if x == 0.0 or not math.isfinite(x):
                E[i, k] = ZNEG
                Y[i, k] = 0.0
            else:
                E[i, k] = max(_exp(x), emin)
                Y[i, k] = x
    return E, Y


@njit(parallel=True, cache=True)
def gemm(A, B, EA, EB, ZA, ZB, n, F, rho, e_zero, emin_c, promote):  # type: ignore[no-untyped-def]
    """``A @ B`` of finite float64 values (M, Kp) x (Kp, N), ``Kp`` a multiple of ``n``, chained
    from +0; ``EA``/``EB`` the decoded exponents (``ZNEG`` for zeros), ``ZA[i, blk]``/``ZB[blk, j]``
    whether the block has a zero entry.  Vectorised over the columns ``j``."""
    M, Kp = A.shape
    N = B.shape[1]
    nb = Kp // n
    out = np.empty((M, N))
    for i in prange(M):
        acc = np.zeros(N)
        tot = np.zeros(N, np.float32)
        E = np.empty(N, np.int64)
        S = np.empty(N)
        sc = np.empty(N)
        for blk in range(nb):
            k0 = blk * n
            for j in range(N):
                E[j] = _ENEG
            for k in range(k0, k0 + n):
                ea = np.int64(EA[i, k])
                for j in range(N):
                    E[j] = max(E[j], ea + EB[k, j])
            za = ZA[i, blk]
            for j in range(N):
                c = acc[j]
                fin = math.isfinite(c)
                cc = c if fin else 0.0
                e = E[j]
                if cc != 0.0:
                    e = max(e, max(_exp(cc), emin_c))
                if za or ZB[blk, j] or cc == 0.0:
                    e = max(e, e_zero)
                E[j] = e
                s = _pow2(F - e)
                sc[j] = s
                S[j] = np.trunc(cc * s)
            for k in range(k0, k0 + n):
                a = A[i, k]
                for j in range(N):
                    S[j] += np.trunc((a * B[k, j]) * sc[j])
            for j in range(N):
                c = acc[j]
                r = round_out(S[j] * _pow2(E[j] - F), rho)
                acc[j] = r if math.isfinite(c) else c
            if promote > 0 and ((blk + 1) * n) % promote == 0:
                for j in range(N):
                    tot[j] = tot[j] + np.float32(acc[j])
                    acc[j] = 0.0
        if promote > 0:
            if (nb * n) % promote != 0:
                for j in range(N):
                    tot[j] = tot[j] + np.float32(acc[j])
            for j in range(N):
                out[i, j] = tot[j]
        else:
            for j in range(N):
                out[i, j] = acc[j]
    return out


# --- pure-Python twin (test oracle) ------------------------------------------------------------


def _decode(x: float, emin: int) -> tuple[Fraction, int]:
    """``x = s * 2**e`` with ``e = max(floor(log2|x|), emin)``."""
    m, e = math.frexp(x)
    s, e = Fraction(m) * 2, e - 1
    if e < emin:
        s, e = s * Fraction(2) ** (e - emin), emin
    return s, e


def _round_python(v: Fraction, rho: int) -> float:
    if v == 0:
        return 0.0
    p, emin, limit = _OUT_P[rho], _OUT_EMIN[rho], _OUT_LIMIT[rho]
    ev = math.frexp(float(v))[1] - 1  # v = S * 2**(E - F) with |S| < 2**53: exact in float64
    q = Fraction(2) ** (max(ev, emin) - (p - 1))
    r = (round(v / q) if rho == RNE_FP16 else int(v / q)) * q  # round(): half to even; int(): toward 0
    if abs(r) >= limit:
        return math.copysign(math.inf, v)
    return float(r) + 0.0


def block_python(a: list[float], b: list[float], c: float, F: int, rho: int, e_zero: int,
                 emin_a: int, emin_b: int, emin_c: int) -> float:
    """Twin of :func:`block` in exact rational arithmetic."""
    a, b, c = [float(v) for v in a], [float(v) for v in b], float(c)
    vals = [x * y for x, y in zip(a, b)] + [c]  # float64: only the special values are used
    if any(math.isnan(v) for v in vals) or any(math.isnan(x) or math.isnan(y) for x, y in zip(a, b)):
        return math.nan
    infs = {math.copysign(1.0, v) for v in vals if math.isinf(v)}
    if len(infs) == 2:
        return math.nan
    if infs:
        return math.copysign(math.inf, infs.pop())
    terms = []
    for x, y in zip(a, b):
        sx, ex = _decode(x, emin_a)
        sy, ey = _decode(y, emin_b)
        terms.append((sx * sy, ex + ey) if sx * sy != 0 else (Fraction(0), e_zero))
    sc, ec = _decode(c, emin_c)
    terms.append((sc, ec) if c != 0 else (Fraction(0), e_zero))
    E = max(e for _, e in terms)
    S = sum(int(s * Fraction(2) ** (e - E + F)) for s, e in terms)  # int(): truncation toward 0
    return _round_python(S * Fraction(2) ** (E - F), rho)


def dot_python(a: list[float], b: list[float], c: float, n: int, F: int, rho: int, e_zero: int,
               emin_a: int, emin_b: int, emin_c: int, promote: int = 0) -> float:
    """Twin of :func:`dot_chain` (``len(a)`` a multiple of ``n``)."""
    K = len(a)
    if promote <= 0:
        acc = c
        for k0 in range(0, K, n):
            acc = block_python(a[k0:k0 + n], b[k0:k0 + n], acc, F, rho, e_zero, emin_a, emin_b, emin_c)
        return acc
    tot = np.float32(c)
    for p0 in range(0, K, promote):
        acc = 0.0
        for k0 in range(p0, min(p0 + promote, K), n):
            acc = block_python(a[k0:k0 + n], b[k0:k0 + n], acc, F, rho, e_zero, emin_a, emin_b, emin_c)
        with np.errstate(over="ignore", invalid="ignore"):
            tot = np.float32(tot + np.float32(acc))
    return float(tot)


# --- register-tiled GEMM for inputs whose products are exact in float32 ----------------------
#
# ``gemm_tiled`` computes the same chains as :func:`gemm` for fp16 and FP8 inputs, in the manner
# of BLAS micro-kernels (Goto & van de Geijn, ACM TOMS 34(3), 2008): ``B`` is packed into panels
# of ``TNR`` columns and ``A`` into strips of ``TMR`` rows, and the chain of a ``TMR x TNR``
# tile runs over all blocks with the tile's sums in vector registers.  The tile step is written
# in LLVM IR with explicit vector types (numba cannot express a tile that stays in registers).
# For each block and every entry of the tile:
#
# 1. the largest exponent sum ``e_a + e_b`` of the block's products, in uint8 lanes: the packed
#    exponents are ``e_a + 63`` and ``e_b + 64`` (fp16 and FP8 exponents lie in [-14, 15]) and 0
#    for a zero input, so a sum is ``e_a + e_b + 127`` >= 99 for a nonzero product and <= 79
#    otherwise, and a block without a nonzero product is recognised (``< _NONE_BELOW``);
# 2. ``E``, the largest of that, the accumulator's exponent and (fp16 accumulators) the floors
#    ``e_zero`` of zero terms -- ``FA``/``FB`` mark the rows/columns whose block holds a zero;
# 3. the products ``a * b`` (exact float32 numbers), scaled by ``2**(F - E)`` (exact: the result
#    is a normal float32 number or below ``2**-126``, where truncation gives 0 either way) and
#    converted toward zero to int32 (``fptosi``): the truncated terms, whose sum cannot
#    overflow (``n * max|a b| * 2**F < 2**31``, checked by the caller); the accumulator's
#    truncated term is kept apart (with it the total can exceed ``2**31``: Hopper fp16);
# 4. the total in float64 (exact: below ``2**32`` in magnitude) and its rounding:
#
#    * toward zero (fp32 and E8M13 accumulators): the float64 total's significand bits below
#      the accumulator's precision are cleared (``mask``), the result is converted to float32
#      (exact) and scaled by ``2**(E - F)``.  The caller checks that this is the rounding of the
#      model: ``e_zero <= emin_a + emin_b`` and ``e_zero < emin_c``, so neither the floor nor a
#      zero accumulator changes ``E`` of a block with a nonzero product, and
#      ``emin_a + emin_b - F >= -126``, so a nonzero result (a multiple of ``2**(E - F)``, with
#      ``E >= emin_a + emin_b``) lies in the normal range, where toward-zero rounding is the
#      truncation of the significand.  A block without a nonzero product leaves the accumulator
#      as it is (it is a multiple of ``2**(E - F)`` when ``p_out - 1 <= F``, also checked); the
#      accumulator cannot overflow (``|c| <= sum |a b| < K * 2**32``);
#    * to nearest even (fp16 accumulators): ``v = total * 2**(E - F)`` in float64 (exact) and
#      the ``1.5 * 2**52`` addition as in :func:`round_out`, overflow to infinity; an infinite
#      accumulator stays as it is.
#
# The test oracles are :func:`dot_python` and :func:`gemm` (``tests/emulator/
# test_tensorcore_tiled.py``).


def _lanes() -> int:
    from .bits import target_features

    return 16 if "avx512f" in target_features() else 8


TVL = _lanes()  # float32 lanes of a vector register
TNV = 4  # vectors per tile row
TNR = TNV * TVL  # columns of a tile
TMR = 3  # rows of a tile
BIAS_A, BIAS_B = 63, 64  # uint8 exponents: e_a + 63, e_b + 64 (a zero input: 0), so that a sum is
_NONE_BELOW = 90  # the biased exponent e_a + e_b + 127 (at least 99), or at most 79 with a zero input
_TILE_RZ, _TILE_RNE16 = 0, 1


def _tc_tile_kernel(kind: int):  # type: ignore[no-untyped-def]
    """Intrinsic ``tile(Ap, EAp, Bp, EBp, FAp, FBp, acc, nblk, n, F, emin_c, e_zero, mask)``.

    Runs the chain over ``nblk`` blocks of ``n`` terms on one ``TMR x TNR`` tile, from the
    accumulators ``acc`` (float32, ``TMR*TNR``, row-major; written back).  Layouts (C-contiguous,
    1-D views starting at the tile's first block): ``Ap[k*TMR + r]`` float32 and ``EAp[k*TMR + r]``
    uint8 (the strip of A), ``Bp[k*TNR + j]`` float32 and ``EBp[k*TNR + j]`` uint8 (the panel of
    B; biased exponents, see the section comment), ``FAp[blk*TMR + r]``, ``FBp[blk*TNR + j]``
    int32 (``e_zero`` where the block has a zero input, else a very small number).  ``kind``: ``_TILE_RZ`` (toward zero; ``mask`` clears the
    float64 significand bits below the output precision) or ``_TILE_RNE16`` (fp16, nearest even).
    """

    @intrinsic
    def tile(typingctx, Ap, EAp, Bp, EBp, FAp, FBp, acc, nblk, n, F, emin_c, e_zero, mask):  # type: ignore[no-untyped-def]
        want = ((Ap, types.float32), (EAp, types.uint8), (Bp, types.float32), (EBp, types.uint8),
                (FAp, types.int32), (FBp, types.int32), (acc, types.float32))
        if not all(isinstance(a, types.Array) and a.dtype == t and a.layout == "C" and a.ndim == 1
                   for a, t in want):
            return None
        sig = types.none(Ap, EAp, Bp, EBp, FAp, FBp, acc, types.intp, types.intp, types.intp, types.intp,
                         types.intp, types.int64)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            nblk_v, n_v, F_v, eminc_v, ezero_v, mask_v = args[7:]
            i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
            f32, f64 = ir.FloatType(), ir.DoubleType()
            VL, NV, NR, MR = TVL, TNV, TNR, TMR
            vf = ir.VectorType(f32, VL)
            vd = ir.VectorType(f64, VL)
            vi = ir.VectorType(i32, VL)
            vl = ir.VectorType(i64, VL)
            vb = ir.VectorType(i8, NR)

            def data(k):  # type: ignore[no-untyped-def]
                return context.make_array(signature.args[k])(context, builder, args[k]).data

            def c64(v):  # type: ignore[no-untyped-def]
                return ir.Constant(i64, v)

            def splat(x, vt):  # type: ignore[no-untyped-def]
                u = ir.Constant(vt, ir.Undefined)
                z = ir.Constant(ir.VectorType(i32, vt.count), [0] * vt.count)
                return builder.shuffle_vector(builder.insert_element(u, x, ir.Constant(i32, 0)), u, z)

            def vconst(vt, v):  # type: ignore[no-untyped-def]
                return ir.Constant(vt, [v] * vt.count)

            def intr(name, vt, *xs):  # type: ignore[no-untyped-def]
                suffix = f"v{vt.count}{'f32' if vt.element == f32 else 'f64'}"
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * len(xs)),
                                                    f"{name}.{suffix}")
                return builder.call(fn, list(xs))

            def smax(x, y):  # type: ignore[no-untyped-def]
                return builder.select(builder.icmp_signed(">", x, y), x, y)

            def smin(x, y):  # type: ignore[no-untyped-def]
                return builder.select(builder.icmp_signed("<", x, y), x, y)

            def load_vec(ptr, off, vt):  # type: ignore[no-untyped-def]
                return builder.load(builder.bitcast(builder.gep(ptr, [off]), ir.PointerType(vt)), align=1)

            def pow2_64(e):  # 2.0**e for a <VL x i32> of exponents in the float64 range
                return builder.bitcast(builder.shl(builder.add(builder.sext(e, vl), vconst(vl, 1023)),
                                                   vconst(vl, 52)), vd)

            a_p, ea_p, b_p, eb_p, fa_p, fb_p, acc_p = (data(k) for k in range(7))
            F32 = builder.trunc(F_v, i32)
            Fs = splat(F32, vi)
            Fb = builder.add(Fs, vconst(vi, 254))
            emin_s = splat(builder.trunc(eminc_v, i32), vi)
            ezero_s = splat(builder.trunc(ezero_v, i32), vi)
            mask_s = splat(mask_v, vl)
            accs = [[cgutils.alloca_once(builder, vf) for _ in range(NV)] for _ in range(MR)]
            for r in range(MR):
                for v in range(NV):
                    builder.store(load_vec(acc_p, c64(r * NR + v * VL), vf), accs[r][v])
            e8 = [cgutils.alloca_once(builder, vb) for _ in range(MR)]
            S = [[cgutils.alloca_once(builder, vi) for _ in range(NV)] for _ in range(MR)]
            inf_f = vconst(vf, float("inf"))
            zero_f = vconst(vf, 0.0)
            with cgutils.for_range(builder, nblk_v) as bl:
                blk = bl.index
                k0 = builder.mul(blk, n_v)
                # 1. largest (biased) exponent sum of the block, uint8 lanes
                for r in range(MR):
                    builder.store(vconst(vb, 0), e8[r])
                with cgutils.for_range(builder, n_v) as kl:
                    k = builder.add(k0, kl.index)
                    eb = load_vec(eb_p, builder.mul(k, c64(NR)), vb)
                    for r in range(MR):
                        ea = builder.load(builder.gep(ea_p, [builder.add(builder.mul(k, c64(MR)), c64(r))]))
                        x = builder.load(e8[r])
                        y = builder.add(splat(ea, vb), eb)
                        builder.store(builder.select(builder.icmp_unsigned(">", x, y), x, y), e8[r])
                # the block's E, the scale 2**(F - E) and the accumulator's truncated term
                Es, scs, cts, fins, olds, nones, scis = {}, {}, {}, {}, {}, {}, {}
                for r in range(MR):
                    e8r = builder.load(e8[r])
                    if kind != _TILE_RZ:
                        fa = splat(builder.load(builder.gep(fa_p, [builder.add(builder.mul(blk, c64(MR)), c64(r))])), vi)
                    for v in range(NV):
                        half = builder.shuffle_vector(e8r, ir.Constant(vb, ir.Undefined),
                                                      ir.Constant(ir.VectorType(i32, VL), list(range(v * VL, v * VL + VL))))
                        ep = builder.zext(half, vi)  # biased: e + 127
                        none = builder.icmp_signed("<", ep, vconst(vi, _NONE_BELOW))
                        a = builder.load(accs[r][v])
                        olds[r, v], nones[r, v] = a, none
                        if kind == _TILE_RZ:
                            # floors and the zero accumulator never decide E here (see above)
                            # biased exponents; in the lanes of a block without a nonzero product
                            # the scales are meaningless and the result is discarded
                            ec = builder.and_(builder.lshr(builder.bitcast(a, vi), vconst(vi, 23)), vconst(vi, 255))
                            Eb = smax(ep, ec)
                            sc = builder.bitcast(builder.shl(builder.sub(Fb, Eb), vconst(vi, 23)), vf)
                            scis[r, v] = builder.bitcast(builder.shl(builder.sub(Eb, Fs), vconst(vi, 23)), vf)
                            cts[r, v] = builder.fptosi(builder.fmul(a, sc), vi)
                            scs[r, v] = sc
                            builder.store(vconst(vi, 0), S[r][v])
                            continue
                        ep = builder.select(none, vconst(vi, -(1 << 24)), builder.sub(ep, vconst(vi, 127)))
                        fb = load_vec(fb_p, builder.add(builder.mul(blk, c64(NR)), c64(v * VL)), vi)
                        fin = builder.fcmp_ordered("<", intr("llvm.fabs", vf, a), inf_f)
                        cc = builder.select(fin, a, zero_f)
                        bits = builder.bitcast(cc, vi)
                        ec = builder.sub(builder.and_(builder.lshr(bits, vconst(vi, 23)), vconst(vi, 255)),
                                         vconst(vi, 127))
                        ec = smax(ec, emin_s)
                        ec = builder.select(builder.fcmp_ordered("==", cc, zero_f), ezero_s, ec)
                        E = smax(smax(ep, ec), smax(fa, fb))
                        d = builder.sub(Fs, E)
                        sc = builder.bitcast(builder.shl(builder.add(smin(d, vconst(vi, 127)), vconst(vi, 127)),
                                                         vconst(vi, 23)), vf)
                        ct = intr("llvm.trunc", vd, builder.fmul(builder.fpext(cc, vd), pow2_64(d)))
                        Es[r, v], scs[r, v], cts[r, v], fins[r, v] = E, sc, ct, fin
                        builder.store(vconst(vi, 0), S[r][v])
                # 2. the truncated products, summed in int32
                with cgutils.for_range(builder, n_v) as kl:
                    k = builder.add(k0, kl.index)
                    bv = [load_vec(b_p, builder.add(builder.mul(k, c64(NR)), c64(v * VL)), vf) for v in range(NV)]
                    for r in range(MR):
                        a = splat(builder.load(builder.gep(a_p, [builder.add(builder.mul(k, c64(MR)), c64(r))])), vf)
                        for v in range(NV):
                            t = builder.fptosi(builder.fmul(builder.fmul(a, bv[v]), scs[r, v]), vi)
                            builder.store(builder.add(builder.load(S[r][v]), t), S[r][v])
                # 3. total, rounding to the accumulator
                for r in range(MR):
                    for v in range(NV):
                        if kind == _TILE_RZ:
                            tot = builder.fadd(builder.sitofp(builder.load(S[r][v]), vd), builder.sitofp(cts[r, v], vd))
                            rv = builder.bitcast(builder.and_(builder.bitcast(tot, vl), mask_s), vd)
                            new = builder.fmul(builder.fptrunc(rv, vf), scis[r, v])
                            builder.store(builder.select(nones[r, v], olds[r, v], new), accs[r][v])
                            continue
                        tot = builder.fadd(builder.sitofp(builder.load(S[r][v]), vd), cts[r, v])
                        val = builder.fmul(tot, pow2_64(builder.sub(Es[r, v], Fs)))
                        ev = builder.sub(builder.and_(builder.lshr(builder.bitcast(val, vl), vconst(vl, 52)),
                                                      vconst(vl, 0x7FF)), vconst(vl, 1023))
                        q = builder.sub(smax(builder.trunc(ev, vi), vconst(vi, -14)), vconst(vi, 10))
                        s = builder.fmul(val, pow2_64(builder.sub(vconst(vi, 0), q)))
                        magic = vconst(vd, _RNE_MAGIC)
                        rv = builder.fmul(builder.fsub(builder.fadd(s, magic), magic), pow2_64(q))
                        big = builder.fcmp_ordered(">=", intr("llvm.fabs", vd, rv), vconst(vd, 65536.0))
                        rv = builder.select(big, intr("llvm.copysign", vd, vconst(vd, float("inf")), rv), rv)
                        new = builder.fptrunc(rv, vf)
                        builder.store(builder.select(fins[r, v], new, olds[r, v]), accs[r][v])
            for r in range(MR):
                for v in range(NV):
                    ptr = builder.bitcast(builder.gep(acc_p, [c64(r * NR + v * VL)]), ir.PointerType(vf))
                    builder.store(builder.load(accs[r][v]), ptr, align=1)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile_rz = _tc_tile_kernel(_TILE_RZ)
_tile_rne16 = _tc_tile_kernel(_TILE_RNE16)


def _as_f32(x):  # type: ignore[no-untyped-def]
    """float32 value of an input: a float, or binary16 bits (uint16)."""


@overload(_as_f32)
def _as_f32_impl(x):  # type: ignore[no-untyped-def]
    if x == types.uint16:
        return lambda x: h16_to_f32(x)
    return lambda x: np.float32(x)


@njit(inline="always", cache=True)
def _decode_row(x, v, e, emin, bias):  # type: ignore[no-untyped-def]
    """Values (float32) and biased exponents ``max(floor(log2|x|), emin) + bias`` (uint8) of the
    fp16/FP8 inputs ``x`` (a float or binary16-bit row) into ``v`` and ``e``; zeros and
    non-finite inputs get value 0 and exponent 0.  Returns how many inputs are not finite.
    Branch-free (it vectorises); the inputs are never float32 subnormals (|x| >= 2**-24), so the
    float32 exponent field is ``floor(log2|x|)``."""
    bad = 0
    for k in range(x.shape[0]):
        f = _as_f32(x[k])
        u = np.int32(f32_to_u32(f) & np.uint32(0x7FFFFFFF))
        fin = u < np.int32(0x7F800000)
        ok = fin & (u != np.int32(0))
        ex = max((u >> np.int32(23)) - np.int32(127), np.int32(emin)) + np.int32(bias)
        v[k] = f if fin else np.float32(0.0)
        e[k] = np.uint8(ex if ok else 0)
        bad += np.int64(not fin)
    return bad


@njit(cache=True)
def _pack_tiles(A, B, n, emin_a, emin_b, e_zero):  # type: ignore[no-untyped-def]
    """Strips of ``TMR`` rows of ``A`` (M, Kp) and panels of ``TNR`` columns of ``B`` (Kp, N)
    (float32 or float64 values, or binary16 bits): values as float32, biased uint8 exponents (0
    for zeros and padding), the floors ``FA``/``FB`` (``e_zero`` where a block of a row/column
    holds a zero), and which rows of ``A`` and columns of ``B`` hold a non-finite value."""
    M, Kp = A.shape
    N = B.shape[1]
    nb = Kp // n
    mt = (M + TMR - 1) // TMR
    nt = (N + TNR - 1) // TNR
    Ap = np.zeros((mt, Kp * TMR), np.float32)
    EAp = np.zeros((mt, Kp * TMR), np.uint8)
    FA = np.full((mt, nb * TMR), -(1 << 24), np.int32)
    bad_a = np.zeros(M, np.bool_)
    bad_b = np.zeros(N, np.bool_)
    v = np.empty(max(Kp, N), np.float32)
    e = np.empty(max(Kp, N), np.uint8)
    for i in range(M):
        t, r = divmod(i, TMR)
        bad_a[i] = _decode_row(A[i], v, e, emin_a, BIAS_A) > 0
        for k in range(Kp):
            Ap[t, k * TMR + r] = v[k]
            EAp[t, k * TMR + r] = e[k]
        for blk in range(nb):
            z = False
            for k in range(blk * n, blk * n + n):
                z |= e[k] == 0
            if z:
                FA[t, blk * TMR + r] = e_zero
    Bp = np.zeros((nt, Kp * TNR), np.float32)
    EBp = np.zeros((nt, Kp * TNR), np.uint8)
    FB = np.full((nt, nb * TNR), -(1 << 24), np.int32)
    zb = np.zeros(N, np.bool_)
    for k in range(Kp):
        _decode_row(B[k], v, e, emin_b, BIAS_B)
        for j in range(N):
            bad_b[j] |= not math.isfinite(_as_f32(B[k, j]))
            zb[j] |= e[j] == 0
        for t in range(nt):
            j0 = t * TNR
            w = min(TNR, N - j0)
            for c in range(w):
                Bp[t, k * TNR + c] = v[j0 + c]
                EBp[t, k * TNR + c] = e[j0 + c]
        if (k + 1) % n == 0:
            blk = k // n
            for j in range(N):
                if zb[j]:
                    t, c = divmod(j, TNR)
                    FB[t, blk * TNR + c] = e_zero
                zb[j] = False
    return Ap, EAp, Bp, EBp, FA, FB, bad_a, bad_b


@njit(cache=True)
def _tile_chain(Ap, EAp, Bp, EBp, FA, FB, out, ti, tj, M, N, nb, n, F, rho, e_zero, emin_c, promote, mask,
                acc, tot):  # type: ignore[no-untyped-def]
    """The chains of tile (``ti``, ``tj``) into ``out``; ``acc`` and ``tot`` are scratch tiles."""
    acc[:] = 0.0
    tot[:] = 0.0
    step = nb if promote <= 0 else promote // n
    for b0 in range(0, nb, step):
        b1 = min(nb, b0 + step)
        a_sl = Ap[ti, b0 * n * TMR:b1 * n * TMR]
        ea_sl = EAp[ti, b0 * n * TMR:b1 * n * TMR]
        b_sl = Bp[tj, b0 * n * TNR:b1 * n * TNR]
        eb_sl = EBp[tj, b0 * n * TNR:b1 * n * TNR]
        fa_sl = FA[ti, b0 * TMR:b1 * TMR]
        fb_sl = FB[tj, b0 * TNR:b1 * TNR]
        if rho == RNE_FP16:
            _tile_rne16(a_sl, ea_sl, b_sl, eb_sl, fa_sl, fb_sl, acc, b1 - b0, n, F, emin_c, e_zero, mask)
        else:
            _tile_rz(a_sl, ea_sl, b_sl, eb_sl, fa_sl, fb_sl, acc, b1 - b0, n, F, emin_c, e_zero, mask)
        if promote > 0:
            for x in range(TMR * TNR):
                tot[x] = tot[x] + acc[x]
                acc[x] = 0.0
    res = tot if promote > 0 else acc
    i0 = ti * TMR
    j0 = tj * TNR
    for r in range(min(TMR, M - i0)):
        for c in range(min(TNR, N - j0)):
            out[i0 + r, j0 + c] = res[r * TNR + c]


@njit(cache=True)
def gemm_tiled_serial(A, B, n, F, rho, e_zero, emin_a, emin_b, emin_c, promote, mask):  # type: ignore[no-untyped-def]
    """:func:`gemm` of ``A`` (M, Kp), ``B`` (Kp, N) holding fp16 or FP8 numbers (float32 or float64
    values, or binary16 bits as uint16; see the section comment, the caller checks the
    conditions stated there), one thread; ``mask`` is the float64 bit mask of toward-zero
    rounding to the accumulator.  Returns the float32 results and which rows of ``A`` and
    columns of ``B`` hold infinities or NaNs (they count as zeros here)."""
    M, Kp = A.shape
    N = B.shape[1]
    nb = Kp // n
    Ap, EAp, Bp, EBp, FA, FB, bad_a, bad_b = _pack_tiles(A, B, n, emin_a, emin_b, e_zero)
    out = np.empty((M, N), np.float32)
    acc = np.empty(TMR * TNR, np.float32)
    tot = np.empty(TMR * TNR, np.float32)
    for tj in range(Bp.shape[0]):
        for ti in range(Ap.shape[0]):
            _tile_chain(Ap, EAp, Bp, EBp, FA, FB, out, ti, tj, M, N, nb, n, F, rho, e_zero, emin_c, promote, mask,
                        acc, tot)
    return out, bad_a, bad_b


@njit(parallel=True, cache=True)
def gemm_tiled(A, B, n, F, rho, e_zero, emin_a, emin_b, emin_c, promote, mask):  # type: ignore[no-untyped-def]
    """:func:`gemm_tiled_serial` with the tiles spread over threads."""
    M, Kp = A.shape
    N = B.shape[1]
    nb = Kp // n
    Ap, EAp, Bp, EBp, FA, FB, bad_a, bad_b = _pack_tiles(A, B, n, emin_a, emin_b, e_zero)
    out = np.empty((M, N), np.float32)
    mt, nt = Ap.shape[0], Bp.shape[0]
    groups = (mt + 15) // 16  # work items: 16 row strips of one panel, sharing scratch tiles
    for t in prange(nt * groups):
        tj = t // groups
        g = t - tj * groups
        acc = np.empty(TMR * TNR, np.float32)
        tot = np.empty(TMR * TNR, np.float32)
        for ti in range(g * 16, min(mt, g * 16 + 16)):
            _tile_chain(Ap, EAp, Bp, EBp, FA, FB, out, ti, tj, M, N, nb, n, F, rho, e_zero, emin_c, promote, mask,
                        acc, tot)
    return out, bad_a, bad_b

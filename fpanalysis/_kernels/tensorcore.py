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
from numba import njit, prange

from .bits import f64_to_u64, u64_to_f64

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


@njit(parallel=True, cache=True)
def gemm_f32(A, B, EA, EB, ZA, ZB, n, F, rho, e_zero, emin_c, promote):  # type: ignore[no-untyped-def]
    """:func:`gemm` for inputs whose products are exact normal float32 numbers (fp16, FP8) and
    whose aligned products cannot overflow int32 (``n * 4 * 2**F <= 2**31``; the caller checks).

    ``A``, ``B`` float32; ``EA``, ``EB`` the exponents as float32 (small integers: their sums and
    maxima are exact, and float32 ``max`` vectorises where 64-bit integer ``max`` does not).
    Each aligned product is ``int32(a * b * 2**(F - E))``: a product of at most 22 bits scaled
    by a power of two is an exact float32 below ``2**27``, and the conversion truncates toward
    zero; the products are summed in int32 and the accumulator's truncated term in float64.
    Tiles of 8 rows x 128 columns: every slice of ``B`` read from memory serves 8 rows of ``A``.
    """
    M, Kp = A.shape
    N = B.shape[1]
    nb = Kp // n
    R = 4
    JC = N
    out = np.empty((M, N))
    nti = (M + R - 1) // R
    ntj = (N + JC - 1) // JC
    for t in prange(nti * ntj):
        i0 = (t // ntj) * R
        j0 = (t % ntj) * JC
        rows = min(R, M - i0)
        W = min(JC, N - j0)
        acc = np.zeros((R, JC))
        tot = np.zeros((R, JC), np.float32)
        E = np.empty((R, JC), np.float32)
        S = np.empty((R, JC), np.int32)
        sc = np.empty((R, JC), np.float32)
        ct = np.empty((R, JC))
        for blk in range(nb):
            k0 = blk * n
            for r in range(rows):
                Er = E[r]
                for j in range(W):
                    Er[j] = np.float32(-(1 << 28))
                for k in range(k0, k0 + n):
                    ea = EA[i0 + r, k]
                    EBk = EB[k, j0:j0 + W]
                    for j in range(W):
                        Er[j] = max(Er[j], ea + EBk[j])
                za = ZA[i0 + r, blk]
                for j in range(W):
                    c = acc[r, j]
                    cc = c if math.isfinite(c) else 0.0
                    e = np.int64(Er[j])
                    if cc != 0.0:
                        e = max(e, max(_exp(cc), emin_c))
                    if za or ZB[blk, j0 + j] or cc == 0.0:
                        e = max(e, e_zero)
                    Er[j] = np.float32(e)
                    sc[r, j] = np.float32(_pow2(min(F - e, 127)))
                    ct[r, j] = np.trunc(cc * _pow2(F - e))
                    S[r, j] = 0
            for k in range(k0, k0 + n):
                Bk = B[k, j0:j0 + W]
                for r in range(rows):
                    a = A[i0 + r, k]
                    Sr = S[r]
                    scr = sc[r]
                    for j in range(W):
                        Sr[j] += np.int32((a * Bk[j]) * scr[j])
            for r in range(rows):
                for j in range(W):
                    c = acc[r, j]
                    v = round_out((np.float64(S[r, j]) + ct[r, j]) * _pow2(np.int64(E[r, j]) - F), rho)
                    acc[r, j] = v if math.isfinite(c) else c
                if promote > 0 and ((blk + 1) * n) % promote == 0:
                    for j in range(W):
                        tot[r, j] = tot[r, j] + np.float32(acc[r, j])
                        acc[r, j] = 0.0
        for r in range(rows):
            if promote > 0:
                if (nb * n) % promote != 0:
                    for j in range(W):
                        tot[r, j] = tot[r, j] + np.float32(acc[r, j])
                for j in range(W):
                    out[i0 + r, j0 + j] = tot[r, j]
            else:
                for j in range(W):
                    out[i0 + r, j0 + j] = acc[r, j]
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

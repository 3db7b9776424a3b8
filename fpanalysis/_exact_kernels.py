"""Private numba kernels for exact dot products, sums and matrix products.

The exact value of ``sum_i x_i * y_i`` is accumulated in a *Kulisch accumulator*: an array of
``NLIMB`` signed 64-bit limbs, limb ``j`` holding a 32-bit digit of weight ``2**(32*j + BASE)``
(Kulisch & Miranker, "The arithmetic of the digital computer", IEEE Trans. Computers, 1986).
Each digit added is below ``2**33`` in magnitude, so a limb absorbs ``2**30`` additions before a
carry pass is needed.  The accumulator spans ``2**-2200 .. 2**2280``: every product of two
finite float64 numbers and any sum of up to ``2**64`` of them.

Three ways to fill it, chosen per call:

* **levels** (products exact in float64 and, together, spanning at most ``4*51`` bits: every
  format with ``p <= 26`` on data of moderate dynamic range): each product ``v`` is cut into
  at most four pieces ``k_l * 2**B_l`` with integers ``|k_l| <= 2**50`` by the error-free
  extraction ``t = fl(sigma + v)``, ``k = bits(t) - bits(sigma)``, ``v <- v - (t - sigma)``
  with ``sigma = 1.5 * 2**(B + 52)`` (exact when ``|v| <= 2**(B+50)``; Rump, Ogita & Oishi,
  "Accurate floating-point summation part I: faithful rounding", SIAM J. Sci. Comput. 31(1),
  2008, Lemma 3.3 / ExtractVector).  The integers ``k_l`` are summed in int64 (4096 terms at
  most between flushes), so the loops have no floating-point reduction and vectorise.
* **bins** (products exact in float64, any exponent range):
  each product ``x_i*y_i`` is computed in float64 (exact) and added to a float64 *bin* chosen
  by its binary exponent.  If every product has at most ``w`` significant bits, a bin holding
  terms of exponent ``k`` sees only multiples of ``2**(k-w+1)`` below ``2**(k+1)``; ``N`` of them
  sum exactly in float64 while ``N <= 2**(53-w)``.  After at most that many products the bins are
  flushed into the accumulator.  When ``w > 30`` (e.g. fp32 inputs, ``w = 48``) each product is
  split into a high and a low part of at most ``ceil(w/2)`` bits first, so that bins still take
  ``>= 2**26`` terms between flushes.  (The exponent-indexed bins follow the idea of
  Malcolm, "On accurate floating-point summation", CACM 1971, and Zhu & Hayes' OnlineExactSum,
  SIAM J. Sci. Comput. 2010.)  Four interleaved bin sets break the store-to-load dependency
  between consecutive products with equal exponents.
* **general path** (any float64 inputs, including float64 subnormals and products that over-
  or underflow float64): the 53-bit integer significands are multiplied exactly in 32-bit
  halves and the partial products added to the accumulator.

Whether the first two paths apply is decided from one scan of the inputs (the bitwise OR of the
significands gives the widest significand; the exponent range bounds every product), so the
decision is exact, not heuristic.  The exact sum is then rounded once, correctly, by
:func:`round_exact` from its 64 leading bits and a sticky bit.

The test oracles are the pure-Python twins in :mod:`fpanalysis.reference`
(``_exact_dot_python``, a ``fractions.Fraction`` sum, and ``_round_fraction``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._bits import ABS64, EXP64, HIDDEN64, MANT64, U64, f64_to_u64, u64_to_f64
from ._round_kernels import OVF_NAN, OVF_SAT, RD, RNA, RNE, RTO, RU, RZ, round_scalar

I64 = np.int64
I32 = np.int32
NLIMB = 140  # limbs of the accumulator
BASE = -2200  # weight of bit 0 of limb 0 is 2**BASE
F64_OFF = 1125  # bit offset of the last significand bit of a float64 with biased exponent E: max(E,1) + F64_OFF
PROD_OFF = 50  # same for the product of two significands: max(Ex,1) + max(Ey,1) + PROD_OFF
SPECIAL = 2047  # bin of inf/nan products
NSETS = 4  # interleaved bin sets
MAX_CHUNK = 1 << 30
LEVEL_BITS = 50  # |k| <= 2**LEVEL_BITS per extracted piece
LEVEL_CHUNK = 1 << 12  # pieces summed in int64 between flushes: 2**12 * 2**50 <= 2**62
MAX_LEVELS = 4
BLOCK = 256  # products buffered per block in the levels path
LEVELS, BINS, GENERAL = 0, 1, 2  # plan kinds
_M32 = U64(0xFFFFFFFF)
_TOP = U64(0x8000000000000000)


# --- scanning and planning --------------------------------------------------------------


@njit(inline="always", cache=True)
def _bitlen_u64(v):  # type: ignore[no-untyped-def]
    """Number of bits of ``v`` (``v < 2**53``), via the exponent of its exact float64 value."""
    return I64(f64_to_u64(np.float64(v)) >> U64(52)) - 1022 if v != U64(0) else I64(0)


@njit(cache=True)
def scan(x):  # type: ignore[no-untyped-def]
    """One pass over the 1-D array ``x``: ``(or_sig, emax, emin, special)``.

    ``or_sig`` is the OR of the 53-bit significands of the finite values, ``emax`` and ``emin``
    the extreme biased exponents of the finite nonzero values (``emin == 0``: there are float64
    subnormals; ``0`` and ``2047`` when there are no such values), ``special`` nonzero when
    there are infs or NaNs.  Branch-free selects on 32-bit exponents, so that it vectorises
    (AVX2 has no 64-bit integer min/max).
    """
    orm = U64(0)
    emax = I32(0)
    emin = I32(2047)
    spec = I32(0)
    for i in range(x.shape[0]):
        a = f64_to_u64(np.float64(x[i])) & ABS64
        E = I32(a >> U64(52))
        fin = E != I32(2047)
        nz = fin & (a != U64(0))
        M = (a & MANT64) | (HIDDEN64 if E != I32(0) else U64(0))
        orm |= M if fin else U64(0)
        En = E if fin else I32(0)
        emax = En if En > emax else emax
        Em = E if nz else I32(2047)
        emin = Em if Em < emin else emin
        spec |= I32(0) if fin else I32(1)
    return orm, I64(emax), I64(emin), I64(spec)


@njit(cache=True)
def make_plan(sx, sy, chunk_cap, force):  # type: ignore[no-untyped-def]
    """Choose the path for the products of values scanned as ``sx`` and ``sy``.

    ``force``: 0 automatic, 1 bins whenever products are exact, 2 the general path.
    Returns ``(kind, split, hmask, chunk, elo, ehi, jlo, jtop, nlev, b1, special)``: the path,
    whether products are split for the bins (and the mask keeping the high part), how many
    products are taken between flushes, the range of bins used, the range of accumulator limbs
    used, the number of levels and the exponent of the first level's unit, and whether the
    inputs hold infs or NaNs.
    """
    orx, emaxx, eminx, spx = sx
    ory, emaxy, eminy, spy = sy
    special = (spx | spy) != 0
    if ((orx == U64(0)) | (ory == U64(0))) and force != 2:
        # every finite product is zero (or there are none): only inf/nan products matter
        return LEVELS, False, U64(0), I64(1), I64(1), I64(0), I64(0), I64(2), I64(0), I64(0), special
    wx = 53 - (_bitlen_u64(orx & (~orx + U64(1))) - 1) if orx != U64(0) else I64(0)
    wy = 53 - (_bitlen_u64(ory & (~ory + U64(1))) - 1) if ory != U64(0) else I64(0)
    w = wx + wy
    exact = (eminx != 0) & (eminy != 0) & (w <= 53) & (emaxx + emaxy <= 3030) & (eminx + eminy >= 1024 + w)
    if (not exact) or force == 2:
        return GENERAL, False, U64(0), I64(0), I64(1), I64(0), I64(0), I64(NLIMB - 1), I64(0), I64(0), special
    # levels: |product| < 2**H, every product a multiple of 2**Q
    H = emaxx + emaxy - 2046 + 2
    Q = eminx + eminy - 2046 - w + 2
    b1 = H - LEVEL_BITS
    B = b1
    nlev = I64(1)
    while B > Q:
        B -= LEVEL_BITS + 1
        nlev += 1
    if force == 0 and nlev <= MAX_LEVELS and b1 + 52 <= 1023 and B >= -1074:
        chunk = min(I64(LEVEL_CHUNK), I64(chunk_cap))
        jlo = (B - BASE) >> 5
        jtop = min(I64(NLIMB - 1), ((b1 + LEVEL_BITS + 64 - BASE) >> 5) + 2)
        return LEVELS, False, U64(0), chunk, I64(1), I64(0), jlo, jtop, nlev, b1, special
    # bins
    split = w > 30
    h = (w + 1) // 2
    wb = h if split else w
    hmask = ~((U64(1) << U64(53 - h)) - U64(1)) if split else ~U64(0)
    chunk = min(I64(1) << I64(53 - wb), I64(chunk_cap))
    elo = eminx + eminy - 1023 - w
    ehi = emaxx + emaxy - 1023 + 1
    jlo = (max(elo - 53, I64(1)) + F64_OFF) >> 5
    jtop = min(I64(NLIMB - 1), ((ehi + F64_OFF + 96) >> 5) + 2)
    return BINS, split, hmask, chunk, elo, ehi, jlo, jtop, I64(0), I64(0), special


# --- the accumulator ----------------------------------------------------------------------


@njit(inline="always", cache=True)
def acc_add(acc, M, o, neg):  # type: ignore[no-untyped-def]
    """Add ``(-1)**neg * M * 2**(o + BASE)`` (``M < 2**64``) to the accumulator."""
    j = o >> 5
    sh = U64(o & 31)
    t0 = (M & _M32) << sh
    t1 = (M >> U64(32)) << sh
    d0 = I64(t0 & _M32)
    d1 = I64((t0 >> U64(32)) + (t1 & _M32))
    d2 = I64(t1 >> U64(32))
    s = I64(-1) if neg else I64(1)
    acc[j] += s * d0
    acc[j + 1] += s * d1
    acc[j + 2] += s * d2


@njit(inline="always", cache=True)
def acc_add_f64(acc, v):  # type: ignore[no-untyped-def]
    """Add the finite float64 ``v`` to the accumulator."""
    b = f64_to_u64(v)
    E = I64((b >> U64(52)) & U64(0x7FF))
    M = (b & MANT64) | (HIDDEN64 if E != 0 else U64(0))
    acc_add(acc, M, max(E, I64(1)) + F64_OFF, (b >> U64(63)) != U64(0))


@njit(inline="always", cache=True)
def acc_add_i64(acc, k, o):  # type: ignore[no-untyped-def]
    """Add ``k * 2**(o + BASE)`` for a signed int64 ``k`` (``|k| < 2**63``)."""
    acc_add(acc, U64(k if k >= 0 else -k), o, k < 0)


@njit(inline="always", cache=True)
def carry(acc, jlo, jtop):  # type: ignore[no-untyped-def]
    """Propagate carries: limbs ``jlo..jtop-1`` become digits in ``[0, 2**32)``."""
    for j in range(jlo, jtop):
        c = acc[j] >> 32
        acc[j] -= c << 32
        acc[j + 1] += c


@njit(cache=True)
def normalize(acc, jlo, jtop):  # type: ignore[no-untyped-def]
    """Turn the limbs into sign and magnitude digits; returns True when the sum is negative."""
    carry(acc, jlo, jtop)
    neg = acc[jtop] < 0
    if neg:
        for j in range(jlo, jtop + 1):
            acc[j] = -acc[j]
        carry(acc, jlo, jtop)
    return neg


@njit(cache=True)
def leading_bits(acc, jlo, jtop):  # type: ignore[no-untyped-def]
    """The normalized magnitude as ``(T, L, sticky)``: ``T`` its 64 leading bits (top bit set),
    ``L`` the exponent of the last bit of ``T``, ``sticky`` whether lower bits are nonzero.
    ``T == 0`` when the sum is zero."""
    j = jtop
    while j >= jlo and acc[j] == 0:
        j -= 1
    if j < jlo:
        return U64(0), I64(0), False
    d2 = U64(acc[j])
    d1 = U64(acc[j - 1]) if j - 1 >= jlo else U64(0)
    d0 = U64(acc[j - 2]) if j - 2 >= jlo else U64(0)
    b = _bitlen_u64(d2)
    T = (((d2 << U64(32)) | d1) << U64(32 - b)) | (d0 >> U64(b))
    sticky = (d0 & ((U64(1) << U64(b)) - U64(1))) != U64(0)
    for i in range(jlo, j - 2):
        sticky |= acc[i] != 0
    return T, I64(32 * (j - 2)) + b + BASE, sticky


@njit(cache=True)
def round_exact(neg, T, L, sticky, p, emin, minnorm, maxval, subnormals, ovf, mode):  # type: ignore[no-untyped-def]
    """Round ``(-1)**neg * (T + sticky_fraction) * 2**L`` once, correctly, to the format.

    Same semantics as :func:`fpanalysis._round_kernels.round_scalar` (grid, overflow policy,
    flush to zero without subnormals), but from an exact value wider than float64.
    """
    if T == U64(0):
        return 0.0
    e = L + 63
    lo = emin if subnormals else emin - 1
    qe = max(e, I64(lo)) - p + 1  # exponent of the quantum
    s = qe - L  # bits of T dropped, >= 64 - p >= 11
    if s < 64:
        t = T >> U64(s)
        r = T & ((U64(1) << U64(s)) - U64(1))
        half = U64(1) << U64(s - 1)
        above = (r > half) | ((r == half) & sticky)
        tie = (r == half) & (not sticky)
        inexact = (r != U64(0)) | sticky
    elif s == 64:
        t = U64(0)
        above = (T > _TOP) | ((T == _TOP) & sticky)
        tie = (T == _TOP) & (not sticky)
        inexact = True
    else:
        t = U64(0)
        above = False
        tie = False
        inexact = True
    if mode == RNE:
        go = above | (tie & ((t & U64(1)) != U64(0)))
    elif mode == RNA:
        go = above | tie
    elif mode == RU:
        go = inexact & (not neg)
    elif mode == RD:
        go = inexact & neg
    elif mode == RTO:
        t = t | (U64(1) if inexact else U64(0))
        go = False
    else:  # RZ
        go = False
    y = math.ldexp(np.float64(t + (U64(1) if go else U64(0))), qe)
    if y > maxval:
        to_max = (ovf == OVF_SAT) | (mode == RZ) | (mode == RTO) | ((mode == RU) & neg) | ((mode == RD) & (not neg))
        y = maxval if to_max else (np.nan if ovf == OVF_NAN else np.inf)
    if (not subnormals) and y < minnorm:
        y = 0.0
    return -y if neg else y


# --- path 1: levels -----------------------------------------------------------------------


@njit(cache=True)
def _accumulate_levels(x, y, plan, buf, acc):  # type: ignore[no-untyped-def]
    chunk = plan[3]
    nlev = plan[8]
    b1 = plan[9]
    n = x.shape[0]
    special = 0.0
    if plan[10]:
        for i in range(n):
            v = np.float64(x[i]) * np.float64(y[i])
            if (f64_to_u64(v) & EXP64) == EXP64:  # products of finite values are finite here
                special += v
    if nlev == 0:
        return special
    sums = np.zeros(MAX_LEVELS, dtype=np.int64)
    start = 0
    while start < n:
        cend = min(n, start + chunk)
        b0 = start
        while b0 < cend:
            m = min(cend - b0, BLOCK)
            for i in range(m):
                v = np.float64(x[b0 + i]) * np.float64(y[b0 + i])
                buf[i] = v if (f64_to_u64(v) & EXP64) != EXP64 else 0.0
            for lev in range(nlev):
                sg = math.ldexp(1.5, b1 - (LEVEL_BITS + 1) * lev + 52)
                sb = I64(f64_to_u64(sg))
                s = I64(0)
                for i in range(m):
                    t = sg + buf[i]
                    s += I64(f64_to_u64(t)) - sb
                    buf[i] = buf[i] - (t - sg)
                sums[lev] += s
            b0 += m
        for lev in range(nlev):
            acc_add_i64(acc, sums[lev], b1 - (LEVEL_BITS + 1) * lev - BASE)
            sums[lev] = 0
        start = cend
    return special


# --- path 2: bins -------------------------------------------------------------------------


@njit(inline="always", cache=True)
def _bin(p):  # type: ignore[no-untyped-def]
    return I64((f64_to_u64(p) >> U64(52)) & U64(0x7FF)) * NSETS


@njit(cache=True)
def _fill_bins(x, y, start, end, bins):  # type: ignore[no-untyped-def]
    i = start
    while i + 3 < end:
        p0 = np.float64(x[i]) * np.float64(y[i])
        p1 = np.float64(x[i + 1]) * np.float64(y[i + 1])
        p2 = np.float64(x[i + 2]) * np.float64(y[i + 2])
        p3 = np.float64(x[i + 3]) * np.float64(y[i + 3])
        bins[_bin(p0)] += p0
        bins[_bin(p1) + 1] += p1
        bins[_bin(p2) + 2] += p2
        bins[_bin(p3) + 3] += p3
        i += 4
    while i < end:
        p0 = np.float64(x[i]) * np.float64(y[i])
        bins[_bin(p0)] += p0
        i += 1


@njit(inline="always", cache=True)
def _split(p, hmask):  # type: ignore[no-untyped-def]
    b = f64_to_u64(p)
    hi = u64_to_f64(b & hmask)
    lo = p - hi if (b & EXP64) != EXP64 else 0.0  # inf/nan products go whole into the high part
    return hi, lo


@njit(cache=True)
def _fill_bins_split(x, y, start, end, bins, hmask):  # type: ignore[no-untyped-def]
    i = start
    while i + 1 < end:
        h0, l0 = _split(np.float64(x[i]) * np.float64(y[i]), hmask)
        h1, l1 = _split(np.float64(x[i + 1]) * np.float64(y[i + 1]), hmask)
        bins[_bin(h0)] += h0
        bins[_bin(l0) + 1] += l0
        bins[_bin(h1) + 2] += h1
        bins[_bin(l1) + 3] += l1
        i += 2
    while i < end:
        h0, l0 = _split(np.float64(x[i]) * np.float64(y[i]), hmask)
        bins[_bin(h0)] += h0
        bins[_bin(l0) + 1] += l0
        i += 1


@njit(cache=True)
def _flush(bins, acc, elo, ehi):  # type: ignore[no-untyped-def]
    for e in range(elo, ehi + 1):
        k = e * NSETS
        v = (bins[k] + bins[k + 1]) + (bins[k + 2] + bins[k + 3])  # exact: at most `chunk` terms
        bins[k] = 0.0
        bins[k + 1] = 0.0
        bins[k + 2] = 0.0
        bins[k + 3] = 0.0
        if v != 0.0:
            acc_add_f64(acc, v)


@njit(cache=True)
def _accumulate_bins(x, y, plan, bins, acc):  # type: ignore[no-untyped-def]
    split = plan[1]
    hmask = plan[2]
    chunk = plan[3]
    elo = plan[4]
    ehi = plan[5]
    for k in range(elo * NSETS, (ehi + 1) * NSETS):
        bins[k] = 0.0
    for k in range(SPECIAL * NSETS, (SPECIAL + 1) * NSETS):
        bins[k] = 0.0
    n = x.shape[0]
    start = 0
    while start < n:
        end = min(n, start + chunk)
        if split:
            _fill_bins_split(x, y, start, end, bins, hmask)
        else:
            _fill_bins(x, y, start, end, bins)
        _flush(bins, acc, elo, ehi)
        start = end
    k = SPECIAL * NSETS
    return (bins[k] + bins[k + 1]) + (bins[k + 2] + bins[k + 3])


# --- path 3: general ----------------------------------------------------------------------


@njit(cache=True)
def _accumulate_general(x, y, acc):  # type: ignore[no-untyped-def]
    special = 0.0
    count = 0
    for i in range(x.shape[0]):
        xv = np.float64(x[i])
        yv = np.float64(y[i])
        bx = f64_to_u64(xv)
        by = f64_to_u64(yv)
        Ex = I64((bx >> U64(52)) & U64(0x7FF))
        Ey = I64((by >> U64(52)) & U64(0x7FF))
        if Ex == 2047 or Ey == 2047:
            special += xv * yv
            continue
        Mx = (bx & MANT64) | (HIDDEN64 if Ex != 0 else U64(0))
        My = (by & MANT64) | (HIDDEN64 if Ey != 0 else U64(0))
        if Mx == U64(0) or My == U64(0):
            continue
        neg = ((bx ^ by) >> U64(63)) != U64(0)
        o = max(Ex, I64(1)) + max(Ey, I64(1)) + PROD_OFF
        xl = Mx & _M32
        xh = Mx >> U64(32)
        yl = My & _M32
        yh = My >> U64(32)
        acc_add(acc, xl * yl, o, neg)
        acc_add(acc, xl * yh + xh * yl, o + 32, neg)
        acc_add(acc, xh * yh, o + 64, neg)
        count += 1
        if count == 1 << 24:
            carry(acc, 0, NLIMB - 1)
            count = 0
    return special


# --- entry points -------------------------------------------------------------------------


@njit(inline="always", cache=True)
def accumulate(x, y, plan, work, acc):  # type: ignore[no-untyped-def]
    """Add ``sum x_i*y_i`` to ``acc``; returns the IEEE sum of the inf/nan products (else 0)."""
    if plan[0] == LEVELS:
        return _accumulate_levels(x, y, plan, work, acc)
    if plan[0] == BINS:
        return _accumulate_bins(x, y, plan, work, acc)
    return _accumulate_general(x, y, acc)


@njit(inline="always", cache=True)
def workspace(plan):  # type: ignore[no-untyped-def]
    return np.empty(BLOCK if plan[0] == LEVELS else (2048 * NSETS if plan[0] == BINS else 0), dtype=np.float64)


@njit(cache=True)
def finish(special, acc, plan, p, emin, minnorm, maxval, subnormals, ovf, mode):  # type: ignore[no-untyped-def]
    """Round the accumulated sum (or the special value) and clear the used limbs."""
    jlo = plan[6]
    jtop = plan[7]
    if special != 0.0:  # inf or nan
        for j in range(jlo, jtop + 1):
            acc[j] = 0
        return round_scalar(special, p, emin, minnorm, maxval, subnormals, ovf, mode, U64(0), 0)[0]
    neg = normalize(acc, jlo, jtop)
    T, L, sticky = leading_bits(acc, jlo, jtop)
    for j in range(jlo, jtop + 1):
        acc[j] = 0
    return round_exact(neg, T, L, sticky, p, emin, minnorm, maxval, subnormals, ovf, mode)


@njit(cache=True)
def dot(x, y, p, emin, minnorm, maxval, subnormals, ovf, mode, chunk_cap, force):  # type: ignore[no-untyped-def]
    """Correctly rounded ``sum x_i*y_i`` (1-D arrays of equal length and dtype)."""
    plan = make_plan(scan(x), scan(y), chunk_cap, force)
    acc = np.zeros(NLIMB, dtype=np.int64)
    special = accumulate(x, y, plan, workspace(plan), acc)
    return finish(special, acc, plan, p, emin, minnorm, maxval, subnormals, ovf, mode)


@njit(cache=True)
def dot_digits(x, y, chunk_cap, force):  # type: ignore[no-untyped-def]
    """The exact sum as ``(negative, digits, special, kind)``: the value is
    ``+-sum_j digits[j] * 2**(32*j + BASE)`` unless ``special`` (inf or nan) is nonzero."""
    plan = make_plan(scan(x), scan(y), chunk_cap, force)
    acc = np.zeros(NLIMB, dtype=np.int64)
    special = accumulate(x, y, plan, workspace(plan), acc)
    neg = normalize(acc, plan[6], plan[7])
    return neg, acc, special, plan[0]


@njit(parallel=True, cache=True)
def matmul(A, Bt, out, p, emin, minnorm, maxval, subnormals, ovf, mode):  # type: ignore[no-untyped-def]
    """``out[i, j]`` = correctly rounded ``sum_k A[i, k] * Bt[j, k]`` (C-contiguous inputs)."""
    m = A.shape[0]
    n = Bt.shape[0]
    plan = make_plan(scan(A.reshape(-1)), scan(Bt.reshape(-1)), MAX_CHUNK, 0)
    total = m * n
    tile = 16
    ntiles = (total + tile - 1) // tile
    for c in prange(ntiles):
        work = workspace(plan)
        acc = np.zeros(NLIMB, dtype=np.int64)
        for t in range(c * tile, min(total, (c + 1) * tile)):
            i = t // n
            j = t - i * n
            special = accumulate(A[i], Bt[j], plan, work, acc)
            out[i, j] = finish(special, acc, plan, p, emin, minnorm, maxval, subnormals, ovf, mode)

"""Private numba kernels for exact dot products, sums and matrix products.

The exact value of ``sum_i x_i * y_i`` is accumulated in a *Kulisch accumulator*: an array of
``NLIMB`` signed 64-bit limbs, limb ``j`` holding a 32-bit digit of weight ``2**(32*j + BASE)``
(Kulisch & Miranker, "The arithmetic of the digital computer", IEEE Trans. Computers, 1986).
Each digit added is below ``2**33`` in magnitude, so a limb absorbs ``2**30`` additions between
carry passes.  The accumulator spans ``2**-2200 .. 2**2280``: every product of two finite
float64 numbers and any sum of up to ``2**64`` of them.  Two extra slots record the range of
limbs touched, so that the final carry pass and rounding only visit those.

The products are processed in blocks of ``BLOCK``; each block takes one of two paths, decided
exactly (not heuristically) from statistics gathered while its products are computed:

* **levels** (the products are exact in float64: the inputs' significands together have at most
  53 bits, as for any two formats with ``p <= 26``, and no product over- or underflows):
  every product ``v`` of the block is split into pieces ``k_l * 2**B_l`` with integers
  ``|k_l| <= 2**50`` by the error-free extraction ``t = fl(sigma + v)``,
  ``k = bits(t) - bits(sigma)``, ``v <- v - (t - sigma)`` with ``sigma = 1.5 * 2**(B + 52)``,
  exact whenever ``|v| <= 2**(B + 50)`` (Rump, Ogita & Oishi, "Accurate floating-point summation
  part I: faithful rounding", SIAM J. Sci. Comput. 31(1), 2008, Lemma 3.3).  ``B_1`` is set by
  the block's largest product and each level takes 51 more bits, down to the unit ``2**Q`` that
  divides every product of the block (from its smallest product and the OR of the
  significands), after which nothing is left.  The ``k`` of a level are summed in int64, so the
  loops have no floating-point reduction and vectorise; a typical fp16 block needs one level,
  fp32 two, and the widest possible range 41.
* **general** (anything else: inexact products, float64 subnormal or over/underflowing products,
  infinities and NaNs): the 53-bit integer significands are multiplied exactly in 32-bit halves
  and the partial products added to the accumulator; inf/nan products are summed in IEEE
  arithmetic on the side (their sum, if any, is the result).

The exact sum is then rounded once, correctly, by :func:`round_exact` from its 64 leading bits
and a sticky bit.  The test oracles are the pure-Python twins in :mod:`fpanalysis.reference`
(``_exact_dot_python``, a ``fractions.Fraction`` sum, and ``_round_fraction``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .bits import ABS64, EXP64, HIDDEN64, MANT64, U64, f64_to_u64
from .round import OVF_INF, OVF_NAN, OVF_SAT, RD, RNA, RNE, RTO, RU, RZ, round_scalar

I64 = np.int64
NLIMB = 140  # limbs of the accumulator (plus two slots: lowest and highest limb touched)
BASE = -2200  # weight of bit 0 of limb 0 is 2**BASE
PROD_OFF = 50  # offset of the last bit of the product of two significands: max(Ex,1) + max(Ey,1) + PROD_OFF
BLOCK = 512  # products per block
LEVEL_BITS = 50  # |k| <= 2**LEVEL_BITS per extracted piece
CARRY_EVERY = 1 << 13  # blocks between carry passes: 2**13 * 512 * 9 limb additions < 2**30
_M32 = U64(0xFFFFFFFF)
_TOP = U64(0x8000000000000000)
_MINNORM_BITS = U64(0x0010000000000000)
_I64MAX = I64(0x7FFFFFFFFFFFFFFF)


@njit(inline="always", cache=True)
def _bitlen_u64(v):  # type: ignore[no-untyped-def]
    """Number of bits of ``v`` (``v < 2**53``), via the exponent of its exact float64 value."""
    return I64(f64_to_u64(np.float64(v)) >> U64(52)) - 1022 if v != U64(0) else I64(0)


@njit(inline="always", cache=True)
def _width(orbits):  # type: ignore[no-untyped-def]
    """Largest significand width (bits from the leading to the last nonzero bit) of float64
    numbers whose bit patterns OR to ``orbits``."""
    m = (orbits & MANT64) | HIDDEN64
    return 53 - (_bitlen_u64(m & (~m + U64(1))) - 1)


# --- the accumulator ----------------------------------------------------------------------


@njit(inline="always", cache=True)
def new_acc():  # type: ignore[no-untyped-def]
    acc = np.zeros(NLIMB + 2, dtype=np.int64)
    acc[NLIMB] = NLIMB  # lowest limb touched
    acc[NLIMB + 1] = 0  # highest limb touched
    return acc


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
    acc[NLIMB] = min(acc[NLIMB], j)
    acc[NLIMB + 1] = max(acc[NLIMB + 1], j + 2)


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


@njit(inline="always", cache=True)
def touched(acc):  # type: ignore[no-untyped-def]
    """``(jlo, jtop)``: the limbs that can be nonzero, with room for carries above."""
    jlo = min(acc[NLIMB], I64(NLIMB - 1))
    return jlo, max(jlo, min(acc[NLIMB + 1] + 2, I64(NLIMB - 1)))


@njit(cache=True)
def clear(acc, jlo, jtop):  # type: ignore[no-untyped-def]
    for j in range(jlo, jtop + 1):
        acc[j] = 0
    acc[NLIMB] = NLIMB
    acc[NLIMB + 1] = 0


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

    Same semantics as :func:`fpanalysis._kernels.round.round_scalar` (grid, overflow policy,
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
        to_max = (
            (ovf == OVF_SAT)
            | (mode == RZ)
            | (mode == RTO)
            | ((mode == RU) & neg)
            | ((mode == RD) & (not neg))
        )
        y = maxval if to_max else (np.nan if ovf == OVF_NAN else np.inf)
    if (not subnormals) and y < minnorm:
        y = 0.0
    return -y if neg else y


# --- path 1: levels (loops run over range(len) of slices: a run-time start stops vectorising)


@njit(cache=True)
def _block_stats(x, y, buf):  # type: ignore[no-untyped-def]
    """Products into ``buf``; returns ``(or_x, or_y, or_p, pmax, pmin, xmin, ymin)``: ORs of the
    bit patterns of the inputs and of the products' magnitudes, the largest product magnitude
    and (minus one, so that zeros wrap around and drop out of the unsigned minimum) the
    smallest nonzero magnitudes of the products and of each input, all as bit patterns.
    Min/max only, no branches: vectorises."""
    orx = U64(0)
    ory = U64(0)
    orp = U64(0)
    pmax = U64(0)
    pmin = ~U64(0)
    xmin = ~U64(0)
    ymin = ~U64(0)
    one = U64(1)
    for i in range(x.shape[0]):
        xv = np.float64(x[i])
        yv = np.float64(y[i])
        p = xv * yv
        buf[i] = p
        bx = f64_to_u64(xv)
        by = f64_to_u64(yv)
        b = f64_to_u64(p) & ABS64
        orx |= bx
        ory |= by
        orp |= b
        pmax = max(pmax, b)
        pmin = min(pmin, b - one)
        xmin = min(xmin, (bx & ABS64) - one)
        ymin = min(ymin, (by & ABS64) - one)
    return orx, ory, orp, pmax, pmin, xmin, ymin


@njit(cache=True)
def _block_stats_f32(x, y, buf):  # type: ignore[no-untyped-def]
    """:func:`_block_stats` for float32 inputs, whose products are always exact, normal and
    finite in float64 (24 + 24 <= 53 bits, 2**-298 <= |product| < 2**256) unless an input is
    inf/nan: only the products' statistics are needed."""
    orp = U64(0)
    pmax = U64(0)
    pmin = ~U64(0)
    one = U64(1)
    for i in range(x.shape[0]):
        p = np.float64(x[i]) * np.float64(y[i])
        buf[i] = p
        b = f64_to_u64(p) & ABS64
        orp |= b
        pmax = max(pmax, b)
        pmin = min(pmin, b - one)
    # inputs "of width 1, magnitude 1"; "no nonzero input" when every product is zero
    some = U64(0x3FEFFFFFFFFFFFFF) if pmax != U64(0) else ~U64(0)
    return U64(0), U64(0), orp, pmax, pmin, some, some


@njit(inline="always", cache=True)
def _exp_lower(bits_minus_one):  # type: ignore[no-untyped-def]
    """A lower bound on log2 of the positive float64 with bit pattern ``bits_minus_one + 1``."""
    E = I64((bits_minus_one + U64(1)) >> U64(52))
    return E - 1023 if E != 0 else I64(-1074)


@njit(cache=True)
def _extract(buf, m, sg):  # type: ignore[no-untyped-def]
    """One level: returns sum of k_i = round(buf_i / 2**B) for ``sg = 1.5 * 2**(B+52)`` and
    leaves the exact remainders ``buf_i - k_i * 2**B`` in ``buf``."""
    sb = I64(f64_to_u64(sg))
    s = I64(0)
    for i in range(m):
        t = sg + buf[i]
        s += I64(f64_to_u64(t)) - sb
        buf[i] = buf[i] - (t - sg)
    return s


@njit(cache=True)
def _extract_last(buf, m, sg):  # type: ignore[no-untyped-def]
    """The last level: the sum of the k_i only (the remainders are zero)."""
    sb = I64(f64_to_u64(sg))
    s = I64(0)
    for i in range(m):
        s += I64(f64_to_u64(sg + buf[i])) - sb
    return s


@njit(cache=True)
def _block(x, y, buf, acc, force_general):  # type: ignore[no-untyped-def]
    """Add the block's products to ``acc``; returns the IEEE sum of its inf/nan products."""
    m = x.shape[0]
    if x.itemsize == 4 and y.itemsize == 4:
        orx, ory, orp, pmax, pmin, xmin, ymin = _block_stats_f32(x, y, buf)
    else:
        orx, ory, orp, pmax, pmin, xmin, ymin = _block_stats(x, y, buf)
    if (pmax == U64(0)) & ((xmin == ~U64(0)) | (ymin == ~U64(0))):
        return 0.0  # one side is all zeros: every product is an exact zero
    exact = (
        (not force_general)
        & (pmax < EXP64)  # no inf/nan product, no overflow
        & (_width(orx) + _width(ory) <= 53)  # products of finite values are exact ...
        & (_exp_lower(xmin) + _exp_lower(ymin) >= -1022)  # ... and normal (or exact zeros)
    )
    hi = I64(pmax >> U64(52)) - 1023  # every product < 2**(hi + 1)
    lo = I64((pmin + U64(1)) >> U64(52)) - 1023  # the smallest nonzero product >= 2**lo
    if not (exact and hi <= 1020):
        return _accumulate_general(x, y, acc)
    if pmax == U64(0):
        return 0.0
    Q = lo - _width(orp) + 1  # every product is a multiple of 2**Q >= 2**-1074
    B = hi + 1 - LEVEL_BITS
    while True:
        sg = math.ldexp(1.5, B + 52)
        if B <= Q:
            acc_add_i64(acc, _extract_last(buf, m, sg), B - BASE)
            return 0.0
        acc_add_i64(acc, _extract(buf, m, sg), B - BASE)
        B = max(B - (LEVEL_BITS + 1), Q)


# --- path 3: general ----------------------------------------------------------------------


@njit(cache=True)
def _accumulate_general(x, y, acc):  # type: ignore[no-untyped-def]
    special = 0.0
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
    return special


# --- entry points -------------------------------------------------------------------------


@njit(cache=True)
def accumulate(x, y, buf, acc, force_general, carry_every):  # type: ignore[no-untyped-def]
    """Add ``sum x_i*y_i`` to ``acc`` block by block; returns the IEEE sum of the inf/nan
    products (0.0 when there are none)."""
    n = x.shape[0]
    special = 0.0
    nblocks = (n + BLOCK - 1) // BLOCK
    for c in range(nblocks):
        start = c * BLOCK
        end = min(n, start + BLOCK)
        special += _block(x[start:end], y[start:end], buf, acc, force_general)
        if (c + 1) % carry_every == 0:
            jlo, jtop = touched(acc)
            carry(acc, jlo, jtop)
    return special


@njit(cache=True)
def finish(special, acc, p, emin, minnorm, maxval, subnormals, ovf, mode):  # type: ignore[no-untyped-def]
    """Round the accumulated sum (or the special value) and clear the accumulator."""
    jlo, jtop = touched(acc)
    if special != 0.0:  # inf or nan
        clear(acc, jlo, jtop)
        if ovf == OVF_INF:
            return special
        return round_scalar(special, p, emin, minnorm, maxval, subnormals, ovf, mode, U64(0), 0)[0]
    neg = normalize(acc, jlo, jtop)
    T, L, sticky = leading_bits(acc, jlo, jtop)
    clear(acc, jlo, jtop)
    return round_exact(neg, T, L, sticky, p, emin, minnorm, maxval, subnormals, ovf, mode)


@njit(inline="always", cache=True)
def _unpack(params):  # type: ignore[no-untyped-def]
    """``params`` = float64 [p, emin, minnorm, maxval, subnormals, ovf, mode, carry_every, force_general]
    (one array argument: calls from Python dispatch faster than with nine scalars)."""
    return (
        I64(params[0]),
        I64(params[1]),
        params[2],
        params[3],
        params[4] != 0.0,
        I64(params[5]),
        I64(params[6]),
        I64(params[7]),
        I64(params[8]),
    )


@njit(cache=True)
def dot(x, y, params):  # type: ignore[no-untyped-def]
    """Correctly rounded ``sum x_i*y_i`` (contiguous 1-D arrays of equal length and dtype)."""
    p, emin, minnorm, maxval, subnormals, ovf, mode, carry_every, force = _unpack(params)
    acc = new_acc()
    special = accumulate(x, y, np.empty(BLOCK), acc, force != 0, carry_every)
    return finish(special, acc, p, emin, minnorm, maxval, subnormals, ovf, mode)


@njit(cache=True)
def dot_digits(x, y, params):  # type: ignore[no-untyped-def]
    """The exact sum as ``(negative, digits, special)``: the value is
    ``+-sum_j digits[j] * 2**(32*j + BASE)`` unless ``special`` (inf or nan) is nonzero."""
    carry_every = I64(params[7])
    force = params[8] != 0.0
    acc = new_acc()
    special = accumulate(x, y, np.empty(BLOCK), acc, force, carry_every)
    jlo, jtop = touched(acc)
    neg = normalize(acc, jlo, jtop)
    return neg, acc[:NLIMB].copy(), special


@njit(parallel=True, cache=True)
def matmul(A, Bt, out, params):  # type: ignore[no-untyped-def]
    """``out[i, j]`` = correctly rounded ``sum_k A[i, k] * Bt[j, k]`` (C-contiguous inputs)."""
    p, emin, minnorm, maxval, subnormals, ovf, mode, carry_every, force = _unpack(params)
    m = A.shape[0]
    n = Bt.shape[0]
    total = m * n
    tile = 16
    ntiles = (total + tile - 1) // tile
    for c in prange(ntiles):
        buf = np.empty(BLOCK)
        acc = new_acc()
        for t in range(c * tile, min(total, (c + 1) * tile)):
            i = t // n
            j = t - i * n
            special = accumulate(A[i], Bt[j], buf, acc, force != 0, carry_every)
            out[i, j] = finish(special, acc, p, emin, minnorm, maxval, subnormals, ovf, mode)

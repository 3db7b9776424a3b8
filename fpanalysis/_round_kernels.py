"""Private numba kernels that round float64 values to a format ``(p, emin, emax)``.

Every value is decomposed into its 53-bit integer significand ``M`` and exponent ``e``; the
result is the integer ``t = M >> s`` (plus one when the mode says so) times the quantum
``2**(max(e, emin) - p + 1)``.  All decisions are integer comparisons on the dropped bits, which
LLVM turns into vector selects: the loops have no data-dependent branches and vectorise.

The NumPy twin used as the test oracle is :func:`fpanalysis.rounding._round_numpy`; it takes a
different route (scaling by the quantum and ``np.rint``/``np.floor``), so the two can disagree
only where one of them is wrong.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import (
    ABS64,
    EXP64,
    HIDDEN64,
    MANT64,
    SIGN64,
    U64,
    counter_random,
    f32_to_u32,
    f64_to_u64,
    u32_to_f32,
    u64_to_f64,
)

# Mode codes (private; the public names live in fpanalysis.rounding.RoundingMode).
RNE, RNA, RZ, RU, RD, RTO, SR, SRK = 0, 1, 2, 3, 4, 5, 6, 7
# Overflow policy codes.
OVF_INF, OVF_SAT, OVF_NAN = 0, 1, 2
# Exception flag bits returned by round_scalar.
F_INEXACT, F_OVERFLOW, F_SUBNORMAL, F_FLUSHED = 1, 2, 4, 8

_HALF = U64(0x8000000000000000)
_ONE = U64(1)
U32 = np.uint32
_ONE32 = U32(1)
_HALF32 = U32(0x80000000)


@njit(inline="always", cache=True)
def round_scalar(x, p, emin, minnorm, maxval, subnormals, ovf, mode, rbits, kbits):  # type: ignore[no-untyped-def]
    """Round the float64 ``x`` to the format; returns ``(y, flags)``.

    ``rbits`` is 64 random bits (used only by the stochastic modes), ``kbits`` the number of
    random bits stochastic rounding with few bits uses (mode SRK).  Written with selects only
    (no data-dependent branches) so that loops calling it vectorise.
    """
    b = f64_to_u64(x)
    sign = b & SIGN64
    neg = sign != U64(0)
    a = b & ABS64
    E = np.int64(a >> U64(52))
    M = (a & MANT64) | (HIDDEN64 if E != 0 else U64(0))
    e = (E if E > 1 else np.int64(1)) - 1023
    lo = emin if subnormals else emin - 1
    e_eff = e if e > lo else lo
    s = 53 - p + (e_eff - e)  # number of significand bits to drop, >= 1
    sc = s if s < 63 else 63
    t = M >> U64(sc)
    rem = M & ((_ONE << U64(sc)) - _ONE)
    inexact = rem != U64(0)
    # the dropped bits as a 64-bit binary fraction (exact when s <= 64, truncated beyond)
    sh_far = s - 64
    sh_far = 0 if sh_far < 0 else (63 if sh_far > 63 else sh_far)
    frac = (rem << U64(64 - sc)) if s <= 63 else (M >> U64(sh_far))

    if mode == RNE:
        go = (frac > _HALF) | ((frac == _HALF) & ((t & _ONE) != U64(0)))
    elif mode == RNA:
        go = frac >= _HALF
    elif mode == RU:
        go = inexact & (not neg)
    elif mode == RD:
        go = inexact & neg
    elif mode == RTO:
        t = t | (_ONE if inexact else U64(0))
        go = False
    elif mode == SR:
        go = rbits < frac
    elif mode == SRK:
        shk = U64(64 - kbits)
        go = ((frac >> shk) + (rbits >> shk)) >= (_ONE << U64(kbits))
    else:  # RZ
        go = False
    q = u64_to_f64(U64(e_eff - p + 1 + 1023) << U64(52))
    y = np.float64(t + (_ONE if go else U64(0))) * q

    over = y > maxval
    to_max = (ovf == OVF_SAT) | (mode == RZ) | (mode == RTO) | ((mode == RU) & neg) | ((mode == RD) & (not neg))
    big = maxval if to_max else (np.nan if ovf == OVF_NAN else np.inf)
    y = big if over else y
    tiny = y < minnorm
    flushed = (not subnormals) & tiny & ((y != 0.0) | inexact)
    y = 0.0 if ((not subnormals) & tiny) else y
    out = u64_to_f64(f64_to_u64(y) | sign)

    special = a >= EXP64  # inf or nan input
    keep = (a > EXP64) | (ovf == OVF_INF)
    spec = x if keep else (u64_to_f64(f64_to_u64(maxval) | sign) if ovf == OVF_SAT else np.nan)
    out = spec if special else out

    ok = not special
    flags = (
        (F_INEXACT if ((inexact | over | flushed) & ok) else 0)
        | (F_OVERFLOW if (over & ok) else 0)
        | (F_SUBNORMAL if (subnormals & tiny & (y != 0.0) & ok) else 0)
        | (F_FLUSHED if (((subnormals & (y == 0.0) & inexact) | flushed) & ok) else 0)
    )
    return out, flags


@njit(inline="always", cache=True)
def round_scalar_f32(x, p, emin, minnorm, maxval, subnormals, ovf, mode):  # type: ignore[no-untyped-def]
    """:func:`round_scalar` for a float32 ``x`` and a format whose numbers are float32 numbers,
    in 32-bit integer arithmetic (twice the vector lanes).  Deterministic modes only."""
    b = f32_to_u32(x)
    sign = b & U32(0x80000000)
    neg = sign != U32(0)
    a = b & U32(0x7FFFFFFF)
    E = np.int32(a >> U32(23))
    M = (a & U32(0x007FFFFF)) | (U32(0x00800000) if E != 0 else U32(0))
    e = (E if E > 1 else np.int32(1)) - np.int32(127)
    lo = np.int32(emin if subnormals else emin - 1)
    e_eff = e if e > lo else lo
    s = np.int32(24 - p) + (e_eff - e)
    sc = s if s < 31 else np.int32(31)
    t = M >> U32(sc)
    rem = M & ((_ONE32 << U32(sc)) - _ONE32)
    inexact = rem != U32(0)
    frac = (rem << U32(32 - sc)) if s <= 31 else U32(0)
    if mode == RNE:
        go = (frac > _HALF32) | ((frac == _HALF32) & ((t & _ONE32) != U32(0)))
    elif mode == RNA:
        go = frac >= _HALF32
    elif mode == RU:
        go = inexact & (not neg)
    elif mode == RD:
        go = inexact & neg
    elif mode == RTO:
        t = t | (_ONE32 if inexact else U32(0))
        go = False
    else:  # RZ
        go = False
    qe = e_eff - np.int32(p - 1)
    qbits = U32((U32(qe + 127) << U32(23)) if qe >= -126 else (_ONE32 << U32(qe + 149 if qe > -149 else 0)))
    y = np.float32(t + (_ONE32 if go else U32(0))) * u32_to_f32(qbits)
    over = y > maxval
    to_max = (ovf == OVF_SAT) | (mode == RZ) | (mode == RTO) | ((mode == RU) & neg) | ((mode == RD) & (not neg))
    big = maxval if to_max else (np.float32(np.nan) if ovf == OVF_NAN else np.float32(np.inf))
    y = big if over else y
    y = np.float32(0.0) if ((not subnormals) & (y < minnorm)) else y
    out = u32_to_f32(U32(f32_to_u32(y) | sign))
    special = a >= U32(0x7F800000)
    keep = (a > U32(0x7F800000)) | (ovf == OVF_INF)
    spec = x if keep else (u32_to_f32(U32(f32_to_u32(maxval) | sign)) if ovf == OVF_SAT else np.float32(np.nan))
    return spec if special else out


@njit(parallel=True, cache=True)
def round_array_f32(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode):  # type: ignore[no-untyped-def]
    """Round float32 ``x`` into float32 ``out`` (deterministic modes, float32-holdable formats)."""
    n = x.shape[0]
    mn = np.float32(minnorm)
    mx = np.float32(maxval)
    if mode == RNE:
        for i in prange(n):
            out[i] = round_scalar_f32(x[i], p, emin, mn, mx, subnormals, ovf, RNE)
    elif mode == RNA:
        for i in prange(n):
            out[i] = round_scalar_f32(x[i], p, emin, mn, mx, subnormals, ovf, RNA)
    elif mode == RZ:
        for i in prange(n):
            out[i] = round_scalar_f32(x[i], p, emin, mn, mx, subnormals, ovf, RZ)
    elif mode == RU:
        for i in prange(n):
            out[i] = round_scalar_f32(x[i], p, emin, mn, mx, subnormals, ovf, RU)
    elif mode == RD:
        for i in prange(n):
            out[i] = round_scalar_f32(x[i], p, emin, mn, mx, subnormals, ovf, RD)
    else:
        for i in prange(n):
            out[i] = round_scalar_f32(x[i], p, emin, mn, mx, subnormals, ovf, RTO)


@njit(parallel=True, cache=True)
def round_array(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    """Round every element of the 1-D array ``x`` into ``out`` (float32 or float64)."""
    n = x.shape[0]
    if mode == RNE:
        for i in prange(n):
            out[i] = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, RNE, U64(0), 0)[0]
    elif mode == RNA:
        for i in prange(n):
            out[i] = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, RNA, U64(0), 0)[0]
    elif mode == RZ:
        for i in prange(n):
            out[i] = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, RZ, U64(0), 0)[0]
    elif mode == RU:
        for i in prange(n):
            out[i] = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, RU, U64(0), 0)[0]
    elif mode == RD:
        for i in prange(n):
            out[i] = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, RD, U64(0), 0)[0]
    elif mode == RTO:
        for i in prange(n):
            out[i] = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, RTO, U64(0), 0)[0]
    elif mode == SR:
        for i in prange(n):
            r = counter_random(key, U64(offset + i))
            out[i] = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, SR, r, 0)[0]
    else:
        for i in prange(n):
            r = counter_random(key, U64(offset + i))
            out[i] = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, SRK, r, kbits)[0]


@njit(parallel=True, cache=True)
def round_array_stats(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    """Like :func:`round_array`, and return counts (inexact, overflow, subnormal, flushed)."""
    n = x.shape[0]
    n_inexact = 0
    n_overflow = 0
    n_subnormal = 0
    n_flushed = 0
    for i in prange(n):
        r = counter_random(key, U64(offset + i)) if mode >= SR else U64(0)
        y, f = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, mode, r, kbits)
        out[i] = y
        n_inexact += f & F_INEXACT
        n_overflow += (f & F_OVERFLOW) >> 1
        n_subnormal += (f & F_SUBNORMAL) >> 2
        n_flushed += (f & F_FLUSHED) >> 3
    return n_inexact, n_overflow, n_subnormal, n_flushed

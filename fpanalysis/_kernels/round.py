"""Private numba kernels that round float64 values to a format ``(p, emin, emax)``.

Every value is decomposed into its 53-bit integer significand ``M`` and exponent ``e``; the
result is the integer ``t = M >> s`` (plus one when the mode says so) times the quantum
``2**(max(e, emin) - p + 1)``.  All decisions are integer comparisons on the dropped bits, which
LLVM turns into vector selects: the loops have no data-dependent branches and vectorise.

The NumPy twin used as the test oracle is :func:`fpanalysis.rounding.round_numpy`; it takes a
different route (scaling by the quantum and ``np.rint``/``np.floor``), so the two can disagree
only where one of them is wrong.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from .bits import (
    ABS64,
    EXP64,
    SIGN64,
    U64,
    counter_random,
    f32_to_h16,
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
# Arrays shorter than SERIAL_BELOW use the one-thread kernels (no thread start-up cost).
SERIAL_BELOW = 65536

_HALF = U64(0x8000000000000000)
_ONE = U64(1)
U32 = np.uint32
_ONE32 = U32(1)
_HALF32 = U32(0x80000000)


@njit(inline="always", cache=True)
def round_scalar(x, p, emin, minnorm, maxval, subnormals, ovf, mode, rbits, kbits):  # type: ignore[no-untyped-def]
    """Round the float64 ``x`` to the format; returns ``(y, flags)``.

    ``|x|`` is scaled by ``1/q`` with ``q = 2**(max(e, emin) - p + 1)`` (exact: a power of two
    built from the exponent bits), the scaled value ``t < 2**p`` is rounded to an integer
    (``floor`` plus a mode-dependent carry decided from the exact fraction ``t - floor(t)``), and
    scaled back.  ``rbits`` is 64 random bits for the stochastic modes, ``kbits`` the number of
    random bits of mode SRK.  Selects only, no data-dependent branches: loops vectorise.
    """
    b = f64_to_u64(x)
    sign = b & SIGN64
    neg = sign != U64(0)
    a = b & ABS64
    E = np.int64(a >> U64(52))
    e = (E if E > 1 else np.int64(1)) - 1023
    lo = emin if subnormals else emin - 1
    e_eff = e if e > lo else lo
    qe = e_eff - p + 1
    q = u64_to_f64(U64(qe + 1023) << U64(52))
    iq = u64_to_f64(U64(1023 - qe) << U64(52))
    t = u64_to_f64(a) * iq
    fl = np.floor(t)
    frac = t - fl
    inexact = frac != 0.0
    if mode == RNE:
        r = np.rint(t)
    elif mode == RNA:
        r = fl + (1.0 if frac >= 0.5 else 0.0)
    elif mode == RU:
        r = fl + (1.0 if (inexact & (not neg)) else 0.0)
    elif mode == RD:
        r = fl + (1.0 if (inexact & neg) else 0.0)
    elif mode == RTO:
        r = fl + (1.0 if (inexact & (np.floor(fl * 0.5) == fl * 0.5)) else 0.0)
    elif mode == SR:
        # P(up) = frac, exactly whenever frac is a multiple of 2**-53 (always for results that
        # are normal, or subnormal within p binades of the normal range); else within 2**-53.
        u = np.float64(rbits >> U64(11)) * 1.1102230246251565e-16
        r = fl + (1.0 if u < frac else 0.0)
    elif mode == SRK:
        # k random bits: carry when the top k dropped bits plus a k-bit random integer overflow
        scale = np.float64(_ONE << U64(kbits))
        top = np.floor(frac * scale)
        rk = np.float64(rbits >> U64(64 - kbits))
        r = fl + (1.0 if top + rk >= scale else 0.0)
    else:  # RZ
        r = fl
    y = r * q

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
    """:func:`round_scalar` in float32 arithmetic (twice the vector lanes), for a float32 ``x``,
    deterministic modes, and formats whose quanta are normal float32 numbers
    (fp16 and the fp8 formats; the condition is :func:`f32_kernel_applies`).  ``minnorm`` and ``maxval`` are float32."""
    b = f32_to_u32(x)
    sign = U32(b & U32(0x80000000))
    neg = sign != U32(0)
    a = U32(b & U32(0x7FFFFFFF))
    E = np.int32(a >> U32(23))
    e = (E if E > 1 else np.int32(1)) - np.int32(127)
    lo = np.int32(emin if subnormals else emin - 1)
    e_eff = e if e > lo else lo
    qe = e_eff - np.int32(p - 1)
    q = u32_to_f32(U32(U32(qe + 127) << U32(23)))
    iq = u32_to_f32(U32(U32(127 - qe) << U32(23)))
    t = u32_to_f32(a) * iq
    fl = np.floor(t)
    frac = t - fl
    inexact = frac != np.float32(0.0)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    if mode == RNE:
        r = np.rint(t)
    elif mode == RNA:
        r = fl + (one if frac >= np.float32(0.5) else zero)
    elif mode == RU:
        r = fl + (one if (inexact & (not neg)) else zero)
    elif mode == RD:
        r = fl + (one if (inexact & neg) else zero)
    elif mode == RTO:
        half = fl * np.float32(0.5)
        r = fl + (one if (inexact & (np.floor(half) == half)) else zero)
    else:  # RZ
        r = fl
    y = r * q
    over = y > maxval
    to_max = (ovf == OVF_SAT) | (mode == RZ) | (mode == RTO) | ((mode == RU) & neg) | ((mode == RD) & (not neg))
    big = maxval if to_max else (np.float32(np.nan) if ovf == OVF_NAN else np.float32(np.inf))
    y = big if over else y
    y = zero if ((not subnormals) & (y < minnorm)) else y
    out = u32_to_f32(U32(f32_to_u32(y) | sign))
    special = a >= U32(0x7F800000)
    keep = (a > U32(0x7F800000)) | (ovf == OVF_INF)
    spec = x if keep else (u32_to_f32(U32(f32_to_u32(maxval) | sign)) if ovf == OVF_SAT else np.float32(np.nan))
    return spec if special else out


def f32_kernel_applies(p: int, emin: int, emax: int, subnormals: bool) -> bool:
    """Whether :func:`round_scalar_f32` is exact for this format: every quantum
    ``2**(e_eff - p + 1)`` it builds from float32 exponent bits, and its reciprocal, is a normal
    float32 number.  The smallest ``e_eff`` is ``emin`` with subnormals and ``emin - 1``
    without them (values below ``2**emin`` are rounded in the binade under it, then flushed), so
    the smallest quantum is ``2**(emin - p + 1)`` or ``2**(emin - p)``; the largest is
    ``2**(127 - p + 1)`` (inputs up to float32's top binade), whose reciprocal is normal for
    ``p >= 2``."""
    lowest = emin if subnormals else emin - 1
    return 2 <= p <= 24 and lowest - p + 1 >= -126 and emax <= 127


# --- array kernels, one compiled specialisation per rounding mode -----------------------------
#
# Each array kernel below is a Python function that calls a numba kernel made for its mode by
# a factory (``MODE`` a constant of the closure: numba's cache keys closures by their captured
# values).  A job compiles only the modes it uses: compiling all eight mode loops into one
# kernel took most of the first run's compile time (``fpanalysis check --demo`` uses one mode).


def _check_mode(mode: int, top: int) -> int:
    m = int(mode)
    if not 0 <= m <= top:
        raise ValueError(f"rounding mode code {m} is not in 0..{top}")
    return m


@functools.lru_cache(maxsize=None)
def _f32_kernel(MODE: int, parallel: bool):  # type: ignore[no-untyped-def]
    """Round float32 ``x`` into float32 ``out`` with :func:`round_scalar_f32` in mode ``MODE``
    (deterministic modes, formats where :func:`f32_kernel_applies`)."""

    loop = prange if parallel else range  # (a closure value: part of the cache key)

    def round_f32(x, out, p, emin, minnorm, maxval, subnormals, ovf):  # type: ignore[no-untyped-def]
        mn = np.float32(minnorm)
        mx = np.float32(maxval)
        for i in loop(x.shape[0]):
            out[i] = round_scalar_f32(x[i], p, emin, mn, mx, subnormals, ovf, MODE)

    return njit(parallel=parallel, cache=True)(round_f32)


@functools.lru_cache(maxsize=None)
def _f64_kernel(MODE: int, parallel: bool):  # type: ignore[no-untyped-def]
    """Round ``x`` into ``out`` (float32 or float64) with :func:`round_scalar` in mode ``MODE``;
    the random bits of element ``i`` depend on ``(key, offset + i)`` only."""

    loop = prange if parallel else range  # (a closure value: part of the cache key)

    def round_f64(x, out, p, emin, minnorm, maxval, subnormals, ovf, key, offset, kbits):  # type: ignore[no-untyped-def]
        for i in loop(x.shape[0]):
            r = counter_random(key, U64(offset + i)) if MODE >= SR else U64(0)
            out[i] = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, MODE, r, kbits)[0]

    return njit(parallel=parallel, cache=True)(round_f64)


@functools.lru_cache(maxsize=None)
def _stats_kernel(MODE: int, parallel: bool):  # type: ignore[no-untyped-def]
    """:func:`_f64_kernel` that also counts (inexact, overflow, subnormal, flushed)."""

    loop = prange if parallel else range  # (a closure value: part of the cache key)

    def round_stats(x, out, p, emin, minnorm, maxval, subnormals, ovf, key, offset, kbits):  # type: ignore[no-untyped-def]
        n = x.shape[0]
        n_inexact = 0
        n_overflow = 0
        n_subnormal = 0
        n_flushed = 0
        for i in loop(n):
            r = counter_random(key, U64(offset + i)) if MODE >= SR else U64(0)
            y, f = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, MODE, r, kbits)
            out[i] = y
            n_inexact += f & F_INEXACT
            n_overflow += (f & F_OVERFLOW) >> 1
            n_subnormal += (f & F_SUBNORMAL) >> 2
            n_flushed += (f & F_FLUSHED) >> 3
        return n_inexact, n_overflow, n_subnormal, n_flushed

    return njit(parallel=parallel, cache=True)(round_stats)


def round_array_f32(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode):  # type: ignore[no-untyped-def]
    """Round float32 ``x`` (1-D) into float32 ``out`` with :func:`round_scalar_f32`, in parallel
    (deterministic modes, formats where :func:`f32_kernel_applies`)."""
    _f32_kernel(_check_mode(mode, RTO), True)(x, out, p, emin, minnorm, maxval, subnormals, ovf)


def round_array_f32_serial(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode):  # type: ignore[no-untyped-def]
    """:func:`round_array_f32` on one thread (small arrays: no thread start-up cost)."""
    _f32_kernel(_check_mode(mode, RTO), False)(x, out, p, emin, minnorm, maxval, subnormals, ovf)


def round_array(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    """Round every element of the 1-D array ``x`` into ``out``, in parallel.  The random bits of
    element ``i`` depend on ``(key, offset + i)`` only, not on the number of threads."""
    _f64_kernel(_check_mode(mode, SRK), True)(x, out, p, emin, minnorm, maxval, subnormals, ovf, key, offset, kbits)


def round_array_serial(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    """:func:`round_array` on one thread (small arrays: no thread start-up cost)."""
    _f64_kernel(_check_mode(mode, SRK), False)(x, out, p, emin, minnorm, maxval, subnormals, ovf, key, offset, kbits)


def round_array_stats(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    """Like :func:`round_array`, and return counts (inexact, overflow, subnormal, flushed)."""
    k = _stats_kernel(_check_mode(mode, SRK), True)
    return k(x, out, p, emin, minnorm, maxval, subnormals, ovf, key, offset, kbits)


def round_array_stats_serial(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    """:func:`round_array_stats` on one thread (small arrays: no thread start-up cost)."""
    k = _stats_kernel(_check_mode(mode, SRK), False)
    return k(x, out, p, emin, minnorm, maxval, subnormals, ovf, key, offset, kbits)


@njit(inline="always", cache=True)
def encode_scalar(y, fb, bias, minnorm, inv_min_sub, inf_code, nan_code):  # type: ignore[no-untyped-def]
    """Bit pattern (as uint64) of ``y``, a float64 value of a format with ``fb`` fraction bits,
    exponent ``bias``, smallest normal ``minnorm`` and ``inv_min_sub`` = 1 / smallest subnormal; ``inf_code``/``nan_code`` are the
    patterns of +inf (unused when the format has none) and of the canonical NaN.  The sign
    bit is added by the caller."""
    b = f64_to_u64(y)
    a = b & ABS64
    normal = (a >> U64(52 - fb)) - (U64(1023 - bias) << U64(fb))
    sub = U64(u64_to_f64(a) * inv_min_sub)
    code = sub if u64_to_f64(a) < minnorm else normal
    code = inf_code if a == EXP64 else code
    return nan_code if a > EXP64 else code


@njit(parallel=True, cache=True)
def round_array_bits(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits,  # type: ignore[no-untyped-def]
                     fb, bias, inv_min_sub, inf_code, nan_code, sign_shift, use_f32):
    """Round ``x`` and write the format's bit patterns into the unsigned array ``out``
    (uint8 or uint16): one pass, no float64 intermediate array."""
    n = x.shape[0]
    if use_f32 and mode == RNE:
        mn = np.float32(minnorm)
        mx = np.float32(maxval)
        isub = np.float32(inv_min_sub)
        rebias = U32((127 - bias) << fb)
        sh = U32(23 - fb)
        inf32 = U32(inf_code)
        nan32 = U32(nan_code)
        for i in prange(n):
            y = round_scalar_f32(np.float32(x[i]), p, emin, mn, mx, subnormals, ovf, RNE)
            b = f32_to_u32(y)
            a = U32(b & U32(0x7FFFFFFF))
            ay = u32_to_f32(a)
            c = U32(U32(ay * isub) if ay < mn else U32((a >> sh) - rebias))
            c = inf32 if a == U32(0x7F800000) else c
            c = nan32 if a > U32(0x7F800000) else c
            sgn = U32(0) if a > U32(0x7F800000) else U32(b >> U32(31))
            out[i] = c | U32(sgn << U32(sign_shift))
    elif mode == RNE:
        for i in prange(n):
            y = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, RNE, U64(0), 0)[0]
            c = encode_scalar(y, fb, bias, minnorm, inv_min_sub, inf_code, nan_code)
            s = (f64_to_u64(y) >> U64(63)) & (U64(0) if y != y else U64(1))
            out[i] = c | (s << U64(sign_shift))
    else:
        for i in prange(n):
            r = counter_random(key, U64(offset + i)) if mode >= SR else U64(0)
            y = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, mode, r, kbits)[0]
            c = encode_scalar(y, fb, bias, minnorm, inv_min_sub, inf_code, nan_code)
            s = (f64_to_u64(y) >> U64(63)) & (U64(0) if y != y else U64(1))
            out[i] = c | (s << U64(sign_shift))


@njit(parallel=True, cache=True)
def f32_to_binary16_bits(x, out):  # type: ignore[no-untyped-def]
    """float32 -> IEEE binary16 bit patterns, round to nearest even, via LLVM's ``fptrunc``
    (the F16C/AVX-512 conversion instruction where the CPU has one): the one case where the
    hardware's own conversion is exactly the rounding asked for.  NaN payloads are kept."""
    for i in prange(x.shape[0]):
        out[i] = f32_to_h16(x[i])

"""Private numba kernels for block-scaled (MX, NVFP4) quantisation.

One block per loop iteration: the block's largest magnitude gives the shared scale, then every
element is divided by the scale (exact in float64: a power of two for MX; a 4-bit by 24-bit
product for NVFP4) and rounded with :func:`fpanalysis._kernels.round.round_scalar`, and the
rounded value is written as its element bit pattern.

The NumPy twin used as the test oracle is :func:`fpanalysis.scaled._quantize_numpy`; it takes a
different route (``np.frexp`` for the scale, :func:`fpanalysis.rounding.round_numpy` for the
element rounding, a sorted value table for the encoding).  The semantics are described in
docs/scaled_formats.md.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .bits import ABS64, EXP64, U64, counter_random, f32_to_u32, f64_to_u64, u32_to_f32, u64_to_f64
from .round import F_FLUSHED, F_OVERFLOW, OVF_SAT, round_scalar

# Blocks below this count are quantised by the one-thread kernel (no thread start-up cost).
SERIAL_BELOW_BLOCKS = 2048


@njit(inline="always", cache=True)
def pow2(e):  # type: ignore[no-untyped-def]
    """``2.0**e`` for an integer ``-1022 <= e <= 1023`` (built from the exponent bits)."""
    return u64_to_f64(U64(e + 1023) << U64(52))


@njit(inline="always", cache=True)
def encode_element(y, emin, mbits, nbits, minsub):  # type: ignore[no-untyped-def]
    """Bit pattern of ``y``, a finite number of the element format (sign, exponent with bias
    ``1 - emin``, ``mbits`` fraction bits; ``nbits`` wide)."""
    b = f64_to_u64(y)
    s = np.int64(b >> U64(63))
    a = b & ABS64
    ay = u64_to_f64(a)
    e = np.int64(a >> U64(52)) - 1023
    if ay < pow2(emin):
        E = np.int64(0)
        F = np.int64(ay / minsub)
    else:
        E = e - emin + 1
        F = np.int64((a >> U64(52 - mbits)) & U64((1 << mbits) - 1))
    return (s << (nbits - 1)) | (E << mbits) | F


@njit(inline="always", cache=True)
def encode_element_f32(y, emin, mbits, nbits, inv_minsub):  # type: ignore[no-untyped-def]
    """:func:`encode_element` for a float32 ``y`` from its bits (selects only)."""
    b = f32_to_u32(y)
    s = np.int64(b >> np.uint32(31))
    a = np.uint32(b & np.uint32(0x7FFFFFFF))
    sub = np.int64(u32_to_f32(a) * inv_minsub)
    E = np.int64(a >> np.uint32(23)) - 127 - emin + 1
    F = np.int64(np.uint32(a >> np.uint32(23 - mbits)) & np.uint32((1 << mbits) - 1))
    code = (E << mbits) | F
    code = sub if E <= 0 else code
    return (s << (nbits - 1)) | code


@njit(inline="always", cache=True)
def _mx_scale(x, blk, bsize, emax):  # type: ignore[no-untyped-def]
    """Shared exponent of block ``blk``: ``clamp(floor(log2(amax)) - emax, -127, 127)``, or
    255 (the NaN code) when the block holds Inf or NaN."""
    amax = U64(0)
    for j in range(bsize):
        a = f64_to_u64(np.float64(x[blk, j])) & ABS64
        amax = max(amax, a)
    if amax >= EXP64:
        return np.int64(255)
    E = np.int64(amax >> U64(52))
    ea = E - 1023 if E > 0 else np.int64(-1023)  # floor(log2(amax)); any value <= -1023 clamps alike
    sh = ea - emax
    sh = sh if sh > -127 else np.int64(-127)
    return sh if sh < 127 else np.int64(127)


@njit(inline="always", cache=True)
def _mx_elements(x, codes, vals, blk, bsize, sh, p, emin, minnorm, maxval, mode, key, kbits, mbits, nbits, minsub, want_codes):  # type: ignore[no-untyped-def]
    """Round the elements of block ``blk`` scaled by ``2**-sh``; write codes (``want_codes``)
    or the dequantised values; returns (saturated, flushed) counts.  ``mode`` is a literal at
    every call site, so the rounding's mode branches fold away."""
    nsat = 0
    nflush = 0
    inv = pow2(-sh)
    scl = pow2(sh)
    for j in range(bsize):
        v = np.float64(x[blk, j]) * inv
        rb = counter_random(key, U64(blk * bsize + j)) if mode >= 6 else U64(0)
        y, fl = round_scalar(v, p, emin, minnorm, maxval, True, OVF_SAT, mode, rb, kbits)
        nsat += 1 if (fl & F_OVERFLOW) != 0 else 0
        nflush += 1 if (fl & F_FLUSHED) != 0 else 0
        if want_codes:
            codes[blk, j] = np.uint8(encode_element(y, emin, mbits, nbits, minsub))
        else:
            vals[blk, j] = y * scl
    return nsat, nflush


@njit(inline="always", cache=True)
def _mx_block(x, codes, vals, scales, blk, bsize, p, emin, emax, minnorm, maxval, mode, key, kbits, mbits, nbits, minsub, want_codes):  # type: ignore[no-untyped-def]
    """Quantise block ``blk`` of ``x`` (shape ``(nblocks, bsize)``); returns the numbers of
    saturated and of flushed (nonzero to zero) elements."""
    sh = _mx_scale(x, blk, bsize, emax)
    if sh == 255:  # Inf or NaN in the block: the scale is NaN
        scales[blk] = 255
        for j in range(bsize):
            if want_codes:
                codes[blk, j] = 0
            else:
                vals[blk, j] = np.nan
        return 0, 0
    scales[blk] = np.uint8(sh + 127)
    if mode == 0:
        return _mx_elements(x, codes, vals, blk, bsize, sh, p, emin, minnorm, maxval, 0, key, kbits, mbits, nbits, minsub, want_codes)
    if mode == 6:
        return _mx_elements(x, codes, vals, blk, bsize, sh, p, emin, minnorm, maxval, 6, key, kbits, mbits, nbits, minsub, want_codes)
    return _mx_elements(x, codes, vals, blk, bsize, sh, p, emin, minnorm, maxval, 7, key, kbits, mbits, nbits, minsub, want_codes)


@njit(parallel=True, cache=True)
def mx_quantize(x, codes, scales, p, emin, emax, minnorm, maxval, mode, key, kbits, mbits, nbits, minsub):  # type: ignore[no-untyped-def]
    """MX quantisation of ``x`` (float32 or float64, shape ``(nblocks, bsize)``) into element
    codes (uint8, same shape) and E8M0 scale codes (uint8, ``(nblocks,)``); returns the counts
    of saturated and flushed elements."""
    nb, bsize = x.shape
    nsat = 0
    nflush = 0
    for blk in prange(nb):
        s, f = _mx_block(x, codes, codes, scales, blk, bsize, p, emin, emax, minnorm, maxval, mode, key, kbits, mbits, nbits, minsub, True)
        nsat += s
        nflush += f
    return nsat, nflush


@njit(cache=True)
def mx_quantize_serial(x, codes, scales, p, emin, emax, minnorm, maxval, mode, key, kbits, mbits, nbits, minsub):  # type: ignore[no-untyped-def]
    """:func:`mx_quantize` on one thread."""
    nb, bsize = x.shape
    nsat = 0
    nflush = 0
    for blk in range(nb):
        s, f = _mx_block(x, codes, codes, scales, blk, bsize, p, emin, emax, minnorm, maxval, mode, key, kbits, mbits, nbits, minsub, True)
        nsat += s
        nflush += f
    return nsat, nflush


@njit(parallel=True, cache=True)
def mx_qdq(x, out, scales, p, emin, emax, minnorm, maxval, mode, key, kbits):  # type: ignore[no-untyped-def]
    """Fused quantise-dequantise: like :func:`mx_quantize` but writes the block-scaled values
    (``element * 2**shared``, exact in float64, rounded once to ``out``'s dtype) into ``out``
    (shape of ``x``)."""
    nb, bsize = x.shape
    nsat = 0
    nflush = 0
    for blk in prange(nb):
        s, f = _mx_block(x, out, out, scales, blk, bsize, p, emin, emax, minnorm, maxval, mode, key, kbits, 0, 0, 0.0, False)
        nsat += s
        nflush += f
    return nsat, nflush


@njit(cache=True)
def mx_qdq_serial(x, out, scales, p, emin, emax, minnorm, maxval, mode, key, kbits):  # type: ignore[no-untyped-def]
    """:func:`mx_qdq` on one thread."""
    nb, bsize = x.shape
    nsat = 0
    nflush = 0
    for blk in range(nb):
        s, f = _mx_block(x, out, out, scales, blk, bsize, p, emin, emax, minnorm, maxval, mode, key, kbits, 0, 0, 0.0, False)
        nsat += s
        nflush += f
    return nsat, nflush


@njit(inline="always", cache=True)
def _nv_block(x, codes, scales, blk, bsize, tscale, p, emin, minnorm, maxval, mode, key, kbits, mbits, nbits, minsub, sp, semin, sminnorm, smax):  # type: ignore[no-untyped-def]
    """NVFP4 block: scale ``s = E4M3(amax / (elem_max * tscale))`` (round to nearest even,
    saturating), elements ``E2M1(x / (s * tscale))``.  Scale codes are E4M3 bit patterns
    (0x7F: NaN, for blocks holding Inf or NaN)."""
    amax = U64(0)
    for j in range(bsize):
        a = f64_to_u64(np.float64(x[blk, j])) & ABS64
        amax = max(amax, a)
    nsat = 0
    nflush = 0
    if amax >= EXP64:
        scales[blk] = 0x7F
        for j in range(bsize):
            codes[blk, j] = 0
        return nsat, nflush
    q = u64_to_f64(amax) / (maxval * tscale)
    s, _ = round_scalar(q, sp, semin, sminnorm, smax, True, OVF_SAT, 0, U64(0), 0)
    scales[blk] = np.uint8(encode_element(s, semin, sp - 1, 8, pow2(semin - sp + 1)))
    d = s * tscale
    for j in range(bsize):
        xv = np.float64(x[blk, j])
        if d == 0.0:
            codes[blk, j] = 0
            nflush += 1 if xv != 0.0 else 0
            continue
        v = xv / d
        rb = counter_random(key, U64(blk * bsize + j)) if mode >= 6 else U64(0)
        y, fl = round_scalar(v, p, emin, minnorm, maxval, True, OVF_SAT, mode, rb, kbits)
        nsat += 1 if (fl & F_OVERFLOW) != 0 else 0
        nflush += 1 if (fl & F_FLUSHED) != 0 else 0
        codes[blk, j] = np.uint8(encode_element(y, emin, mbits, nbits, minsub))
    return nsat, nflush


@njit(parallel=True, cache=True)
def nv_quantize(x, codes, scales, tscale, p, emin, minnorm, maxval, mode, key, kbits, mbits, nbits, minsub, sp, semin, sminnorm, smax):  # type: ignore[no-untyped-def]
    """NVFP4 quantisation of ``x`` (shape ``(nblocks, bsize)``) with the per-tensor scale
    ``tscale``; element codes, E4M3 scale codes; returns (saturated, flushed) counts."""
    nb, bsize = x.shape
    nsat = 0
    nflush = 0
    for blk in prange(nb):
        s, f = _nv_block(x, codes, scales, blk, bsize, tscale, p, emin, minnorm, maxval, mode, key, kbits, mbits, nbits, minsub, sp, semin, sminnorm, smax)
        nsat += s
        nflush += f
    return nsat, nflush


# --- float32 input, nearest even: one monolithic loop each ---------------------------------
# Measured 2-3x faster than the same block code split into inlined helpers (which vectorised
# less), and on the shared two-core machine a single thread beat the threaded version.


@njit(cache=True)
def mx_qdq_f32(x, out, scales, p, emin, emax, maxval):  # type: ignore[no-untyped-def]
    """MX quantise-dequantise of float32 ``x`` (shape ``(nblocks, bsize)``) with nearest-even
    element rounding, in float32 arithmetic on bit patterns; writes float32 ``out`` and the
    E8M0 codes, returns (saturated, flushed) counts.

    For float32 inputs the shared exponent ``sh`` lies in ``[-127, 127 - emax]``.
    ``v = x * 2**-sh`` is exact unless it falls below 2**-126, far below half the smallest
    element subnormal, where it rounds to zero either way; ``|v| * 2**-qe`` (``qe`` the exponent
    of the element quantum at ``|v|``) is exact and ``np.rint`` rounds it to nearest even; the
    result times ``2**sh`` is exact in float32 (the smallest element subnormal times 2**-127 is
    at least 2**-143).  Saturated: the rounded magnitude exceeds ``maxval`` (then clamped);
    flushed: a nonzero input whose result is zero.
    """
    nb, bsize = x.shape
    mx32 = np.float32(maxval)
    lo = np.int32(emin)
    nsat = 0
    nflush = 0
    for blk in range(nb):
        amax = np.uint32(0)
        for j in range(bsize):
            a = np.uint32(f32_to_u32(x[blk, j]) & np.uint32(0x7FFFFFFF))
            amax = max(amax, a)
        if amax >= np.uint32(0x7F800000):  # Inf or NaN: NaN scale
            scales[blk] = 255
            for j in range(bsize):
                out[blk, j] = np.nan
            continue
        E = np.int64(amax >> np.uint32(23))
        ea = E - 127 if E > 0 else np.int64(-127)  # floor(log2(amax)); subnormal amax clamps alike
        sh = ea - emax
        sh = sh if sh > -127 else np.int64(-127)
        scales[blk] = np.uint8(sh + 127)
        inv = u32_to_f32(np.uint32((127 - sh) << 23))
        scl = u32_to_f32(np.uint32((127 + sh) << 23)) if sh > -127 else np.float32(2.0**-127)
        for j in range(bsize):
            xv = x[blk, j]
            v = xv * inv
            av = abs(v)
            ev = np.int32(f32_to_u32(av) >> np.uint32(23)) - np.int32(127)
            ee = max(lo, ev)
            qe = ee - np.int32(p - 1)
            q = u32_to_f32(np.uint32((qe + 127) << 23))
            iq = u32_to_f32(np.uint32((127 - qe) << 23))
            r = np.rint(av * iq) * q
            over = r > mx32
            nsat += 1 if over else 0
            r = mx32 if over else r
            nflush += 1 if ((r == np.float32(0.0)) & (xv != np.float32(0.0))) else 0
            out[blk, j] = np.float32(np.copysign(r, v)) * scl
    return nsat, nflush


@njit(cache=True)
def mx_quantize_f32(x, codes, scales, p, emin, emax, maxval, mbits, nbits, minsub):  # type: ignore[no-untyped-def]
    """:func:`mx_qdq_f32` writing element codes instead of values."""
    nb, bsize = x.shape
    mx32 = np.float32(maxval)
    lo = np.int32(emin)
    inv_minsub = np.float32(1.0 / minsub)
    nsat = 0
    nflush = 0
    for blk in range(nb):
        amax = np.uint32(0)
        for j in range(bsize):
            a = np.uint32(f32_to_u32(x[blk, j]) & np.uint32(0x7FFFFFFF))
            amax = max(amax, a)
        if amax >= np.uint32(0x7F800000):
            scales[blk] = 255
            for j in range(bsize):
                codes[blk, j] = 0
            continue
        E = np.int64(amax >> np.uint32(23))
        ea = E - 127 if E > 0 else np.int64(-127)
        sh = ea - emax
        sh = sh if sh > -127 else np.int64(-127)
        scales[blk] = np.uint8(sh + 127)
        inv = u32_to_f32(np.uint32((127 - sh) << 23))
        for j in range(bsize):
            xv = x[blk, j]
            v = xv * inv
            av = abs(v)
            ev = np.int32(f32_to_u32(av) >> np.uint32(23)) - np.int32(127)
            ee = max(lo, ev)
            qe = ee - np.int32(p - 1)
            q = u32_to_f32(np.uint32((qe + 127) << 23))
            iq = u32_to_f32(np.uint32((127 - qe) << 23))
            r = np.rint(av * iq) * q
            over = r > mx32
            nsat += 1 if over else 0
            r = mx32 if over else r
            nflush += 1 if ((r == np.float32(0.0)) & (xv != np.float32(0.0))) else 0
            codes[blk, j] = np.uint8(encode_element_f32(np.float32(np.copysign(r, v)), emin, mbits, nbits, inv_minsub))
    return nsat, nflush

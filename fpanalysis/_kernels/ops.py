"""Private numba kernels for correctly rounded elementwise arithmetic in a low-precision format.

Method.  Each operation first produces its exact result as an unevaluated pair ``hi + lo`` of
float64 numbers, where ``hi`` is the float64 nearest to the exact result and ``lo`` the rest
(exact for add/sub/mul/fma; for div and sqrt ``lo`` is rounded but its sign is exact):

* add/sub: Knuth's TwoSum (error-free for every pair of float64 numbers barring overflow);
* mul: operands have ``p <= 26`` bits, so their product has ``<= 52`` bits and is exact;
* fma: the exact product, then TwoSum with the addend;
* div: ``q = RN(a/b)``; the remainder ``r = a - q*b`` is computed exactly by splitting ``q`` into a
  26-bit and a 27-bit part (each part times the ``<= 26``-bit ``b`` is exact);
* sqrt: ``s = RN(sqrt(a))``; ``r = a - s*s`` with Dekker's TwoProduct (Veltkamp splitting).

The pair is turned into the float64 *round-to-odd* of the exact result (truncate toward zero,
set the last bit when inexact), and that single float64 is rounded to the target format by
:func:`fpanalysis._kernels.round.round_scalar`.  Rounding to odd at precision ``>= p + 2``
followed by one rounding to ``p`` bits equals the direct correct rounding of the exact value in
every rounding mode (S. Boldo and G. Melquiond, "Emulation of a FMA and correctly rounded sums:
proved algorithms using rounding to odd", IEEE Trans. Computers 57(4), 2008); here the
intermediate precision is 53 ``>= p + 2`` for ``p <= 51``, and the same holds in the format's
subnormal range because the float64 grid there is still at least 4 times finer.

Stochastic rounding does not go through the odd intermediate alone: the 64-bit fraction
``floor(2**64 * (x - trunc(x)) / ulp)`` of the exact value is computed from ``hi`` and ``lo``
(exact for add/sub/mul/fma; for div and sqrt it can be off by one unit, so the probability of
rounding up is exact to within ``2**-63``), and the decision ``random < fraction`` is then
applied through ``round_scalar`` by handing it the random word 0 (round away) or ``2**64 - 1``
(round toward zero), so overflow and flag handling stay in one place.

Range: all intermediates stay exact as long as the format satisfies ``p <= 26``,
``emax <= 509`` and ``emin - p + 1 >= -509`` (checked by the public wrappers in
:mod:`fpanalysis.ops`).

Compile time: the per-element helpers (``exact_pair``, ``round_pair``, ``frac64``, ...) are
ordinary (not ``inline="always"``) numba functions, so ``round_scalar`` is inlined a handful of
times instead of once per call site; this cut the first-call compile time of each kernel from
about 60 s to about 6 s at no measurable cost in speed (the loops do not vectorise either way).

The NumPy twin used as the test oracle is :func:`fpanalysis.ops._ops_numpy` (deterministic
modes); stochastic rounding is checked against Python integers in :mod:`fpanalysis.verify.ops`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .bits import ABS64, HIDDEN64, MANT64, SIGN64, U64, counter_random, f64_to_u64, u64_to_f64
from .round import F_FLUSHED, F_INEXACT, F_OVERFLOW, F_SUBNORMAL, RD, RNE, SR, round_scalar

# Operation codes (private).
ADD, SUB, MUL, DIV = 0, 1, 2, 3
SQRT = 10
FMA = 20

_ONE = U64(1)
_ALL = U64(0xFFFFFFFFFFFFFFFF)
# keep sign, exponent and the top 25 fraction bits: a 26-bit significand
_SPLIT26 = U64(0xFFFFFFFFF8000000)
_VELTKAMP = 134217729.0  # 2**27 + 1


@njit(inline="always", cache=True, error_model="numpy")
def _sign(x):  # type: ignore[no-untyped-def]
    return 1 if x > 0.0 else (-1 if x < 0.0 else 0)


@njit(inline="always", cache=True, error_model="numpy")
def exact_sum(x, y):  # type: ignore[no-untyped-def]
    """TwoSum (Knuth, TAOCP vol. 2): ``x + y = s + t`` exactly, ``s = RN(x + y)``.
    Returns ``(s, t, sign(t))``; ``t = 0`` when the sum is not finite."""
    s = x + y
    bb = s - x
    t = (x - (s - bb)) + (y - bb)
    fin = np.isfinite(s)
    t = t if fin else 0.0
    return s, t, _sign(t)


@njit(cache=True, error_model="numpy")
def exact_div(a, b):  # type: ignore[no-untyped-def]
    """``a / b = q + lo`` with ``q = RN(a/b)``; ``sign(lo)`` exact, ``lo = RN(r/b)``."""
    q = a / b
    qh = u64_to_f64(f64_to_u64(q) & _SPLIT26)
    ql = q - qh
    r = (a - qh * b) - ql * b  # exact remainder a - q*b (see module docstring)
    ok = np.isfinite(q) & (q != 0.0)
    lo = (r / b) if ok else 0.0
    sg = (_sign(r) * _sign(b)) if ok else 0
    return q, lo, sg


@njit(cache=True, error_model="numpy")
def exact_sqrt(a):  # type: ignore[no-untyped-def]
    """``sqrt(a) = s + lo`` with ``s = RN(sqrt(a))``; ``sign(lo) = sign(a - s*s)`` exact."""
    s = np.sqrt(a)
    c = _VELTKAMP * s
    sh = c - (c - s)
    sl = s - sh
    ph = s * s
    pl = ((sh * sh - ph) + 2.0 * sh * sl) + sl * sl  # Dekker: s*s = ph + pl exactly
    r = (a - ph) - pl
    ok = np.isfinite(s) & (s > 0.0)
    lo = (r / (s + s)) if ok else 0.0
    sg = _sign(r) if ok else 0
    return s, lo, sg


@njit(inline="always", cache=True, error_model="numpy")
def to_odd(hi, sg):  # type: ignore[no-untyped-def]
    """The float64 round-to-odd of ``hi + lo`` given ``sign(lo) = sg`` (``|lo| <= ulp(hi)/2``):
    of ``hi`` and its neighbour on the side of ``lo``, the one with an odd last bit."""
    b = f64_to_u64(hi)
    even = (b & _ONE) == U64(0)
    away = (sg > 0) == (hi > 0.0)  # the exact value is larger in magnitude than hi
    nb = (b + _ONE) if away else (b - _ONE)
    return u64_to_f64(nb) if ((sg != 0) & even) else hi


@njit(cache=True, error_model="numpy")
def frac64(hi, lo, sg, xo, p, emin, subnormals):  # type: ignore[no-untyped-def]
    """``floor(2**64 * frac(|hi + lo| / q))`` where ``q`` is the format's quantum at the exact
    value (taken from its round-to-odd ``xo``, which lies in the same binade)."""
    ar = f64_to_u64(xo) & ABS64
    er = np.int64(ar >> U64(52))
    e = (er if er > 1 else np.int64(1)) - 1023
    lo_e = emin if subnormals else emin - 1
    e_eff = e if e > lo_e else lo_e
    qe = e_eff - p + 1
    ah = f64_to_u64(hi) & ABS64
    eh_f = np.int64(ah >> U64(52))
    mh = (ah & MANT64) | (HIDDEN64 if eh_f != 0 else U64(0))
    eh = (eh_f if eh_f > 1 else np.int64(1)) - 1023
    sh = 52 + qe - eh  # fraction bits of hi's significand below the quantum
    shc = sh if sh > 0 else 1
    shc = shc if shc < 64 else 63
    sh_far = sh - 64
    sh_far = 0 if sh_far < 0 else (63 if sh_far > 63 else sh_far)
    hf_near = (mh & ((_ONE << U64(shc)) - _ONE)) << U64(64 - shc)
    hf = U64(0) if sh <= 0 else (hf_near if sh < 64 else (mh >> U64(sh_far) if sh < 127 else U64(0)))
    # lo / q * 2**64 (|lo| <= ulp(hi)/2, so this is below 2**37 in magnitude for p <= 26)
    scale = u64_to_f64(U64(64 - qe + 1023) << U64(52))
    neg = (f64_to_u64(hi) & SIGN64) != U64(0)
    lm = -lo if neg else lo
    sm = -sg if neg else sg
    li = np.int64(np.floor(lm * scale))
    li = np.int64(-1) if ((sm < 0) & (li >= 0)) else li
    # hi is a multiple of the quantum only when none of its significand bits lies below it; when
    # it is not, its fraction (>= one ulp of hi) outweighs |lo| <= ulp(hi)/2, so a fraction that
    # was truncated to zero (hi far below the quantum) must not borrow from the integer part.
    multiple = (sh <= 0) | ((sh < 53) & ((mh & ((_ONE << U64(shc)) - _ONE)) == U64(0)))
    li = np.int64(0) if ((li < 0) & (hf == U64(0)) & (not multiple)) else li
    return hf + U64(li)


@njit(cache=True, error_model="numpy")
def round_pair(hi, lo, sg, p, emin, minnorm, maxval, subnormals, ovf, mode, rbits, kbits):  # type: ignore[no-untyped-def]
    """Correctly round the exact value ``hi + lo`` (``sign(lo) = sg``) to the format."""
    xo = to_odd(hi, sg)
    if mode >= SR:
        f = frac64(hi, lo, sg, xo, p, emin, subnormals)
        if mode == SR:
            go = rbits < f
        else:
            shk = U64(64 - kbits)
            go = ((f >> shk) + (rbits >> shk)) >= (_ONE << U64(kbits))
        return round_scalar(xo, p, emin, minnorm, maxval, subnormals, ovf, SR, U64(0) if go else _ALL, 0)
    return round_scalar(xo, p, emin, minnorm, maxval, subnormals, ovf, mode, U64(0), 0)


@njit(inline="always", cache=True, error_model="numpy")
def _zero_sum_sign(hi, x, y, mode):  # type: ignore[no-untyped-def]
    """IEEE 754 §6.3: an exact zero sum is +0 except in round-down, where it is -0
    (``x + x`` keeps the sign of ``x``).  float64 already gave the round-to-nearest sign."""
    z = -((-x) + (-y))
    return z if ((mode == RD) & (hi == 0.0)) else hi


@njit(cache=True, error_model="numpy")
def exact_pair(op, a, b, c, mode):  # type: ignore[no-untyped-def]
    """The exact result of ``op`` (ADD, SUB, MUL, DIV on ``a, b``; SQRT on ``a``; FMA
    ``a*b + c``) as ``(hi, lo, sign(lo))`` with ``hi`` the float64 nearest to it; an exact zero
    sum gets the sign IEEE 754 gives it in ``mode``."""
    if op == SUB:
        b = -b
    if op == MUL:
        return a * b, 0.0, 0
    if op == DIV:
        return exact_div(a, b)
    if op == SQRT:
        return exact_sqrt(a)
    if op == FMA:
        a = a * b
        b = c
    hi, lo, sg = exact_sum(a, b)
    return _zero_sum_sign(hi, a, b, mode), lo, sg


@njit(cache=True, error_model="numpy")
def op_scalar(op, a, b, c, p, emin, minnorm, maxval, subnormals, ovf, mode, rbits, kbits):  # type: ignore[no-untyped-def]
    """``op`` applied to ``a`` (, ``b``, ``c``), correctly rounded; returns ``(y, flags)``."""
    hi, lo, sg = exact_pair(op, a, b, c, mode)
    return round_pair(hi, lo, sg, p, emin, minnorm, maxval, subnormals, ovf, mode, rbits, kbits)


@njit(cache=True, error_model="numpy")
def fraction_kernel(op, a, b, c, out, p, emin, subnormals):  # type: ignore[no-untyped-def]
    """The 64-bit fraction stochastic rounding compares with the random word, for testing."""
    for i in range(out.shape[0]):
        hi, lo, sg = exact_pair(op, a[i], b[i], c[i], RNE)
        out[i] = frac64(hi, lo, sg, to_odd(hi, sg), p, emin, subnormals)


@njit(cache=True, error_model="numpy")
def not_in_format(x, p, emin, minnorm, maxval, subnormals, ovf):  # type: ignore[no-untyped-def]
    """1 when ``x`` is not a number of the format (NaN counts as one), else 0."""
    y = round_scalar(x, p, emin, minnorm, maxval, subnormals, ovf, RNE, U64(0), 0)[0]
    return 1 if ((y != x) & (x == x)) else 0


@njit(inline="always", cache=True, error_model="numpy")
def _count(f):  # type: ignore[no-untyped-def]
    return (f & F_INEXACT), (f & F_OVERFLOW) >> 1, (f & F_SUBNORMAL) >> 2, (f & F_FLUSHED) >> 3


@njit(parallel=True, cache=True, error_model="numpy")
def binary_kernel(op, a, b, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, kbits, check):  # type: ignore[no-untyped-def]
    """``out[i] = a[i] op b[i]`` over 1-D float64 arrays of equal length.

    Returns counts (inexact, overflow, subnormal, flushed, bad_a, bad_b); the ``bad`` counts
    are the inputs that are not numbers of the format (computed only when ``check``)."""
    n = out.shape[0]
    c0 = 0
    c1 = 0
    c2 = 0
    c3 = 0
    ba = 0
    bb = 0
    for i in prange(n):
        x = a[i]
        y = b[i]
        r = counter_random(key, U64(i)) if mode >= SR else U64(0)
        z, f = op_scalar(op, x, y, 0.0, p, emin, minnorm, maxval, subnormals, ovf, mode, r, kbits)
        out[i] = z
        i0, i1, i2, i3 = _count(f)
        c0 += i0
        c1 += i1
        c2 += i2
        c3 += i3
        if check:
            ba += not_in_format(x, p, emin, minnorm, maxval, subnormals, ovf)
            bb += not_in_format(y, p, emin, minnorm, maxval, subnormals, ovf)
    return c0, c1, c2, c3, ba, bb


@njit(parallel=True, cache=True, error_model="numpy")
def sqrt_kernel(a, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, kbits, check):  # type: ignore[no-untyped-def]
    """``out[i] = sqrt(a[i])``; returns (inexact, overflow, subnormal, flushed, bad_a)."""
    n = out.shape[0]
    c0 = 0
    c1 = 0
    c2 = 0
    c3 = 0
    ba = 0
    for i in prange(n):
        x = a[i]
        r = counter_random(key, U64(i)) if mode >= SR else U64(0)
        z, f = op_scalar(SQRT, x, 0.0, 0.0, p, emin, minnorm, maxval, subnormals, ovf, mode, r, kbits)
        out[i] = z
        i0, i1, i2, i3 = _count(f)
        c0 += i0
        c1 += i1
        c2 += i2
        c3 += i3
        if check:
            ba += not_in_format(x, p, emin, minnorm, maxval, subnormals, ovf)
    return c0, c1, c2, c3, ba


@njit(parallel=True, cache=True, error_model="numpy")
def fma_kernel(a, b, c, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, kbits, check):  # type: ignore[no-untyped-def]
    """``out[i] = a[i]*b[i] + c[i]`` (one rounding); returns (inexact, overflow, subnormal,
    flushed, bad_a, bad_b, bad_c)."""
    n = out.shape[0]
    c0 = 0
    c1 = 0
    c2 = 0
    c3 = 0
    ba = 0
    bb = 0
    bc = 0
    for i in prange(n):
        x = a[i]
        y = b[i]
        w = c[i]
        r = counter_random(key, U64(i)) if mode >= SR else U64(0)
        z, f = op_scalar(FMA, x, y, w, p, emin, minnorm, maxval, subnormals, ovf, mode, r, kbits)
        out[i] = z
        i0, i1, i2, i3 = _count(f)
        c0 += i0
        c1 += i1
        c2 += i2
        c3 += i3
        if check:
            ba += not_in_format(x, p, emin, minnorm, maxval, subnormals, ovf)
            bb += not_in_format(y, p, emin, minnorm, maxval, subnormals, ovf)
            bc += not_in_format(w, p, emin, minnorm, maxval, subnormals, ovf)
    return c0, c1, c2, c3, ba, bb, bc

"""Regression tests for wrong numbers found by differential fuzzing (issue 12, section 2).

Every expected value comes from an independent source: hand-derived exact constants, exact
integer/``Fraction`` arithmetic, or MPFR through gmpy2 -- never from the code under test.
"""
from __future__ import annotations

import gmpy2
import numpy as np
import pytest

from fpanalysis import FloatFormat, round_to
from fpanalysis import _round_kernels as K

DET_MODES = ["nearest-even", "nearest-away", "toward-zero", "up", "down", "odd"]
_GMPY_MODES = {"nearest-even": gmpy2.RoundToNearest, "toward-zero": gmpy2.RoundToZero,
               "up": gmpy2.RoundUp, "down": gmpy2.RoundDown, "away": gmpy2.RoundAwayZero}


def _mpfr_round(x: float, f: FloatFormat, mode: str) -> float:
    """``x`` rounded to ``f`` in ``mode`` by MPFR: the exponent is unbounded below when ``f`` has
    no subnormals (then a result below ``2**emin`` flushes to a signed zero) and bounded with
    subnormals otherwise; above ``f.max`` the IEEE overflow rule for ``overflow="inf"`` formats.
    Nearest-away and round-to-odd are derived from the toward-zero and away-from-zero
    neighbours (exact Fraction comparisons)."""
    from fractions import Fraction

    emin = f.emin - f.p + 2 if f.subnormals else -100000
    ctx = lambda rnd: gmpy2.context(precision=f.p, emin=emin, emax=100000, subnormalize=f.subnormals, round=rnd)
    if mode in ("nearest-away", "odd"):
        z = ctx(gmpy2.RoundToZero).plus(gmpy2.mpfr(x))
        a = ctx(gmpy2.RoundAwayZero).plus(gmpy2.mpfr(x))
        if z == a:
            r = z
        elif mode == "nearest-away":
            r = a if abs(Fraction(x)) * 2 >= abs(Fraction(*z.as_integer_ratio()) + Fraction(*a.as_integer_ratio())) else z
        else:
            zf = Fraction(*z.as_integer_ratio())
            # z's significand is odd iff z / ulp(z) is an odd integer (MPFR: z = m * 2**exp
            # with 0.5 <= m < 1, so z lies in the binade exp - 1)
            e = gmpy2.get_exp(z) - 1 if z != 0 else f.emin
            if f.subnormals:
                e = max(e, f.emin)
            k = zf / Fraction(2) ** (e - f.p + 1)
            assert k.denominator == 1
            r = a if k.numerator % 2 == 0 else z
    else:
        r = ctx(_GMPY_MODES[mode]).plus(gmpy2.mpfr(x))
    y = float(r)
    neg = np.signbit(x)
    if abs(y) > f.max:
        to_max = mode in ("toward-zero", "odd") or (mode == "up" and neg) or (mode == "down" and not neg)
        y = f.max if to_max else np.inf
        y = -y if neg else y
    if not f.subnormals and abs(y) < f.min_normal:
        y = -0.0 if neg else 0.0
    return y


# --- float32 path of round_to, flush-to-zero formats ------------------------------------------


def test_f32_flush_to_zero_quantum_below_float32_normals() -> None:
    # emin - p + 1 == -126 and no subnormals: the quantum of the binade below 2**emin is
    # 2**-127, not a normal float32 number.  x = 2**-116 * (1 - 2**-12) rounds (p = 11) up to
    # 2**-116 = min_normal, which is kept (hand-derived: x lies half an ulp(2**-117) below it).
    f = FloatFormat("f", 11, -116, 15, subnormals=False)
    x = np.array([2.0**-116 * (1 - 2.0**-12)], np.float32)
    assert round_to(x, f).tolist() == [2.0**-116]
    assert round_to(x.astype(np.float64), f).tolist() == [2.0**-116]


def test_f32_kernel_applies_only_where_quanta_are_normal_float32() -> None:
    for p in range(2, 25):
        # with subnormals the smallest quantum is 2**(emin-p+1), without them 2**(emin-p)
        assert K.f32_kernel_applies(p, p - 127, 15, True)
        assert not K.f32_kernel_applies(p, p - 127, 15, False)
        assert K.f32_kernel_applies(p, p - 126, 15, False)
        assert not K.f32_kernel_applies(p, p - 128, 15, True)


def _f32_inputs(f: FloatFormat, rng: np.random.Generator) -> np.ndarray:
    """float32 inputs around the format's underflow and overflow thresholds, its midpoints and
    random bit patterns."""
    lo = max(f.emin - f.p - 2, -149)
    xs = [0.0, 2.0**-149, f.min_normal, f.max, np.inf, np.nan]
    for e in range(lo, min(f.emin + 3, 128)):
        base = 2.0**e
        for k in range(-6, 7):
            xs.append(base * (1 + k * 2.0 ** -(f.p + 1)))
    for e in (f.emax, f.emax + 1):
        if e < 128:
            xs += [2.0**e * (2 - 2.0**-f.p), 2.0**e * (2 - 2.0 ** (1 - f.p) - 2.0**-23)]
    bits = rng.integers(0, 2**31, 400, dtype=np.uint32)
    x = np.concatenate([np.array(xs, dtype=np.float64).astype(np.float32), bits.view(np.float32)])
    x = x[np.isfinite(x)]
    return np.concatenate([x, -x])


def test_f32_path_matches_mpfr_across_formats() -> None:
    """Property: for many (p, emin, emax, subnormals) reachable by the float32 kernel (including
    every emin = p - 127 and emin = p - 126 edge), the float32 path equals MPFR."""
    rng = np.random.default_rng(12)
    cases = []
    for p in (2, 3, 4, 8, 11, 17, 24):
        for emin in (p - 127, p - 126, p - 125, -14, -6):
            if emin >= 0 or emin < -126:
                continue
            for sub in (True, False):
                cases.append((p, emin, int(rng.integers(1, 128)), sub))
    checked = 0
    for p, emin, emax, sub in cases:
        f = FloatFormat("t", p, emin, emax, subnormals=sub)
        x = _f32_inputs(f, rng)
        for mode in DET_MODES:
            got = round_to(x, f, mode)
            assert got.dtype == np.float32
            want = np.array([_mpfr_round(float(v), f, mode) for v in x.tolist()])
            same = (got.astype(np.float64).view(np.uint64) == want.view(np.uint64))
            bad = np.flatnonzero(~same)
            assert not bad.size, (f, mode, float(x[bad[0]]), float(got[bad[0]]), float(want[bad[0]]))
            checked += x.size
    assert checked > 100_000

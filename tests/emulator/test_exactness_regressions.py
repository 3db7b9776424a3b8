"""Regression tests for wrong numbers found by differential fuzzing (issue 12, section 2).

Every expected value comes from an independent source: hand-derived exact constants, exact
integer/``Fraction`` arithmetic, or MPFR through gmpy2 -- never from the code under test.
"""
from __future__ import annotations

import gmpy2
import numpy as np
import pytest

from fpanalysis import FloatFormat, round_to
from fpanalysis._kernels import round as K

DET_MODES = ["nearest-even", "nearest-away", "toward-zero", "up", "down", "odd"]
_GMPY_MODES = {"nearest-even": gmpy2.RoundToNearest, "toward-zero": gmpy2.RoundToZero,
               "up": gmpy2.RoundUp, "down": gmpy2.RoundDown, "away": gmpy2.RoundAwayZero}


def _mpfr_round(x: "float | int", f: FloatFormat, mode: str) -> float:
    """``x`` rounded to ``f`` in ``mode`` by MPFR: the exponent is unbounded below when ``f`` has
    no subnormals (then a result below ``2**emin`` flushes to a signed zero) and bounded with
    subnormals otherwise; above ``f.max`` the IEEE overflow rule for ``overflow="inf"`` formats.
    Nearest-away and round-to-odd are derived from the toward-zero and away-from-zero
    neighbours (exact Fraction comparisons).  ``x`` may be a Python int of any size (MPFR
    rounds it once, from the exact integer)."""
    from fractions import Fraction

    # exact: an int with as many bits as it has, a float at 53 bits
    v = gmpy2.mpfr(x, max(53, abs(x).bit_length())) if isinstance(x, int) else gmpy2.mpfr(x)

    emin = f.emin - f.p + 2 if f.subnormals else -100000
    ctx = lambda rnd: gmpy2.context(precision=f.p, emin=emin, emax=100000, subnormalize=f.subnormals, round=rnd)
    if mode in ("nearest-away", "odd"):
        z = ctx(gmpy2.RoundToZero).plus(v)
        a = ctx(gmpy2.RoundAwayZero).plus(v)
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
        r = ctx(_GMPY_MODES[mode]).plus(v)
    y = float(r)
    neg = bool(x < 0) if isinstance(x, int) else bool(np.signbit(x))
    if abs(y) > f.max:
        to_max = (f.overflow.value == "saturate" or mode in ("toward-zero", "odd")
                  or (mode == "up" and neg) or (mode == "down" and not neg))
        y = f.max if to_max else (np.nan if f.overflow.value == "nan" else np.inf)
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


# --- integers that float64 cannot hold ------------------------------------------------------


def test_python_ints_above_2_53_are_rounded_once() -> None:
    # exact integer arithmetic: 2**54 + 2**30 + 1 is above the midpoint 2**54 + 2**30 of the
    # fp32 neighbours 2**54 and 2**54 + 2**31 (quantum 2**31); converting to float64 first
    # gives the tie 2**54 + 2**30, which rounds to even (2**54).
    assert round_to(2**54 + 2**30 + 1, "fp32") == float(2**54 + 2**31)
    # 2**53 + 1 is not an fp32 number: rounding up gives the next one, 2**53 + 2**30
    assert round_to(2**53 + 1, "fp32", "up") == float(2**53 + 2**30)
    assert round_to(-(2**53) - 1, "fp32", "down") == -float(2**53 + 2**30)
    # the same values in int64/uint64 arrays and in a list mixing floats and ints
    assert round_to(np.array([2**54 + 2**30 + 1, 3], np.int64), "fp32").tolist() == [2**54 + 2**31, 3.0]
    assert round_to(np.array([2**53 + 1], np.uint64), "fp32", "up").tolist() == [2**53 + 2**30]
    assert round_to([0.5, 2**54 + 2**30 + 1], "fp32").tolist() == [0.5, 2**54 + 2**31]
    # beyond float64's range: an overflow, per mode and policy
    assert round_to(10**400, "fp16") == np.inf
    assert round_to(-(10**400), "bf16", "toward-zero") == -float.fromhex("0x1.fep+127")
    y, st = round_to([2**54 + 1, 10**400, 2**54], "fp32", return_stats=True)
    assert (st.n, st.inexact, st.overflow, st.subnormal, st.flushed) == (3, 2, 1, 0, 0)


@pytest.mark.parametrize("fmt", [
    FloatFormat("fp32", 24, -126, 127), FloatFormat("bf16", 8, -126, 127),
    FloatFormat("p53", 53, -960, 1000), FloatFormat("p52", 52, -900, 200, overflow="saturate"),
    FloatFormat("p30", 30, -14, 100, overflow="nan"),
])
def test_wide_ints_match_mpfr(fmt: FloatFormat) -> None:
    """Property: random integers of 54 to 1100 bits (near-ties included) round as MPFR rounds
    them, in every deterministic mode."""
    rng = np.random.default_rng(54)
    xs = []
    for _ in range(300):
        bits = int(rng.integers(54, 1100))
        n = int.from_bytes(rng.bytes(bits // 8 + 1), "little") >> (8 * (bits // 8 + 1) - bits)
        n |= 1 << (bits - 1)
        xs.append(n if rng.random() < 0.5 else -n)
        s = bits - fmt.p
        if s >= 2:  # the tie and its two neighbours
            t = ((n >> s) << s) | (1 << (s - 1))
            xs += [t, t + 1, t - 1]
    for mode in DET_MODES:
        got = np.asarray(round_to(xs, fmt, mode))
        want = np.array([_mpfr_round(v, fmt, mode) for v in xs])
        same = (got.view(np.uint64) == want.view(np.uint64)) | (np.isnan(got) & np.isnan(want))
        bad = np.flatnonzero(~same)
        assert not bad.size, (mode, xs[bad[0]], got[bad[0]], want[bad[0]])


def test_ops_and_linalg_refuse_ints_that_are_not_format_numbers() -> None:
    from fpanalysis import linalg, ops

    with pytest.raises(ValueError, match=r"add: argument 'a' .* not fp32 numbers \(first: 18014398509481985\)"):
        ops.add(2**54 + 1, 0.0, "fp32")
    with pytest.raises(ValueError, match="not fp32 numbers"):
        ops.fma(1.0, 1.0, np.array([2**60 + 1], np.int64), "fp32")
    with pytest.raises(ValueError, match="not numbers of format 'fp32'"):
        linalg.dot(np.array([2**54 + 1]), np.array([1.0]), "fp32")
    with pytest.raises(ValueError, match="not numbers of format 'fp32'"):
        linalg.matmul([[2**54 + 1]], [[1.0]], "fp32")
    # round_inputs rounds them exactly, once (2**54 + 2**30 + 1 -> 2**54 + 2**31, see above)
    assert ops.add(2**54 + 2**30 + 1, 0.0, "fp32", round_inputs=True) == float(2**54 + 2**31)
    assert linalg.dot(np.array([2**54 + 2**30 + 1]), np.array([1.0]), "fp32", round_inputs=True) == 2**54 + 2**31
    # integers that are format numbers stay accepted
    assert ops.add(2**60, 2**60, "fp32") == 2.0**61


# --- mpmath references: one rounding to float64 ---------------------------------------------


def _gm_float(fn, *args: float) -> float:  # type: ignore[no-untyped-def]
    """``fn`` evaluated by MPFR at 400 bits, then rounded once to float64 by MPFR's binary64
    context (subnormals included)."""
    with gmpy2.context(precision=400, emin=-100000, emax=100000):
        v = fn(*[gmpy2.mpfr(a) for a in args])
    return float(gmpy2.ieee(64).plus(v))


def test_log_softmax_of_a_nearly_one_hot_row() -> None:
    from fpanalysis.reference import mp_log_softmax

    # log_softmax([0, -80])[0] = -log1p(exp(-80)) ~ -1.8e-35, not 0
    want = _gm_float(lambda t: -gmpy2.log1p(gmpy2.exp(t)), -80.0)
    assert want == -1.8048513878454153e-35
    assert mp_log_softmax([0.0, -80.0])[0] == want
    rng = np.random.default_rng(3)
    for _ in range(40):
        row = np.concatenate([[0.0, 0.0], -rng.uniform(0, 200, 3)]) if rng.random() < 0.3 else -rng.uniform(0, 200, 4)
        got = mp_log_softmax(row)
        m = float(np.max(row))

        def lse(*v):  # type: ignore[no-untyped-def]
            return gmpy2.log(sum(gmpy2.exp(t - m) for t in v))

        for i, xi in enumerate(row.tolist()):
            want = _gm_float(lambda *v: v[0] - m - lse(*v[1:]), xi, *row.tolist())
            assert got[i] == want, (row, i, got[i], want)


@pytest.mark.parametrize("name", ["exp", "sigmoid", "silu", "gelu"])
def test_mp_functions_round_subnormal_results_once(name: str) -> None:
    from fpanalysis import reference as R

    sqrt2 = lambda: gmpy2.sqrt(gmpy2.mpfr(2))  # noqa: E731
    oracle = {
        "exp": (lambda t: gmpy2.exp(t), (-745.0, -708.4)),
        "sigmoid": (lambda t: 1 / (1 + gmpy2.exp(-t)), (-745.0, -708.4)),
        "silu": (lambda t: t / (1 + gmpy2.exp(-t)), (-745.0, -715.0)),
        "gelu": (lambda t: t / 2 * gmpy2.erfc(-t / sqrt2()), (-38.5, -37.5)),
    }[name]
    fn, (lo, hi) = oracle
    rng = np.random.default_rng(7)
    x = np.concatenate([[-708.518761350277], rng.uniform(lo, hi, 300)])
    got = getattr(R, "mp_" + name)(x)
    want = np.array([_gm_float(fn, v) for v in x.tolist()])
    assert np.any((want != 0) & (np.abs(want) < 2.0**-1022))  # the subnormal range is exercised
    bad = np.flatnonzero(got.view(np.uint64) != want.view(np.uint64))
    assert not bad.size, (x[bad[0]], got[bad[0]].hex(), want[bad[0]].hex(), bad.size)


# --- the sign of an exact zero sum in linalg ---------------------------------------------------


def _mpfr_sequential(a: np.ndarray, b: np.ndarray, rnd: int) -> float:
    """MPFR's sum started from +0 with every product and partial sum in rounding ``rnd``: for
    small-integer inputs every step is exact, and MPFR gives exact zero sums the sign of IEEE 754
    sec. 6.3 (-0 only in round-down)."""
    ctx = gmpy2.context(precision=64, round=rnd)
    s = gmpy2.mpfr(0)
    for x, y in zip(a.tolist(), b.tolist()):
        s = ctx.add(s, ctx.mul(gmpy2.mpfr(x), gmpy2.mpfr(y)))
    return float(s)


@pytest.mark.parametrize("mode", ["nearest-even", "down", "up", "toward-zero"])
def test_exact_zero_sums_have_the_ieee_sign(mode: str) -> None:
    from fpanalysis import linalg

    rng = np.random.default_rng(65)
    A = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, 2.0, -2.0], np.float32), size=(40, 3))
    B = rng.choice(np.array([0.0, -0.0, 1.0, -1.0], np.float32), size=(3, 30))
    rnd = {"nearest-even": gmpy2.RoundToNearest, "down": gmpy2.RoundDown, "up": gmpy2.RoundUp,
           "toward-zero": gmpy2.RoundToZero}[mode]
    want = np.array([[_mpfr_sequential(A[i], B[:, j], rnd) for j in range(B.shape[1])] for i in range(A.shape[0])])
    zeros = want == 0
    assert zeros.sum() > 100 and np.signbit(want[zeros]).any() == (mode == "down")
    for profile in ("exact", "ieee"):
        got = np.asarray(linalg.matmul(A, B, "fp16", profile, mode=mode), dtype=np.float64)
        assert (got.view(np.uint64) == want.view(np.uint64)).all(), profile
    # fp32-accumulate adds in binary32 round-to-nearest-even whatever the final mode: +0
    got = np.asarray(linalg.matmul(A, B, "fp16", "fp32-accumulate", mode=mode), dtype=np.float64)
    nearest = np.array([[_mpfr_sequential(A[i], B[:, j], gmpy2.RoundToNearest) for j in range(30)] for i in range(40)])
    assert (got.view(np.uint64) == nearest.view(np.uint64)).all()


# --- differential fuzz (issue 12): round_to against MPFR over random formats ----------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_round_to_fuzz_against_mpfr(seed: int) -> None:
    """Random formats (p in [2, 53], wide and float32-sized exponent ranges, subnormals on/off,
    every overflow policy, reserved top significands), inputs at every threshold plus random
    bit patterns, float64 and float32 inputs (both kernel paths, with and without stats) and
    wide integers, in every deterministic mode.  (Run for 150 s and 120 s with seeds 1 and 2
    while fixing issue 12: 390 formats, 5.4 million comparisons, no mismatch.)"""
    rng = np.random.default_rng(seed)
    for _ in range(25):
        p = int(rng.integers(2, 54))
        if rng.random() < 0.5 and p <= 24:
            emin, emax = int(rng.integers(max(p - 150, -126), 0)), int(rng.integers(1, 128))
        else:
            emin, emax = int(rng.integers(-1020 + p - 1, 0)), int(rng.integers(1, 1001))
        ms = 2.0 - 2.0 ** (1 - p) * int(rng.integers(2, 4)) if (rng.random() < 0.2 and p >= 3) else None
        f = FloatFormat("z", p, emin, emax, subnormals=bool(rng.random() < 0.5),
                        overflow=str(rng.choice(["inf", "saturate", "nan"])), max_significand=ms)
        xs = [c * (1 + k * 2.0 ** -sh) for c in (f.min_normal, 2.0 ** (emin - p + 1), f.max, 2.0**emax)
              for k in range(-4, 5) for sh in (p + 1, p, 53)]
        xs += list(np.ldexp(rng.uniform(1, 2, 100), rng.integers(emin - p - 3, emax + 3, 100)))
        x64 = np.array(xs)
        x64 = np.concatenate([x64, -x64, rng.integers(0, 2**63, 30, dtype=np.uint64).view(np.float64)])
        x64 = x64[np.isfinite(x64)]
        with np.errstate(over="ignore"):
            x32 = x64.astype(np.float32)
        x32 = x32[np.isfinite(x32)]
        ints = [int(v) for v in rng.integers(2**53, 2**63, 10, dtype=np.uint64)]
        ints += [int(rng.integers(1, 2**62)) << int(rng.integers(0, 900)) for _ in range(10)]
        for mode in DET_MODES:
            for x in (x64, x32, ints):
                want = np.array([_mpfr_round(v if isinstance(v, int) else float(v), f, mode) for v in
                                 (x if isinstance(x, list) else x.tolist())])
                outs = [round_to(x, f, mode)] + ([] if isinstance(x, list) else [round_to(x, f, mode, return_stats=True)[0]])
                for got in outs:
                    g = np.asarray(got, dtype=np.float64)
                    same = (g.view(np.uint64) == want.view(np.uint64)) | (np.isnan(g) & np.isnan(want))
                    bad = np.flatnonzero(~same)
                    assert not bad.size, (f, mode, x[bad[0]] if isinstance(x, list) else float(x[bad[0]]),
                                          float(g[bad[0]]), float(want[bad[0]]))

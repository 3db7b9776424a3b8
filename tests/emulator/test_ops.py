"""Tests of the emulated elementwise arithmetic (fpanalysis.ops).

Every expected value comes from an independent oracle: gmpy2 (MPFR), softfloatpy (Berkeley
SoftFloat), ml_dtypes, Python integers/fractions (fpanalysis.verify.ops.exact_op, checked here
against gmpy2 and softfloat as well), or hand-derived IEEE 754 facts.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from fpanalysis.formats import FP16, FloatFormat, get_format
from fpanalysis.ops import add, check_ops_format, div, fma, mul, sqrt, sub
from fpanalysis.rounding import RoundingMode, round_to
from fpanalysis.verify.ops import OPS, exact_fraction, exact_op, sample_operands, verify_ops

gmpy2 = pytest.importorskip("gmpy2")
sf = pytest.importorskip("softfloatpy")
md = pytest.importorskip("ml_dtypes")

H = float.fromhex
ALL_MODES = ["nearest-even", "nearest-away", "toward-zero", "up", "down", "odd"]
FUNCS = {"add": add, "sub": sub, "mul": mul, "div": div, "sqrt": sqrt, "fma": fma}


def same(x, y) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return (np.isnan(x) & np.isnan(y)) | ((x == y) & (np.signbit(x) == np.signbit(y)))


def _bad_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["mismatches"]]


# --- the known double-rounding case and basic facts ----------------------------------------


def test_theory_fma_case_is_correct_where_double_rounding_fails():
    a, b, c = H("0x1.eacp+7"), H("0x1.3f4p+4"), H("0x1.c04p+14")
    assert fma(a, b, c, "fp16") == H("0x1.064p+15")
    # the case is a real trap: exact -> binary32 -> binary16 gives the wrong answer
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    via32 = np.float16(np.float32(float(exact)))  # float(exact) is exact here (22+ bits)
    assert float(via32) == H("0x1.068p+15")
    with gmpy2.context(gmpy2.ieee(16)):
        assert float(gmpy2.fma(a, b, c)) == H("0x1.064p+15")


def test_fp16_overflow_boundary_and_stagnation():
    # 65504 + 8 = 65512 < 65520 (the midpoint to 65536): stays; 65504 + 16 = 65520: tie -> inf
    assert add(65504.0, 8.0) == 65504.0
    assert add(65504.0, 16.0) == math.inf
    assert add(65504.0, H("0x1.ffcp+3")) == 65504.0  # 15.9921875
    assert add(65504.0, 16.0, mode="toward-zero") == 65504.0
    assert add(65504.0, 16.0, mode="down") == 65504.0
    assert add(-65504.0, -16.0, mode="up") == -65504.0
    assert add(65504.0, 2.0**-24, mode="up") == math.inf
    assert add(65504.0, 16.0, mode="odd") == 65504.0
    assert add(1.0, 2.0**-11) == 1.0  # stagnation at the tie (to even)
    assert add(1.0, 2.0**-11, mode="nearest-away") == 1.0 + 2.0**-10
    assert mul(256.0, 256.0) == math.inf
    assert mul(2.0**-12, 2.0**-13) == 0.0  # 2**-25 is the tie between 0 and 2**-24: to even
    assert mul(2.0**-12, 2.0**-13, mode="up") == 2.0**-24


@pytest.mark.parametrize("mode", ALL_MODES)
def test_ieee_special_values(mode):
    nan, inf = math.nan, math.inf
    assert math.isnan(add(inf, -inf, mode=mode))
    assert math.isnan(sub(inf, inf, mode=mode))
    assert math.isnan(mul(0.0, inf, mode=mode))
    assert math.isnan(div(0.0, 0.0, mode=mode))
    assert math.isnan(div(inf, -inf, mode=mode))
    assert math.isnan(sqrt(-1.0, mode=mode))
    assert math.isnan(fma(0.0, inf, 1.0, mode=mode))
    assert math.isnan(fma(inf, 1.0, -inf, mode=mode))
    assert math.isnan(add(nan, 1.0, mode=mode))
    assert div(1.0, 0.0, mode=mode) == inf
    assert div(1.0, -0.0, mode=mode) == -inf
    assert div(-1.0, -0.0, mode=mode) == inf
    assert same(sqrt(-0.0, mode=mode), -0.0)
    assert same(sqrt(0.0, mode=mode), 0.0)
    assert sqrt(inf, mode=mode) == inf
    assert same(div(-1.0, inf, mode=mode), -0.0)
    assert same(mul(-0.0, 3.0, mode=mode), -0.0)
    # exact zero sums: +0, except -0 in round-down; x + x keeps the sign of x
    z = -0.0 if mode == "down" else 0.0
    assert same(add(1.0, -1.0, mode=mode), z)
    assert same(sub(2.5, 2.5, mode=mode), z)
    assert same(add(0.0, -0.0, mode=mode), z)
    assert same(add(-0.0, -0.0, mode=mode), -0.0)
    assert same(add(0.0, 0.0, mode=mode), 0.0)
    assert same(sub(-0.0, 0.0, mode=mode), -0.0)
    assert same(fma(2.0, 3.0, -6.0, mode=mode), z)
    assert same(fma(-0.0, 1.0, -0.0, mode=mode), -0.0)
    assert same(fma(-0.0, 1.0, 0.0, mode=mode), z)
    # a nonzero result that rounds to zero keeps its sign
    if mode in ("nearest-even", "toward-zero", "up"):
        assert same(mul(-(2.0**-14), 2.0**-14, mode=mode), -0.0)


def test_special_values_against_softfloat_and_gmpy2():
    """Every pair of special fp16 values, every op and mode, against both oracles."""
    rows = []
    sp = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 65504.0, -65504.0, 2.0**-24, -(2.0**-24),
                   2.0**-14, 2.0**-14 - 2.0**-24, 3.0, 0.5])
    for op in OPS:
        k = {"sqrt": 1, "fma": 3}.get(op, 2)
        args = tuple(g.reshape(-1) for g in np.meshgrid(*([sp] * k), indexing="ij"))
        for mode in ["nearest-even", "toward-zero", "up", "down"]:
            got = FUNCS[op](*args, fmt="fp16", mode=mode)
            m = RoundingMode.parse(mode)
            from fpanalysis.verify.ops import _gmpy2_oracle, _softfloat_oracle

            for name, exp in (("gmpy2", _gmpy2_oracle(op, FP16, m, args)), ("softfloat", _softfloat_oracle(op, m, args))):
                ok = same(got, exp)
                rows += [(op, mode, name, [float(a[i]) for a in args]) for i in np.flatnonzero(~ok)[:3]]
    assert rows == []


def test_e4m3fn_and_saturating_overflow():
    # E4M3FN: largest finite 448, no infinities; the next step (480) is NaN
    assert add(448.0, 16.0, "fp8_e4m3fn") == 448.0  # 464: tie, to even (448)
    assert math.isnan(add(448.0, 32.0, "fp8_e4m3fn"))
    assert add(448.0, 32.0, "fp8_e4m3fn", mode="toward-zero") == 448.0
    assert math.isnan(div(1.0, 0.0, "fp8_e4m3fn"))
    sat = FP16.with_(name="fp16-sat", overflow="saturate")
    assert add(65504.0, 65504.0, sat) == 65504.0
    assert add(-65504.0, -65504.0, sat, mode="up") == -65504.0
    assert div(-1.0, 0.0, sat) == -65504.0


def test_ml_dtypes_exhaustive_fp8_binary_ops():
    """All 256 x 256 fp8 pairs, + - * /, nearest-even, against ml_dtypes."""
    from fpanalysis.verify.ops import _ml_dtypes_oracle

    for name in ("fp8_e4m3fn", "fp8_e5m2"):
        f = get_format(name)
        args = sample_operands("add", f, 1 << 16, np.random.default_rng(0))
        assert args[0].size == 1 << 16
        for op in ("add", "sub", "mul", "div"):
            got = FUNCS[op](*args, fmt=f)
            exp = _ml_dtypes_oracle(op, f, args)
            assert same(got, exp).all(), (name, op)


def test_exhaustive_fp16_sqrt():
    """All 65,536 fp16 bit patterns through sqrt, in every mode softfloat has, and odd."""
    from fpanalysis.rounding import from_bits
    from fpanalysis.verify.ops import _gmpy2_oracle, _softfloat_oracle

    x = from_bits(np.arange(1 << 16, dtype=np.uint32), "fp16")
    for mode in ["nearest-even", "nearest-away", "toward-zero", "up", "down"]:
        got = sqrt(x, "fp16", mode)
        exp = _softfloat_oracle("sqrt", RoundingMode.parse(mode), (x,))
        assert same(got, exp).all(), mode
    got = sqrt(x, "fp16", "odd")
    assert same(got, _gmpy2_oracle("sqrt", FP16, RoundingMode.ODD, (x,))).all()


# --- differential tests: the fast tier ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"])
def test_verify_ops_presets(fmt):
    rows = verify_ops(20_000, seed=11, formats=(fmt,), n_exact=4_000)
    assert {r["check"] for r in rows} == set(OPS)
    assert all(r["n"] > 0 for r in rows)
    assert _bad_rows(rows) == []


CUSTOM = [
    FloatFormat("p26", p=26, emin=-100, emax=100),
    FloatFormat("p2", p=2, emin=-6, emax=7),
    FloatFormat("tf32", p=11, emin=-126, emax=127),
    FloatFormat("fp32", p=24, emin=-126, emax=127),
    FloatFormat("fp16-ftz", p=11, emin=-14, emax=15, subnormals=False),
    FloatFormat("fp16-sat", p=11, emin=-14, emax=15, overflow="saturate"),
]


@pytest.mark.parametrize("fmt", CUSTOM, ids=lambda f: f.name)
def test_verify_ops_custom_formats(fmt):
    rows = verify_ops(4_000, seed=5, formats=(fmt,), n_exact=2_000)
    assert _bad_rows(rows) == []


def test_exact_oracle_agrees_with_gmpy2_and_softfloat():
    """The integer oracle is itself checked against the library oracles (fp16, bf16)."""
    from fpanalysis.verify.ops import _gmpy2_oracle, _softfloat_oracle

    for fmt in ("fp16", "bf16"):
        f = get_format(fmt)
        for op in OPS:
            args = sample_operands(op, f, 1500, np.random.default_rng(3))
            cols = list(zip(*[a.tolist() for a in args]))
            for mode in ["nearest-even", "toward-zero", "up", "down", "odd"]:
                m = RoundingMode.parse(mode)
                ex = np.array([exact_op(op, xs, f, m) for xs in cols])
                assert same(ex, _gmpy2_oracle(op, f, m, args)).all(), (fmt, op, mode)
            if fmt == "fp16":
                m = RoundingMode.NEAREST_AWAY
                ex = np.array([exact_op(op, xs, f, m) for xs in cols])
                assert same(ex, _softfloat_oracle(op, m, args)).all(), (op, "nearest-away")


def test_operands_cover_every_class():
    for op in OPS:
        args = sample_operands(op, "fp16", 20_000, np.random.default_rng(0))
        x = np.concatenate(args)
        ax = np.abs(x[np.isfinite(x)])
        assert np.isnan(x).any() and np.isinf(x).any()
        assert (np.signbit(x) & (x == 0)).any() and (~np.signbit(x) & (x == 0)).any()
        assert ((ax > 0) & (ax < 2.0**-14)).any(), "subnormals"
        assert (ax == 65504.0).any()
        assert (ax < 2.0**-20).any() and (ax > 2.0**14).any()


def test_numpy_twin_matches_kernels():
    from fpanalysis.ops import _ops_numpy

    for fmt in [get_format("fp16"), get_format("bf16"), CUSTOM[0], CUSTOM[4], CUSTOM[5]]:
        for op in OPS:
            args = sample_operands(op, fmt, 3000, np.random.default_rng(9))
            for mode in ALL_MODES:
                got = FUNCS[op](*args, fmt=fmt, mode=mode)
                twin = _ops_numpy(op, args, fmt, RoundingMode.parse(mode))
                assert same(got, twin).all(), (fmt.name, op, mode)


# --- stochastic rounding -----------------------------------------------------------------------


def _sr_fraction_kernel(op, args, fmt):
    from fpanalysis._kernels import ops as K

    code = {"add": K.ADD, "sub": K.SUB, "mul": K.MUL, "div": K.DIV, "sqrt": K.SQRT, "fma": K.FMA}[op]
    full = [np.ascontiguousarray(a, dtype=np.float64) for a in args] + [np.zeros(args[0].size)] * (3 - len(args))
    out = np.empty(args[0].size, dtype=np.uint64)
    K.fraction_kernel(code, full[0], full[1], full[2], out, fmt.p, fmt.emin, fmt.subnormals)
    return out


@pytest.mark.parametrize("fmt", ["fp16", "bf16", CUSTOM[0], CUSTOM[4]], ids=str)
def test_stochastic_fraction_is_exact(fmt):
    """The 64-bit fraction that decides stochastic rounding, against integer arithmetic:
    exact for add/sub/mul/fma, within one unit (2**-64) for div and sqrt."""
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    for op in OPS:
        args = sample_operands(op, f, 4000, np.random.default_rng(21))
        got = _sr_fraction_kernel(op, args, f).tolist()
        worst = 0
        for i, xs in enumerate(zip(*[a.tolist() for a in args])):
            ef = exact_fraction(op, xs, f)
            if ef is None:
                continue
            d = (got[i] - ef[2]) % (1 << 64)
            worst = max(worst, min(d, (1 << 64) - d))
        assert worst <= (1 if op in ("div", "sqrt") else 0), (op, worst)


def test_stochastic_fraction_beyond_the_odd_intermediate():
    """Cases where the exact fraction has bits that the round-to-odd float64 loses: a bf16
    sum whose low part lies 2**-80 below the sum (p=8: the float64 frac has only 45 bits)."""
    f = get_format("bf16")
    a = np.array([1.0 + 2.0**-7, 1.0, 3.0, 1.0])
    b = np.array([2.0**-60, -(2.0**-60), 2.0**-70, -(2.0**-70)])
    got = _sr_fraction_kernel("add", (a, b), f).tolist()
    exp = [exact_fraction("add", (x, y), f)[2] for x, y in zip(a.tolist(), b.tolist())]
    assert got == exp
    assert exp[0] == 1 << 11  # 2**-60 / 2**-7 * 2**64 = 2**11
    assert exp[1] == (1 << 64) - (1 << 12)  # 1 - 2**-60 = (2**8 - 2**-52) * 2**-8


def test_stochastic_fraction_trusts_the_sign_of_lo():
    """frac64 takes the sign of the low part from the exact sign, not from the (possibly
    underflowed) rounded low part: x = 1 - tiny has fraction 2**64 - 1 (in units 2**-64)."""
    from fpanalysis._kernels import ops as K

    hi = 1.0
    xo = K.to_odd(hi, -1)
    assert xo == 1.0 - 2.0**-53
    assert K.frac64(hi, -0.0, -1, xo, 11, -14, True) == (1 << 64) - 1
    assert K.frac64(hi, 0.0, 0, hi, 11, -14, True) == 0
    assert K.frac64(hi, 2.0**-60, 1, K.to_odd(hi, 1), 11, -14, True) == 1 << 14  # 2**-60 / 2**-10 * 2**64


def _p_up_exact(op, xs, f, kbits=None):
    _, _, fr, _, _ = exact_fraction(op, xs, f)
    if kbits is not None:
        return Fraction(fr >> (64 - kbits), 1 << kbits)
    # P(r < floor(2**64 frac)) for a uniform 64-bit r
    return Fraction(fr, 1 << 64)


@pytest.mark.parametrize(
    "op,xs,fmt",
    [
        ("add", (1.0, 2.0**-13), "fp16"),  # up with probability 1/4
        ("add", (1.0, 3 * 2.0**-13), "fp16"),  # 3/4
        ("div", (1.0, 3.0), "fp16"),
        ("sqrt", (2.0,), "bf16"),
        ("mul", (1.0 + 2.0**-10, 1.0 + 2.0**-10), "fp16"),
        ("fma", (3.0, 1.0 + 2.0**-10, -(2.0**-5)), "fp16"),
        ("sub", (1.0, 2.0**-16), "fp8_e5m2"),  # up (to 1.0) with probability 1 - 2**-13
        ("div", (-1.0, 7.0), "fp8_e4m3fn"),
    ],
)
@pytest.mark.parametrize("kbits", [None, 5])
def test_stochastic_rounding_statistics(op, xs, fmt, kbits):
    """P(round away) proportional to the distance (binomial tolerance, 5 sigma) and the mean of
    many roundings equal to the exact value."""
    f = get_format(fmt)
    n = 200_000
    args = [np.full(n, x) for x in xs]
    y = FUNCS[op](*args, fmt=f, mode="stochastic", seed=1234, random_bits=kbits)
    neg, t, fr, _, qe = exact_fraction(op, xs, f)
    lo_mag = math.ldexp(t, qe)
    hi_mag = math.ldexp(t + 1, qe)
    s = -1.0 if neg else 1.0
    assert set(np.unique(y).tolist()) <= {s * lo_mag, s * hi_mag}
    k = int(np.sum(y == s * hi_mag))
    p = float(_p_up_exact(op, xs, f, kbits))
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(k - n * p) <= 5 * sigma + 1, (k, n * p, sigma)
    if kbits is None:
        # mean of the roundings vs the exact value (mpmath-free: Fraction / isqrt based)
        exact_val = (t + Fraction(fr, 1 << 64)) * Fraction(2) ** qe * (-1 if neg else 1)
        q = math.ldexp(1.0, qe)
        tol = 5 * q * math.sqrt(max(p * (1 - p), 1e-30) / n) + q * 2.0**-60
        assert abs(float(np.mean(y, dtype=np.float64)) - float(exact_val)) <= tol


def test_stochastic_reproducible_streams_and_threads():
    import numba

    a = round_to(np.random.default_rng(0).standard_normal(50_000), "fp16")
    b = round_to(np.random.default_rng(1).standard_normal(50_000), "fp16")
    y1 = div(a, b, mode="stochastic", seed=7)
    y2 = div(a, b, mode="stochastic", seed=7)
    y3 = div(a, b, mode="stochastic", seed=7, stream=1)
    assert same(y1, y2).all()
    assert not same(y1, y3).all()
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y4 = div(a, b, mode="stochastic", seed=7)
    finally:
        numba.set_num_threads(old)
    assert same(y1, y4).all()
    with pytest.raises(ValueError, match="seed"):
        add(a, b, mode="stochastic")
    with pytest.raises(ValueError, match="random_bits"):
        add(a, b, random_bits=4)


# --- API: broadcasting, dtypes, validation, stats --------------------------------------------


def test_broadcasting_dtypes_and_scalars():
    a = np.array([[1.0], [2.0]], dtype=np.float32)
    b = np.array([0.5, 0.25, 0.125], dtype=np.float32)
    y = mul(a, b)
    assert y.shape == (2, 3) and y.dtype == np.float32
    assert (y == np.array([[0.5, 0.25, 0.125], [1.0, 0.5, 0.25]])).all()
    assert add(a, 1.0).dtype == np.float32  # Python scalars are weak
    assert add(a, np.float64(1.0)).dtype == np.float64
    assert add(a, b, "fp32").dtype == np.float32
    assert add(np.float16([1.0]), np.float16([2.0])).dtype == np.float32
    assert add(1.0, 2.0) == 3.0 and isinstance(add(1.0, 2.0), float)
    assert fma(np.ones((2, 1, 3)), np.ones((4, 1)), 1.0).shape == (2, 4, 3)
    assert add(a, b, dtype=np.float64).dtype == np.float64
    bf = np.array([1.5, 2.5], dtype=md.bfloat16)
    assert add(bf, bf, "bf16").tolist() == [3.0, 5.0]
    with pytest.raises(ValueError, match="broadcast"):
        add(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="float32 or float64"):
        add(1.0, 1.0, dtype=np.int32)


def test_inputs_must_be_format_values():
    with pytest.raises(ValueError, match=r"argument 'b' has 2 value\(s\) that are not fp16 numbers \(first: 0.1\)"):
        add(np.ones(3), np.array([1.0, 0.1, 0.2]))
    with pytest.raises(ValueError, match="not bf16 numbers"):
        sqrt(1.0 + 2.0**-10, "bf16")
    with pytest.raises(ValueError, match="argument 'c'"):
        fma(1.0, 1.0, 70000.0)
    with pytest.raises(ValueError, match="not fp8_e4m3fn"):
        add(math.inf, 1.0, "fp8_e4m3fn")  # E4M3FN has no infinities
    # round_inputs: nearest-even conversion first (0.1 -> 0x1.998p-4 in fp16)
    assert add(0.1, 0.2, round_inputs=True) == float(np.float16(np.float16(0.1) + np.float16(0.2)))
    assert math.isnan(add(math.nan, 1.0))  # NaN is a value of every format


def test_unsupported_formats_and_names():
    with pytest.raises(ValueError, match="p <= 26"):
        add(1.0, 1.0, FloatFormat("p30", p=30, emin=-100, emax=100))
    with pytest.raises(ValueError, match="too wide"):
        check_ops_format(FloatFormat("wide", p=11, emin=-1000, emax=1000))
    with pytest.raises(ValueError, match="valid modes"):
        add(1.0, 1.0, mode="sideways")
    with pytest.raises(ValueError, match="known formats"):
        add(1.0, 1.0, "fp17")


def test_return_stats_against_exact_results():
    """Counts of inexact, overflowed, subnormal and flushed results, with the exact sums
    (float64 holds every exact fp16 sum) as the reference."""
    rng = np.random.default_rng(4)
    a, b = sample_operands("add", "fp16", 20_000, rng)
    y, st = add(a, b, return_stats=True)
    fin = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore"):
        exact = np.where(fin, a + b, np.nan)
    assert st.n == a.size
    assert st.inexact == int(np.sum(fin & (y != exact)))
    assert st.overflow == int(np.sum(fin & np.isinf(y)))
    assert st.subnormal == int(np.sum(fin & (y != 0) & (np.abs(y) < 2.0**-14)))
    assert st.flushed == int(np.sum(fin & (y == 0) & (exact != 0)))
    ftz = CUSTOM[4]
    y2, st2 = mul(np.array([2.0**-10, 1.0]), np.array([2.0**-10, 2.0**-14]), ftz, return_stats=True)
    assert y2.tolist() == [0.0, 2.0**-14] and st2.flushed == 1


# --- the slow tier: >= 10**6 operand tuples per op -----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"])
def test_verify_ops_million(fmt):
    rows = verify_ops(1_000_000, seed=2024, formats=(fmt,), n_exact=100_000)
    f = get_format(fmt)
    n_values = 1 << f.total_bits
    for r in rows:  # 10**6 tuples, or every combination where there are fewer (fp8: exhaustive)
        k = {"sqrt": 1, "fma": 3}.get(r["check"], 2)
        assert r["n"] == min(100_000 if r["oracle"] == "exact" else 1_000_000, n_values**k), r
    assert _bad_rows(rows) == []


def test_stochastic_tiny_negative_quotient_does_not_round_up() -> None:
    # |a / b| is about 2**-230, 2**-97 of bf16's smallest subnormal: it rounds up with
    # probability 2**-97, so 10^4 draws must all give -0.  (A truncated fraction once borrowed
    # from the integer part here and rounded every draw up to -2**-133.)
    a = np.full(10_000, -float.fromhex("0x1.96p-105"))
    b = np.full(10_000, float.fromhex("0x1.fap+125"))
    for random_bits in (None, 6):
        y = div(a, b, "bf16", "stochastic", seed=0, random_bits=random_bits)
        assert np.all(y == 0.0) and np.all(np.signbit(y))

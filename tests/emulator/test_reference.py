"""Exact references (fpanalysis.reference) against independent oracles: Fraction arithmetic,
gmpy2 (MPFR) correct rounding with the format's precision/range/subnormals and each mode,
mpmath, round_to for values that are float64 numbers, numpy/scipy for the transcendentals."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import gmpy2
import ml_dtypes
import mpmath
import numpy as np
import pytest

from fpanalysis import FloatFormat, get_format, round_to
from fpanalysis.reference import (
    _exact_dot_python,
    _exact_value,
    _round_fraction,
    exact_dot,
    exact_dot_fraction,
    exact_matmul,
    exact_sum,
    mp_dot,
    mp_erf,
    mp_exp,
    mp_gelu,
    mp_log,
    mp_log_softmax,
    mp_rsqrt,
    mp_sigmoid,
    mp_silu,
    mp_softmax,
    mp_tanh,
)
from fpanalysis.rounding import RoundingMode

MODES = [m.value for m in RoundingMode if m is not RoundingMode.STOCHASTIC]
GMPY_MODES = {
    "nearest-even": gmpy2.RoundToNearest,
    "toward-zero": gmpy2.RoundToZero,
    "up": gmpy2.RoundUp,
    "down": gmpy2.RoundDown,
}
IEEE_TARGETS = [None, "fp16", "bf16", "fp32", "fp8_e5m2", "tf32", FloatFormat("p5", p=5, emin=-10, emax=9)]
ALL_TARGETS = IEEE_TARGETS + [
    "fp8_e4m3fn",
    get_format("fp8_e4m3fn").with_(overflow="saturate"),
    get_format("fp16").with_(overflow="saturate"),
    FloatFormat("ftz5", p=5, emin=-6, emax=7, subnormals=False),
]


def _name(t: object) -> str:
    return "float64" if t is None else (t if isinstance(t, str) else f"{t.name}-{t.overflow.value}")  # type: ignore[union-attr]


def _same(a: float, b: float) -> bool:
    """Equal, with NaN == NaN and signed zeros distinguished."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def gmpy2_round(q: Fraction, fmt: object, mode: str) -> float:
    """Correct rounding by MPFR in a context with the format's precision, exponent range and
    subnormals (IEEE-style formats only)."""
    if fmt is None:
        p, emin, emax = 53, -1022, 1023
    else:
        f = get_format(fmt)  # type: ignore[arg-type]
        p, emin, emax = f.p, f.emin, f.emax
    ctx = gmpy2.context(
        precision=p, emin=emin - p + 2, emax=emax + 1, subnormalize=True, round=GMPY_MODES[mode]
    )
    with gmpy2.context(ctx):
        return float(gmpy2.mpfr(gmpy2.mpq(q.numerator, q.denominator)))


# --- input generators ---------------------------------------------------------------------


def format_values(rng: np.random.Generator, n: int, kind: str, finite: bool = True) -> np.ndarray:
    """Values of a format from uniformly random bit patterns (every binade, many subnormals),
    held in float32 (float64 for 'float64')."""
    if kind == "fp16":
        v = rng.integers(0, 1 << 16, n, dtype=np.uint16).view(np.float16).astype(np.float32)
    elif kind == "bf16":
        v = rng.integers(0, 1 << 16, n, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)
    elif kind == "fp32":
        v = rng.integers(0, 1 << 32, n, dtype=np.uint32).view(np.float32).copy()
    elif kind == "e4m3fn":
        v = rng.integers(0, 1 << 8, n, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    elif kind == "e5m2":
        v = rng.integers(0, 1 << 8, n, dtype=np.uint8).view(ml_dtypes.float8_e5m2).astype(np.float32)
    elif kind == "float64":
        v = rng.integers(0, 1 << 64, n, dtype=np.uint64).view(np.float64).copy()
    else:
        raise AssertionError(kind)
    if finite:
        bad = ~np.isfinite(v)
        v[bad] = np.float32(1.5) if v.dtype == np.float32 else 1.5
    return v


def normal_values(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    x = rng.standard_normal(n)
    if kind == "fp16":
        return x.astype(np.float16).astype(np.float32)
    if kind == "bf16":
        return x.astype(ml_dtypes.bfloat16).astype(np.float32)
    if kind == "fp32":
        return x.astype(np.float32)
    if kind == "e4m3fn":
        return x.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    if kind == "e5m2":
        return x.astype(ml_dtypes.float8_e5m2).astype(np.float32)
    return x


def cancelling(rng: np.random.Generator, n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Pairs whose products cancel massively: each product appears with both signs, plus a few
    tiny uncancelled terms; the order is shuffled."""
    h = n // 2
    x = format_values(rng, h, kind)
    y = format_values(rng, h, kind)
    xs = np.concatenate([x, -x, format_values(rng, n - 2 * h, kind)])
    ys = np.concatenate([y, y, format_values(rng, n - 2 * h, kind)])
    perm = rng.permutation(n)
    return xs[perm], ys[perm]


KINDS = ["fp16", "bf16", "fp32", "e4m3fn", "e5m2", "float64"]


# --- the rounding twin --------------------------------------------------------------------


def _edge_fractions(rng: np.random.Generator) -> list[Fraction]:
    """Values near ties, overflow and the subnormal range of the formats, and random ones."""
    out = []
    for t in [
        1.0,
        1.5,
        65504.0,
        65520.0,
        448.0,
        57344.0,
        2.0**-14,
        2.0**-24,
        2.0**-126,
        2.0**-149,
        3.0e38,
        1e300,
        2.0**-1074,
    ]:
        for ulp_exp in [-11, -8, -24, -53, -4, -3]:
            u = Fraction(t) * Fraction(2) ** ulp_exp
            for d in [0, 1, -1]:
                for k in [Fraction(1, 2), Fraction(3, 2), Fraction(1, 1)]:
                    q = Fraction(t) + k * u + d * u * Fraction(1, 2**40)
                    out += [q, -q]
    for _ in range(300):
        out.append(
            Fraction(int(rng.integers(-(2**62), 2**62))) * Fraction(2) ** int(rng.integers(-1200, 1100))
        )
    return out


@pytest.mark.parametrize("mode", list(GMPY_MODES))
def test_round_fraction_twin_matches_gmpy2(mode: str, rng: np.random.Generator) -> None:
    qs = _edge_fractions(rng)
    for fmt in IEEE_TARGETS:
        for q in qs:
            want = gmpy2_round(q, fmt, mode)
            got = _round_fraction(q, fmt, mode)
            assert _same(got, want), (float(q), _name(fmt), mode, got, want)


@pytest.mark.parametrize("mode", MODES)
def test_round_fraction_twin_matches_round_to(mode: str, rng: np.random.Generator) -> None:
    """For values that are float64 numbers, the twin equals round_to (every mode and policy)."""
    x = np.concatenate(
        [
            rng.standard_normal(800) * np.exp2(rng.integers(-160, 140, 800).astype(float)),
            [65504.0, 65519.99, 65520.0, 464.0, 465.0, 448.0, 2.0**-25, 3 * 2.0**-26, 1 + 2.0**-11, 61440.0],
        ]
    )
    for fmt in ALL_TARGETS[1:]:
        want = round_to(x, fmt, mode)
        for v, w in zip(x.tolist(), want.tolist()):
            assert _same(_round_fraction(Fraction(v), fmt, mode), w), (v, _name(fmt), mode)


# --- exact values -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("data", ["bits", "normal", "cancel"])
def test_exact_value_matches_fraction_sum(kind: str, data: str, rng: np.random.Generator) -> None:
    for n in [0, 1, 2, 7, 513, 1500]:
        if data == "bits":
            x, y = format_values(rng, n, kind), format_values(rng, n, kind)
        elif data == "normal":
            x, y = normal_values(rng, n, kind), normal_values(rng, n, kind)
        else:
            x, y = cancelling(rng, n, kind)
        want = _exact_dot_python(x, y)
        assert exact_dot_fraction(x, y) == want, (kind, data, n)
        # every path: forced general path, carry passes after every block
        assert _exact_value(x, y, force_general=True) == want
        assert _exact_value(x, y, carry_every=1) == want


def test_exact_value_mixed_and_wide_inputs(rng: np.random.Generator) -> None:
    cases = [
        (format_values(rng, 600, "fp32"), format_values(rng, 600, "float64")),  # > 53 bits
        (
            format_values(rng, 600, "bf16").astype(np.float64),
            format_values(rng, 600, "fp16").astype(np.float16),
        ),
        (np.array([2.0**-1074, 2.0**-1060, 5e-324]), np.array([0.5, 2.0**-20, 3.0])),  # underflowing products
        (np.array([3 * 2.0**-600, 5 * 2.0**-590, 2.0**-1]), np.array([7 * 2.0**-475, 2.0**-470, 1.0])),  # underflow
        (np.array([1e308, 1e308, -1e308]), np.array([10.0, 1.0, 10.0])),  # overflowing products
        (
            np.array([2.0**127, 2.0**-133, -(2.0**127)], dtype=np.float32),
            np.array([2.0**127, 1.0, 2.0**127], dtype=np.float32),
        ),
        (np.arange(1, 200, dtype=np.int32), np.arange(1, 200, dtype=np.int64)),
    ]
    for bits_x, bits_y in [(26, 27), (27, 27), (27, 26), (1, 53), (2, 52)]:  # products of 53 and 54 bits
        mx = rng.integers(1 << (bits_x - 1), 1 << bits_x, 700) | 1
        my = rng.integers(1 << (bits_y - 1), 1 << bits_y, 700) | 1
        sx = rng.integers(-40, 40, 700)
        cases.append(
            (np.ldexp(mx.astype(float), sx) * rng.choice([-1, 1], 700), np.ldexp(my.astype(float), -sx))
        )
    for x, y in cases:
        assert exact_dot_fraction(x, y) == _exact_dot_python(
            np.asarray(x, np.float64), np.asarray(y, np.float64)
        )


@pytest.mark.parametrize("kind", ["fp16", "fp32"])
def test_long_vectors(kind: str, rng: np.random.Generator) -> None:
    n = 100_000
    x, y = normal_values(rng, n, kind), normal_values(rng, n, kind)
    x[::97] *= 2.0**20  # wide range: several levels per block
    x[::89] = 0.0
    want = _exact_dot_python(x, y)
    assert exact_dot_fraction(x, y) == want
    assert exact_dot(x, y) == float(want)
    assert exact_dot(x, y, "fp16", "up") == _round_fraction(want, "fp16", "up")
    xs, ys = cancelling(rng, n, kind)
    assert exact_dot_fraction(xs, ys) == _exact_dot_python(xs, ys)


def test_mp_dot_is_exact_and_agrees(rng: np.random.Generator) -> None:
    for kind in ["fp16", "bf16", "fp32"]:
        for data in ["bits", "normal"]:
            gen = format_values if data == "bits" else normal_values
            x, y = gen(rng, 1024, kind), gen(rng, 1024, kind)
            s = mp_dot(x, y, as_mpf=True)
            man, exp = s.man_exp  # |mantissa| and exponent
            value = Fraction(abs(int(man))) * Fraction(2) ** int(exp)
            assert (-value if s < 0 else value) == exact_dot_fraction(x, y)
            if data == "normal":  # float64 normal range: mpmath's float() rounds once
                assert mp_dot(x, y) == exact_dot(x, y)


# --- correct rounding ---------------------------------------------------------------------


def _tie_cases(rng: np.random.Generator, fmt: object) -> list[tuple[np.ndarray, np.ndarray]]:
    """fp32 inputs whose exact sum is t + u/2 (+-2**-40 u, or exactly): ties and near-ties of the
    target format, including at its overflow threshold and in its subnormal range."""
    f = get_format(fmt) if fmt is not None else None  # type: ignore[arg-type]
    cases = []
    tops = [1.0, 3.0, 1.5 * 2.0**-13] if f is None else [1.0, 3.0, f.max, f.min_normal, f.min_subnormal * 5]
    for t in tops:
        u = f.ulp(t) if f is not None else math.ulp(t)
        for sign in [1.0, -1.0]:
            for d in [0.0, 2.0**-40, -(2.0**-40)]:
                x = np.array([t, u / 2, d * u, -t / 4, t / 4], dtype=np.float64) * sign
                y = np.ones(5)
                perm = rng.permutation(5)
                cases.append((x[perm], y[perm]))
    return cases


@pytest.mark.parametrize("fmt", IEEE_TARGETS, ids=_name)
@pytest.mark.parametrize("mode", list(GMPY_MODES))
def test_exact_dot_rounding_matches_gmpy2(fmt: object, mode: str, rng: np.random.Generator) -> None:
    cases = _tie_cases(rng, fmt)
    for kind in ["fp16", "bf16", "e5m2"]:
        for scale in [0, -20, 20, -120, 110]:
            x, y = normal_values(rng, 700, kind), normal_values(rng, 700, kind)
            cases.append((np.ldexp(x.astype(np.float64), scale), y))
        cases.append(cancelling(rng, 300, kind))
        cases.append((format_values(rng, 50, kind), format_values(rng, 50, kind)))
    for x, y in cases:
        q = _exact_dot_python(x, y)
        assert isinstance(q, Fraction)
        got = exact_dot(x, y, fmt, mode)
        want = gmpy2_round(q, fmt, mode)
        assert _same(got, want), (float(q), _name(fmt), mode, got, want)


@pytest.mark.parametrize("fmt", ALL_TARGETS, ids=_name)
def test_exact_dot_all_modes_match_twin(fmt: object, rng: np.random.Generator) -> None:
    for mode in MODES:
        for scale in [-30, 0, 9, 16, 127]:
            x = np.ldexp(normal_values(rng, 300, "fp16").astype(np.float64), scale)
            y = normal_values(rng, 300, "bf16")
            got = exact_dot(x, y, fmt, mode)
            want = _round_fraction(_exact_dot_python(x, y), fmt, mode)
            assert _same(got, want), (_name(fmt), mode, scale, got, want)
        for x, y in _tie_cases(rng, fmt):
            assert _same(exact_dot(x, y, fmt, mode), _round_fraction(_exact_dot_python(x, y), fmt, mode))


@pytest.mark.parametrize("mode", MODES)
def test_single_value_equals_round_to(mode: str, rng: np.random.Generator) -> None:
    """exact_sum of one float64 value is round_to of it (the rounding module as oracle)."""
    x = rng.standard_normal(400) * np.exp2(rng.integers(-150, 140, 400).astype(float))
    for fmt in ALL_TARGETS[1:]:
        want = round_to(x, fmt, mode)
        for v, w in zip(x, want):
            assert _same(exact_sum(np.array([v]), fmt, mode), w), (v, _name(fmt), mode)


# --- special values -----------------------------------------------------------------------


INF, NAN = math.inf, math.nan


@pytest.mark.parametrize(
    "x, y, want",
    [
        ([INF, 1.0], [1.0, 1.0], INF),
        ([INF, 1.0], [-2.0, 1e300], -INF),
        ([INF, -INF], [1.0, 1.0], NAN),
        ([INF, 5.0], [0.0, 1.0], NAN),
        ([NAN, 1.0], [0.0, 1.0], NAN),
        ([1.0, 2.0], [NAN, 3.0], NAN),
        ([INF, INF], [1.0, 2.0], INF),
        ([1e308, 1e308, 1e308], [10.0, 10.0, 10.0], INF),  # finite exact sum above float64
        ([0.0, -0.0], [-0.0, -5.0], 0.0),
        ([], [], 0.0),
    ],
)
def test_ieee_specials(x: list, y: list, want: float) -> None:
    xs, ys = np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)
    assert _same(exact_dot(xs, ys), want)
    with np.errstate(over="ignore"):
        x32, y32 = xs.astype(np.float32), ys.astype(np.float32)
    if np.array_equal(x32, xs, equal_nan=True) and np.array_equal(y32, ys, equal_nan=True):
        assert _same(exact_dot(x32, y32), want)
    pad = np.ones(700)  # the special in a long vector, at every block position
    for pos in [0, 511, 512, 1000]:
        bx = np.concatenate([pad[:pos], xs, pad[pos:]])
        by = np.concatenate([pad[:pos] * 0.5, ys, pad[pos:] * 0.25])
        got = exact_dot(bx, by)
        twin = _exact_dot_python(bx, by)
        assert _same(got, twin if isinstance(twin, float) else _round_fraction(twin))


def test_specials_follow_format_policy() -> None:
    x, y = np.array([INF, 1.0]), np.array([1.0, 1.0])
    assert exact_dot(x, y, "fp16") == INF
    assert math.isnan(exact_dot(x, y, "fp8_e4m3fn"))
    assert exact_dot(-x, y, get_format("fp8_e4m3fn").with_(overflow="saturate")) == -448.0
    big = np.array([1e308, 1e308, 1e308])
    assert exact_dot(big, np.full(3, 10.0), None, "toward-zero") == sys.float_info.max
    assert exact_dot(big, np.full(3, -10.0), None, "up") == -sys.float_info.max
    with pytest.raises(ValueError, match="inf"):
        exact_dot_fraction(x, y)


def test_no_intermediate_overflow_and_cancellation() -> None:
    assert exact_dot([1e308, 1e308, -1e308], [10.0, 1.0, 10.0]) == 1e308
    bf_max = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    x = np.array([bf_max, 2.0**-133, -bf_max], dtype=np.float32)
    assert exact_dot(x, np.array([bf_max, 2.0**-133, bf_max], dtype=np.float32)) == 2.0**-266
    assert exact_dot(x, np.array([bf_max, 2.0**-133, bf_max], dtype=np.float32), "bf16", "up") == 2.0**-133
    # float64 products below the subnormal range: exact sum 2**-1075 is a tie between 0 and 2**-1074
    assert exact_dot([2.0**-1074], [0.5]) == 0.0
    assert exact_dot([2.0**-1074, 2.0**-1074], [0.5, 2.0**-60]) == 2.0**-1074
    assert exact_dot([2.0**-1074], [0.5], None, "up") == 2.0**-1074


# --- matrix products and sums -------------------------------------------------------------


def _matmul_by_dots(A: np.ndarray, B: np.ndarray, fmt: object, mode: str) -> np.ndarray:
    out = np.empty((A.shape[0], B.shape[1]))
    for i in range(A.shape[0]):
        for j in range(B.shape[1]):
            out[i, j] = exact_dot(A[i], np.ascontiguousarray(B[:, j]), fmt, mode)
    return out


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (5, 3, 4), (7, 600, 3), (3, 0, 2), (0, 4, 3), (9, 1030, 5)])
def test_exact_matmul_matches_dots(m: int, k: int, n: int, rng: np.random.Generator) -> None:
    for kind, fmt, mode in [
        ("fp16", "fp16", "nearest-even"),
        ("bf16", None, "down"),
        ("fp32", "bf16", "odd"),
        ("float64", None, "up"),
    ]:
        A = normal_values(rng, m * k, kind).reshape(m, k)
        B = format_values(rng, k * n, kind).reshape(k, n)
        got = exact_matmul(A, B, fmt, mode)
        want = _matmul_by_dots(A, B, fmt, mode)
        assert got.shape == (m, n)
        assert all(_same(a, b) for a, b in zip(got.ravel(), want.ravel()))
        if m * n * k and m * n <= 20:  # small ones also against the Fraction twin
            for i in range(m):
                for j in range(n):
                    assert _same(got[i, j], _round_fraction(_exact_dot_python(A[i], B[:, j]), fmt, mode))


def test_exact_matmul_shapes_dtypes_specials(rng: np.random.Generator) -> None:
    A = normal_values(rng, 2 * 3 * 40, "fp16").reshape(2, 3, 40)
    B = normal_values(rng, 40 * 5, "fp16").reshape(40, 5)
    C = exact_matmul(A, B, "fp16")
    assert C.shape == (2, 3, 5) and C.dtype == np.float32
    for b in range(2):
        assert np.array_equal(C[b], exact_matmul(A[b], B, "fp16"))
    assert exact_matmul(A, B).dtype == np.float64
    assert exact_matmul(A.astype(np.float16), B.astype(np.float16), "fp16").dtype == np.float32
    v = B[:, 0].copy()
    assert np.array_equal(exact_matmul(A[0], v, "fp16"), exact_matmul(A[0], B, "fp16")[:, 0])
    assert exact_matmul(v, v, "fp16") == exact_dot(v, v, "fp16")
    A2 = A[0].astype(np.float64)
    A2[1, 7] = np.inf
    A2[2, 3] = np.nan
    C2 = exact_matmul(A2, B)
    assert np.isnan(C2[2]).all() and not np.isnan(C2[0]).any()
    assert all(_same(C2[1, j], exact_dot(A2[1], np.ascontiguousarray(B[:, j]))) for j in range(5))
    with pytest.raises(ValueError, match="align"):
        exact_matmul(A, B.T)
    with pytest.raises(ValueError, match="float64"):
        exact_matmul(A, B, None, dtype=np.float32)


def test_exact_sum(rng: np.random.Generator) -> None:
    x = cancelling(rng, 1001, "bf16")[0]
    assert exact_sum(x) == float(_exact_dot_python(x, np.ones_like(x)))
    X = normal_values(rng, 3 * 4 * 50, "fp16").reshape(3, 4, 50) * np.float32(2.0**10)
    for axis in [0, 1, 2, -1]:
        got = exact_sum(X, "fp16", "toward-zero", axis=axis)
        moved = np.moveaxis(X, axis, -1)
        assert got.shape == moved.shape[:-1]
        for idx in np.ndindex(*got.shape):
            want = _round_fraction(sum(Fraction(float(v)) for v in moved[idx]), "fp16", "toward-zero")
            assert _same(float(got[idx]), want)


def test_errors() -> None:
    with pytest.raises(ValueError, match="nearest-even"):
        exact_dot([1.0], [1.0], "fp16", "stochastic")
    with pytest.raises(ValueError, match="valid modes"):
        exact_dot([1.0], [1.0], "fp16", "sideways")
    with pytest.raises(ValueError, match="known formats"):
        exact_dot([1.0], [1.0], "fp17")
    with pytest.raises(ValueError, match="same length"):
        exact_dot([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="1-D"):
        exact_dot(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(TypeError):
        exact_dot(np.array(["a"]), np.array(["b"]))
    with pytest.raises(ValueError, match="2\\*\\*53"):
        exact_dot(np.array([2**60]), np.array([1]))


def test_import_is_cheap() -> None:
    code = "import sys, fpanalysis.reference; print([m in sys.modules for m in ('fpanalysis._kernels.exact', 'numba', 'mpmath')])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[False, False, False]"


# --- mpmath references --------------------------------------------------------------------

MP_FUNCS = {
    "exp": (mp_exp, np.exp),
    "log": (mp_log, np.log),
    "tanh": (mp_tanh, np.tanh),
    "erf": (mp_erf, None),
    "gelu": (mp_gelu, None),
    "sigmoid": (mp_sigmoid, lambda v: 1.0 / (1.0 + np.exp(-v))),
    "silu": (mp_silu, lambda v: v / (1.0 + np.exp(-v))),
    "rsqrt": (mp_rsqrt, lambda v: 1.0 / np.sqrt(v)),
}


@pytest.mark.parametrize("name", list(MP_FUNCS))
def test_mp_elementwise(name: str, rng: np.random.Generator) -> None:
    import scipy.special

    f, ref = MP_FUNCS[name]
    if name == "erf":
        ref = scipy.special.erf
    if name == "gelu":
        ref = lambda v: v / 2 * scipy.special.erfc(-v / np.sqrt(2))
    x = rng.standard_normal(200) * 4
    if name in ("log", "rsqrt"):
        x = np.abs(x) * np.exp2(rng.integers(-30, 30, 200).astype(float))
    prec_before = mpmath.mp.prec
    y = f(x)
    assert mpmath.mp.prec == prec_before  # precision is scoped, never set globally
    assert y.shape == x.shape and y.dtype == np.float64
    # numpy/scipy (accurate to a few ulp) as an independent oracle
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(y, ref(x), rtol=1e-14, atol=1e-300)
    # the float64 result does not depend on the working precision
    assert np.array_equal(y, f(x, prec=300))
    m = f(x[:3], as_mpf=True)
    assert all(isinstance(v, mpmath.mpf) for v in m)
    mpmath.mp.prec = 30  # a user's global setting is neither used nor changed
    try:
        assert np.array_equal(f(x), y) and mpmath.mp.prec == 30
    finally:
        mpmath.mp.prec = prec_before


def test_mp_special_values() -> None:
    sp = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0])
    np.testing.assert_array_equal(mp_exp(sp), [np.inf, 0.0, np.nan, 1.0, 1.0])
    np.testing.assert_array_equal(
        mp_log(np.array([np.inf, -1.0, 0.0, -0.0, 1.0])), [np.inf, np.nan, -np.inf, -np.inf, 0.0]
    )
    np.testing.assert_array_equal(mp_tanh(sp[:2]), [1.0, -1.0])
    np.testing.assert_array_equal(mp_gelu(sp[:2]), [np.inf, 0.0])
    np.testing.assert_array_equal(mp_sigmoid(sp[:2]), [1.0, 0.0])
    np.testing.assert_array_equal(mp_silu(sp[:2]), [np.inf, 0.0])
    np.testing.assert_array_equal(
        mp_rsqrt(np.array([np.inf, 0.0, -0.0, -4.0, 4.0])), [0.0, np.inf, -np.inf, np.nan, 0.5]
    )
    assert math.copysign(1.0, mp_tanh(-0.0)) == -1.0
    import scipy.special

    g = mp_gelu(-30.0)  # erfc form: no cancellation, a tiny negative number, not 0
    assert g < 0 and math.isclose(g, -15.0 * scipy.special.erfc(30.0 / math.sqrt(2.0)), rel_tol=1e-11)


def test_mp_softmax(rng: np.random.Generator) -> None:
    x = rng.standard_normal((4, 7)) * 10
    s = mp_softmax(x)
    ls = mp_log_softmax(x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(s, e / e.sum(axis=1, keepdims=True), rtol=1e-14)
    np.testing.assert_allclose(ls, np.log(s), rtol=1e-13)
    np.testing.assert_allclose(mp_softmax(x.T, axis=0), s.T, rtol=0)
    masked = mp_softmax(np.array([[0.0, -np.inf, 0.0], [np.nan, 1.0, 2.0], [-np.inf, -np.inf, -np.inf]]))
    np.testing.assert_array_equal(masked[0], [0.5, 0.0, 0.5])
    assert np.isnan(masked[1:]).all()
    assert mp_log_softmax(np.array([0.0, -np.inf]))[1] == -np.inf

"""fpanalysis.testing.strategies: values are of the requested class, checked independently.

The oracle classifies a float with the format's own storage type (numpy float16/float32,
ml_dtypes bfloat16/float8) and that type's ``finfo`` and ``nextafter``; formats without a
storage type (tf32, a custom format) use ``math.frexp`` and Fractions.
"""
from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from fpanalysis.formats import FloatFormat
from fpanalysis.testing import strategies as fst

DTYPES = {
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "fp32": np.float32,
    "fp8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
}
CUSTOM = FloatFormat("fp12-ftz", p=7, emin=-14, emax=15, subnormals=False)
# (p, emin, emax, subnormals, max) for the formats without a storage type, written out by hand
SPECS = {"tf32": (11, -126, 127, True, (2 - 2.0**-10) * 2.0**127), "fp12-ftz": (7, -14, 15, False, (2 - 2.0**-6) * 2.0**15)}
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _spec_from_dtype(name: str) -> tuple[int, int, int, bool, float]:
    fi = ml_dtypes.finfo(DTYPES[name])
    return fi.nmant + 1, fi.minexp, fi.maxexp - 1, True, float(fi.max)


def spec(name: str) -> tuple[int, int, int, bool, float]:
    return _spec_from_dtype(name) if name in DTYPES else SPECS[name]


def representable(x: float, name: str) -> bool:
    if not math.isfinite(x):
        return False
    if name in DTYPES:
        with np.errstate(over="ignore", invalid="ignore"):
            return float(DTYPES[name](x)) == x
    p, emin, _emax, subn, mx = SPECS[name]
    if x == 0:
        return True
    m, e = math.frexp(abs(x))  # |x| = m 2**e, 0.5 <= m < 1: exponent e - 1
    if abs(x) > mx:
        return False
    if e - 1 < emin:
        return subn and (Fraction(abs(x)) / Fraction(2) ** (emin - p + 1)).denominator == 1
    return (Fraction(m) * 2**p).denominator == 1


def is_tie(x: float, name: str) -> bool:
    """x lies exactly halfway between two adjacent numbers of the format (or is the midpoint
    between the largest finite number and the next power-of-two step above it)."""
    if not math.isfinite(x) or representable(x, name):
        return False
    p, emin, _emax, subn, mx = spec(name)
    a = abs(x)
    if a > mx:
        step = mx - _below(mx, name)
        return a == mx + step / 2
    if name in DTYPES:
        dt = DTYPES[name]
        v = dt(a)
        toward = dt(mx) if float(v) < a else dt(0.0)
        n = float(np.nextafter(np.array([v], dtype=dt), np.array([toward], dtype=dt))[0])
        return a == (float(v) + n) / 2
    spacing = 2.0 ** (max(math.frexp(a)[1] - 1, emin) - p + 1)
    if not subn and a < 2.0**emin:
        return False
    k = Fraction(a) / Fraction(spacing)
    return k.denominator == 2


def _below(v: float, name: str) -> float:
    if name in DTYPES:
        dt = DTYPES[name]
        return float(np.nextafter(np.array([v], dtype=dt), np.array([0.0], dtype=dt))[0])
    p = spec(name)[0]
    return v - 2.0 ** (math.frexp(v)[1] - 1 - p + 1)


def classify(x: float, name: str) -> set[str]:
    _p, emin, emax, _subn, _mx = spec(name)
    if math.isnan(x):
        return {"nan"}
    if math.isinf(x):
        return {"inf"}
    if x == 0:
        return {"zero"}
    if is_tie(x, name):
        return {"tie"}
    if not representable(x, name):
        return {"not in format"}
    if abs(x) < 2.0**emin:
        return {"subnormal"}
    out = {"normal"}
    if abs(x) >= 2.0**emax:
        out.add("near_overflow")
    return out


FORMAT_NAMES = ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "fp32", "tf32", "fp12-ftz"]


def fmt_of(name: str) -> str | FloatFormat:
    return CUSTOM if name == "fp12-ftz" else name


def _available(name: str) -> list[str]:
    out = ["normal", "near_overflow", "tie", "zero", "nan"]
    if spec(name)[3]:
        out.append("subnormal")
    if name != "fp8_e4m3fn":
        out.append("inf")
    return out


CASES = [(n, c) for n in FORMAT_NAMES for c in _available(n)]


@pytest.mark.parametrize("name, cls", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_values_are_only_of_the_requested_class(name: str, cls: str) -> None:
    @FAST
    @given(fst.values(fmt_of(name), classes=(cls,)))
    def check(x: float) -> None:
        assert cls in classify(x, name), f"{x!r} classified as {classify(x, name)}, wanted {cls}"

    check()


@pytest.mark.parametrize("sign", ["positive", "negative"])
def test_sign_option(sign: str) -> None:
    @FAST
    @given(fst.values("fp16", classes=("normal", "subnormal", "tie", "zero", "inf"), sign=sign))
    def check(x: float) -> None:
        assert math.copysign(1.0, x) == (1.0 if sign == "positive" else -1.0)

    check()


def _collect(strategy: st.SearchStrategy[float]) -> set[float]:
    seen: set[float] = set()

    @settings(max_examples=2000, derandomize=True, database=None, deadline=None)
    @given(strategy)
    def collect(v: float) -> None:
        seen.add(v)

    collect()
    return seen


@pytest.mark.parametrize("name", ["fp8_e5m2", "fp8_e4m3fn"])
def test_values_cover_every_member_of_small_formats(name: str) -> None:
    """Every positive normal, subnormal and tie of an 8-bit format is produced (enumerated
    independently from the 256 bit patterns with ml_dtypes), edges included: the largest
    finite number, the smallest subnormal, the tie above max (overflow threshold)."""
    dt = DTYPES[name]
    allv = np.arange(256, dtype=np.uint8).view(dt).astype(np.float64)
    pos = np.unique(allv[np.isfinite(allv) & (allv > 0)])
    fi = ml_dtypes.finfo(dt)
    nonneg = np.concatenate([[0.0], pos])
    expected = {
        "normal": set(pos[pos >= float(fi.smallest_normal)].tolist()),
        "subnormal": set(pos[pos < float(fi.smallest_normal)].tolist()),
        "tie": set(((nonneg[:-1] + nonneg[1:]) / 2).tolist()) | {float(fi.max) + (pos[-1] - pos[-2]) / 2},
    }
    for cls, want in expected.items():
        seen = _collect(fst.values(name, classes=(cls,), sign="positive"))
        assert seen == want, f"{cls}: missing {sorted(want - seen)[:5]}, extra {sorted(seen - want)[:5]}"


def test_default_classes_cover_every_class_of_the_format() -> None:
    cfg = settings(max_examples=3000, derandomize=True, database=None)
    for name in ("fp8_e5m2", "fp8_e4m3fn"):
        for cls in _available(name):
            find(fst.values(name), lambda v, c=cls, fmt=name: c in classify(v, fmt), settings=cfg)
    with pytest.raises(NoSuchExample):  # E4M3FN has no infinities: the default never produces one
        find(fst.values("fp8_e4m3fn"), lambda v: math.isinf(v), settings=settings(max_examples=300, database=None))


def test_invalid_requests_name_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="valid classes are: normal, subnormal, near_overflow, tie, zero, inf, nan"):
        fst.values("fp16", classes=("denormal",))
    with pytest.raises(ValueError, match="'fp8_e4m3fn' has no infinities.*available for it are"):
        fst.values("fp8_e4m3fn", classes=("inf",))
    with pytest.raises(ValueError, match="has no subnormals"):
        fst.values(CUSTOM, classes=("subnormal",))
    with pytest.raises(ValueError, match="valid signs are"):
        fst.values("fp16", sign="both")
    with pytest.raises(ValueError, match="float16 holds the fp16 numbers only"):
        fst.arrays_of("bf16", 3, dtype=np.float16)
    with pytest.raises(ValueError, match="known formats are"):
        fst.values("fp17")


@FAST
@given(fst.arrays_of("fp16", (3, 5), dtype=np.float16))
def test_arrays_of_shape_dtype_and_membership(a: np.ndarray) -> None:
    assert a.shape == (3, 5) and a.dtype == np.float16
    for v in a.ravel().tolist():
        assert classify(v, "fp16") & {"normal", "subnormal", "zero"}


@FAST
@given(fst.arrays_of("bf16", st.integers(1, 6), classes=("tie",)))
def test_arrays_of_ties(a: np.ndarray) -> None:
    assert a.ndim == 1 and 1 <= a.size <= 6 and a.dtype == np.float64
    assert all(classify(v, "bf16") == {"tie"} for v in a.tolist())


def _exact_dot(x: np.ndarray, y: np.ndarray) -> tuple[Fraction, Fraction]:
    s = sum((Fraction(a) * Fraction(b) for a, b in zip(x.tolist(), y.tolist())), Fraction(0))
    sa = sum((abs(Fraction(a) * Fraction(b)) for a, b in zip(x.tolist(), y.tolist())), Fraction(0))
    return s, sa


VEC_FORMATS = ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"]


@pytest.mark.parametrize("name", VEC_FORMATS)
def test_same_sign_vectors(name: str) -> None:
    emax = spec(name)[2]

    @FAST
    @given(fst.same_sign_vectors(name, max_n=40))
    def check(xy: tuple[np.ndarray, np.ndarray]) -> None:
        x, y = xy
        assert x.shape == y.shape and 1 <= x.size <= 40
        assert all(representable(v, name) for v in x.tolist() + y.tolist())
        assert (x > 0).all() and (y > 0).all()
        _, sa = _exact_dot(x, y)
        assert sa < 2**emax  # no overflow, whatever the order of summation

    check()


@pytest.mark.parametrize("name", VEC_FORMATS)
def test_cancellation_vectors(name: str) -> None:
    p, *_ = spec(name)

    @FAST
    @given(fst.cancellation_vectors(name, max_n=40))
    def check(xy: tuple[np.ndarray, np.ndarray]) -> None:
        x, y = xy
        assert x.shape == y.shape and x.size % 2 == 0 and 2 <= x.size <= 40
        assert all(representable(v, name) for v in x.tolist() + y.tolist())
        s, sa = _exact_dot(x, y)
        assert sa > 0 and abs(s) <= Fraction(2) ** (1 - p) * sa

    check()


@pytest.mark.parametrize("name", VEC_FORMATS)
def test_wide_range_vectors(name: str) -> None:
    p, emin, emax, _, _ = spec(name)
    S = emax - math.ceil(math.log2(40)) - 2

    @FAST
    @given(fst.wide_range_vectors(name, max_n=40))
    def check(xy: tuple[np.ndarray, np.ndarray]) -> None:
        x, y = xy
        assert x.shape == y.shape and 2 <= x.size <= 40
        assert all(representable(v, name) for v in x.tolist() + y.tolist())
        ax = np.abs(x)
        assert ax.min() < 2.0 ** (emin - p + 2)  # the smallest binade: the smallest subnormal
        assert "subnormal" in classify(float(ax.min()), name)
        assert ax.max() >= 2.0 ** (S // 2)
        _, sa = _exact_dot(x, y)
        assert sa < 2**emax

    check()


def test_fixed_length_and_length_errors() -> None:
    @settings(max_examples=10, deadline=None)
    @given(fst.cancellation_vectors("fp16", n=6), fst.same_sign_vectors("fp16", n=3))
    def check(c: tuple[np.ndarray, np.ndarray], s: tuple[np.ndarray, np.ndarray]) -> None:
        assert c[0].size == 6 and s[0].size == 3

    check()
    with pytest.raises(ValueError, match="even"):
        fst.cancellation_vectors("fp16", n=5)

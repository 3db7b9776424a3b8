"""FloatFormat presets field by field against numpy.finfo / ml_dtypes.finfo, custom formats,
input validation and name lookup."""
from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from fpanalysis import FloatFormat, RoundingMode, from_bits, get_format, round_to, to_bits
from fpanalysis.formats import FORMATS, Overflow, format_names

# preset name -> the numpy/ml_dtypes type that defines it
REFERENCE = {
    "fp16": np.float16,
    "fp32": np.float32,
    "bf16": ml_dtypes.bfloat16,
    "fp8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
}


def _finfo(t: type) -> object:
    return np.finfo(t) if t in (np.float16, np.float32) else ml_dtypes.finfo(t)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_preset_fields_match_finfo(name: str) -> None:
    f = get_format(name)
    fi = _finfo(REFERENCE[name])
    assert f.p == fi.nmant + 1
    assert f.emin == fi.minexp
    assert f.exponent_bits == fi.nexp
    assert f.total_bits == fi.bits
    assert f.max == float(fi.max)
    assert f.min_normal == float(fi.smallest_normal)
    assert f.min_subnormal == float(fi.smallest_subnormal)
    assert f.eps == float(fi.eps)
    assert f.u == float(fi.eps) / 2
    assert f.subnormals
    # emax: the exponent of the largest finite number
    assert f.emax == int(np.frexp(float(fi.max))[1]) - 1
    # overflow policy: E4M3FN has no infinity (ml_dtypes: overflow -> NaN), the others do
    with np.errstate(over="ignore", invalid="ignore"):
        big = np.array([np.inf], dtype=np.float32).astype(REFERENCE[name]).astype(np.float64)[0]
    expect = {True: Overflow.NAN, False: Overflow.INF}[bool(np.isnan(big))]
    assert f.overflow is expect
    assert f.has_inf == bool(np.isinf(big))


def test_tf32_fields() -> None:
    """TF32: 8 exponent bits (fp32 range) and fp16's 10 fraction bits (NVIDIA A100 whitepaper)."""
    f = get_format("tf32")
    assert (f.p, f.emin, f.emax, f.exponent_bits, f.total_bits) == (11, -126, 127, 8, 19)
    assert Fraction(f.max) == (2 - Fraction(1, 2**10)) * 2**127
    assert Fraction(f.min_subnormal) == Fraction(1, 2 ** (126 + 10))
    assert f.u == 2.0**-11


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"])
def test_ulp_matches_spacing_of_reference_type(name: str) -> None:
    """fmt.ulp(v) is the distance to the next larger number, for every positive finite number
    (the numbers listed in order from the reference type's bit patterns)."""
    f = get_format(name)
    t = REFERENCE[name]
    nbits = 16 if f.total_bits == 16 else 8
    u = np.arange(1 << (nbits - 1), dtype=np.uint32).astype(np.uint16 if nbits == 16 else np.uint8)
    with np.errstate(invalid="ignore"):
        v = u.view(t).astype(np.float64)
    v = np.sort(v[np.isfinite(v)])
    gaps = np.diff(v)
    for x, g in zip(v[:-1], gaps):
        assert f.ulp(x) == g, (x, f.ulp(x), g)


def test_custom_format_fields() -> None:
    f = FloatFormat("my", p=7, emin=-14, emax=15)
    assert Fraction(f.max) == (2 - Fraction(1, 2**6)) * 2**15
    assert f.min_subnormal == 2.0 ** (-14 - 6)
    assert FloatFormat("ftz", p=7, emin=-14, emax=15, subnormals=False).min_subnormal == 2.0**-14
    same_as_fp16 = FloatFormat("other-name", p=11, emin=-14, emax=15, exponent_bits=5)
    fp16 = get_format("fp16")
    for attr in ("p", "emin", "emax", "max", "min_normal", "min_subnormal", "u", "eps", "total_bits"):
        assert getattr(same_as_fp16, attr) == getattr(fp16, attr), attr
    # a custom format that copies fp16 rounds and encodes exactly like fp16
    x = np.array([1 + 2**-11, 65520.0, 3 * 2**-26, -0.1])
    np.testing.assert_array_equal(round_to(x, same_as_fp16), round_to(x, fp16))
    with np.errstate(over="ignore"):
        ref_bits = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(to_bits(x, same_as_fp16), ref_bits)
    e4 = FloatFormat("e4m3-like", p=4, emin=-6, emax=8, overflow="nan", max_significand=1.75, exponent_bits=4)
    assert e4.max == 448.0
    bits = np.arange(256, dtype=np.uint32).astype(np.uint8)
    with np.errstate(invalid="ignore"):
        ref = bits.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    got = from_bits(bits, e4)
    assert np.all((got == ref) | (np.isnan(got) & np.isnan(ref)))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(p=1, emin=-14, emax=15), ["precision", "p"]),
        (dict(p=54, emin=-14, emax=15), ["precision"]),
        (dict(p=7.0, emin=-14, emax=15), ["precision"]),
        (dict(p=7, emin=1, emax=15), ["emin"]),
        (dict(p=7, emin=-14, emax=0), ["emax"]),
        (dict(p=7, emin=-14.0, emax=15), ["emin", "integers"]),
        (dict(p=7, emin=-14, emax=15, overflow="wrap"), ["overflow", "inf", "saturate", "nan"]),
        (dict(p=7, emin=-14, emax=15, max_significand=2.5), ["max_significand"]),
        (dict(p=7, emin=-14, emax=15, max_significand=1.3), ["max_significand"]),
        (dict(p=24, emin=-1010, emax=15), ["exponent range"]),
        (dict(p=24, emin=-14, emax=2000), ["exponent range"]),
    ],
)
def test_bad_format_parameters_raise_helpful_errors(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        FloatFormat("bad", **kwargs)
    msg = str(info.value)
    if "overflow" not in kwargs:
        assert "bad" in msg  # names the format
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("alias, name", [
    ("fp16", "fp16"), ("half", "fp16"), ("float16", "fp16"), ("binary16", "fp16"), ("  FP16 ", "fp16"),
    ("bf16", "bf16"), ("bfloat16", "bf16"), ("BFloat16", "bf16"),
    ("fp32", "fp32"), ("float32", "fp32"), ("single", "fp32"), ("binary32", "fp32"),
    ("tf32", "tf32"),
    ("e4m3", "fp8_e4m3fn"), ("e4m3fn", "fp8_e4m3fn"), ("fp8-e4m3fn", "fp8_e4m3fn"), ("float8_e4m3fn", "fp8_e4m3fn"),
    ("e5m2", "fp8_e5m2"), ("fp8-e5m2", "fp8_e5m2"), ("float8_e5m2", "fp8_e5m2"),
])
def test_get_format_aliases(alias: str, name: str) -> None:
    assert get_format(alias) is FORMATS[name]


def test_get_format_errors() -> None:
    with pytest.raises(ValueError) as info:
        get_format("fp17")
    for name in format_names():
        assert name in str(info.value)
    with pytest.raises(TypeError):
        get_format(16)  # type: ignore[arg-type]
    f = FloatFormat("x", p=5, emin=-6, emax=7)
    assert get_format(f) is f
    assert format_names() == list(FORMATS) and set(FORMATS) >= set(REFERENCE) | {"tf32"}


def test_mode_and_round_to_argument_errors() -> None:
    with pytest.raises(ValueError, match="nearest-even"):
        RoundingMode.parse("banker")
    assert RoundingMode.parse("RNE") is RoundingMode.NEAREST_EVEN
    assert RoundingMode.parse("round_to_odd") is RoundingMode.ODD
    with pytest.raises(ValueError, match="valid modes"):
        round_to(1.0, "fp16", "sideways")
    with pytest.raises(ValueError, match="seed"):
        round_to(1.0, "fp16", "stochastic")
    with pytest.raises(ValueError, match="random_bits"):
        round_to(1.0, "fp16", "stochastic", seed=0, random_bits=0)
    with pytest.raises(ValueError, match="random_bits"):
        round_to(1.0, "fp16", "nearest-even", random_bits=4)
    with pytest.raises(ValueError, match="float32"):
        round_to(np.ones(3), "fp32", dtype=np.int32)
    with pytest.raises(ValueError, match="float32 cannot hold"):
        round_to(np.ones(3), FloatFormat("wide", p=30, emin=-200, emax=200), dtype=np.float32)
    with pytest.raises(ValueError, match="unknown format"):
        round_to(1.0, "fp12")


def test_encoding_errors() -> None:
    with pytest.raises(ValueError, match="exponent_bits"):
        to_bits([1.0], FloatFormat("noenc", p=5, emin=-6, emax=7))
    with pytest.raises(ValueError, match="16-bit"):
        from_bits(np.array([1 << 16]), "fp16")
    with pytest.raises(ValueError):
        from_bits(np.array([-1]), "fp16")
    with pytest.raises(TypeError):
        from_bits(np.array([1.5]), "fp16")
    with pytest.raises(ValueError, match="layout"):
        to_bits([1.0], FloatFormat("odd-layout", p=5, emin=-6, emax=9, exponent_bits=4))

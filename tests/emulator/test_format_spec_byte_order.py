"""Custom formats written as ``p=...,emin=...,emax=...`` specs (every command's --format), and
arrays in non-native byte order at the public entry points (issue 12 §3)."""
from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from fpanalysis import linalg, ops, reference
from fpanalysis.formats import BF16, FP8_E5M2, FP16, Overflow, get_format
from fpanalysis.rounding import round_to, to_bits

# --- format specs ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, preset", [("p=11,emin=-14,emax=15", FP16), (" P=8 , EMIN=-126, emax=127 ", BF16),
                                          ("p=3,emin=-14,emax=15,subnormals=1,overflow=inf", FP8_E5M2)])
def test_spec_of_a_preset_is_the_preset(spec: str, preset: object) -> None:
    assert get_format(spec) is preset


def test_spec_of_an_ieee_layout_rounds_and_encodes_like_ml_dtypes_e4m3() -> None:
    # ml_dtypes.float8_e4m3 is the IEEE-style E4M3 (bias 7, infinities): p=4, emin=-6, emax=7
    f = get_format("p=4,emin=-6,emax=7")
    assert (f.p, f.emin, f.emax, f.subnormals, f.overflow, f.exponent_bits) == (4, -6, 7, True, Overflow.INF, 4)
    rng = np.random.default_rng(0)
    # float32 inputs: ml_dtypes converts from float32 in one rounding
    x = (rng.standard_normal(20000) * np.exp2(rng.integers(-12, 10, 20000))).astype(np.float32)
    x = np.concatenate([x, np.float32([0.0, -0.0, 240.0, 247.0, 248.0, 2.0**-9, 2.0**-10, 3 * 2.0**-11])])
    want = x.astype(ml_dtypes.float8_e4m3)
    np.testing.assert_array_equal(round_to(x, f), want.astype(np.float64))
    np.testing.assert_array_equal(to_bits(x, f), want.view(np.uint8))


def test_spec_options() -> None:
    ftz = get_format("p=11,emin=-14,emax=15,subnormals=0")
    assert (ftz.subnormals, ftz.min_subnormal, ftz.exponent_bits) == (False, 2.0**-14, None)
    assert round_to(2.0**-16, ftz) == 0.0  # flushed; fp16 keeps it as a subnormal
    assert round_to(2.0**-16, FP16) == 2.0**-16
    sat = get_format("p=11,emin=-14,emax=15,overflow=saturate")
    assert round_to(1e6, sat) == 65504.0
    assert sat.name == "p=11,emin=-14,emax=15,overflow=saturate"


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("p=11,emin=-14", "missing emax"),
        ("p=11,emin=-14,emax=15,bias=3", "unknown key 'bias'"),
        ("p=11,emin=-14,emax=1.5", "emax must be an integer"),
        ("p=11,p=11,emin=-14,emax=15", "'p' is given twice"),
        ("p=11,emin=-14,,emax=15", "is not key=value"),
        ("p=11,emin=-14,emax=15,subnormals=maybe", "subnormals must be 1 or 0"),
        ("p=11,emin=-14,emax=15,overflow=wrap", "valid policies are"),
        ("p=1,emin=-14,emax=15", "precision p must be an integer in [2, 53]"),
        ("p=11,emin=4,emax=15", "need emin"),
    ],
)
def test_malformed_specs_are_refused(spec: str, needle: str) -> None:
    with pytest.raises(ValueError) as exc:
        get_format(spec)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_name_mentions_the_spec_syntax() -> None:
    with pytest.raises(ValueError, match=r"p=P,emin=EMIN,emax=EMAX"):
        get_format("fp7")


# --- byte order --------------------------------------------------------------------------------


def _be(a: np.ndarray) -> np.ndarray:
    out = a.astype(a.dtype.newbyteorder(">" if np.little_endian else "<"))
    assert not out.dtype.isnative
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_round_to_reads_non_native_arrays(dtype: type) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(1000) * 100).astype(dtype)
    got = round_to(_be(x), "fp16")
    # numpy's own conversion to float16 (round to nearest even, one rounding) is the oracle
    np.testing.assert_array_equal(got, x.astype(np.float16).astype(got.dtype))
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(round_to(_be(x32), "bf16"), x32.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_round_to_refuses_a_non_native_out() -> None:
    with pytest.raises(ValueError, match="byte order"):
        round_to(np.ones(3), "fp16", out=_be(np.empty(3)))


def test_ops_read_non_native_arrays() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal(500).astype(np.float16)
    b = rng.standard_normal(500).astype(np.float16)
    # fp16 a + b: the float64 sum of two fp16 numbers is exact, numpy rounds it once to fp16
    want = (a.astype(np.float64) + b.astype(np.float64)).astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(np.asarray(ops.add(_be(a), _be(b), "fp16"), dtype=np.float64), want)


def test_linalg_and_reference_read_non_native_arrays() -> None:
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 6)).astype(np.float16)
    B = rng.standard_normal((6, 3)).astype(np.float16)
    # the exact products summed as Fractions, rounded once by numpy (float64 holds each sum
    # exactly: fp16 products have 22 significant bits over a small exponent range)
    exact = np.array([[float(sum(Fraction(float(A[i, k])) * Fraction(float(B[k, j])) for k in range(6)))
                       for j in range(3)] for i in range(4)])
    want = exact.astype(np.float16).astype(np.float64)
    got = linalg.matmul(_be(A), _be(B), "fp16", "exact")
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float64), want)
    np.testing.assert_array_equal(np.asarray(reference.exact_matmul(_be(A), _be(B), "fp16"), dtype=np.float64), want)
    x, y = A[0].astype(np.float64), B[:, 0].astype(np.float64)
    assert reference.exact_dot(_be(x), _be(y)) == exact[0, 0]
    assert reference.exact_sum(_be(x)) == float(sum(Fraction(float(v)) for v in x))

"""round_to in every deterministic mode against gmpy2 (MPFR) and softfloatpy, for the presets
and for formats exercising every policy (saturation, NaN on overflow, flush-to-zero)."""
from __future__ import annotations

import math
import warnings

import gmpy2
import numpy as np
import pytest
import softfloatpy as sf
from _verify_helpers import buggy_round_to, failures, native_optional

from fpanalysis import FloatFormat, get_format, round_to, to_bits
from fpanalysis import rounding as R
from fpanalysis.verify import rounding as V

CI_N = 12_000


def test_directed_all_formats_all_modes() -> None:
    rows = V.verify_directed(n=CI_N, seed=11)
    assert len(rows) >= len(V.DIRECTED_FORMATS) * 6
    assert not failures(rows, native_optional)


@pytest.mark.slow
def test_directed_million_inputs_fp16() -> None:
    rows = V.verify_directed(n=1_000_000, seed=5, formats=["fp16"])
    assert not failures(rows, native_optional)


@pytest.mark.slow
def test_directed_large_all_formats() -> None:
    assert not failures(V.verify_directed(n=200_000, seed=3), native_optional)


@pytest.mark.parametrize(
    "bug, fmt, mode",
    [
        ("ties-away", "fp16", "nearest-even"),
        ("odd-is-toward-zero", "bf16", "odd"),
        ("saturate", "fp16", "nearest-even"),
        ("saturate", "fp8_e5m2", "up"),
        ("unsigned-zero", "fp16", "down"),
        ("flush-subnormals", "bf16", "toward-zero"),
        ("nan-to-inf", "fp8_e4m3fn", "nearest-even"),
    ],
)
def test_injected_bugs_are_found(monkeypatch: pytest.MonkeyPatch, bug: str, fmt: str, mode: str) -> None:
    monkeypatch.setattr(R, "round_to", buggy_round_to(bug))
    rows = V.verify_directed(n=4000, seed=2, formats=[fmt], modes=[mode])
    value_rows = [r for r in rows if r["check"] == "round_to"]
    assert value_rows and all(r["mismatches"] > 0 for r in value_rows), rows
    assert all(r["first_mismatch"] for r in value_rows)


# Hand-checked values: (format, mode, input, expected), from the definitions of the formats.
CASES = [
    ("fp16", "nearest-even", 1 + 2**-11, 1.0),  # tie, to even
    ("fp16", "nearest-even", 1 + 3 * 2**-11, 1 + 2**-9),  # tie, to even (up)
    ("fp16", "nearest-away", 1 + 2**-11, 1 + 2**-10),
    ("fp16", "nearest-away", -(1 + 2**-11), -(1 + 2**-10)),
    ("fp16", "toward-zero", -(1 + 2**-11), -1.0),
    ("fp16", "up", 1 + 2**-40, 1 + 2**-10),
    ("fp16", "up", -(1 + 2**-40), -1.0),
    ("fp16", "down", -(1 + 2**-40), -(1 + 2**-10)),
    ("fp16", "odd", 1 + 2**-11, 1 + 2**-10),
    ("fp16", "odd", 1 + 2**-10 + 2**-12, 1 + 2**-10),
    ("fp16", "odd", 2.0, 2.0),
    ("fp16", "odd", 1e-30, 2**-24),
    ("fp16", "odd", 1e6, 65504.0),
    ("fp16", "nearest-even", 2**-25, 0.0),  # half the smallest subnormal: tie to even zero
    ("fp16", "nearest-even", 3 * 2**-26, 2**-24),
    ("fp16", "nearest-away", 2**-25, 2**-24),
    ("fp16", "up", 1e-30, 2**-24),
    ("fp16", "down", -1e-30, -(2**-24)),
    ("fp16", "toward-zero", 1e6, 65504.0),  # directed overflow: largest finite
    ("fp16", "up", 1e6, math.inf),
    ("fp16", "up", -1e6, -65504.0),
    ("fp16", "down", -1e6, -math.inf),
    ("fp16", "nearest-away", 65520.0, math.inf),
    ("bf16", "nearest-even", 1 + 2**-8, 1.0),
    ("bf16", "nearest-even", 3.39e38, 3.3895313892515355e38),
    ("bf16", "nearest-even", 3.3961775292304957e38, math.inf),  # max + ulp/2: ties to inf
    ("fp8_e4m3fn", "nearest-even", 464.0, 448.0),  # ml_dtypes: tie below the NaN pattern
    ("fp8_e4m3fn", "nearest-even", 465.0, math.nan),
    ("fp8_e4m3fn", "nearest-even", math.inf, math.nan),
    ("fp8_e4m3fn", "nearest-even", -math.inf, math.nan),
    ("fp8_e4m3fn", "toward-zero", 1e10, 448.0),
    ("fp8_e4m3fn", "up", -1e10, -448.0),
    ("fp8_e4m3fn", "up", 449.0, math.nan),
    ("fp8_e4m3fn", "nearest-even", 2**-10, 0.0),
    ("fp8_e4m3fn", "nearest-even", 3 * 2**-11, 2**-9),
    ("fp8_e5m2", "nearest-even", 61440.0, math.inf),
    ("fp8_e5m2", "nearest-even", 61439.0, 57344.0),
]


@pytest.mark.parametrize("fmt, mode, x, want", CASES)
def test_hand_checked_values(fmt: str, mode: str, x: float, want: float) -> None:
    for dtype in (np.float64, np.float32):
        with np.errstate(over="ignore"):
            xa = np.array([x], dtype=dtype)
        if float(xa[0]) != x:
            continue
        y = float(round_to(xa, fmt, mode)[0])
        if math.isnan(want):
            assert math.isnan(y), (fmt, mode, x, dtype, y)
        else:
            assert y == want and math.copysign(1, y) == math.copysign(1, want), (fmt, mode, x, dtype, y)
        # and the oracle agrees with the hand-checked value
        ref = float(V.gmpy2_round(np.array([x]), fmt, mode)[0])
        assert (math.isnan(ref) and math.isnan(want)) or ref == want


@pytest.mark.parametrize("policy_fmt, x, want", [
    (get_format("fp8_e4m3fn").with_(overflow="saturate"), 465.0, 448.0),
    (get_format("fp8_e4m3fn").with_(overflow="saturate"), math.inf, 448.0),
    (get_format("fp8_e4m3fn").with_(overflow="saturate"), -math.inf, -448.0),
    (get_format("fp16").with_(overflow="saturate"), 65520.0, 65504.0),
    (get_format("fp16").with_(overflow="saturate"), -1e300, -65504.0),
    (get_format("fp16").with_(subnormals=False), 2**-15, 0.0),
    (get_format("fp16").with_(subnormals=False), -(2**-15), -0.0),
    (get_format("fp16").with_(subnormals=False), 2**-14 * (1 - 2**-12), 2**-14),  # rounds up to normal
])
def test_policies(policy_fmt: FloatFormat, x: float, want: float) -> None:
    for mode in ("nearest-even", "nearest-away"):
        y = float(round_to(np.array([x]), policy_fmt, mode)[0])
        assert y == want and math.copysign(1, y) == math.copysign(1, want), (policy_fmt, mode, x, y)


def test_mpfr_convention_matches_ieee16() -> None:
    """The custom-context translation (emax+1, emin-p+2) reproduces gmpy2.ieee(16) exactly."""
    ctx = gmpy2.ieee(16)
    f = get_format("fp16")
    assert (ctx.precision, ctx.emin, ctx.emax) == (f.p, f.emin - f.p + 2, f.emax + 1)


def test_two_oracles_agree_with_each_other() -> None:
    """gmpy2 and softfloatpy are independent implementations: they agree on the test inputs,
    so a mismatch in the rows points at the code under test."""
    x = V.directed_inputs("fp16", 5000, seed=9)
    ctx = gmpy2.ieee(16)
    for m, rnd, sfm in [("n", gmpy2.RoundToNearest, sf.RoundingMode.NEAR_EVEN),
                        ("z", gmpy2.RoundToZero, sf.RoundingMode.MIN_MAG),
                        ("u", gmpy2.RoundUp, sf.RoundingMode.MAX),
                        ("d", gmpy2.RoundDown, sf.RoundingMode.MIN)]:
        ctx.round = rnd
        a = np.array([float(ctx.plus(v)) for v in x.tolist()])
        sf.set_rounding_mode(sfm)
        try:
            b = np.array([sf.f64_to_f16(sf.Float64.from_float(v)).to_float() for v in x.tolist()])
        finally:
            sf.set_rounding_mode(sf.RoundingMode.NEAR_EVEN)
        assert np.all((a == b) & (np.signbit(a) == np.signbit(b)) | (np.isnan(a) & np.isnan(b))), m


def test_to_bits_signalling_nan_float32_does_not_warn() -> None:
    """Regression: to_bits widened float32 input to float64 and numpy warned ('invalid value
    encountered in cast') on signalling NaNs, an error under warnings-as-errors."""
    snan = np.array([0x7F800001, 0xFFA00000], dtype=np.uint32).view(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_bits(snan, "fp16")
    assert all(np.isnan(out.view(np.float16)))

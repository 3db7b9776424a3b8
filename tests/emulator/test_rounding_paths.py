"""Every execution path of round_to (float64 kernel, float32 kernel, native storage dtypes,
statistics, out=) against the NumPy twin and against numpy / ml_dtypes conversions."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fpanalysis import FloatFormat, get_format, round_to
from fpanalysis._kernels.bits import stream_key
from fpanalysis.rounding import RoundingMode, round_numpy

FORMATS = [
    get_format("fp16"),
    get_format("bf16"),
    get_format("tf32"),
    get_format("fp8_e4m3fn"),
    get_format("fp8_e5m2"),
    get_format("fp8_e4m3fn").with_(overflow="saturate"),
    get_format("fp16").with_(overflow="saturate"),
    FloatFormat("ftz5", p=5, emin=-6, emax=7, subnormals=False),
    FloatFormat("p3", p=3, emin=-3, emax=4),
]
SPECIALS = [
    0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65519.99, 65520.0, -65520.0, 2.0**-24, 2.0**-25,
    -(2.0**-25), 3 * 2.0**-26, 464.0, 465.0, 448.0, 57344.0, 61440.0, 1e38, 3.4e38, -1e-40, 1e-45,
    1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 0.1, -0.1,
]


def _wide_sample(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal(n) * np.exp2(rng.integers(-140, 126, n).astype(float))
    x = x.astype(np.float32).astype(np.float64)
    x[: len(SPECIALS)] = SPECIALS
    return x


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise equality treating NaN == NaN and distinguishing signed zeros."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nan = np.isnan(a) & np.isnan(b)
    return nan | ((a == b) & (np.signbit(a) == np.signbit(b)))


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name + "-" + f.overflow.value)
@pytest.mark.parametrize("mode", [m for m in RoundingMode if m is not RoundingMode.STOCHASTIC])
def test_kernels_match_numpy_twin(fmt: FloatFormat, mode: RoundingMode, rng: np.random.Generator) -> None:
    x = _wide_sample(rng, 20000)
    twin = round_numpy(x, fmt, mode)
    y64 = round_to(x, fmt, mode)
    assert y64.dtype == np.float64
    assert _same(y64, twin).all(), x[~_same(y64, twin)][:5]
    x32 = x.astype(np.float32)
    y32 = round_to(x32, fmt, mode, dtype=np.float64 if fmt.emax > 127 else None)
    assert _same(y32, twin).all(), x[~_same(y32, twin)][:5]


@pytest.mark.parametrize("bits", [None, 1, 3, 8])
@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e5m2"])
def test_stochastic_matches_twin(fmt: str, bits: int | None, rng: np.random.Generator) -> None:
    f = get_format(fmt)
    x = _wide_sample(rng, 20000)
    y = round_to(x, f, "stochastic", seed=7, random_bits=bits, stream=3)
    twin = round_numpy(x, f, RoundingMode.STOCHASTIC, key=stream_key(7, 3), kbits=bits)
    assert _same(y, twin).all()


@pytest.mark.parametrize(
    "dtype, fmt",
    [(np.float16, "fp16"), (ml_dtypes.bfloat16, "bf16"), (ml_dtypes.float8_e4m3fn, "fp8_e4m3fn"),
     (ml_dtypes.float8_e5m2, "fp8_e5m2")],
)
def test_native_storage_matches_numpy_and_ml_dtypes(dtype: type, fmt: str, rng: np.random.Generator) -> None:
    x = _wide_sample(rng, 50000).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = x.astype(dtype)
    y = round_to(x, fmt, dtype=dtype)
    assert y.dtype == np.dtype(dtype)
    ref_nan = np.isnan(ref.astype(np.float32))
    assert np.array_equal(np.isnan(y.astype(np.float32)), ref_nan)
    ubits = np.uint16 if np.dtype(dtype).itemsize == 2 else np.uint8
    mismatch = (y.view(ubits) != ref.view(ubits)) & ~ref_nan
    assert not mismatch.any(), x[mismatch][:5]
    # float64 input takes the float64 kernel: same bits
    y64 = round_to(x.astype(np.float64), fmt, dtype=dtype)
    assert np.array_equal(y64.view(ubits)[~ref_nan], y.view(ubits)[~ref_nan])


def test_native_out_array(rng: np.random.Generator) -> None:
    x = rng.standard_normal(100_000).astype(np.float32) * 1e4
    out = np.empty(x.shape, np.float16)
    assert round_to(x, "fp16", out=out) is out
    with np.errstate(over="ignore"):
        assert np.array_equal(out.view(np.uint16), x.astype(np.float16).view(np.uint16))
    with pytest.raises(ValueError, match="C-contiguous float16"):
        round_to(x, "fp16", out=np.empty(3, np.float16))


def test_native_dtype_must_match_format() -> None:
    with pytest.raises(ValueError, match="stores format fp16"):
        round_to([1.0], "bf16", dtype=np.float16)


def test_out_argument_and_in_place(rng: np.random.Generator) -> None:
    x = rng.standard_normal(1000).astype(np.float32)
    expect = x.astype(np.float16).astype(np.float32)
    out = np.empty_like(x)
    assert round_to(x, "fp16", out=out) is out
    assert np.array_equal(out, expect)
    round_to(x, "fp16", out=x)
    assert np.array_equal(x, expect)
    with pytest.raises(ValueError, match="shape"):
        round_to(x, "fp16", out=np.empty(3, np.float32))
    with pytest.raises(ValueError, match="stores format fp16, not fp32"):
        round_to(x, "fp32", out=np.empty(1000, np.float16))


def test_stats_count_what_happened() -> None:
    x = np.array([1.0, 1.0 + 2.0**-12, 1e5, -1e5, 2.0**-20, 1e-9, 0.0, np.inf, np.nan, 2.0**-24])
    _, st = round_to(x, "fp16", return_stats=True)
    # independent count: inexact = differs from input (non-nan), overflow = |x| >= 65520,
    # subnormal = nonzero result below 2**-14, flushed = nonzero finite input that became 0
    assert (st.n, st.overflow, st.subnormal, st.flushed) == (10, 2, 2, 1)
    # inexact: 1+2**-12 (a tie, rounds to 1), +-1e5 (overflow), 1e-9 (flushed); 2**-20 and
    # 2**-24 are exact subnormals; inf and nan raise nothing
    assert st.inexact == 4

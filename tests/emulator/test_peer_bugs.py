"""Regression tests for the bugs found in peer libraries (../shared/design/semantics.md):
pychop rounds 65520 to 65536 and values from ~70000 up to 0; qtorch has no inf/NaN and
saturates near 131008.  Correct binary16 nearest-even, and the exception counts of
``return_stats`` against counts computed independently from gmpy2 results."""
from __future__ import annotations

import math

import gmpy2
import numpy as np
import pytest

from fpanalysis import RoundingStats, round_to
from fpanalysis.verify import rounding as V

# (input, correctly rounded binary16 value, overflow?) -- each value checked by hand:
# 65504 = max, 65520 = max + ulp/2 is a tie whose even neighbour is 2**16 -> inf.
PEER_CASES = [
    (65504.0, 65504.0, False),
    (65519.99, 65504.0, False),
    (65519.999999, 65504.0, False),
    (65520.0, math.inf, True),
    (65536.0, math.inf, True),
    (70000.0, math.inf, True),
    (100000.0, math.inf, True),
    (131008.0, math.inf, True),
    (1e6, math.inf, True),
    (3e38, math.inf, True),
    (1e300, math.inf, True),
    (math.inf, math.inf, False),
    (-65519.99, -65504.0, False),
    (-65520.0, -math.inf, True),
    (-70000.0, -math.inf, True),
    (-1e6, -math.inf, True),
    (-math.inf, -math.inf, False),
    (math.nan, math.nan, False),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fp16_overflow_boundary_and_specials(dtype: type) -> None:
    with np.errstate(over="ignore"):
        x = np.array([c[0] for c in PEER_CASES], dtype=dtype)
    want = np.array([c[1] for c in PEER_CASES])
    y = np.asarray(round_to(x, "fp16"), dtype=np.float64)
    for xi, yi, wi, orig in zip(x.tolist(), y.tolist(), want.tolist(), [c[0] for c in PEER_CASES]):
        if xi != orig and not math.isnan(orig):
            continue  # not a float32 number (65519.999999 becomes 65520, 1e300 inf)
        if math.isnan(wi):
            assert math.isnan(yi), xi
        else:
            assert yi == wi, (xi, yi, wi)
            assert yi != 0.0 and abs(yi) != 131008.0 and abs(yi) != 65536.0
    # the same values through gmpy2's binary16 (the independent oracle agrees with the table)
    ctx = gmpy2.ieee(16)
    for xi, wi, orig in zip(x.tolist(), want.tolist(), [c[0] for c in PEER_CASES]):
        if xi != orig and not math.isnan(orig):
            continue
        r = float(ctx.plus(xi))
        assert (math.isnan(r) and math.isnan(wi)) or r == wi


def test_scalar_inputs() -> None:
    assert round_to(65520.0, "fp16") == math.inf
    assert round_to(65519.99, "fp16") == 65504.0
    assert round_to(-65520.0, "fp16") == -math.inf
    assert round_to(70000.0, "fp16") == math.inf
    assert math.isnan(round_to(math.nan, "fp16"))


def test_wide_sample_has_no_wrong_values() -> None:
    """pychop got ~2% of a wide-range sample wrong; we compare every value of a sample spanning
    the float32 range with numpy's float16 conversion."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * np.exp2(rng.integers(-40, 40, 200_000))).astype(np.float32)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).astype(np.float32)
    y = round_to(x, "fp16")
    assert np.array_equal(y, ref, equal_nan=True)


def test_return_stats_counts_by_hand() -> None:
    x = np.array([65520.0, 70000.0, -1e6, 65519.99, np.inf, np.nan, 1e-8, -3e-8, 2.0**-20, 1.0, 0.1, 0.0, -0.0])
    y, st = round_to(x, "fp16", return_stats=True)
    assert isinstance(st, RoundingStats) and st.n == x.size
    # overflow: 65520, 70000, -1e6 (inf and nan inputs are not overflows)
    assert st.overflow == 3
    # flushed to zero: 1e-8 (below half the smallest subnormal 2**-25)
    assert st.flushed == 1
    # subnormal results: -3e-8 -> -2**-24, 2**-20 (exact subnormal)
    assert st.subnormal == 2
    # inexact: 65520, 70000, -1e6, 65519.99, 1e-8, -3e-8, 0.1
    assert st.inexact == 7
    assert st.fraction("overflow") == 3 / x.size


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"])
@pytest.mark.parametrize("mode", ["nearest-even", "toward-zero", "up", "odd"])
def test_return_stats_vs_oracle_counts(fmt: str, mode: str) -> None:
    x = V.directed_inputs(fmt, 20_000, seed=4)
    ref, over = V.gmpy2_round(x, fmt, mode, return_overflow=True)
    want = V.oracle_stats(x, ref, over, fmt)
    y, st = round_to(x, fmt, mode, return_stats=True)
    assert (st.inexact, st.overflow, st.subnormal, st.flushed) == want
    assert all(c > 0 for c in want[:3]), want  # the sample exercises every counter
    assert np.all((y == ref) | (np.isnan(y) & np.isnan(ref)))

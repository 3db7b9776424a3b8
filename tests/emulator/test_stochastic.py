"""Stochastic rounding: statistics with tolerances derived from the sample size, bitwise
agreement with an exact-fraction oracle, reproducibility and thread independence."""
from __future__ import annotations

import math

import numpy as np
import pytest
from _verify_helpers import failures
from scipy.stats import binom

from fpanalysis import round_to
from fpanalysis import rounding as R
from fpanalysis.verify import rounding as V
from fpanalysis.verify.modes import _SR_CASES


def test_verify_stochastic_ci_size() -> None:
    rows = V.verify_stochastic(seed=1, n=200_000)
    assert len(rows) >= len(_SR_CASES) + 5
    assert not failures(rows)


@pytest.mark.slow
def test_verify_stochastic_full_size() -> None:
    assert not failures(V.verify_stochastic(seed=2, n=4_000_000))


def test_biased_rounding_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic rounding posing as stochastic, and stochastic rounding with a
    probability off by 1%, both fail the statistical rows."""
    real = R.round_to

    def nearest(x, fmt="fp16", mode="nearest-even", **kw):  # type: ignore[no-untyped-def]
        kw.pop("seed", None), kw.pop("random_bits", None), kw.pop("stream", None)
        return real(x, fmt, "nearest-even" if R.RoundingMode.parse(mode) is R.RoundingMode.STOCHASTIC else mode, **kw)

    monkeypatch.setattr(R, "round_to", nearest)
    rows = [r for r in V.verify_stochastic(seed=0, n=100_000) if "P(away)" in r["check"]]
    assert sum(r["mismatches"] > 0 for r in rows) >= len(rows) - 3  # frac exactly 0.5 / 0 / 1 may pass

    def biased(x, fmt="fp16", mode="nearest-even", **kw):  # type: ignore[no-untyped-def]
        if R.RoundingMode.parse(mode) is not R.RoundingMode.STOCHASTIC or kw.get("random_bits"):
            return real(x, fmt, mode, **kw)
        # round away with probability frac + 0.01: move the input by 1% of the gap, away from 0
        xa = np.asarray(x, dtype=np.float64)
        lo = real(xa, fmt, "toward-zero")
        hi = np.where(xa >= 0, real(xa, fmt, "up"), real(xa, fmt, "down"))
        with np.errstate(invalid="ignore"):  # inf - inf, signalling NaNs
            shift = np.where(np.isfinite(hi), 0.01 * (hi - lo), 0.0)
            return real(xa + shift, fmt, mode, **kw).astype(np.asarray(x).dtype)

    monkeypatch.setattr(R, "round_to", biased)
    rows = V.verify_stochastic(seed=0, n=400_000)
    prob_rows = [r for r in rows if r["check"].startswith("stochastic P(away)")]
    assert sum(r["mismatches"] > 0 for r in prob_rows) >= len(prob_rows) // 2


def test_probability_one_value_by_hand() -> None:
    """x = 1 + 0.25 ulp in fp16 rounds up with probability 1/4 (independent of the module)."""
    n = 400_000
    x = np.full(n, 1.0 + 0.25 * 2.0**-10)
    y = round_to(x, "fp16", "stochastic", seed=123)
    assert set(np.unique(y).tolist()) == {1.0, 1.0 + 2.0**-10}
    k = int(np.count_nonzero(y > 1.0))
    lo, hi = binom.ppf(5e-7, n, 0.25), binom.isf(5e-7, n, 0.25)
    assert lo <= k <= hi
    # with 1 random bit, 0.25 ulp never carries (floor(0.25 * 2) = 0); with 2 bits, P = 1/4
    assert np.all(round_to(x, "fp16", "stochastic", seed=1, random_bits=1) == 1.0)
    k2 = int(np.count_nonzero(round_to(x, "fp16", "stochastic", seed=1, random_bits=2) > 1.0))
    assert lo <= k2 <= hi


def test_reproducible_seeds_streams_and_generators() -> None:
    x = np.linspace(-3.0, 3.0, 10_001)
    a = round_to(x, "bf16", "stochastic", seed=5)
    np.testing.assert_array_equal(a, round_to(x, "bf16", "stochastic", seed=5))
    assert np.any(a != round_to(x, "bf16", "stochastic", seed=6))
    assert np.any(a != round_to(x, "bf16", "stochastic", seed=5, stream=1))
    g1 = round_to(x, "bf16", "stochastic", seed=np.random.default_rng(3))
    g2 = round_to(x, "bf16", "stochastic", seed=np.random.default_rng(3))
    np.testing.assert_array_equal(g1, g2)
    # exact inputs stay exact
    e = np.array([1.0, -2.0, 0.0, 3.0 * 2.0**-133])
    np.testing.assert_array_equal(round_to(e, "bf16", "stochastic", seed=0), e)


def test_specials_under_stochastic_rounding() -> None:
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e6, -1e6])
    y = round_to(x, "fp16", "stochastic", seed=0)
    assert y[0] == np.inf and y[1] == -np.inf and math.isnan(y[2])
    assert y[3] == 0 and not np.signbit(y[3]) and y[4] == 0 and np.signbit(y[4])
    assert y[5] == np.inf and y[6] == -np.inf
    z = round_to(x, "fp8_e4m3fn", "stochastic", seed=0)
    assert np.all(np.isnan(z[[0, 1, 2, 5, 6]]))

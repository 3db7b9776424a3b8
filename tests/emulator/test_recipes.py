"""Scaling recipes (fpanalysis.recipes) against independent ml_dtypes computations."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from fpanalysis import recipes as R
from fpanalysis.scaled import quantize_dequantize

ML = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}
FMAX = {"e4m3": 448.0, "e5m2": 57344.0}


def _te_reference(x: np.ndarray, scale: np.float32, fmt: str) -> np.ndarray:
    """Transformer Engine's cast, spelled out: fp32 product, saturating FP8 conversion, fp32
    product with the fp32 reciprocal."""
    xs = (x * scale).astype(np.float32)
    q = np.clip(xs, -FMAX[fmt], FMAX[fmt]).astype(ML[fmt]).astype(np.float32)
    return q * (np.float32(1.0) / scale)


def _data(rng: np.random.Generator, n: int = 4096) -> np.ndarray:
    return (rng.standard_normal(n) * np.exp2(rng.uniform(-30, 10, n))).astype(np.float32)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("margin", [0, 2])
def test_current_scaling_matches_reference(fmt: str, margin: int, rng: np.random.Generator) -> None:
    x = _data(rng)
    r = R.current_scaling(x, fmt, margin)
    amax = np.float32(np.abs(x).max())
    scale = np.float32(np.float32(FMAX[fmt]) / amax) / np.float32(2.0**margin)
    assert r.scale == float(scale)
    ref = _te_reference(x, scale, fmt)
    np.testing.assert_array_equal(r.values, ref)
    assert r.underflow == int(np.count_nonzero((x != 0) & (ref == 0))) > 0
    assert r.saturated == 0  # current scaling never saturates
    assert r.values.dtype == np.float32 and r.n == x.size


def test_saturation_count_matches_direct_count(rng: np.random.Generator) -> None:
    x = _data(rng)
    r = R.quantize_per_tensor(x, 1e4, "e4m3")
    xs = (x * np.float32(1e4)).astype(np.float64)
    # RNE overflows past 448 exactly when |x * scale| > 464 (the tie 464 goes to even 448)
    assert r.saturated == int(np.count_nonzero(np.abs(xs) > 464.0)) > 0
    assert np.max(np.abs(r.values)) == np.float32(448.0) * (np.float32(1.0) / np.float32(1e4))


def test_delayed_scaling_uses_previous_history(rng: np.random.Generator) -> None:
    d = R.DelayedScaling("e4m3", history_len=3, margin=1)
    amaxes = [1.0, 50.0, 2.0, 2.0, 2.0, 2.0]
    used = []
    for a in amaxes:
        x = np.array([a, -a / 3, a / 7], dtype=np.float32)
        used.append(d.scale)
        r = d(x)
        assert r.scale == used[-1]
        np.testing.assert_array_equal(r.values, _te_reference(x, np.float32(used[-1]), "e4m3"))
    expect = [1.0]
    for t in range(1, len(amaxes)):
        window = amaxes[max(0, t - 3):t]
        expect.append(float(np.float32(np.float32(448.0) / np.float32(max(window))) / np.float32(2.0)))
    assert used == expect
    # the spike at step 1 leaves the window after three steps: the scale recovers
    assert used[4] < used[5]


def test_delayed_scaling_saturates_after_a_jump() -> None:
    d = R.DelayedScaling("e5m2", history_len=4, algo="most_recent")
    d(np.ones(8, dtype=np.float32))
    r = d(np.full(8, 1e3, dtype=np.float32))  # scale 57344 from amax 1: 1e3 * 57344 saturates
    assert r.saturated == 8 and r.saturation_share == 1.0
    assert d.scale == float(np.float32(57344.0) / np.float32(1e3))
    d(np.zeros(8, dtype=np.float32))  # amax 0 (most recent): the scale is kept
    assert d.scale == float(np.float32(57344.0) / np.float32(1e3))


def test_hybrid_formats() -> None:
    assert [R.recipe_format(r) for r in R.ROLES] == ["e4m3", "e4m3", "e5m2"]
    assert R.recipe_format("gradient", hybrid=False) == "e4m3"
    with pytest.raises(ValueError, match="activation, weight, gradient"):
        R.recipe_format("bias")


def test_block_scaling_is_the_scaled_module(rng: np.random.Generator) -> None:
    x = _data(rng).reshape(64, 64)
    for fmt in ("mxfp8_e4m3", "mxfp4_e2m1", "nvfp4"):
        r = R.block_scaling(x, fmt, axis=0)
        np.testing.assert_array_equal(r.values, quantize_dequantize(x, fmt, axis=0))
        assert r.fmt == fmt and r.scale is None


def test_recipe_errors() -> None:
    with pytest.raises(ValueError, match="e4m3, e5m2"):
        R.current_scaling(np.ones(3), "e3m4")
    with pytest.raises(ValueError, match="margin"):
        R.DelayedScaling(margin=-1)
    with pytest.raises(ValueError, match="max, most_recent"):
        R.DelayedScaling(algo="mean")
    with pytest.raises(ValueError, match="history_len"):
        R.DelayedScaling(history_len=0)
    with pytest.raises(ValueError, match="scale"):
        R.quantize_per_tensor(np.ones(3), 0.0)


def test_gemm_report_quantises_along_the_reduction_axis(rng: np.random.Generator) -> None:
    a = _data(rng, 64 * 96).reshape(64, 96)
    b = _data(rng, 96 * 32).reshape(96, 32)
    r = R.gemm_report(a, b, "mxfp4_e2m1")
    np.testing.assert_array_equal(r.a.values, quantize_dequantize(a, "mxfp4_e2m1", axis=1))
    np.testing.assert_array_equal(r.b.values, quantize_dequantize(b, "mxfp4_e2m1", axis=0))
    assert not np.array_equal(r.a.values, quantize_dequantize(a, "mxfp4_e2m1", axis=0))
    ref = a.astype(np.float64) @ b.astype(np.float64)
    got = r.a.values.astype(np.float64) @ r.b.values.astype(np.float64)
    assert r.rel_error == pytest.approx(np.linalg.norm(got - ref) / np.linalg.norm(ref), rel=1e-12)
    e8 = R.gemm_report(a, b, "mxfp8_e4m3").rel_error
    assert 0 < e8 < r.rel_error
    # per-tensor E4M3: every normal element is within 2**-4 relative, so the product is within
    # about 2 * 2**-4 (plus the flushed tail); the data spans 40 binades, so some flush
    cur = R.gemm_report(a, b, "current")
    assert cur.a.fmt == "e4m3" and cur.a.underflow > 0
    g = R.gemm_report(a, b, "current", role_a="gradient")
    assert g.a.fmt == "e5m2" and g.b.fmt == "e4m3"
    with pytest.raises(ValueError, match="current, mxfp8_e4m3"):
        R.gemm_report(a, b, "fp3")
    with pytest.raises(ValueError, match="inner dimensions"):
        R.gemm_report(a, a, "current")


def test_history_length_for_periodic_spikes() -> None:
    """amax 1, 1, 1, 8 repeating: a history shorter than the period forgets the spike and every
    spike saturates; from length 4 on only the first spike does (the scale then stays 448/8)."""
    amaxes = [1.0, 1.0, 1.0, 8.0] * 6
    assert R.delayed_saturating_steps(amaxes, 3) == 6
    assert R.delayed_saturating_steps(amaxes, 4) == 1
    assert R.min_history_len(amaxes, max_saturating=1) == 4
    assert R.min_history_len(amaxes, max_saturating=0) is None
    # a margin of 3 bits absorbs the 8x spike at any history length
    assert R.min_history_len(amaxes, fmt="e4m3", margin=3, max_saturating=0) == 1


# --- MX with the scale rounded up (Transformer Engine's MXFP8 quantiser) -----------------------


def _rceil_oracle(x: np.ndarray, fmax: float, dt) -> np.ndarray:
    """One block at a time, with Python floats and ml_dtypes: the smallest power of two 2**k with
    v <= 2**k for v = fp32(amax * fp32(1/fmax)) (math.frexp), elements ml_dtypes(sat(x / 2**k))."""
    out = np.empty_like(x)
    rcp = np.float32(np.float32(1.0) / np.float32(fmax))
    for i in range(x.shape[0]):
        for j in range(0, x.shape[1], 32):
            blk = x[i, j:j + 32]
            v = float(np.float32(np.float32(np.abs(blk).max()) * rcp))
            if v == 0.0:
                k = -127
            else:
                mant, ex = math.frexp(v)  # v = mant * 2**ex, 0.5 <= mant < 1
                k = ex - 1 if mant == 0.5 else ex
            q = np.clip(blk.astype(np.float64) / 2.0**k, -fmax, fmax).astype(dt).astype(np.float64)
            out[i, j:j + 32] = (q * 2.0**k).astype(np.float32)
    return out


@pytest.mark.parametrize("fmt,fmax,dt", [("mxfp8_e4m3", 448.0, ml_dtypes.float8_e4m3fn),
                                         ("mxfp8_e5m2", 57344.0, ml_dtypes.float8_e5m2)])
def test_block_scaling_rceil_against_ml_dtypes(fmt, fmax, dt):
    from fpanalysis.recipes import block_scaling_rceil

    g = np.random.default_rng(3)
    x = (g.standard_normal((16, 96)) * np.exp(g.uniform(-20, 20, (16, 1)))).astype(np.float32)
    # blocks whose amax is exactly fmax * 2**k (the scale's boundary) and an all-zero block
    x[0, :32] = np.float32(fmax) * np.float32(2.0**-3) * g.uniform(-1, 1, 32).astype(np.float32)
    x[0, 5] = np.float32(fmax * 2.0**-3)
    x[1, 32:64] = 0.0
    r = block_scaling_rceil(x, fmt, axis=-1)
    want = _rceil_oracle(x, fmax, dt)
    assert np.array_equal(r.values, want)
    assert r.saturated == 0  # the block's largest element always fits
    # along axis 0 it is the same function of the transposed array
    r0 = block_scaling_rceil(x.T.copy(), fmt, axis=0)
    assert np.array_equal(r0.values, want.T)
    # and it differs from the specification's floor scale, which saturates some blocks' largest elements
    from fpanalysis.recipes import block_scaling

    assert block_scaling(x, fmt, axis=-1).saturated > 0 and not np.array_equal(block_scaling(x, fmt, axis=-1).values, want)


def test_block_scaling_rceil_refuses_nvfp4():
    from fpanalysis.recipes import block_scaling_rceil

    with pytest.raises(ValueError, match="MX format"):
        block_scaling_rceil(np.ones(32, dtype=np.float32), "nvfp4")

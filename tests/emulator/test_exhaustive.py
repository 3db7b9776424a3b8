"""Exhaustive and stratified sweeps: every fp16 bit pattern, float32 -> fp16 (all 2**32 inputs
with --slow), bf16 and fp8 against ml_dtypes."""
from __future__ import annotations

import numpy as np
import pytest
from _verify_helpers import buggy_round_to, failures, native_optional

from fpanalysis import rounding as R
from fpanalysis.formats import FP16
from fpanalysis.verify import rounding as V


def test_fp16_all_patterns() -> None:
    rows = V.verify_fp16_patterns()
    checks = {r["check"] for r in rows}
    assert {"decode all patterns", "encode all values", "to_bits(from_bits(b)) == b", "fp16 -> fp32"} <= checks
    assert sum(r["n"] for r in rows if r["check"] == "round_to(fp16 value) identity") == 7 * 3 * 65536
    assert not failures(rows, native_optional)


def test_fp16_sqrt_all_patterns() -> None:
    rows = V._verify_sqrt(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16))
    if any(r["mismatches"] == -1 and "fpanalysis.ops" in r["first_mismatch"] for r in rows):
        pytest.skip(rows[0]["first_mismatch"])
    assert len(rows) >= 6 and not failures(rows)


def test_f32_to_fp16_stratified() -> None:
    rows = V.verify_f32_to_fp16(sample=1 << 16, seed=1)
    assert {r["oracle"] for r in rows} >= {"torch .half()", "numpy astype(float16)"}
    assert all(r["n"] > 500_000 for r in rows)
    assert not failures(rows)


@pytest.mark.slow
def test_f32_to_fp16_all_2_32() -> None:
    rows = V.verify_f32_to_fp16(exhaustive=True, sample=1 << 20)
    sweep = [r for r in rows if r["check"].startswith("f32 -> fp16 all 2^32")]
    assert len(sweep) == 2 and all(r["n"] == 1 << 32 for r in sweep)
    assert not failures(rows)


def test_bf16_fp8_patterns_and_stratified() -> None:
    rows = V.verify_bf16_fp8(sample=1 << 16, fp8_sweep=False)
    assert {r["format"] for r in rows} == {"bf16", "fp8_e4m3fn", "fp8_e5m2"}
    assert not failures(rows)


@pytest.mark.slow
def test_fp8_all_float32_in_range_and_bf16_all_2_32() -> None:
    rows = V.verify_bf16_fp8(exhaustive=True, fp8_sweep=True)
    assert sum(r["check"].startswith("f32 -> bf16 all 2^32") and r["n"] == 1 << 32 for r in rows) == 2
    assert not failures(rows)


def test_sweep_finds_injected_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunked sweep reports wrong results around the overflow threshold 65504..65536
    and in the subnormal range."""
    oracle = V._torch_half_oracle()
    lo = int(np.float32(65000.0).view(np.uint32))
    hi = int(np.float32(70000.0).view(np.uint32))
    got = V._sweep(lo, hi, FP16, oracle, np.float16, "t", None)
    assert got["float32"][1] == 0 and got["native"][1] == 0 and got["native"][0] == hi - lo
    monkeypatch.setattr(R, "round_to", buggy_round_to("saturate"))
    n, bad, first = V._sweep(lo, hi, FP16, oracle, np.float16, "t", None)["float32"]
    assert n == hi - lo and bad > 0 and first.startswith("input 65520.0")
    monkeypatch.setattr(R, "round_to", buggy_round_to("flush-subnormals"))
    lo, hi = (int(np.float32(v).view(np.uint32)) for v in (2.0**-20, 2.0**-19))
    n, bad, first = V._sweep(lo, hi, FP16, oracle, np.float16, "t", None)["float32"]
    assert bad > 0


def test_stratified_sample_contains_ties_and_boundaries() -> None:
    with np.errstate(invalid="ignore"):  # signalling NaNs in the sample
        x = V.stratified_float32("fp16", sample=0).astype(np.float64)
    for v in (65504.0, 65520.0, 2.0**-24, 2.0**-25, 1 + 2.0**-11, -(1 + 2.0**-11), 2.0**-14):
        assert np.any(x == v), v
    assert np.any(np.isnan(x)) and np.any(np.isinf(x))
    # every float32 exponent, both signs
    e = (x.astype(np.float32).view(np.uint32) >> 23)
    assert np.unique(e).size == 512


def test_integer_half_conversions_match_numpy() -> None:
    """The integer float32 <-> binary16 conversions used on targets without conversion
    instructions, checked here on every CPU: all 65,536 patterns one way, and the other way
    every binary16 number, every midpoint between neighbours and its two float32 neighbours,
    the float32 numbers around the overflow and subnormal boundaries, and 2**22 random
    patterns, against numpy.  NaNs must stay NaNs with their sign."""
    from numba import njit

    from fpanalysis._kernels import bits as B

    @njit
    def down(x, out):  # type: ignore[no-untyped-def]
        for i in range(x.shape[0]):
            out[i] = B._f32_to_h16_soft(x[i])

    @njit
    def up(h, out):  # type: ignore[no-untyped-def]
        for i in range(h.shape[0]):
            out[i] = B._h16_to_f32_soft(h[i])

    def nan_aware_equal(got: np.ndarray, want: np.ndarray) -> bool:
        g, w = got.astype(np.float64), want.astype(np.float64)
        same_nan = np.isnan(g) & np.isnan(w) & (np.signbit(g) == np.signbit(w))
        return bool(np.all(same_nan | ((g == w) & (np.signbit(g) == np.signbit(w)))))

    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    f = np.empty(h.size, dtype=np.float32)
    up(h, f)
    assert nan_aware_equal(f, h.view(np.float16))
    finite = h.view(np.float16)[np.isfinite(h.view(np.float16))].astype(np.float32)
    pos = np.unique(np.abs(finite))
    mids = ((pos[:-1].astype(np.float64) + pos[1:]) / 2).astype(np.float32)  # exact in float32
    near = np.concatenate([mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])
    edges = np.array([65504, 65519.998, 65520, 65520.004, 7e4, 2.0**-24, 2.0**-25, 2.0**-14], np.float32)
    rnd = (
        np.random.default_rng(5)
        .integers(0, 1 << 32, 1 << 22, dtype=np.uint64)
        .astype(np.uint32)
        .view(np.float32)
    )
    x = np.concatenate([finite, near, edges, rnd, np.array([np.inf, np.nan], np.float32)])
    x = np.concatenate([x, -x])
    got = np.empty(x.size, dtype=np.uint16)
    down(x, got)
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16)
    assert nan_aware_equal(got.view(np.float16), want)


def test_integer_half_conversions_equal_the_instructions_on_all_inputs() -> None:
    """All 2**32 float32 inputs (NaN payloads included) and all 2**16 binary16 patterns: the
    integer conversions give the same bits as the CPU's conversion instructions (seconds)."""
    from numba import njit, prange

    from fpanalysis._kernels import bits as B

    if not B.NATIVE_HALF:
        pytest.skip("no conversion instructions on this target to compare with (numpy test above applies)")

    @njit(parallel=True)
    def down_mismatches():  # type: ignore[no-untyped-def]
        bad = 0
        for hi in prange(1 << 16):
            for lo in range(1 << 16):
                x = B.u32_to_f32(np.uint32((hi << 16) | lo))
                bad += B._f32_to_h16_soft(x) != B._f32_to_h16_native(x)
        return bad

    @njit
    def up_mismatches():  # type: ignore[no-untyped-def]
        bad = 0
        for h in range(1 << 16):
            b = np.uint16(h)
            bad += B.f32_to_u32(B._h16_to_f32_soft(b)) != B.f32_to_u32(B._h16_to_f32_native(b))
        return bad

    assert down_mismatches() == 0
    assert up_mismatches() == 0

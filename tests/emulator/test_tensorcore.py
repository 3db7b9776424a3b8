"""Tensor-core models (fpanalysis.tensorcore): kernels against their exact-rational twin,
hand-computed values, API errors, and the error bounds against exact results."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from fpanalysis._kernels import tensorcore as K
from fpanalysis.bounds.tensorcore import (
    tc_accumulation_coefficients,
    tc_dot_error_bound,
    tc_gamma,
    tc_running_error_bound,
)
from fpanalysis.reference import exact_dot_fraction
from fpanalysis.rounding import round_to
from fpanalysis.tensorcore import (
    ARCHITECTURES,
    all_models,
    get_tensor_core,
    tc_dot,
    tc_matmul,
)

F32 = np.float32


def _fmt_values(rng: np.random.Generator, fmt: str, shape: tuple[int, ...], spread: int = 6) -> np.ndarray:
    x = rng.standard_normal(shape) * 2.0 ** rng.integers(-spread, spread + 1, shape)
    return np.asarray(round_to(x, fmt), dtype=np.float64)


def _tf32(v: float) -> float:
    bits = np.array([v], np.float32).view(np.uint32) & np.uint32(0xFFFFE000)
    return float(bits.view(np.float32)[0])


def _twin(model, a, b, c=0.0):  # type: ignore[no-untyped-def]
    n, F, rho, e_zero, emin_a, emin_b, emin_c, promote = model.kernel_args()
    pad = (-len(a)) % n or (n if len(a) == 0 else 0)
    a = list(a) + [0.0] * pad
    b = list(b) + [0.0] * pad
    if model.a_format == "tf32":  # the tensor core reads the top 19 bits
        a, b = [_tf32(v) for v in a], [_tf32(v) for v in b]
    return K.dot_python(a, b, c, n, F, rho, e_zero, emin_a, emin_b, emin_c, promote)


def _same(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) == math.copysign(1, y))


# --- hand-computed values ------------------------------------------------------------------


def test_alignment_width_per_architecture() -> None:
    # 1 + fifteen 2**-24: F = 25 (Hopper) keeps them, sum 1 + 7.5 * 2**-23, truncated to 1 + 7 * 2**-23;
    # F = 23 (Volta, 4-term steps) truncates each away; F = 24 (Ampere, 8-term steps): step 1 gives
    # 1 + 3.5 * 2**-23 -> 1 + 3 * 2**-23, step 2 adds 8 * 2**-24 exactly: 1 + 7 * 2**-23.
    x = np.array([1.0] + [2.0**-24] * 15, np.float16)
    y = np.ones(16, np.float16)
    assert tc_dot(x, y, "hopper") == F32(1 + 7 * 2.0**-23)
    assert tc_dot(x, y, "volta") == F32(1.0)
    assert tc_dot(x, y, "ampere") == F32(1 + 7 * 2.0**-23)
    assert tc_dot(-x, y, "hopper") == F32(-(1 + 7 * 2.0**-23))  # toward zero for negatives too


def test_fp16_accumulator_rounds_to_nearest_even() -> None:
    y = np.ones(2, np.float16)
    assert tc_dot(np.array([1, 2.0**-11], np.float16), y, "hopper", "fp16", "fp16") == np.float16(1.0)  # tie
    assert tc_dot(np.array([1, 3 * 2.0**-11], np.float16), y, "hopper", "fp16", "fp16") == np.float16(1 + 2.0**-9)
    assert tc_dot(np.array([1, 3 * 2.0**-11], np.float16), y, "hopper", "fp16", "fp32") == F32(1 + 3 * 2.0**-11)


def test_fp8_accumulator_width() -> None:
    # e4m3: 1*1 + 2**-7 * 2**-7 = 1 + 2**-14.  Hopper (F = 13) truncates 2**-14; Blackwell (F = 25) keeps it.
    x = np.array([1.0, 2.0**-7])
    assert tc_dot(x, x, "hopper", "e4m3") == F32(1.0)
    assert tc_dot(x, x, "blackwell", "e4m3") == F32(1 + 2.0**-14)
    # 13 fraction bits of the FP8 accumulator: 1 + 2**-13 survives, 2**-13 + 2**-14 would not be kept
    x = np.array([1.0, 2.0**-6, 2.0**-7])
    y = np.array([1.0, 2.0**-7, 2.0**-7])
    assert tc_dot(x, y, "hopper", "e4m3") == F32(1 + 2.0**-13)
    assert tc_dot(x, y, "blackwell", "e4m3") == F32(1 + 2.0**-13 + 2.0**-14)


def test_zero_exponent_floor() -> None:
    # bf16 products 2**-140 (1 + 2**-7) = 2**-140 + 2**-147 and -2**-158, c = 0.  The zero terms (c and the
    # padding) count with e_zero = -132 on Ampere, so E = -132 and the quantum is 2**-(132 + 24) = 2**-156:
    # -2**-158 truncates to 0 and the result is exactly 2**-140 + 2**-147 (an fp32 subnormal).  Without the
    # floor (E = -140, quantum 2**-164) -2**-158 would survive and the RZ result would drop one 2**-149.
    x = np.array([2.0**-70 * (1 + 2.0**-7), -(2.0**-79)])
    y = np.array([2.0**-70, 2.0**-79])
    m = get_tensor_core("ampere", "bf16")
    assert m.e_zero == -132
    assert tc_dot(x, y, m) == F32(2.0**-140 + 2.0**-147)
    no_floor = K.dot_python(list(x) + [0.0] * 6, list(y) + [0.0] * 6, 0.0, 8, 24, K.RZ_FP32, -140, -126, -126, -126)
    assert no_floor == float(F32(2.0**-140 + 2.0**-147 - 2.0**-149))


def test_specials_and_overflow() -> None:
    inf, nan = math.inf, math.nan
    assert math.isnan(tc_dot(np.array([inf, 1.0]), np.array([0.0, 1.0]), "hopper"))  # inf * 0
    assert math.isnan(tc_dot(np.array([inf, -inf]), np.array([1.0, 1.0]), "hopper"))  # inf - inf
    assert tc_dot(np.array([inf, 1.0]), np.array([1.0, -5.0]), "hopper") == inf
    assert math.isnan(tc_dot(np.array([nan, 1.0]), np.array([1.0, 1.0]), "ampere", "bf16"))
    big = np.array([2.0**127, 2.0**127])
    assert tc_dot(big, np.array([2.0, 2.0**-1]), "hopper", "bf16") == inf  # 2**128 + 2**126 overflows
    r = tc_dot(np.array([nan]), np.array([1.0]), "hopper")
    assert np.array([r]).view(np.uint32)[0] == 0x7FFFFFFF  # canonical NaN
    assert math.copysign(1, tc_dot(np.array([1.0, -1.0]), np.array([1.0, 1.0]), "hopper")) == 1  # +0


def test_tf32_inputs_are_truncated() -> None:
    x = np.array([1 + 2.0**-10 + 2.0**-11 + 2.0**-23], np.float32)  # read as 1 + 2**-10 (10 fraction bits)
    assert tc_dot(x, np.ones(1, np.float32), "ampere", "tf32") == F32(1 + 2.0**-10)


# --- the kernels against the exact-rational twin --------------------------------------------


@pytest.mark.parametrize("model", all_models()[::3], ids=lambda m: m.name.replace(" ", "_"))
def test_kernels_match_twin(model, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    fa, fb = model.a_format, model.b_format
    for t in range(25):
        Kn = int(rng.integers(1, 3 * model.n + 2))
        spread = 2 if t % 2 else 30
        a = _fmt_values(rng, fa, (Kn,), spread)
        b = _fmt_values(rng, fb, (Kn,), spread)
        a[rng.random(Kn) < 0.1] = 0.0
        if t == 3:
            a[0] = math.inf if fa != "fp8_e4m3fn" else math.nan
        c = 0.0 if t % 3 else float(np.float32(rng.standard_normal()))
        if model.accumulator == "fp16":
            c = float(np.float16(c))
        ours = float(tc_dot(a, b, model, c=c))
        assert _same(ours, float(_twin(model, a, b, c))), (t, a, b, c)


@pytest.mark.parametrize("name", ["volta", "ampere", "hopper"])
def test_gemm_kernel_matches_twin(name: str, rng: np.random.Generator) -> None:
    m = get_tensor_core(name)
    A = _fmt_values(rng, "fp16", (7, 37), 8)
    B = _fmt_values(rng, "fp16", (37, 5), 8)
    A[1, 3] = math.inf
    B[2, 4] = math.nan
    A[2, :] = 0.0
    C = tc_matmul(A, B, m)
    assert C.dtype == np.float32 and C.shape == (7, 5)
    for i in range(7):
        for j in range(5):
            assert _same(float(C[i, j]), float(_twin(m, A[i], B[:, j]))), (i, j)


def test_gemm_promotion_matches_twin(rng: np.random.Generator) -> None:
    m = get_tensor_core("hopper", "e4m3", promote_every=64)
    A = _fmt_values(rng, "fp8_e4m3fn", (3, 200), 3)
    B = _fmt_values(rng, "fp8_e4m3fn", (200, 4), 3)
    C = tc_matmul(A, B, m)
    chain = tc_matmul(A, B, get_tensor_core("hopper", "e4m3"))
    assert not np.array_equal(C, chain)  # promotion changes the result
    for i in range(3):
        for j in range(4):
            assert _same(float(C[i, j]), float(_twin(m, A[i], B[:, j]))), (i, j)
            assert _same(float(tc_dot(A[i], B[:, j], m)), float(C[i, j]))


def test_batched_matmul_and_edge_shapes(rng: np.random.Generator) -> None:
    A = _fmt_values(rng, "bf16", (2, 1, 3, 20), 2)
    B = _fmt_values(rng, "bf16", (4, 20, 5), 2)
    C = tc_matmul(A, B, "hopper", "bf16")
    assert C.shape == (2, 4, 3, 5)
    assert C[1, 2, 0, 3] == tc_dot(A[1, 0, 0], B[2, :, 3], "hopper", "bf16")
    assert np.array_equal(tc_matmul(np.zeros((3, 0)), np.zeros((0, 2)), "hopper"), np.zeros((3, 2), np.float32))
    assert tc_matmul(np.zeros((0, 4)), np.zeros((4, 2)), "hopper").shape == (0, 2)
    assert tc_matmul(A[0, 0], B[0], "hopper", "bf16", "fp32").dtype == np.float32
    assert tc_matmul(np.ones((2, 3)), np.ones((3, 2)), "volta", "fp16", "fp16").dtype == np.float16


# --- API --------------------------------------------------------------------------------------


def test_names_and_errors() -> None:
    assert get_tensor_core("H100") == get_tensor_core("hopper") == get_tensor_core("h200")
    assert set(ARCHITECTURES) >= {"volta", "turing", "ampere", "ada", "hopper", "blackwell"}
    with pytest.raises(ValueError, match="valid names are: volta, turing, ampere, ada, hopper, blackwell"):
        get_tensor_core("pascal")
    with pytest.raises(ValueError, match="no tensor-core instruction for bf16"):
        get_tensor_core("volta", "bf16")
    with pytest.raises(ValueError, match="fp16 accumulator exists for fp16 and FP8"):
        get_tensor_core("ampere", "bf16", "fp16")
    with pytest.raises(ValueError, match="valid accumulators"):
        get_tensor_core("ampere", "fp16", "fp64")
    with pytest.raises(ValueError, match="only FP8 formats"):
        get_tensor_core("hopper", "fp16", b_inputs="bf16")
    with pytest.raises(ValueError, match="multiple of the block length 32"):
        get_tensor_core("hopper", "e4m3", promote_every=100)
    with pytest.raises(ValueError, match="not a number of format 'fp16'"):
        tc_dot([0.1], [1.0], "hopper")
    with pytest.raises(ValueError, match="not a float32 number"):
        tc_dot([0.1], [1.0], "hopper", "tf32")
    with pytest.raises(ValueError, match="same length"):
        tc_dot([1.0, 2.0], [1.0], "hopper")
    with pytest.raises(ValueError, match=r"A \(..., M, K\)"):
        tc_matmul(np.ones((2, 3)), np.ones((2, 3)), "hopper")
    m = get_tensor_core("ada", "e5m2", b_inputs="e4m3")
    assert (m.n, m.F, m.accumulator, m.instruction) == (16, 13, "fp32-e8m13", "mma.sync.m16n8k32.f32.e5m2.e4m3")


# --- bounds ---------------------------------------------------------------------------------


def _adversarial(model, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Inputs that make the truncation and rounding errors large and one-signed."""
    fa = model.a_format
    p = {"fp16": 11, "bf16": 8, "tf32": 11, "fp8_e4m3fn": 4, "fp8_e5m2": 3}[fa]
    out = []
    for t in range(12):
        Kn = int(model.n * rng.integers(1, 40))
        # a leading 1 (or 1.5) per step and products x*y with all significand bits set, just below a
        # truncation quantum 2**-F (or twice or half of it)
        h = 8 if fa.startswith("fp8") else 4  # leading products 2**(2h): room below them for F bits
        g = (2 * h - model.F - 2 + (t % 3)) // 2
        small = (2.0 - 2.0 ** (1 - p)) * 2.0**g
        x = np.full(Kn, small)
        y = np.full(Kn, small)
        x[:: model.n] = (1.0 if t % 2 else 1.5) * 2.0**h
        y[:: model.n] = 2.0**h
        x = np.asarray(round_to(x, fa), dtype=np.float64)
        y = np.asarray(round_to(y, model.b_format), dtype=np.float64)
        out.append((x, y))
        # cancellation: +-large pairs and a tail of small terms
        z = _fmt_values(rng, fa, (Kn,), 4)
        z[1::2] = -z[0::2][: Kn // 2]
        out.append((z, np.ones(Kn)))
    return out


@pytest.mark.parametrize("key", [("volta", "fp16", "fp32"), ("ampere", "bf16", "fp32"), ("ampere", "tf32", "fp32"),
                                 ("hopper", "fp16", "fp32"), ("hopper", "fp16", "fp16"), ("hopper", "e4m3", "fp32"),
                                 ("ada", "e5m2", "fp16"), ("blackwell", "e4m3", "fp32")])
def test_bounds_hold_and_are_not_vacuous(key, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    model = get_tensor_core(*key)
    worst_prior = worst_running = 0.0
    cases = _adversarial(model, rng) + [(_fmt_values(rng, model.a_format, (k,), 3),
                                          _fmt_values(rng, model.b_format, (k,), 3)) for k in (1, 50, 333)]
    for x, y in cases:
        if model.accumulator == "fp16":
            x = np.asarray(round_to(x / 256, model.a_format), np.float64)
        r = tc_dot(x, y, model)
        err = abs(Fraction(float(r)) - exact_dot_fraction(x, y))
        prior = tc_dot_error_bound(x, y, model)
        rr, running = tc_running_error_bound(x, y, model)
        assert _same(float(rr), float(r))
        assert err <= Fraction(prior), (x, y, err, prior)
        assert err <= Fraction(running), (x, y, err, running)
        if prior:
            worst_prior = max(worst_prior, float(err) / prior)
        if running:
            worst_running = max(worst_running, float(err) / running)
    # measured tightness (the ratio error / bound at its worst over these inputs)
    print(f"{model.name}: worst error/bound a-priori {worst_prior:.3f}, running {worst_running:.3f}")
    assert worst_running > 0.15, worst_running
    assert worst_prior > 0.02, worst_prior


def test_bound_with_promotion_and_gamma(rng: np.random.Generator) -> None:
    m = get_tensor_core("hopper", "e4m3", promote_every=128)
    x = _fmt_values(rng, "fp8_e4m3fn", (1000,), 2)
    y = _fmt_values(rng, "fp8_e4m3fn", (1000,), 2)
    err = abs(Fraction(float(tc_dot(x, y, m))) - exact_dot_fraction(x, y))
    assert err <= Fraction(tc_dot_error_bound(x, y, m))
    assert tc_dot_error_bound(x, y, m) < tc_dot_error_bound(x, y, "hopper", "e4m3")  # promotion helps
    # gamma ~ (K/n) ((n + 1) 2**-F + u): Hopper fp16 n = 16, F = 25, u = 2**-23
    assert tc_gamma(4096, "hopper") == pytest.approx(256 * (17 * 2.0**-25 + 2.0**-23), rel=1e-3)
    assert tc_dot_error_bound([math.inf], [1.0], "hopper") == math.inf


# --- the tensor-core profiles of linalg and the bounds ---------------------------------------


def test_linalg_tensor_core_profiles(rng: np.random.Generator) -> None:
    from fpanalysis.linalg import Profile, conv2d, dot, matmul

    A = _fmt_values(rng, "fp16", (6, 70), 3)
    B = _fmt_values(rng, "fp16", (70, 4), 3)
    want = tc_matmul(A, B, "hopper").astype(np.float16).astype(np.float32)  # fp32 result, then the output fp16
    assert np.array_equal(matmul(A, B, "fp16", "hopper"), want)
    assert np.array_equal(matmul(A, B, "fp16", "h100"), want)
    assert Profile.parse("A100") is Profile.AMPERE and Profile.AMPERE.tensor_core == "ampere"
    assert Profile.FP32_ACCUMULATE.tensor_core is None
    # 1 + 2**-11 is a tie of the fp16 output; two 2**-24 tip it upwards on Hopper (F = 25 keeps them:
    # fp32 result 1 + 2**-11 + 2**-23) but not on Volta (F = 23 truncates both: an exact tie, to even)
    x = np.array([1.0, 2.0**-11, 2.0**-24, 2.0**-24], np.float16)
    assert dot(x, np.ones(4, np.float16), "fp16", "volta") == np.float16(1.0)
    assert dot(x, np.ones(4, np.float16), "fp16", "hopper") == np.float16(1 + 2.0**-10)
    # conv2d: 3x3 kernel on one channel: K = 9 <= n, one fused step (any order of the terms gives the same)
    img = _fmt_values(rng, "bf16", (1, 1, 5, 5), 2)
    ker = _fmt_values(rng, "bf16", (1, 1, 3, 3), 2)
    out = conv2d(img, ker, fmt="bf16", profile="ampere")
    patch = img[0, 0, 1:4, 2:5].reshape(-1)
    ref = tc_dot(patch, ker.reshape(-1), "ampere", "bf16")
    assert out[0, 0, 1, 2] == float(round_to(float(ref), "bf16"))
    with pytest.raises(ValueError, match="volta has no tensor-core instruction for bf16"):
        matmul(A, B, "bf16", "volta", round_inputs=True)
    with pytest.raises(ValueError, match="not 'fp32'"):
        matmul(A, B, "fp32", "hopper")
    with pytest.raises(ValueError, match="tensor-core aliases"):
        matmul(A, B, "fp16", "pascal")


def test_accumulation_bound_tensor_core_branch(rng: np.random.Generator) -> None:
    from fpanalysis.analysis.network_bounds import BoundConfig
    from fpanalysis.bounds import accumulation_bound, matmul_bound
    from fpanalysis.linalg import matmul
    from fpanalysis.reference import exact_matmul

    # with |s| = 0 only the accumulation term is left: Volta (4-term steps, F = 23) is worse than binary32
    # recursive summation, Hopper (16-term steps, F = 25) better: gamma ~ 1024 * 6 * 2**-23 vs 4096 * 2**-24
    volta = accumulation_bound(1.0, 4096, "fp16", "volta", abs_result=0.0, input_max=(1.0, 1.0)).value
    hopper = accumulation_bound(1.0, 4096, "fp16", "hopper", abs_result=0.0, input_max=(1.0, 1.0)).value
    fp32 = accumulation_bound(1.0, 4096, "fp16", "fp32-accumulate", abs_result=0.0).value
    assert hopper < fp32 < volta
    assert volta == pytest.approx(1024 * (5 * 2.0**-23 * (1 + 2.0**-23) + 2.0**-23), rel=0.01)
    for prof in ("volta", "ampere", "hopper"):
        A = _fmt_values(rng, "fp16", (5, 300), 4)
        B = _fmt_values(rng, "fp16", (300, 3), 4)
        err = np.abs(matmul(A, B, "fp16", prof) - np.asarray(exact_matmul(A, B), dtype=np.float64))
        assert (err <= matmul_bound(A, B, "fp16", prof).value).all()
    assert BoundConfig.make("fp16", "H200").profile == "hopper"


def test_fp8_profile_promotes_and_its_bound_holds(rng: np.random.Generator) -> None:
    from fpanalysis.bounds import matmul_bound
    from fpanalysis.linalg import matmul
    from fpanalysis.reference import exact_matmul

    A = _fmt_values(rng, "fp8_e4m3fn", (4, 700), 2)
    B = _fmt_values(rng, "fp8_e4m3fn", (700, 3), 2)
    promoted = tc_matmul(A, B, "hopper", "e4m3", promote_every=128)
    out = matmul(A, B, "fp8_e4m3fn", "hopper")
    assert np.array_equal(out, np.asarray(round_to(promoted, "fp8_e4m3fn"), dtype=np.float32))
    exact = np.asarray(exact_matmul(A, B), dtype=np.float64)
    for every in (128, None):
        model = get_tensor_core("hopper", "e4m3", promote_every=every)
        err = np.abs(tc_matmul(A, B, model).astype(np.float64) - exact)
        gam, absolute = tc_accumulation_coefficients(700, model, (448.0, 448.0))
        assert (err <= gam * (np.abs(A) @ np.abs(B)) + absolute).all()
    err = np.abs(out - exact)
    assert (err <= matmul_bound(A, B, "fp8_e4m3fn", "hopper").value).all()

"""The register-tiled tensor-core GEMM kernel (fp16 and FP8 inputs) against the exact-rational
twin ``dot_python``, entry by entry, on adversarial matrices: exponent spreads around the
alignment width, ties at the truncation point, subnormal inputs and products, the zero-exponent
floor, cancellation, block sums at the int32 limit, infinities and NaNs, fp16 overflow and
promotion, with tile-edge shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fpanalysis._kernels import tensorcore as K
from fpanalysis.rounding import round_to
from fpanalysis.tensorcore import _INPUTS, _tiled_mask, get_tensor_core, tc_matmul

MODELS = [
    ("hopper", "fp16", "fp32", None),
    ("hopper", "fp16", "fp16", None),
    ("blackwell", "fp16", "fp32", None),
    ("volta", "fp16", "fp32", None),
    ("volta", "fp16", "fp16", None),
    ("ampere", "fp16", "fp32", None),
    ("ada", "e4m3", "fp32", None),
    ("hopper", "e5m2", "fp32", "e4m3"),
    ("hopper", "e4m3", "fp16", None),
]
_MAXSIG = {"fp16": 2.0 - 2.0**-10, "fp8_e4m3fn": 1.75, "fp8_e5m2": 1.75}


def _model(arch, a, acc, b):  # type: ignore[no-untyped-def]
    return get_tensor_core(arch, a, acc, b_inputs=b)


def _q(x: np.ndarray, fmt: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(round_to(np.asarray(x, dtype=np.float64), fmt), dtype=np.float64)


def _adversarial(model, rng: np.random.Generator, M: int, Kd: int, N: int, kind: str):  # type: ignore[no-untyped-def]
    """A (M, Kd) and B (Kd, N) numbers of the model's input formats built for ``kind``."""
    fa, fb, n, F = model.a_format, model.b_format, model.n, model.F
    emin = min(_INPUTS[fa][1], _INPUTS[fb][1])
    A = rng.standard_normal((M, Kd))
    B = rng.standard_normal((Kd, N))
    if kind == "spread":  # in each block one large product and the others F-3 .. F+2 binades below
        d = rng.integers(F - 3, F + 3, (M, Kd))
        A = np.where(np.arange(Kd) % n == 0, 1.5, 1.0 + rng.integers(0, 8, (M, Kd)) / 8) * 2.0 ** np.minimum(6, 6 - d // 2)
        B = np.sign(rng.standard_normal((Kd, N))) * (1.0 + rng.integers(0, 8, (Kd, N)) / 8) * 2.0 ** (
            -np.ceil(rng.integers(F - 3, F + 3, (Kd, N)) / 2) * (np.arange(Kd)[:, None] % n != 0))
    elif kind == "ties":  # products that are odd multiples of half the quantum 2**(E - F)
        A = np.where(np.arange(Kd) % n == 0, 2.0**4, 2.0 ** (4 - F // 2 - 1)) * np.ones((M, Kd))
        B = np.where((np.arange(Kd) % n == 0)[:, None], 1.0, 2.0 ** -(F - F // 2) * 1.5) * np.sign(
            rng.standard_normal((Kd, N)))
    elif kind == "subnormal":  # subnormal inputs and products far below the normal range
        A = rng.standard_normal((M, Kd)) * 2.0 ** (emin + rng.integers(-3, 3, (M, Kd)))
        B = rng.standard_normal((Kd, N)) * 2.0 ** (emin + rng.integers(-3, 8, (Kd, N)))
    elif kind == "floor":  # zeros next to tiny products: the zero-exponent floor decides E
        A = rng.standard_normal((M, Kd)) * 2.0 ** (emin + 2)
        B = rng.standard_normal((Kd, N)) * 2.0 ** (emin + 2)
        A[rng.random((M, Kd)) < 0.2] = 0.0
        B[rng.random((Kd, N)) < 0.1] = 0.0
    elif kind == "cancel":  # pairs x, -x and a large running sum that cancels
        A = np.round(rng.standard_normal((M, Kd)) * 8) / 8
        B = np.abs(np.round(rng.standard_normal((Kd, N)) * 8) / 8) + 0.125
        A[:, 1::2] = -A[:, ::2][:, : A[:, 1::2].shape[1]]
        A[:, -1] += 2.0**-9
    elif kind == "int32":  # block 0: one product of 127, so c = 127 = 2**(E+1) - 1 for block 1, whose
        # products all have the block's largest exponent E = 6 and the largest significand
        A = np.full((M, Kd), _MAXSIG[fa] * 2.0**3)
        B = np.full((Kd, N), _MAXSIG[fb] * 2.0**3)
        A[:, 0], A[:, 1:n], B[0, :] = 15.875, 0.0, 8.0
        B *= np.where(rng.random(N) < 0.5, 1.0, -1.0)[None, :]
    elif kind == "specials":  # infinities, NaNs, and sums that overflow an fp16 accumulator
        A = rng.standard_normal((M, Kd)) * 2.0**6
        B = rng.standard_normal((Kd, N)) * 2.0**6
        A[0, 1] = math.inf if fa != "fp8_e4m3fn" else math.nan
        if N > 2:
            B[2, 2] = math.nan
        A[1, :] = np.abs(A[1, :]) + 100.0
        B[:, 0] = np.abs(B[:, 0]) + 100.0
    A, B = _q(A, fa), _q(B, fb)
    if fa == "fp8_e4m3fn":  # no infinity: overflowed values become NaN in round_to; keep them finite
        A[np.isnan(A) & (kind != "specials")] = 0.0
    if fb == "fp8_e4m3fn":
        B[np.isnan(B)] = 0.0
    return A, B


def _twin(model, a, b):  # type: ignore[no-untyped-def]
    n, F, rho, e_zero, emin_a, emin_b, emin_c, promote = model.kernel_args()
    pad = (-len(a)) % n
    return K.dot_python(list(a) + [0.0] * pad, list(b) + [0.0] * pad, 0.0, n, F, rho, e_zero, emin_a,
                        emin_b, emin_c, promote)


def _same(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) == math.copysign(1, y))


@pytest.mark.parametrize("kind", ["spread", "ties", "subnormal", "floor", "cancel", "int32", "specials"])
@pytest.mark.parametrize("spec", MODELS, ids=lambda s: "-".join(x for x in s if x))
def test_tiled_kernel_matches_twin(spec, kind: str, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    model = _model(*spec)
    assert _tiled_mask(model) is not None  # the product below runs on the tiled kernel
    n = model.n
    M, Kd, N = K.TMR + 2, 3 * n + (n // 2 if kind != "int32" else 0), K.TNR + 3  # ragged tiles and K
    for promote in (None, 2 * n) if kind in ("spread", "cancel") else (None,):
        m = model.with_promotion(promote)
        A, B = _adversarial(m, rng, M, Kd, N, kind)
        C = tc_matmul(A, B, m)
        if m.a_format == m.b_format == "fp16":  # float16 arrays: the kernel reads their bits
            C16 = tc_matmul(A.astype(np.float16), B.astype(np.float16), m)
            assert np.array_equal(C16.view(np.uint8), C.view(np.uint8))
        for i in range(M):
            for j in range(N):
                want = float(m.output_dtype(_twin(m, A[i], B[:, j])))  # promoted fp16: the fp32 total as fp16
                assert _same(float(C[i, j]), want), (kind, promote, i, j, float(C[i, j]), want)


def test_int32_limit_is_reached(rng: np.random.Generator) -> None:
    """In the int32 case on Hopper fp16 the truncated products of block 1 sum to within 2**-9 of
    2**31, and with the accumulator's term the total exceeds 2**31: the case exercises the limit
    the tiled kernel relies on (products summed in int32, the accumulator's term apart)."""
    m = get_tensor_core("hopper", "fp16", "fp32")
    n, F = m.n, m.F
    A, B = _adversarial(m, rng, 2, 2 * n, 3, "int32")
    p = float(A[0, n] * B[n, 0])
    assert abs(p) == (2.0 - 2.0**-10) ** 2 * 2.0**6  # exponent E = 6, the largest significand
    sum_products = n * abs(p) * 2.0 ** (F - 6)  # every truncated term is exact here
    assert 2**31 * (1 - 2**-9) < sum_products < 2**31
    assert sum_products + 127 * 2.0 ** (F - 6) > 2**31
    assert float(_twin(m, A[0], B[:, 0])) == math.copysign(float(np.float32(
        (n * abs(p) * 2.0**19 + 127 * 2.0**19) // 2**8 * 2**8 / 2.0**19)), B[n, 0])


def test_serial_and_parallel_tiled_kernels_agree_with_generic_kernel(rng: np.random.Generator) -> None:
    """Both entry points of the tiled kernel against the float64 kernel ``gemm`` (itself checked
    against the twin and mmasim), on a larger random product with zeros."""
    for spec in (("hopper", "fp16", "fp32", None), ("ampere", "fp16", "fp16", None), ("hopper", "e4m3", "fp32", None)):
        m = _model(*spec)
        n, F, rho, e_zero, emin_a, emin_b, emin_c, promote = m.kernel_args()
        A = _q(rng.standard_normal((37, 8 * n)) * 2.0 ** rng.integers(-8, 8, (37, 8 * n)), m.a_format)
        B = _q(rng.standard_normal((8 * n, 70)) * 2.0 ** rng.integers(-8, 8, (8 * n, 70)), m.b_format)
        A[~np.isfinite(A)] = 0.0
        B[~np.isfinite(B)] = 0.0
        A[rng.random(A.shape) < 0.05] = 0.0
        EA, A0 = K.exponents(A, emin_a)
        EB, B0 = K.exponents(B, emin_b)
        ZA = (A0 == 0).reshape(37, 8, n).any(axis=2)
        ZB = (B0 == 0).reshape(8, n, 70).any(axis=1)
        ref = K.gemm(A0, B0, EA, EB, ZA, ZB, n, F, rho, e_zero, emin_c, promote)
        mask = _tiled_mask(m)
        for kernel in (K.gemm_tiled_serial, K.gemm_tiled):
            got, bad_a, bad_b = kernel(A.astype(np.float32), B.astype(np.float32), n, F, rho, e_zero, emin_a,
                                       emin_b, emin_c, promote, mask)
            assert np.array_equal(got.astype(np.float64), ref), (spec, kernel)
            assert not bad_a.any() and not bad_b.any()
            if m.a_format == "fp16":
                A16, B16 = A.astype(np.float16), B.astype(np.float16)
                A16[3, 5], B16[7, 11] = np.inf, np.nan
                got16, bad_a, bad_b = kernel(A16.view(np.uint16), B16.view(np.uint16), n, F, rho, e_zero, emin_a,
                                             emin_b, emin_c, promote, mask)
                assert np.flatnonzero(bad_a).tolist() == [3] and np.flatnonzero(bad_b).tolist() == [11]
                A16[3, 5], B16[7, 11] = 0.0, 0.0  # non-finite inputs count as zeros in the kernel
                EA, A0 = K.exponents(A16.astype(np.float64), emin_a)
                EB, B0 = K.exponents(B16.astype(np.float64), emin_b)
                ZA = (A0 == 0).reshape(37, 8, n).any(axis=2)
                ZB = (B0 == 0).reshape(8, n, 70).any(axis=1)
                ref16 = K.gemm(A0, B0, EA, EB, ZA, ZB, n, F, rho, e_zero, emin_c, promote)
                assert np.array_equal(got16.astype(np.float64), ref16), (spec, kernel)


def test_models_outside_the_tiled_kernel() -> None:
    """bf16 and tf32 inputs, and Blackwell FP8 (F = 25: block sums beyond int32), use the float64
    kernel."""
    assert _tiled_mask(get_tensor_core("hopper", "bf16")) is None
    assert _tiled_mask(get_tensor_core("ampere", "tf32")) is None
    assert _tiled_mask(get_tensor_core("blackwell", "e4m3")) is None
    assert _tiled_mask(get_tensor_core("hopper", "fp16")) == -(1 << 29)
    assert _tiled_mask(get_tensor_core("hopper", "e4m3")) == -(1 << 39)

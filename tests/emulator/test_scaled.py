"""Block-scaled formats (fpanalysis.scaled): element and scale encodings against ml_dtypes,
block quantisation against an independent ml_dtypes-based reference and against the NumPy twin,
with injected bugs that the checks must catch."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fpanalysis import scaled as S
from fpanalysis._kernels import scaled as K
from fpanalysis.formats import FloatFormat, Overflow
from fpanalysis.rounding import RoundingMode, round_numpy

ML = {
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e2m1": ml_dtypes.float4_e2m1fn,
}
BITS = {"e4m3": 8, "e5m2": 8, "e2m3": 6, "e3m2": 6, "e2m1": 4}


def _all_bf16_and_f16() -> np.ndarray:
    """Every bfloat16 and every float16 value, as float64 (ties and subnormals of all the
    element formats included)."""
    codes = np.arange(1 << 16, dtype=np.uint16)
    with np.errstate(invalid="ignore"):  # signalling NaN patterns warn when widened
        v = np.concatenate([codes.view(ml_dtypes.bfloat16).astype(np.float64), codes.view(np.float16).astype(np.float64)])
    return v[np.isfinite(v)]


# --- encodings -----------------------------------------------------------------------------


@pytest.mark.parametrize("element", list(ML))
def test_element_values_match_ml_dtypes(element: str) -> None:
    codes = np.arange(1 << BITS[element], dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        ref = codes.view(ML[element]).astype(np.float64)
    mine = S.element_values(element)
    assert mine.shape == ref.shape
    np.testing.assert_array_equal(mine, ref)  # NaN positions and signed zeros included
    assert np.array_equal(np.signbit(mine), np.signbit(ref))
    assert S.get_scaled_format({"e4m3": "mxfp8_e4m3", "e5m2": "mxfp8_e5m2", "e2m3": "mxfp6_e2m3",
                                "e3m2": "mxfp6_e3m2", "e2m1": "mxfp4_e2m1"}[element]).element_format.max == np.nanmax(ref[np.isfinite(ref)])


@pytest.mark.parametrize("element", list(ML))
def test_element_rounding_and_encoding_match_ml_dtypes(element: str) -> None:
    """Round to nearest even, saturating: every bf16 and fp16 value (clipped to +-max first for
    the FP8 types, whose ml_dtypes conversion gives NaN/Inf on overflow)."""
    x = _all_bf16_and_f16()
    fmax = S._ELEMENTS[element][0].max
    ref = np.clip(x, -fmax, fmax).astype(ML[element]).view(np.uint8)
    mine = S.encode_elements(x, element)
    bad = np.flatnonzero(mine != ref)
    assert bad.size == 0, (x[bad[:5]], mine[bad[:5]], ref[bad[:5]])
    np.testing.assert_array_equal(S.decode_elements(mine, element), np.clip(x, -fmax, fmax).astype(ML[element]).astype(np.float64))


def test_e8m0_encoding_matches_ml_dtypes() -> None:
    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(S.e8m0_decode(codes), codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float64))
    e = np.arange(-127, 128)
    ref = np.ldexp(1.0, e).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    np.testing.assert_array_equal(S.e8m0_encode(e), ref)
    with pytest.raises(ValueError, match="-127, 127"):
        S.e8m0_encode([128])


# --- block quantisation against an independent reference ----------------------------------


def _reference(x: np.ndarray, fmt: S.BlockScaledFormat) -> tuple[np.ndarray, np.ndarray, float]:
    """Block quantisation written from the specifications with ml_dtypes doing every rounding:
    last axis, length a multiple of the block size, finite input."""
    B = fmt.block_size
    xb = x.astype(np.float64).reshape(-1, B)
    amax = np.abs(xb).max(axis=1)
    el = ML[fmt.element]
    emax_elem = int(np.floor(np.log2(float(ml_dtypes.finfo(el).max))))
    fmax = float(ml_dtypes.finfo(el).max)
    if fmt.scale == "e8m0":
        with np.errstate(divide="ignore"):
            sh = np.clip(np.floor(np.log2(amax)) - emax_elem, -127, 127)
        sh = np.where(amax == 0, -127, sh)
        scales = np.ldexp(1.0, sh.astype(np.int64)).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
        d = np.ldexp(1.0, sh.astype(np.int64))
        t = 1.0
    else:
        am = float(np.abs(x).max())
        t = float(np.float32(am / (6.0 * 448.0))) if am > 0 else 1.0
        s8 = np.clip(amax / (6.0 * t), 0, 448.0).astype(ml_dtypes.float8_e4m3fn)
        scales = s8.view(np.uint8)
        d = s8.astype(np.float64) * t
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(d[:, None] > 0, xb / d[:, None], 0.0)
    codes = np.clip(v, -fmax, fmax).astype(el).view(np.uint8)
    codes = np.where(d[:, None] > 0, codes, 0).astype(np.uint8)
    return codes, scales, t


def _test_data(rng: np.random.Generator, rows: int = 300, cols: int = 64) -> np.ndarray:
    mag = np.exp2(rng.integers(-140, 120, size=(rows, 1)).astype(np.float64))
    x = rng.standard_normal((rows, cols)) * mag
    x[0] = 0.0
    x[1, :] = 2.0**-149  # all fp32 subnormal: scale clamps at 2**-127
    x[2, :] = rng.choice([-1.0, 1.0], cols) * 448.0 * 2.0**100
    x[3, 5] = 3.0e38
    # exact ties and values near powers of two
    x[4] = np.ldexp(rng.integers(1, 64, cols).astype(np.float64) + 0.5, -3)
    x[5] = np.nextafter(np.float32(2.0**10), np.float32(0))
    return np.clip(x, -3.4e38, 3.4e38).astype(np.float32)


def _mismatches(x: np.ndarray, name: str) -> int:
    fmt = S.get_scaled_format(name)
    q = S.quantize(x, fmt)
    codes, scales, t = _reference(x, fmt)
    assert q.tensor_scale == t
    return int(np.count_nonzero(q.codes.reshape(codes.shape) != codes)) + int(
        np.count_nonzero(q.scales.reshape(-1) != scales)
    )


@pytest.mark.parametrize("name", list(S.SCALED_FORMATS))
def test_quantize_matches_ml_dtypes_reference(name: str, rng: np.random.Generator) -> None:
    x = _test_data(rng)
    assert _mismatches(x, name) == 0
    # the dequantised values are the reference's element values times its scales
    fmt = S.get_scaled_format(name)
    codes, scales, t = _reference(x, fmt)
    el = codes.view(ML[fmt.element]).astype(np.float64)
    sc = scales.view(ml_dtypes.float8_e8m0fnu if fmt.scale == "e8m0" else ml_dtypes.float8_e4m3fn).astype(np.float64)
    expect = (el * sc[:, None] * (t if fmt.tensor_scale else 1.0)).astype(np.float32).reshape(x.shape)
    np.testing.assert_array_equal(S.dequantize(S.quantize(x, fmt)), expect)
    np.testing.assert_array_equal(S.quantize_dequantize(x, fmt), expect)


def test_injected_scale_exponent_bug_is_caught(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that picks the shared exponent one too large (ceil-like selection) fails."""
    x = _test_data(rng, rows=8)
    assert _mismatches(x, "mxfp8_e4m3") == 0
    real = K.mx_quantize_f32  # the kernel of float32 input, nearest even

    def wrong_scale(x2, c, s, p, emin, emax, *rest):  # type: ignore[no-untyped-def]
        return real(x2, c, s, p, emin, emax - 1, *rest)

    monkeypatch.setattr(K, "mx_quantize_f32", wrong_scale)
    assert _mismatches(x, "mxfp8_e4m3") > 0


def test_injected_rounding_bug_is_caught(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that truncates the elements (toward zero) instead of rounding to nearest fails."""
    x = _test_data(rng, rows=8)
    assert _mismatches(x, "mxfp4") == 0
    generic = K.mx_quantize_serial

    def truncating(x2, c, s, p, emin, emax, mx, mbits, nbits, minsub):  # type: ignore[no-untyped-def]
        return generic(x2, c, s, p, emin, emax, 2.0**emin, mx, 2, np.uint64(0), 0, mbits, nbits, minsub)

    monkeypatch.setattr(K, "mx_quantize_f32", truncating)
    assert _mismatches(x, "mxfp4") > 0


def test_reference_catches_nvfp4_scale_bug(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """NVFP4 with the block scale computed against E2M1 max 4 instead of 6 fails the check."""
    x = _test_data(rng, rows=8)
    real = K.nv_quantize

    def wrong(x2, c, s, t, p, emin, mn, mx, *rest):  # type: ignore[no-untyped-def]
        return real(x2, c, s, t, p, emin, mn, 4.0, *rest)

    monkeypatch.setattr(K, "nv_quantize", wrong)
    assert _mismatches(x, "nvfp4") > 0


# --- kernels against the NumPy twin: all formats, both modes, specials, axes ----------------


@pytest.mark.parametrize("name", list(S.SCALED_FORMATS))
@pytest.mark.parametrize("mode", ["nearest-even", "stochastic"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_matches_numpy_twin(name: str, mode: str, dtype: type, rng: np.random.Generator) -> None:
    fmt = S.get_scaled_format(name)
    x = _test_data(rng).astype(np.float64)
    x[6, 7] = np.nan
    x[7, 50] = -np.inf
    if dtype is np.float64:  # beyond the E8M0 range: scale clamps at 2**127, elements saturate
        x[8] *= 2.0**700 if not fmt.tensor_scale else 2.0**-300
        x[9] *= 2.0**-700
    else:
        x[8] = 3.0e38 * np.sign(x[8])  # the top of float32: saturation in every format
        x[9] *= 2.0**-100
    x = x.astype(dtype)
    m = RoundingMode.parse(mode)
    seed = 11 if m is RoundingMode.STOCHASTIC else None
    for rbits in ([None, 5] if seed is not None else [None]):
        q = S.quantize(x, fmt, mode=mode, seed=seed, random_bits=rbits)
        key = S._stream_key(11) if seed is not None else np.uint64(0)
        codes, scales, sat, und = S._quantize_numpy(
            x.reshape(-1, fmt.block_size), fmt, m, key, rbits, tscale=q.tensor_scale
        )
        np.testing.assert_array_equal(q.codes.reshape(codes.shape), codes)
        np.testing.assert_array_equal(q.scales.reshape(-1), scales)
        assert (q.saturated, q.underflow) == (sat, und)
        assert q.nonfinite_blocks == 2
        assert q.saturated > 0 and q.underflow > 0
        # the fused quantise-dequantise kernel (float64 path here) gives the same values
        y = S.quantize_dequantize(x, fmt, mode=mode, seed=seed, random_bits=rbits)
        np.testing.assert_array_equal(y, S.dequantize(q))


def test_nan_block_and_zero_block() -> None:
    x = np.zeros(96, dtype=np.float32)
    x[40] = np.nan
    x[70] = 1.0
    q = S.quantize(x, "mxfp8")
    assert q.scales.tolist() == [0, 255, 127 - 8]
    y = S.dequantize(q)
    assert np.all(np.isnan(y[32:64])) and np.all(y[:32] == 0) and y[70] == 1.0
    yf = S.quantize_dequantize(x, "mxfp8")
    np.testing.assert_array_equal(yf, y)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_axis_and_padding(axis: int, rng: np.random.Generator) -> None:
    """Quantising along an axis equals quantising the moved, zero-padded array along its last axis."""
    x = rng.standard_normal((37, 45)).astype(np.float32)
    for name in ("mxfp6_e3m2", "nvfp4"):
        y = S.quantize_dequantize(x, name, axis=axis)
        xm = np.moveaxis(x, axis, -1)
        B = S.get_scaled_format(name).block_size
        L = xm.shape[-1]
        pad = np.zeros(xm.shape[:-1] + (-L % B,), dtype=np.float32)
        ym = S.quantize_dequantize(np.concatenate([xm, pad], axis=-1), name)[..., :L]
        np.testing.assert_array_equal(np.moveaxis(y, axis, -1), ym)
        assert y.shape == x.shape and y.dtype == np.float32


def test_saturation_and_underflow_counts_independent(rng: np.random.Generator) -> None:
    """Counts against a direct computation: saturated = nearest-even rounding with an unbounded
    exponent exceeds the element max; underflow = nonzero input that became zero."""
    fmt = S.MXFP4_E2M1
    x = (rng.standard_normal((200, 32)) * np.exp2(rng.uniform(-3, 3, (200, 32)))).astype(np.float32)
    q = S.quantize(x, fmt)
    sh = np.floor(np.log2(np.abs(x.astype(np.float64)).max(axis=1))) - 2
    v = x / np.exp2(sh)[:, None]
    wide = FloatFormat("e2m1-wide", p=2, emin=0, emax=10, overflow=Overflow.INF)
    r = round_numpy(v.reshape(-1), wide, RoundingMode.NEAREST_EVEN)
    assert q.saturated == int(np.count_nonzero(np.abs(r) > 6.0)) > 0
    y = S.dequantize(q)
    assert q.underflow == int(np.count_nonzero((x != 0) & (y == 0))) > 0
    assert q.saturation_share == q.saturated / x.size


def test_stochastic_rounding_is_unbiased() -> None:
    """Mean over streams of stochastically rounded MXFP4 values approaches the input."""
    x = np.array([0.3, -0.7, 1.1, 2.6, 5.0, 0.05, -3.3, 6.0] * 4, dtype=np.float64)
    acc = np.zeros_like(x)
    n = 4000
    for s in range(n):
        acc += S.quantize_dequantize(x, "mxfp4", mode="stochastic", seed=5, stream=s)
    # elements lie on a grid of spacing <= 1 here (scale 1): std of the mean <= 0.5/sqrt(n)
    assert np.max(np.abs(acc / n - x)) < 6 * 0.5 / np.sqrt(n)
    rne = S.quantize_dequantize(x, "mxfp4")
    assert np.max(np.abs(rne - x)) > 0.1  # the test would notice a nearest-even "stochastic" mode


def test_bad_input_messages() -> None:
    with pytest.raises(ValueError, match="fp32 range"):
        S.quantize(np.array([1e300]), "nvfp4")
    with pytest.raises(ValueError, match="mxfp8_e4m3.*nvfp4"):
        S.quantize(np.ones(4), "mxfp3")
    with pytest.raises(ValueError, match="nearest-even.*stochastic"):
        S.quantize(np.ones(4), "mxfp8", mode="toward-zero")
    with pytest.raises(ValueError, match="seed"):
        S.quantize(np.ones(4), "mxfp8", mode="stochastic")
    with pytest.raises(ValueError, match="axis"):
        S.quantize(np.ones((4, 4)), "mxfp8", axis=2)
    with pytest.raises(TypeError, match="float32/float64"):
        S.quantize(np.array(["a"]), "mxfp8")
    with pytest.raises(ValueError, match="e4m3, e5m2"):
        S.BlockScaledFormat("x", "e9m9", 32, "e8m0")
    with pytest.raises(ValueError, match="no NaN"):
        S.encode_elements([np.nan], "e2m1")


# --- block-scaled products against mmasim's Blackwell block-scale MMA, bit for bit -----------

MX_NAMES = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4_e2m1"]


def _mmasim_matmul(qa: S.BlockScaledTensor, qb: S.BlockScaledTensor, c: np.ndarray) -> np.ndarray:
    """Chain mmasim's m16n8 block-scale MMA over K (the accumulator carries between steps)."""
    torch = pytest.importorskip("torch")
    sim = pytest.importorskip("mmasim.nv_ptx.sim")
    M, K = qa.shape
    N = qb.shape[1]
    ca = qa.codes.reshape(M, -1).astype(np.uint8)
    cb = qb.codes.reshape(N, -1).astype(np.uint8)
    D = torch.from_numpy(c.astype(np.float32).copy())
    if qa.fmt.scale == "e8m0":
        inst = f"m16n8k32.kind::mxf8f6f4.block32.f32.{qa.fmt.element}.{qb.fmt.element}.f32.ue8m0"
        mma = sim.MMABlockScale("RTX Blackwell", inst)

        def operand(codes: np.ndarray, el: str) -> object:
            if el in ("e4m3", "e5m2"):  # FP8 as torch fp8; FP6 in bits 5:0 and FP4 in bits 5:2 of a byte
                return torch.from_numpy(codes.copy()).view(torch.float8_e4m3fn if el == "e4m3" else torch.float8_e5m2)
            return torch.from_numpy((codes << (2 if el == "e2m1" else 0)).astype(np.uint8))

        A, B = operand(ca, qa.fmt.element), operand(cb, qb.fmt.element)
        sa = torch.from_numpy(qa.scales.reshape(M, -1).copy()).view(torch.float8_e8m0fnu)
        sb = torch.from_numpy(qb.scales.reshape(N, -1).copy()).view(torch.float8_e8m0fnu)
        for k in range(K // 32):
            D = mma(A[:, 32 * k:32 * k + 32], B[:, 32 * k:32 * k + 32].T, D, sa[:, k:k + 1], sb[:, k:k + 1].T)
    else:
        mma = sim.MMABlockScale("RTX Blackwell", "m16n8k64.kind::mxf4nvf4.block16.f32.e2m1.e2m1.f32.ue4m3")
        A = torch.from_numpy(((ca[:, 0::2] << 4) | ca[:, 1::2]).astype(np.uint8))  # two FP4 per byte
        B = torch.from_numpy(((cb[:, 0::2] << 4) | cb[:, 1::2]).astype(np.uint8))
        sa = torch.from_numpy(qa.scales.reshape(M, -1).copy()).view(torch.float8_e4m3fn)
        sb = torch.from_numpy(qb.scales.reshape(N, -1).copy()).view(torch.float8_e4m3fn)
        for k in range(K // 64):
            D = mma(A[:, 32 * k:32 * k + 32], B[:, 32 * k:32 * k + 32].T, D, sa[:, 4 * k:4 * k + 4], sb[:, 4 * k:4 * k + 4].T)
    return D.numpy()


def _operands(rng: np.random.Generator, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = (rng.standard_normal((16, K)) * np.exp2(rng.integers(-12, 12, (16, 1)))).astype(np.float32)
    b = (rng.standard_normal((K, 8)) * np.exp2(rng.integers(-12, 12, (1, 8)))).astype(np.float32)
    a[3, :40] = 0.0  # a zero block
    b[:, 5] *= 2.0**-115  # tiny scales and, with c = 0 there, subnormal fp32 results
    c = (rng.standard_normal((16, 8)) * np.exp2(rng.integers(-20, 20, (16, 8)))).astype(np.float32)
    c[:, 5] = 0.0
    return a, b, c


@pytest.mark.parametrize("name_a", MX_NAMES)
@pytest.mark.parametrize("name_b", MX_NAMES)
def test_mx_matmul_matches_mmasim(name_a: str, name_b: str, rng: np.random.Generator) -> None:
    a, b, c = _operands(rng, 64)
    qa, qb = S.quantize(a, name_a, axis=1), S.quantize(b, name_b, axis=0)
    mine = S.block_scaled_matmul(qa, qb, c)
    ref = _mmasim_matmul(qa, qb, c)
    np.testing.assert_array_equal(mine.view(np.uint32), ref.view(np.uint32))
    if name_a == name_b == "mxfp8_e4m3":
        assert np.count_nonzero((np.abs(mine) < 2.0**-126) & (mine != 0)) > 0


def test_nvfp4_matmul_matches_mmasim(rng: np.random.Generator) -> None:
    for _ in range(3):
        a, b, c = _operands(rng, 128)
        qa, qb = S.quantize(a, "nvfp4", axis=1), S.quantize(b, "nvfp4", axis=0)
        mine = S.block_scaled_matmul(qa, qb, c)
        np.testing.assert_array_equal(mine.view(np.uint32), _mmasim_matmul(qa, qb, c).view(np.uint32))


def test_matmul_nan_scale_and_sensitivity(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = _operands(rng, 64)
    a[2, 40] = np.nan
    qa, qb = S.quantize(a, "mxfp8_e4m3", axis=1), S.quantize(b, "mxfp8_e4m3", axis=0)
    mine = S.block_scaled_matmul(qa, qb, c)
    ref = _mmasim_matmul(qa, qb, c)
    np.testing.assert_array_equal(mine.view(np.uint32), ref.view(np.uint32))
    assert np.all(np.isnan(mine[2])) and not np.isnan(mine[1]).any()
    # the comparison notices a datapath keeping one fraction bit fewer, and one rounding exactly
    monkeypatch.setitem(S._MMA_K32, "F", 24)
    assert np.count_nonzero(S.block_scaled_matmul(qa, qb, c) != ref) > 0
    monkeypatch.setitem(S._MMA_K32, "F", 25)
    exact = (S.dequantize(qa, np.float64) @ S.dequantize(qb, np.float64) + c).astype(np.float32)
    assert np.count_nonzero(exact[~np.isnan(ref)] != ref[~np.isnan(ref)]) > 0


def test_matmul_argument_errors() -> None:
    x = np.ones((16, 64), dtype=np.float32)
    qa = S.quantize(x, "mxfp8", axis=1)
    with pytest.raises(ValueError, match="axis 0"):
        S.block_scaled_matmul(qa, S.quantize(x.T, "mxfp8", axis=1))
    with pytest.raises(ValueError, match="share the block"):
        S.block_scaled_matmul(qa, S.quantize(x.T, "nvfp4", axis=0))
    with pytest.raises(ValueError, match="multiple of 32"):
        S.block_scaled_matmul(S.quantize(x[:, :48], "mxfp8", axis=1), S.quantize(x.T[:48], "mxfp8", axis=0))


@pytest.mark.parametrize("name, ml", [("fp6_e2m3", ml_dtypes.float6_e2m3fn), ("fp6_e3m2", ml_dtypes.float6_e3m2fn),
                                      ("fp4_e2m1", ml_dtypes.float4_e2m1fn)])
def test_fp6_fp4_presets_match_ml_dtypes(name: str, ml: type) -> None:
    """The FloatFormat presets field by field, and round_to on every bf16/fp16 value."""
    from fpanalysis import get_format, round_to

    f = get_format(name)
    fi = ml_dtypes.finfo(ml)
    assert (f.p, f.emin, f.max, f.min_normal, f.min_subnormal) == (
        fi.nmant + 1, fi.minexp, float(fi.max), float(fi.smallest_normal), float(fi.smallest_subnormal)
    )
    assert f.overflow is Overflow.SATURATE
    x = _all_bf16_and_f16()
    np.testing.assert_array_equal(round_to(x, f), x.astype(ml).astype(np.float64))

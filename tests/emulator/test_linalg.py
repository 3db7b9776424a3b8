"""Tests of fpanalysis.linalg against independent oracles.

The main oracle is an exact-rational twin written here from the definitions: every product and
sum is computed exactly with ``fractions.Fraction`` and rounded by ``round_frac`` (itself checked
against gmpy2/MPFR).  Profile-level checks compare with torch CPU half ``mm``/``conv2d`` and
numpy float16 ``matmul``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

import fpanalysis.linalg as L
from fpanalysis._kernels.bits import counter_random_numpy, stream_key
from fpanalysis.formats import FloatFormat, Overflow, get_format
from fpanalysis.linalg import conv2d, dot, matmul

FP16 = get_format("fp16")
BF16 = get_format("bf16")
FP32 = get_format("fp32")
E4M3 = get_format("fp8_e4m3fn")
DET_MODES = ["nearest-even", "nearest-away", "toward-zero", "up", "down", "odd"]
ALL_MODES = DET_MODES + ["stochastic"]
SEED = 1234


# --- the exact-rational oracle -----------------------------------------------------------------


def round_frac(x, fmt: FloatFormat, mode: str, rbits: int = 0):  # type: ignore[no-untyped-def]
    """Round an exact value (Fraction, or a float inf/nan) to ``fmt``; returns a float.

    Zero results get the sign of ``x`` (callers fix the sign of exact zeros).  Stochastic
    rounding goes up when the top 53 of the 64 random bits, read as a fraction, are below the
    dropped fraction: the rule of ``fpanalysis._kernels.round.round_scalar``.
    """
    if isinstance(x, float) and math.isnan(x):
        return math.nan
    if isinstance(x, float) and math.isinf(x):
        if fmt.overflow is Overflow.INF:
            return x
        return math.copysign(fmt.max, x) if fmt.overflow is Overflow.SATURATE else math.nan
    if x == 0:
        return 0.0
    neg = x < 0
    ax = -x if neg else x
    e = ax.numerator.bit_length() - ax.denominator.bit_length()
    if Fraction(2) ** e > ax:
        e -= 1
    assert Fraction(2) ** e <= ax < Fraction(2) ** (e + 1)
    lo = fmt.emin if fmt.subnormals else fmt.emin - 1
    q = Fraction(2) ** (max(e, lo) - fmt.p + 1)
    t = ax / q
    fl = t.numerator // t.denominator
    frac = t - fl
    if mode == "nearest-even":
        up = frac > Fraction(1, 2) or (frac == Fraction(1, 2) and fl % 2 == 1)
    elif mode == "nearest-away":
        up = frac >= Fraction(1, 2)
    elif mode == "toward-zero":
        up = False
    elif mode == "up":
        up = frac > 0 and not neg
    elif mode == "down":
        up = frac > 0 and neg
    elif mode == "odd":
        up = frac > 0 and fl % 2 == 0
    elif mode == "stochastic":
        up = (rbits >> 11) < frac * 2**53
    else:
        raise AssertionError(mode)
    y = (fl + up) * q
    if y > Fraction(fmt.max):
        to_max = (
            fmt.overflow is Overflow.SATURATE
            or mode in ("toward-zero", "odd")
            or (mode == "up" and neg)
            or (mode == "down" and not neg)
        )
        r = fmt.max if to_max else (math.inf if fmt.overflow is Overflow.INF else math.nan)
    else:
        r = float(y)
        if not fmt.subnormals and y < Fraction(fmt.min_normal):
            r = 0.0
    return -r if neg else r


def _exact(v: float):  # type: ignore[no-untyped-def]
    return v if not math.isfinite(v) else Fraction(v)


def _sbit(v: float) -> bool:
    return math.copysign(1.0, v) < 0


def o_mul(a: float, b: float, fmt, mode, rbits=0):  # type: ignore[no-untyped-def]
    if not (math.isfinite(a) and math.isfinite(b)):
        return round_frac(a * b, fmt, mode)  # float arithmetic is exact for inf/nan cases
    r = round_frac(Fraction(a) * Fraction(b), fmt, mode, rbits)
    return math.copysign(r, -1.0 if _sbit(a) != _sbit(b) else 1.0) if r == 0 else r


def o_add(x: float, y: float, fmt, mode, rbits=0, prod_sign=None):  # type: ignore[no-untyped-def]
    """Rounded x + y (x may be given exactly as a Fraction with its zero sign in prod_sign)."""
    xs = prod_sign if prod_sign is not None else _sbit(float(x))
    xf = x if isinstance(x, Fraction) else _exact(x)
    yf = _exact(y)
    if not (isinstance(xf, Fraction) and isinstance(yf, Fraction)):
        return round_frac(float(xf) + float(yf), fmt, mode)
    z = xf + yf
    if z == 0:
        if xf == 0 and yf == 0 and xs == _sbit(y):
            return -0.0 if xs else 0.0
        return -0.0 if mode == "down" else 0.0
    return round_frac(z, fmt, mode, rbits)


def o_fma(a: float, b: float, c: float, fmt, mode, rbits=0):  # type: ignore[no-untyped-def]
    if not all(math.isfinite(v) for v in (a, b, c)):
        return round_frac(a * b + c, fmt, mode)
    return o_add(Fraction(a) * Fraction(b), c, fmt, mode, rbits, prod_sign=_sbit(a) != _sbit(b))


class Rng:
    """The kernels' random bits: counter_random(stream_key(seed, 0), index)."""

    def __init__(self, seed: int | None):
        self.key = stream_key(seed, 0) if seed is not None else None

    def __call__(self, index: int) -> int:
        if self.key is None:
            return 0
        return int(counter_random_numpy(self.key, np.array([index], dtype=np.uint64))[0])


def oracle_ieee(A, B, fmt, mode, order="sequential", block=32, fma=False, seed=None):  # type: ignore[no-untyped-def]
    rng = Rng(seed if mode == "stochastic" else None)
    M, K = A.shape
    N = B.shape[1]
    C = np.empty((M, N))
    for i in range(M):
        for j in range(N):
            C[i, j] = _oracle_entry(
                [float(v) for v in A[i]],
                [float(v) for v in B[:, j]],
                (i * N + j) * K,
                fmt,
                mode,
                order,
                block,
                fma,
                rng,
            )
    return C


def _oracle_entry(a, b, base, fmt, mode, order, block, fma, rng):  # type: ignore[no-untyped-def]
    """One entry of oracle_ieee; the rounding of ``kind`` for term k uses counter (base+k)*4+kind."""
    K = len(a)

    def ix(k: int, kind: int) -> int:
        return (base + k) * 4 + kind

    def seq(ks):  # type: ignore[no-untyped-def]
        s = 0.0
        for k in ks:
            if fma:
                s = o_fma(a[k], b[k], s, fmt, mode, rng(ix(k, 1)))
            else:
                t = o_mul(a[k], b[k], fmt, mode, rng(ix(k, 0)))
                s = o_add(s, t, fmt, mode, rng(ix(k, 1)))
        return s

    if order == "sequential":
        return seq(range(K))
    if order == "blocked":
        tot = 0.0
        for bi, k0 in enumerate(range(0, K, block)):
            tot = o_add(tot, seq(range(k0, min(K, k0 + block))), fmt, mode, rng(ix(bi, 2)))
        return tot
    # pairwise, Higham's level-by-level definition.  Items are (value, first term); the
    # addition merging [lo, s) and [s, hi) draws the random bits of term s.
    level = [(o_mul(a[k], b[k], fmt, mode, rng(ix(k, 0))), k) for k in range(K)]
    while len(level) > 1:
        nxt = []
        for m in range(len(level) // 2):
            (x, lo), (y, split) = level[2 * m], level[2 * m + 1]
            nxt.append((o_add(x, y, fmt, mode, rng(ix(split, 1))), lo))
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0][0] if level else 0.0


def oracle_fp32acc(A, B, fmt, mode, order="sequential", block=32, fma=False, seed=None):  # type: ignore[no-untyped-def]
    acc = oracle_ieee(A, B, FP32, "nearest-even", order, block, fma)
    rng = Rng(seed if mode == "stochastic" else None)
    out = np.empty_like(acc)
    for e, v in enumerate(acc.reshape(-1)):
        out.reshape(-1)[e] = o_add(0.0, float(v), fmt, mode, rng(e)) if v != 0 else v
    return out


def oracle_exact(A, B, fmt, mode):  # type: ignore[no-untyped-def]
    M, K = A.shape
    out = np.empty((M, B.shape[1]))
    for i in range(M):
        for j in range(B.shape[1]):
            vals = [float(A[i, k]) * float(B[k, j]) for k in range(K)]
            if not all(math.isfinite(v) for v in vals):
                out[i, j] = round_frac(math.fsum(vals), fmt, mode)
                continue
            z = sum((Fraction(float(A[i, k])) * Fraction(float(B[k, j])) for k in range(K)), Fraction(0))
            if z != 0:
                out[i, j] = round_frac(z, fmt, mode)
            else:  # IEEE 754 sec. 6.3 once: -0 in round-down unless every product is +0
                plus_zeros = all(v == 0 and math.copysign(1.0, v) > 0 for v in vals)
                out[i, j] = -0.0 if (mode == "down" and not plus_zeros) else 0.0
    return out


def same(x: np.ndarray, y: np.ndarray) -> bool:
    """Bitwise equality of float arrays, NaNs compared as NaNs, signs of zeros compared."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    both_nan = np.isnan(x) & np.isnan(y)
    eq = (x == y) & (np.signbit(x) == np.signbit(y))
    return bool(np.all(both_nan | eq))


# --- test data ----------------------------------------------------------------------------------


def _fmt_values(fmt: FloatFormat, x: np.ndarray) -> np.ndarray:
    from fpanalysis.rounding import round_to

    return np.asarray(round_to(np.asarray(x, dtype=np.float64), fmt), dtype=np.float64)


def random_case(fmt: FloatFormat, rng: np.random.Generator, M=4, K=23, N=5):  # type: ignore[no-untyped-def]
    A = _fmt_values(fmt, rng.standard_normal((M, K)) * 2.0 ** rng.integers(-3, 4, (M, K)))
    B = _fmt_values(fmt, rng.standard_normal((K, N)))
    return A, B


def adversarial_case(fmt: FloatFormat, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Rows of A against columns of B built to hit stagnation, cancellation, overflow,
    subnormals, signed zeros and special values."""
    K = 24
    u = 2.0**-fmt.p
    big = fmt.max
    tiny = fmt.min_normal * 2.0 ** -(fmt.p - 3) if fmt.subnormals else fmt.min_normal
    rows = [
        [1.0] + [u] * (K - 1),  # stagnation under ieee
        [big, big, -big] + [1.0] * (K - 3),  # overflow on the way (ieee) vs fp32 acc
        [big / 2, big / 2] + [u * big / 4] * (K - 2),  # near the overflow threshold
        [tiny * 3, tiny * 5] + [fmt.min_normal / 4] * (K - 2),  # subnormal products and sums
        [-0.0] * K,  # signed zeros
        [3.0, -3.0] * (K // 2),  # exact cancellation
        list(_fmt_values(fmt, rng.standard_normal(K) * 2.0 ** rng.integers(-6, 6, K))),
        [1.0, math.inf] + [0.5] * (K - 2),
        [math.nan] + [1.0] * (K - 1),
    ]
    A = _fmt_values(fmt, np.array(rows))
    cols = [
        np.ones(K),
        np.array([1.0, -1.0] * (K // 2)),
        _fmt_values(fmt, rng.standard_normal(K)),
        np.concatenate([[2.0 ** -(fmt.p // 2)], np.full(K - 1, 1.0 + 2 * u)]),
        np.zeros(K),
    ]
    B = _fmt_values(fmt, np.stack(cols, axis=1))
    return A, B


def cases(fmt: FloatFormat, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    return [random_case(fmt, rng), adversarial_case(fmt, rng)]


def tall_case(fmt: FloatFormat, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """27 x 24 times 24 x 37: the adversarial rows and columns among random ones, big enough
    for the register-tiled fp32 kernel (whole tiles of C and edge tiles in both directions for
    tiles of 12 x 32 or 6 x 16)."""
    A1, B1 = adversarial_case(fmt, rng)
    A2, B2 = random_case(fmt, rng, M=27 - A1.shape[0], K=A1.shape[1], N=37 - B1.shape[1])
    return np.vstack([A2[:7], A1, A2[7:]]), np.hstack([B2[:, :20], B1, B2[:, 20:]])


# --- the oracle itself -------------------------------------------------------------------------


def test_oracle_rounding_agrees_with_mpfr() -> None:
    """round_frac/o_add/o_fma against gmpy2's binary16 context for the IEEE modes."""
    gmpy2 = pytest.importorskip("gmpy2")
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 0x7C00, 3000, dtype=np.uint16) | (rng.integers(0, 2, 3000, dtype=np.uint16) << 15)
    v = bits.view(np.float16).astype(np.float64)
    modes = {
        "nearest-even": gmpy2.RoundToNearest,
        "toward-zero": gmpy2.RoundToZero,
        "up": gmpy2.RoundUp,
        "down": gmpy2.RoundDown,
    }
    for mode, rm in modes.items():
        ctx = gmpy2.ieee(16)
        ctx.round = rm
        with gmpy2.context(ctx):
            for a, b, c in zip(v[0::3], v[1::3], v[2::3]):
                ga, gb, gc = (gmpy2.mpfr(float(t)) for t in (a, b, c))
                got = (o_mul(a, b, FP16, mode), o_add(a, c, FP16, mode), o_fma(a, b, c, FP16, mode))
                want = (ga * gb, ga + gc, gmpy2.fma(ga, gb, gc))
                for g, w in zip(got, want):
                    assert same(np.array(g), np.array(float(w))), (mode, a, b, c, g, w)


# --- names and validation ----------------------------------------------------------------------


def test_unknown_names_list_valid_ones() -> None:
    A = np.ones((2, 2))
    with pytest.raises(ValueError, match="ieee, fp32-accumulate, exact"):
        matmul(A, A, "fp16", "tensor-core")
    with pytest.raises(ValueError, match="sequential, pairwise, blocked, blas"):
        matmul(A, A, "fp16", "ieee", order="kahan")
    with pytest.raises(ValueError, match="valid modes"):
        matmul(A, A, "fp16", "ieee", mode="bankers")
    with pytest.raises(ValueError, match="only to the fp32-accumulate"):
        matmul(A, A, "fp16", "ieee", order="blas")
    with pytest.raises(ValueError, match="pairwise"):
        matmul(A, A, "fp16", "ieee", order="pairwise", fma=True)
    with pytest.raises(ValueError, match="seed"):
        matmul(A, A, "fp16", "ieee", mode="stochastic")


def test_inputs_must_be_format_numbers() -> None:
    A = np.ones((3, 4))
    A[1, 2] = 0.1
    with pytest.raises(ValueError, match=r"A\[1, 2\] = 0\.1 is not a number of format 'fp16'"):
        matmul(A, np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"B\[0, 0\]"):
        matmul(np.ones((3, 4)), np.full((4, 2), 1e6))
    A32 = np.ones((5, 4), dtype=np.float32)
    A32[4, 3] = 1.0 + 2.0**-12  # a float32 number between two fp16 numbers
    with pytest.raises(ValueError, match=r"A\[4, 3\] = 1\.000244140625 is not"):
        matmul(A32, np.ones((4, 2)), profile="ieee")
    with pytest.raises(ValueError, match=r"x\[1\] = 0\.1 is not a number of format 'bf16'"):
        dot([1.0, 0.1], [1.0, 1.0], "bf16")
    assert dot([1.0, 0.1], [1.0, 1.0], "bf16", round_inputs=True) == 1.1015625
    got = matmul(A, np.ones((4, 2)), round_inputs=True)
    assert got[1, 0] == np.float16(np.float32(np.float16(0.1)) + 3)


# --- ieee profile against the oracle -----------------------------------------------------------


@pytest.mark.parametrize("order", ["sequential", "pairwise", "blocked"])
def test_ieee_fp16_rne_matches_oracle(order: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for A, B in cases(FP16):
        want = oracle_ieee(A, B, FP16, "nearest-even", order, block=5)
        for fast in (True, False):  # native binary16 kernels, then the general float64 kernel
            monkeypatch.setattr(L, "_FAST_PATHS", fast)
            got = matmul(A.astype(np.float32), B.astype(np.float32), "fp16", "ieee", order=order, block=5)
            assert got.dtype == np.float32
            assert same(got, want), (fast, np.argwhere(~((got == want) | (np.isnan(got) & np.isnan(want)))))


def _h16_special_case(rng: np.random.Generator, M: int = 26, K: int = 40, N: int = 35):  # type: ignore[no-untyped-def]
    """binary16 operands mixing subnormals, the largest finite values, +-0, +-inf, NaN, exact
    ties and ordinary values, so that products and sums underflow to subnormals and zero,
    overflow to inf, cancel exactly and meet inf - inf; M and N leave edge tiles of the
    register tile (12 x 32 or 6 x 16) in both directions."""
    specials = np.array(
        [0.0, -0.0, 2.0**-24, -(2.0**-24), 3 * 2.0**-24, 2.0**-14, 1023 * 2.0**-24, 65504.0, -65504.0,
         256.0, -256.0, 1.0 + 2.0**-10, 1.0 - 2.0**-11, 2.0**-7, 0.5, -3.0]
    )
    nonfinite = np.array([math.inf, -math.inf, math.nan])

    def draw(shape):  # type: ignore[no-untyped-def]
        x = rng.standard_normal(shape) * 2.0 ** rng.integers(-12, 9, shape)
        u = rng.random(shape)
        x[u < 0.3] = specials[rng.integers(0, specials.size, int((u < 0.3).sum()))]
        x[u < 0.005] = nonfinite[rng.integers(0, 3, int((u < 0.005).sum()))]
        return _fmt_values(FP16, x)

    A, B = draw((M, K)), draw((K, N))
    A[0] = -0.0  # a row of -0 products: the sum from +0 stays +0
    A[1] = 2.0**-12  # subnormal products 2**-24 * b summed: results near the subnormal range
    B[:, 0] = 2.0**-12
    A[2], B[:, 1] = 0.0, 1.0
    A[2, :3] = [65504.0, 65504.0, -65504.0]  # inf on the way, stays inf
    A[3], B[:, 2] = 0.0, 1.0
    A[3, :2] = [math.inf, -math.inf]  # inf - inf = NaN
    A[4] = 1.0  # stagnation: 1 + many halves of an ulp
    B[:, 3] = 2.0**-11
    return A, B


@pytest.mark.parametrize("order", ["sequential", "blocked"])
def test_ieee_fp16_rne_tiled_matches_oracles(order: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The register-tiled binary16 kernel (float32 registers, every product and sum rounded to
    binary16 by a vector conversion pair) against the exact-rational oracle on special values,
    and against a numpy float16 loop (numpy rounds each float16 operation correctly) on a
    product with three passes over k and edge tiles.  A spy proves which kernel ran: the tiled
    one exactly where the target has F16C and no AVX512-FP16 (never for a generic CPU)."""
    from fpanalysis._kernels import gemm as G

    calls: list[str] = []
    for name in ("h16_tiled", "h16_tiled_serial"):
        orig = getattr(G, name)
        monkeypatch.setattr(G, name, lambda *a, _f=orig, _n=name: calls.append(_n) or _f(*a))
    feats = G.target_features()
    assert G.H16_TILED == ("f16c" in feats and "avx512fp16" not in feats)
    rng = np.random.default_rng(31)
    A, B = _h16_special_case(rng)
    N = B.shape[1]
    got = matmul(A, B, "fp16", "ieee", order=order, block=5)
    want = oracle_ieee(A, B, FP16, "nearest-even", order, block=5)
    assert same(got, want), np.argwhere(~((got == want) | (np.isnan(got) & np.isnan(want))))
    assert (got[0] == 0).sum() > N // 2 and not np.signbit(got[0][got[0] == 0]).any()  # +0, not -0
    assert np.isinf(got[2, 1]) and np.isnan(got[3, 2])
    assert (np.abs(got[1]) < 2.0**-14).any() and (got[1] != 0).any()  # subnormal results
    assert calls == (["h16_tiled_serial"] if G.H16_TILED else [])

    # 70 x 600 x 130: three passes of KC = 256 terms, edge tiles; float16 steps in numpy
    calls.clear()
    M, K, N, blk = 70, 600, 130, 100
    A = _fmt_values(FP16, rng.standard_normal((M, K)) * 4).astype(np.float16)
    B = _fmt_values(FP16, rng.standard_normal((K, N))).astype(np.float16)
    step = blk if order == "blocked" else K
    acc = np.zeros((M, N), dtype=np.float16)
    for k0 in range(0, K, step):
        s = np.zeros((M, N), dtype=np.float16)
        for k in range(k0, min(K, k0 + step)):
            s = s + A[:, k : k + 1] * B[k]  # float16 product, then float16 sum: each RNE
        acc = acc + s
    got = matmul(A, B, "fp16", "ieee", order=order, block=blk)
    assert got.dtype == np.float32
    assert same(got, acc.astype(np.float32))
    assert calls == (["h16_tiled"] if G.H16_TILED else [])


def _is_tie16(x: np.ndarray) -> np.ndarray:
    """Whether each finite float64 ``x`` lies exactly halfway between two binary16 numbers (the
    neighbouring float64 numbers round, in numpy's direct float64 -> float16 conversion, to
    different binary16 numbers, and ``x`` itself is not one)."""
    with np.errstate(over="ignore"):
        lo = np.nextafter(x, -np.inf).astype(np.float16)
        hi = np.nextafter(x, np.inf).astype(np.float16)
        return np.isfinite(x) & (lo != hi) & (x.astype(np.float16).astype(np.float64) != x)


@pytest.mark.parametrize("order", ["sequential", "blocked"])
def test_ieee_fp16_tiled_adversarial(order: str) -> None:
    """The binary16 register tile on operands built to make products and sums tie, results
    subnormal, sums cross 65520 to inf, inf - inf = NaN, -0 products; two passes over k (the
    tile saved and reloaded), edge tiles; every case counted in the full tiles and compared bit
    for bit with numpy float16 done one operation at a time."""
    from fpanalysis._kernels import gemm as G

    if not G.H16_TILED:
        pytest.skip("the binary16 register tile needs F16C without AVX512-FP16")
    rng = np.random.default_rng(12)
    M, K, N, blk = 2 * G.MR + 5, 300, 2 * G.NR + 7, 40
    # few significant bits and exponents 11 apart make exact halfway sums common
    mant = np.array([1.0, 1.5, 1.25, 1.75, 1.0 + 2.0**-10, 1.0 + 3 * 2.0**-10])
    A = rng.choice(mant, (M, K)) * 2.0 ** rng.integers(-6, 6, (M, K)) * rng.choice([-1.0, 1.0], (M, K))
    B = rng.choice(mant, (K, N)) * 2.0 ** rng.integers(-6, 6, (K, N))
    A[: G.MR // 2] *= 2.0**-9  # rows of subnormal products and sums
    A[G.MR // 2 : G.MR, :8] = 2.0**14  # big sums: cross 65520 (inf), some come back with -B
    B[4:8] *= rng.choice([-1.0, 1.0], (4, N))
    u = rng.random((M, K))
    A[u < 0.003] = np.nan
    A[(u > 0.003) & (u < 0.006)] = np.inf
    A[(u > 0.006) & (u < 0.02)] = -0.0
    A[G.MR - 1] = -0.0  # a row of -0 products: +0 results
    A16, B16 = A.astype(np.float16), B.astype(np.float16)  # (small subnormals round)
    A, B = A16.astype(np.float64), B16.astype(np.float64)

    # numpy float16 one operation at a time, counting ties / subnormal and overflowing sums
    step = blk if order == "blocked" else K
    acc = np.zeros((M, N), np.float16)
    ties = np.zeros((M, N), int)
    sub = np.zeros((M, N), bool)
    with np.errstate(over="ignore", invalid="ignore"):
        for k0 in range(0, K, step):
            s = np.zeros((M, N), np.float16)
            for k in range(k0, min(K, k0 + step)):
                a64, b64 = A16[:, k : k + 1].astype(np.float64), B16[k].astype(np.float64)
                p = A16[:, k : k + 1] * B16[k]
                ties += _is_tie16(a64 * b64)
                exact = s.astype(np.float64) + p.astype(np.float64)
                ties += _is_tie16(exact)
                s = s + p
                sub |= (s != 0) & (np.abs(s) < 2.0**-14)
            acc = acc + s
    want = acc.astype(np.float32)
    got = matmul(A, B, "fp16", "ieee", order=order, block=blk)
    assert same(got, want), np.argwhere(~((got == want) | (np.isnan(got) & np.isnan(want))))[:10]

    i, j = np.indices((M, N))
    full = (i < M // G.MR * G.MR) & (j < N // G.NR * G.NR)  # entries of full register tiles
    for part in (full, ~full):
        assert ties[part].sum() > 1000 and sub[part].sum() > 0
        assert np.isinf(got[part]).sum() > 5 and np.isnan(got[part]).sum() > 5
    assert sub[full].sum() > 10 and ((got[full] == 0) & ~np.signbit(got[full])).sum() >= G.NR


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize(
    "order,fma", [("sequential", False), ("sequential", True), ("pairwise", False), ("blocked", True)]
)
def test_ieee_fp16_every_mode_matches_oracle(mode: str, order: str, fma: bool) -> None:
    for A, B in cases(FP16, seed=1):
        got = matmul(A, B, "fp16", "ieee", order=order, block=7, fma=fma, mode=mode, seed=SEED)
        want = oracle_ieee(A, B, FP16, mode, order, block=7, fma=fma, seed=SEED)
        assert same(got, want)


@pytest.mark.parametrize("fmt", [BF16, E4M3])
@pytest.mark.parametrize("mode", ["nearest-even", "down", "odd", "stochastic"])
def test_ieee_other_formats_match_oracle(fmt: FloatFormat, mode: str) -> None:
    for A, B in cases(fmt, seed=2):
        for order, fma in (("sequential", True), ("blocked", False)):
            got = matmul(A, B, fmt, "ieee", order=order, block=4, fma=fma, mode=mode, seed=SEED)
            want = oracle_ieee(A, B, fmt, mode, order, block=4, fma=fma, seed=SEED)
            assert same(got, want), (order, fma)


def test_fma_single_rounding_differs_from_two_roundings() -> None:
    # a*b = 1 + 2**-11 - 2**-21 rounds to 1, and 1 + 2**-20 stays 1; the fused step sees
    # 2**-20 + a*b = 1 + 2**-11 + 2**-21, just above the tie, and rounds up.
    a, b = 1.0 + 2.0**-10, 1.0 - 2.0**-11
    x, y = np.array([2.0**-20, a]), np.array([1.0, b])
    assert dot(x, y, "fp16", "ieee", fma=False) == 1.0
    assert dot(x, y, "fp16", "ieee", fma=True) == 1.0 + 2.0**-10
    assert dot(x[::-1], y[::-1], "fp16", "ieee", fma=True) == 1.0  # order matters


# --- fp32-accumulate against the oracle, torch and numpy ---------------------------------------


@pytest.mark.parametrize("order", ["sequential", "pairwise", "blocked"])
def test_fp32acc_fp16_matches_oracle(order: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    data = cases(FP16, seed=3) + [random_case(FP16, rng, M=13, K=37, N=19)]  # one tile + a row
    for A, B in data:
        want = oracle_fp32acc(A, B, FP16, "nearest-even", order, block=6)
        for fast in (True, False):  # register-tiled kernel (from G.MR rows), then the row loops
            monkeypatch.setattr(L, "_FAST_PATHS", fast)
            got = matmul(A, B, "fp16", "fp32-accumulate", order=order, block=6)
            assert same(got, want), fast


@pytest.mark.parametrize("mode", ALL_MODES)
def test_fp32acc_modes_and_bf16_match_oracle(mode: str) -> None:
    for fmt in (FP16, BF16):
        for A, B in cases(fmt, seed=4):
            for fma in (False, True):
                got = matmul(A, B, fmt, "fp32-accumulate", fma=fma, mode=mode, seed=SEED)
                want = oracle_fp32acc(A, B, fmt, mode, fma=fma, seed=SEED)
                assert same(got, want), (fmt.name, fma)


def test_bf16_products_outside_fp32_range() -> None:
    # bf16 products need not be binary32 numbers: 2**100 * 2**100 overflows the accumulator,
    # and 2**-80 * 2**-80 underflows to 0, while the exact profile sees both.
    x = np.array([2.0**100, 1.0, -(2.0**100)])
    y = np.array([2.0**100, -1.0, 2.0**100])
    assert math.isnan(dot(x, y, "bf16", "fp32-accumulate"))  # inf - inf
    assert dot([2.0**-80], [2.0**-80], "bf16", "fp32-accumulate") == 0.0
    assert dot([2.0**-80], [2.0**-80], "bf16", "ieee") == 0.0  # below bf16's subnormals too


def _bitwise_match_rate(got: np.ndarray, ref16: np.ndarray) -> float:
    g = np.asarray(got, dtype=np.float32).astype(np.float16).view(np.uint16)
    r = ref16.view(np.uint16)
    nan = np.isnan(got) & np.isnan(ref16.astype(np.float32))
    return float(np.mean((g == r) | nan))


def _torch_cases(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    out = []
    for scale in (1.0, 64.0):
        A = (rng.standard_normal((96, 160)) * scale).astype(np.float16)
        B = (rng.standard_normal((160, 72)) * scale).astype(np.float16)
        out.append((f"random x{scale:g}", A, B))
    A, B = adversarial_case(FP16, rng)
    out.append(("adversarial", A.astype(np.float16), B.astype(np.float16)))
    bits = rng.integers(0, 0x7C00, (64, 128), dtype=np.uint16) | (
        rng.integers(0, 2, (64, 128), dtype=np.uint16) << 15
    )
    wide = bits.view(np.float16)  # the whole fp16 range, both signs
    out.append(("all exponents", wide, np.ascontiguousarray(wide.T[:, ::-1])))
    return out


def _fp32acc_bound(abs_terms: np.ndarray, exact: np.ndarray, n: int) -> np.ndarray:
    """The fp32-accumulate deterministic bound (any summation order, FMAs included)."""
    from fpanalysis.bounds import accumulation_bound

    abs_result = np.where(np.isnan(exact), np.inf, np.abs(exact))  # NaN sums (inf - inf): no bound
    return np.asarray(accumulation_bound(abs_terms, n, "fp16", "fp32-accumulate", abs_result=abs_result).value)


@pytest.mark.torch_kernels
def test_fp32acc_equals_torch_half_mm(record_property) -> None:  # type: ignore[no-untyped-def]
    """torch CPU half ``mm``: within the fp32-accumulate bound of the exact product on every
    CPU; bit for bit (>= 0.999 of the entries) with the sequential emulation only where the
    probe shows torch summing sequentially in binary32 (tests/torch_cpu.py)."""
    torch = pytest.importorskip("torch")
    from torch_cpu import assert_within, half_mm_is_sequential_fp32, report_match

    from fpanalysis.reference import exact_matmul

    modelled = half_mm_is_sequential_fp32()
    rates = {}
    for name, A, B in _torch_cases(np.random.default_rng(6)):
        ref = torch.from_numpy(A).mm(torch.from_numpy(B)).numpy()
        A64, B64 = A.astype(np.float64), B.astype(np.float64)
        exact = exact_matmul(A64, B64)  # correctly rounded float64 of the exact sums
        with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 in the adversarial case: no bound
            abs_terms = np.abs(A64) @ np.abs(B64)
        abs_terms = np.where(np.isnan(abs_terms), np.inf, abs_terms)
        assert_within(ref, exact, _fp32acc_bound(abs_terms, exact, A.shape[1]), f"mm {name}")
        got = matmul(A, B, "fp16", "fp32-accumulate")
        rates[name] = _bitwise_match_rate(got, ref)
        report_match(record_property, f"half mm, {name}", rates[name], modelled)
    if modelled:
        assert min(rates.values()) >= 0.999, rates


def test_fp32acc_equals_numpy_float16_matmul() -> None:
    rates = {}
    for name, A, B in _torch_cases(np.random.default_rng(7)):
        with np.errstate(all="ignore"):
            ref = A @ B
        rates[name] = _bitwise_match_rate(matmul(A, B, "fp16", "fp32-accumulate"), ref)
    print("bitwise match with numpy float16 matmul:", rates)
    assert min(rates.values()) >= 0.999, rates


@pytest.mark.parametrize("fma", [False, True])
@pytest.mark.parametrize("order", ["sequential", "blocked"])
@pytest.mark.parametrize("fmt", [FP16, BF16], ids=["fp16", "bf16"])
def test_fp32acc_tiled_kernel_matches_oracle(fmt: FloatFormat, order: str, fma: bool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The register-tiled kernel against the exact-rational oracle, adversarial rows included
    (stagnation, overflow, subnormal products, signed zeros, inf, NaN).  bf16 products are not
    all binary32 numbers, so ``fma=False`` there runs the kernel's multiply-then-add variant."""
    from fpanalysis._kernels import gemm as G

    calls = []
    tiled = G.f32_tiled_serial
    monkeypatch.setattr(G, "f32_tiled_serial", lambda *a: calls.append(1) or tiled(*a))
    A, B = tall_case(fmt, np.random.default_rng(21))
    got = matmul(A, B, fmt, "fp32-accumulate", order=order, block=5, fma=fma)
    assert calls, "the tiled kernel did not run"
    assert same(got, oracle_fp32acc(A, B, fmt, "nearest-even", order, block=5, fma=fma))


@pytest.mark.parametrize("order", ["sequential", "blocked"])
@pytest.mark.parametrize("fmt", [FP16, BF16], ids=["fp16", "bf16"])
def test_fp32acc_equals_numpy_float32_loop(fmt: FloatFormat, order: str) -> None:
    """Larger checks against a vectorised twin: float32 numpy steps acc = acc + a_k * b_k in k
    order (a float32 product, exact for fp16, then a float32 sum; numpy does not fuse them).
    70 x 600 x 130: edge tiles in both directions and three passes over k of the tiled kernel
    (it keeps a tile in registers for 256 terms at a time); blocks of 100 terms for blocked."""
    rng = np.random.default_rng(8)
    M, K, N, blk = 70, 600, 130, 100
    A = _fmt_values(fmt, rng.standard_normal((M, K)) * 4).astype(np.float32)
    B = _fmt_values(fmt, rng.standard_normal((K, N))).astype(np.float32)
    acc = np.zeros((M, N), dtype=np.float32)
    for k0 in range(0, K, blk if order == "blocked" else K):
        s = np.zeros((M, N), dtype=np.float32)
        for k in range(k0, min(K, k0 + (blk if order == "blocked" else K))):
            s = s + A[:, k : k + 1] * B[k]
        acc = acc + s
    want = _fmt_values(fmt, acc)
    assert same(matmul(A, B, fmt, "fp32-accumulate", order=order, block=blk), want)
    if fmt is FP16 and order == "sequential":
        blas = matmul(A, B, order="blas")
        assert same(blas, _fmt_values(fmt, A @ B))
        assert np.mean(blas == want) > 0.99


# --- the stagnation example of the issue ------------------------------------------------------


def test_stagnation_ieee_vs_fp32_accumulate() -> None:
    x = np.array([1.0] + [2.0**-11] * 2048)
    y = np.ones_like(x)
    assert dot(x, y, "fp16", "ieee") == 1.0
    pw = dot(x, y, "fp16", "ieee", order="pairwise")  # pairwise sums the small terms first
    assert (
        1.99 <= pw <= 2.0 and pw == oracle_ieee(x[None], y[:, None], FP16, "nearest-even", "pairwise")[0, 0]
    )
    assert dot(x, y, "fp16", "fp32-accumulate") == 2.0
    assert dot(x, y, "fp16", "fp32-accumulate", order="blas") == 2.0
    # a stochastic fp16 sum does not stagnate on average
    sr = [dot(x, y, "fp16", "ieee", mode="stochastic", seed=s) for s in range(20)]
    assert 1.8 < np.mean(sr) < 2.2


@pytest.mark.parametrize("profile", ["ieee", "fp32-accumulate"])
def test_parallel_and_one_thread_kernels_agree(profile: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Small products run on one thread; force the parallel kernels and compare."""
    from fpanalysis._kernels import gemm as G

    rng = np.random.default_rng(14)
    A, B = random_case(FP16, rng, M=29, K=41, N=23)
    A[3, :5] = [65504.0, 65504.0, -65504.0, np.nan, 2.0**-24]
    configs = [{"order": o} for o in ("sequential", "pairwise", "blocked")]
    configs += [
        {"mode": "stochastic", "seed": 5, "order": "pairwise"},
        {"mode": "up", "fma": True, "order": "blocked"},
    ]
    for fast in (True, False):
        monkeypatch.setattr(L, "_FAST_PATHS", fast)
        for cfg in configs:
            if profile == "fp32-accumulate" and cfg.get("fma") and cfg["order"] == "pairwise":
                continue
            monkeypatch.setattr(G, "SERIAL_BELOW", 1 << 62)
            monkeypatch.setattr(G, "SERIAL_ELEMENTS", 1 << 62)
            one = matmul(A, B, "fp16", profile, block=6, **cfg)
            monkeypatch.setattr(G, "SERIAL_BELOW", 0)
            monkeypatch.setattr(G, "SERIAL_ELEMENTS", 0)
            par = matmul(A, B, "fp16", profile, block=6, **cfg)
            assert same(one, par), (fast, cfg)


# --- stochastic rounding: reproducible and thread independent --------------------------------


def test_stochastic_is_reproducible_and_thread_independent() -> None:
    import numba

    rng = np.random.default_rng(9)
    A, B = random_case(FP16, rng, M=16, K=40, N=12)
    r1 = matmul(A, B, "fp16", "ieee", mode="stochastic", seed=3)
    prev = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        r2 = matmul(A, B, "fp16", "ieee", mode="stochastic", seed=3)
    finally:
        numba.set_num_threads(prev)
    r3 = matmul(A, B, "fp16", "ieee", mode="stochastic", seed=4)
    r4 = matmul(A, B, "fp16", "ieee", mode="stochastic", seed=3, stream=1)
    assert same(r1, r2)
    assert not same(r1, r3) and not same(r1, r4)


@pytest.mark.parametrize("profile", ["ieee", "fp32-accumulate", "exact"])
def test_batched_matmul_with_empty_dimensions(profile: str) -> None:
    """K = 0 gives +0 sums, N = 0 or M = 0 empty results, also with batch dimensions."""
    z = matmul(np.zeros((2, 3, 0)), np.zeros((2, 0, 4)), "fp16", profile)
    assert z.shape == (2, 3, 4) and np.all(z == 0) and not np.any(np.signbit(z))
    assert matmul(np.ones((2, 3, 5)), np.ones((1, 5, 0)), "fp16", profile).shape == (2, 3, 0)
    assert matmul(np.ones((2, 0, 5)), np.ones((5, 4)), "fp16", profile).shape == (2, 0, 4)


def test_batched_matmul_broadcasts_and_uses_distinct_counters() -> None:
    rng = np.random.default_rng(10)
    A = _fmt_values(FP16, rng.standard_normal((3, 1, 4, 9)))
    B = _fmt_values(FP16, rng.standard_normal((2, 9, 5)))
    for profile in ("ieee", "fp32-accumulate"):
        got = matmul(A, B, "fp16", profile, order="pairwise")
        assert got.shape == (3, 2, 4, 5)
        for i in range(3):
            for j in range(2):
                assert same(got[i, j], matmul(A[i, 0], B[j], "fp16", profile, order="pairwise"))
    Bsame = np.broadcast_to(B[:1], (2, 9, 5))
    sr = matmul(A[0], Bsame, "fp16", "ieee", mode="stochastic", seed=1)
    assert not same(sr[0], sr[1])  # same data, different counters
    assert same(sr[0], matmul(A[0, 0], B[0], "fp16", "ieee", mode="stochastic", seed=1))
    assert matmul(A[0, 0, 0], B[0], "fp16").shape == (5,)


# --- exact profile ------------------------------------------------------------------------------


def test_exact_profile_matches_fraction_oracle() -> None:
    ref = pytest.importorskip("fpanalysis.reference")
    if not hasattr(ref, "exact_matmul"):
        pytest.skip("fpanalysis.reference.exact_matmul not available yet")
    for A, B in cases(FP16, seed=11):
        for mode in ("nearest-even", "down", "odd"):
            assert same(matmul(A, B, "fp16", "exact", mode=mode), oracle_exact(A, B, FP16, mode))
    x = np.array([1.0] + [2.0**-11] * 2049)  # exactly 2 + 2**-11: a quarter of the way up
    assert dot(x, np.ones_like(x), "fp16", "exact") == 2.0
    sr = np.array([dot(x, np.ones_like(x), "fp16", "exact", mode="stochastic", seed=s) for s in range(100)])
    assert set(sr) <= {2.0, 2.001953125}
    assert 10 <= np.sum(sr > 2) <= 40  # binomial(100, 1/4): mean 25, sd 4.3


# --- conv2d -------------------------------------------------------------------------------------


def _conv_direct(x, w, bias, stride, padding, groups, fmt, mode):  # type: ignore[no-untyped-def]
    """Direct nested-loop convolution with the ieee oracle (sequential, bias as last term)."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    out = np.empty((n, o, ho, wo))
    og = o // groups
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for yy in range(ho):
                for xx in range(wo):
                    terms = [
                        (float(xp[b, g * cg + ci, yy * stride + u, xx * stride + v]), float(w[oc, ci, u, v]))
                        for ci in range(cg)
                        for u in range(kh)
                        for v in range(kw)
                    ]
                    if bias is not None:
                        terms.append((1.0, float(bias[oc])))
                    s = 0.0
                    for a, bb in terms:
                        s = o_add(s, o_mul(a, bb, fmt, mode), fmt, mode)
                    out[b, oc, yy, xx] = s
    return out


def test_conv2d_ieee_matches_direct_oracle() -> None:
    rng = np.random.default_rng(12)
    x = _fmt_values(FP16, rng.standard_normal((2, 4, 5, 6)) * 8)
    w = _fmt_values(FP16, rng.standard_normal((6, 2, 3, 2)))
    bias = _fmt_values(FP16, rng.standard_normal(6))
    for mode in ("nearest-even", "up"):
        got = conv2d(x, w, bias, stride=2, padding=1, groups=2, fmt="fp16", profile="ieee", mode=mode)
        assert same(got, _conv_direct(x, w, bias, 2, 1, 2, FP16, mode))


@pytest.mark.torch_kernels
def test_conv2d_fp32acc_equals_torch_half(record_property) -> None:  # type: ignore[no-untyped-def]
    """torch CPU half ``conv2d``: within the fp32-accumulate bound (bias as one more term) on
    every CPU; >= 0.99 bitwise matches with the sequential emulation only where the probe shows
    torch summing sequentially in binary32 (tests/torch_cpu.py)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from torch_cpu import assert_within, half_conv2d_is_sequential_fp32, report_match

    modelled = half_conv2d_is_sequential_fp32()
    wide = FloatFormat("binary64-like", 53, -960, 1000)  # exact profile: the exact sum, to 53 bits
    rng = np.random.default_rng(13)
    rates = {}
    for stride, padding, groups, dil, with_bias in (
        (1, 1, 1, 1, True),
        (2, 0, 2, 1, False),
        (1, 2, 4, 2, True),
    ):
        x = (rng.standard_normal((2, 8, 11, 9)) * 4).astype(np.float16)
        w = rng.standard_normal((8, 8 // groups, 3, 3)).astype(np.float16)
        b = rng.standard_normal(8).astype(np.float16) if with_bias else None
        ref = F.conv2d(
            torch.from_numpy(x),
            torch.from_numpy(w),
            None if b is None else torch.from_numpy(b),
            stride=stride,
            padding=padding,
            dilation=dil,
            groups=groups,
        ).numpy()
        got = conv2d(x, w, b, stride, padding, dil, groups, "fp16", "fp32-accumulate")
        assert got.shape == ref.shape
        key = (stride, padding, groups, dil, with_bias)
        x64, w64 = x.astype(np.float64), w.astype(np.float64)
        b64 = None if b is None else b.astype(np.float64)
        exact = conv2d(x64, w64, b64, stride, padding, dil, groups, wide, "exact")
        abs_b = None if b is None else np.abs(b64)
        abs_terms = conv2d(np.abs(x64), np.abs(w64), abs_b, stride, padding, dil, groups, wide, "exact")
        n = w.shape[1] * w.shape[2] * w.shape[3] + (b is not None)
        assert_within(ref, exact, _fp32acc_bound(abs_terms * (1 + 2.0**-50), exact, n), f"conv2d {key}")
        rates[key] = _bitwise_match_rate(got, ref)
        report_match(record_property, f"half conv2d {key}", rates[key], modelled)
    if modelled:
        assert min(rates.values()) >= 0.99, rates


@pytest.mark.slow
def test_binary16_kernels_without_native_fp16(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On CPUs without AVX512-FP16, LLVM lowers the binary16 operations through float32 (with a
    rounding after each one).  Recompile with that feature switched off and rerun the checks."""
    import os
    import subprocess
    import sys

    ll = pytest.importorskip("llvmlite.binding")
    feats = ll.get_host_cpu_features()
    if not feats.get("avx512fp16", False):
        pytest.skip("this CPU has no AVX512-FP16: the default run already tests the float32 lowering")
    feats["avx512fp16"] = False
    env = dict(os.environ, NUMBA_CPU_FEATURES=feats.flatten(), NUMBA_CACHE_DIR=str(tmp_path))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        __file__,
        "-q",
        "-p",
        "no:cacheprovider",
        "-k",
        "ieee_fp16_rne or torch or parallel",
    ]
    res = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_torch_bound_check_can_fail() -> None:
    """The platform-independent check of the torch comparisons rejects a result two fp16 ulps
    off (the fp32-accumulate bound is ``u |s|``, at most one ulp, plus a binary32 term)."""
    from torch_cpu import assert_within

    from fpanalysis.reference import exact_matmul

    rng = np.random.default_rng(5)
    A = rng.standard_normal((8, 40)).astype(np.float16).astype(np.float64)
    B = rng.standard_normal((40, 6)).astype(np.float16).astype(np.float64)
    exact = exact_matmul(A, B)
    good = exact_matmul(A, B, "fp16")
    bound = _fp32acc_bound(np.abs(A) @ np.abs(B), exact, 40)
    assert_within(good, exact, bound, "correct rounding")
    bad = good.copy()
    up = 1.0 if good[3, 2] >= exact[3, 2] else -1.0
    bad[3, 2] += 2 * up * FP16.ulp(good[3, 2])  # away from the exact value: > 1.5 ulp off
    with pytest.raises(AssertionError, match="outside the deterministic bound at 1 entries"):
        assert_within(bad, exact, bound, "two ulps off")

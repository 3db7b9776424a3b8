"""Differential verification of the emulated matrix products (:func:`fpanalysis.matmul`)
against independent oracles, on the machine at hand.

The fast GEMM kernels depend on the CPU (tile shape, vector width, native binary16
arithmetic), so ``fpanalysis verify`` checks them where they run.  Oracles:

* numpy float32 loops for ``fp32-accumulate``: ``acc = acc + a_k * b_k`` over k in float32
  (numpy rounds the product to float32, exact for fp16 operands, then the sum; it does not
  fuse), from +0, sequentially or in blocks; the final rounding by numpy ``astype(float16)``
  or ml_dtypes ``astype(bfloat16)``.
* numpy float16 loops for ``ieee`` fp16 round-to-nearest-even: numpy computes every float16
  product and sum in float32 and rounds it to float16, which is the correctly rounded
  operation (24 >= 2*11 + 2; Figueroa, SIGNUM Newsletter 30(3), 1995).
* gmpy2 for ``exact``: the sum of the products as an exact rational, rounded once by MPFR in
  an ``ieee(16)`` context.

Inputs: random values, values spread over every exponent of the format (overflow to inf,
inf - inf = NaN, subnormal products), sprinkled special values (signed zeros, infinities,
NaNs, subnormals, the largest finite value), rows that stagnate in fp16 accumulation, and
shapes that exercise whole and partial register tiles, several passes over k and the
one-row kernels.  Results are compared bit for bit (-0 differs from +0; all NaNs are equal:
their sign and payload are unspecified, see :mod:`fpanalysis.linalg`).

>>> rows = verify_linalg(seed=0)
>>> sum(r["mismatches"] for r in rows if r["mismatches"] > 0)
0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..formats import BF16, FP16, FloatFormat
from ..linalg import matmul
from .core import ProgressFn, Row, fmt_value, optional_import, row, same_bits, timed, unavailable_row

__all__ = ["verify_linalg"]

# (M, K, N): whole and partial tiles with k passes of the tiled kernel (K > 256), and a
# product with fewer rows than a tile (the one-row kernels)
_SHAPES = ((64, 300, 72), (5, 40, 33))


def _to_fmt_numpy(x32: np.ndarray, fmt: FloatFormat, md: Any) -> np.ndarray:
    """float32 -> ``fmt`` (nearest even) by numpy or ml_dtypes, as float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        if fmt is FP16:
            return x32.astype(np.float16).astype(np.float64)
        return x32.astype(md.bfloat16).astype(np.float64)


def _cases(fmt: FloatFormat, seed: int, md: Any) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Named (A, B) pairs of numbers of ``fmt`` (float64 arrays)."""
    rng = np.random.default_rng(seed)

    def to_fmt(x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # beyond float32: inf, as intended
            return _to_fmt_numpy(np.asarray(x, dtype=np.float32), fmt, md)

    out = []
    for M, K, N in _SHAPES:
        tag = f"{M}x{K}x{N}"
        B = to_fmt(rng.standard_normal((K, N)))
        out.append((f"random {tag}", to_fmt(rng.standard_normal((M, K))), B))
        e = fmt.emax + 1 - fmt.emin
        spread = rng.standard_normal((M, K)) * np.exp2(rng.integers(fmt.emin - fmt.p, fmt.emax + 1, (M, K)))
        out.append((f"all exponents {tag}", to_fmt(spread), to_fmt(B * 2.0 ** (e // 4))))
        A = to_fmt(rng.standard_normal((M, K)) * 8)
        specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, fmt.max, -fmt.max, fmt.min_normal,
                             fmt.min_normal * 2.0 ** -(fmt.p - 1)])
        mask = rng.random((M, K)) < 0.02
        A[mask] = rng.choice(specials, int(mask.sum()))
        out.append((f"specials {tag}", A, to_fmt(rng.standard_normal((K, N)))))
        stag = np.full((M, K), 2.0 ** -fmt.p)
        stag[:, 0] = 1.0
        out.append((f"stagnation {tag}", stag, np.ones((K, N))))
    return out


def _f32_loop(A: np.ndarray, B: np.ndarray, block: int | None) -> np.ndarray:
    A32, B32 = A.astype(np.float32), B.astype(np.float32)
    M, K = A32.shape
    step = block or max(K, 1)
    acc = np.zeros((M, B32.shape[1]), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for k0 in range(0, K, step):
            s = np.zeros_like(acc)
            for k in range(k0, min(K, k0 + step)):
                s = s + A32[:, k : k + 1] * B32[k]
            acc = acc + s
    return acc


def _f16_loop(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    A16, B16 = A.astype(np.float16), B.astype(np.float16)
    acc = np.zeros((A16.shape[0], B16.shape[1]), dtype=np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(A16.shape[1]):
            acc = acc + A16[:, k : k + 1] * B16[k]
    return acc.astype(np.float64)


def _exact_gmpy2(gmpy2: Any, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """fp16 round-to-nearest-even of the exact sums of products (finite inputs only)."""
    from fractions import Fraction

    ctx = gmpy2.ieee(16)  # binary16: precision, exponent range and subnormals
    ctx.round = gmpy2.RoundToNearest
    fa = [[Fraction(float(v)) for v in row] for row in A]
    fb = [[Fraction(float(v)) for v in col] for col in B.T]
    out = np.empty((A.shape[0], B.shape[1]))
    for i, a_row in enumerate(fa):
        for j, col in enumerate(fb):
            s = sum((x * y for x, y in zip(a_row, col, strict=True)), Fraction(0))
            # a sum of fp16 products spans < 100 bits: exact at 256 bits, then one rounding
            exact = gmpy2.mpfr(gmpy2.mpq(s.numerator, s.denominator), 256)
            out[i, j] = float(ctx.plus(exact)) if s != 0 else 0.0
    return out


Oracle = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _run(cases: list[tuple[str, np.ndarray, np.ndarray]], fmt: FloatFormat, profile: str, order: str,
         oracle: Oracle) -> tuple[int, int, str]:
    n = bad = 0
    first = ""
    for name, A, B in cases:
        got = np.asarray(matmul(A, B, fmt, profile, order=order, block=32), dtype=np.float64)
        want = oracle(A, B)
        ok = same_bits(got, want)
        n, bad = n + ok.size, bad + int((~ok).sum())
        if not first and not ok.all():
            i, j = np.argwhere(~ok)[0]
            first = f"{name}: C[{i},{j}] ours {fmt_value(got[i, j])}, oracle {fmt_value(want[i, j])}"
    return n, bad, first


def verify_linalg(seed: int = 0, progress: ProgressFn | None = None) -> list[Row]:
    """Rows (as the other verify suites) comparing ``matmul`` with the oracles above."""
    md = optional_import("ml_dtypes")
    gmpy2 = optional_import("gmpy2")

    def f32acc(fmt: FloatFormat, block: int | None) -> Oracle:
        return lambda A, B: _to_fmt_numpy(_f32_loop(A, B, block), fmt, md)

    # (check, format, oracle name, profile, order, oracle or the reason it is unavailable)
    checks: list[tuple[str, FloatFormat, str, str, str, Oracle | str]] = []
    for fmt in (FP16, BF16):
        need = md if fmt is BF16 and isinstance(md, str) else None
        for order, block, oracle_name in (("sequential", None, "numpy float32 loop"),
                                          ("blocked", 32, "numpy float32 blocked loop")):
            check = f"matmul fp32-accumulate {order}" + (f"({block})" if block else "")
            checks.append((check, fmt, oracle_name, "fp32-accumulate", order, need or f32acc(fmt, block)))
    checks.append(("matmul ieee sequential", FP16, "numpy float16 loop", "ieee", "sequential", _f16_loop))
    exact: Oracle | str = gmpy2 if isinstance(gmpy2, str) else (lambda A, B: _exact_gmpy2(gmpy2, A, B))
    checks.append(("matmul exact", FP16, "gmpy2 exact rational", "exact", "sequential", exact))

    rows: list[Row] = []
    for c, (check, fmt, oracle_name, profile, order, oracle) in enumerate(checks):
        if isinstance(oracle, str):
            rows.append(unavailable_row(check, fmt.name, "nearest-even", oracle_name, oracle))
        else:
            cases = _cases(fmt, seed + c, md)
            if profile == "exact":  # the rational oracle needs finite inputs and is slow: smaller
                cases = [(n, A[:, :40], B[:40, :12]) for n, A, B in cases if np.all(np.isfinite(A))]
            rows.append(row(check, fmt.name, "nearest-even", oracle_name,
                             *timed(lambda: _run(cases, fmt, profile, order, oracle))))  # noqa: B023
        if progress is not None:
            progress(c + 1, len(checks), check)
    return rows

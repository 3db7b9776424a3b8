"""Differential verification of the tensor-core models (:mod:`fpanalysis.tensorcore`) against
MMA-Sim (package ``mmasim`` 2.1.1, Xie et al., a bit-accurate simulator of single NVIDIA MMA
instructions validated on the hardware) and, for FP8 GEMMs as an H100 computes them, against
``mmaemu`` 0.1.0 (``torch._scaled_mm`` numerics: chained instructions, 128-term promotion).

For every model of :func:`fpanalysis.tensorcore.all_models` (architecture x input formats x
accumulator) and every case below, random blocks of the instruction's depth ``k`` (plus an
accumulator ``c``) go through our kernel and through the simulator's ``dpa`` of the same PTX
instruction; results are compared bit for bit (NaNs included: both give the canonical NaN).

Cases: ``bits`` (uniformly random bit patterns: every exponent, subnormals, zeros), ``normal``
(Gaussian values), ``cancel`` (products that cancel exactly, leaving tiny survivors),
``spread`` (terms ``F - 3 .. F + 2`` binades below the leading one: just inside and just
outside the alignment window), ``ties`` (terms of exactly half the truncation quantum, and sums
exactly halfway between two accumulator numbers), ``subnormal`` (subnormal inputs, products
and results), ``floor`` (every product below ``2**e_zero``, with and without a zero term),
``special`` (infinities, NaNs and overflow), ``chain`` (``4 k`` terms: four chained
instructions) and ``gemm`` (:func:`fpanalysis.tensorcore.tc_matmul`, the fast GEMM kernel,
against the simulator's whole-matrix operation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tensorcore import TensorCoreModel, _out, _values, all_models, get_tensor_core
from .core import ProgressFn, Row, optional_import, row, unavailable_row

__all__ = ["CASES", "mmasim_operation", "verify_tensorcore"]

CASES = ("bits", "normal", "cancel", "spread", "ties", "subnormal", "floor", "special", "chain", "gemm")
_PTX = {"fp16": "f16", "bf16": "bf16", "tf32": "tf32", "fp8_e4m3fn": "e4m3", "fp8_e5m2": "e5m2"}
# (emin, emax, p) of the input formats, for building values
_FMT = {"fp16": (-14, 15, 11), "bf16": (-126, 127, 8), "tf32": (-126, 127, 11), "fp8_e4m3fn": (-6, 8, 4),
        "fp8_e5m2": (-14, 15, 3), "fp32": (-126, 127, 24)}


def mmasim_operation(model: TensorCoreModel) -> Any:
    """The ``mmasim`` operation simulating ``model``'s instruction (raises ImportError without it)."""
    from mmasim import nv_ptx as mmasim

    from ..tensorcore import ARCHITECTURES

    arch = ARCHITECTURES[model.arch]
    cls, name = arch.mmasim
    a, b = _PTX[model.a_format], _PTX[model.b_format]
    d = "f16" if model.accumulator == "fp16" else "f32"
    k = model.k
    if cls == "MMA":
        mn = "m8n8" if k == 4 else "m16n8"
        return mmasim.MMA(name, f"{mn}k{k}.{d}.{a}.{b}.{d}")
    if cls == "WGMMA":
        return mmasim.WGMMA(name, f"m64n8k{k}.{d}.{a}.{b}")
    kind = {"fp16": "f16", "bf16": "f16", "tf32": "tf32"}.get(model.a_format, "f8f6f4")
    return mmasim.TCGen05MMA(name, f"m64n8k{k}.kind::{kind}.{d}.{a}.{b}")


def _torch_dtype(torch: Any, fmt: str) -> Any:
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "tf32": torch.float32, "fp32": torch.float32,
            "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[fmt]


def _bits_values(torch: Any, fmt: str, shape: tuple[int, ...], gen: Any, finite: bool = True) -> np.ndarray:
    """Values of uniformly random bit patterns of ``fmt`` (non-finite ones replaced by 0)."""
    width = 4 if fmt in ("tf32", "fp32") else 1 if fmt.startswith("fp8") else 2
    idt = {4: torch.int32, 2: torch.int16, 1: torch.uint8}[width]
    lo, hi = (0, 256) if width == 1 else (-(1 << (8 * width - 1)), 1 << (8 * width - 1))
    t = torch.randint(lo, hi, shape, dtype=torch.int64, generator=gen).to(idt).view(_torch_dtype(torch, fmt))
    v = t.to(torch.float64).numpy().copy()
    if finite:
        v[~np.isfinite(v)] = 0.0
    return v


def _make(fmt: str, sig: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Numbers of ``fmt``: significands ``sig`` in [1, 2) truncated to the format's precision, times
    ``2**e`` with ``e`` clamped to the normal range."""
    emin, emax, p = _FMT[fmt]
    s = np.floor(sig * 2.0 ** (p - 1)) * 2.0 ** (1 - p)
    v = np.ldexp(s, np.clip(e, emin, emax).astype(np.int64))
    return np.minimum(v, 448.0) if fmt == "fp8_e4m3fn" else v  # e4m3fn's top binade stops at 448


def _split(g: np.ndarray, lo_a: int, lo_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Exponents ``ea + eb = g`` with ``ea >= lo_a`` and ``eb >= lo_b`` (``g >= lo_a + lo_b``)."""
    ea = np.maximum(np.ceil(g / 2).astype(np.int64), lo_a)
    eb = np.maximum(g - ea, lo_b)
    return g - eb, eb


def _case(name: str, model: TensorCoreModel, R: int, rng: np.random.Generator, torch: Any, gen: Any
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a (R, K), b (R, K), c (R,)) float64 numbers of the model's formats."""
    fa, fb = model.a_format, model.b_format
    fc = "fp16" if model.accumulator == "fp16" else "fp32"
    k, F = model.k, model.F
    sign = lambda shape: rng.choice([-1.0, 1.0], shape)
    U = lambda shape: rng.uniform(1.0, 2.0, shape)
    cemin, _, cp = _FMT[fc]
    if name in ("bits", "chain"):
        K = 4 * k if name == "chain" else k
        a, b = _bits_values(torch, fa, (R, K), gen), _bits_values(torch, fb, (R, K), gen)
        c = _bits_values(torch, fc, (R,), gen)
        if name == "chain":  # keep c comparable with the products half of the time
            c = np.where(rng.random(R) < 0.5, 0.0, c)
        return a, b, c
    if name == "normal":
        a = _round(torch, fa, rng.standard_normal((R, k)))
        b = _round(torch, fb, rng.standard_normal((R, k)))
        c = _round(torch, fc, rng.standard_normal(R) * np.sqrt(k) * (rng.random(R) < 0.7))
        return a, b, c
    # target product exponents t (R, k) relative to a leading exponent
    ea_lo, ea_hi, _ = _FMT[fa]
    eb_lo, eb_hi, _ = _FMT[fb]
    top = min(ea_hi + eb_hi - 1, 20)
    if name == "cancel":
        half = k // 2
        x = _make(fa, U((R, half)), rng.integers(-4, 5, (R, half))) * sign((R, half))
        y = _make(fb, U((R, half)), rng.integers(-4, 5, (R, half)))
        a = np.concatenate([x, -x], axis=1)
        b = np.concatenate([y, y], axis=1)
        # survivors: one small pair replaced, far below the cancelled ones
        j = rng.integers(0, k, R)
        a[np.arange(R), j] = _make(fa, U(R), rng.integers(-14, -4, R)) * sign(R)
        c = np.where(rng.random(R) < 0.5, 0.0, _make(fc, U(R), rng.integers(-30, 5, R)) * sign(R))
        return a, b, c
    if name in ("spread", "ties"):
        lead = rng.integers(top - 6, top + 1, R)
        d = rng.integers(F - 3, F + 3, (R, k))  # binades below the leading product
        d[:, 0] = 0
        t = lead[:, None] - d
        ea = np.clip(np.ceil(t / 2).astype(np.int64), ea_lo, ea_hi)
        eb = np.clip(t - ea, eb_lo, eb_hi)
        if name == "ties":  # significands 1: products are exact powers of two on the quantum grid
            a = _make(fa, np.ones((R, k)), ea) * sign((R, k))
            b = _make(fb, np.ones((R, k)), eb)
            ec = lead + rng.integers(-1, 2, R)
            # c half an accumulator ulp off a product sum, or zero
            c = _make(fc, U(R), ec) * sign(R)
            c = np.where(rng.random(R) < 0.3, 0.0, c)
            # half-ulp of the accumulator: one product at exactly 2**(lead - cp)
            j = rng.integers(1, k, R)
            eh = lead - cp
            ea_h = np.clip(np.ceil(eh / 2).astype(np.int64), ea_lo, ea_hi)
            a[np.arange(R), j] = _make(fa, np.ones(R), ea_h)
            b[np.arange(R), j] = _make(fb, np.ones(R), np.clip(eh - ea_h, eb_lo, eb_hi))
        else:
            a = _make(fa, U((R, k)), ea) * sign((R, k))
            b = _make(fb, U((R, k)), eb)
            c = np.where(rng.random(R) < 0.5, 0.0, _make(fc, U(R), lead + rng.integers(-F - 3, 2, R)) * sign(R))
        return a, b, c
    if name == "subnormal":
        a = _make(fa, U((R, k)), rng.integers(ea_lo - 3, ea_lo + 3, (R, k))) * sign((R, k))
        b = _make(fb, U((R, k)), rng.integers(eb_lo - 3, eb_lo + 3, (R, k)))
        sub = rng.random((R, k)) < 0.5  # true subnormals of the inputs
        a = np.where(sub, _round(torch, fa, a * rng.uniform(2.0**-5, 1.0, (R, k))), a)
        c = np.where(rng.random(R) < 0.5, 0.0,
                     _round(torch, fc, sign(R) * rng.uniform(0.0, 2.0, R) * 2.0 ** rng.integers(cemin - 12, cemin + 2, R)))
        return a, b, c
    if name == "floor":
        # p1 (second term) sits on an output boundary below 2**e_zero (fp32: a multiple of the
        # subnormal quantum 2**-149, truncated by RZ; fp16: an odd multiple of 2**-25, a tie), p2
        # (first term) is minus one or half a truncation quantum 2**(e_zero - F): it survives the
        # alignment or not depending on e_zero exactly, and moves the result across the boundary.
        pa, pb = _FMT[fa][2], _FMT[fb][2]
        lo_a, lo_b = ea_lo - pa + 1, eb_lo - pb + 1  # exponents of the smallest subnormals
        if fc == "fp32":
            m = 2 * rng.integers(0, 1 << (min(pa, 8) - 1), R) + 1
            g = rng.integers(-149, -142, R)
        else:
            m = rng.choice([1, 3, 5, 7], R)
            g = np.full(R, -25)
        g = np.maximum(g, lo_a + lo_b)
        ea, eb = _split(g, lo_a, lo_b)
        a = np.zeros((R, k))
        b = np.zeros((R, k))
        a[:, 1] = np.ldexp(m.astype(np.float64), ea) * sign(R)
        b[:, 1] = np.ldexp(1.0, eb)
        t = np.maximum(model.e_zero - F + rng.integers(-1, 1, R), lo_a + lo_b)
        ua, ub = _split(t, lo_a, lo_b)
        a[:, 0] = -np.sign(a[:, 1]) * np.ldexp(1.0, ua)
        b[:, 0] = np.ldexp(1.0, ub)
        c = np.zeros(R)
        full = rng.random(R) < 0.3  # no zero term: E is the largest product exponent
        if k > 2:
            a[full, 2:] = a[full, 1:2] * rng.choice([-1.0, 1.0], (int(full.sum()), k - 2))
            b[full, 2:] = b[full, 1:2]
        c[full] = _round(torch, fc, np.ldexp(1.0, rng.integers(cemin - 12, cemin - 8, int(full.sum()))))
        return a, b, c
    if name == "special":
        a, b = _bits_values(torch, fa, (R, k), gen), _bits_values(torch, fb, (R, k), gen)
        c = _bits_values(torch, fc, (R,), gen)
        big_a = _make(fa, U((R, k)), np.full((R, k), ea_hi)) * sign((R, k))
        big_b = _make(fb, U((R, k)), np.full((R, k), eb_hi))
        over = rng.random(R) < 0.3  # overflow of the accumulator
        a[over], b[over] = big_a[over], big_b[over]
        specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0])
        for arr, fmt in ((a, fa), (b, fb)):
            pick = rng.random(arr.shape) < 0.03
            vals = specials[rng.integers(0, 5, arr.shape)]
            if fmt == "fp8_e4m3fn":  # no infinities in e4m3
                vals = np.where(np.isinf(vals), np.nan, vals)
            arr[pick] = vals[pick]
        pick = rng.random(R) < 0.05
        c[pick] = specials[rng.integers(0, 5, R)][pick]
        return a, b, c
    raise ValueError(f"unknown case {name!r}; valid cases are: {', '.join(CASES)}")


def _round(torch: Any, fmt: str, x: np.ndarray) -> np.ndarray:
    """Round float64 values to ``fmt`` (via torch; tf32 inputs stay float32)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(torch.float32)
    return t.to(_torch_dtype(torch, fmt)).to(torch.float64).numpy().copy()


def _compare(ours: np.ndarray, ref: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[int, str]:
    uint = np.uint16 if ours.dtype == np.float16 else np.uint32
    bad = ours.view(uint).reshape(-1) != ref.view(uint).reshape(-1)
    if not bad.any():
        return 0, ""
    i = int(np.flatnonzero(bad)[0])
    first = (f"block {i}: a={a[i].tolist()} b={b[i].tolist()} c={float(c[i])!r}: ours {ours.reshape(-1)[i]!r}, "
             f"mmasim {ref.reshape(-1)[i]!r}") if a.ndim == 2 and i < a.shape[0] else f"entry {i}"
    return int(bad.sum()), first


def _ours_blocks(model: TensorCoreModel, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    from .._kernels import tensorcore as K

    av, bv = _values(a, model.a_format, "a"), _values(b, model.b_format, "b")
    r = K.dot_rows(np.ascontiguousarray(av), np.ascontiguousarray(bv), np.ascontiguousarray(c, np.float64),
                   *model.kernel_args())
    return _out(r, model)


def _mmasim_blocks(torch: Any, op: Any, model: TensorCoreModel, a: np.ndarray, b: np.ndarray, c: np.ndarray
                   ) -> np.ndarray:
    fc = "fp16" if model.accumulator == "fp16" else "fp32"
    ta = torch.from_numpy(a).to(torch.float32).to(_torch_dtype(torch, model.a_format))
    tb = torch.from_numpy(b).to(torch.float32).to(_torch_dtype(torch, model.b_format))
    tc = torch.from_numpy(c).to(torch.float32).to(_torch_dtype(torch, fc))
    return op.dpa(ta, tb, tc).numpy()


def _gemm_case(model: TensorCoreModel, torch: Any, op: Any, rng: np.random.Generator, gen: Any,
               size: int) -> tuple[int, int, str]:
    """tc_matmul (the fast kernel) against the simulator's matrix operation, C = 0."""
    from ..tensorcore import tc_matmul

    M, N, K = size, size, 4 * model.k
    A = _bits_values(torch, model.a_format, (M, K), gen)
    B = _bits_values(torch, model.b_format, (K, N), gen)
    # half the rows and columns Gaussian (comparable magnitudes), the rest random bits
    A[: M // 2] = _round(torch, model.a_format, rng.standard_normal((M // 2, K)))
    B[:, : N // 2] = _round(torch, model.b_format, rng.standard_normal((K, N // 2)))
    A[0, 1], B[2, 3] = np.nan, np.inf if model.b_format != "fp8_e4m3fn" else np.nan  # the patched entries
    ours = tc_matmul(A, B, model)
    fc = "fp16" if model.accumulator == "fp16" else "fp32"
    tA = torch.from_numpy(A).to(torch.float32).to(_torch_dtype(torch, model.a_format))
    tB = torch.from_numpy(B).to(torch.float32).to(_torch_dtype(torch, model.b_format))
    ref = op(tA, tB, torch.zeros(M, N, dtype=_torch_dtype(torch, fc))).numpy()
    bad, first = _compare(ours, ref, A, B, np.zeros(M))
    if bad:
        i = int(np.flatnonzero((ours != ref) & ~(np.isnan(ours) & np.isnan(ref)))[0]) if bad else 0
        first = f"entry {divmod(i, N)}: ours {ours.reshape(-1)[i]!r}, mmasim {ref.reshape(-1)[i]!r}"
    return M * N, bad, first


def _mmaemu_rows(blocks: int, seed: int, torch: Any, progress: ProgressFn | None) -> list[Row]:
    """Hopper FP8 GEMMs against mmaemu's H100 ``_scaled_mm`` accumulator (fast and slow
    accumulation, no split-K)."""
    mmaemu = optional_import("mmaemu")
    check = "tensorcore gemm vs torch._scaled_mm (H100)"
    if mmaemu is None:
        return [unavailable_row(check, "fp8", "-", "mmaemu", "pip install mmaemu")]
    import warnings

    from ..tensorcore import tc_matmul

    rows = []
    rng = np.random.default_rng(seed)
    M = N = 32
    for fa in ("fp8_e4m3fn", "fp8_e5m2"):
        for fast in (True, False):
            model = get_tensor_core("hopper", fa, "fp32", promote_every=None if fast else 128)
            total, bad, first = 0, 0, ""
            reps = max(1, blocks // (M * N * 8))
            for r in range(reps):
                K = (256, 416, 1024)[r % 3]
                A = _round(torch, fa, rng.standard_normal((M, K)) * 2.0 ** rng.integers(-4, 5, (M, 1)))
                B = _round(torch, fa, rng.standard_normal((K, N)))
                ours = tc_matmul(A, B, model)
                ta = torch.from_numpy(A).to(torch.float32).to(_torch_dtype(torch, fa))
                tb = torch.from_numpy(B.T.copy()).to(torch.float32).to(_torch_dtype(torch, fa))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ref = mmaemu.accumulate(ta, tb, use_fast_accum=fast, profile="hopper", splitk=1,
                                            backend="reference").numpy()
                d = ours.view(np.uint32) != ref.view(np.uint32)
                if d.any() and not first:
                    i = int(np.flatnonzero(d)[0])
                    first = f"K={K} entry {divmod(i, N)}: ours {ours.reshape(-1)[i]!r}, mmaemu {ref.reshape(-1)[i]!r}"
                bad += int(d.sum())
                total += M * N
            mode = "fast-accum (chain)" if fast else "slow-accum (promote every 128)"
            rows.append(row(check, _PTX[fa], mode, f"mmaemu {mmaemu.__version__} accumulate(profile='hopper', "
                             "splitk=1)", total, bad, first))
            if progress:
                progress(rows[-1])
    return rows


def verify_tensorcore(blocks: int = 2000, seed: int = 0, progress: ProgressFn | None = None,
                      models: list[TensorCoreModel] | None = None, cases: tuple[str, ...] = CASES,
                      gemm_size: int = 24) -> list[Row]:
    """Compare every tensor-core model with MMA-Sim (and Hopper FP8 GEMMs with mmaemu).

    Parameters
    ----------
    blocks : int
        Random blocks per (model, case); the ``fpanalysis verify`` full run uses ``10**5``.
    models : list, optional
        Models to check (default: :func:`fpanalysis.tensorcore.all_models`).
    cases : tuple of str
        Cases of :data:`CASES`.

    Returns
    -------
    list of dict
        Rows ``check, format, mode, oracle, n, mismatches, first_mismatch, seconds``; ``mode`` is
        the case.  ``mismatches == -1`` marks a check that could not run (no mmasim).
    """
    import time

    torch = optional_import("torch")
    mmasim = optional_import("mmasim")
    if mmasim is None or torch is None:
        return [unavailable_row("tensorcore", "-", "-", "mmasim", "pip install mmasim==2.1.1 (the verify extra)")]
    models = all_models() if models is None else models
    fp8_hopper = any(m.arch == "hopper" and m.a_format.startswith("fp8") for m in models)
    rows: list[Row] = []
    for mi, model in enumerate(models):
        op = mmasim_operation(model)
        oracle = f"mmasim {getattr(mmasim, '__version__', '2.1.1')} {type(op).__name__}({op.arch!r}, " \
                 f"{op.shape_and_type!r})"
        for ci, case in enumerate(cases):
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, mi, ci])
            gen = torch.Generator().manual_seed(seed * 1000003 + mi * 101 + ci)
            if case == "gemm":
                n, bad, first = _gemm_case(model, torch, op, rng, gen, gemm_size)
            else:
                R = blocks if case != "chain" else max(1, blocks // 4)
                a, b, c = _case(case, model, R, rng, torch, gen)
                ours = _ours_blocks(model, a, b, c)
                ref = _mmasim_blocks(torch, op, model, a, b, c)
                n = R
                bad, first = _compare(ours, ref, a, b, c)
            rows.append(row(f"tensorcore {model.name}", model.a_format, case, oracle, n, bad, first,
                             time.perf_counter() - t0))
            if progress:
                progress(rows[-1])
    if fp8_hopper and "gemm" in cases:
        rows += _mmaemu_rows(blocks, seed, torch, progress)
    return rows


"""Speed benchmarks of the emulator against named baselines measured in the same run.

Each function returns a dict of timings and ratios; ``experiments/bench_emulator.py`` and
``fpanalysis bench`` print them and write JSON.  Timings are best-of-``repeats`` wall times
(machines are noisy: compare ratios, not absolute numbers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "bench_exact_dot",
    "bench_gemm",
    "bench_mx",
    "bench_rounding",
    "best_time",
    "gemm_matrices",
    "gemm_methods",
    "run_benchmarks",
    "time_interleaved",
]


def best_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_rounding(n: int = 10**7, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """float32 -> fp16 rounding of ``n`` standard-normal values.

    Variants: float32 output (a new array, or ``out=``), and native float16 output
    (``dtype=np.float16``, the same array type ``astype(float16)`` returns; or ``out=`` a
    preallocated float16 array, against ``np.copyto`` into one).
    Baselines: numpy ``astype(float16)``, torch ``.half()`` (when torch is installed) and pychop's
    torch backend (when pychop is installed; it is a speed baseline only: its overflow handling
    is wrong, see docs/semantics.md §7).  Both allocating (a new output array per call) and
    preallocated-output (``out=`` / ``np.copyto``) variants are timed.
    """
    from .rounding import round_to

    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    out32 = np.empty_like(x)
    out16 = np.empty(n, dtype=np.float16)
    t: dict[str, float] = {}
    t["fpanalysis_rne"] = best_time(lambda: round_to(x, "fp16"), repeats)
    t["fpanalysis_rne_out"] = best_time(lambda: round_to(x, "fp16", out=out32), repeats)
    t["fpanalysis_rne_float16"] = best_time(lambda: round_to(x, "fp16", dtype=np.float16), repeats)
    t["fpanalysis_rne_float16_out"] = best_time(lambda: round_to(x, "fp16", out=out16), repeats)
    t["fpanalysis_stochastic"] = best_time(lambda: round_to(x, "fp16", "stochastic", seed=1), repeats)
    t["fpanalysis_stochastic_out"] = best_time(
        lambda: round_to(x, "fp16", "stochastic", seed=1, out=out32), repeats
    )
    t["numpy_astype"] = best_time(lambda: x.astype(np.float16), repeats)
    t["numpy_copyto_out"] = best_time(lambda: np.copyto(out16, x, casting="unsafe"), repeats)
    notes = []
    try:
        import torch

        xt = torch.from_numpy(x)
        t["torch_half"] = best_time(lambda: xt.half(), repeats)
    except ImportError:
        notes.append("torch not installed: torch baseline skipped")
    try:
        import pychop
        import torch

        pychop.backend("torch")
        chop = pychop.Chop(exp_bits=5, sig_bits=10, rmode=1)
        xt = torch.from_numpy(x)
        t["pychop_torch"] = best_time(lambda: chop(xt), max(1, repeats // 2))
    except ImportError:
        notes.append("pychop not installed (pip install pychop): pychop baseline skipped")
    ratios = {
        "vs_numpy_astype": t["numpy_astype"] / t["fpanalysis_rne"],
        "float16_output_vs_numpy_astype": t["numpy_astype"] / t["fpanalysis_rne_float16"],
        "vs_numpy_copyto_out": t["numpy_copyto_out"] / t["fpanalysis_rne_out"],
        "float16_out_vs_numpy_copyto_out": t["numpy_copyto_out"] / t["fpanalysis_rne_float16_out"],
        "stochastic_cost_vs_rne": t["fpanalysis_stochastic"] / t["fpanalysis_rne"],
        "stochastic_cost_vs_rne_out": t["fpanalysis_stochastic_out"] / t["fpanalysis_rne_out"],
    }
    if "torch_half" in t:
        ratios["vs_torch_half"] = t["torch_half"] / t["fpanalysis_rne"]
    if "pychop_torch" in t:
        ratios["vs_pychop_torch"] = t["pychop_torch"] / t["fpanalysis_rne"]
    return {
        "benchmark": "round float32 -> fp16",
        "n": n,
        "seconds": t,
        "values_per_second": {k: n / v for k, v in t.items()},
        "ratios": ratios,
        "goals": {"float16_output_vs_numpy_astype": 5.0, "vs_pychop_torch": 50.0, "stochastic_cost_vs_rne": 3.0},
        "notes": notes,
    }


def bench_exact_dot(n: int = 1024, pairs: int = 10, calls: int = 2000, mp_calls: int = 3,
                    repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Exact dot product of fp16 vectors vs mpmath's ``fdot`` at a precision that holds the sum
    exactly (computed outside the timing); the results must be identical.  CPU-process times
    (``time.process_time``) so that time spent descheduled on a shared machine does not count."""
    from .reference import prec_for_exact_dot, exact_dot, mp_dot

    def per_call(fn: Callable[[], Any], k: int) -> float:
        fn()
        best = float("inf")
        for _ in range(repeats):
            c0 = time.process_time()
            for _ in range(k):
                fn()
            best = min(best, (time.process_time() - c0) / k)
        return best

    rng = np.random.default_rng(seed)
    ratios, t_exact, t_mp, mismatches = [], [], [], 0
    for _ in range(pairs):
        x = rng.standard_normal(n).astype(np.float16).astype(np.float32)
        y = rng.standard_normal(n).astype(np.float16).astype(np.float32)
        prec = prec_for_exact_dot(x.astype(np.float64).tolist(), y.astype(np.float64).tolist())
        mismatches += int(exact_dot(x, y) != mp_dot(x, y, prec))
        te = per_call(lambda x=x, y=y: exact_dot(x, y), calls)
        tm = per_call(lambda x=x, y=y, prec=prec: mp_dot(x, y, prec), mp_calls)
        t_exact.append(te)
        t_mp.append(tm)
        ratios.append(tm / te)
    return {
        "benchmark": f"exact dot product, fp16 vectors of length {n}",
        "n": n,
        "seconds": {"exact_dot": float(np.median(t_exact)), "mpmath_fdot": float(np.median(t_mp))},
        "ratios": {"mpmath_over_exact_median": float(np.median(ratios)),
                   "mpmath_over_exact_min": float(np.min(ratios))},
        "identical_results": mismatches == 0,
        "mismatches": mismatches,
        "goals": {"mpmath_over_exact_median": 1000.0},
        "notes": ["CPU-process time per call, median over vector pairs"],
    }


def time_interleaved(
    methods: dict[str, Callable[[], Any]],
    rounds: int,
    burst: int = 2,
    settle_s: float = 0.15,
    max_rounds: dict[str, int] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process-CPU seconds of each method, ``rounds`` rounds interleaved.

    In every round each method first runs untimed for ``settle_s`` seconds (at least once),
    then ``burst`` timed runs follow.  The untimed runs absorb the switch from the previous
    method: the worker threads of one pool keep spinning after a call (OpenBLAS's for about
    0.1 s, numba's OpenMP threads too), and on a 2-core machine that slowed the next method
    of the other pool 2-10x.  Interleaving the rounds spreads slow phases of a shared machine
    over all methods alike.  ``max_rounds`` caps the rounds of slow methods.
    """
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(rounds):
        for name, f in methods.items():
            if max_rounds and r >= max_rounds.get(name, rounds):
                continue
            t_end = time.perf_counter() + settle_s
            f()
            while time.perf_counter() < t_end:
                f()
            for _ in range(burst):
                c0, w0 = time.process_time(), time.perf_counter()
                f()
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
    return wall, cpu


def gemm_matrices(n: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The GEMM benchmark's ``n`` x ``n`` float16 operands."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n)).astype(np.float16), rng.standard_normal((n, n)).astype(np.float16)


def gemm_methods(n: int = 512, seed: int = 0) -> dict[str, Callable[[], Any]]:
    """The GEMM benchmark's methods on :func:`gemm_matrices`: numpy float32 BLAS (the
    baseline, on the same values), the emulator's profiles of issue 2's goals and the Hopper
    tensor-core model (fp16 inputs, fp32 accumulator; issue 14)."""
    from .linalg import matmul
    from .tensorcore import tc_matmul

    A16, B16 = gemm_matrices(n, seed)
    A32, B32 = A16.astype(np.float32), B16.astype(np.float32)
    return {
        "numpy_fp32_blas": lambda: A32 @ B32,
        "ieee_sequential": lambda: matmul(A16, B16, "fp16", "ieee"),
        "fp32acc_sequential": lambda: matmul(A16, B16, "fp16", "fp32-accumulate"),
        "fp32acc_blas": lambda: matmul(A16, B16, "fp16", "fp32-accumulate", order="blas"),
        "tensorcore_hopper": lambda: tc_matmul(A16, B16, "hopper", "fp16", "fp32"),
    }


#: speed goals as ratios to numpy float32 BLAS at 512^3 on one CPU without native fp16 arithmetic:
#: the reliability issue's (ieee >= 0.25, fp32-accumulate >= 0.85) and the tensor-core issue's (>= 0.25)
GEMM_GOALS = {"ieee_sequential": 0.25, "fp32acc_sequential": 0.85, "fp32acc_blas": 0.85, "tensorcore_hopper": 0.25}


def bench_gemm(n: int = 512, rounds: int = 7, seed: int = 0) -> dict[str, Any]:
    """Emulated fp16 GEMM (``n`` x ``n`` x ``n``) against numpy float32 BLAS in the same run.

    Timed with :func:`time_interleaved`; the ratio is BLAS time / method time (best times).
    Threads: numba's and BLAS's defaults (``experiments/bench_gemm.py --threads=1`` for
    one-core numbers).
    """
    methods = gemm_methods(n, seed)
    for f in methods.values():  # compile and warm up
        f()
    wall, _ = time_interleaved(methods, rounds)
    ref = min(wall["numpy_fp32_blas"])
    t = {k: min(v) for k, v in wall.items()}
    return {
        "benchmark": f"emulated fp16 GEMM {n}x{n}x{n}",
        "n": n,
        "seconds": t,
        "gflops": {k: 2.0 * n**3 / v / 1e9 for k, v in t.items()},
        "ratios": {f"{k}_vs_blas": ref / v for k, v in t.items() if k != "numpy_fp32_blas"},
        "goals": {f"{k}_vs_blas": g for k, g in GEMM_GOALS.items()},
        "notes": [],
    }


def mx_qdq_numpy(x: np.ndarray, element: str = "e4m3", block: int = 32) -> np.ndarray:
    """MX quantise-dequantise written straightforwardly in NumPy (float32 arrays, last axis):
    block amax, shared exponent ``floor(log2(amax)) - emax``, elements rounded with ``np.rint``
    on their quantum, clipped to the element max.  The speed baseline of :func:`bench_mx`."""
    emax, mbits, emin, vmax = {
        "e4m3": (8, 3, -6, 448.0), "e5m2": (15, 2, -14, 57344.0), "e2m3": (2, 3, 0, 7.5),
        "e3m2": (4, 2, -2, 28.0), "e2m1": (2, 1, 0, 6.0),
    }[element]
    xb = x.reshape(-1, block)
    with np.errstate(divide="ignore", invalid="ignore"):
        amax = np.abs(xb).max(axis=1)
        sh = np.clip(np.floor(np.log2(amax)) - emax, -127, 127)
        scale = np.exp2(sh)[:, None].astype(np.float32)
        xs = xb / scale
        e = np.maximum(np.floor(np.log2(np.abs(xs))), emin)
        q = np.exp2(e - mbits).astype(np.float32)
        y = np.clip(np.rint(xs / q) * q, -vmax, vmax)
    return (y * scale).reshape(x.shape)


def bench_mx(n: int = 10**7, rounds: int = 5, seed: int = 0, fmt: str = "mxfp8_e4m3") -> dict[str, Any]:
    """MX quantisation of ``n`` standard-normal float32 values (blocks of 32 along the last
    axis) against :func:`mx_qdq_numpy` in the same run; the quantise-dequantise results must be
    identical.  Timed with :func:`time_interleaved` (best wall times)."""
    from .scaled import get_scaled_format, quantize, quantize_dequantize

    element = get_scaled_format(fmt).element
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    identical = bool(np.array_equal(quantize_dequantize(x, fmt), mx_qdq_numpy(x, element)))
    methods = {
        "numpy_qdq": lambda: mx_qdq_numpy(x, element),
        "fpanalysis_qdq": lambda: quantize_dequantize(x, fmt),
        "fpanalysis_quantize": lambda: quantize(x, fmt),
    }
    wall, _ = time_interleaved(methods, rounds)
    t = {k: min(v) for k, v in wall.items()}
    return {
        "benchmark": f"{fmt} quantisation of {n} float32 values",
        "n": n,
        "seconds": t,
        "values_per_second": {k: n / v for k, v in t.items()},
        "ratios": {
            "qdq_vs_numpy": t["numpy_qdq"] / t["fpanalysis_qdq"],
            "quantize_codes_vs_numpy_qdq": t["numpy_qdq"] / t["fpanalysis_quantize"],
        },
        "identical_results": identical,
        "goals": {"qdq_vs_numpy": 5.0},
        "notes": ["fpanalysis_quantize writes element and E8M0 codes; the other two write dequantised float32 values"],
    }


def run_benchmarks(quick: bool = False) -> list[dict[str, Any]]:
    """All benchmarks (``quick``: smaller sizes, for smoke tests)."""
    results = [bench_rounding(n=10**5 if quick else 10**7, repeats=2 if quick else 5)]
    results.append(bench_gemm(n=64 if quick else 512, rounds=2 if quick else 7))
    if quick:
        results.append(bench_exact_dot(pairs=2, calls=100, mp_calls=1, repeats=2))
    else:
        results.append(bench_exact_dot())
    results.append(bench_mx(n=10**5 if quick else 10**7, rounds=2 if quick else 5))
    return results

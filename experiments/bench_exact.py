"""Benchmark: exact dot product vs mpmath (issue target: >= 1000x faster at n = 1024, fp16
inputs, identical results), plus the throughput of the exact matmul for reference.

    python experiments/bench_exact.py                 # full run, JSON to stdout
    python experiments/bench_exact.py --out run.json  # also write the JSON file
    python experiments/bench_exact.py --smoke         # seconds, for CI

Timings are best-of-``REPEATS`` CPU-process times per call (``time.process_time``), which do not
count time the process spends descheduled on a shared machine; wall times are reported too.
mpmath is given its precision up front (enough for the exact sum, computed outside the timing),
so its time is only ``workprec`` + ``fdot`` + the final conversion to float.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# --- configuration -------------------------------------------------------------------------
N = 1024  # vector length
PAIRS = 20  # random vector pairs (all must agree exactly)
REPEATS = 7  # best of
CALLS = 2000  # exact_dot calls per timing
MP_CALLS = 3  # mp_dot calls per timing
MATMUL = 256  # exact_matmul size (m = k = n)
SEED = 0
SMOKE = {"PAIRS": 3, "REPEATS": 2, "CALLS": 200, "MP_CALLS": 1, "MATMUL": 32}


def best(fn: Callable[[], Any], calls: int, repeats: int) -> tuple[float, float]:
    """(best CPU seconds per call, best wall seconds per call) over ``repeats`` runs."""
    fn()
    cpu = wall = float("inf")
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(calls):
            fn()
        cpu = min(cpu, (time.process_time() - c0) / calls)
        wall = min(wall, (time.perf_counter() - w0) / calls)
    return cpu, wall


def environment() -> dict[str, Any]:
    import mpmath
    import numba

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numba": numba.__version__,
        "mpmath": mpmath.__version__,
        "mpmath_backend": mpmath.libmp.BACKEND,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "git_commit": commit,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the JSON result to this file")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    args = ap.parse_args(argv)
    cfg = {
        "N": N,
        "PAIRS": PAIRS,
        "REPEATS": REPEATS,
        "CALLS": CALLS,
        "MP_CALLS": MP_CALLS,
        "MATMUL": MATMUL,
        "SEED": SEED,
    }
    if args.smoke:
        cfg.update(SMOKE)

    from fpanalysis.reference import _prec_for_exact_dot, exact_dot, exact_matmul, mp_dot

    rng = np.random.default_rng(cfg["SEED"])
    ratios, wall_ratios, exact_cpu, mp_cpu, mismatches = [], [], [], [], 0
    for _ in range(cfg["PAIRS"]):
        # fp16 values held in float32 (the package's convention); standard normal data
        x = rng.standard_normal(cfg["N"]).astype(np.float16).astype(np.float32)
        y = rng.standard_normal(cfg["N"]).astype(np.float16).astype(np.float32)
        prec = _prec_for_exact_dot(x.astype(np.float64).tolist(), y.astype(np.float64).tolist())
        r_exact = exact_dot(x, y)
        r_mp = mp_dot(x, y, prec)
        mismatches += int(r_exact != r_mp)
        te, te_wall = best(lambda x=x, y=y: exact_dot(x, y), cfg["CALLS"], cfg["REPEATS"])
        tm, tm_wall = best(lambda x=x, y=y, prec=prec: mp_dot(x, y, prec), cfg["MP_CALLS"], cfg["REPEATS"])
        wall_ratios.append(tm_wall / te_wall)
        exact_cpu.append(te)
        mp_cpu.append(tm)
        ratios.append(tm / te)

    m = cfg["MATMUL"]
    A = rng.standard_normal((m, m)).astype(np.float16).astype(np.float32)
    B = rng.standard_normal((m, m)).astype(np.float16).astype(np.float32)
    t_mm, t_mm_wall = best(lambda: exact_matmul(A, B, "fp16"), 1, cfg["REPEATS"])
    _, t_np_wall = best(lambda: A @ B, 5, cfg["REPEATS"])

    result = {
        "experiment": "bench_exact",
        "config": cfg,
        "metrics": {
            "dot_n": cfg["N"],
            "exact_dot_us_median": float(np.median(exact_cpu) * 1e6),
            "mp_dot_us_median": float(np.median(mp_cpu) * 1e6),
            "ratio_mpmath_over_exact_median": float(np.median(ratios)),
            "ratio_mpmath_over_exact_min": float(np.min(ratios)),
            "ratio_wall_median": float(np.median(wall_ratios)),
            "identical_results": mismatches == 0,
            "mismatches": mismatches,
            "matmul_size": m,
            "exact_matmul_fp16_s_cpu": t_mm,
            "exact_matmul_fp16_s_wall": t_mm_wall,
            "exact_matmul_gflops_wall": 2 * m**3 / t_mm_wall / 1e9,
            "numpy_f32_matmul_s_wall": t_np_wall,
        },
        "environment": environment(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return result


if __name__ == "__main__":
    main()

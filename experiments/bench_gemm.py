"""Emulated fp16 GEMM throughput against numpy float32 BLAS, measured in the same run.

Goals at 512 x 512 x 512 (``fpanalysis.benchmarks.GEMM_GOALS``), on a CPU without native fp16
arithmetic: the ``ieee`` profile (fp16 accumulation, round to nearest even, no fma) at >= 1/4 of
numpy float32 BLAS throughput, ``fp32-accumulate`` at >= 0.85, the Hopper tensor-core model at
>= 1/4.

Timing: ``fpanalysis.benchmarks.time_interleaved`` -- in every round each method first runs
untimed for 0.15 s (which absorbs the spinning worker threads left by the previous method's
thread pool), then twice timed; the rounds are interleaved, so slow phases of a shared machine
hit all methods alike.  Three ratios are reported (BLAS time / method time):
``wall_min`` (best wall-clock times), ``wall_median`` and ``cpu_min`` (best process CPU
time: robust to being descheduled, but counts busy-waiting BLAS threads as work, so use it with
--threads 1).  Results, configuration and environment go to a JSON file.

    python -m experiments.bench_gemm                    # writes results/bench_gemm.json
    python -m experiments.bench_gemm --threads=1 --out=experiments/results/bench_gemm_1thread.json
    python -m experiments.bench_gemm --extra=true       # also the general kernel, numpy fp16, torch
    python -m experiments.bench_gemm --smoke            # seconds: n = 64, 3 rounds
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from experiments._common import RESULTS, environment, parse_overrides, write_json
from fpanalysis.benchmarks import GEMM_GOALS as GOALS
from fpanalysis.benchmarks import time_interleaved

SLOW_ROUNDS = 3  # rounds for the slow reference methods (general kernel, numpy float16)


@dataclass
class Config:
    n: int = 512  # M = K = N
    rounds: int = 15
    threads: int = 0  # numba and BLAS threads; 0 leaves both unchanged
    extra: bool = False  # also time the general kernel, numpy float16 and torch half
    seed: int = 0
    out: str = str(RESULTS / "bench_gemm.json")


def _methods(n: int, extra: bool, seed: int) -> tuple[dict[str, Callable[[], object]], set[str]]:
    from fpanalysis.benchmarks import gemm_matrices, gemm_methods
    from fpanalysis.linalg import matmul

    m = gemm_methods(n, seed)
    A16, B16 = gemm_matrices(n, seed)
    m["ieee_pairwise"] = lambda: matmul(A16, B16, "fp16", "ieee", order="pairwise")
    m["ieee_blocked"] = lambda: matmul(A16, B16, "fp16", "ieee", order="blocked", block=32)
    m["fp32acc_blocked"] = lambda: matmul(A16, B16, "fp16", "fp32-accumulate", order="blocked", block=32)
    slow: set[str] = set()
    if extra:
        m["ieee_stochastic"] = lambda: matmul(A16, B16, "fp16", "ieee", mode="stochastic", seed=1)
        m["ieee_toward_zero"] = lambda: matmul(A16, B16, "fp16", "ieee", mode="toward-zero")
        m["numpy_fp16_matmul"] = lambda: A16 @ B16
        slow |= {"ieee_stochastic", "ieee_toward_zero", "numpy_fp16_matmul"}
        try:
            import torch

            ta, tb = torch.from_numpy(A16), torch.from_numpy(B16)
            m["torch_half_mm"] = lambda: ta.mm(tb)
        except ImportError:
            pass
    return m, slow


def _environment() -> dict[str, object]:
    import numba

    env: dict[str, object] = environment()
    env["numba_threads"] = numba.get_num_threads()
    try:
        import llvmlite.binding as ll

        env["llvm_cpu"] = ll.get_host_cpu_name()
    except Exception as exc:  # noqa: BLE001 - informational only
        env["llvm_cpu"] = f"unknown ({exc})"
    try:
        with open("/proc/cpuinfo") as fh:
            env["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
    except OSError:
        env["cpu_model"] = None
    try:
        from threadpoolctl import threadpool_info

        env["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads")} for d in threadpool_info()]
    except ImportError:
        env["blas"] = None
    return env


def run(cfg: Config) -> dict[str, object]:
    import numba

    n, rounds, threads = cfg.n, cfg.rounds, cfg.threads
    load_start = os.getloadavg()
    limiter = None
    if threads:
        numba.set_num_threads(threads)
        try:
            from threadpoolctl import threadpool_limits

            limiter = threadpool_limits(threads)
        except ImportError:
            print("threadpoolctl not installed: BLAS thread count not limited", file=sys.stderr)
    methods, slow = _methods(n, cfg.extra, cfg.seed)
    for f in methods.values():  # compile and warm up
        f()
    wall, cpu = time_interleaved(methods, rounds, max_rounds=dict.fromkeys(slow, SLOW_ROUNDS))
    flops = 2.0 * n**3
    ref_w, ref_m, ref_c = (
        min(wall["numpy_fp32_blas"]),
        float(np.median(wall["numpy_fp32_blas"])),
        min(cpu["numpy_fp32_blas"]),
    )
    results = {}
    for name in methods:
        w, c = wall[name], cpu[name]
        results[name] = {
            "gflops_wall_min": flops / min(w) / 1e9,
            "gflops_wall_median": flops / float(np.median(w)) / 1e9,
            "ratio_wall_min": ref_w / min(w),
            "ratio_wall_median": ref_m / float(np.median(w)),
            "ratio_cpu_min": ref_c / max(min(c), 1e-9),
            "times_wall_s": w,
            "times_cpu_s": c,
        }
    env = _environment()
    env["loadavg_start"] = load_start
    env["loadavg_end"] = os.getloadavg()
    if limiter is not None:
        limiter.restore_original_limits()
    return {"config": {**asdict(cfg), "goals": GOALS}, "environment": env, "results": results}


def main(argv: list[str]) -> int:
    smoke = "--smoke" in argv
    cfg = parse_overrides(Config(), [a for a in argv if a != "--smoke"])
    if smoke:
        cfg = replace(cfg, n=64, rounds=3, out=str(RESULTS / "_scratch" / "bench_gemm_smoke.json"))
    res = run(cfg)
    env = res["environment"]
    print(f"GEMM {cfg.n}^3 fp16, threads={cfg.threads or 'default'}, load average {env['loadavg_start'][0]:.1f}")
    print(f"{'method':22s} {'GFLOP/s':>8s} {'wall-min':>9s} {'wall-median':>12s} {'cpu-min':>8s}  goal (wall-min ratio)")
    for name, r in res["results"].items():
        goal = GOALS.get(name)
        verdict = "" if goal is None else f">= {goal:g}: " + ("met" if r["ratio_wall_min"] >= goal else "NOT met")
        print(
            f"{name:22s} {r['gflops_wall_min']:8.1f} {r['ratio_wall_min']:9.3f} {r['ratio_wall_median']:12.3f} "
            f"{r['ratio_cpu_min']:8.3f}  {verdict}"
        )
    print(f"wrote {write_json(Path(cfg.out), res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

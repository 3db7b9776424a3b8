"""The kernels on a target without vector or half-precision instructions.

The package adapts two things to the CPU numba compiles for: the shape of the register tiles of
the fp32-accumulate GEMM (12 x 32 with AVX-512, else 6 x 16) and of the tensor-core GEMM (vectors
of 16 or 8 float32 lanes), and the float32 <-> binary16
conversions (instructions with F16C or on ARMv8, else integer code, since LLVM's fallback calls
compiler-rt functions that numba does not link).  This test recompiles everything for
``NUMBA_CPU_NAME=generic`` (x86-64 or ARMv8 base, no FMA unit: ``llvm.fma`` becomes a libm
call) in a fresh cache and reruns the bit-exactness tests of those paths against their oracles.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

SELECTED = {
    "test_linalg.py": "tiled_kernel_matches or numpy_float32_loop or fp32acc_fp16_matches or ieee_fp16_rne",
    "test_exhaustive.py": "fp16_all_patterns or f32_to_fp16_stratified",
    "test_peer_bugs.py": "fp16_overflow_boundary",
    "test_rounding_paths.py": "native_storage or kernels_match_numpy_twin",
    "../verify/test_verify_linalg.py": "real_kernels_pass",
    "test_tensorcore_tiled.py": "(tiled_kernel_matches_twin and hopper) or serial_and_parallel",
}


def test_kernels_compiled_for_a_generic_cpu(tmp_path: Path) -> None:
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path))
    probe = "from fpanalysis._kernels import gemm as G; print(G.VL, G.MR, G.NR, G.NATIVE_HALF, G.H16_TILED)"
    res = subprocess.run([sys.executable, "-c", probe], check=True, env=env, capture_output=True, text=True)
    assert res.stdout.split() == ["8", "6", "16", "False", "False"]
    keys = " or ".join(f"({k})" for k in SELECTED.values())
    files = [str((HERE / name).resolve()) for name in SELECTED]
    cmd = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", "-k", keys]
    res = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = res.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary

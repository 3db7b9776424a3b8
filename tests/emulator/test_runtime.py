"""The package runs where it cannot write: a read-only install with a read-only HOME."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "fpanalysis"

RUN = ("import numpy as np, fpanalysis; "
       "print(fpanalysis.round_to(np.array([0.1, 65520.0]), 'fp16', 'toward-zero').tolist())")


def _read_only_run(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` with the package copied into a read-only file system and HOME on it too
    (a private mount namespace: nothing outside this process sees the mount)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make a read-only file system for the test")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (
        f"set -e; mount -t tmpfs tmpfs {ro}; "
        f"cp -r {PKG} {ro}/fpanalysis; find {ro} -name __pycache__ -prune -exec rm -rf {{}} +; "
        f"mkdir {ro}/home; mount -o remount,ro {ro}; cd /; "
        f"exec {sys.executable} -c \"$CODE\""
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=f"{ro}/home", PYTHONPATH=str(ro), CODE=code, TMPDIR=str(tmp_path))
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {ro} && umount {ro}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine does not allow a private mount namespace: {probe.stderr.strip()}")
    return subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=600)


def test_read_only_install_and_home_fall_back_to_a_temporary_cache(tmp_path: Path) -> None:
    res = _read_only_run(tmp_path, RUN + f"; import fpanalysis._kernels as k; print(k.cache_dir())")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "[0.0999755859375, 65504.0]"
    assert lines[1].startswith(str(tmp_path)), lines[1]  # the kernels were cached in TMPDIR
    assert any(tmp_path.rglob("*.nbi")), "no compiled kernel was cached"


def test_a_writable_install_keeps_numba_default(tmp_path: Path) -> None:
    code = ("import os, fpanalysis._kernels as k; "
            "print(os.environ.get('NUMBA_CACHE_DIR'), k.cache_dir().name)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=PKG.parent)
    assert res.stdout.split() == ["None", "__pycache__"]


def test_first_run_says_it_compiles_and_later_runs_do_not(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FPANALYSIS_NO_PROGRESS"}
    env["NUMBA_CACHE_DIR"] = str(tmp_path)
    runs = [subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    assert "compiling kernels (first run only" in runs[0].stderr
    assert "compiling" not in runs[1].stderr
    assert runs[0].stdout == runs[1].stdout == "[0.0999755859375, 65504.0]\n"


def test_progress_in_a_log_is_one_line_per_phase() -> None:
    code = ("from fpanalysis.progress import progress_bar\n"
            "with progress_bar('job', total=4) as bar:\n"
            "    for i, what in enumerate(['warm-up', 'warm-up', 'measuring', 'certificate']):\n"
            "        bar.callback(i + 1, 4, what)\n")
    env = {k: v for k, v in os.environ.items() if k != "FPANALYSIS_NO_PROGRESS"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = [ln.split("] ", 1)[1] for ln in res.stderr.strip().splitlines()]  # stderr is a pipe here
    assert lines == ["job: started", "job: warm-up", "job: measuring", "job: certificate", "job: done"]
    env["FPANALYSIS_NO_PROGRESS"] = "1"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stderr == ""



MODES_RUN = """
import json, sys, numpy as np, fpanalysis
from fpanalysis._kernels import round as K
from fpanalysis.rounding import RoundingMode
x = np.array([1.0 + 2.0**-11 + 2.0**-13, -(1.0 + 2.0**-11 + 2.0**-13)])
out = []
for mode in sys.argv[1:]:
    out += fpanalysis.round_to(x, 'fp16', mode).tolist()  # float64: round_array_serial
    out += fpanalysis.round_to(x.astype(np.float32), 'fp16', mode, return_stats=True)[0].tolist()
hits = {m: sum(K._f64_kernel(RoundingMode.parse(m).code, False).stats.cache_hits.values()) for m in sys.argv[1:]}
print(json.dumps({"values": out, "kernels": K._f64_kernel.cache_info().currsize, "hits": hits}))
"""


def test_rounding_kernels_compile_per_mode_and_cache_apart(tmp_path: Path) -> None:
    """Each rounding mode is its own compiled kernel (a job compiles only the modes it uses),
    cached apart: a second process that loads the cache gets each mode's own code (a mix-up
    would give nearest-even results for toward-zero, or the other way round)."""
    import json

    import numpy as np

    from fpanalysis._kernels import round as K

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FPANALYSIS_NO_PROGRESS="1")

    def run(*modes: str) -> dict:  # type: ignore[type-arg]
        res = subprocess.run([sys.executable, "-c", MODES_RUN, *modes], env=env, capture_output=True, text=True,
                             check=True, cwd=PKG.parent)
        return json.loads(res.stdout)

    rne = [1.0009765625, -1.0009765625] * 2  # 1 + 2**-11 + 2**-13 rounds away from 1 (nearest)
    rz = [1.0, -1.0] * 2  # and to 1 (toward zero)
    first = run("nearest-even")
    assert first == {"values": rne, "kernels": 1, "hits": {"nearest-even": 0}}  # compiled, one mode
    second = run("toward-zero", "nearest-even")  # toward-zero compiled, nearest-even loaded
    assert second == {"values": rz + rne, "kernels": 2, "hits": {"toward-zero": 0, "nearest-even": 1}}
    with pytest.raises(ValueError, match="not in 0..7"):
        K.round_array_serial(np.zeros(1), np.zeros(1), 11, -14, 2.0**-14, 65504.0, True, 0, 9, np.uint64(0), 0, 0)

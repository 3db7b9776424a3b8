"""`fpanalysis check --format fp8 --recipe ...` on the command line: bad FP8 options refused up
front (exit status 2, one paragraph), and a run on tiny data that writes a plan fp8_training can
apply."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICK = ("mlp", "--data", "gaussian", "--samples", "256", "--dry-run-steps", "3", "--batch-size", "32")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fpanalysis.cli", "check", *args], check=False, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def _refused(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    err = res.stderr.strip()
    assert "\n\n" not in err and len(err.splitlines()) <= 2, err
    assert needle in err, err
    assert "verdict" not in res.stdout and "wrote" not in res.stdout, res.stdout


@pytest.mark.parametrize("extra,needle", [
    (("--format", "fp8", "--recipe", "fp8-magic"), "valid recipes are: current, delayed, mxfp8, mxfp6, mxfp4, nvfp4"),
    (("--recipe", "delayed"), "needs fmt='fp8' (--format fp8)"),
    (("--format", "bf16", "--recipe", "mxfp8"), "--recipe"),
    (("--amax-history", "8"), "--amax-history"),
    (("--format", "fp8", "--amax-history", "0"), "history_len"),
    (("--format", "fp8", "--recipe", "mxfp8", "--amax-history", "4"), "option of the delayed recipe"),
    (("--format", "fp8", "--recipe", "nvfp4", "--fp8-margin", "1"), "margin applies to the per-tensor recipes"),
    (("--format", "fp8", "--plots", "plots_dir"), "--plots"),
    (("--format", "fp8", "--lr", "-1"), "learning rate"),
])
def test_bad_fp8_options_are_refused(extra: tuple[str, ...], needle: str) -> None:
    _refused(_cli(*QUICK, *extra), needle)


def test_fp8_check_runs_and_writes_an_appliable_plan(tmp_path: Path) -> None:
    plan_path = tmp_path / "plan.json"
    report_path = tmp_path / "report.json"
    res = _cli(*QUICK, "--format", "fp8", "--recipe", "current", "--plan", str(plan_path), "--json", str(report_path))
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "with FP8 GEMMs, recipe current" in out and "per GEMM" in out and "verdict:" in out
    rep = json.loads(report_path.read_text())
    assert rep["config"]["recipe"] == "current" and rep["config"]["format"] == "fp8"
    assert {r["operand"] for r in rep["details"]["gemms"]} == {"activation", "weight", "gradient"}
    if rep["verdict"] == "UNSAFE":
        assert not plan_path.exists()
        return
    plan = json.loads(plan_path.read_text())
    assert plan["recipe"] == "current" and plan["format"] == "fp8"
    # verified when the dry run was conclusive and matched fp32 (3 steps may teach fp32 too little)
    inconclusive = [f for f in rep["findings"] if f["check"] == "dry run" and f["status"] == "skipped"]
    assert plan["verified"] is (not inconclusive), rep["findings"]

    import torch

    from fpanalysis.nn.fp8 import apply_fp8_plan

    # the plan's recipe and options on another model, keeping its last GEMM, read from a file
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    plan["keep"] = ["1"]
    plan_path.write_text(json.dumps(plan))
    with apply_fp8_plan(model, str(plan_path)) as fp8:
        model(torch.randn(3, 4))
    assert list(fp8.stats) == ["0"]

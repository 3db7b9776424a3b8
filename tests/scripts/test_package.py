"""Package-level promises: cheap import, CLI behaviour as a user sees it."""
from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fpanalysis.cli", *args], capture_output=True, text=True, timeout=300)


def test_import_is_cheap() -> None:
    code = (
        "import sys, fpanalysis, fpanalysis.rounding, fpanalysis.formats;"
        "heavy = [m for m in ('torch', 'matplotlib', 'numba', 'mpmath', 'scipy') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import fpanalysis pulled in: {out.stdout.strip()}"


def test_cli_help_lists_subcommands() -> None:
    res = _run("--help")
    assert res.returncode == 0
    for cmd in ("verify", "bench", "formats", "round"):
        assert cmd in res.stdout


def test_cli_round_shows_bits_and_overflow() -> None:
    res = _run("round", "65520", "0.1", "--format", "fp16")
    assert res.returncode == 0, res.stderr
    assert "0x7c00" in res.stdout and "inf" in res.stdout
    assert "0x2e66" in res.stdout  # 0.1 in binary16 (IEEE 754 table value)


@pytest.mark.parametrize(
    "args, needle",
    [
        (("round", "1", "--mode", "bogus"), "valid modes are"),
        (("round", "1", "--format", "fp17"), "known formats are"),
        (("round", "abc"), "could not read a number"),
        (("round", "1", "--mode", "stochastic"), "seed"),
    ],
)
def test_cli_bad_input_is_one_paragraph(args: tuple[str, ...], needle: str) -> None:
    res = _run(*args)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr

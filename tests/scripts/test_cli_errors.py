"""Bad input on the command line: refused early, in one paragraph, with exit status 2 and no
traceback; exit status 1 stays reserved for verdicts and mismatches (issue 12 §3 and §4).

Every command runs as a user runs it (``python -m fpanalysis.cli`` from the repository root) on
tiny data, so each case takes seconds.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICK = ("--data", "gaussian", "--steps", "1", "--warmup-steps", "0", "--no-certify")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fpanalysis.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def _refused(res: subprocess.CompletedProcess[str], needle: str) -> None:
    """Exit status 2, one paragraph on stderr naming ``needle``, no traceback, nothing ran."""
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    err = res.stderr.strip()
    assert "\n\n" not in err and len(err.splitlines()) <= 2, err  # the message and the --debug hint
    assert needle in err, err
    assert "verdict" not in res.stdout and "wrote" not in res.stdout, res.stdout


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / "a_file").write_text("not a folder")
    (d / "models.py").write_text(MODELS)
    return d


MODELS = '''
import torch
from torch import nn


def flat(input_shape):
    n = 1
    for s in input_shape:
        n *= s
    return n


def bn(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(flat(input_shape), 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, num_classes))


class LeakyWhere(nn.Module):
    """torch.where: trains fine, but the analysis cannot trace it (no certificate)."""

    def __init__(self, d, k):
        super().__init__()
        self.fc = nn.Linear(d, k)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc(torch.where(x > 0, x, 0.1 * x))


def where(input_shape, num_classes):
    return LeakyWhere(flat(input_shape), num_classes)
'''


# --- check: counts, options and outputs are refused before anything runs ---------------------

@pytest.mark.parametrize(
    "extra, needle",
    [
        (("--samples", "0"), "--samples must be an integer >= 1, got 0"),
        (("--samples", "-5"), "--samples must be an integer >= 1, got -5"),
        (("--profile", "fp32-acumulate"), "valid profiles are"),
        (("--certify-samples", "0"), "certify_samples must be an integer >= 1"),
        (("--warmup-steps", "-5"), "warmup_steps must be an integer >= 0"),
        (("--momentum", "nan"), "momentum must be a finite number"),
        (("--format", "p=11,emin=-14"), "malformed format spec 'p=11,emin=-14': missing emax"),
        (("--format", "p=11,emin=-14,emax=15,q=2"), "unknown key 'q'"),
        (("--json", "{d}/a_file/report.json"), "a_file is a file, not a folder"),
        (("--json", "{d}"), "is a folder; give a file name"),
        (("--plots", "{d}/a_file"), "is a file; give a folder"),
        (("--plots", "{d}/a_file/plots"), "a_file is a file, not a folder"),
        (("--checkpoint", "{d}/missing.pt"), "missing.pt does not exist"),
    ],
)
def test_check_refuses_bad_options_up_front(files: Path, extra: tuple[str, ...], needle: str) -> None:
    _refused(_cli("check", "mlp", *QUICK, *(a.replace("{d}", str(files)) for a in extra)), needle)


def test_check_samples_above_the_data_is_refused() -> None:
    # digits has 1438 training samples; the count used to be capped silently
    _refused(_cli("check", "mlp", "--data", "digits", "--samples", "100000", "--steps", "1", "--warmup-steps", "0",
                  "--no-certify"), "--samples 100000 but digits has only 1438 training samples")


def test_whole_pickled_model_checkpoint_is_one_line_without_unsafe_advice(files: Path) -> None:
    import torch
    from torch import nn

    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(32, 10)), files / "whole.pt")
    res = _cli("check", "mlp", *QUICK, "--checkpoint", str(files / "whole.pt"))
    _refused(res, "holds pickled Python objects")
    assert "state_dict()" in res.stderr
    assert "weights_only" not in res.stderr and "False" not in res.stderr, res.stderr


def test_garbage_checkpoint_is_one_line(files: Path) -> None:
    (files / "garbage.pt").write_bytes(b"this is not a checkpoint")
    res = _cli("check", "mlp", *QUICK, "--checkpoint", str(files / "garbage.pt"))
    _refused(res, "is not a state_dict saved with torch.save")
    assert "weights_only" not in res.stderr, res.stderr


# --- analyze, verify, round ------------------------------------------------------------------

@pytest.mark.parametrize(
    "args, needle",
    [
        (("analyze", "mlp", "--data", "gaussian", "--n", "-3"), "--n must be an integer >= 1, got -3"),
        (("analyze", "mlp", "--data", "gaussian", "--n", "0"), "--n must be an integer >= 1, got 0"),
        (("analyze", "mlp", "--data", "gaussian", "--n", "5000"), "--n 5000 but gaussian has only 1000 test inputs"),
        (("analyze", "mlp", "--data", "gaussian", "--mode", "closest"), "valid modes are"),
        (("analyze", "mlp", "--data", "gaussian", "--json", "{d}/a_file/x.json"), "a_file is a file, not a folder"),
        (("verify", "--n", "0"), "--n must be an integer >= 1, got 0"),
        (("verify", "--n", "-1"), "--n must be an integer >= 1, got -1"),
        (("verify", "--tc-blocks", "0"), "--tc-blocks must be an integer >= 1, got 0"),
        (("verify", "--json", "{d}/a_file/v.json"), "a_file is a file, not a folder"),
        (("round", "0.1", "--mode", "stochastic"), "--mode stochastic needs --seed"),
        (("round", "0.1", "--format", "p=11,emin=-14,emax=x"), "emax must be an integer"),
    ],
)
def test_other_commands_refuse_bad_input(files: Path, args: tuple[str, ...], needle: str) -> None:
    _refused(_cli(*(a.replace("{d}", str(files)) for a in args)), needle)


def test_round_accepts_a_format_spec() -> None:
    res = _cli("round", "0.1", "65520", "--format", "p=11,emin=-14,emax=15")
    assert res.returncode == 0, res.stderr
    # numpy's float64 -> float16 conversion (round to nearest even) is the oracle
    assert repr(float(np.float16(0.1))) in res.stdout
    assert "0x2e66" in res.stdout  # the IEEE binary16 bits of fp16(0.1)
    assert "inf" in res.stdout  # 65520 rounds up to infinity in fp16


def test_round_stochastic_with_seed_runs() -> None:
    res = _cli("round", "0.1", "--mode", "stochastic", "--seed", "3")
    assert res.returncode == 0, res.stderr
    assert any(v in res.stdout for v in (repr(float(np.nextafter(np.float16(0.1), np.float16(1)))),
                                         repr(float(np.float16(0.1)))))


def test_help_documents_the_exit_codes() -> None:
    res = _cli("--help")
    assert res.returncode == 0
    text = res.stdout
    assert "exit status:" in text
    for code, word in (("0", "success"), ("1", "--fail-on"), ("2", "bad input"), ("3", "internal error")):
        assert any(line.strip().startswith(code + " ") and word in line for line in text.splitlines()), (code, text)


# --- models the probes used to reject; checks that did not run -------------------------------

def test_linear_batchnorm1d_model_is_checked(files: Path) -> None:
    # the probe's reduction-length forward ran one sample in train mode: BatchNorm1d refused it
    res = _cli("check", f"{files}/models.py:bn", *QUICK)
    assert res.returncode == 0, res.stderr
    assert "verdict:" in res.stdout


@pytest.fixture(scope="module")
def where_report(files: Path) -> tuple[subprocess.CompletedProcess[str], dict, subprocess.CompletedProcess[str]]:
    out = files / "where.json"
    common = ("--data", "gaussian", "--steps", "1", "--warmup-steps", "0", "--certify-samples", "8")
    strict = _cli("check", f"{files}/models.py:where", *common, "--fail-on", "changes", "--json", str(out))
    lenient = _cli("check", f"{files}/models.py:where", *common, "--fail-on", "unsafe")
    return strict, json.loads(out.read_text()), lenient


def test_untraceable_model_certificate_is_skipped_not_ok(where_report) -> None:  # type: ignore[no-untyped-def]
    strict, rep, _ = where_report
    agreement = [f for f in rep["findings"] if f["check"] == "inference agreement"]
    assert [f["status"] for f in agreement] == ["skipped"], agreement
    assert "not examined" in agreement[0]["message"]
    line = next(ln for ln in strict.stdout.splitlines() if "inference agreement" in ln)
    assert line.startswith("[SKIP]"), line
    assert "not examined: inference agreement" in strict.stdout


def test_fail_on_changes_fails_on_a_skipped_check(where_report) -> None:  # type: ignore[no-untyped-def]
    strict, rep, lenient = where_report
    assert rep["verdict"] == "SAFE"  # every check that ran passed ...
    assert strict.returncode == 1, strict.stderr  # ... but a skipped one is not a pass for --fail-on changes
    assert "inference agreement skipped" in strict.stderr
    assert lenient.returncode == 0, lenient.stderr  # --fail-on unsafe judges the verdict only


def test_fp32_divergence_is_named() -> None:
    res = _cli("check", "mlp", "--data", "gaussian", "--lr", "1e4", "--steps", "3", "--warmup-steps", "0",
               "--no-certify", "--fail-on", "unsafe")
    assert res.returncode == 1, res.stderr
    assert "fp32 training diverges at step" in res.stdout, res.stdout
    assert "lower the learning rate" in res.stdout
    assert "activation overflow" not in res.stdout  # measured on a diverged run: not reported


def test_an_internal_error_exits_3_not_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # 1 means "--fail-on matched" to CI; a crash must not read as a verdict
    from fpanalysis import cli

    def boom(args: object) -> int:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(cli, "_cmd_formats", boom)
    assert cli.main(["formats"]) == 3
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: simulated bug" in err and "please report it" in err
    assert "Traceback" not in err

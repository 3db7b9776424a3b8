"""`fpanalysis check` on purpose-built models: each finding fires where it should and not on a
healthy model; the command line as a user runs it, including every bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fpanalysis.check import check


def _data(n: int = 256, d: int = 16, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.standard_normal((k, d)) * 2
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return x, y


class Scaled(nn.Module):
    """An MLP whose input and output are multiplied by constants (to push ranges)."""

    def __init__(self, d: int = 16, k: int = 4, in_scale: float = 1.0, out_scale: float = 1.0,
                 bias: bool = True) -> None:
        super().__init__()
        self.in_scale, self.out_scale = in_scale, out_scale
        self.fc1 = nn.Linear(d, 32, bias=bias)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x * self.in_scale))) * self.out_scale


def _status(rep, name: str) -> str:  # type: ignore[no-untyped-def]
    found = [f.status for f in rep.findings if f.check == name]
    assert found, [f.check for f in rep.findings]
    return found[0]


def _run(model: nn.Module, **kw):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    kw.setdefault("certify", False)
    kw.setdefault("steps", 3)
    kw.setdefault("warmup_steps", 0)
    return check(model, _data(), **kw)


@pytest.fixture
def healthy():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return _run(Scaled(), lr=0.05)


def test_healthy_model_is_safe(healthy) -> None:  # type: ignore[no-untyped-def]
    assert healthy.verdict == "SAFE", healthy.render()
    assert all(f.status != "fail" for f in healthy.findings)


def test_activation_overflow(healthy) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    rep = _run(Scaled(in_scale=3e4), lr=1e-6)
    assert _status(rep, "activation overflow") == "fail"
    assert rep.verdict in ("SAFE WITH CHANGES", "UNSAFE")
    assert not [f for f in healthy.findings if f.check == "activation overflow"]


def test_activation_underflow(healthy) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    rep = _run(Scaled(in_scale=1e-9, bias=False), lr=0.05)
    assert _status(rep, "activation underflow") == "warn"
    assert _status(healthy, "activation underflow") == "ok"


def test_gradient_underflow_names_a_loss_scale(healthy) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    rep = _run(Scaled(out_scale=1e-7), lr=0.05)
    f = [f for f in rep.findings if f.check == "gradient underflow"][0]
    assert f.status == "fail" and f.fix and "loss scaling with S =" in f.fix
    assert _status(healthy, "gradient underflow") == "ok"


def test_adam_epsilon(healthy) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    bad = _run(Scaled(), optimizer="adam", lr=1e-3, eps=1e-8)
    assert _status(bad, "optimizer epsilon") == "fail"
    assert any("raise Adam eps" in c for c in bad.changes)
    good = _run(Scaled(), optimizer="adam", lr=1e-3, eps=1e-3)
    assert _status(good, "optimizer epsilon") == "ok"
    assert not [f for f in healthy.findings if f.check == "optimizer epsilon"]


def test_update_stagnation(healthy) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    rep = _run(Scaled(), lr=1e-7, momentum=0.0)
    assert _status(rep, "dry run: update stagnation") == "fail"
    assert any("master weights" in c for c in rep.changes)
    # weighed by the dry run, the healthy model's lost updates cost nothing worth a finding
    assert not [f for f in healthy.findings if f.check == "dry run: update stagnation" and f.status != "ok"]


def test_bad_python_inputs() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="must be a torch.nn.Module"):
        check("not a model", (x, y))
    with pytest.raises(ValueError, match="empty"):
        check(Scaled(), (x[:0], y[:0]))
    with pytest.raises(ValueError, match="cannot run on inputs of shape"):
        check(Scaled(d=7), (x, y))
    m = Scaled()
    with torch.no_grad():
        m.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        check(m, (x, y))
    with pytest.raises(ValueError, match="labels range"):
        check(Scaled(k=2), (x, y))
    with pytest.raises(ValueError, match="valid optimizers"):
        check(Scaled(), (x, y), optimizer="lbfgs")


# --- the command line ----------------------------------------------------------------------

def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fpanalysis.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


FACTORIES = '''
import torch
from torch import nn

def good(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), num_classes))

def wrong_shape():
    return nn.Linear(3, 10)

def not_a_module():
    return 42

def broken():
    raise RuntimeError("boom")
'''


@pytest.fixture
def user_files(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(FACTORIES)
    (tmp_path / "syntax_error.py").write_text("def (:\n")
    torch.save({"weight": torch.zeros(2, 2)}, tmp_path / "mismatch.pt")
    good = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    sd = good.state_dict()
    sd["1.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    (tmp_path / "empty_dir").mkdir()
    return tmp_path


def test_cli_check_user_model_writes_json(user_files: Path) -> None:
    out = user_files / "report.json"
    res = _cli("check", f"{user_files}/models.py:good", "--data", "digits", "--steps", "2", "--warmup-steps", "2",
               "--no-certify", "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert "verdict:" in res.stdout
    import json

    rep = json.loads(out.read_text())
    assert rep["verdict"] in ("SAFE", "SAFE WITH CHANGES", "UNSAFE")
    assert all({"measured", "threshold", "status"} <= set(f) for f in rep["findings"])


@pytest.mark.parametrize(
    "args, needle",
    [
        (("check", "alexnet", "--data", "digits"), "unknown model 'alexnet'"),
        (("check", "{d}/missing.py:f", "--data", "digits"), "does not exist"),
        (("check", "{d}/syntax_error.py:f", "--data", "digits"), "could not import"),
        (("check", "{d}/models.py:nope", "--data", "digits"), "has no callable 'nope'"),
        (("check", "{d}/models.py:not_a_module", "--data", "digits"), "not a torch.nn.Module"),
        (("check", "{d}/models.py:broken", "--data", "digits"), "failed: RuntimeError: boom"),
        (("check", "{d}/models.py:wrong_shape", "--data", "digits"), "cannot run on inputs of shape"),
        (("check", "{d}/models.py:good", "--data", "digits", "--checkpoint", "{d}/mismatch.pt"), "does not match the model"),
        (("check", "{d}/models.py:good", "--data", "digits", "--checkpoint", "{d}/nan.pt"), "NaN/inf"),
        (("check", "{d}/models.py:good", "--data", "digits", "--checkpoint", "{d}/none.pt"), "does not exist"),
        (("check", "mlp", "--data", "imagenet"), "unknown data 'imagenet'"),
        (("check", "mlp", "--data", "{d}/empty_dir"), "neither MNIST idx files"),
        (("check", "mlp", "--data", "digits", "--optimizer", "lbfgs"), "valid optimizers"),
        (("check", "mlp", "--data", "digits", "--format", "fp7"), "known formats"),
        (("check",), "name a model"),
    ],
)
def test_cli_check_bad_input(user_files: Path, args: tuple[str, ...], needle: str) -> None:
    res = _cli(*(a.replace("{d}", str(user_files)) for a in args))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


# --- models the probes used to reject; checks that did not run (issue 12 §3, §4) -----------

def test_linear_batchnorm1d_model() -> None:
    # the reduction-length forward ran one sample in train mode, which BatchNorm1d refuses
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    rep = _run(model, lr=0.05)
    assert rep.verdict in ("SAFE", "SAFE WITH CHANGES", "UNSAFE")
    assert any(r["type"] == "BatchNorm1d" for r in rep.details["reductions"])


class _Where(nn.Module):
    """torch.where: trains, but the analysis cannot trace it, so there is no certificate."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.where(x > 0, x, 0.1 * x))


def test_a_certificate_that_did_not_run_is_skipped_not_ok() -> None:
    torch.manual_seed(0)
    rep = _run(_Where(), lr=0.05, certify=True, certify_samples=8, steps=1)
    agreement = [f for f in rep.findings if f.check == "inference agreement"]
    assert [f.status for f in agreement] == ["skipped"]
    assert agreement[0].message.startswith("not examined: ")
    text = rep.render()
    assert "[SKIP] inference agreement: not examined" in text
    assert "[OK  ] inference agreement" not in text
    assert "not examined: inference agreement" in text.split("verdict:")[1]
    assert [f["status"] for f in rep.to_dict()["findings"] if f["check"] == "inference agreement"] == ["skipped"]


def test_fp32_divergence_is_reported_as_such() -> None:
    torch.manual_seed(0)
    rep = _run(Scaled(), lr=1e4, steps=4)
    assert [f.check for f in rep.findings] == ["fp32 training"]
    (f,) = rep.findings
    assert f.status == "fail" and not f.fixable
    assert f"fp32 training diverges at step {int(f.measured)}" in f.message
    assert "lower the learning rate" in f.message
    assert rep.verdict == "UNSAFE"
    # divergence in the warm-up before the certificate is caught there
    rep = _run(Scaled(), lr=1e4, steps=2, certify=True, warmup_steps=20, certify_samples=8)
    assert [f.check for f in rep.findings] == ["fp32 training"]
    assert rep.config["fp32_diverged_at_step"] <= 20


def test_a_healthy_run_is_not_called_diverged(healthy) -> None:  # type: ignore[no-untyped-def]
    assert "fp32 training" not in [f.check for f in healthy.findings]
    rep = _run(Scaled(), lr=0.5, steps=6)  # a large but trainable learning rate
    assert "fp32 training" not in [f.check for f in rep.findings]

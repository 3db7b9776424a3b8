"""End-to-end analysis: deterministic bounds are never violated, certificates are sound.

Every ``analyze`` call below checks, for every element of every layer of every input, the
emulated run and the real torch CPU ``half()`` run against the deterministic bound, and every
step's own error against its local bound (``report.violations`` counts them; at the logits a
violation also raises ``BoundViolationWarning``, an error under pytest).  The oracles are
torch itself (fp32 model, ``model.half()``) and float64; measured numbers are recomputed
independently from ``run_model`` outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from scipy import stats
from torch import nn

from fpanalysis._kernels.stats import layer_stats_numpy, run_layer_stats
from fpanalysis.analysis import analyze
from fpanalysis.analysis.report import AnalysisReport
from fpanalysis.formats import FloatFormat
from fpanalysis.nn.execute import run_model
from fpanalysis.nn.models import build_model
from fpanalysis.nn.trace import trace_model


def _bn(m: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.running_mean.copy_(torch.rand(mod.running_mean.shape, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) * 1.5 + 0.2)
            mod.weight.data.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(mod.bias.shape, generator=g) * 0.4 - 0.2)
    return m.eval()


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.ap = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d((2, 2))
        self.fc = nn.Linear(32, 16)
        self.bn3 = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.c1(x)))
        y = self.pool(y)
        y = F.relu(self.bn2(self.c2(y)) + y[:, :, ::2, ::2])
        y = self.gap(self.ap(y))
        return self.out(F.silu(self.bn3(self.fc(torch.flatten(y, 1)))))


class Smooth(nn.Module):
    """Every smooth activation, layer norm, a softmax in the middle, elementwise products."""

    def __init__(self, d: int = 24) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, 32)
        self.ln = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        h = self.ln(h) * torch.sigmoid(h)
        h = torch.tanh(self.fc2(h)) + F.gelu(h, approximate="tanh") - F.silu(h) / 2.0
        return self.fc3(torch.softmax(h, dim=-1) * 8.0 + h)


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, _ = self.mha(h, h, h)
        return self.head(self.ln(h + a).mean(dim=1))


def _check(rep: AnalysisReport, *, half: bool = True) -> None:
    assert rep.violations == 0, [(lr.name, lr.violations, lr.local_violations, lr.half_violations)
                                 for lr in rep.layers if lr.violations + lr.local_violations + lr.half_violations]
    for s in rep.tolerance.values():
        for r in s.runs.values():
            assert r.bound_violations == 0 and r.flips_certified == 0
        assert ("torch-half" in s.runs) == half
    out = rep.layers[-1]
    assert out.kind == "output" and out.err_max <= out.bound_max


def _independent_check(model: nn.Module, x: torch.Tensor, rep: AnalysisReport) -> None:
    """delta recomputed from torch (model(x), model.half()(x)) sits under the report's B."""
    with torch.no_grad():
        m32 = model.float().eval()(x).double().numpy()
        m16 = __import__("copy").deepcopy(model).half()(x.half()).double().numpy()
    B = np.asarray(rep.per_input["logits"]["B"])
    delta = np.abs(m16 - m32).max(axis=1)
    assert np.all(delta <= B)
    cert = np.asarray(rep.per_input["logits"]["certified"])
    assert np.all((np.argmax(m16, 1) == np.argmax(m32, 1))[cert])


def test_mlp_report_numbers_are_what_they_say(rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    x = torch.from_numpy(rng.standard_normal((300, 20)).astype(np.float32))
    rep = analyze(m, x, "fp16", progress=False, labels=np.zeros(300, dtype=int), batch_size=128)
    _check(rep)
    _independent_check(m, x, rep)
    out = run_model(trace_model(m), x, backends=("float32", "float64", "emulator", "half"))
    e = (out["emulator"]["2"].double() - out["float32"]["2"].double()).abs()
    lr = rep.layer("2")
    assert lr.err_max == float(e.max()) and lr.count == e.numel()
    assert lr.err_exact_max == float((out["emulator"]["2"].double() - out["float64"]["2"]).abs().max())
    assert lr.half_match_chained == float((out["half"]["2"].float() == out["emulator"]["2"]).double().mean())
    assert lr.n == 33 and lr.shape == (5,)
    assert rep.accuracy.keys() == {"fp32", "emulator", "torch-half"}
    s = rep.tolerance["logits"]
    assert s.n == 300 and s.certified_fraction > 0.8
    per = rep.per_input["logits"]
    assert np.allclose(per["delta_emulator"], (out["emulator"]["output"].double()
                                               - out["float32"]["output"].double()).abs().max(1).values.numpy())
    # the probabilistic bound is informative: within 100x of the measured error (random data)
    assert rep.layer("output").tightness_prob < 100
    assert 0.0 < rep.probability < 1.0 and rep.config["lam"] > 0


@pytest.mark.parametrize("case", ["same-sign", "large-n", "cancellation", "subnormal", "near-overflow"])
def test_adversarial_data_never_violate_the_bounds(case: str, rng: np.random.Generator) -> None:
    torch.manual_seed(1)
    n_in = 4096 if case == "large-n" else 64
    m = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = rng.standard_normal((96, n_in)).astype(np.float32)
    with torch.no_grad():
        if case == "same-sign":
            m[0].weight.abs_()
            x = np.abs(x) + 0.5
        elif case == "cancellation":
            w = m[0].weight
            w[:, n_in // 2:] = -w[:, : n_in // 2]
            x[:, n_in // 2:] = x[:, : n_in // 2] * (1 + 1e-3 * rng.standard_normal((96, n_in // 2)))
        elif case == "subnormal":
            x = x * 3e-6
            m[2].weight.mul_(1e-2)
        elif case == "near-overflow":
            x = x * 1000.0
            m[0].weight.mul_(10.0)
            m[2].weight.mul_(30.0)
    rep = analyze(m, x, "fp16", progress=False)
    _check(rep)
    hidden = rep.layer("0")
    if case == "subnormal":
        assert rep.layer("input_1").frac_subnormal > 0.5 and rep.layer("input_1").frac_flushed > 0
    if case == "near-overflow":
        assert 10000 < hidden.abs_max <= 65504 and rep.layer("2").n_overflow > 0
        assert rep.layer("2").bound_max == np.inf  # the bound says "cannot exclude overflow", never a wrong number
        assert np.isinf(rep.per_input["logits"]["delta_emulator"]).any()
    if case == "same-sign":
        assert rep.layer("0").local_err_max > 0


def _conv_linear_half_match(rep: AnalysisReport, record_property, dtype: str) -> None:  # type: ignore[no-untyped-def]
    """The emulator's per-layer bitwise match with torch's CPU conv2d/linear kernels: >= 0.99
    where the probes show torch summing sequentially in binary32 (tests/torch_cpu.py), else
    reported (the bound checks of the report hold on every CPU)."""
    from torch_cpu import half_conv2d_is_sequential_fp32, half_mm_is_sequential_fp32, report_match

    convs = [lr for lr in rep.layers if lr.kind in ("conv2d", "linear")]
    assert convs
    for lr in convs:
        probe = half_conv2d_is_sequential_fp32 if lr.kind == "conv2d" else half_mm_is_sequential_fp32
        modelled = probe(dtype)
        report_match(record_property, f"{dtype} {lr.kind} layer {lr.name}", lr.half_match, modelled)
        if modelled:
            assert lr.half_match >= 0.99, (lr.name, lr.half_match)


@pytest.mark.torch_kernels
def test_cnn_with_batchnorm_emulator_and_half(rng: np.random.Generator, record_property) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(2)
    m = _bn(CNN())
    x = torch.from_numpy(rng.standard_normal((64, 3, 12, 12)).astype(np.float32))
    rep = analyze(m, x, "fp16", progress=False, batch_size=32)
    _check(rep)
    _independent_check(m, x, rep)
    _conv_linear_half_match(rep, record_property, "float16")
    kinds = {lr.kind for lr in rep.layers}
    assert kinds >= {"conv2d", "batchnorm", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "linear", "silu", "add"}
    assert all(lr.local_err_max <= lr.local_bound_max for lr in rep.layers)


@pytest.mark.torch_kernels
def test_bf16_runs_torch_bfloat16_and_other_formats_no_real_run(rng: np.random.Generator, record_property) -> None:  # type: ignore[no-untyped-def]
    """A bf16 analysis compares against torch's bfloat16 kernels (run "torch-bf16"), not float16
    ones: the emulator matches them bit for bit, and their delta sits under the bf16 bound.
    Formats torch cannot run (fp8) have no real run, and asking for one is an error."""
    torch.manual_seed(2)
    m = _bn(CNN())
    x = torch.from_numpy(rng.standard_normal((48, 3, 12, 12)).astype(np.float32))
    rep = analyze(m, x, "bf16", progress=False, batch_size=24)
    assert rep.violations == 0
    assert rep.config["real_dtype"] == "torch.bfloat16"
    for s in rep.tolerance.values():
        assert set(s.runs) == {"emulator", "torch-bf16"}
        assert all(r.bound_violations == 0 and r.flips_certified == 0 for r in s.runs.values())
    _conv_linear_half_match(rep, record_property, "bfloat16")
    with torch.no_grad():
        m32 = m.float().eval()(x).double().numpy()
        m16 = __import__("copy").deepcopy(m).to(torch.bfloat16)(x.to(torch.bfloat16)).double().numpy()
    delta = np.abs(m16 - m32).max(axis=1)
    assert np.all(delta <= np.asarray(rep.per_input["logits"]["B"]))
    assert rep.tolerance["logits"].runs["torch-bf16"].max_delta == pytest.approx(delta.max(), rel=1e-9)
    fp8 = analyze(m, x[:8], "fp8_e4m3fn", progress=False)
    assert set(fp8.tolerance["logits"].runs) == {"emulator"} and fp8.config["real_dtype"] is None
    saturating = FloatFormat("fp16-sat", 11, -14, 15, overflow="saturate")  # torch overflows to inf
    assert set(analyze(m, x[:8], saturating, progress=False).tolerance["logits"].runs) == {"emulator"}
    with pytest.raises(ValueError, match="fp8_e4m3fn"):
        analyze(m, x[:8], "fp8_e4m3fn", progress=False, real_half=True)


def test_smooth_activations_layernorm_softmax(rng: np.random.Generator) -> None:
    torch.manual_seed(3)
    m = Smooth().eval()
    x = torch.from_numpy((rng.standard_normal((128, 24)) * 2).astype(np.float32))
    rep = analyze(m, x, "fp16", progress=False)
    _check(rep)
    _independent_check(m, x, rep)


def test_vit_and_multihead_attention(rng: np.random.Generator) -> None:
    torch.manual_seed(4)
    vit = build_model("vit_tiny", input_shape=(3, 8, 8), num_classes=10, width=16, depth=1, heads=2)
    x = torch.from_numpy(rng.standard_normal((32, 3, 8, 8)).astype(np.float32))
    rep = analyze(vit, x, "fp16", progress=False)
    _check(rep)
    _independent_check(vit, x, rep)
    m = Attn().eval()
    xa = torch.from_numpy(rng.standard_normal((32, 5, 6)).astype(np.float32))
    rep2 = analyze(m, xa, "fp16", progress=False)
    _check(rep2)
    run = rep2.tolerance["logits"].runs["torch-half-model"]  # torch's own attention kernels
    assert run.bound_violations == 0
    assert {lr.kind for lr in rep2.layers} >= {"matmul", "softmax", "affine", "layernorm", "mean"}


@pytest.mark.parametrize("fmt, profile, mode", [("fp16", "ieee", "nearest-even"), ("fp16", "exact", "nearest-even"),
                                                ("fp16", "fp32-accumulate", "toward-zero"),
                                                ("fp16", "fp32-accumulate", "stochastic"),
                                                ("bf16", "fp32-accumulate", "nearest-even")])
def test_profiles_modes_formats(fmt: str, profile: str, mode: str, rng: np.random.Generator) -> None:
    torch.manual_seed(5)
    m = _bn(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.GELU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6)))
    x = rng.standard_normal((40, 2, 6, 6)).astype(np.float32)
    real = fmt == "fp16" and profile == "fp32-accumulate" and mode == "nearest-even"
    rep = analyze(m, x, fmt, profile, mode, progress=False, seed=11, real_half=real)
    _check(rep, half=real)
    assert rep.config["fmt"] == fmt and rep.config["profile"] == profile and rep.config["mode"] == mode


def test_probabilistic_bound_fails_no_more_often_than_stated(rng: np.random.Generator) -> None:
    """ieee profile, inner products of length 1024: gamma_n is useless (tightness ~1e3), the
    Higham-Mary bound is informative (< 100x), and its failures stay under the stated rate."""
    torch.manual_seed(6)
    m = nn.Sequential(nn.Linear(1024, 16)).eval()
    N = 300
    x = rng.standard_normal((N, 1024)).astype(np.float32)
    rep = analyze(m, x, "fp16", "ieee", failure_prob=0.05, progress=False, real_half=False)
    _check(rep, half=False)
    lr = rep.layer("0")
    assert lr.local_tightness_prob < 100 < lr.local_tightness
    assert lr.tightness_prob < 100
    fail = 1.0 - rep.probability
    assert 0.04 < fail <= 0.05 + 1e-12
    bad = int((np.asarray(rep.per_input["logits"]["delta_emulator"]) > np.asarray(rep.per_input["logits"]["B_prob"])).sum())
    assert bad <= stats.binom.ppf(1 - 1e-9, N, fail)
    assert lr.violations_prob <= stats.binom.ppf(1 - 1e-9, N, fail) * 16


def test_unsupported_layer_in_analyze() -> None:
    m = nn.Sequential(nn.Linear(4, 4), nn.Hardswish())
    with pytest.raises(ValueError, match=r"layer '1' \(nn.Hardswish\) is not supported; supported layers are"):
        analyze(m, torch.randn(2, 4), progress=False)
    with pytest.raises(ValueError, match="failure_prob"):
        analyze(nn.Linear(4, 2), torch.randn(2, 4), failure_prob=0.0, progress=False)


def test_report_json_table_and_plots(tmp_path, rng: np.random.Generator) -> None:
    torch.manual_seed(7)
    m = _bn(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3)))
    rep = analyze(m, rng.standard_normal((20, 1, 5, 5)).astype(np.float32), progress=False, name="tiny")
    path = tmp_path / "r.json"
    rep.to_json(path)
    back = AnalysisReport.from_json(path)
    assert json.loads(path.read_text())["config"]["model"] == "tiny"
    assert [lr.__dict__ for lr in back.layers] == [lr.__dict__ for lr in rep.layers] or all(
        a.name == b.name and a.err_max == b.err_max and a.exp_hist == b.exp_hist for a, b in zip(back.layers, rep.layers))
    assert back.tolerance["logits"].certified == rep.tolerance["logits"].certified
    text = str(rep)
    assert "conv2d" in text and "batchnorm" in text and "certified" in text
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    fig = rep.plot_errors(tmp_path / "e.png")
    fig2 = rep.plot_exponents(tmp_path / "x.png")
    assert (tmp_path / "e.png").stat().st_size > 0 and (tmp_path / "x.png").stat().st_size > 0
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(fig2)


def test_import_fpanalysis_stays_torch_free() -> None:
    code = ("import sys, fpanalysis, fpanalysis.analysis, fpanalysis.tolerance, fpanalysis.analysis.report; "
            "print('torch' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_stats_kernel_matches_numpy_twin(rng: np.random.Generator) -> None:
    n = 20000
    v32 = rng.standard_normal(n).astype(np.float32)
    ve = (v32 + rng.standard_normal(n).astype(np.float32) * 1e-3).astype(np.float32)
    ve[3], ve[4], v32[5], v32[6] = np.nan, np.inf, 0.0, 1e-30
    G = np.abs(rng.standard_normal(n)) * 1e-3
    args = (ve, v32, G, G * 0.7, v32.astype(np.float64) + 1e-9, ve + (rng.random(n) < 0.1).astype(np.float32) * 1e-3,
            v32.astype(np.float64) + 5e-4, ve.copy(), G, G * 0.5)
    kw = {"min_normal": 2.0**-14, "tol": 1e-6, "exp_lo": -40, "nbins": 72}
    for a, b in zip(run_layer_stats(*args, **kw), layer_stats_numpy(*args, **kw)):
        np.testing.assert_allclose(a, b, rtol=1e-9)
    for a, b in zip(run_layer_stats(*args[:4], **kw), layer_stats_numpy(*args[:4], **kw)):
        np.testing.assert_allclose(a, b, rtol=1e-9)


def test_stats_kernel_one_thread_twin_gives_the_same_bits(rng: np.random.Generator) -> None:
    """run_layer_stats uses the one-thread layer_stats_serial below SERIAL_BELOW elements (it
    compiles faster); it must give exactly the parallel kernel's results (same chunks), NaN,
    inf and zeros included, with every optional input."""
    from fpanalysis._kernels import stats as S

    n = 300_000  # 64 chunks
    v32 = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 10, n)).astype(np.float32)
    ve = (v32 * (1 + rng.standard_normal(n) * 1e-3)).astype(np.float32)
    ve[::997], ve[5::1009], v32[7::991] = np.nan, np.inf, 0.0
    G = np.abs(rng.standard_normal(n)) * 1e-3
    args = (ve, v32, G, G * 0.7, v32.astype(np.float64), ve.copy(), v32.astype(np.float64), ve.copy(), G, G * 0.5,
            15, 2.0**-14, 1e-6, -40, 72, 64)
    par, ser = S.layer_stats(*args), S.layer_stats_serial(*args)
    for a, b in zip(par, ser):
        assert a.tobytes() == b.tobytes()
    counts = dict(zip(S.INT_FIELDS, par[1][0]))  # chunk 0
    assert n < S.SERIAL_BELOW and counts["n_nan"] > 0 and counts["n_inf"] > 0


@pytest.mark.parametrize("fmt, profile, mode, order", [
    ("fp16", "fp32-accumulate", "nearest-even", None), ("fp16", "ieee", "nearest-even", "sequential"),
    ("fp16", "ieee", "toward-zero", "pairwise"), ("fp16", "ieee", "nearest-even", "blocked"),
    ("bf16", "fp32-accumulate", "up", None), ("fp16", "exact", "nearest-even", None)])
def test_torch_accumulation_bounds_equal_the_bounds_module(fmt, profile, mode, order, rng) -> None:
    """Oracle: fpanalysis.bounds.accumulation_bound (NumPy), deterministic and probabilistic."""
    from fpanalysis.analysis.network_bounds import BoundConfig, accumulation_bounds
    from fpanalysis.bounds import accumulation as Bd

    cfg = BoundConfig.make(fmt, profile, mode, order, 16, lam=6.5)
    A = np.abs(rng.standard_normal((50, 7))) * 10.0 ** rng.integers(-12, 6, (50, 7))
    A[0, :3] = [0.0, 70000.0, 1e-30]
    R = A * rng.random(A.shape)
    for n in (1, 16, 300, 2100):
        d, p, fail = accumulation_bounds(torch.from_numpy(A), torch.from_numpy(R), n, cfg, union=7)
        kw = {"abs_result": R, "order": cfg.order, "block": 16, "mode": cfg.mode}
        bd = Bd.accumulation_bound(A, n, fmt, profile, **kw)
        bp = Bd.accumulation_bound(A, n, fmt, profile, method="probabilistic", lam=6.5, union=7, **kw)
        np.testing.assert_array_equal(d.numpy(), bd.value)
        np.testing.assert_array_equal(p.numpy(), bp.value)
        assert fail == bp.failure_probability
    own, _, _ = accumulation_bounds(torch.from_numpy(A), torch.zeros(()), 300, cfg, fmt="fp32", profile="ieee",
                                    probabilistic=False)
    np.testing.assert_array_equal(own.numpy(), Bd.accumulation_bound(A, 300, "fp32", "ieee").value)

"""Soundness of the adjoint certificate (fpanalysis.analysis.adjoint).

Oracles: the emulator and torch's CPU float16 kernels (observed errors), float64 torch runs of
the model with rounded / fp32 parameters (the known part mu), explicit float64 Jacobians built
from the weight matrices (the predictor's sigma).  0 violations anywhere.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fpanalysis.analysis.adjoint import adjoint_certificate, adjoint_radii, unsupported_steps
from fpanalysis.analysis.network_bounds import BoundConfig
from fpanalysis.nn.execute import run_model
from fpanalysis.nn.trace import trace_model
from fpanalysis.rounding import round_to

CFG = BoundConfig.make("fp16", "fp32-accumulate")


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                      nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    with torch.no_grad():
        bn = m[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.1, 0.1)
    return m.eval()


class _Res(nn.Module):
    """A residual block with a projection-free shortcut (the ResNet pattern)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.c1 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(self.b2(self.c2(h)) + x)
        return self.head(h.flatten(1))


def _observed(m: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    out = run_model(trace_model(m), x, "fp16", backends=("float32", "emulator", "half"))
    return {k: v["output"].double().numpy() for k, v in out.items()}


def _check(m: nn.Module, x: torch.Tensor) -> tuple:
    tr = trace_model(m)
    res = adjoint_certificate(tr, x, CFG, batch_size=7)
    obs = _observed(m, x)
    z = obs["float32"]
    c = z.argmax(1)
    ar = np.arange(len(c))
    for name in ("emulator", "half"):
        d = obs[name] - z
        assert (np.abs(d) <= res.bound).all(), name
        dm = np.abs(d[ar, c][:, None] - d)
        assert (dm <= res.margin_bound).all(), name
        flips = obs[name].argmax(1) != c
        assert not (flips & res.certified).any(), name
    return res, obs


@pytest.mark.parametrize("seed", [0, 1])
def test_cnn_bounds_hold_and_certify(seed: int) -> None:
    torch.manual_seed(10 + seed)
    x = torch.randn(20, 2, 8, 8)
    res, obs = _check(_cnn(seed), x)
    assert res.certified.mean() > 0.5
    delta = np.abs(obs["emulator"] - obs["float32"]).max(1)
    # the bound is above the limit, which is above ... nothing sound; the limit itself is a bound
    # on no run, but both exceed the observed error on these inputs
    assert (res.bound.max(1) >= res.limit).all()
    assert (res.bound.max(1) >= delta).all()


def test_residual_block() -> None:
    torch.manual_seed(3)
    x = torch.randn(16, 3, 6, 6)
    _check(_Res().eval(), x)


def test_per_neuron_radius() -> None:
    """|emulated - fp32| <= R at every step (and for torch's half kernels)."""
    m = _cnn(0)
    torch.manual_seed(5)
    x = torch.randn(12, 2, 8, 8)
    tr = trace_model(m)
    radii = adjoint_radii(tr, x, CFG)
    out = run_model(tr, x, "fp16", backends=("float32", "emulator", "half"))
    checked = 0
    for name, R in radii.items():
        for be in ("emulator", "half"):
            d = (out[be][name].double() - out["float32"][name].double()).abs()
            assert bool((d <= R).all()), (name, be, float((d - R).max()))
            checked += 1
    assert checked >= 20


def test_mu_matches_float64_model_with_rounded_parameters() -> None:
    """mu = J k: the float64 model with fp16 parameters on the fp16 input, minus the float64
    model with fp32 parameters on the fp32 input (no activation switches at this scale)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 4)).eval()
    x = torch.randn(30, 6)
    res = adjoint_certificate(trace_model(m), x, CFG)
    mh = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 4)).double()
    with torch.no_grad():
        for a, b in zip(mh.parameters(), m.parameters()):
            a.copy_(torch.from_numpy(np.asarray(round_to(b.double().numpy(), "fp16"), dtype=np.float64)))
        xh = torch.from_numpy(np.asarray(round_to(x.double().numpy(), "fp16"), dtype=np.float64))
        h32 = m[0].double()(x.double())
        hh = mh[0](xh)
        same = ((h32 > 0) == (hh > 0)).all(1).numpy()
        ref = (mh(xh) - m.double()(x.double())).numpy()
    assert same.sum() > 20
    # the decomposition is around the fp32 run, whose hidden values are binary32: they differ from
    # the float64 run's by 2**-24 |h|, which moves mu by about |W^ - W| 2**-24 |h| < 1e-9
    np.testing.assert_allclose(res.mu[same], ref[same], rtol=0, atol=1e-9)
    assert np.abs(ref).max() > 1e-5


def test_sigma_matches_explicit_jacobian() -> None:
    """sigma_i^2 = sum_s g_is^2 ulp(y_s)^2 / 12 with g from explicit float64 matrices."""
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    x = torch.randn(9, 5)
    res = adjoint_certificate(trace_model(m), x, CFG)
    W2 = torch.from_numpy(np.asarray(round_to(m[2].weight.detach().double().numpy(), "fp16"), dtype=np.float64))
    with torch.no_grad():
        h = m[0](x)
        y = m(x)

    def v(t: torch.Tensor) -> torch.Tensor:
        a = t.double().abs()
        e = torch.clamp(torch.floor(torch.log2(torch.where(a > 0, a, torch.full_like(a, 2.0**-14)))), min=-14)
        return torch.exp2(e - 10) ** 2 / 12

    D = (h > 0).double()
    var = (W2[None, :, :] * D[:, None, :]) ** 2 @ v(h)[:, :, None]  # (N, 3, 1)
    var = var[:, :, 0] + v(y)
    np.testing.assert_allclose(res.sigma, var.sqrt().numpy(), rtol=1e-12)


def test_near_ties_not_certified_and_sound() -> None:
    """Two logits equal in fp32 up to a few fp16 ulps: never certified, bounds hold."""
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        m[2].weight[1] = m[2].weight[0] + 1e-4 * torch.randn(8)
        m[2].bias[1] = m[2].bias[0]
        m[2].bias[2] = -50.0
    x = torch.randn(40, 6)
    res, obs = _check(m, x)
    z = obs["float32"]
    tiny = np.abs(z[:, 0] - z[:, 1]) < 1e-3
    assert tiny.sum() > 10
    assert not res.certified[tiny].any()


def test_large_weights_overflow_not_certified() -> None:
    torch.manual_seed(6)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        m[0].weight.mul_(3000.0)
        m[2].weight.mul_(3000.0)
    x = torch.randn(10, 4)
    res = adjoint_certificate(trace_model(m), x, CFG)
    obs = _observed(m, x)
    overflowed = ~np.isfinite(obs["emulator"]).all(1)
    assert overflowed.any()
    assert not res.certified[overflowed].any()
    assert np.isinf(res.bound[overflowed]).all()


def test_subnormal_network_bounds_hold() -> None:
    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        m[0].weight.mul_(1e-3)
        m[0].bias.mul_(1e-3)
        m[2].weight.mul_(1e-2)
        m[2].bias.mul_(1e-5)
    x = torch.randn(30, 6)
    _, obs = _check(m, x)
    assert (np.abs(obs["float32"]) < 2.0**-14).mean() > 0.5  # mostly subnormal logits in fp16


def test_uncovered_layers_reported_not_certified() -> None:
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.LayerNorm(4), nn.GELU(approximate="tanh"), nn.SiLU(),
                      nn.Linear(4, 2)).eval()
    tr = trace_model(m)
    kinds = [s.kind for s in unsupported_steps(tr)]
    assert kinds == ["tanh", "gelu", "silu"]  # layer norm and GELU's erf form are covered
    with pytest.raises(ValueError, match="not certified by the adjoint method"):
        adjoint_certificate(tr, torch.randn(3, 4), CFG)


def test_analyze_uses_adjoint_by_default_and_reports_it() -> None:
    from fpanalysis.analysis import AnalysisReport, analyze

    m = _cnn(1)
    torch.manual_seed(8)
    x = torch.randn(24, 2, 8, 8)
    rep = analyze(m, x, "fp16", progress=False, local=False, reference=False)
    info = rep.certificate
    assert info["method"] == "adjoint"
    old = analyze(m, x, "fp16", progress=False, local=False, reference=False, certificate="interval")
    assert old.certificate["method"] == "interval"
    # the combined certificate certifies at least what the interval one does
    assert rep.tolerance["logits"].certified >= old.tolerance["logits"].certified
    assert info["certified_interval"] == old.tolerance["logits"].certified
    for run in info["runs"].values():
        assert run["bound_violations"] == run["margin_violations"] == run["flips_certified"] == 0
        assert 0.0 < run["calibration"]["q50"] < 10.0
    assert "adjoint:" in rep.summary() and "delta/delta_pred" in rep.summary()
    assert AnalysisReport.from_json(rep.to_json()).certificate["certified_adjoint"] == info["certified_adjoint"]
    assert len(rep.per_input["adjoint"]["limit"]) == 24
    with pytest.raises(ValueError, match="valid certificates are: adjoint, adjoint-exact, adjoint-windowed, interval"):
        analyze(m, x, certificate="lipschitz", progress=False)
    exact = analyze(m, x, "fp16", progress=False, local=False, reference=False, certificate="adjoint-exact")
    assert exact.certificate["method"] == "adjoint" and exact.certificate["radii"] == "exact"
    assert info["radii"] == "interval"
    assert exact.certificate["certified_adjoint"] >= info["certified_adjoint"]
    for run in exact.certificate["runs"].values():
        assert run["bound_violations"] == run["margin_violations"] == run["flips_certified"] == 0


def test_analyze_smooth_model_says_interval_is_used() -> None:
    from fpanalysis.analysis import analyze

    torch.manual_seed(9)
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    rep = analyze(m, torch.randn(10, 4), progress=False, local=False, reference=False)
    assert rep.certificate["method"] == "interval"
    assert "not certified by the adjoint method" in rep.certificate["note"]
    assert "not examined" in rep.summary()


# ---------------------------------------------------------------- tier-B (exact-row) radii


def _deep_mlp(seed: int = 0, depth: int = 6, width: int = 24) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(10, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 5))
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("model", ["cnn", "res", "mlp"])
def test_exact_radii_hold_per_neuron_and_tighten(model: str) -> None:
    """Tier B: |emulated - fp32| <= R_exact at every step (emulator and torch half), and the exact
    radii are never above tier A and, on the deep MLP, strictly below it somewhere (one residual
    block or two layers leave tier A nearly exact already)."""
    m = {"cnn": lambda: _cnn(1), "res": lambda: _Res().eval(), "mlp": _deep_mlp}[model]()
    torch.manual_seed(7)
    x = {"cnn": lambda: torch.randn(6, 2, 8, 8), "res": lambda: torch.randn(6, 3, 6, 6),
         "mlp": lambda: torch.randn(6, 10)}[model]()
    tr = trace_model(m)
    ra = adjoint_radii(tr, x, CFG)
    rb = adjoint_radii(tr, x, CFG, radii="exact", row_chunk=5)
    out = run_model(tr, x, "fp16", backends=("float32", "emulator", "half"))
    tighter = 0
    for name, R in rb.items():
        assert bool((R <= ra[name]).all()), name
        tighter += int((R < ra[name]).sum())
        for be in ("emulator", "half"):
            d = (out[be][name].double() - out["float32"][name].double()).abs()
            assert bool((d <= R).all()), (name, be, float((d - R).max()))
    if model == "mlp":
        assert tighter > 0


def test_exact_rows_match_explicit_jacobian() -> None:
    """The tier-B radius at a ReLU input equals |mu| + sum_s |J_{t<-s}| w_s with J built explicitly
    from the rounded weight matrices and the fp32 activation pattern (float64 matrix products)."""
    from fpanalysis.analysis.adjoint import _exact_rows, _forward_sweep
    from fpanalysis.nn.execute import ParamCache

    m = _deep_mlp(3, depth=4, width=12)
    torch.manual_seed(2)
    x = torch.randn(3, 10)
    tr = trace_model(m)
    cache = ParamCache()
    R, sizes, _ = _forward_sweep(tr, x, CFG, cache)
    lin = [s for s in tr.steps if s.kind == "linear"]
    relu = [s for s in tr.steps if s.kind == "relu"]
    t = lin[2]  # input of the third ReLU
    got = _exact_rows(tr, R, t.name, sizes, cache, 4)
    Wh = [torch.from_numpy(np.asarray(round_to(s.attrs["weight"].detach().double().numpy(), "fp16"),
                                      dtype=np.float64)) for s in lin]
    for b in range(3):
        D = [torch.diag((R[s.inputs[0]].z[b].double() > 0).double()) for s in relu]
        # J_{t<-s} for s = lin2 (identity), relu1 (W2), lin1 (W2 D1), relu0 (W2 D1 W1), lin0 (W2 D1 W1 D0)
        J = torch.eye(12, dtype=torch.float64)
        want = R[t.name].mu[b].abs() + R[t.name].w[b]
        chain = [(relu[1], Wh[2]), (lin[1], D[1]), (relu[0], Wh[1]), (lin[0], D[0])]
        for s, M in chain:
            J = J @ M
            want = want + J.abs() @ R[s.name].w[b]
        # equal up to the float64 allowance (2**-30 of the magnitudes, padding): above, never below
        assert bool((got[b] >= want).all()) and bool((got[b] <= want * (1 + 1e-7)).all()), (b, got[b] - want)


def test_exact_certificate_sound_and_not_weaker() -> None:
    m = _deep_mlp(4, depth=7, width=20)
    torch.manual_seed(9)
    x = torch.randn(24, 10)
    tr = trace_model(m)
    a = adjoint_certificate(tr, x, CFG)
    b = adjoint_certificate(tr, x, CFG, radii="exact", row_chunk=7)
    obs = _observed(m, x)
    z = obs["float32"]
    for name in ("emulator", "half"):
        d = np.abs(obs[name] - z)
        assert (d <= b.bound).all(), name
        assert not ((obs[name].argmax(1) != z.argmax(1)) & b.certified).any()
    assert (b.bound <= a.bound).all() and int(b.certified.sum()) >= int(a.certified.sum())


def test_bad_radii_refused() -> None:
    with pytest.raises(ValueError, match="valid choices are: interval, exact"):
        adjoint_certificate(trace_model(_deep_mlp()), torch.randn(2, 10), CFG, radii="tier-b")


def test_float64_allowance_is_the_networks_gamma() -> None:
    """The float64 allowance is gamma_N(u64) of the network (far below the 2**-30 cap): a fixed
    2**-30 times the absolute-value magnitudes, which grow like the interval bound, swamped the
    logit margins of ResNet-20."""
    res = adjoint_certificate(trace_model(_cnn(0)), torch.randn(4, 2, 8, 8), CFG)
    g = res.stats["gamma64"]
    assert 0 < g < 2.0**-36

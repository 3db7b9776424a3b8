"""The adjoint certificate on smooth steps (GELU, layer norm, softmax, products of activations, constants).

Oracles: brute force in float64 over random points and corners of the box for every second-order
remainder bound; torch autograd (float64, rounded parameters) for the linearisations and their
transposes; the emulator and torch's CPU float16 kernels for the observed errors of small random
networks with attention.  0 violations anywhere.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fpanalysis.analysis.adjoint import (
    _backward,
    _forward_sweep,
    adjoint_certificate,
    adjoint_radii,
    gelu_remainder,
    gelu_second_sup,
    layernorm_remainder,
    softmax_remainder,
    unsupported_steps,
)
from fpanalysis.analysis.network_bounds import BoundConfig
from fpanalysis.nn.execute import ParamCache, run_model
from fpanalysis.nn.models import build_model
from fpanalysis.nn.trace import trace_model
from fpanalysis.rounding import round_to

CFG = BoundConfig.make("fp16", "fp32-accumulate")


def _box_points(R: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` perturbations with |d| <= R: uniform inside, and corners (every entry at +-R)."""
    u = torch.rand((n,) + tuple(R.shape), generator=gen, dtype=torch.float64) * 2 - 1
    corners = torch.randint(0, 2, (n,) + tuple(R.shape), generator=gen).double() * 2 - 1
    return torch.cat([u * R, corners * R], 0)


# ---------------------------------------------------------------- remainder bounds by brute force


def _gelu(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * t * torch.erfc(-t / math.sqrt(2.0))


def test_gelu_second_derivative_sup_by_grid() -> None:
    """sup |GELU''| over intervals against a dense grid of GELU'' from autograd (float64)."""
    rng = np.random.default_rng(0)
    lo = rng.uniform(-5, 4, 200)
    hi = lo + rng.uniform(0, 3, 200)
    sup = gelu_second_sup(lo, hi)
    for a, b, s in zip(lo, hi, sup):
        t = torch.linspace(a, b, 2001, dtype=torch.float64, requires_grad=True)
        (g1,) = torch.autograd.grad(_gelu(t).sum(), t, create_graph=True)
        (g2,) = torch.autograd.grad(g1.sum(), t)
        assert float(g2.abs().max()) <= s
        assert s <= float(g2.abs().max()) * 1.01 + 1e-6  # and not loose (the grid is fine)
    assert float(gelu_second_sup(np.array(-50.0), np.array(50.0))) <= 2 / math.sqrt(2 * math.pi) * 1.0001


@pytest.mark.parametrize("scale", [1e-3, 0.1, 1.0, 4.0])
def test_gelu_remainder_brute_force(scale: float) -> None:
    """gelu_remainder against |GELU(x + d) - GELU(x) - GELU'(x) d| on a fine grid of each box, and
    never above the Lagrange bound sup |GELU''| R^2 / 2."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, generator=gen, dtype=torch.float64) * 2
    R = torch.rand(64, generator=gen, dtype=torch.float64) * scale
    bound = torch.from_numpy(gelu_remainder(x.numpy(), R.numpy()))
    lagrange = 0.5 * torch.from_numpy(gelu_second_sup((x - R).numpy(), (x + R).numpy())) * R * R
    assert bool((bound <= lagrange * (1 + 1e-8)).all())
    xr = x.clone().requires_grad_(True)
    (J,) = torch.autograd.grad(_gelu(xr).sum(), xr)
    d = torch.linspace(-1, 1, 4001, dtype=torch.float64)[:, None] * R
    rem = (_gelu(x + d) - _gelu(x) - J * d).abs()
    assert bool((rem <= bound + 1e-15).all()), float((rem - bound).max())
    assert float((rem.max(0).values / bound).median()) > 0.3  # and not loose


def _softmax_rem(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    y = torch.softmax(x, -1)
    Jd = y * (d - (y * d).sum(-1, keepdim=True))
    return (torch.softmax(x + d, -1) - y - Jd).abs()


@pytest.mark.parametrize("scale", [1e-3, 0.05, 0.5, 3.0])
def test_softmax_remainder_brute_force(scale: float) -> None:
    gen = torch.Generator().manual_seed(2)
    for spread in (0.5, 4.0, 20.0):  # flat to peaked rows
        x = torch.randn(6, 9, generator=gen, dtype=torch.float64) * spread
        R = torch.rand(6, 9, generator=gen, dtype=torch.float64) * scale
        bound = softmax_remainder(torch.softmax(x, -1), R)
        d = _box_points(R, 300, gen)
        # the worst directions of the derivation: d_i = +-R_i, the rest against it
        for i in range(9):
            s = torch.ones(9, dtype=torch.float64)
            s[i] = -1
            d = torch.cat([d, (s * R)[None], (-s * R)[None]], 0)
        rem = _softmax_rem(x, d)
        assert bool((rem <= bound + 1e-15).all()), float((rem - bound).max())


def _ln(x: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    c = x - x.mean(-1, keepdim=True)
    return g * c / torch.sqrt((c * c).mean(-1, keepdim=True) + eps)


def _ln_jvp(x: torch.Tensor, g: torch.Tensor, eps: float, d: torch.Tensor) -> torch.Tensor:
    _, jd = torch.autograd.functional.jvp(lambda t: _ln(t, g, eps), x.expand_as(d).contiguous(), d)
    return jd


def _ln_bound(x: torch.Tensor, R: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    c = x - x.mean(-1, keepdim=True)
    sd = torch.sqrt((c * c).mean(-1, keepdim=True))
    return layernorm_remainder(c.abs(), R, g, eps, sd)


@pytest.mark.parametrize("scale", [1e-3, 0.05, 0.3])
def test_layernorm_remainder_brute_force(scale: float) -> None:
    gen = torch.Generator().manual_seed(3)
    n = 12
    for sd in (0.2, 1.0, 5.0):
        x = torch.randn(4, n, generator=gen, dtype=torch.float64) * sd + 3.0
        g = torch.randn(n, generator=gen, dtype=torch.float64)
        R = torch.rand(4, n, generator=gen, dtype=torch.float64) * scale
        for eps in (1e-5, 0.0):
            bound = _ln_bound(x, R, g, eps)
            d = _box_points(R, 300, gen)
            rem = (_ln(x + d, g, eps) - _ln(x, g, eps) - _ln_jvp(x, g, eps, d)).abs()
            assert bool((rem <= bound + 1e-13).all()), (sd, eps, float((rem - bound).max()))


@pytest.mark.parametrize("scale", [0.05, 0.3, 1.0])
def test_layernorm_remainder_with_functional_bound(scale: float) -> None:
    """Tier B passes phi >= |c^ . d| / n (c^ = centred x~ over sqrt(var + eps)): the bound must hold for
    every d in the box that satisfies it; brute force over box points filtered by that constraint."""
    gen = torch.Generator().manual_seed(6)
    n = 16
    for sd in (0.3, 1.0):
        x = torch.randn(3, n, generator=gen, dtype=torch.float64) * sd
        g = torch.randn(n, generator=gen, dtype=torch.float64)
        R = torch.rand(3, n, generator=gen, dtype=torch.float64) * scale * sd
        eps = 1e-5
        c = x - x.mean(-1, keepdim=True)
        var = (c * c).mean(-1, keepdim=True)
        sig = torch.sqrt(var + eps)
        ch = c / sig
        worst = (ch.abs() * R).mean(-1, keepdim=True)
        for frac in (0.15, 0.4):
            phi = worst * frac
            bound = layernorm_remainder(c.abs(), R, g, eps, torch.sqrt(var), phi, sig * (1 + 1e-12))
            assert bool((bound <= _ln_bound(x, R, g, eps) * (1 + 1e-9)).all())  # never above tier A's
            d = _box_points(R, 4000, gen)
            keep = ((ch * d).mean(-1, keepdim=True).abs() <= phi).all(-1).all(-1)
            d = d[keep]
            assert d.shape[0] >= 20
            rem = (_ln(x + d, g, eps) - _ln(x, g, eps) - _ln_jvp(x, g, eps, d)).abs()
            assert bool((rem <= bound + 1e-13).all()), (sd, frac, float((rem - bound).max()))


def test_layernorm_box_reaching_zero_variance() -> None:
    """A row whose box contains a constant row: without eps the bound is infinite (not a wrong
    finite number); with eps it is finite and still holds at points next to the constant row."""
    gen = torch.Generator().manual_seed(4)
    n = 8
    x = torch.linspace(-1e-3, 1e-3, n, dtype=torch.float64)[None] + 2.0
    g = torch.ones(n, dtype=torch.float64)
    R = torch.full((1, n), 2e-3, dtype=torch.float64)  # x - mean + d can be 0
    assert bool(torch.isinf(_ln_bound(x, R, g, 0.0)).all())
    eps = 1e-5
    bound = _ln_bound(x, R, g, eps)
    assert bool(torch.isfinite(bound).all())
    flat = -(x - x.mean())  # the perturbation that makes the row constant
    d = torch.cat([_box_points(R, 300, gen), flat[None] * torch.linspace(0.5, 1.0, 50, dtype=torch.float64)[:, None, None]], 0)
    rem = (_ln(x + d, g, eps) - _ln(x, g, eps) - _ln_jvp(x, g, eps, d)).abs()
    assert bool((rem <= bound + 1e-12).all())


# ---------------------------------------------------------------- linearisations against autograd


class _Attn(nn.Module):
    """Single-head attention with a position embedding, layer norms and a GELU MLP (all smooth kinds)."""

    def __init__(self, seed: int, dim: int = 8, tokens: int = 5, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.3)
        self.n1 = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.n2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)
        with torch.no_grad():
            for ln in (self.n1, self.n2):
                ln.weight.uniform_(0.5, 1.5)
                ln.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, tokens, 4)
        h = self.inp(x) + self.pos
        a = self.n1(h)
        s = torch.matmul(self.q(a), self.k(a).transpose(-2, -1)) * 0.35
        h = h + torch.matmul(torch.softmax(s, dim=-1), self.v(a))
        h = h + self.mlp(self.n2(h))
        return self.head(h.mean(dim=1))


def test_smooth_kinds_are_supported() -> None:
    tr = trace_model(_Attn(0).eval())
    kinds = {s.kind for s in tr.steps}
    assert {"param", "layernorm", "matmul", "softmax", "gelu"} <= kinds
    assert unsupported_steps(tr) == []
    tanh = trace_model(nn.Sequential(nn.Linear(3, 3), nn.GELU(approximate="tanh"), nn.Tanh()).eval())
    assert [s.kind for s in unsupported_steps(tanh)] == ["gelu", "tanh"]


def _rounded64(step, key: str) -> torch.Tensor | None:
    v = step.attrs.get(key)
    if v is None:
        return None
    return torch.from_numpy(np.asarray(round_to(v.detach().double().numpy(), "fp16", "nearest-even")))


def test_linearisations_match_autograd() -> None:
    """Per smooth step: the forward map (mu minus the known part) is the float64 JVP of the step with
    the rounded parameters at the fp32 value, and the backward map is its VJP (torch autograd)."""
    m = _Attn(1).eval()
    tr = trace_model(m)
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4)
    cache = ParamCache()
    R, sizes, _ = _forward_sweep(tr, x, CFG, cache)
    gen = torch.Generator().manual_seed(5)
    seen = set()
    for s in tr.steps:
        if s.kind not in ("layernorm", "softmax", "gelu", "matmul"):
            continue
        ins = [R[n] for n in s.inputs]
        zs = [i.z.double() for i in ins]
        if s.kind == "layernorm":
            w, b = _rounded64(s, "weight"), _rounded64(s, "bias")

            def f(t, s=s, w=w, b=b):
                return F.layer_norm(t, s.attrs["normalized_shape"], w, b, s.attrs["eps"])
        elif s.kind == "softmax":
            def f(t, s=s):
                return torch.softmax(t, s.attrs["dim"])
        elif s.kind == "gelu":
            def f(t):
                return F.gelu(t)
        else:
            def f(a, b):
                return torch.matmul(a, b)
        tangents = tuple(torch.randn(z.shape, generator=gen, dtype=torch.float64) for z in zs)
        _, jvp = torch.autograd.functional.jvp(f, tuple(zs), tangents)
        # forward: the step's mu with the inputs' mu replaced by the tangents, minus its known part
        saved = [(i.mu, i.Ak, i.Aw) for i in ins]
        out = {}
        for mode in ("t", "0"):
            for i, t in zip(ins, tangents):
                i.mu = t if mode == "t" else torch.zeros_like(t)
            from fpanalysis.analysis.adjoint import _forward, _Rec

            r = _Rec()
            r.z, r.gam = R[s.name].z, R[s.name].gam
            _forward(s, ins, r, CFG, cache, sizes)
            out[mode] = r.mu
        for i, (mu, ak, aw) in zip(ins, saved):
            i.mu, i.Ak, i.Aw = mu, ak, aw
        assert torch.allclose(out["t"] - out["0"], jvp, rtol=1e-9, atol=1e-12), s.name
        # backward: the transpose
        K = 2
        g = torch.randn((K,) + tuple(R[s.name].z.shape), generator=gen, dtype=torch.float64)
        back: dict = {}
        for name, gi in _backward(s, g, R[s.name], ins, K, int(x.shape[0]), cache, sizes):
            back[name] = back.get(name, 0) + gi
        for kk in range(K):
            _, grads = torch.autograd.functional.vjp(f, tuple(zs), g[kk])
            for name, gr in zip(s.inputs, grads):
                assert torch.allclose(back[name][kk], gr, rtol=1e-9, atol=1e-12), (s.name, name)
        seen.add(s.kind)
    assert seen == {"layernorm", "softmax", "gelu", "matmul"}


# ---------------------------------------------------------------- soundness on small networks


def _observed(tr, x: torch.Tensor) -> dict[str, dict]:
    return run_model(tr, x, "fp16", backends=("float32", "emulator", "half"))


def _check(m: nn.Module, x: torch.Tensor, radii: str = "interval") -> tuple:
    tr = trace_model(m)
    res = adjoint_certificate(tr, x, CFG, batch_size=5, radii=radii, row_chunk=64)
    obs = _observed(tr, x)
    z = obs["float32"]["output"].double().numpy()
    c = z.argmax(1)
    ar = np.arange(len(c))
    for be in ("emulator", "half"):
        o = obs[be]["output"].double().numpy()
        d = o - z
        assert (np.abs(d) <= res.bound).all(), be
        dm = np.abs(d[ar, c][:, None] - d)
        assert (dm <= res.margin_bound).all(), be
        assert not ((o.argmax(1) != c) & res.certified).any(), be
    return res, obs, tr


def _ln_gelu_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 16), nn.GELU(),
                      nn.LayerNorm(16), nn.Linear(16, 4), nn.Softmax(dim=-1))
    return m.eval()


@pytest.mark.parametrize("seed", [0, 1])
def test_layernorm_gelu_softmax_network_sound_and_certifies(seed: int) -> None:
    torch.manual_seed(20 + seed)
    x = torch.randn(16, 6)
    res, _, _ = _check(_ln_gelu_mlp(seed), x)
    assert res.certified.mean() > 0.5  # smooth but shallow: most inputs certify
    assert (res.limit <= res.bound.max(1)).all()
    assert (res.switching > 0).all()  # the remainders are counted


@pytest.mark.parametrize("radii", ["interval", "exact", "windowed"])
def test_attention_network_sound(radii: str) -> None:
    torch.manual_seed(30)
    x = torch.randn(10, 5, 4)
    res, obs, tr = _check(_Attn(2).eval(), x, radii)
    assert np.isfinite(res.bound).all()
    assert res.certified.sum() > 0
    # per neuron: |emulated - fp32| <= R at every step
    rad = adjoint_radii(tr, x, CFG, radii=radii, row_chunk=64)
    checked = 0
    for name, R in rad.items():
        for be in ("emulator", "half"):
            d = (obs[be][name].double() - obs["float32"][name].double()).abs()
            assert bool((d <= R).all()), (name, be, float((d - R).max()))
            checked += 1
    assert checked >= 40


def test_exact_radii_not_above_interval_on_attention() -> None:
    m = _Attn(3).eval()
    tr = trace_model(m)
    torch.manual_seed(31)
    x = torch.randn(4, 5, 4)
    ra = adjoint_radii(tr, x, CFG)
    rb = adjoint_radii(tr, x, CFG, radii="exact", row_chunk=64)
    for name, R in rb.items():
        assert bool((R <= ra[name]).all()), name
    a = adjoint_certificate(tr, x, CFG)
    b = adjoint_certificate(tr, x, CFG, radii="exact", row_chunk=64)
    assert (b.certified >= a.certified).all()


def test_tiny_vit_sound() -> None:
    """The project's ViT (conv patches, position parameter, written-out attention) at a small size."""
    torch.manual_seed(40)
    m = build_model("vit_tiny", input_shape=(1, 8, 8), num_classes=3, width=16, depth=1, heads=2, patch=4).eval()
    x = torch.rand(6, 1, 8, 8)
    _, obs, tr = _check(m, x)
    # untrained, its layer norms amplify a lot: the logit bounds may be infinite; the radii of the
    # steps before must hold and be finite
    rad = adjoint_radii(tr, x, CFG, radii="exact", row_chunk=64)
    finite = 0
    for name, R in rad.items():
        for be in ("emulator", "half"):
            d = (obs[be][name].double() - obs["float32"][name].double()).abs()
            assert bool((d <= R).all()), (name, be)
        finite += bool(torch.isfinite(R).all())
    assert finite >= 15


def test_exact_tie_not_certified_and_sound() -> None:
    """Two identical head rows: classes 2 and 3 tie exactly in fp32, so an input of either class
    must not be certified (margin 0); class 0's bias is raised so that it wins on about half."""
    m = _ln_gelu_mlp(0)
    torch.manual_seed(50)
    x = torch.randn(40, 6)
    with torch.no_grad():
        m[6].weight[2] = m[6].weight[3]
        m[6].bias[2] = m[6].bias[3]
        h = m[:7](x)
        m[6].bias[0] += float(torch.median(h.max(1).values - h[:, 0]))
    res, obs, _ = _check(m, x)
    top = obs["float32"]["output"].argmax(1).numpy()
    tie = top >= 2
    assert tie.any() and (~tie).any()
    assert not res.certified[tie].any()
    assert res.certified[~tie].any()


class _Vec(nn.Module):
    """A matmul with a 1-D operand (a constant vector): not covered by the adjoint method."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(60)
        self.lin = nn.Linear(4, 6)
        self.vec = nn.Parameter(torch.randn(6, 3))
        self.v1 = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.matmul(self.lin(x), self.vec)  # (B, 3)
        return h + torch.matmul(h, self.v1).unsqueeze(1)  # (B, 3) @ (3,): a 1-D operand


def test_one_dimensional_matmul_is_refused_clearly() -> None:
    """Found only once shapes are known: NotCovered (a ValueError), which analyze turns into the
    interval certificate with a note (the interval bounds of a 1-D matmul are not there either)."""
    from fpanalysis.analysis.adjoint import NotCovered

    m = _Vec().eval()
    x = torch.randn(5, 4)
    tr = trace_model(m)
    assert unsupported_steps(tr) == []  # shapes are needed to see it
    with pytest.raises(NotCovered, match="2 or more axes"):
        adjoint_certificate(tr, x, CFG)

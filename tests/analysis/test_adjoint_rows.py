"""Tier-B rows shared between neurons whose receptive fields never overlap (fpanalysis.analysis.rows).

Oracle: the same radii with one backward pass per neuron (the colouring switched off), and the
explicit supports of single rows.  A colouring that is too dense must show up here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fpanalysis.analysis.adjoint as AD
from fpanalysis.analysis import rows
from fpanalysis.analysis.network_bounds import BoundConfig
from fpanalysis.nn.execute import ParamCache, run_model
from fpanalysis.nn.trace import trace_model

CFG = BoundConfig.make("fp16")


class _Block(nn.Module):
    def __init__(self, c: int, stride: int = 1):
        super().__init__()
        cin = c if stride == 1 else c // 2
        self.c1, self.b1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.sc = nn.Identity() if stride == 1 else nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False),
                                                                  nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.sc(x))


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), _Block(4),
                      nn.MaxPool2d(2), _Block(8, 2), nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),
                      nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 5))
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    return m.eval()


def _plain(monkeypatch: pytest.MonkeyPatch, tr, x) -> dict:
    with monkeypatch.context() as mp:
        mp.setattr(AD, "_colored_rows", lambda *a, **k: None)
        return AD.adjoint_radii(tr, x, CFG, radii="exact", row_chunk=64)


@pytest.mark.parametrize("seed", [0, 1])
def test_colored_rows_equal_one_pass_per_neuron(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _net(seed)
    torch.manual_seed(10 + seed)
    x = torch.randn(3, 2, 16, 16)
    tr = trace_model(m)
    used = []
    orig = AD._colored_rows

    def spy(*a, **k):
        out = orig(*a, **k)
        used.append(out is not None)
        return out

    monkeypatch.setattr(AD, "_colored_rows", spy)
    col = AD.adjoint_radii(tr, x, CFG, radii="exact", row_chunk=64)
    monkeypatch.setattr(AD, "_colored_rows", orig)
    ref = _plain(monkeypatch, tr, x)
    assert sum(used) >= 4  # the convolutional ReLU inputs were coloured
    for name, r in ref.items():
        assert torch.equal(torch.isfinite(col[name]), torch.isfinite(r)), name
        fin = torch.isfinite(r)
        assert torch.allclose(col[name][fin], r[fin], rtol=1e-12, atol=0), name
    # and the radii hold against the emulator and torch's half kernels
    out = run_model(tr, x, "fp16", backends=("float32", "emulator", "half"))
    for name, r in col.items():
        for be in ("emulator", "half"):
            d = (out[be][name].double() - out["float32"][name].double()).abs()
            assert bool((d <= r).all()), (name, be)


def test_too_dense_colouring_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds one position apart share passes: the comparison above must see it (the test can fail)."""
    m = _net(0)
    torch.manual_seed(10)
    x = torch.randn(2, 2, 16, 16)
    tr = trace_model(m)
    ref = _plain(monkeypatch, tr, x)
    monkeypatch.setattr(rows, "periods", lambda bx, size: (2, 2))
    try:
        col = AD.adjoint_radii(tr, x, CFG, radii="exact", row_chunk=64)
    except RuntimeError:
        return  # an entry fell outside every box: caught as well
    assert any(not torch.allclose(col[n], ref[n], rtol=1e-9) for n in ref if torch.isfinite(ref[n]).all())


def test_boxes_hold_the_support_of_single_rows() -> None:
    """Each row, computed alone, is zero outside its box at every step of the prefix."""
    m = _net(2)
    torch.manual_seed(4)
    x = torch.randn(1, 2, 16, 16)
    tr = trace_model(m)
    cache = ParamCache()
    R, sizes, _ = AD._forward_sweep(tr, x, CFG, cache)
    shapes = {n: tuple(r.z.shape) for n, r in R.items() if r.z is not None}
    targets = [s.inputs[0] for s in tr.steps if s.kind == "relu"]
    checked = 0
    for t in targets:
        bx = rows.boxes(tr, t, shapes)
        assert bx is not None
        C, H, W = shapes[t][1:]
        prefix = tr.steps[:[s.name for s in tr.steps].index(t) + 1]
        for (h, w) in [(0, 0), (H // 2, W // 3), (H - 1, W - 1)]:
            seed = torch.zeros((1, 1, C, H, W), dtype=torch.float64)
            seed[0, 0, C - 1, h, w] = 1.0
            grads = {t: seed}
            for s in reversed(prefix):
                if s.kind == "size" or s.name not in grads:
                    continue
                g = grads.pop(s.name)
                b = bx[s.name]
                nz = g[0, 0].abs().sum(0).nonzero()
                if nz.numel():
                    assert int(nz[:, 0].min()) >= b.h[0] * h + b.h[1] and int(nz[:, 0].max()) <= b.h[0] * h + b.h[2]
                    assert int(nz[:, 1].min()) >= b.w[0] * w + b.w[1] and int(nz[:, 1].max()) <= b.w[0] * w + b.w[2]
                    checked += 1
                if s.kind == "input":
                    continue
                for name, gi in AD._backward(s, g, R[s.name], [R[n] for n in s.inputs if n in R], 1, 1, cache, sizes):
                    grads[name] = grads[name] + gi if name in grads else gi
    assert checked > 30


def test_no_colouring_through_dense_layers() -> None:
    """A prefix with a linear layer or a reshape has no boxes: one pass per neuron, as before."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 2 * 6 * 6),
                      nn.Unflatten(1, (2, 6, 6)), nn.Conv2d(2, 2, 3), nn.ReLU()).eval()
    tr = trace_model(m)
    x = torch.randn(1, 1, 8, 8)
    R, _, _ = AD._forward_sweep(tr, x, CFG, ParamCache())
    shapes = {n: tuple(r.z.shape) for n, r in R.items() if r.z is not None}
    relus = [s.inputs[0] for s in tr.steps if s.kind == "relu"]
    assert rows.boxes(tr, relus[0], shapes) is not None
    assert rows.boxes(tr, relus[1], shapes) is None


def test_windowed_radii_sound_and_not_below_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windowed tier B: rows stopped at the last change of resolution.  Never below the exact
    radii (it bounds the same error with one more triangle inequality), never below the error
    of the emulator or torch's half kernels, and the windows are really used (some radius looser)."""
    m = _net(3)
    torch.manual_seed(5)
    x = torch.randn(3, 2, 16, 16)
    tr = trace_model(m)
    cuts = []
    orig = AD._window_cut

    def spy(upto, dom, R):
        c = orig(upto, dom, R)
        cuts.append(c)
        if c is not None:  # a cut is passed by every path: it dominates, and has a larger resolution
            assert c in dom[upto] and R[c].z.shape[2:].numel() > R[upto].z.shape[2:].numel()
        return c

    monkeypatch.setattr(AD, "_window_cut", spy)
    rw = AD.adjoint_radii(tr, x, CFG, radii="windowed", row_chunk=64)
    re = AD.adjoint_radii(tr, x, CFG, radii="exact", row_chunk=64)
    assert any(c is not None for c in cuts) and any(c is None for c in cuts)
    out = run_model(tr, x, "fp16", backends=("float32", "emulator", "half"))
    looser = 0
    for name, r in re.items():
        assert bool((rw[name] >= r * (1 - 1e-12)).all()), name
        looser += int((rw[name] > r * (1 + 1e-9)).sum())
        for be in ("emulator", "half"):
            d = (out[be][name].double() - out["float32"][name].double()).abs()
            assert bool((d <= rw[name]).all()), (name, be)
    assert looser > 0


def test_windowed_certificate_sound() -> None:
    m = _net(4)
    torch.manual_seed(6)
    x = torch.randn(8, 2, 16, 16)
    tr = trace_model(m)
    res = AD.adjoint_certificate(tr, x, CFG, radii="windowed", row_chunk=64)
    ex = AD.adjoint_certificate(tr, x, CFG, radii="exact", row_chunk=64)
    out = run_model(tr, x, "fp16", backends=("float32", "emulator", "half"))
    z = out["float32"][tr.output].double().numpy()
    for be in ("emulator", "half"):
        o = out[be][tr.output].double().numpy()
        assert (abs(o - z) <= res.bound).all(), be
        assert not ((o.argmax(1) != z.argmax(1)) & res.certified).any()
    assert (res.bound >= ex.bound * (1 - 1e-12)).all()


def test_relu_chord_relaxation_brute_force() -> None:
    """relu(z + d) - relu(z) = a d + c + eps with |eps| <= the slack, for every |d| <= R (a fine
    grid including the ends and the kink), and the slack is attained (so 0.9 x it would fail)."""
    torch.manual_seed(0)
    n = 400
    z = torch.randn(1, n, dtype=torch.float64)
    R = torch.rand(1, n, dtype=torch.float64) * 2.0
    R[0, :5] = torch.tensor([0.0, 1.0, 1.0, float("inf"), 0.5], dtype=torch.float64)
    z[0, :5] = torch.tensor([0.3, 0.0, -1.0, 0.1, 0.5], dtype=torch.float64)
    x = AD._Rec()
    x.z, x.G = z.float(), R
    x.mu = torch.zeros_like(R)
    x.Ak = torch.zeros_like(R)
    x.Aw = torch.zeros_like(R)
    r = AD._Rec()
    r.gam = 0.0
    AD._relu(x, r)
    zz = x.z.double()
    a, c, hw = r.lin, (r.off if r.off is not None else torch.zeros_like(R)), r.w
    t = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)[:, None]
    fin = torch.isfinite(R)[0]
    d = t * R[:, fin]
    kink = (-zz[:, fin]).clamp(-R[:, fin], R[:, fin])
    d = torch.cat([d, kink], 0)
    zf, af, cf, hf = zz[:, fin], a[:, fin], c[:, fin], hw[:, fin]
    eps = torch.relu(zf + d) - torch.relu(zf) - af * d - cf
    tol = 4 * 2.0**-53 * (zf.abs() + R[:, fin])  # this test's own float64 evaluation of eps
    assert bool((eps.abs() <= hf + tol).all())
    unstable = (zf.abs() < R[:, fin])[0]
    assert bool(unstable.any()) and bool((~unstable).any())
    worst = eps.abs().max(0).values[unstable]
    assert bool((worst >= 0.9 * hf[0, unstable]).all())  # attained: a smaller slack would be wrong
    assert bool((hf[0, ~unstable] == 0).all())
    assert not bool(torch.isfinite(hw[0, 3]))  # an infinite radius keeps the slack infinite
    # the relu output radius: at most R, and (z + R)_+ where z <= 0
    assert bool((r.G <= R).all()) and float(r.G[0, 2]) == 0.0

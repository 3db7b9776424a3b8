"""Emulated FP8 / MX training (fpanalysis.nn.fp8): the quantised operands of every GEMM, forward
and backward, against independent constructions (ml_dtypes casts, the recipes' quantisers)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from torch import nn

from fpanalysis.nn.fp8 import FP8_RECIPES, fp8_training, gemm_modules, operand_formats
from fpanalysis.recipes import block_scaling, block_scaling_rceil

_ML = {"e4m3": (ml_dtypes.float8_e4m3fn, 448.0), "e5m2": (ml_dtypes.float8_e5m2, 57344.0)}


def _ml_current(x: np.ndarray, fmt: str, scale: float | None = None) -> np.ndarray:
    """Per-tensor FP8 quantise-dequantise written with ml_dtypes' casts (the test oracle):
    scale = fp32(fmax / amax), q = sat(fp8(fp32(x * scale))), values fp32(q * fp32(1 / scale))."""
    dt, fmax = _ML[fmt]
    x = np.asarray(x, dtype=np.float32)
    if scale is None:
        scale = np.float32(np.float32(fmax) / np.float32(np.abs(x).max()))
    s = np.float32(scale)
    xs = np.clip(x * s, -fmax, fmax)  # 448 / 57344 are representable: clip, then round = saturating round
    q = xs.astype(dt).astype(np.float32)
    return q * np.float32(np.float32(1.0) / s)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy()


def _linear(seed: int = 0, din: int = 64, dout: int = 48) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(din, dout)


# ---------------------------------------------------------------------------------------------
# forward: the GEMM sees exactly the recipe's quantised operands
# ---------------------------------------------------------------------------------------------


def test_current_forward_uses_e4m3_operands_bit_for_bit():
    lin = _linear()
    x = torch.randn(6, 64)
    with fp8_training(lin, "current"):
        y = lin(x)
    xq, wq = _ml_current(_np(x), "e4m3"), _ml_current(_np(lin.weight), "e4m3")
    want = F.linear(_t(xq), _t(wq), lin.bias.detach())
    assert torch.equal(y, want)
    # and the unquantised product differs: the test can fail
    assert not torch.equal(y, lin(x))


@pytest.mark.parametrize("recipe,fmt,mx_scale", [
    ("mxfp8", "mxfp8_e4m3", "floor"), ("mxfp8", "mxfp8_e4m3", "rceil"), ("nvfp4", "nvfp4", "rceil"),
    ("mxfp4", "mxfp4_e2m1", "floor"), ("mxfp6", "mxfp6_e2m3", "rceil")])
def test_block_forward_uses_scaled_quantiser_along_reduction_axis(recipe, fmt, mx_scale):
    lin = _linear(1)
    x = torch.randn(5, 64) * torch.logspace(-8, 4, 64)  # blocks spanning more than E4M3's range
    with fp8_training(lin, recipe, mx_scale=mx_scale):
        y = lin(x)
    quant = block_scaling_rceil if mx_scale == "rceil" and recipe != "nvfp4" else block_scaling
    xq = quant(_np(x), fmt, axis=-1).values
    wq = quant(_np(lin.weight), fmt, axis=-1).values
    assert torch.equal(y, F.linear(_t(xq), _t(wq), lin.bias.detach()))
    # blocks along the other axis give another product
    xq0 = quant(_np(x), fmt, axis=0).values
    assert not torch.equal(y, F.linear(_t(xq0), _t(wq), lin.bias.detach()))
    if recipe != "nvfp4":  # and the other scale rule another one
        other = block_scaling if quant is block_scaling_rceil else block_scaling_rceil
        assert not torch.equal(y, F.linear(_t(other(_np(x), fmt, axis=-1).values), _t(wq), lin.bias.detach()))


def test_delayed_scaling_uses_history_of_earlier_calls():
    lin = _linear(2)
    base = torch.randn(4, 64)
    xs = [base * a for a in (1.0, 0.5, 0.75, 200.0)]
    w = _np(lin.weight)
    with fp8_training(lin, "delayed", history_len=2) as fp8:
        ys = [lin(x) for x in xs]
    amax = [float(np.abs(_np(x)).max()) for x in xs]
    wamax = float(np.abs(w).max())
    for t, (x, y) in enumerate(zip(xs, ys)):
        # scale of call t: fmax / max(amax of calls t-2, t-1); scale 1 for the first call
        hist = amax[max(0, t - 2):t]
        sx = np.float32(448.0) / np.float32(max(hist)) if hist else np.float32(1.0)
        sw = np.float32(448.0) / np.float32(wamax) if t else np.float32(1.0)
        want = F.linear(_t(_ml_current(_np(x), "e4m3", sx)), _t(_ml_current(w, "e4m3", sw)), lin.bias.detach())
        assert torch.equal(y, want), t
    st = fp8.stats[""]["activation"]
    assert st["amax"] == pytest.approx(amax, rel=0, abs=0)
    assert fp8.history("", "activation") == pytest.approx(amax[-2:], rel=0, abs=0)
    # the jump to 200x saturates the last call (its scale comes from amaxes 200x smaller), and only it
    assert st["saturating_calls"] == 1 and st["max_saturation"] > 0
    assert st["saturation"] > 0


# ---------------------------------------------------------------------------------------------
# backward: the output gradient is quantised, E5M2 under the hybrid recipe
# ---------------------------------------------------------------------------------------------


def test_current_backward_quantises_gradient_in_e5m2():
    lin = _linear(3)
    x = torch.randn(6, 64, requires_grad=True)
    g = torch.randn(6, 48) * torch.logspace(-4, 2, 48)
    with fp8_training(lin, "current"):
        lin(x).backward(g)
    gq, wq, xq = _ml_current(_np(g), "e5m2"), _ml_current(_np(lin.weight), "e4m3"), _ml_current(_np(x), "e4m3")
    assert torch.equal(x.grad, _t(gq) @ _t(wq))
    assert torch.equal(lin.weight.grad, _t(gq).t() @ _t(xq))
    assert torch.equal(lin.bias.grad, g.sum(0))  # bias gradient from the unquantised gradient
    # E4M3 on the gradient would give another dX
    assert not torch.equal(x.grad, _t(_ml_current(_np(g), "e4m3")) @ _t(wq))


def test_non_hybrid_backward_uses_e4m3():
    lin = _linear(3)
    x = torch.randn(6, 64, requires_grad=True)
    g = torch.randn(6, 48)
    with fp8_training(lin, "current", hybrid=False):
        lin(x).backward(g)
    want = _t(_ml_current(_np(g), "e4m3")) @ _t(_ml_current(_np(lin.weight), "e4m3"))
    assert torch.equal(x.grad, want)


def test_mxfp8_backward_blocks_along_each_gemms_reduction_axis():
    lin = _linear(4)
    x = (torch.randn(40, 64) * torch.logspace(-2, 2, 64)).requires_grad_(True)
    g = torch.randn(40, 48) * torch.logspace(-3, 1, 48)
    with fp8_training(lin, "mxfp8") as fp8:
        lin(x).backward(g)
    G, W, X = _np(g), _np(lin.weight), _np(x)
    q = lambda a, f, ax: _t(block_scaling_rceil(a, f, axis=ax).values)
    assert torch.equal(x.grad, q(G, "mxfp8_e5m2", -1) @ q(W, "mxfp8_e4m3", 0))
    assert torch.equal(lin.weight.grad, q(G, "mxfp8_e5m2", 0).t() @ q(X, "mxfp8_e4m3", 0))
    assert not torch.equal(x.grad, q(G, "mxfp8_e4m3", -1) @ q(W, "mxfp8_e4m3", 0))
    assert fp8.stats[""]["gradient"]["calls"] == 1


def test_conv2d_forward_and_backward():
    torch.manual_seed(5)
    conv = nn.Conv2d(40, 36, 3, padding=1, stride=2)
    x = (torch.randn(2, 40, 7, 7) * torch.logspace(-2, 2, 40)[None, :, None, None]).requires_grad_(True)
    g = torch.randn(2, 36, 4, 4)
    with fp8_training(conv, "mxfp8"):
        y = conv(x)
        y.backward(g)
    X, W, G = _np(x), _np(conv.weight), _np(g)
    q = lambda a, f, ax: _t(block_scaling_rceil(a, f, axis=ax).values)
    assert torch.equal(y, F.conv2d(q(X, "mxfp8_e4m3", 1), q(W, "mxfp8_e4m3", 1), conv.bias.detach(), 2, 1))
    dx = torch.nn.grad.conv2d_input(x.shape, q(W, "mxfp8_e4m3", 0), q(G, "mxfp8_e5m2", 1), 2, 1)
    assert torch.equal(x.grad, dx)
    # dW: blocks along batch x spatial positions
    tok = lambda a: np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)
    gw = block_scaling_rceil(tok(G), "mxfp8_e5m2", axis=-1).values.reshape(36, 2, 4, 4).transpose(1, 0, 2, 3)
    xw = block_scaling_rceil(tok(X), "mxfp8_e4m3", axis=-1).values.reshape(40, 2, 7, 7).transpose(1, 0, 2, 3)
    assert torch.equal(conv.weight.grad, torch.nn.grad.conv2d_weight(_t(xw), conv.weight.shape, _t(gw), 2, 1))
    assert torch.equal(conv.bias.grad, g.sum((0, 2, 3)))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv_same_padding_and_reflect_match_unpatched():
    torch.manual_seed(6)
    for conv in (nn.Conv2d(3, 4, 4, padding="same"), nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")):
        x = torch.randn(1, 3, 6, 6)
        ref = conv(x)
        with fp8_training(conv, "current", hybrid=True):
            y = conv(x)
        assert y.shape == ref.shape
        assert ((y - ref).norm() / ref.norm()).item() < 0.1


# ---------------------------------------------------------------------------------------------
# keep, dtype, restore, refusals
# ---------------------------------------------------------------------------------------------


def test_keep_leaves_module_exact():
    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    ref = nn.Sequential(*[type(l)(*()) if isinstance(l, nn.ReLU) else l for l in m])  # same modules
    x = torch.randn(8, 32)
    h = m[1](m[0](x))
    with fp8_training(m, "delayed", keep=["2"]) as fp8:
        out = m[2](h)
        y = m(x)
    assert torch.equal(out, F.linear(h, m[2].weight, m[2].bias))
    assert sorted(fp8.stats) == ["0"] and fp8.kept_modules == ["2"]
    assert not torch.equal(y, ref(x))  # module 0 is quantised
    with fp8_training(m, "current", keep=[""]) as fp8:  # the root keeps everything
        assert torch.equal(m(x), ref(x))
    assert fp8.modules == []


def test_bf16_model_keeps_its_dtype():
    torch.manual_seed(8)
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)).to(torch.bfloat16)
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    with fp8_training(m, "mxfp8"):
        y = m(x)
        y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and m[0].weight.grad.dtype == torch.bfloat16


def test_forward_restored_after_exception():
    torch.manual_seed(9)
    m = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    own = m[1].forward
    m[1].forward = own  # an instance attribute that must survive
    x = torch.randn(3, 8)
    ref = m(x)
    with pytest.raises(RuntimeError, match="boom"), fp8_training(m, "current") as fp8:
        assert "forward" in m[0].__dict__
        assert not torch.equal(m(x), ref)
        raise RuntimeError("boom")
    assert "forward" not in m[0].__dict__
    assert m[1].__dict__["forward"] is own
    assert torch.equal(m(x), ref) and not fp8.active


def test_bad_arguments_refused():
    m = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="valid recipes are: current, delayed, mxfp8"):
        fp8_training(m, "fp8")
    with pytest.raises(ValueError, match="does not have"):
        fp8_training(m, "delayed", keep=["encoder"])
    with pytest.raises(ValueError, match="history_len"):
        fp8_training(m, "delayed", history_len=0)
    with pytest.raises(ValueError, match="margin"):
        fp8_training(m, "mxfp8", margin=1)
    with pytest.raises(ValueError, match="valid choices are: rceil, floor"):
        fp8_training(m, "mxfp8", mx_scale="up")
    with pytest.raises(ValueError, match="delayed recipe only"):
        fp8_training(m, "current").history("", "activation")
    assert set(FP8_RECIPES) >= {"current", "delayed", "mxfp8", "nvfp4"}
    assert operand_formats("delayed") == {"activation": "e4m3", "weight": "e4m3", "gradient": "e5m2"}


def test_small_cnn_trains_under_delayed_scaling():
    torch.manual_seed(10)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
    x = torch.randn(32, 3, 8, 8)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    assert gemm_modules(m) == ["0", "3"]
    losses = []
    with fp8_training(m, "delayed", measure_error=True) as fp8:
        for _ in range(15):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    s = fp8.stats
    assert set(s) == {"0", "3"}
    for d in s.values():
        assert d["activation"]["calls"] == d["gradient"]["calls"] == 15
        assert len(d["output"]["rel_error"]) == 15
        assert 0 < d["output"]["rel_error"][-1] < 0.1  # E4M3 operands: a few per cent

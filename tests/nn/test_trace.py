"""The torch adapter: tracing into supported steps, executing them, and the emulator vs torch half.

Oracles: the model's own forward (torch fp32), ``nn.MultiheadAttention`` itself, torch's
half kernels, and ``fpanalysis.round_to`` for the rounding of fp32 opmath results.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from torch import nn

from fpanalysis.nn.execute import LayerEmulator, ParamCache, emulate_step, run_model, torch_step
from fpanalysis.nn.models import build_model
from fpanalysis.nn.trace import SUPPORTED_LAYERS, trace_model


def _randomize_bn(m: nn.Module, gen: torch.Generator) -> nn.Module:
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.running_mean.copy_(torch.rand(mod.running_mean.shape, generator=gen) - 0.5)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.weight.shape, generator=gen) + 0.5)
            mod.bias.data.copy_(torch.rand(mod.bias.shape, generator=gen) * 0.4 - 0.2)
    return m.eval()


class Functional(nn.Module):
    """Functional and method forms: F.relu, view(x.size(0), -1), cat, getitem, permute, mean, constants."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6 + 4, 7)
        self.scale = nn.Parameter(torch.tensor([1.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        z = y.view(y.size(0), -1)
        pooled = y.permute(0, 2, 3, 1).mean(dim=(1, 2))
        h = torch.cat([z, pooled], dim=1)
        h = torch.sigmoid(h) * 2.0 - 0.25
        h = 1.0 - h / 4.0
        out = self.fc(h)
        out = out[:, :5] * self.scale
        return F.dropout(out, 0.1, training=False) + out.transpose(0, 1).t().contiguous()


class Blocks(nn.Module):
    """A module called twice and nn.MultiheadAttention (batch_first) with its weights used."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.act = nn.GELU()
        self.mha = nn.MultiheadAttention(6, 2, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.proj(self.act(self.proj(x))))
        a, w = self.mha(h, h, h)
        return self.head((a + h).mean(dim=1)) + w.sum(dim=(1, 2)).unsqueeze(1)


def test_trace_kinds_and_names() -> None:
    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Softmax(dim=1))
    t = trace_model(m)
    assert [s.kind for s in t.steps] == ["input", "shape", "linear", "relu", "identity", "softmax", "output"]
    assert [s.path for s in t.steps[1:-1]] == ["0", "1", "2", "3", "4"]
    t2 = trace_model(Blocks())
    names = [s.name for s in t2.steps]
    assert len(set(names)) == len(names)
    assert "proj" in names and "proj:2" in names
    assert any(s.name == "mha.softmax" for s in t2.steps)


@pytest.mark.parametrize("layer, tname", [
    (nn.Upsample(scale_factor=2), "nn.Upsample"),
    (nn.ConvTranspose2d(1, 1, 2), "nn.ConvTranspose2d"),
    (nn.LSTM(4, 4), "nn.LSTM"),
])
def test_unsupported_layer_names_path_type_and_supported(layer: nn.Module, tname: str) -> None:
    m = nn.Sequential(nn.Identity(), nn.Sequential(nn.ReLU(), layer))
    with pytest.raises(ValueError) as e:
        trace_model(m)
    msg = str(e.value)
    assert f"'1.1' ({tname})" in msg
    for s in ("nn.Linear", "nn.Conv2d", "nn.MultiheadAttention", "nn.LayerNorm"):
        assert s in msg
    assert set(SUPPORTED_LAYERS) >= {"nn.BatchNorm1d", "nn.BatchNorm2d", "nn.GELU", "nn.SiLU", "nn.AvgPool2d"}


def test_unsupported_function_and_untraceable() -> None:
    class Exp(nn.Module):
        def forward(self, x):
            return torch.exp(x)

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match="torch.exp.*not supported"):
        trace_model(Exp())
    with pytest.raises(ValueError, match="could not trace"):
        trace_model(Branchy())
    with pytest.raises(ValueError, match="padding_mode"):
        trace_model(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")))


@pytest.mark.parametrize("name, shape", [("lenet5", (1, 28, 28)), ("resnet20", (3, 16, 16)),
                                         ("vit_tiny", (3, 16, 16)), ("vgg_small", (3, 16, 16)), ("mlp", (10,))])
@pytest.mark.torch_kernels
def test_fp32_steps_reproduce_the_model_bitwise(name: str, shape: tuple) -> None:
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    kw = {"width": 8, "n": 1} if name == "resnet20" else ({"width": 8} if name == "vgg_small" else {})
    m = _randomize_bn(build_model(name, input_shape=shape, num_classes=10, **kw), gen)
    x = torch.randn((5,) + shape, generator=gen)
    out = run_model(trace_model(m), x, backends=("float32", "half"))
    with torch.no_grad():
        assert torch.equal(out["float32"]["output"], m(x))
        assert torch.equal(out["half"]["output"], m.half()(x.half()))


def test_functional_forms_reproduce_the_model_bitwise() -> None:
    torch.manual_seed(0)
    m = Functional().eval()
    x = torch.randn(4, 2, 6, 6)
    t = trace_model(m)
    assert {s.kind for s in t.steps} >= {"size", "shape", "cat", "affine", "mean", "mul", "add", "param", "identity"}
    out = run_model(t, x, backends=("float32", "float64"))
    with torch.no_grad():
        assert torch.equal(out["float32"]["output"], m(x))
        ref64 = m.double()(x.double())
    assert torch.allclose(out["float64"]["output"], ref64, rtol=0, atol=1e-14)


@pytest.mark.parametrize("batch_first, kdim", [(True, None), (False, None), (True, 5)])
def test_multihead_attention_decomposition(batch_first: bool, kdim: int | None) -> None:
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x):
            kv = x if kdim is None else x[..., :kdim]
            out, w = self.mha(x, kv, kv)
            o = out.sum(dim=-1)
            return (o if batch_first else o.transpose(0, 1)) + w.sum(dim=-1)

    x = torch.randn((3, 5, 8) if batch_first else (5, 3, 8))
    m = M().eval()
    out = run_model(trace_model(m), x, backends=("float64",))
    with torch.no_grad():
        ref = m.double()(x.double())
    assert torch.allclose(out["float64"]["output"], ref, rtol=1e-12, atol=1e-12)


def test_mha_masks_rejected() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(4, 1, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, attn_mask=torch.ones(3, 3, dtype=torch.bool))[0]

    with pytest.raises(ValueError, match="attn_mask"):
        trace_model(M())


@pytest.mark.parametrize("layer", [nn.GELU(), nn.GELU(approximate="tanh"), nn.Tanh(), nn.Sigmoid(), nn.SiLU(),
                                   nn.Softmax(dim=-1), nn.LayerNorm(16), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(3)])
@pytest.mark.torch_kernels
def test_elementwise_emulation_is_fp32_opmath_rounded_once(layer: nn.Module, record_property) -> None:  # type: ignore[no-untyped-def]
    """Oracle: torch fp32 kernel on the fp16 input, rounded once to fp16 by torch (.half()).

    torch's own half kernel: within the layer's local error bound of the exact result on every
    CPU; >= 0.999 bitwise matches only where a probe over all fp16 values in [-8, 8] shows it to
    be the fp32 kernel rounded once (tests/torch_cpu.py), else the match rate is reported."""
    gen = torch.Generator().manual_seed(5)
    shape = (6, 4, 8, 8) if isinstance(layer, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)) else (64, 16)
    x = (torch.randn(shape, generator=gen) * 3).half().float()
    step = trace_model(nn.Sequential(layer)).steps[1]
    y, st = emulate_step(step, [x], LayerEmulator("fp16"), ParamCache())
    with torch.no_grad():
        ref = layer.float()(x).half().float() if not isinstance(layer, nn.LayerNorm) else \
            F.layer_norm(x, (16,), layer.weight.half().float(), layer.bias.half().float(), layer.eps).half().float()
    assert torch.equal(y, ref)
    assert st.n == y.numel()
    # torch's own half kernel
    import copy

    from torch_cpu import assert_within, half_elementwise_is_fp32_opmath, report_match

    half = torch_step(step, [x.half()], torch.float16, ParamCache()).float()
    assert_within(half.numpy(), *_exact_and_local_bound(layer, x.double()), repr(layer))
    l16 = copy.deepcopy(layer).half()
    l32 = copy.deepcopy(layer).half().float()  # the same fp16 parameters, fp32 arithmetic
    modelled = half_elementwise_is_fp32_opmath(repr(layer), l16, l32, tuple(shape))
    rate = float((half == y).float().mean())
    report_match(record_property, f"half {layer!r}", rate, modelled)
    if modelled:
        assert rate >= 0.999


def _adaptive_window_sizes(size: tuple[int, int], out: int) -> np.ndarray:
    """Number of inputs averaged by each output of adaptive average pooling (window
    ``[floor(i L / O), ceil((i + 1) L / O))`` along each axis, as in torch)."""
    def lens(L: int) -> np.ndarray:
        return np.array([-(-(i + 1) * L // out) - (i * L // out) for i in range(out)], dtype=np.float64)

    return lens(int(size[0]))[:, None] * lens(int(size[1]))[None, :]


def _exact_and_local_bound(layer: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The float64 value of ``layer`` at the fp16 input ``x`` (accurate to ~1e-13 relative, far
    below the bounds) and the local error bound of an fp32 evaluation rounded once to fp16
    (fpanalysis.bounds.layers)."""
    from fpanalysis.bounds import layers as LB

    xn = x.numpy()
    with torch.no_grad():
        if isinstance(layer, (nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU)):
            name = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu"}.get(type(layer))
            if name is None:
                name = "gelu_tanh" if layer.approximate == "tanh" else "gelu"
            return LB.activation(name, xn), np.asarray(LB.activation_local_bound(name, xn, "fp16").value)
        if isinstance(layer, nn.Softmax):
            return F.softmax(x, dim=layer.dim).numpy(), np.asarray(LB.softmax_local_bound(xn, "fp16", axis=layer.dim).value)
        if isinstance(layer, nn.LayerNorm):
            w = layer.weight.detach().half().double()
            b = layer.bias.detach().half().double()
            ref = F.layer_norm(x, layer.normalized_shape, w, b, layer.eps).numpy()
            return ref, np.asarray(LB.layernorm_local_bound(xn, w.numpy(), b.numpy(), layer.eps, "fp16").value)
        if isinstance(layer, nn.AvgPool2d):
            mean = F.avg_pool2d(x, layer.kernel_size).numpy()
            mean_abs = F.avg_pool2d(x.abs(), layer.kernel_size).numpy()
            kk = np.full(mean.shape, float(layer.kernel_size) ** 2)
        else:
            mean = F.adaptive_avg_pool2d(x, layer.output_size).numpy()
            mean_abs = F.adaptive_avg_pool2d(x.abs(), layer.output_size).numpy()
            kk = np.broadcast_to(_adaptive_window_sizes(x.shape[-2:], layer.output_size), mean.shape)
        return mean, np.asarray(LB.avgpool_local_bound(mean, mean_abs, kk, "fp16").value)


@pytest.mark.torch_kernels
def test_linear_conv_emulator_matches_torch_half_bitwise(record_property) -> None:  # type: ignore[no-untyped-def]
    """fp32-accumulate emulator vs torch CPU half on Linear and Conv2d.  On every CPU torch's
    result is within the fp32-accumulate bound of the exact result (bias as one more term); the
    match rate must be >= 0.995 only where the probe shows torch summing sequentially in binary32
    (tests/torch_cpu.py), else it is reported."""
    from torch_cpu import (assert_within, half_conv2d_is_sequential_fp32, half_mm_is_sequential_fp32,
                           report_match)

    from fpanalysis.bounds import accumulation_bound
    from fpanalysis.formats import FloatFormat
    from fpanalysis.linalg import conv2d

    wide = FloatFormat("binary64-like", 53, -960, 1000)  # the exact profile to 53 bits
    gen = torch.Generator().manual_seed(7)
    for layer, shape in [(nn.Linear(300, 40), (128, 300)), (nn.Conv2d(16, 8, 3, padding=1), (8, 16, 10, 10)),
                         (nn.Conv2d(8, 8, 3, stride=2, groups=4), (8, 8, 9, 9))]:
        x = torch.randn(shape, generator=gen).half().float()
        step = trace_model(nn.Sequential(layer)).steps[1]
        cache = ParamCache()
        y, _ = emulate_step(step, [x], LayerEmulator("fp16"), cache)
        half = torch_step(step, [x.half()], torch.float16, cache).float()
        w = layer.weight.detach().half().double().numpy()
        b = layer.bias.detach().half().double().numpy()
        xd = x.double().numpy()
        if isinstance(layer, nn.Linear):
            modelled = half_mm_is_sequential_fp32()
            exact = conv2d(xd[:, :, None, None], w[:, :, None, None], b, fmt=wide, profile="exact")[:, :, 0, 0]
            terms = np.abs(xd) @ np.abs(w).T + np.abs(b)
            n = w.shape[1] + 1
        else:
            modelled = half_conv2d_is_sequential_fp32()
            geo = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
            exact = conv2d(xd, w, b, **geo, fmt=wide, profile="exact")
            terms = conv2d(np.abs(xd), np.abs(w), np.abs(b), **geo, fmt=wide, profile="exact")
            n = w.shape[1] * w.shape[2] * w.shape[3] + 1
        bound = accumulation_bound(terms * (1 + 2.0**-50), n, "fp16", "fp32-accumulate", abs_result=np.abs(exact)).value
        assert_within(half.numpy(), exact, np.asarray(bound), repr(layer))
        rate = float((half == y).float().mean())
        report_match(record_property, f"half {layer!r}", rate, modelled)
        if modelled:
            assert rate >= 0.995, type(layer).__name__


def test_emulator_profiles_and_input_rounding() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 4)).eval()
    x = torch.randn(8, 64)
    outs = {p: run_model(trace_model(m), x, profile=p, backends=("emulator",))["emulator"]["output"]
            for p in ("fp32-accumulate", "ieee", "exact")}
    ex64 = F.linear(x.half().double(), m[0].weight.half().double(), m[0].bias.half().double())
    assert torch.equal(outs["exact"].double(), ex64.half().double())
    for p, y in outs.items():
        assert y.dtype == torch.float32
        assert torch.equal(y.half().float(), y), p  # numbers of fp16
    assert (outs["ieee"] - ex64).abs().max() >= (outs["fp32-accumulate"] - ex64).abs().max()
    with pytest.raises(ValueError, match="valid profiles"):
        LayerEmulator("fp16", "tensorcore")
    with pytest.raises(ValueError, match="seed"):
        LayerEmulator("fp16", mode="stochastic")


def test_bf16_emulation_is_rounded_to_bf16() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 8), nn.GELU()).eval()
    x = torch.randn(4, 16)
    y = run_model(trace_model(m), x, "bf16", backends=("emulator",))["emulator"]["output"]
    assert torch.equal(y.bfloat16().float(), y)
    with torch.no_grad():
        ref = m(x)
    assert not math.isclose(float((y - ref).abs().max()), 0.0)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=0.05, atol=0.05)

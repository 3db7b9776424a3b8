"""Reference models: shapes, torch.fx traceability with only plain layers, parameter counts
from the literature, attention checked against nn.MultiheadAttention, fp16/bf16 on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from fpanalysis.nn.models import ViTTiny, _Attention, build_model, model_names

SHAPES = [(3, 32, 32), (1, 8, 8)]  # CIFAR-size, and the padded path for tiny inputs (digits)
PLAIN = (nn.Linear, nn.Conv2d, nn.BatchNorm2d, nn.LayerNorm, nn.ReLU, nn.GELU, nn.MaxPool2d,
         nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_fx_trace(name, shape):
    torch.manual_seed(0)
    m = build_model(name, input_shape=shape, num_classes=7).eval()
    x = torch.randn(3, *shape)
    y = m(x)
    assert y.shape == (3, 7) and y.dtype == torch.float32
    g = torch.fx.symbolic_trace(m)
    assert torch.equal(g(x), y)
    leaves = [type(mod) for n, mod in g.named_modules() if n and not list(mod.children())]
    assert leaves and all(issubclass(t, PLAIN) for t in leaves), leaves
    called = {n.target for n in g.graph.nodes if n.op == "call_module"}
    assert called, "the traced graph should call the layers as modules"


def test_parameter_counts_match_the_literature():
    # LeNet-5 with a padded first convolution on 28x28 MNIST: the well-known 61,706 parameters.
    assert sum(p.numel() for p in build_model("lenet5", input_shape=(1, 28, 28), num_classes=10).parameters()) == 61706
    # ResNet-20 on CIFAR-10: "0.27M" (He et al. 2016, Table 6); ours uses 1x1 projection shortcuts.
    n = sum(p.numel() for p in build_model("resnet20", input_shape=(3, 32, 32), num_classes=10).parameters())
    assert 0.26e6 < n < 0.28e6
    # MLP 784-256-256-10
    assert sum(p.numel() for p in build_model("mlp", input_shape=(1, 28, 28), num_classes=10).parameters()) == \
        784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10


def test_resnet20_has_20_weight_layers():
    m = build_model("resnet20", input_shape=(3, 32, 32), num_classes=10)
    convs = [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d) and "shortcut" not in n]
    fcs = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert len(convs) + len(fcs) == 20
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in m.modules()) >= 19


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(1)
    dim, heads = 16, 4
    att = _Attention(dim, heads).eval()
    mha = nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([att.q.weight, att.k.weight, att.v.weight]))
        mha.in_proj_bias.copy_(torch.cat([att.q.bias, att.k.bias, att.v.bias]))
        mha.out_proj.weight.copy_(att.proj.weight)
        mha.out_proj.bias.copy_(att.proj.bias)
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    att.double()
    mha.double()
    want, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(att(x), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_forward_backward_on_cpu(name, dtype):
    torch.manual_seed(0)
    m = build_model(name, input_shape=(1, 8, 8), num_classes=4).to(dtype)
    x = torch.randn(4, 1, 8, 8, dtype=dtype)
    loss = nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert loss.dtype == dtype and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == dtype for p in m.parameters())


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="valid models are: mlp, lenet5, resnet20, vgg_small, vit_tiny"):
        build_model("alexnet", input_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ValueError, match="image inputs"):
        build_model("lenet5", input_shape=(40,), num_classes=10)
    with pytest.raises(ValueError, match="does not take option"):
        build_model("mlp", input_shape=(40,), num_classes=10, heads=3)
    with pytest.raises(ValueError, match="divisible"):
        ViTTiny((1, 28, 28), 10, patch=5)
    # vectors work with the MLP
    assert build_model("mlp", input_shape=(40,), num_classes=3)(torch.zeros(2, 40)).shape == (2, 3)

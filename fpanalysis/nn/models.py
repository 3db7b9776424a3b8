"""Small reference architectures, built by name.

Every model is made of plain layers (``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm2d``,
``nn.LayerNorm``, ``nn.ReLU``, ``nn.GELU``, ``nn.MaxPool2d``, ``nn.AdaptiveAvgPool2d``,
``nn.Flatten``), residual additions and, for the ViT, attention written out as
``softmax(Q K^T / sqrt(d)) V`` with ``nn.Linear`` projections.  ``forward`` has no
data-dependent Python control flow, so ``torch.fx.symbolic_trace`` can trace every model (the
analysis tools rely on that).

=============  =========================================================  ==================
name           architecture                                               inputs
=============  =========================================================  ==================
``mlp``        Flatten, Linear-ReLU x depth, Linear                       any shape
``lenet5``     LeCun et al. 1998: conv5-pool-conv5-pool-120-84-K (ReLU)   images, H, W >= 8
``resnet20``   He et al. 2016 CIFAR ResNet (6n+2 layers, n=3), batch norm images
``vgg_small``  VGG-style 3x3 conv + batch norm stacks, 3 pools            images, H, W >= 8
``vit_tiny``   Dosovitskiy et al. 2021 ViT, pre-LN, mean-pooled tokens    images
=============  =========================================================  ==================

>>> from fpanalysis.nn.models import build_model
>>> import torch
>>> m = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
>>> m(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["build_model", "model_names", "MLP", "LeNet5", "ResNet20", "VGGSmall", "ViTTiny"]


def _image_shape(name: str, input_shape: tuple[int, ...], min_hw: int = 1) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs image inputs of shape (C, H, W); got input shape "
                         f"{tuple(input_shape)} (use 'mlp' for vector data)")
    c, h, w = (int(v) for v in input_shape)
    if h < min_hw or w < min_hw:
        raise ValueError(f"model {name!r} needs images of at least {min_hw}x{min_hw}; got {h}x{w}")
    return c, h, w


class MLP(nn.Module):
    """Flatten, ``depth`` hidden Linear+ReLU layers of ``width`` units, a Linear classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 256, depth: int = 2):
        super().__init__()
        d = math.prod(input_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun, Bottou, Bengio & Haffner, Proc. IEEE 1998) with ReLU and max pooling.

    conv5(6, padding 2) - pool2 - conv5(16) - pool2 - 120 - 84 - K.  For inputs smaller than
    16x16 (sklearn digits, 8x8) the second convolution is padded too so the map stays non-empty.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 1):
        super().__init__()
        c, h, w = _image_shape("lenet5", input_shape, 8)
        c1, c2 = 6 * width, 16 * width
        pad2 = 2 if min(h, w) < 16 else 0
        h2, w2 = (h // 2 + 2 * pad2 - 4) // 2, (w // 2 + 2 * pad2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * h2 * w2, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        # Projection shortcut (option B of He et al.) where the shape changes.
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet of He, Zhang, Ren & Sun (CVPR 2016, section 4.2): 6n+2 layers.

    A 3x3 stem of ``width`` channels, three stages of ``n`` basic blocks with ``width``,
    ``2*width`` and ``4*width`` channels (stride 2 between stages), batch norm after every
    convolution, global average pooling and a linear classifier.  ``n=3, width=16`` is
    ResNet-20 (0.27 M parameters).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16, n: int = 3):
        super().__init__()
        c, _, _ = _image_shape("resnet20", input_shape)
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(_BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


class VGGSmall(nn.Module):
    """A small VGG (Simonyan & Zisserman, ICLR 2015): [w, w, M, 2w, 2w, M, 4w, M] of 3x3 conv,
    batch norm and ReLU, then global average pooling and a two-layer classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32):
        super().__init__()
        c, _, _ = _image_shape("vgg_small", input_shape, 8)
        cfg: list[Any] = [width, width, "M", 2 * width, 2 * width, "M", 4 * width, "M"]
        layers: list[nn.Module] = []
        cin = c
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 4 * width), nn.ReLU(),
            nn.Linear(4 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _Attention(nn.Module):
    """Multi-head self-attention written out: softmax(Q K^T / sqrt(d_head)) V."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT width {dim} is not divisible by heads={heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, N, dim)
        split = (self.heads, self.head_dim)
        q = self.q(x).unflatten(-1, split).transpose(1, 2)  # (B, h, N, d)
        k = self.k(x).unflatten(-1, split).transpose(1, 2)
        v = self.v(x).unflatten(-1, split).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).flatten(2)  # (B, N, dim)
        return self.proj(out)


class _ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTTiny(nn.Module):
    """A tiny Vision Transformer (Dosovitskiy et al., ICLR 2021), pre-LayerNorm blocks.

    Patches of ``patch`` pixels (default ``H // 4``: 16 tokens) embedded by a strided
    convolution, learned position embeddings, ``depth`` blocks of attention + GELU MLP,
    a final LayerNorm, mean pooling over tokens (no class token) and a linear head.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64, depth: int = 2,
                 heads: int = 4, patch: int = 0, mlp_ratio: int = 2):
        super().__init__()
        c, h, w = _image_shape("vit_tiny", input_shape, 2)
        patch = patch or max(1, h // 4)
        if h % patch or w % patch:
            raise ValueError(f"vit_tiny: image {h}x{w} is not divisible into {patch}x{patch} patches")
        tokens = (h // patch) * (w // patch)
        self.embed = nn.Conv2d(c, width, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[_ViTBlock(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, tokens, width)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "resnet20": ResNet20,
    "vgg_small": VGGSmall,
    "vit_tiny": ViTTiny,
}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(_REGISTRY)


def build_model(name: str, *, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a reference model by name, in float32, initialised from torch's global RNG.

    Parameters
    ----------
    name : str
        One of :func:`model_names`.
    input_shape : tuple of int
        Shape of one input without the batch dimension: ``(C, H, W)`` or ``(D,)``.
    num_classes : int
    **kwargs
        Architecture options (``width``, ``depth``, ``n``, ``heads``, ``patch``, ...); an option
        the model does not take raises ``ValueError``.

    >>> build_model("mlp", input_shape=(40,), num_classes=10, width=32).net[1]
    Linear(in_features=40, out_features=32, bias=True)
    >>> build_model("alexnet", input_shape=(3, 32, 32), num_classes=10)
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'alexnet'; valid models are: mlp, lenet5, resnet20, vgg_small, vit_tiny
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models are: {', '.join(_REGISTRY)}")
    cls = _REGISTRY[name]
    import inspect

    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "input_shape", "num_classes")]
    bad = sorted(set(kwargs) - set(allowed))
    if bad:
        raise ValueError(f"model {name!r} does not take option(s) {bad}; it takes: {', '.join(allowed)}")
    return cls(tuple(input_shape), int(num_classes), **kwargs)

"""Models and data for the check's validation zoo (experiments/check_zoo.py), written here and
not taken from fpanalysis's built-ins: the check must work on code it has never seen.

Each model is a plain ``nn.Module`` as a practitioner would write it (in-place ReLUs, ``out +=
identity``, hand-written attention, normalisation and softmax, recurrent layers, embeddings).
Each data set is small, offline and deterministic: sklearn's 8x8 digits (as images, as
flattened vectors or as sequences of rows) and synthetic token sequences whose class is set by
which marker tokens occur.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["Data", "MODELS", "load_data"]


# --- data ------------------------------------------------------------------------------------


@dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, k: int, seed: int = 0) -> Data:
    perm = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    tr, te = perm[:cut], perm[cut:]
    return Data(x[tr], y[tr], x[te], y[te], k)


def _tokens(n: int = 2000, length: int = 24, vocab: int = 200, classes: int = 4, seed: int = 0) -> Data:
    """Token sequences; class c is marked by tokens from its own band of 5 marker tokens,
    placed at random positions among filler tokens."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(classes * 5, vocab, (n, length))
    for i in range(n):
        pos = rng.choice(length, 3, replace=False)
        x[i, pos] = y[i] * 5 + rng.integers(0, 5, 3)
    return _split(x.astype(np.int64), y.astype(np.int64), classes, seed)


def load_data(name: str, scale: float = 1.0) -> Data:
    """``digits`` (64-vectors), ``digits-img`` (1x8x8), ``digits-seq`` (8 steps of 8) or
    ``tokens`` (integer sequences); float inputs are multiplied by ``scale``."""
    if name == "tokens":
        return _tokens()
    x, y = _digits()
    if name == "digits-img":
        x = x.reshape(-1, 1, 8, 8)
    elif name == "digits-seq":
        x = x.reshape(-1, 8, 8)
    elif name != "digits":
        raise ValueError(f"unknown data {name!r}")
    return _split((x * scale).astype(np.float32), y, 10)


# --- models ----------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, d_in: int = 64, hidden: int = 64, classes: int = 10, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.body(x))


class LinearBN(nn.Module):
    """Linear -> BatchNorm1d -> ReLU, twice (a batch of one fails in train mode)."""

    def __init__(self, d_in: int = 64, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10, bn: bool = False):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), norm(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1), norm(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(32 * 4 * 4, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, as written there: in-place ReLU and ``out += identity``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TVResNet(nn.Module):
    """A torchvision-style ResNet (stem, two stages of BasicBlocks, adaptive pooling, fc)."""

    def __init__(self, classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, 2, bias=False), nn.BatchNorm2d(2 * width))
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2, down), BasicBlock(2 * width, 2 * width))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class RNNClassifier(nn.Module):
    def __init__(self, cell: str = "gru", d_in: int = 8, hidden: int = 32, classes: int = 10):
        super().__init__()
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(d_in, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class TokenTransformer(nn.Module):
    def __init__(self, vocab: int = 200, d: int = 32, classes: int = 4, length: int = 24):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        self.enc = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(d, classes)

    def forward(self, tokens):
        h = self.enc(self.emb(tokens) + self.pos)
        return self.fc(h.mean(1))


class HandAttention(nn.Module):
    """Single-head attention written by hand: ``softmax(q @ k^T * scale) @ v``.  A large
    ``logit_scale`` (a mis-set temperature) makes the logits, not any module's output, huge."""

    def __init__(self, vocab: int = 200, d: int = 32, classes: int = 4, logit_scale: float = 1.0):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.fc = nn.Linear(d, classes)
        self.scale = logit_scale / math.sqrt(d)

    def forward(self, tokens):
        h = self.emb(tokens)
        att = (self.q(h) @ self.k(h).transpose(-2, -1)) * self.scale
        h = h + torch.softmax(att, dim=-1) @ self.v(h)  # residual, as in every Transformer block
        return self.fc(h.mean(1))


class EmbBag(nn.Module):
    def __init__(self, vocab: int = 200, d: int = 32, classes: int = 4):
        super().__init__()
        self.emb = nn.EmbeddingBag(vocab, d, mode="mean")
        self.fc = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, tokens):
        return self.fc(self.emb(tokens))


class ScaledMLP(nn.Module):
    """An MLP with a hand-written constant factor between its layers (a unit conversion or a
    mis-set gain), which no module's output shows on its own."""

    def __init__(self, factor: float = 1.0, d_in: int = 64, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d_in, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, classes)
        self.factor = factor

    def forward(self, x):
        h = F.relu(self.fc1(x)) * self.factor
        h = F.relu(self.fc2(h)) / self.factor
        return self.fc3(h)


class HandNormMLP(nn.Module):
    """RMS normalisation written by hand, ``h / sqrt(mean(h * h) + eps)``: the mean of squares
    overflows fp16 once |h| passes ~256 even though h itself is representable."""

    def __init__(self, gain: float = 1.0, d_in: int = 64, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, hidden), nn.Linear(hidden, classes)
        self.gain = gain

    def forward(self, x):
        h = self.fc1(x) * self.gain
        h = h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-5)
        return self.fc2(F.relu(h))


class HandSoftmaxMLP(nn.Module):
    """Returns log-probabilities from a hand-written softmax ``exp(z) / sum exp(z)`` without
    subtracting the maximum: exp overflows fp16 for z > 11.09."""

    def __init__(self, temperature: float = 1.0, d_in: int = 64, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, classes))
        self.t = temperature

    def forward(self, x):
        e = torch.exp(self.net(x) * self.t)
        return torch.log(e / e.sum(-1, keepdim=True))


class TinyOutput(nn.Module):
    """An MLP whose logits are multiplied by a tiny constant: every gradient is tiny too."""

    def __init__(self, factor: float = 1e-3, d_in: int = 64, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.net = MLP(d_in, hidden, classes)
        self.factor = factor

    def forward(self, x):
        return self.net(x) * self.factor


#: name -> factory(**kwargs)
MODELS = {
    "mlp": MLP, "linear-bn": LinearBN, "cnn": lambda **k: SmallCNN(bn=False, **k),
    "cnn-bn": lambda **k: SmallCNN(bn=True, **k), "tv-resnet": TVResNet,
    "gru": lambda **k: RNNClassifier("gru", **k), "lstm": lambda **k: RNNClassifier("lstm", **k),
    "transformer": TokenTransformer, "hand-attention": HandAttention, "embedding-bag": EmbBag,
    "scaled-mlp": ScaledMLP, "hand-norm-mlp": HandNormMLP, "hand-softmax-mlp": HandSoftmaxMLP,
    "tiny-output": TinyOutput,
}

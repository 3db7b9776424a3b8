"""Models written the way users write them, each built for one mechanism the check must see.

Shared by tests/nn/test_observe.py and tests/check/test_check_ops.py.  The ResNet is a faithful
copy of torchvision.models.resnet's BasicBlock/ResNet (torchvision does not install beside this
torch build): inplace ReLU shared within a block and ``out += identity``.
"""

from __future__ import annotations

import torch
from torch import nn

# torchvision's BasicBlock as the validation zoo writes it (one copy in the project)
from experiments.zoo_models import BasicBlock  # noqa: F401  (re-exported to the tests)

# ---------------------------------------------------------------------------------------------
# torchvision-style ResNet (a faithful copy of torchvision.models.resnet's BasicBlock/ResNet:
# inplace ReLU and `out += identity`), smaller depth so that the test stays fast
# ---------------------------------------------------------------------------------------------


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=10, width=16):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


# ---------------------------------------------------------------------------------------------
# purpose-built models
# ---------------------------------------------------------------------------------------------


class BNNet(nn.Module):
    """Linear features -> BatchNorm1d -> Linear; the input scale sets the BatchNorm variance."""

    def __init__(self, d=8, eps=1e-5):
        super().__init__()
        self.bn = nn.BatchNorm1d(d, eps=eps)
        self.fc = nn.Linear(d, 3)

    def forward(self, x):
        return self.fc(self.bn(x))


class HandAttention(nn.Module):
    """Unscaled attention logits q @ k^T: the leaf modules' outputs stay moderate, the product does not."""

    def __init__(self, d=16):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = q @ k.transpose(-2, -1)
        return logits.softmax(-1) @ v


class AttnNet(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.attn = HandAttention(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.attn(x).mean(1))


class ScaledNet(nn.Module):
    """A hand-written scale factor and normalisation between two layers (no module of its own)."""

    def __init__(self, scale):
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 3)
        self.scale = scale

    def forward(self, x):
        h = self.fc1(x) * self.scale
        h = h / (h.pow(2).sum(-1, keepdim=True).sqrt() + 1e-6)
        return self.fc2(h)


class EmbedNet(nn.Module):
    def __init__(self, vocab=50, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc = nn.Linear(d, 3)

    def forward(self, tokens):
        return self.fc(self.emb(tokens).mean(1))


class RNNNet(nn.Module):
    def __init__(self, cell="lstm", d=6, h=12):
        super().__init__()
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(d, h, batch_first=True)
        self.fc = nn.Linear(h, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class TwoInputNet(nn.Module):
    """Two inputs, data-dependent control flow (torch.fx cannot trace it)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(6, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x1, x2=None, *, scale=None):
        h = self.a(x1)
        if x2 is not None and float(x2.sum()) > -1e9:
            h = h + self.b(x2)
        return self.fc(torch.tanh(h))


class EMANet(nn.Module):
    """Keeps an exponential moving average of its input's mean in a buffer."""

    def __init__(self, decay, d=4):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema", torch.full((d,), 1000.0))
        self.fc = nn.Linear(d, 3)

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.ema.mul_(self.decay).add_(x.mean(0), alpha=1 - self.decay)
        return self.fc(x - self.ema)


def cls_data(n, d, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * scale, torch.randint(0, 3, (n,), generator=g)



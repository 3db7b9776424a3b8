"""Measurements on a PyTorch model in fp32 that predict how it will fare in a low-precision format.

Everything here runs the model in float32 (never in the target format) and records magnitudes:
forward activations per layer, weight and activation gradients, optimizer updates and second
moments.  :mod:`fpanalysis.check` turns these numbers into findings and a verdict.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..formats import FloatFormat
from ..rounding import round_to

__all__ = [
    "RangeStats",
    "ProbeResult",
    "probe_model",
    "leaf_modules",
]

#: gradient magnitudes that fp16 loses (docs/theory.md §4.1): below 2**-25 they round to zero, below
#: 2**-24 they are at best the smallest subnormal, below 2**-14 they are subnormal.
_LOG2_BINS = np.arange(-160, 130)


@dataclass
class RangeStats:
    """Magnitude statistics of one tensor family (e.g. a layer's outputs) against a format.

    ``hist`` counts ``floor(log2 |v|)`` of the nonzero values in bins ``_LOG2_BINS`` (for plots).
    """

    name: str
    kind: str
    count: int = 0
    nonzero: int = 0
    max_abs: float = 0.0
    n_overflow: int = 0
    n_subnormal: int = 0
    n_flushed: int = 0
    n_below_2m24: int = 0
    sum_abs: float = 0.0
    sum_abs_below_2m24: float = 0.0
    min_abs_nonzero: float = math.inf
    hist: np.ndarray = field(default_factory=lambda: np.zeros(len(_LOG2_BINS), dtype=np.int64))
    abs_values: list[np.ndarray] = field(default_factory=list, repr=False)

    def add(self, t: torch.Tensor, fmt: FloatFormat, keep_values: bool = False) -> None:
        a = t.detach().abs().to(torch.float64).reshape(-1).cpu().numpy()
        if a.size == 0:
            return
        finite = np.isfinite(a)
        self.count += a.size
        nz = a[(a > 0) & finite]
        self.nonzero += nz.size
        if nz.size:
            self.max_abs = max(self.max_abs, float(nz.max()))
            self.min_abs_nonzero = min(self.min_abs_nonzero, float(nz.min()))
            e = np.floor(np.log2(nz)).astype(np.int64)
            idx = np.clip(e - _LOG2_BINS[0], 0, len(_LOG2_BINS) - 1)
            self.hist += np.bincount(idx, minlength=len(_LOG2_BINS))
            r = np.abs(round_to(nz, fmt))
            self.n_overflow += int(np.sum(~np.isfinite(r) | (nz > fmt.max)))
            self.n_flushed += int(np.sum(r == 0))
            self.n_subnormal += int(np.sum((r > 0) & (r < fmt.min_normal)))
            below = nz < 2.0**-24
            self.n_below_2m24 += int(np.sum(below))
            self.sum_abs += float(nz.sum())
            self.sum_abs_below_2m24 += float(nz[below].sum())
            if keep_values:
                self.abs_values.append(nz)
        self.n_overflow += int(np.sum(~finite))

    @property
    def frac_flushed(self) -> float:
        return self.n_flushed / self.nonzero if self.nonzero else 0.0

    @property
    def frac_subnormal(self) -> float:
        return self.n_subnormal / self.nonzero if self.nonzero else 0.0

    @property
    def frac_below_2m24(self) -> float:
        return self.n_below_2m24 / self.nonzero if self.nonzero else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "count": self.count,
            "nonzero": self.nonzero,
            "max_abs": self.max_abs,
            "min_abs_nonzero": self.min_abs_nonzero if self.nonzero else None,
            "n_overflow": self.n_overflow,
            "frac_subnormal": self.frac_subnormal,
            "frac_flushed": self.frac_flushed,
            "frac_below_2^-24": self.frac_below_2m24,
            "mass_frac_below_2^-24": self.sum_abs_below_2m24 / self.sum_abs if self.sum_abs else 0.0,
            "log2_hist": {int(b): int(c) for b, c in zip(_LOG2_BINS, self.hist) if c},
        }


@dataclass
class ProbeResult:
    """Raw measurements of :func:`probe_model`."""

    activations: list[RangeStats]
    activation_grads: list[RangeStats]
    weight_grads: list[RangeStats]
    updates: list[dict[str, Any]]
    adam: dict[str, Any] | None
    reductions: list[dict[str, Any]]
    losses: list[float]
    n_parameters: int


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules without children (the layers whose outputs are activations)."""
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


def _reduction_lengths(model: nn.Module, sample: torch.Tensor) -> list[dict[str, Any]]:
    """Lengths of the sums each layer computes (inner products, pooling windows, norms)."""
    out: list[dict[str, Any]] = []
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str) -> Callable[..., None]:
        def f(mod: nn.Module, inp: Any, outp: Any) -> None:
            if isinstance(inp, tuple) and inp and isinstance(inp[0], torch.Tensor):
                shapes[name] = tuple(inp[0].shape)

        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in leaf_modules(model)]
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        for h in handles:
            h.remove()
    for name, m in leaf_modules(model):
        n = None
        what = ""
        if isinstance(m, nn.Linear):
            n, what = m.in_features, "inner product"
        elif isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            n, what = (m.in_channels // m.groups) * kh * kw, "convolution inner product"
        elif isinstance(m, (nn.LayerNorm,)):
            n, what = int(np.prod(m.normalized_shape)), "mean/variance"
        elif isinstance(m, (nn.AvgPool2d,)):
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
            n, what = k[0] * k[1], "average"
        elif isinstance(m, nn.AdaptiveAvgPool2d) and name in shapes:
            h, w = shapes[name][-2:]
            o = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
            n, what = math.ceil(h / (o[0] or h)) * math.ceil(w / (o[1] or w)), "average"
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and name in shapes:
            shp = shapes[name]
            n, what = int(np.prod(shp[2:])) if len(shp) > 2 else 1, "batch statistics (per sample)"
        elif isinstance(m, nn.MultiheadAttention):
            n, what = m.embed_dim, "attention inner product"
        if n is not None:
            out.append({"layer": name, "type": type(m).__name__, "n": int(n), "what": what})
    return out


def make_optimizer(params: Iterable[nn.Parameter], name: str, lr: float, eps: float, momentum: float,
                   betas: tuple[float, float], weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The torch optimizer ``name`` (sgd, adam, adamw) with its settings."""
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid optimizers are: sgd, adam, adamw")


def probe_model(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    fmt: FloatFormat,
    *,
    optimizer: str = "sgd",
    lr: float = 0.01,
    eps: float = 1e-8,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ProbeResult:
    """Run a copy of ``model`` in float32 for ``len(batches)`` training steps and measure.

    The model passed in is not modified.  For each step: forward activation ranges (forward hooks
    on leaf modules), activation-gradient ranges (backward hooks), weight-gradient ranges, the
    optimizer's actual update ``w_new - w_old`` against the format's spacing at ``w`` (would the
    update be lost without fp32 master weights?), and for Adam the second-moment state.
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    m = copy.deepcopy(model).float().train()
    opt = make_optimizer(m.parameters(), optimizer, lr, eps, momentum, betas, weight_decay)
    leaves = leaf_modules(m)
    acts = {n: RangeStats(n, type(mod).__name__) for n, mod in leaves}
    agrads = {n: RangeStats(n, type(mod).__name__) for n, mod in leaves}
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    wgrads = {n: RangeStats(n, "weight gradient") for n, _ in params}
    updates = {n: {"layer": n, "n": 0, "lost": 0, "zero_update": 0, "max_abs_w": 0.0} for n, _ in params}

    def fwd_hook(name: str) -> Callable[..., None]:
        def f(mod: nn.Module, inp: Any, out: Any) -> None:
            t = out[0] if isinstance(out, tuple) else out
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                acts[name].add(t, fmt)

        return f

    def bwd_hook(name: str) -> Callable[..., None]:
        def f(mod: nn.Module, grad_in: Any, grad_out: Any) -> None:
            g = grad_out[0] if isinstance(grad_out, tuple) else grad_out
            if isinstance(g, torch.Tensor):
                agrads[name].add(g, fmt)

        return f

    handles = []
    for n, mod in leaves:
        handles.append(mod.register_forward_hook(fwd_hook(n)))
        if not isinstance(mod, nn.MultiheadAttention):
            handles.append(mod.register_full_backward_hook(bwd_hook(n)))
    losses: list[float] = []
    adam_v: list[np.ndarray] = []
    try:
        for step, (xb, yb) in enumerate(batches):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(m(xb.float()), yb)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                break
            with warnings.catch_warnings():
                # the first layer's input needs no gradient; torch warns that its hook sees outputs only
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            before = {n: p.detach().clone() for n, p in params}
            for n, p in params:
                if p.grad is not None:
                    wgrads[n].add(p.grad, fmt, keep_values=True)
            opt.step()
            for n, p in params:
                w = before[n].to(torch.float64).reshape(-1).numpy()
                w_new = p.detach().to(torch.float64).reshape(-1).numpy()
                delta = w_new - w
                w16 = round_to(w, fmt)
                # the update is lost when w16 + delta rounds back to w16 (round-to-nearest)
                lost = (round_to(w16 + delta, fmt) == w16) & (delta != 0)
                u = updates[n]
                u["n"] += w.size
                u["lost"] += int(lost.sum())
                u["zero_update"] += int(np.sum(delta == 0))
                u["max_abs_w"] = max(u["max_abs_w"], float(np.abs(w).max()) if w.size else 0.0)
            if optimizer.lower() in ("adam", "adamw"):
                for p in m.parameters():
                    st = opt.state.get(p, {})
                    if "exp_avg_sq" in st:
                        adam_v.append(st["exp_avg_sq"].detach().to(torch.float64).reshape(-1).numpy().copy())
            if progress is not None:
                progress(step + 1, len(batches))
    finally:
        for h in handles:
            h.remove()
    adam = None
    if optimizer.lower() in ("adam", "adamw"):
        g_all = np.concatenate([np.concatenate(s.abs_values) for s in wgrads.values() if s.abs_values] or [np.zeros(0)])
        v_all = np.concatenate(adam_v) if adam_v else np.zeros(0)
        adam = {"grad_abs": g_all, "v": v_all, "eps": eps, "betas": betas, "lr": lr}
    reductions = _reduction_lengths(m.eval(), batches[0][0].float())  # eval: BatchNorm takes a batch of one
    return ProbeResult(
        activations=list(acts.values()),
        activation_grads=list(agrads.values()),
        weight_grads=list(wgrads.values()),
        updates=list(updates.values()),
        adam=adam,
        reductions=reductions,
        losses=losses,
        n_parameters=sum(p.numel() for _, p in params),
    )

"""Measurements on a PyTorch model in fp32 that predict how it will fare in a low-precision format.

Everything here runs the model in float32 (never in the target format) and records magnitudes:
every aten operation of the forward and backward pass and every buffer (the operation-level
observer, :mod:`fpanalysis.nn.observe`), forward activations per layer and their gradients (with
log2 histograms, for the plots), weight gradients, optimizer updates and second moments.
:mod:`fpanalysis.check` turns these numbers into findings and a verdict.

No full backward hooks are used: activation gradients come from tensor hooks registered on the
layer outputs, which in-place operations after the layer (``nn.ReLU(inplace=True)``, ``out +=
identity``) do not break.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..formats import FloatFormat
from ..nn.observe import Observation, Observer, RangeBoundaries, call_model, default_loss, float_inputs
from ..rounding import round_to

__all__ = [
    "ProbeResult",
    "RangeStats",
    "leaf_modules",
    "probe_model",
]

#: gradient magnitudes that fp16 loses (docs/theory.md §4.1): below 2**-25 they round to zero, below
#: 2**-24 they are at best the smallest subnormal, below 2**-14 they are subnormal.
_LOG2_BINS = np.arange(-160, 130)

#: at most this many of the measured steps run under the operation observer (its cost is a few
#: reductions per aten op, so it watches a bounded sample; later steps run at full speed).
OBSERVED_STEPS = 8


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
        """Add the values of ``t``.  Classes use the emulator's exact rounding boundaries
        (:class:`fpanalysis.nn.observe.RangeBoundaries`): flushed when ``|v|`` rounds to 0,
        subnormal when it rounds below the smallest normal, overflow when it rounds above the
        max (with IEEE overflow: for a saturating format, when it would saturate) or is not
        finite.  Computed with torch reductions (no float64 copy of the whole tensor)."""
        x = t.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        a = x.abs().reshape(-1)
        if a.numel() == 0:
            return
        flush, sub, fin = RangeBoundaries.of(fmt).in_dtype(a.dtype)
        self.count += a.numel()
        mx = float(a.amax())
        if keep_values or not math.isfinite(mx):
            self._add_masked(a, flush, sub, fin, keep_values)
            return
        if a.dtype != torch.float32:
            self._add_masked(a, flush, sub, fin, keep_values)
            return
        # float32, all finite: the biased exponent field gives floor(log2 v) of every normal value
        # exactly, so one bincount of it is the histogram; subnormals (exponent field 0, shared
        # with zeros) get their exponents from frexp on that small subset
        ai = a.view(torch.int32)
        eb = ai >> 23
        h256 = torch.bincount(eb, minlength=256).numpy()
        nz = int(torch.sign(a).sum(dtype=torch.float64 if a.numel() > 2**24 else torch.float32))
        n_zero = a.numel() - nz
        self.nonzero += nz
        if nz == 0:
            return
        self.max_abs = max(self.max_abs, mx)
        lo = int(_LOG2_BINS[0])
        h = np.zeros(len(_LOG2_BINS), dtype=np.int64)
        h[np.arange(1, 255) - 127 - lo] += h256[1:255]
        if h256[0] > n_zero:  # float32 subnormals
            sv = a[(eb == 0) & (a > 0)]
            e = torch.frexp(sv)[1].to(torch.int64) - 1
            h += torch.bincount((e - lo).clamp_(0, len(_LOG2_BINS) - 1), minlength=len(_LOG2_BINS)).numpy()
        self.hist += h
        if mx > fin:
            self.n_overflow += int((a > fin).sum())
        n_small = int(h[: int(np.floor(np.log2(sub))) - lo + 1].sum())  # values below 2**(floor(log2 sub)+1)
        if n_small:
            n_le_flush = int((a <= flush).sum()) - n_zero
            self.n_flushed += n_le_flush
            self.n_subnormal += int((a <= sub).sum()) - n_zero - n_le_flush
        n_below = int(h[: -24 - lo].sum())  # floor(log2 v) < -24  <=>  v < 2**-24
        self.n_below_2m24 += n_below
        self.sum_abs += float(a.sum(dtype=torch.float64))
        if n_below:
            self.sum_abs_below_2m24 += float(torch.where(a < 2.0**-24, a, 0.0).sum(dtype=torch.float64))
        ai.sub_(1).bitwise_and_(0x7FFFFFFF)  # zeros to the top, v to bits(v) - 1 (a is our own copy)
        self.min_abs_nonzero = min(self.min_abs_nonzero,
                                   float(torch.tensor(int(ai.amin()) + 1, dtype=torch.int32).view(torch.float32)))

    def _add_masked(self, a: torch.Tensor, flush: float, sub: float, fin: float, keep_values: bool) -> None:
        finite = torch.isfinite(a)
        n_nonfinite = a.numel() - int(finite.sum())
        nz = a[(a > 0) & finite]
        self.nonzero += nz.numel()
        if nz.numel():
            self.max_abs = max(self.max_abs, float(nz.max()))
            self.min_abs_nonzero = min(self.min_abs_nonzero, float(nz.min()))
            e = torch.frexp(nz)[1].to(torch.int64) - 1  # floor(log2 v), exact
            idx = (e - int(_LOG2_BINS[0])).clamp_(0, len(_LOG2_BINS) - 1)
            self.hist += torch.bincount(idx, minlength=len(_LOG2_BINS)).numpy()
            self.n_overflow += int((nz > fin).sum())
            n_le_flush = int((nz <= flush).sum())
            self.n_flushed += n_le_flush
            self.n_subnormal += int((nz <= sub).sum()) - n_le_flush
            below = nz < 2.0**-24
            self.n_below_2m24 += int(below.sum())
            nzd = nz.to(torch.float64)
            self.sum_abs += float(nzd.sum())
            self.sum_abs_below_2m24 += float(nzd[below].sum())
            if keep_values:
                self.abs_values.append(nzd.numpy().copy())
        self.n_overflow += n_nonfinite

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
    observation: Observation | None = None


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules without children (the layers whose outputs are activations)."""
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


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

    The model passed in is not modified.  ``batches`` holds ``(inputs, target)`` pairs; inputs are
    a tensor, a tuple (positional arguments) or a dict (keyword arguments); floating inputs are
    made float32 and integer ones (token ids) are kept.  For each step: every aten op and buffer
    (:class:`~fpanalysis.nn.observe.Observer`), forward activation ranges (forward hooks on leaf
    modules), activation-gradient ranges (tensor hooks on their outputs), weight-gradient ranges,
    the optimizer's actual update ``w_new - w_old`` against the format's spacing at ``w`` (would
    the update be lost without fp32 master weights?), and for Adam the second-moment state.
    """
    loss_fn = loss_fn or default_loss
    m = copy.deepcopy(model).float().train()
    opt = make_optimizer(m.parameters(), optimizer, lr, eps, momentum, betas, weight_decay)
    leaves = leaf_modules(m)
    acts = {n: RangeStats(n, type(mod).__name__) for n, mod in leaves}
    agrads = {n: RangeStats(n, type(mod).__name__) for n, mod in leaves}
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    wgrads = {n: RangeStats(n, "weight gradient") for n, _ in params}
    updates = {n: {"layer": n, "n": 0, "lost": 0, "zero_update": 0, "max_abs_w": 0.0} for n, _ in params}
    obs = Observer(m, fmt, max_steps=min(max(1, len(batches)), OBSERVED_STEPS))

    def grad_hook(name: str) -> Callable[[torch.Tensor], None]:
        def f(g: torch.Tensor) -> None:
            with obs.paused():
                agrads[name].add(g, fmt)

        return f

    def fwd_hook(name: str) -> Callable[..., None]:
        def f(mod: nn.Module, inp: Any, out: Any) -> None:
            t = out[0] if isinstance(out, tuple) else out
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                with obs.paused():
                    acts[name].add(t, fmt)
                if t.requires_grad and torch.is_grad_enabled():
                    t.register_hook(grad_hook(name))

        return f

    handles = [mod.register_forward_hook(fwd_hook(n)) for n, mod in leaves]
    losses: list[float] = []
    adam_v: list[np.ndarray] = []
    try:
        for step, (xb, yb) in enumerate(batches):
            opt.zero_grad(set_to_none=True)
            with obs.step(step):
                loss = loss_fn(call_model(m, float_inputs(xb)), yb)
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]):
                    break
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
    observation = obs.result()
    reductions = op_reductions(observation)
    return ProbeResult(
        activations=list(acts.values()),
        activation_grads=list(agrads.values()),
        weight_grads=list(wgrads.values()),
        updates=list(updates.values()),
        adam=adam,
        reductions=reductions,
        losses=losses,
        n_parameters=sum(p.numel() for _, p in params),
        observation=observation,
    )


def op_reductions(obs: Observation) -> list[dict[str, Any]]:
    """The sums the forward pass computes, one entry per (module, op) with the longest length:
    ``layer`` (module path), ``op`` (aten name), ``type`` (module class), ``n``, ``what``."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in obs.forward():
        if r.reduction is None or r.module.startswith("<"):
            continue
        key = (r.module, r.op)
        if key not in best or r.reduction > best[key]["n"]:
            best[key] = {"layer": r.module or "model", "op": f"aten.{r.op}", "type": r.module_type,
                         "n": int(r.reduction), "what": f"{r.reduction_what} (aten.{r.op})"}
    return list(best.values())

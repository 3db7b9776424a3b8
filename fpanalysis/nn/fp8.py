"""Emulated FP8 / MX / NVFP4 training: GEMM inputs quantised-dequantised per recipe.

Inside :func:`fp8_training` every ``nn.Linear`` and ``nn.Conv2d`` of a model (and nothing else)
computes as a Transformer Engine FP8 GEMM does:

* forward ``Y = X W^T (+ b)``: the activation ``X`` and the weight ``W`` are quantised and
  dequantised with the recipe (E4M3 elements), the product is computed in float32 from the
  dequantised values (float32 accumulation; TF32 is switched off for it) and the output is cast
  back to the input's dtype (bias added in float32 before the cast);
* backward: the output gradient ``dY`` is quantised (E5M2 elements under the hybrid recipe,
  E4M3 otherwise); ``dX = Q(dY) Q(W)`` and ``dW = Q(dY)^T Q(X)``, in float32; the bias gradient
  comes from the unquantised ``dY`` (Transformer Engine's fused cast-transpose-dbias does the same).

Everything else (norms, activations, attention's batched products, the loss, the optimizer)
runs in the model's own dtype, untouched.  Each call of a module is one step of its operands'
scaling (a module called twice per training step, or an evaluation pass inside the context,
records two calls and, under delayed scaling, two amax history entries).  Tensors on a GPU are
quantised on the CPU (the quantisers are numpy/numba) and moved back.

Recipes (:data:`FP8_RECIPES`; docs/scaled_formats.md gives the arithmetic and the sources):

``"current"``
    per-tensor current scaling, ``scale = (fmax / amax(x)) / 2**margin``
    (:func:`fpanalysis.recipes.current_scaling`);
``"delayed"``
    per-tensor delayed scaling with an amax history per operand per module, as Transformer
    Engine's ``DelayedScaling``: the scale of a call comes from the maximum of the amaxes of
    earlier calls, and this call's amax is appended afterwards (:class:`fpanalysis.recipes.
    DelayedScaling`; the first call uses scale 1);
``"mxfp8"``, ``"mxfp6"``, ``"mxfp4"``
    OCP MX block scaling, an E8M0 scale per 32 elements along the GEMM's reduction axis
    (MXFP8: E4M3 forward, E5M2 gradients under the hybrid recipe -- Transformer Engine's
    ``MXFP8BlockScaling`` defaults to E4M3 throughout, ``hybrid=False``; MXFP6: E2M3 / E3M2;
    MXFP4: E2M1 throughout).  The block scale is rounded up as Transformer Engine does
    (``mx_scale="rceil"``, :func:`fpanalysis.recipes.block_scaling_rceil`) or chosen as the OCP
    specification says (``mx_scale="floor"``, :func:`fpanalysis.recipes.block_scaling`);
``"nvfp4"``
    NVFP4, E2M1 elements with an E4M3 scale per 16 elements and an fp32 tensor scale, for every
    operand (gradients included).

Block recipes quantise each operand along the reduction axis of the GEMM it enters, as
Transformer Engine's MXFP8 recipe does (row-wise and column-wise copies): ``X`` and ``W`` along
the input features for the forward, ``dY`` and ``W`` along the output features for ``dX``, ``dY``
and ``X`` along the tokens (batch x positions) for ``dW``.  Per-tensor recipes give the same
values along any axis, so the forward's quantised ``X`` and ``W`` are reused in the backward.
For ``nn.Conv2d`` (an implicit GEMM, channels-last: the reduction runs over kernel positions x
input channels with the channels innermost) blocks run along the channel axis of ``X`` and
``W`` (forward), the output-channel axis of ``dY`` and ``W`` (``dX``), and the flattened
batch x spatial axis of ``dY`` and ``X`` (``dW``).

Not emulated: FP8 accumulation inside the GEMM (the products are summed in float32; Hopper's
reduced-precision FP8 accumulation is the tensor-core model's business), NVFP4's random Hadamard
transform, 2-D weight blocks and stochastic rounding of gradients, and GEMMs not made by an
``nn.Linear`` / ``nn.Conv2d`` forward (``F.linear`` in user code, ``nn.MultiheadAttention``'s
projections, ``torch.matmul``): those run unquantised and get no statistics.

Sources: Micikevicius et al., "FP8 Formats for Deep Learning" (2022) for the E4M3/E5M2 hybrid
and delayed scaling; NVIDIA Transformer Engine (``DelayedScaling``, ``Float8CurrentScaling``,
``MXFP8BlockScaling``, ``NVFP4BlockScaling`` recipes); OCP Microscaling Formats (MX)
Specification v1.0 (2023).

Examples
--------
>>> import torch
>>> m = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> with fp8_training(m, "delayed", keep=["2"]) as fp8:
...     m(torch.randn(16, 8)).sum().backward()
>>> sorted(fp8.stats), sorted(fp8.stats["0"])
(['0'], ['activation', 'gradient', 'weight'])
"""

from __future__ import annotations

import contextlib
import copy
import json
import types
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._json import plan_json
from ..recipes import DelayedScaling, block_scaling, block_scaling_rceil, current_scaling, recipe_format

__all__ = [
    "FP8_RECIPES", "MX_SCALES", "TAIL_SHARE", "FP8Plan", "FP8Training", "apply_fp8_plan", "fp8_training", "gemm_modules", "operand_formats",
    "quantize_tensor",
]

#: Recipe name -> (forward element format, gradient format under the hybrid recipe, gradient
#: format without it).  Per-tensor recipes name FP8 formats, block recipes block-scaled formats.
_RECIPE_FORMATS: dict[str, tuple[str, str, str]] = {
    "current": ("e4m3", "e5m2", "e4m3"),
    "delayed": ("e4m3", "e5m2", "e4m3"),
    "mxfp8": ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp8_e4m3"),
    "mxfp6": ("mxfp6_e2m3", "mxfp6_e3m2", "mxfp6_e2m3"),
    "mxfp4": ("mxfp4_e2m1", "mxfp4_e2m1", "mxfp4_e2m1"),
    "nvfp4": ("nvfp4", "nvfp4", "nvfp4"),
}
#: The recipes :func:`fp8_training` accepts.
FP8_RECIPES: tuple[str, ...] = tuple(_RECIPE_FORMATS)
_PER_TENSOR = ("current", "delayed")
#: How MX recipes choose the E8M0 block scale: ``"rceil"`` rounds it up so that the block's
#: largest element fits (Transformer Engine's MXFP8 quantiser; :func:`fpanalysis.recipes.
#: block_scaling_rceil`), ``"floor"`` is the OCP MX v1.0 specification's
#: ``floor(log2(amax)) - emax_elem``, which can saturate a block's largest elements
#: (:func:`fpanalysis.recipes.block_scaling`).
MX_SCALES = ("rceil", "floor")
_GEMM_TYPES = (nn.Linear, nn.Conv2d)
#: With ``measure_error``, each call also records its operand's *tail*: the magnitude that at most
#: this share of the elements exceed (the share the FP8 check calls material saturation).
TAIL_SHARE = 1e-3


def _check_recipe(recipe: Any) -> str:
    if recipe not in _RECIPE_FORMATS:
        raise ValueError(f"unknown FP8 recipe {recipe!r}; valid recipes are: {', '.join(FP8_RECIPES)}")
    return recipe


def operand_formats(recipe: str, hybrid: bool = True) -> dict[str, str]:
    """Element (per-tensor recipes) or block-scaled format of each operand role.

    >>> operand_formats("mxfp8")
    {'activation': 'mxfp8_e4m3', 'weight': 'mxfp8_e4m3', 'gradient': 'mxfp8_e5m2'}
    """
    fwd, g_h, g_p = _RECIPE_FORMATS[_check_recipe(recipe)]
    if recipe in _PER_TENSOR:
        return {r: recipe_format(r, hybrid) for r in ("activation", "weight", "gradient")}
    return {"activation": fwd, "weight": fwd, "gradient": g_h if hybrid else g_p}


def gemm_modules(model: nn.Module) -> list[str]:
    """Paths of the modules :func:`fp8_training` quantises (``nn.Linear`` and ``nn.Conv2d``)."""
    return [n for n, m in model.named_modules() if isinstance(m, _GEMM_TYPES)]


# ------------------------------------------------------------------------------------------
# Quantising torch tensors with the numpy quantisers of fpanalysis.recipes / fpanalysis.scaled
# ------------------------------------------------------------------------------------------


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


def _to_torch(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(like.device)


def quantize_tensor(t: torch.Tensor, fmt: str, axis: int = -1, *, margin: int = 0,
                    scaler: DelayedScaling | None = None, mx_scale: str = "rceil") -> tuple[torch.Tensor, Any]:
    """Quantise-dequantise a torch tensor: float32 result on ``t``'s device, and the
    :class:`fpanalysis.recipes.ScaledOperand` (counts, amax, scale).

    ``fmt`` ``"e4m3"``/``"e5m2"``: per-tensor current scaling (or ``scaler``, a
    :class:`~fpanalysis.recipes.DelayedScaling`, when given); otherwise a block-scaled format
    (:mod:`fpanalysis.scaled`) with blocks along ``axis``, MX scales chosen per ``mx_scale``
    (:data:`MX_SCALES`).
    """
    x = _to_numpy(t)
    if scaler is not None:
        r = scaler(x)
    elif fmt in ("e4m3", "e5m2"):
        r = current_scaling(x, fmt, margin)
    elif mx_scale == "rceil" and not fmt.startswith("nvfp4"):
        r = block_scaling_rceil(x, fmt, axis)
    else:
        r = block_scaling(x, fmt, axis)
    return _to_torch(r.values, t), r


def _tokens_last(t: torch.Tensor, feat: int) -> tuple[torch.Tensor, tuple[int, ...], list[int]]:
    """``t`` as a 2-D ``[features, tokens]`` array (tokens = every other axis, flattened)."""
    perm = [feat] + [d for d in range(t.ndim) if d != feat]
    p = t.permute(perm)
    return p.reshape(t.shape[feat], -1), tuple(p.shape), perm


def _from_tokens_last(a: torch.Tensor, pshape: tuple[int, ...], perm: list[int]) -> torch.Tensor:
    inv = [0] * len(perm)
    for i, d in enumerate(perm):
        inv[d] = i
    return a.reshape(pshape).permute(inv).contiguous()


@dataclass
class _OperandStats:
    calls: int = 0
    saturated: int = 0
    underflow: int = 0
    n: int = 0
    amax: list[float] = field(default_factory=list)
    saturation_per_call: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    tail: list[float] = field(default_factory=list)

    def add(self, r: Any) -> None:
        self.calls += 1
        self.saturated += int(r.saturated)
        self.underflow += int(r.underflow)
        self.n += int(r.n)
        self.amax.append(float(r.amax))
        self.saturation_per_call.append(r.saturated / r.n if r.n else 0.0)
        if r.scale is not None:
            self.scale.append(float(r.scale))

    def summary(self) -> dict[str, Any]:
        out = {
            "saturation": self.saturated / self.n if self.n else 0.0,
            "underflow": self.underflow / self.n if self.n else 0.0,
            "amax": list(self.amax),
            "calls": self.calls,
            "max_saturation": max(self.saturation_per_call, default=0.0),
            "saturating_calls": sum(1 for s in self.saturation_per_call if s > 0),
        }
        if self.scale:
            out["scale"] = list(self.scale)
        if self.tail:
            out["tail"] = list(self.tail)
        return out


class _GemmQuant:
    """The quantisers and statistics of one GEMM module."""

    def __init__(self, recipe: str, hybrid: bool, history_len: int, margin: int, measure_error: bool,
                 mx_scale: str = "rceil") -> None:
        self.recipe = recipe
        self.block = recipe not in _PER_TENSOR
        self.formats = operand_formats(recipe, hybrid)
        self.margin = margin
        self.mx_scale = mx_scale
        self.measure_error = measure_error
        self.scalers: dict[str, DelayedScaling] = {}
        if recipe == "delayed":
            self.scalers = {r: DelayedScaling(f, history_len, margin) for r, f in self.formats.items()}
        self.stats = {r: _OperandStats() for r in self.formats}
        self.rel_error: list[float] = []

    def quant(self, t: torch.Tensor, role: str, axis: int = -1, record: bool = True) -> torch.Tensor:
        q, r = quantize_tensor(t, self.formats[role], axis, margin=self.margin, scaler=self.scalers.get(role),
                               mx_scale=self.mx_scale)
        if record:
            self.stats[role].add(r)
            if self.measure_error:
                self.stats[role].tail.append(_tail(t))
        return q

    def quant_tokens(self, t: torch.Tensor, role: str, feat: int) -> torch.Tensor:
        """Block recipes: quantise with blocks along the tokens (every axis but ``feat``)."""
        a, pshape, perm = _tokens_last(t, feat)
        q = self.quant(a, role, -1, record=False)
        return _from_tokens_last(q, pshape, perm)


def _tail(t: torch.Tensor) -> float:
    """The magnitude that at most ``TAIL_SHARE`` of the finite elements of ``t`` exceed (the
    ``floor(share * n) + 1``-th largest magnitude)."""
    a = t.detach().abs().flatten().float()
    a = a[torch.isfinite(a)]
    n = a.numel()
    if n == 0:
        return 0.0
    k = int(TAIL_SHARE * n)
    return float(torch.kthvalue(a.cpu(), n - k).values)


@contextlib.contextmanager
def _exact_fp32(device: torch.device) -> Iterator[None]:
    """float32 products without TF32 on CUDA (cuDNN convolutions default to TF32)."""
    if device.type != "cuda":
        yield
        return
    prec = torch.get_float32_matmul_precision()
    conv_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prec)
        torch.backends.cudnn.allow_tf32 = conv_tf32


def _rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    d = (y.double() - ref.double()).norm().item()
    n = ref.double().norm().item()
    return d / n if n > 0 else d


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, q: _GemmQuant) -> torch.Tensor:
        with _exact_fp32(x.device):
            xq = q.quant(x, "activation", -1)
            wq = q.quant(w, "weight", -1)
            bf = b.float() if b is not None else None
            y = F.linear(xq, wq, bf)
            if q.measure_error:
                q.rel_error.append(_rel_error(y, F.linear(x.float(), w.float(), bf)))
        ctx.q = q
        ctx.has_bias = b is not None
        ctx.dtypes = (x.dtype, w.dtype, b.dtype if b is not None else None)
        if q.block:
            ctx.save_for_backward(x, w)
        else:
            ctx.save_for_backward(xq, wq)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple:
        q: _GemmQuant = ctx.q
        a, w_ = ctx.saved_tensors
        xdt, wdt, bdt = ctx.dtypes
        dx = dw = db = None
        with _exact_fp32(gy.device):
            g = gy.float()
            gq = q.quant(g, "gradient", -1)  # blocks along the output features (dgrad's reduction)
            if ctx.needs_input_grad[0]:
                wd = q.quant(w_, "weight", 0, record=False) if q.block else w_
                dx = (gq @ wd).to(xdt)
            if ctx.needs_input_grad[1]:
                g2 = g.reshape(-1, g.shape[-1])
                if q.block:
                    gw = q.quant(g2, "gradient", 0, record=False)
                    xw = q.quant(a.reshape(-1, a.shape[-1]), "activation", 0, record=False)
                else:
                    gw, xw = gq.reshape(-1, gq.shape[-1]), a.reshape(-1, a.shape[-1])
                dw = (gw.t() @ xw).to(wdt)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = g.reshape(-1, g.shape[-1]).sum(0).to(bdt)
        return dx, dw, db, None


class _Conv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, q: _GemmQuant,
                conv: tuple) -> torch.Tensor:
        stride, padding, dilation, groups = conv
        with _exact_fp32(x.device):
            xq = q.quant(x, "activation", 1)
            wq = q.quant(w, "weight", 1)
            bf = b.float() if b is not None else None
            y = F.conv2d(xq, wq, bf, stride, padding, dilation, groups)
            if q.measure_error:
                q.rel_error.append(_rel_error(y, F.conv2d(x.float(), w.float(), bf, stride, padding, dilation, groups)))
        ctx.q, ctx.conv = q, conv
        ctx.has_bias = b is not None
        ctx.dtypes = (x.dtype, w.dtype, b.dtype if b is not None else None)
        ctx.shapes = (x.shape, w.shape)
        ctx.save_for_backward(*((x, w) if q.block else (xq, wq)))
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple:
        q: _GemmQuant = ctx.q
        stride, padding, dilation, groups = ctx.conv
        a, w_ = ctx.saved_tensors
        xdt, wdt, bdt = ctx.dtypes
        xshape, wshape = ctx.shapes
        dx = dw = db = None
        with _exact_fp32(gy.device):
            g = gy.float()
            gq = q.quant(g, "gradient", 1)  # blocks along the output channels (dgrad's reduction)
            if ctx.needs_input_grad[0]:
                wd = q.quant(w_, "weight", 0, record=False) if q.block else w_
                dx = torch.nn.grad.conv2d_input(xshape, wd, gq, stride, padding, dilation, groups).to(xdt)
            if ctx.needs_input_grad[1]:
                if q.block:
                    gw = q.quant_tokens(g, "gradient", 1)
                    xw = q.quant_tokens(a, "activation", 1)
                else:
                    gw, xw = gq, a
                dw = torch.nn.grad.conv2d_weight(xw, wshape, gw, stride, padding, dilation, groups).to(wdt)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = g.sum((0, 2, 3)).to(bdt)
        return dx, dw, db, None, None


def _linear_forward(q: _GemmQuant) -> Any:
    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return _LinearFn.apply(x, self.weight, self.bias, q)
    return forward


def _same_pad(mod: nn.Conv2d) -> list[int]:
    """F.pad amounts for ``padding="same"`` (extra padding at the end, as torch does)."""
    pads: list[int] = []
    for d, k in zip(reversed(mod.dilation), reversed(mod.kernel_size)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return pads


def _conv_forward(q: _GemmQuant) -> Any:
    def forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        padding: Any = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        elif isinstance(padding, str):
            if padding == "same":
                x = F.pad(x, _same_pad(self))
            padding = (0, 0)
        return _Conv2dFn.apply(x, self.weight, self.bias, q, (self.stride, padding, self.dilation, self.groups))
    return forward


class FP8Training:
    """The context manager returned by :func:`fp8_training` (see there)."""

    def __init__(self, model: nn.Module, recipe: str = "delayed", *, keep: Iterable[str] = (), history_len: int = 16,
                 margin: int = 0, hybrid: bool = True, measure_error: bool = False, mx_scale: str = "rceil") -> None:
        self.recipe = _check_recipe(recipe)
        if mx_scale not in MX_SCALES:
            raise ValueError(f"unknown MX scale rule {mx_scale!r}; valid choices are: {', '.join(MX_SCALES)}")
        self.mx_scale = mx_scale
        if not isinstance(model, nn.Module):
            raise TypeError(f"fp8_training takes an nn.Module, got {type(model).__name__}")
        if isinstance(keep, str):
            keep = [keep]
        keep = list(keep)
        mods = dict(model.named_modules())
        bad = [k for k in keep if k not in mods]
        if bad:
            raise ValueError(f"keep names module(s) {bad} that the model does not have; its Linear/Conv2d modules "
                             f"are: {', '.join(gemm_modules(model)) or '(none)'}")
        if not isinstance(history_len, (int, np.integer)) or isinstance(history_len, bool) or history_len < 1:
            raise ValueError(f"history_len must be a positive integer, got {history_len!r}")
        if not isinstance(margin, (int, np.integer)) or isinstance(margin, bool) or margin < 0:
            raise ValueError(f"margin must be a non-negative integer, got {margin!r}")
        if margin and recipe not in _PER_TENSOR:
            raise ValueError(f"margin applies to the per-tensor recipes (current, delayed); the {recipe} recipe "
                             f"takes its block scales from the specification (use margin=0)")
        self.model = model
        self.keep = keep
        self.history_len = int(history_len)
        self.margin = int(margin)
        self.hybrid = bool(hybrid)
        self.measure_error = bool(measure_error)
        self.formats = operand_formats(recipe, hybrid)
        kept = set(keep)
        self.modules = [n for n in gemm_modules(model)
                        if not any(n == k or n.startswith(k + ".") or k == "" for k in kept)]
        self.kept_modules = [n for n in gemm_modules(model) if n not in self.modules]
        self._quant = {n: _GemmQuant(recipe, hybrid, self.history_len, self.margin, self.measure_error, mx_scale)
                       for n in self.modules}
        self._saved: dict[str, tuple[bool, Any]] = {}
        self.active = False

    def __enter__(self) -> FP8Training:  # noqa: PYI034
        if self.active:
            raise RuntimeError("this fp8_training context is already active")
        mods = dict(self.model.named_modules())
        try:
            for n in self.modules:
                mod = mods[n]
                self._saved[n] = ("forward" in mod.__dict__, mod.__dict__.get("forward"))
                make = _linear_forward if isinstance(mod, nn.Linear) else _conv_forward
                mod.forward = types.MethodType(make(self._quant[n]), mod)
        except BaseException:
            self._restore()
            raise
        self.active = True
        return self

    def _restore(self) -> None:
        mods = dict(self.model.named_modules())
        for n, (had, fwd) in self._saved.items():
            mod = mods.get(n)
            if mod is None:
                continue
            if had:
                mod.forward = fwd
            else:
                mod.__dict__.pop("forward", None)
        self._saved.clear()
        self.active = False

    def __exit__(self, *exc: object) -> None:
        self._restore()

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per GEMM module that ran: ``{"activation"|"weight"|"gradient": {"saturation": share,
        "underflow": share, "amax": [per call], "calls", "max_saturation", "saturating_calls",
        "scale": [per call, per-tensor recipes]}}``, and with ``measure_error`` ``"output":
        {"rel_error": [per forward call]}`` (``||Y_q - Y_fp32||_F / ||Y_fp32||_F``, float32
        products of the quantised and of the unquantised operands).  Shares are over every
        element of every call; the gradient's are those of the quantisation for ``dX`` and
        the activation's and weight's those of the forward."""
        out: dict[str, dict[str, Any]] = {}
        for n, q in self._quant.items():
            if not any(s.calls for s in q.stats.values()):
                continue
            d = {r: s.summary() for r, s in q.stats.items()}
            if self.measure_error:
                d["output"] = {"rel_error": list(q.rel_error)}
            out[n] = d
        return out

    def history(self, module: str, role: str) -> list[float]:
        """Delayed recipe: the amax history (oldest first) of one operand of one module."""
        if self.recipe != "delayed":
            raise ValueError(f"amax histories exist for the delayed recipe only (this one is {self.recipe!r})")
        if module not in self._quant:
            raise ValueError(f"no quantised GEMM module {module!r}; they are: {', '.join(self._quant)}")
        return list(self._quant[module].scalers[role].history)


def fp8_training(model: nn.Module, recipe: str = "delayed", *, keep: Iterable[str] = (), history_len: int = 16,
                 margin: int = 0, hybrid: bool = True, measure_error: bool = False, mx_scale: str = "rceil") -> FP8Training:
    """Context manager: inside it, the model's ``nn.Linear`` and ``nn.Conv2d`` compute as FP8 GEMMs.

    Parameters
    ----------
    model : nn.Module
    recipe : str
        One of :data:`FP8_RECIPES`: ``"current"``, ``"delayed"``, ``"mxfp8"``, ``"mxfp6"``,
        ``"mxfp4"``, ``"nvfp4"`` (module docstring; docs/scaled_formats.md).
    keep : iterable of str
        Module paths left unquantised, in the model's dtype (a path keeps every Linear/Conv2d
        under it).
    history_len, margin : int
        Delayed scaling's amax history length and, for both per-tensor recipes, the margin
        (``scale = (fmax / amax) / 2**margin``).
    hybrid : bool
        E5M2 gradients (E4M3 forward); ``False``: E4M3 throughout (MX recipes likewise).
    measure_error : bool
        Also compute every forward GEMM from the unquantised operands and record the relative
        error of the output (costs a second GEMM), and each operand's tail magnitude per call
        (``stats[module][operand]["tail"]``, see :data:`TAIL_SHARE`).
    mx_scale : {"rceil", "floor"}
        MX recipes' block scale: rounded up (Transformer Engine, default) or the OCP
        specification's (:data:`MX_SCALES`).

    Returns
    -------
    FP8Training
        Use it as ``with fp8_training(model, "delayed") as fp8: ...``; the forwards are patched
        on entry and restored on exit (exceptions included).  ``fp8.stats`` gives per-GEMM
        statistics (also after exit); the amax histories persist across entries of the same
        object.
    """
    return FP8Training(model, recipe, keep=keep, history_len=history_len, margin=margin, hybrid=hybrid,
                       measure_error=measure_error, mx_scale=mx_scale)


@dataclass
class FP8Plan:
    """How to train a model with emulated (or real) FP8 GEMMs: the recipe and its options, and the
    GEMM modules kept in the model's own dtype (bf16 or fp32).  Written by ``fpanalysis check
    --format fp8 --plan PATH``; applied with :func:`apply_fp8_plan` (or, with Transformer Engine,
    by building the recipe from these fields and leaving the ``keep`` modules outside
    ``fp8_autocast``).

    Attributes
    ----------
    recipe : str
        One of :data:`FP8_RECIPES`.
    keep : list of str
        Module paths computed without FP8 (``fp8_training``'s ``keep``).
    history_len, margin : int
        Delayed scaling's amax history length; the per-tensor recipes' margin.
    hybrid : bool
        E4M3 forward, E5M2 gradients.
    mx_scale : str
        MX recipes' block-scale rule (:data:`MX_SCALES`).
    verified : bool
        Whether the check's dry run verified the plan (it then matched fp32).

    Examples
    --------
    >>> p = FP8Plan("delayed", keep=["fc"], history_len=64)
    >>> FP8Plan.from_json(p.to_json()) == p
    True
    """

    recipe: str = "delayed"
    keep: list[str] = field(default_factory=list)
    history_len: int = 16
    margin: int = 0
    hybrid: bool = True
    mx_scale: str = "rceil"
    verified: bool = False
    format: str = "fp8"

    def __post_init__(self) -> None:
        _check_recipe(self.recipe)
        if self.mx_scale not in MX_SCALES:
            raise ValueError(f"unknown MX scale rule {self.mx_scale!r}; valid choices are: {', '.join(MX_SCALES)}")
        if self.format != "fp8":
            raise ValueError(f"an FP8 plan has format 'fp8', got {self.format!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | None = None) -> str:
        return plan_json(self.to_dict(), path)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FP8Plan:
        if not isinstance(d, dict):
            raise ValueError(f"an FP8 plan is a JSON object, got {type(d).__name__}")  # noqa: TRY004 - bad input
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown FP8-plan keys {bad}; valid keys are: {', '.join(sorted(known))}")
        return cls(**{k: copy.deepcopy(v) for k, v in d.items()})

    @classmethod
    def from_json(cls, text_or_path: str) -> FP8Plan:
        text = text_or_path
        if not text.lstrip().startswith("{"):
            with open(text_or_path) as fh:
                text = fh.read()
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        opts = [f"recipe {self.recipe}"]
        if self.recipe == "delayed":
            opts.append(f"amax history {self.history_len}")
        if self.margin:
            opts.append(f"margin {self.margin}")
        if not self.hybrid:
            opts.append("E4M3 gradients")
        if self.recipe.startswith("mx") and self.mx_scale != "rceil":
            opts.append(f"{self.mx_scale} block scales")
        if self.keep:
            opts.append(f"keep {', '.join(self.keep)} in bf16")
        return ", ".join(opts)


def apply_fp8_plan(model: nn.Module, plan: FP8Plan | dict | str, *, measure_error: bool = False) -> FP8Training:
    """The :func:`fp8_training` context of ``plan`` (an :class:`FP8Plan`, its dict, JSON text or
    a path to a JSON file) for ``model``.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    >>> with apply_fp8_plan(m, {"recipe": "current", "keep": ["1"]}) as fp8:
    ...     _ = m(torch.randn(3, 4))
    >>> list(fp8.stats), fp8.kept_modules
    (['0'], ['1'])
    """
    if isinstance(plan, dict):
        plan = FP8Plan.from_dict(plan)
    elif isinstance(plan, str):
        plan = FP8Plan.from_json(plan)
    elif not isinstance(plan, FP8Plan):
        raise TypeError(f"plan must be an FP8Plan, a dict or JSON, got {type(plan).__name__}")
    return fp8_training(model, plan.recipe, keep=plan.keep, history_len=plan.history_len, margin=plan.margin,
                        hybrid=plan.hybrid, measure_error=measure_error, mx_scale=plan.mx_scale)

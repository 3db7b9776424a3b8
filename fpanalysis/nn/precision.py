"""The precision policy of a training run, chosen by one string.

:func:`precision_policy` is the one place where a mode name becomes a setup:

=============  ===============  ==================  =============================================
mode           weights, grads,  forward / backward  loss scaling (``loss_scale="auto"``)
               optimizer state
=============  ===============  ==================  =============================================
``fp32``       float32          float32; TF32 off   none
``amp-fp16``   float32          autocast float16    dynamic, ``torch.amp.GradScaler``
``fp16``       float16          float16 (pure)      none (as the seed paper); static or dynamic
                                                    on request, unscaled in fp16
``bf16``       bfloat16         bfloat16 (pure)     none
``amp-bf16``   float32          autocast bfloat16   none
=============  ===============  ==================  =============================================

"Pure" means ``model.to(dtype)``: no fp32 master weights, the optimizer state takes the
parameters' dtype (torch's SGD and Adam keep state in the parameter dtype).  On CUDA, TF32 is
switched off for every mode so float32 really is float32 (otherwise matmuls and convolutions
silently round their inputs to 10 fraction bits); the reduced-precision split-K reduction of
fp16/bf16 GEMMs is left at the framework default unless asked.  Every flag is read back after
setup and returned in :attr:`PrecisionPolicy.flags` so that a result file says what ran.

Loss scaling (Micikevicius et al., "Mixed Precision Training", ICLR 2018): the loss is
multiplied by ``S`` before backward so that small gradients do not underflow, and the
gradients are divided by ``S`` before the step.  A dynamic scaler halves ``S`` and skips the
step when a gradient is inf/NaN, and doubles it after ``growth_interval`` clean steps.
``GradScaler`` refuses float16 gradients, so pure fp16 uses :class:`ManualLossScaler`, which
unscales in the gradients' own dtype (exact for a power-of-two ``S`` except where the
unscaled value underflows, which is what pure fp16 means) and caps ``S`` at ``2**15`` because
the loss gradient ``S`` itself must be finite in fp16.

>>> import torch
>>> from fpanalysis.nn.precision import precision_policy
>>> pol = precision_policy("fp16", "cpu", loss_scale="dynamic")
>>> pol.param_dtype, pol.autocast_dtype, pol.loss_scale, pol.scaler.scale
(torch.float16, None, 'dynamic', 32768.0)
>>> model = pol.prepare_model(torch.nn.Linear(3, 2))
>>> model.weight.dtype
torch.float16
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "PRECISION_MODES",
    "LOSS_SCALES",
    "PrecisionPolicy",
    "precision_policy",
    "LossScaler",
    "NoLossScaler",
    "ManualLossScaler",
    "AmpLossScaler",
    "backend_flags",
    "check_and_unscale_",
]

PRECISION_MODES = ("fp32", "amp-fp16", "fp16", "bf16", "amp-bf16")
LOSS_SCALES = ("auto", "none", "static", "dynamic")

_FP16_MAX_SCALE = 2.0 ** 15  # largest power of two whose fp16 value is finite
_HISTORY_LIMIT = 200


def _params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.grad for p in _params(optimizer) if p.grad is not None]


def check_and_unscale_(tensors: list[torch.Tensor], inv_scale: float = 1.0) -> torch.Tensor:
    """Multiply ``tensors`` in place by ``inv_scale`` and return a one-element float32 tensor
    that is 1.0 when any element is inf or NaN, 0.0 otherwise (no host synchronisation).

    Uses the fused kernel behind ``GradScaler`` (it accepts fp16 and bf16 tensors; the product
    is computed in fp32 and rounded to the tensor's dtype once), falling back to per-tensor
    checks where it is missing.

    >>> g = [torch.tensor([2.0, 4.0], dtype=torch.float16)]
    >>> check_and_unscale_(g, 0.5), g[0]
    (tensor([0.]), tensor([1., 2.], dtype=torch.float16))
    """
    dev = tensors[0].device if tensors else torch.device("cpu")
    found = torch.zeros(1, dtype=torch.float32, device=dev)
    if not tensors:
        return found
    inv = torch.full((1,), float(inv_scale), dtype=torch.float32, device=dev)
    fused = getattr(torch, "_amp_foreach_non_finite_check_and_unscale_", None)
    if fused is not None:
        fused(tensors, found, inv)
    else:  # pragma: no cover - older torch
        found = (~torch.stack([torch.isfinite(t).all() for t in tensors]).all()).float().reshape(1)
        if inv_scale != 1.0:
            torch._foreach_mul_(tensors, float(inv_scale))
    return found


class LossScaler:
    """Uniform interface over the loss-scaling strategies.

    Per step: ``scaler.scale_loss(loss).backward()``; ``found = scaler.unscale_(optimizer)``
    (gradients divided by the scale, returns the non-finite flag as a tensor without
    synchronising); ``scaler.step(optimizer, bool(found))`` returns ``True`` when the optimizer
    stepped.  Without dynamic scaling a non-finite gradient is not stepped on (``False``): the
    caller decides what that means (the training script calls it divergence).
    """

    kind = "none"
    dynamic = False

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)
        self.skipped_steps = 0
        self.steps = 0
        self._history: list[tuple[int, float]] = [(0, self.scale)]
        self._min = self._max = self.scale

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.scale != 1.0 else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        return check_and_unscale_(_grads(optimizer), 1.0 / self.scale)

    def step(self, optimizer: torch.optim.Optimizer, found_inf: bool) -> bool:
        self.steps += 1
        if found_inf:
            self.skipped_steps += 1
            return False
        optimizer.step()
        return True

    def _record(self, new_scale: float) -> None:
        if new_scale != self.scale:
            if len(self._history) < _HISTORY_LIMIT:
                self._history.append((self.steps, new_scale))
            self._min, self._max = min(self._min, new_scale), max(self._max, new_scale)
        self.scale = new_scale

    def summary(self) -> dict[str, Any]:
        """Loss-scale history: kind, initial/final/min/max scale, skipped steps, changes."""
        return {
            "kind": self.kind,
            "initial": self._history[0][1],
            "final": self.scale,
            "min": self._min,
            "max": self._max,
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "changes": len(self._history) - 1,
            "history": [list(h) for h in self._history],
            "history_truncated": len(self._history) >= _HISTORY_LIMIT,
        }


class NoLossScaler(LossScaler):
    """No scaling (scale 1)."""


class ManualLossScaler(LossScaler):
    """Static or dynamic loss scaling for parameters of any dtype (pure fp16 included).

    Parameters
    ----------
    init_scale : float
        Initial (static: fixed) scale; a power of two keeps unscaling exact.
    dynamic : bool
        On a non-finite gradient skip the step and multiply the scale by ``backoff_factor``;
        multiply it by ``growth_factor`` after ``growth_interval`` clean steps.
    max_scale : float
        Upper limit for growth (``2**15`` for fp16 parameters: ``S`` must be finite in fp16).
    """

    def __init__(self, init_scale: float, *, dynamic: bool, growth_interval: int = 2000,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5, max_scale: float = math.inf):
        if not init_scale > 0:
            raise ValueError(f"loss scale must be positive, got {init_scale}")
        super().__init__(min(init_scale, max_scale))
        self.kind = "dynamic" if dynamic else "static"
        self.dynamic = dynamic
        self.growth_interval, self.growth_factor = growth_interval, growth_factor
        self.backoff_factor, self.max_scale = backoff_factor, max_scale
        self._good = 0

    def step(self, optimizer: torch.optim.Optimizer, found_inf: bool) -> bool:
        stepped = super().step(optimizer, found_inf)
        if self.dynamic:
            if not stepped:
                self._good = 0
                self._record(self.scale * self.backoff_factor)
            else:
                self._good += 1
                if self._good >= self.growth_interval:
                    self._good = 0
                    self._record(min(self.scale * self.growth_factor, self.max_scale))
        return stepped


class AmpLossScaler(LossScaler):
    """``torch.amp.GradScaler`` (fp32 parameters) behind the same interface."""

    dynamic = True

    def __init__(self, device_type: str, init_scale: float, growth_interval: int = 2000):
        super().__init__(init_scale)
        self._gs = torch.amp.GradScaler(device_type, init_scale=init_scale, growth_interval=growth_interval)
        self.kind = "dynamic (GradScaler)"

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self._gs.scale(loss)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        self._gs.unscale_(optimizer)
        return check_and_unscale_(_grads(optimizer), 1.0)

    def step(self, optimizer: torch.optim.Optimizer, found_inf: bool) -> bool:
        self.steps += 1
        if found_inf:
            # Skip and back off ourselves: the caller's flag also covers a non-finite loss whose
            # gradients happen to be finite, which GradScaler alone would step on.
            self.skipped_steps += 1
            self._gs.update(new_scale=self.scale * self._gs.get_backoff_factor())
        else:
            self._gs.step(optimizer)
            self._gs.update()
        self._record(float(self._gs.get_scale()))
        return not found_inf


def _tf32_off() -> None:
    """Switch TF32 off for CUDA matmuls and cuDNN, through the new API when it exists."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv"):
        matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
    else:  # pragma: no cover - older torch
        matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def backend_flags() -> dict[str, Any]:
    """The precision-relevant backend flags as they stand now (JSON-serialisable)."""
    flags: dict[str, Any] = {"float32_matmul_precision": torch.get_float32_matmul_precision()}

    def read(name: str, getter):
        try:
            flags[name] = getter()
        except (RuntimeError, AttributeError) as exc:  # mixed legacy/new API states raise
            flags[name] = f"unreadable: {exc}".split(".")[0]

    m = torch.backends.cuda.matmul
    read("cuda.matmul.allow_tf32", lambda: bool(m.allow_tf32))
    read("cudnn.allow_tf32", lambda: bool(torch.backends.cudnn.allow_tf32))
    read("cuda.matmul.fp32_precision", lambda: str(m.fp32_precision))
    read("cudnn.conv.fp32_precision", lambda: str(torch.backends.cudnn.conv.fp32_precision))
    read("mkldnn.matmul.fp32_precision", lambda: str(torch.backends.mkldnn.matmul.fp32_precision))
    read("cuda.matmul.allow_fp16_reduced_precision_reduction",
         lambda: bool(m.allow_fp16_reduced_precision_reduction))
    read("cuda.matmul.allow_bf16_reduced_precision_reduction",
         lambda: bool(m.allow_bf16_reduced_precision_reduction))
    read("cudnn.deterministic", lambda: bool(torch.backends.cudnn.deterministic))
    read("cudnn.benchmark", lambda: bool(torch.backends.cudnn.benchmark))
    return flags


@dataclass
class PrecisionPolicy:
    """What a mode means for one run: dtypes, autocast, loss scaler, backend flags.

    Use :meth:`prepare_model` on the float32 model, :meth:`inputs` on each batch,
    ``with policy.autocast():`` around the forward pass and the loss, and ``policy.scaler`` for
    backward and the optimizer step.
    """

    mode: str
    device: torch.device
    param_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    loss_scale: str
    scaler: LossScaler
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def pure(self) -> bool:
        """True when weights, gradients and optimizer state are in reduced precision."""
        return self.param_dtype != torch.float32

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move the model to the device and the parameter dtype (buffers follow)."""
        return model.to(device=self.device, dtype=self.param_dtype)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Move a float input batch to the device and the dtype the model expects."""
        return x.to(device=self.device, dtype=self.param_dtype, non_blocking=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for the amp modes, a no-op otherwise."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description of the policy."""
        return {
            "mode": self.mode,
            "device": str(self.device),
            "param_dtype": str(self.param_dtype).replace("torch.", ""),
            "autocast_dtype": None if self.autocast_dtype is None else str(self.autocast_dtype).replace("torch.", ""),
            "loss_scale": self.loss_scale,
            "flags": self.flags,
        }


def precision_policy(
    mode: str,
    device: str | torch.device = "cpu",
    *,
    loss_scale: str = "auto",
    init_scale: float | None = None,
    growth_interval: int = 2000,
    reduced_precision_reduction: bool | None = None,
) -> PrecisionPolicy:
    """Turn a mode name into a :class:`PrecisionPolicy` (the one place this happens).

    Parameters
    ----------
    mode : str
        ``fp32``, ``amp-fp16``, ``fp16``, ``bf16`` or ``amp-bf16``.
    device : str or torch.device
        ``"cpu"`` or ``"cuda"`` (``"cuda:N"``); the same policy code serves both.
    loss_scale : str
        ``auto`` (dynamic GradScaler for amp-fp16, none otherwise), ``none``, ``static`` or
        ``dynamic``.
    init_scale : float or None
        Initial (static: fixed) scale.  Default: ``2**16`` for GradScaler, ``2**15`` for a
        dynamic scaler on fp16 parameters, ``1024`` for static scaling.
    growth_interval : int
        Clean steps before a dynamic scale doubles.
    reduced_precision_reduction : bool or None
        Sets ``torch.backends.cuda.matmul.allow_{fp16,bf16}_reduced_precision_reduction`` on
        CUDA; ``None`` leaves the framework default.  Recorded either way.

    Notes
    -----
    On CUDA this changes process-global backend flags (TF32 off); the flags read back after
    setup are in ``policy.flags``.

    >>> precision_policy("amp-fp16").scaler.kind
    'dynamic (GradScaler)'
    >>> precision_policy("fp8")
    Traceback (most recent call last):
    ...
    ValueError: unknown precision mode 'fp8'; valid modes are: fp32, amp-fp16, fp16, bf16, amp-bf16
    """
    if mode not in PRECISION_MODES:
        raise ValueError(f"unknown precision mode {mode!r}; valid modes are: {', '.join(PRECISION_MODES)}")
    if loss_scale not in LOSS_SCALES:
        raise ValueError(f"unknown loss_scale {loss_scale!r}; valid values are: {', '.join(LOSS_SCALES)}")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(dev)!r}; valid devices are: cpu, cuda")

    param_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode, torch.float32)
    autocast_dtype = {"amp-fp16": torch.float16, "amp-bf16": torch.bfloat16}.get(mode)

    if loss_scale == "auto":
        loss_scale = "dynamic" if mode == "amp-fp16" else "none"
    max_scale = _FP16_MAX_SCALE if param_dtype == torch.float16 else math.inf
    scaler: LossScaler
    if loss_scale == "none":
        scaler = NoLossScaler()
    elif loss_scale == "dynamic" and param_dtype == torch.float32:
        scaler = AmpLossScaler(dev.type, init_scale or 2.0 ** 16, growth_interval)
    elif loss_scale == "dynamic":
        scaler = ManualLossScaler(init_scale or 2.0 ** 15, dynamic=True, growth_interval=growth_interval,
                                  max_scale=max_scale)
    else:
        scaler = ManualLossScaler(init_scale or 1024.0, dynamic=False, max_scale=max_scale)

    if dev.type == "cuda":
        _tf32_off()
        if reduced_precision_reduction is not None:
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = reduced_precision_reduction
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = reduced_precision_reduction
    flags = backend_flags()
    flags["tf32_disabled_by_policy"] = dev.type == "cuda"
    flags["reduced_precision_reduction_requested"] = reduced_precision_reduction
    return PrecisionPolicy(mode, dev, param_dtype, autocast_dtype, loss_scale, scaler, flags)

"""A shadow low-precision dry run: train a few steps with the format's arithmetic, beside fp32.

The dry run answers "what happens in the first N steps of pure low-precision training?" by
running it, op by op, on the CPU:

* every aten operation of the forward pass, the backward pass and the optimizer step is computed
  in float32 ("opmath") and its floating-point output is rounded to the format -- the
  ``fp32-accumulate`` arithmetic of docs/semantics.md, which is how PyTorch's fp16/bf16 kernels
  compute (matrix products and reductions accumulate in fp32, one rounding per op output);
* parameters, buffers (BatchNorm running statistics) and optimizer state are stored as values of
  the format, as ``model.half()`` training stores them: an update ``w + d`` that rounds back to
  ``w`` is lost (stagnation);
* an fp32 run starts from the same weights and sees the same batches.

The rounding is a :class:`torch.utils._python_dispatch.TorchDispatchMode` (the mechanism torch's
own FLOP counter uses), so functional calls, in-place ops and hand-written arithmetic inside
``forward`` are rounded like module calls.  fp16 and bf16 round with torch's own conversion
(float32 -> float16/bfloat16 -> float32, round-to-nearest-even with the format's overflow to inf;
the tests compare it with :func:`fpanalysis.rounding.round_to` on every class of value); every
other format rounds with :func:`fpanalysis.rounding.round_to`.

What is measured (:class:`DryRunResult`): divergence (first non-finite loss, and the first op,
module path, phase and step whose output overflowed or became non-finite), the loss gap and the
accuracy gap (train and eval mode) to fp32, update stagnation weighed by the loss decrease the lost
updates would have brought (first order: ``sum(g * lost update)`` against the fp32 step's
``sum(g * update)``), buffer overflow and buffer updates lost to rounding, and the trend of every
range per step, extrapolated to "overflows in about N steps".  Given the caller's plateau state
(:func:`plateau_state`: fp32 has not started to learn over everything observed), losing most
updates on a plateau fails too, since the first-order weighing is blind there (docs/theory.md
§4.8).

Changes are :class:`Fix` objects applied to a :class:`PrecisionPlan`; :func:`verify_fixes` runs
the dry run again with each and keeps only those after which the shadow run matches fp32 within
:data:`DRY_RUN_THRESHOLDS`.  :func:`apply_precision_plan` applies a plan to a real model for real
fp16/bf16 training.

Sources: update stagnation and fp32 master weights, loss scaling -- Micikevicius et al., "Mixed
Precision Training", ICLR 2018; stochastic rounding of updates -- Zamirai et al., "Revisiting
BFloat16 Training", arXiv:2010.06192 (2020).  See docs/theory.md §4.7 for the method and
docs/semantics.md for the arithmetic it models.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .._json import plan_json
from ..formats import BF16, FP16, FloatFormat, Overflow, get_format
from ..rounding import fits_float32, round_to

__all__ = [
    "DRY_RUN_THRESHOLDS",
    "FIX_NAMES",
    "DryRunResult",
    "Fix",
    "FixResult",
    "PlanTrainer",
    "PrecisionPlan",
    "ShadowRounding",
    "apply_precision_plan",
    "dry_run",
    "judge_dry_run",
    "plateau_state",
    "propose_fixes",
    "range_trends",
    "recommended_plan",
    "tensor_rounder",
    "verify_fixes",
]

#: Thresholds of the dry run's judgement ("does the shadow run match fp32?").
DRY_RUN_THRESHOLDS: dict[str, float] = {
    # loss of the last quarter of the steps, relative to fp32's
    "loss_gap_warn": 0.05,
    "loss_gap_fail": 0.25,
    # accuracy on held-out inputs (train-mode and eval-mode forward), fp32 minus shadow
    "accuracy_gap_warn": 0.01,
    "accuracy_gap_fail": 0.05,
    # share of held-out inputs whose shadow class equals the fp32 class
    "agreement_fail": 0.90,
    # first-order loss decrease lost to stagnation, as a share of fp32's first-order decrease
    "stagnation_warn": 0.10,
    "stagnation_fail": 0.30,
    # buffer entries whose update rounded away (running statistics stall)
    "buffer_stall_warn": 0.50,
    # a range whose trend reaches the format's max within this many steps is reported ...
    "trend_horizon_steps": 1000.0,
    # ... and fails within this many (an overflow inside any real training run's first epoch)
    # when the range is already within this factor of the max (a straight line is trusted over
    # a short distance only)
    "trend_fail_steps": 100.0,
    "trend_fail_headroom": 4.0,
    # a plateau: fp32's loss fell by less than this share of its first value over everything the
    # check observed (warm-up and dry runs) -- the model has not started to learn yet ...
    "plateau_progress": 0.10,
    # ... and on a plateau, losing more than this share of the nonzero updates fails (the
    # first-order weighing cannot see it there; docs/theory.md §4.8)
    "plateau_lost_fail": 0.50,
}

#: Losses below this are compared in absolute terms (the loss gap divides by at least this).
LOSS_FLOOR = 0.1

FIX_NAMES = (
    "adam-eps",
    "loss-scale",
    "fp32-master-weights",
    "fp32-modules",
    "fp32-ops",
    "input-scale",
    "weight-scale",
    "stochastic-rounding",
)

OPTIMIZERS = ("sgd", "adam", "adamw")


# ------------------------------------------------------------------------------------------
# Plans and fixes
# ------------------------------------------------------------------------------------------


@dataclass
class PrecisionPlan:
    """How to train a model in a low-precision format; machine readable (:meth:`to_json`).

    Attributes
    ----------
    format, profile : str
        Target format name and arithmetic profile (docs/semantics.md).
    fp32_modules : list of str
        Module paths kept in float32 (parameters, buffers and arithmetic), with casts at their
        boundaries.
    fp32_ops : list of dict
        Op types kept in float32: ``{"op": "bmm", "module": "blocks.0.attn" or None}`` (aten op
        names without overload; ``module`` limits the forward op to that module's subtree).
    master_weights : bool
        fp32 master copy of the parameters and fp32 optimizer state (mixed precision).
    optimizer : dict
        Settings for the optimizer (``eps``).
    loss_scale : dict or None
        ``{"mode": "static", "scale": S}`` or ``{"mode": "dynamic", "scale": S0,
        "growth_interval": n}``.
    input_scale : float
        Inputs are multiplied by this (a power of two) before the first layer.
    weight_scale : dict
        Module path -> factor multiplying that module's ``weight`` once, before training.
    stochastic_rounding : bool
        Updated parameters are rounded stochastically to the format (not to nearest).
    """

    format: str = "fp16"
    profile: str = "fp32-accumulate"
    fp32_modules: list[str] = field(default_factory=list)
    fp32_ops: list[dict[str, Any]] = field(default_factory=list)
    master_weights: bool = False
    optimizer: dict[str, Any] = field(default_factory=dict)
    loss_scale: dict[str, Any] | None = None
    input_scale: float = 1.0
    weight_scale: dict[str, float] = field(default_factory=dict)
    stochastic_rounding: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | None = None) -> str:
        return plan_json(self.to_dict(), path)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrecisionPlan:
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known - {"verified"})
        if bad:
            raise ValueError(f"unknown precision-plan keys {bad}; valid keys are: {', '.join(sorted(known))}")
        return cls(**{k: copy.deepcopy(v) for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, text_or_path: str) -> PrecisionPlan:
        text = text_or_path
        if not text.lstrip().startswith("{"):
            with open(text_or_path) as fh:
                text = fh.read()
        return cls.from_dict(json.loads(text))

    def is_empty(self) -> bool:
        return self == PrecisionPlan(format=self.format, profile=self.profile)


@dataclass(frozen=True)
class Fix:
    """One proposed change: a name from :data:`FIX_NAMES` and its parameters.

    >>> Fix("adam-eps", {"eps": 1e-4}).describe()
    'raise Adam eps to 0.0001'
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.name not in FIX_NAMES:
            raise ValueError(f"unknown fix {self.name!r}; valid fixes are: {', '.join(FIX_NAMES)}")

    def describe(self) -> str:
        p = self.params
        if self.name == "adam-eps":
            return f"raise Adam eps to {p['eps']:g}"
        if self.name == "loss-scale":
            if p.get("mode") == "dynamic":
                return f"dynamic loss scaling (initial scale {p.get('scale', 2.0**15):g})"
            return f"static loss scaling with S = {p['scale']:g}"
        if self.name == "fp32-master-weights":
            return "keep fp32 master weights and optimizer state (mixed precision)"
        if self.name == "fp32-modules":
            return f"keep module(s) {', '.join(p['modules'])} in fp32 (casts at their boundaries)"
        if self.name == "fp32-ops":
            where = f" in {p['module']}" if p.get("module") else ""
            return f"compute op(s) {', '.join(p['ops'])}{where} in fp32"
        if self.name == "input-scale":
            return f"multiply the inputs by {p['factor']:g} (normalise the data)"
        if self.name == "weight-scale":
            return f"multiply the weights of {', '.join(p['modules'])} by {p['factor']:g}"
        return "round parameter updates stochastically"

    def apply(self, plan: PrecisionPlan) -> PrecisionPlan:
        """A new plan with this change made."""
        out = copy.deepcopy(plan)
        p = self.params
        if self.name == "adam-eps":
            out.optimizer["eps"] = float(p["eps"])
        elif self.name == "loss-scale":
            mode = p.get("mode", "static")
            if mode not in ("static", "dynamic"):
                raise ValueError(f"loss-scale mode must be 'static' or 'dynamic', got {mode!r}")
            out.loss_scale = {"mode": mode, "scale": float(p.get("scale", 2.0**15))}
            if mode == "dynamic":
                out.loss_scale["growth_interval"] = int(p.get("growth_interval", 2000))
        elif self.name == "fp32-master-weights":
            out.master_weights = True
        elif self.name == "fp32-modules":
            out.fp32_modules = sorted(set(out.fp32_modules) | set(p["modules"]))
        elif self.name == "fp32-ops":
            for op in p["ops"]:
                entry = {"op": op, "module": p.get("module")}
                if entry not in out.fp32_ops:
                    out.fp32_ops.append(entry)
        elif self.name == "input-scale":
            out.input_scale = float(out.input_scale * p["factor"])
        elif self.name == "weight-scale":
            for m in p["modules"]:
                out.weight_scale[m] = float(out.weight_scale.get(m, 1.0) * p["factor"])
        else:
            out.stochastic_rounding = True
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params), "description": self.describe()}


# ------------------------------------------------------------------------------------------
# Rounding torch tensors
# ------------------------------------------------------------------------------------------


def _same_numbers(a: FloatFormat, b: FloatFormat) -> bool:
    return (a.p, a.emin, a.emax, a.subnormals, a.overflow, a.max_significand) == (
        b.p, b.emin, b.emax, b.subnormals, b.overflow, b.max_significand)


def tensor_rounder(fmt: str | FloatFormat) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function rounding a float32 tensor to ``fmt`` (round to nearest even), returning float32.

    fp16 and bf16 (IEEE overflow to inf) use torch's own conversion, which is round-to-nearest-
    even with overflow to inf; any other format fitting float32 uses
    :func:`fpanalysis.rounding.round_to`.

    >>> import torch
    >>> tensor_rounder("fp16")(torch.tensor([1 + 2**-11, 65520.0, 1e-8])).tolist()
    [1.0, inf, 0.0]
    """
    f = get_format(fmt)
    if not fits_float32(f):
        raise ValueError(f"the dry run holds values in float32, which cannot hold every number of {f.name}; "
                         "choose a format whose range and precision fit float32 (fp16, bf16, fp8, ...)")
    dtype = None
    for ref, dt in ((FP16, torch.float16), (BF16, torch.bfloat16)):
        if _same_numbers(f, ref) and f.overflow is Overflow.INF:
            dtype = dt
    if dtype is not None:
        def fast(t: torch.Tensor) -> torch.Tensor:
            return t.to(dtype).to(t.dtype)
        fast.native_dtype = dtype  # type: ignore[attr-defined]
        return fast

    def general(t: torch.Tensor) -> torch.Tensor:
        a = t.detach().cpu().to(torch.float32).contiguous().numpy()
        return torch.from_numpy(np.asarray(round_to(a, f, dtype=np.float32))).to(device=t.device, dtype=t.dtype)
    return general


def _inplace_rounder(fmt: FloatFormat, rounder: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], None]:
    dtype = getattr(rounder, "native_dtype", None)
    if dtype is not None:
        return lambda t: t.copy_(t.to(dtype))
    return lambda t: t.copy_(rounder(t))


def _stochastic_round(t: torch.Tensor, fmt: FloatFormat, seed: int, stream: int) -> torch.Tensor:
    a = t.detach().cpu().to(torch.float32).contiguous().numpy()
    r = round_to(a, fmt, mode="stochastic", seed=seed, stream=stream, dtype=np.float32)
    return torch.from_numpy(np.asarray(r)).to(device=t.device, dtype=t.dtype)


_BN_OPS = {"native_batch_norm", "_native_batch_norm_legit", "_batch_norm_with_update", "batch_norm"}
# ops whose outputs are exact copies or constants that need no rounding ("copy_" into a stored
# tensor is rounded by the dry run itself where the destination is stored in the format)
_NO_ROUND = {"copy_", "detach", "lift_fresh", "empty", "empty_like", "zeros", "zeros_like", "alias"}
# ops whose outputs are some of their inputs' values (or zeros) unchanged: when every floating
# input holds values of the format -- as every tensor of the shadow run does -- rounding their
# output changes nothing, so it is skipped (rounding is idempotent)
_EXACT = {"relu", "threshold_backward", "max_pool2d_with_indices", "max_pool3d_with_indices", "clone", "neg",
          "abs", "cat", "stack", "gather", "index_select", "select_backward", "slice_backward", "permute_copy",
          "transpose_copy", "hardtanh"}


def _packet(func: Any) -> str:
    return func.overloadpacket.__name__.split(".")[-1]


class ShadowRounding(TorchDispatchMode):
    """Rounds the floating outputs (and mutated floating arguments) of every aten op to a format.

    Parameters
    ----------
    rounder : callable
        ``float32 tensor -> rounded float32 tensor`` (see :func:`tensor_rounder`).
    fmt : FloatFormat
        The format (for the overflow threshold in the statistics).
    tracker : _Tracker, optional
        Receives per-op maxima, overflow and non-finite events and buffer updates.

    The mode keeps no rounding where the shadow run says a module or op stays in fp32: inside
    the forward of a module in :attr:`fp32_scopes`, for backward nodes in :attr:`fp32_nodes`,
    for op names in :attr:`fp32_ops`, and for in-place writes to tensors in :attr:`exempt` (the
    parameters during the optimizer step, which the dry run rounds itself).
    """

    def __init__(self, rounder: Callable[[torch.Tensor], torch.Tensor], fmt: FloatFormat,
                 tracker: _Tracker | None = None) -> None:
        super().__init__()
        self.rounder = rounder
        self.round_ = _inplace_rounder(fmt, rounder)
        self.fmt = fmt
        self.tracker = tracker
        self.scope: list[str] = []
        self.fp32_depth = 0
        self.fp32_nodes: set[Any] = set()
        self.fp32_ops: list[tuple[str, str | None]] = []
        self.fp32_backward_ops: set[str] = set()
        self.exempt: set[int] = set()
        self.phase = "forward"
        self.buffers: dict[int, str] = {}

    def _keep_fp32(self, name: str) -> bool:
        if self.fp32_depth > 0:
            return True
        node = torch._C._current_autograd_node()
        if node is not None:
            if node in self.fp32_nodes:
                return True
            if self.fp32_backward_ops:
                base = node.name().split("::")[-1].lower()
                return any(base.startswith(op) for op in self.fp32_backward_ops)
            return False
        path = self.scope[-1] if self.scope else ""
        for op, mod in self.fp32_ops:
            if op == name and (mod is None or path == mod or path.startswith(mod + ".")):
                return True
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = _packet(func)
        keep = self._keep_fp32(name)
        schema = func._schema
        mutated: list[torch.Tensor] = []
        for i, a in enumerate(schema.arguments):
            if a.alias_info is not None and a.alias_info.is_write:
                v = kwargs.get(a.name) if a.name in kwargs else (args[i] if i < len(args) else None)
                if isinstance(v, torch.Tensor):
                    mutated.append(v)
        if name in _BN_OPS:
            for i in (3, 4):
                if i < len(args) and isinstance(args[i], torch.Tensor) and all(args[i] is not m for m in mutated):
                    mutated.append(args[i])
        old_buffers = []
        if self.tracker is not None:
            for m in mutated:
                bname = self.buffers.get(id(m))
                if bname is not None and m.is_floating_point():
                    old_buffers.append((bname, m, m.detach().clone()))
        out = func(*args, **kwargs)
        if keep or name in _NO_ROUND or (name in _EXACT and not self.fp32_depth and not self.exempt):
            return out
        for bname, m, old in old_buffers:
            self.tracker.buffer_update(bname, old, m)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        targets: list[torch.Tensor] = []
        for r, o in zip(schema.returns, outs):
            if isinstance(o, torch.Tensor) and o.is_floating_point() and (r.alias_info is None or r.alias_info.is_write):
                targets.append(o)
        for m in mutated:
            if m.is_floating_point() and id(m) not in self.exempt and all(m is not t for t in targets):
                targets.append(m)
        for t in targets:
            if id(t) in self.exempt or t.numel() == 0:
                continue
            self.round_(t)
            if self.tracker is not None and self.phase == "forward":
                self.tracker.op_output(self, name, t, args)
        return out


# ------------------------------------------------------------------------------------------
# What the dry run records
# ------------------------------------------------------------------------------------------


class _Tracker:
    """Per-step maxima of every range, the first overflow and non-finite ops, buffer updates."""

    def __init__(self, fmt: FloatFormat) -> None:
        self.fmt = fmt
        self.step = 0
        self.step_max: dict[str, float] = {}
        self.series: dict[str, list[float]] = {}
        self.first_nonfinite: dict[str, Any] | None = None
        self.buffers: dict[str, dict[str, float]] = {}

    def op_output(self, mode: ShadowRounding, name: str, t: torch.Tensor, args: Any) -> None:
        """``t`` is the op's output after rounding."""
        lo, hi = torch.aminmax(t.detach().reshape(-1))
        amax = max(-float(lo), float(hi))
        if mode.phase == "backward":
            node = torch._C._current_autograd_node()
            where = node.name() if node is not None else "?"
        else:
            where = mode.scope[-1] if mode.scope else "<model>"
        key = f"{mode.phase}:{where}:{name}"
        if not amax <= self.step_max.get(key, 0.0):
            self.step_max[key] = amax
        if not math.isfinite(amax) and self.first_nonfinite is None:
            ins: list[torch.Tensor] = []
            _map_tensors(list(args), lambda a: (ins.append(a), a)[1])
            if all(bool(torch.isfinite(a).all()) for a in ins if a is not t):
                self.first_nonfinite = {"step": self.step, "phase": mode.phase, "op": name, "module": where,
                                        "key": key, "max_abs": amax}

    def buffer_update(self, name: str, old: torch.Tensor, new_exact: torch.Tensor) -> None:
        # new_exact is the fp32 result before rounding; the rounding decides what is kept
        r = tensor_rounder_cache(self.fmt)(new_exact)
        changed = new_exact != old
        lost = changed & (r == old)
        sub = (r != 0) & (r.abs() < self.fmt.min_normal)
        ovf = ~torch.isfinite(r) & torch.isfinite(new_exact)
        st = self.buffers.setdefault(name, {"updates": 0, "changed": 0, "lost": 0, "subnormal": 0,
                                            "overflow": 0, "numel": int(r.numel())})
        st["updates"] += 1
        st["changed"] += int(changed.sum())
        st["lost"] += int(lost.sum())
        st["subnormal"] = int(sub.sum())
        st["overflow"] += int(ovf.sum())

    def record(self, key: str, t: torch.Tensor) -> float:
        """Record ``max|t|`` for this step under ``key``; returns it."""
        if not t.numel():
            return 0.0
        lo, hi = torch.aminmax(t.detach().reshape(-1))
        amax = max(-float(lo), float(hi))
        if not amax <= self.step_max.get(key, 0.0):
            self.step_max[key] = amax
        return amax

    def end_step(self) -> None:
        for k, v in self.step_max.items():
            self.series.setdefault(k, []).append(v)
        self.step_max = {}
        self.step += 1


_ROUNDERS: dict[FloatFormat, Callable[[torch.Tensor], torch.Tensor]] = {}


def tensor_rounder_cache(fmt: FloatFormat) -> Callable[[torch.Tensor], torch.Tensor]:
    if fmt not in _ROUNDERS:
        _ROUNDERS[fmt] = tensor_rounder(fmt)
    return _ROUNDERS[fmt]


def range_trends(series: dict[str, list[float]], fmt: FloatFormat, horizon: float) -> list[dict[str, Any]]:
    """Fit a straight line to ``max|x|`` per step over the second half of each series (least
    squares) and extrapolate it to the format's max: ``steps = (max - last) / slope``.

    A linear extrapolation: growth that compounds (a diverging run) reaches the max sooner than
    it says, and a quantity that saturates (a running average settling) later.  Returns the
    ranges predicted to overflow within ``horizon`` steps, nearest first.
    """
    out = []
    for key, vals in series.items():
        v = np.asarray(vals, dtype=np.float64)
        if v.size < 4 or not np.all(np.isfinite(v)):
            continue
        tail = v[v.size // 2:]
        xs = np.arange(tail.size, dtype=np.float64)
        slope = float(np.polyfit(xs, tail, 1)[0])
        if slope <= 0:
            continue
        if float(np.max(tail)) > fmt.max:  # held beyond the format (kept in fp32 by a plan): cannot overflow it
            continue
        steps = (fmt.max - float(tail[-1])) / slope
        if steps < horizon:
            out.append({"range": key, "last_max": float(v[-1]), "growth_per_step": slope,
                        "steps_to_overflow": max(0.0, steps), "headroom": fmt.max / max(float(v[-1]), 1e-300)})
    return sorted(out, key=lambda r: r["steps_to_overflow"])


# ------------------------------------------------------------------------------------------
# One training run (fp32 reference, or the shadow run under a plan)
# ------------------------------------------------------------------------------------------


class _Boundary(torch.autograd.Function):
    """Identity with a dispatched op both ways: a cast at the edge of an fp32 module (rounded by
    the mode when it runs outside the fp32 scope)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.mul(1.0)  # not clone: the mode skips rounding clones (values unchanged)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g.mul(1.0)


@dataclass
class _OptSpec:
    name: str = "sgd"
    lr: float = 0.01
    eps: float = 1e-8
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def build(self, params: list[torch.Tensor], eps: float | None = None) -> torch.optim.Optimizer | None:
        if not params:
            return None
        e = self.eps if eps is None else eps
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, eps=e, betas=self.betas, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, eps=e, betas=self.betas, weight_decay=self.weight_decay)


def _module_set(model: nn.Module, names: Iterable[str]) -> set[str]:
    mods = dict(model.named_modules())
    out = set()
    for n in names:
        if n not in mods:
            valid = ", ".join(k for k in list(mods)[:20] if k)
            raise ValueError(f"the plan names module {n!r}, which the model does not have; its modules include: {valid}")
        out.add(n)
    return out


def _under(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _map_tensors(x: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(x, torch.Tensor):
        return fn(x) if x.is_floating_point() else x
    if isinstance(x, tuple):
        return tuple(_map_tensors(v, fn) for v in x)
    if isinstance(x, list):
        return [_map_tensors(v, fn) for v in x]
    return x


def _graph_nodes(outputs: Any, stop: set[Any]) -> set[Any]:
    """Autograd nodes between ``outputs`` and the nodes in ``stop`` (exclusive)."""
    roots = []
    _map_tensors(outputs, lambda t: (roots.append(t.grad_fn), t)[1])
    seen: set[Any] = set()
    todo = [r for r in roots if r is not None]
    while todo:
        n = todo.pop()
        if n in seen or n in stop:
            continue
        seen.add(n)
        for nxt, _ in n.next_functions:
            if nxt is not None:
                todo.append(nxt)
    return seen


@dataclass
class _Trace:
    """What one training run recorded."""

    losses: list[float] = field(default_factory=list)
    decrease: list[float] = field(default_factory=list)  # first-order loss decrease of each step
    lost_decrease: list[float] = field(default_factory=list)
    lost: int = 0
    nonzero: int = 0
    per_param: dict[str, list[float]] = field(default_factory=dict)  # name -> [lost decrease, lost, n]
    diverged_step: int | None = None
    skipped_steps: int = 0
    final_scale: float | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    tracker: _Tracker | None = None
    seconds: float = 0.0
    steps_run: int = 0


def _evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, mode: ShadowRounding | None,
              prep: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
    """Predictions in train mode (batch statistics; buffers restored after) and eval mode."""
    out: dict[str, Any] = {}
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for label, train in (("train", True), ("eval", False)):
        model.train(train)
        preds = []
        with torch.no_grad():
            for i in range(0, X.shape[0], 256):
                xb = prep(X[i:i + 256])
                if mode is not None:
                    mode.phase = "eval"
                    with mode:
                        logits = model(xb)
                else:
                    logits = model(xb)
                bad = ~torch.isfinite(logits).all(dim=1)
                p = logits.argmax(dim=1)
                p[bad] = -1  # a non-finite row predicts nothing
                preds.append(p)
        pr = torch.cat(preds)
        out[label] = {"pred": pr, "accuracy": float((pr == y).float().mean())}
        model.load_state_dict(saved)
    model.train()
    return out


def _recipe(plan: PrecisionPlan | None, spec: _OptSpec) -> tuple:
    """The parts of a plan that change the training recipe itself (they act in fp32 too)."""
    if plan is None:
        return (spec.eps, 1.0, ())
    return (float(plan.optimizer.get("eps", spec.eps)), float(plan.input_scale), tuple(sorted(plan.weight_scale.items())))


def _scale_weights(model: nn.Module, weight_scale: dict[str, float] | Iterable[tuple[str, float]]) -> None:
    mods = dict(model.named_modules())
    items = weight_scale.items() if isinstance(weight_scale, dict) else weight_scale
    with torch.no_grad():
        for mname, factor in items:
            if mname not in mods or not isinstance(getattr(mods[mname], "weight", None), torch.Tensor):
                raise ValueError(f"weight-scale names module {mname!r}, which has no 'weight' parameter")
            mods[mname].weight.mul_(factor)


def _train(model0: nn.Module, batches: Sequence[tuple[Any, torch.Tensor]], eval_data: tuple[torch.Tensor, torch.Tensor] | None,
           spec: _OptSpec, plan: PrecisionPlan | None, fmt: FloatFormat | None, loss_fn: Callable,
           seed: int, progress: Callable[[int], None] | None = None, recipe: tuple | None = None) -> _Trace:
    """Train a copy of ``model0`` on ``batches``: in fp32 (``fmt is None``, following ``recipe``:
    Adam eps, input scale, weight scale) or as the shadow run under ``plan``."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = copy.deepcopy(model0).float()
    model.train()
    tr = _Trace()
    shadow = fmt is not None
    if not shadow:
        r_eps, r_in, r_w = recipe if recipe is not None else _recipe(None, spec)
        _scale_weights(model, r_w)

        def prep32(x: torch.Tensor) -> torch.Tensor:
            return x.float() * r_in if x.is_floating_point() and r_in != 1.0 else x
        opt = spec.build(list(model.parameters()), r_eps)
        for step, (xb, yb) in enumerate(batches):
            params = [p for p in model.parameters()]
            old = [p.detach().clone() for p in params]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(prep32(xb)), yb)
            tr.losses.append(float(loss.detach()))
            if not math.isfinite(tr.losses[-1]):
                tr.diverged_step = step
                break
            loss.backward()
            grads = [p.grad.detach().clone() if p.grad is not None else None for p in params]
            opt.step()
            dec = 0.0
            with torch.no_grad():
                for p, o, g in zip(params, old, grads):
                    if g is not None:
                        dec -= float((g * (p - o)).sum())
            tr.decrease.append(dec)
            tr.steps_run = step + 1
            if progress:
                progress(step + 1)
        if eval_data is not None:
            tr.evaluation = _evaluate(model, eval_data[0], eval_data[1], None, prep32)
        tr.seconds = time.perf_counter() - t0
        return tr

    assert fmt is not None
    assert plan is not None
    rounder = tensor_rounder_cache(fmt)
    _scale_weights(model, plan.weight_scale)
    fp32_mods = _module_set(model, plan.fp32_modules)
    named_params = list(model.named_parameters())
    hi_names = {n for n, _ in named_params if _under(n.rsplit(".", 1)[0] if "." in n else "", fp32_mods)}
    low = [(n, p) for n, p in named_params if n not in hi_names]
    hi = [(n, p) for n, p in named_params if n in hi_names]
    with torch.no_grad():
        for n, p in low:
            p.copy_(rounder(p))
        for n, b in model.named_buffers():
            owner = n.rsplit(".", 1)[0] if "." in n else ""
            if b.is_floating_point() and not _under(owner, fp32_mods):
                b.copy_(rounder(b))
    tracker = _Tracker(fmt)
    tr.tracker = tracker
    mode = ShadowRounding(rounder, fmt, tracker)
    mode.buffers = {id(b): n for n, b in model.named_buffers()}
    mode.fp32_ops = [(str(e["op"]), e.get("module")) for e in plan.fp32_ops]
    mode.fp32_backward_ops = {str(e["op"]).lower().replace("_", "") for e in plan.fp32_ops}
    boundaries: list[set[Any]] = []
    hooks = []

    def pre(name: str, is_hi: bool) -> Callable:
        def hook(mod: nn.Module, args: tuple) -> Any:
            mode.scope.append(name)
            if is_hi:
                new_args = args
                if mode.fp32_depth == 0:
                    new_args = _map_tensors(args, _Boundary.apply)
                    stops: set[Any] = set()
                    _map_tensors(new_args, lambda t: (stops.add(t.grad_fn), t)[1])
                    boundaries.append(stops)
                mode.fp32_depth += 1
                return new_args
            return None
        return hook

    def post(name: str, is_hi: bool) -> Callable:
        def hook(mod: nn.Module, args: tuple, output: Any) -> Any:
            if mode.scope:
                mode.scope.pop()
            if is_hi:
                mode.fp32_depth -= 1
                if mode.fp32_depth == 0:
                    stops = boundaries.pop() if boundaries else set()
                    if torch.is_grad_enabled():
                        mode.fp32_nodes |= _graph_nodes(output, stops)
                    return _map_tensors(output, _Boundary.apply)
            return None
        return hook

    for name, mod in model.named_modules():
        if not name:
            continue
        is_hi = name in fp32_mods
        hooks.append(mod.register_forward_pre_hook(pre(name, is_hi)))
        hooks.append(mod.register_forward_hook(post(name, is_hi), always_call=True))

    eps = float(plan.optimizer.get("eps", spec.eps))
    if plan.master_weights or plan.stochastic_rounding:
        masters = [p.detach().clone() for _, p in named_params]
        opt_hi = spec.build(masters, eps)
        opt_low = None
    else:
        masters = []
        opt_low = spec.build([p for _, p in low], eps)
        opt_hi = spec.build([p for _, p in hi], eps)
    ls = plan.loss_scale
    scale = float(ls["scale"]) if ls else 1.0
    clean = 0
    in_scale = float(plan.input_scale)

    def prep(x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            return x
        return rounder(x.float() * in_scale) if in_scale != 1.0 else rounder(x.float())

    try:
        for step, (xb, yb) in enumerate(batches):
            for _, p in named_params:
                p.grad = None
            mode.fp32_nodes = set()
            mode.scope = []
            mode.fp32_depth = 0
            mode.phase = "forward"
            xin = prep(xb)
            with mode:
                loss = loss_fn(model(xin), yb)
            lv = float(loss.detach())
            tr.losses.append(lv)
            if not math.isfinite(lv):
                tr.diverged_step = step
                tracker.end_step()
                break
            mode.phase = "backward"
            with mode:
                loss.backward(torch.full_like(loss, scale))
            mode.fp32_nodes = set()
            grads: list[torch.Tensor | None] = []
            bad_grads: list[str] = []
            with torch.no_grad():
                for n, p in named_params:
                    if p.grad is None:
                        grads.append(None)
                        continue
                    if scale != 1.0:
                        if n in hi_names or plan.master_weights:  # unscaled in fp32 (AMP)
                            p.grad.mul_(1.0 / scale)
                        else:
                            mode.phase = "unscale"
                            with mode:
                                p.grad.mul_(1.0 / scale)
                    grads.append(p.grad.detach().clone())
                    gmax = tracker.record(f"grad:{n}", p.grad)
                    if not math.isfinite(gmax):
                        bad_grads.append(n)
            finite = not bad_grads
            if bad_grads and tracker.first_nonfinite is None:
                tracker.first_nonfinite = {"step": step, "phase": "backward", "op": "gradient", "module": bad_grads[0],
                                           "key": f"grad:{bad_grads[0]}", "max_abs": math.inf}
            if ls and ls.get("mode") == "dynamic":
                if not finite:
                    scale = max(scale / 2.0, 1.0)
                    clean = 0
                    tr.skipped_steps += 1
                    tr.decrease.append(0.0)
                    tr.lost_decrease.append(0.0)
                    tracker.end_step()
                    tr.steps_run = step + 1
                    continue
                clean += 1
                if clean >= int(ls.get("growth_interval", 2000)) and scale * 2 <= fmt.max / 2:
                    scale *= 2.0
                    clean = 0
            old = [p.detach().clone() for _, p in named_params]
            dec = lost_dec = 0.0
            if masters:
                for m, (_, p) in zip(masters, named_params):
                    m.grad = p.grad.detach().clone() if p.grad is not None else None
                opt_hi.step()
                new_exact = [m.detach() for m in masters]
            else:
                if opt_low is not None:
                    mode.phase = "optimizer"
                    mode.exempt = {id(p) for _, p in low}
                    with mode:
                        opt_low.step()
                    mode.exempt = set()
                if opt_hi is not None:
                    opt_hi.step()
                new_exact = [p.detach().clone() for _, p in named_params]
            with torch.no_grad():
                for i, ((n, p), o, g, ex) in enumerate(zip(named_params, old, grads, new_exact)):
                    if n in hi_names:
                        p.copy_(ex)
                        kept = ex
                    elif plan.stochastic_rounding:
                        kept = _stochastic_round(ex, fmt, seed, stream=step * 4096 + i)
                        p.copy_(kept)
                    else:
                        kept = rounder(ex)
                        p.copy_(kept)
                    if plan.stochastic_rounding and masters:
                        masters[i].copy_(kept)  # pure storage: the master holds the format's value
                    if tracker.first_nonfinite is None and not math.isfinite(float(kept.sum())) \
                            and bool(torch.isfinite(o).all()):
                        tracker.first_nonfinite = {"step": step, "phase": "optimizer", "op": "step", "module": n,
                                                   "key": f"optimizer:{n}", "max_abs": math.inf}
                    if g is None:
                        continue
                    upd = ex - o
                    gd = -(g * upd)
                    dec += float(gd.sum())
                    if n not in hi_names and not (plan.master_weights and not plan.stochastic_rounding):
                        # first-order loss decrease the rounding took away: g . (intended - kept update)
                        lost = (kept == o) & (upd != 0)
                        ld = float((-(g * (upd - (kept - o)))).sum())
                        lost_dec += ld
                        nl, nz = int(lost.sum()), int((upd != 0).sum())
                        tr.lost += nl
                        tr.nonzero += nz
                        acc = tr.per_param.setdefault(n, [0.0, 0, 0])
                        acc[0] += ld
                        acc[1] += nl
                        acc[2] += nz
                    else:
                        tr.nonzero += int((upd != 0).sum())
                    tracker.record(f"param:{n}", p)
                if plan.stochastic_rounding and masters:
                    # optimizer state stored in the format too (pure low-precision storage)
                    for st in opt_hi.state.values():
                        for k, v in st.items():
                            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim > 0:
                                v.copy_(rounder(v))
                for n, b in model.named_buffers():  # the format's buffers (fp32-kept modules' are fp32)
                    if b.is_floating_point() and not _under(n.rsplit(".", 1)[0] if "." in n else "", fp32_mods):
                        tracker.record(f"buffer:{n}", b)
                for o_ in (opt_low, opt_hi):
                    if o_ is None:
                        continue
                    for st in o_.state.values():
                        for k, v in st.items():
                            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim > 0:
                                tracker.record(f"optimizer-state:{k}", v)
            tr.decrease.append(dec)
            tr.lost_decrease.append(lost_dec)
            tracker.end_step()
            tr.steps_run = step + 1
            if progress:
                progress(step + 1)
        tr.final_scale = scale if ls else None
        if eval_data is not None and tr.diverged_step is None:
            mode.scope = []
            tr.evaluation = _evaluate(model, eval_data[0], eval_data[1], mode, prep)
    finally:
        for h in hooks:
            h.remove()
    tr.seconds = time.perf_counter() - t0
    return tr


# ------------------------------------------------------------------------------------------
# The dry run and its judgement
# ------------------------------------------------------------------------------------------


@dataclass
class DryRunResult:
    """The measured outcome of one dry run (shadow run under ``plan`` beside fp32)."""

    format: str
    profile: str
    plan: dict[str, Any]
    steps: int
    measurements: dict[str, Any]
    problems: list[dict[str, Any]]
    seconds: float
    seconds_per_step: float
    reference: Any = field(default=None, repr=False, compare=False)
    seed: int = 0

    @property
    def matches_fp32(self) -> bool:
        """No problem at ``fail`` level: the shadow run matches fp32 within the thresholds."""
        return not any(p["status"] == "fail" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "profile": self.profile, "plan": self.plan, "steps": self.steps,
                "matches_fp32": self.matches_fp32, "measurements": self.measurements, "problems": self.problems,
                "seconds": round(self.seconds, 3), "seconds_per_step": round(self.seconds_per_step, 4),
                "thresholds": DRY_RUN_THRESHOLDS}


def _tail_mean(v: list[float]) -> float:
    if not v:
        return math.nan
    k = max(1, len(v) // 4)
    return float(np.mean(v[-k:]))


def _measure(ref: _Trace, sh: _Trace, fmt: FloatFormat, steps: int) -> dict[str, Any]:
    m: dict[str, Any] = {"steps": steps, "steps_run": sh.steps_run}
    m["losses"] = {"fp32": ref.losses, "shadow": sh.losses}
    m["diverged"] = {"fp32_step": ref.diverged_step, "shadow_step": sh.diverged_step}
    tk = sh.tracker
    if tk is not None:
        m["first_nonfinite"] = tk.first_nonfinite
    n = min(len(ref.losses), len(sh.losses))
    lr_, ls_ = _tail_mean(ref.losses[:n]), _tail_mean(sh.losses[:n])
    # relative to fp32's loss, or to LOSS_FLOOR for a nearly fitted model (whose tiny loss fp16's
    # rounding of the log-probabilities cannot follow in relative terms)
    m["loss"] = {"fp32": lr_, "shadow": ls_,
                 "gap": (ls_ - lr_) / max(abs(lr_), LOSS_FLOOR) if math.isfinite(ls_) and math.isfinite(lr_) else math.inf}
    acc: dict[str, Any] = {}
    for label in ("train", "eval"):
        r, s = ref.evaluation.get(label), sh.evaluation.get(label)
        if r is None:
            continue
        if s is None:
            acc[label] = {"fp32": r["accuracy"], "shadow": 0.0, "gap": r["accuracy"], "agreement": 0.0}
        else:
            acc[label] = {"fp32": r["accuracy"], "shadow": s["accuracy"], "gap": r["accuracy"] - s["accuracy"],
                          "agreement": float((r["pred"] == s["pred"]).float().mean())}
    m["accuracy"] = acc
    k = min(len(ref.decrease), len(sh.lost_decrease))
    fp32_dec = float(np.sum(ref.decrease[:k])) if k else 0.0
    lost_dec = float(np.sum(sh.lost_decrease[:k])) if k else 0.0
    worst = sorted(((n_, v[0]) for n_, v in sh.per_param.items()), key=lambda t: -t[1])[:5]
    m["stagnation"] = {
        "lost_decrease": lost_dec, "fp32_decrease": fp32_dec,
        "weighted": lost_dec / fp32_dec if fp32_dec > 0 else 0.0,
        "lost": sh.lost, "nonzero": sh.nonzero,
        "count_fraction": sh.lost / sh.nonzero if sh.nonzero else 0.0,
        "worst": [{"parameter": n_, "share": v / fp32_dec if fp32_dec > 0 else 0.0,
                   "lost_fraction": sh.per_param[n_][1] / max(1, sh.per_param[n_][2])} for n_, v in worst],
    }
    bufs = {}
    if tk is not None:
        for name, st in tk.buffers.items():
            bufs[name] = dict(st, stall_fraction=st["lost"] / st["changed"] if st["changed"] else 0.0)
        m["trends"] = range_trends(tk.series, fmt, DRY_RUN_THRESHOLDS["trend_horizon_steps"])
        nonfinite = [k_.split(":", 1)[1] for k_, v in tk.series.items() if k_.startswith("buffer:")
                     and not all(math.isfinite(x) for x in v)]
        m["nonfinite_buffers"] = nonfinite
    m["buffers"] = bufs
    fwd: dict[str, float] = {}
    if tk is not None:
        for k_, v in tk.series.items():
            phase, where, _op = k_.split(":", 2) if k_.count(":") >= 2 else ("", "", "")
            fin = [x for x in v if math.isfinite(x)]
            if phase == "forward" and fin:
                fwd[where] = max(fwd.get(where, 0.0), max(fin))
    m["forward_max"] = fwd
    m["loss_scale"] = {"final": sh.final_scale, "skipped_steps": sh.skipped_steps}
    return m


def judge_dry_run(m: dict[str, Any], fmt_name: str = "fp16") -> list[dict[str, Any]]:
    """Problems (``status`` warn/fail, the number, the threshold, where) from the measurements of
    :func:`dry_run` -- a pure function, tested on both sides of every threshold."""
    T = DRY_RUN_THRESHOLDS
    out: list[dict[str, Any]] = []

    def add(status: str, check: str, measured: float, threshold: float, message: str, where: dict | None = None) -> None:
        out.append({"status": status, "check": check, "measured": measured, "threshold": threshold,
                    "message": message, "where": where})

    d = m.get("diverged", {})
    if d.get("shadow_step") is not None and d.get("fp32_step") is None:
        ev = m.get("first_nonfinite")
        at = (f"; first non-finite output: {ev['op']} in {ev['module']} ({ev['phase']}, step {ev['step']})"
              if ev else "")
        add("fail", "divergence", float(d["shadow_step"]), float(m.get("steps", 0)),
            f"the {fmt_name} loss is NaN/inf at step {d['shadow_step']} while fp32 stays finite{at}", ev)
    ov = m.get("first_nonfinite")
    if ov is not None and not out:
        add("warn", "op overflow", ov["max_abs"], math.nan,
            f"{ov['op']} in {ov['module']} ({ov['phase']}, step {ov['step']}) overflowed {fmt_name} "
            "(finite inputs, non-finite output)", ov)
    for name in m.get("nonfinite_buffers", []):
        add("fail", "buffer overflow", math.inf, math.nan, f"buffer {name} became inf/NaN in {fmt_name}",
            {"buffer": name})
    for name, st in m.get("buffers", {}).items():
        if st.get("changed", 0) and st["stall_fraction"] > T["buffer_stall_warn"]:
            add("warn", "buffer stall", st["stall_fraction"], T["buffer_stall_warn"],
                f"{100 * st['stall_fraction']:.1f}% of the updates of buffer {name} round away in {fmt_name} "
                f"({st['subnormal']} of {st['numel']} entries subnormal)", {"buffer": name})
    # A segment resumed from a trained fp32 model ("late") starts near an fp32 minimum, which is
    # not a fixed point of the format's dynamics (a different effective step, fresh optimizer
    # state): the low-precision run moves away from it at first, a transient that says nothing
    # about where low-precision training from the start would be.  There the loss and accuracy
    # gaps are reported, as warnings at most; the mechanisms (non-finite values, buffers,
    # stagnation, plateau, range trends) are judged as in the first segment (docs/theory.md §4.8).
    late = m.get("segment") == "late"

    def capped(st: str) -> str:
        return "warn" if late and st == "fail" else st
    loss = m.get("loss", {})
    gap = loss.get("gap", 0.0)
    if gap is not None and d.get("shadow_step") is None:
        st = capped("fail" if gap > T["loss_gap_fail"] else ("warn" if gap > T["loss_gap_warn"] else "ok"))
        if st != "ok":
            add(st, "loss gap", gap, T["loss_gap_fail"] if st == "fail" else T["loss_gap_warn"],
                f"mean loss over the last steps {loss['shadow']:.4g} in {fmt_name} vs {loss['fp32']:.4g} in fp32 "
                f"({100 * gap:+.1f}%)")
    for label, a in m.get("accuracy", {}).items():
        st = "fail" if a["gap"] > T["accuracy_gap_fail"] else ("warn" if a["gap"] > T["accuracy_gap_warn"] else "ok")
        # runs that took different paths disagree on many inputs early in training; that
        # is a failure only when the low-precision run is also the less accurate one
        if a["agreement"] < T["agreement_fail"] and a["gap"] > T["accuracy_gap_warn"]:
            st = "fail"
        st = capped(st)
        if st != "ok":
            add(st, f"accuracy gap ({label} mode)", a["gap"],
                T["accuracy_gap_fail"] if st == "fail" else T["accuracy_gap_warn"],
                f"{label}-mode accuracy {100 * a['shadow']:.1f}% in {fmt_name} vs {100 * a['fp32']:.1f}% in fp32; "
                f"{100 * a['agreement']:.1f}% of held-out inputs keep the fp32 class")
    s = m.get("stagnation", {})
    w = s.get("weighted", 0.0)
    # near a fit (fp32's loss below LOSS_FLOOR, the floor of the loss gap) what is left to gain is
    # a fraction of a negligible loss: a large share of it lost only warns
    fitted = math.isfinite(m.get("loss", {}).get("fp32", math.nan)) and m["loss"]["fp32"] < LOSS_FLOOR
    if w > T["stagnation_warn"]:
        st = "fail" if w > T["stagnation_fail"] and not fitted else "warn"
        worst = s.get("worst") or []
        add(st, "update stagnation", w, T["stagnation_fail"] if st == "fail" else T["stagnation_warn"],
            f"updates that round back to the old weight would have brought {100 * w:.1f}% of fp32's first-order "
            f"loss decrease ({100 * s.get('count_fraction', 0):.1f}% of nonzero updates lost)"
            + (f"; most in {worst[0]['parameter']}" if worst else ""),
            {"parameter": worst[0]["parameter"]} if worst else None)
    rc = m.get("recipe_fp32_loss")
    if rc and math.isfinite(rc.get("original", math.nan)):
        # a change that alters fp32 training too (input or weight scale, Adam eps) is compared
        # with fp32 under the same change; it must not make fp32 itself train worse
        ch = rc.get("changed", math.nan)
        rgap = (ch - rc["original"]) / max(abs(rc["original"]), LOSS_FLOOR) if math.isfinite(ch) else math.inf
        if rgap > T["loss_gap_fail"]:
            add("fail", "change slows fp32", rgap, T["loss_gap_fail"],
                f"with this change fp32 training itself reaches a mean loss of {ch:.4g} over the last steps against "
                f"{rc['original']:.4g} without it ({100 * rgap:+.1f}%): the change trades the format's problem for "
                "slower training")
    pl = m.get("plateau") or {}
    cnt = s.get("count_fraction", 0.0)
    if pl.get("on_plateau") and cnt > T["plateau_lost_fail"] and w <= T["stagnation_fail"]:
        add("fail", "plateau stagnation", cnt, T["plateau_lost_fail"],
            f"fp32 has not started to learn in the {pl.get('observed_steps', 0)} steps observed (its loss went "
            f"from {pl.get('fp32_first', math.nan):.4g} to {pl.get('fp32_last', math.nan):.4g}, less than "
            f"{100 * T['plateau_progress']:.0f}% lower), and {100 * cnt:.1f}% of the nonzero updates round away in "
            f"{fmt_name}: on a plateau the loss decrease is nearly zero to first order, and the small updates "
            "that lead off it are the ones lost, so low-precision training leaves it later",
            {"parameter": (s.get("worst") or [{}])[0].get("parameter")} if s.get("worst") else None)
    for t in m.get("trends", [])[:3]:
        soon = (t["steps_to_overflow"] <= T["trend_fail_steps"]
                and t.get("headroom", math.inf) <= T["trend_fail_headroom"])
        add("fail" if soon else "warn", "range trend", t["steps_to_overflow"],
            T["trend_fail_steps"] if soon else T["trend_horizon_steps"],
            f"{t['range']} (now {t['last_max']:.4g}) grows by {t['growth_per_step']:.3g} per step: overflows {fmt_name} in about "
            f"{t['steps_to_overflow']:.0f} steps", {"range": t["range"]})
    return out


def plateau_state(fp32_first: list[float], fp32_last: list[float], observed_steps: int) -> dict[str, Any]:
    """Has fp32 training started to learn?  ``fp32_first``: fp32 losses of the first steps from the
    initial model; ``fp32_last``: fp32 losses of the last steps observed (a dry run from the
    warmed-up model); ``observed_steps``: the steps between.  On a plateau when the mean of the
    last quarter of ``fp32_last`` is above ``1 - plateau_progress`` times the mean of the first
    quarter of ``fp32_first`` (docs/theory.md §4.8)."""
    first, last = _head_mean(fp32_first), _tail_mean(fp32_last)
    on = bool(math.isfinite(first) and math.isfinite(last) and first > 0
              and last >= (1.0 - DRY_RUN_THRESHOLDS["plateau_progress"]) * first)
    return {"fp32_first": first, "fp32_last": last, "observed_steps": int(observed_steps), "on_plateau": on}


def _head_mean(v: list[float]) -> float:
    if not v:
        return math.nan
    k = max(1, len(v) // 4)
    return float(np.mean(v[:k]))


def dry_run(
    model: nn.Module,
    batches: Sequence[tuple[Any, torch.Tensor]],
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    fmt: str | FloatFormat = "fp16",
    plan: PrecisionPlan | None = None,
    profile: str = "fp32-accumulate",
    optimizer: str = "sgd",
    lr: float = 0.01,
    eps: float = 1e-8,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    reference: Any = None,
    progress: Callable[[int, int], None] | None = None,
    plateau: dict[str, Any] | None = None,
    segment: str = "initial",
) -> DryRunResult:
    """Train ``model`` for ``len(batches)`` steps in the format (the shadow run) and in fp32.

    Parameters
    ----------
    model : nn.Module
        Left unchanged; both runs train deep copies (float32 copies holding the format's values).
    batches : sequence of (inputs, labels)
        The same batches, in the same order, for both runs.
    eval_data : (X, y), optional
        Held-out inputs for the accuracy gap and agreement (train-mode and eval-mode forward).
    fmt, plan, profile
        Target format, the precision plan (``None``: pure low precision, no changes) and the
        profile recorded with the result.  The dry run's arithmetic is one rounding per op output
        after fp32 computation (``fp32-accumulate``); for ``ieee`` it under-states the error of
        long sums, and says so in the measurements.
    optimizer, lr, eps, momentum, betas, weight_decay
        The training setup (``sgd``, ``adam`` or ``adamw``; PyTorch's update rules).
    reference : optional
        ``result.reference`` of an earlier dry run on the same model and batches: reuses its fp32
        run (the fixes' dry runs share one fp32 reference).
    plateau : dict, optional
        What the caller observed of fp32 training beyond these steps (:func:`plateau_state`):
        with ``on_plateau`` true, losing most updates fails (``plateau stagnation``).
    segment : {"initial", "late"}
        ``"late"``: ``model`` is a trained fp32 model (the check's warm-up); the loss and accuracy
        gaps then only warn (:func:`judge_dry_run`).

    Returns
    -------
    DryRunResult

    Examples
    --------
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> b = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    >>> dry_run(m, b).matches_fp32
    True
    """
    f = get_format(fmt)
    if optimizer.lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid optimizers are: {', '.join(OPTIMIZERS)}")
    if not batches:
        raise ValueError("the dry run needs at least one batch")
    from ..bounds import PROFILES

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles are: {', '.join(PROFILES)}")
    plan = plan if plan is not None else PrecisionPlan(format=f.name, profile=profile)
    spec = _OptSpec(optimizer.lower(), lr, eps, momentum, tuple(betas), weight_decay)
    lf = loss_fn or nn.functional.cross_entropy
    n = len(batches)
    t0 = time.perf_counter()
    # fp32 runs are cached by recipe: the fixes that act in fp32 too (Adam eps, input and weight
    # scaling) are compared with fp32 under the same change, the others with the original fp32
    refs: dict[tuple, _Trace] = reference if isinstance(reference, dict) else {}
    key = _recipe(plan, spec)
    if key not in refs:
        refs[key] = _train(model, batches, eval_data, spec, None, None, lf, seed,
                           (lambda d: progress(d, 2 * n)) if progress else None, recipe=key)
    sh = _train(model, batches, eval_data, spec, plan, f, lf, seed,
                (lambda d: progress(n + d, 2 * n)) if progress else None)
    meas = _measure(refs[key], sh, f, n)
    base_key = _recipe(None, spec)
    if key != base_key and base_key in refs:
        meas["recipe_fp32_loss"] = {"original": _tail_mean(refs[base_key].losses), "changed": _tail_mean(refs[key].losses)}
    meas["arithmetic"] = ("fp32 opmath, one rounding per op output" +
                          ("; ieee accumulation inside long sums is not modelled" if profile == "ieee" else ""))
    if plateau is not None:
        meas["plateau"] = dict(plateau)
    if segment not in ("initial", "late"):
        raise ValueError(f"unknown segment {segment!r}; valid: initial, late")
    meas["segment"] = segment
    problems = judge_dry_run(meas, f.name)
    return DryRunResult(f.name, profile, plan.to_dict(), n, meas, problems, time.perf_counter() - t0,
                        sh.seconds / max(1, sh.steps_run), refs, seed)


# ------------------------------------------------------------------------------------------
# Fixes: proposed from the measured mechanism, verified by running the dry run again
# ------------------------------------------------------------------------------------------


def _safe_eps(fmt: FloatFormat) -> float:
    """A power of ten that is a normal number of the format with room below it (1e-4 for fp16)."""
    e = 1e-4
    while e / 10 >= fmt.min_normal * 2**fmt.p and e > 1e-8:
        e /= 10
    return e


def _pow2(x: float) -> float:
    return 2.0 ** round(math.log2(x))


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d,
          nn.InstanceNorm2d)
_PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def _is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, _NORMS)


def _producer(mod: nn.Module) -> bool:
    return isinstance(mod, _PRODUCERS)


def _input_rms(batches: Sequence[tuple[Any, torch.Tensor]]) -> float:
    xs = [b[0] for b in batches[:4] if isinstance(b[0], torch.Tensor) and b[0].is_floating_point()]
    if not xs:
        return 1.0
    return float(torch.sqrt(torch.mean(torch.cat([x.reshape(-1).float() for x in xs]) ** 2)))


def propose_fixes(result: DryRunResult, model: nn.Module, batches: Sequence[tuple[Any, torch.Tensor]], *,
                  optimizer: str = "sgd", eps: float = 1e-8) -> list[Fix]:
    """Candidate changes for the problems of ``result``, from the mechanism each one names.

    Changes that keep the model in the format (Adam eps, loss scaling, input or weight scaling,
    stochastic rounding) come before those that move parts of it to fp32.  None is verified
    here: pass them to :func:`verify_fixes`.
    """
    f = get_format(result.format)
    m = result.measurements
    probs = {p["check"] for p in result.problems if p["status"] == "fail"}
    if not probs:
        return []
    mods = dict(model.named_modules())
    out: list[Fix] = []

    def add(fx: Fix) -> None:
        if all(fx != o for o in out):
            out.append(fx)

    ev = m.get("first_nonfinite")
    adam = optimizer.lower() in ("adam", "adamw")
    eps_r = float(round_to(eps, f))
    rms = _input_rms(batches)
    bad_buffers = list(m.get("nonfinite_buffers", []))
    bad_buffers += [p["where"]["buffer"] for p in result.problems
                    if p["check"] == "buffer stall" and p.get("where")]
    owners = sorted({b.rsplit(".", 1)[0] for b in bad_buffers if "." in b})
    if adam and eps_r < f.min_normal:
        add(Fix("adam-eps", {"eps": _safe_eps(f)}))
        add(Fix("adam-eps", {"eps": 10 * _safe_eps(f)}))
    fwd = m.get("forward_max", {})
    if (bad_buffers or (ev is not None and ev["phase"] in ("forward", "eval"))) and (rms > 8 or rms < 1 / 8):
        add(Fix("input-scale", {"factor": 1.0 / _pow2(rms)}))
    # rescale the layer that produces the large values, where a normalisation follows it
    hot = owners + ([ev["module"]] if ev is not None and ev["phase"] in ("forward", "eval") else [])
    names = list(mods)
    for h in hot:
        if h not in mods:
            continue
        src = h if _producer(mods[h]) else None
        if src is None and _is_norm(mods[h]):
            before = [n for n in names[:names.index(h)] if n and _producer(mods[n])]
            src = before[-1] if before else None
        if src is None:
            continue
        if fwd.get(src, 0.0) > 1.0:  # bring its outputs to about 1
            add(Fix("weight-scale", {"modules": [src], "factor": 1.0 / (2.0 ** math.ceil(math.log2(fwd[src])))}))
        elif ev is not None and ev["module"] == src:  # it overflowed before any finite maximum was seen
            add(Fix("weight-scale", {"modules": [src], "factor": 2.0**-8}))
    if ev is not None and ev["phase"] == "backward":
        add(Fix("loss-scale", {"mode": "dynamic", "scale": 1.0, "growth_interval": 2000}))
    underflow_like = probs & {"loss gap", "accuracy gap (train mode)", "accuracy gap (eval mode)"}
    if underflow_like and not bad_buffers and (ev is None or ev["phase"] != "forward"):
        add(Fix("loss-scale", {"mode": "dynamic", "scale": 2.0**10, "growth_interval": 2000}))
    if probs & {"update stagnation", "plateau stagnation"}:  # the standard cure first (mixed precision), then the pure-format one
        add(Fix("fp32-master-weights"))
        add(Fix("stochastic-rounding"))
    if owners:
        add(Fix("fp32-modules", {"modules": owners}))
    if ev is not None and ev["phase"] in ("forward", "eval"):
        add(Fix("fp32-ops", {"ops": [ev["op"]], "module": None if ev["module"] == "<model>" else ev["module"]}))
        if ev["module"] in mods and ev["module"]:
            add(Fix("fp32-modules", {"modules": [ev["module"]]}))
    if adam and (ev is not None and ev["phase"] == "optimizer"):
        add(Fix("adam-eps", {"eps": _safe_eps(f)}))
    if "update stagnation" in probs or underflow_like or (ev is not None and ev["phase"] == "optimizer"):
        add(Fix("fp32-master-weights"))
    return out


@dataclass
class FixResult:
    """A fix and what the dry run measured with it."""

    fixes: list[Fix]
    verified: bool
    problems: list[dict[str, Any]]
    measurements: dict[str, Any]
    plan: PrecisionPlan

    def describe(self) -> str:
        return " + ".join(f.describe() for f in self.fixes)

    def to_dict(self) -> dict[str, Any]:
        m = self.measurements
        return {"fixes": [f.to_dict() for f in self.fixes], "description": self.describe(),
                "verified": self.verified, "problems": self.problems,
                "loss_gap": m.get("loss", {}).get("gap"),
                "accuracy": {k: {kk: v[kk] for kk in ("fp32", "shadow", "agreement")} for k, v in m.get("accuracy", {}).items()},
                "diverged_step": m.get("diverged", {}).get("shadow_step"),
                "stagnation_weighted": m.get("stagnation", {}).get("weighted"),
                "plan": self.plan.to_dict()}


def verify_fixes(model: nn.Module, batches: Sequence[tuple[Any, torch.Tensor]],
                 eval_data: tuple[torch.Tensor, torch.Tensor] | None, base: DryRunResult, fixes: Sequence[Fix], *,
                 combine: bool = True, progress: Callable[[str], None] | None = None,
                 **kwargs: Any) -> list[FixResult]:
    """Run the dry run again with each fix (on the same batches, sharing ``base``'s fp32 run);
    a fix is verified when the shadow run then matches fp32 within :data:`DRY_RUN_THRESHOLDS`.

    When no single fix is verified and ``combine``, the fixes are also tried together (one per
    name, in order).  ``kwargs`` are :func:`dry_run`'s training settings (optimizer, lr, ...).
    """
    base_plan = PrecisionPlan.from_dict(base.plan)
    out: list[FixResult] = []
    trials: list[list[Fix]] = [[fx] for fx in fixes]
    i = 0
    while i < len(trials):
        group = trials[i]
        i += 1
        plan = base_plan
        for fx in group:
            plan = fx.apply(plan)
        if progress:
            progress(" + ".join(fx.name for fx in group))
        kwargs.setdefault("seed", base.seed)
        kwargs.setdefault("plateau", base.measurements.get("plateau"))
        r = dry_run(model, batches, eval_data, fmt=base.format, profile=base.profile, plan=plan,
                    reference=base.reference, **kwargs)
        out.append(FixResult(list(group), r.matches_fp32, r.problems, r.measurements, plan))
        if i == len(fixes) and combine and len(fixes) > 1 and not any(o.verified for o in out):
            seen: dict[str, Fix] = {}
            for fx in fixes:
                seen.setdefault(fx.name, fx)
            trials.append(list(seen.values()))
    return out


def recommended_plan(results: Sequence[FixResult]) -> PrecisionPlan | None:
    """The plan of the first verified fix (candidates come cheapest first), or ``None``."""
    for r in results:
        if r.verified:
            return r.plan
    return None


# ------------------------------------------------------------------------------------------
# Applying a plan to a real model (real fp16/bf16 training)
# ------------------------------------------------------------------------------------------

_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class _Fp32Ops(TorchDispatchMode):
    """Computes the named aten ops in float32: low-precision inputs are upcast, outputs cast back."""

    def __init__(self, ops: Iterable[tuple[str, str | None]], dtype: torch.dtype, scope: list[str]) -> None:
        super().__init__()
        self.ops = list(ops)
        self.dtype = dtype
        self.scope = scope

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = _packet(func)
        node = torch._C._current_autograd_node()
        path = self.scope[-1] if self.scope else ""
        hit = False
        for op, mod in self.ops:
            if node is not None:
                hit = hit or node.name().split("::")[-1].lower().startswith(op.lower().replace("_", ""))
            elif op == name and (mod is None or path == mod or path.startswith(mod + ".")):
                hit = True
        if not hit or func._schema.is_mutable:
            return func(*args, **kwargs)
        up = _map_tensors(args, lambda t: t.float() if t.dtype == self.dtype else t)
        kw = {k: (v.float() if isinstance(v, torch.Tensor) and v.dtype == self.dtype else v) for k, v in kwargs.items()}
        out = func(*up, **kw)
        return _map_tensors(out, lambda t: t.to(self.dtype) if t.dtype == torch.float32 else t)


class PlanTrainer:
    """Real low-precision training under a :class:`PrecisionPlan` (made by :func:`apply_precision_plan`).

    Use ``with trainer.context(): loss = loss_fn(model(x), y); trainer.backward(loss)`` and then
    ``trainer.step()``: loss scaling (static or dynamic, unscaled in the gradients' dtype), fp32
    master weights, stochastic rounding of the updated parameters and op-level fp32 overrides are
    handled here.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, plan: PrecisionPlan,
                 dtype: torch.dtype, fmt: FloatFormat, seed: int = 0) -> None:
        self.model, self.optimizer, self.plan, self.dtype, self.fmt = model, optimizer, plan, dtype, fmt
        ls = plan.loss_scale
        self.scale = float(ls["scale"]) if ls else 1.0
        self.dynamic = bool(ls and ls.get("mode") == "dynamic")
        self.growth_interval = int(ls.get("growth_interval", 2000)) if ls else 0
        self._clean = 0
        self.skipped_steps = 0
        self.steps = 0
        self.seed = seed
        self.scope: list[str] = []
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = []  # (model param, fp32 master)

    def context(self) -> Any:
        """Context for forward and backward: op-level fp32 overrides (a no-op without any)."""
        import contextlib

        if not self.plan.fp32_ops:
            return contextlib.nullcontext()
        return _Fp32Ops([(e["op"], e.get("module")) for e in self.plan.fp32_ops], self.dtype, self.scope)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward`` seeded with the loss scale (in the loss's dtype, as pure training does)."""
        loss.backward(torch.full_like(loss, self.scale))

    def zero_grad(self) -> None:
        for p in self.model.parameters():
            p.grad = None

    def step(self) -> bool:
        """Unscale, skip on inf/NaN under dynamic scaling, update; returns whether it stepped."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        with torch.no_grad():
            if self.scale != 1.0:
                for p in params:
                    p.grad.mul_(1.0 / self.scale)
            if self.dynamic:
                finite = all(bool(torch.isfinite(p.grad).all()) for p in params)
                if not finite:
                    self.scale = max(self.scale / 2.0, 1.0)
                    self._clean = 0
                    self.skipped_steps += 1
                    self.zero_grad()
                    return False
                self._clean += 1
                if self._clean >= self.growth_interval and self.scale * 2 <= self.fmt.max / 2:
                    self.scale *= 2.0
                    self._clean = 0
            if self.optimizer is None:
                raise ValueError("apply_precision_plan was given no optimizer: call optimizer.step() yourself")
            if self.pairs:
                for p, m in self.pairs:
                    m.grad = None if p.grad is None else p.grad.detach().to(torch.float32)
            self.optimizer.step()
            for i, (p, m) in enumerate(self.pairs):
                if self.plan.stochastic_rounding:
                    kept = _stochastic_round(m, self.fmt, self.seed, stream=self.steps * 4096 + i)
                    p.copy_(kept.to(p.dtype))
                    m.copy_(kept)
                else:
                    p.copy_(m.to(p.dtype))
            if self.plan.stochastic_rounding and self.pairs:
                rounder = tensor_rounder_cache(self.fmt)
                for st in self.optimizer.state.values():
                    for v in st.values():
                        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim > 0:
                            v.copy_(rounder(v))
        self.steps += 1
        return True


def apply_precision_plan(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                         plan: PrecisionPlan | dict | str | None = None, *, seed: int = 0) -> PlanTrainer:
    """Apply ``plan`` to ``model`` (in place) for real fp16 or bf16 training; returns a :class:`PlanTrainer`.

    The model is converted with ``module.to(dtype)`` except the modules in ``fp32_modules``, which
    stay float32 with casts at their boundaries (inputs to float32 on entry, outputs back to the
    format on exit).  ``input_scale`` multiplies the model's floating inputs (which are also cast
    to the format); ``weight_scale`` multiplies the named modules' weights once.  The optimizer
    must be fresh (no state yet): its ``eps`` is set from the plan, and with ``master_weights``
    or ``stochastic_rounding`` its parameter groups are re-pointed at float32 master copies.

    Parameters
    ----------
    model : nn.Module
    optimizer : torch.optim.Optimizer, optional
    plan : PrecisionPlan, dict, JSON text or path to a JSON file

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    >>> opt = torch.optim.SGD(m.parameters(), lr=0.1)
    >>> tr = apply_precision_plan(m, opt, PrecisionPlan(fp32_modules=["1"]))
    >>> m[0].weight.dtype, m[1].weight.dtype, m(torch.randn(8, 4)).dtype
    (torch.float16, torch.float32, torch.float16)
    """
    if plan is None:
        plan = PrecisionPlan()
    elif isinstance(plan, dict):
        plan = PrecisionPlan.from_dict(plan)
    elif isinstance(plan, str):
        plan = PrecisionPlan.from_json(plan)
    fmt = get_format(plan.format)
    if fmt.name not in _TORCH_DTYPES or not _same_numbers(fmt, get_format(fmt.name)):
        raise ValueError(f"real training is available for {', '.join(_TORCH_DTYPES)} (torch dtypes); "
                         f"format {fmt.name!r} can only be examined with the dry run")
    dtype = _TORCH_DTYPES[fmt.name]
    if optimizer is not None and optimizer.state:
        raise ValueError("apply_precision_plan needs a fresh optimizer (no state yet): create it, apply the plan, "
                         "then train")
    mods = dict(model.named_modules())
    fp32 = _module_set(model, plan.fp32_modules)
    with torch.no_grad():
        for mname, factor in plan.weight_scale.items():
            if mname not in mods or getattr(mods[mname], "weight", None) is None:
                raise ValueError(f"weight-scale names module {mname!r}, which has no 'weight' parameter")
            mods[mname].weight.mul_(factor)
    model.to(dtype)
    for name in fp32:
        mods[name].float()
    outer = [n for n in fp32 if not any(n != o and _under(n, {o}) for o in fp32)]
    for name in outer:
        mods[name].register_forward_pre_hook(
            lambda mod, args: _map_tensors(args, lambda t: t.float()))
        mods[name].register_forward_hook(
            lambda mod, args, out: _map_tensors(out, lambda t: t.to(dtype)))
    scale = float(plan.input_scale)

    def cast_inputs(mod: nn.Module, args: tuple) -> tuple:
        return _map_tensors(args, lambda t: (t.float() * scale).to(dtype) if scale != 1.0 else t.to(dtype))
    model.register_forward_pre_hook(cast_inputs)
    trainer = PlanTrainer(model, optimizer, plan, dtype, fmt, seed)
    if plan.fp32_ops:
        for name, mod in model.named_modules():
            if name:
                mod.register_forward_pre_hook(lambda m_, a, n=name: trainer.scope.append(n))
                mod.register_forward_hook(lambda m_, a, o: trainer.scope.pop(), always_call=True)
    if optimizer is not None:
        for g in optimizer.param_groups:
            if "eps" in g and "eps" in plan.optimizer:
                g["eps"] = float(plan.optimizer["eps"])
        if plan.master_weights or plan.stochastic_rounding:
            for g in optimizer.param_groups:
                new = []
                for p in g["params"]:
                    if p.dtype == torch.float32:
                        new.append(p)
                        continue
                    mp = p.detach().to(torch.float32).clone().requires_grad_(True)
                    trainer.pairs.append((p, mp))
                    new.append(mp)
                g["params"] = new
    return trainer

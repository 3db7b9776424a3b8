"""Operation-level observation of a PyTorch model: every aten op of forward and backward, every buffer.

:class:`Observer` watches a model while it trains in float32 and records, for each aten operation
of the forward and the backward pass (in-place ops and ops outside any module included):

* the module path it ran in (forward: a module-path stack kept by forward pre/post hooks; backward:
  the autograd node that runs it, mapped to the module that created the node through the node's
  sequence number), the autograd node name (backward) and the user source line (forward);
* the range of its floating-point outputs and inputs (``max |x|``, ``min nonzero |x|``) and how
  many output values would overflow, be subnormal or flush to zero in the target format (exact
  rounding boundaries of the emulator, :func:`fpanalysis.rounding.round_to`, round-to-nearest-even);
* the length of the sums it computes (matrix products, convolutions, reductions, softmax, norms);

and for every floating-point buffer (BatchNorm running statistics, EMAs, user-registered extra
tensors): its range after each observed step, the share of its per-step updates that would round
away when the buffer is stored in the format (``round(round(b) + d) == round(b)``, the same test as
weight-update stagnation, docs/theory.md §4), and for BatchNorm running statistics the value the
running average converges to in the format (the update simulated step by step, rounded each time).

Nothing wraps module outputs: there are no full backward hooks (which fail on in-place ops such as
``nn.ReLU(inplace=True)`` followed by ``out += identity``), and nothing needs ``torch.fx``.  Integer
tensors (token ids for ``nn.Embedding``) are never cast.  The statistics of one output cost a few
fused torch reductions (``abs``, ``amax``, a masked ``amin`` and ``count_nonzero``; the boundary
counts are computed only when the extremes cross a boundary), and only on the steps the observer is
asked to watch.

The mechanism follows PyTorch's own FLOP counter (``torch.utils.flop_counter.FlopCounterMode``,
a ``TorchDispatchMode``) for seeing aten operations, forward and backward.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

from ..formats import FloatFormat, get_format
from ..rounding import round_to

__all__ = [
    "BufferRecord",
    "Observation",
    "Observer",
    "OpRecord",
    "RangeBoundaries",
    "call_model",
    "float_inputs",
    "observe_training",
]

#: ops whose output is uninitialised memory or a constant fill: nothing to measure.
_SKIP_OPS = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like",
    "ones", "ones_like", "new_zeros", "new_ones", "full", "full_like", "new_full", "fill_", "zero_",
    "scalar_tensor", "arange", "linspace", "detach", "lift_fresh", "alias", "clone",
    "set_", "resize_", "_local_scalar_dense", "randn", "rand", "randint", "normal_", "uniform_",
    "bernoulli_", "randperm", "_unsafe_view",
})
#: skipped ops whose output holds the same values as their first input.
_ALIAS_OPS = frozenset({"_unsafe_view", "clone", "detach", "alias", "lift_fresh"})

#: BatchNorm kernels that update ``running_mean`` / ``running_var`` in place.
_BN_OPS = frozenset({
    "native_batch_norm", "_native_batch_norm_legit", "_batch_norm_with_update", "batch_norm",
    "_native_batch_norm_legit_functional", "cudnn_batch_norm", "miopen_batch_norm",
})

#: op name -> how its reduction length is read off its arguments (see :func:`_reduction`).
MATMUL_OPS = frozenset({"mm", "bmm", "matmul", "addmm", "baddbmm", "addbmm", "addmv", "mv", "dot", "vdot",
                         "linear", "_addmm_activation"})
_SUM_OPS = frozenset({"sum", "mean", "nansum", "nanmean", "var", "std", "var_mean", "std_mean",
                      "linalg_vector_norm", "norm", "logsumexp", "prod", "cumsum", "amax", "amin"})
_SOFTMAX_OPS = frozenset({"_softmax", "softmax", "_log_softmax", "log_softmax",
                          "_softmax_backward_data", "_log_softmax_backward_data"})

_MAX_OCCURRENCE = 64  # calls of one op in one module per step kept apart; later ones pooled
_OUTSIDE = "<outside the model>"


# --------------------------------------------------------------------------------------------
# Exact classification boundaries
# --------------------------------------------------------------------------------------------


def _largest_with(pred: Callable[[float], bool]) -> float:
    """Largest non-negative float64 ``x`` with ``pred(x)`` true, for ``pred`` true at 0 and
    monotone (true, then false) on the non-negative floats ordered by bit pattern."""
    lo = 0  # bit pattern of 0.0: pred true
    hi = int(np.array(np.inf).view(np.int64))  # +inf: pred false (checked by the caller)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        x = float(np.array(mid, dtype=np.int64).view(np.float64))
        if pred(x):
            lo = mid
        else:
            hi = mid
    return float(np.array(lo, dtype=np.int64).view(np.float64))


@dataclass(frozen=True)
class RangeBoundaries:
    """Where round-to-nearest-even into ``fmt`` changes class, as float64 values.

    ``flush``: the largest ``x`` that rounds to 0; ``subnormal``: the largest ``x`` that rounds
    below the smallest normal (equal to ``flush`` without subnormals); ``finite``: the largest
    ``x`` that rounds to a finite value not above ``max`` (computed with IEEE overflow, so for a
    saturating format "overflow" means "would saturate").  All three come from the emulator.
    """

    flush: float
    subnormal: float
    finite: float

    @classmethod
    def of(cls, fmt: FloatFormat) -> RangeBoundaries:
        return _boundaries(fmt)

    @classmethod
    def _compute(cls, fmt: FloatFormat) -> RangeBoundaries:
        ieee = fmt.with_(overflow="inf")

        def r(x: float) -> float:
            return float(round_to(np.array([x]), ieee)[0])

        flush = _largest_with(lambda x: r(x) == 0.0)
        sub = _largest_with(lambda x: r(x) < fmt.min_normal)
        fin = _largest_with(lambda x: math.isfinite(r(x)) and r(x) <= fmt.max)
        return cls(flush, sub, fin)

    def in_dtype(self, dtype: torch.dtype) -> tuple[float, float, float]:
        """The same boundaries as the largest ``dtype`` values not above them, so that for ``a``
        of that dtype ``a <= b_dtype`` exactly when ``a <= b``."""
        out = []
        for b in (self.flush, self.subnormal, self.finite):
            t = torch.tensor(b, dtype=torch.float64).to(dtype)
            if float(t) > b:
                t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
            out.append(float(t))
        return out[0], out[1], out[2]


@functools.lru_cache(maxsize=32)
def _boundaries(fmt: FloatFormat) -> RangeBoundaries:
    return RangeBoundaries._compute(fmt)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass
class OpRecord:
    """One aten operation at one place of the model (module path, occurrence, output index),
    pooled over its calls on the observed steps.

    ``occurrence`` numbers the calls of the same op in the same module within one step (0 = first);
    calls beyond ``_MAX_OCCURRENCE`` share the last record.  ``output`` is the index of the output
    tensor of a multi-output op (``native_batch_norm`` returns the result, mean and inverse std).
    """

    op: str
    module: str
    module_type: str
    phase: str  # "forward" or "backward"
    occurrence: int
    output: int = 0
    node: str | None = None  # autograd node (backward)
    source: str | None = None  # user code line (forward)
    inplace: bool = False
    module_output: bool = False  # the tensor a module returned
    calls: int = 0
    steps: list[int] = field(default_factory=list)
    numel: int = 0
    nonzero: int = 0
    max_abs: float = 0.0
    max_finite_abs: float = 0.0  # without inf, NaN and +-float32 max (see n_nonfinite, n_sentinel)
    min_abs_nonzero: float = math.inf
    n_overflow: int = 0  # finite in float32, rounds above the format's max
    n_nonfinite: int = 0  # inf or NaN already in float32 (masks, divergence): not counted as overflow
    n_sentinel: int = 0  # +-float32 max (a mask constant of dtype-aware code): not counted as overflow
    n_subnormal: int = 0
    n_flushed: int = 0
    in_max_abs: float = 0.0
    in_min_abs_nonzero: float = math.inf
    reduction: int | None = None
    reduction_what: str | None = None
    first_overflow_step: int | None = None
    step_max: dict[int, float] = field(default_factory=dict)
    buffers_updated: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``aten.bmm#1 in encoder.attn`` style label (op, occurrence, output, module)."""
        s = f"aten.{self.op}"
        if self.occurrence:
            s += f"#{self.occurrence}"
        if self.output:
            s += f"[{self.output}]"
        where = self.module or "model"
        return f"{s} ({self.phase}) in {where}"

    @property
    def frac_flushed(self) -> float:
        return self.n_flushed / self.nonzero if self.nonzero else 0.0

    @property
    def frac_subnormal(self) -> float:
        return self.n_subnormal / self.nonzero if self.nonzero else 0.0

    @property
    def first_step(self) -> int | None:
        return self.steps[0] if self.steps else None

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in (
            "op", "module", "module_type", "phase", "occurrence", "output", "node", "source", "inplace",
            "module_output", "calls", "steps", "numel", "nonzero", "max_abs", "max_finite_abs", "n_overflow", "n_nonfinite", "n_sentinel",
            "n_subnormal", "n_flushed", "in_max_abs", "reduction", "reduction_what", "first_overflow_step",
            "buffers_updated")}
        d["name"] = self.name
        d["min_abs_nonzero"] = self.min_abs_nonzero if math.isfinite(self.min_abs_nonzero) else None
        d["in_min_abs_nonzero"] = self.in_min_abs_nonzero if math.isfinite(self.in_min_abs_nonzero) else None
        d["frac_flushed"] = self.frac_flushed
        d["frac_subnormal"] = self.frac_subnormal
        d["step_max"] = {int(k): v for k, v in self.step_max.items()}
        return d


@dataclass
class BufferRecord:
    """A floating-point buffer followed over the observed steps.

    Per step (lists aligned with ``steps``): ``max_abs``, ``min_abs_nonzero``, how many of its
    values overflow / are subnormal / flush in the format, and how many of the step's nonzero
    updates ``d = b_new - b_old`` round away when the buffer is stored in the format.  For a
    BatchNorm running statistic, ``target`` is the batch statistic of the last observed step (per
    channel), ``momentum`` and ``eps`` the layer's, and ``prediction`` the outcome of the running
    average simulated in the format (:meth:`Observation.buffer_predictions`).
    """

    name: str
    module: str
    module_type: str
    numel: int
    steps: list[int] = field(default_factory=list)
    max_abs: list[float] = field(default_factory=list)
    min_abs_nonzero: list[float] = field(default_factory=list)
    n_overflow: list[int] = field(default_factory=list)
    n_subnormal: list[int] = field(default_factory=list)
    n_flushed: list[int] = field(default_factory=list)
    n_changed: list[int] = field(default_factory=list)
    n_update_lost: list[int] = field(default_factory=list)
    updated_by: list[str] = field(default_factory=list)
    kind: str | None = None  # "running_mean" / "running_var" for BatchNorm statistics
    momentum: float | None = None
    eps: float | None = None
    initial: np.ndarray | None = field(default=None, repr=False)
    target: np.ndarray | None = field(default=None, repr=False)
    companion_target: np.ndarray | None = field(default=None, repr=False)  # batch var, for a running_mean
    prediction: dict[str, Any] | None = None

    @property
    def update_lost_frac(self) -> float:
        ch = sum(self.n_changed)
        return sum(self.n_update_lost) / ch if ch else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in (
            "name", "module", "module_type", "numel", "steps", "max_abs", "n_overflow", "n_subnormal",
            "n_flushed", "n_changed", "n_update_lost", "updated_by", "kind", "momentum", "eps", "prediction")}
        d["min_abs_nonzero"] = [v if math.isfinite(v) else None for v in self.min_abs_nonzero]
        d["update_lost_frac"] = self.update_lost_frac
        return d


@dataclass
class Observation:
    """What :class:`Observer` recorded: ops (forward and backward) and buffers."""

    format: str
    ops: list[OpRecord]
    buffers: list[BufferRecord]
    steps: list[int]
    seconds_observed: float = 0.0
    unmeasured: dict[str, int] = field(default_factory=dict)  # ops seen but not measured (tensor kinds
    # the statistics cannot read, e.g. sparse), with their call counts: "not examined", not "fine"

    def forward(self) -> list[OpRecord]:
        return [r for r in self.ops if r.phase == "forward"]

    def backward(self) -> list[OpRecord]:
        return [r for r in self.ops if r.phase == "backward"]

    def find(self, op: str | None = None, module: str | None = None, phase: str | None = None) -> list[OpRecord]:
        """Records matching an op name (``"bmm"`` or ``"aten.bmm"``), a module path and a phase."""
        if op is not None and op.startswith("aten."):
            op = op[5:]
        return [r for r in self.ops if (op is None or r.op == op) and (module is None or r.module == module)
                and (phase is None or r.phase == phase)]

    def overflowing(self, phase: str | None = None) -> list[OpRecord]:
        return [r for r in self.ops if r.n_overflow > 0 and (phase is None or r.phase == phase)]

    def buffer(self, name: str) -> BufferRecord:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(f"no buffer {name!r}; observed buffers: {', '.join(b.name for b in self.buffers) or 'none'}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "steps": self.steps, "seconds_observed": self.seconds_observed,
                "unmeasured": self.unmeasured,
                "ops": [r.to_dict() for r in self.ops], "buffers": [b.to_dict() for b in self.buffers]}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def float_inputs(x: Any) -> Any:
    """``x`` with floating tensors as float32; integer and bool tensors (token ids, masks) kept."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, tuple):
        return tuple(float_inputs(v) for v in x)
    if isinstance(x, list):
        return [float_inputs(v) for v in x]
    if isinstance(x, dict):
        return {k: float_inputs(v) for k, v in x.items()}
    return x


def call_model(model: nn.Module, x: Any) -> Any:
    """``model(x)`` for a tensor, ``model(*x)`` for a tuple/list, ``model(**x)`` for a dict."""
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


_TORCH_DIR = os.path.dirname(torch.__file__)
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP_DIRS = (_TORCH_DIR, _PKG_DIR, os.path.dirname(contextlib.__file__))
_MODEL_FILE = os.path.join(_PKG_DIR, "nn", "models.py")  # the toolkit's own models are user code here


def _user_source() -> str | None:
    """``file:line`` of the innermost frame outside torch, this package and the standard library."""
    f = sys._getframe(2)
    depth = 0
    while f is not None and depth < 60:
        fn = f.f_code.co_filename
        if (fn == _MODEL_FILE or not fn.startswith(_SKIP_DIRS)) and not fn.startswith("<"):
            return f"{os.path.basename(fn)}:{f.f_lineno} in {f.f_code.co_name}"
        f = f.f_back
        depth += 1
    return None


def _reduction(op: str, args: tuple, kwargs: dict) -> tuple[int | None, str | None]:
    """Length of the sums ``op`` computes, read off its arguments (None when it sums nothing)."""
    def t(i: int) -> torch.Tensor | None:
        v = args[i] if i < len(args) else None
        return v if isinstance(v, torch.Tensor) else None

    try:
        if op in ("mm", "bmm", "matmul", "mv", "dot", "vdot"):
            a = t(0)
            return (int(a.shape[-1]), "inner product") if a is not None and a.ndim else (None, None)
        if op in ("addmm", "baddbmm", "addbmm", "addmv", "_addmm_activation"):
            a = t(1)
            return (int(a.shape[-1]), "inner product") if a is not None and a.ndim else (None, None)
        if op == "linear":
            a = t(0)
            return (int(a.shape[-1]), "inner product") if a is not None and a.ndim else (None, None)
        if op in ("convolution", "_convolution", "conv2d", "conv1d", "conv3d", "mkldnn_convolution",
                  "_slow_conv2d_forward", "thnn_conv2d"):
            w = t(1)
            if w is not None and w.ndim >= 3:
                return int(np.prod(w.shape[1:])), "convolution inner product"
        if op == "convolution_backward":
            w = t(2)
            g = t(0)
            if w is not None and g is not None and w.ndim >= 3:
                # grad_input sums over out_channels x kernel; grad_weight over batch x output positions
                return int(max(w.shape[0] * int(np.prod(w.shape[2:])), g.shape[0] * int(np.prod(g.shape[2:])))), \
                    "convolution gradient"
        if op in _SOFTMAX_OPS:
            a = t(0)
            d = args[1] if len(args) > 1 else kwargs.get("dim", -1)
            if a is not None and a.ndim and isinstance(d, int):
                return int(a.shape[d]), "softmax normaliser"
        if op in _SUM_OPS:
            a = t(0)
            if a is None:
                return None, None
            d = args[1] if len(args) > 1 and not isinstance(args[1], (bool, float)) else kwargs.get("dim")
            if op in ("linalg_vector_norm", "norm") and len(args) > 2:
                d = args[2]
            if d is None or (isinstance(d, (list, tuple)) and len(d) == 0):
                n = a.numel()
            else:
                dims = [d] if isinstance(d, int) else list(d)
                n = int(np.prod([a.shape[i] for i in dims])) if a.ndim else 1
            return int(n), "sum"
        if op in ("native_layer_norm",):
            shp = args[1] if len(args) > 1 else None
            if shp is not None:
                return int(np.prod(list(shp))), "mean/variance"
        if op in _BN_OPS or op == "native_batch_norm_backward":
            a = t(0) if op in _BN_OPS else t(1)
            if a is not None and a.ndim >= 2:
                return int(a.numel() // a.shape[1]), "batch statistics"
        if op in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math",
                  "scaled_dot_product_attention", "_scaled_dot_product_efficient_attention",
                  "_scaled_dot_product_flash_attention"):
            q, k = t(0), t(1)
            if q is not None and k is not None:
                return int(max(q.shape[-1], k.shape[-2])), "attention inner product"
        if op in ("embedding_dense_backward", "embedding_backward"):
            g = t(0)
            if g is not None:
                return int(g.numel() // g.shape[-1]), "embedding gradient"
        if op in ("avg_pool2d", "avg_pool1d", "avg_pool3d"):
            k = args[1] if len(args) > 1 else None
            if k is not None:
                return int(np.prod(list(k))), "average"
        if op in ("_adaptive_avg_pool2d", "adaptive_avg_pool2d"):
            a, o = t(0), (args[1] if len(args) > 1 else None)
            if a is not None and o is not None:
                return int(np.prod([math.ceil(a.shape[-2 + i] / max(1, o[i])) for i in range(2)])), "average"
    except (IndexError, TypeError, ValueError):
        return None, None
    return None, None


_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}
_LOW_BITS = {torch.int32: 0x7FFFFFFF, torch.int64: 0x7FFFFFFFFFFFFFFF}


def _abs_stats(t: torch.Tensor, finite: float | None) -> tuple[torch.Tensor, float, float, int, tuple[int, int, int, float] | None]:
    """``max |t|``, ``min nonzero |t|`` and the nonzero count in a few passes.

    ``|t|`` is viewed as integers (same width): for non-negative floats the integer order is the
    float order.  Subtracting 1 and clearing the sign bit maps 0 to the largest integer and every
    other value ``v`` to ``bits(v) - 1``, so one ``amin`` gives the smallest nonzero magnitude and
    later ``<=`` comparisons against ``bits(boundary) - 1`` count values up to a boundary without
    counting zeros.  When ``finite`` is given and exceeded, returns ``(n_overflow, n_nonfinite,
    n_sentinel, max_finite)`` counted before the transform: finite values above ``finite``; inf and NaN
    (already non-finite in float32: masks or divergence, not the format's doing); and values equal
    to the dtype's largest finite value (``torch.finfo(float32).min`` used as a mask, which
    dtype-aware code such as Hugging Face models replaces by the low-precision dtype's own); and
    the largest magnitude among the other values.  The nonzero count (NaN excluded) is
    computed only with ``finite`` (else -1).  Half-precision inputs are widened to
    float32 first (exact).  Returns the transformed integer view, max, min nonzero (inf when all
    are zero), the nonzero count and the overflow counts (None when nothing exceeds ``finite``).
    """
    x = t.detach()
    if x.dtype not in _INT_VIEW:
        x = x.float()
    a = x.abs()
    mx = float(a.amax())
    over = None
    if finite is not None and not (mx <= finite):
        n_nan = int(torch.isnan(a).sum())
        n_inf = int(torch.isinf(a).sum())
        n_sent = int((a == torch.finfo(a.dtype).max).sum()) if mx >= torch.finfo(a.dtype).max else 0
        mxf = float(torch.where(a < torch.finfo(a.dtype).max, a, 0.0).amax()) if (n_nan or n_inf or n_sent) else mx
        over = (int((a > finite).sum()) - n_inf - n_sent, n_nan + n_inf, n_sent, mxf)
    if math.isnan(mx):
        mx = math.inf
    if finite is None:
        nz = -1
    elif a.numel() <= 2**24 and not math.isinf(mx) and not (over and over[1]):
        # sign() is 0 or 1 here; float32 sums of at most 2**24 ones are exact, and this is several
        # times faster than counting a boolean mask (or count_nonzero)
        nz = int(torch.sign(a).sum())
    else:
        nz = int((a > 0).sum())
    idt = _INT_VIEW[a.dtype]
    ai = a.view(idt)
    ai.sub_(1)
    ai.bitwise_and_(_LOW_BITS[idt])
    m = int(ai.amin())
    mn = math.inf if m == _LOW_BITS[idt] else float(torch.tensor(m + 1, dtype=idt).view(a.dtype))
    return ai, mx, mn, nz, over


# --------------------------------------------------------------------------------------------
# The observer
# --------------------------------------------------------------------------------------------


class _Mode(TorchDispatchMode):
    def __init__(self, obs: Observer) -> None:
        super().__init__()
        self.obs = obs

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        obs = self.obs
        if obs._internal:
            return func(*args, **kwargs)
        if func.is_view:
            out = func(*args, **kwargs)
            obs._alias(args, out)
            return out
        return obs._on_op(func, args, kwargs)


class Observer:
    """Record every aten op and every buffer of ``model`` on the watched training steps.

    Parameters
    ----------
    model : nn.Module
        The model (hooks are added to its modules while a step is observed, removed after).
    fmt : str or FloatFormat
        The target format the ranges are compared with.
    max_steps : int
        At most this many steps are observed (the first ones asked for); later steps run at
        full speed.
    extra_buffers : dict, optional
        Further tensors to follow like buffers (an EMA held outside the model), by name.

    Examples
    --------
    >>> obs = Observer(model, "fp16")                                   # doctest: +SKIP
    >>> for i, (x, y) in enumerate(batches):                           # doctest: +SKIP
    ...     opt.zero_grad()
    ...     with obs.step(i):
    ...         loss_fn(model(x), y).backward()
    ...     opt.step()
    >>> obs.result().overflowing()                                       # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, fmt: str | FloatFormat = "fp16", *, max_steps: int = 8,
                 extra_buffers: dict[str, torch.Tensor] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.model = model
        self.fmt = get_format(fmt)
        self.max_steps = int(max_steps)
        self.extra_buffers = dict(extra_buffers or {})
        self.bounds = RangeBoundaries.of(self.fmt)
        self._dtype_bounds: dict[torch.dtype, tuple[float, float, float]] = {}
        self._paths = {id(m): n for n, m in model.named_modules()}
        self._types = {n: type(m).__name__ for n, m in model.named_modules()}
        self.ops: dict[tuple, OpRecord] = {}
        self.buffers: dict[str, BufferRecord] = {}
        self.steps: list[int] = []
        self._internal = False
        self._stack: list[str] = []
        self._marks_seq: list[int] = []
        self._marks_path: list[str | None] = []
        self._occ: dict[tuple, int] = {}
        self._cache: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self._producer: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self._buffer_ids: dict[int, str] = {}
        self._step: int = -1
        self._seconds = 0.0
        self._mut_args: dict[Any, tuple[int, ...]] = {}
        self.unmeasured: dict[str, int] = {}  # op -> calls whose tensors the statistics could not read
        for name, b in self._all_buffers():
            self.buffers[name] = self._new_buffer_record(name, b)

    # ---- public -----------------------------------------------------------------------------

    def wants(self, step: int) -> bool:
        """Whether :meth:`step` would observe this step (the first ``max_steps`` asked for)."""
        return len(self.steps) < self.max_steps and step not in self.steps

    @contextlib.contextmanager
    def step(self, step: int) -> Iterator[bool]:
        """Observe everything run inside the block as training step ``step`` (if :meth:`wants`)."""
        if not self.wants(step):
            yield False
            return
        import time

        t0 = time.perf_counter()
        self._begin(step)
        try:
            with _Mode(self):
                yield True
        finally:
            self._end()
            self._seconds += time.perf_counter() - t0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Torch work inside this block (e.g. a caller's own hooks measuring tensors) is not recorded."""
        prev = self._internal
        self._internal = True
        try:
            yield
        finally:
            self._internal = prev

    def result(self) -> Observation:
        """The records so far (BatchNorm predictions computed now)."""
        for b in self.buffers.values():
            if b.kind in ("running_var", "running_mean") and b.target is not None and b.momentum is not None:
                b.prediction = predict_running_average(b, self.fmt)
        return Observation(self.fmt.name, [r for r in self.ops.values() if r.calls], list(self.buffers.values()), list(self.steps),
                           round(self._seconds, 4), dict(self.unmeasured))

    # ---- steps, hooks, buffers ----------------------------------------------------------------

    def _all_buffers(self) -> list[tuple[str, torch.Tensor]]:
        out = [(n, b) for n, b in self.model.named_buffers() if b is not None and b.is_floating_point()]
        out += [(n, b) for n, b in self.extra_buffers.items() if isinstance(b, torch.Tensor) and b.is_floating_point()]
        return out

    def _new_buffer_record(self, name: str, b: torch.Tensor) -> BufferRecord:
        mod = name.rpartition(".")[0] if name not in self.extra_buffers else _OUTSIDE
        kind = name.rpartition(".")[2] if name.rpartition(".")[2] in ("running_mean", "running_var") else None
        return BufferRecord(name, mod, self._types.get(mod, "tensor"), b.numel(), kind=kind,
                            initial=b.detach().to(torch.float64).reshape(-1).cpu().numpy().copy())

    def _begin(self, step: int) -> None:
        self._step = step
        self.steps.append(step)
        self._stack = []
        self._occ = {}
        self._marks_seq = [-1]
        self._marks_path = [_OUTSIDE]
        self._before = {}
        self._buffer_ids = {}
        for name, b in self._all_buffers():
            if name not in self.buffers:
                self.buffers[name] = self._new_buffer_record(name, b)
            self._before[name] = b.detach().clone()
            self._buffer_ids[id(b)] = name
        self._handles = []
        for path, m in self.model.named_modules():
            self._handles.append(m.register_forward_pre_hook(self._pre_hook(path)))
            self._handles.append(m.register_forward_hook(self._post_hook(path), always_call=True))

    def _end(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._internal = True
        try:
            for name, b in self._all_buffers():
                self._measure_buffer(name, b)
        finally:
            self._internal = False
            self._before = {}

    def _mark(self, path: str | None) -> None:
        self._marks_seq.append(torch._C._autograd._get_sequence_nr())
        self._marks_path.append(path)

    def _pre_hook(self, path: str) -> Callable[..., None]:
        def f(mod: nn.Module, inp: Any) -> None:
            self._stack.append(path)
            self._mark(path)

        return f

    def _post_hook(self, path: str) -> Callable[..., None]:
        def f(mod: nn.Module, inp: Any, out: Any) -> None:
            if self._stack and self._stack[-1] == path:
                self._stack.pop()
            self._mark(self._stack[-1] if self._stack else _OUTSIDE)
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    key = self._producer.get(t)
                    if key is not None and key in self.ops:
                        self.ops[key].module_output = True

        return f

    def _backward_path(self) -> tuple[str, str | None]:
        node = torch._C._current_autograd_node()
        if node is None:
            return _OUTSIDE, None
        name = node.name()
        seq = node._sequence_nr()
        i = bisect.bisect_right(self._marks_seq, seq) - 1
        if seq >= 2**63 or i < 0:  # AccumulateGrad and nodes made before the step
            return _OUTSIDE, name
        path = self._marks_path[i]
        return (_OUTSIDE if path is None else path), name

    # ---- per op ---------------------------------------------------------------------------------

    def _mutable_args(self, func: Any) -> tuple[int, ...]:
        r = self._mut_args.get(func)
        if r is None:
            r = tuple(i for i, a in enumerate(func._schema.arguments)
                      if a.alias_info is not None and a.alias_info.is_write)
            self._mut_args[func] = r
        return r

    def _alias(self, args: tuple, out: Any) -> None:
        """A view (or copy) of a measured tensor keeps its producer, so that a module returning
        ``addmm(...).view(...)`` marks the ``addmm`` as the module's output."""
        if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            key = self._producer.get(args[0])
            if key is not None:
                self._producer[out] = key

    def _on_op(self, func: Any, args: tuple, kwargs: dict) -> Any:
        op = func._schema.name.split("::")[-1]
        if op in _SKIP_OPS:
            out = func(*args, **kwargs)
            if op in _ALIAS_OPS:
                self._alias(args, out)
            return out
        backward = torch._C._current_autograd_node() is not None
        mut = self._mutable_args(func)
        # input ranges (before an in-place op changes them)
        in_max, in_min = 0.0, math.inf
        flat_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        self._internal = True
        bn = False
        try:
            for a in flat_in:
                if a.is_floating_point() and a.numel() and a.layout == torch.strided:
                    mx, mn = self._input_range(a)
                    in_max = max(in_max, mx)
                    in_min = min(in_min, mn)
            bn = op in _BN_OPS and self._bn_before(func, args, kwargs)
        except Exception:  # a tensor the statistics cannot read: the op runs, unmeasured
            self.unmeasured[op] = self.unmeasured.get(op, 0) + 1
        finally:
            self._internal = False
        out = func(*args, **kwargs)  # the model's own errors propagate unchanged
        self._internal = True
        try:
            self._record(func, op, args, kwargs, out, backward, mut, bn, in_max, in_min)
        except Exception:
            self.unmeasured[op] = self.unmeasured.get(op, 0) + 1
        finally:
            self._internal = False
        return out

    def _record(self, func: Any, op: str, args: tuple, kwargs: dict, out: Any, backward: bool,
                mut: tuple[int, ...], bn: bool, in_max: float, in_min: float) -> None:
        if backward:
            path, node = self._backward_path()
            phase = "backward"
        else:
            path, node = (self._stack[-1] if self._stack else _OUTSIDE), None
            phase = "forward"
        okey = (phase, path, op)
        occ = self._occ.get(okey, 0)
        self._occ[okey] = occ + 1
        occ = min(occ, _MAX_OCCURRENCE)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        inplace = bool(mut)
        red = None
        for j, t in enumerate(outs):
            if not t.is_floating_point() or t.numel() == 0 or t.layout != torch.strided:
                continue
            key = (phase, path, op, occ, j)
            rec = self.ops.get(key)
            if rec is None:
                if red is None:
                    red = _reduction(op, args, kwargs)
                rec = self.ops[key] = OpRecord(
                    op, path, self._types.get(path, "-"), phase, occ, j,
                    node=node, source=None if backward else _user_source(), inplace=inplace,
                    reduction=red[0], reduction_what=red[1])
            self._measure_output(rec, t, in_max, in_min)
            self._producer[t] = key
        if bn:
            self._bn_after(func, args, kwargs, path, out)
        if mut:
            for i in mut:
                a = args[i] if i < len(args) else None
                if isinstance(a, torch.Tensor) and id(a) in self._buffer_ids:
                    self._note_buffer_update(self._buffer_ids[id(a)], op, path)

    def _dtype(self, dtype: torch.dtype) -> tuple[float, float, float, int, int]:
        """Boundaries in ``dtype`` (flush, subnormal, finite) and the first two as ``bits - 1``
        of the dtype's same-width integer view (see :func:`_abs_stats`)."""
        b = self._dtype_bounds.get(dtype)
        if b is None:
            fl, sb, fi = self.bounds.in_dtype(dtype)
            idt = _INT_VIEW[dtype]
            bits = [int(torch.tensor(v, dtype=dtype).view(idt)) - 1 for v in (fl, sb)]
            b = self._dtype_bounds[dtype] = (fl, sb, fi, bits[0], bits[1])
        return b

    def _input_range(self, a: torch.Tensor) -> tuple[float, float]:
        c = self._cache.get(a)
        if c is not None and c[0] == a._version:
            return c[1], c[2]
        _, mx, mn, _, _ = _abs_stats(a, None)
        self._cache[a] = (a._version, mx, mn)
        return mx, mn

    def _measure_output(self, rec: OpRecord, t: torch.Tensor, in_max: float, in_min: float) -> None:
        fl_b, sub_b, fin, _, _ = bnd = self._dtype(t.dtype if t.dtype in _INT_VIEW else torch.float32)
        n_over = n_nonfin = n_sub = n_fl = 0
        ai, mx, mn, nz, over = _abs_stats(t, fin)
        n_sent = 0
        mxf = mx
        if over is not None:
            n_over, n_nonfin, n_sent, mxf = over
        if mn <= sub_b and nz:  # some value is subnormal or flushed: count them (skipped otherwise)
            # in the transformed integer view zeros sit above every boundary
            n_le_flush = int(torch.sum(ai <= bnd[3], dtype=torch.int64)) if mn <= fl_b else 0
            n_le_sub = int(torch.sum(ai <= bnd[4], dtype=torch.int64)) if fl_b < sub_b else n_le_flush
            n_fl = n_le_flush
            n_sub = n_le_sub - n_le_flush
        numel = t.numel()
        rec.calls += 1
        if not rec.steps or rec.steps[-1] != self._step:
            rec.steps.append(self._step)
        rec.numel += numel
        rec.nonzero += nz
        rec.max_abs = max(rec.max_abs, mx)
        rec.max_finite_abs = max(rec.max_finite_abs, mxf)
        rec.min_abs_nonzero = min(rec.min_abs_nonzero, mn)
        rec.n_overflow += n_over
        rec.n_nonfinite += n_nonfin
        rec.n_sentinel += n_sent
        rec.n_subnormal += n_sub
        rec.n_flushed += n_fl
        rec.in_max_abs = max(rec.in_max_abs, in_max)
        rec.in_min_abs_nonzero = min(rec.in_min_abs_nonzero, in_min)
        rec.step_max[self._step] = max(rec.step_max.get(self._step, 0.0), mx)
        if n_over and rec.first_overflow_step is None:
            rec.first_overflow_step = self._step
        self._cache[t] = (t._version, mx, mn)

    # ---- buffers ---------------------------------------------------------------------------------

    def _bn_args(self, func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
        names = [a.name for a in func._schema.arguments]
        d = dict(zip(names, args))
        d.update(kwargs)
        return d

    def _bn_before(self, func: Any, args: tuple, kwargs: dict) -> bool:
        d = self._bn_args(func, args, kwargs)
        rv, rm = d.get("running_var"), d.get("running_mean")
        training = d.get("training", True)
        return bool(training) and isinstance(rv, torch.Tensor) and id(rv) in self._buffer_ids \
            or (bool(training) and isinstance(rm, torch.Tensor) and id(rm) in self._buffer_ids)

    def _bn_after(self, func: Any, args: tuple, kwargs: dict, path: str, out: Any) -> None:
        """Record the batch statistics a BatchNorm kernel averages into its running buffers.

        The kernel returns the batch mean and ``1/sqrt(var_biased + eps)``; the unbiased variance
        the running average uses is ``(invstd**-2 - eps) * n / (n - 1)``.  Where the variance is
        below ``1e-3 eps`` that difference cancels, so it is computed from the input instead.
        """
        d = self._bn_args(func, args, kwargs)
        x = d.get("input")
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            return
        n = x.numel() // x.shape[1]
        eps_v = float(d.get("eps") or 0.0)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        var = mean = None
        if len(outs) >= 3 and all(isinstance(t, torch.Tensor) and t.shape == (x.shape[1],) for t in outs[1:3]):
            mean = outs[1].detach().to(torch.float64).cpu().numpy()
            with np.errstate(divide="ignore"):
                vb = 1.0 / np.square(outs[2].detach().to(torch.float64).cpu().numpy()) - eps_v
            if np.all(np.isfinite(vb)) and np.all(vb >= 1e-3 * eps_v):
                var = vb * (n / (n - 1) if n > 1 else 1.0)
        if var is None or mean is None:
            dims = [i for i in range(x.ndim) if i != 1]
            xf = x.detach().float()
            var = xf.var(dim=dims, correction=1 if n > 1 else 0).to(torch.float64).cpu().numpy()
            mean = xf.mean(dim=dims).to(torch.float64).cpu().numpy()
        mom = d.get("momentum")
        eps = d.get("eps")
        for key, val in (("running_var", var), ("running_mean", mean)):
            t = d.get(key)
            if isinstance(t, torch.Tensor) and id(t) in self._buffer_ids:
                b = self.buffers[self._buffer_ids[id(t)]]
                b.kind = key
                b.target = val
                b.momentum = float(mom) if mom is not None else None
                b.eps = float(eps) if eps is not None else None
                if key == "running_mean":
                    b.companion_target = var
                self._note_buffer_update(b.name, func._schema.name.split("::")[-1], path)

    def _note_buffer_update(self, name: str, op: str, path: str) -> None:
        b = self.buffers[name]
        label = f"aten.{op} in {path or 'model'}"
        if label not in b.updated_by:
            b.updated_by.append(label)

    def _measure_buffer(self, name: str, b: torch.Tensor) -> None:
        rec = self.buffers[name]
        new = b.detach().to(torch.float64).reshape(-1).cpu().numpy()
        old_t = self._before.get(name)
        a = np.abs(new)
        r = np.abs(round_to(new, self.fmt.with_(overflow="inf")))
        rec.steps.append(self._step)
        nzm = (a > 0) & np.isfinite(a)
        rec.max_abs.append(float(a.max()) if a.size else 0.0)
        rec.min_abs_nonzero.append(float(a[nzm].min()) if nzm.any() else math.inf)
        rec.n_overflow.append(int(np.sum(~np.isfinite(r) | (r > self.fmt.max))))
        rec.n_flushed.append(int(np.sum(nzm & (r == 0))))
        rec.n_subnormal.append(int(np.sum((r > 0) & (r < self.fmt.min_normal))))
        if old_t is not None and old_t.shape == b.shape:
            old = old_t.to(torch.float64).reshape(-1).cpu().numpy()
            d = new - old
            o16 = round_to(old, self.fmt)
            with np.errstate(invalid="ignore", over="ignore"):
                lost = (d != 0) & np.isfinite(d) & (round_to(o16 + d, self.fmt) == o16)
            rec.n_changed.append(int(np.sum((d != 0) & np.isfinite(d))))
            rec.n_update_lost.append(int(lost.sum()))
        else:
            rec.n_changed.append(0)
            rec.n_update_lost.append(0)


def predict_running_average(b: BufferRecord, fmt: FloatFormat, horizon: int = 5000) -> dict[str, Any]:
    """Simulate a BatchNorm running statistic stored in ``fmt``: ``r <- round((1-m) r + m v)``,
    with the last observed batch statistic ``v`` held fixed, until nothing changes or ``horizon``
    steps; from two starts, the buffer's value when observation began (training goes on from this
    model) and BatchNorm's reset value (1 for a variance, 0 for a mean: training from scratch),
    keeping the worse outcome.

    The update is computed in float64 and rounded once per step (PyTorch's low-precision CPU
    kernels compute it in float32 and round the stored result).  The map is monotone in ``r``, so
    the iterates move monotonically and settle.  Returns the first step with a non-finite value
    (``overflow_step``), the step the simulation settled (``settled_step``), and the error the
    settled value makes in evaluation mode against the exact limit ``v``: for a running variance
    the relative error of the normalising scale ``sqrt(r + eps)`` vs ``sqrt(v + eps)``, for a
    running mean ``|r - v| / sqrt(var + eps)`` (the shift in units of the batch standard
    deviation).  ``eval_error`` is the largest over channels, ``channel`` its index, ``start``
    which start gave it.
    """
    v = np.asarray(b.target, dtype=np.float64).reshape(-1)
    r0 = np.asarray(b.initial, dtype=np.float64).reshape(-1)
    if r0.shape != v.shape:
        return {"overflow_step": None, "settled_step": None, "eval_error": 0.0, "channel": None,
                "note": "shape changed"}
    reset = np.full_like(v, 1.0 if b.kind == "running_var" else 0.0)
    runs = [(_simulate_average(b, fmt, r0, v, horizon), "current"), (_simulate_average(b, fmt, reset, v, horizon), "reset")]

    def badness(r: dict[str, Any]) -> tuple[float, float]:
        return (-(r["overflow_step"] or math.inf), r["eval_error"])

    worst, start = max(runs, key=lambda x: badness(x[0]))
    worst["start"] = start
    return worst


def _simulate_average(b: BufferRecord, fmt: FloatFormat, r0: np.ndarray, v: np.ndarray, horizon: int) -> dict[str, Any]:
    m = float(b.momentum)
    eps = float(b.eps or 0.0)
    ieee = fmt.with_(overflow="inf")
    r = round_to(r0, ieee)
    overflow_step = None
    settled = None
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, horizon + 1):
            nxt = round_to((1.0 - m) * r + m * v, ieee)
            if overflow_step is None and not np.all(np.isfinite(nxt)):
                overflow_step = k
                r = nxt
                break
            if np.array_equal(nxt, r):
                settled = k - 1
                break
            r = nxt
        if b.kind == "running_var":
            err = np.abs(np.sqrt(np.maximum(r, 0) + eps) / np.sqrt(np.maximum(v, 0) + eps) - 1.0)
        else:
            var = np.asarray(b.companion_target if b.companion_target is not None else np.ones_like(v))
            err = np.abs(r - v) / np.sqrt(np.maximum(var, 0) + eps)
    err = np.where(np.isfinite(err), err, np.inf)
    c = int(np.argmax(err)) if err.size else None
    return {
        "overflow_step": overflow_step, "settled_step": settled,
        "eval_error": float(err[c]) if c is not None else 0.0, "channel": c,
        "limit": float(v[c]) if c is not None else None, "settled_value": float(r[c]) if c is not None else None,
        "target_max": float(np.max(np.abs(v))) if v.size else 0.0,
    }


def observe_training(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    fmt: str | FloatFormat = "fp16",
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 0.01,
    max_steps: int = 8,
) -> Observation:
    """Train ``model`` (in place) on ``batches`` and observe the first ``max_steps`` steps.

    ``batches`` yields ``(inputs, target)``; inputs are a tensor, a tuple (positional arguments)
    or a dict (keyword arguments); floating inputs are made float32, integer ones are kept.
    ``loss_fn(output, target)`` defaults to cross-entropy on ``output`` (or on
    ``output.logits`` / ``output[0]`` for models returning a structure).
    """
    obs = Observer(model, fmt, max_steps=max_steps)
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = loss_fn or default_loss
    model.train()
    for i, (xb, yb) in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        with obs.step(i):
            loss = loss_fn(call_model(model, float_inputs(xb)), yb)
            loss.backward()
        opt.step()
    return obs.result()


def logits_of(out: Any) -> torch.Tensor:
    """The logits tensor of a model output: the tensor itself, ``.logits``, or the first element."""
    if isinstance(out, torch.Tensor):
        return out
    lg = getattr(out, "logits", None)
    if isinstance(lg, torch.Tensor):
        return lg
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ValueError(f"cannot find logits in a model output of type {type(out).__name__}: "
                     "return a tensor, a tuple whose first element is the logits, or an object with .logits")


def default_loss(out: Any, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the logits against integer targets (sequence outputs flattened)."""
    lg = logits_of(out)
    if lg.ndim > 2:
        return nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1))
    return nn.functional.cross_entropy(lg, y)

"""Run a traced model step by step: real torch (fp32, float64, half) and the emulator.

Every step of a :class:`~fpanalysis.nn.trace.TracedModel` can be evaluated

* with real torch kernels in a given dtype (:func:`torch_step`): ``float32`` is the fp32 run
  ``M32`` (the model's own kernels), ``float64`` the reference, ``float16`` the real
  ``model.half()`` run (on the CPU, or CUDA when given CUDA tensors);
* in the emulator (:func:`emulate_step`), which reproduces what PyTorch does in a
  low-precision format ``fmt``: parameters and input rounded to ``fmt``; ``Linear``, ``Conv2d``
  and ``matmul`` through :mod:`fpanalysis.linalg` under an arithmetic profile
  (``fp32-accumulate``: exact products, binary32 accumulation, one rounding); every other
  operation computed in binary32 "opmath" from the ``fmt`` inputs and rounded once to ``fmt``
  (activations, softmax, batch/layer norm with binary32 statistics, pooling, means, residual
  additions), exactly like PyTorch's reduced-precision CPU/CUDA kernels (docs/semantics.md §1.2, §2, §3).
  Parameters and the input are converted with round-to-nearest-even (like ``tensor.half()``);
  ``mode`` applies to the results of arithmetic.

Values of the emulator are float32 tensors holding numbers of ``fmt``.

>>> import torch
>>> from fpanalysis.nn.trace import trace_model
>>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.GELU()).eval()
>>> x = torch.randn(5, 4)
>>> out = run_model(trace_model(m), x, "fp16")
>>> sorted(out)
['emulator', 'float32', 'float64', 'half']
>>> bool(torch.equal(out["float32"]["output"], m(x)))
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..formats import FloatFormat, get_format
from ..linalg import Order, Profile
from ..rounding import RoundingMode, RoundingStats, fits_float32, round_to
from .trace import Step, TracedModel

__all__ = ["EXACT_KINDS", "LayerEmulator", "ParamCache", "emulate_step", "run_model", "torch_step"]

#: Steps whose result is exactly representable when their inputs are (no rounding).
EXACT_KINDS = frozenset({"relu", "maxpool2d", "shape", "cat", "identity", "size", "output"})



@dataclass(frozen=True)
class LayerEmulator:
    """How the emulator computes: format, arithmetic profile, rounding mode, summation order.

    Parameters
    ----------
    fmt : str or FloatFormat
        Storage format (``"fp16"``, ``"bf16"``, ...); its numbers must fit in binary32.
    profile : str
        ``"fp32-accumulate"`` (PyTorch/cuBLAS semantics), ``"ieee"`` (every product and sum
        rounded to ``fmt``) or ``"exact"`` (one rounding of the exact result), for Linear,
        Conv2d and matmul; see docs/semantics.md §1.
    mode : str
        Rounding mode of every rounding to ``fmt``.
    order : str or None
        Summation order of the linear-algebra kernels: ``"blas"`` (binary32 BLAS, the default
        for ``fp32-accumulate``), ``"sequential"`` (the default for ``ieee``), ``"pairwise"``,
        ``"blocked"``.
    block : int
        Block size of the ``"blocked"`` order.
    seed : int or None
        Seed of stochastic rounding.
    """

    fmt: Any = "fp16"
    profile: str = "fp32-accumulate"
    mode: str = "nearest-even"
    order: str | None = None
    block: int = 32
    seed: int | None = None

    def __post_init__(self) -> None:
        f = get_format(self.fmt)
        object.__setattr__(self, "fmt", f)
        if not fits_float32(f):
            raise ValueError(f"format {f.name!r}: the emulator computes in binary32 opmath and needs a format "
                             "whose numbers binary32 holds")
        prof = Profile.parse(self.profile).value
        object.__setattr__(self, "profile", prof)
        object.__setattr__(self, "mode", RoundingMode.parse(self.mode).value)
        order = Order.parse(self.order).value if self.order else ("blas" if prof == "fp32-accumulate" else "sequential")
        if order == "blas" and prof != "fp32-accumulate":
            raise ValueError("order='blas' applies only to the fp32-accumulate profile")
        object.__setattr__(self, "order", order)
        if RoundingMode.parse(self.mode) is RoundingMode.STOCHASTIC and self.seed is None:
            raise ValueError("stochastic rounding needs a seed")

    @property
    def format(self) -> FloatFormat:
        return self.fmt  # type: ignore[return-value]

    def round(self, x: torch.Tensor, stream: int = 0) -> tuple[torch.Tensor, RoundingStats]:
        """Round a float32/float64 tensor to ``fmt`` (float32 result) with statistics."""
        arr = x.detach().cpu().numpy()
        if arr.dtype != np.float32:
            arr = arr.astype(np.float64, copy=False)
        y, st = round_to(arr, self.fmt, self.mode, seed=self.seed, stream=stream, dtype=np.float32,
                         return_stats=True)
        return torch.from_numpy(np.asarray(y, dtype=np.float32)).reshape(x.shape), st


class ParamCache:
    """Parameters of each step in each dtype, and rounded to a format (computed once)."""

    def __init__(self) -> None:
        self._c: dict[tuple, Any] = {}

    def get(self, step: Step, key: str, dtype: torch.dtype, device: Any = "cpu") -> torch.Tensor | None:
        v = step.attrs.get(key)
        if v is None:
            return None
        k = (step.name, key, dtype, str(device))
        if k not in self._c:
            self._c[k] = v.detach().to(device=device, dtype=dtype)
        return self._c[k]

    def rounded(self, step: Step, key: str, emu: LayerEmulator) -> torch.Tensor | None:
        """``fl(p)`` as float32 (round to nearest even, like ``tensor.half()``)."""
        v = step.attrs.get(key)
        if v is None:
            return None
        k = (step.name, key, "rounded", emu.fmt)
        if k not in self._c:
            y = round_to(v.detach().float().cpu().numpy(), emu.fmt, "nearest-even", dtype=np.float32)
            self._c[k] = torch.from_numpy(np.asarray(y, dtype=np.float32)).reshape(v.shape)
        return self._c[k]

    def memo(self, key: tuple, fn: Any) -> Any:
        if key not in self._c:
            self._c[key] = fn()
        return self._c[key]


def _affine(x: torch.Tensor, a: dict) -> torch.Tensor:
    if a["div"] is not None:
        return x / a["div"]
    if a["shift"] == 0.0:
        return -x if a["scale"] == -1.0 else x * a["scale"]
    if a["scale"] == 1.0:
        return x + a["shift"]
    return a["shift"] - x  # scale == -1: a constant minus a tensor


def _reduce(x: torch.Tensor, a: dict, kind: str) -> torch.Tensor:
    dims = a["dim"]
    if dims is None or any((d % x.ndim) == 0 for d in dims):
        raise ValueError(f"a {kind} over the batch dimension mixes inputs; only per-sample reductions are supported")
    return x.mean(dim=dims, keepdim=a["keepdim"]) if kind == "mean" else x.sum(dim=dims, keepdim=a["keepdim"])


def torch_step(step: Step, ins: list[Any], dtype: torch.dtype, cache: ParamCache, values: dict | None = None,
               device: Any = None) -> Any:
    """Evaluate ``step`` with real torch kernels, parameters converted to ``dtype``.

    ``ins`` are the values of ``step.inputs`` (tensors in ``dtype`` on one device, or sizes);
    ``values`` maps step names to values for argument templates (shape steps); ``device``
    places parameters of steps without tensor inputs (default: the inputs' device, or CPU).

    >>> import torch
    >>> from fpanalysis.nn.trace import trace_model
    >>> t = trace_model(torch.nn.Sequential(torch.nn.ReLU()))
    >>> torch_step(t.steps[1], [torch.tensor([-1.0, 2.0])], torch.float32, ParamCache()).tolist()
    [0.0, 2.0]
    """
    k, a = step.kind, step.attrs
    x = ins[0] if ins else None
    dev = x.device if isinstance(x, torch.Tensor) else (device or "cpu")

    def p(key: str) -> torch.Tensor | None:
        return cache.get(step, key, dtype, dev)

    if k in ("input", "output", "identity"):
        return x
    if k == "param":
        return p("value")
    if k == "linear":
        return F.linear(x, p("weight"), p("bias"))
    if k == "conv2d":
        return F.conv2d(x, p("weight"), p("bias"), a["stride"], a["padding"], a["dilation"], a["groups"])
    if k == "matmul":
        return torch.matmul(ins[0], ins[1])
    if k == "batchnorm":
        return F.batch_norm(x, p("running_mean"), p("running_var"), p("weight"), p("bias"), False, 0.0, a["eps"])
    if k == "layernorm":
        return F.layer_norm(x, a["normalized_shape"], p("weight"), p("bias"), a["eps"])
    if k == "relu":
        return F.relu(x)
    if k == "gelu":
        return F.gelu(x, approximate=a.get("approximate", "none"))
    if k == "tanh":
        return torch.tanh(x)
    if k == "sigmoid":
        return torch.sigmoid(x)
    if k == "silu":
        return F.silu(x)
    if k == "maxpool2d":
        return F.max_pool2d(x, a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
    if k == "avgpool2d":
        return F.avg_pool2d(x, a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"])
    if k == "adaptive_avgpool2d":
        return F.adaptive_avg_pool2d(x, a["output_size"])
    if k in ("mean", "sum"):
        return _reduce(x, a, k)
    if k == "softmax":
        return torch.softmax(x, a["dim"])
    if k == "add":
        return ins[0] + ins[1]
    if k == "sub":
        return ins[0] - ins[1]
    if k == "mul":
        return ins[0] * ins[1]
    if k == "affine":
        return _affine(x, a)
    if k == "cat":
        return torch.cat(list(ins), dim=a["dim"])
    if k == "size":  # sizes and arithmetic on them: plain Python values, the same in every backend
        vals = dict(values or {})
        vals.update(zip(step.inputs, ins))
        return a["fn"](*step.resolve(a["args"], vals), **step.resolve(a["kwargs"], vals))
    if k == "shape":
        vals = dict(values or {})
        vals[a["x"].name] = x
        return a["fn"](x, *step.resolve(a["args"], vals), **step.resolve(a["kwargs"], vals))
    raise ValueError(f"step {step.describe()}: unknown kind {k!r}")  # pragma: no cover


def _stream(step_index: int, batch_index: int) -> int:
    return (batch_index << 16) + step_index


def emulate_step(step: Step, ins: list[Any], emu: LayerEmulator, cache: ParamCache, values: dict | None = None, *,
                 step_index: int = 0, batch_index: int = 0) -> tuple[Any, RoundingStats | None]:
    """Evaluate ``step`` in the emulator; returns (float32 tensor of ``fmt`` numbers, rounding stats).

    ``ins`` are emulator values (float32 tensors holding numbers of ``fmt``).  The statistics
    are those of the step's final rounding (``None`` for steps that do not round).

    >>> import torch
    >>> from fpanalysis.nn.trace import trace_model
    >>> t = trace_model(torch.nn.Sequential(torch.nn.Sigmoid()))
    >>> y, st = emulate_step(t.steps[1], [torch.tensor([0.1])], LayerEmulator("fp16"), ParamCache())
    >>> y.item() == torch.sigmoid(torch.tensor([0.1]).half()).item(), st.n
    (True, 1)
    """
    k, a = step.kind, step.attrs
    stream = _stream(step_index, batch_index)
    if k == "param":
        y = cache.rounded(step, "value", emu)
        return y, _stats_of(y, emu.fmt)
    if k == "input":  # a conversion, like tensor.half(): round to nearest even whatever ``mode`` is
        arr = ins[0].detach().float().cpu().numpy()
        y, st = round_to(arr, emu.fmt, "nearest-even", dtype=np.float32, return_stats=True)
        return torch.from_numpy(np.asarray(y, dtype=np.float32)).reshape(ins[0].shape), st
    if k in EXACT_KINDS:
        return torch_step(step, ins, torch.float32, cache, values), None
    if k in ("linear", "conv2d", "matmul"):
        y = _emulate_linear(step, ins, emu, cache, stream)
        return y, _stats_of(y, emu.fmt)
    # binary32 opmath on fmt inputs and fmt-rounded parameters, one rounding to fmt
    if k in ("batchnorm", "layernorm"):
        x = ins[0]
        r = {key: cache.rounded(step, key, emu) for key in ("weight", "bias", "running_mean", "running_var")}
        if k == "batchnorm":
            y32 = F.batch_norm(x, r["running_mean"], r["running_var"], r["weight"], r["bias"], False, 0.0, a["eps"])
        else:
            y32 = F.layer_norm(x, a["normalized_shape"], r["weight"], r["bias"], a["eps"])
    else:
        y32 = torch_step(step, ins, torch.float32, cache, values)
    return emu.round(y32, stream)


def _stats_of(y: torch.Tensor, fmt: FloatFormat) -> RoundingStats:
    """Range statistics of values already in ``fmt`` (for kernels that round internally)."""
    a = y.abs()
    sub = int(((a > 0) & (a < fmt.min_normal)).sum())
    ovf = int(torch.isinf(y).sum())
    return RoundingStats(y.numel(), 0, ovf, sub, 0)


def _emulate_linear(step: Step, ins: list[torch.Tensor], emu: LayerEmulator, cache: ParamCache, stream: int) -> torch.Tensor:
    from .. import linalg

    k, a = step.kind, step.attrs
    kw = {"order": emu.order, "block": emu.block, "mode": emu.mode, "seed": emu.seed, "stream": stream}
    if k == "matmul":
        A, B = ins[0].numpy(), ins[1].numpy()
        return torch.from_numpy(np.ascontiguousarray(linalg.matmul(A, B, emu.fmt, emu.profile, **kw), dtype=np.float32))
    W = cache.rounded(step, "weight", emu)
    b = cache.rounded(step, "bias", emu)
    x = ins[0]
    if k == "conv2d":
        y = linalg.conv2d(x.numpy(), W.numpy(), None if b is None else b.numpy(), a["stride"], a["padding"],
                      a["dilation"], a["groups"], emu.fmt, emu.profile, **kw)
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    # linear: the bias is one more term of each inner product (weight b_o, input 1), as torch does
    lead = x.shape[:-1]
    X = x.reshape(-1, x.shape[-1]).numpy()
    Wt = cache.memo((step.name, "Wt_aug", emu.fmt), lambda: _augmented_weight(W, b))
    if b is not None:
        X = np.concatenate([X, np.ones((X.shape[0], 1), dtype=np.float32)], axis=1)
    y = linalg.matmul(X, Wt, emu.fmt, emu.profile, **kw)
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).reshape(*lead, W.shape[0])


def _augmented_weight(W: torch.Tensor, b: torch.Tensor | None) -> np.ndarray:
    Wt = W.numpy().T
    if b is not None:
        Wt = np.concatenate([Wt, b.numpy()[None, :]], axis=0)
    return np.ascontiguousarray(Wt, dtype=np.float32)


def run_model(traced: TracedModel, x: torch.Tensor, fmt: Any = "fp16", profile: str = "fp32-accumulate", *,
              emulator: LayerEmulator | None = None, backends: tuple[str, ...] = ("float32", "float64", "emulator", "half"),
              device: Any = "cpu") -> dict[str, dict[str, Any]]:
    """Run a traced model on a batch ``x``, recording every step, in several ways.

    Parameters
    ----------
    traced : TracedModel
    x : torch.Tensor
        A batch of inputs (first dimension); taken as float32 (the fp32 model's input).
    fmt, profile : str
        LayerEmulator format and profile (or pass ``emulator``).
    backends : tuple of str
        Any of ``"float32"`` (real torch fp32), ``"float64"`` (reference), ``"emulator"``,
        ``"half"`` (real torch half kernels, on ``device``).

    Returns
    -------
    dict
        ``{backend: {step name: value}}``.  Keeps every value: for small batches (tests);
        :func:`fpanalysis.analysis.analyze` streams instead.
    """
    emu = emulator or LayerEmulator(fmt, profile)
    cache = ParamCache()
    x32 = x.detach().to("cpu", torch.float32)
    out: dict[str, dict[str, Any]] = {}
    for be in backends:
        vals: dict[str, Any] = {}
        for i, s in enumerate(traced.steps):
            if s.kind == "input":
                src = {"float32": x32, "float64": x32.double(), "half": x32.to(device).half()}.get(be, x32)
                ins = [src]
            else:
                ins = [vals[n] for n in s.inputs]
            if be == "emulator":
                vals[s.name] = emulate_step(s, ins, emu, cache, vals, step_index=i)[0]
            elif be in ("float32", "float64", "half"):
                dt = {"float32": torch.float32, "float64": torch.float64, "half": torch.float16}[be]
                vals[s.name] = ins[0] if s.kind == "input" else torch_step(s, ins, dt, cache, vals)
            else:
                raise ValueError(f"unknown backend {be!r}; valid backends are: float32, float64, emulator, half")
        out[be] = vals
    return out

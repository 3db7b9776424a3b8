"""Stream a data set through a traced model, recording per-layer statistics (torch side of analyze).

For each batch and each step, in one pass and without keeping activations after their last use:
the fp32 run, the float64 reference, the emulator, the real torch 16-bit run (float16 for fp16,
bfloat16 for bf16), the exact and the real 16-bit operation applied to the emulator's own input
(local error, bitwise match), and the
bounds of :mod:`fpanalysis.analysis.network_bounds`.  :class:`LayerStats` accumulates what
:class:`fpanalysis.report.LayerReport` reports.

Used by :func:`fpanalysis.analysis.analyze`; see there for the meaning of the options.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..formats import FloatFormat
from ..nn.execute import EXACT_KINDS, LayerEmulator, ParamCache, emulate_step, torch_step
from ..nn.trace import Step, TracedModel
from ..rounding import RoundingStats
from .network_bounds import BoundConfig, StepBound, local_bound, rounding_events, step_bound
from .report import LayerReport

__all__ = ["LayerStats", "OutputRecord", "shapes_and_events", "stream_batches"]

_BOUND_TOL = 1e-6  # relative slack for comparing errors measured against the float64 reference


class LayerStats:
    """Running statistics of one step over batches (see :class:`fpanalysis.report.LayerReport`)."""

    def __init__(self, step: Step, fmt: FloatFormat, shape: tuple, n: int | None) -> None:
        from .._kernels.stats import FLOAT_FIELDS, INT_FIELDS

        self.step, self.fmt, self.shape, self.n = step, fmt, shape, n
        self.count = 0
        self.F = np.zeros(len(FLOAT_FIELDS))
        self.I = np.zeros(len(INT_FIELDS), dtype=np.int64)
        self.fields = {k: j for j, k in enumerate(FLOAT_FIELDS)}
        self.ifields = {k: j for j, k in enumerate(INT_FIELDS)}
        self.exp_lo = fmt.emin - fmt.p - 15
        self.exp_hi = fmt.emax + 16
        self.hist = np.zeros(self.exp_hi - self.exp_lo + 1, dtype=np.int64)
        self.fail = 0.0
        self.flushed = self.overflow = 0
        self.n_local = self.n_half = self.n_local_half = 0
        self.has_ref = False

    def update(self, *, v32: torch.Tensor, ve: torch.Tensor, b: StepBound, v64: torch.Tensor | None,
               vh: torch.Tensor | None, local_exact: torch.Tensor | None, local_half: torch.Tensor | None,
               lb: StepBound | None, st: RoundingStats | None) -> None:
        from .._kernels.stats import run_layer_stats

        def a(t: torch.Tensor | None, dtype: torch.dtype) -> np.ndarray | None:
            if t is None:
                return None
            return t.detach().to("cpu", dtype).contiguous().numpy()

        loc = local_exact is not None and lb is not None
        F, I, H = run_layer_stats(
            a(ve, torch.float32), a(v32, torch.float32), a(b.G.expand(ve.shape), torch.float64),
            a(b.Gp.expand(ve.shape), torch.float64), a(v64, torch.float64), a(vh, torch.float32),
            a(local_exact, torch.float64) if loc else None, a(local_half, torch.float32),
            a(lb.G.expand(ve.shape), torch.float64) if loc else None,
            a(lb.Gp.expand(ve.shape), torch.float64) if loc else None,
            min_normal=self.fmt.min_normal, tol=_BOUND_TOL, exp_lo=self.exp_lo, nbins=self.hist.size)
        m = ve.numel()
        self.count += m
        maxes = ("err_max", "ref_max", "bound_max", "bound_prob_max", "err_exact_max", "fp32_err_max", "half_err_max",
                 "local_err_max", "local_bound_max", "local_bound_prob_max", "abs_max")
        for k, j in self.fields.items():
            self.F[j] = max(self.F[j], F[j]) if k in maxes else self.F[j] + F[j]
        self.I += I
        self.hist += H
        self.fail = max(self.fail, float(b.fail or 0.0))
        self.has_ref |= v64 is not None
        self.n_half += m if vh is not None else 0
        self.n_local += m if loc else 0
        self.n_local_half += m if local_half is not None else 0
        if st is not None:
            self.flushed += st.flushed
            self.overflow += st.overflow
        else:
            self.overflow += int(I[self.ifields["n_inf"]])

    def report(self) -> LayerReport:
        F = {k: float(self.F[j]) for k, j in self.fields.items()}
        I = {k: int(self.I[j]) for k, j in self.ifields.items()}
        c = max(self.count, 1)
        nan = float("nan")

        def ratio(num: float, den: float) -> float:
            if den > 0:
                return num / den
            return nan if num == 0 else math.inf

        nl = max(self.n_local, 1)
        abs_local = F["local_err_sum"] / nl
        st = self.step
        return LayerReport(
            name=st.name, kind=st.kind, path=st.path, origin=st.origin, shape=tuple(self.shape), n=self.n,
            count=self.count, err_max=F["err_max"], err_mean=F["err_sum"] / c, err_rel=ratio(F["err_max"], F["ref_max"]),
            err_exact_max=F["err_exact_max"] if self.has_ref else nan,
            fp32_err_max=F["fp32_err_max"] if self.has_ref else nan,
            half_err_max=F["half_err_max"] if self.n_half else nan,
            local_err_max=F["local_err_max"], local_err_mean=abs_local, local_signed_mean=F["local_signed_sum"] / nl,
            local_bias=(F["local_signed_sum"] / nl) / abs_local if abs_local > 0 else nan,
            bound_max=F["bound_max"], bound_mean=F["bound_sum"] / c, bound_prob_max=F["bound_prob_max"],
            bound_prob_mean=F["bound_prob_sum"] / c, local_bound_max=F["local_bound_max"],
            local_bound_prob_max=F["local_bound_prob_max"],
            tightness=ratio(F["bound_max"], F["err_max"]), tightness_prob=ratio(F["bound_prob_max"], F["err_max"]),
            local_tightness=ratio(F["local_bound_max"], F["local_err_max"]),
            local_tightness_prob=ratio(F["local_bound_prob_max"], F["local_err_max"]),
            violations=I["violations"], violations_prob=I["violations_prob"], local_violations=I["local_violations"],
            local_violations_prob=I["local_violations_prob"], half_violations=I["half_violations"],
            failure_prob=self.fail, abs_max=F["abs_max"], fmt_max=self.fmt.max,
            frac_subnormal=I["n_subnormal"] / c, frac_flushed=self.flushed / c, n_overflow=self.overflow,
            n_nan=I["n_nan"], half_match=I["half_match"] / self.n_local_half if self.n_local_half else nan,
            half_match_chained=I["chain_match"] / self.n_half if self.n_half else nan,
            exp_lo=self.exp_lo, exp_hist=self.hist.tolist(), n_zero=I["n_zero"])


@dataclass
class OutputRecord:
    """Per-input outputs and bounds at the model output, concatenated over batches."""

    fp32: list = field(default_factory=list)
    emulator: list = field(default_factory=list)
    half: list = field(default_factory=list)
    G: list = field(default_factory=list)
    Gp: list = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v, 0) for k, v in self.__dict__.items() if v}


def shapes_and_events(traced: TracedModel, x1: torch.Tensor) -> tuple[dict[str, tuple], dict[str, int | None], int]:
    """Run the fp32 steps on one input: per-step output shapes (without batch axis), reduction
    lengths and the total number of probabilistic rounding events per input."""
    from .network_bounds import reduction_length

    cache = ParamCache()
    vals: dict[str, Any] = {}
    shapes: dict[str, tuple] = {}
    ns: dict[str, int | None] = {}
    events = 0
    with torch.no_grad():
        for s in traced.steps:
            ins = [x1] if s.kind == "input" else [vals[n] for n in s.inputs]
            out = ins[0] if s.kind == "input" else torch_step(s, ins, torch.float32, cache, vals)
            vals[s.name] = out
            if isinstance(out, torch.Tensor):
                shapes[s.name] = tuple(out.shape[1:])
                in_shapes = [tuple(i.shape) for i in ins if isinstance(i, torch.Tensor)]
                ns[s.name] = reduction_length(s, in_shapes)
                events += rounding_events(s, tuple(out.shape), in_shapes)
    return shapes, ns, events


class _Clock:
    """Accumulates wall time per phase: ``with clock("fp32"): ...``."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.t = timings
        self.key = ""
        self.t0 = 0.0

    def __call__(self, key: str) -> _Clock:
        self.key = key
        return self

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.t[self.key] = self.t.get(self.key, 0.0) + time.perf_counter() - self.t0


def _inputs(st: dict[str, dict[str, Any]], step: Step, key: str, conv: Callable[[Any], Any] | None = None) -> list[Any]:
    vals = [st[n][key] for n in step.inputs]
    if conv is None:
        return vals
    return [conv(v) if isinstance(v, torch.Tensor) else v for v in vals]


def stream_batches(traced: TracedModel, batches: Any, emu: LayerEmulator, cfg: BoundConfig, stats: dict[str, LayerStats],
                   *, reference: bool = True, real_half: bool = True, local: bool = True, half_device: Any = "cpu",
                   half_dtype: torch.dtype = torch.float16, timings: dict[str, float] | None = None,
                   on_batch: Callable[[int], None] | None = None) -> OutputRecord:
    """Run every batch through every step, updating ``stats``; return the outputs and bounds.

    ``batches`` yields float32 CPU tensors.  ``timings`` accumulates seconds per phase.  The
    real 16-bit run ("half": ``half_dtype``, float16 or bfloat16) is step by step on
    ``half_device``.
    """
    t = timings if timings is not None else {}
    for k in ("fp32", "float64", "emulator", "half", "local", "bounds", "stats"):
        t.setdefault(k, 0.0)
    clock = _Clock(t)
    cache = ParamCache()
    last = traced.last_use()
    out = OutputRecord()
    with torch.no_grad():
        for bi, xb in enumerate(batches):
            st: dict[str, dict[str, Any]] = {}
            sizes: dict[str, Any] = {}
            for i, s in enumerate(traced.steps):
                rec: dict[str, Any] = {}
                lx = lh = lb = None
                if s.kind == "input":
                    rec["v32"] = xb
                    rec["v64"] = xb.double() if reference else None
                    with clock("emulator"):
                        rec["ve"], rnd = emulate_step(s, [xb], emu, cache, step_index=i, batch_index=bi)
                    rec["vh"] = xb.to(device=half_device, dtype=half_dtype) if real_half else None
                    with clock("bounds"):
                        rec["b"] = step_bound(s, [xb], xb, cfg, cache)
                    lx, lh, lb = xb.double(), xb.to(half_dtype) if real_half else None, rec["b"]
                else:
                    vals = dict(sizes)
                    with clock("fp32"):
                        rec["v32"] = torch_step(s, _inputs(st, s, "v32"), torch.float32, cache, vals)
                    if s.kind == "size":
                        sizes[s.name] = rec["v32"]
                        st[s.name] = {k: rec["v32"] for k in ("v32", "v64", "ve", "vh", "b")}
                        continue
                    if reference:
                        with clock("float64"):
                            rec["v64"] = torch_step(s, _inputs(st, s, "v64"), torch.float64, cache, vals)
                    else:
                        rec["v64"] = None
                    with clock("emulator"):
                        rec["ve"], rnd = emulate_step(s, _inputs(st, s, "ve"), emu, cache, vals, step_index=i,
                                                      batch_index=bi)
                    rec["vh"] = None
                    if real_half:
                        with clock("half"):
                            rec["vh"] = torch_step(s, _inputs(st, s, "vh"), half_dtype, cache, vals, half_device)
                    with clock("bounds"):
                        rec["b"] = step_bound(s, [st[n]["b"] for n in s.inputs], rec["v32"], cfg, cache, vals)
                    if local and s.kind in EXACT_KINDS:  # exact on fmt inputs: no error of its own
                        lx = rec["ve"].double()
                        zero = torch.zeros(lx.shape, dtype=torch.float64)
                        lb = StepBound(lx, zero, zero)
                    elif local and s.kind == "param":
                        lx, lb = s.attrs["value"].double(), rec["b"]
                        lh = s.attrs["value"].to(half_dtype) if real_half else None
                    elif local:
                        with clock("local"):
                            e64 = _inputs(st, s, "ve", lambda v: v.double())
                            lx = torch_step(s, e64, torch.float64, cache, vals)
                            if real_half:
                                lh = torch_step(s, _inputs(st, s, "ve", lambda v: v.to(half_dtype)), half_dtype, cache,
                                                vals)
                            lb = local_bound(s, e64, lx, cfg, cache, vals)
                if s.name in stats:
                    with clock("stats"):
                        stats[s.name].update(v32=rec["v32"], ve=rec["ve"], b=rec["b"], v64=rec["v64"], vh=rec["vh"],
                                             local_exact=lx, local_half=lh, lb=lb, st=rnd)
                st[s.name] = rec
                if s.kind == "output":
                    b: StepBound = rec["b"]
                    out.fp32.append(rec["v32"].double().numpy())
                    out.emulator.append(rec["ve"].double().numpy())
                    if rec["vh"] is not None:
                        out.half.append(rec["vh"].double().cpu().numpy())
                    out.G.append(b.G.numpy())
                    out.Gp.append(b.Gp.numpy())
                for n in s.inputs:  # free what no later step reads
                    if last.get(n) == i and n != traced.output:
                        st.pop(n, None)
            if on_batch is not None:
                on_batch(bi)
    return out

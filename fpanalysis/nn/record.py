"""Stream a data set through a traced model, recording per-layer statistics (torch side of analyze).

For each batch and each step, in one pass and without keeping activations after their last use:
the fp32 run, the float64 reference, the emulator, the real torch half run, the exact and the
torch-half operation applied to the emulator's own input (local error, bitwise match), and the
bounds of :mod:`fpanalysis.nn.layer_bounds`.  :class:`LayerStats` accumulates what
:class:`fpanalysis.report.LayerReport` reports.

Used by :func:`fpanalysis.analysis.analyze`; see there for the meaning of the options.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..formats import FloatFormat
from ..report import LayerReport
from ..rounding import RoundingStats
from .execute import Emulator, ParamCache, emulate_step, torch_step
from .layer_bounds import BoundConfig, StepBound, local_bound, rounding_events, step_bound
from .trace import Step, TracedModel

__all__ = ["LayerStats", "OutputRecord", "shapes_and_events", "stream_batches"]

_BOUND_TOL = 1e-6  # relative slack for comparing errors measured against the float64 reference


def _err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a.double() - b.double()).abs()
    return torch.nan_to_num(d, nan=math.inf)


class LayerStats:
    """Running statistics of one step over batches (see :class:`fpanalysis.report.LayerReport`)."""

    def __init__(self, step: Step, fmt: FloatFormat, shape: tuple, n: int | None) -> None:
        self.step, self.fmt, self.shape, self.n = step, fmt, shape, n
        self.count = 0
        self.s: dict[str, float] = {k: 0.0 for k in (
            "err_max", "err_sum", "ref_max", "err_exact_max", "fp32_err_max", "half_err_max", "local_err_max",
            "local_err_sum", "local_signed_sum", "bound_max", "bound_sum", "bound_prob_max", "bound_prob_sum",
            "local_bound_max", "local_bound_prob_max", "abs_max")}
        self.i: dict[str, int] = {k: 0 for k in (
            "violations", "violations_prob", "local_violations", "local_violations_prob", "half_violations",
            "n_subnormal", "n_flushed", "n_overflow", "n_nan", "half_match", "half_match_n", "chain_match",
            "chain_match_n", "n_zero")}
        self.exp_lo = fmt.emin - fmt.p - 15
        self.exp_hi = fmt.emax + 16
        self.hist = np.zeros(self.exp_hi - self.exp_lo + 1, dtype=np.int64)
        self.fail = 0.0
        self.has_ref = self.has_half = False

    def _max(self, key: str, t: torch.Tensor) -> None:
        if t.numel():
            self.s[key] = max(self.s[key], float(t.max()))

    def update(self, *, v32: torch.Tensor, ve: torch.Tensor, b: StepBound, v64: torch.Tensor | None,
               vh: torch.Tensor | None, local_exact: torch.Tensor | None, local_half: torch.Tensor | None,
               lb: StepBound | None, st: RoundingStats | None) -> None:
        err = _err(ve, v32)
        self.count += err.numel()
        self._max("err_max", err)
        self.s["err_sum"] += float(err.sum()) if torch.isfinite(err).all() else math.inf
        ref = torch.nan_to_num(v32.double().abs(), nan=0.0, posinf=0.0)
        self._max("ref_max", ref)
        G, Gp = b.G, b.Gp
        self._max("bound_max", G)
        self._max("bound_prob_max", Gp)
        self.s["bound_sum"] += float(G.sum())
        self.s["bound_prob_sum"] += float(Gp.sum())
        self.i["violations"] += int((err > G).sum())
        self.i["violations_prob"] += int((err > Gp).sum())
        self.fail = max(self.fail, b.fail)
        if v64 is not None:
            self.has_ref = True
            self._max("err_exact_max", _err(ve, v64))
            self._max("fp32_err_max", _err(v32, v64))
        if vh is not None:
            self.has_half = True
            he = _err(vh.cpu(), v32)
            self._max("half_err_max", he)
            self.i["half_violations"] += int((he > G).sum())
            eq = (vh.float().cpu() == ve) | (torch.isnan(vh.float().cpu()) & torch.isnan(ve))
            self.i["chain_match"] += int(eq.sum())
            self.i["chain_match_n"] += eq.numel()
        if local_exact is not None and lb is not None:
            le = _err(ve, local_exact)
            self._max("local_err_max", le)
            self.s["local_err_sum"] += float(le.sum()) if torch.isfinite(le).all() else math.inf
            signed = (ve.double() - local_exact.double())
            fin = torch.isfinite(signed)
            self.s["local_signed_sum"] += float(signed[fin].sum())
            L, Lp = lb.G, lb.Gp
            self._max("local_bound_max", L)
            self._max("local_bound_prob_max", Lp)
            tol = _BOUND_TOL * L
            self.i["local_violations"] += int((le > L + tol).sum())
            self.i["local_violations_prob"] += int((le > Lp + _BOUND_TOL * Lp).sum())
        if local_half is not None:
            lh = local_half.float().cpu()
            eq = (lh == ve) | (torch.isnan(lh) & torch.isnan(ve))
            self.i["half_match"] += int(eq.sum())
            self.i["half_match_n"] += eq.numel()
        # ranges of the emulated values
        a = ve.abs()
        fin = torch.isfinite(ve)
        if fin.any():
            self.s["abs_max"] = max(self.s["abs_max"], float(a[fin].max()))
        self.i["n_subnormal"] += int(((a > 0) & (a < self.fmt.min_normal)).sum())
        self.i["n_nan"] += int(torch.isnan(ve).sum())
        if st is not None:
            self.i["n_flushed"] += st.flushed
            self.i["n_overflow"] += st.overflow
        else:
            self.i["n_overflow"] += int(torch.isinf(ve).sum())
        # exponent histogram of the fp32 values
        x = v32.detach().float().reshape(-1)
        x = x[torch.isfinite(x)]
        nz = x[x != 0]
        self.i["n_zero"] += int(x.numel() - nz.numel())
        if nz.numel():
            e = torch.frexp(nz)[1].to(torch.int64) - 1
            e = torch.clamp(e, self.exp_lo, self.exp_hi) - self.exp_lo
            self.hist += np.bincount(e.numpy(), minlength=self.hist.size)

    def report(self) -> LayerReport:
        s, i, c = self.s, self.i, max(self.count, 1)
        nan = float("nan")

        def ratio(num: float, den: float) -> float:
            if den > 0:
                return num / den
            return nan if num == 0 else math.inf

        abs_local = s["local_err_sum"] / c
        st = self.step
        return LayerReport(
            name=st.name, kind=st.kind, path=st.path, origin=st.origin, shape=tuple(self.shape), n=self.n,
            count=self.count, err_max=s["err_max"], err_mean=s["err_sum"] / c, err_rel=ratio(s["err_max"], s["ref_max"]),
            err_exact_max=s["err_exact_max"] if self.has_ref else nan,
            fp32_err_max=s["fp32_err_max"] if self.has_ref else nan,
            half_err_max=s["half_err_max"] if self.has_half else nan,
            local_err_max=s["local_err_max"], local_err_mean=abs_local, local_signed_mean=s["local_signed_sum"] / c,
            local_bias=(s["local_signed_sum"] / c) / abs_local if abs_local > 0 else nan,
            bound_max=s["bound_max"], bound_mean=s["bound_sum"] / c, bound_prob_max=s["bound_prob_max"],
            bound_prob_mean=s["bound_prob_sum"] / c, local_bound_max=s["local_bound_max"],
            local_bound_prob_max=s["local_bound_prob_max"],
            tightness=ratio(s["bound_max"], s["err_max"]), tightness_prob=ratio(s["bound_prob_max"], s["err_max"]),
            local_tightness=ratio(s["local_bound_max"], s["local_err_max"]),
            local_tightness_prob=ratio(s["local_bound_prob_max"], s["local_err_max"]),
            violations=i["violations"], violations_prob=i["violations_prob"], local_violations=i["local_violations"],
            local_violations_prob=i["local_violations_prob"], half_violations=i["half_violations"],
            failure_prob=self.fail, abs_max=s["abs_max"], fmt_max=self.fmt.max,
            frac_subnormal=i["n_subnormal"] / c, frac_flushed=i["n_flushed"] / c, n_overflow=i["n_overflow"],
            n_nan=i["n_nan"], half_match=i["half_match"] / i["half_match_n"] if i["half_match_n"] else nan,
            half_match_chained=i["chain_match"] / i["chain_match_n"] if i["chain_match_n"] else nan,
            exp_lo=self.exp_lo, exp_hist=self.hist.tolist(), n_zero=i["n_zero"])


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
    from .layer_bounds import _reduction_length

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
                ns[s.name] = _reduction_length(s, in_shapes)
                events += rounding_events(s, tuple(out.shape), in_shapes)
    return shapes, ns, events


def stream_batches(traced: TracedModel, batches: Any, emu: Emulator, cfg: BoundConfig, stats: dict[str, LayerStats],
                   *, reference: bool = True, real_half: bool = True, local: bool = True,
                   timings: dict[str, float] | None = None, on_batch: Callable[[int], None] | None = None) -> OutputRecord:
    """Run every batch through every step, updating ``stats``; return the outputs and bounds.

    ``batches`` yields float32 CPU tensors.  ``timings`` accumulates seconds per phase.
    """
    t = timings if timings is not None else {}
    for k in ("fp32", "float64", "emulator", "half", "local", "bounds", "stats"):
        t.setdefault(k, 0.0)
    cache = ParamCache()
    last = traced.last_use()
    out = OutputRecord()
    clock = time.perf_counter

    def timed(key: str, fn: Callable[[], Any]) -> Any:
        t0 = clock()
        r = fn()
        t[key] += clock() - t0
        return r

    with torch.no_grad():
        for bi, xb in enumerate(batches):
            st: dict[str, dict[str, Any]] = {}
            sizes: dict[str, Any] = {}
            for i, s in enumerate(traced.steps):
                if s.kind == "input":
                    x32 = xb
                    rec: dict[str, Any] = {"v32": x32, "v64": x32.double() if reference else None}
                    rec["ve"], rnd = timed("emulator", lambda: emulate_step(s, [x32], emu, cache, step_index=i,
                                                                           batch_index=bi))
                    rec["vh"] = x32.half() if real_half else None
                    rec["b"] = timed("bounds", lambda: step_bound(s, [x32], x32, cfg, cache))
                    lx, lh, lb = x32.double(), x32.half(), rec["b"]
                else:
                    def ins(key: str, conv: Callable[[Any], Any] = lambda v: v) -> list[Any]:
                        return [conv(st[n][key]) if isinstance(st[n][key], torch.Tensor) else st[n][key]
                                for n in s.inputs]

                    vals = dict(sizes)
                    rec = {}
                    rec["v32"] = timed("fp32", lambda: torch_step(s, ins("v32"), torch.float32, cache, vals))
                    if s.kind == "size":
                        sizes[s.name] = rec["v32"]
                        st[s.name] = {k: rec["v32"] for k in ("v32", "v64", "ve", "vh")} | {"b": rec["v32"]}
                        continue
                    rec["v64"] = (timed("float64", lambda: torch_step(s, ins("v64"), torch.float64, cache, vals))
                                  if reference else None)
                    rec["ve"], rnd = timed("emulator", lambda: emulate_step(s, ins("ve"), emu, cache, vals,
                                                                           step_index=i, batch_index=bi))
                    rec["vh"] = (timed("half", lambda: torch_step(s, ins("vh"), torch.float16, cache, vals))
                                 if real_half else None)
                    lx = lh = lb = None
                    bins = [st[n]["b"] for n in s.inputs]
                    rec["b"] = timed("bounds", lambda: step_bound(s, bins, rec["v32"], cfg, cache, vals))
                    if local:
                        if s.kind == "param":
                            lx = s.attrs["value"].double()
                            lh = s.attrs["value"].half()
                            lb = rec["b"]
                        else:
                            lx = timed("local", lambda: torch_step(s, ins("ve", lambda v: v.double()), torch.float64,
                                                                   cache, vals))
                            if real_half:
                                lh = timed("local", lambda: torch_step(s, ins("ve", lambda v: v.half()),
                                                                       torch.float16, cache, vals))
                            lb = timed("local", lambda: local_bound(s, ins("ve"), lx, cfg, cache, vals))
                if s.name in stats:
                    timed("stats", lambda: stats[s.name].update(v32=rec["v32"], ve=rec["ve"], b=rec["b"],
                                                                 v64=rec["v64"], vh=rec["vh"], local_exact=lx,
                                                                 local_half=lh, lb=lb, st=rnd))
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

"""``fpanalysis check``: will this model train in pure low precision (fp16 by default)?

The check runs the model in float32 for a few real training steps and compares what it measures
with the target format (docs/theory.md §4):

1. forward ranges per layer: overflow, headroom to the largest finite value, values that would
   be subnormal or flushed to zero;
2. backward ranges: weight and activation gradients below ``2**-24`` / ``2**-14``, and the
   interval of loss scales that keeps them representable without overflow;
3. the optimizer: whether Adam's epsilon survives rounding, second-moment underflow, the
   effective first step once everything is rounded;
4. update stagnation: updates ``w + d`` that round back to ``w`` (lost without fp32 master
   weights);
5. certified agreement of fp16 inference with fp32 (Γ(x) > 2B(x), :mod:`fpanalysis.tolerance`),
   when the analysis module can trace the model;
6. reductions long enough to stagnate if accumulated in the format.

Every finding carries the measured number, the threshold it was compared with, and a fix.  The
verdict is SAFE (no finding above its threshold), SAFE WITH CHANGES (each problem has a named fix
that keeps the model in the format or close to it) or UNSAFE (a problem without such a fix).

Thresholds are module constants (``THRESHOLDS``) so they can be read, tested and cited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .._json import SCHEMA_VERSION, dumps
from ..formats import FloatFormat
from ..rounding import round_to
from .base import FIX_NAMES, SAFE, SAFE_WITH_CHANGES, THRESHOLDS, UNSAFE, Finding, Fix
from .operations import buffer_findings, operation_findings, overflow_fixes

__all__ = [
    "FIX_NAMES", "THRESHOLDS", "CheckReport", "Finding", "Fix", "Measurements", "agreement_findings", "decide_verdict",
    "dry_run_findings",
    "findings_from_measurements", "forward_findings", "gradient_findings", "optimizer_findings",
    "reduction_findings", "stagnation_findings",
]

#: the ``schema`` field of a saved check report
SCHEMA = "fpanalysis.check"



@dataclass
class CheckReport:
    """The result of :func:`check`: findings, the verdict and the changes it asks for."""

    verdict: str
    findings: list[Finding]
    changes: list[str]
    config: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "changes": self.changes,
            "findings": [f.to_dict() for f in self.findings],
            "config": self.config,
            "thresholds": THRESHOLDS,
            "details": self.details,
        }

    def to_json(self, path: str | None = None) -> str:
        """The report as standard JSON (docs/report_schema.md): ``schema`` (``"fpanalysis.check"``),
        ``schema_version``, then :meth:`to_dict`'s fields; non-finite numbers as the strings
        ``"nan"``, ``"inf"``, ``"-inf"``, numpy values as numbers and lists.  Written to ``path``
        if given."""
        text = dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **self.to_dict()}, indent=2)
        if path:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    def render(self, color: bool = False) -> str:
        def paint(s: str, code: str) -> str:
            return f"\033[{code}m{s}\033[0m" if color else s

        colors = {"ok": "32", "warn": "33", "fail": "31", "skipped": "36"}
        lines = [f"fpanalysis check: {self.config.get('model', 'model')} in pure {self.config.get('format')}"]
        lines.append(
            f"  optimizer {self.config.get('optimizer')} lr={self.config.get('lr')}"
            + (f" eps={self.config.get('eps')}" if str(self.config.get("optimizer")).startswith("adam") else "")
            + f", {self.config.get('steps')} fp32 steps on {self.config.get('samples')} samples"
        )
        lines.append("")
        for f in self.findings:
            tag = paint(f"[{'SKIP' if f.status == 'skipped' else f.status.upper():4}]", colors[f.status])
            where = ", ".join(x for x in (f.op, f.layer, None if f.step is None else f"step {f.step}") if x)
            where = f" ({where})" if where else ""
            lines.append(f"{tag} {f.check}{where}: {f.message}")
            if f.status != "skipped" and f.threshold == f.threshold:  # a NaN threshold: nothing compared
                lines.append(f"       measured {_fmt_num(f.measured)} {f.comparison} threshold {_fmt_num(f.threshold)}")
            if f.fix and f.status != "ok":
                lines.append(f"       fix: {f.fix}")
        lines.append("")
        vcol = {SAFE: "32", SAFE_WITH_CHANGES: "33", UNSAFE: "31"}[self.verdict]
        lines.append("verdict: " + paint(self.verdict, "1;" + vcol))
        fixes = self.details.get("fixes")
        verified_here = fixes is not None
        for c in self.changes:
            lines.append(f"  - {c}" + ("  (verified by the dry run)" if verified_here
                                        else "  (not verified: the dry run did not run)"))
        if fixes:
            lines.append("")
            lines.append("changes tried in the dry run (verified: the shadow run then matches fp32):")
            for r in fixes:
                left = [p["check"] for p in r["problems"] if p["status"] == "fail"]
                lines.append(f"  {'verified    ' if r['verified'] else 'not verified'}  {r['description']}"
                             + ("" if r["verified"] else f"  (still: {', '.join(left)})"))
        skipped = [f.check for f in self.findings if f.status == "skipped"]
        if skipped:
            lines.append(f"  not examined: {', '.join(skipped)} (the verdict covers the other checks only)")
        return "\n".join(lines)


def _fmt_num(v: float) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if v == 0 or not math.isfinite(v):
        return str(v)
    return f"{v:.3g}"


# --------------------------------------------------------------------------------------------
# Decisions (pure functions of measured numbers, tested on both sides of every threshold)
# --------------------------------------------------------------------------------------------


def decide_verdict(findings: list[Finding], verified: list[str] | None = None) -> tuple[str, list[str]]:
    """SAFE when nothing failed; SAFE WITH CHANGES when every failure has a fix that keeps the
    model in the format; UNSAFE otherwise.  Returns the verdict and the list of changes.

    ``verified``: when the dry run ran, the changes it verified (after them the shadow run
    matched fp32).  Then only those count: SAFE WITH CHANGES needs every failure fixable and at
    least one verified change, and the changes are the verified ones.

    A ``"skipped"`` finding (a check that could not run) is neither a failure nor a pass: the
    verdict covers the checks that ran, and the report lists the skipped ones.
    """
    fails = [f for f in findings if f.status == "fail"]
    if verified is not None:
        if not fails:
            return SAFE, []
        if verified and all(f.fixable for f in fails):
            return SAFE_WITH_CHANGES, list(verified)
        return UNSAFE, list(verified)
    changes: list[str] = []
    for f in fails:
        if f.fix and f.fix not in changes:
            changes.append(f.fix)
    if not fails:
        return SAFE, []
    if all(f.fixable and f.fix for f in fails):
        return SAFE_WITH_CHANGES, changes
    return UNSAFE, changes


def loss_scale_interval(grad_small: float, grad_max: float, fmt: FloatFormat) -> tuple[float, float]:
    """Interval ``[lo, hi]`` of loss scales S (powers of two) with ``S * grad_small >=
    2**emin`` (small gradients reach the normal range) and ``S * grad_max <= max / headroom``.

    ``lo > hi`` means no single loss scale works.
    """
    target = fmt.min_normal
    head = THRESHOLDS["loss_scale_headroom"]
    lo = 1.0 if grad_small <= 0 else 2.0 ** max(0, math.ceil(math.log2(target / grad_small)))
    hi = 2.0 ** math.floor(math.log2(fmt.max / head / grad_max)) if grad_max > 0 else math.inf
    return lo, hi


@dataclass
class Measurements:
    """What the probes measured, section by section; each section is optional (``None`` or
    empty: not measured, so no finding for it).

    ``activations``: one dict per layer output with ``name``, ``max_abs``, ``n_overflow``,
    ``frac_flushed``.  ``weight_grads``: ``nonzero``, ``n_lost`` (below 2**-24), ``mass_lost``
    (their share of the l1 mass), ``n_overflow``, ``small_quantile``, ``max_abs``.
    ``optimizer``: ``name``, ``eps``, ``lr`` and, for Adam, ``v_underflow_frac``,
    ``step_nonfinite_frac``, ``step_error_frac``.  ``stagnation``: ``lost``, ``nonzero``,
    ``per_layer`` (``layer``, ``frac``).  ``reductions``: dicts with ``layer``, ``n``, ``what``.
    ``agreement``: ``certified``, ``observed``, ``n`` (optionally ``certified_prob``,
    ``probability``, ``method``: ``"adjoint"`` or ``"interval"``).  ``profile``: the arithmetic profile the
    reductions run under.
    """

    activations: list[dict[str, Any]] = field(default_factory=list)
    weight_grads: dict[str, Any] | None = None
    optimizer: dict[str, Any] = field(default_factory=dict)
    stagnation: dict[str, Any] | None = None
    reductions: list[dict[str, Any]] = field(default_factory=list)
    agreement: dict[str, Any] | None = None
    profile: str = "fp32-accumulate"
    operations: list[dict[str, Any]] = field(default_factory=list)
    buffers: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Measurements:
        """From a plain dict with the same keys (unknown keys are an error)."""
        unknown = set(m) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown measurement sections {sorted(unknown)}; valid: "
                             f"{', '.join(f.name for f in fields(cls))}")
        return cls(**m)


def findings_from_measurements(m: Measurements | dict[str, Any], fmt: FloatFormat) -> list[Finding]:
    """Turn the measurements (see :class:`Measurements`; a plain dict with its keys also works)
    into findings, in the report's order: forward ranges, backward ranges, optimizer,
    stagnation, agreement, reductions."""

    if isinstance(m, dict):
        m = Measurements.from_dict(m)
    out = forward_findings(m.activations, fmt, m.operations)
    out += operation_findings(m.operations, fmt)
    out += buffer_findings(m.buffers, fmt)
    out += gradient_findings(m.weight_grads, fmt)
    out += optimizer_findings(m.optimizer, fmt)
    out += stagnation_findings(m.stagnation, fmt)
    out += agreement_findings(m.agreement, fmt)
    out += reduction_findings(m.reductions, fmt, m.profile)
    return out


def forward_findings(acts: list[dict[str, Any]], fmt: FloatFormat,
                     ops: list[dict[str, Any]] | None = None) -> list[Finding]:
    """Overflow, headroom and underflow of the layer outputs (docs/theory.md §4.4).

    An activation dict may name the ``op`` that produced it and the ``step`` it overflowed at.
    With the op records (``ops``), an overflow's fix keeps in fp32 the ops from the overflowing
    one up to the op that brings the range back (:func:`.operations.overflow_fixes`); keeping only
    the layer in fp32 would overflow again at the next cast to the format.
    """
    out: list[Finding] = []
    T = THRESHOLDS
    over = [a for a in acts if a["n_overflow"] > 0]
    if over:
        names = ", ".join(a["name"] + (f" ({a['op']})" if a.get("op") else "") for a in over)
        fixable = len(over) <= T["max_overflow_layers_fixable"]
        fix = f"keep layer(s) {', '.join(a['name'] for a in over)} in fp32" if fixable else None
        fixes: list[Fix] = []
        if ops:

            fix, fixes, fixable = overflow_fixes([a for a in over if a.get("key")], ops, fmt) or (fix, fixes, fixable)
        steps = [a["step"] for a in over if a.get("step") is not None]
        out.append(Finding(
            "activation overflow", "fail", float(sum(a["n_overflow"] for a in over)),
            T["activation_overflow_count"], ">",
            f"{len(over)} layer(s) produce values above {fmt.name}'s max {fmt.max:g}: {names} "
            f"(largest |a| = {max(a['max_abs'] for a in over):.4g})",
            fix=fix, fixable=fixable, fixes=fixes,
            layer=over[0]["name"] if len(over) == 1 else None,
            op=over[0].get("op") if len(over) == 1 else None, step=min(steps) if steps else None,
        ))
    elif acts:
        worst = max(acts, key=lambda a: a["max_abs"])
        head = fmt.max / worst["max_abs"] if worst["max_abs"] > 0 else math.inf
        status = "warn" if head < T["activation_headroom_warn"] else "ok"
        out.append(Finding(
            "activation range", status, head, T["activation_headroom_warn"], "headroom vs",
            f"largest |activation| {worst['max_abs']:.4g} leaves a factor {head:.3g} to {fmt.name}'s max",
            fix=f"watch layer {worst['name']}: growth during training can overflow; scale or normalise it",
            layer=worst["name"],
        ))
    if acts:
        worst = max(acts, key=lambda a: a["frac_flushed"])
        st = "warn" if worst["frac_flushed"] > T["activation_flushed_frac"] else "ok"
        out.append(Finding(
            "activation underflow", st, worst["frac_flushed"], T["activation_flushed_frac"], ">" if st != "ok" else "<=",
            f"{100 * worst['frac_flushed']:.2f}% of nonzero outputs of {worst['name']} would round to zero",
            fix="rescale the inputs of that layer (e.g. normalise the data) or keep it in fp32",
            layer=worst["name"],
        ))
    return out


def gradient_findings(g: dict[str, Any] | None, fmt: FloatFormat) -> list[Finding]:
    """Weight-gradient overflow and underflow, and the loss scales that fix it (§4.1)."""
    out: list[Finding] = []
    T = THRESHOLDS
    if g and g["nonzero"] > 0:
        lost_frac = g["n_lost"] / g["nonzero"]
        lo, hi = loss_scale_interval(g["small_quantile"], g["max_abs"], fmt)
        if g["n_overflow"] > 0:
            out.append(Finding(
                "gradient overflow", "fail", float(g["n_overflow"]), T["grad_overflow_count"], ">",
                f"{g['n_overflow']} weight gradients exceed {fmt.name}'s max (largest {g['max_abs']:.4g})",
                fix="clip gradients or lower the learning rate; a loss scale < 1 would push small ones to zero",
                fixable=False,
            ))
        mass = float(g.get("mass_lost", lost_frac))
        ok_scale = lo <= hi
        scale_txt = (f"loss scales in [{lo:g}, {hi:g}] keep them representable" if ok_scale
                     else f"no single loss scale fits: needs >= {lo:g} but overflow caps it at {hi:g}")
        if mass > T["grad_lost_mass_frac"]:
            fix = f"use loss scaling with S = {lo:g} (any power of two in [{lo:g}, {hi:g}] works)" if ok_scale else None
            out.append(Finding(
                "gradient underflow", "fail", mass, T["grad_lost_mass_frac"], ">",
                f"weight gradients below 2^-24 ({100 * lost_frac:.2f}% of them) carry {100 * mass:.2f}% of the "
                f"gradient's l1 mass and would be lost in {fmt.name}; " + scale_txt,
                fix=fix, fixable=ok_scale,
                fixes=[Fix("loss_scale", {"scale": lo, "range": [lo, hi if math.isfinite(hi) else None]}, fix)] if ok_scale else [],
            ))
        elif lost_frac > T["grad_lost_frac"]:
            out.append(Finding(
                "gradient underflow", "warn", lost_frac, T["grad_lost_frac"], ">",
                f"{100 * lost_frac:.2f}% of nonzero weight gradients are below 2^-24 (lost in {fmt.name}), "
                f"but they carry only {100 * mass:.3f}% of the gradient's l1 mass; " + scale_txt,
                fix=f"loss scaling with S = {lo:g}" if ok_scale else None,
            ))
        else:
            out.append(Finding(
                "gradient underflow", "ok", mass, T["grad_lost_mass_frac"], "<=",
                f"{100 * lost_frac:.3f}% of nonzero weight gradients below 2^-24, carrying {100 * mass:.4f}% of "
                f"the gradient's l1 mass; largest {g['max_abs']:.3g}"
                + (f"; a loss scale up to {hi:g} is safe" if math.isfinite(hi) else ""),
            ))
    return out


def optimizer_findings(o: dict[str, Any], fmt: FloatFormat) -> list[Finding]:
    """Adam's epsilon, second-moment underflow and the first step in the format (§4.3)."""
    out: list[Finding] = []
    T = THRESHOLDS
    if str(o.get("name", "")).lower() in ("adam", "adamw"):
        eps = float(o["eps"])
        eps_r = float(round_to(eps, fmt))
        fix_eps = _smallest_safe_eps(fmt)
        if eps_r == 0.0:
            out.append(Finding(
                "optimizer epsilon", "fail", eps_r, fmt.min_subnormal, "<",
                f"Adam eps = {eps:g} rounds to 0 in {fmt.name}: wherever the second moment underflows, "
                "the step divides by zero (inf/NaN)",
                fix=f"raise Adam eps to {fix_eps:g} (or keep optimizer state in fp32)",
                fixes=[Fix("adam_eps", {"eps": fix_eps}), Fix("optimizer_state_fp32")],
            ))
        elif eps_r < fmt.min_normal:
            out.append(Finding(
                "optimizer epsilon", "warn", eps_r, fmt.min_normal, "<",
                f"Adam eps = {eps:g} is subnormal in {fmt.name} (stored as {eps_r:.3g})",
                fix=f"raise Adam eps to {fix_eps:g}",
            ))
        else:
            out.append(Finding("optimizer epsilon", "ok", eps_r, fmt.min_normal, ">=",
                               f"Adam eps = {eps:g} is a normal {fmt.name} number"))
        vu = float(o.get("v_underflow_frac", 0.0))
        st = "fail" if vu > T["adam_v_underflow_frac"] and eps_r == 0.0 else ("warn" if vu > T["adam_v_underflow_frac"] else "ok")
        out.append(Finding(
            "second-moment underflow", st, vu, T["adam_v_underflow_frac"], ">" if st != "ok" else "<=",
            f"(1-beta2)*g^2 rounds to zero for {100 * vu:.2f}% of parameters",
            fix=(f"raise Adam eps to {fix_eps:g} (or keep optimizer state in fp32)" if eps_r == 0.0
                 else "keep the optimizer state (m, v) in fp32"),
        ))
        nf = float(o.get("step_nonfinite_frac", 0.0))
        st = "fail" if nf > T["adam_step_error_frac"] else "ok"
        out.append(Finding(
            "Adam step finite", st, nf, T["adam_step_error_frac"], ">" if st != "ok" else "<=",
            f"the first step computed in {fmt.name} is inf/NaN for {100 * nf:.2f}% of parameters",
            fix=f"raise Adam eps to {fix_eps:g} (or keep optimizer state in fp32)",
        ))
        se = float(o.get("step_error_frac", 0.0))
        st = "warn" if se > T["adam_step_error_frac"] else "ok"
        out.append(Finding(
            "Adam step accuracy", st, se, T["adam_step_error_frac"], ">" if st != "ok" else "<=",
            f"the finite first step computed in {fmt.name} is off by more than 2x for {100 * se:.2f}% of "
            "parameters (the second moment underflows, so eps dominates the denominator)",
            fix="keep the optimizer state (m, v) in fp32, or raise beta2's weight (1-beta2) on g^2",
        ))
    return out


def stagnation_findings(s: dict[str, Any] | None, fmt: FloatFormat) -> list[Finding]:
    """Updates that round back to the old weight without fp32 master weights (§4.2)."""
    out: list[Finding] = []
    T = THRESHOLDS
    if s and s["nonzero"] > 0:
        frac = s["lost"] / s["nonzero"]
        st = "warn" if frac > T["stagnation_warn_frac"] else "ok"
        worst = max(s.get("per_layer", []), key=lambda r: r["frac"], default=None)
        out.append(Finding(
            "update stagnation (count)", st, frac, T["stagnation_warn_frac"],
            ">" if st != "ok" else "<=",
            f"{100 * frac:.1f}% of nonzero updates are smaller than half the {fmt.name} spacing at the weight "
            "and would be lost" + (f" (worst layer {worst['layer']}: {100 * worst['frac']:.1f}%)" if worst else "")
            + "; a count: the dry run weighs what they cost",
            fix="keep fp32 master weights (mixed precision) or use stochastic rounding for the update",
            fixes=[Fix("fp32_master_weights"), Fix("stochastic_rounding")],
            layer=worst["layer"] if worst else None,
        ))
    return out


def agreement_findings(a: dict[str, Any] | None, fmt: FloatFormat) -> list[Finding]:
    """Certified and observed agreement of emulated inference with fp32 (§4.6)."""
    out: list[Finding] = []
    T = THRESHOLDS
    if a:
        st = "fail" if a["observed"] < T["agreement_fail"] else "ok"
        out.append(Finding(
            "inference agreement", st, a["observed"], T["agreement_fail"], "<" if st != "ok" else ">=",
            f"{100 * a['certified']:.1f}% of {a['n']} inputs certified by the sound bound "
            + ("(adjoint margins or Γ > 2B)" if a.get("method") == "adjoint" else "(Γ > 2B)")
            + (f", {100 * a['certified_prob']:.1f}% by the probabilistic one (each with probability >= "
               f"{a['probability']:.6g})" if "certified_prob" in a else "")
            + f"; {100 * a['observed']:.1f}% observed to keep the fp32 class in emulated {fmt.name}",
            fix="inspect the flipped inputs; they have small fp32 margins", fixable=False,
        ))
    return out


def reduction_findings(red: list[dict[str, Any]], fmt: FloatFormat, profile: str) -> list[Finding]:
    """Sums long enough to stagnate if accumulated in the format (§4.5)."""
    out: list[Finding] = []
    if red:
        longest = max(red, key=lambda r: r["n"])
        limit = 1.0 / fmt.u
        risky = longest["n"] >= limit and profile == "ieee"
        out.append(Finding(
            "long reductions", "warn" if risky else "ok", float(longest["n"]), limit, ">=" if risky else "vs",
            f"longest sum: {longest['n']} terms in {longest['layer']} ({longest['what']}); "
            + ("accumulated in the format it can stagnate (n*u >= 1)" if risky
               else f"accumulated in fp32 by {profile} arithmetic, so it does not stagnate"),
            fix="accumulate in fp32 (cuBLAS/PyTorch default) or use pairwise/blocked summation",
            layer=longest["layer"],
        ))
    return out


def _smallest_safe_eps(fmt: FloatFormat) -> float:
    """A power of ten that is a normal number of the format with room for the sqrt(v) scale:
    1e-4 for fp16 (docs/theory.md §4.3), smaller for wide-range formats."""
    e = 1e-4
    while e / 10 >= fmt.min_normal * 2**fmt.p and e > 1e-8:
        e /= 10
    return e


def adam_first_step_errors(grads: np.ndarray, fmt: FloatFormat, lr: float, eps: float,
                           betas: tuple[float, float]) -> tuple[float, float, float]:
    """For a sample of gradients, simulate PyTorch's first Adam step with state stored in ``fmt``
    (elementwise math in fp32, results rounded to the format) and return the fractions of
    parameters whose second-moment update underflows to zero, whose step is non-finite, and
    whose finite step is off by more than a factor 2 from the exact step."""
    g = np.asarray(grads, dtype=np.float64)
    if g.size == 0:
        return 0.0, 0.0, 0.0
    b1, b2 = betas
    g16 = round_to(g, fmt)
    m16 = round_to((1 - b1) * g16, fmt)
    v16 = round_to((1 - b2) * g16 * g16, fmt)
    v_under = float(np.mean((v16 == 0) & (g16 != 0)))
    eps16 = float(round_to(eps, fmt))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        denom = round_to(np.sqrt(v16 / (1 - b2)) + eps16, fmt)
        step16 = round_to(lr * (m16 / (1 - b1)) / denom, fmt)
        exact = lr * g / (np.abs(g) + eps)
        ratio = np.abs(step16) / np.abs(exact)
    nonfinite = ~np.isfinite(step16)
    off = ~nonfinite & (exact != 0) & ((ratio > 2) | (ratio < 0.5))
    return v_under, float(np.mean(nonfinite)), float(np.mean(off))


def dry_run_findings(d: dict[str, Any] | None, fmt: FloatFormat, verified: list[str] | None = None,
                     segment: str = "", where: str = "") -> list[Finding]:
    """Findings from the shadow low-precision dry run (:func:`fpanalysis.nn.shadow.dry_run`,
    ``result.to_dict()``): each of its problems, or one ``ok`` finding saying how closely the
    shadow run followed fp32.  A failure is fixable when the dry run verified a change
    (``verified``, the descriptions of the changes after which the shadow run matched fp32).
    ``segment`` names a later segment of the dry run (``"late"``: the one resumed from the
    warmed-up fp32 model, docs/theory.md §4.8) and ``where`` says where it started."""
    if not d:
        return []
    m = d["measurements"]
    fix = "; ".join(verified) if verified else None
    steps = d.get("steps")
    name = f"dry run ({segment})" if segment else "dry run"
    span = f"{steps}-step dry run" + (f" {where}" if where else "")
    out: list[Finding] = []
    for p in d.get("problems", []):
        where = p.get("where") or {}
        layer = where.get("module") or where.get("buffer") or where.get("parameter") or where.get("range")
        if p["check"] == "divergence" and where:
            layer = f"{where.get('op')} in {where.get('module')}"
        thr = p["threshold"]
        if p["check"] in ("buffer overflow", "op overflow"):
            thr = fmt.max  # a value above the format's largest finite number
        out.append(Finding(  # named as measured by the dry run, beside the probes' predictions
            f"{name}: {p['check']}", p["status"], float(p["measured"]), float(thr) if thr is not None else math.nan,
            ">" if p["check"] not in ("divergence", "range trend") else "at step" if p["check"] == "divergence" else "<",
            p["message"] + f" ({span})",
            fix=fix if p["status"] == "fail" else (fix or None), fixable=bool(verified), layer=layer,
        ))
    if not out:
        loss = m.get("loss", {})
        acc = m.get("accuracy", {}).get("eval", {})
        st = m.get("stagnation", {})
        out.append(Finding(
            name, "ok", float(acc.get("agreement", math.nan)), math.nan, "agreement",
            (f"{where}: " if where else "") + f"{steps} training steps in {fmt.name} (op-by-op rounding, {fmt.name} storage) follow fp32: loss "
            f"{loss.get('shadow', math.nan):.4g} vs {loss.get('fp32', math.nan):.4g}, eval-mode class kept for "
            f"{100 * acc.get('agreement', math.nan):.1f}% of held-out inputs, stagnation costs "
            f"{100 * st.get('weighted', 0.0):.2f}% of fp32's loss decrease",
        ))
    return out

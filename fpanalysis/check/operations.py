"""Findings about single operations and buffers, from the operation-level observer's records.

Pure functions of plain dicts (no torch), like :mod:`.findings`: the probe
(:mod:`.probe`, through :class:`fpanalysis.nn.observe.Observer`) fills
:attr:`.findings.Measurements.operations` and :attr:`.findings.Measurements.buffers`, and the
functions here turn them into findings that name the aten operation, the module path and the
step, each with a machine-readable :class:`.findings.Fix` a dry run can apply.

An operation dict has ``key`` (``{"phase", "module", "op", "occurrence", "output"}``), ``label``,
``module_type``, ``index`` (order of first execution), ``max_abs``, ``in_max_abs``, ``n_overflow``,
``numel``, ``nonzero``, ``n_flushed``, ``first_overflow_step``, ``source`` (user code line) and
``leaf_output`` (the op produced a leaf module's output; those are the activation findings).
A buffer dict is :meth:`fpanalysis.nn.observe.BufferRecord.to_dict`.

Why buffers need their own findings: a BatchNorm running variance averages the batch variance,
so it can overflow (or settle far from its limit among the subnormals, where the running-average
update ``m (v - r)`` is below half an ulp of ``r``) while every activation stays in range; eval mode
then normalises with the wrong statistic (docs/theory.md §4).
"""

from __future__ import annotations

import math
from typing import Any

from ..formats import FloatFormat
from .base import THRESHOLDS, Finding, Fix

__all__ = ["buffer_findings", "op_label", "operation_findings", "overflow_fixes"]


def op_label(o: dict[str, Any]) -> str:
    """``aten.bmm#1 in attn (HandAttention)``: op, occurrence, output, module path and class."""
    k = o["key"]
    s = k["op"] + (f"#{k['occurrence']}" if k.get("occurrence") else "") + (f"[{k['output']}]" if k.get("output") else "")
    mod = k["module"] or "model"
    typ = o.get("module_type")
    return f"{s} in {mod}" + (f" ({typ})" if typ and typ != "-" and not mod.startswith("<") else "")


def _where(o: dict[str, Any]) -> str:
    step = o.get("first_overflow_step")
    src = o.get("source")
    return (f" at step {step}" if step is not None else "") + (f", {src}" if src else "")


def _pow2_below(x: float) -> float:
    return 2.0 ** math.floor(math.log2(x)) if x > 0 and math.isfinite(x) else 1.0


def overflow_fixes(over: list[dict[str, Any]], ops: list[dict[str, Any]], fmt: FloatFormat,
                   ) -> tuple[str, list[Fix], bool] | None:
    """Fixes for forward ops whose outputs overflow (dicts with a ``key``), as ``(text, fixes,
    fixable)``, or None when no overflowing op is among ``ops``.

    For each overflowing op, the fp32 region runs from it to the first later forward op that
    consumes a value above ``max / headroom`` and returns one below it (a softmax, a normalisation,
    a division by a norm): keeping only the overflowing op in fp32 would overflow again when its
    result is cast back to the format.  Without such an op, the range never comes back and only
    rescaling helps (``rescale`` with a power-of-two factor bringing the op's largest output to
    ``max / headroom``), which is proposed but not counted as a fix that keeps the verdict.
    """
    head = THRESHOLDS["op_headroom_warn"]
    limit = fmt.max / head
    fwd = sorted((o for o in ops if o["key"]["phase"] == "forward"), key=lambda o: o["index"])
    keys = [o["key"] for o in over]
    starts = [o for o in fwd if o["key"] in keys]
    if not starts:
        return None
    fixes: list[Fix] = []
    texts: list[str] = []
    covered: set[int] = set()
    fixable = True
    for s in starts:
        if s["index"] in covered:
            continue
        end = None
        for o in fwd:
            if o["index"] > s["index"] and o["in_max_abs"] > limit and o["max_abs"] <= limit:
                end = o
                break
        factor = _pow2_below(limit / s["max_abs"]) if s["max_abs"] > 0 else 1.0
        if end is not None:
            region = [o for o in fwd if s["index"] <= o["index"] <= end["index"]]
            covered.update(o["index"] for o in region)
            mods = sorted({o["key"]["module"] for o in region})
            fixes.append(Fix("fp32_region", {"ops": [o["key"] for o in region], "modules": mods},
                             f"keep {op_label(s)} through {op_label(end)} in fp32"))
            texts.append(f"keep {op_label(s)} through {op_label(end)} in fp32 ({len(region)} ops)")
        else:  # the range never comes back: every later op depends on rescaling this one
            covered.update(o["index"] for o in fwd if o["index"] >= s["index"])
            fixable = False
            texts.append(f"scale the inputs of {op_label(s)} down (by {factor:g} or more: normalise the data "
                         "or scale the weights feeding it); its range never comes back into the format")
        fixes.append(Fix("rescale", {"op": s["key"], "factor": factor},
                         f"scale the inputs of {op_label(s)} by {factor:g}"))
    return "; ".join(texts), fixes, fixable


def operation_findings(ops: list[dict[str, Any]], fmt: FloatFormat) -> list[Finding]:
    """Overflow and headroom of every aten op that is not a leaf module's output (those are the
    activation findings): attention logits ``q @ k^T``, a scale factor or a hand-written
    normalisation in ``forward``, and the backward pass."""
    out: list[Finding] = []
    T = THRESHOLDS
    # ops of the model's forward pass that are not a leaf layer's output (the loss, computed outside
    # the model, is left out: its bookkeeping outputs such as nll_loss's total weight are no activations)
    inner = [o for o in ops if not o.get("leaf_output") and o["key"]["phase"] == "forward"
             and not o["key"]["module"].startswith("<")]
    over = sorted((o for o in inner if o["n_overflow"] > 0), key=lambda o: o["index"])
    if over:
        text, fixes, fixable = overflow_fixes(over, ops, fmt) or ("", [], False)
        first = over[0]
        names = "; ".join(f"{op_label(o)} (max |x| {o['max_abs']:.4g}{_where(o)})" for o in over[:4])
        more = f" and {len(over) - 4} more" if len(over) > 4 else ""
        out.append(Finding(
            "operation overflow", "fail", float(sum(o["n_overflow"] for o in over)), T["op_overflow_count"], ">",
            f"{len(over)} operation(s) inside the model produce values above {fmt.name}'s max {fmt.max:g}: "
            f"{names}{more}", fix=text or None, fixable=fixable and bool(text), fixes=fixes,
            layer=first["key"]["module"] or "model", op=first["key"]["op"], step=first.get("first_overflow_step"),
        ))
    elif inner:
        worst = max(inner, key=lambda o: o["max_abs"])
        head = fmt.max / worst["max_abs"] if worst["max_abs"] > 0 else math.inf
        st = "warn" if head < T["op_headroom_warn"] else "ok"
        out.append(Finding(
            "operation range", st, head, T["op_headroom_warn"], "headroom vs",
            f"largest |x| of any operation inside the model: {worst['max_abs']:.4g} in {op_label(worst)}"
            f"{_where(worst)}, a factor {head:.3g} below {fmt.name}'s max",
            fix=f"watch {op_label(worst)}: growth during training can overflow; scale or normalise its inputs",
            layer=worst["key"]["module"] or "model", op=worst["key"]["op"],
        ))
    bwd = sorted((o for o in ops if o["key"]["phase"] == "backward" and o["n_overflow"] > 0), key=lambda o: o["index"])
    if bwd:
        first = bwd[0]
        names = "; ".join(f"{op_label(o)} from {o.get('node') or '?'} (max |x| {o['max_abs']:.4g}{_where(o)})"
                          for o in bwd[:4])
        out.append(Finding(
            "backward overflow", "fail", float(sum(o["n_overflow"] for o in bwd)), T["op_overflow_count"], ">",
            f"{len(bwd)} operation(s) of the backward pass produce values above {fmt.name}'s max: {names}",
            fix="lower the learning rate or the loss scale, or clip gradients; keep these ops in fp32",
            fixable=False, layer=first["key"]["module"] or "model", op=first["key"]["op"],
            step=first.get("first_overflow_step"),
            fixes=[Fix("fp32_region", {"ops": [o["key"] for o in bwd], "modules": sorted({o["key"]["module"] for o in bwd})},
                       "keep the overflowing backward ops in fp32")],
        ))
    return out


def _buffer_fix(bufs: list[dict[str, Any]]) -> tuple[str, list[Fix]]:
    names = [b["name"] for b in bufs]
    mods = sorted({b["module"] for b in bufs})
    if all(b.get("kind") in ("running_mean", "running_var") for b in bufs):
        text = f"keep BatchNorm statistics in fp32 ({', '.join(names)})"
    else:
        text = f"keep buffer(s) {', '.join(names)} in fp32"
    return text, [Fix("buffers_fp32", {"buffers": names, "modules": mods}, text)]


def buffer_findings(bufs: list[dict[str, Any]], fmt: FloatFormat) -> list[Finding]:
    """Buffers that overflow, settle far from their limit, flush or stop moving in the format."""
    out: list[Finding] = []
    if not bufs:
        return out
    T = THRESHOLDS
    horizon = T["buffer_overflow_horizon"]
    # 1. overflow, observed or predicted for a running average
    over = []
    for b in bufs:
        obs_step = next((s for s, n in zip(b["steps"], b["n_overflow"]) if n), None)
        p = b.get("prediction") or {}
        pred = p.get("overflow_step")
        if obs_step is not None or (pred is not None and pred <= horizon):
            over.append((b, obs_step, pred))
    if over:
        text, fixes = _buffer_fix([b for b, _, _ in over])
        b0, s0, p0 = over[0]

        def why(b: dict[str, Any], s: int | None, p: int | None) -> str:
            upd = f", updated by {b['updated_by'][0]}" if b.get("updated_by") else ""
            if s is not None:
                return f"{b['name']} holds values above the max at step {s}{upd}"
            tgt = (b.get("prediction") or {}).get("target_max")
            return (f"{b['name']} averages batch statistics up to {tgt:.4g}{upd}; stored in {fmt.name} it "
                    f"reaches inf after about {p} steps")

        out.append(Finding(
            "buffer overflow", "fail", float(len(over)), 0.0, ">",
            "; ".join(why(*x) for x in over[:4]) + (f" (and {len(over) - 4} more)" if len(over) > 4 else "")
            + "; training-mode outputs stay finite, eval mode divides by inf",
            fix=text, fixes=fixes, layer=b0["module"], step=s0 if s0 is not None else p0,
        ))
    # 2. running statistics that settle away from their limit (updates rounding away)
    stalls = []
    for b in bufs:
        p = b.get("prediction") or {}
        if b in [x[0] for x in over] or not p or p.get("eval_error") is None:
            continue
        stalls.append((b, float(p["eval_error"])))
    if stalls:
        b, err = max(stalls, key=lambda x: x[1])
        p = b["prediction"]
        st = "fail" if err > T["buffer_eval_error_fail"] else ("warn" if err > T["buffer_eval_error_warn"] else "ok")
        bad = [x[0] for x in stalls if x[1] > T["buffer_eval_error_warn"]]
        text, fixes = _buffer_fix(bad or [b])
        kind = "normalising scale" if b.get("kind") == "running_var" else "mean (in batch standard deviations)"
        out.append(Finding(
            "running statistics", st, err,
            T["buffer_eval_error_fail"] if st == "fail" else T["buffer_eval_error_warn"], ">" if st != "ok" else "<=",
            f"{b['name']} stored in {fmt.name} settles at {p.get('settled_value', math.nan):.4g} "
            f"(channel {p.get('channel')}) where the batch statistic is {p.get('limit', math.nan):.4g}: the "
            f"running-average update rounds away; eval mode's {kind} is off by {100 * err:.3g}%"
            + (f" ({len(bad)} buffer(s) above {100 * T['buffer_eval_error_warn']:g}%)" if bad else ""),
            fix=text, fixes=fixes, layer=b["module"],
            step=p.get("settled_step"),
        ))
    # 3. other buffers: updates lost, values flushed
    plain = [b for b in bufs if not b.get("prediction") and b not in [x[0] for x in over]]
    lost = [b for b in plain if sum(b["n_changed"])]
    if lost:
        b = max(lost, key=lambda b: b["update_lost_frac"])
        frac = float(b["update_lost_frac"])
        st = "fail" if frac > T["buffer_update_lost_fail"] else ("warn" if frac > T["buffer_update_lost_warn"] else "ok")
        text, fixes = _buffer_fix([b])
        upd = f" (updated by {', '.join(b['updated_by'][:2])})" if b.get("updated_by") else ""
        out.append(Finding(
            "buffer update stagnation", st, frac,
            T["buffer_update_lost_fail"] if st == "fail" else T["buffer_update_lost_warn"], ">" if st != "ok" else "<=",
            f"{100 * frac:.1f}% of the per-step updates of {b['name']}{upd} are below half its {fmt.name} spacing "
            "and would be lost", fix=text, fixes=fixes, layer=b["module"],
        ))
    flushed = [(b, b["n_flushed"][-1] / max(1, b["numel"])) for b in plain if b["n_flushed"]]
    flushed = [x for x in flushed if x[1] > T["buffer_flushed_frac"]]
    if flushed:
        b, frac = max(flushed, key=lambda x: x[1])
        text, fixes = _buffer_fix([x[0] for x in flushed])
        out.append(Finding(
            "buffer underflow", "warn", frac, T["buffer_flushed_frac"], ">",
            f"{100 * frac:.1f}% of the values of {b['name']} flush to zero in {fmt.name}",
            fix=text, fixes=fixes, layer=b["module"],
        ))
    if not out:
        out.append(Finding("buffers", "ok", 0.0, 0.0, "==",
                           f"{len(bufs)} buffer(s) followed: none overflows, stalls or loses its updates in {fmt.name}"))
    return out

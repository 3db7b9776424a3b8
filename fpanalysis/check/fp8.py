"""The FP8 / MX pre-flight check: ``fpanalysis check --format fp8 --recipe delayed|current|mxfp8|nvfp4``.

Will this model train with FP8 (or MX, NVFP4) GEMMs under this scaling recipe, and if not, which
GEMMs should stay in bf16 and which recipe settings help?  The check trains two copies of the
model for a few steps from the same initial weights on the same batches: one in fp32, one with
emulated FP8 GEMMs (:func:`fpanalysis.nn.fp8.fp8_training`: every ``nn.Linear`` and
``nn.Conv2d`` computes from quantised-dequantised operands, E4M3 forward and E5M2 gradients
under the hybrid recipe; everything else in fp32).  It reports, per GEMM:

* the saturation and underflow shares of each operand (activation, weight, output gradient) after
  scaling, over every call of the run;
* the relative error of the GEMM's output against the fp32 product of the unquantised operands
  (``||Y_q - Y||_F / ||Y||_F``, averaged over the forward calls);
* for the per-tensor recipes, the shortest amax history with which delayed scaling keeps the
  saturated share of every call after the first at or below 0.1 % (:func:`history_needed`: the
  operand's amax sequence sets the scales, its per-call tail magnitudes say what saturates;
  without tails it is :func:`fpanalysis.recipes.min_history_len`; the first call uses scale 1
  whatever the history), and the margin it needs;

and judges the FP8 run against the fp32 run with the dry run's thresholds
(:data:`fpanalysis.nn.shadow.DRY_RUN_THRESHOLDS`: divergence, loss gap, eval-mode accuracy gap).
When something fails it tries changes in the same dry run -- a longer amax history or a margin
(delayed scaling), the failing GEMMs kept in bf16, the first and last GEMM kept in bf16 (common
practice), current scaling instead of delayed -- and only a change after which the FP8 run
matches fp32 and no GEMM operand fails counts (verdict SAFE WITH CHANGES).  The verified plan is
an :class:`fpanalysis.nn.fp8.FP8Plan` (``--plan PATH`` writes it as JSON;
:func:`fpanalysis.nn.fp8.apply_fp8_plan` applies it).

What it does not see: GEMMs outside ``nn.Linear`` / ``nn.Conv2d`` forwards (``F.linear``,
``torch.matmul``, attention's batched products, ``nn.MultiheadAttention``'s projections, other
convolutions) are not quantised (listed as not examined where they are modules); the rest of the
model runs in fp32, not bf16 (``check --format bf16`` examines that); FP8 accumulation inside
the GEMM is not modelled (float32 sums).  See docs/scaled_formats.md.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .._table import format_table
from ..nn.fp8 import FP8Plan, apply_fp8_plan, gemm_modules, operand_formats
from ..nn.observe import call_model, default_loss, logits_of
from ..nn.shadow import DRY_RUN_THRESHOLDS, LOSS_FLOOR, judge_dry_run
from ..recipes import DelayedScaling, quantize_per_tensor, recipe_format
from .batches import n_samples, sample_batches, take_samples
from .config import CheckConfig
from .findings import CheckReport, Finding, decide_verdict
from .probe import make_optimizer

__all__ = [
    "FP8_THRESHOLDS", "FP8CheckReport", "compare_runs", "fp8_findings", "gemm_rows", "history_needed", "inconclusive",
    "judge_fp8_run",
    "run_fp8_check",
]

#: Thresholds of the FP8 check's per-GEMM findings (the dry run's are DRY_RUN_THRESHOLDS).
FP8_THRESHOLDS: dict[str, float] = {
    # share of an operand's elements (all calls) clamped to the format's largest value
    "saturation_warn": 1e-3,
    "saturation_fail": 1e-2,
    # share of an operand's elements that were nonzero and became zero
    "underflow_warn": 0.01,
    "underflow_fail": 0.10,
    # relative error of the GEMM output against the unquantised fp32 product (mean over calls)
    "gemm_error_warn": 0.10,
    "gemm_error_fail": 0.30,
    # the dry run says something only when fp32 itself made progress: its loss (mean of the last
    # quarter of the steps against the first quarter) must fall by this share
    "dry_run_min_progress": 0.05,
}

#: Amax history lengths the check considers (Transformer Engine's default is 1024).
HISTORY_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Held-out inputs for the eval-mode accuracy, and the most changes the dry run tries.
EVAL_SAMPLES = 512
MAX_CHANGES = 5
ROLES = ("activation", "weight", "gradient")


# ------------------------------------------------------------------------------------------
# per-GEMM measurements and findings (pure functions of fp8_training's statistics)
# ------------------------------------------------------------------------------------------


def _saturating_calls(amaxes: list[float], tails: list[float], fmt: str, history_len: int, margin: int) -> int:
    """Calls after the first at which delayed scaling with this history and margin saturates
    the operand's tail (``fp32(tail * scale)`` rounds above the format's largest value); the
    scale of each call comes from the amaxes of the calls before it."""
    d = DelayedScaling(fmt, history_len, margin)
    n = 0
    for i, (a, t) in enumerate(zip(amaxes, tails)):
        if i > 0 and math.isfinite(t):
            n += quantize_per_tensor(np.array([t], dtype=np.float32), d.scale, fmt).saturated
        d(np.array([a], dtype=np.float32))
    return n


def history_needed(amaxes: list[float], fmt: str, margin: int = 0,
                   tails: list[float] | None = None) -> tuple[int | None, int]:
    """Shortest amax history (of :data:`HISTORY_CANDIDATES`) with which delayed scaling keeps
    the saturated share of every call after the first at or below
    :data:`fpanalysis.nn.fp8.TAIL_SHARE` (the first call's scale is 1 whatever the history), and
    the margin it needs.

    ``tails[t]`` is call ``t``'s tail magnitude (at most ``TAIL_SHARE`` of its elements exceed
    it): the share stays below the threshold exactly when the tail does not saturate.  Without
    ``tails`` the amaxes stand in for them (no element may saturate:
    :func:`fpanalysis.recipes.min_history_len` with the first call's saturation allowed).
    The margin is ``margin`` itself when a history suffices, else the smallest of ``margin + 1
    .. margin + 3`` with which one does (an amax that grows from call to call saturates every
    call whatever the history; a margin of ``k`` tolerates growth by ``2**k``); ``(None,
    margin)`` when none does."""
    tails = list(amaxes) if tails is None else list(tails)
    if len(tails) != len(amaxes):
        raise ValueError(f"need one tail per amax, got {len(tails)} and {len(amaxes)}")
    for m in range(margin, margin + 4):
        if not amaxes:
            return 1, m
        for h in HISTORY_CANDIDATES:
            if _saturating_calls(amaxes, tails, fmt, h, m) == 0:
                return h, m
    return None, margin


def gemm_rows(stats: dict[str, dict[str, Any]], hybrid: bool = True, margin: int = 0) -> list[dict[str, Any]]:
    """One row per GEMM module and operand: shares, amax range, the history delayed scaling
    needs, and the GEMM's output error."""
    rows = []
    for mod, d in stats.items():
        errs = d.get("output", {}).get("rel_error", [])
        for role in ROLES:
            s = d.get(role)
            if s is None or not s["calls"]:
                continue
            am = [a for a in s["amax"] if math.isfinite(a)]
            rows.append({
                "gemm": mod, "operand": role, "calls": s["calls"],
                "saturation": s["saturation"], "underflow": s["underflow"],
                "max_saturation": s["max_saturation"], "saturating_calls": s["saturating_calls"],
                "amax_min": min(am) if am else math.nan, "amax_max": max(am) if am else math.nan,
                **dict(zip(("history_needed", "margin_needed"),
                           history_needed(s["amax"], recipe_format(role, hybrid), margin, s.get("tail")))),
                "rel_error": float(np.mean(errs)) if errs and role == "activation" else math.nan,
                "rel_error_max": float(np.max(errs)) if errs and role == "activation" else math.nan,
            })
    return rows


def _level(v: float, warn: float, fail: float) -> str:
    return "fail" if v > fail else ("warn" if v > warn else "ok")


def fp8_findings(rows: list[dict[str, Any]], label: str, recipe: str = "delayed") -> list[Finding]:
    """Findings on the per-GEMM rows: saturation, underflow and output error (one finding per
    GEMM operand above a warn threshold, else one 'ok' finding per kind)."""
    T = FP8_THRESHOLDS
    out: list[Finding] = []
    sat_fix = {"delayed": "keep {gemm} in bf16, or lengthen the amax history / add a margin",
               "current": "keep {gemm} in bf16, or add a margin"}.get(recipe, "keep {gemm} in bf16")
    kinds = (
        ("FP8 saturation", "saturation", "saturation_warn", "saturation_fail",
         "of the {op} elements saturate (clamped to the format's largest value) in {label}", sat_fix),
        ("FP8 underflow", "underflow", "underflow_warn", "underflow_fail",
         "of the {op} elements are nonzero and become zero in {label}", "keep {gemm} in bf16"),
        ("GEMM output error", "rel_error", "gemm_error_warn", "gemm_error_fail",
         "relative error of the output against the fp32 product in {label}", "keep {gemm} in bf16"),
    )
    for check, key, wk, fk, what, fix in kinds:
        bad = []
        worst = None
        for r in rows:
            v = r[key]
            if not math.isfinite(v):
                continue
            if worst is None or v > worst[key]:
                worst = r
            st = _level(v, T[wk], T[fk])
            if st != "ok":
                bad.append((st, r))
        for st, r in bad:
            op = r["operand"]
            extra = ""
            if key == "saturation":
                extra = f"; {r['saturating_calls']} of {r['calls']} calls saturate, worst {100 * r['max_saturation']:.2g}%"
            msg = (f"{100 * r[key]:.3g}% " if key != "rel_error" else f"{r[key]:.3g} ") + what.format(op=op, label=label) + extra
            if key == "rel_error":
                msg = f"{r[key]:.3g} {what.format(op=op, label=label)} (worst call {r['rel_error_max']:.3g})"
            out.append(Finding(check, st, r[key], T[fk] if st == "fail" else T[wk], ">", msg,
                               fix=fix.format(gemm=r["gemm"]), layer=r["gemm"],
                               op=None if key == "rel_error" else op))
        if not bad and worst is not None:
            v = worst[key]
            msg = (f"largest {100 * v:.3g}% ({worst['gemm']}, {worst['operand']})" if key != "rel_error"
                   else f"largest {v:.3g} ({worst['gemm']})") + f": below {T[wk]:g} for every GEMM"
            out.append(Finding(check, "ok", v, T[wk], "<=", msg))
    return out


# ------------------------------------------------------------------------------------------
# the dry run: fp32 and FP8 from the same weights, on the same batches
# ------------------------------------------------------------------------------------------


@dataclass
class _Run:
    losses: list[float]
    diverged_step: int | None
    pred: torch.Tensor | None
    accuracy: float
    stats: dict[str, Any]
    seconds: float


def _train(model0: nn.Module, batches: list, ev: tuple[Any, torch.Tensor], c: CheckConfig, plan: FP8Plan | None,
           progress: Callable[[int], None]) -> _Run:
    t0 = time.perf_counter()
    model = copy.deepcopy(model0).float()
    torch.manual_seed(c.seed)  # same dropout masks in both runs (the FP8 emulation draws no random numbers)
    opt = make_optimizer(model.parameters(), c.optimizer, c.lr, c.eps, c.momentum, c.betas)
    ctx = apply_fp8_plan(model, plan, measure_error=True) if plan is not None else contextlib.nullcontext()
    losses: list[float] = []
    diverged = None
    stats: dict[str, Any] = {}
    pred = None
    acc = math.nan
    with ctx as fp8:
        model.train()
        for i, (xb, yb) in enumerate(batches):
            opt.zero_grad(set_to_none=True)
            loss = default_loss(call_model(model, xb), yb)
            v = loss.item()
            losses.append(v)
            progress(i + 1)
            if not math.isfinite(v):
                diverged = i + 1
                break
            loss.backward()
            opt.step()
        if plan is not None:
            stats = fp8.stats  # before the evaluation: training calls only
        if diverged is None:
            model.eval()
            with torch.no_grad():
                lg = logits_of(call_model(model, ev[0]))
            pred = lg.argmax(-1)
            acc = float((pred == ev[1]).float().mean())
    return _Run(losses, diverged, pred, acc, stats, time.perf_counter() - t0)


def _head_mean(v: list[float]) -> float:
    if not v:
        return math.nan
    return float(np.mean(v[:max(1, len(v) // 4)]))


def _tail_mean(v: list[float]) -> float:
    if not v:
        return math.nan
    k = max(1, len(v) // 4)
    return float(np.mean(v[-k:]))


def compare_runs(ref: _Run, run: _Run, steps: int) -> dict[str, Any]:
    """The dry run's measurements (:func:`fpanalysis.nn.shadow.judge_dry_run`'s input) of an FP8
    run against the fp32 run."""
    n = min(len(ref.losses), len(run.losses))
    lr_, ls_ = _tail_mean(ref.losses[:n]), _tail_mean(run.losses[:n])
    gap = (ls_ - lr_) / max(abs(lr_), LOSS_FLOOR) if math.isfinite(ls_) and math.isfinite(lr_) else math.inf
    head = _head_mean(ref.losses)
    progress = (head - lr_) / max(abs(head), LOSS_FLOOR) if math.isfinite(head) and math.isfinite(lr_) else math.nan
    m: dict[str, Any] = {"steps": steps, "diverged": {"fp32_step": ref.diverged_step, "shadow_step": run.diverged_step},
                         "loss": {"fp32": lr_, "shadow": ls_, "gap": gap, "fp32_first": head,
                                  "fp32_progress": progress}, "accuracy": {}}
    if ref.pred is not None:
        if run.pred is None:
            m["accuracy"]["eval"] = {"fp32": ref.accuracy, "shadow": 0.0, "gap": ref.accuracy, "agreement": 0.0}
        else:
            m["accuracy"]["eval"] = {"fp32": ref.accuracy, "shadow": run.accuracy, "gap": ref.accuracy - run.accuracy,
                                     "agreement": float((ref.pred == run.pred).float().mean())}
    return m


def judge_fp8_run(m: dict[str, Any], label: str, noise: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Problems of an FP8 run against the fp32 run: :func:`fpanalysis.nn.shadow.judge_dry_run`'s
    divergence and loss-gap judgement with its thresholds, and the eval-mode accuracy gap without
    its agreement rule: FP8's quantisation noise sends training down another path from the first
    step, so early in training the two runs disagree on many inputs even when FP8 trains as well
    (the agreement stays in the message); only a less accurate FP8 run counts.

    ``noise`` (:func:`compare_runs` of the fp32 run against fp32 on another batch order) is what
    a change of path alone does to the loss and the accuracy at this point of training: that much
    of a gap is not attributed to FP8 (its absolute value is subtracted before the thresholds,
    and the message says so)."""
    nl = _noise_gap(noise, "loss")
    na = _noise_gap(noise, "accuracy")
    loss = dict(m.get("loss", {}))
    if nl and loss.get("gap") is not None and math.isfinite(loss["gap"]):
        loss["gap"] = loss["gap"] - nl
    out = judge_dry_run(dict(m, accuracy={}, loss=loss), label)
    for p in out:
        if p["check"] == "loss gap" and nl:
            p["message"] += f"; {100 * nl:.1f}% of it not counted (fp32 on another batch order differs that much)"
    T = DRY_RUN_THRESHOLDS
    for name, a in m.get("accuracy", {}).items():
        gap = a["gap"] - na
        st = "fail" if gap > T["accuracy_gap_fail"] else ("warn" if gap > T["accuracy_gap_warn"] else "ok")
        if st != "ok" and m.get("diverged", {}).get("shadow_step") is None:
            out.append({"status": st, "check": f"accuracy gap ({name} mode)", "measured": gap,
                        "threshold": T["accuracy_gap_fail"] if st == "fail" else T["accuracy_gap_warn"],
                        "message": f"{name}-mode accuracy {100 * a['shadow']:.1f}% in {label} vs {100 * a['fp32']:.1f}% "
                                   f"in fp32; {100 * a['agreement']:.1f}% of held-out inputs keep the fp32 class"
                                   + (f"; {100 * na:.1f} points of the gap not counted (fp32 on another batch order "
                                      "differs that much)" if na else ""),
                        "where": None})
    return out


def _noise_gap(noise: dict[str, Any] | None, what: str) -> float:
    """|gap| of fp32 against itself on another batch order (0 when not measured or not finite)."""
    if not noise:
        return 0.0
    if what == "loss":
        g = noise.get("loss", {}).get("gap")
    else:
        g = noise.get("accuracy", {}).get("eval", {}).get("gap")
    return abs(g) if g is not None and math.isfinite(g) else 0.0


def _dry_run_findings(m: dict[str, Any], label: str) -> list[Finding]:
    problems = judge_fp8_run(m, label, m.get("noise"))
    if inconclusive(m):  # warnings from a run in which fp32 itself barely learned are noise
        problems = [p for p in problems if p["status"] == "fail"]
    out = []
    for p in problems:
        out.append(Finding(f"dry run: {p['check']}", p["status"], p["measured"], p["threshold"], ">", p["message"],
                           fix="keep GEMMs in bf16 or change the recipe settings (the changes tried are listed below)"))
    loss = m["loss"]
    if not any(p["status"] == "fail" for p in problems) and inconclusive(m):
        out.append(Finding(
            "dry run", "skipped", loss["fp32_progress"], FP8_THRESHOLDS["dry_run_min_progress"], "<",
            f"not examined: inconclusive: fp32's loss fell by only {100 * loss['fp32_progress']:.1f}% in "
            f"{m['steps']} steps ({loss['fp32_first']:.4g} -> {loss['fp32']:.4g}; the dry run was lengthened up to "
            f"{2 ** MAX_EXTENSIONS} times), too little for the {label} run to fall behind; run more steps (--dry-run-steps), a larger learning rate, or start from a trained "
            "checkpoint"))
    elif not problems:
        acc = m["accuracy"].get("eval")
        msg = (f"{m['steps']} steps with {label} match fp32: loss {loss['shadow']:.4g} vs {loss['fp32']:.4g} "
               f"({100 * loss['gap']:+.1f}%)")
        if acc:
            msg += (f"; eval accuracy {100 * acc['shadow']:.1f}% vs {100 * acc['fp32']:.1f}% "
                    f"({100 * acc['agreement']:.1f}% of held-out inputs keep the fp32 class)")
        if m.get("noise"):
            msg += (f"; fp32 on another batch order: loss {100 * m['noise']['loss']['gap']:+.1f}%"
                    + (f", eval accuracy {100 * m['noise']['accuracy']['eval']['shadow']:.1f}%"
                       if m["noise"]["accuracy"].get("eval") else "")
                    + " (differences of that size are not counted)")
        out.append(Finding("dry run", "ok", loss["gap"], DRY_RUN_THRESHOLDS["loss_gap_warn"], "<=", msg))
    return out


def inconclusive(m: dict[str, Any]) -> bool:
    """Whether fp32 made too little progress in the dry run for a comparison to mean anything
    (:data:`FP8_THRESHOLDS` ``dry_run_min_progress``)."""
    p = m.get("loss", {}).get("fp32_progress", math.nan)
    return not (p >= FP8_THRESHOLDS["dry_run_min_progress"])


def _operands_text(recipe: str) -> str:
    f = operand_formats(recipe)
    if recipe in ("current", "delayed"):
        return f"E4M3 forward, {f['gradient'].upper()} gradients, per-tensor scales"
    if recipe == "nvfp4":
        return "NVFP4 (E2M1, E4M3 scale per 16, fp32 tensor scale) forward and backward"
    el = lambda n: n.split("_")[1].upper()
    return (f"{el(f['activation'])} forward, {el(f['gradient'])} gradients, E8M0 scale per 32 "
            "(rounded up, as Transformer Engine)")


def _label(plan: FP8Plan) -> str:
    return f"FP8 ({plan.describe()})"


def _candidates(plan: FP8Plan, rows: list[dict[str, Any]], static: list[Finding], gemms: list[str]) -> list[FP8Plan]:
    """Changes to try, the smallest first: recipe settings (all GEMMs stay FP8), then GEMMs kept
    in bf16 (failing ones; first and last; both), then current instead of delayed scaling."""
    out: list[FP8Plan] = []
    # the operands that saturate materially (warn or worse) set the history and margin to try
    sat = [r for r in rows if r["saturation"] > FP8_THRESHOLDS["saturation_warn"]]
    if plan.recipe == "delayed" and sat:
        margin = max(r["margin_needed"] for r in sat)
        longest = max((r["history_needed"] or HISTORY_CANDIDATES[-1] for r in sat if r["margin_needed"] == margin),
                      default=1)
        if longest > plan.history_len or margin > plan.margin:
            out.append(replace(plan, history_len=max(plan.history_len, int(longest)), margin=margin))
    failing = sorted({f.layer for f in static if f.status == "fail" and f.layer}, key=gemms.index)
    ends = list(dict.fromkeys([gemms[0], gemms[-1]])) if gemms else []
    if failing:
        out.append(replace(plan, keep=sorted(set(plan.keep) | set(failing), key=gemms.index)))
    if len(gemms) > 2 and set(ends) != set(failing):
        out.append(replace(plan, keep=sorted(set(plan.keep) | set(ends), key=gemms.index)))
        if failing and not set(failing) <= set(ends):
            out.append(replace(plan, keep=sorted(set(plan.keep) | set(ends) | set(failing), key=gemms.index)))
    if plan.recipe == "delayed":
        out.append(replace(plan, recipe="current"))
    uniq: list[FP8Plan] = []
    for p in out:
        if p != plan and p not in uniq and len(p.keep) < max(1, len(gemms)):
            uniq.append(p)
    return uniq[:MAX_CHANGES]


# ------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------


class FP8CheckReport(CheckReport):
    """A :class:`~fpanalysis.check.findings.CheckReport` whose text adds the per-GEMM table."""

    def render(self, color: bool = False) -> str:
        text = super().render(color)
        lines = text.split("\n")
        c = self.config
        lines[0] = (f"fpanalysis check: {c.get('model', 'model')} with FP8 GEMMs, recipe {c.get('recipe')}"
                    + (f" (amax history {c.get('history_len')}, margin {c.get('margin')})" if c.get("recipe") == "delayed"
                       else "") + f"; operands {c.get('operands')}")
        lines[1] = (f"  optimizer {c.get('optimizer')} lr={c.get('lr')}, {c.get('steps')} steps fp32 vs FP8 on "
                    f"{c.get('samples')} samples; Linear/Conv2d GEMMs quantised, the rest in fp32")
        rows = self.details.get("gemms") or []
        if rows:
            per_tensor = c.get("recipe") in ("current", "delayed")
            shown = [{
                "GEMM": r["gemm"], "operand": r["operand"], "saturated": f"{100 * r['saturation']:.3g}%",
                "underflow": f"{100 * r['underflow']:.3g}%",
                "amax": f"{r['amax_min']:.3g}..{r['amax_max']:.3g}",
                **({"history needed": ("none" if r["history_needed"] is None else str(r["history_needed"]))
                    + (f" (margin {r['margin_needed']})" if r["margin_needed"] != c.get("margin", 0) else "")}
                   if per_tensor else {}),
                "output rel. error": "" if not math.isfinite(r["rel_error"]) else f"{r['rel_error']:.3g}",
            } for r in rows]
            table = format_table(shown, list(shown[0]))
            at = next((i for i, ln in enumerate(lines) if ln.startswith("verdict:")), len(lines))
            head = "per GEMM (shares over all calls" + ("; 'history needed': shortest amax history with which "
                                                         "delayed scaling saturates at most 0.1% of the operand at every "
                                                         "call after the first, and the margin it needs):"
                                                         if per_tensor else "):")
            lines[at:at] = [head, *("  " + t for t in table.split("\n")), ""]
        plan = self.details.get("plan")
        if plan:
            lines.append(f"plan: {FP8Plan.from_dict(plan).describe()}"
                         + (" (verified by the dry run)" if plan.get("verified") else " (not verified)"))
        return "\n".join(lines)


def unquantised_gemms(work: nn.Module, batch: tuple[Any, torch.Tensor], gemms: list[str]) -> list[str]:
    """Matrix products and convolutions of one training step's forward pass that run outside the
    modules the FP8 emulation quantises (``q @ k.transpose(-2, -1)`` in a hand-written attention,
    ``F.linear``, ``torch.einsum``): one step of a copy of ``work`` under the op observer
    (:class:`fpanalysis.nn.observe.Observer`), its forward products and convolutions whose module
    path is not one of ``gemms``, as ``aten.bmm in encoder.attn`` labels.  They are computed
    unquantised by the check's runs, so the check reports them as not examined."""
    from ..nn.observe import MATMUL_OPS, Observer

    model = copy.deepcopy(work)
    obs = Observer(model, "fp16", max_steps=1)
    xb, yb = batch
    with obs.step(0):
        default_loss(call_model(model, xb), yb).backward()
    quantised = set(gemms)
    out: list[str] = []
    for r in obs.result().forward():
        if (r.op in MATMUL_OPS or r.op.startswith("convolution")) and r.module not in quantised:
            label = f"aten.{r.op} in {r.module or 'the model'}"
            if label not in out:
                out.append(label)
    return out


MAX_EXTENSIONS = 3  # the dry run grows to at most 2**3 = 8 times --dry-run-steps


def _reference_run(work: nn.Module, X: Any, y: torch.Tensor, ev: tuple[Any, torch.Tensor], c: CheckConfig,
                   steps: int, tick: Callable[..., Callable[[int], None]], total: list[int],
                   log: Callable[[str], None]) -> tuple[_Run, int]:
    """The fp32 run of the dry run, and its length.

    A comparison means something only once fp32 has learned measurably (:func:`inconclusive`); a
    model that learns slowly at the given learning rate (a fresh model, a small ``lr``) would
    otherwise always be reported "not examined".  So the fp32 run is made first and, while its
    loss has fallen by less than ``dry_run_min_progress``, repeated with twice the steps (same
    initial weights, the same batches extended), at most :data:`MAX_EXTENSIONS` times; the FP8
    runs then take the length fp32 needed.  The cost is at most 15 fp32 runs of ``steps`` steps
    before the FP8 runs; a run still inconclusive after that is reported as such."""
    n = steps
    for k in range(MAX_EXTENSIONS + 1):
        log(f"FP8 check: {n} steps in fp32 ...")
        total[0] += n
        ref = _train(work, sample_batches(X, y, c.batch_size, n, c.seed + 3), ev, c, None, tick(0, "fp32 run"))
        if ref.diverged_step is not None or k == MAX_EXTENSIONS:
            break
        head, tail = _head_mean(ref.losses), _tail_mean(ref.losses)
        progress = (head - tail) / max(abs(head), LOSS_FLOOR)
        if progress >= FP8_THRESHOLDS["dry_run_min_progress"]:
            break
        log(f"FP8 check: fp32's loss fell by {100 * progress:.1f}% in {n} steps; trying {2 * n}")
        n *= 2
    return ref, n


def run_fp8_check(model: nn.Module, X: Any, y: torch.Tensor, c: CheckConfig, *,
                  progress: Callable[[int, int, str], None] | None = None,
                  log: Callable[[str], None] | None = None) -> FP8CheckReport:
    """The FP8 / MX check of ``model`` on ``(X, y)`` (validated tensors, see
    :func:`fpanalysis.check.run.run_check`) under ``c.recipe``; see the module docstring."""
    log = log or (lambda line: None)
    t0 = time.perf_counter()
    steps = c.dry_run_steps if c.dry_run_steps > 0 else c.steps

    def batches_for(n: int) -> list:
        return sample_batches(X, y, c.batch_size, n, c.seed + 3)

    batches = batches_for(steps)
    g = torch.Generator().manual_seed(c.seed + 4)
    idx = torch.randperm(n_samples(X), generator=g)[:EVAL_SAMPLES]
    ev = (take_samples(X, idx), y[idx])
    torch.manual_seed(c.seed)
    work = copy.deepcopy(model).float()
    gemms = gemm_modules(work)
    base = FP8Plan(c.recipe, [], c.history_len, c.margin, True)
    label = _label(base)
    total = [0 if c.dry_run_steps > 0 else steps]
    done = [0]

    def tick(k: int, what: str) -> Callable[[int], None]:
        start = done[0]

        def f(i: int) -> None:
            done[0] = start + i
            if progress is not None:
                progress(done[0], total[0], what)
        return f

    findings: list[Finding] = []
    if not gemms:
        findings.append(Finding("FP8 GEMMs", "skipped", math.nan, math.nan, "n/a",
                                "not examined: the model has no nn.Linear or nn.Conv2d module (the GEMMs the FP8 "
                                "emulation quantises)"))
    others = [n for n, m in work.named_modules()
              if isinstance(m, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                                nn.MultiheadAttention, nn.Bilinear, nn.RNNBase))]
    ref = None
    if c.dry_run_steps > 0:
        # fp32 first: the dry run lasts until fp32 learns measurably (docs/scaled_formats.md)
        ref, steps = _reference_run(work, X, y, ev, c, steps, tick, total, log)
        batches = batches_for(steps)
        total[0] += steps
    log(f"FP8 check: {steps} steps with {label} ...")
    run = _train(work, batches, ev, c, base, tick(0, "FP8 run"))
    log(f"FP8 check: {run.seconds:.1f} s ({1000 * run.seconds / max(1, len(run.losses)):.0f} ms per step)")
    ran = set(run.stats)
    silent = [n for n in gemms if n not in ran]
    functional = unquantised_gemms(work, batches[0], gemms)
    if others or silent or functional:
        findings.append(Finding(
            "GEMMs not examined", "skipped", math.nan, math.nan, "n/a",
            "not examined (computed unquantised, no statistics): "
            + "; ".join(x for x in (
                f"modules the emulation does not quantise: {', '.join(others)}" if others else "",
                f"Linear/Conv2d modules whose forward never ran (called functionally): {', '.join(silent)}"
                if silent else "",
                f"matrix products outside Linear/Conv2d modules: {', '.join(functional)}" if functional else "")
                if x)))
    rows = gemm_rows(run.stats, True, c.margin)
    static = fp8_findings(rows, label, c.recipe)
    findings += static
    details: dict[str, Any] = {"gemms": rows, "losses": {"fp8": run.losses}, "formats": operand_formats(c.recipe)}
    verified: list[str] | None = None
    plan_out: FP8Plan | None = None
    if c.dry_run_steps > 0:
        details["losses"]["fp32"] = ref.losses
        if ref.diverged_step is not None:
            findings.append(Finding("fp32 training", "fail", float(ref.diverged_step), math.nan, "diverges at step",
                                    f"fp32 training diverges at step {ref.diverged_step}: the check cannot judge FP8; "
                                    "lower the learning rate until fp32 trains",
                                    fix="lower the learning rate (fp32 itself diverges)", fixable=False))
            verdict, changes = decide_verdict(findings)
        else:
            m = compare_runs(ref, run, steps)
            log("FP8 check: fp32 on another batch order (how much a change of path alone moves the results) ...")
            total[0] += steps
            alt = _train(work, sample_batches(X, y, c.batch_size, steps, c.seed + 5), ev, c, None, tick(0, "fp32 run"))
            if alt.diverged_step is None:
                m["noise"] = compare_runs(ref, alt, steps)
            details["dry_run"] = m
            findings += _dry_run_findings(m, label)
            failing = any(f.status == "fail" for f in findings)
            results = []
            if failing:
                cands = _candidates(base, rows, static, gemms)
                total[0] += steps * len(cands)
                for cand in cands:
                    log(f"FP8 check: trying {cand.describe()} ...")
                    r = _train(work, batches, ev, c, cand, tick(0, "verifying changes"))
                    mm = compare_runs(ref, r, steps)
                    probs = [p for p in judge_fp8_run(mm, _label(cand), m.get("noise")) if p["status"] == "fail"]
                    st_fail = [f for f in fp8_findings(gemm_rows(r.stats, True, cand.margin), _label(cand),
                                                       cand.recipe) if f.status == "fail"]
                    ok = not probs and not st_fail
                    problems = [{"check": p["check"], "status": "fail"} for p in probs] + [
                        {"check": f"{f.check} ({f.layer}, {f.op})" if f.op else f"{f.check} ({f.layer})", "status": "fail"}
                        for f in st_fail]
                    results.append({"description": cand.describe(), "verified": ok, "problems": problems,
                                    "plan": replace(cand, verified=ok).to_dict(), "loss": mm["loss"],
                                    "accuracy": mm["accuracy"].get("eval")})
                    log(f"FP8 check: {cand.describe()}: " + ("verified (matches fp32)" if ok else
                        "not verified (" + ", ".join(p["check"] for p in problems) + ")"))
                details["fixes"] = results
            good = [r for r in results if r["verified"]]
            if not failing:
                plan_out = replace(base, verified=not inconclusive(m))
                verified = []
            else:
                verified = [good[0]["description"]] if good else []
                plan_out = FP8Plan.from_dict(good[0]["plan"]) if good else None
            verdict, changes = decide_verdict(findings, verified)
    else:
        verdict, changes = decide_verdict(findings)
    details["plan"] = plan_out.to_dict() if plan_out is not None else None
    config = {
        "model": c.model_name or type(model).__name__, "format": "fp8", "recipe": c.recipe,
        "history_len": c.history_len, "margin": c.margin, "hybrid": True,
        "operands": _operands_text(c.recipe),
        "optimizer": c.optimizer, "lr": c.lr, "eps": c.eps, "momentum": c.momentum, "batch_size": c.batch_size,
        "steps": steps, "samples": n_samples(X), "dry_run_steps": c.dry_run_steps, "seed": c.seed,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return FP8CheckReport(verdict, findings, changes, config, details)

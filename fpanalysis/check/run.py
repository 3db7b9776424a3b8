"""The torch side of ``fpanalysis check``: validate the inputs, run the probes, assemble findings."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..nn.observe import Observation, call_model, default_loss, float_inputs, logits_of
from .batches import n_samples, sample_batches, take_samples
from .config import CheckConfig
from .findings import (
    CheckReport,
    Finding,
    Measurements,
    adam_first_step_errors,
    agreement_findings,
    decide_verdict,
    findings_from_measurements,
)
from .probe import leaf_modules, make_optimizer, probe_model

__all__ = ["as_tensors", "run_check", "validate_model"]

#: Inputs per batch of the agreement certificate (one progress step each).
CERTIFY_BATCH = 64


def validate_model(model: Any) -> nn.Module:
    """The model must be an ``nn.Module`` with finite floating-point parameters."""
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"the model must be a torch.nn.Module, got {type(model).__name__}; "
            "a factory 'file.py:function' must return an nn.Module instance"
        )
    params = list(model.named_parameters())
    if not params:
        raise ValueError("the model has no parameters: there is nothing to train")
    for name, p in params:
        if not p.is_floating_point():
            raise ValueError(f"parameter {name!r} has dtype {p.dtype}; expected floating point")
        if not torch.isfinite(p).all():
            bad = int((~torch.isfinite(p)).sum())
            raise ValueError(
                f"parameter {name!r} contains {bad} NaN/inf values: the checkpoint is corrupt or the "
                "model already diverged; retrain or load a healthy checkpoint"
            )
    return model


def _as_input_tensor(X: Any, what: str) -> torch.Tensor:
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    if X.ndim == 0:
        raise ValueError(f"{what} must have a leading sample dimension, got a scalar")
    if X.is_floating_point():
        if not torch.isfinite(X).all():
            raise ValueError(f"{what} contain NaN or inf values")
        return X.to(torch.float32)
    if X.dtype == torch.bool:
        return X
    return X.to(torch.int64)  # token ids and other integer inputs stay integers (nn.Embedding)


def as_tensors(data: Any) -> tuple[Any, torch.Tensor]:
    """``(X, y)`` as tensors, with clear errors for anything else.

    ``X`` is one array (floating inputs become float32, integer inputs such as token ids stay
    int64), a tuple of arrays (the model's positional arguments) or a dict of arrays (its keyword
    arguments); every array has the samples along its first axis.  ``y`` holds integer class
    labels, one per sample (or one per position, for token-level outputs).
    """
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError("data must be a pair (X, y): inputs and integer class labels")
    X, y = data
    if isinstance(X, dict):
        if not X:
            raise ValueError("the input dict X is empty")
        X = {k: _as_input_tensor(v, f"the inputs X[{k!r}]") for k, v in X.items()}
        firsts = {k: v.shape[0] for k, v in X.items()}
    elif isinstance(X, tuple):
        if not X:
            raise ValueError("the input tuple X is empty")
        X = tuple(_as_input_tensor(v, f"the inputs X[{i}]") for i, v in enumerate(X))
        firsts = {i: v.shape[0] for i, v in enumerate(X)}
    else:
        X = _as_input_tensor(X, "the inputs X")
        firsts = {"X": X.shape[0]}
    if len(set(firsts.values())) != 1:
        raise ValueError(f"the inputs disagree on the number of samples: {firsts}")
    n = next(iter(firsts.values()))
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if n == 0:
        raise ValueError("the data is empty: need at least one sample")
    if y.ndim == 0 or n != y.shape[0]:
        raise ValueError(f"X has {n} samples but y has {y.shape[0] if y.ndim else 0} labels")
    if y.is_floating_point():
        if not torch.all(y == torch.round(y)):
            raise ValueError("labels y must be integer class indices")
    return X, y.to(torch.int64)


def _shape_text(X: Any) -> str:
    if isinstance(X, dict):
        return "{" + ", ".join(f"{k!r}: {tuple(v.shape[1:])}" for k, v in X.items()) + "}"
    if isinstance(X, tuple):
        return "(" + ", ".join(str(tuple(v.shape[1:])) for v in X) + ")"
    return str(tuple(X.shape[1:]))


def _check_forward_shape(model: nn.Module, X: Any, y: torch.Tensor) -> int:
    try:
        with torch.no_grad():
            out = logits_of(call_model(model.eval(), float_inputs(take_samples(X, slice(0, 2)))))
    except Exception as exc:  # the user's model rejected the data: say so plainly
        raise ValueError(
            f"the model cannot run on inputs of shape {_shape_text(X)} (per sample): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if out.ndim == 2 and y.ndim == 1:
        return int(out.shape[1])
    if out.ndim == 3 and y.ndim == 2:  # one label per position (token-level classification, language models)
        return int(out.shape[-1])
    raise ValueError(
        f"the model returns logits of shape {tuple(out.shape)} for labels of shape {tuple(y.shape)}: expected "
        "(batch, classes) logits with one label per sample, or (batch, positions, classes) with one per position"
    )


def run_check(
    model: nn.Module,
    data: Any,
    config: CheckConfig | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> CheckReport:
    """Measure ``model`` on ``data`` in fp32 and judge it for pure low-precision training.

    ``config`` holds every option (:class:`~fpanalysis.check.config.CheckConfig`); keyword
    ``options`` with its field names build one (or override the given one's fields).
    ``progress(done, total, phase)`` follows the run; ``log(line)`` receives one line per phase
    of the dry run and per fix it verifies.
    """
    c = CheckConfig(**options) if config is None else (replace(config, **options) if options else config)
    f = c.format
    model = validate_model(model)
    X, y = as_tensors(data)
    n_classes = _check_forward_shape(model, X, y)
    if int(y.max()) >= n_classes or int(y.min()) < 0:
        raise ValueError(f"labels range over [{int(y.min())}, {int(y.max())}] but the model has {n_classes} outputs")
    if c.is_fp8:  # the FP8 / MX check (fpanalysis.check.fp8)
        from .fp8 import run_fp8_check

        return run_fp8_check(model, X, y, c, progress=progress, log=log)
    optimizer, lr, eps, momentum, betas = c.optimizer, c.lr, c.eps, c.momentum, c.betas
    batch_size, steps, warmup_steps, certify, seed = c.batch_size, c.steps, c.warmup_steps, c.certify, c.seed
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    work = copy.deepcopy(model).float()
    initial = copy.deepcopy(work) if c.dry_run_steps > 0 and c.dry_run_start == "initial" else None

    def report(done: int, total: int, what: str) -> None:
        if progress is not None:
            progress(done, total, what)

    cert_batches = -(-min(c.certify_samples, n_samples(X)) // CERTIFY_BATCH) if certify else 0
    late = c.dry_run_steps > 0 and c.dry_run_late and c.dry_run_start == "initial" and certify and warmup_steps > 0
    total_steps = steps + (warmup_steps if certify else 0) + cert_batches + 2 * c.dry_run_steps * (2 if late else 1)
    diverged_at = None  # (fp32 step, its loss) where training diverged (_diverged)
    first_loss = None
    # warm-up in fp32 so that margins (and gradients) mean something
    if certify and warmup_steps > 0:
        opt = make_optimizer(work.parameters(), c.optimizer, c.lr, c.eps, c.momentum, c.betas)
        work.train()
        try:
            for i, (xb, yb) in enumerate(sample_batches(X, y, batch_size, warmup_steps, seed + 1)):
                opt.zero_grad(set_to_none=True)
                loss = default_loss(call_model(work, xb), yb)
                value = loss.item()
                first_loss = value if first_loss is None else first_loss
                if _diverged(value, first_loss):
                    diverged_at = (i + 1, value)
                    break
                loss.backward()
                opt.step()
                report(i + 1, total_steps, "fp32 warm-up")
        except Exception as exc:
            raise ValueError(f"the model cannot be trained in fp32 on this data (warm-up step): "
                             f"{type(exc).__name__}: {exc}") from None
    if diverged_at is not None:
        return _diverged_report(model, X, c, *diverged_at, [], t0)
    try:
        probe = probe_model(
            work, sample_batches(X, y, batch_size, steps, seed + 2), f, optimizer=optimizer, lr=lr, eps=eps,
            momentum=momentum, betas=betas,
            progress=lambda d, t: report((warmup_steps if certify else 0) + d, total_steps, "measuring"),
        )
    except Exception as exc:  # a model the probe cannot run is an error with a reason, not a traceback
        raise ValueError(_probe_failure(work, sample_batches(X, y, batch_size, 1, seed + 2)[0], exc)) from None
    first_loss = probe.losses[0] if first_loss is None and probe.losses else first_loss
    bad = [k for k, v in enumerate(probe.losses) if _diverged(v, first_loss)]
    if bad:
        step = (warmup_steps if certify else 0) + bad[0] + 1
        return _diverged_report(model, X, c, step, probe.losses[bad[0]], probe.losses, t0)
    meas = Measurements(profile=c.profile)
    ops = operation_dicts(probe.observation, {n for n, _ in leaf_modules(work)}) if probe.observation else []
    meas.operations = ops
    meas.buffers = [b.to_dict() for b in probe.observation.buffers] if probe.observation else []
    if ops:
        meas.activations = [
            {"name": o["key"]["module"] + (f"#{o['key']['occurrence']}" if o["key"]["occurrence"] else ""),
             "op": o["key"]["op"], "key": o["key"], "step": o["first_overflow_step"],
             "max_abs": o["max_abs"], "n_overflow": o["n_overflow"],
             "frac_flushed": o["n_flushed"] / o["nonzero"] if o["nonzero"] else 0.0}
            for o in ops if o["leaf_output"]
        ]
    else:
        meas.activations = [
            {"name": a.name, "max_abs": a.max_abs, "n_overflow": a.n_overflow, "frac_flushed": a.frac_flushed}
            for a in probe.activations if a.count
        ]
    nonzero = sum(g.nonzero for g in probe.weight_grads)
    small_q = _pooled_quantile(probe.weight_grads, 0.001)
    meas.weight_grads = {
        "nonzero": nonzero,
        "n_lost": sum(g.n_below_2m24 for g in probe.weight_grads),
        "mass_lost": sum(g.sum_abs_below_2m24 for g in probe.weight_grads)
        / max(sum(g.sum_abs for g in probe.weight_grads), 1e-300),
        "n_overflow": sum(g.n_overflow for g in probe.weight_grads),
        "max_abs": max((g.max_abs for g in probe.weight_grads), default=0.0),
        "small_quantile": small_q,
    }
    meas.optimizer = {"name": optimizer, "eps": eps, "lr": lr}
    if probe.adam is not None:
        vu, nf, se = adam_first_step_errors(probe.adam["grad_abs"], f, lr, eps, betas)
        meas.optimizer.update(v_underflow_frac=vu, step_nonfinite_frac=nf, step_error_frac=se)
    per_layer = [
        {"layer": u["layer"], "frac": u["lost"] / max(1, u["n"] - u["zero_update"])} for u in probe.updates if u["n"]
    ]
    meas.stagnation = {
        "lost": sum(u["lost"] for u in probe.updates),
        "nonzero": sum(u["n"] - u["zero_update"] for u in probe.updates),
        "per_layer": per_layer,
    }
    meas.reductions = probe.reductions
    details: dict[str, Any] = {
        "activations": [a.to_dict() for a in probe.activations],
        "activation_grads": [a.to_dict() for a in probe.activation_grads],
        "weight_grads": [g.to_dict() for g in probe.weight_grads],
        "updates": probe.updates,
        "reductions": probe.reductions,
        "losses": probe.losses,
        "operations": [r.to_dict() for r in probe.observation.ops] if probe.observation else [],
        "buffers": meas.buffers,
    }
    findings = findings_from_measurements(meas, f)
    if certify:
        base = total_steps - cert_batches - 2 * c.dry_run_steps * (2 if late else 1)
        findings += _agreement_findings(work, X, c, meas, details,
                                        progress=lambda d, t, what: report(base + d, total_steps, what))
    if c.dry_run_steps > 0 and not isinstance(X, torch.Tensor):
        findings.append(Finding("dry run", "skipped", math.nan, math.nan, "n/a",
                                "not examined: the dry run needs one input tensor (this model takes several)"))
        verdict, changes = decide_verdict(findings)
    elif c.dry_run_steps > 0:
        done0 = total_steps - 2 * c.dry_run_steps * (2 if late else 1)
        findings, verified = _dry_run_findings(
            initial if initial is not None else work, X, y, c, meas, findings, details, log or (lambda line: None),
            lambda d, t: report(done0 + d, total_steps, "dry run"),
            warmed=work if late else None)
        verdict, changes = decide_verdict(findings, verified)
    else:
        verdict, changes = decide_verdict(findings)
    config = {
        "model": c.model_name or type(model).__name__, "format": f.name, "optimizer": optimizer, "lr": lr,
        "eps": eps, "momentum": momentum, "batch_size": batch_size, "steps": steps,
        "warmup_steps": warmup_steps if certify else 0, "samples": n_samples(X), "profile": c.profile,
        "dry_run_steps": c.dry_run_steps, "dry_run_late": late,
        "seed": seed, "seconds": round(time.perf_counter() - t0, 2),
    }
    return CheckReport(verdict, findings, changes, config, details)


#: fp32 training counts as diverged when its loss is not finite or grows above this factor times
#: max(1, the first loss): a cross-entropy of 10^6 means logit gaps of 10^6, nothing a training
#: run recovers from.
_DIVERGED_LOSS_FACTOR = 1e6


def _diverged(loss: float, first: float | None) -> bool:
    return not math.isfinite(loss) or loss > _DIVERGED_LOSS_FACTOR * max(1.0, first if first is not None else 1.0)


def _diverged_report(model: nn.Module, X: torch.Tensor, c: CheckConfig, step: int, loss: float,
                     losses: list[float], t0: float) -> CheckReport:
    """fp32 training itself diverged: the measurements describe a broken run, not the format,
    so the report says so (one failing finding, no fix that keeps the set-up) and nothing else."""
    what = f"{c.optimizer} with lr={c.lr:g}" + (f", momentum={c.momentum:g}" if c.optimizer == "sgd" else "")
    finding = Finding(
        "fp32 training", "fail", float(step), math.nan, "diverges at step",
        f"fp32 training diverges at step {step} (loss {loss:.3g}) with {what}: the check cannot judge "
        f"{c.format.name}; lower the learning rate until fp32 trains",
        fix="lower the learning rate (fp32 itself diverges)", fixable=False,
    )
    verdict, changes = decide_verdict([finding])
    config = {
        "model": c.model_name or type(model).__name__, "format": c.format.name, "optimizer": c.optimizer,
        "lr": c.lr, "eps": c.eps, "momentum": c.momentum, "batch_size": c.batch_size, "steps": c.steps,
        "warmup_steps": c.warmup_steps if c.certify else 0, "samples": n_samples(X), "profile": c.profile,
        "seed": c.seed, "seconds": round(time.perf_counter() - t0, 2), "fp32_diverged_at_step": step,
    }
    return CheckReport(verdict, [finding], changes, config, {"losses": losses})


def _pooled_quantile(stats: list[Any], q: float) -> float:
    vals = [np.concatenate(s.abs_values) for s in stats if s.abs_values]
    if not vals:
        return 0.0
    return float(np.quantile(np.concatenate(vals), q))


def _agreement_findings(model: nn.Module, X: torch.Tensor, c: CheckConfig, meas: Measurements,
                        details: dict[str, Any], progress: Any = False) -> list[Finding]:
    """Certified and observed agreement of emulated inference with fp32 (the analysis module)."""
    from ..analysis import analyze

    if not (isinstance(X, torch.Tensor) and X.is_floating_point()):
        return [Finding("inference agreement", "skipped", math.nan, math.nan, "n/a",
                        "not examined: the certificate needs one floating-point input tensor "
                        "(this model takes integer or several inputs)")]
    try:
        rep = analyze(model.eval(), X[:c.certify_samples], fmt=c.format, profile=c.profile, progress=progress,
                      batch_size=CERTIFY_BATCH, real_half=False, local=False, keep_per_input=False, name="check")
    except Exception as exc:  # the analysis cannot trace every model: not examined, with the reason
        return [Finding("inference agreement", "skipped", math.nan, math.nan, "n/a",
                        f"not examined: {type(exc).__name__}: {exc}")]
    summ = rep.tolerance["logits"]
    emu = summ.runs.get("emulator")
    observed = emu.agreement if emu is not None else math.nan
    meas.agreement = {"certified": summ.certified_fraction, "certified_prob": summ.certified_prob_fraction,
                      "probability": summ.probability, "observed": observed, "n": summ.n,
                      "method": rep.certificate.get("method", "interval")}
    details["agreement"] = summ.to_dict()
    details["analysis_layers"] = rep.to_dict().get("layers", [])
    return agreement_findings(meas.agreement, c.format)


def operation_dicts(obs: Observation, leaves: set[str]) -> list[dict[str, Any]]:
    """The observer's op records as the plain dicts :mod:`.operations` reads (forward order kept
    in ``index``); ``leaf_output`` marks the ops whose result a leaf module returned.  ``max_abs``
    leaves out values already infinite (or +-float32 max) in float32: masks, not overflow."""
    out = []
    for i, r in enumerate(obs.ops):
        out.append({
            "key": {"phase": r.phase, "module": r.module, "op": f"aten.{r.op}", "occurrence": r.occurrence,
                    "output": r.output},
            "label": r.name, "module_type": r.module_type, "index": i, "node": r.node, "source": r.source,
            "max_abs": r.max_finite_abs, "in_max_abs": r.in_max_abs, "n_overflow": r.n_overflow, "numel": r.numel,
            "n_nonfinite": r.n_nonfinite + r.n_sentinel,
            "nonzero": r.nonzero, "n_flushed": r.n_flushed, "n_subnormal": r.n_subnormal,
            "first_overflow_step": r.first_overflow_step, "reduction": r.reduction,
            "leaf_output": bool(r.module_output and r.phase == "forward" and r.module in leaves),
        })
    return out


def _probe_failure(model: nn.Module, batch: tuple[Any, torch.Tensor], exc: Exception) -> str:
    """Say whose failure it is: one plain fp32 training step on a copy tells the model's own
    errors (shape bugs, unsupported inputs) from the observer's."""
    try:
        m = copy.deepcopy(model).train()
        default_loss(call_model(m, batch[0]), batch[1]).backward()
    except Exception as own:
        return (f"the check cannot measure this model: a plain fp32 training step on a batch fails: "
                f"{type(own).__name__}: {own}")
    return (f"the check cannot measure this model: its training step fails only under the operation "
            f"observer (fpanalysis.nn.observe), a limitation of the check: {type(exc).__name__}: {exc}")


#: Held-out inputs for the dry run's accuracy and agreement, and the most fixes it verifies.
DRY_RUN_EVAL = 512
DRY_RUN_MAX_FIXES = 6


def _as_dry_run_fixes(fixes: list[Any]) -> list[Any]:
    """The findings' machine-readable fixes (:class:`fpanalysis.check.findings.Fix`) as changes the
    dry run can apply (:class:`fpanalysis.nn.shadow.Fix`), so that it verifies them; a fix
    it cannot express is left out (and so never offered as verified)."""
    from ..nn.shadow import Fix as DryRunFix

    out = []
    for fx in fixes:
        p = fx.params
        modules = [m for m in p.get("modules", []) if m and not m.startswith("<")]
        if fx.name in ("fp32_master_weights", "optimizer_state_fp32"):
            out.append(DryRunFix("fp32-master-weights"))
        elif fx.name == "stochastic_rounding":
            out.append(DryRunFix("stochastic-rounding"))
        elif fx.name == "adam_eps" and "eps" in p:
            out.append(DryRunFix("adam-eps", {"eps": float(p["eps"])}))
        elif fx.name == "loss_scale" and "scale" in p:
            out.append(DryRunFix("loss-scale", {"mode": "static", "scale": float(p["scale"])}))
        elif fx.name in ("buffers_fp32", "fp32_region") and modules:
            out.append(DryRunFix("fp32-modules", {"modules": modules}))
        elif fx.name == "rescale" and p.get("factor"):
            out.append(DryRunFix("input-scale", {"factor": float(p["factor"])}))
    return out


def _static_fixes(meas: Measurements, findings: list[Finding], c: CheckConfig) -> list[Any]:
    """Changes the fp32 probes' failing findings ask for, as :class:`~fpanalysis.nn.shadow.Fix`
    objects, so that the dry run verifies them too."""
    from ..nn.shadow import Fix
    from .findings import loss_scale_interval

    failing = {f.check for f in findings if f.status == "fail"}
    out = [fx for f in findings if f.status == "fail" for fx in _as_dry_run_fixes(f.fixes)]
    if "activation overflow" in failing:
        names = [a["name"] for a in meas.activations or [] if a["n_overflow"] > 0]
        if names:
            out.append(Fix("fp32-modules", {"modules": names}))
    if failing & {"optimizer epsilon", "second-moment underflow", "Adam step finite"}:
        from .findings import _smallest_safe_eps

        out.append(Fix("adam-eps", {"eps": _smallest_safe_eps(c.format)}))
        out.append(Fix("adam-eps", {"eps": 10 * _smallest_safe_eps(c.format)}))
        out.append(Fix("fp32-master-weights"))
    g = meas.weight_grads
    if "gradient underflow" in failing and g:
        lo, hi = loss_scale_interval(g["small_quantile"], g["max_abs"], c.format)
        if lo <= hi:
            out.append(Fix("loss-scale", {"mode": "static", "scale": lo}))
            out.append(Fix("fp32-master-weights"))
    return out


def _warm_start(initial: nn.Module, plan: Any, c: CheckConfig, X: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """The check's fp32 warm-up replayed from ``initial`` under the training recipe of ``plan``
    (its input scale, weight scale and Adam eps act in fp32 too), on the warm-up's batches.  The
    weights are returned in the unscaled parametrisation, since the dry run applies the plan's
    weight scale itself (power-of-two factors: exact)."""
    from ..nn.shadow import _scale_weights

    m = copy.deepcopy(initial).float().train()
    ws = dict(plan.weight_scale)
    _scale_weights(m, ws)
    opt = make_optimizer(m.parameters(), c.optimizer, c.lr, float(plan.optimizer.get("eps", c.eps)), c.momentum,
                         c.betas)
    s_in = float(plan.input_scale)
    for xb, yb in sample_batches(X, y, c.batch_size, c.warmup_steps, c.seed + 1):
        opt.zero_grad(set_to_none=True)
        xin = xb.float() * s_in if xb.is_floating_point() and s_in != 1.0 else xb
        default_loss(call_model(m, xin), yb).backward()
        opt.step()
    _scale_weights(m, {k: 1.0 / v for k, v in ws.items()})
    return m


def _dry_run_findings(work: nn.Module, X: torch.Tensor, y: torch.Tensor, c: CheckConfig, meas: Measurements,
                      findings: list[Finding], details: dict[str, Any], log: Callable[[str], None],
                      progress: Callable[[int, int], None],
                      warmed: nn.Module | None = None) -> tuple[list[Finding], list[str]]:
    """Run the shadow dry run from the measured model, verify the proposed fixes, and return the
    findings (the counted stagnation replaced by the weighed one) and the verified changes.

    With ``warmed`` (the model after the fp32 warm-up), a second segment of the dry run resumes
    from it ("late": smaller gradients, larger weights, grown ranges), the plateau state is read
    from fp32's losses of both segments (:func:`fpanalysis.nn.shadow.plateau_state`), and a fix
    counts as verified only when the shadow run matches fp32 in both segments; the late segment of
    a fix that changes fp32 training too (input or weight scale, Adam eps) starts from the warm-up
    replayed under that change (docs/theory.md §4.8)."""
    from ..nn.shadow import _OptSpec, _recipe, dry_run, judge_dry_run, plateau_state, propose_fixes, verify_fixes
    from .findings import dry_run_findings

    f = c.format
    n = c.dry_run_steps
    batches = sample_batches(X, y, c.batch_size, n, c.seed + 3)
    g = torch.Generator().manual_seed(c.seed + 4)
    idx = torch.randperm(X.shape[0], generator=g)[:DRY_RUN_EVAL]
    ev = (X[idx], y[idx])
    kw = {"optimizer": c.optimizer, "lr": c.lr, "eps": c.eps, "momentum": c.momentum, "betas": c.betas}
    n_seg = 2 if warmed is not None else 1

    log(f"dry run: {n} steps in {f.name} (op-by-op rounding, {f.name} storage) beside fp32 ...")
    base = dry_run(work, batches, ev, fmt=f, profile=c.profile, seed=c.seed,
                   progress=lambda d, t: progress(d, n_seg * t), **kw)
    late = None
    late_where = f"from the fp32 model after {c.warmup_steps} warm-up steps"
    if warmed is not None:
        late_batches = sample_batches(X, y, c.batch_size, n, c.seed + 5)
        log(f"dry run (late): {n} steps {late_where} ...")
        late = dry_run(warmed, late_batches, ev, fmt=f, profile=c.profile, seed=c.seed, segment="late",
                       progress=lambda d, t: progress(t + d, 2 * t), **kw)
        pl = plateau_state(base.measurements["losses"]["fp32"], late.measurements["losses"]["fp32"],
                           c.warmup_steps + 2 * n)
        for r in (base, late):  # judged again, knowing whether fp32 has started to learn
            r.measurements["plateau"] = pl
            r.problems = judge_dry_run(r.measurements, f.name)
    fails = [p for r in (base, late) if r is not None for p in r.problems if p["status"] == "fail"]
    log(f"dry run: {base.seconds + (late.seconds if late else 0):.1f} s ({1000 * base.seconds_per_step:.0f} ms per "
        f"{f.name} step); " + ("matches fp32" if not fails else "problems: " + ", ".join(p["check"] for p in fails)))
    candidates = []
    static_fail = any(x.status == "fail" for x in findings)
    if fails or static_fail:
        proposed = propose_fixes(base, work, batches, optimizer=c.optimizer, eps=c.eps)
        if late is not None:
            proposed += propose_fixes(late, warmed, late_batches, optimizer=c.optimizer, eps=c.eps)
        for fx in proposed + _static_fixes(meas, findings, c):
            if all(fx != o for o in candidates):
                candidates.append(fx)
    candidates = candidates[:DRY_RUN_MAX_FIXES]
    results = []
    late_results: dict[int, Any] = {}
    if candidates:
        def one(desc: str) -> None:
            log(f"dry run: verifying {desc} ...")
        results = verify_fixes(work, batches, ev, base, candidates, progress=one, **kw)
        starts: dict[tuple, nn.Module] = {}
        spec = _OptSpec(c.optimizer, c.lr, c.eps, c.momentum, tuple(c.betas), 0.0)
        for i, r in enumerate(results):
            if late is None or not r.verified:
                continue
            key = _recipe(r.plan, spec)
            if key not in starts:  # the warm-up under the fix's own recipe (the original one: the warmed model)
                starts[key] = warmed if key == _recipe(None, spec) else _warm_start(work, r.plan, c, X, y)
            lr_ = dry_run(starts[key], late_batches, ev, fmt=f, profile=c.profile, plan=r.plan, seed=c.seed,
                          reference=late.reference, plateau=late.measurements.get("plateau"), segment="late", **kw)
            late_results[i] = lr_
            if not lr_.matches_fp32:
                r.verified = False
                r.problems = r.problems + [dict(p, check=f"{p['check']} (late)") for p in lr_.problems]
        for r in results:
            left = [p["check"] for p in r.problems if p["status"] == "fail"]
            log(f"dry run: {r.describe()}: " + ("verified (matches fp32" + (" in both segments)" if late else ")")
                                               if r.verified else "not verified (" + ", ".join(left) + ")"))
    good = [r for r in results if r.verified]
    verified = [good[0].describe()] if good else []
    details["dry_run"] = base.to_dict()
    if late is not None:
        details["dry_run_late"] = late.to_dict()
    details["fixes"] = [dict(r.to_dict(), late=late_results[i].to_dict() if i in late_results else None)
                        for i, r in enumerate(results)]
    details["plan"] = good[0].plan.to_dict() if good else None
    details["also_verified"] = [r.describe() for r in good[1:]]
    kept = [x for x in findings if x.check != "update stagnation (count)" or x.status == "ok"]
    counted = [x for x in findings if x.check == "update stagnation (count)" and x.status != "ok"]
    for x in counted:  # the count stays, as information next to the weighed measure
        kept.append(Finding(x.check, "ok", x.measured, x.threshold, "info", x.message, layer=x.layer))
    out = kept + dry_run_findings(base.to_dict(), f, verified)
    if late is not None:
        out += dry_run_findings(late.to_dict(), f, verified, segment="late", where=late_where)
    return out, verified

"""The torch side of ``fpanalysis check``: validate the inputs, run the probes, assemble findings."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

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
from .probe import make_optimizer, probe_model

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


def as_tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` as float32 / int64 tensors, with clear errors for anything else."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError("data must be a pair (X, y): inputs and integer class labels")
    X, y = data
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if X.shape[0] == 0:
        raise ValueError("the data is empty: need at least one sample")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]} labels")
    if not X.is_floating_point():
        X = X.to(torch.float32)
    if y.is_floating_point():
        if not torch.all(y == torch.round(y)):
            raise ValueError("labels y must be integer class indices")
        y = y.to(torch.int64)
    if not torch.isfinite(X).all():
        raise ValueError("the inputs X contain NaN or inf values")
    return X.to(torch.float32), y.to(torch.int64)


def _batches(X: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = torch.randperm(X.shape[0], generator=g)[: min(batch_size, X.shape[0])]
        out.append((X[idx], y[idx]))
    return out


def _check_forward_shape(model: nn.Module, X: torch.Tensor) -> int:
    try:
        with torch.no_grad():
            out = model.eval()(X[:2])
    except Exception as exc:  # the user's model rejected the data: say so plainly
        raise ValueError(
            f"the model cannot run on inputs of shape {tuple(X.shape[1:])} (per sample): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ValueError("the model must return a (batch, classes) tensor of logits")
    return int(out.shape[1])


def run_check(
    model: nn.Module,
    data: Any,
    config: CheckConfig | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    **options: Any,
) -> CheckReport:
    """Measure ``model`` on ``data`` in fp32 and judge it for pure low-precision training.

    ``config`` holds every option (:class:`~fpanalysis.check.config.CheckConfig`); keyword
    ``options`` with its field names build one (or override the given one's fields).
    ``progress(done, total, phase)`` follows the run.
    """
    c = CheckConfig(**options) if config is None else (replace(config, **options) if options else config)
    f = c.format
    model = validate_model(model)
    X, y = as_tensors(data)
    n_classes = _check_forward_shape(model, X)
    if int(y.max()) >= n_classes or int(y.min()) < 0:
        raise ValueError(f"labels range over [{int(y.min())}, {int(y.max())}] but the model has {n_classes} outputs")
    optimizer, lr, eps, momentum, betas = c.optimizer, c.lr, c.eps, c.momentum, c.betas
    batch_size, steps, warmup_steps, certify, seed = c.batch_size, c.steps, c.warmup_steps, c.certify, c.seed
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    work = copy.deepcopy(model).float()

    def report(done: int, total: int, what: str) -> None:
        if progress is not None:
            progress(done, total, what)

    cert_batches = -(-min(c.certify_samples, int(X.shape[0])) // CERTIFY_BATCH) if certify else 0
    total_steps = steps + (warmup_steps if certify else 0) + cert_batches
    diverged_at = None  # (fp32 step, its loss) where training diverged (_diverged)
    first_loss = None
    # warm-up in fp32 so that margins (and gradients) mean something
    if certify and warmup_steps > 0:
        opt = make_optimizer(work.parameters(), c.optimizer, c.lr, c.eps, c.momentum, c.betas)
        work.train()
        for i, (xb, yb) in enumerate(_batches(X, y, batch_size, warmup_steps, seed + 1)):
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(work(xb), yb)
            value = loss.item()
            first_loss = value if first_loss is None else first_loss
            if _diverged(value, first_loss):
                diverged_at = (i + 1, value)
                break
            loss.backward()
            opt.step()
            report(i + 1, total_steps, "fp32 warm-up")
    if diverged_at is not None:
        return _diverged_report(model, X, c, *diverged_at, [], t0)
    probe = probe_model(
        work, _batches(X, y, batch_size, steps, seed + 2), f, optimizer=optimizer, lr=lr, eps=eps,
        momentum=momentum, betas=betas,
        progress=lambda d, t: report((warmup_steps if certify else 0) + d, total_steps, "measuring"),
    )
    if diverged_at is None:
        first_loss = probe.losses[0] if first_loss is None and probe.losses else first_loss
        bad = [k for k, v in enumerate(probe.losses) if _diverged(v, first_loss)]
        if bad:
            diverged_at = ((warmup_steps if certify else 0) + bad[0] + 1, probe.losses[bad[0]])
    if diverged_at is not None:
        return _diverged_report(model, X, c, *diverged_at, probe.losses, t0)
    meas = Measurements(profile=c.profile)
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
    }
    findings = findings_from_measurements(meas, f)
    if certify:
        base = total_steps - cert_batches
        findings += _agreement_findings(work, X, c, meas, details,
                                        progress=lambda d, t, what: report(base + d, total_steps, what))
    verdict, changes = decide_verdict(findings)
    config = {
        "model": c.model_name or type(model).__name__, "format": f.name, "optimizer": optimizer, "lr": lr,
        "eps": eps, "momentum": momentum, "batch_size": batch_size, "steps": steps,
        "warmup_steps": warmup_steps if certify else 0, "samples": int(X.shape[0]), "profile": c.profile,
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
        "warmup_steps": c.warmup_steps if c.certify else 0, "samples": int(X.shape[0]), "profile": c.profile,
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

    try:
        rep = analyze(model.eval(), X[:c.certify_samples], fmt=c.format, profile=c.profile, progress=progress,
                      batch_size=CERTIFY_BATCH, real_half=False, local=False, keep_per_input=False, name="check")
    except ValueError as exc:
        return [Finding("inference agreement", "skipped", math.nan, math.nan, "n/a", f"not examined: {exc}")]
    summ = rep.tolerance["logits"]
    emu = summ.runs.get("emulator")
    observed = emu.agreement if emu is not None else math.nan
    meas.agreement = {"certified": summ.certified_fraction, "certified_prob": summ.certified_prob_fraction,
                      "probability": summ.probability, "observed": observed, "n": summ.n}
    details["agreement"] = summ.to_dict()
    details["analysis_layers"] = rep.to_dict().get("layers", [])
    return agreement_findings(meas.agreement, c.format)

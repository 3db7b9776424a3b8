"""Validation zoo: `fpanalysis check` against real pure-fp16 training on models it never saw.

Each case is a model of experiments/zoo_models.py (written outside the toolkit: torchvision-style
ResNet, Transformer encoder, GRU/LSTM, embeddings, hand-written attention, normalisation, scaling
and softmax in ``forward``, BatchNorm with extreme input scales), a data set, an optimizer and an
input scale, chosen to cover every failure mechanism of docs/theory.md §4 and healthy controls.
Nothing here is tuned to the check: the ground truth is real training.

Three stages, each cached in its own JSON file so that a changed check reuses the ground truth:

    python -m experiments.check_zoo truth      # real fp32 and pure-fp16 training, 3 seeds per case
    python -m experiments.check_zoo verdicts   # fpanalysis check on every case (seed 0)
    python -m experiments.check_zoo fixes      # pure fp16 with each SAFE WITH CHANGES plan applied
    python -m experiments.check_zoo report     # confusion matrix, false SAFE, fix success rate
    python -m experiments.check_zoo all --smoke   # two cases, one seed, a few steps (seconds)

Pure fp16 means what the seed paper trains: parameters, buffers, activations, gradients and
optimizer state in torch.float16 (``model.half()``), CPU kernels, no loss scaling, no fp32
master weights.  Outcome "fails": most seeds diverge (a non-finite loss or parameter), or the
mean eval-mode test accuracy over the seeds is more than ``gap_points`` below fp32's from the
same initialisations and batch orders.  A verdict of SAFE predicts "trains"; SAFE WITH
CHANGES and UNSAFE predict "fails" without their changes.  A case where fp32 itself does not
learn (eval accuracy below ``min_fp32_acc``) is reported and left out of the score.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from experiments._common import (
    RESULTS,
    environment,
    parse_overrides,
    read_stage,
    relative_to_repo,
    write_json,
)

OUT = RESULTS / "check_zoo"


@dataclass
class Config:
    seeds: int = 3
    epochs: int = 8
    batch_size: int = 64
    gap_points: float = 3.0
    min_fp32_acc: float = 0.5
    threads: int = 1
    only: str = ""  # comma-separated case names
    out_dir: str = str(OUT)


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    data: str
    optimizer: str = "sgd"
    lr: float = 0.05
    eps: float = 1e-8
    momentum: float = 0.9
    scale: float = 1.0
    model_kw: tuple[tuple[str, Any], ...] = ()
    why: str = ""
    epochs: int = 0  # 0: the configuration's


def _c(name: str, model: str, data: str, why: str, **kw: Any) -> Case:
    mk = tuple(sorted(kw.pop("model_kw", {}).items()))
    return Case(name, model, data, model_kw=mk, why=why, **kw)


ADAM8 = dict(optimizer="adam", lr=1e-3, eps=1e-8)
ADAM4 = dict(optimizer="adam", lr=1e-3, eps=1e-4)
CASES: list[Case] = [
    # healthy controls
    _c("mlp-sgd", "mlp", "digits", "healthy MLP"),
    _c("mlp-adam-eps1e-4", "mlp", "digits", "Adam with an fp16-safe epsilon", **ADAM4),
    _c("deep-mlp-sgd", "mlp", "digits", "6-layer MLP", model_kw={"depth": 6}, lr=0.05, epochs=16),
    _c("cnn-sgd", "cnn", "digits-img", "healthy CNN"),
    _c("cnn-bn-sgd", "cnn-bn", "digits-img", "CNN with BatchNorm at unit scale"),
    _c("linear-bn-sgd", "linear-bn", "digits", "Linear -> BatchNorm1d"),
    _c("tv-resnet-sgd", "tv-resnet", "digits-img", "torchvision-style ResNet (in-place ReLU, +=)"),
    _c("tv-resnet-adam-eps1e-4", "tv-resnet", "digits-img", "ResNet with fp16-safe Adam", **ADAM4),
    _c("gru-sgd", "gru", "digits-seq", "GRU over the rows of a digit", lr=0.1),
    _c("lstm-sgd", "lstm", "digits-seq", "LSTM over the rows of a digit", lr=0.2),
    _c("transformer-sgd", "transformer", "tokens", "Transformer encoder on tokens", lr=0.05),
    _c("hand-attention-sgd", "hand-attention", "tokens", "hand-written attention, unit temperature", lr=0.1),
    _c("embedding-bag-sgd", "embedding-bag", "tokens", "EmbeddingBag text classifier", lr=0.5),
    _c("embedding-bag-adam-eps1e-4", "embedding-bag", "tokens", "embeddings with fp16-safe Adam", **ADAM4),
    _c("scaled-mlp-x8", "scaled-mlp", "digits", "a hand-written factor of 8 between layers",
       model_kw={"factor": 8.0}),
    _c("hand-norm-mlp", "hand-norm-mlp", "digits", "hand-written RMS normalisation at unit scale"),
    _c("hand-softmax-mlp", "hand-softmax-mlp", "digits",
       "hand-written softmax: exp underflows to 0 in fp16 and log(0) = -inf"),
    _c("gru-adam-eps1e-4", "gru", "digits-seq", "GRU with fp16-safe Adam", **ADAM4),
    _c("lstm-adam-eps1e-4", "lstm", "digits-seq", "LSTM with fp16-safe Adam", **ADAM4),
    _c("transformer-adam-eps1e-4", "transformer", "tokens", "Transformer with fp16-safe Adam", **ADAM4),
    _c("cnn-bn-adam-eps1e-4", "cnn-bn", "digits-img", "BatchNorm CNN with fp16-safe Adam", **ADAM4),
    _c("mlp-input-x30", "mlp", "digits", "inputs scaled by 30 (activations ~1e2, far below 65504)",
       scale=30.0, lr=0.002),
    _c("cnn-bn-input-x30", "cnn-bn", "digits-img", "BatchNorm absorbs an input scale of 30", scale=30.0),
    _c("mlp-sgd-lr1e-2", "mlp", "digits", "a smaller learning rate that still trains", lr=0.01),
    # Adam's epsilon rounds to zero in fp16
    _c("mlp-adam-eps1e-8", "mlp", "digits", "Adam eps 1e-8 rounds to 0 in fp16", **ADAM8),
    _c("cnn-adam-eps1e-8", "cnn", "digits-img", "Adam eps 1e-8, CNN", **ADAM8),
    _c("tv-resnet-adam-eps1e-8", "tv-resnet", "digits-img", "Adam eps 1e-8, ResNet", **ADAM8),
    _c("gru-adam-eps1e-8", "gru", "digits-seq", "Adam eps 1e-8, GRU", **ADAM8),
    _c("transformer-adam-eps1e-8", "transformer", "tokens", "Adam eps 1e-8, Transformer", **ADAM8),
    _c("embedding-bag-adam-eps1e-8", "embedding-bag", "tokens", "Adam eps 1e-8, embeddings", **ADAM8),
    # overflow of activations, in modules and between them
    _c("mlp-input-x50000", "mlp", "digits", "unnormalised inputs: first-layer outputs exceed 65504 (Adam)",
       scale=50000.0, **ADAM4),
    _c("cnn-input-x50000", "cnn", "digits-img", "unnormalised image: conv outputs exceed 65504 (Adam)",
       scale=50000.0, **ADAM4),
    _c("scaled-mlp-x1e5", "scaled-mlp", "digits", "a hand-written factor of 1e5 between layers",
       model_kw={"factor": 1e5}),
    _c("hand-attention-hot", "hand-attention", "tokens",
       "attention logits q k^T reach ~1e5 (temperature 3e3), a residual path keeps fp32 learning",
       model_kw={"logit_scale": 3000.0}, lr=0.05),
    _c("hand-norm-mlp-gain1000", "hand-norm-mlp", "digits", "mean of squares in a hand-written norm overflows",
       model_kw={"gain": 1000.0}),
    _c("hand-softmax-mlp-hot", "hand-softmax-mlp", "digits", "exp of logits > 11 overflows in a hand-written softmax",
       model_kw={"temperature": 20.0}, lr=0.01),
    # BatchNorm buffers
    _c("cnn-bn-input-x3000", "cnn-bn", "digits-img", "BatchNorm channel variance ~1e6: running_var overflows",
       scale=3000.0),
    _c("linear-bn-input-x3000", "linear-bn", "digits", "BatchNorm1d running_var overflows", scale=3000.0),
    _c("linear-bn-adam-eps1e-8", "linear-bn", "digits", "Adam eps 1e-8 with BatchNorm1d", **ADAM8),
    _c("cnn-bn-input-x1e-2", "cnn-bn", "digits-img", "small inputs that BatchNorm normalises", scale=1e-2),
    _c("linear-bn-input-x1e-4", "linear-bn", "digits", "tiny inputs: BatchNorm1d running_var stalls",
       scale=1e-4),
    # update stagnation and gradient underflow
    _c("mlp-sgd-lr3e-3-long", "mlp", "digits", "updates near half an fp16 ulp of the weights, long training",
       lr=3e-3, momentum=0.0, epochs=60),
    _c("scaled-mlp-x8-lr1e-3", "scaled-mlp", "digits", "small updates behind a hand-written gain",
       model_kw={"factor": 8.0}, lr=1e-3, momentum=0.0, epochs=60),
    _c("lstm-adam-eps1e-8", "lstm", "digits-seq", "Adam eps 1e-8, LSTM", **ADAM8),
    _c("hand-attention-adam-eps1e-4", "hand-attention", "tokens", "hand-written attention with fp16-safe Adam",
       **ADAM4),
]


# --- training ------------------------------------------------------------------------------------


def build(case: Case, data: Any, seed: int) -> Any:
    import torch

    from experiments.zoo_models import MODELS

    torch.manual_seed(seed)
    kw = dict(case.model_kw)
    if case.data == "tokens":
        kw.setdefault("classes", data.num_classes)
    return MODELS[case.model](**kw)


def _optimizer(case: Case, params: Any) -> Any:
    import torch

    if case.optimizer == "sgd":
        return torch.optim.SGD(params, lr=case.lr, momentum=case.momentum)
    return torch.optim.Adam(params, lr=case.lr, eps=case.eps)


def _accuracy(model: Any, x: Any, y: Any, train_mode: bool) -> float:
    import torch

    model.train(train_mode)
    with torch.no_grad():
        out = model(x)
    if not torch.isfinite(out).all():
        return float("nan") if not train_mode else float((out.argmax(1) == y).float().mean())
    return float((out.float().argmax(1) == y).float().mean())


def train(case: Case, data: Any, mode: str, seed: int, cfg: Config, plan: dict | None = None) -> dict:
    """One real training run; ``mode`` "fp32" or "fp16" (pure: model.half()); ``plan``: a
    precision plan from the check, applied to the fp16 model."""
    import torch
    import torch.nn.functional as F

    model = build(case, data, seed)
    dtype = torch.float16 if mode == "fp16" else torch.float32
    trainer = None
    if plan is not None:  # the check's verified plan, applied as a user would (fp32 inputs: the plan casts)
        from fpanalysis.nn.shadow import apply_precision_plan

        opt = _optimizer(case, model.parameters())
        trainer = apply_precision_plan(model, opt, plan, seed=seed)
        dtype = torch.float32
    else:
        model = model.to(dtype)
        opt = _optimizer(case, model.parameters())

    def cast(x: np.ndarray) -> Any:
        t = torch.from_numpy(x)
        return t.to(dtype) if t.is_floating_point() else t

    xtr, ytr = cast(data.x_train), torch.from_numpy(data.y_train)
    xte, yte = cast(data.x_test), torch.from_numpy(data.y_test)
    g = torch.Generator().manual_seed(1000 + seed)
    n = xtr.shape[0]
    step, losses, status, diverged_at = 0, [], "ok", None
    for _ in range(case.epochs or cfg.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - cfg.batch_size + 1, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            model.train()
            if trainer is not None:
                trainer.zero_grad()
                with trainer.context():
                    loss = F.cross_entropy(model(xtr[idx]).float(), ytr[idx])
                if not torch.isfinite(loss):
                    status, diverged_at = "diverged", step
                    break
                trainer.backward(loss)
                trainer.step()
            else:
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                if not torch.isfinite(loss):
                    status, diverged_at = "diverged", step
                    break
                loss.backward()
                opt.step()
            if not all(torch.isfinite(p).all() for p in model.parameters()):
                status, diverged_at = "diverged", step
                break
            losses.append(loss.item())
            step += 1
        if status != "ok":
            break
    import contextlib

    ctx = trainer.context if trainer is not None else contextlib.nullcontext
    with ctx():
        eval_acc = _accuracy(model, xte, yte, False) if status == "ok" else float("nan")
    buffers_finite = all(bool(torch.isfinite(b).all()) for b in model.buffers() if b.is_floating_point())
    with ctx():
        train_acc = _accuracy(model, xte, yte, True) if status == "ok" else float("nan")
    return {"mode": mode, "seed": seed, "status": status, "diverged_at": diverged_at, "steps": step,
            "eval_acc": eval_acc, "train_mode_acc": train_acc, "buffers_finite": buffers_finite,
            "final_loss": losses[-1] if losses else float("nan"), "planned": plan is not None}


def outcome(runs16: list[dict], runs32: list[dict], cfg: Config) -> tuple[str, str]:
    div = sum(r["status"] == "diverged" for r in runs16)
    if 2 * div > len(runs16):
        return "fails", f"pure fp16 diverged in {div} of {len(runs16)} seeds"
    gaps = [100 * (b["eval_acc"] - a["eval_acc"]) if a["status"] == "ok" else 100 * b["eval_acc"]
            for a, b in zip(runs16, runs32, strict=True)]
    gaps = [100.0 if not math.isfinite(x) else x for x in gaps]
    gap = float(np.mean(gaps))
    if gap > cfg.gap_points:
        return "fails", f"pure fp16 {gap:.1f} points below fp32 (eval mode, mean of {len(gaps)} seeds)"
    return "trains", f"pure fp16 within {max(gap, 0):.1f} points of fp32 (eval mode)"


# --- stages ----------------------------------------------------------------------------------


def _cases(cfg: Config, smoke: bool) -> list[Case]:
    cases = CASES
    if cfg.only:
        names = {s.strip() for s in cfg.only.split(",") if s.strip()}
        unknown = names - {c.name for c in CASES}
        if unknown:
            raise SystemExit(f"unknown cases {sorted(unknown)}; cases: {', '.join(c.name for c in CASES)}")
        cases = [c for c in CASES if c.name in names]
    if smoke:
        cases = [c for c in cases if c.name in ("mlp-sgd", "mlp-adam-eps1e-8")]
    return cases


def stage_truth(cfg: Config, smoke: bool) -> dict:
    from experiments.zoo_models import load_data

    path = Path(cfg.out_dir) / "truth.json"
    store = read_stage(path)
    rows = store.setdefault("cases", {})
    stale = set(rows) - {c.name for c in CASES}  # cases renamed or removed since
    for name in stale:
        del rows[name]
    if stale:
        write_json(path, store)
    for case in _cases(cfg, smoke):
        key = f"{asdict(case)}|{cfg.seeds}|{cfg.epochs}"
        if rows.get(case.name, {}).get("key") == key:
            continue
        data = load_data(case.data, case.scale)
        t0 = time.time()
        runs = {m: [train(case, data, m, s, cfg) for s in range(cfg.seeds)] for m in ("fp32", "fp16")}
        out, cause = outcome(runs["fp16"], runs["fp32"], cfg)
        fp32_acc = float(np.nanmean([r["eval_acc"] for r in runs["fp32"]]))
        valid = fp32_acc >= cfg.min_fp32_acc
        rows[case.name] = {"key": key, "case": asdict(case), "outcome": out, "cause": cause, "valid": valid,
                           "fp32_eval_acc": fp32_acc, "runs": runs, "seconds": round(time.time() - t0, 1)}
        print(f"{case.name:28s} {out:6s} {cause}{'' if valid else '  [fp32 does not learn: left out]'}"
              f" ({time.time() - t0:.0f} s)", flush=True)
        store.update(config={**asdict(cfg), "out_dir": relative_to_repo(cfg.out_dir)}, environment=environment())
        write_json(path, store)
    return store


def stage_verdicts(cfg: Config, smoke: bool) -> dict:
    from experiments.zoo_models import load_data
    from fpanalysis.check import check

    path = Path(cfg.out_dir) / "verdicts.json"
    store = read_stage(path)
    rows = store.setdefault("cases", {})
    for case in _cases(cfg, smoke):
        data = load_data(case.data, case.scale)
        model = build(case, data, 0)
        t0 = time.time()
        try:
            kw = {"warmup_steps": 20, "steps": 2} if smoke else {}
            rep = check(model, (data.x_train, data.y_train), fmt="fp16", optimizer=case.optimizer, lr=case.lr,
                        eps=case.eps, momentum=case.momentum, batch_size=cfg.batch_size, seed=0,
                        model_name=case.name, **kw)
            row = {"verdict": rep.verdict, "changes": rep.changes,
                   "findings": [{"check": f.check, "status": f.status, "message": f.message} for f in rep.findings
                                if f.status != "ok"],
                   "plan": rep.details.get("plan")}
        except Exception as exc:  # a crash is a wrong verdict, recorded with its message
            row = {"verdict": "ERROR", "error": f"{type(exc).__name__}: {exc}"[:500], "changes": [], "findings": []}
        row["seconds"] = round(time.time() - t0, 1)
        rows[case.name] = row
        print(f"{case.name:28s} {row['verdict']:18s} ({row['seconds']:.0f} s)"
              + (f"  {row.get('error', '')[:120]}" if row["verdict"] == "ERROR" else ""), flush=True)
        store.update(environment=environment())
        write_json(path, store)
    return store


def stage_fixes(cfg: Config, smoke: bool) -> dict:
    """Pure fp16 with the plan of every SAFE WITH CHANGES verdict applied, 3 seeds: does it train?"""
    from experiments.zoo_models import load_data

    truth = read_stage(Path(cfg.out_dir) / "truth.json").get("cases", {})
    verdicts = read_stage(Path(cfg.out_dir) / "verdicts.json").get("cases", {})
    path = Path(cfg.out_dir) / "fixes.json"
    store = read_stage(path)
    rows = store.setdefault("cases", {})
    for case in _cases(cfg, smoke):
        v = verdicts.get(case.name, {})
        if v.get("verdict") != "SAFE WITH CHANGES" or not v.get("plan") or case.name not in truth:
            continue
        if _same_plan(rows.get(case.name), v):  # this plan was trained already
            continue
        data = load_data(case.data, case.scale)
        runs16 = [train(case, data, "fp16", s, cfg, plan=v["plan"]) for s in range(cfg.seeds)]
        out, cause = outcome(runs16, truth[case.name]["runs"]["fp32"], cfg)
        rows[case.name] = {"outcome_with_plan": out, "cause": cause, "runs": runs16, "changes": v["changes"],
                           "plan": v["plan"]}
        print(f"{case.name:28s} with its plan: {out} ({cause})", flush=True)
        write_json(path, store)
    return store


def _same_plan(fix_row: dict | None, verdict_row: dict) -> bool:
    """Was ``fix_row`` trained with the plan of ``verdict_row`` (rows written before plans were
    stored compare the changes, whose descriptions carry every parameter)?"""
    if not fix_row or verdict_row.get("verdict") != "SAFE WITH CHANGES":
        return False
    if "plan" in fix_row:
        return fix_row["plan"] == verdict_row.get("plan")
    return fix_row.get("changes") == verdict_row.get("changes")


def stage_report(cfg: Config) -> dict:
    d = Path(cfg.out_dir)
    truth = read_stage(d / "truth.json").get("cases", {})
    verdicts = read_stage(d / "verdicts.json").get("cases", {})
    fixes = read_stage(d / "fixes.json").get("cases", {})
    rows, skipped = [], []
    for name, t in truth.items():
        if name not in verdicts:
            continue
        if not t["valid"]:
            skipped.append(name)
            continue
        v = verdicts[name]["verdict"]
        predicted = "trains" if v == "SAFE" else "fails"
        rows.append({"case": name, "why": t["case"]["why"], "verdict": v, "predicted": predicted,
                     "outcome": t["outcome"], "cause": t["cause"], "hit": predicted == t["outcome"] and v != "ERROR",
                     "fix": fixes[name]["outcome_with_plan"] if _same_plan(fixes.get(name), verdicts[name]) else None})
    conf = {f"{v} / {o}": sum(1 for r in rows if r["verdict"] == v and r["outcome"] == o)
            for v in ("SAFE", "SAFE WITH CHANGES", "UNSAFE", "ERROR") for o in ("trains", "fails")}
    false_safe = [r["case"] for r in rows if r["verdict"] == "SAFE" and r["outcome"] == "fails"]
    fixed = [r for r in rows if r["fix"] is not None]
    report = {
        "experiment": "check_zoo", "n": len(rows), "right": sum(r["hit"] for r in rows),
        "accuracy": sum(r["hit"] for r in rows) / max(len(rows), 1), "confusion": conf,
        "false_safe": false_safe, "fix_success": sum(r["fix"] == "trains" for r in fixed),
        "fixes_tried": len(fixed), "left_out_fp32_does_not_learn": skipped, "rows": rows,
        "environment": environment(),
    }
    write_json(d / "report.json", report)
    print(f"{report['right']}/{report['n']} verdicts right ({100 * report['accuracy']:.0f}%), "
          f"false SAFE: {len(false_safe)} {false_safe}; fixes that trained: "
          f"{report['fix_success']}/{report['fixes_tried']}")
    for k, n in conf.items():
        print(f"  {k:28s} {n}")
    for r in rows:
        if not r["hit"]:
            print(f"  miss: {r['case']}: {r['verdict']} but fp16 {r['outcome']} ({r['cause']})")
    return report


def main(argv: list[str]) -> None:
    stages = [a for a in argv if not a.startswith("--")]
    smoke = "--smoke" in argv
    cfg = parse_overrides(Config(), [a for a in argv if a.startswith("--") and a != "--smoke"])
    if smoke:
        cfg = replace(cfg, seeds=1, epochs=1, out_dir=str(RESULTS / "_scratch" / "check_zoo_smoke"))
    import torch

    torch.set_num_threads(max(1, cfg.threads))
    valid = ("truth", "verdicts", "fixes", "report", "all")
    if not stages or any(s not in valid for s in stages):
        raise SystemExit(f"name a stage: {', '.join(valid)}")
    for s in ("truth", "verdicts", "fixes", "report"):
        if s in stages or "all" in stages:
            {"truth": lambda: stage_truth(cfg, smoke), "verdicts": lambda: stage_verdicts(cfg, smoke),
             "fixes": lambda: stage_fixes(cfg, smoke), "report": lambda: stage_report(cfg)}[s]()


if __name__ == "__main__":
    main(sys.argv[1:])

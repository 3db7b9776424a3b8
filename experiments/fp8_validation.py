"""Validation of the FP8 / MX pre-flight check: its verdicts against emulated FP8 training.

Each case is a model (the toolkit's own, fpanalysis.nn.models, and models written outside it,
experiments/zoo_models.py), a data set and an optimizer; each is trained once per seed as the
baseline and once per seed and recipe with every ``nn.Linear`` / ``nn.Conv2d`` computing on
FP8 / MX / NVFP4 operands (``fpanalysis.nn.fp8.fp8_training``: forward activations and weights
in E4M3, backward output gradients in E5M2, quantised-dequantised per recipe), from the same
initialisation and batch order.  The check's verdict for the same case and recipe is the
prediction.  Nothing here is tuned to the check: the ground truth is the emulated training.

    python -m experiments.fp8_validation truth      # baseline and FP8 training, 2 seeds per case
    python -m experiments.fp8_validation verdicts   # the FP8 check per case and recipe (seed 0)
    python -m experiments.fp8_validation fixes      # training with each SAFE WITH CHANGES plan applied
    python -m experiments.fp8_validation report     # confusion matrix, false SAFE, gaps, fixes
    python -m experiments.fp8_validation all --smoke   # two cases, one seed, one epoch (seconds)
    python -m experiments.fp8_validation truth --only=mlp-digits --recipes=current

Each stage is cached in its own JSON file under experiments/results/fp8_validation/ (a changed
check reuses the ground truth; a case whose definition changed is trained again).

Baseline: bf16 mixed precision as FP8 recipes are compared in practice, ``torch.autocast("cpu",
torch.bfloat16)`` around the forward pass, fp32 parameters and optimizer state (pure bf16,
``model.to(torch.bfloat16)``, would add bf16 weight updates, which the FP8 runs, with fp32
parameters, do not have).  Outcome of a case and recipe "fails": most seeds diverge (a
non-finite loss or parameter), or the mean eval-mode test accuracy over the seeds is more
than ``gap_points`` below the baseline's from the same initialisations and batch orders.  The
check's SAFE predicts "trains"; SAFE WITH CHANGES and UNSAFE predict "fails" as run (without
their changes).  A case whose baseline does not learn (accuracy below ``min_base_acc``) is
reported and left out of the score.
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

OUT = RESULTS / "fp8_validation"
RECIPES = ("delayed", "current", "mxfp8", "nvfp4")
VERDICTS = ("SAFE", "SAFE WITH CHANGES", "UNSAFE", "ERROR")
OUTCOMES = ("trains", "fails")


@dataclass
class Config:
    seeds: int = 2
    epochs: int = 5
    batch_size: int = 64
    gap_points: float = 3.0
    min_base_acc: float = 0.5
    threads: int = 1
    recipes: tuple = RECIPES
    only: str = ""  # comma-separated case names
    out_dir: str = str(OUT)


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # "tk:<name>" (fpanalysis.nn.models) or a name of experiments.zoo_models.MODELS
    data: str  # experiments.zoo_models.load_data name
    why: str = ""
    optimizer: str = "sgd"
    lr: float = 0.05
    eps: float = 1e-8
    momentum: float = 0.9
    scale: float = 1.0  # every float input multiplied by this
    weight_outlier: float = 0.0  # nonzero: weight[0, 0] of the first nn.Linear (input 0 is always 0 here)
    model_kw: tuple[tuple[str, Any], ...] = ()
    epochs: int = 0  # 0: the configuration's
    history_len: int = 16  # delayed scaling's amax history
    margin: int = 0

    @property
    def toolkit(self) -> bool:
        return self.model.startswith("tk:")


def _c(name: str, model: str, data: str, why: str, **kw: Any) -> Case:
    mk = tuple(sorted(kw.pop("model_kw", {}).items()))
    return Case(name, model, data, why, model_kw=mk, **kw)


ADAM = dict(optimizer="adam", lr=1e-3, eps=1e-8)
CASES: list[Case] = [
    # the toolkit's models
    _c("tk-mlp-digits", "tk:mlp", "digits", "toolkit MLP (64-64-64-10)", model_kw={"width": 64}, lr=0.1),
    _c("tk-lenet5-digits", "tk:lenet5", "digits-img", "toolkit LeNet-5 on 8x8 digits", optimizer="adam", lr=5e-3),
    # models from outside the toolkit
    _c("tv-resnet", "tv-resnet", "digits-img", "torchvision-style ResNet (BasicBlocks, BatchNorm), width 8",
       model_kw={"width": 8}, epochs=3, **ADAM),
    _c("hand-attention", "hand-attention", "tokens", "hand-written attention: q, k, v, fc are nn.Linear", lr=0.1,
       epochs=3),
    _c("transformer", "transformer", "tokens",
       "nn.TransformerEncoderLayer (its feed-forward Linear layers; attention projections are functional)",
       optimizer="adam", lr=2e-3, epochs=3),
    _c("embedding-bag", "embedding-bag", "tokens", "EmbeddingBag text classifier with a Linear head", lr=0.5),
    # cases built to stress FP8 scaling (and controls that FP8 scaling absorbs)
    _c("mlp-weight-outlier-2e17", "mlp", "digits",
       "one first-layer weight of 2^17 on an input pixel that is always 0 (no effect, no gradient in any "
       "precision): a per-tensor scale leaves the other weights ~2^-20 of the amax, below E4M3's range; "
       "a 32-element block holds the outlier and 31 weights", weight_outlier=2.0**17),
    _c("mlp-weight-outlier-2e14", "mlp", "digits",
       "one first-layer weight of 2^14 on an always-0 pixel: per tensor, the other weights land on E4M3's "
       "smallest subnormals (~1 bit left)", weight_outlier=2.0**14),
    _c("tk-mlp-weight-outlier-2e10", "tk:mlp", "digits",
       "one first-layer weight of 2^10 on an always-0 pixel: the others fall into E4M3's subnormals "
       "(~6 bits left)", weight_outlier=2.0**10, model_kw={"width": 64}, lr=0.1),
    _c("mlp-input-x1e4", "mlp", "digits", "every input x1e4: a scale per tensor absorbs it (fails pure fp16)",
       scale=1e4, **ADAM),
    _c("tiny-output", "tiny-output", "digits", "logits x1e-2: every gradient ~1e-2 smaller, scaled back up",
       model_kw={"factor": 1e-2}, optimizer="adam", lr=1e-2),
]


# --- pure logic (tested in tests/scripts/test_fp8_validation.py) ---------------------------------


def outcome(runs_fp8: list[dict], runs_base: list[dict], gap_points: float = 3.0) -> tuple[str, str, float]:
    """Outcome of one case and recipe from its runs and the baseline's runs of the same seeds.

    Returns ``(outcome, cause, gap)``: ``"fails"`` when most FP8 seeds diverged or the mean
    accuracy gap ``100 * (baseline - fp8)`` (points; a diverged or non-finite FP8 run counts
    as accuracy 0) exceeds ``gap_points``; else ``"trains"``.  ``gap`` is that mean (NaN when
    no seed pairs up).

    >>> ok = lambda a: {"status": "ok", "eval_acc": a}
    >>> outcome([ok(0.90), ok(0.92)], [ok(0.95), ok(0.95)])[0]
    'fails'
    >>> outcome([ok(0.94), ok(0.95)], [ok(0.95), ok(0.95)])[:1]
    ('trains',)
    """
    if len(runs_fp8) != len(runs_base) or not runs_fp8:
        raise ValueError(f"need the same nonzero number of FP8 and baseline runs, got {len(runs_fp8)} "
                         f"and {len(runs_base)}")
    div = sum(r["status"] == "diverged" for r in runs_fp8)
    gaps = []
    for a, b in zip(runs_fp8, runs_base):
        acc = a["eval_acc"] if a["status"] == "ok" and math.isfinite(a["eval_acc"]) else 0.0
        gaps.append(100.0 * (b["eval_acc"] - acc))
    gaps = [g for g in gaps if math.isfinite(g)]
    gap = float(np.mean(gaps)) if gaps else math.nan
    if 2 * div > len(runs_fp8):
        return "fails", f"diverged in {div} of {len(runs_fp8)} seeds", gap
    if not math.isfinite(gap):
        return "fails", "no finite accuracy to compare", gap
    if gap > gap_points:
        return "fails", f"{gap:.1f} points below the baseline (mean of {len(gaps)} seeds)", gap
    return "trains", f"within {max(gap, 0.0):.1f} points of the baseline", gap


def predicted(verdict: str) -> str:
    """The outcome a verdict predicts for training as run: SAFE -> "trains", otherwise "fails"
    (an ERROR predicts nothing and counts as wrong in :func:`score`)."""
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}; valid verdicts are: {', '.join(VERDICTS)}")
    return "trains" if verdict == "SAFE" else "fails"


def score(rows: list[dict]) -> dict:
    """Confusion matrix ``{"<verdict> / <outcome>": n}`` of rows with ``verdict`` and
    ``outcome``, the false SAFE rows (SAFE but failed), and how many predictions were right
    (an ERROR is never right)."""
    for r in rows:
        predicted(r["verdict"])
        if r["outcome"] not in OUTCOMES:
            raise ValueError(f"unknown outcome {r['outcome']!r}; valid outcomes are: {', '.join(OUTCOMES)}")
    conf = {f"{v} / {o}": sum(1 for r in rows if r["verdict"] == v and r["outcome"] == o)
            for v in VERDICTS for o in OUTCOMES}
    right = sum(1 for r in rows if r["verdict"] != "ERROR" and predicted(r["verdict"]) == r["outcome"])
    false_safe = [r for r in rows if r["verdict"] == "SAFE" and r["outcome"] == "fails"]
    false_alarm = [r for r in rows if r["verdict"] in ("SAFE WITH CHANGES", "UNSAFE") and r["outcome"] == "trains"]
    return {"n": len(rows), "right": right, "accuracy": right / len(rows) if rows else math.nan,
            "confusion": conf, "false_safe": [_label(r) for r in false_safe],
            "false_alarm": [_label(r) for r in false_alarm]}


def _label(r: dict) -> str:
    return f"{r.get('case', '?')}/{r.get('recipe', '?')}"


# --- data, models, training ----------------------------------------------------------------


def load(case: Case) -> Any:
    from experiments.zoo_models import load_data

    return load_data(case.data, case.scale)


def build(case: Case, data: Any, seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    kw = dict(case.model_kw)
    if case.toolkit:
        from fpanalysis.nn.models import build_model

        model = build_model(case.model[3:], input_shape=tuple(data.x_train.shape[1:]),
                            num_classes=data.num_classes, **kw)
    else:
        from experiments.zoo_models import MODELS

        if case.data == "tokens":
            kw.setdefault("classes", data.num_classes)
        model = MODELS[case.model](**kw)
    if case.weight_outlier:
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        if np.any(data.x_train[..., 0] != 0) or np.any(data.x_test[..., 0] != 0):
            raise ValueError(f"case {case.name}: a weight outlier needs an input feature 0 that is always 0")
        with torch.no_grad():
            first.weight[0, 0] = case.weight_outlier
    return model


def _optimizer(case: Case, params: Any) -> Any:
    import torch

    if case.optimizer == "sgd":
        return torch.optim.SGD(params, lr=case.lr, momentum=case.momentum)
    return torch.optim.Adam(params, lr=case.lr, eps=case.eps)


def stats_summary(stats: dict | None) -> dict:
    """The FP8 wrapper's per-GEMM statistics without the per-call lists: per module and operand
    role the saturation and underflow shares (over all calls), the largest share in one call,
    the calls that saturated, and the first, last and largest amax.

    >>> stats_summary({"fc": {"weight": {"saturation": 0.0, "underflow": 0.5, "amax": [2.0, 8.0, 4.0],
    ...                                  "calls": 3, "max_saturation": 0.0, "saturating_calls": 0}}})["fc"]["weight"]
    {'saturation': 0.0, 'underflow': 0.5, 'max_saturation': 0.0, 'saturating_calls': 0, 'calls': 3, 'amax_first': 2.0, 'amax_last': 4.0, 'amax_max': 8.0}
    """
    out: dict = {}
    for mod, roles in (stats or {}).items():
        for role, s in roles.items():
            if "calls" not in s:  # e.g. the output's relative errors
                continue
            am = [float(a) for a in s.get("amax", [])]
            out.setdefault(mod, {})[role] = {
                **{k: s[k] for k in ("saturation", "underflow", "max_saturation", "saturating_calls", "calls")},
                "amax_first": am[0] if am else math.nan, "amax_last": am[-1] if am else math.nan,
                "amax_max": max(am) if am else math.nan}
    return out


def train(case: Case, data: Any, mode: str, seed: int, cfg: Config, plan: dict | None = None) -> dict:
    """One training run: ``mode`` "bf16" (autocast, the baseline) or an FP8 recipe; ``plan``: the
    check's FP8 plan (``fpanalysis.nn.fp8.FP8Plan`` as a dict), applied instead of the recipe's
    defaults (as a user would, with ``apply_fp8_plan``)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    model = build(case, data, seed)
    opt = _optimizer(case, model.parameters())
    if plan is not None:
        from fpanalysis.nn.fp8 import apply_fp8_plan

        outer = apply_fp8_plan(model, plan)
        step_ctx = contextlib.nullcontext
    elif mode == "bf16":
        outer = contextlib.nullcontext()
        step_ctx = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        from fpanalysis.nn.fp8 import fp8_training

        kw = {"history_len": case.history_len, "margin": case.margin} if mode in ("delayed", "current") else {}
        outer = fp8_training(model, mode, **kw)
        step_ctx = contextlib.nullcontext
    xtr, ytr = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xte, yte = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    g = torch.Generator().manual_seed(1000 + seed)
    n = xtr.shape[0]
    step, losses, status, diverged_at = 0, [], "ok", None
    t0 = time.time()
    with outer as fp8:
        for _ in range(case.epochs or cfg.epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - cfg.batch_size + 1, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                model.train()
                opt.zero_grad(set_to_none=True)
                with step_ctx():
                    out = model(xtr[idx])
                loss = F.cross_entropy(out.float(), ytr[idx])
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
        eval_acc = math.nan
        if status == "ok":
            model.eval()
            with torch.no_grad(), step_ctx():
                out = model(xte).float()
            eval_acc = float((out.argmax(1) == yte).float().mean()) if torch.isfinite(out).all() else math.nan
        stats = stats_summary(fp8.stats) if fp8 is not None else None
    return {"mode": mode, "seed": seed, "status": status, "diverged_at": diverged_at, "steps": step,
            "eval_acc": eval_acc, "final_loss": losses[-1] if losses else math.nan,
            "seconds": round(time.time() - t0, 2), "planned": plan is not None,
            **({"fp8_stats": stats} if stats is not None else {})}


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
        cases = [c for c in cases if c.name in ("tk-mlp-digits", "mlp-weight-outlier-2e17")]
    return cases


def _recipes(cfg: Config) -> tuple[str, ...]:
    bad = [r for r in cfg.recipes if r not in RECIPES]
    if bad:
        raise SystemExit(f"unknown recipes {bad}; recipes: {', '.join(RECIPES)}")
    return tuple(cfg.recipes)


def _case_key(case: Case, cfg: Config) -> str:
    return f"{asdict(case)}|{cfg.seeds}|{cfg.epochs}|{cfg.batch_size}"


#: the sources a verdict depends on (a change to any of them invalidates the cached verdicts)
CHECK_SOURCES = ("fpanalysis/check", "fpanalysis/nn/fp8.py", "fpanalysis/nn/shadow.py", "fpanalysis/recipes.py",
                 "fpanalysis/scaled.py")


def check_code_hash() -> str:
    """SHA-256 (first 16 hex digits) of the FP8 check's sources (:data:`CHECK_SOURCES`)."""
    import hashlib

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for src in CHECK_SOURCES:
        p = root / src
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _check_key(case: Case) -> dict:
    """What the check of a case depends on (not the training length or the description), as it
    reads back from JSON (tuples as lists)."""
    import json

    return json.loads(json.dumps({k: v for k, v in asdict(case).items() if k not in ("epochs", "why")}))


def stage_truth(cfg: Config, smoke: bool) -> dict:
    path = Path(cfg.out_dir) / "truth.json"
    store = read_stage(path)
    rows = store.setdefault("cases", {})
    for name in set(rows) - {c.name for c in CASES}:  # cases renamed or removed since
        del rows[name]
    for case in _cases(cfg, smoke):
        key = _case_key(case, cfg)
        row = rows.get(case.name)
        if row is None or row.get("key") != key:
            row = rows[case.name] = {"key": key, "case": asdict(case), "recipes": {}}
        data = load(case)
        if "baseline" not in row:
            t0 = time.time()
            row["baseline"] = [train(case, data, "bf16", s, cfg) for s in range(cfg.seeds)]
            acc = float(np.nanmean([r["eval_acc"] for r in row["baseline"]]))
            row["baseline_eval_acc"] = acc
            row["valid"] = acc >= cfg.min_base_acc
            print(f"{case.name:26s} bf16      acc {100 * acc:5.1f}%{'' if row['valid'] else '  [does not learn]'}"
                  f" ({time.time() - t0:.0f} s)", flush=True)
            write_json(path, store)
        for recipe in _recipes(cfg):
            if recipe in row["recipes"]:
                continue
            t0 = time.time()
            runs = [train(case, data, recipe, s, cfg) for s in range(cfg.seeds)]
            out, cause, gap = outcome(runs, row["baseline"], cfg.gap_points)
            row["recipes"][recipe] = {"outcome": out, "cause": cause, "gap_points": gap, "runs": runs,
                                      "seconds": round(time.time() - t0, 1)}
            print(f"{case.name:26s} {recipe:9s} {out:6s} {cause} ({time.time() - t0:.0f} s)", flush=True)
            store.update(config={**asdict(cfg), "out_dir": relative_to_repo(cfg.out_dir)}, environment=environment())
            write_json(path, store)
    return store


def stage_verdicts(cfg: Config, smoke: bool) -> dict:
    from fpanalysis.check import check

    path = Path(cfg.out_dir) / "verdicts.json"
    store = read_stage(path)
    rows = store.setdefault("cases", {})
    code = check_code_hash()
    for case in _cases(cfg, smoke):
        data = load(case)
        per = rows.setdefault(case.name, {})
        for recipe in _recipes(cfg):
            done = per.get(recipe, {})
            if done.get("case") == _check_key(case) and done.get("code") == code and not smoke:
                continue  # checked with this case's definition and this check already
            model = build(case, data, 0)
            t0 = time.time()
            try:
                kw = {"steps": 4, "dry_run_steps": 4} if smoke else {}
                if recipe == "delayed":
                    kw["history_len"] = case.history_len
                if recipe in ("delayed", "current"):
                    kw["margin"] = case.margin
                rep = check(model, (data.x_train, data.y_train), fmt="fp8", recipe=recipe, optimizer=case.optimizer, lr=case.lr,
                            eps=case.eps, momentum=case.momentum, batch_size=cfg.batch_size, seed=0,
                            model_name=case.name, **kw)
                row = {"verdict": rep.verdict, "changes": rep.changes,
                       "findings": [{"check": f.check, "status": f.status, "message": f.message}
                                    for f in rep.findings if f.status != "ok"],
                       "plan": rep.details.get("plan")}
            except Exception as exc:  # a crash is a wrong verdict, recorded with its message
                row = {"verdict": "ERROR", "error": f"{type(exc).__name__}: {exc}"[:500], "changes": [],
                       "findings": []}
            row["seconds"] = round(time.time() - t0, 1)
            row["case"] = _check_key(case)
            row["code"] = code
            per[recipe] = row
            print(f"{case.name:26s} {recipe:9s} {row['verdict']:18s} ({row['seconds']:.0f} s)"
                  + (f"  {row.get('error', '')[:160]}" if row["verdict"] == "ERROR" else ""), flush=True)
            store.update(environment=environment())
            write_json(path, store)
    return store


def stage_fixes(cfg: Config, smoke: bool) -> dict:
    """Every SAFE WITH CHANGES verdict's verified plan applied in training (same seeds): does it
    then train within ``gap_points`` of the baseline?"""
    truth = read_stage(Path(cfg.out_dir) / "truth.json").get("cases", {})
    verdicts = read_stage(Path(cfg.out_dir) / "verdicts.json").get("cases", {})
    path = Path(cfg.out_dir) / "fixes.json"
    store = read_stage(path)
    rows = store.setdefault("cases", {})
    for case in _cases(cfg, smoke):
        t = truth.get(case.name)
        if t is None or "baseline" not in t or not t.get("valid", False):
            continue
        data = None
        for recipe in _recipes(cfg):
            v = verdicts.get(case.name, {}).get(recipe, {})
            if v.get("verdict") != "SAFE WITH CHANGES" or not v.get("plan") or recipe not in t["recipes"]:
                continue  # no plan, or no outcome of the recipe as run to set it against
            done = rows.get(case.name, {}).get(recipe)
            if done is not None and done.get("plan") == v["plan"] and done.get("key") == t["key"]:
                continue
            data = data if data is not None else load(case)
            t0 = time.time()
            runs = [train(case, data, recipe, s, cfg, plan=v["plan"]) for s in range(cfg.seeds)]
            out, cause, gap = outcome(runs, t["baseline"], cfg.gap_points)
            rows.setdefault(case.name, {})[recipe] = {"key": t["key"], "plan": v["plan"], "outcome_with_plan": out,
                                                      "cause": cause, "gap_points": gap, "runs": runs,
                                                      "changes": v.get("changes", [])}
            print(f"{case.name:26s} {recipe:9s} with its plan: {out} ({cause}) ({time.time() - t0:.0f} s)", flush=True)
            store.update(environment=environment())
            write_json(path, store)
    return store


def stage_report(cfg: Config) -> dict:
    d = Path(cfg.out_dir)
    truth = read_stage(d / "truth.json").get("cases", {})
    verdicts = read_stage(d / "verdicts.json").get("cases", {})
    fixes = read_stage(d / "fixes.json").get("cases", {})
    code = check_code_hash()
    rows, skipped, stale = [], [], []
    for name, t in truth.items():
        if not t.get("valid", False):
            skipped.append(name)
            continue
        for recipe, r in t.get("recipes", {}).items():
            v = verdicts.get(name, {}).get(recipe)
            if v is None:
                continue
            if v.get("case") != {k: x for k, x in t["case"].items() if k not in ("epochs", "why")} \
                    or v.get("code") != code:
                stale.append(f"{name}/{recipe}")
                continue
            fx = fixes.get(name, {}).get(recipe, {})
            if fx.get("plan") != v.get("plan"):
                fx = {}  # trained with another plan than this verdict's
            base = [b["eval_acc"] for b in t["baseline"]]
            fp8 = [x["eval_acc"] for x in r["runs"]]
            rows.append({"case": name, "recipe": recipe, "why": t["case"]["why"],
                         "toolkit": t["case"]["model"].startswith("tk:"), "verdict": v["verdict"],
                         "predicted": predicted(v["verdict"]), "outcome": r["outcome"], "cause": r["cause"],
                         "gap_points": r["gap_points"], "baseline_acc": base, "fp8_acc": fp8,
                         "diverged": sum(x["status"] == "diverged" for x in r["runs"]),
                         "changes": v.get("changes", []),
                         "fix": fx.get("outcome_with_plan"), "fix_gap_points": fx.get("gap_points"),
                         "hit": v["verdict"] != "ERROR" and predicted(v["verdict"]) == r["outcome"]})
    sc = score(rows)
    by_recipe = {rc: score([r for r in rows if r["recipe"] == rc]) for rc in RECIPES
                 if any(r["recipe"] == rc for r in rows)}
    seconds = sum(x["seconds"] for t in truth.values() for x in t.get("baseline", []))
    seconds += sum(x["seconds"] for f in fixes.values() for r in f.values() for x in r["runs"])
    seconds += sum(x["seconds"] for t in truth.values() for r in t.get("recipes", {}).values() for x in r["runs"])
    report = {"experiment": "fp8_validation", **sc, "by_recipe": {k: {kk: v[kk] for kk in ("n", "right", "confusion",
                                                                                         "false_safe")}
                                                                  for k, v in by_recipe.items()},
              "gap_threshold_points": cfg.gap_points, "baseline": "bf16 autocast (fp32 parameters)",
              "fixes_tried": sum(r["fix"] is not None for r in rows),
              "fix_success": sum(r["fix"] == "trains" for r in rows),
              "left_out_baseline_does_not_learn": skipped, "check_code": code,
              "left_out_verdict_of_another_check_or_case": stale, "training_seconds": round(seconds, 1),
              "rows": rows, "environment": environment()}
    write_json(d / "report.json", report)
    print(f"{sc['right']}/{sc['n']} verdicts right, false SAFE: {len(sc['false_safe'])} {sc['false_safe']}; "
          f"plans that trained: {report['fix_success']}/{report['fixes_tried']}; training wall time {seconds:.0f} s")
    if stale:
        print(f"  left out, verdict of another version of the check or case (run the verdicts stage): "
              f"{', '.join(stale)}")
    for k, n in sc["confusion"].items():
        print(f"  {k:28s} {n}")
    for r in rows:
        mark = ("" if r["hit"] else "   <- miss") + (f"   with its plan: {r['fix']}" if r["fix"] else "")
        print(f"  {r['case']:26s} {r['recipe']:8s} {r['verdict']:18s} {r['outcome']:6s} gap {r['gap_points']:6.1f}{mark}")
    return report


def main(argv: list[str]) -> None:
    stages = [a for a in argv if not a.startswith("--")]
    smoke = "--smoke" in argv
    cfg = parse_overrides(Config(), [a for a in argv if a.startswith("--") and a != "--smoke"])
    if smoke:
        cfg = replace(cfg, seeds=1, epochs=1, out_dir=str(RESULTS / "_scratch" / "fp8_validation_smoke"))
    valid = ("truth", "verdicts", "fixes", "report", "all")
    if not stages or any(s not in valid for s in stages):
        raise SystemExit(f"name a stage: {', '.join(valid)}")
    _recipes(cfg)
    import torch

    torch.set_num_threads(max(1, cfg.threads))
    for s in ("truth", "verdicts", "fixes", "report"):
        if s in stages or "all" in stages:
            {"truth": lambda: stage_truth(cfg, smoke), "verdicts": lambda: stage_verdicts(cfg, smoke),
             "fixes": lambda: stage_fixes(cfg, smoke), "report": lambda: stage_report(cfg)}[s]()


if __name__ == "__main__":
    main(sys.argv[1:])

"""Does `fpanalysis check` predict what really happens in pure fp16 training? (the built-in models)

This is the quick validation on the toolkit's own models (minutes).  The validation that judges
the check — 45 models written outside the toolkit, every failure mechanism, ground truth from real
training with 3 seeds, verified plans trained for real, figure 8 — is ``experiments/check_zoo.py``.

For each configuration below: run the check (fp32 measurements only), then train the same model
from the same initialisation in pure fp16 and in fp32 with experiments/train.py, and compare the
verdict with the outcome:

* outcome "fails"  : the fp16 run diverged (non-finite loss or gradients), or its final test
  accuracy is more than ``gap_points`` below fp32's;
* outcome "trains" : otherwise.

A verdict of SAFE predicts "trains"; SAFE WITH CHANGES and UNSAFE predict "fails" as configured.
The goal: no failing configuration predicted SAFE.  Writes ``results/check_validation.json``
(one row per configuration, the confusion table and every miss with its cause).

    python -m experiments.check_validation           # CPU size (minutes)
    python -m experiments.check_validation --smoke   # seconds
    python -m experiments.check_validation --device=cuda --epochs=20   # GPU size
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from experiments._common import RESULTS, environment, parse_overrides, write_json


@dataclass
class Config:
    epochs: int = 4
    n_train: int = 0
    seeds: int = 1
    gap_points: float = 2.0
    device: str = "cpu"
    out: str = str(RESULTS / "check_validation.json")


# name, model, dataset, optimizer settings, data scale, why it is here
CASES = [
    ("mlp-sgd", "mlp", "digits", dict(optimizer="sgd", lr=0.05), 1.0, "healthy baseline"),
    ("lenet5-sgd", "lenet5", "digits", dict(optimizer="sgd", lr=0.05), 1.0, "healthy CNN"),
    ("mlp-adam-eps1e-8", "mlp", "digits", dict(optimizer="adam", lr=1e-3, eps=1e-8), 1.0,
     "Adam eps = 1e-8 rounds to 0 in fp16"),
    ("mlp-adam-eps1e-4", "mlp", "digits", dict(optimizer="adam", lr=1e-3, eps=1e-4), 1.0,
     "the recommended epsilon fix"),
    ("mlp-overflow", "mlp", "digits", dict(optimizer="sgd", lr=0.05), 3000.0,
     "inputs scaled so first-layer activations exceed 65504"),
    ("mlp-stagnation", "mlp", "digits", dict(optimizer="sgd", lr=1e-3, momentum=0.0, batch_size=32, epochs=15), 1.0,
     "learning rate small enough that fp16 updates round away (fp32 still learns)"),
    ("mlp-sgd-gaussian", "mlp", "gaussian", dict(optimizer="sgd", lr=0.05), 1.0, "healthy, synthetic data"),
]


def _outcome(fp16: dict, fp32: dict, gap_points: float) -> tuple[str, str]:
    if fp16["status"] == "diverged":
        return "fails", f"fp16 diverged at step {fp16['divergence'].get('step')}"
    gap = 100 * (fp32["final"]["test_acc"] - fp16["final"]["test_acc"])
    if gap > gap_points:
        return "fails", f"fp16 accuracy {gap:.1f} points below fp32"
    if abs(gap) < 0.05:
        return "trains", "fp16 as accurate as fp32"
    return "trains", f"fp16 {abs(gap):.1f} points {'below' if gap > 0 else 'above'} fp32"


def main(argv: list[str]) -> None:
    smoke = "--smoke" in argv
    cfg = parse_overrides(Config(), [a for a in argv if a != "--smoke"])
    cases = CASES
    if smoke:
        cfg = replace(cfg, epochs=1, n_train=256, out=str(RESULTS / "_scratch" / "check_validation_smoke.json"))
        cases = [c for c in CASES if c[0] in ("mlp-sgd", "mlp-adam-eps1e-8")]
    import numpy as np
    import torch

    from experiments import train as T
    from fpanalysis.check import check
    from fpanalysis.datasets import load_dataset
    from fpanalysis.nn.models import build_model

    rows = []
    t0 = time.time()
    for name, model_name, dataset, opt, scale, why in cases:
        for seed in range(cfg.seeds):
            ds = load_dataset(dataset, n_train=cfg.n_train or None)
            torch.manual_seed(seed)
            model = build_model(model_name, input_shape=ds.input_shape, num_classes=ds.num_classes)
            x = (ds.x_train * scale).astype(np.float32)
            rep = check(model, (x, ds.y_train), fmt="fp16", optimizer=opt["optimizer"], lr=opt["lr"],
                        eps=opt.get("eps", 1e-8), momentum=opt.get("momentum", 0.9), seed=seed,
                        batch_size=opt.get("batch_size", 64),
                        model_name=name, certify=True, certify_samples=128)
            runs = {}
            for mode in ("fp16", "fp32"):
                train_kw = {"epochs": 1 if smoke else cfg.epochs, **opt}
                if smoke:
                    train_kw["epochs"] = 1
                tc = T.Config(dataset=dataset, model=model_name, mode=mode, seed=seed,
                              n_train=cfg.n_train, device=cfg.device, weights="none", input_scale=scale,
                              out=str(RESULTS / "_scratch" / "check_validation" / f"{name}-{mode}-s{seed}.json"),
                              **train_kw)
                runs[mode] = T.run(tc)
            outcome, cause = _outcome(runs["fp16"], runs["fp32"], cfg.gap_points)
            predicted = "trains" if rep.verdict == "SAFE" else "fails"
            row = {
                "case": name, "seed": seed, "why": why, "verdict": rep.verdict, "changes": rep.changes,
                "failed_findings": [f"{f.check}: {f.message}" for f in rep.findings if f.status == "fail"],
                "predicted": predicted, "outcome": outcome, "cause": cause,
                "fp16_test_acc": runs["fp16"]["final"]["test_acc"], "fp32_test_acc": runs["fp32"]["final"]["test_acc"],
                "fp16_status": runs["fp16"]["status"], "hit": predicted == outcome,
            }
            rows.append(row)
            print(f"{name:18s} seed {seed}: {rep.verdict:18s} -> fp16 {outcome:6s} ({cause})")
    confusion = {f"predicted {p} / {o}": sum(1 for r in rows if r["predicted"] == p and r["outcome"] == o)
                 for p in ("trains", "fails") for o in ("trains", "fails")}
    misses = [{"case": r["case"], "seed": r["seed"], "verdict": r["verdict"], "outcome": r["outcome"],
               "cause": r["cause"], "findings": r["failed_findings"]} for r in rows if not r["hit"]]
    unsafe_called_safe = sum(1 for r in rows if r["predicted"] == "trains" and r["outcome"] == "fails")
    print("\nconfusion:", confusion)
    print(f"failing configurations predicted SAFE: {unsafe_called_safe}")
    write_json(Path(cfg.out), {
        "experiment": "check_validation", "config": asdict(cfg), "rows": rows, "confusion": confusion,
        "misses": misses, "failing_predicted_safe": unsafe_called_safe, "wall_s": time.time() - t0,
        "environment": environment(),
    })
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main(sys.argv[1:])

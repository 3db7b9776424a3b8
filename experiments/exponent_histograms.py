"""Exponent histograms of activations and gradients from ``fpanalysis check`` (figure 6).

For each case below the model is trained briefly in fp32 (so that gradients have the size they
have during training, not at initialisation), then :func:`fpanalysis.check.check` measures it
(fp32 only, no certificate) against the format.  The check report (``CheckReport.to_dict()``:
``details.activations``, ``details.activation_grads`` and ``details.weight_grads`` carry
``log2_hist`` dicts, counts of ``floor(log2 |v|)`` of the nonzero values) is stored with the
loss scale used for the "after loss scaling" histogram:

* the scale the check recommends (the fix of its "gradient underflow" finding), when it names one;
* otherwise the check's own rule (:func:`fpanalysis.check.loss_scale_interval`) applied to the
  pooled weight-gradient histogram: the smallest power of two that lifts the 0.1% quantile
  (taken at the lower edge of its histogram bin, so conservatively) into the normal range,
  provided the largest gradient then stays a factor 2 below the format's max; when no single
  scale does both (``fits`` false), the largest safe scale (the cap) is used.

Writes ``results/exponent_histograms.json``.

    python -m experiments.exponent_histograms            # about a minute on a CPU
    python -m experiments.exponent_histograms --smoke    # seconds, to results/_scratch/
"""
from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from experiments._common import RESULTS, environment, parse_overrides, write_json

# name, model, dataset, input scale, description
CASES = [
    ("lenet5-mnist5000", "lenet5", "mnist5000", 1.0, "LeNet-5 on 5000 MNIST images, after one fp32 epoch"),
    ("mlp-digits-x3000", "mlp", "digits", 3000.0,
     "MLP on digits with inputs scaled by 3000: first-layer activations exceed fp16's max"),
]


@dataclass
class Config:
    fmt: str = "fp16"
    epochs: int = 1
    n_train: int = 0
    lr: float = 0.05
    steps: int = 8
    quantile: float = 0.001
    seed: int = 0
    out: str = str(RESULTS / "exponent_histograms.json")


def pooled_hist(entries: list[dict]) -> dict[int, int]:
    """Sum the ``log2_hist`` dicts of several layers."""
    tot: dict[int, int] = {}
    for e in entries:
        for k, v in e.get("log2_hist", {}).items():
            tot[int(k)] = tot.get(int(k), 0) + int(v)
    return dict(sorted(tot.items()))


def hist_quantile_exponent(hist: dict[int, int], q: float) -> int | None:
    """Exponent bin holding the ``q`` quantile of the values counted in ``hist``."""
    total = sum(hist.values())
    if not total:
        return None
    acc = 0
    for k, v in sorted(hist.items()):
        acc += v
        if acc >= q * total:
            return k
    return max(hist)


def choose_loss_scale(report: dict, fmt: str, q: float) -> dict:
    """The loss scale for the "after scaling" histogram (see the module docstring)."""
    from fpanalysis.check.findings import loss_scale_interval
    from fpanalysis.formats import get_format

    f = get_format(fmt)
    for fd in report.get("findings", []):
        if fd.get("check") == "gradient underflow" and fd.get("fix"):
            m = re.search(r"S = ([0-9.eE+-]+)", fd["fix"])
            if m:
                return {"value": float(m.group(1)), "source": "recommended by the check", "fits": True,
                        "finding": fd["message"]}
    wg = report["details"]["weight_grads"]
    hist = pooled_hist(wg)
    e = hist_quantile_exponent(hist, q)
    gmax = max((g.get("max_abs", 0.0) for g in wg), default=0.0)
    lo, hi = loss_scale_interval(2.0**e if e is not None else 0.0, gmax, f)
    base = f"the check's rule on the pooled weight-gradient histogram ({100 * q:g}% quantile in bin 2^{e})"
    if lo <= hi:
        return {"value": float(lo), "interval": [lo, hi if math.isfinite(hi) else None], "fits": True,
                "source": base + ": the smallest power of two that makes it normal"}
    return {"value": float(hi), "interval": [lo, hi], "fits": False,
            "source": base + f": no single scale fits (needs >= {lo:g}, overflow caps it at {hi:g}); the cap is used"}


def run_case(name: str, model_name: str, dataset: str, scale: float, why: str, cfg: Config) -> dict:
    import numpy as np
    import torch

    from fpanalysis.check import check
    from fpanalysis.datasets import load_dataset
    from fpanalysis.nn.models import build_model

    ds = load_dataset(dataset, n_train=cfg.n_train or None)
    x = (ds.x_train * scale).astype(np.float32)
    torch.manual_seed(cfg.seed)
    model = build_model(model_name, input_shape=ds.input_shape, num_classes=ds.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr / max(1.0, scale), momentum=0.9)
    X, y = torch.from_numpy(x), torch.from_numpy(ds.y_train).long()
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - 31, 32):
            idx = perm[i:i + 32]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    rep = check(model, (x, ds.y_train), fmt=cfg.fmt, optimizer="sgd", lr=cfg.lr, steps=cfg.steps, certify=False,
                seed=cfg.seed, model_name=name)
    d = rep.to_dict()
    d["details"] = {k: d["details"][k] for k in ("activations", "activation_grads", "weight_grads") if k in d["details"]}
    for fam in d["details"].values():  # keep the histograms and the range numbers
        for e in fam:
            e["log2_hist"] = {str(k): v for k, v in e.get("log2_hist", {}).items()}
    return {"case": name, "model": model_name, "dataset": dataset, "input_scale": scale, "why": why,
            "fp32_epochs": cfg.epochs, "loss_scale": choose_loss_scale(d, cfg.fmt, cfg.quantile), "check": d}


def main(argv: list[str]) -> None:
    smoke = "--smoke" in argv
    cfg = parse_overrides(Config(), [a for a in argv if a != "--smoke"])
    cases = CASES
    if smoke:
        cfg = replace(cfg, n_train=256, steps=2, out=str(RESULTS / "_scratch" / "exponent_histograms_smoke.json"))
        cases = CASES[1:]
    t0 = time.time()
    out = []
    for case in cases:
        r = run_case(*case, cfg)
        print(f"{r['case']}: verdict {r['check']['verdict']}; loss scale {r['loss_scale']['value']:g} "
              f"({r['loss_scale']['source']})")
        out.append(r)
    write_json(Path(cfg.out), {"experiment": "exponent_histograms", "config": asdict(cfg), "format": cfg.fmt,
                               "cases": out, "wall_s": time.time() - t0, "environment": environment()})
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main(sys.argv[1:])

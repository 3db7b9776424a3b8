"""Update stagnation vs learning rate: the fraction of SGD updates w - lr*g that round back to w
when the weights are stored in fp16 or bf16 (no fp32 master copy).

Weights and gradients are real: a small MLP trained for a few fp32 steps on sklearn's digits
(offline), then one more batch gives the gradient.  Writes ``results/stagnation.json``.

    python -m experiments.stagnation            # full (seconds)
    python -m experiments.stagnation --smoke    # smaller
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np

from experiments._common import RESULTS, environment, parse_overrides, write_json


@dataclass
class Config:
    formats: tuple = ("fp16", "bf16")
    lr_min: float = 1e-6
    lr_max: float = 1.0
    n_lr: int = 25
    warmup_steps: int = 50
    hidden: int = 128
    seed: int = 0
    out: str = str(RESULTS / "stagnation.json")


def main(argv: list[str]) -> None:
    smoke = "--smoke" in argv
    cfg = parse_overrides(Config(), [a for a in argv if a != "--smoke"])
    if smoke:
        cfg = Config(n_lr=7, warmup_steps=5, out=str(RESULTS / "_scratch" / "stagnation_smoke.json"))
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    from fpanalysis import round_to

    torch.manual_seed(cfg.seed)
    d = load_digits()
    X = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    model = nn.Sequential(nn.Linear(64, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(cfg.warmup_steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    opt.zero_grad()
    nn.functional.cross_entropy(model(X), y).backward()
    w = np.concatenate([p.detach().double().reshape(-1).numpy() for p in model.parameters()])
    g = np.concatenate([p.grad.double().reshape(-1).numpy() for p in model.parameters()])
    lrs = np.logspace(np.log10(cfg.lr_min), np.log10(cfg.lr_max), cfg.n_lr)
    rows = []
    for fmt in cfg.formats:
        w_f = round_to(w, fmt)
        for lr in lrs:
            new = round_to(w_f - lr * g, fmt)
            moving = g != 0
            lost = float(np.mean(new[moving] == w_f[moving]))
            rows.append({"format": fmt, "lr": float(lr), "lost_fraction": lost})
            print(f"{fmt:5s} lr={lr:.2e}  lost {100 * lost:6.2f}%")
    write_json(__import__("pathlib").Path(cfg.out), {
        "experiment": "stagnation", "config": asdict(cfg), "n_parameters": int(w.size),
        "grad_abs_median": float(np.median(np.abs(g[g != 0]))), "weight_abs_median": float(np.median(np.abs(w))),
        "rows": rows, "environment": environment(),
    })
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Why pure fp16 loses accuracy on the zoo's ``deep-mlp-sgd`` (docs/theory.md §4.8).

Real training of the case (experiments/check_zoo.py; 6-layer ReLU MLP on digits, SGD lr 0.05,
momentum 0.9, batch 64) in three variants per seed: fp32; pure fp16 (``model.half()``); fp32
started from the fp16-rounded initial weights (the rounding of the starting point alone).  For
each: the step at which training leaves its initial plateau (20-step mean loss below 2.0), the
eval accuracy after the case's 16 epochs, and, for pure fp16 during the first 100 steps, the
share of nonzero intended updates ``-lr * momentum_buffer`` that rounded away and the share of
the first-order loss decrease they carried.

    python -m experiments.plateau_diagnosis            # 10 seeds, about a minute on one core
"""
from __future__ import annotations

import sys

import numpy as np

from experiments._common import RESULTS, environment, write_json


def run(seed: int, variant: str, steps: int = 352) -> dict:
    import torch
    import torch.nn.functional as F

    from experiments.check_zoo import CASES, build
    from experiments.zoo_models import load_data

    case = next(c for c in CASES if c.name == "deep-mlp-sgd")
    data = load_data(case.data, case.scale)
    model = build(case, data, seed)
    if variant == "fp32-from-fp16-init":
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    dtype = torch.float16 if variant == "fp16" else torch.float32
    model = model.to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=case.lr, momentum=case.momentum)
    xtr, ytr = torch.from_numpy(data.x_train).to(dtype), torch.from_numpy(data.y_train)
    xte, yte = torch.from_numpy(data.x_test).to(dtype), torch.from_numpy(data.y_test)
    g = torch.Generator().manual_seed(1000 + seed)
    n, step, losses = xtr.shape[0], 0, []
    lost = nonzero = 0
    lost_dec = dec = 0.0
    while step < steps:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - 63, 64):
            if step >= steps:
                break
            idx = perm[i:i + 64]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            losses.append(loss.item())
            loss.backward()
            old = [p.detach().float().clone() for p in model.parameters()]
            grads = [p.grad.detach().float().clone() for p in model.parameters()]
            opt.step()
            if step < 100:
                for p, o, gr in zip(model.parameters(), old, grads):
                    intended = -case.lr * opt.state[p]["momentum_buffer"].float()
                    actual = p.detach().float() - o
                    lost += int(((actual == 0) & (intended != 0)).sum())
                    nonzero += int((intended != 0).sum())
                    lost_dec += float(-(gr * (intended - actual)).sum())
                    dec += float(-(gr * intended).sum())
            step += 1
    sm = np.convolve(losses, np.ones(20) / 20, mode="valid")
    leave = int(np.argmax(sm < 2.0)) if (sm < 2.0).any() else -1
    model.eval()
    with torch.no_grad():
        acc = float((model(xte).float().argmax(1) == yte).float().mean())
    return {"seed": seed, "variant": variant, "leaves_plateau_at": leave, "eval_acc": acc,
            "lost_count_share_first_100": lost / max(1, nonzero),
            "lost_decrease_share_first_100": lost_dec / dec if dec else 0.0}


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    seeds = int(argv[0]) if argv else 10
    rows = [run(s, v) for s in range(seeds) for v in ("fp32", "fp16", "fp32-from-fp16-init")]
    by = {v: [r for r in rows if r["variant"] == v] for v in ("fp32", "fp16", "fp32-from-fp16-init")}
    out = {"experiment": "plateau_diagnosis", "rows": rows, "environment": environment(), "summary": {}}
    for v in ("fp16", "fp32-from-fp16-init"):
        d = [a["leaves_plateau_at"] - b["leaves_plateau_at"] for a, b in zip(by[v], by["fp32"])]
        gap3 = 100 * float(np.mean([b["eval_acc"] - a["eval_acc"] for a, b in zip(by[v][:3], by["fp32"][:3])]))
        out["summary"][v] = {"later_than_fp32_in": sum(x > 0 for x in d), "seeds": seeds, "delay_steps": d,
                             "mean_delay": float(np.mean(d)), "acc_gap_points_seeds_0_2": gap3}
        print(f"{v:22s} leaves the plateau later than fp32 in {sum(x > 0 for x in d)}/{seeds} seeds "
              f"(delays {d}); 16-epoch eval gap, seeds 0-2: {gap3:.1f} points")
    f16 = by["fp16"]
    print(f"pure fp16, first 100 steps: {100 * np.mean([r['lost_count_share_first_100'] for r in f16]):.1f}% of "
          f"nonzero updates lost, carrying {100 * np.mean([r['lost_decrease_share_first_100'] for r in f16]):.2f}% "
          "of the first-order decrease")
    write_json(RESULTS / "plateau_diagnosis.json", out)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Tier-B (exact-row) radii against tier A on a trained network: certified fraction, soundness, cost.

The model is trained exactly as in :mod:`experiments.analysis_runs` (same seed and settings), then
:func:`fpanalysis.analysis.adjoint.adjoint_certificate` runs on the first ``n`` test inputs with
``radii="interval"`` (tier A) and ``radii="exact"`` (tier B).  Observed: the emulator's and torch's
CPU half kernels' logits against fp32 -- bound violations (``|z16_i - z32_i| > bound_i``), margin
violations and certified inputs whose class flips (all must be 0).

    python -m experiments.adjoint_tier_b --model=vgg_small --dataset=digits --n=64

Writes ``experiments/results/adjoint_tier_b-<dataset>-<model>.json``.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Config:
    model: str = "vgg_small"
    dataset: str = "digits"
    n: int = 64
    batch: int = 16
    row_chunk: int = 512
    out: str = ""


def main(argv: list[str]) -> dict:
    from experiments._common import parse_overrides
    from experiments.analysis_runs import Config as RunConfig
    from experiments.analysis_runs import train_fp32

    cfg = parse_overrides(Config(), argv)
    import numpy as np
    import torch

    from fpanalysis.analysis.adjoint import adjoint_certificate
    from fpanalysis.analysis.network_bounds import BoundConfig
    from fpanalysis.datasets import load_dataset
    from fpanalysis.nn.execute import run_model
    from fpanalysis.nn.trace import trace_model

    ds = load_dataset(cfg.dataset)
    model, record = train_fp32(cfg.model, ds, RunConfig(dataset=cfg.dataset))
    print(f"{cfg.model}: fp32 test accuracy {100 * record['fp32_test_acc']:.2f}%", flush=True)
    tr = trace_model(model)
    bc = BoundConfig.make("fp16", "fp32-accumulate")
    X = torch.from_numpy(ds.x_test[:cfg.n])
    obs = run_model(tr, X, "fp16", backends=("float32", "emulator", "half"))
    z = obs["float32"][tr.output].double().numpy()
    c = z.argmax(1)
    ar = np.arange(len(c))
    out: dict = {"config": asdict(cfg), "training": record, "tiers": {}}
    for tier in ("interval", "exact"):
        t0 = time.perf_counter()
        res = adjoint_certificate(tr, X, bc, batch_size=cfg.batch, radii=tier, row_chunk=cfg.row_chunk)
        sec = time.perf_counter() - t0
        row = {"seconds": sec, "certified": int(res.certified.sum()), "n": len(c),
               "median_bound": float(np.median(res.bound.max(1))), "median_limit": float(np.median(res.limit)),
               "median_switching": float(np.median(res.switching)), "runs": {}}
        for be in ("emulator", "half"):
            o = obs[be][tr.output].double().numpy()
            d = o - z
            dm = np.abs(d[ar, c][:, None] - d)
            delta = np.abs(d).max(1)
            fin = delta > 0
            row["runs"][be] = {"bound_violations": int((np.abs(d) > res.bound).any(1).sum()),
                               "margin_violations": int((dm > res.margin_bound).any(1).sum()),
                               "certified_flips": int(((o.argmax(1) != c) & res.certified).sum()),
                               "median_bound_over_delta": float(np.median(res.bound.max(1)[fin] / delta[fin])),
                               "median_limit_over_delta": float(np.median(res.limit[fin] / delta[fin]))}
        out["tiers"][tier] = row
        print(f"[{tier}] certified {row['certified']}/{row['n']} in {sec:.1f} s; median bound {row['median_bound']:.3g}, "
              f"limit {row['median_limit']:.3g}, switching {row['median_switching']:.3g}; {row['runs']}", flush=True)
    path = Path(cfg.out or HERE / "results" / f"adjoint_tier_b-{cfg.dataset}-{cfg.model}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])

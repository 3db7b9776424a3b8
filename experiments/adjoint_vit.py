"""The adjoint certificate on the tiny ViT (MNIST): certified fraction, soundness, tightness, cost.

The tiny ViT (:func:`fpanalysis.nn.models.build_model` ``"vit_tiny"``: conv patch embedding,
position embedding, 2 pre-LN blocks with written-out attention, GELU MLP, final LayerNorm, mean
over tokens, linear head) is trained in fp32 with the recipe of :mod:`experiments.analysis_runs`
(Adam, lr 1e-3, batch 32, seed 0) for ``epochs`` epochs on MNIST, then
:func:`fpanalysis.analysis.adjoint.adjoint_certificate` runs on the first ``n`` test images with
``radii="interval"`` (tier A) and ``radii="exact"`` (tier B; on the first ``n_exact`` images, it
costs one backward pass per neuron at every smooth-step input).  Observed: the emulator's and
torch's CPU half kernels' fp16 runs against fp32 -- bound violations (``|z16_i - z32_i| > bound_i``),
margin violations and certified inputs whose class flips (all must be 0), medians of bound / delta
and limit / delta, and the predictor's delta / delta_pred quantiles.

    python -m experiments.adjoint_vit --depth=2 --epochs=2 --n=256 --n_exact=256 --batch=8   # ~25 min
    python -m experiments.adjoint_vit --depth=1 --epochs=2 --n=256 --n_exact=64 --batch=8

Writes ``experiments/results/adjoint_vit.json`` (``adjoint_vit-depth1.json`` for one block); the
trained weights are cached under ``experiments/results/_scratch/`` (not committed).
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Config:
    epochs: int = 2
    depth: int = 2
    n: int = 256
    n_exact: int = 32
    batch: int = 32
    row_chunk: int = 256
    profile: str = "fp32-accumulate"
    data_dir: str = ""
    seed: int = 0
    out: str = ""


def _data_dir(cfg: Config) -> Path:
    if cfg.data_dir:
        return Path(cfg.data_dir)
    for up in HERE.parents:
        d = up / "shared" / "data" / "mnist"
        if d.is_dir():
            return d
    raise ValueError("MNIST not found: pass --data_dir=<directory of the idx files>")


def train(ds, cfg: Config):
    """The tiny ViT trained as in experiments.analysis_runs (Adam 1e-3, batch 32), ``cfg.epochs`` epochs."""
    import torch

    from fpanalysis.nn.models import build_model

    cache = HERE / "results" / "_scratch" / f"adjoint_vit-d{cfg.depth}-e{cfg.epochs}-s{cfg.seed}.pt"
    torch.manual_seed(cfg.seed)
    model = build_model("vit_tiny", input_shape=ds.input_shape, num_classes=ds.num_classes, depth=cfg.depth)
    t0 = time.perf_counter()
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        X, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train).long()
        gen = torch.Generator().manual_seed(cfg.seed)
        model.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y) - 32 + 1, 32):
                idx = perm[i:i + 32]
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
                opt.step()
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(ds.x_test)).argmax(1) == torch.from_numpy(ds.y_test).long())
                    .double().mean())
    return model, {"depth": cfg.depth, "optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": cfg.epochs, "seed": cfg.seed,
                   "fp32_test_acc": acc, "train_or_load_s": time.perf_counter() - t0}


def main(argv: list[str]) -> dict:
    from experiments._common import environment, parse_overrides, write_json

    cfg = parse_overrides(Config(), argv)
    import numpy as np
    import torch

    from fpanalysis.analysis.adjoint import _quantile, adjoint_certificate
    from fpanalysis.analysis.network_bounds import BoundConfig
    from fpanalysis.datasets import load_mnist_idx
    from fpanalysis.nn.execute import run_model
    from fpanalysis.nn.trace import trace_model

    torch.set_num_threads(1)
    ds = load_mnist_idx(_data_dir(cfg))
    model, record = train(ds, cfg)
    print(f"vit_tiny: fp32 test accuracy {100 * record['fp32_test_acc']:.2f}%", flush=True)
    tr = trace_model(model)
    bc = BoundConfig.make("fp16", cfg.profile)
    X = torch.from_numpy(ds.x_test[:cfg.n])
    obs = run_model(tr, X, "fp16", backends=("float32", "emulator", "half"))
    z_all = obs["float32"][tr.output].double().numpy()
    out: dict = {"config": asdict(cfg), "training": record, "environment": environment(), "tiers": {}}
    for tier, n in (("interval", cfg.n), ("exact", min(cfg.n, cfg.n_exact))):
        if n <= 0:
            continue
        z = z_all[:n]
        c = z.argmax(1)
        ar = np.arange(n)
        t0 = time.perf_counter()
        res = adjoint_certificate(tr, X[:n], bc, batch_size=cfg.batch, radii=tier, row_chunk=cfg.row_chunk)
        sec = time.perf_counter() - t0
        rowb = res.bound.max(1)
        row = {"n": n, "seconds": sec, "certified": int(res.certified.sum()),
               "certified_fraction": float(res.certified.mean()), "finite_bounds": int(np.isfinite(rowb).sum()),
               "median_bound": float(np.median(rowb)), "median_limit": float(np.median(res.limit)),
               "median_switching_and_remainders": float(np.median(res.switching)),
               "median_margin": float(np.median(np.sort(res.margin, 1)[:, 1])), "runs": {}}
        for be in ("emulator", "half"):
            o = obs[be][tr.output].double().numpy()[:n]
            d = o - z
            dm = np.abs(d[ar, c][:, None] - d)
            delta = np.abs(d).max(1)
            fin = delta > 0
            ratio = delta[fin] / res.predicted[fin]
            row["runs"][be] = {
                "bound_violations": int((np.abs(d) > res.bound).any(1).sum()),
                "margin_violations": int((dm > res.margin_bound).any(1).sum()),
                "certified_flips": int(((o.argmax(1) != c) & res.certified).sum()),
                "flips": int((o.argmax(1) != c).sum()), "median_delta": float(np.median(delta)),
                "median_bound_over_delta": float(np.median(rowb[fin] / delta[fin])),
                "median_limit_over_delta": float(np.median(res.limit[fin] / delta[fin])),
                "delta_over_pred": {f"q{round(100 * q):02d}": _quantile(ratio, q) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
                | {"within_0.25_2": float(np.mean((ratio >= 0.25) & (ratio <= 2.0)))}}
        out["tiers"][tier] = row
        print(f"[{tier}] {row}", flush=True)
    path = Path(cfg.out or HERE / "results" / ("adjoint_vit.json" if cfg.depth == 2 else f"adjoint_vit-depth{cfg.depth}.json"))
    write_json(path, out)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])

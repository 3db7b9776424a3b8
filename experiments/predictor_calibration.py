"""Calibration of the adjoint predictor delta_pred under each arithmetic profile (issue 15, item 3).

For each model (trained briefly in fp32, as in :mod:`experiments.analysis_runs` /
:mod:`experiments.bench_analysis`) and each profile, the emulator's fp16 logits are compared with
the fp32 logits on ``n`` test inputs: ``delta = max_i |z16_i - z32_i|`` over the predictor
``delta_pred = max_i (|mu_i| + sigma_i)`` of :func:`fpanalysis.analysis.adjoint.adjoint_certificate`
(not sound; docs/theory.md section 2.3a).  Printed and written: the q05 / q50 / q95 quantiles of
``delta / delta_pred`` and the share within ``[0.25, 2]``.

    python -m experiments.predictor_calibration                      # digits MLP, LeNet-5/MNIST, 256 images
    python -m experiments.predictor_calibration --models=mlp --n=64 --profiles=ieee
    python -m experiments.predictor_calibration --models=vgg_small --n=128
    python -m experiments.predictor_calibration --profiles=ieee --order=pairwise   # or blocked (block 32)

For profiles other than ``fp32-accumulate`` the predictor that counts one rounding per layer
output (the model before the ieee accumulation roundings were added) is reported as well, as
``output_rounding_only``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def _args(argv: list[str]) -> dict:
    cfg = {"models": "mlp,lenet5", "profiles": "fp32-accumulate,ieee", "n": "256", "fmt": "fp16", "order": "sequential",
           "out": str(HERE / "results" / "_scratch" / "predictor_calibration.json")}
    for a in argv:
        if not a.startswith("--") or "=" not in a or a[2:].split("=", 1)[0] not in cfg:
            raise SystemExit(f"unknown argument {a!r}; use --key=value with keys: {', '.join(cfg)}")
        k, v = a[2:].split("=", 1)
        cfg[k] = v
    return cfg


def _model(name: str):
    """(model, dataset) trained in fp32: digits for mlp / vgg_small (analysis_runs' recipe, 3 epochs),
    MNIST for lenet5 (bench_analysis' recipe, 300 SGD steps)."""
    import numpy as np
    import torch

    from fpanalysis.datasets import load_dataset, load_mnist5000, load_mnist_idx
    from fpanalysis.nn.models import build_model

    if name == "lenet5":
        ds = load_mnist_idx(DATA / "mnist") if (DATA / "mnist").is_dir() else load_mnist5000()
        torch.manual_seed(0)
        m = build_model("lenet5", input_shape=ds.input_shape, num_classes=ds.num_classes)
        g = torch.Generator().manual_seed(0)
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        xt, yt = torch.from_numpy(np.asarray(ds.x_train)), torch.from_numpy(np.asarray(ds.y_train)).long()
        m.train()
        for _ in range(300):
            idx = torch.randint(0, xt.shape[0], (64,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xt[idx]), yt[idx]).backward()
            opt.step()
        return m.eval(), ds
    from experiments.analysis_runs import Config, train_fp32

    ds = load_dataset("digits")
    m, _ = train_fp32(name, ds, Config())
    return m.eval(), ds


def calibration(delta, pred) -> dict:
    import numpy as np

    from fpanalysis.analysis.adjoint import _quantile

    ratio = np.where(pred > 0, delta / pred, np.where(delta > 0, np.inf, 1.0))
    return {"q05": _quantile(ratio, 0.05), "q50": _quantile(ratio, 0.5), "q95": _quantile(ratio, 0.95),
            "within_0.25_2": float(np.mean((ratio >= 0.25) & (ratio <= 2.0)))}


def main(argv: list[str]) -> dict:
    import numpy as np
    import torch

    from fpanalysis.analysis.adjoint import adjoint_certificate
    from fpanalysis.analysis.network_bounds import BoundConfig
    from fpanalysis.nn.execute import LayerEmulator, run_model
    from fpanalysis.nn.trace import trace_model

    cfg = _args(argv)
    n = int(cfg["n"])
    rows = []
    for name in cfg["models"].split(","):
        m, ds = _model(name)
        x = torch.from_numpy(np.asarray(ds.x_test[:n], dtype=np.float32))
        tr = trace_model(m)
        for prof in cfg["profiles"].split(","):
            t0 = time.perf_counter()
            order = cfg["order"] if prof == "ieee" else None  # fp32-accumulate: the emulator default (blas)
            emu = LayerEmulator(cfg["fmt"], prof, **({"order": order} if order else {}))
            out = run_model(tr, x, emulator=emu, backends=("float32", "emulator"))
            z32 = out["float32"][tr.output].double().numpy()
            z16 = out["emulator"][tr.output].double().numpy()
            res = adjoint_certificate(tr, x, BoundConfig.make(cfg["fmt"], prof, order=order))
            delta = np.abs(z16 - z32).max(1)
            row = {"model": name, "profile": prof, "order": order, "n": int(x.shape[0])} | calibration(delta, res.predicted) | {
                "median_delta": float(np.median(delta)), "seconds": time.perf_counter() - t0}
            if prof != "fp32-accumulate":
                # the output-rounding-only predictor (one rounding per layer output, as before the
                # ieee accumulation model): the fp32-accumulate configuration has the same mu and
                # gradients, and its sigma counts exactly those roundings
                old = adjoint_certificate(tr, x, BoundConfig.make(cfg["fmt"], "fp32-accumulate")).predicted
                row["output_rounding_only"] = calibration(delta, old)
            rows.append(row)
            print(f"{name:10s} {prof:16s} n={row['n']} q05 {row['q05']:.3g} q50 {row['q50']:.3g} "
                  f"q95 {row['q95']:.3g} within [0.25,2] {100 * row['within_0.25_2']:.1f}% "
                  f"({row['seconds']:.0f} s)", flush=True)
            if "output_rounding_only" in row:
                o = row["output_rounding_only"]
                print(f"{'':10s} {'(output only)':16s} n={row['n']} q05 {o['q05']:.3g} q50 {o['q50']:.3g} "
                      f"q95 {o['q95']:.3g} within [0.25,2] {100 * o['within_0.25_2']:.1f}%", flush=True)
    p = Path(cfg["out"])
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"config": cfg, "rows": rows}, indent=1))
    return {"rows": rows}


if __name__ == "__main__":
    main(sys.argv[1:])

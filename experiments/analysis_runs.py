"""Layer-by-layer rounding-error analyses of the reference models (figures 1, 3 and 4).

Each model (an MLP, a CNN with batch norm, a tiny ViT) is trained briefly in fp32 on offline
data, then :func:`fpanalysis.analysis.analyze` runs its test set in every (format, profile)
pair: measured per-layer errors against the deterministic and probabilistic bounds, and the
per-input certificates ``Gamma(x) > 2 B(x)`` against the observed agreement of the emulator
and of torch's real half kernels with fp32.

One JSON file per analysis: ``results/analysis/<dataset>-<model>-<fmt>-<profile>.json``
(:meth:`fpanalysis.report.AnalysisReport.to_json`, plus a ``"training"`` entry with the fp32
training settings and accuracy, and ``"environment_experiment"``).

    python -m experiments.analysis_runs            # about 10 minutes on 2 CPU cores
    python -m experiments.analysis_runs --smoke    # seconds, to results/_scratch/analysis_smoke/
    python -m experiments.analysis_runs --models=mlp --formats=fp16 --profiles=ieee
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from experiments._common import RESULTS, environment, parse_overrides

# model -> (optimizer, learning rate, epoch multiplier): SGD with momentum for the MLP and the
# CNN, Adam and more epochs for the ViT (it trains slowly: 69% test accuracy after 3 epochs)
TRAINING = {"mlp": ("sgd", 0.05, 1), "vgg_small": ("sgd", 0.05, 1), "vit_tiny": ("adam", 1e-3, 4),
            "lenet5": ("sgd", 0.05, 1), "resnet20": ("sgd", 0.05, 1)}


@dataclass
class Config:
    models: tuple = ("mlp", "vgg_small", "vit_tiny")
    formats: tuple = ("fp16", "bf16")
    profiles: tuple = ("fp32-accumulate", "ieee")
    dataset: str = "digits"
    epochs: int = 3
    batch_size: int = 32
    n_inputs: int = 0  # test inputs analysed (0 = the whole test set)
    failure_prob: float = 1e-6
    seed: int = 0
    out: str = str(RESULTS / "analysis")


def train_fp32(model_name: str, ds, cfg: Config):
    """Build ``model_name`` and train it in fp32; returns (model, training record)."""
    import numpy as np
    import torch

    from fpanalysis.nn.models import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(model_name, input_shape=ds.input_shape, num_classes=ds.num_classes)
    opt_name, lr, mult = TRAINING.get(model_name, ("sgd", 0.05, 1))
    epochs = cfg.epochs * mult
    opt = (torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if opt_name == "sgd"
           else torch.optim.Adam(model.parameters(), lr=lr))
    X, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train).long()
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - cfg.batch_size + 1, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(ds.x_test)).argmax(1).numpy() == np.asarray(ds.y_test)).mean())
    record = {"model": model_name, "dataset": ds.name, "optimizer": opt_name, "lr": lr, "epochs": epochs,
              "batch_size": cfg.batch_size, "seed": cfg.seed, "fp32_test_acc": acc,
              "parameters": int(sum(p.numel() for p in model.parameters())),
              "train_s": time.perf_counter() - t0}
    return model, record


def main(argv: list[str]) -> None:
    smoke = "--smoke" in argv
    cfg = parse_overrides(Config(), [a for a in argv if a != "--smoke"])
    if smoke:
        cfg = replace(cfg, models=("mlp",), formats=("fp16",), profiles=("fp32-accumulate",), epochs=1,
                      n_inputs=64, out=str(RESULTS / "_scratch" / "analysis_smoke"))
    from fpanalysis.analysis import analyze
    from fpanalysis.datasets import load_dataset

    ds = load_dataset(cfg.dataset)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    n = cfg.n_inputs or len(ds.y_test)
    x, y = ds.x_test[:n], ds.y_test[:n]
    env = environment()
    t_all = time.time()
    for model_name in cfg.models:
        model, record = train_fp32(model_name, ds, cfg)
        print(f"{model_name}: fp32 test accuracy {100 * record['fp32_test_acc']:.2f}% ({record['train_s']:.0f} s)")
        for fmt in cfg.formats:
            for profile in cfg.profiles:
                t0 = time.time()
                rep = analyze(model, x, fmt=fmt, profile=profile, failure_prob=cfg.failure_prob, progress=False,
                              labels=y, name=model_name, seed=cfg.seed)
                d = json.loads(rep.to_json())
                d["training"] = record
                d["experiment"] = {"name": "analysis_runs", "config": asdict(cfg), "n_inputs": n}
                d["environment_experiment"] = env
                path = out / f"{cfg.dataset}-{model_name}-{fmt}-{profile}.json"
                tmp = path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(d, separators=(",", ":")))
                tmp.replace(path)
                t = rep.tolerance.get("logits")
                cert = f"{100 * t.certified_fraction:.1f}%" if t is not None else "-"
                print(f"  {fmt:5s} {profile:16s} certified {cert}, accuracy {rep.accuracy}, "
                      f"bound violations {rep.violations} ({time.time() - t0:.0f} s) -> {path.name}")
    print(f"done in {time.time() - t_all:.0f} s; reports in {out}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""How the ResNet-20 / CIFAR-10 weights of the adjoint measurements (issue 15) were trained.

Two stages, as they were run on the shared 2-core CPU (the 15-epoch run was stopped after its
second epoch because the machine was overloaded; its checkpoint then reached 49.5% on the 1000
exact test images, and a short fine-tune brought it to 71.1%):

1. ``stage1``: SGD (momentum 0.9, Nesterov, weight decay 5e-4), one-cycle learning rate up to 0.1
   planned over 15 epochs, batch 128, random flips and 4-pixel shifts, on the 20000 CIFAR-10
   training images of ../shared/data; the checkpoint of epoch 2 was kept.
2. ``stage2``: from that checkpoint, 2 epochs of SGD with cosine decay from 0.05, flips only.

    python -m experiments.train_resnet20_cifar --data_root=/work/shared/data    # both stages

Writes ``experiments/results/_scratch/resnet20_e2.pt`` and ``resnet20_ft.pt`` (not committed).
Rerunning stage 1 for 2 epochs of the 15-epoch schedule reproduces the schedule as it was run.

A fully trained alternative (the one-cycle schedule run to its end, one thread, ~1 min per epoch
here; margins, and so certified fractions, grow with accuracy):

    python -m experiments.train_resnet20_cifar --data_root=/work/shared/data --epochs=25 --threads=1

writes ``experiments/results/_scratch/resnet20_e25.pt``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "_scratch"


def _data(root: str):
    from fpanalysis.datasets import load_cifar10

    return load_cifar10(Path(root) / "cifar10", test_set="exact")


def _acc(m, ds) -> float:
    import torch

    m.eval()
    with torch.no_grad():
        return float((m(torch.from_numpy(ds.x_test)).argmax(1).numpy() == ds.y_test).mean())


def stage1(ds, planned_epochs: int = 15, run_epochs: int = 2, threads: int = 2):
    import torch

    from fpanalysis.nn.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = build_model("resnet20", input_shape=ds.input_shape, num_classes=10)
    X, Y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train).long()
    bs = 128
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=planned_epochs * (len(Y) // bs))
    g = torch.Generator().manual_seed(0)
    for ep in range(run_epochs):
        _epoch(m, X, Y, bs, opt, sched, g, shifts=True)
        print(f"stage 1 epoch {ep + 1}: test acc {_acc(m, ds):.4f}", flush=True)
    return m


def _epoch(m, X, Y, bs: int, opt, sched, g, shifts: bool) -> None:
    """One epoch of SGD steps in a random order: random horizontal flips and, with ``shifts``,
    one random shift of up to 4 pixels per batch (zero padding)."""
    import torch

    m.train()
    perm = torch.randperm(len(Y), generator=g)
    for i in range(0, len(Y) - bs + 1, bs):
        idx = perm[i:i + bs]
        xb = X[idx]
        flip = torch.rand(bs, generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        if shifts:
            dx, dy = torch.randint(-4, 5, (2,), generator=g).tolist()
            xb = torch.roll(torch.nn.functional.pad(xb, (4, 4, 4, 4)), (dy, dx), (2, 3))[:, :, 4:36, 4:36]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(xb), Y[idx]).backward()
        opt.step()
        sched.step()


def stage2(m, ds, epochs: int = 2):
    import torch

    torch.manual_seed(1)
    X, Y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train).long()
    bs = 128
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (len(Y) // bs))
    g = torch.Generator().manual_seed(1)
    for ep in range(epochs):
        _epoch(m, X, Y, bs, opt, sched, g, shifts=False)
        print(f"stage 2 epoch {ep + 1}: test acc {_acc(m, ds):.4f}", flush=True)
    return m


def main(argv: list[str]) -> None:
    import torch

    root = next((a.split("=", 1)[1] for a in argv if a.startswith("--data_root=")), "/work/shared/data")
    ds = _data(root)
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    if "epochs" in opts:  # the whole one-cycle schedule, no second stage
        n = int(opts["epochs"])
        m = stage1(ds, planned_epochs=n, run_epochs=n, threads=int(opts.get("threads", 2)))
        torch.save(m.state_dict(), OUT / f"resnet20_e{n}.pt")
        print(f"done in {time.time() - t0:.0f} s")
        return
    m = stage1(ds)
    torch.save(m.state_dict(), OUT / "resnet20_e2.pt")
    m = stage2(m, ds)
    torch.save(m.state_dict(), OUT / "resnet20_ft.pt")
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])

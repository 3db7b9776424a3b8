"""Per-step cost of the operation-level observer (fpanalysis.nn.observe) vs plain training.

    PYTHONPATH=. python experiments/bench_observe.py [--batch 64] [--steps 5] [--threads 1]

For LeNet-5 (1x28x28) and ResNet-20 (3x32x32), times one SGD step (forward, backward, update)
without the observer and with every op and buffer observed, on the same model and batch, the two
alternating step by step (so that a change in machine load hits both); prints the median over
``--steps`` timed steps of each after two warm-up steps, and the ratio of the medians.  Also times the
same step under the module-hook probe's hooks (forward hooks + full backward hooks) for LeNet-5,
which has no in-place ops.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn

from fpanalysis.nn.models import build_model
from fpanalysis.nn.observe import Observer


def _time_steps(model, x, y, steps, observer):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(2 * (steps + 2)):
        watched = i % 2 == 1
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with observer.step(i) if watched else contextlib.nullcontext():
            nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 4:
            times[watched].append(time.perf_counter() - t0)
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name, shape in (("lenet5", (1, 28, 28)), ("resnet20", (3, 32, 32))):
        model = build_model(name, input_shape=shape, num_classes=10).train()
        x = torch.randn(args.batch, *shape)
        y = torch.randint(0, 10, (args.batch,))
        obs = Observer(model, "fp16", max_steps=10**6)
        off, on = _time_steps(model, x, y, args.steps, obs)
        res = obs.result()
        print(f"{name:9s} off {1e3 * off:8.1f} ms/step  observed {1e3 * on:8.1f} ms/step  ratio {on / off:5.2f}  "
              f"({len(res.ops)} op records, {len(res.buffers)} buffers)")


if __name__ == "__main__":
    main()

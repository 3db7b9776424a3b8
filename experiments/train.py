"""Train one model in one precision mode and write one JSON result (plus the weights).

    python -m experiments.train --smoke
    python -m experiments.train --model=lenet5 --dataset=mnist5000 --mode=fp16 --epochs=3
    python -m experiments.train --dataset=mnist --data_dir=../shared/data/mnist --device=cuda

Every field of :class:`Config` below can be overridden with ``--key=value``; ``--smoke`` first
shrinks the run to a few seconds on a CPU and marks the result ``"config": {"smoke": true}``.
Without ``--out`` the result goes to ``experiments/results/_scratch/runs/`` (ignored by git), so
that smoke and ad-hoc runs never reach the figures: figure 5 reads the ``runs/`` folders of
sweeps (``python -m experiments.sweep --out=...``) and skips results marked smoke.  The precision mode is one string (``fp32``,
``amp-fp16``, ``fp16``, ``bf16``, ``amp-bf16``) turned into a setup by
``fpanalysis.nn.precision.precision_policy`` and nowhere else.

A run that produces a non-finite loss or gradient (and has no dynamic loss scaler to absorb
it) is *diverged*: the step is recorded, training stops, and the result is written as usual
with ``"status": "diverged"``.  The JSON is written atomically (temporary file + rename), so a
result file either exists complete or not at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
from experiments._common import write_json

# ============================================================================================
# configuration


@dataclass
class Config:
    # --- data and model
    dataset: str = "digits"      # mnist5000 | digits | mnist1d | gaussian | mnist | cifar10
    data_dir: str = ""           # mnist / cifar10: directory of files ("" = ../shared/data/<dataset>)
    n_train: int = 0             # keep the first n training examples (0 = all)
    n_test: int = 0              # keep the first n test examples (0 = all)
    input_scale: float = 1.0     # multiply every input by this (stress tests: activations beyond fp16's range)
    model: str = "mlp"           # mlp | lenet5 | resnet20 | vgg_small | vit_tiny
    width: int = 0               # model width option (0 = the model's default)
    # --- precision
    mode: str = "fp32"           # fp32 | amp-fp16 | fp16 | bf16 | amp-bf16
    loss_scale: str = "auto"     # auto | none | static | dynamic
    init_scale: float = 0.0      # initial / static loss scale (0 = policy default)
    growth_interval: int = 2000  # clean steps before a dynamic scale doubles
    reduced_precision_reduction: str = "default"  # CUDA fp16/bf16 GEMM split-K: default | on | off
    # --- optimisation
    optimizer: str = "sgd"       # sgd (with momentum) | adam | adamw
    lr: float = 0.0              # 0 = 0.05 for sgd, 1e-3 for adam/adamw
    momentum: float = 0.9
    weight_decay: float = 0.0
    eps: float = 1e-8            # Adam/AdamW epsilon: 1e-8 rounds to 0 in fp16 (the classic failure)
    beta1: float = 0.9
    beta2: float = 0.999
    batch_size: int = 128
    epochs: int = 3
    max_steps: int = 0           # stop after this many optimizer steps (0 = no limit)
    max_consecutive_skips: int = 50  # dynamic loss scaling: this many skipped steps in a row = diverged
    eval_batch_size: int = 1024
    # --- run
    seed: int = 0                # model initialisation and batch order
    data_seed: int = 0           # train/test split of the built-in datasets (fixed across runs)
    device: str = "auto"         # auto | cpu | cuda | cuda:N
    threads: int = 0             # torch CPU threads (0 = torch default)
    out: str = ""                # result JSON ("" = experiments/results/_scratch/runs/<run_name>.json)
    weights: str = "auto"        # auto (next to the JSON, .pt) | none | <path>
    tag: str = ""                # appended to the run name
    smoke: bool = False          # set by --smoke: a plumbing check, never a figure input


SMOKE = dict(n_train=256, n_test=256, epochs=2, batch_size=64)
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
SCHEMA = "fpanalysis.train/1"


def run_name(cfg: Config) -> str:
    """Readable identifier of a run: dataset-model-mode-optimizer-seed[-tag]."""
    name = f"{cfg.dataset}-{cfg.model}-{cfg.mode}-{cfg.optimizer}-s{cfg.seed}"
    return f"{name}-{cfg.tag}" if cfg.tag else name


def result_path(cfg: Config) -> Path:
    """``cfg.out``, or for an ad-hoc run ``experiments/results/_scratch/runs/<run_name>.json``
    (ignored by git, never read by the figures)."""
    return Path(cfg.out) if cfg.out else HERE / "results" / "_scratch" / "runs" / f"{run_name(cfg)}.json"


def _convert(name: str, typ: Any, text: str) -> Any:
    if typ in (bool, "bool"):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{name}: expected a boolean, got {text!r}")
    conv = {"int": int, "float": float, "str": str, int: int, float: float, str: str}[typ]
    try:
        return conv(text)
    except ValueError:
        raise ValueError(f"--{name}: expected {conv.__name__}, got {text!r}") from None


def parse_args(argv: list[str]) -> Config:
    """``--smoke`` and ``--key=value`` overrides on top of :class:`Config`'s defaults.

    >>> parse_args(["--smoke", "--mode=fp16", "--lr=0.1"]).epochs
    2
    """
    fields = {f.name: f for f in dataclasses.fields(Config)}
    cfg = Config()
    overrides: dict[str, Any] = {}
    smoke = False
    for arg in argv:
        if arg == "--smoke":
            smoke = True
            continue
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"unrecognised argument {arg!r}: use --key=value or --smoke")
        key, _, value = arg[2:].partition("=")
        if key not in fields:
            raise ValueError(f"unknown option --{key}; valid options are: {', '.join(fields)}")
        overrides[key] = _convert(key, fields[key].type, value)
    if smoke:
        cfg = dataclasses.replace(cfg, smoke=True, **SMOKE)
    return dataclasses.replace(cfg, **overrides)


# ============================================================================================
# small utilities


# one atomic JSON writer for every experiment script (experiments/_common.py)
write_json_atomic = write_json


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _git_commit() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10, check=False).stdout.strip() or None
        dirty = None
        if commit:
            st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10, check=False).stdout
            dirty = bool(st.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"git_commit": commit or os.environ.get("FPANALYSIS_GIT_COMMIT"), "git_dirty": dirty}


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")


_DATA_CACHE: dict[tuple, Any] = {}


def _load_data(cfg: Config):
    """The run's dataset; the last one loaded is kept, so sweeps in one process load it once."""
    from fpanalysis.datasets import load_dataset

    data_dir = _resolve_data_dir(cfg)
    opts = {"seed": cfg.data_seed} if cfg.dataset in ("mnist5000", "digits", "gaussian") else {}
    key = (cfg.dataset, data_dir, cfg.n_train, cfg.n_test, tuple(sorted(opts.items())))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(cfg.dataset, data_dir=data_dir, n_train=cfg.n_train or None,
                                        n_test=cfg.n_test or None, **opts)
    ds = _DATA_CACHE[key]
    if cfg.input_scale != 1.0:
        ds = dataclasses.replace(ds, x_train=(ds.x_train * cfg.input_scale).astype("float32"),
                                 x_test=(ds.x_test * cfg.input_scale).astype("float32"))
    return ds


def _release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so
    that resident-memory growth measured from here belongs to the run that follows."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _resolve_data_dir(cfg: Config) -> str | None:
    if cfg.dataset not in ("mnist", "cifar10"):
        return None
    if cfg.data_dir:
        return cfg.data_dir
    return str(ROOT.parent / "shared" / "data" / cfg.dataset)


# ============================================================================================
# the training run


@dataclass
class Trainer:
    """A model, its optimizer and precision policy, ready to step (built by :func:`prepare`)."""

    cfg: Config
    model: Any
    optimizer: Any
    policy: Any
    lr: float
    seen_dtypes: dict = field(default_factory=dict)

    def train_step(self, xb, yb) -> dict[str, Any]:
        """One optimizer step on a batch. Returns loss, accuracy count, finiteness and skip info."""
        import torch
        import torch.nn.functional as F

        model, opt, pol = self.model, self.optimizer, self.policy
        opt.zero_grad(set_to_none=True)
        with pol.autocast():
            logits = model(pol.inputs(xb))
            loss = F.cross_entropy(logits, yb)
        pol.scaler.scale_loss(loss).backward()
        found = pol.scaler.unscale_(opt)  # gradients unscaled in place; 1.0 if any is inf/NaN
        correct = (logits.detach().argmax(1) == yb).sum()
        loss_val, n_correct, found_inf = torch.stack(
            [loss.detach().float(), correct.float(), found.to(loss.device).reshape(())]).tolist()  # one sync per step
        if "logits" not in self.seen_dtypes:
            self.seen_dtypes["logits"] = _dtype_name(logits.dtype)
            self.seen_dtypes["loss"] = _dtype_name(loss.dtype)
            self.seen_dtypes["grads"] = sorted({_dtype_name(p.grad.dtype) for p in model.parameters()
                                                if p.grad is not None})
        nonfinite = None
        if not math.isfinite(loss_val):
            nonfinite = "loss"
        elif found_inf:
            nonfinite = "gradient"
        stepped = pol.scaler.step(opt, bool(found_inf) or nonfinite is not None)
        out = {"loss": loss_val, "correct": int(n_correct), "nonfinite": nonfinite, "stepped": stepped}
        if "optimizer_state" not in self.seen_dtypes and opt.state:
            self.seen_dtypes["optimizer_state"] = sorted({
                f"{k}:{_dtype_name(v.dtype)}" for st in opt.state.values() for k, v in st.items()
                if torch.is_tensor(v) and k != "step"})
        return out


def prepare(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> Trainer:
    """Seed, build the model, apply the precision policy and build the optimizer."""
    import torch

    from fpanalysis.nn.models import build_model
    from fpanalysis.nn.precision import precision_policy

    if cfg.optimizer not in DEFAULT_LR:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid optimizers are: {', '.join(DEFAULT_LR)}")
    if cfg.reduced_precision_reduction not in ("default", "on", "off"):
        raise ValueError("reduced_precision_reduction must be one of: default, on, off")
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    policy = precision_policy(
        cfg.mode, device, loss_scale=cfg.loss_scale, init_scale=cfg.init_scale or None,
        growth_interval=cfg.growth_interval,
        reduced_precision_reduction={"default": None, "on": True, "off": False}[cfg.reduced_precision_reduction],
    )
    torch.manual_seed(cfg.seed)
    kwargs = {"width": cfg.width} if cfg.width else {}
    model = policy.prepare_model(build_model(cfg.model, input_shape=input_shape, num_classes=num_classes, **kwargs))
    lr = cfg.lr or DEFAULT_LR[cfg.optimizer]
    finfo = torch.finfo(policy.param_dtype)
    if not lr < finfo.max:
        raise ValueError(f"lr={lr:g} is not a finite {cfg.mode} number (max {finfo.max:g}): torch's optimizers "
                         f"apply it in the parameters' dtype")
    params = model.parameters()
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        opt = cls(params, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    return Trainer(cfg, model, opt, policy, lr)


def _grad_stats(model, param_dtype) -> dict[str, float]:
    """Fractions of gradient entries that are zero, subnormal in their dtype, or below fp16's
    smallest subnormal (2^-24, they would flush to zero in fp16)."""
    import torch

    grads = [p.grad.detach().float().abs().ravel() for p in model.parameters() if p.grad is not None]
    if not grads:
        return {}
    g = torch.cat(grads)
    tiny = torch.finfo(param_dtype).tiny
    n = g.numel()
    return {
        "frac_zero": float((g == 0).sum()) / n,
        "frac_subnormal": float(((g > 0) & (g < tiny)).sum()) / n,
        "frac_nonzero_below_fp16_min_subnormal": float(((g > 0) & (g < 2.0 ** -24)).sum()) / n,
        "max_abs": float(g[torch.isfinite(g)].max()) if bool(torch.isfinite(g).any()) else float("nan"),
    }


def evaluate(trainer: Trainer, x, y, batch_size: int) -> tuple[float, float]:
    """Test loss (mean cross-entropy, computed in fp32 from the logits) and accuracy."""
    import torch
    import torch.nn.functional as F

    model, pol = trainer.model, trainer.policy
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            with pol.autocast():
                logits = model(pol.inputs(xb))
            total_loss += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    model.train()
    return total_loss / max(len(y), 1), correct / max(len(y), 1)


def _nbytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def _environment(device) -> dict[str, Any]:
    import numpy as np
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    env.update(_git_commit())
    return env


def run(cfg: Config) -> dict[str, Any]:
    """Train, evaluate every epoch, save weights and the JSON result; return the result dict."""
    import torch

    t_start = time.time()
    name = run_name(cfg)
    out_path = result_path(cfg)

    ds = _load_data(cfg)
    import torch._dynamo  # noqa: F401  (imported lazily by the optimizers: keep it out of the memory growth)

    import fpanalysis.nn.models  # noqa: F401
    import fpanalysis.nn.precision  # noqa: F401

    _release_memory()
    rss_baseline = _rss_bytes()  # before the model exists: growth covers weights, grads, state, activations
    trainer = prepare(cfg, ds.input_shape, ds.num_classes)
    model, opt, pol = trainer.model, trainer.optimizer, trainer.policy
    dev = pol.device
    cuda = dev.type == "cuda"

    x_train = torch.from_numpy(ds.x_train).to(dev)
    y_train = torch.from_numpy(ds.y_train).to(dev)
    x_test = torch.from_numpy(ds.x_test).to(dev)
    y_test = torch.from_numpy(ds.y_test).to(dev)
    data_bytes = _nbytes([x_train, y_train, x_test, y_test])
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    rss_peak = _rss_bytes()

    n = len(y_train)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs  # drop the incomplete last batch (batch norm needs > 1 sample)
    gen = torch.Generator().manual_seed(cfg.seed)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    epochs: list[dict[str, Any]] = []
    step = 0
    diverged = None
    first_nonfinite = None
    consecutive_skips = 0
    train_time = 0.0
    samples_done = 0
    model.train()
    for epoch in range(cfg.epochs):
        before = [p.detach().clone() for p in model.parameters()]
        perm = torch.randperm(n, generator=gen).to(dev)
        loss_sum, correct, seen, skipped = 0.0, 0, 0, 0
        sync()
        t0 = time.perf_counter()
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            res = trainer.train_step(x_train[idx], y_train[idx])
            step += 1
            rss_peak = max(rss_peak, _rss_bytes()) if not cuda else rss_peak
            if res["nonfinite"] is not None and first_nonfinite is None:
                first_nonfinite = {"step": step, "epoch": epoch, "what": res["nonfinite"]}
            if not res["stepped"]:  # non-finite loss or gradient: skipped (dynamic scaling) or diverged
                skipped += 1
                consecutive_skips += 1
                if not pol.scaler.dynamic:
                    diverged = {"step": step, "epoch": epoch, "reason": f"non-finite {res['nonfinite']}"}
                elif consecutive_skips >= cfg.max_consecutive_skips:
                    diverged = {"step": step, "epoch": epoch,
                                "reason": f"{consecutive_skips} consecutive steps skipped by the loss scaler "
                                          f"(scale now {pol.scaler.scale:g})"}
            else:
                consecutive_skips = 0
                loss_sum += res["loss"] * len(idx)
                correct += res["correct"]
                seen += len(idx)
            if diverged or (cfg.max_steps and step >= cfg.max_steps):
                break
        sync()
        wall = time.perf_counter() - t0
        train_time += wall
        samples_done += (b + 1) * bs if steps_per_epoch else 0
        gstats = _grad_stats(model, pol.param_dtype)
        unchanged = sum(int((a == p.detach()).sum()) for a, p in zip(before, model.parameters()))
        total = sum(a.numel() for a in before)
        del before
        test_loss, test_acc = evaluate(trainer, x_test, y_test, cfg.eval_batch_size)
        if not cuda:
            rss_peak = max(rss_peak, _rss_bytes())
        epochs.append({
            "epoch": epoch, "steps": b + 1 if steps_per_epoch else 0, "wall_s": wall,
            "train_loss": loss_sum / seen if seen else float("nan"),
            "train_acc_running": correct / seen if seen else float("nan"),
            "test_loss": test_loss, "test_acc": test_acc, "skipped_steps": skipped,
            "frac_params_unchanged": unchanged / total, "grad_stats": gstats,
            "loss_scale": pol.scaler.scale,
        })
        if diverged or (cfg.max_steps and step >= cfg.max_steps):
            break

    # ---- effective settings, memory, weights
    sd = trainer.seen_dtypes
    opt_state = [v for st in opt.state.values() for k, v in st.items() if torch.is_tensor(v) and k != "step"]
    dtypes = {
        "weights": sorted({_dtype_name(p.dtype) for p in model.parameters()}),
        "buffers": sorted({_dtype_name(b.dtype) for b in model.buffers() if b.is_floating_point()}),
        "grads": sd.get("grads", []),
        "optimizer_state": sd.get("optimizer_state", []),
        "logits": sd.get("logits"),
        "loss": sd.get("loss"),
        "inputs": _dtype_name(pol.param_dtype),
    }
    params = list(model.parameters())
    memory = {
        "param_bytes": _nbytes(params),
        "grad_bytes": _nbytes([p.grad for p in params if p.grad is not None]),
        "optimizer_state_bytes": _nbytes(opt_state),
        "dataset_bytes": data_bytes,
    }
    if cuda:
        peak = int(torch.cuda.max_memory_allocated(dev))
        memory.update({"kind": "cuda_max_allocated", "peak_bytes": peak,
                       "peak_minus_dataset_bytes": peak - data_bytes})
    else:
        memory.update({"kind": "cpu_rss", "peak_bytes": rss_peak, "baseline_bytes": rss_baseline,
                       "peak_minus_baseline_bytes": rss_peak - rss_baseline,
                       "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})

    weights_info = None
    if cfg.weights != "none":
        wpath = out_path.with_suffix(".pt") if cfg.weights == "auto" else Path(cfg.weights)
        wpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = wpath.with_name(f".{wpath.name}.{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, wpath)
        blob = wpath.read_bytes()
        weights_info = {"path": str(wpath), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                        "format": "torch.save(state_dict); load with torch.load(path, weights_only=True)",
                        "dtype": _dtype_name(pol.param_dtype)}

    steady = [e for e in epochs[1:] if e["wall_s"] > 0]
    steady_samples = sum(e["steps"] * bs for e in steady)
    final = epochs[-1] if epochs else {}
    result = {
        "schema": SCHEMA,
        "status": "diverged" if diverged else "complete",
        "run_name": name,
        "config": dataclasses.asdict(cfg),
        "effective": {"lr": trainer.lr, "batch_size": bs, "steps_per_epoch": steps_per_epoch, "device": str(dev)},
        "dataset": {"name": ds.name, "description": ds.description, "n_train": int(n), "n_test": int(len(y_test)),
                    "input_shape": list(ds.input_shape), "num_classes": ds.num_classes},
        "model": {"name": cfg.model, "parameters": int(sum(p.numel() for p in params)),
                  "kwargs": {"width": cfg.width} if cfg.width else {}},
        "precision": {**pol.describe(), "loss_scale_history": pol.scaler.summary()},
        "dtypes": dtypes,
        "epochs": epochs,
        "divergence": {"diverged": diverged is not None, **(diverged or {}),
                       "first_nonfinite": first_nonfinite},
        "final": {
            "test_acc": final.get("test_acc", float("nan")),
            "test_loss": final.get("test_loss", float("nan")),
            "train_loss": final.get("train_loss", float("nan")),
            "steps": step,
            "train_time_s": train_time,
            "samples_per_s": samples_done / train_time if train_time > 0 else float("nan"),
            "steady_samples_per_s": steady_samples / sum(e["wall_s"] for e in steady) if steady else None,
        },
        "memory": memory,
        "environment": _environment(dev),
        "weights": weights_info,
        "wall_s_total": time.time() - t_start,
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(out_path, result)
    result["result_path"] = str(out_path)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        for f in dataclasses.fields(Config):
            print(f"  --{f.name}={f.default!r}")
        return 0
    try:
        cfg = parse_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = run(cfg)
    fin = res["final"]
    print(f"{res['run_name']}: {res['status']}, test acc {fin['test_acc']:.4f}, "
          f"{fin['samples_per_s']:.0f} samples/s, {fin['train_time_s']:.1f} s -> {res['result_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Figure 5: training in fp32 / amp-fp16 / fp16 / bf16 (and amp-bf16 where run): test accuracy
per epoch (mean +- standard deviation over seeds), and a table like the seed paper's (accuracy,
time and memory relative to fp32).  Two files: ``fig5_training_curves``, ``fig5_training_table``.

Input: the per-run JSON files of ``experiments/sweep.py`` (schema ``fpanalysis.train/1``) in the
``runs/`` folder of a sweep under the results directory (``cpu_sweep/*/runs/``,
``gpu_sweep/*/runs/``).  Never read (each skip is noted on stderr): results marked
``config.smoke``, anything under a folder whose name starts with ``_`` (``_scratch/``, where
``experiments.train`` writes without ``--out``), and ``runs/`` directly under the results
directory (where ad-hoc ``experiments/train.py`` runs used to land).
Keys used per run: ``schema``, ``status``, ``config.{dataset, model, optimizer, mode, tag,
seed}``, ``epochs[].{epoch, test_acc, wall_s}``, ``final.test_acc``, ``memory`` (``kind``,
``peak_minus_baseline_bytes`` or ``peak_minus_dataset_bytes``, ``param_bytes``, ``grad_bytes``,
``optimizer_state_bytes``), ``environment.{device, device_name}``.  Runs on a GPU are labelled
"GPU" with the device name, CPU runs "CPU".
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from paper_figures import style
from paper_figures._inputs import MissingInput, figure_main, find, fnum, load_json, note, reading

NAME = "fig5_training"
INPUT = "**/runs/*.json"
COMMAND = ("python -m experiments.sweep --out=experiments/results/cpu_sweep/digits --datasets=digits "
           "--models=mlp,lenet5 --modes=fp32,amp-fp16,fp16,bf16,amp-bf16 --seeds=0,1,2 --optimizers=sgd,adam "
           "--epochs=6 --batch_size=32   (GPU: bash experiments/gpu_sweep.sh)")
SCHEMA = "fpanalysis.train/1"
MODE_ORDER = ["fp32", "amp-fp16", "fp16", "bf16", "amp-bf16"]
MAX_PANELS = 12
_MODEL = {"mlp": "MLP", "lenet5": "LeNet-5", "resnet20": "ResNet-20", "vgg_small": "VGG-small", "vit_tiny": "tiny ViT"}


def _device(run: dict) -> str:
    env = run.get("environment", {})
    dev = str(env.get("device", "cpu"))
    if dev.startswith("cuda"):
        return f"GPU {env.get('device_name') or ''}".strip()
    return "CPU"


def _scratch_or_adhoc(path: Path, results_dir: Path) -> bool:
    """True for a file under a ``_``-prefixed folder or in ``results_dir/runs/`` itself."""
    rel = path.relative_to(results_dir)
    return any(part.startswith("_") for part in rel.parts[:-1]) or rel.parts[:-1] == ("runs",)


def load_runs(results_dir: str | Path) -> list[dict]:
    """Every sweep's training result (schema ``fpanalysis.train/1``) under ``results_dir``,
    without smoke runs and ad-hoc runs (see the module docstring)."""
    runs = []
    skipped = {"scratch or ad-hoc folder": 0, "marked smoke": 0}
    for p in find(results_dir, INPUT):
        if _scratch_or_adhoc(p, Path(results_dir)):
            skipped["scratch or ad-hoc folder"] += 1
            continue
        d = load_json(p)
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            continue  # some other JSON in a runs/ folder
        with reading(p):
            c = d["config"]
            if c.get("smoke", False):
                skipped["marked smoke"] += 1
                continue
            runs.append({
                "path": p, "sweep": p.parent.parent.name, "dataset": str(c["dataset"]), "model": str(c["model"]),
                "optimizer": str(c["optimizer"]), "tag": str(c.get("tag", "")), "mode": str(c["mode"]),
                "seed": int(c.get("seed", 0)), "diverged": d["status"] == "diverged", "device": _device(d),
                "curve": [(int(e["epoch"]) + 1, 100 * fnum(e["test_acc"])) for e in d["epochs"]],
                "walls": [fnum(e["wall_s"]) for e in d["epochs"]], "final": 100 * fnum(d["final"]["test_acc"]),
                "mem": _peak_mem(d["memory"]),
                "state": sum(fnum(d["memory"].get(k, 0)) for k in ("param_bytes", "grad_bytes", "optimizer_state_bytes")),
            })
    if any(skipped.values()):
        note("fig5", "not figure inputs, skipped: " + ", ".join(f"{n} run(s) {why}" for why, n in skipped.items() if n))
    return runs


def _peak_mem(m: dict) -> float:
    if m.get("kind") == "cuda_max_allocated":
        return fnum(m["peak_minus_dataset_bytes"])
    return fnum(m.get("peak_minus_baseline_bytes"))


def _mean_std(v: list[float]) -> tuple[float, float]:
    v = [x for x in v if not math.isnan(x)]
    if not v:
        return math.nan, math.nan
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def _epoch_s(r: dict) -> float:
    w = r["walls"]
    return (sum(w[1:]) / len(w[1:])) if len(w) > 1 else (w[0] if w else math.nan)


def groups(runs: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    out: dict[tuple, dict[str, list[dict]]] = {}
    for r in runs:
        key = (r["device"], r["dataset"], r["model"], r["optimizer"], r["tag"])
        out.setdefault(key, {}).setdefault(r["mode"], []).append(r)
    return out


def _title(key: tuple, device: bool = True) -> str:
    dev, ds, model, opt, tag = key
    return f"{ds}, {_MODEL.get(model, model)}, {opt}" + (f" ({tag})" if tag else "") + (f" [{dev}]" if device else "")


def _modes(by_mode: dict) -> list[str]:
    return [m for m in MODE_ORDER if m in by_mode] + sorted(m for m in by_mode if m not in MODE_ORDER)


def table_rows(gs: dict, device: bool = True) -> list[list[str]]:
    rows = []
    for key, by_mode in gs.items():
        ref = by_mode.get("fp32", [])
        ref_acc = _mean_std([r["final"] for r in ref])[0]
        ref_t = _mean_std([_epoch_s(r) for r in ref if not r["diverged"]])[0]
        ref_m = _mean_std([r["mem"] for r in ref])[0]
        ref_s = _mean_std([r["state"] for r in ref])[0]
        for mode in _modes(by_mode):
            rs = by_mode[mode]
            acc, sd = _mean_std([r["final"] for r in rs])
            t = _mean_std([_epoch_s(r) for r in rs if not r["diverged"]])[0]
            m = _mean_std([r["mem"] for r in rs])[0]
            s = _mean_std([r["state"] for r in rs])[0]

            def ratio(a: float, b: float) -> str:
                return f"{a / b:.2f}" if (not math.isnan(a) and not math.isnan(b) and b > 0) else "—"

            div = sum(r["diverged"] for r in rs)
            rows.append([_title(key, device) if mode == _modes(by_mode)[0] else "", mode, f"{len(rs)}" + (f" ({div})" if div else ""),
                         f"{acc:.2f} ± {sd:.2f}", f"{acc - ref_acc:+.2f}" if ref else "—", ratio(t, ref_t),
                         ratio(m, ref_m), ratio(s, ref_s)])
    return rows


def make(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure 5 (curves and table) from the sweep results under ``results_dir``; return the files."""
    runs = load_runs(results_dir)
    if not runs:
        raise MissingInput(f"training runs ({Path(results_dir) / INPUT}, schema {SCHEMA})", COMMAND)
    gs = groups(runs)
    devices = sorted({k[0] for k in gs})
    one_dev = len(devices) == 1
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    paths: list[Path] = []
    keys = list(gs)[:MAX_PANELS]
    ncol = min(4, len(keys))
    nrow = -(-len(keys) // ncol)
    with style.context():
        fig, axes = plt.subplots(nrow, ncol, figsize=(style.DOUBLE, 1.9 * nrow + 0.5), squeeze=False,
                                 layout="constrained")
        for ax, key in zip(axes.flat, keys):
            by_mode = gs[key]
            for mode in _modes(by_mode):
                rs = by_mode[mode]
                epochs = sorted({e for r in rs for e, _ in r["curve"]})
                mean, lo, hi = [], [], []
                for e in epochs:
                    m, s = _mean_std([a for r in rs for ee, a in r["curve"] if ee == e])
                    mean.append(m)
                    lo.append(m - s)
                    hi.append(m + s)
                c = style.color("mode", mode)
                div = sum(r["diverged"] for r in rs)
                label = mode + (f" ({div}/{len(rs)} diverged)" if div else "")
                ax.plot(epochs, mean, color=c, marker="o" if not div else "X", markersize=3 if not div else 5,
                        label=label)
                ax.fill_between(epochs, lo, hi, color=c, alpha=0.15, lw=0)
            ax.set_title(_title(key, not one_dev), fontsize=7)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("test accuracy (%)")
            ax.set_ylim(0, 100)
            ax.legend(loc="lower right", fontsize=5.5, handlelength=1.2)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        n_seeds = sorted({len(v) for by in gs.values() for v in by.values()})
        fig.suptitle("Test accuracy during training, mean ± std over "
                     + "/".join(map(str, n_seeds)) + " seeds" + (f" (runs on {devices[0]})" if one_dev else ""),
                     fontsize=8.5)
        paths += style.save_figure(fig, f"{NAME}_curves", out_dir)

        rows = table_rows(gs, not one_dev)
        cols = ["dataset, model, optimizer" + ("" if one_dev else " [device]"), "mode", "runs\n(diverged)",
                "test acc. %\nmean ± std", "Δ acc. vs\nfp32 (pts)", "epoch time\n× fp32", "peak mem\n× fp32",
                "w+g+opt\n× fp32"]
        fig = plt.figure(figsize=(style.DOUBLE, 0.17 * len(rows) + 0.9))
        ax = fig.add_subplot(111)
        ax.axis("off")
        tb = ax.table(cellText=rows, colLabels=cols, loc="upper center", cellLoc="center",
                      colWidths=[0.26, 0.09, 0.09, 0.14, 0.105, 0.105, 0.105, 0.105])
        tb.auto_set_font_size(False)
        tb.set_fontsize(6.2)
        tb.scale(1, 1.05)
        for (i, j), cell in tb.get_celld().items():
            cell.set_linewidth(0.3)
            if i == 0:
                cell.set_text_props(fontweight="bold")
                cell.set_facecolor("0.9")
                cell.set_height(cell.get_height() * 1.9)
            elif j == 0:
                cell.set_text_props(ha="left")
                cell.PAD = 0.02
            if i > 0 and j == 1:
                cell.set_text_props(color=style.color("mode", rows[i - 1][1]))
        ax.set_title("Final test accuracy, steady-state epoch time, peak memory growth and bytes of weights + "
                     "gradients + optimizer state,\nrelative to fp32"
                     + (f" (runs on {devices[0]}" if one_dev else " (")
                     + ("; CPU times and memory are noisy and say nothing about a GPU)" if "CPU" in devices else ")"),
                     fontsize=7)
        paths += style.save_figure(fig, f"{NAME}_table", out_dir)
    return paths


if __name__ == "__main__":
    raise SystemExit(figure_main(make, __doc__))

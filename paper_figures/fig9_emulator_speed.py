"""Figure 9: emulator speed against the baselines measured in the same run: time per call of
each method of ``experiments/bench_emulator.py`` (rounding, GEMM, exact dot product), and
GEMM throughput of ``experiments/bench_gemm.py`` against numpy's float32 BLAS with the goal
ratios of issue 2.

Inputs (either is enough):

* ``bench_emulator.json``: ``results[]`` with ``benchmark``, ``seconds`` (method -> s), optional
  ``goals``/``ratios``; ``environment`` optional;
* ``bench_gemm*.json``: ``config.{n, threads, goals}``, ``results.<method>.gflops_wall_min``
  (the BLAS baseline is ``numpy_fp32_blas``), ``environment.{cpu_model, numba_threads}``.
"""
from __future__ import annotations

import math
from pathlib import Path

from paper_figures import style
from paper_figures._inputs import MissingInput, figure_main, find, fnum, load_json, note, reading

NAME = "fig9_emulator_speed"
INPUT = "bench_emulator.json, bench_gemm*.json"
COMMAND = ("python -m experiments.bench_emulator   and/or   "
           "python -m experiments.bench_gemm --threads=1 --out=experiments/results/bench_gemm_1thread.json")
EMULATOR = "#D55E00"
BASELINE = "#7F7F7F"


def _is_ours(method: str) -> bool:
    return method.startswith(("fpanalysis", "ieee", "fp32acc", "exact_dot"))


def _label(method: str) -> str:
    return method.replace("fpanalysis_", "fpa ").replace("_", " ")


def _emulator_panels(path: Path) -> list[dict]:
    d = load_json(path)
    out = []
    with reading(path):
        dev = d.get("environment", {}).get("platform", "")
        for r in d["results"]:
            secs = {str(k): fnum(v) for k, v in r["seconds"].items()}
            goals = r.get("goals", {}) or {}
            ratios = r.get("ratios", {}) or {}
            met = [f"{k} = {fnum(ratios[k]):.3g} (goal {fnum(g):g})" for k, g in goals.items() if k in ratios]
            title = str(r["benchmark"]) + (" (quick sizes)" if d.get("quick") else "")
            out.append({"kind": "times", "title": title, "values": secs, "notes": met, "device": dev})
    return out


def _gemm_panel(path: Path) -> dict:
    d = load_json(path)
    with reading(path):
        res = d["results"]
        gf = {str(k): fnum(v["gflops_wall_min"]) for k, v in res.items()}
        cfg = d.get("config", {})
        env = d.get("environment", {})
        goals = {str(k): fnum(v) for k, v in cfg.get("goals", {}).items()}
        threads = cfg.get("threads") or env.get("numba_threads") or "default"
        title = (f"fp16 GEMM {cfg.get('n', '?')}³, {threads} thread(s)"
                 + (f"\n{env['cpu_model']}" if env.get("cpu_model") else ""))
        return {"kind": "gflops", "title": title, "values": gf, "goals": goals, "name": path.name}


def make(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure 9 from the benchmark JSON files in ``results_dir``; return the files."""
    root = Path(results_dir)
    panels: list[dict] = []
    emu = root / "bench_emulator.json"
    if emu.is_file():
        panels += _emulator_panels(emu)
    else:
        note(NAME, f"{emu} missing (python -m experiments.bench_emulator): drawing the GEMM benchmark only")
    gemm = find(root, "bench_gemm*.json")
    panels += [_gemm_panel(p) for p in gemm]
    if not panels:
        raise MissingInput(f"{emu} and {root / 'bench_gemm*.json'}", COMMAND)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    with style.context():
        ncol = min(2, len(panels))
        nrow = -(-len(panels) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(style.DOUBLE if ncol > 1 else style.SINGLE + 0.6,
                                                      2.6 * nrow + 0.3), squeeze=False, layout="constrained")
        for ax, p in zip(axes.flat, panels):
            items = [(k, v) for k, v in p["values"].items() if v > 0 and math.isfinite(v)]
            if p["kind"] == "times":  # dots on a log axis: bar lengths would depend on an arbitrary origin
                items.sort(key=lambda kv: kv[1])
                ys = list(range(len(items)))
                ax.scatter([v for _, v in items], ys, s=22, zorder=3,
                           color=[EMULATOR if _is_ours(k) else BASELINE for k, _ in items])
                ax.set_yticks(ys)
                ax.set_yticklabels([_label(k) for k, _ in items])
                ax.set_ylim(len(items) - 0.5, -0.5)
                ax.set_xscale("log")
                lo, hi = min(v for _, v in items), max(v for _, v in items)
                ax.set_xlim(lo / 2, hi * 2)
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.grid(axis="y", visible=True, alpha=0.2)
                ax.set_xlabel("time per call (s, best of repeats)")
                if p["notes"]:
                    p["title"] += "\n" + "\n".join(p["notes"])
            else:
                items.sort(key=lambda kv: -kv[1])
                ax.barh([_label(k) for k, _ in items], [v for _, v in items],
                        color=[EMULATOR if _is_ours(k) else BASELINE for k, _ in items])
                blas = p["values"].get("numpy_fp32_blas")
                if blas:
                    for k, g in p["goals"].items():
                        if k in p["values"]:
                            y = [m for m, _ in items].index(k)
                            ax.plot([g * blas] * 2, [y - 0.4, y + 0.4], color="black", linewidth=1.5)
                    ax.plot([], [], color="black", linewidth=1.5, label="goal (fraction of BLAS)")
                    ax.legend(loc="upper right", bbox_to_anchor=(1.0, -0.22), fontsize=6)
                ax.set_xlabel("throughput (GFLOP/s, best wall time)")
                ax.invert_yaxis()
                ax.grid(axis="y", visible=False)
            ax.tick_params(axis="y", labelsize=6)
            ax.set_ylabel("method")
            ax.set_title(p["title"], fontsize=6.5)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.legend(handles=[plt.matplotlib.patches.Patch(color=EMULATOR, label="fpanalysis emulator"),
                            plt.matplotlib.patches.Patch(color=BASELINE, label="baseline")],
                   loc="outside lower center", ncol=2)
        return style.save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    raise SystemExit(figure_main(make, __doc__))

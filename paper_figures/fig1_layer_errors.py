"""Figure 1: per-layer rounding error, measured against the deterministic and probabilistic
bounds (log scale), one row per model and one column per arithmetic profile; one figure per
format (``fig1_layer_errors_<fmt>``).

Input: ``analysis/*.json`` (``python -m experiments.analysis_runs``), see
:mod:`paper_figures._analysis` for the keys.  Per layer: ``err_max`` (emulated run vs fp32,
max over inputs and entries), ``half_err_max`` (torch's real half kernels vs fp32; drawn for fp16 only, since the analysis
runs torch's kernels in fp16 whatever the format), the
propagated bounds ``bound_max`` / ``bound_prob_max``, and the layer's own ("local") error
``local_err_max`` against its local bound ``local_bound_max``.
"""
from __future__ import annotations

import math
from pathlib import Path

from paper_figures import style
from paper_figures._analysis import (
    PATTERN,
    ROUNDING_KINDS_EXCLUDED,
    load_reports,
    model_label,
)
from paper_figures._inputs import figure_main, fnum, reading

NAME = "fig1_layer_errors"
INPUT = PATTERN

SERIES = [  # key, label, style
    ("err_max", "measured |emulated − fp32| (max)", dict(style.MEASURED, color="#D55E00")),
    ("half_err_max", "measured |torch fp16 kernels − fp32| (max)", {"linestyle": "none", "marker": "x",
                                                                       "markersize": 3.5, "color": "black"}),
    ("bound_max", "deterministic bound (propagated)", dict(style.DET_BOUND, color="#0072B2", linewidth=2.0,
                                                           alpha=0.7, marker="_", markersize=5)),
    ("bound_prob_max", "probabilistic bound (propagated)", dict(style.PROB_BOUND, color="#009E73", marker="_",
                                                                markersize=4)),
    ("local_err_max", "layer's own error (max)", {"linestyle": ":", "marker": ".", "markersize": 2.5,
                                                      "linewidth": 0.8, "color": "#E69F00"}),
    ("local_bound_max", "layer's own error bound", {"linestyle": ":", "linewidth": 0.8, "color": "#56B4E9"}),
]


def _pos(v: float) -> float:
    return v if (v > 0 and math.isfinite(v)) else math.nan


def _layers(rep: dict) -> list[dict]:
    return [lr for lr in rep["layers"] if lr["kind"] not in ROUNDING_KINDS_EXCLUDED]


def make(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure 1 (one file pair per format) from ``results_dir/analysis/``; return the files."""
    reports = load_reports(results_dir)
    fmts = list(dict.fromkeys(r["fmt"] for r in reports))
    models = list(dict.fromkeys(r["model"] for r in reports))
    profiles = list(dict.fromkeys(r["profile"] for r in reports))
    data = {}
    for r in reports:
        with reading(r["path"]):
            ls = _layers(r["report"])
            data[r["model"], r["fmt"], r["profile"]] = {
                "names": [str(lr.get("path") or lr["name"]) for lr in ls],
                "series": {k: [_pos(fnum(lr.get(k))) for lr in ls] for k, *_ in SERIES},
                "inf_bound": [math.isinf(fnum(lr.get("bound_max"))) for lr in ls],
                "n": r["report"]["config"].get("n_inputs"),
            }
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    for fmt in fmts:
        with style.context():
            heights = [1.0 + 0.0 * i for i in range(len(models))]
            fig, axes = plt.subplots(len(models), len(profiles), figsize=(style.DOUBLE, 2.35 * len(models) + 0.5),
                                     squeeze=False, gridspec_kw={"height_ratios": heights}, layout="constrained")
            for i, m in enumerate(models):
                for j, prof in enumerate(profiles):
                    ax = axes[i][j]
                    cell = data.get((m, fmt, prof))
                    if cell is None:
                        ax.text(0.5, 0.5, f"no result for {m}, {fmt}, {prof}", transform=ax.transAxes,
                                ha="center", va="center", color="0.4")
                        ax.set_xticks([])
                        ax.set_xlabel("layer")
                        ax.set_ylabel("abs. error (output units)")
                        continue
                    x = list(range(len(cell["names"])))
                    for key, label, st in SERIES:
                        if key == "half_err_max" and fmt != "fp16":  # the analysis runs torch's kernels in fp16
                            continue
                        ys = cell["series"][key]
                        if any(not math.isnan(v) for v in ys):
                            ax.semilogy(x, ys, label=label, **st)
                    inf = [k for k, v in enumerate(cell["inf_bound"]) if v]
                    if inf:
                        ax.plot(inf, [0.97] * len(inf), linestyle="none", marker="^", markersize=4, color="#0072B2",
                                transform=ax.get_xaxis_transform(), clip_on=False,
                                label="deterministic bound infinite (vacuous, or overflow not excluded)")
                    ax.set_xticks(x)
                    small = 5.5 if len(x) > 24 else 6.5
                    ax.set_xticklabels([style.short_layer(s, 16) for s in cell["names"]], rotation=90, fontsize=small)
                    ax.set_xlim(-0.5, len(x) - 0.5)
                    ax.set_title(f"{model_label(m)}, {prof}")
                    ax.set_ylabel("abs. error (output units)")
                    ax.set_xlabel("layer (execution order)")
                    style.panel_label(ax, "abcdefghijklmnop"[i * len(profiles) + j])
            ns = sorted({c["n"] for (mm, f, pp), c in data.items() if f == fmt and c["n"]})
            fig.suptitle(f"Per-layer error in {fmt}" + (f" ({', '.join(map(str, ns))} test inputs per model)" if ns else ""),
                         fontsize=9)
            handles, labels = [], []
            for ax in axes.flat:
                for h, lb in zip(*ax.get_legend_handles_labels()):
                    if lb not in labels:
                        handles.append(h)
                        labels.append(lb)
            fig.legend(handles, labels, loc="outside lower center", ncol=3)
            paths += style.save_figure(fig, f"{NAME}_{fmt}", out_dir)
    return paths


if __name__ == "__main__":
    raise SystemExit(figure_main(make, __doc__))

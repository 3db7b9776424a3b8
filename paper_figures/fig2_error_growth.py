"""Figure 2: dot-product error growth with the length n against gamma_n, the fp32-accumulate
bound and the probabilistic lambda sqrt(n) u, for fp16 and bf16.

Input: ``error_growth.json`` (``python -m experiments.error_growth``).  Keys used: ``rows[]``
with ``format``, ``distribution``, ``n``, ``errors.<method>.max`` and ``bounds.{gamma_n,
gamma_pairwise, fp32_accumulate, gamma_tilde}``; ``vacuous_n`` (optional; else from ``u``),
``config.trials`` (optional).
"""
from __future__ import annotations

import math
from pathlib import Path

from paper_figures import style
from paper_figures._inputs import MissingInput, figure_main, fnum, load_json, reading

NAME = "fig2_error_growth"
INPUT = "error_growth.json"
COMMAND = "python -m experiments.error_growth"

METHOD_LABELS = {
    "ieee/sequential": "all ops in format, sequential",
    "ieee/pairwise": "all ops in format, pairwise",
    "fp32-accumulate/sequential": "fp32 accumulation",
}
BOUNDS = [  # key, label, method colour it belongs to, style
    ("gamma_n", r"$\gamma_n$ (sequential)", "ieee/sequential", style.DET_BOUND),
    ("gamma_pairwise", r"$\gamma_{\lceil\log_2 n\rceil+1}$ (pairwise)", "ieee/pairwise", style.DET_BOUND),
    ("fp32_accumulate", "fp32-accumulate bound", "fp32-accumulate/sequential", style.DET_BOUND),
    ("gamma_tilde", r"$\tilde\gamma_n(\lambda)\approx\lambda\sqrt{n}\,u$ (prob. $1-10^{-6}$)", None, style.PROB_BOUND),
]


def _pos(v: float) -> float:
    return v if (v > 0 and math.isfinite(v)) else math.nan


def make(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure 2 from ``results_dir/error_growth.json`` into ``out_dir``; return the files."""
    path = Path(results_dir) / INPUT
    if not path.is_file():
        raise MissingInput(f"{path}", COMMAND)
    d = load_json(path)
    with reading(path):
        rows = d["rows"]
        fmts = list(dict.fromkeys(r["format"] for r in rows))
        dists = list(dict.fromkeys(r["distribution"] for r in rows))
        methods = [m for m in METHOD_LABELS if any(m in r["errors"] for r in rows)]
        vacuous = {k: int(v) for k, v in d.get("vacuous_n", {}).items()}
        for r in rows:
            vacuous.setdefault(r["format"], math.ceil(1.0 / fnum(r["u"])))
        trials = d.get("config", {}).get("trials")
        series = {}
        for f in fmts:
            for dist in dists:
                rs = sorted((r for r in rows if r["format"] == f and r["distribution"] == dist), key=lambda r: r["n"])
                n = [int(r["n"]) for r in rs]
                meas = {m: [_pos(fnum(r["errors"][m]["max"])) if m in r["errors"] else math.nan for r in rs]
                        for m in methods}
                bnd = {k: [_pos(fnum(r["bounds"].get(k))) for r in rs] for k, *_ in BOUNDS}
                series[f, dist] = (n, meas, bnd)
    import matplotlib.pyplot as plt

    dist_label = {"uniform": "entries uniform in [0, 1)", "normal": "entries standard normal"}
    with style.context():
        fig, axes = plt.subplots(len(dists), len(fmts), figsize=(style.DOUBLE, 2.3 * len(dists) + 0.7),
                                 sharex=True, sharey=True, squeeze=False)
        for i, dist in enumerate(dists):
            for j, f in enumerate(fmts):
                ax = axes[i][j]
                n, meas, bnd = series[f, dist]
                for m in methods:
                    ax.loglog(n, meas[m], color=style.color("method", m), **style.MEASURED,
                              label=f"measured: {METHOD_LABELS[m]}")
                for key, label, m, st in BOUNDS:
                    c = style.color("method", m) if m else "black"
                    ax.loglog(n, bnd[key], color=c, **st, label=label)
                nv = vacuous.get(f)
                if nv and n and n[0] <= nv <= n[-1] * 1.5:
                    ax.axvline(nv, color="0.35", linestyle=":", linewidth=1.0)
                    ax.text(nv / 1.1, 0.03, rf"$\gamma_n$ vacuous for" "\n" rf"$n\geq{nv}$ ($nu\geq1$)",
                            transform=ax.get_xaxis_transform(), fontsize=6.5, va="bottom", ha="right", color="0.25")
                ax.set_title(f"{f}, {dist_label.get(dist, dist)}")
                if i == len(dists) - 1:
                    ax.set_xlabel("dot-product length $n$ (terms)")
                if j == 0:
                    ax.set_ylabel(r"relative error $|\hat s-s|\,/\,|x|^T|y|$"
                                  + (f"\n(max of {trials} vector pairs)" if trials else ""))
                style.panel_label(ax, "abcdefgh"[i * len(fmts) + j])
        axes[0][0].set_ylim(1e-6, 3.0)
        handles, labels = axes[0][0].get_legend_handles_labels()
        k = len(methods)
        fig.legend(handles[:k], labels[:k], loc="lower center", ncol=k, bbox_to_anchor=(0.5, 0.045))
        fig.legend(handles[k:], labels[k:], loc="lower center", ncol=len(BOUNDS), bbox_to_anchor=(0.5, -0.005))
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        return style.save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    raise SystemExit(figure_main(make, __doc__))

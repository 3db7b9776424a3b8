"""Figure 4: certified against observed agreement with fp32, across models and formats (one
panel per arithmetic profile).  Per (model, format): the fraction of test inputs certified
a priori (``Gamma > 2B``, deterministic and probabilistic bound), the fraction where the seed
paper's a-posteriori condition ``Gamma > 2 delta`` holds, and the observed agreement of the
emulated run and of torch's real half kernels with the fp32 class (fp16 only: the analysis
runs torch's half kernels in fp16 whatever the format).  By construction
certified <= lemma <= observed (for the run the bound covers).

Where the report has the adjoint certificate (``certificate.method == "adjoint"``), its own
fraction is drawn beside the interval one, and, side by side with them, what the limit of any
interval-style bound would certify (``Gamma > 2 limit``, ``per_input.adjoint.limit``) and what the
calibrated predictor expects (``Gamma > 2 delta_pred``: NOT sound), so that certified, limit,
predicted and observed can be compared (docs/theory.md section 2.3a).

Input: ``analysis/*.json`` (``python -m experiments.analysis_runs``): ``tolerance.logits`` with
``n``, ``certified``, ``certified_prob``, ``runs.<run>.{agree, n, lemma_applies}``; optional
``certificate.{method, certified_adjoint, certified_interval}`` and ``per_input.adjoint.{limit,
predicted}`` with ``per_input.logits.gamma``.
"""
from __future__ import annotations

from pathlib import Path

from paper_figures import style
from paper_figures._analysis import PATTERN, load_reports, model_label
from paper_figures._inputs import figure_main, fnum, reading

NAME = "fig4_agreement"
INPUT = PATTERN
SPACE = "logits"

BARS = [  # key, label, colour, hatch
    ("certified", r"certified a priori (sound: either certificate)", "#009E73", None),
    ("certified_adjoint", "certified a priori by the adjoint certificate alone", "#56B4E9", None),
    ("certified_prob", r"certified a priori ($\Gamma>2B$, probabilistic $B$)", "#8FD3BE", None),
    ("limit", r"limit: $\Gamma>2\sum|g|\bar e$ (no interval-style bound does better)", "#0072B2", None),
    ("predicted", r"predicted: $\Gamma>2\delta_{pred}$ (calibrated, not sound)", "#E69F00", None),
    ("lemma", r"lemma applies a posteriori ($\Gamma>2\delta$, emulator)", "#CC79A7", None),
    ("emulator", "same class as fp32: emulator", "#D55E00", None),
    ("torch-half", "same class as fp32: torch fp16 kernels (fp16 rows only)", "#555555", None),
]


def _row(rep: dict) -> dict:
    t = rep["tolerance"][SPACE]
    n = int(t["n"])
    runs = t.get("runs", {})
    out = {"n": n, "certified": int(t["certified"]) / n, "certified_prob": int(t["certified_prob"]) / n}
    if "emulator" in runs:
        out["emulator"] = int(runs["emulator"]["agree"]) / int(runs["emulator"]["n"])
        out["lemma"] = int(runs["emulator"]["lemma_applies"]) / int(runs["emulator"]["n"])
    if "torch-half" in runs and rep.get("config", {}).get("fmt") == "fp16":  # torch's half run is always fp16
        out["torch-half"] = int(runs["torch-half"]["agree"]) / int(runs["torch-half"]["n"])
    cert = rep.get("certificate") or {}
    if cert.get("method") == "adjoint":
        out["certified_adjoint"] = int(cert["certified_adjoint"]) / n
    adj = rep.get("per_input", {}).get("adjoint")
    gam = rep.get("per_input", {}).get(SPACE, {}).get("gamma")
    if adj and gam is not None:
        g = [fnum(v) for v in gam]
        for key in ("limit", "predicted"):
            v = [fnum(a) for a in adj[key]]
            if len(v) != len(g):
                raise ValueError(f"per_input.adjoint.{key} and per_input.{SPACE}.gamma differ in length")
            out[key] = sum(1 for a, b in zip(g, v) if a > 2 * b) / len(g)
    return out


def make(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure 4 from ``results_dir/analysis/``; return the files."""
    reports = load_reports(results_dir)
    rows: dict[tuple[str, str, str], dict] = {}
    for r in reports:
        with reading(r["path"]):
            rows[r["model"], r["fmt"], r["profile"]] = _row(r["report"])
    profiles = list(dict.fromkeys(k[2] for k in rows))
    cats = list(dict.fromkeys((k[0], k[1]) for k in rows))
    import matplotlib.pyplot as plt

    nb = len(BARS)
    h = 0.8 / nb
    with style.context():
        fig, axes = plt.subplots(1, len(profiles), figsize=(style.DOUBLE, 0.62 * len(cats) + 1.3), sharey=True,
                                 squeeze=False, layout="constrained")
        ys = list(range(len(cats)))[::-1]
        for j, prof in enumerate(profiles):
            ax = axes[0][j]
            for k in range(len(cats)):
                if k % 2 == 0:
                    ax.axhspan(ys[k] - 0.5, ys[k] + 0.5, color="0.95", lw=0, zorder=0)
            for b, (key, label, col, _) in enumerate(BARS):
                for k, (m, f) in enumerate(cats):
                    row = rows.get((m, f, prof))
                    y = ys[k] + 0.4 - h * (b + 0.5)
                    if row is None or key not in row:
                        continue
                    v = 100 * row[key]
                    ax.barh(y, v, height=h * 0.92, color=col, label=label if k == 0 else None, zorder=2)
                    ax.text(v + 1 if v < 85 else v - 1, y, f"{v:.1f}", va="center", ha="left" if v < 85 else "right",
                            fontsize=5.5, color="black" if v < 85 else "white", zorder=3)
            ax.set_xlim(0, 100)
            ax.set_ylim(-0.5, len(cats) - 0.5)
            ax.set_xlabel("test inputs (%)")
            ax.set_title(f"{prof} arithmetic")
            ax.grid(axis="y", visible=False)
            style.panel_label(ax, "abcd"[j])
        axes[0][0].set_ylabel("model, format")
        axes[0][0].set_yticks(ys)
        axes[0][0].set_yticklabels([f"{model_label(m)}\n{f}" for m, f in cats])
        ns = sorted({r["n"] for r in rows.values()})
        handles, labels = [], []
        for ax in axes[0]:
            for hd, lb in zip(*ax.get_legend_handles_labels()):
                if lb not in labels:
                    handles.append(hd)
                    labels.append(lb)
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=6.5)
        fig.suptitle("Certified vs observed agreement with the fp32 class"
                     + (f" ({', '.join(map(str, ns))} test inputs each)" if ns else ""), fontsize=8.5)
        return style.save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    raise SystemExit(figure_main(make, __doc__))

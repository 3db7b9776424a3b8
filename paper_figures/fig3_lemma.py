"""Figure 3: the seed paper's lemma made predictive.  Per input, the classification tolerance
``Gamma(x)`` (top-1 minus top-2 fp32 logit) against the measured error ``delta(x) =
||M32(x) - M16(x)||_inf`` (top row) and against the a-priori bound ``B(x)`` computed from the fp32
run alone (bottom row), with the line ``Gamma = 2 delta`` (resp. ``Gamma = 2 B``).  Yun et al.
(arXiv:2305.10947) prove ``Gamma > 2 delta => same class``; ``Gamma > 2 B`` certifies it before
any low-precision run.  Points: certified (``Gamma > 2 B``), agreed but not certified, flipped
(the low-precision class differs).  One figure per format (``fig3_lemma_<fmt>``), profile
``fp32-accumulate`` when present.

Third row, where the report has the adjoint certificate (``per_input.adjoint``): per input,
sorted by the observed error, side by side: the observed ``delta(x)``, the calibrated (NOT sound)
prediction ``delta_pred(x)``, the limit of any interval-style bound ``sum |g| e_bar``, the sound
adjoint bound on ``max_i |z16_i - z32_i|``, and half the margin ``Gamma(x) / 2`` (docs/theory.md
section 2.3a).

Input: ``analysis/*.json`` (``python -m experiments.analysis_runs``): ``per_input.logits``
with ``gamma``, ``B``, ``certified``, ``class_fp32``, ``delta_<run>``, ``class_<run>`` (run
``emulator``, else the first one present).
"""
from __future__ import annotations

import math
from pathlib import Path

from paper_figures import style
from paper_figures._analysis import COMMAND, PATTERN, PROFILE_ORDER, load_reports, model_label
from paper_figures._inputs import MissingInput, figure_main, fnum, reading

NAME = "fig3_lemma"
INPUT = PATTERN
SPACE = "logits"
RUN_PREFERENCE = ("emulator", "torch-half", "cuda-half")
LABELS = {"certified": r"certified ($\Gamma>2B$), agreed", "agreed": "agreed, not certified",
          "flipped": "flipped class"}


def _points(rep: dict) -> dict:
    per = rep["per_input"][SPACE]
    runs = [k[len("delta_"):] for k in per if k.startswith("delta_")]
    if not runs:
        raise KeyError(f"per_input.{SPACE}.delta_<run>")
    run = next((r for r in RUN_PREFERENCE if r in runs), runs[0])
    g = [fnum(v) for v in per["gamma"]]
    d = [fnum(v) for v in per[f"delta_{run}"]]
    b = [fnum(v) for v in per["B"]]
    cert = [bool(v) for v in per["certified"]]
    same = [int(a) == int(c) for a, c in zip(per["class_fp32"], per[f"class_{run}"])]
    if not (len(g) == len(d) == len(b) == len(cert) == len(same)):
        raise ValueError("per-input arrays of different lengths")
    outcome = ["flipped" if not s else ("certified" if c else "agreed") for s, c in zip(same, cert)]
    out = {"run": run, "gamma": g, "delta": d, "B": b, "outcome": outcome}
    adj = rep["per_input"].get("adjoint")
    if adj:
        out["adjoint"] = {k: [fnum(v) for v in adj[k]] for k in ("bound", "limit", "predicted")}
        if any(len(v) != len(g) for v in out["adjoint"].values()):
            raise ValueError("per_input.adjoint arrays of a different length than per_input.logits")
    return out


#: third row: (key, label, colour, marker)
SIDE = [("gamma2", r"$\Gamma(x)/2$ (half the margin)", "0.55", "_"),
        ("bound", "sound adjoint bound (certified)", "#009E73", "v"),
        ("limit", r"limit $\sum|g|\bar e$ of interval-style bounds", "#0072B2", "^"),
        ("predicted", r"predicted $\delta_{pred}$ (calibrated, not sound)", "#E69F00", "s"),
        ("delta", r"observed $\delta(x)$", "#D55E00", "o")]


def _side_by_side(ax, p: dict) -> None:
    """Per input (sorted by delta): observed, predicted, limit, sound bound, Gamma / 2 (log scale)."""
    n = len(p["delta"])
    order = sorted(range(n), key=lambda k: p["delta"][k] if math.isfinite(p["delta"][k]) else math.inf)
    vals = dict(p["adjoint"], delta=p["delta"], gamma2=[v / 2 for v in p["gamma"]])
    shown = 0
    for key, label, col, mk in SIDE:
        xs = [i for i, k in enumerate(order) if vals[key][k] > 0 and math.isfinite(vals[key][k])]
        ys = [vals[key][order[i]] for i in xs]
        ax.scatter(xs, ys, s=5, marker=mk, color=col, linewidths=0.6 if mk == "_" else 0, alpha=0.8, label=label)
        shown += len(xs)
    n_inf = sum(1 for v in p["adjoint"]["bound"] if math.isinf(v))
    if n_inf:
        ax.text(0.98, 0.02, f"sound bound infinite for {n_inf} of {n} inputs (not drawn)", fontsize=6,
                transform=ax.transAxes, ha="right", va="bottom", color="0.3")
    if shown:
        ax.set_yscale("log")
    ax.set_xlabel("test inputs, sorted by the observed error", fontsize=7)


def make(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure 3 (one file pair per format) from ``results_dir/analysis/``; return the files."""
    reports = load_reports(results_dir)
    chosen: dict[str, list[dict]] = {}
    for fmt in dict.fromkeys(r["fmt"] for r in reports):
        profs = [r["profile"] for r in reports if r["fmt"] == fmt]
        prof = next((p for p in PROFILE_ORDER if p in profs), profs[0])
        chosen[fmt] = [r for r in reports if r["fmt"] == fmt and r["profile"] == prof
                       and SPACE in r["report"].get("per_input", {})]
    if not any(chosen.values()):
        raise MissingInput(f"per-input results in {Path(results_dir) / PATTERN} (keep_per_input)", COMMAND)
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    for fmt, reps in chosen.items():
        if not reps:
            continue
        pts = []
        for r in reps:
            with reading(r["path"]):
                pts.append((r, _points(r["report"])))
        with style.context():
            ncol = len(pts)
            third = any("adjoint" in p for _, p in pts)
            nrow = 3 if third else 2
            fig, axes = plt.subplots(nrow, ncol, figsize=(max(style.SINGLE, 2.35 * ncol), 2.45 * nrow),
                                     squeeze=False, layout="constrained")
            for j, (r, p) in enumerate(pts):
                for i, (xkey, xlabel, line) in enumerate([
                        ("delta", ("measured error\n" r"$\delta(x)=\|M_{32}(x)-M_{16}(x)\|_\infty$ (logits)"),
                         r"$\Gamma=2\delta$"),
                        ("B", ("a-priori bound from the fp32 run\n" r"$B(x)\geq\delta(x)$ (logits)"), r"$\Gamma=2B$")]):
                    ax = axes[i][j]
                    xs, ys = p[xkey], p["gamma"]
                    ok = [k for k in range(len(xs)) if xs[k] > 0 and ys[k] > 0 and math.isfinite(xs[k])
                          and math.isfinite(ys[k])]
                    dropped = len(xs) - len(ok)
                    for oc in ("agreed", "certified", "flipped"):
                        ks = [k for k in ok if p["outcome"][k] == oc]
                        ax.scatter([xs[k] for k in ks], [ys[k] for k in ks], s=7 if oc != "flipped" else 16,
                                   color=style.color("outcome", oc), alpha=0.75, linewidths=0,
                                   marker="o" if oc != "flipped" else "X",
                                   label=LABELS[oc])
                    if ok:
                        ax.set_xscale("log")
                        ax.set_yscale("log")
                        lo = min(min(xs[k] for k in ok), min(ys[k] for k in ok) / 2)
                        hi = max(max(xs[k] for k in ok), max(ys[k] for k in ok) / 2)
                        lo, hi = lo / 2, hi * 2
                        ylo, yhi = min(ys[k] for k in ok) / 2, max(ys[k] for k in ok) * 2
                        ax.plot([lo, hi], [2 * lo, 2 * hi], color="black", linewidth=1.0, label=line)
                        top = max(yhi, 2 * hi) * 10
                        ax.fill_between([lo, hi], [2 * lo, 2 * hi], [top, top], color="0.5", alpha=0.08, lw=0)
                        ax.set_xlim(lo, hi)
                        ax.set_ylim(ylo, yhi)
                    else:
                        n_inf = sum(1 for v in xs if math.isinf(v))
                        ax.text(0.5, 0.5, (f"{xkey} infinite for all {len(xs)} inputs\n(overflow not excluded)"
                                           if n_inf == len(xs) else "no positive finite values"),
                                transform=ax.transAxes, ha="center", va="center", color="0.3", fontsize=7)
                        ax.set_xticks([])
                        ax.set_yticks([])
                    if dropped and ok:
                        ax.text(0.98, 0.02, f"{dropped} with a zero or infinite value not shown", fontsize=6,
                                transform=ax.transAxes, ha="right", va="bottom", color="0.3")
                    ax.set_xlabel(xlabel, fontsize=7)
                    if j == 0:
                        ax.set_ylabel(r"tolerance $\Gamma(x)$ = top-1 $-$ top-2 logit" "\n(logit units)", fontsize=7)
                    counts = {oc: sum(1 for o in p["outcome"] if o == oc) for oc in LABELS}
                    letter = "abcdefghijkl"[i * ncol + j]
                    head = f"({letter}) {model_label(r['model'])}" if i == 0 else f"({letter})"
                    ax.set_title(f"{head}\ncertified {counts['certified']}, not certified {counts['agreed']}, "
                                 f"flipped {counts['flipped']}", fontsize=7.5)
                if third:
                    ax = axes[2][j]
                    if "adjoint" in p:
                        _side_by_side(ax, p)
                    else:
                        ax.text(0.5, 0.5, "adjoint certificate not run\n(smooth layers, or an older report)",
                                transform=ax.transAxes, ha="center", va="center", color="0.3", fontsize=7)
                        ax.set_xticks([])
                        ax.set_yticks([])
                    if j == 0:
                        ax.set_ylabel("logit error (logit units)", fontsize=7)
                    ax.set_title(f"({'abcdefghijkl'[2 * ncol + j]}) certified, limit, predicted, observed",
                                 fontsize=7.5)
            handles = [plt.Line2D([], [], linestyle="none", marker="o" if oc != "flipped" else "X", markersize=5,
                                  color=style.color("outcome", oc), label=lb) for oc, lb in LABELS.items()]
            handles += [plt.Line2D([], [], color="black", label=r"$\Gamma=2\delta$ (top), $\Gamma=2B$ (bottom)"),
                        plt.matplotlib.patches.Patch(color="0.5", alpha=0.15, label="fp32 class guaranteed")]
            if third:
                handles += [plt.Line2D([], [], linestyle="none", marker=mk, markersize=4, color=col, label=lb)
                            for _, lb, col, mk in SIDE]
            fig.legend(handles=handles, loc="outside lower center", ncol=5 if not third else 4, fontsize=6.5)
            prof = pts[0][0]["profile"]
            fig.suptitle(f"{fmt}, {prof} arithmetic ({pts[0][1]['run']} run, {len(pts[0][1]['gamma'])} test inputs "
                         "per model)", fontsize=8.5)
            paths += style.save_figure(fig, f"{NAME}_{fmt}", out_dir)
    return paths


if __name__ == "__main__":
    raise SystemExit(figure_main(make, __doc__))

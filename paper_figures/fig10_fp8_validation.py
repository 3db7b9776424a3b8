"""Figure 10: does the FP8 / MX check predict emulated FP8 training?  Per case (rows) and recipe
(columns): the accuracy gap of emulated FP8 / MX / NVFP4 training to the bf16 baseline (points,
mean over seeds; colour centred on the "fails" threshold) with the check's verdict in the cell,
its misses framed; beside it the confusion matrix of prediction (SAFE -> trains; SAFE WITH
CHANGES / UNSAFE -> fails) against outcome.

Input: ``fp8_validation/report.json`` (``python -m experiments.fp8_validation all``): ``rows[]``
with ``case``, ``recipe``, ``verdict``, ``predicted``, ``outcome``, ``gap_points``, optional
``diverged``, ``toolkit``, ``fix``; ``gap_threshold_points``; optional ``environment.device``.
"""
from __future__ import annotations

import math
from pathlib import Path

from paper_figures import style
from paper_figures._inputs import MissingInput, figure_main, fnum, load_json, reading

NAME = "fig10_fp8_validation"
INPUT = "fp8_validation/report.json"
COMMAND = "python -m experiments.fp8_validation all"
CLASSES = ("trains", "fails")
RECIPE_ORDER = ("delayed", "current", "mxfp8", "mxfp6", "mxfp4", "nvfp4")
SHORT = {"SAFE": "SAFE", "SAFE WITH CHANGES": "CHANGES", "UNSAFE": "UNSAFE", "ERROR": "ERROR"}
#: colour scale of the gap (points): clipped to this range
GAP_RANGE = (-10.0, 40.0)


def table(rows: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """Cases (first-seen order), recipes (known order first) and ``{(case, recipe): row}``;
    a repeated (case, recipe) is malformed."""
    cases: list[str] = []
    recipes: list[str] = []
    cells: dict[tuple[str, str], dict] = {}
    for r in rows:
        c, rc = str(r["case"]), str(r["recipe"])
        p, o = str(r["predicted"]), str(r["outcome"])
        if p not in CLASSES or o not in CLASSES:
            raise ValueError(f"predicted/outcome must be one of {CLASSES}, got {p!r}/{o!r}")
        if str(r["verdict"]) not in SHORT:
            raise ValueError(f"unknown verdict {r['verdict']!r}; valid verdicts are: {', '.join(SHORT)}")
        if (c, rc) in cells:
            raise ValueError(f"case {c!r} with recipe {rc!r} appears twice")
        if c not in cases:
            cases.append(c)
        if rc not in recipes:
            recipes.append(rc)
        cells[c, rc] = r
    recipes.sort(key=lambda x: (RECIPE_ORDER.index(x) if x in RECIPE_ORDER else len(RECIPE_ORDER), x))
    return cases, recipes, cells


def make(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure 10 from ``results_dir/fp8_validation/report.json``; return the files."""
    path = Path(results_dir) / INPUT
    if not path.is_file():
        raise MissingInput(str(path), COMMAND)
    d = load_json(path)
    with reading(path):
        rows = list(d["rows"])
        if not rows:
            raise ValueError("no rows (run the truth and verdicts stages first)")
        cases, recipes, cells = table(rows)
        thr = fnum(d.get("gap_threshold_points", 3.0))
        gaps = {k: fnum(r.get("gap_points")) for k, r in cells.items()}
        counts = {(p, o): 0 for p in CLASSES for o in CLASSES}
        for r in rows:
            counts[str(r["predicted"]), str(r["outcome"])] += 1
        errors = sum(1 for r in rows if r["verdict"] == "ERROR")
        device = str(d.get("environment", {}).get("device", "cpu"))
        toolkit = {str(r["case"]) for r in rows if r.get("toolkit")}
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    with style.context():
        fig = plt.figure(figsize=(style.DOUBLE, 1.3 + 0.27 * len(cases)), layout="constrained")
        ax, ax2 = fig.subplots(1, 2, width_ratios=[2.4, 1])
        grid = np.full((len(cases), len(recipes)), np.nan)
        for (c, rc), g in gaps.items():
            grid[cases.index(c), recipes.index(rc)] = np.clip(g, *GAP_RANGE) if math.isfinite(g) else GAP_RANGE[1]
        norm = TwoSlopeNorm(vmin=GAP_RANGE[0], vcenter=thr, vmax=GAP_RANGE[1])
        ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", norm=norm, aspect="auto")
        for (c, rc), r in cells.items():
            i, j = cases.index(c), recipes.index(rc)
            g = gaps[c, rc]
            div = int(r.get("diverged", 0) or 0)
            top = (f"{g:+.1f}" if math.isfinite(g) else "n/a") + (f" ({div} div.)" if div else "")
            hit = r["verdict"] != "ERROR" and r["predicted"] == r["outcome"]
            strong = math.isfinite(g) and abs(norm(np.clip(g, *GAP_RANGE)) - 0.5) > 0.3
            ax.text(j, i - 0.12, top, ha="center", va="center", fontsize=6.5, color="white" if strong else "black")
            label = SHORT[str(r["verdict"])] + ("" if hit else " \u2717")
            if r.get("fix"):
                label += " \u2192" + ("ok" if r["fix"] == "trains" else "no")
            ax.text(j, i + 0.22, label, ha="center", va="center", fontsize=5.2,
                    fontweight="normal" if hit else "bold", color="white" if strong else "0.15")
            if not hit:
                ax.add_patch(plt.Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, edgecolor="black",
                                           linewidth=1.6))
        ax.set_xticks(range(len(recipes)))
        ax.set_xticklabels(recipes)
        ax.set_yticks(range(len(cases)))
        ax.set_yticklabels([c + (" *" if c in toolkit else "") for c in cases])
        ax.set_xlabel("recipe (E4M3 forward, E5M2 gradients; NVFP4: E2M1)")
        ax.set_ylabel("case (* the toolkit's models)")
        ax.grid(False)
        ax.tick_params(length=0)
        ax.set_title("accuracy gap to bf16 (points) and the check's verdict")
        fig.suptitle(f"Emulated FP8 / MX training vs bf16: red cells fail (gap above {thr:g} points or diverged); "
                     "framed: the verdict was wrong; \u2192ok / \u2192no: trained with the check's plan",
                     fontsize=7)

        style.draw_confusion(ax2, counts, CLASSES, "FP8", ["SAFE", "CHANGES /\nUNSAFE"],
                             "outcome (emulated FP8 vs bf16)", "check's prediction (as run)")
        where = "GPU" if device.startswith("cuda") else "CPU"
        extra = f", {errors} errors" if errors else ""
        ax2.set_title(f"{len(rows)} case-recipe pairs ({where}){extra}")
        return style.save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    raise SystemExit(figure_main(make, __doc__))

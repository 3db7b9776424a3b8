"""Figure 8: does ``fpanalysis check`` predict real pure-fp16 training?  Confusion matrix of the
check's prediction (SAFE -> "trains"; SAFE WITH CHANGES / UNSAFE -> "fails") against the outcome
of real pure-fp16 training compared with fp32 (3 seeds) on the validation zoo, the false-SAFE
count, the success rate of the verified precision plans when trained for real, and the list of
configurations.

Input: ``check_zoo/report.json`` (``python -m experiments.check_zoo report``): ``rows[]`` with
``case``, ``predicted``, ``outcome``, ``verdict``, ``cause`` and ``fix`` (the outcome of real
training with the check's plan, or null), and ``fix_success`` / ``fixes_tried``.
"""
from __future__ import annotations

from pathlib import Path

from paper_figures import style
from paper_figures._inputs import MissingInput, figure_main, load_json, reading

NAME = "fig8_check_validation"
INPUT = "check_zoo/report.json"
COMMAND = "python -m experiments.check_zoo report"
CLASSES = ("trains", "fails")


def make(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure 8 from ``results_dir/check_validation.json``; return the files."""
    path = Path(results_dir) / INPUT
    if not path.is_file():
        raise MissingInput(str(path), COMMAND)
    d = load_json(path)
    with reading(path):
        rows = list(d["rows"])
        counts = {(p, o): 0 for p in CLASSES for o in CLASSES}
        for r in rows:
            p, o = str(r["predicted"]), str(r["outcome"])
            if p not in CLASSES or o not in CLASSES:
                raise ValueError(f"predicted/outcome must be one of {CLASSES}, got {p!r}/{o!r}")
            counts[p, o] += 1
        fixed = [r for r in rows if r.get("fix") is not None]
        fix_ok = sum(r["fix"] == "trains" for r in fixed)
        errors = sum(r.get("verdict") == "ERROR" for r in rows)
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    with style.context():
        wide = bool(rows)
        fig = plt.figure(figsize=(style.DOUBLE if wide else style.SINGLE, 2.6 + (0.14 * len(rows) if wide else 0)),
                         layout="constrained")
        if wide:
            ax, ax2 = fig.subplots(1, 2, width_ratios=[1, 2.3])
        else:
            ax = fig.subplots()
        total = sum(counts.values())
        style.draw_confusion(ax, counts, CLASSES, "fp16", ["SAFE\n(trains)", "SAFE WITH CHANGES\nor UNSAFE (fails)"],
                             "real pure-fp16 training (vs fp32)", "check's prediction")
        right = counts["trains", "trains"] + counts["fails", "fails"] - errors
        ax.set_title(f"{total} configurations: {right} right ({100 * right / max(total, 1):.0f}%),\n"
                     f"false SAFE {counts['trains', 'fails']}; verified plans that trained: {fix_ok}/{len(fixed)}")
        if wide:
            ax2.axis("off")
            cells = [[str(r.get("case", "")), str(r.get("verdict", "")).replace("SAFE WITH CHANGES", "with changes"),
                      str(r["outcome"]), _why(r),
                      {None: "", "trains": "trains", "fails": "fails"}.get(r.get("fix"), str(r.get("fix")))]
                     for r in rows]
            tb = ax2.table(cellText=cells, colLabels=["configuration", "verdict", "fp16", "why", "with plan"],
                           loc="upper center", cellLoc="left", colWidths=[0.3, 0.15, 0.08, 0.35, 0.12])
            tb.auto_set_font_size(False)
            tb.set_fontsize(5.8)
            for (i, j), cell in tb.get_celld().items():
                cell.set_linewidth(0.3)
                if i == 0:
                    cell.set_text_props(fontweight="bold")
                    cell.set_facecolor("0.9")
                elif rows[i - 1]["predicted"] != rows[i - 1]["outcome"]:
                    cell.set_facecolor(to_rgba("#D55E00", 0.15))
        return style.save_figure(fig, NAME, out_dir)


def _why(row: dict) -> str:
    """The outcome's recorded cause, shortened ("pure fp16 5.2 points below fp32 ..." ->
    "fp16 5.2 points below fp32")."""
    cause = str(row.get("cause", "")).replace("pure fp16", "fp16")
    return cause.split(" (")[0][:40]


if __name__ == "__main__":
    raise SystemExit(figure_main(make, __doc__))

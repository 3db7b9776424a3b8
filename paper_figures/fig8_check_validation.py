"""Figure 8: does ``fpanalysis check`` predict real pure-fp16 training?  Confusion matrix of the
check's prediction (SAFE -> "trains"; SAFE WITH CHANGES / UNSAFE -> "fails") against the outcome
of real fp16 training compared with fp32, and the list of configurations.

Input: ``check_validation.json`` (``python -m experiments.check_validation``): ``rows[]`` with
``case``, ``predicted``, ``outcome``, optional ``seed``, ``verdict``, ``cause``; or, without
rows, ``confusion`` with keys ``"predicted <p> / <o>"``.  Optional ``config.device``.
"""
from __future__ import annotations

from pathlib import Path

from paper_figures import style
from paper_figures._inputs import MissingInput, figure_main, load_json, reading

NAME = "fig8_check_validation"
INPUT = "check_validation.json"
COMMAND = "python -m experiments.check_validation"
CLASSES = ("trains", "fails")


def make(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure 8 from ``results_dir/check_validation.json``; return the files."""
    path = Path(results_dir) / INPUT
    if not path.is_file():
        raise MissingInput(str(path), COMMAND)
    d = load_json(path)
    with reading(path):
        rows = list(d.get("rows") or [])
        counts = {(p, o): 0 for p in CLASSES for o in CLASSES}
        if rows:
            for r in rows:
                p, o = str(r["predicted"]), str(r["outcome"])
                if p not in CLASSES or o not in CLASSES:
                    raise ValueError(f"predicted/outcome must be one of {CLASSES}, got {p!r}/{o!r}")
                counts[p, o] += 1
        else:
            conf = d["confusion"]
            for p in CLASSES:
                for o in CLASSES:
                    counts[p, o] = int(conf[f"predicted {p} / {o}"])
        device = str(d.get("config", {}).get("device", "cpu"))
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
        for i, p in enumerate(CLASSES):
            for j, o in enumerate(CLASSES):
                n = counts[p, o]
                good = p == o
                danger = p == "trains" and o == "fails"
                col = "#009E73" if good else ("#D55E00" if danger else "#E69F00")
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=to_rgba(col, 0.15 + 0.6 * (n > 0)),
                                           edgecolor="white", linewidth=2))
                ax.text(j, i, f"{n}", ha="center", va="center", fontsize=14, fontweight="bold")
                tag = "correct" if good else ("missed failure" if danger else "false alarm")
                ax.text(j, i + 0.3, tag, ha="center", va="center", fontsize=6.5, color="0.2")
        ax.set_xlim(-0.5, 1.5)
        ax.set_ylim(1.5, -0.5)
        ax.set_xticks([0, 1])
        ax.set_xticklabels([f"fp16 {o}" for o in CLASSES])
        ax.set_yticks([0, 1])
        ax.set_yticklabels(["SAFE\n(trains)", "SAFE WITH CHANGES\nor UNSAFE (fails)"])
        ax.set_xlabel("outcome of real fp16 training (vs fp32)")
        ax.set_ylabel("check's prediction")
        ax.grid(False)
        ax.set_title(f"{total} configuration runs ({'GPU' if device.startswith('cuda') else 'CPU'})")
        if wide:
            ax2.axis("off")
            cells = [[str(r.get("case", "")) + (f" s{r['seed']}" if "seed" in r else ""), str(r.get("verdict", "")),
                      str(r["outcome"]), _why(r)] for r in rows]
            tb = ax2.table(cellText=cells, colLabels=["configuration", "verdict", "outcome", "why"], loc="upper center",
                           cellLoc="left", colWidths=[0.27, 0.27, 0.11, 0.35])
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
    """The outcome's reason: the accuracy gap from the recorded accuracies when fp16 finished,
    else the recorded cause (e.g. the step at which it diverged)."""
    a16, a32 = row.get("fp16_test_acc"), row.get("fp32_test_acc")
    if row.get("fp16_status") == "complete" and a16 is not None and a32 is not None:
        gap = 100 * (a32 - a16)
        if abs(gap) < 0.05:
            return "fp16 as accurate as fp32"
        return f"fp16 {abs(gap):.1f} points {'below' if gap > 0 else 'above'} fp32"
    return str(row.get("cause", ""))[:34]


if __name__ == "__main__":
    raise SystemExit(figure_main(make, __doc__))

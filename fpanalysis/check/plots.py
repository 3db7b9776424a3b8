"""Plots for ``fpanalysis check --plots DIR`` (matplotlib is imported here only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..formats import get_format
from .findings import CheckReport

__all__ = ["plot_check", "draw_format_bands"]


def draw_format_bands(ax: Any, fmt_name: str, axis: str = "x") -> None:
    """Shade a log2 axis with the format's flushed / subnormal / normal / overflow regions."""
    f = get_format(fmt_name)
    lo_sub = np.log2(f.min_subnormal) - 1
    lo_norm = np.log2(f.min_normal)
    hi = np.log2(f.max)
    span = ax.axvspan if axis == "x" else ax.axhspan
    span(-200, lo_sub, color="tab:red", alpha=0.10, lw=0, label=f"rounds to 0 in {f.name}")
    span(lo_sub, lo_norm, color="tab:orange", alpha=0.12, lw=0, label=f"subnormal in {f.name}")
    span(hi, 200, color="tab:red", alpha=0.20, lw=0, label=f"overflow in {f.name}")


def plot_check(report: CheckReport, out_dir: str | Path) -> list[Path]:
    """Write ``ranges.png`` (per-layer activation magnitude range against the format's bands) and
    ``gradients.png`` (histogram of weight-gradient exponents with the underflow lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fmt = str(report.config.get("format", "fp16"))
    written: list[Path] = []

    acts = [a for a in report.details.get("activations", []) if a.get("nonzero")]
    if acts:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(acts) + 1.6))
        for i, a in enumerate(acts):
            lo = np.log2(a["min_abs_nonzero"]) if a.get("min_abs_nonzero") else np.nan
            hi = np.log2(a["max_abs"])
            ax.plot([lo, hi], [i, i], color="tab:blue", lw=4, solid_capstyle="butt")
        draw_format_bands(ax, fmt)
        ax.set_yticks(range(len(acts)))
        ax.set_yticklabels([f"{a['name']} ({a['kind']})" for a in acts], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("log2 |activation| (smallest nonzero to largest)")
        ax.set_xlim(np.log2(get_format(fmt).min_subnormal) - 8, np.log2(get_format(fmt).max) + 4)
        ax.set_title(f"Forward activation ranges vs {fmt}")
        ax.legend(loc="lower right", fontsize=7, framealpha=0.9)
        fig.tight_layout()
        p = out / "ranges.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)

    grads = report.details.get("weight_grads", [])
    total: dict[int, int] = {}
    for g in grads:
        for k, c in g.get("log2_hist", {}).items():
            total[int(k)] = total.get(int(k), 0) + int(c)
    if total:
        b = np.array(sorted(total))
        c = np.array([total[k] for k in b], dtype=float)
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.bar(b, c / c.sum(), width=1.0, color="tab:blue", label="weight gradients (fp32)")
        draw_format_bands(ax, fmt)
        ax.axvline(-24, color="k", ls="--", lw=1, label="2^-24")
        ax.set_xlabel("log2 |gradient|")
        ax.set_ylabel("fraction of nonzero gradients")
        ax.set_title(f"Weight-gradient exponents vs {fmt}")
        ax.set_xlim(min(b.min(), -30) - 2, max(b.max(), 0) + 4)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        p = out / "gradients.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)
    return written

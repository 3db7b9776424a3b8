"""Shared look of the paper figures: sizes, fonts, colours, and PDF + PNG output.

Every figure script draws inside :func:`context` and saves with :func:`save_figure`, so the
whole set shares one font size, one colour per format / arithmetic profile / training mode /
outcome, and one output convention.  Colours are from the Okabe-Ito palette (distinguishable
with the common colour-vision deficiencies).

>>> from paper_figures import style
>>> style.MODE_COLORS["fp16"] == style.FORMAT_COLORS["fp16"]
True
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window

import matplotlib.pyplot as plt

__all__ = [
    "BAND_COLORS",
    "DET_BOUND",
    "DOUBLE",
    "DPI",
    "FORMAT_COLORS",
    "MEASURED",
    "METHOD_COLORS",
    "MODE_COLORS",
    "OUTCOME_COLORS",
    "PROB_BOUND",
    "PROFILE_COLORS",
    "RC",
    "SINGLE",
    "color",
    "context",
    "panel_label",
    "save_figure",
    "short_layer",
]

#: figure widths in inches: one column and the full text width of a two-column paper
SINGLE = 3.4
DOUBLE = 7.0
DPI = 150

_OI = {  # Okabe & Ito (2008)
    "black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "grey": "#7F7F7F",
}

FORMAT_COLORS = {
    "fp32": _OI["black"], "fp64": _OI["grey"], "tf32": _OI["green"], "fp16": _OI["vermillion"],
    "bf16": _OI["blue"], "fp8_e4m3fn": _OI["purple"], "fp8_e5m2": _OI["orange"],
}
PROFILE_COLORS = {"ieee": _OI["purple"], "fp32-accumulate": _OI["green"], "exact": _OI["grey"]}
MODE_COLORS = {
    "fp32": _OI["black"], "amp-fp16": _OI["orange"], "fp16": _OI["vermillion"], "bf16": _OI["blue"],
    "amp-bf16": _OI["sky"],
}
METHOD_COLORS = {
    "ieee/sequential": _OI["vermillion"], "ieee/pairwise": _OI["purple"], "fp32-accumulate/sequential": _OI["green"],
}
OUTCOME_COLORS = {"certified": _OI["green"], "agreed": _OI["sky"], "flipped": _OI["vermillion"]}
#: shading of a format's ranges on an exponent axis
BAND_COLORS = {"zero": "#BBBBBB", "subnormal": _OI["yellow"], "normal": "#FFFFFF", "overflow": _OI["vermillion"]}

#: line styles: measured values, deterministic bounds, probabilistic bounds
MEASURED: dict[str, Any] = {"linestyle": "-", "marker": "o", "markersize": 3, "linewidth": 1.2}
DET_BOUND: dict[str, Any] = {"linestyle": "--", "marker": None, "linewidth": 1.1}
PROB_BOUND: dict[str, Any] = {"linestyle": "-.", "marker": None, "linewidth": 1.1}

RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,  # embed TrueType: text stays text in the PDF
    "figure.dpi": 100,
}


@contextlib.contextmanager
def context() -> Iterator[None]:
    """Matplotlib settings of the figure set, restored on exit."""
    with plt.rc_context(RC):
        yield


def color(kind: str, name: str) -> str:
    """Colour of ``name`` in one of the palettes ``format``, ``profile``, ``mode``, ``method``, ``outcome``.

    >>> color("format", "bf16")
    '#0072B2'
    >>> color("mode", "unknown-mode")      # unknown names get grey, not an error
    '#7F7F7F'
    """
    palettes = {"format": FORMAT_COLORS, "profile": PROFILE_COLORS, "mode": MODE_COLORS,
                "method": METHOD_COLORS, "outcome": OUTCOME_COLORS}
    if kind not in palettes:
        raise ValueError(f"unknown palette {kind!r}; valid palettes are: {', '.join(palettes)}")
    return palettes[kind].get(name, _OI["grey"])


def panel_label(ax: Any, text: str) -> None:
    """A bold panel letter in the top-left corner, outside the axes."""
    ax.text(-0.02, 1.02, text, transform=ax.transAxes, fontweight="bold", fontsize=9, ha="right", va="bottom")


def short_layer(name: str, width: int = 18) -> str:
    """A layer path shortened from the left for tick labels (``blocks.0.attn.q`` -> ``...attn.q``)."""
    return name if len(name) <= width else "\u2026" + name[-(width - 1):]


def save_figure(fig: Any, name: str, out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/name.pdf`` and ``out_dir/name.png`` (``DPI``), close ``fig``; return both paths.

    The PDF carries no creation date, so regenerating an unchanged figure gives the same file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.pdf", out / f"{name}.png"]
    fig.savefig(paths[0], metadata={"CreationDate": None, "Creator": None, "Producer": None})
    fig.savefig(paths[1], dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return paths


def draw_confusion(ax: Any, counts: Any, classes: tuple[str, str], outcome_label: str,
                   prediction_labels: list[str], xlabel: str, ylabel: str) -> None:
    """A 2 x 2 prediction-vs-outcome matrix on ``ax``: ``counts[p, o]`` for prediction ``p`` and
    outcome ``o`` in ``classes`` (("trains", "fails")), cells coloured correct / false alarm /
    missed failure (the dangerous one: predicted to train, failed)."""
    from matplotlib.colors import to_rgba

    for i, p in enumerate(classes):
        for j, o in enumerate(classes):
            n = counts[p, o]
            good = p == o
            danger = p == classes[0] and o == classes[1]
            col = "#009E73" if good else ("#D55E00" if danger else "#E69F00")
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=to_rgba(col, 0.15 + 0.6 * (n > 0)),
                                       edgecolor="white", linewidth=2))
            ax.text(j, i, f"{n}", ha="center", va="center", fontsize=14, fontweight="bold")
            tag = "correct" if good else ("missed failure" if danger else "false alarm")
            ax.text(j, i + 0.3, tag, ha="center", va="center", fontsize=6.5, color="0.2")
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylim(1.5, -0.5)
    ax.set_xticks([0, 1])
    ax.set_xticklabels([f"{outcome_label} {o}" for o in classes])
    ax.set_yticks([0, 1])
    ax.set_yticklabels(prediction_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(False)

"""Figure 6: exponent histograms of activations and gradients against the format's bands
(rounds to zero / subnormal / normal / overflow), weight gradients before and after loss scaling.

Input: ``exponent_histograms.json`` (``python -m experiments.exponent_histograms``): ``cases[]``
with ``case``, ``why`` (optional), ``loss_scale.value`` (optional: then no "after" histogram)
and ``check``, the ``CheckReport.to_dict()`` of ``fpanalysis check``, whose
``details.activations``, ``details.activation_grads`` (optional) and ``details.weight_grads``
are lists of per-layer dicts with ``log2_hist`` (``{exponent: count}`` of ``floor(log2|v|)``)
and whose ``config.format`` names the format.  A bare ``fpanalysis check --json`` output
(one report, no ``cases``) is accepted too, with ``--loss-scale`` chosen by the caller.

Loss scaling multiplies the loss, hence every gradient, by ``S``; for a power of two the
exponent histogram just shifts by ``log2 S``, which is what the "after" histogram shows.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from paper_figures import style
from paper_figures._inputs import MissingInput, figure_main, fnum, load_json, reading

NAME = "fig6_exponent_histograms"
INPUT = "exponent_histograms.json"
COMMAND = "python -m experiments.exponent_histograms"
MAX_CASES = 3


def pooled(entries: list[dict]) -> dict[int, int]:
    """Sum the per-layer ``log2_hist`` dicts."""
    tot: dict[int, int] = {}
    for e in entries:
        for k, v in e["log2_hist"].items():
            tot[int(k)] = tot.get(int(k), 0) + int(v)
    return dict(sorted(tot.items()))


def bands(fmt: Any) -> dict[str, tuple[float, float]]:
    """Exponent ranges (bin edges, ``floor(log2|v|)`` bins) of a format: values in bins below
    ``emin - p`` round to zero (round to nearest), ``emin - p .. emin - 1`` are subnormal,
    ``emin .. emax`` normal, above ``emax`` overflow."""
    lo_sub = fmt.emin - fmt.p if fmt.subnormals else fmt.emin
    return {"zero": (-math.inf, lo_sub - 0.5), "subnormal": (lo_sub - 0.5, fmt.emin - 0.5),
            "overflow": (fmt.emax + 0.5, math.inf)}


def fractions(hist: dict[int, int], b: dict[str, tuple[float, float]]) -> dict[str, float]:
    total = sum(hist.values())
    if not total:
        return {k: 0.0 for k in b}
    return {k: sum(v for e, v in hist.items() if lo < e < hi) / total for k, (lo, hi) in b.items()}


def _cases(d: dict, path: Path) -> list[dict]:
    if "cases" in d:
        return list(d["cases"])[:MAX_CASES]
    if "details" in d and "verdict" in d:  # a bare check report
        return [{"case": d.get("config", {}).get("model", "model"), "check": d}]
    raise KeyError("cases")


def _pow2(s: float) -> str:
    k = math.log2(s)
    return f"2^{{{int(k)}}}" if k == int(k) else f"{s:g}"


def make(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure 6 from ``results_dir/exponent_histograms.json`` into ``out_dir``; return the files."""
    path = Path(results_dir) / INPUT
    if not path.is_file():
        raise MissingInput(str(path), COMMAND)
    d = load_json(path)
    from fpanalysis.formats import get_format

    rows = []
    with reading(path):
        for c in _cases(d, path):
            rep = c["check"]
            fmt = get_format(str(rep.get("config", {}).get("format", d.get("format", "fp16"))))
            det = rep["details"]
            ls = c.get("loss_scale") or {}
            s = fnum(ls.get("value")) if ls.get("value") is not None else math.nan
            rows.append({
                "name": str(c.get("case", "")), "why": str(c.get("why", "")), "fmt": fmt,
                "verdict": str(rep.get("verdict", "")), "S": s, "fits": ls.get("fits", True),
                "act": pooled(det["activations"]),
                "agrad": pooled(det["activation_grads"]) if det.get("activation_grads") else None,
                "wgrad": pooled(det["weight_grads"]),
            })
    if not rows:
        raise MissingInput(f"cases in {path}", COMMAND)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ncol = 3
    with style.context():
        fig = plt.figure(figsize=(style.DOUBLE, 2.35 * len(rows) + 0.45), layout="constrained")
        subfigs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
        for i, r in enumerate(rows):
            sf = subfigs[i]
            axes = sf.subplots(1, ncol)
            b = bands(r["fmt"])
            shift = round(math.log2(r["S"])) if (math.isfinite(r["S"]) and r["S"] > 0) else None
            panels = [("activations", r["act"], None), ("activation gradients", r["agrad"], None),
                      ("weight gradients", r["wgrad"], shift)]
            keys = [e for _, h, _ in panels if h for e in h]
            if shift:
                keys += [e + shift for e in r["wgrad"]]
            lo_x = min(keys + [r["fmt"].emin - r["fmt"].p]) - 2
            hi_x = max(keys + [r["fmt"].emax]) + 2
            for j, (title, h, sh) in enumerate(panels):
                ax = axes[j]
                ax.axvspan(lo_x, b["zero"][1], color=style.BAND_COLORS["zero"], alpha=0.45, lw=0)
                ax.axvspan(*b["subnormal"], color=style.BAND_COLORS["subnormal"], alpha=0.35, lw=0)
                ax.axvspan(b["overflow"][0], hi_x, color=style.BAND_COLORS["overflow"], alpha=0.25, lw=0)
                ax.set_xlim(lo_x, hi_x)
                ax.set_yscale("log")
                ax.set_xlabel(r"exponent $\lfloor\log_2|v|\rfloor$")
                ax.set_ylabel("values (count)")
                if not h:
                    ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="0.4")
                    ax.set_title(title)
                    continue
                e, n = zip(*sorted(h.items()))
                ax.bar(e, n, width=1.0, color="0.35", alpha=0.85)
                fr = fractions(h, b)
                txt = f"0: {100 * fr['zero']:.2g}%, sub: {100 * fr['subnormal']:.2g}%, ovf: {100 * fr['overflow']:.2g}%"
                if sh:
                    ax.step([x + sh for x in e], n, where="mid", color=style.color("format", r["fmt"].name),
                            linewidth=1.1)
                    fs = fractions({x + sh: v for x, v in h.items()}, b)
                    txt += (f"\n$\\times{_pow2(r['S'])}$: 0: {100 * fs['zero']:.2g}%, sub: {100 * fs['subnormal']:.2g}%, "
                            f"ovf: {100 * fs['overflow']:.2g}%")
                ax.set_title(f"{title}\n{txt}", fontsize=6.8)
                ax.set_ylim(0.5, max(n) * 3)
            head = f"{r['name']} ({r['fmt'].name}; check verdict {r['verdict']})" + (f": {r['why']}" if r["why"] else "")
            if shift is not None:
                head += f"\nloss scale $S={_pow2(r['S'])}$" + (
                    "" if r["fits"] else " (no single scale fits: the largest one that avoids overflow)")
            sf.suptitle(head, fontsize=7.5, ha="left", x=0.01)
        fmt_names = sorted({r["fmt"].name for r in rows})
        fn = "/".join(fmt_names)
        handles = [Patch(color="0.35", alpha=0.85, label="measured in fp32 (count per exponent)"),
                   plt.Line2D([], [], color=style.color("format", fmt_names[0]), label="weight gradients × S"),
                   Patch(color=style.BAND_COLORS["zero"], alpha=0.45, label=f"rounds to 0 in {fn}"),
                   Patch(color=style.BAND_COLORS["subnormal"], alpha=0.35, label=f"subnormal in {fn}"),
                   Patch(color=style.BAND_COLORS["overflow"], alpha=0.25, label=f"overflows {fn}")]
        fig.legend(handles=handles, loc="outside lower center", ncol=5)
        return style.save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    raise SystemExit(figure_main(make, __doc__))

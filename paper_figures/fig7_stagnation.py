"""Figure 7: update stagnation -- the fraction of SGD updates ``w - lr g`` that round back to ``w``
when weights are stored in fp16 or bf16, against the learning rate.

Input: ``stagnation.json`` (``python -m experiments.stagnation``).  Keys used: ``rows[]`` with
``format``, ``lr``, ``lost_fraction``; optional ``grad_abs_median``, ``weight_abs_median``,
``n_parameters``, ``config.warmup_steps``.

Theory marker: an update is lost when ``|lr g| < ulp(w) / 2``, and ``ulp(w)/2`` lies between
``u |w|`` and ``u |w| / 2`` (``u = 2**-p``).  The dotted line of each format is the learning rate
at which the median update equals ``u`` times the median weight, ``lr* = u median|w| / median|g|``:
around it the lost fraction falls through one half.
"""
from __future__ import annotations

import math
from pathlib import Path

from paper_figures import style
from paper_figures._inputs import MissingInput, figure_main, fnum, load_json, reading

NAME = "fig7_stagnation"
INPUT = "stagnation.json"
COMMAND = "python -m experiments.stagnation"


def make(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure 7 from ``results_dir/stagnation.json`` into ``out_dir``; return the files."""
    path = Path(results_dir) / INPUT
    if not path.is_file():
        raise MissingInput(str(path), COMMAND)
    d = load_json(path)
    with reading(path):
        rows = d["rows"]
        fmts = list(dict.fromkeys(str(r["format"]) for r in rows))
        series = {f: sorted((fnum(r["lr"]), fnum(r["lost_fraction"])) for r in rows if r["format"] == f) for f in fmts}
        g_med = fnum(d.get("grad_abs_median"))
        w_med = fnum(d.get("weight_abs_median"))
        n_par = d.get("n_parameters")
        warm = d.get("config", {}).get("warmup_steps")
    import matplotlib.pyplot as plt

    from fpanalysis.formats import get_format

    with style.context():
        fig, ax = plt.subplots(figsize=(style.SINGLE, 2.5))
        for f in fmts:
            lr, lost = zip(*series[f]) if series[f] else ((), ())
            c = style.color("format", f)
            ax.semilogx(lr, [100 * v for v in lost], color=c, **style.MEASURED, label=f"{f} weights (measured)")
            try:
                u = get_format(f).u
            except ValueError:
                continue
            if math.isfinite(g_med) and math.isfinite(w_med) and g_med > 0:
                star = u * w_med / g_med
                ax.axvline(star, color=c, linestyle=":", linewidth=1.0,
                           label=rf"{f}: $u\,\mathrm{{med}}|w|/\mathrm{{med}}|g|$")
        ax.set_xlabel("learning rate (SGD step size)")
        ax.set_ylabel("updates lost to rounding (%)")
        ax.set_ylim(-3, 103)
        what = f"{n_par} weights of an MLP on digits" if n_par else "all weights"
        ax.set_title(f"Lost updates, {what}" + (f",\nafter {warm} fp32 steps" if warm else ""), fontsize=7.5)
        ax.legend(loc="lower left")
        fig.tight_layout()
        return style.save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    raise SystemExit(figure_main(make, __doc__))

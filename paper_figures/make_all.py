"""Regenerate every paper figure from the JSON results, never recomputing anything.

    python -m paper_figures.make_all                          # experiments/results -> paper_figures/output
    python -m paper_figures.make_all --results DIR --out DIR
    python -m paper_figures.make_all --only fig2,fig7

A figure whose inputs are missing is reported with the experiment command that produces them,
and the others are still drawn.  The exit status is 1 only when a present input is malformed
(or a figure fails on it), 2 for bad arguments, 0 otherwise.

>>> [name for name, _ in FIGURES][:2]
['fig1', 'fig2']
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from paper_figures._inputs import DEFAULT_OUT, DEFAULT_RESULTS, MalformedInput, MissingInput

#: (short name, module) in figure order
FIGURES = [
    ("fig1", "paper_figures.fig1_layer_errors"),
    ("fig2", "paper_figures.fig2_error_growth"),
    ("fig3", "paper_figures.fig3_lemma"),
    ("fig4", "paper_figures.fig4_agreement"),
    ("fig5", "paper_figures.fig5_training"),
    ("fig6", "paper_figures.fig6_exponent_histograms"),
    ("fig7", "paper_figures.fig7_stagnation"),
    ("fig8", "paper_figures.fig8_check_validation"),
    ("fig9", "paper_figures.fig9_emulator_speed"),
    ("fig10", "paper_figures.fig10_fp8_validation"),
]


def make_all(results_dir: str | Path = DEFAULT_RESULTS, out_dir: str | Path = DEFAULT_OUT,
             only: list[str] | None = None, stream=None) -> dict[str, dict]:
    """Draw every figure (or those in ``only``); return ``{name: {"status", "files"|"message"}}``.

    ``status`` is ``"ok"``, ``"missing"`` (with ``command``) or ``"error"`` (a present input is
    malformed or the figure failed on it).
    """
    stream = stream or sys.stdout
    names = [n for n, _ in FIGURES]
    if only:
        bad = sorted(set(only) - set(names))
        if bad:
            raise ValueError(f"unknown figure(s) {bad}; valid figures are: {', '.join(names)}")
    report: dict[str, dict] = {}
    for name, modname in FIGURES:
        if only and name not in only:
            continue
        mod = importlib.import_module(modname)
        t0 = time.perf_counter()
        try:
            files = mod.make(results_dir, out_dir)
        except MissingInput as exc:
            report[name] = {"status": "missing", "message": str(exc), "what": exc.what, "command": exc.command}
            print(f"{name}: SKIPPED, missing input {exc.what}\n      produce it with: {exc.command}", file=stream)
            continue
        except MalformedInput as exc:
            report[name] = {"status": "error", "message": str(exc)}
            print(f"{name}: ERROR, malformed input {exc}", file=stream)
            continue
        except Exception as exc:  # noqa: BLE001 - report and go on with the other figures
            report[name] = {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: ERROR while drawing ({type(exc).__name__}: {exc})", file=stream)
            traceback.print_exc()
            continue
        report[name] = {"status": "ok", "files": [str(f) for f in files]}
        shown = ", ".join(Path(f).name for f in files if str(f).endswith(".png"))
        print(f"{name}: {shown} ({time.perf_counter() - t0:.1f} s)", file=stream)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(DEFAULT_RESULTS), help="folder of result JSON (default: %(default)s)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder for PDF + PNG (default: %(default)s)")
    ap.add_argument("--only", default="", help="comma-separated figure names, e.g. fig2,fig7")
    a = ap.parse_args(argv)
    only = [s.strip() for s in a.only.split(",") if s.strip()] or None
    try:
        report = make_all(a.results, a.out, only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ok = sum(r["status"] == "ok" for r in report.values())
    missing = [n for n, r in report.items() if r["status"] == "missing"]
    errors = [n for n, r in report.items() if r["status"] == "error"]
    print(f"\n{ok} figure(s) drawn into {a.out}; missing inputs: {', '.join(missing) or 'none'}; "
          f"errors: {', '.join(errors) or 'none'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

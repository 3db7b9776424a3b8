"""Emulator speed against named baselines, ratios measured in one run; writes JSON.

    python -m experiments.bench_emulator            # full sizes (about a minute)
    python -m experiments.bench_emulator --quick    # seconds

The same numbers print with ``fpanalysis bench``; the code lives in fpanalysis/benchmarks.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

from experiments._common import RESULTS, environment, write_json


def main(argv: list[str]) -> None:
    from fpanalysis.benchmarks import run_benchmarks

    quick = "--quick" in argv
    results = run_benchmarks(quick=quick)
    for r in results:
        print(r["benchmark"], {k: round(v, 2) for k, v in r["ratios"].items()})
    out = RESULTS / ("_scratch/bench_emulator_quick.json" if quick else "bench_emulator.json")
    write_json(Path(out), {"experiment": "bench_emulator", "quick": quick, "results": results,
                           "environment": environment()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""MX quantisation speed against a straightforward NumPy implementation, in one run; writes JSON.

    python experiments/bench_mx.py            # 10^7 float32 values, each MX format
    python experiments/bench_mx.py --quick    # 10^5 values, MXFP8 only

The code lives in fpanalysis/benchmarks.py (bench_mx); issue 17's goal: qdq_vs_numpy >= 5.
"""
from __future__ import annotations

import sys
from pathlib import Path

from _common import RESULTS, environment, write_json


def main(argv: list[str]) -> None:
    from fpanalysis.benchmarks import bench_mx

    quick = "--quick" in argv
    fmts = ["mxfp8_e4m3"] if quick else ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4_e2m1"]
    results = [bench_mx(n=10**5 if quick else 10**7, rounds=2 if quick else 5, fmt=f) for f in fmts]
    for r in results:
        print(r["benchmark"], {k: round(v, 2) for k, v in r["ratios"].items()},
              {k: round(v, 4) for k, v in r["seconds"].items()}, "identical:", r["identical_results"])
    out = RESULTS / ("_scratch/bench_mx_quick.json" if quick else "bench_mx.json")
    write_json(Path(out), {"experiment": "bench_mx", "quick": quick, "results": results,
                           "environment": environment()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])

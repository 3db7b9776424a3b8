"""fpanalysis: will my network work in pure 16-bit floating point, and if not, exactly why?

Subcommands:
  verify    compare the emulator with independent oracles (numpy, torch, gmpy2, softfloat,
            ml_dtypes); prints a table and exits non-zero on any mismatch
  bench     speed of the emulator against named baselines measured in the same run
  formats   the preset floating-point formats and their constants
  round     round numbers to a format and show the result and its bit pattern
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ._table import format_table


class UserError(Exception):
    """An error caused by the user's input: printed as one paragraph, no traceback."""


def _write_json(path: str | None, payload: Any) -> None:
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {p}")


# --- verify -----------------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    from .progress import progress_bar

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    suites: list[tuple[str, Callable[..., list[dict[str, Any]]]]] = []
    try:
        from . import verify as _verify

        suites.append(
            ("rounding and conversions", lambda cb: _verify.run_all(
                exhaustive=args.exhaustive, n=args.n, seed=args.seed, progress=cb))
        )
    except ImportError as exc:  # pragma: no cover - only while a module is missing
        rows.append({"check": "rounding suite", "oracle": "-", "n": 0, "mismatches": -1,
                     "first_mismatch": f"not available: {exc}"})
    try:
        from . import verify_ops as _vops

        suites.append(("arithmetic", lambda cb: _vops.verify_ops(
            n_pairs=args.n, seed=args.seed, progress=cb)))
    except ImportError as exc:  # pragma: no cover
        rows.append({"check": "arithmetic suite", "oracle": "-", "n": 0, "mismatches": -1,
                     "first_mismatch": f"not available: {exc}"})
    for name, run in suites:
        with progress_bar(desc=f"verify: {name}", unit="check") as bar:
            rows += run(bar.callback)
    columns = ["check", "format", "mode", "oracle", "n", "mismatches", "first_mismatch"]
    print(format_table(rows, columns))
    total = sum(int(r.get("n", 0)) for r in rows)
    bad = sum(int(r.get("mismatches", 0)) for r in rows if int(r.get("mismatches", 0)) > 0)
    unavailable = sum(1 for r in rows if int(r.get("mismatches", 0)) < 0)
    print(f"\n{len(rows)} checks, {total:,} comparisons, {bad} mismatches"
          f"{f', {unavailable} checks unavailable' if unavailable else ''}"
          f" ({time.perf_counter() - t0:.1f} s)")
    _write_json(args.json, {"rows": rows, "exhaustive": args.exhaustive, "n": args.n, "seed": args.seed})
    return 0 if bad == 0 and unavailable == 0 else 1


# --- bench ------------------------------------------------------------------------------


def _cmd_bench(args: argparse.Namespace) -> int:
    from .benchmarks import run_benchmarks

    results = run_benchmarks(quick=args.quick)
    for res in results:
        print(f"\n{res['benchmark']} (n={res['n']:,})")
        rows = [{"ratio": k, "value": v, "goal": res.get("goals", {}).get(k, "")} for k, v in res["ratios"].items()]
        print(format_table(rows, ["ratio", "value", "goal"]))
        for note in res.get("notes", []):
            print(f"  note: {note}")
    _write_json(args.json, results)
    return 0


# --- formats / round --------------------------------------------------------------------


def _cmd_formats(args: argparse.Namespace) -> int:
    from .formats import FORMATS

    rows = [
        {"name": f.name, "p": f.p, "emin": f.emin, "emax": f.emax, "u": f.u, "max": f.max,
         "min normal": f.min_normal, "min subnormal": f.min_subnormal, "overflow": f.overflow.value}
        for f in FORMATS.values()
    ]
    print(format_table(rows, list(rows[0])))
    return 0


def _cmd_round(args: argparse.Namespace) -> int:
    import numpy as np

    from .formats import get_format
    from .rounding import round_to, to_bits

    try:
        values = np.array([float(v) for v in args.values], dtype=np.float64)
    except ValueError as exc:
        raise UserError(f"could not read a number: {exc}") from None
    fmt = get_format(args.format)
    y = round_to(values, fmt, args.mode, seed=args.seed)
    rows = []
    for v, r in zip(values, np.atleast_1d(y)):
        row: dict[str, Any] = {"input": repr(float(v)), "rounded": repr(float(r)), "error": float(r - v)}
        if fmt.exponent_bits is not None and args.mode != "stochastic":
            bits = int(to_bits(np.array([v]), fmt, args.mode)[0])
            row["bits"] = f"0x{bits:0{(fmt.total_bits or 8) // 4}x}"
        rows.append(row)
    print(f"{fmt.describe()}\nmode: {args.mode}")
    print(format_table(rows, list(rows[0])))
    return 0


# --- main -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpanalysis", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("verify", help="compare the emulator with independent oracles",
                       description="Compare rounding, conversions, encodings and arithmetic with "
                       "numpy, torch, gmpy2 (MPFR), softfloat and ml_dtypes. Exit status 1 on any mismatch.")
    p.add_argument("--exhaustive", action="store_true",
                   help="all 2^32 float32 -> fp16 conversions and 10^6 operand pairs per op (minutes)")
    p.add_argument("--n", type=int, default=None, help="random operands per check (default: 10^5, 10^6 with --exhaustive)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("bench", help="emulator speed vs baselines (ratios from one run)",
                       description="Time the emulator and named baselines in the same run and print ratios.")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for a smoke test")
    p.add_argument("--json", metavar="PATH", help="also write results as JSON")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("formats", help="list the preset formats")
    p.set_defaults(func=_cmd_formats)

    p = sub.add_parser("round", help="round numbers to a format",
                       description="Round numbers to a format and show the results and bit patterns.")
    p.add_argument("values", nargs="+", help="numbers (e.g. 0.1 65520 1e-8)")
    p.add_argument("--format", "-f", default="fp16")
    p.add_argument("--mode", "-m", default="nearest-even")
    p.add_argument("--seed", type=int, default=None, help="seed for --mode stochastic")
    p.set_defaults(func=_cmd_round)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if getattr(args, "n", None) is None and args.command == "verify":
        args.n = 10**6 if args.exhaustive else 10**5
    try:
        return int(args.func(args))
    except (UserError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"fpanalysis {args.command}: error: {exc}\n(run with --debug for the full traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

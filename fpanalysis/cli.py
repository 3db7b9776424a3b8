"""fpanalysis: will my network work in pure 16-bit floating point, and if not, exactly why?

Subcommands:
  check     will this model train in pure fp16 (or bf16, fp8)? a verdict with reasons and fixes
  analyze   per-layer rounding error vs bounds, and Γ > 2B certificates, for a model on data
  verify    compare the emulator with independent oracles (numpy, torch, gmpy2, softfloat,
            ml_dtypes); prints a table and exits non-zero on any mismatch
  bench     speed of the emulator against named baselines measured in the same run
  formats   the preset floating-point formats and their constants
  round     round numbers to a format and show the result and its bit pattern
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from ._table import format_table

EXIT_CODES = """\
exit status:
  0    success
  1    the result asks for attention: check --fail-on matched the verdict (or a skipped
       check, with --fail-on changes); verify found a mismatch or an unavailable oracle
  2    bad input: unknown or out-of-range option, unreadable data, model or checkpoint,
       an output path that cannot be written (refused before anything runs)
  3    internal error (a bug in fpanalysis: please report it with the command line)
  130  interrupted
"""


class UserError(Exception):
    """An error caused by the user's input: printed as one paragraph, no traceback."""


def _count(option: str, value: int | None, minimum: int = 1) -> None:
    """Refuse a count below ``minimum`` (``None`` means the option was left out)."""
    if value is not None and value < minimum:
        raise UserError(f"{option} must be an integer >= {minimum}, got {value}")


def _probe_writable(folder: Path, what: str) -> None:
    """Create ``folder`` (and its parents) and write a scratch file in it, so that an output
    that cannot be written is refused before the run instead of after it."""
    import tempfile

    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {what}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"cannot write {what}: {exc.strerror or exc} ({folder})") from None


def _check_outputs(args: argparse.Namespace) -> None:
    """--json and --plan name files and --plots a folder: all must be writable before anything runs."""
    for option in ("json", "plan"):
        json_path = getattr(args, option, None)
        if json_path:
            p = Path(json_path)
            if p.is_dir():
                raise UserError(f"--{option} {json_path} is a folder; give a file name such as {p / (option + '.json')}")
            _probe_writable(p.parent if str(p.parent) else Path("."), f"--{option} {json_path}")
    plots = getattr(args, "plots", None)
    if plots:
        if Path(plots).exists() and not Path(plots).is_dir():
            raise UserError(f"--plots {plots} is a file; give a folder for the plots")
        _probe_writable(Path(plots), f"--plots {plots}")


def _write_json(path: str | None, payload: Any) -> None:
    """Write ``payload`` (a report with ``to_json()``, or plain data) to ``path`` as standard JSON:
    non-finite numbers as ``"nan"``/``"inf"``/``"-inf"`` (docs/report_schema.md)."""
    if path:
        from ._json import dumps

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(payload.to_json() if hasattr(payload, "to_json") else dumps(payload, indent=2))
        print(f"wrote {p}")


# --- check ------------------------------------------------------------------------------

DEMO = {"model": "lenet5", "data": "mnist5000"}


def _load_check_data(spec: str, n: int | None, seed: int) -> Any:
    """A built-in dataset name, or a directory holding MNIST idx files or CIFAR-10 batches."""
    from pathlib import Path as _P

    from .datasets import dataset_names, load_dataset

    path = _P(spec)
    if spec in dataset_names():
        if spec in ("mnist", "cifar10"):
            raise UserError(f"dataset {spec!r} is read from files: pass the directory that holds them as --data")
        return _enough(load_dataset(spec, n_train=n), n, spec)
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if any(nm.startswith("train-images") for nm in names):
            return _enough(load_dataset("mnist", data_dir=path, n_train=n), n, spec)
        if any(nm.startswith(("data_batch", "cifar10")) for nm in names):
            return _enough(load_dataset("cifar10", data_dir=path, n_train=n), n, spec)
        raise UserError(
            f"{path} holds neither MNIST idx files (train-images-idx3-ubyte[.gz], ...) nor CIFAR-10 "
            "batches (data_batch_1, ... or cifar10_*.npz)"
        )
    raise UserError(
        f"unknown data {spec!r}: give a built-in dataset ({', '.join(n for n in dataset_names() if n not in ('mnist', 'cifar10'))}) "
        "or a directory with MNIST or CIFAR-10 files"
    )


def _enough(ds: Any, n: int | None, spec: str) -> Any:
    if n is not None and ds.x_train.shape[0] < n:
        raise UserError(f"--samples {n} but {spec} has only {ds.x_train.shape[0]} training samples; "
                        f"give at most {ds.x_train.shape[0]}, or leave --samples out to use them all")
    return ds


def _cmd_check(args: argparse.Namespace) -> int:
    from .progress import progress_bar

    if args.demo:
        args.model = args.model or DEMO["model"]
        args.data = args.data or DEMO["data"]
    if not args.model:
        raise UserError("name a model (a built-in name or path/to/file.py:factory), or run with --demo")
    if not args.data:
        raise UserError("name the data with --data (a built-in dataset or a directory), or run with --demo")
    from .check.config import CheckConfig

    _count("--samples", args.samples)
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint {args.checkpoint} does not exist")
    config = CheckConfig(  # every option checked before anything loads or runs
        fmt=args.format, optimizer=args.optimizer, lr=args.lr, eps=args.eps, momentum=args.momentum,
        batch_size=args.batch_size, steps=args.steps, warmup_steps=args.warmup_steps,
        certify=not args.no_certify, certify_samples=args.certify_samples, profile=args.profile,
        dry_run_steps=args.dry_run_steps, seed=args.seed, model_name=f"{args.model} on {args.data}",
        recipe=args.recipe, history_len=args.amax_history, margin=args.fp8_margin,
    )
    if config.is_fp8 and args.plots:
        raise UserError("--plots draws the fp16/bf16 check's ranges; the FP8 check (--format fp8) has no plots yet: "
                        "drop --plots (the per-GEMM table is in the report and in --json)")
    if args.plan and args.dry_run_steps == 0:
        raise UserError("--plan needs the dry run (it writes the plan the dry run verified); drop --dry-run-steps 0")
    _check_outputs(args)
    import torch

    from .check import check
    from .nn.loading import load_checkpoint, load_model

    torch.manual_seed(args.seed)
    ds = _load_check_data(args.data, args.samples, args.seed)
    model = load_model(args.model, input_shape=ds.input_shape, num_classes=ds.num_classes)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    with progress_bar(desc="fpanalysis check", unit="step") as bar:
        report = check(model, (ds.x_train, ds.y_train), config, progress=bar.callback,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    print(report.render(color=args.color == "always" or (args.color == "auto" and sys.stdout.isatty())))
    if args.json:
        _write_json(args.json, report)
    if args.plan:
        plan = report.details.get("plan")
        if plan is None and report.verdict == "SAFE":
            from .nn.shadow import PrecisionPlan

            plan = PrecisionPlan(format=config.format.name, profile=config.profile).to_dict()
        if plan is None:
            print(f"no plan written to {args.plan}: no change was verified (verdict {report.verdict})")
        else:
            _write_json(args.plan, plan)
    if args.plots:
        from .check.plots import plot_check

        for path in plot_check(report, args.plots):
            print(f"wrote {path}")
    fail_on = {"never": (), "unsafe": ("UNSAFE",), "changes": ("UNSAFE", "SAFE WITH CHANGES")}[args.fail_on]
    if args.fail_on == "changes" and report.verdict not in fail_on:
        skipped = [f.check for f in report.findings if f.status == "skipped"]
        if skipped:  # a check that did not run is not a pass
            print(f"--fail-on changes: {', '.join(skipped)} skipped (not examined); exit status 1", file=sys.stderr)
            return 1
    return 1 if report.verdict in fail_on else 0


# --- analyze ----------------------------------------------------------------------------


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.run import AnalysisConfig

    _count("--n", args.n)
    AnalysisConfig(fmt=args.format, profile=args.profile, mode=args.mode,  # every option checked up front
                   failure_prob=args.failure_prob, seed=args.seed)
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint {args.checkpoint} does not exist")
    _check_outputs(args)
    import torch

    from .analysis import analyze
    from .nn.loading import load_checkpoint, load_model

    torch.manual_seed(args.seed)
    ds = _load_check_data(args.data, None, args.seed)
    if ds.x_test.shape[0] < args.n:
        raise UserError(f"--n {args.n} but {args.data} has only {ds.x_test.shape[0]} test inputs; "
                        f"give at most {ds.x_test.shape[0]}")
    model = load_model(args.model, input_shape=ds.input_shape, num_classes=ds.num_classes)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    x, y = ds.x_test[: args.n], ds.y_test[: args.n]
    rep = analyze(model, x, fmt=args.format, profile=args.profile, mode=args.mode,
                  failure_prob=args.failure_prob, labels=y, progress=True, name=args.model,
                  seed=args.seed if args.mode == "stochastic" else None, certificate=args.certificate)
    print(rep.table())
    print()
    print(rep.summary())
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")
    if args.plots:
        from pathlib import Path as _P

        out = _P(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        rep.plot_errors(out / "layer_errors.png")
        rep.plot_exponents(out / "exponents.png")
        print(f"wrote {out / 'layer_errors.png'}, {out / 'exponents.png'}")
    return 0


# --- verify -----------------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    _count("--n", args.n)
    _count("--tc-blocks", args.tc_blocks)
    _check_outputs(args)
    from .progress import progress_bar
    from .verify import COLUMNS, SUITES, run_suites

    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for suite in SUITES:
        with progress_bar(desc=f"verify: {suite.name}", unit="check") as bar:
            rows += run_suites(args.n, seed=args.seed, exhaustive=args.exhaustive,
                               progress=lambda name, cb=bar.callback: cb, suites=[suite], blocks=args.tc_blocks)
    print(format_table(rows, COLUMNS))
    total = sum(int(r.get("n", 0)) for r in rows)
    bad = sum(int(r.get("mismatches", 0)) for r in rows if int(r.get("mismatches", 0)) > 0)
    unavailable = sum(1 for r in rows if int(r.get("mismatches", 0)) < 0)
    print(f"\n{len(rows)} checks, {total:,} comparisons, {bad} mismatches"
          f"{f', {unavailable} checks unavailable' if unavailable else ''}"
          f" ({time.perf_counter() - t0:.1f} s)")
    _write_json(args.json, {"rows": rows, "exhaustive": args.exhaustive, "n": args.n, "tc_blocks": args.tc_blocks,
                            "seed": args.seed})
    return 0 if bad == 0 and unavailable == 0 else 1


# --- bench ------------------------------------------------------------------------------


def _cmd_bench(args: argparse.Namespace) -> int:
    _check_outputs(args)
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
    from .rounding import RoundingMode, round_to, to_bits

    try:
        values = np.array([float(v) for v in args.values], dtype=np.float64)
    except ValueError as exc:
        raise UserError(f"could not read a number: {exc}") from None
    fmt = get_format(args.format)
    if RoundingMode.parse(args.mode) is RoundingMode.STOCHASTIC and args.seed is None:
        raise UserError("--mode stochastic needs --seed N: the random bits come from the seed, "
                        "so the same seed gives the same roundings")
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
        prog="fpanalysis", description=__doc__, epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "check", help="will this model train in pure fp16? (verdict, reasons, fixes)",
        description="Measure a model in fp32 for a few training steps and judge it for pure low-precision "
        "training: activation and gradient ranges, underflow, optimizer epsilon, update stagnation, "
        "certified inference agreement. Prints findings with the numbers behind them and a verdict. "
        "With --format fp8 --recipe R: the FP8 / MX GEMM check instead (per-GEMM operand saturation and "
        "underflow, output error, amax history needed, GEMMs to keep in bf16 verified in a dry run; "
        "docs/scaled_formats.md).",
    )
    p.add_argument("model", nargs="?", help="built-in model name (mlp, lenet5, resnet20, vgg_small, vit_tiny) "
                   "or path/to/file.py:factory returning an nn.Module")
    p.add_argument("--demo", action="store_true", help=f"bundled default: {DEMO['model']} on {DEMO['data']} (offline)")
    p.add_argument("--data", help="built-in dataset (mnist5000, digits, mnist1d, gaussian) or a directory "
                   "with MNIST idx files or CIFAR-10 batches")
    p.add_argument("--checkpoint", help="state_dict saved with torch.save (loaded with weights_only=True)")
    p.add_argument("--format", default="fp16", help="target format: a preset (fp16, bf16, fp8_e4m3fn, ...; see "
                   "'fpanalysis formats') or p=P,emin=EMIN,emax=EMAX[,subnormals=0][,overflow=saturate] (default fp16); "
                   "'fp8': the FP8 / MX GEMM check with a scaling recipe (--recipe)")
    p.add_argument("--recipe", default=None,
                   help="with --format fp8: the scaling recipe of the FP8 GEMMs (Linear, Conv2d): delayed (per-tensor, "
                   "amax history; default), current (per-tensor), mxfp8, mxfp6, mxfp4 (MX blocks of 32), nvfp4; per GEMM "
                   "it reports operand saturation/underflow, output error vs fp32 and the amax history needed, and "
                   "verifies in a dry run (fp32 vs emulated FP8, same weights and batches) which GEMMs to keep in bf16")
    p.add_argument("--amax-history", type=int, default=None,
                   help="with --format fp8 --recipe delayed: amax history length (default 16)")
    p.add_argument("--fp8-margin", type=int, default=None,
                   help="with --format fp8 and a per-tensor recipe: scale = fmax / amax / 2^margin (default 0)")
    p.add_argument("--optimizer", default="sgd", help="sgd, adam or adamw (default sgd)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--eps", type=float, default=1e-8, help="Adam epsilon (default 1e-8, torch's default)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="fp32 training steps measured")
    p.add_argument("--warmup-steps", type=int, default=200, help="fp32 steps before measuring (so margins mean something)")
    p.add_argument("--samples", type=int, default=None, help="use only the first N training samples (N >= 1)")
    p.add_argument("--certify-samples", type=int, default=256, help="inputs for the agreement certificate")
    p.add_argument("--no-certify", action="store_true", help="skip the inference-agreement certificate")
    p.add_argument("--profile", default="fp32-accumulate",
                   help="arithmetic profile of the fp16 run: fp32-accumulate, ieee, exact, or a tensor core "
                        "(volta, turing, ampere, ada, hopper, blackwell; h100, a100, ...)")
    p.add_argument("--dry-run-steps", type=int, default=16,
                   help="steps of the shadow low-precision dry run that also verifies each fix (default 16; 0 "
                        "skips it); the fp16 check adds a second segment from the warmed-up model, the FP8 check "
                        "doubles the length (up to 8 times) until fp32's loss has fallen by 5%%")
    p.add_argument("--plan", metavar="PATH", help="write the verified precision plan as JSON "
                   "(apply it with fpanalysis.nn.shadow.apply_precision_plan; with --format fp8 an FP8 plan: "
                   "recipe, options and GEMMs kept in bf16, applied with fpanalysis.nn.fp8.apply_fp8_plan)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--plots", metavar="DIR", help="write plots (ranges vs format bands, gradient histograms)")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--fail-on", choices=["never", "unsafe", "changes"], default="never",
                   help="exit status 1 when the verdict is UNSAFE ('unsafe'), or when it is not SAFE or a "
                   "check was skipped (not examined) ('changes'; --no-certify skips the certificate on purpose)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "analyze", help="per-layer rounding error vs bounds; certified agreement (Γ > 2B)",
        description="Run MODEL on test inputs in fp32, a float64 reference, the emulator and torch's own "
        "16-bit kernels (float16 for fp16, bfloat16 for bf16; none for other formats); report every layer's measured error against its deterministic and probabilistic bounds, "
        "range statistics, and the certified vs observed agreement of the classes. Train or load a "
        "checkpoint first: an untrained model has no margins to certify.",
    )
    p.add_argument("model", help="built-in model name or path/to/file.py:factory")
    p.add_argument("--data", required=True, help="built-in dataset or a directory with MNIST / CIFAR-10 files")
    p.add_argument("--checkpoint", help="state_dict saved with torch.save (loaded with weights_only=True)")
    p.add_argument("--n", type=int, default=256, help="number of test inputs (default 256)")
    p.add_argument("--format", default="fp16")
    p.add_argument("--profile", default="fp32-accumulate",
                   help="fp32-accumulate, ieee, exact, or a tensor core (volta, turing, ampere, ada, hopper, "
                        "blackwell; h100, a100, ...)")
    p.add_argument("--mode", default="nearest-even")
    p.add_argument("--failure-prob", type=float, default=1e-6, help="of the probabilistic bound, per input")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--certificate", default="adjoint",
                   choices=("adjoint", "adjoint-exact", "adjoint-windowed", "interval"),
                   help="adjoint (default; piecewise-linear networks and GELU / layer norm / softmax / "
                        "attention, else the interval one), adjoint-exact (tier-B exact-row radii: deep "
                        "CNNs and ViTs, costly), adjoint-windowed (tier B with rows "
                        "stopped at each change of resolution: cheaper, looser) or interval (Gamma > 2B)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--plots", metavar="DIR", help="write layer_errors.png and exponents.png there")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("verify", help="compare the emulator with independent oracles",
                       description="Compare rounding, conversions, encodings, arithmetic and matrix "
                       "products (the GEMM kernels of this CPU) with numpy, torch, gmpy2 (MPFR), softfloat "
                       "and ml_dtypes, and the tensor-core models with mmasim and mmaemu. Exit status 1 on any "
                       "mismatch. The default run takes a few minutes at most on two cores; --exhaustive is the "
                       "full run and takes much longer.")
    p.add_argument("--exhaustive", action="store_true",
                   help="all 2^32 float32 -> fp16 conversions, 10^6 operand pairs per op and 10^5 tensor-core "
                        "blocks per case (long)")
    p.add_argument("--n", type=int, default=None, help="random operands per check (default: 10^5, 10^6 with --exhaustive; "
                   "not the tensor-core suite, see --tc-blocks)")
    p.add_argument("--tc-blocks", type=int, default=None, metavar="N",
                   help="random blocks per tensor-core check (model x case) against mmasim (default: 2000, "
                        "seconds; 10^5 with --exhaustive, the full verification: about a minute on two idle cores)")
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
    # OpenMP workers of torch and of numba's parallel kernels otherwise spin after each parallel
    # call and slow each other down on a machine with few cores: measured on this project's 2-core
    # machine (load ~5), `check --demo` took 96 s with the default policy and 7.4 s with PASSIVE.
    # Read once, when the OpenMP runtime starts (torch and numba are imported later); a value set
    # by the user wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if getattr(args, "n", None) is None and args.command == "verify":
        args.n = 10**6 if args.exhaustive else 10**5
    try:
        return int(args.func(args))
    except (UserError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"fpanalysis {args.command}: error: {exc}\n(run with --debug for the full traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: keep it apart from 1 (--fail-on) and 2 (bad input)
        if args.debug:
            raise
        print(f"fpanalysis {args.command}: internal error: {type(exc).__name__}: {exc}\n"
              "(this is a bug in fpanalysis; run with --debug for the traceback and please report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())

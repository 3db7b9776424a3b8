"""A resumable grid of training runs (dataset x model x mode x seed x optimizer) and its summary.

    python -m experiments.sweep --out=experiments/results/cpu_sweep/digits \\
        --datasets=digits --models=mlp,lenet5 --modes=fp32,amp-fp16,fp16,bf16 --seeds=0,1,2 \\
        --optimizers=sgd,adam --epochs=10 --batch_size=32
    python -m experiments.sweep --out=... --summary_only        # rebuild summary.md / summary.csv
    python -m experiments.sweep ... --backend=ray [--ray_address=auto]

Grid axes take comma-separated lists; every other ``--key=value`` is a ``train.Config``
override applied to all runs (``--smoke`` too).  Sweep options: ``--out`` (folder),
``--workers`` (parallel runs; default: the machine's cores, one torch thread each),
``--backend`` (``local``: worker processes, default; ``ray``; ``serial``: in this process),
``--runs_per_process`` (local: runs per worker process before a fresh one starts; 1, the
default, gives each run its own process and so its own peak-RSS number), ``--retries`` (re-runs of a run whose process died), ``--max_minutes`` (launch no new
run after this), ``--no_progress``, ``--summary_only``.

Layout of ``--out``: ``runs/<run_name>.json`` (one per run, written atomically when the run
ends), ``weights/<run_name>.pt``, ``failed/<run_name>.txt`` (traceback or exit status of a
failed attempt), ``sweep.json`` (grid and command), ``summary.md`` and ``summary.csv``.

Why nothing finished is ever lost: each run writes its own result file atomically the moment it
ends, and the sweep never holds results only in memory.  A run counts as done when its file
exists, parses, and records the same configuration; on restart only the other runs execute,
and a run whose file is present but unusable (truncated, another configuration, unfinished) is
re-run with one line on stderr saying why.  A worker that dies (killed, out of memory, a crash
in native code) takes only its own run with it; that run is retried ``--retries`` times, then
reported as failed.  Ctrl-C stops the workers and prints one line (exit status 130); finished
runs are kept and the same command resumes.

The summary skips a result file it cannot use (not JSON, or a key it needs missing or of the
wrong type), names it on stderr, and the command then exits with status 1.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from experiments import train
from fpanalysis._json import restore_nonfinite

ROOT = Path(__file__).resolve().parent.parent

AXES = {"datasets": "dataset", "models": "model", "modes": "mode", "seeds": "seed", "optimizers": "optimizer"}
BACKENDS = ("local", "ray", "serial")


@dataclass
class SweepOptions:
    out: str = "experiments/results/sweep"
    workers: int = 0          # 0 = os.cpu_count()
    backend: str = "local"
    runs_per_process: int = 1  # local backend: runs executed by one worker process before it exits
    retries: int = 1
    max_minutes: float = 0.0  # 0 = no deadline
    ray_address: str = ""     # "" = start a local Ray instance
    progress: bool = True
    summary_only: bool = False
    save_weights: bool = True


@dataclass
class SweepReport:
    """What one call of :func:`run_sweep` did (results themselves are on disk)."""

    total: int = 0
    skipped: list[str] = field(default_factory=list)    # already complete before this call
    executed: list[str] = field(default_factory=list)   # completed during this call
    failed: dict[str, str] = field(default_factory=dict)  # run name -> last error
    not_started: list[str] = field(default_factory=list)  # deadline reached
    rerun: dict[str, str] = field(default_factory=dict)   # run name -> why its present result file was not used


# ============================================================================================
# grid and completion


def expand_grid(base: train.Config, axes: dict[str, list], out: str | Path, *, save_weights: bool = True
                ) -> list[train.Config]:
    """One Config per grid point, result and weights paths under ``out``.

    ``axes`` maps Config field names (``dataset``, ``model``, ``mode``, ``seed``,
    ``optimizer``) to lists of values; the product is taken in that order.
    """
    import itertools

    out = Path(out)
    names = [k for k in ("dataset", "model", "mode", "optimizer", "seed") if k in axes]
    bad = sorted(set(axes) - set(names))
    if bad:
        raise ValueError(f"unknown grid axes {bad}; valid axes are: dataset, model, mode, optimizer, seed")
    configs, seen = [], set()
    for values in itertools.product(*(axes[k] for k in names)):
        cfg = dataclasses.replace(base, **dict(zip(names, values)))
        name = train.run_name(cfg)
        if name in seen:
            continue
        seen.add(name)
        weights = str(out / "weights" / f"{name}.pt") if save_weights else "none"
        configs.append(dataclasses.replace(cfg, out=str(out / "runs" / f"{name}.json"), weights=weights))
    return configs


def result_problem(cfg: train.Config) -> str | None:
    """Why ``cfg.out`` does not hold a finished result of exactly this configuration (None: it does)."""
    try:
        with open(cfg.out) as f:
            text = f.read()
    except FileNotFoundError:
        return "no result file"
    except OSError as exc:
        return f"result file not readable ({exc.strerror or exc})"
    try:
        res = restore_nonfinite(json.loads(text))
    except ValueError as exc:
        return f"result file is truncated or not valid JSON ({exc})"
    if not (isinstance(res, dict) and res.get("schema") == train.SCHEMA and isinstance(res.get("config"), dict)):
        return f"result file is not a {train.SCHEMA} result"
    if res.get("status") not in ("complete", "diverged"):
        return f"result file has status {res.get('status')!r}"
    # a Config field added later (e.g. ``smoke``) takes its default in results written before it
    recorded = {**dataclasses.asdict(train.Config()), **res["config"]}
    if recorded != dataclasses.asdict(cfg):
        changed = sorted(k for k, v in dataclasses.asdict(cfg).items() if recorded.get(k) != v)
        return f"result file records another configuration ({', '.join(changed)})"
    return None


def is_complete(cfg: train.Config) -> bool:
    """True when ``cfg.out`` holds a finished result of exactly this configuration."""
    return result_problem(cfg) is None


def _failure_path(cfg: train.Config) -> Path:
    return Path(cfg.out).parent.parent / "failed" / f"{train.run_name(cfg)}.txt"


def _record_failure(cfg: train.Config, text: str) -> None:
    p = _failure_path(cfg)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


# ============================================================================================
# executing one run


def _child(cfg_dicts: list[dict], run_fn: Callable | None) -> None:
    """Entry point of a local worker process: run the configurations in order.

    A run that raises leaves a traceback in ``failed/<run>.txt`` and the worker goes on to the
    next one; a result file appears only for runs that finished.  Ctrl-C in the terminal reaches
    the whole process group: a worker ignores it and is stopped by the sweep (SIGTERM), so that
    only the sweep reports the interruption.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for cfg_dict in cfg_dicts:
        cfg = train.Config(**cfg_dict)
        try:
            (run_fn or train.run)(cfg)
        except Exception:
            _record_failure(cfg, traceback.format_exc())
    sys.stdout.flush()


def _ray_task(cfg_dict: dict, run_fn: Callable | None) -> dict:
    """Ray task: run in a scratch folder and ship the JSON and weights back to the driver."""
    cfg = train.Config(**cfg_dict)
    with tempfile.TemporaryDirectory() as tmp:
        local = dataclasses.replace(cfg, out=str(Path(tmp) / "result.json"),
                                    weights="none" if cfg.weights == "none" else str(Path(tmp) / "weights.pt"))
        (run_fn or train.run)(local)
        result = json.loads((Path(tmp) / "result.json").read_text())
        weights = (Path(tmp) / "weights.pt").read_bytes() if cfg.weights != "none" else None
    return {"result": result, "weights": weights}


def _store_ray_result(cfg: train.Config, payload: dict) -> None:
    result = payload["result"]
    result["config"] = dataclasses.asdict(cfg)  # the driver's paths, so is_complete() matches
    if payload["weights"] is not None:
        wpath = Path(cfg.weights)
        wpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = wpath.with_name(f".{wpath.name}.{os.getpid()}.tmp")
        tmp.write_bytes(payload["weights"])
        os.replace(tmp, wpath)
        if result.get("weights"):
            result["weights"]["path"] = str(wpath)
    train.write_json_atomic(cfg.out, result)


# ============================================================================================
# backends


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="run", dynamic_ncols=True, file=sys.stderr)


def _run_local(todo, report, opts, run_fn, deadline):
    import multiprocessing as mp
    import signal

    # spawn: a fresh interpreter (no fork of a process holding torch threads); with
    # runs_per_process=1 every run also gets its own process and so its own peak-RSS number.
    ctx = mp.get_context("spawn")
    workers = max(1, opts.workers or os.cpu_count() or 1)
    per_proc = max(1, opts.runs_per_process)
    queue = list(todo)
    attempts = {train.run_name(c): 0 for c in todo}
    running: list[tuple[Any, list[train.Config]]] = []
    bar = _progress(len(todo), opts.progress, "sweep")

    def launch():
        n = min(per_proc, max(1, math.ceil(len(queue) / workers)))
        chunk, queue[:] = queue[:n], queue[n:]
        for cfg in chunk:
            _failure_path(cfg).unlink(missing_ok=True)  # a failure file now means: failed in this attempt
        p = ctx.Process(target=_child, args=([dataclasses.asdict(c) for c in chunk], run_fn),
                        name=f"sweep:{train.run_name(chunk[0])}")
        # started with SIGINT ignored (inherited), so a Ctrl-C during its start-up is ignored too
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            p.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        running.append((p, chunk))

    def settle(p, chunk):
        died = p.exitcode != 0
        culprit_seen = False
        for cfg in chunk:
            name = train.run_name(cfg)
            fp = _failure_path(cfg)
            if is_complete(cfg):
                report.executed.append(name)
                report.failed.pop(name, None)
                bar.update(1)
            elif fp.exists():  # raised an exception: deterministic, not retried
                lines = fp.read_text().strip().splitlines()
                report.failed[name] = lines[-1] if lines else "failed"
                bar.update(1)
            elif died and not culprit_seen:  # the run that was in progress when the process died
                culprit_seen = True
                attempts[name] += 1
                msg = f"worker process exited with status {p.exitcode} (killed or crashed) during this run"
                _record_failure(cfg, msg)
                report.failed[name] = msg
                if attempts[name] <= opts.retries:
                    queue.append(cfg)
                else:
                    bar.update(1)
            else:  # not reached before the process died: run it again, no attempt counted
                queue.insert(0, cfg)
        bar.set_postfix(failed=len(report.failed))

    try:
        while queue or running:
            while queue and len(running) < workers:
                if deadline and time.time() > deadline:
                    report.not_started += [train.run_name(c) for c in queue]
                    queue.clear()
                    break
                launch()
            for item in list(running):
                p, chunk = item
                if p.is_alive():
                    continue
                p.join()
                running.remove(item)
                settle(p, chunk)
            time.sleep(0.05)
    finally:
        for p, _ in running:  # interrupted: stop our own children
            if p.is_alive():
                p.terminate()
                p.join(5)
        bar.close()


def _run_serial(todo, report, opts, run_fn, deadline):
    bar = _progress(len(todo), opts.progress, "sweep")
    try:
        for i, cfg in enumerate(todo):
            if deadline and time.time() > deadline:
                report.not_started += [train.run_name(c) for c in todo[i:]]
                break
            name = train.run_name(cfg)
            try:
                (run_fn or train.run)(cfg)
                report.executed.append(name)
            except Exception:
                _record_failure(cfg, traceback.format_exc())
                report.failed[name] = traceback.format_exc().strip().splitlines()[-1]
            bar.update(1)
    finally:
        bar.close()


def _run_ray(todo, report, opts, run_fn, deadline):
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("--backend=ray needs Ray: pip install 'ray[default]'") from exc
    started_here = not ray.is_initialized()
    if started_here:
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if opts.ray_address:
            kw["address"] = opts.ray_address
        else:
            kw["num_cpus"] = opts.workers or os.cpu_count() or 1
        # Ray workers must import experiments.train / experiments.sweep: the repo root on their path.
        paths = [str(ROOT)]
        kw["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}}
        ray.init(**kw)
    threads = max(1, todo[0].threads) if todo else 1
    # max_calls=1: a fresh worker process per run (clean memory numbers); max_retries: re-run a
    # task whose worker died.
    task = ray.remote(num_cpus=threads, max_calls=1, max_retries=opts.retries)(_ray_task)
    bar = _progress(len(todo), opts.progress, "sweep[ray]")
    pending: dict[Any, train.Config] = {}
    queue = list(todo)
    limit = max(1, opts.workers or os.cpu_count() or 1) * 2
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                if deadline and time.time() > deadline:
                    report.not_started += [train.run_name(c) for c in queue]
                    queue.clear()
                    break
                cfg = queue.pop(0)
                pending[task.remote(dataclasses.asdict(cfg), run_fn)] = cfg
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                cfg = pending.pop(ref)
                name = train.run_name(cfg)
                try:
                    _store_ray_result(cfg, ray.get(ref))
                    report.executed.append(name)
                except Exception as exc:  # task error or worker died after all retries
                    _record_failure(cfg, f"{type(exc).__name__}: {exc}")
                    report.failed[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                bar.update(1)
                bar.set_postfix(failed=len(report.failed))
    finally:
        bar.close()
        if started_here:
            ray.shutdown()


def run_sweep(configs: list[train.Config], opts: SweepOptions | None = None, *,
              run_fn: Callable[[train.Config], Any] | None = None) -> SweepReport:
    """Run every configuration whose result is not already complete.

    ``run_fn`` replaces ``train.run`` (it must be importable by name for the local and Ray
    backends); tests use it to inject failures.
    """
    opts = opts or SweepOptions()
    if opts.backend not in BACKENDS:
        raise ValueError(f"unknown backend {opts.backend!r}; valid backends are: {', '.join(BACKENDS)}")
    report = SweepReport(total=len(configs))
    todo = []
    for cfg in configs:
        problem = result_problem(cfg)
        if problem is None:
            report.skipped.append(train.run_name(cfg))
            continue
        if problem != "no result file":
            report.rerun[train.run_name(cfg)] = problem
            print(f"re-running {train.run_name(cfg)}: {cfg.out}: {problem}", file=sys.stderr)
        todo.append(cfg)
    deadline = time.time() + 60 * opts.max_minutes if opts.max_minutes else 0.0
    if todo:
        {"local": _run_local, "serial": _run_serial, "ray": _run_ray}[opts.backend](todo, report, opts, run_fn, deadline)
    return report


# ============================================================================================
# summary


def load_results(out: str | Path, problems: dict[str, str] | None = None) -> list[dict]:
    """Every usable result JSON under ``out/runs``.

    A file that is not JSON, or a result whose content the summary cannot use (a missing key, a
    value of the wrong type), is left out; ``problems`` (if given) receives ``{path: reason}``
    for each.  JSON files of another schema are not results and are ignored.
    """
    results = []
    for p in sorted((Path(out) / "runs").glob("*.json")):
        try:
            r = restore_nonfinite(json.loads(p.read_text()))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            if problems is not None:
                problems[str(p)] = f"not readable as JSON ({type(exc).__name__}: {exc})"
            continue
        if not (isinstance(r, dict) and r.get("schema") == train.SCHEMA):
            continue
        try:  # the summary's own code is the check: every key it reads, with the types it needs
            summary_markdown(summarize([r]))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            if problems is not None:
                what = f"missing key {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
                problems[str(p)] = f"unusable result ({what})"
            continue
        results.append(r)
    return results


def _peak_memory(r: dict) -> float:
    m = r.get("memory", {})
    if m.get("kind") == "cuda_max_allocated":
        return float(m["peak_minus_dataset_bytes"])
    return float(m.get("peak_minus_baseline_bytes", float("nan")))


def _mean_std(values: list[float]) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


MODE_ORDER = ["fp32", "amp-fp16", "fp16", "bf16", "amp-bf16"]
COLUMNS = ["dataset", "model", "optimizer", "variant", "mode", "runs", "diverged", "acc_mean", "acc_std",
           "acc_minus_fp32", "acc_minus_amp_fp16", "epoch_s", "time_ratio_fp32", "time_ratio_amp_fp16",
           "train_time_s", "samples_per_s", "peak_mem_mb", "mem_ratio_fp32", "state_mb", "memory_kind", "device"]


def _epoch_seconds(r: dict) -> float:
    """Steady-state seconds per training epoch: the mean over epochs after the first (which
    pays one-off costs: lazy initialisation, kernel selection); the first if it is the only one."""
    walls = [e["wall_s"] for e in r.get("epochs", [])]
    if not walls:
        return float("nan")
    return sum(walls[1:]) / len(walls[1:]) if len(walls) > 1 else walls[0]


def summarize(results: list[dict]) -> list[dict]:
    """One row per (dataset, model, optimizer, variant, mode).

    ``variant`` is the run tag (e.g. an epsilon setting).  Accuracy: final test accuracy in
    percent, mean and sample standard deviation over seeds, diverged runs included as measured
    (and counted).  ``acc_minus_fp32`` / ``acc_minus_amp_fp16``: difference of mean accuracies
    in percentage points.  ``epoch_s``: steady-state seconds per training epoch, mean over runs
    that did not diverge (a diverged run stops early); ``time_ratio_*`` are ratios of those
    means.  ``peak_mem_mb``: CUDA max allocated minus the dataset held on the device, or on CPU
    the growth of resident memory from just before the model is built; ``state_mb``: weights +
    gradients + optimizer state.
    """
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in results:
        c = r["config"]
        key = (c["dataset"], c["model"], c["optimizer"], c.get("tag", ""))
        groups.setdefault(key, {}).setdefault(c["mode"], []).append(r)
    rows = []
    for key in sorted(groups):
        by_mode = groups[key]
        stats = {}
        for mode, rs in by_mode.items():
            ok = [r for r in rs if r["status"] != "diverged"]
            acc_m, acc_s = _mean_std([100.0 * r["final"]["test_acc"] for r in rs])
            stats[mode] = dict(
                runs=len(rs), diverged=len(rs) - len(ok), acc_mean=acc_m, acc_std=acc_s,
                epoch_s=_mean_std([_epoch_seconds(r) for r in ok])[0],
                train_time_s=_mean_std([r["final"]["train_time_s"] for r in rs])[0],
                samples_per_s=_mean_std([r["final"]["samples_per_s"] for r in ok])[0],
                peak_mem_mb=_mean_std([_peak_memory(r) for r in rs])[0] / 2 ** 20,
                state_mb=_mean_std([sum(r["memory"][k] for k in ("param_bytes", "grad_bytes", "optimizer_state_bytes"))
                                    for r in rs])[0] / 2 ** 20,
                memory_kind=rs[0]["memory"].get("kind"), device=rs[0]["environment"]["device"])
        ref, amp = stats.get("fp32"), stats.get("amp-fp16")
        order = [m for m in MODE_ORDER if m in stats] + sorted(m for m in stats if m not in MODE_ORDER)
        def diff(s, other, k):
            return s[k] - other[k] if other else float("nan")

        def ratio(s, other, k):
            return s[k] / other[k] if other and other[k] else float("nan")

        for mode in order:
            s = stats[mode]
            rows.append({"dataset": key[0], "model": key[1], "optimizer": key[2], "variant": key[3], "mode": mode,
                         **s, "acc_minus_fp32": diff(s, ref, "acc_mean"),
                         "acc_minus_amp_fp16": diff(s, amp, "acc_mean"),
                         "time_ratio_fp32": ratio(s, ref, "epoch_s"), "time_ratio_amp_fp16": ratio(s, amp, "epoch_s"),
                         "mem_ratio_fp32": ratio(s, ref, "peak_mem_mb")})
    return rows


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec)


def summary_markdown(rows: list[dict], title: str = "Sweep summary") -> str:
    """The summary rows as a Markdown table with a legend."""
    variants = any(r["variant"] for r in rows)
    head = ["dataset", "model", "opt"] + (["variant"] if variants else []) + [
        "mode", "runs", "diverged", "test acc % (mean ± std)", "Δ vs fp32 (pts)", "Δ vs amp-fp16 (pts)",
        "epoch s", "time ×fp32", "time ×amp-fp16", "samples/s", "peak mem MB", "mem ×fp32", "w+g+opt MB"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["dataset"], r["model"], r["optimizer"]] + ([r["variant"] or "—"] if variants else []) + [
            r["mode"], str(r["runs"]), str(r["diverged"]),
            f"{_fmt(r['acc_mean'], '.2f')} ± {_fmt(r['acc_std'], '.2f')}", _fmt(r["acc_minus_fp32"], "+.2f"),
            _fmt(r["acc_minus_amp_fp16"], "+.2f"), _fmt(r["epoch_s"], ".3f"), _fmt(r["time_ratio_fp32"], ".2f"),
            _fmt(r["time_ratio_amp_fp16"], ".2f"), _fmt(r["samples_per_s"], ".0f"), _fmt(r["peak_mem_mb"], ".1f"),
            _fmt(r["mem_ratio_fp32"], ".2f"), _fmt(r["state_mb"], ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    kinds = sorted({f"{r['device']}: {r['memory_kind']}" for r in rows})
    lines += ["",
              "Test accuracy: final epoch, mean ± sample std over seeds; diverged runs are included as measured "
              "and counted. Δ: difference of mean accuracies, percentage points. Epoch s: steady-state training "
              "seconds per epoch (epochs after the first; evaluation excluded), runs that did not diverge; time × "
              "are ratios of those means. Peak memory: CUDA max allocated minus the dataset on the device, or on "
              f"CPU the growth of resident memory from just before the model is built ({'; '.join(kinds)}). "
              "w+g+opt: bytes of weights, gradients and optimizer state."]
    return "\n".join(lines) + "\n"


def summary_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def write_summary(out: str | Path, title: str = "Sweep summary", problems: dict[str, str] | None = None
                  ) -> list[dict]:
    """Summarise ``out/runs/*.json`` into ``out/summary.md`` and ``out/summary.csv`` (atomically);
    files left out go to ``problems`` (see :func:`load_results`)."""
    out = Path(out)
    rows = summarize(load_results(out, problems))
    for name, text in (("summary.md", summary_markdown(rows, title)), ("summary.csv", summary_csv(rows))):
        tmp = out / f".{name}.{os.getpid()}.tmp"
        out.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return rows


# ============================================================================================
# command line


def parse_sweep_args(argv: list[str]) -> tuple[SweepOptions, dict[str, list], train.Config]:
    opts = SweepOptions()
    axes: dict[str, list] = {}
    rest = []
    opt_fields = {f.name: f for f in dataclasses.fields(SweepOptions)}
    cfg_fields = {f.name: f for f in dataclasses.fields(train.Config)}
    for arg in argv:
        flags = {"--no_progress": ("progress", False), "--summary_only": ("summary_only", True),
                 "--no_weights": ("save_weights", False)}
        if arg in flags:
            setattr(opts, *flags[arg])
            continue
        key, _, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key in AXES:
            typ = cfg_fields[AXES[key]].type
            axes[AXES[key]] = [train._convert(key, typ, v) for v in value.split(",") if v]
        elif key in opt_fields and key not in ("progress", "summary_only", "save_weights"):
            setattr(opts, key, train._convert(key, opt_fields[key].type, value))
        else:
            rest.append(arg)
    base = train.parse_args(rest)
    if opts.backend not in BACKENDS:
        raise ValueError(f"unknown backend {opts.backend!r}; valid backends are: {', '.join(BACKENDS)}")
    return opts, axes, base


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        opts, axes, base = parse_sweep_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import signal

    # A terminated sweep stops its workers (the local backend's cleanup runs on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Path(opts.out)
    if not opts.summary_only:
        if base.threads == 0 and opts.backend != "serial":
            workers = opts.workers or os.cpu_count() or 1
            base = dataclasses.replace(base, threads=max(1, (os.cpu_count() or 1) // workers))
        configs = expand_grid(base, axes, out, save_weights=opts.save_weights)
        train.write_json_atomic(out / "sweep.json", {
            "command": "python -m experiments.sweep " + " ".join(argv),
            "axes": axes, "base_config": dataclasses.asdict(base), "options": dataclasses.asdict(opts),
            "runs": [train.run_name(c) for c in configs],
            "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        t0 = time.time()
        try:
            rep = run_sweep(configs, opts)
        except KeyboardInterrupt:
            done = len(list((out / "runs").glob("*.json")))
            print(f"\ninterrupted: workers stopped; {done} result file(s) in {out / 'runs'} are kept, "
                  "and the same command resumes the sweep", file=sys.stderr)
            return 130
        print(f"{rep.total} runs: {len(rep.skipped)} already done, {len(rep.executed)} executed, "
              f"{len(rep.failed)} failed, {len(rep.not_started)} not started, {len(rep.rerun)} re-run "
              f"({time.time() - t0:.0f} s)")
        for name, err in rep.failed.items():
            print(f"  FAILED {name}: {err}")
    problems: dict[str, str] = {}
    rows = write_summary(out, title=f"Sweep summary: {out.name}", problems=problems)
    print(summary_markdown(rows, title=f"Sweep summary: {out.name}"))
    for path, why in problems.items():
        print(f"error: skipped {path} in the summary: {why}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

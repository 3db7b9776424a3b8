"""experiments/sweep.py: the grid, resuming without redoing or losing runs (after a worker dies
and after the whole sweep is killed), the Ray backend on a local instance, the summary table."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import sweep, train

ROOT = Path(__file__).resolve().parents[2]

BASE = train.Config(dataset="gaussian", n_train=64, n_test=32, batch_size=32, epochs=1, width=16, threads=1)


def _fingerprints(out: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted((out / "runs").glob("*.json"))}


def crash_on_seed_1(cfg: train.Config):
    """A run function whose process dies (no exception, no cleanup) for seed 1."""
    if cfg.seed == 1:
        with open(Path(cfg.out).parent.parent / "attempts.txt", "a") as f:
            f.write(train.run_name(cfg) + "\n")
        os._exit(3)
    return train.run(cfg)


def test_expand_grid(tmp_path):
    cfgs = sweep.expand_grid(BASE, {"model": ["mlp", "lenet5"], "mode": ["fp32", "fp16"], "seed": [0, 1, 2],
                                    "optimizer": ["sgd"]}, tmp_path)
    names = [train.run_name(c) for c in cfgs]
    assert len(names) == len(set(names)) == 12
    assert all(c.out == str(tmp_path / "runs" / f"{train.run_name(c)}.json") for c in cfgs)
    assert all(c.weights == str(tmp_path / "weights" / f"{train.run_name(c)}.pt") for c in cfgs)
    assert {(c.model, c.mode, c.seed) for c in cfgs} == {(m, d, s) for m in ("mlp", "lenet5")
                                                         for d in ("fp32", "fp16") for s in (0, 1, 2)}
    with pytest.raises(ValueError, match="unknown grid axes"):
        sweep.expand_grid(BASE, {"lr": [0.1]}, tmp_path)


def test_serial_sweep_resumes_and_reruns_changed_configs(tmp_path, capsys):
    opts = sweep.SweepOptions(out=str(tmp_path), backend="serial", progress=False)
    cfgs = sweep.expand_grid(BASE, {"mode": ["fp32", "bf16"], "seed": [0, 1]}, tmp_path)
    rep = sweep.run_sweep(cfgs, opts)
    assert sorted(rep.executed) == sorted(train.run_name(c) for c in cfgs) and not rep.skipped
    before = _fingerprints(tmp_path)
    assert len(before) == 4
    rep = sweep.run_sweep(cfgs, opts)
    assert rep.executed == [] and len(rep.skipped) == 4
    assert _fingerprints(tmp_path) == before
    # a corrupt result file and a changed configuration are not "done"
    Path(cfgs[0].out).write_text('{"schema": "fpanalysis.train/1", "status": "comp')
    changed = [dataclasses.replace(c, epochs=2) if i == 1 else c for i, c in enumerate(cfgs)]
    capsys.readouterr()
    rep = sweep.run_sweep(changed, opts)
    assert sorted(rep.executed) == sorted([train.run_name(cfgs[0]), train.run_name(cfgs[1])])
    # ... and the sweep says why it re-runs them (issue 12: a truncated file was re-run silently)
    err = capsys.readouterr().err
    assert f"re-running {train.run_name(cfgs[0])}: {cfgs[0].out}: result file is truncated or not valid JSON" in err
    assert f"re-running {train.run_name(cfgs[1])}: {cfgs[1].out}: result file records another configuration (epochs)" in err
    assert sorted(rep.rerun) == sorted([train.run_name(cfgs[0]), train.run_name(cfgs[1])])
    after = _fingerprints(tmp_path)
    for c in cfgs[2:]:
        name = Path(c.out).name
        assert after[name] == before[name]


def test_worker_death_loses_nothing_and_resume_finishes(tmp_path, per_process=2):
    # With 2 runs per process the chunks are [s1, s2] and [s0, s3]: s1's process dies before s2
    # starts, so s2 must be requeued without being blamed.
    opts = sweep.SweepOptions(out=str(tmp_path), backend="local", workers=2, retries=1, progress=False,
                              runs_per_process=per_process)
    cfgs = sweep.expand_grid(BASE, {"seed": [1, 2, 0, 3]}, tmp_path)
    rep = sweep.run_sweep(cfgs, opts, run_fn=crash_on_seed_1)
    dead = "gaussian-mlp-fp32-sgd-s1"
    assert sorted(rep.executed) == [f"gaussian-mlp-fp32-sgd-s{s}" for s in (0, 2, 3)]
    assert list(rep.failed) == [dead] and "status 3" in rep.failed[dead]
    assert (tmp_path / "attempts.txt").read_text().split() == [dead, dead]  # tried, retried once
    assert "status 3" in (tmp_path / "failed" / f"{dead}.txt").read_text()
    before = _fingerprints(tmp_path)
    assert sorted(before) == [f"gaussian-mlp-fp32-sgd-s{s}.json" for s in (0, 2, 3)]
    rep = sweep.run_sweep(cfgs, opts)  # the real run function now
    assert rep.executed == [dead] and sorted(rep.skipped) == sorted({train.run_name(c) for c in cfgs} - {dead})
    after = _fingerprints(tmp_path)
    assert {k: after[k] for k in before} == before and len(after) == 4


def test_run_that_raises_is_reported_not_retried(tmp_path):
    opts = sweep.SweepOptions(out=str(tmp_path), backend="local", workers=1, retries=3, progress=False,
                              runs_per_process=3)
    cfgs = sweep.expand_grid(dataclasses.replace(BASE, n_train=0), {"dataset": ["gaussian", "mnist"]}, tmp_path)
    cfgs = [dataclasses.replace(c, data_dir=str(tmp_path / "no-mnist-here")) if c.dataset == "mnist" else c
            for c in cfgs]
    rep = sweep.run_sweep(cfgs, opts)
    assert rep.executed == ["gaussian-mlp-fp32-sgd-s0"]
    assert list(rep.failed) == ["mnist-mlp-fp32-sgd-s0"] and "does not exist" in rep.failed["mnist-mlp-fp32-sgd-s0"]
    assert "Traceback" in (tmp_path / "failed" / "mnist-mlp-fp32-sgd-s0.txt").read_text()


def test_killed_sweep_resumes_without_redoing_or_losing_runs(tmp_path):
    out = tmp_path / "sw"
    args = [sys.executable, "-m", "experiments.sweep", f"--out={out}", "--backend=serial",
            "--no_progress", "--datasets=gaussian", "--modes=fp32,bf16", "--seeds=0,1,2,3", "--n_train=1024",
            "--n_test=64", "--batch_size=16", "--epochs=4", "--width=16", "--threads=1", "--no_weights"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((out / "runs").glob("*.json")):
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep dies mid-run
    finally:
        proc.wait(30)
    before = _fingerprints(out)
    assert 1 <= len(before) < 8, "kill the sweep while runs remain"
    for name in before:  # every file present is a complete result (atomic writes)
        assert json.loads((out / "runs" / name).read_text())["status"] == "complete"
    # resume in-process with the same grid
    manifest = json.loads((out / "sweep.json").read_text())
    base = train.Config(**manifest["base_config"])
    cfgs = sweep.expand_grid(base, manifest["axes"], out, save_weights=False)
    rep = sweep.run_sweep(cfgs, sweep.SweepOptions(backend="serial", progress=False))
    assert sorted(rep.skipped) == sorted(Path(n).stem for n in before)
    assert len(rep.executed) == 8 - len(before)
    after = _fingerprints(out)
    assert len(after) == 8 and {k: after[k] for k in before} == before


@pytest.mark.slow  # starting Ray and its workers takes ~30-60 s on 2 cores
def test_ray_backend_local_instance(tmp_path):
    ray = pytest.importorskip("ray")

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ship crash_on_seed_1 to workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {
        "PYTHONPATH": str(ROOT)}})
    try:
        _ray_checks(tmp_path)
    finally:
        ray.shutdown()


def _ray_checks(tmp_path):
    opts = sweep.SweepOptions(out=str(tmp_path), backend="ray", workers=2, retries=0, progress=False)
    cfgs = sweep.expand_grid(BASE, {"seed": [0, 1], "mode": ["fp32", "fp16"]}, tmp_path)
    rep = sweep.run_sweep(cfgs, opts, run_fn=crash_on_seed_1)
    assert sorted(rep.executed) == ["gaussian-mlp-fp16-sgd-s0", "gaussian-mlp-fp32-sgd-s0"]
    assert sorted(rep.failed) == ["gaussian-mlp-fp16-sgd-s1", "gaussian-mlp-fp32-sgd-s1"]
    for c in cfgs:
        if c.seed == 0:
            res = json.loads(Path(c.out).read_text())
            assert sweep.is_complete(c) and res["weights"]["path"] == c.weights
            assert hashlib.sha256(Path(c.weights).read_bytes()).hexdigest() == res["weights"]["sha256"]
    before = _fingerprints(tmp_path)
    rep = sweep.run_sweep(cfgs, opts)
    assert sorted(rep.executed) == ["gaussian-mlp-fp16-sgd-s1", "gaussian-mlp-fp32-sgd-s1"] and not rep.failed
    after = _fingerprints(tmp_path)
    assert len(after) == 4 and {k: after[k] for k in before} == before


# ------------------------------------------------------------------------------------------
# summary


def _fake(mode, seed, acc, t, mem, status="complete", model="mlp", tag=""):
    cfg = dataclasses.asdict(dataclasses.replace(BASE, mode=mode, seed=seed, model=model, tag=tag))
    return {"schema": train.SCHEMA, "status": status, "config": cfg,
            "epochs": [{"wall_s": 3 * t}, {"wall_s": t - 1}, {"wall_s": t + 1}],
            "final": {"test_acc": acc, "train_time_s": 5 * t, "samples_per_s": 1000 / t},
            "memory": {"kind": "cpu_rss", "peak_minus_baseline_bytes": mem, "param_bytes": 100,
                       "grad_bytes": 100, "optimizer_state_bytes": 100},
            "environment": {"device": "cpu"}}


def test_summary_table_against_statistics(tmp_path):
    # (final test accuracy, steady epoch seconds, peak memory bytes) per seed
    data = {"fp32": [(0.90, 2.0, 4e6), (0.94, 4.0, 6e6), (0.92, 3.0, 5e6)],
            "amp-fp16": [(0.91, 6.0, 3e6), (0.93, 6.0, 3e6), (0.95, 6.0, 3e6)],
            "fp16": [(0.10, 90.0, 2e6), (0.89, 36.0, 2e6), (0.90, 24.0, 2e6)]}
    results = []
    for mode, rows in data.items():
        for seed, (acc, t, mem) in enumerate(rows):
            results.append(_fake(mode, seed, acc, t, mem, "diverged" if acc < 0.5 else "complete"))
    results.append(_fake("fp16", 0, 0.5, 1.0, 1.0, tag="other"))  # another variant: its own group
    (tmp_path / "runs").mkdir()
    for i, r in enumerate(results):
        train.write_json_atomic(tmp_path / "runs" / f"r{i}.json", r)
    (tmp_path / "runs" / "junk.json").write_text("{not json")
    sweep.write_summary(tmp_path)
    table = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert [(r["variant"], r["mode"]) for r in table] == [("", "fp32"), ("", "amp-fp16"), ("", "fp16"),
                                                          ("other", "fp16")]
    rows = {r["mode"]: r for r in table if not r["variant"]}

    def acc(mode):
        return statistics.mean(100 * v[0] for v in data[mode])

    def secs(mode):  # runs that did not diverge
        return statistics.mean(v[1] for v in data[mode] if v[0] >= 0.5)

    for mode in data:
        r = rows[mode]
        assert int(r["runs"]) == 3
        assert float(r["acc_mean"]) == pytest.approx(acc(mode))
        assert float(r["acc_std"]) == pytest.approx(statistics.stdev(100 * v[0] for v in data[mode]))
        assert float(r["acc_minus_fp32"]) == pytest.approx(acc(mode) - acc("fp32"))
        assert float(r["acc_minus_amp_fp16"]) == pytest.approx(acc(mode) - acc("amp-fp16"))
        assert float(r["epoch_s"]) == pytest.approx(secs(mode))
        assert float(r["time_ratio_fp32"]) == pytest.approx(secs(mode) / secs("fp32"))
        assert float(r["time_ratio_amp_fp16"]) == pytest.approx(secs(mode) / secs("amp-fp16"))
        assert float(r["mem_ratio_fp32"]) == pytest.approx(statistics.mean(v[2] for v in data[mode]) / 5e6)
    assert [int(rows[k]["diverged"]) for k in rows] == [0, 0, 1]
    md = (tmp_path / "summary.md").read_text()
    assert "| gaussian | mlp | sgd | — | fp16 | 3 | 1 | 63.00 ± 45.90 | -29.00 | -30.00 | 30.000 | 10.00 | 5.00 |" in md


def test_summary_names_and_skips_a_result_with_bad_content(tmp_path, capsys):
    """Issue 12: a result that parses but lacks a key gave a traceback without the file's name."""
    (tmp_path / "runs").mkdir()
    for seed in range(2):
        train.write_json_atomic(tmp_path / "runs" / f"ok{seed}.json", _fake("fp32", seed, 0.9, 2.0, 1e6))
    bad = _fake("fp32", 2, 0.9, 2.0, 1e6)
    del bad["final"]["test_acc"]
    train.write_json_atomic(tmp_path / "runs" / "bad.json", bad)
    wrong_type = _fake("fp32", 3, 0.9, 2.0, 1e6)
    wrong_type["memory"] = "lots"
    train.write_json_atomic(tmp_path / "runs" / "wrong_type.json", wrong_type)
    (tmp_path / "runs" / "truncated.json").write_text('{"schema": "fpanalysis.train/1", "sta')
    assert sweep.main([f"--out={tmp_path}", "--summary_only"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: skipped {tmp_path / 'runs' / 'bad.json'} in the summary: unusable result (missing key 'test_acc')" in err
    assert f"error: skipped {tmp_path / 'runs' / 'wrong_type.json'} in the summary: unusable result" in err
    assert f"error: skipped {tmp_path / 'runs' / 'truncated.json'} in the summary: not readable as JSON" in err
    table = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert [(r["mode"], r["runs"]) for r in table] == [("fp32", "2")]  # the two good runs only


def test_results_are_standard_json_and_read_back(tmp_path):
    """Non-finite numbers (a diverged run's NaN accuracy) are written as "nan" strings, not the
    NaN token standard parsers reject, and the summary reads them back as numbers."""
    (tmp_path / "runs").mkdir()
    train.write_json_atomic(tmp_path / "runs" / "ok.json", _fake("fp32", 0, 0.9, 2.0, 1e6))
    diverged = _fake("fp32", 1, math.nan, 2.0, 1e6, "diverged")
    diverged["final"]["train_loss"] = math.inf
    train.write_json_atomic(tmp_path / "runs" / "nan.json", diverged)
    text = (tmp_path / "runs" / "nan.json").read_text()
    doc = json.loads(text, parse_constant=lambda tok: pytest.fail(f"non-standard JSON token {tok}"))
    assert doc["final"]["test_acc"] == "nan" and doc["final"]["train_loss"] == "inf"
    problems: dict = {}
    results = sweep.load_results(tmp_path, problems)
    assert not problems and math.isinf(next(r for r in results if r["status"] == "diverged")["final"]["train_loss"])
    (row,) = sweep.summarize(results)
    assert row["runs"] == 2 and row["diverged"] == 1 and math.isnan(row["acc_mean"])


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    """Issue 12: Ctrl-C (SIGINT to the terminal's process group) printed two tracebacks."""
    out = tmp_path / "sw"
    args = [sys.executable, "-m", "experiments.sweep", f"--out={out}", "--backend=local", "--workers=1",
            "--no_progress", "--datasets=gaussian", "--modes=fp32", "--seeds=0,1,2,3,4,5", "--n_train=1024",
            "--n_test=64", "--batch_size=16", "--epochs=3", "--width=16", "--threads=1", "--no_weights"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((out / "runs").glob("*.json")):
            time.sleep(0.02)
        time.sleep(0.5)  # a worker is in the middle of the next run
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), stderr
    for p in (out / "runs").glob("*.json"):  # what was written is complete
        assert json.loads(p.read_text())["status"] == "complete"


def test_sweep_cli_parsing():
    opts, axes, base = sweep.parse_sweep_args(["--out=x", "--models=mlp,lenet5", "--seeds=0,1", "--epochs=5",
                                               "--workers=3", "--no_progress", "--smoke", "--backend=ray"])
    assert opts.out == "x" and opts.workers == 3 and not opts.progress and opts.backend == "ray"
    assert axes == {"model": ["mlp", "lenet5"], "seed": [0, 1]}
    assert base.epochs == 5 and base.n_train == train.SMOKE["n_train"]
    with pytest.raises(ValueError, match="unknown backend"):
        sweep.parse_sweep_args(["--backend=slurm"])
    with pytest.raises(ValueError, match="unknown option"):
        sweep.parse_sweep_args(["--modez=fp16"])

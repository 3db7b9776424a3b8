"""The check's decisions as pure functions of measured numbers: both sides of every threshold."""
from __future__ import annotations

import numpy as np
import pytest

from fpanalysis.check.findings import (
    SAFE,
    SAFE_WITH_CHANGES,
    THRESHOLDS,
    UNSAFE,
    Finding,
    adam_first_step_errors,
    decide_verdict,
    findings_from_measurements,
    loss_scale_interval,
)
from fpanalysis.formats import get_format

FP16 = get_format("fp16")
T = THRESHOLDS


def _one(meas: dict, name: str) -> Finding:
    found = [f for f in findings_from_measurements(meas, FP16) if f.check == name]
    assert len(found) == 1, [f.check for f in findings_from_measurements(meas, FP16)]
    return found[0]


def _acts(max_abs: float, n_overflow: int = 0, flushed: float = 0.0) -> dict:
    return {"activations": [{"name": "fc1", "max_abs": max_abs, "n_overflow": n_overflow, "frac_flushed": flushed}]}


def test_activation_overflow_fails_and_names_layer() -> None:
    f = _one(_acts(70000.0, n_overflow=3), "activation overflow")
    assert f.status == "fail" and "fc1" in f.message and f.fix and "fc1" in f.fix


def test_many_overflowing_layers_are_unfixable() -> None:
    n = int(T["max_overflow_layers_fixable"]) + 1
    meas = {"activations": [{"name": f"l{i}", "max_abs": 1e5, "n_overflow": 1, "frac_flushed": 0.0} for i in range(n)]}
    f = _one(meas, "activation overflow")
    assert not f.fixable
    assert decide_verdict([f])[0] == UNSAFE


@pytest.mark.parametrize("max_abs, status", [(65504.0 / 8 * 1.01, "warn"), (65504.0 / 8 * 0.99, "ok")])
def test_activation_headroom_threshold(max_abs: float, status: str) -> None:
    assert _one(_acts(max_abs), "activation range").status == status


@pytest.mark.parametrize("frac, status", [(T["activation_flushed_frac"] * 1.01, "warn"), (T["activation_flushed_frac"], "ok")])
def test_activation_underflow_threshold(frac: float, status: str) -> None:
    assert _one(_acts(1.0, flushed=frac), "activation underflow").status == status


def _grads(lost_frac: float, small: float = 1e-9, max_abs: float = 1.0, overflow: int = 0,
           mass: float | None = None) -> dict:
    return {"weight_grads": {"nonzero": 100000, "n_lost": int(lost_frac * 100000), "n_overflow": overflow,
                             "small_quantile": small, "max_abs": max_abs,
                             "mass_lost": lost_frac if mass is None else mass}}


@pytest.mark.parametrize("mass, status", [(0.0101, "fail"), (0.0099, "ok")])
def test_gradient_underflow_mass_threshold(mass: float, status: str) -> None:
    assert _one(_grads(0.001, mass=mass), "gradient underflow").status == status


@pytest.mark.parametrize("frac, status", [(0.0501, "warn"), (0.0499, "ok")])
def test_gradient_underflow_count_threshold_warns_when_mass_is_small(frac: float, status: str) -> None:
    assert _one(_grads(frac, mass=0.001), "gradient underflow").status == status


def test_loss_scale_interval_brings_small_gradients_to_normal_range() -> None:
    lo, hi = loss_scale_interval(1e-9, 0.01, FP16)
    assert lo * 1e-9 >= FP16.min_normal and lo / 2 * 1e-9 < FP16.min_normal  # the smallest power of two
    assert hi * 0.01 <= FP16.max / T["loss_scale_headroom"] and hi * 2 * 0.01 > FP16.max / T["loss_scale_headroom"]
    assert lo <= hi
    f = _one(_grads(0.05, small=1e-9, max_abs=0.01), "gradient underflow")
    assert f.fixable and f"S = {lo:g}" in (f.fix or "")


def test_no_loss_scale_fits_is_unsafe() -> None:
    f = _one(_grads(0.05, small=1e-12, max_abs=100.0), "gradient underflow")
    assert not f.fixable and f.fix is None
    assert decide_verdict([f])[0] == UNSAFE


def test_adam_eps_rounding_to_zero_fails_with_named_fix() -> None:
    meas = {"optimizer": {"name": "adam", "eps": 1e-8, "lr": 1e-3}}
    f = _one(meas, "optimizer epsilon")
    assert f.status == "fail" and "1e-08 rounds to 0" in f.message and "0.0001" in (f.fix or "")
    # a subnormal eps is a warning, a normal one is fine
    assert _one({"optimizer": {"name": "adam", "eps": 1e-7, "lr": 1e-3}}, "optimizer epsilon").status == "warn"
    assert _one({"optimizer": {"name": "adam", "eps": 1e-4, "lr": 1e-3}}, "optimizer epsilon").status == "ok"


def test_sgd_has_no_epsilon_finding() -> None:
    assert not [f for f in findings_from_measurements({"optimizer": {"name": "sgd", "eps": 1e-8}}, FP16)
                if f.check == "optimizer epsilon"]


@pytest.mark.parametrize(
    "frac, status",
    [(0.99, "warn"), (T["stagnation_warn_frac"] + 0.01, "warn"), (T["stagnation_warn_frac"] - 0.01, "ok")],
)
def test_stagnation_count_only_warns(frac: float, status: str) -> None:
    """A count of lost updates never fails by itself (issue 13: the lost updates may not matter);
    the dry run weighs them by the loss decrease they would have brought."""
    meas = {"stagnation": {"lost": int(frac * 10000), "nonzero": 10000, "per_layer": [{"layer": "fc", "frac": frac}]}}
    assert _one(meas, "update stagnation (count)").status == status


def test_long_reductions_only_matter_when_accumulating_in_the_format() -> None:
    red = {"reductions": [{"layer": "fc", "n": 4096, "what": "inner product"}]}
    assert _one({**red, "profile": "ieee"}, "long reductions").status == "warn"
    assert _one({**red, "profile": "fp32-accumulate"}, "long reductions").status == "ok"
    assert _one({"reductions": [{"layer": "fc", "n": 2047, "what": "x"}], "profile": "ieee"}, "long reductions").status == "ok"


def test_verdicts() -> None:
    ok = Finding("a", "ok", 0.0, 1.0, "<=", "fine")
    warn = Finding("b", "warn", 2.0, 1.0, ">", "hmm", fix="do x")
    fix = Finding("c", "fail", 2.0, 1.0, ">", "bad", fix="do y")
    nofix = Finding("d", "fail", 2.0, 1.0, ">", "worse", fix=None, fixable=False)
    assert decide_verdict([ok, warn]) == (SAFE, [])
    assert decide_verdict([ok, fix, fix]) == (SAFE_WITH_CHANGES, ["do y"])
    assert decide_verdict([fix, nofix])[0] == UNSAFE
    # with the dry run, only verified changes count
    assert decide_verdict([ok, fix], verified=[]) == (UNSAFE, [])
    assert decide_verdict([ok, fix], verified=["keep module(s) bn in fp32"]) == (SAFE_WITH_CHANGES, ["keep module(s) bn in fp32"])
    assert decide_verdict([fix, nofix], verified=["x"])[0] == UNSAFE
    assert decide_verdict([ok, warn], verified=[]) == (SAFE, [])


def test_observed_agreement_below_threshold_fails() -> None:
    a = {"certified": 0.5, "observed": T["agreement_fail"] - 0.001, "n": 1000}
    f = _one({"agreement": a}, "inference agreement")
    assert f.status == "fail" and not f.fixable
    assert decide_verdict([f])[0] == UNSAFE
    assert _one({"agreement": {**a, "observed": T["agreement_fail"]}}, "inference agreement").status == "ok"


def test_dry_run_findings() -> None:
    from fpanalysis.check.findings import dry_run_findings

    prob = {"status": "fail", "check": "buffer overflow", "measured": float("inf"), "threshold": float("nan"),
            "message": "buffer 1.running_var became inf/NaN in fp16", "where": {"buffer": "1.running_var"}}
    d = {"steps": 8, "measurements": {}, "problems": [prob]}
    f = dry_run_findings(d, FP16, verified=["keep module(s) 1 in fp32"])[0]
    assert f.status == "fail" and f.fixable and f.layer == "1.running_var" and f.fix == "keep module(s) 1 in fp32"
    assert not dry_run_findings(d, FP16, verified=[])[0].fixable
    ok = dry_run_findings({"steps": 8, "problems": [], "measurements": {
        "loss": {"fp32": 1.0, "shadow": 1.0}, "accuracy": {"eval": {"agreement": 1.0}}, "stagnation": {"weighted": 0.0}}}, FP16)
    assert [g.status for g in ok] == ["ok"]
    late = dry_run_findings(d, FP16, verified=[], segment="late", where="from the warmed-up model")[0]
    assert late.check == "dry run (late): buffer overflow" and "8-step dry run from the warmed-up model" in late.message


def test_adam_first_step_simulation_matches_hand_computation() -> None:
    # g = 1e-3: (1 - 0.999) * 1e-6 = 1e-9 is below half the smallest fp16 subnormal (2**-25 ~ 3e-8),
    # so v = 0 in fp16; with eps = 1e-8 -> 0 in fp16 the step is m / 0 = inf.
    vu, nf, off = adam_first_step_errors(np.array([1e-3]), FP16, 1e-3, 1e-8, (0.9, 0.999))
    assert (vu, nf, off) == (1.0, 1.0, 0.0)
    # with eps = 1e-4 the step is finite: lr * g / eps = 1e-2, ten times the exact ~1e-3 -> "off"
    vu, nf, off = adam_first_step_errors(np.array([1e-3]), FP16, 1e-3, 1e-4, (0.9, 0.999))
    assert (vu, nf, off) == (1.0, 0.0, 1.0)
    # a large gradient keeps v normal: the step is accurate
    vu, nf, off = adam_first_step_errors(np.array([0.5]), FP16, 1e-3, 1e-8, (0.9, 0.999))
    assert (vu, nf, off) == (0.0, 0.0, 0.0)


def test_changes_are_labelled_unverified_without_the_dry_run() -> None:
    """A change the dry run never tried is never presented as if it had been."""
    from fpanalysis.check import CheckReport

    f = Finding("optimizer epsilon", "fail", 0.0, 1e-8, "<", "eps rounds to 0", fix="raise Adam eps to 0.0001")
    plain = CheckReport("SAFE WITH CHANGES", [f], ["raise Adam eps to 0.0001"], {"format": "fp16"}, {})
    assert "raise Adam eps to 0.0001  (not verified: the dry run did not run)" in plain.render()
    tried = CheckReport("SAFE WITH CHANGES", [f], ["raise Adam eps to 0.0001"], {"format": "fp16"},
                        {"fixes": [{"verified": True, "description": "raise Adam eps to 0.0001", "problems": []}]})
    text = tried.render()
    assert "raise Adam eps to 0.0001  (verified by the dry run)" in text and "not verified: the dry run" not in text

"""experiments/fp8_validation.py: outcome labelling (divergence, accuracy gap against the bf16
baseline), the verdict -> prediction rule, the confusion matrix and false-SAFE count, the
statistics summary, and the report stage on hand-written truth and verdict files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments import fp8_validation as V


def ok(acc: float) -> dict:
    return {"status": "ok", "eval_acc": acc, "seconds": 1.0}


def diverged() -> dict:
    return {"status": "diverged", "eval_acc": math.nan, "seconds": 1.0}


# --- outcome ---------------------------------------------------------------------------------


def test_outcome_gap_is_the_mean_over_seeds_in_points() -> None:
    # binary fractions, so the gaps are exact: (6.25 + 0) / 2 = 3.125 points
    fp8, base = [ok(0.875), ok(0.9375)], [ok(0.9375), ok(0.9375)]
    out, cause, gap = V.outcome(fp8, base, gap_points=3.125)
    assert gap == 3.125
    assert out == "trains"  # exactly at the threshold: not more than it below
    out, cause, gap = V.outcome(fp8, base, gap_points=3.0)
    assert out == "fails" and "3.1 points below the baseline (mean of 2 seeds)" in cause


def test_outcome_a_better_fp8_run_trains() -> None:
    out, cause, gap = V.outcome([ok(0.99), ok(0.99)], [ok(0.90), ok(0.92)])
    assert out == "trains" and gap == pytest.approx(-8.0) and "within 0.0" in cause


def test_outcome_most_seeds_diverged_fails_even_when_one_matches() -> None:
    out, cause, _ = V.outcome([diverged(), diverged(), ok(0.95)], [ok(0.95)] * 3)
    assert out == "fails" and "diverged in 2 of 3" in cause


def test_outcome_a_diverged_seed_counts_as_accuracy_zero() -> None:
    # one of two seeds diverged (not most): the gap counts it as 0% accuracy, so it fails by the gap
    out, cause, gap = V.outcome([diverged(), ok(0.95)], [ok(0.95), ok(0.95)])
    assert gap == pytest.approx(47.5) and out == "fails" and "points below" in cause


def test_outcome_non_finite_fp8_accuracy_counts_as_zero() -> None:
    out, _, gap = V.outcome([ok(math.nan)], [ok(0.5)])
    assert out == "fails" and gap == pytest.approx(50.0)


def test_outcome_needs_paired_runs() -> None:
    with pytest.raises(ValueError, match="same nonzero number"):
        V.outcome([ok(0.9)], [ok(0.9), ok(0.9)])
    with pytest.raises(ValueError, match="same nonzero number"):
        V.outcome([], [])


# --- prediction and score --------------------------------------------------------------------


def test_only_safe_predicts_trains() -> None:
    assert V.predicted("SAFE") == "trains"
    assert V.predicted("SAFE WITH CHANGES") == "fails"
    assert V.predicted("UNSAFE") == "fails"
    with pytest.raises(ValueError, match="valid verdicts are: SAFE"):
        V.predicted("safe")


def test_score_confusion_false_safe_and_errors() -> None:
    rows = [
        {"case": "a", "recipe": "delayed", "verdict": "SAFE", "outcome": "trains"},
        {"case": "b", "recipe": "nvfp4", "verdict": "SAFE", "outcome": "fails"},  # false SAFE
        {"case": "c", "recipe": "current", "verdict": "UNSAFE", "outcome": "fails"},
        {"case": "d", "recipe": "mxfp8", "verdict": "SAFE WITH CHANGES", "outcome": "trains"},  # false alarm
        {"case": "e", "recipe": "mxfp8", "verdict": "SAFE WITH CHANGES", "outcome": "fails"},
        {"case": "f", "recipe": "delayed", "verdict": "ERROR", "outcome": "fails"},  # never right
    ]
    sc = V.score(rows)
    assert sc["n"] == 6 and sc["right"] == 3 and sc["accuracy"] == pytest.approx(0.5)
    assert sc["false_safe"] == ["b/nvfp4"]
    assert sc["false_alarm"] == ["d/mxfp8"]
    c = sc["confusion"]
    assert c["SAFE / trains"] == 1 and c["SAFE / fails"] == 1 and c["UNSAFE / fails"] == 1
    assert c["SAFE WITH CHANGES / trains"] == 1 and c["SAFE WITH CHANGES / fails"] == 1 and c["ERROR / fails"] == 1
    assert sum(c.values()) == len(rows)


def test_score_rejects_unknown_labels() -> None:
    with pytest.raises(ValueError, match="valid outcomes are: trains, fails"):
        V.score([{"verdict": "SAFE", "outcome": "diverged"}])


def test_stats_summary_drops_the_per_call_lists() -> None:
    stats = {"0": {"activation": {"saturation": 0.25, "underflow": 0.0, "amax": [1.0, 4.0, 2.0], "calls": 3,
                                  "max_saturation": 0.5, "saturating_calls": 1, "scale": [1.0, 2.0, 3.0]},
                   "output": {"rel_error": [0.1, 0.2]}}}
    s = V.stats_summary(stats)
    assert list(s["0"]) == ["activation"]
    a = s["0"]["activation"]
    assert (a["amax_first"], a["amax_last"], a["amax_max"]) == (1.0, 2.0, 4.0)
    assert a["saturation"] == 0.25 and a["saturating_calls"] == 1 and "amax" not in a and "scale" not in a


# --- cases -----------------------------------------------------------------------------------


def test_cases_cover_toolkit_outside_models_and_recipes() -> None:
    names = [c.name for c in V.CASES]
    assert len(set(names)) == len(names)
    assert sum(c.toolkit for c in V.CASES) >= 2
    outside = {c.model for c in V.CASES if not c.toolkit}
    assert len(outside) >= 3
    assert set(V.RECIPES) == {"delayed", "current", "mxfp8", "nvfp4"}


def test_weight_outlier_sits_on_an_input_that_is_always_zero() -> None:
    pytest.importorskip("sklearn")
    torch = pytest.importorskip("torch")
    case = next(c for c in V.CASES if c.weight_outlier)
    data = V.load(case)
    model = V.build(case, data, 0)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert float(first.weight[0, 0].detach()) == case.weight_outlier
    # the outlier changes nothing in exact arithmetic: same outputs as the model without it
    plain = V.build(V.Case(case.name, case.model, case.data, model_kw=case.model_kw), data, 0)
    x = torch.from_numpy(data.x_test[:16])
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))


# --- report stage on hand-written files ----------------------------------------------------------


def test_report_scores_valid_cases_only(tmp_path: Path) -> None:
    from experiments._common import write_json

    case = {"model": "tk:mlp", "why": "w"}
    truth = {"cases": {
        "good": {"valid": True, "case": case, "baseline": [ok(0.95), ok(0.95)], "recipes": {
            "current": {"outcome": "trains", "cause": "c", "gap_points": 0.5, "runs": [ok(0.945), ok(0.945)]},
            "delayed": {"outcome": "trains", "cause": "c", "gap_points": 0.5, "runs": [ok(0.945), ok(0.945)]},
            "nvfp4": {"outcome": "fails", "cause": "c", "gap_points": 20.0, "runs": [ok(0.75), ok(0.75)]}}},
        "flat": {"valid": False, "case": case, "baseline": [ok(0.1), ok(0.1)], "recipes": {
            "delayed": {"outcome": "trains", "cause": "c", "gap_points": 0.0, "runs": [ok(0.1), ok(0.1)]}}},
    }}
    key = {"model": "tk:mlp"}
    code = V.check_code_hash()
    verdicts = {"cases": {"good": {"delayed": {"verdict": "SAFE", "case": key, "code": code},
                                   "nvfp4": {"verdict": "SAFE", "case": key, "code": code},
                                   "current": {"verdict": "UNSAFE", "case": key, "code": "0" * 16}},
                          "flat": {"delayed": {"verdict": "UNSAFE", "case": key, "code": code}}}}
    write_json(tmp_path / "truth.json", truth)
    write_json(tmp_path / "verdicts.json", verdicts)
    rep = V.stage_report(V.Config(out_dir=str(tmp_path)))
    assert rep["n"] == 2 and rep["right"] == 1
    assert rep["false_safe"] == ["good/nvfp4"]
    assert rep["left_out_baseline_does_not_learn"] == ["flat"]
    assert rep["left_out_verdict_of_another_check_or_case"] == ["good/current"]  # an older check's verdict
    assert rep["training_seconds"] == pytest.approx(2 * 6)  # every run counted, left-out ones too
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["confusion"]["SAFE / fails"] == 1


def test_verdicts_stage_reuses_a_verdict_only_for_the_same_case_definition(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    import fpanalysis.check
    from experiments._common import write_json

    case = next(c for c in V.CASES if c.model_kw)  # tuples in the definition: compared as read back from JSON
    calls = []

    class Rep:
        verdict, changes, findings, details = "UNSAFE", [], [], {}

    def fake_check(*a, **k):
        calls.append(k["recipe"])
        # the FP8 options go to the recipes that take them (the check refuses the others)
        assert ("history_len" in k) == (k["recipe"] == "delayed")
        assert ("margin" in k) == (k["recipe"] in ("delayed", "current"))
        return Rep()

    monkeypatch.setattr(fpanalysis.check, "check", fake_check)
    code = V.check_code_hash()
    cached = {"verdict": "SAFE", "case": V._check_key(case), "code": code}
    stale = {"verdict": "SAFE", "case": dict(V._check_key(case), lr=123.0), "code": code}
    old_check = {"verdict": "SAFE", "case": V._check_key(case), "code": "0" * 16}
    write_json(tmp_path / "verdicts.json", {"cases": {case.name: {"delayed": cached, "current": stale,
                                                                  "mxfp8": old_check}}})
    cfg = V.Config(out_dir=str(tmp_path), only=case.name, recipes=("delayed", "current", "mxfp8"))
    store = V.stage_verdicts(cfg, smoke=False)
    assert calls == ["current", "mxfp8"]  # stale case or check: checked again; the cached one is not
    assert store["cases"][case.name]["delayed"]["verdict"] == "SAFE"
    assert store["cases"][case.name]["current"]["verdict"] == "UNSAFE"

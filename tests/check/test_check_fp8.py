"""The FP8 / MX check (fpanalysis.check.fp8): per-GEMM findings on both sides of their thresholds,
the amax history delayed scaling needs, the dry run's judgement, and whole checks whose outcome is
known by construction (a GEMM whose input underflows E4M3 under per-tensor scaling)."""
from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn

from fpanalysis.check import CheckConfig, check
from fpanalysis.check.fp8 import FP8_THRESHOLDS, MAX_EXTENSIONS, fp8_findings, history_needed, judge_fp8_run
from fpanalysis.nn.fp8 import FP8Plan, apply_fp8_plan

# ---------------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------------


def test_history_needed_on_hand_worked_amax_sequences():
    # constant amax: no call after the first saturates with any history
    assert history_needed([1.0] * 6, "e4m3") == (1, 0)
    # a spike every other call, the first call a spike: history 1 scales each spike from the low
    # amax before it (8 * 448 / 1 saturates); history 2 always holds a spike (scale 448 / 8 = 56,
    # 8 * 56 = 448 fits)
    assert history_needed([8.0, 1.0] * 4, "e4m3") == (2, 0)
    # the first spike comes after a low call: it saturates whatever the history; margin 3
    # (scale 448 / 8) makes 8 fit with history 1
    assert history_needed([1.0, 8.0] * 4, "e4m3") == (1, 3)
    # growth by 10% per call: every call saturates whatever the history (1.1 * 448 rounds above
    # 448); a margin of 1 (scale halved) absorbs it
    grow = [1.1**k for k in range(8)]
    assert history_needed(grow, "e4m3") == (1, 1)
    # E5M2 has the same rule with 57344: 10% growth rounds 1.1 * 57344 = 63078 above the max too
    assert history_needed(grow, "e5m2") == (1, 1)
    # ... but when only the largest elements grow (the tail, exceeded by <= 0.1% of the elements,
    # stays at half the amax), at most 0.1% saturates: history 1, no margin
    assert history_needed(grow, "e4m3", tails=[0.5 * a for a in grow]) == (1, 0)
    # a tail just under the amax (0.95 of it, growth 10%) saturates: 1.1 * 0.95 * 448 = 468 > 464
    assert history_needed(grow, "e4m3", tails=[0.95 * a for a in grow]) == (1, 1)


def test_history_needed_without_tails_agrees_with_min_history_len():
    import numpy as np

    from fpanalysis.recipes import delayed_saturating_steps, min_history_len

    g = np.random.default_rng(4)
    for _ in range(20):
        am = list(np.exp(g.normal(0, 1.0, 24)).astype(np.float32).astype(float))
        first = delayed_saturating_steps(am[:1], 1, "e4m3")
        h, m = history_needed(am, "e4m3")
        if h is not None and m == 0:
            assert h == min_history_len(am, fmt="e4m3", max_saturating=first)
        else:
            assert min_history_len(am, fmt="e4m3", max_saturating=first) is None


def _row(**kw):
    r = {"gemm": "fc", "operand": "activation", "calls": 4, "saturation": 0.0, "underflow": 0.0,
         "max_saturation": 0.0, "saturating_calls": 0, "amax_min": 1.0, "amax_max": 1.0,
         "history_needed": 1, "margin_needed": 0, "rel_error": 0.03, "rel_error_max": 0.04}
    r.update(kw)
    return r


@pytest.mark.parametrize("key,check_name,below,above_warn,above_fail", [
    ("saturation", "FP8 saturation", 0.0009, 0.002, 0.02),
    ("underflow", "FP8 underflow", 0.009, 0.02, 0.2),
    ("rel_error", "GEMM output error", 0.09, 0.2, 0.4),
])
def test_findings_on_both_sides_of_each_threshold(key, check_name, below, above_warn, above_fail):
    for v, status in ((below, "ok"), (above_warn, "warn"), (above_fail, "fail")):
        fs = [f for f in fp8_findings([_row(**{key: v}), _row(gemm="other")], "FP8") if f.check == check_name]
        assert {f.status for f in fs} == {status}, (v, fs)
        if status != "ok":
            assert len(fs) == 1 and fs[0].layer == "fc" and "keep fc in bf16" in fs[0].fix
    assert FP8_THRESHOLDS["saturation_fail"] > FP8_THRESHOLDS["saturation_warn"]


def _m(gap_loss=0.0, acc_gap=0.0, agreement=1.0, diverged=None):
    return {"steps": 8, "diverged": {"fp32_step": None, "shadow_step": diverged},
            "loss": {"fp32": 1.0, "shadow": 1.0 + gap_loss, "gap": gap_loss},
            "accuracy": {"eval": {"fp32": 0.5, "shadow": 0.5 - acc_gap, "gap": acc_gap, "agreement": agreement}}}


def test_judge_fp8_run():
    assert judge_fp8_run(_m(), "FP8") == []
    # many inputs change class early in training: not a failure while FP8 is as accurate
    assert judge_fp8_run(_m(agreement=0.6, acc_gap=0.0), "FP8") == []
    assert [p["status"] for p in judge_fp8_run(_m(acc_gap=0.1), "FP8")] == ["fail"]
    assert [p["status"] for p in judge_fp8_run(_m(gap_loss=0.5), "FP8")] == ["fail"]
    assert [p["status"] for p in judge_fp8_run(_m(gap_loss=0.1), "FP8")] == ["warn"]
    d = judge_fp8_run(_m(diverged=3), "FP8")
    assert [p["check"] for p in d] == ["divergence"] and d[0]["status"] == "fail"


def test_config_validates_fp8_options_up_front():
    c = CheckConfig(fmt="fp8")
    assert (c.recipe, c.history_len, c.margin, c.is_fp8, c.to_dict()["fmt"]) == ("delayed", 16, 0, True, "fp8")
    assert not CheckConfig().is_fp8
    with pytest.raises(ValueError, match="valid recipes are: current, delayed, mxfp8"):
        CheckConfig(fmt="fp8", recipe="fp8-magic")
    with pytest.raises(ValueError, match="needs fmt='fp8'"):
        CheckConfig(fmt="bf16", recipe="delayed")
    with pytest.raises(ValueError, match="needs fmt='fp8'"):
        CheckConfig(history_len=8)
    with pytest.raises(ValueError, match="history_len"):
        CheckConfig(fmt="fp8", history_len=0)
    with pytest.raises(ValueError, match="option of the delayed recipe"):
        CheckConfig(fmt="fp8", recipe="current", history_len=4)
    with pytest.raises(ValueError, match="margin applies"):
        CheckConfig(fmt="fp8", recipe="nvfp4", margin=1)
    with pytest.raises(ValueError, match="learning rate"):
        CheckConfig(fmt="fp8", lr=0.0)


def test_plan_round_trip_and_refusals(tmp_path):
    p = FP8Plan("mxfp8", keep=["0"], verified=True)
    path = tmp_path / "plan.json"
    p.to_json(str(path))
    assert FP8Plan.from_json(str(path)) == p
    with pytest.raises(ValueError, match="unknown FP8-plan keys"):
        FP8Plan.from_dict({"recipe": "current", "fp32_modules": []})
    with pytest.raises(ValueError, match="valid recipes are"):
        FP8Plan.from_dict({"recipe": "e4m3"})


# ---------------------------------------------------------------------------------------------
# whole checks with a known outcome
# ---------------------------------------------------------------------------------------------


def _tiny_feature_problem(n: int = 512, d: int = 16, hidden: bool = True):
    """Half the input features are ~1e6 and carry nothing (the first layer, frozen, gives them
    weight 0); the label lives in the other half, ~1.  Per-tensor E4M3 scaling maps the amax
    ~4e6 to 448, so the informative features fall below half E4M3's smallest subnormal
    (2^-10 / scale ~ 9e3 * 2^-10 > 1) and flush to zero: the first GEMM, and only it, loses the
    signal.  ``hidden``: a trainable second Linear after the frozen one; else the frozen Linear
    is the only GEMM and only its bias trains."""
    g = torch.Generator().manual_seed(0)
    sig = torch.randn(n, d // 2, generator=g)
    y = (sig[:, 0] + sig[:, 1] > 0).long()
    X = torch.cat([1e6 * torch.randn(n, d // 2, generator=g), sig], dim=1)
    torch.manual_seed(0)
    k = d // 2 if hidden else 2
    first = nn.Linear(d, k)
    with torch.no_grad():
        first.weight.zero_()
        first.bias.zero_()
        if hidden:
            first.weight[:, d // 2:] = torch.eye(d // 2)
        else:  # already the right classifier: class 1 when sig0 + sig1 > 0
            first.weight[1, d // 2:d // 2 + 2] = 1.0
            first.weight[0, d // 2:d // 2 + 2] = -1.0
    first.weight.requires_grad_(False)
    model = nn.Sequential(first, nn.Linear(k, 2)) if hidden else nn.Sequential(first)
    return model, (X, y)


def _run(model, data, **kw):
    kw.setdefault("dry_run_steps", 24)
    kw.setdefault("lr", 0.05)
    kw.setdefault("batch_size", 64)
    return check(model, data, fmt="fp8", **kw)


def test_underflowing_first_gemm_is_kept_in_bf16_and_verified(tmp_path):
    model, data = _tiny_feature_problem()
    lines: list[str] = []
    rep = _run(model, data, recipe="current", log=lines.append)
    under = [f for f in rep.findings if f.check == "FP8 underflow" and f.status == "fail"]
    assert [(f.layer, f.op) for f in under] == [("0", "activation")]
    assert under[0].measured > 0.4  # half the elements flush
    assert rep.verdict == "SAFE WITH CHANGES", rep.render()
    plan = FP8Plan.from_dict(rep.details["plan"])
    assert plan.verified and plan.recipe == "current" and plan.keep == ["0"]
    tried = {r["description"]: r["verified"] for r in rep.details["fixes"]}
    assert tried[plan.describe().replace(" (verified)", "")] is True
    # the report names the change and the per-GEMM table
    text = rep.render()
    assert "keep 0" in text and "per GEMM" in text and "SAFE WITH CHANGES" in text
    json.loads(rep.to_json())
    # applying the plan leaves GEMM 0 exact and quantises the others
    x = data[0][:8]
    with apply_fp8_plan(model, plan) as fp8:
        model(x)
    assert "0" not in fp8.stats and "1" in fp8.stats


def test_unfixable_when_the_only_gemm_fails():
    model, data = _tiny_feature_problem(hidden=False)
    rep = _run(model, data, recipe="current")
    assert any(f.check == "FP8 underflow" and f.status == "fail" for f in rep.findings)
    assert rep.verdict == "UNSAFE" and rep.details["plan"] is None


def test_well_scaled_model_is_safe_with_every_recipe():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(512, 32, generator=g)
    y = (X[:, :4].sum(1) > 0).long()
    for recipe in ("delayed", "mxfp8"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 2))
        rep = _run(model, (X, y), recipe=recipe, dry_run_steps=16, lr=0.01)
        assert rep.verdict == "SAFE", rep.render()
        assert rep.details["plan"]["verified"] and rep.details["plan"]["keep"] == []
        assert {r["gemm"] for r in rep.details["gemms"]} == {"0", "2"}
        errs = [r["rel_error"] for r in rep.details["gemms"] if not math.isnan(r["rel_error"])]
        assert errs and all(0 < e < 0.1 for e in errs)


def _sign_task(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """128 Gaussian inputs of 8 features labelled by the sign of the first; torch seeded for the model."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(128, 8, generator=g)
    torch.manual_seed(0)
    return X, (X[:, 0] > 0).long()


def test_modules_the_emulation_does_not_quantise_are_not_examined():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8, 2)
            self.unused = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x.unsqueeze(1))).flatten(1))

    data = _sign_task(2)  # seeds torch before the model is built
    rep = _run(M(), data, recipe="current", dry_run_steps=4)
    skipped = [f for f in rep.findings if f.status == "skipped" and f.check == "GEMMs not examined"]
    assert len(skipped) == 1 and "conv" in skipped[0].message and "unused" in skipped[0].message
    assert "not examined" in rep.render()


class _Spike(nn.Module):
    """Multiplies its input by 64 at every 4th training call, starting with the first (calls 1, 5,
    9, ...; eval-mode calls, such as the check's shape probe, do not count)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        if not self.training:
            return x
        self.calls += 1
        return x * 64.0 if self.calls % 4 == 1 else x


def test_amax_spikes_need_the_history_the_check_computes():
    """Delayed scaling with history 2 forgets each spike before the next (spikes 4 calls apart):
    every spike after the first saturates most of the spiking tensor.  History 4 always holds the
    last spike; the check must find it, and verify it."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(512, 16, generator=g)
    y = (X[:, :3].sum(1) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), _Spike(), nn.ReLU(), nn.Linear(32, 2))
    rep = _run(model, (X, y), recipe="delayed", history_len=2, dry_run_steps=16, lr=0.01)
    sat = [f for f in rep.findings if f.check == "FP8 saturation" and f.status == "fail"]
    assert ("3", "activation") in {(f.layer, f.op) for f in sat}, rep.render()
    row = next(r for r in rep.details["gemms"] if (r["gemm"], r["operand"]) == ("3", "activation"))
    assert (row["history_needed"], row["margin_needed"]) == (4, 0)
    # calls 5, 9 and 13 saturate most of the (nonzero half of the) spiking tensor
    assert row["saturating_calls"] >= 3 and row["max_saturation"] > 0.2
    assert rep.verdict == "SAFE WITH CHANGES", rep.render()
    plan = FP8Plan.from_dict(rep.details["plan"])
    # history 4 (the weights, which grow fast in this run, also ask for a margin of 1)
    assert (plan.recipe, plan.history_len, plan.keep) == ("delayed", 4, []) and plan.margin <= 1
    assert rep.details["fixes"][0]["verified"] and rep.details["fixes"][0]["plan"]["history_len"] == 4


def test_a_dry_run_where_fp32_learns_nothing_is_inconclusive_not_safe():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(256, 8, generator=g)
    y = (X[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    rep = _run(model, (X, y), recipe="current", dry_run_steps=8, lr=1e-6)
    dry = [f for f in rep.findings if f.check == "dry run"]
    assert len(dry) == 1 and dry[0].status == "skipped" and "inconclusive" in dry[0].message
    assert dry[0].measured < FP8_THRESHOLDS["dry_run_min_progress"]
    assert rep.details["plan"]["verified"] is False
    assert "not examined: dry run" in rep.render() and "(not verified)" in rep.render()
    assert rep.config["steps"] == 8 * 2 ** MAX_EXTENSIONS  # lengthened as far as allowed first


def test_a_slowly_learning_model_lengthens_the_dry_run_until_fp32_learns():
    # lr small enough that 4 steps move the loss by well under 5%, large enough that 32 do
    g = torch.Generator().manual_seed(1)
    X = torch.randn(256, 8, generator=g)
    y = (X[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    rep = _run(model, (X, y), recipe="current", dry_run_steps=4, lr=0.05)
    m = rep.details["dry_run"]
    assert rep.config["steps"] > 4 and rep.config["steps"] in (8, 16, 32)
    assert len(rep.details["losses"]["fp8"]) == len(rep.details["losses"]["fp32"]) == rep.config["steps"]
    assert m["loss"]["fp32_progress"] >= FP8_THRESHOLDS["dry_run_min_progress"]
    assert not [f for f in rep.findings if f.check == "dry run" and f.status == "skipped"]


class _HandAttention(nn.Module):
    """Self-attention with the score product written out (a functional GEMM the FP8 emulation
    does not quantise) between two Linear layers it does quantise."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        q, k, v = self.qkv(x.unsqueeze(1)).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        return self.out((a @ v).squeeze(1))


def test_matrix_products_outside_linear_modules_are_reported_not_examined():
    data = _sign_task(1)  # seeds torch before the model is built
    rep = _run(_HandAttention(), data, recipe="current", dry_run_steps=0)
    skipped = [f for f in rep.findings if f.check == "GEMMs not examined"]
    assert len(skipped) == 1 and skipped[0].status == "skipped"
    assert "matrix products outside Linear/Conv2d modules" in skipped[0].message
    assert "bmm" in skipped[0].message or "matmul" in skipped[0].message
    # the quantised Linear layers are not listed among them
    assert "aten.addmm in qkv" not in skipped[0].message and "in out" not in skipped[0].message


def test_gaps_a_change_of_batch_order_also_produces_are_not_attributed_to_fp8():
    m = {"steps": 64, "diverged": {"fp32_step": None, "shadow_step": None},
         "loss": {"fp32": 1.0, "shadow": 1.28, "gap": 0.28, "fp32_first": 2.3, "fp32_progress": 0.5},
         "accuracy": {"eval": {"fp32": 0.58, "shadow": 0.52, "gap": 0.06, "agreement": 0.89}}}
    fails = {p["check"] for p in judge_fp8_run(m, "FP8") if p["status"] == "fail"}
    assert fails == {"loss gap", "accuracy gap (eval mode)"}  # without a noise measurement
    noise = {"loss": {"gap": -0.05}, "accuracy": {"eval": {"gap": 0.045, "shadow": 0.535}}}
    probs = judge_fp8_run(m, "FP8", noise)
    assert not [p for p in probs if p["status"] == "fail"]
    acc = [p for p in probs if p["check"] == "accuracy gap (eval mode)"]
    assert acc[0]["status"] == "warn" and acc[0]["measured"] == pytest.approx(0.015)  # 6 - 4.5 points
    lg = [p for p in probs if p["check"] == "loss gap"][0]
    assert lg["status"] == "warn" and lg["measured"] == pytest.approx(0.23) and "not counted" in lg["message"]
    # a gap well beyond the noise still fails
    big = dict(m, accuracy={"eval": dict(m["accuracy"]["eval"], shadow=0.30, gap=0.28)})
    assert any(p["check"] == "accuracy gap (eval mode)" and p["status"] == "fail" for p in judge_fp8_run(big, "FP8", noise))


class _GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.rnn(x.view(x.shape[0], 2, 4))[0][:, -1])


def test_recurrent_layers_are_reported_not_examined():
    data = _sign_task(2)  # seeds torch before the model is built
    rep = _run(_GRUClassifier(), data, recipe="current", dry_run_steps=0)
    skipped = [f for f in rep.findings if f.check == "GEMMs not examined"]
    assert len(skipped) == 1 and "rnn" in skipped[0].message and "head" not in skipped[0].message

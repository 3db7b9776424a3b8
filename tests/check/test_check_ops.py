"""The check on operation-level measurements: findings name the aten op, module path and step;
buffer findings; Fix proposals; models of every input kind; a model that cannot run is an error.

The decision functions are tested on both sides of their thresholds with hand-made records; the
integration tests run :func:`fpanalysis.check.check` on models from tests/nn/_zoo.py, each built
for one mechanism.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn

from fpanalysis.check import check
from fpanalysis.check.findings import THRESHOLDS, Fix, decide_verdict, findings_from_measurements
from fpanalysis.formats import get_format

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nn"))
from _zoo import AttnNet, BasicBlock, BNNet, EmbedNet, ResNet, ScaledNet, TwoInputNet, cls_data

FP16 = get_format("fp16")


def _op(i, op, module="attn", max_abs=1.0, in_max=1.0, n_over=0, phase="forward", leaf=False, step=None):
    return {"key": {"phase": phase, "module": module, "op": op, "occurrence": 0, "output": 0},
            "label": op, "module_type": "M", "index": i, "node": None, "source": "m.py:3 in forward",
            "max_abs": max_abs, "in_max_abs": in_max, "n_overflow": n_over, "numel": 10, "nonzero": 10,
            "n_flushed": 0, "n_subnormal": 0, "first_overflow_step": step, "reduction": None, "leaf_output": leaf}


def _by(findings, name):
    got = [f for f in findings if f.check == name]
    assert len(got) == 1, [f.check for f in findings]
    return got[0]


# ---- decisions on hand-made records -----------------------------------------------------------


def test_operation_overflow_names_op_module_step_and_region():
    ops = [_op(0, "aten.addmm", "attn.q", 300, 10, leaf=True),
           _op(1, "aten.bmm", "attn", 1.7e5, 300, n_over=12, step=3),
           _op(2, "aten._softmax", "attn", 1.0, 1.7e5),
           _op(3, "aten.addmm", "head", 2.0, 1.0, leaf=True)]
    f = _by(findings_from_measurements({"operations": ops}, FP16), "operation overflow")
    assert f.status == "fail" and f.op == "aten.bmm" and f.layer == "attn" and f.step == 3
    assert "aten.bmm in attn" in f.message and "m.py:3" in f.message
    region = [x for x in f.fixes if x.name == "fp32_region"][0]
    assert [k["op"] for k in region.params["ops"]] == ["aten.bmm", "aten._softmax"]
    assert f.fixable
    resc = [x for x in f.fixes if x.name == "rescale"][0]
    assert resc.params["factor"] * 1.7e5 <= FP16.max / THRESHOLDS["op_headroom_warn"]
    assert decide_verdict([f])[0] == "SAFE WITH CHANGES"


def test_operation_overflow_without_a_closing_op_is_not_a_verdict_keeping_fix():
    ops = [_op(0, "aten.mul", "", 1e5, 10, n_over=3), _op(1, "aten.addmm", "fc", 2e5, 1e5, n_over=4)]
    f = _by(findings_from_measurements({"operations": ops}, FP16), "operation overflow")
    assert not f.fixable and [x.name for x in f.fixes] == ["rescale"]
    assert decide_verdict([f])[0] == "UNSAFE"


@pytest.mark.parametrize("max_abs,status", [(FP16.max / 9, "ok"), (FP16.max / 7, "warn")])
def test_operation_headroom_both_sides(max_abs, status):
    ops = [_op(0, "aten.bmm", max_abs=max_abs), _op(1, "aten.nll_loss_forward", "<outside the model>", 6e4, 1.0)]
    f = _by(findings_from_measurements({"operations": ops}, FP16), "operation range")
    assert f.status == status and f.op == "aten.bmm"


def test_leaf_outputs_are_activation_findings_not_operation_findings():
    ops = [_op(0, "aten.addmm", "fc1", 7e4, 10, n_over=5, leaf=True, step=0),
           _op(1, "aten.native_layer_norm", "norm", 3.0, 7e4, leaf=True)]
    acts = [{"name": "fc1", "op": "aten.addmm", "key": ops[0]["key"], "step": 0, "max_abs": 7e4, "n_overflow": 5,
             "frac_flushed": 0.0},
            {"name": "norm", "op": "aten.native_layer_norm", "key": ops[1]["key"], "step": None, "max_abs": 3.0,
             "n_overflow": 0, "frac_flushed": 0.0}]
    fs = findings_from_measurements({"operations": ops, "activations": acts}, FP16)
    a = _by(fs, "activation overflow")
    assert a.op == "aten.addmm" and a.step == 0
    # the fix runs through the normalisation: keeping fc1 alone in fp32 overflows at the next cast
    assert "through aten.native_layer_norm in norm" in a.fix
    assert not [f for f in fs if f.check == "operation overflow"]


def test_backward_overflow_fails():
    ops = [_op(0, "aten.mm", "fc", 1e5, 10, n_over=2, phase="backward")]
    f = _by(findings_from_measurements({"operations": ops}, FP16), "backward overflow")
    assert f.status == "fail" and not f.fixable


def _buf(name="bn.running_var", kind="running_var", n_over=(0, 0), pred=None, changed=(4, 4), lost=(0, 0),
         flushed=(0, 0)):
    return {"name": name, "module": name.rpartition(".")[0], "module_type": "BatchNorm1d", "numel": 4,
            "steps": [0, 1], "max_abs": [1.0, 1.0], "min_abs_nonzero": [1.0, 1.0], "n_overflow": list(n_over),
            "n_subnormal": [0, 0], "n_flushed": list(flushed), "n_changed": list(changed), "n_update_lost": list(lost),
            "updated_by": ["aten.native_batch_norm in bn"], "kind": kind, "momentum": 0.1, "eps": 1e-5,
            "prediction": pred, "update_lost_frac": sum(lost) / max(1, sum(changed))}


def test_buffer_overflow_predicted_and_observed():
    pred = {"overflow_step": 7, "settled_step": None, "eval_error": math.inf, "target_max": 1e6}
    f = _by(findings_from_measurements({"buffers": [_buf(pred=pred)]}, FP16), "buffer overflow")
    assert f.status == "fail" and f.step == 7 and f.layer == "bn"
    assert f.fixes == [Fix("buffers_fp32", {"buffers": ["bn.running_var"], "modules": ["bn"]}, f.fix)]
    assert f.fix.startswith("keep BatchNorm statistics in fp32")
    late = dict(pred, overflow_step=THRESHOLDS["buffer_overflow_horizon"] + 1, eval_error=0.0)
    fs = findings_from_measurements({"buffers": [_buf(pred=late)]}, FP16)
    assert not [f for f in fs if f.check == "buffer overflow"]
    obs = findings_from_measurements({"buffers": [_buf(n_over=(0, 3), kind=None, name="ema")]}, FP16)
    assert _by(obs, "buffer overflow").step == 1 and "keep buffer(s) ema in fp32" in _by(obs, "buffer overflow").fix


@pytest.mark.parametrize("err,status", [(0.01, "ok"), (0.05, "warn"), (0.5, "fail")])
def test_running_statistic_stall_is_weighed_by_its_eval_effect(err, status):
    pred = {"overflow_step": None, "settled_step": 140, "eval_error": err, "channel": 2, "limit": 1e-10,
            "settled_value": 3e-7, "target_max": 1e-10}
    f = _by(findings_from_measurements({"buffers": [_buf(pred=pred)]}, FP16), "running statistics")
    assert f.status == status


@pytest.mark.parametrize("lost,status", [((0, 0), "ok"), ((1, 0), "warn"), ((2, 2), "warn"), ((3, 2), "fail")])
def test_plain_buffer_update_stagnation(lost, status):
    fs = findings_from_measurements({"buffers": [_buf(name="ema", kind=None, lost=lost)]}, FP16)
    assert _by(fs, "buffer update stagnation").status == status


# ---- the check on real models ------------------------------------------------------------------


def test_check_sees_attention_logits_overflow():
    torch.manual_seed(0)
    m = AttnNet()
    with torch.no_grad():
        m.attn.k.weight.copy_(m.attn.q.weight)
        m.attn.k.bias.copy_(m.attn.q.bias)
    X, y = torch.randn(32, 6, 16) * 170, torch.randint(0, 3, (32,))
    rep = check(m, (X, y), steps=2, certify=False, batch_size=16)
    f = _by(rep.findings, "operation overflow")
    assert (f.op, f.layer, f.step) == ("aten.bmm", "attn", 0)
    assert "aten._softmax" in f.fix
    assert rep.to_dict()["findings"]  # serialisable with the Fix objects
    # the module-level view is clean: no leaf layer overflows
    assert not [g for g in rep.findings if g.check == "activation overflow"]


def test_check_sees_a_scale_factor_in_forward():
    torch.manual_seed(0)
    X, y = cls_data(32, 8)
    rep = check(ScaledNet(3e4), (X, y), steps=2, certify=False, batch_size=16)
    f = _by(rep.findings, "operation overflow")
    assert f.layer == "model" and f.op in ("aten.pow", "aten.mul", "aten.sum")
    assert rep.verdict != "SAFE"
    rep_ok = check(ScaledNet(3.0), (X, y), steps=2, certify=False, batch_size=16)
    assert not [g for g in rep_ok.findings if g.check == "operation overflow"]


def test_check_running_var_overflow_and_control():
    torch.manual_seed(0)
    X, y = cls_data(256, 8, scale=math.sqrt(1e5))
    rep = check(BNNet(), (X.clamp(-3.3e3, 3.3e3), y), steps=3, certify=False, batch_size=128)
    f = _by(rep.findings, "buffer overflow")
    assert f.status == "fail" and f.layer == "bn" and f.fixes[0].name == "buffers_fp32"
    assert "bn.running_var" in f.fixes[0].params["buffers"]
    X2, y2 = cls_data(256, 8, scale=10.0)
    rep2 = check(BNNet(), (X2, y2), steps=3, certify=False, batch_size=128)
    assert not [g for g in rep2.findings if g.check == "buffer overflow"]
    assert _by(rep2.findings, "running statistics").status == "ok"


def test_check_runs_torchvision_style_resnet():
    torch.manual_seed(0)
    m = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10, width=8)
    X, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    rep = check(m, (X, y), steps=1, certify=False, batch_size=4)
    assert rep.verdict in ("SAFE", "SAFE WITH CHANGES", "UNSAFE")
    assert any(a["name"].startswith("layer1.0") for a in rep.details["activation_grads"] if a["count"])
    assert any(o["op"] == "add_" and o["module"] == "layer1.0" for o in rep.details["operations"])


def test_check_runs_embedding_with_integer_tokens_and_says_certificate_not_examined():
    torch.manual_seed(0)
    X, y = torch.randint(0, 50, (32, 5)), torch.randint(0, 3, (32,))
    rep = check(EmbedNet(), (X, y), steps=1, warmup_steps=2, certify=True, batch_size=16)
    assert any(o["op"] == "embedding" for o in rep.details["operations"])
    agree = _by(rep.findings, "inference agreement")
    assert "not examined" in agree.message


def test_check_runs_tuple_and_dict_inputs():
    torch.manual_seed(0)
    x1, x2, y = torch.randn(16, 4), torch.randn(16, 6), torch.randint(0, 3, (16,))
    for X in ((x1, x2), {"x1": x1, "x2": x2}):
        rep = check(TwoInputNet(), (X, y), steps=1, certify=False, batch_size=8)
        assert any(o["module"] == "b" for o in rep.details["operations"])


class Breaks(nn.Module):
    """Runs on two samples, fails on a training batch (a shape bug that shows only at batch 8)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.shape[0] > 2:
            x = x.view(-1, 8)
        return self.fc(x)


def test_a_model_the_check_cannot_run_is_a_clear_error():
    X, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    with pytest.raises(ValueError, match="cannot measure this model: a plain fp32 training step.*RuntimeError") as e:
        check(Breaks(), (X, y), steps=1, certify=False, batch_size=8)
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_inputs_disagreeing_on_samples_are_refused():
    with pytest.raises(ValueError, match="disagree on the number of samples"):
        check(TwoInputNet(), ((torch.randn(4, 4), torch.randn(5, 6)), torch.zeros(4)), certify=False)


def test_check_running_var_stall_for_tiny_inputs():
    """Batch variance 1e-10 with eps 1e-10: the fp16 running variance settles among the subnormals,
    hundreds of times too large, and eval mode normalises with a scale several times off."""
    torch.manual_seed(0)
    X, y = cls_data(256, 8, scale=1e-5)
    rep = check(BNNet(eps=1e-10), (X, y), steps=2, certify=False, batch_size=128)
    f = _by(rep.findings, "running statistics")
    assert f.status == "fail" and f.layer == "bn" and f.fixes[0].name == "buffers_fp32"
    assert "bn.running_var" in f.message
    assert rep.verdict == "SAFE WITH CHANGES" or any(g.status == "fail" and not g.fixable for g in rep.findings)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_check_runs_huggingface_models(arch):
    tr = pytest.importorskip("transformers", reason="transformers is an optional extra: pip install transformers")
    torch.manual_seed(0)
    toks = torch.randint(0, 64, (16, 8))
    if arch == "gpt2":
        m = tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
        y = toks  # next-token labels, one per position
    else:
        m = tr.BertForSequenceClassification(tr.BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16, num_labels=3))
        y = torch.randint(0, 3, (16,))
    rep = check(m, ({"input_ids": toks}, y), steps=1, certify=False, batch_size=8)
    assert rep.verdict in ("SAFE", "SAFE WITH CHANGES", "UNSAFE")
    assert any(o["op"] == "embedding" for o in rep.details["operations"])
    assert _by(rep.findings, "operation range").op is not None or any(f.check == "operation overflow" for f in rep.findings)


def test_an_observer_failure_is_told_apart_from_the_models(monkeypatch):
    from fpanalysis.check import probe

    def broken(self, step):
        raise RuntimeError("observer broke")

    monkeypatch.setattr(probe.Observer, "step", broken)
    X, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    with pytest.raises(ValueError, match="fails only under the operation observer.*observer broke"):
        check(TwoInputNet(), ((X,), y), steps=1, certify=False, batch_size=8)


@pytest.mark.parametrize("keep_values", [False, True])
def test_range_stats_counts_match_numpy_float16(keep_values):
    """RangeStats (whole-tensor path and masked path) against numpy's correctly rounded float16 cast."""
    import numpy as np

    from fpanalysis.check.probe import RangeStats

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10000, generator=g) * 1e-6, torch.zeros(100), torch.randn(1000, generator=g) * 1e5,
                   torch.randn(1000, generator=g), torch.randn(100, generator=g) * 1e-40,
                   torch.tensor([65519.0, 65520.0, 2.0**-25, 2.0**-25 * 1.0001])])
    rs = RangeStats("x", "test")
    rs.add(x, FP16, keep_values=keep_values)
    v = x.numpy()
    with np.errstate(over="ignore"):
        r = np.abs(v.astype(np.float16).astype(np.float64))
    nz = v != 0
    assert rs.nonzero == int(nz.sum())
    assert rs.n_overflow == int(np.sum(~np.isfinite(r)))
    assert rs.n_flushed == int(np.sum((r == 0) & nz))
    assert rs.n_subnormal == int(np.sum((r > 0) & (r < FP16.min_normal)))
    assert rs.n_below_2m24 == int(np.sum(nz & (np.abs(v) < 2.0**-24)))
    e = np.floor(np.log2(np.abs(v[nz]).astype(np.float64))).astype(int)
    assert int(rs.hist.sum()) == int(nz.sum()) and rs.max_abs == float(np.abs(v).max())
    assert np.bincount(e - e.min()).max() == rs.hist.max()

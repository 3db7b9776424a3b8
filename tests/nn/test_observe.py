"""Operation-level observer (fpanalysis.nn.observe): every aten op, forward and backward, and buffers.

Each model below is built for one mechanism the module-hook probe could not see; each test checks
the measured number on the side that matters and, where a control model exists, the other side.
Range counts are checked against numpy's float16 and ml_dtypes' bfloat16 conversions (independent
correctly rounded casts), not against the emulator that computes the boundaries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from _zoo import (
    AttnNet,
    BasicBlock,
    BNNet,
    EMANet,
    EmbedNet,
    ResNet,
    RNNNet,
    ScaledNet,
    TwoInputNet,
)
from _zoo import (
    cls_data as _cls_data,
)
from torch import nn

from fpanalysis.formats import get_format
from fpanalysis.nn.observe import (
    Observer,
    RangeBoundaries,
    default_loss,
    observe_training,
)

FP16_MAX = 65504.0


def _batches(x, y, n):
    return [(x, y)] * n


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,cast", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_counts_match_an_independent_cast(fmt, cast):
    """Overflow / subnormal / flush counts equal those of numpy's or ml_dtypes' correctly rounded cast,
    on values placed exactly at and beside every rounding boundary."""
    f = get_format(fmt)
    b = RangeBoundaries.of(f)
    pts = []
    for v in (b.flush, b.subnormal, b.finite, f.min_subnormal, f.min_normal, f.max):
        v32 = np.float32(v)
        pts += [v32, np.nextafter(v32, np.float32(np.inf)), np.nextafter(v32, np.float32(0))]
    rng = np.random.default_rng(0)
    pts = np.concatenate([np.array(pts, dtype=np.float32), np.float32(2.0) ** rng.uniform(-140, 128, 3000).astype(np.float32),
                          np.zeros(5, np.float32), np.array([np.inf], np.float32)])
    pts = pts * np.where(rng.random(pts.size) < 0.5, -1, 1).astype(np.float32)
    if cast == "float16":
        with np.errstate(over="ignore"):
            r = pts.astype(np.float16).astype(np.float64)
    else:
        ml = pytest.importorskip("ml_dtypes")
        r = pts.astype(ml.bfloat16).astype(np.float64)
    r = np.abs(r)
    want_over = int(np.sum(~np.isfinite(r) & np.isfinite(pts)))  # inf inputs are counted apart
    want_nonfinite = int(np.sum(~np.isfinite(pts)))
    want_flush = int(np.sum((r == 0) & (pts != 0)))
    want_sub = int(np.sum((r > 0) & (r < f.min_normal)))
    assert want_over > 0 and want_flush > 0 and want_sub > 0

    class Id(nn.Module):
        def forward(self, x):
            return x * 1.0

    obs = Observer(Id(), fmt)
    with obs.step(0):
        Id()(torch.from_numpy(pts))
    rec = obs.result().find("mul")[0]
    assert (rec.n_overflow, rec.n_flushed, rec.n_subnormal) == (want_over, want_flush, want_sub)
    assert rec.n_nonfinite == want_nonfinite == 1
    assert rec.max_abs == math.inf
    assert rec.min_abs_nonzero == float(np.min(np.abs(pts[pts != 0])))


def test_attention_logits_overflow_inside_a_module_is_seen():
    torch.manual_seed(0)
    m = AttnNet()
    with torch.no_grad():  # q = k: the logits' diagonal is |q|^2 ~ 1e5 while |q| stays a few hundred
        m.attn.k.weight.copy_(m.attn.q.weight)
        m.attn.k.bias.copy_(m.attn.q.bias)
    x, y = torch.randn(4, 6, 16) * 170, torch.randint(0, 3, (4,))
    obs = observe_training(m, _batches(x, y, 2), "fp16")
    bmm = obs.find("bmm", module="attn", phase="forward")
    assert bmm, [r.name for r in obs.ops]
    logits = bmm[0]
    assert logits.max_abs > 1e5 and logits.n_overflow > 0 and logits.first_overflow_step == 0
    assert logits.reduction == 16 and logits.reduction_what == "inner product"
    assert "_zoo.py" in logits.source and "forward" in logits.source
    # every leaf module's own output stays far below fp16's max: module hooks could not see it
    leaf_outputs = [r for r in obs.forward() if r.module_output and r.module in ("attn.q", "attn.k", "attn.v", "head")]
    assert leaf_outputs and max(r.max_abs for r in leaf_outputs) < 2000
    # the backward pass of the same product is attributed to the same module
    assert obs.find("bmm", module="attn", phase="backward")
    assert all(r.node and r.node.endswith("Backward0") for r in obs.backward() if r.module == "attn")


def test_attention_control_without_large_weights_does_not_overflow():
    torch.manual_seed(0)
    obs = observe_training(AttnNet(), _batches(torch.randn(4, 6, 16), torch.randint(0, 3, (4,)), 2), "fp16")
    assert not obs.overflowing()


@pytest.mark.parametrize("scale,over", [(3e4, True), (3.0, False)])
def test_scale_factor_in_forward(scale, over):
    torch.manual_seed(0)
    x, y = _cls_data(16, 8)
    obs = observe_training(ScaledNet(scale), _batches(x, y, 2), "fp16")
    pow_ = obs.find("pow", phase="forward")[0]  # squares of the scaled features (module-less op)
    assert pow_.module == ""
    assert (pow_.n_overflow > 0) is over
    mul = obs.find("mul", phase="forward")[0]
    assert mul.source and "_zoo.py" in mul.source
    if over:
        assert pow_.max_abs > FP16_MAX
        assert any(r.phase == "forward" and r.op == "pow" for r in obs.overflowing())


def test_running_var_overflows_within_a_few_steps():
    """BatchNorm channel variance ~1e5: activations stay < 3.4e3, running_var reaches inf in fp16."""
    torch.manual_seed(0)
    x, y = _cls_data(256, 8, scale=math.sqrt(1e5))
    x = x.clamp(-3.3e3, 3.3e3)
    obs = observe_training(BNNet(), _batches(x, y, 3), "fp16")
    assert max(r.max_abs for r in obs.forward() if r.module in ("bn", "fc") and r.output == 0) < 4e3
    rv = obs.buffer("bn.running_var")
    assert rv.kind == "running_var" and rv.momentum == pytest.approx(0.1)
    assert any("batch_norm" in u and "in bn" in u for u in rv.updated_by)
    assert rv.max_abs[-1] > rv.max_abs[0] > 1e4  # fp32 running_var climbs towards ~1e5
    p = rv.prediction
    assert p["overflow_step"] is not None and p["overflow_step"] <= 15
    assert p["target_max"] > FP16_MAX


def test_running_var_control_does_not_overflow():
    torch.manual_seed(0)
    x, y = _cls_data(256, 8, scale=10.0)
    p = observe_training(BNNet(), _batches(x, y, 3), "fp16").buffer("bn.running_var").prediction
    assert p["overflow_step"] is None and p["eval_error"] < 0.01


def test_running_var_stalls_for_tiny_inputs():
    """Batch variance 1e-10: the fp16 running variance stops falling in the subnormal range,
    where 0.1 * (r - v) is below half an ulp, far above the true limit."""
    torch.manual_seed(0)
    x, y = _cls_data(256, 8, scale=1e-5)
    obs = observe_training(BNNet(eps=1e-10), _batches(x, y, 3), "fp16")
    p = obs.buffer("bn.running_var").prediction
    assert p["overflow_step"] is None and p["settled_step"] is not None
    assert p["settled_value"] < get_format("fp16").min_normal  # settled among subnormals
    assert p["settled_value"] > 100 * p["limit"]
    assert p["eval_error"] > 2.0  # eval normalises by a scale several times off
    # bf16 has fp32's exponent range: no stall there
    p16 = observe_training(BNNet(eps=1e-10), _batches(x, y, 3), "bf16").buffer("bn.running_var").prediction
    assert p16["eval_error"] < 0.05


def test_ema_buffer_update_rounds_away():
    """An EMA at 1000 with a 1e-3 step: updates of ~0.1 are below half an fp16 ulp (0.25) and vanish."""
    torch.manual_seed(0)
    x = 1000.0 + torch.randn(32, 4) * 0.1 + 0.1
    y = torch.randint(0, 3, (32,))
    obs = observe_training(EMANet(0.999), _batches(x, y, 3), "fp16")
    ema = obs.buffer("ema")
    assert sum(ema.n_changed) == 12 and ema.update_lost_frac == 1.0
    assert any(u.startswith("aten.mul_") for u in ema.updated_by) and any(u.startswith("aten.add_") for u in ema.updated_by)
    # a fast-moving average keeps its updates
    x2 = 1000.0 + torch.randn(32, 4) * 0.1 + 100.0
    assert observe_training(EMANet(0.5), _batches(x2, y, 3), "fp16").buffer("ema").update_lost_frac == 0.0


def test_inplace_resnet_runs_and_attributes_ops():
    torch.manual_seed(0)
    m = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10, width=8)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    obs = observe_training(m, _batches(x, y, 2), "fp16")
    fwd = obs.forward()
    assert {r.op for r in fwd} >= {"convolution", "native_batch_norm", "relu_", "add_", "max_pool2d_with_indices"} or \
        {r.op for r in fwd} >= {"convolution", "native_batch_norm", "relu_", "add_"}
    add = obs.find("add_", module="layer2.0", phase="forward")  # out += identity
    assert add and add[0].inplace
    assert any(r.op == "relu_" and r.module == "layer1.0.relu" and r.occurrence == 1 for r in fwd)  # shared ReLU, 2nd call
    conv_bwd = obs.find("convolution_backward", module="layer3.0.conv2", phase="backward")
    assert conv_bwd and conv_bwd[0].reduction is not None
    assert any(r.module == "layer1.0.conv1" and r.module_output for r in fwd if r.op == "convolution")
    assert len(obs.steps) == 2 and all(b.steps == [0, 1] for b in obs.buffers)


def test_module_backward_hooks_fail_on_this_resnet():
    """The failure the observer avoids: full backward hooks on an inplace-ReLU ResNet raise."""
    torch.manual_seed(0)
    m = ResNet(BasicBlock, [1, 1, 1, 1], width=8)
    for mod in m.modules():
        if not list(mod.children()):
            mod.register_full_backward_hook(lambda *a: None)
    with pytest.raises(RuntimeError, match="BackwardHookFunction"):
        default_loss(m(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()


def test_embedding_with_integer_tokens():
    torch.manual_seed(0)
    toks = torch.randint(0, 50, (8, 5))
    y = torch.randint(0, 3, (8,))
    obs = observe_training(EmbedNet(), _batches(toks, y, 2), "fp16")
    emb = obs.find("embedding", module="emb", phase="forward")
    assert emb and emb[0].max_abs > 0
    assert obs.find("embedding_dense_backward", module="emb", phase="backward")
    assert toks.dtype == torch.int64


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_models(cell):
    torch.manual_seed(0)
    x, y = torch.randn(4, 7, 6), torch.randint(0, 3, (4,))
    obs = observe_training(RNNNet(cell), _batches(x, y, 2), "fp16")
    fwd = [r for r in obs.forward() if r.module == "rnn"]
    bwd = [r for r in obs.backward() if r.module == "rnn"]
    assert fwd and bwd
    # the CPU LSTM runs as one fused oneDNN kernel (its gates are inside it); the GRU as aten ops
    assert any(r.op in ("sigmoid", "sigmoid_", "tanh", "tanh_") or "rnn" in r.op or "lstm" in r.op for r in fwd)
    assert max(r.max_abs for r in fwd) > 0.01


def test_multi_input_tuple_and_dict_batches():
    torch.manual_seed(0)
    x1, x2, y = torch.randn(4, 4), torch.randn(4, 6), torch.randint(0, 3, (4,))
    o1 = observe_training(TwoInputNet(), [((x1, x2), y)] * 2, "fp16")
    o2 = observe_training(TwoInputNet(), [({"x1": x1, "x2": x2}, y)] * 2, "fp16")
    for o in (o1, o2):
        assert o.find("addmm", module="b", phase="forward") and o.find("tanh", module="", phase="forward")
    o3 = observe_training(TwoInputNet(), [((x1,), y)] * 2, "fp16")
    assert not o3.find("addmm", module="b")


def test_transformer_encoder_layer():
    torch.manual_seed(0)

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True),
                                             num_layers=1, enable_nested_tensor=False)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.enc(x).mean(1))

    obs = observe_training(Enc(), _batches(torch.randn(4, 5, 16), torch.randint(0, 3, (4,)), 2), "fp16")
    mods = {r.module for r in obs.ops}
    assert "enc.layers.0.self_attn" in mods and "enc.layers.0.linear1" in mods and "enc.layers.0.norm1" in mods
    ln = obs.find("native_layer_norm", module="enc.layers.0.norm1", phase="forward")
    assert ln and ln[0].reduction == 16
    assert any(r.phase == "backward" and r.module == "enc.layers.0.self_attn" for r in obs.ops)


def test_unobserved_steps_are_not_recorded():
    torch.manual_seed(0)
    x, y = _cls_data(8, 8)
    obs = observe_training(BNNet(), _batches(x, y, 5), "fp16", max_steps=2)
    assert obs.steps == [0, 1]
    assert all(set(r.steps) <= {0, 1} for r in obs.ops)
    assert max(r.calls for r in obs.ops) == 2


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="torch.nn.Module"):
        Observer(object(), "fp16")
    with pytest.raises(ValueError, match="fp16"):
        Observer(BNNet(), "fp17")


def _hf():
    return pytest.importorskip("transformers", reason="transformers is an optional extra: pip install transformers")


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_huggingface_models_from_small_config(arch):
    tr = _hf()
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = tr.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
        m = tr.GPT2LMHeadModel(cfg)
    else:
        cfg = tr.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=16, num_labels=3)
        m = tr.BertForSequenceClassification(cfg)
    toks = torch.randint(0, 64, (2, 8))
    y = toks if arch == "gpt2" else torch.randint(0, 3, (2,))
    obs = observe_training(m, [({"input_ids": toks}, y)] * 2, "fp16")
    assert obs.find("embedding", phase="forward") and obs.find("embedding_dense_backward", phase="backward")
    assert any("attn" in r.module or "attention" in r.module for r in obs.ops)
    assert any(r.phase == "backward" and r.module.startswith(("transformer", "bert")) for r in obs.ops)


def test_running_var_prediction_also_starts_from_the_reset_value():
    """A model whose running variance already sits at its fp32 limit (after fp32 training): fp16
    training from scratch would still stall, which the reset start shows."""
    torch.manual_seed(0)
    x, y = _cls_data(256, 8, scale=1e-5)
    m = BNNet(eps=1e-10)
    with torch.no_grad():
        m.bn.running_var.copy_(x.var(0))
        m.bn.running_mean.copy_(x.mean(0))
    p = observe_training(m, _batches(x, y, 2), "fp16").buffer("bn.running_var").prediction
    assert p["start"] == "reset" and p["eval_error"] > 2.0


@pytest.mark.parametrize("scale", [10.0, 1e-6])
def test_batch_statistic_behind_a_running_var(scale):
    """The batch variance the running average converges to, read off the kernel's inverse std
    (scale 10) or, where that cancels against eps, computed from the input (scale 1e-6)."""
    torch.manual_seed(0)
    x, y = _cls_data(256, 8, scale=scale)
    obs = observe_training(BNNet(), _batches(x, y, 1), "fp16")
    want = x.double().var(0).numpy()
    np.testing.assert_allclose(obs.buffer("bn.running_var").target, want, rtol=1e-4)
    np.testing.assert_allclose(obs.buffer("bn.running_mean").target, x.double().mean(0).numpy(), rtol=1e-4,
                               atol=1e-6 * scale)


def test_unreadable_tensors_leave_the_op_unmeasured_not_the_model_broken(monkeypatch):
    import fpanalysis.nn.observe as ob

    def broken(t, finite):
        raise RuntimeError("cannot read")

    monkeypatch.setattr(ob, "_abs_stats", broken)
    x, y = _cls_data(16, 8)
    obs = observe_training(BNNet(), _batches(x, y, 1), "fp16")
    assert not obs.ops and obs.unmeasured.get("addmm", 0) >= 1

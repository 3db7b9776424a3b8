"""experiments/train.py and fpanalysis.nn.precision: every mode trains and writes a valid result;
pure fp16 really is fp16 throughout; Adam's epsilon failure in fp16 and its fix; divergence is a
result, not a crash; loss scaling recovers gradients that underflow in fp16."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import train
from fpanalysis.datasets import load_dataset
from fpanalysis.nn.models import build_model
from fpanalysis.nn.precision import (
    PRECISION_MODES,
    AmpLossScaler,
    ManualLossScaler,
    check_and_unscale_,
    precision_policy,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(dataset="gaussian", n_train=96, n_test=64, batch_size=32, epochs=2, width=32, threads=1)

EXPECTED = {  # mode -> (weights, grads, optimizer state, logits)
    "fp32": ("float32", "float32", "float32", "float32"),
    "amp-fp16": ("float32", "float32", "float32", "float16"),
    "fp16": ("float16", "float16", "float16", "float16"),
    "bf16": ("bfloat16", "bfloat16", "bfloat16", "bfloat16"),
    "amp-bf16": ("float32", "float32", "float32", "bfloat16"),
}


def tiny(tmp_path, **kw) -> train.Config:
    cfg = train.Config(**{**TINY, **kw})
    return dataclasses.replace(cfg, out=str(tmp_path / f"{train.run_name(cfg)}.json"))


# ------------------------------------------------------------------------------------------
# configuration


def test_parse_args():
    cfg = train.parse_args(["--smoke", "--mode=fp16", "--lr=0.5", "--epochs=7", "--dataset=mnist1d"])
    assert (cfg.mode, cfg.lr, cfg.epochs, cfg.dataset) == ("fp16", 0.5, 7, "mnist1d")
    assert cfg.n_train == train.SMOKE["n_train"] and cfg.batch_size == train.SMOKE["batch_size"]
    assert train.parse_args([]) == train.Config()
    with pytest.raises(ValueError, match="unknown option --lrate; valid options are: dataset"):
        train.parse_args(["--lrate=1"])
    with pytest.raises(ValueError, match="expected int"):
        train.parse_args(["--epochs=two"])
    with pytest.raises(ValueError, match="--key=value"):
        train.parse_args(["fp16"])
    assert train.main(["--bogus=1"]) == 2


def _fig5_runs(results: Path) -> list[tuple[str, str]]:
    from paper_figures import fig5_training

    return sorted((str(r["path"].relative_to(results)), r["mode"]) for r in fig5_training.load_runs(results))


def test_smoke_and_adhoc_runs_never_reach_figure_5(tmp_path, monkeypatch):
    """Issue 12: ``python -m experiments.train --smoke`` with its default output landed in
    experiments/results/runs/ and figure 5 averaged it into the fp32 baseline."""
    pytest.importorskip("matplotlib")
    results = tmp_path / "experiments" / "results"
    monkeypatch.setattr(train, "HERE", tmp_path / "experiments")  # train.py's folder, for the default --out
    sweep_run = results / "cpu_sweep" / "toy" / "runs" / "gaussian-mlp-fp32-sgd-s0.json"
    train.run(dataclasses.replace(tiny(tmp_path, weights="none"), out=str(sweep_run)))
    assert _fig5_runs(results) == [("cpu_sweep/toy/runs/gaussian-mlp-fp32-sgd-s0.json", "fp32")]
    # an ad-hoc smoke run with the default output, as in the issue
    assert train.main(["--smoke", "--dataset=gaussian", "--width=16", "--threads=1", "--weights=none"]) == 0
    # a smoke run written into a sweep's runs/ folder, and an ad-hoc run in results/runs/
    smoke = train.parse_args(["--smoke", "--dataset=gaussian", "--width=16", "--threads=1", "--weights=none",
                              "--seed=1", f"--out={sweep_run.with_name('gaussian-mlp-fp32-sgd-s1.json')}"])
    train.run(smoke)
    train.run(dataclasses.replace(tiny(tmp_path, weights="none", seed=2), out=str(results / "runs" / "adhoc.json")))
    assert len(list(results.rglob("*.json"))) == 4
    assert _fig5_runs(results) == [("cpu_sweep/toy/runs/gaussian-mlp-fp32-sgd-s0.json", "fp32")]
    assert json.loads(sweep_run.with_name("gaussian-mlp-fp32-sgd-s1.json").read_text())["config"]["smoke"] is True


def test_default_and_smoke_outputs_are_ignored_by_git():
    """train.py without --out, and bench_analysis --smoke (which overwrote the committed
    results/bench_analysis.json), write into the ignored scratch folder."""
    import shutil
    import subprocess

    from experiments import bench_analysis

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [train.result_path(train.parse_args(["--smoke"])), train.result_path(train.parse_args([])),
             Path(bench_analysis._parse(["--smoke"]).out)]
    for path in paths:
        assert path.is_relative_to(ROOT / "experiments" / "results" / "_scratch"), path
        res = subprocess.run(["git", "check-ignore", "-q", str(path.relative_to(ROOT))], cwd=ROOT, check=False)
        assert res.returncode == 0, f"{path} is not ignored by git"
    assert bench_analysis._parse(["--smoke", "--out=x.json"]).out == "x.json"


def test_unknown_names_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="valid modes are: fp32, amp-fp16, fp16, bf16, amp-bf16"):
        precision_policy("fp8")
    with pytest.raises(ValueError, match="valid optimizers are: sgd, adam, adamw"):
        train.run(tiny(tmp_path, optimizer="lamb"))
    with pytest.raises(ValueError, match="valid values are"):
        precision_policy("fp16", loss_scale="sometimes")


# ------------------------------------------------------------------------------------------
# every mode runs and writes a valid result


@pytest.mark.parametrize("mode", PRECISION_MODES)
def test_every_mode_trains_and_writes_result(tmp_path, mode):
    cfg = tiny(tmp_path, mode=mode, seed=3)
    res = train.run(cfg)
    on_disk = json.loads(Path(cfg.out).read_text())
    assert on_disk["schema"] == train.SCHEMA and on_disk["status"] == "complete"
    assert on_disk["config"] == dataclasses.asdict(cfg)
    assert on_disk["run_name"] == res["run_name"] == "gaussian-mlp-%s-sgd-s3" % mode
    assert len(on_disk["epochs"]) == 2
    for e in on_disk["epochs"]:
        assert e["steps"] == 3 and e["wall_s"] > 0
        assert math.isfinite(e["train_loss"]) and 0 <= e["test_acc"] <= 1
    w, g, s, lg = EXPECTED[mode]
    d = on_disk["dtypes"]
    assert d["weights"] == [w] and d["grads"] == [g] and d["logits"] == lg
    assert d["optimizer_state"] == [f"momentum_buffer:{s}"]
    fin = on_disk["final"]
    assert fin["steps"] == 6 and fin["samples_per_s"] > 0 and fin["test_acc"] == on_disk["epochs"][-1]["test_acc"]
    mem = on_disk["memory"]
    assert mem["kind"] == "cpu_rss" and mem["peak_bytes"] >= mem["baseline_bytes"] > 0
    n_params = on_disk["model"]["parameters"]
    assert mem["param_bytes"] == n_params * torch.tensor([], dtype=getattr(torch, w)).element_size()
    env = on_disk["environment"]
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__ and "git_commit" in env
    assert on_disk["precision"]["mode"] == mode and "cuda.matmul.allow_tf32" in on_disk["precision"]["flags"]
    assert on_disk["precision"]["loss_scale_history"]["kind"] == ("dynamic (GradScaler)" if mode == "amp-fp16"
                                                                   else "none")
    assert not on_disk["divergence"]["diverged"]
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([Path(cfg.out).name, Path(cfg.out).with_suffix(".pt").name])


def test_weights_reload_with_weights_only_and_reproduce_accuracy(tmp_path):
    cfg = tiny(tmp_path, mode="fp16", dataset="digits", n_train=128, n_test=100, model="lenet5", width=0,
               epochs=1, batch_size=64)
    res = train.run(cfg)
    sd = torch.load(res["weights"]["path"], weights_only=True)
    assert {v.dtype for v in sd.values()} == {torch.float16}
    ds = load_dataset("digits", n_train=128, n_test=100)
    model = build_model("lenet5", input_shape=ds.input_shape, num_classes=10).half()
    model.load_state_dict(sd)
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(ds.x_test).half()).argmax(1).numpy()
    assert np.mean(pred == ds.y_test) == res["final"]["test_acc"]


# ------------------------------------------------------------------------------------------
# pure fp16 is fp16 throughout (checked on the live objects)


@pytest.mark.parametrize("optimizer,state_keys", [("sgd", {"momentum_buffer"}), ("adam", {"exp_avg", "exp_avg_sq"}),
                                                  ("adamw", {"exp_avg", "exp_avg_sq"})])
@pytest.mark.parametrize("mode,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("amp-fp16", torch.float32)])
def test_live_dtypes(mode, dtype, optimizer, state_keys):
    cfg = train.Config(**{**TINY, "mode": mode, "optimizer": optimizer, "eps": 1e-4, "model": "lenet5",
                          "dataset": "digits", "width": 0})
    tr = train.prepare(cfg, (1, 8, 8), 10)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8)
    out = tr.train_step(x, y)
    assert out["stepped"]
    for p in tr.model.parameters():
        assert p.dtype == dtype and p.grad.dtype == dtype
    states = list(tr.optimizer.state.values())
    assert len(states) == len(list(tr.model.parameters()))
    for st in states:
        assert state_keys <= set(st)
        for k in state_keys:
            assert st[k].dtype == dtype
    with tr.policy.autocast():
        logits = tr.model(tr.policy.inputs(x))
    assert logits.dtype == (torch.float16 if mode != "bf16" else torch.bfloat16)


# ------------------------------------------------------------------------------------------
# Adam's epsilon in pure fp16


def test_adam_epsilon_underflow_mechanism():
    # The two roundings behind the failure, checked with numpy's IEEE binary16:
    assert np.float16(1e-8) == 0  # eps vanishes (smallest subnormal is 2^-24 ~ 6e-8)
    g = np.float16(1e-3)
    assert np.float16(np.float32(1 - 0.999) * np.float32(g) * np.float32(g)) == 0  # (1-b2) g^2 underflows
    # ... so torch's fp16 Adam divides m (nonzero) by sqrt(v) + eps = 0 on the first step.
    for eps, finite in ((1e-8, False), (1e-4, True)):
        w = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
        opt = torch.optim.Adam([w], lr=1e-3, eps=eps)
        w.grad = torch.full((4,), 1e-3, dtype=torch.float16)
        opt.step()
        assert torch.all(opt.state[w]["exp_avg_sq"] == 0)
        assert bool(torch.isfinite(w).all()) is finite
    # float32 state does not underflow: the same step is fine
    w = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.Adam([w], lr=1e-3, eps=1e-8)
    w.grad = torch.full((4,), 1e-3)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((4,), 1 - 1e-3), rtol=0, atol=1e-6)


def test_adam_epsilon_failure_reproduced_and_fixed(tmp_path):
    # Built to trigger it: an MLP on a Gaussian mixture, where most gradient entries are below
    # ~5e-3, so (1 - beta2) g^2 underflows to 0 in fp16 on the first step.
    base = dict(optimizer="adam", lr=1e-3, epochs=3)
    bad = train.run(tiny(tmp_path, mode="fp16", eps=1e-8, tag="eps8", **base))
    assert bad["status"] == "diverged"
    assert bad["divergence"]["first_nonfinite"]["step"] <= 2
    assert "non-finite" in bad["divergence"]["reason"]
    fixed = train.run(tiny(tmp_path, mode="fp16", eps=1e-4, tag="eps4", **base))
    assert fixed["status"] == "complete" and fixed["divergence"]["first_nonfinite"] is None
    losses = [e["train_loss"] for e in fixed["epochs"]]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    ref = train.run(tiny(tmp_path, mode="fp32", eps=1e-8, tag="fp32", **base))  # fp32: eps=1e-8 is fine
    assert ref["status"] == "complete"
    # the diverged run's file is a complete, valid result
    on_disk = json.loads(Path(bad["result_path"]).read_text())
    assert on_disk["status"] == "diverged" and on_disk["dtypes"]["optimizer_state"] == [
        "exp_avg:float16", "exp_avg_sq:float16"]


def test_divergence_is_recorded_and_run_ends_cleanly(tmp_path):
    with pytest.raises(ValueError, match="not a finite fp16 number"):
        train.run(tiny(tmp_path, mode="fp16", lr=1e5))
    res = train.run(tiny(tmp_path, mode="fp16", lr=1e4, epochs=5))
    assert res["status"] == "diverged"
    div = res["divergence"]
    assert div["diverged"] and div["step"] == div["first_nonfinite"]["step"] and div["epoch"] == 0
    assert len(res["epochs"]) == 1 and res["final"]["steps"] == div["step"]
    assert json.loads(Path(res["result_path"]).read_text())["status"] == "diverged"


def test_dynamic_scaling_absorbs_overflow(tmp_path):
    # amp-fp16 with GradScaler starting at 2^24: the fp16 logit gradients (2^24 / 32 per sample)
    # overflow, the step is skipped, the scale backs off, and training goes on.
    res = train.run(tiny(tmp_path, mode="amp-fp16", init_scale=2.0 ** 24, growth_interval=2))
    hist = res["precision"]["loss_scale_history"]
    assert hist["kind"] == "dynamic (GradScaler)" and hist["initial"] == 2.0 ** 24
    assert hist["skipped_steps"] >= 1 and hist["min"] <= 2.0 ** 23
    assert res["divergence"]["first_nonfinite"] == {"step": 1, "epoch": 0, "what": "gradient"}
    assert res["status"] == "complete" and math.isfinite(res["final"]["train_loss"])
    # pure fp16 with the manual dynamic scaler (capped at 2^15) runs too
    res = train.run(tiny(tmp_path, mode="fp16", loss_scale="dynamic", growth_interval=2))
    hist = res["precision"]["loss_scale_history"]
    assert hist["kind"] == "dynamic" and hist["initial"] == 2.0 ** 15 and hist["max"] <= 2.0 ** 15
    assert res["status"] == "complete"


# ------------------------------------------------------------------------------------------
# loss scalers


def _params_with_grads(*grads, dtype=torch.float16):
    ps = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(len(g), dtype=dtype))
        p.grad = torch.tensor(g, dtype=dtype)
        ps.append(p)
    return ps


def test_manual_dynamic_scaler_backs_off_and_grows():
    ps = _params_with_grads([1.0, 2.0], [4.0])
    opt = torch.optim.SGD(ps, lr=1.0)
    sc = ManualLossScaler(8.0, dynamic=True, growth_interval=2)
    found = bool(sc.unscale_(opt))
    assert not found and sc.step(opt, found)  # finite: steps
    np.testing.assert_array_equal(ps[0].detach().float().numpy(), [-0.125, -0.25])  # grads / 8, lr 1
    ps[1].grad = torch.tensor([float("inf")], dtype=torch.float16)
    ps[0].grad = torch.tensor([1.0, 1.0], dtype=torch.float16)
    before = ps[0].detach().clone()
    found = bool(sc.unscale_(opt))
    assert found and sc.step(opt, found) is False
    assert torch.equal(ps[0].detach(), before) and sc.scale == 4.0 and sc.skipped_steps == 1
    for _ in range(2):
        for p in ps:
            p.grad = torch.ones_like(p)
        assert sc.step(opt, bool(sc.unscale_(opt)))
    assert sc.scale == 8.0
    s = sc.summary()
    assert (s["initial"], s["min"], s["max"], s["final"], s["changes"], s["skipped_steps"]) == (8, 4, 8, 8, 2, 1)
    assert s["history"] == [[0, 8.0], [2, 4.0], [4, 8.0]]


def test_fp16_scaler_scale_is_capped():
    assert ManualLossScaler(2.0 ** 20, dynamic=True, max_scale=2.0 ** 15).scale == 2.0 ** 15
    assert precision_policy("fp16", loss_scale="dynamic").scaler.scale == 2.0 ** 15
    assert precision_policy("fp16", loss_scale="static").scaler.scale == 1024.0
    assert precision_policy("bf16").scaler.kind == "none"


def test_amp_scaler_skips_on_nonfinite():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    sc = AmpLossScaler("cpu", 2.0 ** 10)
    loss = (w * torch.tensor([1.0, float("inf"), 1.0])).sum()
    sc.scale_loss(loss).backward()
    found = bool(sc.unscale_(opt))
    assert found and not sc.step(opt, found)
    assert torch.equal(w.detach(), torch.ones(3)) and sc.scale == 2.0 ** 9
    opt.zero_grad()
    sc.scale_loss((w * 2).sum()).backward()
    found = bool(sc.unscale_(opt))
    assert not found and sc.step(opt, found)
    torch.testing.assert_close(w.detach(), torch.full((3,), 1 - 0.2))  # gradient 2 unscaled


def test_check_and_unscale_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(100).astype(np.float16)
    t = [torch.from_numpy(a.copy())]
    found = check_and_unscale_(t, 2.0 ** -3)
    assert float(found) == 0.0
    np.testing.assert_array_equal(t[0].numpy(), (a.astype(np.float32) * np.float32(0.125)).astype(np.float16))
    t = [torch.tensor([1.0, float("nan")], dtype=torch.bfloat16)]
    assert float(check_and_unscale_(t)) == 1.0


def test_static_loss_scale_recovers_underflowing_gradients():
    # Two classes, logits fixed at (15, 0) and every label 0: the loss gradient per logit is
    # +-p/B with p = 1/(1 + e^15) ~ 3.1e-7 and B = 16, i.e. ~1.9e-8, below half of fp16's
    # smallest subnormal (2^-25): without scaling it flushes to zero and so does every weight
    # gradient.  With S = 2^12 it is ~7.8e-5, and the unscaled weight gradients (~1e-5, fp16
    # subnormals) match the float64 gradient to the subnormal spacing.
    torch.manual_seed(0)
    B = 16
    x = torch.empty(B, 8).uniform_(10, 100)
    y = torch.zeros(B, dtype=torch.long)
    ref = torch.nn.Linear(8, 2).double()
    with torch.no_grad():
        ref.weight.zero_()
        ref.bias.copy_(torch.tensor([15.0, 0.0]))
    torch.nn.functional.cross_entropy(ref(x.double()), y).backward()
    true = ref.weight.grad.clone()
    p = 1 / (1 + math.exp(15))
    torch.testing.assert_close(true[1], p / B * x.double().sum(0))  # independent closed form
    assert p / B < 2.0 ** -25
    grads = {}
    for scale in (1.0, 2.0 ** 12):
        m = torch.nn.Linear(8, 2).half()
        m.load_state_dict({k: v.half() for k, v in ref.state_dict().items()})
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        sc = ManualLossScaler(scale, dynamic=False)
        sc.scale_loss(torch.nn.functional.cross_entropy(m(x.half()), y)).backward()
        assert sc.step(opt, bool(sc.unscale_(opt)))
        grads[scale] = m.weight.grad.double()
    assert torch.all(grads[1.0] == 0)
    # Row 1 (the wrong class) is the underflow case.  Row 0's gradient, -p/B, is computed by
    # torch's fp16 log-softmax backward as 1 - exp(log p0) with exp(log p0) rounded to 1 in fp16:
    # lost to cancellation, which no loss scale can fix, so only row 1 is compared.
    assert torch.all(grads[2.0 ** 12][1] != 0)
    torch.testing.assert_close(grads[2.0 ** 12][1], true[1], rtol=1e-2, atol=2 * 2.0 ** -24)

"""What the adjoint certificate could certify on ResNet-20 with better radii (a diagnostic, NOT sound).

The adjoint certificate needs a sound radius ``R >= |x16 - x32|`` at every ReLU input (switching
slack ``(R - |z|)_+``) and at every layer input (growth of the local rounding bound).  Tier A
(interval-style, ``radii="interval"``) overflows in the deep blocks of ResNet-20; tier B
(``radii="exact"``, exact Jacobian rows by one backward pass per neuron) is sound but costs one
backward pass through the prefix per neuron.  This script measures, on trained weights and CIFAR-10
test images:

* tier A: certified fraction, limit / delta, the predictor's calibration (sound, the default);
* tier B's cost: the exact rows at the first ``tierb_steps`` ReLU inputs for one image (seconds
  per step, and the radii against tier A and the observed error);
* an ablation, NOT SOUND and never used by the package: the radii at ReLU / max-pool inputs
  replaced by ``c`` times the largest observed error of the emulator and of torch's half kernels
  (``c`` in ``factors``), to show how far exact radii could take the certificate (tier B's radii
  were measured at 2-8 times the observed error in the first stage).

    python -m experiments.adjoint_radius_ablation --weights=experiments/results/_scratch/resnet20_cifar.pt
    python -m experiments.adjoint_radius_ablation --weights=... --n=64 --tierb_steps=2
    python -m experiments.adjoint_radius_ablation --weights=... --n=0 --tierb_images=4   # sound tier B, whole
    python -m experiments.adjoint_radius_ablation --weights=... --n=0 --tierb_images=16 --tierb_radii=windowed
    python -m experiments.adjoint_radius_ablation --weights=... --n=0 --growth=exact   # where radii run away

``growth``: for the first image, at every step, the median of (sound radius / observed error of
the emulator) and at every ReLU the fraction of inputs whose radius reaches the pre-activation
(``may_switch``: their switching slack is nonzero) and the largest slack.

``tierb_images=K``: the whole sound tier-B certificate (``radii="exact"``) on the first ``K`` images,
one at a time: certified or not, seconds, and its bounds against the emulator's and torch's half
kernels' logits (violations must be 0).

Writes ``experiments/results/adjoint_radius_ablation.json``.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Config:
    weights: str = ""
    data_root: str = str(HERE.parent.parent / "shared" / "data")
    n: int = 64
    chunk: int = 16
    factors: str = "1,3,10,30"
    tierb_steps: int = 0
    tierb_images: int = 0
    tierb_radii: str = "exact"  # or "windowed"
    growth: str = ""  # "exact" or "windowed": per-step radii of image 0 against the observed error
    out: str = str(HERE / "results" / "adjoint_radius_ablation.json")


def _parse(argv: list[str]) -> Config:
    cfg = Config()
    for a in argv:
        if not a.startswith("--") or "=" not in a:
            raise SystemExit(f"unknown argument {a!r}; use --key=value with keys: {', '.join(asdict(cfg))}")
        k, v = a[2:].split("=", 1)
        if not hasattr(cfg, k):
            raise SystemExit(f"unknown option {k!r}; valid options are: {', '.join(asdict(cfg))}")
        setattr(cfg, k, type(getattr(cfg, k))(v))
    if not cfg.weights:
        raise SystemExit("--weights=PATH (a ResNet-20 state_dict saved with torch.save) is required")
    return cfg


def main(argv: list[str]) -> dict:
    cfg = _parse(argv)
    import numpy as np
    import torch

    import fpanalysis.analysis.adjoint as A
    from fpanalysis.analysis.network_bounds import BoundConfig
    from fpanalysis.datasets import load_cifar10
    from fpanalysis.nn.execute import ParamCache, run_model
    from fpanalysis.nn.models import build_model
    from fpanalysis.nn.trace import trace_model

    ds = load_cifar10(Path(cfg.data_root) / "cifar10", test_set="exact")
    m = build_model("resnet20", input_shape=ds.input_shape, num_classes=10)
    m.load_state_dict(torch.load(cfg.weights))
    m.eval()
    with torch.no_grad():
        acc = float((m(torch.from_numpy(ds.x_test)).argmax(1).numpy() == ds.y_test).mean())
    tr = trace_model(m)
    bc = BoundConfig.make("fp16", "fp32-accumulate")
    X = torch.from_numpy(ds.x_test[:cfg.n])
    factors = [float(f) for f in cfg.factors.split(",") if f]
    out: dict = {"config": asdict(cfg), "fp32_test_acc_first1000": acc, "model": "resnet20",
                 "data": "CIFAR-10, exact first test images", "sound": {"tierA": True, "ablation": False}}
    obs_all: dict = {}
    orig = A._exact_rows
    results = {"tierA": [], **{f"observed_x{f:g}": [] for f in factors}}
    deltas, preds, limits = [], [], []
    times = {k: 0.0 for k in results}
    for i in range(0, cfg.n, cfg.chunk):
        x = X[i:i + cfg.chunk]
        o = run_model(tr, x, "fp16", backends=("float32", "emulator", "half"))
        obs_all = {name: torch.maximum((o["emulator"][name].double() - o["float32"][name].double()).abs(),
                                       (o["half"][name].double() - o["float32"][name].double()).abs())
                   for name in o["float32"] if isinstance(o["float32"][name], torch.Tensor)
                   and o["float32"][name].is_floating_point()}
        z = o["float32"][tr.output].double().numpy()
        d = np.maximum(np.abs(o["emulator"][tr.output].double().numpy() - z),
                       np.abs(o["half"][tr.output].double().numpy() - z)).max(1)
        deltas.append(d)
        t0 = time.perf_counter()
        res = A.adjoint_certificate(tr, x, bc, batch_size=cfg.chunk)
        times["tierA"] += time.perf_counter() - t0
        results["tierA"].append(res.certified)
        preds.append(res.predicted)
        limits.append(res.limit)
        for f in factors:
            def fake(traced, R, upto, sizes, cache, row_chunk, cut=None, f=f, obs=obs_all):  # NOT SOUND: diagnostic
                return f * obs[upto] * (1 + 2.0**-20) + 1e-30
            A._exact_rows = fake
            try:
                t0 = time.perf_counter()
                r2 = A.adjoint_certificate(tr, x, bc, batch_size=cfg.chunk, radii="exact")
                times[f"observed_x{f:g}"] += time.perf_counter() - t0
            finally:
                A._exact_rows = orig
            results[f"observed_x{f:g}"].append(r2.certified)
        print(f"[ablation] {i + len(x)}/{cfg.n} inputs", flush=True)
    if cfg.n > 0:
        delta, pred, lim = np.concatenate(deltas), np.concatenate(preds), np.concatenate(limits)
        out["certified_fraction"] = {k: float(np.concatenate(v).mean()) for k, v in results.items()}
        out["seconds"] = times
        fin = delta > 0
        out["median_limit_over_delta"] = float(np.median(lim[fin] / delta[fin]))
        ratio = delta[fin] / pred[fin]
        out["delta_over_pred_quantiles"] = {q: float(np.quantile(ratio, float(q))) for q in ("0.05", "0.5", "0.95")}
    if cfg.tierb_steps > 0:
        calls: list = []

        def timed(traced, R, upto, sizes, cache, row_chunk, cut=None):
            if len(calls) >= cfg.tierb_steps:
                raise StopIteration
            t0 = time.perf_counter()
            r = orig(traced, R, upto, sizes, cache, row_chunk, cut)
            dt = time.perf_counter() - t0
            depth = [s.name for s in traced.steps].index(upto)
            calls.append({"step": upto, "prefix_steps": depth, "neurons": int(r[0].numel()), "seconds": dt,
                          "tierA_median": float(R[upto].G.median()), "exact_median": float(r.median()),
                          "observed_max": float(obs_all[upto][0].max())})
            print(f"[tier B] {calls[-1]}", flush=True)
            return r
        A._exact_rows = timed
        try:
            A._forward_sweep(tr, X[:1].float(), bc, ParamCache(), "exact", 1024)
        except StopIteration:
            pass
        finally:
            A._exact_rows = orig
        out["tierB_one_image"] = calls
    if cfg.tierb_images > 0:
        rows = []
        for i in range(cfg.tierb_images):
            x = X[i:i + 1] if i < cfg.n else torch.from_numpy(ds.x_test[i:i + 1])
            o = run_model(tr, x, "fp16", backends=("float32", "emulator", "half"))
            z = o["float32"][tr.output].double().numpy()[0]
            c = int(z.argmax())
            t0 = time.perf_counter()
            r = A.adjoint_certificate(tr, x, bc, batch_size=1, radii=cfg.tierb_radii, row_chunk=1024)
            row = {"image": i, "seconds": time.perf_counter() - t0, "certified": bool(r.certified[0]),
                   "min_margin_over_bound": float(np.min(np.delete(r.margin[0] / r.margin_bound[0], c))),
                   "limit": float(r.limit[0]), "switching": float(r.switching[0])}
            for be in ("emulator", "half"):
                d = o[be][tr.output].double().numpy()[0] - z
                row[be] = {"delta": float(np.abs(d).max()), "bound_violations": int((np.abs(d) > r.bound[0]).sum()),
                           "margin_violations": int((np.abs(d[c] - d) > r.margin_bound[0]).sum()),
                           "certified_flip": bool(r.certified[0] and int(np.argmax(z + d)) != c)}
            rows.append(row)
            print(f"[tier B] {row}", flush=True)
        out["tierB_radii"] = cfg.tierb_radii
        out["tierB_images"] = rows
        out["tierB_certified"] = f"{sum(r['certified'] for r in rows)}/{len(rows)}"
    if cfg.growth:
        x = X[:1] if cfg.n > 0 else torch.from_numpy(ds.x_test[:1])
        o = run_model(tr, x, "fp16", backends=("float32", "emulator"))
        t0 = time.perf_counter()
        R, _, _ = A._forward_sweep(tr, x.float(), bc, ParamCache(), cfg.growth, 1024)
        table = []
        for s in tr.steps:
            r = R.get(s.name)
            if r is None or r.z is None or not r.z.is_floating_point():
                continue
            obs = (o["emulator"][s.name].double() - o["float32"][s.name].double()).abs()
            row = {"step": s.name, "kind": s.kind,
                   "radius_over_observed_median": float((r.G / obs.clamp_min(1e-9)).median()),
                   "radius_max": float(r.G.max()), "observed_max": float(obs.max())}
            if s.kind == "relu":
                z, Gi = R[s.inputs[0]].z.double(), R[s.inputs[0]].G
                row["may_switch"] = float((Gi >= z.abs()).double().mean())
                row["slack_max"] = float((Gi - z.abs()).clamp_min(0).max())
            table.append(row)
        out["growth"] = {"radii": cfg.growth, "seconds": time.perf_counter() - t0, "steps": table}
        for row in table:
            if row["kind"] == "relu":
                print(f"[growth] {row['step']:18s} radius/observed {row['radius_over_observed_median']:10.3g} "
                      f"may switch {row['may_switch']:.4f}", flush=True)
    keys = [k for k in ("certified_fraction", "median_limit_over_delta", "delta_over_pred_quantiles", "seconds",
                        "tierB_certified") if k in out]
    print(json.dumps({k: out[k] for k in keys}, indent=1))
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {cfg.out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])

"""Tests of paper_figures/: every figure script draws from small synthetic result files written
here (never from the committed results), produces non-empty PNG and PDF files, labels its axes,
plots the numbers it was given, never imports torch, and make_all reports missing inputs with
the command that produces them and fails only on malformed inputs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("matplotlib")

FIGURES = {
    "fig1": "paper_figures.fig1_layer_errors",
    "fig2": "paper_figures.fig2_error_growth",
    "fig3": "paper_figures.fig3_lemma",
    "fig4": "paper_figures.fig4_agreement",
    "fig5": "paper_figures.fig5_training",
    "fig6": "paper_figures.fig6_exponent_histograms",
    "fig7": "paper_figures.fig7_stagnation",
    "fig8": "paper_figures.fig8_check_validation",
    "fig9": "paper_figures.fig9_emulator_speed",
    "fig10": "paper_figures.fig10_fp8_validation",
}
COMMANDS = {
    "fig1": "experiments.analysis_runs", "fig2": "experiments.error_growth", "fig3": "experiments.analysis_runs",
    "fig4": "experiments.analysis_runs", "fig5": "experiments.sweep", "fig6": "experiments.exponent_histograms",
    "fig7": "experiments.stagnation", "fig8": "experiments.check_zoo",
    "fig9": "experiments.bench_emulator", "fig10": "experiments.fp8_validation",
}


# ---------------------------------------------------------------------------------------------
# synthetic result files (schemas of the experiment scripts, made-up numbers)


def _dump(path: Path, obj: object) -> None:
    """As the experiments write (experiments._common.write_json): standard JSON, non-finite
    numbers as "nan" / "inf" / "-inf" strings."""
    from fpanalysis._json import dumps

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(obj))


def _analysis_report(model: str, fmt: str, profile: str, rng: np.random.Generator, n: int = 40) -> dict:
    layers = []
    err = 1e-3
    for i, kind in enumerate(["input", "linear", "relu", "linear", "output"]):
        err *= 2
        layers.append({"name": f"l{i}", "path": f"net.{i}", "kind": kind, "err_max": err, "bound_max": 10 * err,
                       "bound_prob_max": 5 * err, "half_err_max": err / 2, "local_err_max": err / 3,
                       "local_bound_max": err, "n": 16})
    layers[3]["bound_max"] = "inf"  # as AnalysisReport.to_json writes infinities
    gamma = rng.uniform(0.01, 5.0, n)
    delta = rng.uniform(1e-4, 1e-2, n)
    B = delta * 20
    B[0] = math.inf
    cert = gamma > 2 * B
    cls = rng.integers(0, 3, n)
    cls_emu = cls.copy()
    cls_emu[np.argmin(gamma)] = (cls[np.argmin(gamma)] + 1) % 3  # one flip, at the smallest margin
    per = {"gamma": gamma.tolist(), "B": ["inf" if math.isinf(b) else b for b in B], "B_prob": (B / 2).tolist(),
           "certified": cert.tolist(), "certified_prob": cert.tolist(), "class_fp32": cls.tolist(),
           "delta_emulator": delta.tolist(), "class_emulator": cls_emu.tolist(),
           "delta_torch-half": delta.tolist(), "class_torch-half": cls.tolist()}
    runs = {"emulator": {"name": "emulator", "n": n, "agree": n - 1, "flips": 1, "lemma_applies": n - 3},
            "torch-half": {"name": "torch-half", "n": n, "agree": n, "flips": 0, "lemma_applies": n - 2}}
    tol = {"space": "logits", "n": n, "certified": int(cert.sum()), "certified_prob": int(cert.sum()) + 1,
           "probability": 0.999, "runs": runs}
    rep = {"config": {"model": model, "fmt": fmt, "profile": profile, "n_inputs": n}, "layers": layers,
           "tolerance": {"logits": tol}, "per_input": {"logits": per}, "accuracy": {}, "timings": {}}
    if model == "mlp":  # the adjoint certificate's entries (piecewise-linear model)
        bound = delta * 8
        bound[1] = math.inf
        rep["per_input"]["adjoint"] = {"bound": ["inf" if math.isinf(b) else b for b in bound],
                                       "limit": (delta * 300).tolist(), "predicted": (delta * 30).tolist(),
                                       "certified": (gamma > 2 * bound).tolist()}
        rep["certificate"] = {"method": "adjoint", "n": n, "certified_adjoint": int((gamma > 2 * bound).sum()),
                              "certified_interval": int(cert.sum())}
    return rep


def _train_run(model: str, mode: str, seed: int, diverged: bool = False) -> dict:
    epochs = [{"epoch": e, "test_acc": 0.5 + 0.1 * e + 0.01 * seed, "wall_s": 1.0 + 0.1 * e} for e in range(3)]
    if diverged:
        epochs = epochs[:1]
    return {"schema": "fpanalysis.train/1", "status": "diverged" if diverged else "complete",
            "config": {"dataset": "digits", "model": model, "optimizer": "sgd", "mode": mode, "tag": "", "seed": seed},
            "epochs": epochs, "final": {"test_acc": epochs[-1]["test_acc"]},
            "memory": {"kind": "cpu_rss", "peak_minus_baseline_bytes": 2e6, "param_bytes": 1000, "grad_bytes": 1000,
                       "optimizer_state_bytes": 1000},
            "environment": {"device": "cpu"}}


def _check_report(fmt: str, lo: int, hi: int) -> dict:
    def fam(shift: int) -> list[dict]:
        return [{"name": f"layer{i}", "max_abs": 2.0 ** (hi + shift),
                 "log2_hist": {str(e): 10 + abs(e) for e in range(lo + shift, hi + shift)}} for i in range(2)]
    return {"verdict": "SAFE WITH CHANGES", "changes": [], "findings": [], "config": {"format": fmt},
            "details": {"activations": fam(0), "activation_grads": fam(-20), "weight_grads": fam(-22)}}


STAGNATION = {"format": ["fp16", "bf16"], "lr": [1e-4, 1e-2, 1.0]}
FP8_ROWS = [  # as experiments/fp8_validation.py's report writes them (made-up numbers)
    {"case": "mlp", "recipe": "nvfp4", "verdict": "SAFE", "predicted": "trains", "outcome": "fails",
     "gap_points": 12.5, "diverged": 0, "toolkit": True},
    {"case": "mlp", "recipe": "delayed", "verdict": "SAFE", "predicted": "trains", "outcome": "trains",
     "gap_points": 0.5, "diverged": 0, "toolkit": True},
    {"case": "outlier", "recipe": "delayed", "verdict": "UNSAFE", "predicted": "fails", "outcome": "fails",
     "gap_points": 80.0, "diverged": 2, "fix": "trains"},
    {"case": "outlier", "recipe": "mxfp8", "verdict": "SAFE WITH CHANGES", "predicted": "fails", "outcome": "trains",
     "gap_points": -1.25, "diverged": 0},
]


def write_synthetic(results: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for model in ("mlp", "vit_tiny"):
        for profile in ("fp32-accumulate", "ieee"):
            _dump(results / "analysis" / f"digits-{model}-fp16-{profile}.json",
                  _analysis_report(model, "fp16", profile, rng))
    rows = []
    for fmt, u in (("fp16", 2.0**-11), ("bf16", 2.0**-8)):
        for n in (8, 64, 512, 4096):
            g = n * u / (1 - n * u) if n * u < 1 else math.inf
            rows.append({"format": fmt, "distribution": "uniform", "n": n, "u": u, "trials": 4,
                         "errors": {"ieee/sequential": {"max": 0.3 * n * u, "median": 0.1 * n * u},
                                    "ieee/pairwise": {"max": 2 * u, "median": u},
                                    "fp32-accumulate/sequential": {"max": u / 2, "median": u / 4}},
                         "bounds": {"gamma_n": g, "gamma_pairwise": 4 * u, "fp32_accumulate": u,
                                    "gamma_tilde": 6 * math.sqrt(n) * u}})
    _dump(results / "error_growth.json", {"rows": rows, "vacuous_n": {"fp16": 2048, "bf16": 256},
                                          "config": {"trials": 4}})
    for model in ("mlp", "lenet5"):
        for mode in ("fp32", "amp-fp16", "fp16", "bf16"):
            for s in (0, 1):
                _dump(results / "cpu_sweep" / "toy" / "runs" / f"{model}-{mode}-s{s}.json",
                      _train_run(model, mode, s, diverged=(model == "lenet5" and mode == "fp16")))
    _dump(results / "cpu_sweep" / "toy" / "runs" / "notes.json", {"not": "a run"})  # ignored: other schema
    _dump(results / "exponent_histograms.json", {"format": "fp16", "cases": [
        {"case": "toy", "why": "synthetic", "loss_scale": {"value": 1024.0, "fits": True}, "check": _check_report("fp16", -20, 3)},
        {"case": "toy-overflow", "loss_scale": {"value": 0.25, "fits": False}, "check": _check_report("fp16", -5, 20)},
    ]})
    _dump(results / "stagnation.json", {
        "rows": [{"format": f, "lr": lr, "lost_fraction": 1.0 / (1 + 100 * lr * (1 if f == "fp16" else 0.1))}
                 for f in STAGNATION["format"] for lr in STAGNATION["lr"]],
        "grad_abs_median": 1e-3, "weight_abs_median": 0.05, "n_parameters": 100})
    _dump(results / "check_zoo" / "report.json", {"experiment": "check_zoo", "fix_success": 1, "fixes_tried": 2, "rows": [
        {"case": "a", "verdict": "SAFE", "predicted": "trains", "outcome": "trains", "cause": "ok", "fix": None},
        {"case": "b", "verdict": "UNSAFE", "predicted": "fails", "outcome": "fails", "cause": "diverged", "fix": None},
        {"case": "c", "verdict": "SAFE WITH CHANGES", "predicted": "fails", "outcome": "trains", "cause": "x",
         "fix": "trains"},
        {"case": "d", "verdict": "SAFE WITH CHANGES", "predicted": "fails", "outcome": "fails", "cause": "y",
         "fix": "fails"},
        {"case": "e", "verdict": "SAFE", "predicted": "trains", "outcome": "fails", "cause": "z", "fix": None},
    ]})
    _dump(results / "fp8_validation" / "report.json", {"gap_threshold_points": 3.0, "rows": FP8_ROWS})
    _dump(results / "bench_emulator.json", {"quick": True, "results": [
        {"benchmark": "round", "seconds": {"fpanalysis_rne": 0.01, "numpy_astype": 0.02}, "ratios": {"vs_numpy_astype": 2.0},
         "goals": {"vs_numpy_astype": 1.0}},
        {"benchmark": "exact dot", "seconds": {"exact_dot": 1e-6, "mpmath_fdot": 1e-3}, "ratios": {}, "goals": {}},
    ]})
    _dump(results / "bench_gemm_1thread.json", {
        "config": {"n": 64, "threads": 1, "goals": {"ieee_sequential": 0.1}},
        "environment": {"cpu_model": "toy cpu"},
        "results": {"numpy_fp32_blas": {"gflops_wall_min": 100.0}, "ieee_sequential": {"gflops_wall_min": 30.0}}})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("results")
    write_synthetic(results)
    return results


def _describe(fig) -> list[dict]:
    """Per axes: labels, position, and the data of its lines and bars (JSON-friendly)."""
    out = []
    for ax in fig.get_axes():
        if ax.tables:
            out.append({"table": [[c.get_text().get_text() for c in t.get_celld().values()] for t in ax.tables],
                        "has_data": False})
        if not ax.axison:
            continue
        box = ax.get_position()
        out.append({
            "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "title": ax.get_title(),
            "has_data": bool(ax.lines or ax.collections or ax.patches or ax.images),
            "row": [round(box.y0, 3), round(box.y1, 3)], "col": [round(box.x0, 3), round(box.x1, 3)],
            "lines": {ln.get_label(): [np.asarray(ln.get_xdata(), float).tolist(),
                                       np.asarray(ln.get_ydata(), float).tolist()] for ln in ax.lines},
            "xscale": ax.get_xscale(), "yscale": ax.get_yscale(),
            "bars": [p.get_width() for p in ax.patches if type(p).__name__ == "Rectangle"],
        })
    return out


def draw_all_and_describe(results: str, out: str, dump: str) -> None:
    """Run make_all with a spy on style.save_figure; write the report, the description of every
    saved figure and the torch modules loaded to ``dump`` (run in a fresh interpreter)."""
    from paper_figures import make_all, style

    figs: list = []
    original = style.save_figure

    def spy(fig, name, out_dir):
        figs.append([name, _describe(fig)])
        return original(fig, name, out_dir)

    style.save_figure = spy
    style.DPI = 72  # faster; the layout does not depend on it
    report = make_all.make_all(results, out)
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    Path(dump).write_text(json.dumps({"report": report, "figures": figs, "torch": loaded,
                                      "fpanalysis_loaded": "fpanalysis.formats" in sys.modules}))


@pytest.fixture(scope="module")
def drawn(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every figure drawn once from the synthetic results, in a fresh interpreter."""
    out = tmp_path_factory.mktemp("figures")
    dump = out / "describe.json"
    code = f"import test_figures as T; T.draw_all_and_describe({str(synthetic)!r}, {str(out)!r}, {str(dump)!r})"
    # the repository root (paper_figures) and this folder (test_figures) importable in the child
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=str(out), env=env,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    d = json.loads(dump.read_text())
    d["stdout"] = res.stdout + res.stderr
    return d


def _saved(drawn: dict, prefix: str) -> list:
    return [(name, axes) for name, axes in drawn["figures"] if name.startswith(prefix)]


# ---------------------------------------------------------------------------------------------
# every figure


@pytest.mark.parametrize("fig", sorted(FIGURES))
def test_figure_draws_png_and_pdf_with_labelled_axes(fig: str, drawn: dict) -> None:
    rep = drawn["report"][fig]
    assert rep["status"] == "ok", rep
    files = [Path(f) for f in rep["files"]]
    pngs = [p for p in files if p.suffix == ".png"]
    pdfs = [p for p in files if p.suffix == ".pdf"]
    assert pngs and len(pngs) == len(pdfs)
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    for p in pdfs:
        data = p.read_bytes()
        assert data[:5] == b"%PDF-" and len(data) > 2000
    saved = _saved(drawn, Path(FIGURES[fig].split(".")[-1]).name)
    assert len(saved) == len(pngs), "every figure is saved through style.save_figure"
    for name, axes in saved:
        plots = [a for a in axes if a["has_data"]]
        tables = [a for a in axes if "table" in a]
        assert plots or tables, f"{name}: no axes with data and no table"
        for a in plots:
            # a label may be shared: the y label by the panels of a row, the x label by those of a column
            xl = a["xlabel"] or next((b["xlabel"] for b in plots if b["col"] == a["col"] and b["xlabel"]), "")
            yl = a["ylabel"] or next((b["ylabel"] for b in plots if b["row"] == a["row"] and b["ylabel"]), "")
            assert xl.strip() and yl.strip(), f"{name}: unlabelled axes {a['xlabel']!r}/{a['ylabel']!r}"
            assert "(" in xl + yl, f"{name}: no unit or qualifier in {xl!r}/{yl!r}"


def test_figure_scripts_never_import_torch(drawn: dict) -> None:
    assert all(r["status"] == "ok" for r in drawn["report"].values()), drawn["report"]
    assert drawn["fpanalysis_loaded"]  # the figures do use fpanalysis (formats), which must stay torch-free
    assert drawn["torch"] == []


def test_fig7_plots_the_lost_fractions_given(synthetic: Path, drawn: dict) -> None:
    rows = json.loads((synthetic / "stagnation.json").read_text())["rows"]
    (_, axes), = _saved(drawn, "fig7")
    for fmt in STAGNATION["format"]:
        x, y = axes[0]["lines"][f"{fmt} weights (measured)"]
        want = sorted((r["lr"], 100 * r["lost_fraction"]) for r in rows if r["format"] == fmt)
        np.testing.assert_allclose(x, [w[0] for w in want])
        np.testing.assert_allclose(y, [w[1] for w in want])
    assert axes[0]["xscale"] == "log"  # learning rates span decades


def test_fig8_counts_the_zoo_report(drawn: dict) -> None:
    """5 rows: a, b, d right; c a false alarm; e a false SAFE; plans tried on c (trained) and d."""
    (_, axes), = _saved(drawn, "fig8")
    title = next(a["title"] for a in axes if "title" in a and a["title"])
    assert "5 configurations: 3 right (60%)" in title
    assert "false SAFE 1" in title and "trained: 1/2" in title
    table = next(a["table"] for a in axes if "table" in a)
    assert "with plan" in table[0]


def test_fig2_plots_measured_errors_and_leaves_vacuous_gamma_out(synthetic: Path, drawn: dict) -> None:
    rows = json.loads((synthetic / "error_growth.json").read_text())["rows"]
    (_, axes), = _saved(drawn, "fig2")
    fp16 = next(a for a in axes if a["lines"])  # first panel: fp16
    n, y = next(v for k, v in fp16["lines"].items() if "sequential" in k and k.startswith("measured"))
    want = [r["errors"]["ieee/sequential"]["max"] for r in rows if r["format"] == "fp16"]
    np.testing.assert_allclose(y, want)
    n, g = np.asarray(fp16["lines"][r"$\gamma_n$ (sequential)"], float)
    assert np.isnan(g[n >= 2048]).all() and np.isfinite(g[n < 2048]).all()  # vacuous gamma_n not drawn
    assert fp16["xscale"] == "log" and fp16["yscale"] == "log"


def test_fig4_bar_lengths_are_the_certified_and_observed_fractions(synthetic: Path, drawn: dict) -> None:
    rep = json.loads((synthetic / "analysis" / "digits-mlp-fp16-ieee.json").read_text())
    t = rep["tolerance"]["logits"]
    (_, axes), = _saved(drawn, "fig4")
    widths = {round(w, 9) for a in axes if "bars" in a for w in a["bars"]}
    for frac in (t["certified"] / t["n"], t["certified_prob"] / t["n"], t["runs"]["emulator"]["agree"] / t["n"],
                 t["runs"]["emulator"]["lemma_applies"] / t["n"]):
        assert round(100 * frac, 9) in widths


def test_fig4_draws_adjoint_limit_and_predicted_fractions(synthetic: Path, drawn: dict) -> None:
    """Side by side: the adjoint certificate's fraction, Gamma > 2 limit and Gamma > 2 delta_pred."""
    rep = json.loads((synthetic / "analysis" / "digits-mlp-fp16-ieee.json").read_text())
    n = rep["tolerance"]["logits"]["n"]
    g = np.asarray(rep["per_input"]["logits"]["gamma"], float)
    adj = rep["per_input"]["adjoint"]
    want = [rep["certificate"]["certified_adjoint"] / n, float(np.mean(g > 2 * np.asarray(adj["limit"], float))),
            float(np.mean(g > 2 * np.asarray(adj["predicted"], float)))]
    assert 0 < want[1] < 1 and 0 < want[2] < 1 and want[1] != want[2]
    (_, axes), = _saved(drawn, "fig4")
    widths = {round(w, 9) for a in axes if "bars" in a for w in a["bars"]}
    for frac in want:
        assert round(100 * frac, 9) in widths, frac


def test_fig3_third_row_shows_certified_limit_predicted_observed(drawn: dict) -> None:
    (_, axes), = _saved(drawn, "fig3_lemma_fp16")
    rows = sorted({tuple(a["row"]) for a in axes if "row" in a})
    assert len(rows) == 3
    third = [a for a in axes if "row" in a and tuple(a["row"]) == rows[0]]
    # the MLP has adjoint results (log-scale points); the ViT's panel only says it was not run
    assert len(third) == 2
    drawn_ = [a for a in third if a["has_data"]]
    assert len(drawn_) == 1 and drawn_[0]["yscale"] == "log"
    assert drawn_[0]["xlabel"].startswith("test inputs, sorted")


def test_fig5_ignores_other_json_and_counts_divergence(synthetic: Path) -> None:
    from paper_figures import fig5_training

    runs = fig5_training.load_runs(synthetic)
    assert len(runs) == 16  # notes.json (another schema) is skipped
    rows = fig5_training.table_rows(fig5_training.groups(runs))
    lenet_fp16 = next(r for r in rows if r[1] == "fp16")
    assert lenet_fp16[2] == "2 (2)"  # both seeds diverged
    fp32 = next(r for r in rows if r[1] == "fp32")
    assert fp32[4] == "+0.00" and fp32[5] == "1.00"


def test_fig6_bands_follow_the_format() -> None:
    from fpanalysis.formats import get_format
    from paper_figures.fig6_exponent_histograms import bands, fractions

    b = bands(get_format("fp16"))
    # fp16: 2**-25 and below round to zero (bins <= -26), bins -25..-15 subnormal, 16 and up overflow
    hist = {-30: 1, -25: 1, -15: 1, -14: 1, 15: 1, 16: 1}
    assert fractions(hist, b) == {"zero": 1 / 6, "subnormal": 2 / 6, "overflow": 1 / 6}
    bb = bands(get_format("bf16"))  # bf16: emin -126, p 8
    assert fractions({-135: 1, -134: 1, -127: 1, -126: 1}, bb) == {"zero": 0.25, "subnormal": 0.5, "overflow": 0.0}


def test_fig10_cells_are_the_gaps_given_and_the_matrix_counts_rows(synthetic: Path, tmp_path: Path) -> None:
    from paper_figures import fig10_fp8_validation as F10
    from paper_figures import style

    cases, recipes, cells = F10.table(FP8_ROWS)
    assert cases == ["mlp", "outlier"] and recipes == ["delayed", "mxfp8", "nvfp4"]  # the recipes' own order
    figs = []
    original = style.save_figure
    try:
        style.save_figure = lambda fig, name, out: figs.append(fig) or original(fig, name, out)
        F10.make(synthetic, tmp_path)
    finally:
        style.save_figure = original
    heat, matrix = [a for a in figs[0].get_axes() if a.images or a.patches][:2]
    grid = np.ma.filled(heat.images[0].get_array().astype(float), np.nan)
    want = np.full((2, 3), np.nan)
    for r in FP8_ROWS:
        want[cases.index(r["case"]), recipes.index(r["recipe"])] = min(r["gap_points"], F10.GAP_RANGE[1])
    np.testing.assert_allclose(grid, want)  # 80 points clipped to the top of the colour scale; no mlp/mxfp8 row
    framed = [p for p in heat.patches if not p.get_fill()]
    assert len(framed) == 2  # the wrong verdicts: mlp/nvfp4 (false SAFE) and outlier/mxfp8 (false alarm)
    counts = sorted(t.get_text() for t in matrix.texts if t.get_text().isdigit())
    assert counts == ["1", "1", "1", "1"]
    texts = " ".join(t.get_text() for t in heat.texts)
    assert "+12.5" in texts and "(2 div.)" in texts and "\u2192ok" in texts


def test_fig10_rejects_duplicate_and_unknown_rows() -> None:
    from paper_figures import fig10_fp8_validation as F10

    with pytest.raises(ValueError, match="appears twice"):
        F10.table(FP8_ROWS + [FP8_ROWS[0]])
    with pytest.raises(ValueError, match="valid verdicts are"):
        F10.table([dict(FP8_ROWS[0], verdict="MAYBE")])


# ---------------------------------------------------------------------------------------------
# make_all


def test_make_all_reports_missing_inputs_with_their_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from paper_figures import make_all

    empty = tmp_path / "results"
    empty.mkdir()
    rc = make_all.main(["--results", str(empty), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0
    for fig, cmd in COMMANDS.items():
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{fig}:"))
        assert "SKIPPED" in line
        assert cmd in out
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_make_all_draws_present_figures_and_fails_on_malformed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from paper_figures import make_all

    results = tmp_path / "results"
    write_synthetic(results)
    (results / "stagnation.json").write_text("{not json")
    _dump(results / "check_zoo" / "report.json", {"rows": [{"case": "a"}]})  # no predicted/outcome
    (results / "error_growth.json").unlink()
    rc = make_all.main(["--results", str(results), "--out", str(tmp_path / "out"), "--only", "fig2,fig7,fig8,fig9"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "fig7: ERROR" in out and "stagnation.json" in out
    assert "fig8: ERROR" in out and "predicted" in out
    assert "fig2: SKIPPED" in out and "experiments.error_growth" in out
    assert (tmp_path / "out" / "fig9_emulator_speed.png").stat().st_size > 0  # the others are still drawn


def test_make_all_rejects_unknown_figure_names(tmp_path: Path) -> None:
    from paper_figures import make_all

    assert make_all.main(["--results", str(tmp_path), "--only", "fig42"]) == 2

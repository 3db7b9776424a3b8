"""The result of a network analysis: per-layer errors, bounds and ranges, and the certificates.

:class:`AnalysisReport` is what :func:`fpanalysis.analyze` returns.  It prints as a table,
saves to and loads from JSON, and plots (matplotlib, imported only when plotting).

Per layer (:class:`LayerReport`), with "fp16" standing for the analysed format:

* measured error of the emulated run against the fp32 run (``err_max``, ``err_mean``,
  ``err_rel`` = max error / max |fp32 value|), and against the float64 reference
  (``err_exact_max``); the real torch 16-bit run's error against fp32 (``half_err_max``: float16
  kernels for fp16, bfloat16 for bf16);
* the step's own ("local") error: the emulated op on its emulated input against the exact op
  on that same input (``local_err_max``, ``local_err_mean``) and its signed mean
  (``local_signed_mean``, and ``local_bias`` = signed mean / mean absolute: near 0 when
  rounding errors are unbiased, the Higham-Mary assumption);
* bounds: propagated deterministic and probabilistic bounds on ``|fp16 - fp32|`` (max and
  mean), local bounds, tightness ratios (max bound / max measured error), violations (must be 0
  for deterministic bounds);
* ranges of the emulated values: max |value| vs the format's max, fractions subnormal and
  flushed to zero, overflow count; an exponent histogram of the fp32 values;
* bitwise match of the emulator with torch's 16-bit kernel applied to the same (emulated) input.

The JSON form (:meth:`AnalysisReport.to_json`) is standard JSON with ``"schema":
"fpanalysis.analysis"`` and ``"schema_version"``; non-finite numbers are the strings ``"nan"``,
``"inf"``, ``"-inf"``.  Its fields are documented in docs/report_schema.md and checked by
docs/report_schema.json.

>>> r = AnalysisReport(config={"fmt": "fp16"}, layers=[LayerReport(name="fc", kind="linear", shape=(10,))])
>>> AnalysisReport.from_json(r.to_json()).layers[0].name
'fc'
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .._json import SCHEMA_VERSION, check_schema_version, dumps, jsonable, restore_nonfinite
from ..formats import get_format
from ..tolerance import ToleranceSummary

__all__ = ["AnalysisReport", "LayerReport"]

_NAN = float("nan")
#: the ``schema`` field of a saved analysis report
SCHEMA = "fpanalysis.analysis"


@dataclass
class LayerReport:
    """Statistics of one step over all analysed inputs (see the module docstring)."""

    name: str
    kind: str
    path: str = ""
    origin: str = ""
    shape: tuple = ()
    n: int | None = None
    count: int = 0
    err_max: float = 0.0
    err_mean: float = 0.0
    err_rel: float = 0.0
    err_exact_max: float = _NAN
    fp32_err_max: float = _NAN
    half_err_max: float = _NAN
    local_err_max: float = 0.0
    local_err_mean: float = 0.0
    local_signed_mean: float = 0.0
    local_bias: float = _NAN
    bound_max: float = 0.0
    bound_mean: float = 0.0
    bound_prob_max: float = 0.0
    bound_prob_mean: float = 0.0
    local_bound_max: float = 0.0
    local_bound_prob_max: float = 0.0
    tightness: float = _NAN
    tightness_prob: float = _NAN
    local_tightness: float = _NAN
    local_tightness_prob: float = _NAN
    violations: int = 0
    violations_prob: int = 0
    local_violations: int = 0
    local_violations_prob: int = 0
    half_violations: int = 0
    failure_prob: float = 0.0
    abs_max: float = 0.0
    fmt_max: float = _NAN
    frac_subnormal: float = 0.0
    frac_flushed: float = 0.0
    n_overflow: int = 0
    n_nan: int = 0
    half_match: float = _NAN
    half_match_chained: float = _NAN
    exp_lo: int = 0
    exp_hist: list = field(default_factory=list)
    n_zero: int = 0

    @property
    def rounds(self) -> bool:
        """Whether the step computes anything (not a reshape, an exact ReLU or max pool)."""
        return self.kind not in ("shape", "cat", "identity", "output", "size", "relu", "maxpool2d")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerReport:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["shape"] = tuple(kw.get("shape", ()))
        return cls(**kw)


def _g(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        if math.isinf(x):
            return "inf"
        if x == 0:
            return "0"
        return f"{x:.{digits}g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.{digits - 1}e}"
    return str(x)


@dataclass
class AnalysisReport:
    """Everything :func:`fpanalysis.analyze` found (see the module docstring).

    Attributes
    ----------
    config : dict
        fmt, profile, mode, order, failure_prob, lam, n_inputs, ...
    layers : list of LayerReport
    tolerance : dict
        ``{"logits": ToleranceSummary, "probs": ToleranceSummary}``.
    per_input : dict
        Per-input arrays as lists (gamma, B, B_prob, delta_<run>, classes, ...) per space.
    timings : dict
        Seconds per phase.
    environment : dict
        Versions, torch precision flags, device.
    probability : float
        Per-input probability that every probabilistic bound holds (union bound).
    """

    config: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerReport] = field(default_factory=list)
    tolerance: dict[str, ToleranceSummary] = field(default_factory=dict)
    per_input: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    probability: float = 1.0
    accuracy: dict[str, float] = field(default_factory=dict)

    # -- access ---------------------------------------------------------------------------
    def layer(self, name: str) -> LayerReport:
        for lr in self.layers:
            if lr.name == name or lr.path == name:
                return lr
        raise KeyError(f"no layer {name!r}; layers are: {', '.join(lr.name for lr in self.layers)}")

    @property
    def violations(self) -> int:
        """Deterministic-bound violations over all layers (measured error > bound): must be 0."""
        return sum(lr.violations + lr.local_violations + lr.half_violations for lr in self.layers)

    # -- text -----------------------------------------------------------------------------
    def table(self, *, all_steps: bool = False) -> str:
        """A readable per-layer table (steps that only reshape are left out unless ``all_steps``)."""
        cols = ["#", "layer", "kind", "shape", "n", "err max", "rel", "bias", "bound", "bound~p", "tight",
                "tight~p", "local", "loc.bnd", "max|v|/max", "%sub", "flush", "ovf", "half=emu"]
        rows = []
        for i, lr in enumerate(self.layers):
            if not all_steps and not lr.rounds and lr.kind not in ("relu", "maxpool2d"):
                continue
            fm = lr.fmt_max if (lr.fmt_max and not math.isnan(lr.fmt_max)) else _NAN
            name = lr.path or lr.name
            rows.append([str(i), name if len(name) <= 28 else "..." + name[-25:], lr.kind,
                         "x".join(map(str, lr.shape)), _g(lr.n), _g(lr.err_max), _g(lr.err_rel), _g(lr.local_bias, 2),
                         _g(lr.bound_max), _g(lr.bound_prob_max), _g(lr.tightness), _g(lr.tightness_prob),
                         _g(lr.local_err_max), _g(lr.local_bound_max), _g(lr.abs_max / fm if not math.isnan(fm) else _NAN),
                         _g(100 * lr.frac_subnormal, 2), _g(lr.frac_flushed, 2), str(lr.n_overflow),
                         _g(100 * lr.half_match, 4) + ("" if math.isnan(lr.half_match) else "%")])
        widths = [max(len(c), *(len(r[j]) for r in rows)) if rows else len(c) for j, c in enumerate(cols)]
        line = "  ".join(c.rjust(w) if j not in (1, 2) else c.ljust(w) for j, (c, w) in enumerate(zip(cols, widths)))
        out = [line, "-" * len(line)]
        for r in rows:
            out.append("  ".join(v.rjust(w) if j not in (1, 2) else v.ljust(w)
                                 for j, (v, w) in enumerate(zip(r, widths))))
        return "\n".join(out)

    def summary(self) -> str:
        c = self.config
        head = (f"fpanalysis report: {c.get('model', 'model')} in {c.get('fmt')} ({c.get('profile')}, "
                f"{c.get('mode')}), {c.get('n_inputs')} inputs; probabilistic bounds hold with probability "
                f">= {self.probability:.6g} per input (lambda = {_g(c.get('lam'), 4)})")
        lines = [head]
        for s in self.tolerance.values():
            lines += s.lines()
        if self.accuracy:
            lines.append("accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in self.accuracy.items()))
        lines.append(f"deterministic bound violations (all layers, emulator and real torch run): {self.violations}")
        if self.timings:
            lines.append("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary() + "\n\n" + self.table()

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "layers": [asdict(lr) for lr in self.layers],
            "tolerance": {k: v.to_dict() for k, v in self.tolerance.items()},
            "per_input": self.per_input,
            "timings": self.timings,
            "environment": self.environment,
            "probability": self.probability,
            "accuracy": self.accuracy,
        }

    def to_json(self, path: str | Path | None = None, *, indent: int = 1) -> str:
        """The report as standard JSON (docs/report_schema.md): ``schema``, ``schema_version``,
        then :meth:`to_dict`'s fields, non-finite numbers as the strings ``"nan"``, ``"inf"``,
        ``"-inf"``; written to ``path`` if given."""
        text = dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **self.to_dict()}, indent=indent)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> AnalysisReport:
        """Load a report saved by :meth:`to_json` (a path or the JSON text).

        Reads every schema version up to ours: the ``"nan"``/``"inf"``/``"-inf"`` strings, and
        the bare ``NaN``/``Infinity`` tokens of reports written before ``schema_version``
        existed.  A newer ``schema_version`` is refused with a ValueError.
        """
        s = str(source)
        text = Path(s).read_text() if not s.lstrip().startswith("{") else s
        raw = json.loads(text)
        check_schema_version(raw, s if not s.lstrip().startswith("{") else "analysis report")
        if raw.get("schema", SCHEMA) != SCHEMA:
            raise ValueError(f"not an analysis report: schema {raw.get('schema')!r}, expected {SCHEMA!r}")
        d = restore_nonfinite(raw)
        return cls(config=d.get("config", {}), layers=[LayerReport.from_dict(x) for x in d.get("layers", [])],
                   tolerance={k: ToleranceSummary.from_dict(v) for k, v in d.get("tolerance", {}).items()},
                   per_input=d.get("per_input", {}), timings=d.get("timings", {}),
                   environment=d.get("environment", {}), probability=d.get("probability", 1.0),
                   accuracy=d.get("accuracy", {}))

    # -- figures --------------------------------------------------------------------------
    def plot_errors(self, path: str | Path | None = None, ax: Any = None) -> Any:
        """Per-layer measured error vs the deterministic and probabilistic bounds, log scale."""
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        ls = [lr for lr in self.layers if lr.rounds or lr.kind == "input"]
        fig = None
        if ax is None:
            fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(ls) + 2), 4.0))
        x = list(range(len(ls)))

        def pos(v: float) -> float:
            return v if (math.isfinite(v) and v > 0) else _NAN

        ax.semilogy(x, [pos(lr.err_max) for lr in ls], "o-", label="measured |fp16 - fp32| (max)")
        ax.semilogy(x, [pos(lr.bound_max) for lr in ls], "s--", label="deterministic bound")
        ax.semilogy(x, [pos(lr.bound_prob_max) for lr in ls], "^--", label="probabilistic bound")
        ax.semilogy(x, [pos(lr.local_err_max) for lr in ls], ".:", label="local error (max)")
        ax.semilogy(x, [pos(lr.local_bound_max) for lr in ls], "x:", label="local bound")
        ax.set_xticks(x)
        ax.set_xticklabels([lr.path or lr.name for lr in ls], rotation=70, fontsize=7)
        ax.set_ylabel("absolute error")
        ax.set_title(f"{self.config.get('model', '')} {self.config.get('fmt', '')} "
                     f"({self.config.get('profile', '')})")
        ax.legend(fontsize=7)
        fig = fig or ax.figure
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig

    def plot_exponents(self, path: str | Path | None = None, layers: list[str] | None = None, max_layers: int = 12) -> Any:
        """Exponent histograms (floor(log2 |x|) of the fp32 values) per layer, with the format's
        normal (white), subnormal (yellow), flushed-to-zero (grey) and overflow (red) bands."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        ls = [lr for lr in self.layers if lr.exp_hist and (layers is None or lr.name in layers or lr.path in layers)]
        ls = [lr for lr in ls if lr.rounds or lr.kind == "input"][:max_layers] if layers is None else ls
        f = get_format(self.config.get("fmt", "fp16"))
        ncol = 3
        nrow = max(1, -(-len(ls) // ncol))
        fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 2.2 * nrow), squeeze=False)
        for ax, lr in zip(axes.flat, ls):
            e = list(range(lr.exp_lo, lr.exp_lo + len(lr.exp_hist)))
            ax.bar(e, lr.exp_hist, width=1.0, color="C0")
            sub_lo = f.emin - f.p + 1
            ax.axvspan(e[0] - 0.5, sub_lo - 0.5, color="0.8", alpha=0.6)
            ax.axvspan(sub_lo - 0.5, f.emin - 0.5, color="gold", alpha=0.4)
            ax.axvspan(f.emax + 0.5, e[-1] + 0.5, color="tomato", alpha=0.4)
            ax.set_title(f"{lr.path or lr.name} ({lr.kind})", fontsize=8)
            ax.set_yscale("log")
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(ls):]:
            ax.axis("off")
        fig.supxlabel("exponent floor(log2|x|)")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


#: ``o`` made representable in standard JSON (non-finite floats as ``"nan"``/``"inf"``/``"-inf"``)
json_safe = jsonable

"""Loading the analysis reports (``AnalysisReport.to_json``) that figures 1, 3 and 4 draw.

Reports are read as plain JSON dicts (no import of :mod:`fpanalysis.analysis`, so nothing
compiles and torch is never imported).  Keys relied on:

* ``config.model``, ``config.fmt``, ``config.profile`` (also ``config.n_inputs``, optional);
* ``layers[]``: ``name``, ``path``, ``kind``, ``err_max``, ``bound_max``, ``bound_prob_max``,
  optional ``half_err_max``, ``local_err_max``, ``local_bound_max``;
* ``tolerance.<space>``: ``n``, ``certified``, ``certified_prob``, ``runs.<run>.agree`` / ``.n``;
* ``per_input.<space>``: ``gamma``, ``B``, ``B_prob``, ``certified``, ``class_fp32``,
  ``delta_<run>``, ``class_<run>``;
* optional ``training.fp32_test_acc`` and ``accuracy``.

Numbers go through ``fnum``, which reads the ``"nan"``/``"inf"``/``"-inf"`` strings that stand
for non-finite values (docs/report_schema.md) as well as the bare tokens of older reports; a
``schema_version`` newer than :data:`fpanalysis._json.SCHEMA_VERSION` is a malformed input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fpanalysis._json import SCHEMA_VERSION
from paper_figures._inputs import MalformedInput, MissingInput, find, load_json, need

__all__ = [
    "COMMAND",
    "FORMAT_ORDER",
    "MODEL_ORDER",
    "PATTERN",
    "PROFILE_ORDER",
    "ROUNDING_KINDS_EXCLUDED",
    "load_reports",
    "model_label",
]

PATTERN = "analysis/*.json"
COMMAND = "python -m experiments.analysis_runs"
MODEL_ORDER = ["mlp", "lenet5", "vgg_small", "resnet20", "vit_tiny"]
PROFILE_ORDER = ["fp32-accumulate", "ieee", "exact"]
FORMAT_ORDER = ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "tf32"]
#: steps that compute nothing (shapes, exact ReLU / max pool), as ``LayerReport.rounds``
ROUNDING_KINDS_EXCLUDED = ("shape", "cat", "identity", "output", "size", "relu", "maxpool2d")

_LABELS = {"mlp": "MLP", "lenet5": "LeNet-5", "vgg_small": "CNN with batch norm",
           "resnet20": "ResNet-20", "vit_tiny": "tiny ViT"}


def model_label(name: str) -> str:
    return _LABELS.get(name, name)


def _order(value: str, order: list[str]) -> tuple[int, str]:
    return (order.index(value) if value in order else len(order), value)


def load_reports(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every report under ``results_dir/analysis/``, sorted by model, format, profile.

    Each item: ``{"path", "model", "fmt", "profile", "report"}``.  Raises MissingInput when
    there is none, MalformedInput for a file without the config keys.
    """
    paths = find(results_dir, PATTERN)
    if not paths:
        raise MissingInput(str(Path(results_dir) / PATTERN), COMMAND)
    out = []
    for p in paths:
        d = load_json(p)
        version = d.get("schema_version", 0) if isinstance(d, dict) else 0
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise MalformedInput(p, f"schema_version {version} is newer than these figures read (up to {SCHEMA_VERSION})")
        cfg = need(d, "config", path=p)
        out.append({"path": p, "model": str(need(cfg, "model", path=p)), "fmt": str(need(cfg, "fmt", path=p)),
                    "profile": str(need(cfg, "profile", path=p)), "report": d})
    out.sort(key=lambda r: (_order(r["model"], MODEL_ORDER), _order(r["fmt"], FORMAT_ORDER),
                            _order(r["profile"], PROFILE_ORDER)))
    return out

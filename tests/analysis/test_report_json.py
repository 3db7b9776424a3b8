"""The report JSON of ``fpanalysis analyze --json`` and ``fpanalysis check --json``: standard JSON
(no NaN / Infinity tokens), a ``schema_version``, valid against docs/report_schema.json, and
read back by AnalysisReport.from_json and the figure loaders (issue 12 §5)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fpanalysis import _json
from fpanalysis.analysis import AnalysisReport, analyze
from fpanalysis.check import check
from fpanalysis.cli import _write_json

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "report_schema.json"


def strict_loads(text: str):
    """Parse as a standard JSON parser does: the NaN / Infinity / -Infinity tokens are errors."""
    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _validate(doc: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)


def _nonfinite_strings(o) -> int:
    if isinstance(o, str):
        return int(o in _json.NONFINITE)
    if isinstance(o, dict):
        return sum(_nonfinite_strings(v) for v in o.values())
    if isinstance(o, list):
        return sum(_nonfinite_strings(v) for v in o)
    return 0


@pytest.fixture(scope="module")
def analysis_report() -> AnalysisReport:
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    # fp8: no real torch run, so the half_* fields are NaN (as in any format without one)
    return analyze(m, rng.standard_normal((16, 6)).astype(np.float32), fmt="fp8_e4m3fn", progress=False,
                   name="tiny")


@pytest.fixture(scope="module")
def check_report():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    return check(m, (x, y), steps=2, warmup_steps=5, batch_size=16, certify_samples=16)


def test_analysis_report_json_is_standard_versioned_and_valid(analysis_report, tmp_path) -> None:
    path = tmp_path / "analysis.json"
    analysis_report.to_json(path)
    doc = strict_loads(path.read_text())
    assert doc["schema"] == "fpanalysis.analysis" and doc["schema_version"] == _json.SCHEMA_VERSION == 1
    assert _nonfinite_strings(doc) > 0  # the report has non-finite numbers, so the encoding is exercised
    _validate(doc)
    back = AnalysisReport.from_json(path)
    for a, b in zip(analysis_report.layers, back.layers):
        for k in ("err_max", "bound_max", "half_err_max", "tightness", "fmt_max"):
            x, y = getattr(a, k), getattr(b, k)
            assert (math.isnan(x) and math.isnan(y)) or x == y, (a.name, k, x, y)
    assert back.tolerance["logits"].certified == analysis_report.tolerance["logits"].certified


def test_check_report_json_is_standard_versioned_and_valid(check_report, tmp_path) -> None:
    """Before: 27 bare NaN tokens in this report (81 in ``check --demo``'s), no schema_version."""
    text = check_report.to_json()
    doc = strict_loads(text)
    assert doc["schema"] == "fpanalysis.check" and doc["schema_version"] == 1
    assert _nonfinite_strings(doc) > 0
    _validate(doc)
    # the CLI's writer (check --json) writes the same document
    _write_json(str(tmp_path / "check.json"), check_report)
    assert strict_loads((tmp_path / "check.json").read_text()) == doc


def test_cli_write_json_plain_payload_is_standard(tmp_path) -> None:
    payload = {"rows": [{"x": float("nan"), "y": float("-inf"), "z": np.float32(1.5), "k": np.int64(3)}],
               "shape": (2, 3), "path": tmp_path}
    _write_json(str(tmp_path / "p.json"), payload)
    doc = strict_loads((tmp_path / "p.json").read_text())
    assert doc == {"rows": [{"x": "nan", "y": "-inf", "z": 1.5, "k": 3}], "shape": [2, 3], "path": str(tmp_path)}


def test_encoding_round_trip_and_versions(analysis_report) -> None:
    assert _json.dumps([math.nan, math.inf, -math.inf, 1.0], indent=None) == '["nan", "inf", "-inf", 1.0]'
    assert _json.restore_nonfinite(["inf", "-inf", "x", 2]) == [math.inf, -math.inf, "x", 2]
    # a report written before schema_version (bare tokens) is still read
    old = analysis_report.to_dict()
    back = AnalysisReport.from_json(json.dumps(old))
    assert [lr.name for lr in back.layers] == [lr.name for lr in analysis_report.layers]
    newer = json.dumps({"schema": "fpanalysis.analysis", "schema_version": 99, **_json.jsonable(old)})
    with pytest.raises(ValueError, match="schema_version 99 is newer than this fpanalysis reads"):
        AnalysisReport.from_json(newer)
    with pytest.raises(ValueError, match="not an analysis report"):
        AnalysisReport.from_json('{"schema": "fpanalysis.check", "schema_version": 1}')


def test_figure_loader_reads_the_new_encoding(analysis_report, tmp_path) -> None:
    """paper_figures reads analysis reports as plain JSON: the string-encoded numbers load, and
    a newer schema_version is refused as a malformed input naming the file."""
    pytest.importorskip("matplotlib")
    from paper_figures._analysis import load_reports
    from paper_figures._inputs import MalformedInput, fnum

    (tmp_path / "analysis").mkdir()
    analysis_report.to_json(tmp_path / "analysis" / "tiny.json")
    (rep,) = load_reports(tmp_path)
    layer = rep["report"]["layers"][-1]
    assert math.isnan(fnum(layer["half_err_max"])) and fnum(layer["err_max"]) == analysis_report.layers[-1].err_max
    doc = json.loads((tmp_path / "analysis" / "tiny.json").read_text())
    doc["schema_version"] = 2
    (tmp_path / "analysis" / "tiny.json").write_text(json.dumps(doc))
    with pytest.raises(MalformedInput, match="tiny.json: schema_version 2 is newer"):
        load_reports(tmp_path)


def test_schema_documents_every_field() -> None:
    """docs/report_schema.md names every field the schema file lists, and the schema lists every
    field of the dataclasses written (additionalProperties is false, so a new field fails the
    validation tests until it is documented)."""
    from dataclasses import fields

    from fpanalysis.analysis.report import LayerReport
    from fpanalysis.check.findings import Finding

    schema = json.loads(SCHEMA_FILE.read_text())
    doc = (ROOT / "docs" / "report_schema.md").read_text()
    for cls, key in ((LayerReport, "layer"), (Finding, "finding")):
        assert set(schema["$defs"][key]["properties"]) == {f.name for f in fields(cls)}
    for key in ("analysis_report", "check_report", "layer", "finding", "tolerance_summary", "run_agreement"):
        for name in schema["$defs"][key]["properties"]:
            assert f"`{name}`" in doc, f"docs/report_schema.md does not describe {key}.{name}"

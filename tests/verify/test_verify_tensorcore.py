"""The tensor-core verification suite: every model agrees with mmasim bit for bit, and the suite
catches injected bugs (a wrong alignment width, block length, zero-exponent floor or
accumulator)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fpanalysis.tensorcore import all_models, get_tensor_core
from fpanalysis.verify.tensorcore import CASES, verify_tensorcore

pytest.importorskip("mmasim")


def _mismatches(rows: list[dict]) -> dict[str, int]:
    return {f"{r['check']} {r['mode']}": r["mismatches"] for r in rows}


def test_every_model_matches_mmasim() -> None:
    rows = verify_tensorcore(blocks=150, gemm_size=12)
    assert len(rows) >= len(all_models()) * len(CASES)
    assert all(r["n"] > 0 for r in rows), [r for r in rows if r["n"] <= 0]
    bad = {k: v for k, v in _mismatches(rows).items() if v != 0}
    assert not bad, (bad, [r["first_mismatch"] for r in rows if r["mismatches"]][:3])
    # the mmaemu GEMM comparison (Hopper FP8, fast and slow accumulation) ran
    assert sum("scaled_mm" in r["check"] for r in rows) == 4


@pytest.mark.parametrize("base, change, cases", [
    (("ampere", "bf16", "fp32"), {"F": 23}, ("spread", "ties")),
    (("hopper", "fp16", "fp32"), {"F": 26}, ("spread", "ties")),
    (("hopper", "e4m3", "fp32"), {"F": 14}, ("spread", "normal")),
    (("ampere", "fp16", "fp32"), {"n": 16}, ("bits", "spread")),
    (("ampere", "bf16", "fp32"), {"e_zero": -131}, ("floor",)),
    (("ampere", "bf16", "fp32"), {"e_zero": -133}, ("floor",)),
    (("volta", "fp16", "fp16"), {"e_zero": -20}, ("floor",)),
    (("hopper", "fp16", "fp32"), {"accumulator": "fp32-e8m13"}, ("normal",)),
    (("hopper", "e4m3", "fp32"), {"accumulator": "fp32"}, ("normal",)),
])
def test_suite_catches_injected_bugs(base, change, cases) -> None:  # type: ignore[no-untyped-def]
    wrong = replace(get_tensor_core(*base), **change)
    rows = verify_tensorcore(blocks=400, models=[wrong], cases=cases)
    assert sum(r["mismatches"] for r in rows) > 0, (change, _mismatches(rows))
    assert any(r["first_mismatch"] for r in rows)


def test_unknown_case_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="valid cases are"):
        verify_tensorcore(blocks=10, models=[get_tensor_core("hopper")], cases=("nonsense",))

"""The GEMM verification suite of ``fpanalysis verify``: clean on the real kernels, and it
catches a wrong summation order, a wrong accumulation format and a wrong profile."""

from __future__ import annotations

import pytest

from fpanalysis.linalg import matmul
from fpanalysis.verify import linalg as V


def _bad(rows: list[dict], check: str, fmt: str = "fp16") -> int:
    (row,) = [r for r in rows if r["check"] == check and r["format"] == fmt]
    return row["mismatches"]


def test_real_kernels_pass_every_check() -> None:
    rows = V.verify_linalg(seed=3)
    assert len(rows) == 6 and all(r["n"] > 1000 for r in rows), rows
    assert all(r["mismatches"] == 0 for r in rows), [r for r in rows if r["mismatches"]]


@pytest.mark.parametrize(
    "bug, check",
    [
        ({"order": "pairwise"}, "matmul fp32-accumulate sequential"),  # another summation order
        ({"order": "sequential"}, "matmul fp32-accumulate blocked(32)"),
        ({"profile": "fp32-accumulate"}, "matmul ieee sequential"),  # no fp16 rounding of the sums
        ({"profile": "fp32-accumulate"}, "matmul exact"),
    ],
)
def test_injected_bugs_are_found(bug: dict, check: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(A, B, fmt, profile, **kw):  # type: ignore[no-untyped-def]
        kw.update({k: v for k, v in bug.items() if k != "profile"})
        return matmul(A, B, fmt, bug.get("profile", profile), **kw)

    monkeypatch.setattr(V, "matmul", buggy)
    rows = V.verify_linalg(seed=3)
    assert _bad(rows, check) > 0
    bad = [r for r in rows if r["mismatches"] > 0]
    assert all(r["first_mismatch"].count("C[") == 1 for r in bad)

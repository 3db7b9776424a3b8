"""Helpers shared by the verification tests (not a test module)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from fpanalysis import rounding as R
from fpanalysis.formats import get_format


def failures(rows: Iterable[dict[str, Any]], optional: Callable[[dict[str, Any]], bool] = lambda r: False) -> list[str]:
    """Rows that found mismatches, and rows that could not run unless ``optional(row)``."""
    bad = []
    for r in rows:
        mm = r["mismatches"]
        if mm == -1 and optional(r):
            continue
        if mm != 0:
            bad.append(f"{r['check']} [{r['format']}, {r['mode']}, {r['oracle']}]: "
                       f"{mm} of {r['n']}: {r['first_mismatch']}")
    return bad


def native_optional(row: dict[str, Any]) -> bool:
    """Rows of API that round_to may not offer (native storage dtypes) and ops not yet written."""
    return row["check"].startswith("round_to dtype=") or row["check"].startswith("sqrt")


def buggy_round_to(bug: str) -> Callable[..., Any]:
    """round_to with one deliberate bug, to show that the checks can fail.  Install it with
    ``monkeypatch.setattr(fpanalysis.rounding, "round_to", buggy_round_to(bug))``: the
    verification modules call the code under test through ``fpanalysis.rounding``."""
    real = R.round_to

    def wrapped(x: Any, fmt: Any = "fp16", mode: Any = "nearest-even", **kw: Any) -> Any:
        m = R.RoundingMode.parse(mode)
        if bug == "ties-away" and m is R.RoundingMode.NEAREST_EVEN:
            return real(x, fmt, "nearest-away", **kw)
        if bug == "odd-is-toward-zero" and m is R.RoundingMode.ODD:
            return real(x, fmt, "toward-zero", **kw)
        res = real(x, fmt, mode, **kw)
        y, stats = (res if kw.get("return_stats") else (res, None))
        f = get_format(fmt)
        y = np.array(y, copy=True)
        xa = np.asarray(x)
        with np.errstate(invalid="ignore"):
            if bug == "saturate":
                y = np.where(np.isinf(y) & np.isfinite(xa), np.copysign(f.max, y), y)
            elif bug == "unsigned-zero":
                y = np.where(y == 0, 0.0, y).astype(y.dtype)
            elif bug == "flush-subnormals":
                y = np.where(np.abs(y) < f.min_normal, 0.0 * y, y).astype(y.dtype)
            elif bug == "nan-to-inf":
                y = np.where(np.isnan(y), np.inf, y).astype(y.dtype)
        return (y, stats) if kw.get("return_stats") else y

    return wrapped

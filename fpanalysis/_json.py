"""Standard JSON for the reports that ``fpanalysis analyze --json`` and ``fpanalysis check --json``
write (and every other ``--json`` of the command line).

Python's :mod:`json` writes the non-standard tokens ``NaN``, ``Infinity`` and ``-Infinity`` for
non-finite floats, which standard parsers (JavaScript's ``JSON.parse``, ``jq``, most JSON-schema
validators) reject.  The convention here, documented in ``docs/report_schema.md``: a non-finite
number is written as the string ``"nan"``, ``"inf"`` or ``"-inf"`` (kept as strings, not ``null``,
because an infinite bound -- "vacuous" -- and a missing measurement -- NaN -- mean different
things).  :func:`restore_nonfinite` turns them back into floats when a report is read.

>>> dumps({"bound": float("inf"), "err": float("nan"), "n": 3}, indent=None)
'{"bound": "inf", "err": "nan", "n": 3}'
>>> restore_nonfinite({"bound": "inf", "xs": [1.0, "-inf"]})
{'bound': inf, 'xs': [1.0, -inf]}
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["NONFINITE", "SCHEMA_VERSION", "check_schema_version", "dumps", "jsonable", "restore_nonfinite"]

#: Version of the report layout described in docs/report_schema.md; increase it when a field
#: changes meaning or disappears (adding a field does not change it).
SCHEMA_VERSION = 1

#: The strings that stand for non-finite numbers.
NONFINITE = ("nan", "inf", "-inf")


def _float(x: float) -> float | str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def jsonable(o: Any) -> Any:
    """``o`` with every value made representable in standard JSON.

    Non-finite floats become ``"nan"``/``"inf"``/``"-inf"``; numpy scalars and arrays become
    Python numbers and lists; tuples become lists; paths and other objects become ``str(o)``;
    dictionary keys that are not strings or integers become ``str(key)``.
    """
    if o is None or isinstance(o, (bool, str)):
        return o
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return _float(float(o))
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, dict):
        return {(k if isinstance(k, (str, int)) and not isinstance(k, bool) else str(k)): jsonable(v)
                for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, Path):
        return str(o)
    return str(o)


def dumps(payload: Any, *, indent: int | None = 1) -> str:
    """``payload`` as standard JSON (:func:`jsonable`, then ``allow_nan=False`` as a guarantee)."""
    return json.dumps(jsonable(payload), indent=indent, allow_nan=False)


def restore_nonfinite(o: Any) -> Any:
    """The inverse of the non-finite encoding: ``"nan"``/``"inf"``/``"-inf"`` -> floats, recursively."""
    if isinstance(o, str) and o in NONFINITE:
        return float(o)
    if isinstance(o, dict):
        return {k: restore_nonfinite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [restore_nonfinite(v) for v in o]
    return o


def check_schema_version(d: Any, what: str) -> None:
    """Refuse a report written by a newer fpanalysis (``schema_version`` above ours).

    A report without ``schema_version`` predates it (version 0: the same fields, with bare
    ``NaN``/``Infinity`` tokens possible) and is accepted.
    """
    version = d.get("schema_version", 0) if isinstance(d, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"{what}: 'schema_version' must be a non-negative integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ValueError(f"{what}: schema_version {version} is newer than this fpanalysis reads "
                         f"(up to {SCHEMA_VERSION}); upgrade fpanalysis to read it")


def plan_json(d: dict[str, Any], path: str | Path | None = None) -> str:
    """A precision plan's dictionary as indented JSON, also written to ``path`` when given (the
    ``to_json`` of :class:`fpanalysis.nn.shadow.PrecisionPlan` and :class:`fpanalysis.nn.fp8.FP8Plan`)."""
    text = json.dumps(d, indent=2)
    if path is not None:
        Path(path).write_text(text + "\n")
    return text

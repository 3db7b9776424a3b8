"""Reading result files for the figures: missing vs malformed inputs, tolerant number parsing.

A figure that finds none of its inputs raises :class:`MissingInput` naming the experiment
command that produces them; ``make_all`` reports it and goes on.  A present input that cannot
be read or lacks a key the figure needs raises :class:`MalformedInput` (``make_all`` then exits
non-zero).  Figures never recompute results.  :func:`figure_main` is the command line shared
by the figure modules (``python -m paper_figures.fig2_error_growth --results DIR --out DIR``).
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_OUT", "DEFAULT_RESULTS", "MalformedInput", "MissingInput", "figure_main", "find", "fnum",
           "load_json", "need", "note", "reading"]

#: where the experiments write their results, and where the figures go
DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "experiments" / "results"
DEFAULT_OUT = Path(__file__).resolve().parent / "output"


class MissingInput(Exception):
    """None of a figure's inputs exist.  ``what``: the files looked for; ``command``: how to make them."""

    def __init__(self, what: str, command: str):
        super().__init__(f"missing {what}; produce it with: {command}")
        self.what = what
        self.command = command


class MalformedInput(ValueError):
    """A present input file that cannot be parsed or lacks what the figure needs."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_json(path: str | Path) -> Any:
    """Parse ``path`` (NaN/Infinity tokens allowed); unreadable or invalid JSON -> MalformedInput."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MalformedInput(path, f"not readable as JSON ({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn a KeyError / TypeError / IndexError / ValueError raised while extracting data from
    ``path`` into :class:`MalformedInput` naming the file."""
    try:
        yield
    except MalformedInput:
        raise
    except KeyError as exc:
        raise MalformedInput(path, f"missing key {exc}") from None
    except (TypeError, IndexError, ValueError, AttributeError) as exc:
        raise MalformedInput(path, f"unexpected content ({type(exc).__name__}: {exc})") from None


def need(d: Any, *keys: str, path: str | Path = "<input>") -> Any:
    """``d[k1][k2]...`` or MalformedInput naming the missing key path."""
    cur = d
    for i, k in enumerate(keys):
        if not isinstance(cur, dict) or k not in cur:
            raise MalformedInput(path, f"missing key {'.'.join(keys[:i + 1])!r}")
        cur = cur[k]
    return cur


def find(results_dir: str | Path, pattern: str) -> list[Path]:
    """Files under ``results_dir`` matching the glob ``pattern``, sorted; none if the folder is absent."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(pattern) if p.is_file())


def fnum(x: Any) -> float:
    """A number from JSON: floats, ints, ``"inf"``/``"nan"`` strings, ``None`` -> NaN.

    >>> fnum("inf"), fnum(None) != fnum(None), fnum(3)
    (inf, True, 3.0)
    """
    if x is None:
        return math.nan
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):
        return float(x)  # "inf", "-inf", "nan", "1e-3"; anything else raises ValueError
    raise TypeError(f"expected a number, got {type(x).__name__}")


def note(figure: str, message: str) -> None:
    """A non-fatal remark (e.g. an optional input is missing), printed to stderr."""
    print(f"  [{figure}] note: {message}", file=sys.stderr)


def figure_main(make: Callable[[str | Path, str | Path], list[Path]], doc: str | None,
                argv: Sequence[str] | None = None) -> int:
    """The command line of one figure module: ``--results DIR --out DIR``; print the files drawn.

    Exit status 0 when drawn, 1 when an input is missing or malformed (one line on stderr, no
    traceback), 2 for bad arguments (argparse).
    """
    import argparse

    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    ap.add_argument("--results", default=str(DEFAULT_RESULTS), help="folder of result JSON (default: %(default)s)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder for PDF + PNG (default: %(default)s)")
    a = ap.parse_args(argv)
    try:
        files = make(a.results, a.out)
    except (MissingInput, MalformedInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for f in files:
        print(f)
    return 0

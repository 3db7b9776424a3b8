"""Progress for long work, on stderr.

In a terminal: a tqdm bar.  In a log (stderr not a terminal: CI, ``nohup``, a pipe): one line
when the work starts, one per new phase and one at the end, so a log shows where the time went
without a bar's control characters.  ``FPANALYSIS_NO_PROGRESS`` (any value) silences both.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator


class _Bar:
    def __init__(self, bar: Any, desc: str = "", log: bool = False) -> None:
        self._bar = bar
        self._desc = desc
        self._log = log
        self._phase: str | None = None
        self._t0 = time.perf_counter()
        if log:
            self._line(f"{desc}: started")

    def _line(self, text: str) -> None:
        print(f"[{time.perf_counter() - self._t0:7.1f} s] {text}", file=sys.stderr, flush=True)

    def callback(self, done: "int | str | None" = None, total: int | None = None, desc: str | None = None) -> None:
        """Progress callback that library functions accept: ``(done, total, desc)``, or a
        single description string (step counting by one per call)."""
        if self._log:
            if isinstance(done, str):
                desc = done
            if desc and desc != self._phase:
                self._phase = desc
                self._line(f"{self._desc}: {desc}")
            return
        if self._bar is None:
            return
        if isinstance(done, str):
            desc, done = done, self._bar.n + 1
        if total is not None and self._bar.total != total:
            self._bar.total = total
        if desc:
            self._bar.set_postfix_str(desc[:60], refresh=False)
        if done is not None:
            self._bar.n = done
        self._bar.refresh()

    def update(self, k: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(k)

    def close(self) -> None:
        if self._log:
            self._line(f"{self._desc}: done")
        if self._bar is not None:
            self._bar.close()


def progress_enabled() -> bool:
    return not os.environ.get("FPANALYSIS_NO_PROGRESS")


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress_bar(desc: str, total: int | None = None, unit: str = "it") -> Iterator[_Bar]:
    """Progress on stderr as a context manager; yields an object with ``callback``/``update``:
    a tqdm bar in a terminal, phase lines in a log, nothing when progress is switched off."""
    if not progress_enabled():
        yield _Bar(None)
        return
    if not _stderr_is_terminal():
        bar = _Bar(None, desc, log=True)
        try:
            yield bar
        finally:
            bar.close()
        return
    from tqdm.auto import tqdm

    bar = _Bar(tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True), desc)
    try:
        yield bar
    finally:
        bar.close()

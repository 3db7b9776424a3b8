"""Progress bars for long work (tqdm on stderr; silent when ``FPANALYSIS_NO_PROGRESS`` is set)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator


class _Bar:
    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def callback(self, done: "int | str | None" = None, total: int | None = None, desc: str | None = None) -> None:
        """Progress callback that library functions accept: ``(done, total, desc)``, or a
        single description string (step counting by one per call)."""
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


def progress_enabled() -> bool:
    return not os.environ.get("FPANALYSIS_NO_PROGRESS")


@contextmanager
def progress_bar(desc: str, total: int | None = None, unit: str = "it") -> Iterator[_Bar]:
    """A tqdm bar on stderr as a context manager; yields an object with ``callback``/``update``."""
    if not progress_enabled():
        yield _Bar(None)
        return
    from tqdm.auto import tqdm

    # disable=None: silent when stderr is not a terminal (logs, CI), a live bar otherwise
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)
    try:
        yield _Bar(bar)
    finally:
        bar.close()

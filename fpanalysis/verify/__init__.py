"""``fpanalysis verify``: the emulator checked against independent oracles.

Each suite returns rows of one shape (:func:`fpanalysis.verify.core.row`): ``check``, ``format``,
``mode``, ``oracle``, ``n`` comparisons, ``mismatches`` (``-1``: the check could not run, and
``first_mismatch`` says why), ``first_mismatch`` (empty when there is none) and ``seconds``.

Suites: :mod:`.rounding` (conversions and every rounding mode; :mod:`.modes` holds the directed
and stochastic checks it runs), :mod:`.ops` (correctly rounded arithmetic), :mod:`.linalg` (the
GEMM kernels as compiled for this CPU), :mod:`.tensorcore` (the tensor-core models against
MMA-Sim and mmaemu).  :mod:`.core` holds the shared comparison helpers and
the oracle adapters (numpy, torch, gmpy2/MPFR, SoftFloat, ml_dtypes, exact rationals; see
``docs/semantics.md`` §5).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .core import ProgressFn, Row, unavailable_row

__all__ = ["COLUMNS", "SUITES", "TENSORCORE_BLOCKS", "TENSORCORE_BLOCKS_FULL", "Suite", "run_suites"]

#: The columns of the table ``fpanalysis verify`` prints, in order.
COLUMNS = ["check", "format", "mode", "oracle", "n", "mismatches", "first_mismatch"]

#: Random blocks per (model, case) of the tensor-core suite: the default keeps the whole
#: ``fpanalysis verify`` within a few minutes on two cores (the suite took 13 s of a 3.8 min run
#: at load ~15); the full run (``--exhaustive``, or ``--tc-blocks 100000``) is the 10^5 blocks
#: per case of docs/semantics.md §1.4 (36 M comparisons; 52 s for the suite on an idle two-core
#: machine with the register-tiled kernel, several times that under load).
TENSORCORE_BLOCKS = 2000
TENSORCORE_BLOCKS_FULL = 10**5


@dataclass(frozen=True)
class Suite:
    """One suite: a name and ``run(n, seed, exhaustive, progress) -> rows``; a suite with
    ``blocks=True`` receives the tensor-core block count as ``n`` instead (see
    :func:`run_suites`)."""

    name: str
    run: Callable[[int, int, bool, ProgressFn | None], list[Row]]
    blocks: bool = False


def _rounding(n: int, seed: int, exhaustive: bool, progress: ProgressFn | None) -> list[Row]:
    from . import rounding

    return rounding.run_all(exhaustive=exhaustive, n=n, seed=seed, progress=progress)


def _ops(n: int, seed: int, exhaustive: bool, progress: ProgressFn | None) -> list[Row]:
    from . import ops

    return ops.verify_ops(n_pairs=n, seed=seed, progress=progress)


def _linalg(n: int, seed: int, exhaustive: bool, progress: ProgressFn | None) -> list[Row]:
    from . import linalg

    return linalg.verify_linalg(seed=seed, progress=progress)


def _tensorcore(n: int, seed: int, exhaustive: bool, progress: ProgressFn | None) -> list[Row]:
    from . import tensorcore

    return tensorcore.verify_tensorcore(blocks=n, seed=seed, progress=progress)


SUITES: list[Suite] = [
    Suite("rounding and conversions", _rounding),
    Suite("arithmetic", _ops),
    Suite("linear algebra", _linalg),
    Suite("tensor cores", _tensorcore, blocks=True),
]


def run_suites(n: int, seed: int = 0, exhaustive: bool = False,
               progress: Callable[[str], Any] | None = None,
               suites: list[Suite] | None = None, blocks: int | None = None) -> list[Row]:
    """Run every suite and return all rows.  ``progress(name)`` returns the progress callback
    of one suite (the CLI passes a progress bar's); a suite whose oracle library is missing
    gives one row with ``mismatches = -1`` instead of an exception.  ``n`` is the number of
    random operands per check; the tensor-core suite runs ``blocks`` random blocks per
    (model, case) instead (default :data:`TENSORCORE_BLOCKS`, :data:`TENSORCORE_BLOCKS_FULL`
    with ``exhaustive``)."""
    if blocks is None:
        blocks = TENSORCORE_BLOCKS_FULL if exhaustive else TENSORCORE_BLOCKS
    rows: list[Row] = []
    for suite in suites if suites is not None else SUITES:
        cb = progress(suite.name) if progress is not None else None
        try:
            rows += suite.run(blocks if suite.blocks else n, seed, exhaustive, cb)
        except ImportError as exc:
            rows.append(unavailable_row(f"{suite.name} suite", "-", "-", "-", str(exc)))
    return rows

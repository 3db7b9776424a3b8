"""The pre-training fp16 safety check (``fpanalysis check``).

Pieces, from the bottom up: :mod:`.findings` turns measurements into findings, thresholds and a
verdict (pure numpy); :mod:`.probe` measures a PyTorch model in fp32; :mod:`.run` runs the probes
and the agreement certificate and builds the report; :mod:`.plots` draws it.  ``import
fpanalysis.check`` stays cheap: torch loads only when :func:`check` runs.
"""
from __future__ import annotations

from typing import Any

from .config import CheckConfig
from .findings import (
    THRESHOLDS,
    CheckReport,
    Finding,
    Measurements,
    decide_verdict,
    findings_from_measurements,
)

__all__ = [
    "THRESHOLDS", "CheckConfig", "CheckReport", "Finding", "Measurements", "check", "decide_verdict",
    "findings_from_measurements",
]


def check(model: Any, data: Any, config: CheckConfig | None = None, **options: Any) -> CheckReport:
    """Run every check on ``model`` with ``data``; see :func:`fpanalysis.check.run.run_check`.

    ``model`` is an ``nn.Module``; ``data`` is ``(X, y)`` arrays/tensors.  ``config`` (a
    :class:`CheckConfig`) or keyword options with its field names: ``fmt="fp16"``,
    ``optimizer="sgd"|"adam"|"adamw"``, ``lr``, ``eps``, ``momentum``, ``batch_size``, ``steps``
    (fp32 steps measured), ``warmup_steps`` (fp32 training before the certificate), ``certify``
    (run the agreement certificate), ``certify_samples``, ``profile``, ``seed``; and
    ``progress(done, total, phase)``.
    """
    from .run import run_check

    return run_check(model, data, config, **options)

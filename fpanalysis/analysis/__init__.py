"""Per-layer rounding-error analysis of PyTorch models (``fpanalysis analyze``).

:mod:`.run` holds :func:`analyze`; :mod:`.record` runs the fp32, emulated and real low-precision
passes step by step and gathers statistics; :mod:`.network_bounds` propagates the a-priori error
bounds through the traced network; :mod:`.report` is the result (tables, JSON, plots).
The torch adapter it builds on is :mod:`fpanalysis.nn`.  ``import fpanalysis.analysis`` does not
import torch.
"""
from __future__ import annotations

from .report import AnalysisReport, LayerReport
from .run import analyze

__all__ = ["AnalysisReport", "LayerReport", "analyze"]

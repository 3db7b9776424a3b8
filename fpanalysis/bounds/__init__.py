"""Rounding-error bounds, from one operation up to one layer.

:mod:`.accumulation` holds the bounds of sums, dot products, matrix products and convolutions
under each arithmetic profile (deterministic γ_n and the Higham–Mary probabilistic bounds), and
the propagation primitives; :mod:`.layers` the local bounds of whole layers (activations,
normalisation, pooling, attention).  Bounds through a whole network are in
:mod:`fpanalysis.analysis.network_bounds`.  Theory: ``docs/theory.md`` §3.

Every name of :mod:`.accumulation` is re-exported here (``fpanalysis.bounds.gamma``, ...).
"""
from __future__ import annotations

from .accumulation import (
    METHODS,
    ORDERS,
    PROFILES,
    Bound,
    accumulation_bound,
    choose_lambda,
    conv2d_bound,
    conv2d_float64,
    dot_bound,
    gamma,
    gamma_tilde,
    is_vacuous,
    matmul_bound,
    matvec_bound,
    probability_P,
    probability_Q,
    propagate_add,
    propagate_conv2d,
    propagate_elementwise,
    propagate_linear,
    propagate_matmul,
    rounding_depth,
    rounding_error_bound,
    sum_bound,
    underflow_unit,
    unit_roundoff,
)

__all__ = [
    "METHODS",
    "ORDERS",
    "PROFILES",
    "Bound",
    "accumulation_bound",
    "choose_lambda",
    "conv2d_float64",
    "conv2d_bound",
    "dot_bound",
    "gamma",
    "gamma_tilde",
    "is_vacuous",
    "matmul_bound",
    "matvec_bound",
    "probability_P",
    "probability_Q",
    "propagate_add",
    "propagate_conv2d",
    "propagate_elementwise",
    "propagate_linear",
    "propagate_matmul",
    "rounding_depth",
    "rounding_error_bound",
    "sum_bound",
    "underflow_unit",
    "unit_roundoff",
    "layers",
]


def __getattr__(name: str):  # noqa: ANN202 - module attribute hook
    """``fpanalysis.bounds.layers`` loads on first use (it imports scipy; the rest is numpy)."""
    if name == "layers":
        import importlib

        return importlib.import_module(".layers", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


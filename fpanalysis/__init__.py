"""fpanalysis: will my network work in pure 16-bit floating point, and if not, exactly why?

Importing the package is cheap: numba kernels compile on first use, torch and matplotlib are
imported only by the modules that need them (``fpanalysis.nn``, plotting functions).
"""

from . import bounds, datasets, ops, tolerance
from .analysis import AnalysisReport, analyze
from .formats import FORMATS, FloatFormat, get_format
from .linalg import Order, Profile, conv2d, dot, matmul
from .reference import exact_dot, exact_dot_fraction, exact_matmul, exact_sum
from .rounding import RoundingMode, RoundingStats, from_bits, round_to, to_bits
from .version import __version__

__all__ = [
    "AnalysisReport",
    "FORMATS",
    "FloatFormat",
    "Order",
    "Profile",
    "conv2d",
    "dot",
    "matmul",
    "RoundingMode",
    "RoundingStats",
    "analyze",
    "bounds",
    "datasets",
    "exact_dot",
    "exact_dot_fraction",
    "exact_matmul",
    "exact_sum",
    "from_bits",
    "get_format",
    "ops",
    "round_to",
    "to_bits",
    "tolerance",
]

"""fpanalysis: will my network work in pure 16-bit floating point, and if not, why?"""
from .formats import FloatFormat, get_format, FORMATS
from .rounding import RoundingMode, RoundingStats, round_to, to_bits, from_bits

__version__ = "0.1.0"

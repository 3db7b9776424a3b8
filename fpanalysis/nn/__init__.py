"""The torch side of fpanalysis: reference models and the precision policy of the experiments.

This subpackage is the only part of fpanalysis that imports torch; importing ``fpanalysis``
itself does not import it.
"""

from .models import build_model, model_names
from .precision import PRECISION_MODES, PrecisionPolicy, precision_policy

__all__ = ["build_model", "model_names", "PRECISION_MODES", "PrecisionPolicy", "precision_policy"]

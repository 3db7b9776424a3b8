"""Helpers for unit-testing rounding-error bounds in your own code (see ``docs/testing.md``).

* assertions (:mod:`fpanalysis.testing.assertions`): :func:`assert_within_bound`,
  :func:`assert_within_probabilistic_bound`, :func:`check_failure_rate`,
  :func:`assert_emulated_close`, :func:`assert_certificates_hold`,
  :func:`assert_certified_agreement`, :func:`assert_check_verdict`;
* the arithmetic a function under test is written against (:mod:`fpanalysis.testing.emulator`):
  :class:`Emulator` and the references :func:`reference_arithmetic`;
* Hypothesis strategies (:mod:`fpanalysis.testing.strategies`): :func:`values`,
  :func:`arrays_of`, :func:`same_sign_vectors`, :func:`cancellation_vectors`,
  :func:`wide_range_vectors`;
* a pytest plugin (:mod:`fpanalysis.testing.plugin`): fixtures ``fp_rng``, ``fp_format`` and
  the marker ``@pytest.mark.formats(...)``.

Names load on first use, so ``import fpanalysis.testing`` (which the pytest plugin triggers in
every test run) imports neither Hypothesis nor scipy nor any numerical kernel.

>>> from fpanalysis.testing import assert_within_bound
>>> assert_within_bound([1.0005], [1.0], [1e-3]).violations
0
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "assert_within_bound": "assertions",
    "assert_within_probabilistic_bound": "assertions",
    "check_failure_rate": "assertions",
    "assert_emulated_close": "assertions",
    "assert_certificates_hold": "assertions",
    "assert_certified_agreement": "assertions",
    "assert_check_verdict": "assertions",
    "BoundCheck": "assertions",
    "FailureRate": "assertions",
    "EmulationCheck": "assertions",
    "CertificateCheck": "assertions",
    "Emulator": "emulator",
    "reference_arithmetic": "emulator",
    "values": "strategies",
    "arrays_of": "strategies",
    "same_sign_vectors": "strategies",
    "cancellation_vectors": "strategies",
    "wide_range_vectors": "strategies",
    "VALUE_CLASSES": "strategies",
}

__all__ = [
    "VALUE_CLASSES",
    "BoundCheck",
    "CertificateCheck",
    "EmulationCheck",
    "Emulator",
    "FailureRate",
    "arrays_of",
    "assert_certificates_hold",
    "assert_certified_agreement",
    "assert_check_verdict",
    "assert_emulated_close",
    "assert_within_bound",
    "assert_within_probabilistic_bound",
    "cancellation_vectors",
    "check_failure_rate",
    "reference_arithmetic",
    "same_sign_vectors",
    "values",
    "wide_range_vectors",
]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'fpanalysis.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

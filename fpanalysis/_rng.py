"""The counter-based random generator's key schedule and its NumPy twin (no numba here, so
that importing fpanalysis stays cheap)."""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def stream_key(seed: int, stream: int = 0) -> np.uint64:
    """Key of the random stream ``(seed, stream)``, computed in plain Python."""
    mask = (1 << 64) - 1

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    return np.uint64(mix((mix(seed & mask) + (stream & mask) * 0x9E3779B97F4A7C15) & mask))


def counter_random_numpy(key: np.uint64, index: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`counter_random` (uint64 arithmetic wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (index.astype(np.uint64) + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))

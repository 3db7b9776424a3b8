"""The counter-based random generator's key schedule and its NumPy twin (no numba here, so
that importing fpanalysis stays cheap)."""

from __future__ import annotations

import numpy as np

#: SplitMix64 constants (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
#: OOPSLA 2014): the golden-ratio increment and the two multipliers of the finaliser.  The numba
#: kernels in :mod:`.bits` use these same values.
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def stream_key(seed: int, stream: int = 0) -> np.uint64:
    """Key of the random stream ``(seed, stream)``, computed in plain Python."""
    mask = (1 << 64) - 1

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * MIX1) & mask
        z = ((z ^ (z >> 27)) * MIX2) & mask
        return z ^ (z >> 31)

    return np.uint64(mix((mix(seed & mask) + (stream & mask) * GOLDEN) & mask))


def counter_random_numpy(key: np.uint64, index: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`counter_random` (uint64 arithmetic wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (index.astype(np.uint64) + np.uint64(1)) * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        return z ^ (z >> np.uint64(31))

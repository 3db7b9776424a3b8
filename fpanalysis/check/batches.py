"""Training batches of the check's runs, for inputs given as one tensor, a tuple of tensors
(multi-input models) or a dict of tensors (Hugging Face style keyword inputs).

The fp16 check (:mod:`fpanalysis.check.run`) and the FP8 check (:mod:`fpanalysis.check.fp8`) draw
their warm-up, measured and dry-run batches here, so that runs given the same seed see the same
batches (docs/theory.md §4.7)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["n_samples", "sample_batches", "take_samples"]


def take_samples(X: Any, idx: Any) -> Any:
    """The samples ``idx`` (index tensor or slice) of every input tensor of ``X``."""
    if isinstance(X, dict):
        return {k: v[idx] for k, v in X.items()}
    if isinstance(X, tuple):
        return tuple(v[idx] for v in X)
    return X[idx]


def n_samples(X: Any) -> int:
    """Number of samples (the first dimension) of ``X``."""
    if isinstance(X, dict):
        return int(next(iter(X.values())).shape[0])
    if isinstance(X, tuple):
        return int(X[0].shape[0])
    return int(X.shape[0])


def sample_batches(X: Any, y: torch.Tensor, batch_size: int, steps: int, seed: int) -> list[tuple[Any, torch.Tensor]]:
    """``steps`` batches of ``batch_size`` samples drawn without replacement within each batch, from
    a generator seeded with ``seed``; the first ``k`` batches of a longer list are the ``k``
    batches of a shorter one (the FP8 check lengthens its dry run this way)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    n = n_samples(X)
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[: min(batch_size, n)]
        out.append((take_samples(X, idx), y[idx]))
    return out

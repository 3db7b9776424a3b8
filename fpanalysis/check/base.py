"""The vocabulary of the check's findings: verdicts, thresholds, a finding and its
machine-readable fix.  Pure data, imported by every other module of the check."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["FIX_NAMES", "SAFE", "SAFE_WITH_CHANGES", "THRESHOLDS", "UNSAFE", "Finding", "Fix"]

SAFE = "SAFE"
SAFE_WITH_CHANGES = "SAFE WITH CHANGES"
UNSAFE = "UNSAFE"

#: The thresholds every finding is compared with (documented in the report).
THRESHOLDS: dict[str, float] = {
    # forward
    "activation_overflow_count": 0,  # any activation above the format's max is a failure
    "activation_headroom_warn": 8.0,  # max|a| within a factor 8 of the max: training may push it over
    "activation_flushed_frac": 0.01,  # more than 1% of nonzero activations would become zero
    "max_overflow_layers_fixable": 3,  # at most this many layers kept in fp32 counts as a change
    # backward (Micikevicius et al., ICLR 2018: loss scaling when gradients fall below 2^-24)
    # gradients below 2^-24 are lost; it matters when they carry a share of the update: more
    # than 1% of the gradient's l1 mass fails, more than 5% of the entries warns
    "grad_lost_mass_frac": 0.01,
    "grad_lost_frac": 0.05,
    "grad_overflow_count": 0,
    "loss_scale_grad_margin": 2.0**-14,  # scaled small gradients should reach the normal range
    "loss_scale_quantile": 0.001,  # ... for all but this fraction of them
    "loss_scale_headroom": 2.0,  # and the largest scaled gradient stays max/headroom below max
    # optimizer
    "adam_v_underflow_frac": 0.01,  # second moment (1-b2) g^2 flushed to zero for >1% of params
    "adam_step_error_frac": 0.01,  # first step non-finite (fail) or off by > 2x (warn) for >1% of params
    # stagnation counted (fraction of nonzero updates lost to rounding, over all parameters): a
    # count alone only warns, since lost updates may not matter; the dry run weighs them
    "stagnation_warn_frac": 0.10,
    # inference agreement with fp32: observed agreement below this fails
    "agreement_fail": 0.99,
    # operations (every aten op, not only layer outputs): any overflow fails; headroom warns
    "op_overflow_count": 0,
    "op_headroom_warn": 8.0,
    # buffers (BatchNorm running statistics, EMAs)
    "buffer_overflow_horizon": 1000,  # a running average predicted to overflow within this many steps fails
    "buffer_eval_error_warn": 0.02,  # the settled running statistic shifts eval-mode normalisation by > 2%
    "buffer_eval_error_fail": 0.10,  # ... by more than 10%
    "buffer_update_lost_warn": 0.10,  # share of a buffer's per-step updates that round away
    "buffer_update_lost_fail": 0.50,
    "buffer_flushed_frac": 0.01,  # share of a buffer's nonzero values that flush to zero
}


@dataclass
class Fix:
    """A proposed change in machine-readable form, so that a dry run can apply and verify it.

    ``name`` is one of :data:`FIX_NAMES`; ``params`` its arguments; ``text`` the sentence shown
    to the user.  Operations are named by ``{"phase", "module", "op", "occurrence", "output"}``
    (as :class:`fpanalysis.nn.observe.OpRecord` records them).
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "text": self.text}


#: Fix vocabulary: ``buffers_fp32`` (params ``buffers``, ``modules``: keep these buffers, and the
#: ops updating them, in fp32), ``fp32_region`` (``ops``: keep these ops in fp32, from an
#: overflowing op up to the op that brings the range back; ``modules``: the modules they run in),
#: ``rescale`` (``op``, ``factor``: scale the op's inputs by ``factor``, e.g. via the data or the
#: weights feeding it), ``loss_scale`` (``scale``), ``fp32_master_weights``, ``stochastic_rounding``,
#: ``adam_eps`` (``eps``), ``optimizer_state_fp32``.
FIX_NAMES = ("buffers_fp32", "fp32_region", "rescale", "loss_scale", "fp32_master_weights",
             "stochastic_rounding", "adam_eps", "optimizer_state_fp32")


@dataclass
class Finding:
    """One examined aspect: what was measured, against what, and what to do about it."""

    check: str
    status: str  # "ok", "warn", "fail" or "skipped" (not examined; the message says why)
    measured: float
    threshold: float
    comparison: str  # how measured relates to threshold, e.g. "> 0"
    message: str
    fix: str | None = None
    fixable: bool = True  # whether the fix keeps the model in (or near) the format
    layer: str | None = None  # module path
    op: str | None = None  # aten operation (e.g. "aten.bmm"), when the finding is about one
    step: int | None = None  # measured step it was first seen at
    fixes: list[Fix] = field(default_factory=list)  # machine-readable form of ``fix``

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("measured", "threshold"):
            v = d[k]
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = str(v)
        return d

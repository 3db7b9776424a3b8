"""FP8 and block-scaled scaling recipes for GEMM operands, as quantise-dequantise functions.

Each recipe maps a tensor to the values an FP8 / MX / NVFP4 GEMM would see in its place and
reports how many elements saturated (were clamped to the format's largest value) and how many
underflowed (nonzero values that became zero).

>>> import numpy as np
>>> from fpanalysis.recipes import current_scaling, DelayedScaling
>>> x = np.array([0.5, -3.0, 1e-7], dtype=np.float32)
>>> r = current_scaling(x, "e4m3")
>>> r.scale, r.values.tolist(), r.underflow    # 0.5 * scale = 74.7 rounds to 72 in E4M3
(149.3333282470703, [0.4821428656578064, -3.0, 0.0], 1)

Recipes (docs/scaled_formats.md gives the sources and the arithmetic):

- per-tensor *current* scaling: ``scale = (fmax / amax(x)) / 2**margin`` from the tensor itself;
- *delayed* scaling: the same formula with ``amax`` the maximum (or most recent) of the amax
  history of earlier steps (:class:`DelayedScaling`; Micikevicius et al., "FP8 Formats for Deep
  Learning", 2022; NVIDIA Transformer Engine);
- per-block scaling: :func:`block_scaling` (MXFP8/6/4, NVFP4; fpanalysis.scaled);
- the E4M3-forward / E5M2-gradient *hybrid*: :func:`recipe_format` picks the element format by
  the operand's role.

Per-tensor quantisation follows Transformer Engine's arithmetic: ``q = sat_fp8(fp32(x * scale))``
(the product in fp32, rounded to nearest even, then converted to FP8 to nearest even, saturating)
and ``values = fp32(q * fp32(1 / scale))``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from .formats import FP8_E4M3FN, FP8_E5M2, FloatFormat, Overflow
from .rounding import round_to

__all__ = [
    "FP8_ELEMENTS",
    "RECIPES",
    "ROLES",
    "DelayedScaling",
    "GemmReport",
    "ScaledOperand",
    "block_scaling",
    "block_scaling_rceil",
    "current_scaling",
    "delayed_saturating_steps",
    "gemm_report",
    "min_history_len",
    "per_tensor_scale",
    "quantize_operand",
    "quantize_per_tensor",
    "recipe_format",
]

# FP8 formats as GEMM operands use them: conversions saturate (Transformer Engine's casts do).
FP8_ELEMENTS: dict[str, FloatFormat] = {
    "e4m3": FP8_E4M3FN.with_(name="e4m3", overflow=Overflow.SATURATE),
    "e5m2": FP8_E5M2.with_(name="e5m2", overflow=Overflow.SATURATE),
}
ROLES = ("activation", "weight", "gradient")


@dataclass
class ScaledOperand:
    """A quantised-dequantised operand.

    Attributes
    ----------
    values : numpy.ndarray (float32)
        What the GEMM sees instead of the input.
    recipe, fmt : str
        Recipe and format names.
    scale : float or None
        Per-tensor scale (``x * scale`` is converted to FP8); ``None`` for block recipes.
    saturated, underflow, n : int
        Elements clamped to the format's largest value, nonzero elements that became zero,
        and the number of elements.
    amax : float
        Largest finite magnitude of the input.
    """

    values: np.ndarray
    recipe: str
    fmt: str
    scale: float | None
    saturated: int
    underflow: int
    n: int
    amax: float

    @property
    def saturation_share(self) -> float:
        return self.saturated / self.n if self.n else 0.0

    @property
    def underflow_share(self) -> float:
        return self.underflow / self.n if self.n else 0.0


def recipe_format(role: str, hybrid: bool = True) -> str:
    """FP8 element format of a GEMM operand: ``"e4m3"`` for activations and weights, and for
    gradients ``"e5m2"`` under the hybrid recipe (Micikevicius et al. 2022), else ``"e4m3"``."""
    if role not in ROLES:
        raise ValueError(f"unknown operand role {role!r}; valid roles are: {', '.join(ROLES)}")
    return "e5m2" if (hybrid and role == "gradient") else "e4m3"


def _fp8(fmt: str) -> FloatFormat:
    if fmt not in FP8_ELEMENTS:
        raise ValueError(f"unknown FP8 format {fmt!r} for per-tensor scaling; valid formats are: e4m3, e5m2")
    return FP8_ELEMENTS[fmt]


def _amax(x: np.ndarray) -> float:
    a = np.abs(x[np.isfinite(x)])
    return float(a.max()) if a.size else 0.0


def per_tensor_scale(amax: float, fmt: str = "e4m3", margin: int = 0) -> float:
    """Transformer Engine's scale ``(fmax / amax) / 2**margin`` in fp32; 1 when ``amax`` is 0
    or not finite (and the fp32 maximum when the quotient overflows)."""
    f = _fp8(fmt)
    if not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin must be a non-negative integer, got {margin!r}")
    if not (amax > 0.0 and np.isfinite(amax)):
        return 1.0
    with np.errstate(over="ignore"):
        s = np.float32(np.float32(f.max) / np.float32(amax)) / np.float32(2.0**margin)
    return float(s) if np.isfinite(s) else float(np.finfo(np.float32).max)


def _as_f32(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"recipes take real arrays, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def quantize_per_tensor(x: Any, scale: float, fmt: str = "e4m3", recipe: str = "per-tensor") -> ScaledOperand:
    """FP8 quantise-dequantise of ``x`` with the given per-tensor ``scale`` (Transformer Engine's
    arithmetic, see the module docstring)."""
    f = _fp8(fmt)
    xf = _as_f32(x)
    s32 = np.float32(scale)
    if not (np.isfinite(s32) and s32 > 0):
        raise ValueError(f"scale must be a positive finite fp32 number, got {scale!r}")
    with np.errstate(over="ignore"):
        xs = xf * s32
    q, st = round_to(xs, f, return_stats=True)
    inv = np.float32(np.float32(1.0) / s32)
    with np.errstate(over="ignore"):
        vals = np.asarray(q, dtype=np.float32) * inv
    # x * scale overflowing fp32 to Inf saturates too (round_to counts finite inputs only)
    over_f32 = int(np.count_nonzero(np.isinf(xs) & np.isfinite(xf)))
    return ScaledOperand(
        vals, recipe, fmt, float(s32), st.overflow + over_f32, st.flushed, xf.size, _amax(xf)
    )


def current_scaling(x: Any, fmt: str = "e4m3", margin: int = 0) -> ScaledOperand:
    """Per-tensor current scaling: the scale comes from this tensor's own amax."""
    xf = _as_f32(x)
    return quantize_per_tensor(xf, per_tensor_scale(_amax(xf), fmt, margin), fmt, "current")


class DelayedScaling:
    """Per-tensor delayed scaling: the scale of step ``t`` comes from the amax history of steps
    before ``t`` (Micikevicius et al. 2022; Transformer Engine's ``DelayedScaling``).

    Parameters
    ----------
    fmt : ``"e4m3"`` or ``"e5m2"``
    history_len : int
        Amax history length (Transformer Engine's ``amax_history_len``).
    margin : int
        ``scale = (fmax / amax) / 2**margin``.
    algo : ``"max"`` or ``"most_recent"``
        Which amax of the history sets the scale.

    The first step, with an empty history, uses scale 1 (Transformer Engine's initial scale);
    when the history's amax is 0 or not finite the previous scale is kept (as Transformer
    Engine does).

    Examples
    --------
    >>> import numpy as np
    >>> d = DelayedScaling("e4m3", history_len=2)
    >>> [d(np.full(4, a, dtype=np.float32)).saturated for a in (1.0, 1.0, 1000.0, 1.0)]
    [0, 0, 4, 0]
    """

    def __init__(self, fmt: str = "e4m3", history_len: int = 1024, margin: int = 0, algo: str = "max") -> None:
        _fp8(fmt)
        if not isinstance(history_len, (int, np.integer)) or history_len < 1:
            raise ValueError(f"history_len must be a positive integer, got {history_len!r}")
        if algo not in ("max", "most_recent"):
            raise ValueError(f"unknown amax algorithm {algo!r}; valid choices are: max, most_recent")
        per_tensor_scale(1.0, fmt, margin)  # validates margin
        self.fmt = fmt
        self.history_len = int(history_len)
        self.margin = int(margin)
        self.algo = algo
        self.history: deque[float] = deque(maxlen=self.history_len)
        self._scale = 1.0

    @property
    def scale(self) -> float:
        """The scale the next call will use."""
        return self._scale

    def __call__(self, x: Any) -> ScaledOperand:
        """Quantise ``x`` with the current scale, then record its amax and update the scale."""
        xf = _as_f32(x)
        res = quantize_per_tensor(xf, self._scale, self.fmt, "delayed")
        self.history.append(res.amax)
        amax = max(self.history) if self.algo == "max" else self.history[-1]
        if amax > 0.0 and np.isfinite(amax):
            self._scale = per_tensor_scale(amax, self.fmt, self.margin)
        return res


def block_scaling(
    x: Any, fmt: str = "mxfp8_e4m3", axis: int = -1, *, mode: str = "nearest-even", seed: Any = None, stream: int = 0
) -> ScaledOperand:
    """Per-block scaling (MXFP8/6/4 or NVFP4, :mod:`fpanalysis.scaled`) along ``axis`` (for a
    GEMM operand, the reduction axis)."""
    from .scaled import quantize_dequantize

    xf = _as_f32(x)
    vals, q = quantize_dequantize(xf, fmt, axis, mode=mode, seed=seed, stream=stream, return_tensor=True)
    return ScaledOperand(vals, "block", q.fmt.name, None, q.saturated, q.underflow, q.n, _amax(xf))


def block_scaling_rceil(x: Any, fmt: str = "mxfp8_e4m3", axis: int = -1) -> ScaledOperand:
    """MX quantise-dequantise with the block scale rounded *up* (Transformer Engine's MXFP8
    quantiser; the "RCEIL" scale of NVIDIA's cuBLAS and of torchao), not the OCP specification's
    ``floor(log2(amax)) - emax_elem`` (:func:`block_scaling`).

    Per block of 32 along ``axis`` (docs/scaled_formats.md): ``v = fp32(amax * fp32(1 / fmax))``
    (``fmax`` the element format's largest value); the biased E8M0 exponent ``e`` is ``v``'s
    fp32 exponent field, plus one when ``v`` is not a power of two (rounding up; the fp32
    subnormal and all-ones-exponent cases as in Transformer Engine's ``float_to_e8m0``);
    elements ``sat(round(fp32(x * 2**(127 - e))))`` (``x * 1`` when ``e == 0``), to nearest even;
    values ``fp32(q * 2**(e - 127))``.  Since ``amax / 2**(e - 127) <= fmax`` (up to the
    rounding of ``1 / fmax``) the block's largest element does not saturate; the price is up to
    one binade less resolution than the specification's scale.  Blocks holding Inf or NaN give
    NaN values.
    """
    from .scaled import _blocks, _check_input, get_scaled_format

    f = get_scaled_format(fmt)
    if f.scale != "e8m0":
        raise ValueError(f"block_scaling_rceil takes an MX format (E8M0 scales), got {f.name!r}")
    arr, ax = _check_input(x, axis)
    xb, L = _blocks(np.asarray(arr, dtype=np.float32), ax, f.block_size)
    ef = f.element_format
    finite = np.isfinite(xb)
    amax = np.where(finite, np.abs(xb), np.float32(0)).max(axis=-1) if xb.size else np.zeros(xb.shape[:-1], np.float32)
    v = (amax.astype(np.float32) * np.float32(np.float32(1.0) / np.float32(ef.max))).astype(np.float32)
    bits = v.view(np.uint32)
    e = ((bits >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64)
    m = bits & np.uint32(0x7FFFFF)
    e = e + ((m > 0) & (e != 0xFE) & ~((e == 0) & (m <= 0x400000)))
    inv = np.where(e == 0, np.float32(1.0), np.ldexp(np.float32(1.0), (127 - e).astype(np.int32))).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        xs = np.where(finite, xb, np.float32(0)) * inv[..., None]
    q, st = round_to(xs, ef, return_stats=True)
    vals = (np.asarray(q, dtype=np.float64) * np.ldexp(1.0, e - 127)[..., None]).astype(np.float32)
    bad = ~finite.all(axis=-1)
    if bad.any():
        vals[bad] = np.nan
    vals = np.moveaxis(vals.reshape(xb.shape[:-2] + (-1,))[..., :L], -1, ax)
    return ScaledOperand(np.ascontiguousarray(vals), "block-rceil", f.name, None, st.overflow, st.flushed,
                         arr.size, _amax(np.asarray(arr, dtype=np.float32)))


# --- per-GEMM summaries (building blocks for the FP8/MX pre-flight check) -------------------

RECIPES = ("current", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4_e2m1", "nvfp4")


def quantize_operand(x: Any, recipe: str, role: str = "activation", axis: int = -1, *, hybrid: bool = True,
                     margin: int = 0) -> ScaledOperand:
    """Quantise-dequantise a GEMM operand under ``recipe``: ``"current"`` (per-tensor current
    scaling, E4M3 or, for gradients under the hybrid recipe, E5M2) or a block-scaled format
    (blocks along ``axis``, the reduction axis)."""
    if recipe == "current":
        return current_scaling(x, recipe_format(role, hybrid), margin)
    if recipe in RECIPES:
        recipe_format(role, hybrid)  # validates the role
        return block_scaling(x, recipe, axis)
    raise ValueError(f"unknown recipe {recipe!r}; valid recipes are: {', '.join(RECIPES)} (delayed scaling: DelayedScaling)")


@dataclass
class GemmReport:
    """Effect of a recipe on one GEMM ``a @ b``.

    ``a`` and ``b``: the two :class:`ScaledOperand` (saturation and underflow shares).
    ``rel_error``: ``||Q(a) Q(b) - a b||_F / ||a b||_F`` with both products in float64, so it
    measures the quantisation of the inputs alone (no accumulation error).
    """

    recipe: str
    a: ScaledOperand
    b: ScaledOperand
    rel_error: float


def gemm_report(a: Any, b: Any, recipe: str, role_a: str = "activation", role_b: str = "weight",
                *, hybrid: bool = True) -> GemmReport:
    """Quantise both operands of ``a @ b`` (2-D; blocks along the reduction axis) and measure
    the relative error of the product against the product of the unquantised fp32 operands."""
    A, B = _as_f32(a), _as_f32(b)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"gemm_report needs 2-D operands with matching inner dimensions, got {A.shape} and {B.shape}")
    qa = quantize_operand(A, recipe, role_a, axis=1, hybrid=hybrid)
    qb = quantize_operand(B, recipe, role_b, axis=0, hybrid=hybrid)
    ref = A.astype(np.float64) @ B.astype(np.float64)
    got = qa.values.astype(np.float64) @ qb.values.astype(np.float64)
    nref = float(np.linalg.norm(ref))
    err = float(np.linalg.norm(got - ref)) / nref if nref > 0 else float(np.linalg.norm(got))
    return GemmReport(recipe, qa, qb, err)


def delayed_saturating_steps(amaxes: Any, history_len: int, fmt: str = "e4m3", margin: int = 0,
                             algo: str = "max") -> int:
    """Steps of an amax sequence at which delayed scaling with this history saturates the
    tensor: ``fp32(amax_t * scale_t)`` rounds above the format's largest value (the first
    step, scale 1, included)."""
    d = DelayedScaling(fmt, history_len, margin, algo)
    n = 0
    for a in np.asarray(amaxes, dtype=np.float32).ravel():
        n += d(np.array([a], dtype=np.float32)).saturated
    return int(n)


def min_history_len(amaxes: Any, candidates: Any = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                    fmt: str = "e4m3", margin: int = 0, max_saturating: int = 0) -> int | None:
    """Shortest amax history (among ``candidates``) with at most ``max_saturating`` saturating
    steps over the amax sequence; ``None`` when none qualifies (then raise the margin)."""
    for h in sorted(int(c) for c in candidates):
        if delayed_saturating_steps(amaxes, h, fmt, margin) <= max_saturating:
            return h
    return None

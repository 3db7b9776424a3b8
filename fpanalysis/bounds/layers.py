"""Local rounding-error bounds of network layers, and how errors pass through them.

Arithmetic model (docs/semantics.md §2, §3): elementwise ops, normalisations and softmax take inputs that
are numbers of ``fmt``, compute in fp32 ("opmath"), and round the output to ``fmt`` once.
So a layer's local error is one rounding, ``u |y| + eta``, plus the (much smaller) error of
the fp32 computation, which each function bounds from an explicit, documented model of that
computation.  Linear layers are in :mod:`fpanalysis.bounds`.

Every local bound takes the reference values (the fp32 run) and an optional ``radius``: a
bound on how far the values actually fed to the layer may be from them (the error propagated
so far).  With ``radius=None`` the bound holds at the reference values themselves (enough for
the first-order bound of docs/theory.md §3.3); with the propagated error as ``radius`` it
holds for every admissible input, which makes the network bound rigorous.

Propagation: ``propagate_*`` functions bound ``|f(x^) - f(x)|`` for the exact layer ``f``
given ``|x^ - x| <= e``; they are exact inequalities (mean value theorem, Lipschitz
constants), not linearisations, except where a slope is taken at a point (``radius=0`` in
:func:`activation_slope`).  Combine them with :func:`fpanalysis.bounds.propagate_elementwise`
and friends.

Recipe: one fp16 layer ``a = phi(W x + b)`` in the fp32-accumulate profile, with fp32 weights
rounded to fp16 and the error ``e_x`` of the incoming activations (rigorous flavour; for the
first-order one, drop the ``radius``/``x_radius`` arguments and add
:func:`fpanalysis.bounds.propagate_linear` for ``|W| e_x``):

>>> import numpy as np
>>> from fpanalysis.bounds import matvec_bound, propagate_add, propagate_elementwise, rounding_error_bound
>>> rng = np.random.default_rng(0)
>>> W, b, x = rng.standard_normal((4, 8)), rng.standard_normal(4), rng.standard_normal(8)
>>> e_x = rounding_error_bound(x, "fp16")                        # the input is rounded too
>>> h, z = W @ x, W @ x + b
>>> e_lin = matvec_bound(W, x, "fp16", "fp32-accumulate", x_radius=e_x, round_weights=True)
>>> e_pre = propagate_add(e_lin, rounding_error_bound(b, "fp16"))
>>> e_z = propagate_add(e_pre, local=add_local_bound(h, b, "fp16", radius=e_pre))
>>> e_a = propagate_elementwise(e_z, activation_slope("gelu", z, radius=e_z),
...                             activation_local_bound("gelu", z, "fp16", radius=e_z))
>>> e_a.kind, e_a.value.shape, bool(e_a.max() < 0.05)
('deterministic', (4,), True)

Local bounds and slopes on their own:

>>> from fpanalysis.bounds.layers import activation_local_bound, activation_slope
>>> z = np.array([-3.0, 0.0, 2.0])
>>> np.round(activation_local_bound("gelu", z, "fp16").value, 7).tolist()
[3.4e-06, 0.0, 0.0009563]
>>> activation_slope("relu", z).tolist()
[0.0, 0.0, 1.0]
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
from scipy import special

from ..formats import get_format
from ..rounding import RoundingMode
from .accumulation import (
    _PAD,
    ArrayLike,
    Bound,
    Fmt,
    _as_bound,
    _combine,
    final_rounding,
    _radius,
    gamma,
    matmul_bound,
    underflow_unit,
    unit_roundoff,
)

__all__ = [
    "ACTIVATIONS",
    "OPMATH_ULPS",
    "activation",
    "activation_derivative",
    "activation_local_bound",
    "activation_slope",
    "add_local_bound",
    "attention_bound",
    "avgpool_local_bound",
    "batchnorm_local_bound",
    "batchnorm_param_error",
    "layernorm_local_bound",
    "log_softmax_local_bound",
    "propagate_layernorm",
    "propagate_log_softmax",
    "propagate_softmax",
    "softmax_local_bound",
]

ACTIVATIONS = ("identity", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu")
#: Assumed accuracy, in units of fp32 roundoff, of an fp32 library function (exp, erf, tanh,
#: ...): torch's vectorised (Sleef) and libm implementations are within 1-4 ulp.
OPMATH_ULPS = 8
_U32 = 2.0**-24
_ETA32 = 2.0**-150
_FP32_MAX = float(np.finfo(np.float32).max)
_FP32_MIN = 2.0**-126
_FP32_LOG_MIN = math.log(2.0**-126)  # -87.34: below it sigmoid is subnormal or 0 in fp32
_K = math.sqrt(2.0 / math.pi)
_C = 0.044715


# --------------------------------------------------------------------------------------------
# Activations: reference values, derivatives, critical points
# --------------------------------------------------------------------------------------------
def _name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    key = {"gelu_erf": "gelu", "swish": "silu", "logistic": "sigmoid", "none": "identity"}.get(key, key)
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; supported activations are: {', '.join(ACTIVATIONS)}")
    return key


def activation(name: str, z: ArrayLike) -> np.ndarray:
    """Reference value of an activation, in float64 (accurate to a few float64 ulps).

    GELU is ``x Phi(x)`` (``0.5 x erfc(-x / sqrt 2)``); ``gelu_tanh`` is the tanh
    approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` evaluated as
    ``x expit(2 w)`` to avoid cancellation; SiLU is ``x sigmoid(x)``.

    >>> activation("silu", [0.0, 1.0]).round(6).tolist()
    [0.0, 0.731059]
    """
    n = _name(name)
    t = np.asarray(z, dtype=np.float64)
    if n == "identity":
        return t.copy()
    if n == "relu":
        return np.maximum(t, 0.0)
    if n == "gelu":
        return 0.5 * t * special.erfc(-t / math.sqrt(2.0))
    if n == "gelu_tanh":
        with np.errstate(over="ignore"):
            return t * special.expit(2.0 * _K * (t + _C * t**3))
    if n == "tanh":
        return np.tanh(t)
    if n == "sigmoid":
        return special.expit(t)
    return t * special.expit(t)


def activation_derivative(name: str, z: ArrayLike) -> np.ndarray:
    """``phi'(z)`` in float64 (ReLU: 1 for ``z > 0``, else 0).

    >>> activation_derivative("tanh", [0.0]).tolist(), activation_derivative("sigmoid", [0.0]).tolist()
    ([1.0], [0.25])
    """
    n = _name(name)
    t = np.asarray(z, dtype=np.float64)
    with np.errstate(over="ignore"):
        if n == "identity":
            return np.ones_like(t)
        if n == "relu":
            return (t > 0).astype(np.float64)
        if n == "gelu":
            return 0.5 * special.erfc(-t / math.sqrt(2.0)) + t * np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
        if n == "gelu_tanh":
            w = _K * (t + _C * t**3)
            s_plus, s_minus = special.expit(2 * w), special.expit(-2 * w)  # (1 +- tanh w) / 2
            return s_plus + 2.0 * t * s_plus * s_minus * _K * (1 + 3 * _C * t * t)
        if n == "tanh":
            return 1.0 - np.tanh(t) ** 2
        sg = special.expit(t)
        if n == "sigmoid":
            return sg * (1.0 - sg)
        return sg * (1.0 + t * (1.0 - sg))


def _second_derivative(n: str, t: float) -> float:
    if n == "gelu":
        return math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi) * (2.0 - t * t)
    if n == "gelu_tanh":
        w, w1, w2 = _K * (t + _C * t**3), _K * (1 + 3 * _C * t * t), 6 * _K * _C * t
        th = math.tanh(w)
        return (1 - th * th) * (w1 - t * th * w1 * w1 + 0.5 * t * w2)
    sg = 1.0 / (1.0 + math.exp(-t))  # silu
    return sg * (1 - sg) * (2.0 + t * (1 - 2 * sg))


@functools.cache
def _critical_points(n: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(minimisers of phi, zeros of phi'') for the non-monotone activations.

    GELU: min at ~ -0.7518 (phi' = 0), inflections at +-sqrt(2); SiLU: min at ~ -1.2785,
    inflections at +-2.3994 (``t tanh(t/2) = 2``); gelu_tanh: numerically.  phi'' is even for
    all three (phi' - 1/2 is odd), so the inflections are symmetric.
    """
    if n not in ("gelu", "gelu_tanh", "silu"):
        return (), ()
    from scipy import optimize

    d1 = lambda t: float(activation_derivative(n, t))
    tmin = optimize.brentq(d1, -3.0, -0.1, xtol=1e-15, rtol=4 * np.finfo(float).eps)
    t2 = optimize.brentq(lambda t: _second_derivative(n, t), 0.5, 4.0, xtol=1e-15, rtol=4 * np.finfo(float).eps)
    return (tmin,), (-t2, t2)


def _sup_abs_on_interval(f, lo: np.ndarray, hi: np.ndarray, points: tuple[float, ...]) -> np.ndarray:
    """max |f| over [lo, hi] when |f| is monotone between consecutive ``points``."""
    out = np.maximum(np.abs(f(lo)), np.abs(f(hi)))
    for c in points:
        inside = (lo <= c) & (c <= hi)
        if inside.any():
            out = np.where(inside, np.maximum(out, abs(float(f(np.float64(c))))), out)
    return out


def _interval(z: ArrayLike, radius: ArrayLike | Bound | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, Bound | None]:
    t = np.asarray(z, dtype=np.float64)
    r, rb = _radius(radius, t.shape)
    r = np.zeros_like(t) if r is None else r
    return t, t - r, t + r, rb


def activation_slope(name: str, z: ArrayLike, radius: ArrayLike | Bound | None = None) -> np.ndarray:
    """``sup |phi'|`` over ``[z - radius, z + radius]`` (``|phi'(z)|`` for ``radius=None``).

    With the propagated error as radius, ``|phi(z^) - phi(z)| <= slope * |z^ - z|`` holds
    exactly (mean value theorem); at a point it is the first-order slope of docs/theory.md §3.3
    section 3 (which ignores ReLU's kink).  The supremum uses the critical points of
    ``phi'``: 0 for tanh/sigmoid, the inflection points for GELU/SiLU.

    >>> activation_slope("relu", [-1.0, -1.0], radius=[0.5, 2.0]).tolist()
    [0.0, 1.0]
    >>> round(float(activation_slope("gelu", 0.0, radius=3.0)), 4)   # max of GELU' at sqrt(2)
    1.1289
    """
    n = _name(name)
    t, lo, hi, _ = _interval(z, radius)
    if n == "identity":
        return np.ones_like(t)
    if n == "relu":
        return (hi > 0).astype(np.float64)
    if n in ("tanh", "sigmoid"):
        near0 = np.clip(0.0, lo, hi)
        return activation_derivative(n, near0) * _PAD
    pts = _critical_points(n)[1]
    return _sup_abs_on_interval(lambda v: activation_derivative(n, v), lo, hi, pts) * _PAD


def activation_local_bound(name: str, z: ArrayLike, fmt: Fmt = "fp16", *, radius: ArrayLike | Bound | None = None,
                           mode: str | RoundingMode = "nearest-even", opmath_ulps: int = OPMATH_ULPS) -> Bound:
    """Local error of ``a^ = fl(phi32(z^))``: an activation of an ``fmt`` input computed in fp32
    and rounded once to ``fmt``.

    ::

        |a^ - phi(z^)| <= min(u Y + eta, Y) + E32,   Y = sup|phi| + E32,
        E32 = c u32 (sup|phi| + a (|z| + r)) + c eta32

    over ``z^`` in ``[z - r, z + r]``.  Model of the fp32 function (an assumption, checked
    exhaustively over fp16 and bf16 inputs against torch 2.13 CPU in the tests): relative error
    at most ``c = opmath_ulps`` fp32 roundoffs, except (i) GELU (both forms), computed as
    ``0.5 x (1 + erf(..))``: the cancellation in ``1 + erf`` for ``x < 0`` makes the error
    absolute, ``a = 1`` times ``|x|``; (ii) sigmoid and SiLU below ``log(2**-126)`` (only
    reachable in bf16), where fp32 ``exp(-x)`` overflows and the result is 0 or subnormal: the
    error is then up to ``|phi|`` itself; (iii) fp32 subnormal inputs or results may be flushed
    to zero (torch's bf16 GELU does): error up to ``|phi|`` where the input or the result is
    below ``2**-126``.  ReLU and identity are exact (``0``).  GELU's fp32
    intermediate ``x (1 + erf)`` overflows for ``|x| >= 2**127`` (bf16 only): ``inf`` there.

    >>> activation_local_bound("relu", [-1.0, 3.0]).value.tolist()
    [0.0, 0.0]
    >>> float(activation_local_bound("tanh", 1.0).value) < 2**-11 * 0.77
    True
    """
    n = _name(name)
    f = get_format(fmt)
    t, lo, hi, rb = _interval(z, radius)
    if n in ("identity", "relu"):
        return _combine(np.zeros_like(t), rb, note=f"{n}: exact")
    pts = _critical_points(n)[0]
    sup_phi = _sup_abs_on_interval(lambda v: activation(n, v), lo, hi, pts) * _PAD
    absorb = 1.0 if n in ("gelu", "gelu_tanh") else 0.0
    c = float(opmath_ulps)
    zmax = np.maximum(np.abs(lo), np.abs(hi))
    e32 = c * _U32 * (sup_phi + absorb * zmax) + c * _ETA32
    # fp32 subnormal inputs or results may be flushed to zero (torch's bf16 GELU does): the error
    # is then at most |phi| <= 1.13 * 2**-126 there (every phi here has phi(0) = 0 or slope < 1.13).
    tiny = (np.minimum(np.abs(lo), np.abs(hi)) * (lo * hi > 0) < _FP32_MIN) | (sup_phi < 1.13 * _FP32_MIN)
    e32 = e32 + np.where(tiny, np.minimum(sup_phi, 1.13 * _FP32_MIN), 0.0)
    if n in ("sigmoid", "silu"):  # exp(-x) overflows / sigmoid underflows in fp32 below -87.33:
        below = lo < _FP32_LOG_MIN  # the fp32 result is 0 or subnormal, off by up to |phi| itself
        tail = np.abs(activation(n, np.minimum(hi, _FP32_LOG_MIN))) * _PAD + c * _ETA32 * (1.0 + zmax)
        e32 = e32 + np.where(below, tail, 0.0)
    u, eta = unit_roundoff(f, mode), underflow_unit(f, mode)
    val = final_rounding(sup_phi + e32, u, eta, u == f.u) + e32
    ok = sup_phi + e32 <= f.max
    if absorb:  # 0.5 * x * (1 + erf): x (1 + erf) reaches 2|x| in fp32 (torch overflows there)
        ok &= 2.0 * zmax <= _FP32_MAX
    val = np.where(ok, val * _PAD, np.inf)
    return _combine(val, rb, note=f"{n}: u|phi| + fp32 opmath")


# --------------------------------------------------------------------------------------------
# Additions, pooling, batch norm
# --------------------------------------------------------------------------------------------
def add_local_bound(a: ArrayLike, b: ArrayLike, fmt: Fmt = "fp16", *, radius: ArrayLike | Bound | None = None,
                    mode: str | RoundingMode = "nearest-even") -> Bound:
    """Local error of ``fl(a^ + b^)`` for ``fmt`` inputs (bias add, residual add): ``u |a + b|``.

    One correctly rounded addition (fp32 opmath then one rounding is correctly rounded, since
    ``24 >= 2 p + 2`` for fp16/bf16).  With gradual underflow a sum in the subnormal range is
    exact, so there is no ``eta`` term; with flush-to-zero ``eta = min_normal``.  ``radius``
    bounds ``|(a^ + b^) - (a + b)|``.

    >>> (add_local_bound([1.0, 1e-6], [1.0, 0.0], "fp16").value / 2**-11).round(9).tolist()
    [2.0, 1e-06]
    """
    f = get_format(fmt)
    s = np.abs(np.asarray(a, dtype=np.float64) + np.asarray(b, dtype=np.float64))
    r, rb = _radius(radius, s.shape)
    S = s * (1 + 2 * 2.0**-53) + (0.0 if r is None else r)
    u = unit_roundoff(f, mode)
    eta = 0.0 if f.subnormals else f.min_normal
    val = np.where(S <= f.max, final_rounding(S, u, eta, u == f.u) * _PAD, np.inf)
    return _combine(val, rb, note="u|a + b|")


def avgpool_local_bound(mean: ArrayLike, mean_abs: ArrayLike, k: int, fmt: Fmt = "fp16", *,
                        radius: ArrayLike | Bound | None = None, mode: str | RoundingMode = "nearest-even") -> Bound:
    """Local error of average pooling over ``k`` values (fp32 sum, scaled by ``1/k``, rounded).

    ``mean`` and ``mean_abs`` are the pooled values of ``x`` and ``|x|`` (any pooling
    geometry; ``k`` is the divisor).  fp32 part: ``k - 1`` additions, a rounded reciprocal and
    a product, ``|t - mean| <= gamma_{k+1}(u32) mean|x| + eta32`` terms; then one rounding::

        |y^ - mean| <= min(u T + eta, T) + E32,   T = |mean| + E32.

    ``radius``: the pooled propagated error (average pooling is linear, so the propagated
    error is the average-pooled error bound; max pooling is exact and 1-Lipschitz in the
    max-norm of its window, so its propagated error is the max-pooled error bound).

    >>> round(float(avgpool_local_bound(0.5, 0.5, 4, "fp16").value), 7)
    0.0002443
    """
    f = get_format(fmt)
    m = np.abs(np.asarray(mean, dtype=np.float64))
    ma = np.asarray(mean_abs, dtype=np.float64)
    r, rb = _radius(radius, m.shape)
    if r is not None:
        m, ma = m + r, ma + r
    e32 = gamma(k + 1, _U32) * ma * (1 + 2 * (k + 2) * 2.0**-53) + np.minimum((k + 1) * _ETA32, ma)
    u, eta = unit_roundoff(f, mode), underflow_unit(f, mode)
    T = m + e32
    val = np.where(T <= f.max, (final_rounding(T, u, eta, u == f.u) + e32) * _PAD, np.inf)
    return _combine(val, rb, note="avg pool: u|mean| + gamma_{k+1}(u32) mean|x|")


def _channel(p: ArrayLike | None, ndim: int, axis: int, default: float) -> np.ndarray:
    v = np.asarray(default if p is None else p, dtype=np.float64)
    if v.ndim == 0:
        return v
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def batchnorm_local_bound(x: ArrayLike, mean: ArrayLike, var: ArrayLike, weight: ArrayLike | None = None,
                          bias: ArrayLike | None = None, eps: float = 1e-5, fmt: Fmt = "fp16", *, axis: int = 1,
                          radius: ArrayLike | Bound | None = None,
                          mode: str | RoundingMode = "nearest-even") -> Bound:
    """Local error of inference batch norm ``y = alpha x + beta``, ``alpha = w / sqrt(var + eps)``,
    ``beta = b - mean alpha``, computed in fp32 from ``fmt`` inputs and parameters, rounded once.

    Model of the fp32 part (torch CPU computes alpha, beta, then ``x alpha + beta``): at most 8
    roundings along any path, so ``E32 = gamma_8(u32) (|x||alpha| + |mean||alpha| + |b|) + 8 eta32``;
    then ``min(u Y + eta, Y) + E32`` with ``Y = |y| + |alpha| r + E32``.  Parameters are
    per channel along ``axis``; their rounding from fp32 is :func:`batchnorm_param_error`.

    >>> x = np.ones((2, 3, 4, 4)); ch = np.ones(3)
    >>> b = batchnorm_local_bound(x, 0 * ch, ch, ch, ch, 0.0, "fp16")
    >>> b.value.shape, round(b.max(), 7)
    ((2, 3, 4, 4), 0.0009775)
    """
    f = get_format(fmt)
    xf = np.asarray(x, dtype=np.float64)
    nd = xf.ndim
    m, v = _channel(mean, nd, axis, 0.0), _channel(var, nd, axis, 1.0)
    w, b = _channel(weight, nd, axis, 1.0), _channel(bias, nd, axis, 0.0)
    alpha = w / np.sqrt(v + eps)
    y = alpha * (xf - m) + b
    r, rb = _radius(radius, xf.shape)
    X = np.abs(xf) + (0.0 if r is None else r)
    aa = np.abs(alpha) * _PAD
    e32 = gamma(8, _U32) * (X * aa + np.abs(m) * aa + np.abs(b)) + 8 * _ETA32
    Y = np.abs(y) * _PAD + (0.0 if r is None else aa * r) + e32
    u, eta = unit_roundoff(f, mode), underflow_unit(f, mode)
    val = np.where(Y <= f.max, (final_rounding(Y, u, eta, u == f.u) + e32) * _PAD, np.inf)
    return _combine(val, rb, note="batch norm: u|y| + gamma_8(u32)(...)")


def batchnorm_param_error(x: ArrayLike, mean: ArrayLike, var: ArrayLike, weight: ArrayLike | None = None,
                          bias: ArrayLike | None = None, eps: float = 1e-5, fmt: Fmt = "fp16", *, axis: int = 1,
                          mode: str | RoundingMode = "nearest-even") -> Bound:
    """Change of the exact batch-norm output when its fp32 parameters are rounded to ``fmt``
    (``model.half()`` rounds weight, bias and the running statistics).

    With ``e_p = u |p| + eta`` for each parameter, ``s = sqrt(var + eps)``,
    ``s_lo/hi = sqrt(max(var -+ e_var, 0) + eps)`` (interval arithmetic)::

        |d alpha| <= e_w / s_lo + |w| max(1/s_lo - 1/s, 1/s - 1/s_hi)
        |d beta|  <= e_b + e_mean (|alpha| + |d alpha|) + |mean| |d alpha|
        |d y|     <= |x| |d alpha| + |d beta|

    >>> round(float(batchnorm_param_error(1.0, 0.0, 1.0, 1.0, 0.0, 0.0, "fp16").value), 6)
    0.000733
    """
    f = get_format(fmt)
    xf = np.asarray(x, dtype=np.float64)
    nd = xf.ndim
    m, v = _channel(mean, nd, axis, 0.0), _channel(var, nd, axis, 1.0)
    w, b = _channel(weight, nd, axis, 1.0), _channel(bias, nd, axis, 0.0)
    u, eta = unit_roundoff(f, mode), underflow_unit(f, mode)
    e = lambda p, given: (u * np.abs(p) + eta) if given is not None else 0.0 * p
    ew, eb, em, ev = e(w, weight), e(b, bias), e(m, mean), e(v, var)
    s = np.sqrt(v + eps)
    s_lo = np.sqrt(np.maximum(v - ev, 0.0) + eps)
    s_hi = np.sqrt(v + ev + eps)
    with np.errstate(divide="ignore"):
        inv_lo = np.where(s_lo > 0, 1.0 / s_lo, np.inf)
        dinv = np.maximum(inv_lo - 1.0 / s, 1.0 / s - 1.0 / s_hi)
        dalpha = np.where(np.isfinite(inv_lo), ew * inv_lo + np.abs(w) * dinv, np.inf)
    alpha = np.abs(w) / s
    dbeta = eb + em * (alpha + dalpha) + np.abs(m) * dalpha
    val = (np.abs(xf) * dalpha + dbeta) * (1 + 2.0**-40)
    return Bound(np.broadcast_to(val, np.broadcast_shapes(val.shape, xf.shape)).copy(), note="rounded BN parameters")


# --------------------------------------------------------------------------------------------
# Layer norm
# --------------------------------------------------------------------------------------------
def _norm_axes(ndim: int, normalized_ndim: int) -> tuple[int, ...]:
    return tuple(range(ndim - normalized_ndim, ndim))


def _ln_stats(xf: np.ndarray, axes: tuple[int, ...], eps: float):
    mu = xf.mean(axis=axes, keepdims=True)
    c = xf - mu
    var = (c * c).mean(axis=axes, keepdims=True)
    return mu, c, var, np.sqrt(var + eps)


def propagate_layernorm(e_in: ArrayLike | Bound, x: ArrayLike, weight: ArrayLike | None = None, eps: float = 1e-5, *,
                        normalized_ndim: int = 1) -> Bound:
    """Bound on ``|LN(x^) - LN(x)|`` for ``|x^ - x| <= e`` (exact layer norm, rigorous).

    With ``c = x - mean(x)``, ``s = sqrt(var(x) + eps)`` over the normalised axes: the centred
    perturbation obeys ``|c^_i - c_i| <= e_i + mean(e)``, and ``sqrt(|c|^2/n + eps)`` is
    1-Lipschitz in ``|.|_2 / sqrt(n)``, so ``|s^ - s| <= rho = rms(e)``.  Hence::

        |d y_i| <= |w_i| ((e_i + mean e) / (s - rho) + |c_i| rho / (s (s - rho))),

    ``inf`` where ``rho >= s``.  The bias does not change the error.

    >>> x = np.array([[1.0, 2.0, 3.0, 4.0]])
    >>> np.round(propagate_layernorm(np.full((1, 4), 1e-3), x).value, 5).tolist()
    [[0.00299, 0.00219, 0.00219, 0.00299]]
    """
    e = _as_bound(e_in)
    xf = np.asarray(x, dtype=np.float64)
    axes = _norm_axes(xf.ndim, normalized_ndim)
    ev = np.broadcast_to(np.asarray(e.value, dtype=np.float64), xf.shape)
    _, c, _, s = _ln_stats(xf, axes, eps)
    rho = np.sqrt((ev * ev).mean(axis=axes, keepdims=True))
    f_ = ev + ev.mean(axis=axes, keepdims=True)
    w = np.abs(np.asarray(1.0 if weight is None else weight, dtype=np.float64))
    ok = s > rho * (1 + 1e-12)
    gap = np.where(ok, s - rho, 1.0)
    val = np.where(ok, w * (f_ / gap + np.abs(c) * rho / (s * gap)) * (1 + 2.0**-40), np.inf)
    return _combine(val, e, note="layer norm (rigorous)")


def layernorm_local_bound(x: ArrayLike, weight: ArrayLike | None = None, bias: ArrayLike | None = None,
                          eps: float = 1e-5, fmt: Fmt = "fp16", *, normalized_ndim: int = 1,
                          radius: ArrayLike | Bound | None = None,
                          mode: str | RoundingMode = "nearest-even") -> Bound:
    """Local error of layer norm computed in fp32 from ``fmt`` inputs, rounded once to ``fmt``.

    Model of the fp32 part (n = number of normalised elements; ``M`` = mean|x|, ``v`` the
    variance, ``D_i = |x_i - mean|``, all enlarged by ``radius``):

    * mean: ``|mu^ - mu| <= dmu = gamma_{2n+2}(u32) M + eta32``;
    * variance, two-pass or Welford (Chan, Golub & LeVeque, Amer. Statist. 37(3), 1983: the
      updating formulas' error carries ``kappa = sqrt(1 + mu^2 / v)``):
      ``|v^ - v| <= dv = gamma_{2n+6}(u32) (v + sqrt(v) M) + 2 dmu sqrt(v) + dmu^2 + (n+1) eta32``;
    * ``rstd = 1/sqrt(v^ + eps)`` with relative error ``rho_r <= (1+u32)^2 / sqrt(1 - rho_v) - 1``,
      ``rho_v = (dv (1+u32) + u32 (v + eps)) / (v + eps)``;
    * output by either ``((x - mu^) rstd) w + b`` or ``x (rstd w) + (b - rstd w mu^)``
      (torch CPU): the larger of the two forms' bounds ``E32``;

    then ``min(u Y + eta, Y) + E32``, ``Y = |y| + (propagated radius) + E32``.

    >>> x = np.array([[1.0, 2.0, 3.0, 4.0]])
    >>> b = layernorm_local_bound(x, fmt="fp16")
    >>> bool(np.all(b.value < 2**-11 * 1.4)), b.value.shape      # max |y| = 1.342
    (True, (1, 4))
    """
    f = get_format(fmt)
    xf = np.asarray(x, dtype=np.float64)
    axes = _norm_axes(xf.ndim, normalized_ndim)
    n = int(np.prod([xf.shape[a] for a in axes]))
    mu, c, var, s = _ln_stats(xf, axes, eps)
    w = np.asarray(1.0 if weight is None else weight, dtype=np.float64)
    bb = np.asarray(0.0 if bias is None else bias, dtype=np.float64)
    aw, ab = np.abs(w), np.abs(bb)
    y = w * c / s + bb
    r, rb = _radius(radius, xf.shape)
    r = np.zeros_like(xf) if r is None else r
    rm = r.mean(axis=axes, keepdims=True)
    rr = np.sqrt((r * r).mean(axis=axes, keepdims=True))
    u = _U32
    sd = np.sqrt(var)
    v_hi = (sd + rr) ** 2
    v_lo = np.maximum(sd - rr, 0.0) ** 2
    M = (np.abs(xf) + r).mean(axis=axes, keepdims=True)
    Mmu = np.abs(mu) + rm
    D = np.abs(c) + r + rm
    dmu = gamma(2 * n + 2, u) * M + _ETA32
    dv = gamma(2 * n + 6, u) * (v_hi + np.sqrt(v_hi) * M) + 2 * dmu * np.sqrt(v_hi) + dmu**2 + (n + 1) * _ETA32
    rho_v = (dv * (1 + u) + u * (v_hi + eps)) / (v_lo + eps)
    ok = rho_v < 1
    rv = np.where(ok, rho_v, 0.0)
    rho_r = np.maximum((1 + u) ** 2 / np.sqrt(1 - rv) - 1, 1 - (1 - u) ** 2 / np.sqrt(1 + rv))
    Rinv = 1.0 / np.sqrt(v_lo + eps)
    X = np.abs(xf) + r
    # form 1: ((x - mu^) * rstd) * w + b
    dd = dmu + u * (D + dmu)
    e_pi = dd * Rinv * (1 + rho_r) + D * Rinv * rho_r
    E1 = (1 + u) ** 3 * aw * e_pi + 3 * u * (1 + u) ** 2 * aw * D * Rinv + u * ab
    # form 2: x * (rstd * w) + (b - (rstd * w) * mu^)
    A = Rinv * aw
    da = A * (rho_r * (1 + u) + u)
    dm = (da * (Mmu + dmu) + A * dmu) * (1 + u) + u * A * Mmu
    E2 = ((X * da * (1 + u) + u * X * A) + dm * (1 + u) + u * (ab + A * Mmu)) * (1 + u)
    Yprop = propagate_layernorm(r, xf, w, eps, normalized_ndim=normalized_ndim).value if radius is not None else 0.0
    Ybase = np.minimum(np.abs(y) + Yprop, aw * D * Rinv + ab)
    E32 = np.maximum(E1, E2 + u * (Ybase + E1)) + 6 * _ETA32 * (1 + aw)
    Y = Ybase * _PAD + E32
    uf, eta = unit_roundoff(f, mode), underflow_unit(f, mode)
    val = (final_rounding(Y, uf, eta, uf == f.u) + E32) * _PAD
    val = np.where(ok & (Y <= f.max), val, np.inf)
    return _combine(val, rb, note="layer norm: u|y| + fp32 statistics")


# --------------------------------------------------------------------------------------------
# Softmax and log-softmax
# --------------------------------------------------------------------------------------------
class _SoftmaxParts(NamedTuple):
    y_up: np.ndarray  # upper bound on softmax(x^)
    d: np.ndarray  # x - max x
    Dabs: np.ndarray  # upper bound on |x^ - max x^|
    R: np.ndarray  # r_i + max r
    m: np.ndarray  # max x
    n: int
    rho_s: np.ndarray  # relative error bound of the fp32 sum S^ (S >= 1)
    rb: Bound | None
    r_e: np.ndarray  # relative error bound of exp32(d^)
    c: float
    r: np.ndarray  # radius


def _softmax_parts(x: ArrayLike, axis: int, radius: ArrayLike | Bound | None, exp_ulps: int) -> _SoftmaxParts:
    xf = np.asarray(x, dtype=np.float64)
    if not np.isfinite(xf).all():
        raise ValueError("softmax bounds need finite inputs (masking with -inf is not supported)")
    r, rb = _radius(radius, xf.shape)
    r = np.zeros_like(xf) if r is None else r
    R = r + r.max(axis=axis, keepdims=True)  # |(x^_i - max x^) - (x_i - max x)| <= R_i
    m = xf.max(axis=axis, keepdims=True)
    d = xf - m
    y = np.exp(d)
    y = y / y.sum(axis=axis, keepdims=True)
    y_up = np.minimum(1.0, y * np.exp(R) * (1 + 2.0**-40))
    Dabs = np.abs(d) + R
    n = xf.shape[axis]
    c = float(exp_ulps)
    with np.errstate(over="ignore"):
        r_e = (1 + np.expm1(Dabs * _U32)) * (1 + c * _U32) - 1  # relative error of exp32(d^)
    g = gamma(max(n - 1, 0), _U32)
    with np.errstate(invalid="ignore"):
        ssum = np.where(y_up > 0, y_up * r_e, 0.0).sum(axis=axis, keepdims=True)
    rho_s = (1 + g) * (ssum + n * c * _ETA32) + g  # |S^ - S| / S, S >= 1
    return _SoftmaxParts(y_up, d, Dabs, R, m, n, rho_s, rb, r_e, c, r)


def softmax_local_bound(x: ArrayLike, fmt: Fmt = "fp16", *, axis: int = -1, radius: ArrayLike | Bound | None = None,
                        exp_ulps: int = OPMATH_ULPS, mode: str | RoundingMode = "nearest-even") -> Bound:
    """Local error of softmax computed in fp32 from ``fmt`` inputs, rounded once to ``fmt``.

    fp32 model: ``d = fl(x - max)`` (relative ``u32``, so ``exp`` gains a factor
    ``exp(|d| u32)``), ``e = exp32(d)`` within ``c`` ulps (+``c eta32``), ``S`` summed
    (``gamma_{n-1}(u32)``, positive terms), ``y = e / S`` or ``e * (1/S)`` (2 roundings).
    With ``r_i`` the relative error of ``e_i`` and ``S >= 1``::

        rho_S = (1 + gamma_{n-1}) (sum_j y_j r_j + n c eta32) + gamma_{n-1}
        E32_i = y_i ((1 + r_i)(1 + u32)^2 / (1 - rho_S) - 1) + c eta32 (1+u32)^2/(1-rho_S) + 2 eta32

    then ``min(u Y + eta, Y) + E32`` with ``Y = y + E32``; under a radius, ``y`` is replaced by
    its upper bound ``y exp(r_i + max r)``.

    >>> b = softmax_local_bound(np.array([[0.0, 1.0, 2.0]]), "fp16")
    >>> bool(np.all(b.value < 2**-11 * 0.67 * 1.01))
    True
    """
    f = get_format(fmt)
    sp = _softmax_parts(x, axis, radius, exp_ulps)
    y_up, rho_s, rb, r_e, c = sp.y_up, sp.rho_s, sp.rb, sp.r_e, sp.c
    ok = rho_s < 1
    den = np.where(ok, 1 - rho_s, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        rel = np.where(y_up > 0, y_up * ((1 + r_e) * (1 + _U32) ** 2 / den - 1), 0.0)
    E32 = rel + c * _ETA32 * (1 + _U32) ** 2 / den + 2 * _ETA32
    Y = y_up + E32
    u, eta = unit_roundoff(f, mode), underflow_unit(f, mode)
    val = np.where(ok, (final_rounding(Y, u, eta, u == f.u) + E32) * _PAD, np.inf)
    return _combine(val, rb, note="softmax: u y + fp32 opmath")


def log_softmax_local_bound(x: ArrayLike, fmt: Fmt = "fp16", *, axis: int = -1,
                            radius: ArrayLike | Bound | None = None, exp_ulps: int = OPMATH_ULPS,
                            fmt_intermediates: bool = True,
                            mode: str | RoundingMode = "nearest-even") -> Bound:
    """Local error of log-softmax ``y_i = (x_i - max) - log S`` in fp32, rounded to ``fmt``.

    With ``rho_S`` as in :func:`softmax_local_bound`: ``S^`` has relative error ``rho_S``, or
    ``(1 + rho_S)(1 + u) - 1`` when it is stored in ``fmt`` (``fmt_intermediates``: torch's CPU
    kernel keeps the sum and its log in the input dtype, measured on torch 2.13); so
    ``lam_S = -log(1 - rho_S')`` bounds ``|log S^ - log S|`` and ``L = log n + lam_S`` bounds
    ``log S^``.  The log costs ``c u32 L``, storing it in ``fmt`` ``u L + eta``: ``E_L``.
    Covering both evaluation orders ``(x - max) - log S`` and ``x - (max + log S)``::

        E32_i = (1+u32)^2 (u32 (|d_i| + |max| + L) + E_L) + u32 Y_i

    then ``min(u Y + eta, Y) + E32``, ``Y_i = |y_i| + r_i + max r``.

    >>> b = log_softmax_local_bound(np.array([[0.0, 1.0, 2.0]]), "fp16")
    >>> np.round(b.value / 2**-11, 2).tolist()      # u |y| + u log S + u + ...
    [[4.51, 3.51, 2.51]]
    """
    f = get_format(fmt)
    sp = _softmax_parts(x, axis, radius, exp_ulps)
    d, Dabs, R, m, n, rho_s, rb, c, r = sp.d, sp.Dabs, sp.R, sp.m, sp.n, sp.rho_s, sp.rb, sp.c, sp.r
    u, eta = unit_roundoff(f, mode), underflow_unit(f, mode)
    if fmt_intermediates:
        rho_s = (1 + rho_s) * (1 + u) - 1
    ok = rho_s < 1
    lam_s = -np.log1p(-np.where(ok, rho_s, 0.0))
    L = math.log(n) + lam_s
    E_L = lam_s + c * _U32 * L + ((u * L * (1 + c * _U32) + eta) if fmt_intermediates else 0.0)
    logsm = d - np.log(np.exp(d).sum(axis=axis, keepdims=True))
    Y = np.abs(logsm) * _PAD + R
    Mabs = np.abs(m) + r.max(axis=axis, keepdims=True)
    E32 = (1 + _U32) ** 2 * (_U32 * (Dabs + Mabs + L) + E_L) + _U32 * Y
    Y = Y + E32
    val = np.where(ok & (Y <= f.max), (final_rounding(Y, u, eta, u == f.u) + E32) * _PAD, np.inf)
    return _combine(val, rb, note="log-softmax: u|y| + u log S + fp32 opmath")


def propagate_softmax(e_in: ArrayLike | Bound, y: ArrayLike, *, axis: int = -1) -> Bound:
    """Bound on ``|softmax(x^) - softmax(x)|`` for ``|x^ - x| <= e``, ``y = softmax(x)``.

    ``log y_i = x_i - logsumexp(x)`` and logsumexp is 1-Lipschitz in the max-norm, so
    ``|d log y_i| <= e_i + max_j e_j`` and ``|d y_i| <= min(1, y_i expm1(e_i + max_j e_j))``
    (exact, not first order; to first order ``y_i (e_i + max e)``).

    >>> np.round(propagate_softmax([[1e-3, 1e-3]], [[0.5, 0.5]]).value, 6).tolist()
    [[0.001001, 0.001001]]
    """
    e = _as_bound(e_in)
    yf = np.asarray(y, dtype=np.float64)
    ev = np.broadcast_to(np.asarray(e.value, dtype=np.float64), yf.shape)
    with np.errstate(over="ignore"):
        val = np.minimum(1.0, yf * np.expm1(ev + ev.max(axis=axis, keepdims=True)) * _PAD)
    return _combine(val, e, note="softmax propagation")


def propagate_log_softmax(e_in: ArrayLike | Bound, *, axis: int = -1) -> Bound:
    """Bound on ``|log_softmax(x^) - log_softmax(x)|``: ``e_i + max_j e_j`` (exact).

    >>> propagate_log_softmax([[1e-3, 2e-3]]).value.tolist()
    [[0.0030000000000001705, 0.004000000000000227]]
    """
    e = _as_bound(e_in)
    ev = np.asarray(e.value, dtype=np.float64)
    if ev.ndim == 0:
        raise ValueError("propagate_log_softmax needs the error array (its max over the axis matters)")
    return _combine((ev + ev.max(axis=axis, keepdims=True)) * _PAD, e, note="log-softmax propagation")


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------
def attention_bound(q: ArrayLike, k: ArrayLike, v: ArrayLike, fmt: Fmt = "fp16", profile: str = "fp32-accumulate", *,
                    scale: float | None = None, scale_mode: str = "scores",
                    e_q: ArrayLike | Bound | None = None, e_k: ArrayLike | Bound | None = None,
                    e_v: ArrayLike | Bound | None = None, mode: str | RoundingMode = "nearest-even",
                    **kwargs: Any) -> Bound:
    """Bound on the total error of unfused attention ``O = softmax(scale Q K^T) V`` against the
    exact result, for inputs within ``e_q``, ``e_k``, ``e_v`` of ``q``, ``k``, ``v``.

    Stages, each rounded to ``fmt`` (torch's "math" path):

    1. scores ``S = Q K^T``: :func:`fpanalysis.bounds.matmul_bound` (length ``d``) with the
       input perturbations;
    2. scaling: ``scale_mode="scores"`` rounds ``scale * S`` (plus ``u32`` for the scale held in
       fp32); ``"qk"`` scales ``Q`` and ``K`` by ``sqrt(scale)`` first (torch SDPA math), each a
       rounding of the inputs;
    3. ``P = softmax``: :func:`softmax_local_bound` at the scores' error radius plus
       :func:`propagate_softmax`;
    4. ``O = P V``: :func:`fpanalysis.bounds.matmul_bound` (length ``S``) with ``e_P``, ``e_v``.

    Rigorous for this computation model (no masks); ``**kwargs`` (``method``,
    ``failure_prob``, ...) go to both products, and probabilities combine by a union bound.

    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((1, 8, 16)) for _ in range(3))
    >>> b = attention_bound(q, k, v, "fp16")
    >>> b.value.shape, bool(b.max() < 0.05)
    ((1, 8, 16), True)
    """
    f = get_format(fmt)
    qf, kf, vf = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    d = qf.shape[-1]
    s = 1.0 / math.sqrt(d) if scale is None else float(scale)
    u, eta = unit_roundoff(f, mode), underflow_unit(f, mode)
    nearest = u == f.u
    if scale_mode not in ("scores", "qk"):
        raise ValueError(f"unknown scale_mode {scale_mode!r}; valid modes are: scores, qk")
    # Radii are passed on as plain arrays and every input Bound is combined exactly once.
    eq, ek, ev = _as_bound(e_q), _as_bound(e_k), _as_bound(e_v)
    eqv = np.broadcast_to(np.asarray(eq.value, dtype=np.float64), qf.shape)
    ekv = np.swapaxes(np.broadcast_to(np.asarray(ek.value, dtype=np.float64), kf.shape), -1, -2)
    evv = np.broadcast_to(np.asarray(ev.value, dtype=np.float64), vf.shape)
    kT = np.swapaxes(kf, -1, -2)
    Z = s * (qf @ kT)
    if scale_mode == "qk":
        rs = math.sqrt(abs(s))

        def scaled(a: np.ndarray, ea: np.ndarray) -> np.ndarray:  # |fl(rs a^) - rs a|
            mag = rs * (np.abs(a) + ea) * (1 + _U32)
            return rs * ea + final_rounding(mag, u, eta, nearest) + _U32 * mag

        sc = matmul_bound(rs * qf, rs * kT, f, profile, a_radius=scaled(qf, eqv), b_radius=scaled(kT, ekv),
                          mode=mode, **kwargs)
        if s < 0:
            raise ValueError("scale_mode='qk' needs a positive scale")
        eZ = _combine(np.asarray(sc.value), sc, eq, ek)
    else:
        sc = matmul_bound(qf, kT, f, profile, a_radius=eqv, b_radius=ekv, mode=mode, **kwargs)
        es = np.asarray(sc.value)
        mag = abs(s) * (np.abs(qf @ kT) + es) * (1 + _U32)
        eZ = _combine(abs(s) * es + final_rounding(mag, u, eta, nearest) + _U32 * mag, sc, eq, ek)
    P = np.exp(Z - Z.max(axis=-1, keepdims=True))
    P = P / P.sum(axis=-1, keepdims=True)
    eZv = np.asarray(eZ.value)
    eP_val = np.asarray(softmax_local_bound(Z, f, radius=eZv, mode=mode).value) + np.asarray(
        propagate_softmax(eZv, P).value)
    eP_val = np.minimum(eP_val, 1.0 + 2 * u)
    out = matmul_bound(P, vf, f, profile, a_radius=eP_val, b_radius=evv, mode=mode, **kwargs)
    return _combine(np.asarray(out.value), out, eZ, ev, note="attention (unfused)")

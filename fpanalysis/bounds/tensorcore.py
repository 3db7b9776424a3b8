r"""Deterministic error bounds for tensor-core dot products (:mod:`fpanalysis.tensorcore`).

Derivation
----------
Notation: a model with ``n`` products per fused step, ``F`` alignment bits, accumulator
precision ``p`` with unit ``u = 2**(1-p)`` (toward zero) or ``u = 2**-p`` (nearest) and
subnormal floor ``eta = 2**(emin_c - p + 1)`` (toward zero; half of it to nearest),
``lambda_x = 2**emin_x`` for the input formats and the accumulator, ``e_zero`` the exponent of
zero terms.

*One step* (Fasi, Higham, Mikaitis & Pranesh, "Numerical behavior of NVIDIA tensor cores",
PeerJ Comput. Sci. 2021; Khattak & Mikaitis, "Accurate models of NVIDIA tensor cores", 2025):
``t = trunc(sum_i a_i b_i + c)`` where each of the at most ``n + 1`` terms is truncated toward
zero to a multiple of ``2**(E - F)``, so the truncation error is
``|d| <= (n + 1) 2**(E - F)`` (strictly less, and each exact term contributes nothing).  The
leading exponent obeys ``2**E <= max(max_i (|a_i| + lambda_a)(|b_i| + lambda_b),
|c| + lambda_c, 2**e_zero)``, because an input's decoded exponent is
``max(floor(log2|x|), emin)``, so ``2**e_x <= max(|x|, lambda_x)``, and a zero term counts as
``2**e_zero``.  The rounding to the accumulator adds ``|r| <= u |t| + eta`` (relative error
below one unit toward zero, half a unit to nearest; an absolute error below the subnormal
quantum).

*Chaining* (the block-FMA analysis of Blanchard, Higham, Lopez, Mary & Pranesh, "Mixed
precision block fused multiply-add: error analysis and application to GPU tensor cores",
SIAM J. Sci. Comput. 42(3), 2020, with the truncated step above in place of a rounded one):
with ``S_j`` the exact partial sum after step ``j`` (from ``c_0``), ``c_j`` the computed one,
``e_j = |c_j - S_j|``, ``A_j = |c_0| + sum_{i in steps <= j} |a_i b_i|`` and
``Q_j = max_{i in step j} (|a_i| + lambda_a)(|b_i| + lambda_b)``:

.. math::

   D_j &\le (n+1)\,2^{-F} \max(Q_j,\ A_{j-1} + e_{j-1} + \lambda_c,\ 2^{e_{zero}}), \\
   e_j &\le e_{j-1} + D_j + u\,(A_j + e_{j-1} + D_j) + \eta,

where ``D_j`` bounds the truncation error of step ``j`` and ``|t_j| <= A_j + e_{j-1} + D_j``
bounds the truncated sum that is rounded.  :func:`tc_dot_error_bound` evaluates this recurrence from
``|x|`` and ``|y|`` (no emulation), rounding every operation upward.  Closed form: with
``theta = (1 + u)(n + 1) 2**-F + u``, ``m = ceil(K / n)`` steps,
``A' = |c_0| + sum_i (|a_i| + lambda_a)(|b_i| + lambda_b)`` and
``Lambda = max(2**e_zero, lambda_c)``,

.. math::

   |\hat s - s| \le \gamma^{tc}_K (A' + \Lambda) + \frac{\gamma^{tc}_K}{\theta}\,\eta,
   \qquad \gamma^{tc}_K = (1 + \theta)^m - 1 \approx m\theta
   = \frac{K}{n}\Big(\frac{n+1}{2^F} + u\Big)

(:func:`tc_gamma`).  For Hopper fp16 -> fp32 (``n = 16``, ``F = 25``, ``u = 2**-23``) this is
about ``K * 3.9e-8``, against ``K * 6.0e-8`` for recursive binary32 summation
(``gamma_K = K u_32``, Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, sec. 3.1):
the wide fused steps more than compensate for the truncation.  For FP8 on Hopper (``F = 13``,
13 fraction bits, ``n = 32``) it is about ``K * 1.3e-4``: why FP8 GEMMs are promoted to fp32.

*Promotion* every ``N`` terms: each chunk obeys the bound above from +0; the chunk results are
added in binary32 with round-to-nearest (``u_32 = 2**-24``), which adds
``u_32 (|total| + ...)`` per addition; :func:`tc_dot_error_bound` includes it
(``e <= (e_prev + e_chunk + u_32 A) / (1 - u_32)``).

:func:`tc_running_error_bound` is the a-posteriori version (a running error bound, Wilkinson's
idea; Higham 2002, sec. 3.3): it replays the chain and sums, per step, ``nz_j 2**(E_j - F)``
(``nz_j`` the number of nonzero terms) and one unit (half a unit to nearest) in the last place
of the computed result, so it is much tighter.

Both bounds hold for finite results only; an infinite or NaN result has no bound (``inf``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..tensorcore import _ACCS, _INPUTS, TensorCoreModel, _pad, _values, get_tensor_core

__all__ = [
    "tc_accumulation_coefficients",
    "tc_bound_constants",
    "tc_dot_error_bound",
    "tc_gamma",
    "tc_running_error_bound",
    "tc_unit",
]

_U32 = 2.0**-24
_UP = 1.0 + 2.0**-40  # margin for the float64 evaluation of the bounds (a few dozen operations)


def tc_unit(model: TensorCoreModel) -> tuple[float, float]:
    """``(u, eta)``: relative and absolute (subnormal) error of one rounding to the accumulator."""
    _, emin_c, p = _ACCS[model.accumulator]
    if model.rounding == "nearest-even":
        return 2.0**-p, 2.0 ** (emin_c - p)
    return 2.0 ** (1 - p), 2.0 ** (emin_c - p + 1)


def tc_bound_constants(model: TensorCoreModel) -> dict[str, float]:
    """The constants of the derivation: ``u``, ``eta``, ``delta = (n+1) 2**-F``, ``theta``,
    ``lambda_a``, ``lambda_b``, ``lambda_c``, ``Lambda = max(2**e_zero, lambda_c)``."""
    u, eta = tc_unit(model)
    delta = (model.n + 1) * 2.0**-model.F
    lam_c = 2.0 ** _ACCS[model.accumulator][1]
    return {"u": u, "eta": eta, "delta": delta, "theta": (1 + u) * delta + u,
            "lambda_a": 2.0 ** _INPUTS[model.a_format][1], "lambda_b": 2.0 ** _INPUTS[model.b_format][1],
            "lambda_c": lam_c, "Lambda": max(2.0**model.e_zero, lam_c)}


def tc_gamma(K: int, model: TensorCoreModel | str = "hopper", inputs: str = "fp16",
             accumulator: str = "fp32") -> float:
    """``gamma^tc_K = (1 + theta)**ceil(K/n) - 1`` of the closed-form bound (module docstring),
    for a chain without promotion.

    >>> round(tc_gamma(4096, "hopper") / 4096, 10)       # per term, fp16 -> fp32 on Hopper
    3.91e-08
    """
    m = get_tensor_core(model, inputs, accumulator)
    steps = -(-int(K) // m.n)
    theta = tc_bound_constants(m)["theta"]
    return math.expm1(steps * math.log1p(theta)) * _UP


def tc_accumulation_coefficients(n: int, model: TensorCoreModel, input_max: tuple[float, float] | None = None
                                 ) -> tuple[float, float]:
    """``(gamma, absolute)`` with ``|s^ - s| <= gamma * sum|a_i b_i| + absolute`` for a chain of
    ``n`` products from +0: the closed form of the module docstring with the
    per-step maximum ``Q_j <= max|a_i b_i| + lambda_in``,
    ``lambda_in = lambda_a max|b| + lambda_b max|a| + lambda_a lambda_b``::

        gamma = (1 + theta)**m - 1,   absolute = gamma / theta * ((1 + u) delta (lambda_in + Lambda) + eta).

    ``input_max = (max|a|, max|b|)``; default the largest numbers of the input formats.  With
    promotion every ``N`` terms, each of the ``c = ceil(n/N)`` chunks obeys that bound (``g``,
    ``absolute`` for ``N`` terms) and the chunk results are added in binary32:
    ``gamma = g (1 + g32) + g32``, ``absolute = c absolute (1 + g32)``, ``g32 = c u32 / (1 - c u32)``.
    """
    from ..formats import get_format

    k = tc_bound_constants(model)
    if input_max is None:
        input_max = (get_format(model.a_format).max, get_format(model.b_format).max)
    amax, bmax = (float(v) for v in input_max)
    lam_in = k["lambda_a"] * bmax + k["lambda_b"] * amax + k["lambda_a"] * k["lambda_b"]
    theta = k["theta"]
    chunk = int(n) if not model.promote_every else min(int(n), model.promote_every)
    steps = -(-chunk // model.n)
    g = math.expm1(steps * math.log1p(theta)) * _UP
    absolute = g / theta * ((1 + k["u"]) * k["delta"] * (lam_in + k["Lambda"]) + k["eta"]) * _UP
    if not model.promote_every or int(n) <= model.promote_every:
        return g, absolute
    # promotion: chunk results R_i = S_i + e_i, |e_i| <= g A_i + absolute, added in binary32 from +0
    # (recursive summation: error <= gamma_c(u32) sum|R_i|, Higham 2002 eq. (4.4))
    chunks = -(-int(n) // model.promote_every)
    g32 = chunks * _U32 / (1 - chunks * _U32)
    return (g * (1 + g32) + g32) * _UP, chunks * absolute * (1 + g32) * _UP


def tc_dot_error_bound(x: Any, y: Any, model: TensorCoreModel | str = "hopper", inputs: str = "fp16",
                       accumulator: str = "fp32", *, c: float = 0.0, promote_every: int | None = None) -> float:
    """A-priori bound on ``|tc_dot(x, y) - (x . y + c)|`` from ``|x|``, ``|y|`` only (the
    recurrence of the module docstring).  Returns ``inf`` when the result could overflow."""
    m = get_tensor_core(model, inputs, accumulator, promote_every=promote_every)
    xa = np.abs(_pad(np.atleast_1d(_values(x, m.a_format, "x")), 0, m.n))
    ya = np.abs(_pad(np.atleast_1d(_values(y, m.b_format, "y")), 0, m.n))
    if not (np.isfinite(xa).all() and np.isfinite(ya).all() and math.isfinite(c)):
        return math.inf
    k = tc_bound_constants(m)
    u, eta, delta = k["u"], k["eta"], k["delta"]
    lam_a, lam_b, lam_c, floor = k["lambda_a"], k["lambda_b"], k["lambda_c"], 2.0**m.e_zero
    P = (xa * ya).reshape(-1, m.n).sum(axis=1) * _UP
    Q = ((xa + lam_a) * (ya + lam_b)).reshape(-1, m.n).max(axis=1) * _UP
    steps = P.size
    chunk = (m.promote_every or steps * m.n) // m.n
    total_err, total_abs = 0.0, abs(float(c)) if m.promote_every else 0.0
    A, e = (0.0, 0.0) if m.promote_every else (abs(float(c)), 0.0)
    limit = 65504.0 if m.accumulator == "fp16" else float(np.finfo(np.float32).max)
    for j in range(steps):
        if m.promote_every and j % chunk == 0:
            A, e = 0.0, 0.0
        D = delta * max(Q[j], A + e + lam_c, floor) * _UP
        A = (A + P[j]) * _UP
        e = (e + D + u * (A + e + D) + eta) * _UP
        if A + e > limit:
            return math.inf
        if m.promote_every and ((j + 1) % chunk == 0 or j == steps - 1):
            total_abs = (total_abs + A) * _UP
            total_err = (total_err + e + _U32 * (total_abs + total_err + e)) / (1 - _U32) * _UP
            if total_abs + total_err > float(np.finfo(np.float32).max):
                return math.inf
    return total_err if m.promote_every else e


def tc_running_error_bound(x: Any, y: Any, model: TensorCoreModel | str = "hopper", inputs: str = "fp16",
                           accumulator: str = "fp32", *, c: float = 0.0) -> tuple[float, float]:
    """``(result, bound)``: the chained tensor-core dot product and an a-posteriori bound on its
    error (per step ``nz 2**(E - F)`` plus one unit, half to nearest, in the last place of the
    step's result; no promotion).  ``bound`` is ``inf`` for a non-finite result."""
    from .._kernels import tensorcore as K

    m = get_tensor_core(model, inputs, accumulator)
    n, F, rho, e_zero, emin_a, emin_b, emin_c, _ = m.kernel_args()
    xv = _pad(np.atleast_1d(_values(x, m.a_format, "x")), 0, n)
    yv = _pad(np.atleast_1d(_values(y, m.b_format, "y")), 0, n)
    _, _, p = _ACCS[m.accumulator]
    half = 0.5 if m.rounding == "nearest-even" else 1.0
    acc, bound = float(c), 0.0
    for k0 in range(0, xv.size, n):
        a, b = xv[k0:k0 + n], yv[k0:k0 + n]
        new = float(K.block(xv, yv, k0, k0 + n, acc, F, rho, e_zero, emin_a, emin_b, emin_c))
        if not math.isfinite(new):
            return new, math.inf
        terms = [max(math.frexp(ai)[1] - 1, emin_a) + max(math.frexp(bi)[1] - 1, emin_b)
                 for ai, bi in zip(a, b) if ai != 0 and bi != 0]
        nz = len(terms) + (acc != 0)
        if acc != 0:
            terms.append(max(math.frexp(acc)[1] - 1, emin_c))
        if nz < n + 1:
            terms.append(e_zero)
        E = max(terms)
        er = max(math.frexp(new)[1] - 1, emin_c) if new != 0 else emin_c
        bound += nz * 2.0 ** (E - F) + half * 2.0 ** (er - p + 1)
        acc = new
    return acc, bound * _UP

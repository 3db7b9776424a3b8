"""Rounding-error bounds for sums, inner products, matrix-vector products and convolutions.

Two flavours, both pure functions of sizes, unit roundoffs and magnitudes:

* deterministic (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM 2002):
  worst case over every rounding error, ``gamma_n = n u / (1 - n u)``;
* probabilistic (Higham & Mary, "A new approach to probabilistic rounding error analysis",
  SIAM J. Sci. Comput. 41(5), A2815-A2835, 2019): if the rounding errors are independent with
  mean zero, ``gamma~_n(lam) = exp(lam sqrt(n) u + n u^2 / (1 - u)) - 1 ~ lam sqrt(n) u`` holds
  with a stated probability.  Under stochastic rounding the assumption holds by construction
  (Connolly, Higham & Mary, SIAM J. Sci. Comput. 43(1), 2021); under round-to-nearest it is a
  model that the measured mean rounding error can support or refute.

Every bound is returned as a :class:`Bound`: a componentwise array (``inf`` where the bound is
vacuous: ``n u >= 1``, or an overflow cannot be excluded), its kind and the probability with
which it holds.  A bound is never negative, NaN or silently wrong.

Standard model used throughout (Higham 2002, eq. (2.4) and section 2.1): for an operation whose
exact result is ``t``, ``fl(t) = t (1 + d) + e`` with ``|d| <= u``, ``|e| <= eta`` and
``d e = 0``, where ``u = 2**-p`` and ``eta = min_subnormal / 2`` under round-to-nearest
(``u = 2**(1-p)``, ``eta = min_subnormal`` for directed, odd or stochastic rounding; without
subnormals ``eta = min_normal``).  With gradual underflow an addition or subtraction whose result
lies in the subnormal range is exact (both operands are multiples of ``min_subnormal``), so only
multiplications and divisions contribute ``eta`` terms; with flush-to-zero every operation does.
No bound covers overflow: each one returns ``inf`` wherever its own magnitude bound on the
intermediate values exceeds the format's largest finite number.

>>> import numpy as np
>>> from fpanalysis.bounds import gamma, matvec_bound
>>> gamma(10, 2**-11) > 10 * 2**-11, gamma(2048, 2**-11)
(True, inf)
>>> W = np.full((3, 256), 0.5); x = np.ones(256)
>>> b = matvec_bound(W, x, "fp16", profile="fp32-accumulate")
>>> b.kind, bool(np.all(b.value < 0.07))
('deterministic', True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..formats import FloatFormat, get_format
from ..linalg import Profile
from ..rounding import RoundingMode

__all__ = [
    "METHODS",
    "ORDERS",
    "PROFILES",
    "Bound",
    "accumulation_bound",
    "choose_lambda",
    "conv2d_bound",
    "conv2d_float64",
    "dot_bound",
    "gamma",
    "gamma_tilde",
    "is_vacuous",
    "matmul_bound",
    "matvec_bound",
    "probability_P",
    "probability_Q",
    "propagate_add",
    "propagate_conv2d",
    "propagate_elementwise",
    "propagate_linear",
    "propagate_matmul",
    "rounding_depth",
    "rounding_error_bound",
    "sum_bound",
    "underflow_unit",
    "unit_roundoff",
]

#: The arithmetic profiles of :class:`fpanalysis.linalg.Profile`, by name.
PROFILES = tuple(p.value for p in Profile)
#: Summation orders, named as :class:`fpanalysis.linalg.Order` names them ("recursive" is an alias
#: of "sequential": Higham's name for the same order).
ORDERS = ("sequential", "pairwise", "blocked")
METHODS = ("deterministic", "probabilistic")
_ORDER_ALIASES = {"recursive": "sequential", "serial": "sequential"}
_U64 = 2.0**-53
# Relative slack for evaluating a bound formula in float64 (a few dozen roundings at most).
_PAD = 1.0 + 2.0**-44

Fmt = str | FloatFormat
ArrayLike = Any


# --------------------------------------------------------------------------------------------
# The result type
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bound:
    """A componentwise error bound and the probability with which it holds.

    Attributes
    ----------
    value : numpy.ndarray or float
        Nonnegative bound, componentwise; ``inf`` where it is vacuous (``n u >= 1``, or an
        overflow cannot be excluded).  Never negative or NaN.
    kind : str
        ``"deterministic"`` (always holds) or ``"probabilistic"``.
    failure_probability : float
        Upper bound on the probability that the bound is violated (for probabilistic bounds:
        per sample, over all the components it covers, under the Higham-Mary model).
        ``0.0`` for deterministic bounds.
    note : str
        The formula that produced it, for reports.

    Examples
    --------
    >>> b = Bound(np.array([1e-3, np.inf]))
    >>> b.kind, b.probability, b.vacuous, b.max()
    ('deterministic', 1.0, True, inf)
    """

    value: Any
    kind: str = "deterministic"
    failure_probability: float = 0.0
    note: str = ""

    def __post_init__(self) -> None:
        v = np.asarray(self.value, dtype=np.float64)
        if np.isnan(v).any() or (v < 0).any():
            raise ValueError("an error bound must be nonnegative and not NaN")
        object.__setattr__(self, "value", float(v) if v.ndim == 0 else v)
        if self.kind not in METHODS:
            raise ValueError(f"unknown bound kind {self.kind!r}; valid kinds are: {', '.join(METHODS)}")
        fp = float(self.failure_probability)
        if not 0.0 <= fp <= 1.0 or (self.kind == "deterministic" and fp != 0.0):
            raise ValueError("failure_probability must be in [0, 1] (and 0 for a deterministic bound)")
        object.__setattr__(self, "failure_probability", fp)

    @property
    def probability(self) -> float:
        """Lower bound on the probability that the bound holds."""
        return 1.0 - self.failure_probability

    @property
    def vacuous(self) -> bool:
        """True when some component is ``inf`` or the bound holds with probability 0."""
        return bool(np.any(is_vacuous(self.value))) or self.failure_probability >= 1.0

    def max(self) -> float:
        return float(np.max(self.value)) if np.size(self.value) else 0.0

    def __repr__(self) -> str:
        shape = np.shape(self.value)
        body = f"max={self.max():.3g}" + (f", shape={shape}" if shape else "")
        prob = "" if self.kind == "deterministic" else f", probability>={self.probability:.6g}"
        return f"Bound({self.kind}, {body}{prob})"


def is_vacuous(x: ArrayLike | Bound) -> Any:
    """Whether a bound (a number, an array or a :class:`Bound`) says nothing: ``inf`` entries.

    >>> is_vacuous(gamma(4096, 2**-11)), is_vacuous(0.5)
    (True, False)
    """
    if isinstance(x, Bound):
        return x.vacuous
    arr = ~np.isfinite(np.asarray(x, dtype=np.float64))
    return bool(arr) if arr.ndim == 0 else arr


def _as_bound(x: ArrayLike | Bound | None) -> Bound:
    if x is None:
        return Bound(0.0)
    return x if isinstance(x, Bound) else Bound(np.asarray(x, dtype=np.float64))


def _combine(value: Any, *parts: Bound | None, note: str = "") -> Bound:
    """A bound holding when all ``parts`` hold: failure probabilities add (union bound)."""
    bs = [p for p in parts if p is not None]
    fail = min(1.0, sum(b.failure_probability for b in bs))
    kind = "probabilistic" if any(b.kind == "probabilistic" for b in bs) else "deterministic"
    return Bound(value, kind, fail if kind == "probabilistic" else 0.0, note)


def _choice(value: Any, valid: tuple, what: str, aliases: dict | None = None) -> str:
    key = str(getattr(value, "value", value)).strip().lower().replace("_", "-")
    key = (aliases or {}).get(key, key)
    if key not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid {what}s are: {', '.join(valid)}")
    return key


# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------
def unit_roundoff(fmt: Fmt = "fp16", mode: str | RoundingMode = "nearest-even") -> float:
    """Bound on the relative error ``|d|`` of one rounding (no underflow).

    ``2**-p`` for round-to-nearest (Higham 2002, Thm 2.2); ``2**(1-p)`` (machine epsilon) for
    directed, odd and stochastic rounding.

    >>> unit_roundoff("fp16"), unit_roundoff("fp16", "stochastic")
    (0.00048828125, 0.0009765625)
    """
    f = get_format(fmt)
    m = RoundingMode.parse(mode)
    return f.u if m in (RoundingMode.NEAREST_EVEN, RoundingMode.NEAREST_AWAY) else f.eps


def underflow_unit(fmt: Fmt = "fp16", mode: str | RoundingMode = "nearest-even") -> float:
    """Bound ``eta`` on the absolute error of one rounding in the underflow range.

    With subnormals the spacing below ``min_normal`` is ``min_subnormal``, so round-to-nearest
    errs by at most ``min_subnormal / 2`` and the other modes by less than ``min_subnormal``
    (Higham 2002, section 2.1, eq. (2.8)).  With flush-to-zero, at most ``min_normal``.

    >>> underflow_unit("fp16") == 2.0**-25, underflow_unit("bf16", "up") == 2.0**-133
    (True, True)
    """
    f = get_format(fmt)
    if not f.subnormals:
        return f.min_normal
    m = RoundingMode.parse(mode)
    nearest = m in (RoundingMode.NEAREST_EVEN, RoundingMode.NEAREST_AWAY)
    return f.min_subnormal / 2 if nearest else f.min_subnormal


def gamma(n: ArrayLike, u: float) -> Any:
    """``gamma_n = n u / (1 - n u)``, or ``inf`` (vacuous) when ``n u >= 1``.

    Source: Higham (2002), Lemma 3.1: ``prod (1 + d_i)^{+-1} = 1 + theta_n`` with
    ``|theta_n| <= gamma_n`` when ``n u < 1``.  For ``n u >= 1`` no finite bound of this form
    exists, so the function returns ``inf`` rather than a negative or meaningless number.

    >>> gamma(1024, 2**-11), gamma([0, 1, 2048], 2**-11).tolist()
    (1.0, [0.0, 0.0004885197850512946, inf])
    """
    if not 0.0 <= u < 1.0:
        raise ValueError(f"unit roundoff must be in [0, 1), got {u}")
    n_arr = np.asarray(n, dtype=np.float64)
    if (n_arr < 0).any() or np.isnan(n_arr).any():
        raise ValueError("n must be nonnegative")
    nu = n_arr * u
    ok = nu < 1.0
    out = np.where(ok, nu / np.where(ok, 1.0 - nu, 1.0), np.inf)
    return float(out) if out.ndim == 0 else out


def gamma_tilde(n: ArrayLike, u: float, lam: float) -> Any:
    """Probabilistic constant ``gamma~_n(lam) = exp(lam sqrt(n) u + n u^2 / (1 - u)) - 1``.

    Source: Higham & Mary (2019), Theorem 3.1: if ``d_1..d_n`` are independent, mean zero,
    ``|d_i| <= u``, then ``prod (1 + d_i) = 1 + theta_n`` with ``|theta_n| <= gamma~_n(lam)``
    with probability at least :func:`probability_P` ``(lam, u)``.  Always finite.

    >>> round(gamma_tilde(1024, 2**-11, 5.0), 3)
    0.082
    """
    if lam < 0:
        raise ValueError(f"lambda must be nonnegative, got {lam}")
    n_arr = np.asarray(n, dtype=np.float64)
    out = np.expm1(lam * np.sqrt(n_arr) * u + n_arr * u * u / (1.0 - u))
    return float(out) if out.ndim == 0 else out


def _failure(lam: float, u: float) -> float:
    return 2.0 * math.exp(-(lam**2) * (1.0 - u) ** 2 / 2.0)


def probability_P(lam: float, u: float) -> float:
    """``P(lam) = 1 - 2 exp(-lam^2 (1-u)^2 / 2)``, clipped at 0 (Higham & Mary 2019, Thm 3.1).

    The probability that one product of independent mean-zero rounding factors obeys
    ``|theta_n| <= gamma~_n(lam)``.

    >>> f"{1 - probability_P(5.0, 2**-11):.1e}"
    '7.5e-06'
    """
    return max(0.0, 1.0 - _failure(lam, u))


def probability_Q(lam: float, n: int, u: float, m: int = 1) -> float:
    """``Q(lam, n) = 1 - n (1 - P(lam))``, with a union over ``m`` outputs: ``1 - m n (1 - P)``.

    Higham & Mary (2019), Theorem 3.4: an inner product of length ``n`` (one ``theta`` per
    term) satisfies ``|s^ - s| <= gamma~_n(lam) |x|^T |y|`` with probability at least
    ``Q(lam, n)``; ``m`` inner products all do with probability at least ``1 - m n (1 - P)``
    (union bound).  Clipped at 0.

    >>> round(probability_Q(6.0, 1024, 2**-11), 6)
    0.999968
    """
    return max(0.0, 1.0 - m * n * _failure(lam, u))


def choose_lambda(failure_prob: float, n: int, u: float, m: int = 1) -> float:
    """Smallest ``lam`` with ``m n (1 - P(lam)) <= failure_prob``: closed form
    ``lam = sqrt(2 ln(2 m n / failure_prob)) / (1 - u)``.

    >>> lam = choose_lambda(1e-6, 1024, 2**-11)
    >>> abs(1 - probability_Q(lam, 1024, 2**-11) - 1e-6) < 1e-12
    True
    """
    if not 0.0 < failure_prob < 1.0:
        raise ValueError(f"failure probability must be in (0, 1), got {failure_prob}")
    events = max(1, int(m)) * max(1, int(n))
    return math.sqrt(2.0 * math.log(2.0 * events / failure_prob)) / (1.0 - u)


def rounding_depth(n: int, order: str = "sequential", block: int | None = None, products: bool = True) -> int:
    """Largest number of roundings any term of an ``n``-term sum goes through.

    * ``sequential`` (recursive summation; any order, in fact): ``n - 1`` additions, Higham (2002) eq. (4.4);
    * ``pairwise`` (split in halves recursively): ``ceil(log2 n)``, Higham (2002) section 4.2;
    * ``blocked`` with block size ``b`` (each block of ``b`` consecutive terms summed
      recursively, then the ``ceil(n/b)`` block sums summed recursively):
      ``(min(b, n) - 1) + (ceil(n / b) - 1)``, Blanchard, Higham & Mary, SIAM J. Sci. Comput.
      42(3), 2020, section 2 (their ``gamma_{b-1} + gamma_{n/b-1} + ...``, combined with
      Higham's Lemma 3.3 ``(1+gamma_j)(1+gamma_k) <= 1+gamma_{j+k}``).

    ``products=True`` adds one rounding for the product ``x_i y_i`` (inner products).

    >>> rounding_depth(1024), rounding_depth(1024, "pairwise"), rounding_depth(1024, "blocked", 32)
    (1024, 11, 63)
    """
    o = _choice(order, ORDERS, "order", _ORDER_ALIASES)
    n = int(n)
    if n < 0:
        raise ValueError("n must be nonnegative")
    if n == 0:
        return 0
    if o == "sequential":
        k = n - 1
    elif o == "pairwise":
        k = (n - 1).bit_length()
    else:
        if block is None or int(block) < 1:
            raise ValueError("order='blocked' needs a block size >= 1")
        b = min(int(block), n)
        k = (b - 1) + (-(-n // b) - 1)
    return k + int(bool(products))


# --------------------------------------------------------------------------------------------
# The core accumulation bound
# --------------------------------------------------------------------------------------------
def _times(g: float, a: np.ndarray) -> np.ndarray:
    """``g * a`` with ``inf * 0 = 0`` (a zero magnitude means exact zeros, whatever g is)."""
    return np.where(a > 0, math.inf, 0.0) if math.isinf(g) else g * a


def growth_factor(u: float, k: int) -> float:
    """``(1 + u)^k``, the largest factor the later roundings can multiply an error by."""
    e = k * math.log1p(u)
    return math.exp(e) if e < 700 else math.inf


def _underflow(A: np.ndarray, n_mul: int, n_add: int, eta: float, nearest: bool) -> np.ndarray:
    """Sum of the absolute (underflow) errors of ``n_mul`` products and ``n_add`` flushed sums.

    Each is at most ``eta``; under round-to-nearest a product's is also at most its own
    magnitude (0 is a candidate), so the products contribute at most ``min(n_mul eta, A)``.
    All terms zero (``A = 0``) means an exact zero result.
    """
    prod = np.minimum(n_mul * eta, A) if nearest else np.where(A > 0, n_mul * eta, 0.0)
    return prod + np.where(A > 0, n_add * eta, 0.0)


def final_rounding(R: np.ndarray, u: float, eta: float, nearest: bool) -> np.ndarray:
    """Error of rounding a value of magnitude at most ``R`` once: ``u R + eta``; under
    round-to-nearest also at most ``R`` (0 is a candidate), and 0 when ``R = 0``."""
    return np.minimum(u * R + eta, R) if nearest else np.where(R > 0, u * R + eta, 0.0)


def gamma_for(k: int, events: int, u: float, method: str, failure_prob: float | None,
               lam: float | None, union: int) -> tuple[float, float]:
    det = gamma(k, u)
    if method == "deterministic":
        return det, 0.0
    if lam is None:
        lam = choose_lambda(1e-6 if failure_prob is None else failure_prob, events, u, union)
    fail = min(1.0, max(1, union) * max(1, events) * _failure(lam, u))
    return min(det, gamma_tilde(k, u, lam)), fail


def _nonneg(a: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if np.isnan(arr).any() or (arr < 0).any():
        raise ValueError(f"{what} must be nonnegative magnitudes")
    return arr


def accumulation_bound(
    abs_terms: ArrayLike,
    n: int,
    fmt: Fmt = "fp16",
    profile: str = "ieee",
    *,
    abs_result: ArrayLike | None = None,
    input_max: tuple[float, float] | None = None,
    order: str = "sequential",
    block: int | None = None,
    products: bool = True,
    mode: str | RoundingMode = "nearest-even",
    accumulator: Fmt = "fp32",
    method: str = "deterministic",
    failure_prob: float | None = None,
    lam: float | None = None,
    union: int = 1,
) -> Bound:
    """Bound on ``|s^ - s|`` for ``s = sum_i t_i`` (``t_i = x_i y_i`` when ``products``).

    Parameters
    ----------
    abs_terms : array_like
        ``A = sum_i |t_i|`` (``|x|^T |y|``), or an upper bound on it; one entry per output.
    n : int
        Number of terms.
    fmt : str or FloatFormat
        Storage format of the inputs and the result.
    profile : str
        ``"ieee"``: every product and addition rounded to ``fmt`` in the given ``order``::

            |s^ - s| <= gamma_k(u) A + U (1 + u)^k,   k = rounding_depth(n, order, block)

        (Higham 2002, eq. (3.5) and Lemma 3.1; pairwise: section 4.2).  ``U`` bounds the
        absolute (underflow) errors: each of the ``n`` products errs by at most ``eta``, and
        under round-to-nearest also by at most ``|t_i|`` (0 is a candidate), so
        ``U = min(n eta, A)`` (``n eta`` for the other modes), plus ``(n - 1) eta`` for the
        additions under flush-to-zero (with gradual underflow they are exact there); later
        roundings multiply these errors by at most ``(1 + u)^k``.  ``order='sequential'`` is
        valid for every summation order.

        ``"fp32-accumulate"``: exact products, accumulation in ``accumulator`` (any order),
        one final rounding to ``fmt`` (cuBLAS/cuDNN, torch CPU half matmul)::

            |s^ - s| <= u |s| + (1 + u) T + eta,   T = gamma_n(u_acc) A + U_acc (1 + u_acc)^n

        (docs/theory.md §3.1; ``gamma_n`` rather than ``gamma_{n-1}`` also covers products
        rounded in the accumulator or fused multiply-adds; ``U_acc = min(n eta_acc, A)`` covers
        products that underflow there, as bf16 products can in fp32).  Under round-to-nearest
        the final rounding also errs by at most ``|s| + T``, so ``u |s| + u T + eta`` is
        replaced by ``min(u (|s| + T) + eta, |s| + T)``.

        ``"exact"``: one rounding of the exact result, ``|s^ - s| <= min(u |s| + eta, |s|)``.

        Tensor-core profiles (``"volta"`` ... ``"blackwell"``, :mod:`fpanalysis.tensorcore`):
        the chained truncated fused steps of the architecture, then one rounding to ``fmt``::

            |s^ - s| <= u |s| + (1 + u) T + eta,   T = gamma^tc_n A + absolute

        with ``gamma^tc_n = (1 + theta)**ceil(n / n_step) - 1`` and the alignment/underflow
        term ``absolute`` of :func:`fpanalysis.bounds.tensorcore.tc_accumulation_coefficients`
        (derivation in :mod:`fpanalysis.bounds.tensorcore`; deterministic whatever ``method``).
        For a plain sum (``products=False``) the ``fp32-accumulate`` bound is used: reductions
        do not run on tensor cores.
    input_max : (float, float), optional
        Largest ``|x_i|`` and ``|y_i|`` (tensor-core profiles; default the format's largest
        number, valid but loose for outputs near the underflow threshold).
    abs_result : array_like, optional
        Upper bound on ``|s|`` (needed by the profiles with a final rounding); default ``A``.
    order, block : str, int
        ``"sequential"`` (alias ``"recursive"``), ``"pairwise"``, or ``"blocked"`` with block
        size ``block`` (profile ``ieee`` only).
    products : bool
        Whether the terms are rounded products (inner product) or exact inputs (a plain sum).
    mode : str
        Rounding mode of the ``fmt`` roundings (the accumulator always rounds to nearest).
    method : str
        ``"deterministic"`` or ``"probabilistic"`` (``gamma`` replaced by
        ``min(gamma_k, gamma~_k(lam))``, Higham & Mary 2019, Thm 3.4).
    failure_prob, lam : float, optional
        For ``method="probabilistic"``: the allowed failure probability over ``union`` outputs
        (default ``1e-6``; ``lam`` from :func:`choose_lambda`), or ``lam`` directly.
    union : int
        Number of outputs one failure probability covers (``m`` in ``1 - m n (1 - P)``).

    Returns
    -------
    Bound
        ``inf`` where ``gamma`` is vacuous or the magnitude bound on an intermediate value
        (``A`` plus the error bound) exceeds the largest finite number of the format in which
        it is held: overflow is not covered by any bound.

    Examples
    --------
    >>> round(accumulation_bound(1.0, 1024, "fp16").value, 4)   # gamma_1024 = 1 in fp16
    1.0001
    >>> accumulation_bound(1.0, 1024, "fp16", order="pairwise").value < 0.006
    True
    >>> b = accumulation_bound(1.0, 4096, "fp16", method="probabilistic", failure_prob=1e-3)
    >>> b.kind, round(b.value, 2), b.probability   # deterministic: inf (4096 u > 1)
    ('probabilistic', 0.19, 0.999)
    """
    f = get_format(fmt)
    prof = _choice(profile, PROFILES, "profile")
    meth = _choice(method, METHODS, "method")
    A = _nonneg(abs_terms, "abs_terms")
    R = A if abs_result is None else _nonneg(abs_result, "abs_result")
    n = int(n)
    u = unit_roundoff(f, mode)
    eta = underflow_unit(f, mode)
    nearest = u == f.u
    fail = 0.0
    # tensor-core profiles: products go through the tensor core's fused steps; a plain sum
    # (products=False) is a reduction the tensor cores do not perform: fp32-accumulate's bound
    tc = Profile.parse(prof).tensor_core is not None and bool(products)
    if prof == "exact":
        err = final_rounding(R, u, eta, nearest)
        ok = R <= f.max
        note = "u|s| + eta"
    elif prof == "ieee":
        k = rounding_depth(n, order, block, products)
        g, fail = gamma_for(k, n, u, meth, failure_prob, lam, union)
        under = _underflow(A, n if products else 0, 0 if f.subnormals else max(n - 1, 0), eta, nearest)
        err = _times(g, A) + _times(growth_factor(u, k), under)
        ok = A + err <= f.max
        note = f"gamma_{k}(u) |x|^T|y| + underflow"
    elif tc:
        from ..tensorcore import tensor_core_for_format
        from .tensorcore import tc_accumulation_coefficients

        model = tensor_core_for_format(Profile.parse(prof).tensor_core, f)
        g, absolute = tc_accumulation_coefficients(n, model, input_max)
        t_err = np.where(A > 0, _times(g, A) + absolute, 0.0) if n else np.zeros_like(A)
        err = final_rounding(R + t_err, u, eta, nearest) + t_err
        ok = (A + t_err <= get_format("fp32").max) & (R + t_err <= f.max)
        note = f"u|s| + (1+u)(gamma^tc_{n} |x|^T|y| + alignment/underflow) + eta ({model.name})"
    else:
        _choice(order, ORDERS, "order", _ORDER_ALIASES)  # validated; the bound holds for every order
        a = get_format(accumulator)
        ua = a.u
        k = n - 1 + int(bool(products)) if n else 0
        g, fail = gamma_for(k, n, ua, meth, failure_prob, lam, union)
        under = _underflow(A, n if products else 0, 0 if a.subnormals else max(n - 1, 0), underflow_unit(a), True)
        t_err = _times(g, A) + _times(growth_factor(ua, k), under)
        err = final_rounding(R + t_err, u, eta, nearest) + t_err
        ok = (A + t_err <= a.max) & (R + t_err <= f.max)
        note = f"u|s| + (1+u)(gamma_{k}(u_acc) |x|^T|y| + underflow_acc) + eta"
    value = np.where(ok, err * _PAD, np.inf)
    kind = "probabilistic" if (meth == "probabilistic" and prof != "exact" and not tc) else "deterministic"
    return Bound(value, kind, fail if kind == "probabilistic" else 0.0, f"{prof}: {note}")


def sum_bound(x: ArrayLike, fmt: Fmt = "fp16", profile: str = "ieee", *, axis: int = -1, **kwargs: Any) -> Bound:
    """Bound on the error of summing ``x`` along ``axis`` (no products).

    ``|s^ - s| <= gamma_{n-1} sum|x_i|`` (recursive, Higham 2002 eq. (4.4)),
    ``gamma_{ceil(log2 n)}`` (pairwise), ``gamma_{b-1 + ceil(n/b)-1}`` (blocked); see
    :func:`accumulation_bound` for the profiles and keyword arguments.

    >>> sum_bound(np.ones(4), "fp16").value > 3 * 2**-11 * 4
    True
    """
    xa = np.asarray(x, dtype=np.float64)
    n = xa.shape[axis]
    A = np.abs(xa).sum(axis=axis)
    slack = _U64 * (n + 2) * A
    R = np.abs(xa.sum(axis=axis)) + slack
    return accumulation_bound(A * (1 + (n + 2) * _U64), n, fmt, profile, abs_result=R, products=False, **kwargs)


def rounding_error_bound(x: ArrayLike, fmt: Fmt = "fp16", mode: str | RoundingMode = "nearest-even") -> Bound:
    """Bound on ``|fl(x) - x|`` for rounding ``x`` to ``fmt`` once: ``u |x| + eta``.

    The input-rounding term of a layer (fp32 weights or activations stored in fp16).  Values
    beyond the format's range overflow: ``inf``.

    >>> rounding_error_bound([1.0, 1e-9, 1e6], "fp16").value.tolist()   # min(u|x| + 2**-25, |x|)
    [0.0004883110523223877, 1e-09, inf]
    """
    f = get_format(fmt)
    xa = np.abs(np.asarray(x, dtype=np.float64))
    u = unit_roundoff(f, mode)
    err = final_rounding(xa, u, underflow_unit(f, mode), u == f.u)
    return Bound(np.where(xa <= f.max, err, np.inf), note="u|x| + eta")


# --------------------------------------------------------------------------------------------
# Linear layers: inner products, matrix-vector products, convolutions
# --------------------------------------------------------------------------------------------
def _radius(r: ArrayLike | Bound | None, shape: tuple) -> tuple[np.ndarray | None, Bound | None]:
    if r is None:
        return None, None
    rb = _as_bound(r)
    return np.broadcast_to(np.asarray(rb.value, dtype=np.float64), shape), rb


def _linear_bound(
    op: Callable[[np.ndarray, np.ndarray], np.ndarray],
    W: ArrayLike,
    x: ArrayLike,
    n: int,
    fmt: Fmt,
    profile: str,
    union: int,
    *,
    x_radius: ArrayLike | Bound | None,
    round_weights: bool,
    round_inputs: bool,
    mode: str | RoundingMode,
    w_radius: ArrayLike | Bound | None = None,
    **kwargs: Any,
) -> Bound:
    """Error of ``y^ = fl(op(W^, x^))`` against ``op(W, x)`` for a bilinear ``op``.

    ``W^`` within ``w_radius`` of ``W``, ``x^`` within ``x_radius`` of ``x``, each then rounded
    to ``fmt`` if ``round_weights`` / ``round_inputs``.  With ``e_W``, ``e_x`` the resulting
    bounds on ``|W^ - W|``, ``|x^ - x|`` (a rounding adds ``u (|v| + r) + eta``)::

        |y^ - y| <= local(|W^||x^|, |W^ x^|) + P,   P = e_W |x| + (|W| + e_W) e_x,

    with ``|W^||x^| <= (|W| + e_W)(|x| + e_x)`` and ``|W^ x^| <= |W x| + P``.  Every ``op`` is
    evaluated in float64 and inflated by ``2 (n + 2) 2**-53`` relative to cover that.
    """
    f = get_format(fmt)
    Wf = np.asarray(W, dtype=np.float64)
    xf = np.asarray(x, dtype=np.float64)
    Wa, xa = np.abs(Wf), np.abs(xf)
    u, eta = unit_roundoff(f, mode), underflow_unit(f, mode)
    eW, wb = _radius(w_radius, Wa.shape)
    ex, xb = _radius(x_radius, xa.shape)
    if round_weights:
        eW = u * (Wa if eW is None else Wa + eW) + eta + (0.0 if eW is None else eW)
    if round_inputs:
        ex = u * (xa if ex is None else xa + ex) + eta + (0.0 if ex is None else ex)
    c = 1.0 + 2.0 * (n + 2) * _U64
    WaU = Wa if eW is None else Wa + eW
    xaU = xa if ex is None else xa + ex
    A = op(WaU, xaU) * c
    P = np.zeros_like(A)
    if eW is not None:
        P = P + op(eW, xa)
    if ex is not None:
        P = P + op(WaU, ex)
    P = P * c
    R = np.abs(op(Wf, xf)) + 2.0 * (n + 2) * _U64 * A + P
    if Profile.parse(profile).tensor_core is not None and "input_max" not in kwargs:
        # the tensor-core bound's alignment term for subnormal inputs needs the largest inputs
        kwargs["input_max"] = (float(WaU.max()) if WaU.size else 0.0, float(xaU.max()) if xaU.size else 0.0)
    local = accumulation_bound(A, n, f, profile, abs_result=R, mode=mode, union=union, **kwargs)
    value = np.where(np.isfinite(local.value), np.asarray(local.value) + P, np.inf)
    perturbed = eW is not None or ex is not None
    return _combine(value, local, wb, xb, note=local.note + (" + perturbation" if perturbed else ""))


def dot_bound(x: ArrayLike, y: ArrayLike, fmt: Fmt = "fp16", profile: str = "ieee", *,
              x_radius: ArrayLike | Bound | None = None, round_inputs: bool = False,
              mode: str | RoundingMode = "nearest-even", **kwargs: Any) -> Bound:
    """Bound on ``|fl(x^T y) - x^T y|`` along the last axis (leading axes broadcast).

    Formulas: :func:`accumulation_bound` with ``A = |x|^T |y|``, ``|s| = |x^T y|``.
    ``round_inputs`` adds the input-rounding term of rounding both ``x`` and ``y`` to
    ``fmt`` first (``~ 2 u |x|^T |y|``, docs/theory.md §3.1); ``x_radius`` bounds a
    perturbation of ``x`` (propagated error).

    >>> x = np.full(100, 0.1); y = np.ones(100)
    >>> b = dot_bound(x, y, "fp16", "fp32-accumulate", round_inputs=True)
    >>> round(b.value, 4)      # u |s| + input rounding ~ 2 u |x|^T|y|
    0.0147
    """
    xf = np.asarray(x, dtype=np.float64)
    yf = np.asarray(y, dtype=np.float64)
    n = np.broadcast_shapes(xf.shape, yf.shape)[-1]

    def op(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sum(a * b, axis=-1)

    return _linear_bound(op, yf, xf, n, fmt, profile, 1, x_radius=x_radius, round_weights=round_inputs,
                         round_inputs=round_inputs, mode=mode, **kwargs)


def matvec_bound(W: ArrayLike, x: ArrayLike, fmt: Fmt = "fp16", profile: str = "ieee", *,
                 x_radius: ArrayLike | Bound | None = None, round_weights: bool = False,
                 round_inputs: bool = False, mode: str | RoundingMode = "nearest-even",
                 **kwargs: Any) -> Bound:
    """Componentwise bound on ``|fl(W x) - W x|`` in the ``|W| |x|`` form.

    Row by row, :func:`accumulation_bound` with ``A = |W| |x|`` and ``|s| = |W x|``: e.g. for
    ``profile="ieee"``, ``|y^ - y| <= gamma_n |W| |x|`` (Higham 2002, eq. (3.11)).

    Parameters
    ----------
    W : array_like, shape (m, n)
    x : array_like, shape (..., n)
        Leading axes are a batch; the first one is "the sample" for probabilistic bounds,
        whose failure probability covers all outputs of one sample.
    x_radius : array_like or Bound, optional
        Bound on ``|x^ - x|`` where ``x^`` is the input actually used (the propagated error
        of earlier layers).  The result then also contains ``|W^| x_radius``: it bounds the
        total error at the output, rigorously.
    round_weights, round_inputs : bool
        Whether ``W`` / ``x`` are rounded to ``fmt`` before the product (input-rounding terms
        ``e_W |x|``, ``|W| e_x``, ``e = u |.| + eta``).
    **kwargs
        ``order``, ``block``, ``accumulator``, ``method``, ``failure_prob``, ``lam``: see
        :func:`accumulation_bound`.

    A bias added inside the accumulation is the extra column ``[W, b] [x; 1]``; a bias added
    after a rounding is :func:`fpanalysis.bounds.layers.add_local_bound`.

    >>> W = np.full((2, 1024), 0.01); x = np.ones(1024)
    >>> np.round(matvec_bound(W, x, "fp16", "ieee").value, 3).tolist()   # gamma_1024 = 1
    [10.24, 10.24]
    >>> b = matvec_bound(W, x, "fp16", "ieee", method="probabilistic", failure_prob=1e-6)
    >>> round(b.max(), 2), b.probability        # gamma~_1024(lam=6.66) ~ 0.11 instead of 1
    (1.13, 0.999999)
    """
    Wf = np.asarray(W, dtype=np.float64)
    xf = np.asarray(x, dtype=np.float64)
    if Wf.ndim != 2 or xf.shape[-1] != Wf.shape[1]:
        raise ValueError(f"matvec_bound needs W of shape (m, n) and x of shape (..., n); got {Wf.shape}, {xf.shape}")
    union = Wf.shape[0] * (int(np.prod(xf.shape[1:-1])) if xf.ndim >= 2 else 1)

    def op(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return b @ a.T

    return _linear_bound(op, Wf, xf, Wf.shape[1], fmt, profile, union, x_radius=x_radius,
                         round_weights=round_weights, round_inputs=round_inputs, mode=mode, **kwargs)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def conv2d_float64(x: ArrayLike, w: ArrayLike, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> np.ndarray:
    """2-D cross-correlation as in ``torch.nn.functional.conv2d`` (no bias), in NumPy.

    ``x``: (N, C, H, W) or (C, H, W); ``w``: (O, C / groups, kh, kw).  Used to apply ``|W|``
    to magnitudes and error bounds.

    >>> conv2d_float64(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))).tolist()
    [[[[4.0, 4.0], [4.0, 4.0]]]]
    """
    xf = np.asarray(x, dtype=np.float64)
    wf = np.asarray(w, dtype=np.float64)
    squeeze = xf.ndim == 3
    if squeeze:
        xf = xf[None]
    N, C = xf.shape[:2]
    O, Cg, kh, kw = wf.shape
    g = int(groups)
    if C != Cg * g or O % g:
        raise ValueError(f"conv2d: input channels {C} and weight shape {wf.shape} do not match groups={g}")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    xp = np.pad(xf, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    Ho, Wo = win.shape[2], win.shape[3]
    win = win.reshape(N, g, Cg, Ho, Wo, kh, kw)
    wg = wf.reshape(g, O // g, Cg, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True).reshape(N, O, Ho, Wo)
    return out[0] if squeeze else out


def conv2d_bound(w: ArrayLike, x: ArrayLike, fmt: Fmt = "fp16", profile: str = "ieee", *,
                 stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1,
                 x_radius: ArrayLike | Bound | None = None, round_weights: bool = False,
                 round_inputs: bool = False, mode: str | RoundingMode = "nearest-even",
                 **kwargs: Any) -> Bound:
    """Componentwise bound on the error of a 2-D convolution, in the ``|W| * |x|`` form.

    Each output is an inner product of length ``n = (C / groups) kh kw`` (zero padding only
    makes it exact in more places), so :func:`accumulation_bound` applies with
    ``A = conv(|x|, |w|)`` and ``|s| = |conv(x, w)|``; the keyword arguments are those of
    :func:`matvec_bound`.  ``x`` of shape (N, C, H, W): probabilistic failure probabilities
    are per sample (over its ``O Ho Wo`` outputs).

    >>> b = conv2d_bound(np.full((4, 3, 3, 3), 0.1), np.ones((2, 3, 8, 8)), "fp16", "fp32-accumulate", padding=1)
    >>> b.value.shape, round(b.max(), 5)
    ((2, 4, 8, 8), 0.00132)
    """
    wf = np.asarray(w, dtype=np.float64)
    xf = np.asarray(x, dtype=np.float64)
    n = wf.shape[1] * wf.shape[2] * wf.shape[3]

    def op(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return conv2d_float64(b, a, stride, padding, dilation, groups)

    probe = conv2d_float64(np.zeros(xf.shape[-3:]), np.zeros(wf.shape), stride, padding, dilation, groups)
    union = int(probe.size)
    return _linear_bound(op, wf, xf, n, fmt, profile, union, x_radius=x_radius, round_weights=round_weights,
                         round_inputs=round_inputs, mode=mode, **kwargs)


def matmul_bound(A: ArrayLike, B: ArrayLike, fmt: Fmt = "fp16", profile: str = "ieee", *,
                 a_radius: ArrayLike | Bound | None = None, b_radius: ArrayLike | Bound | None = None,
                 round_inputs: bool = False, mode: str | RoundingMode = "nearest-even", **kwargs: Any) -> Bound:
    """Componentwise bound on ``|fl(A^ B^) - A B|`` for a (batched) matrix product.

    ``A``: (..., m, k), ``B``: (..., k, n) as ``numpy.matmul``; ``A^``, ``B^`` within
    ``a_radius``, ``b_radius`` of ``A``, ``B`` (then rounded to ``fmt`` if ``round_inputs``).
    Inner products of length ``k``: :func:`accumulation_bound` with ``|A^||B^|`` plus the
    exact perturbation term ``e_A |B| + (|A| + e_A) e_B``.  For ``A`` with 3 or more axes the
    first is the sample axis of probabilistic bounds.  Used for attention (``Q K^T``, ``P V``).

    >>> b = matmul_bound(np.ones((2, 4, 64)), np.ones((2, 64, 4)), "fp16", "fp32-accumulate")
    >>> b.value.shape, round(b.max(), 4)
    ((2, 4, 4), 0.0315)
    """
    Af = np.asarray(A, dtype=np.float64)
    Bf = np.asarray(B, dtype=np.float64)
    k = Af.shape[-1]
    if Bf.shape[-2] != k:
        raise ValueError(f"matmul_bound: shapes {Af.shape} and {Bf.shape} do not multiply")
    out_shape = np.broadcast_shapes(Af.shape[:-2], Bf.shape[:-2]) + (Af.shape[-2], Bf.shape[-1])
    union = int(np.prod(out_shape[1:])) if len(out_shape) >= 3 else int(np.prod(out_shape))
    return _linear_bound(np.matmul, Af, Bf, k, fmt, profile, union, x_radius=b_radius, w_radius=a_radius,
                         round_weights=round_inputs, round_inputs=round_inputs, mode=mode, **kwargs)


# --------------------------------------------------------------------------------------------
# Propagation (first order, |phi'| (.) |W| form, docs/theory.md §3.3)
# --------------------------------------------------------------------------------------------
def _val(b: Bound) -> np.ndarray:
    return np.asarray(b.value, dtype=np.float64)


def _safe_sum(*arrays: np.ndarray) -> np.ndarray:
    out = arrays[0]
    for a in arrays[1:]:
        out = out + a
    return out


def propagate_linear(e_in: ArrayLike | Bound, W: ArrayLike | Callable[[np.ndarray], np.ndarray],
                     local: ArrayLike | Bound | None = None) -> Bound:
    """Error after a linear layer: ``|W| e_in + local``.

    ``W`` is a matrix of shape (m, n) (applied as ``e_in @ |W|^T``, batch axes allowed) or a
    callable applying the magnitude operator ``v -> |W| v`` (e.g. a convolution with ``|w|``).
    Exact for the linear part: ``|W (x^ - x)| <= |W| |x^ - x|``.

    >>> np.round(propagate_linear([1e-3, 2e-3], np.array([[1.0, -2.0]]), local=[1e-4]).value, 9).tolist()
    [0.0051]
    """
    e = _as_bound(e_in)
    loc = _as_bound(local)
    ev = _val(e)
    if callable(W):
        prop = np.asarray(W(ev), dtype=np.float64)
    else:
        prop = ev @ np.abs(np.asarray(W, dtype=np.float64)).T
    return _combine(_safe_sum(prop * _PAD, _val(loc)), e, loc, note="|W| e + local")


def propagate_conv2d(e_in: ArrayLike | Bound, w: ArrayLike, local: ArrayLike | Bound | None = None, *,
                     stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Bound:
    """Error after a convolution: ``conv(e_in, |w|) + local`` (see :func:`propagate_linear`).

    >>> propagate_conv2d(np.full((1, 1, 3, 3), 1e-3), np.ones((1, 1, 2, 2))).value.shape
    (1, 1, 2, 2)
    """
    wa = np.abs(np.asarray(w, dtype=np.float64))
    return propagate_linear(e_in, lambda v: conv2d_float64(v, wa, stride, padding, dilation, groups), local)


def propagate_matmul(A: ArrayLike, B: ArrayLike, e_A: ArrayLike | Bound | None, e_B: ArrayLike | Bound | None,
                     local: ArrayLike | Bound | None = None) -> Bound:
    """Error of a product of two perturbed operands: ``e_A |B| + |A| e_B + e_A e_B + local``.

    Exact (not first order): ``A^ B^ - A B = dA B + A dB + dA dB``.  ``A``: (..., m, k),
    ``B``: (..., k, n), as ``numpy.matmul`` (used for attention, ``Q K^T`` and ``P V``).

    >>> np.round(propagate_matmul(np.eye(2), np.ones((2, 1)), 1e-3, None).value, 9).tolist()
    [[0.002], [0.002]]
    """
    Af = np.asarray(A, dtype=np.float64)
    Bf = np.asarray(B, dtype=np.float64)
    ea, eb, loc = _as_bound(e_A), _as_bound(e_B), _as_bound(local)
    eav = np.broadcast_to(_val(ea), Af.shape)
    ebv = np.broadcast_to(_val(eb), Bf.shape)
    k = Af.shape[-1]
    val = (eav @ np.abs(Bf) + np.abs(Af) @ ebv + eav @ ebv) * (1.0 + 2.0 * (k + 2) * _U64)
    return _combine(_safe_sum(val, _val(loc)), ea, eb, loc, note="e_A|B| + |A|e_B + e_A e_B + local")


def propagate_elementwise(e_in: ArrayLike | Bound, slope: ArrayLike, local: ArrayLike | Bound | None = None) -> Bound:
    """Error after an elementwise map: ``slope (.) e_in + local``.

    ``slope`` bounds ``|phi'|``: at the reference point for the first-order bound of
    docs/theory.md §3.3, or over ``[z - e_in, z + e_in]`` (mean value theorem) for a rigorous
    one, see :func:`fpanalysis.bounds.layers.activation_slope`.  Also covers per-channel
    scalings (batch norm: ``slope = |gamma / sqrt(var + eps)|``).

    >>> np.round(propagate_elementwise([1e-3, 1e-3], [0.0, 1.0], local=[0.0, 1e-4]).value, 9).tolist()
    [0.0, 0.0011]
    """
    e, loc = _as_bound(e_in), _as_bound(local)
    val = np.abs(np.asarray(slope, dtype=np.float64)) * _val(e) * _PAD
    return _combine(_safe_sum(val, _val(loc)), e, loc, note="|phi'| e + local")


def propagate_add(*errors: ArrayLike | Bound | None, local: ArrayLike | Bound | None = None) -> Bound:
    """Error of a sum of perturbed tensors (residual connection): ``sum_i e_i + local``.

    >>> np.round(propagate_add([1e-3], [2e-3], local=[1e-4]).value, 9).tolist()
    [0.0031]
    """
    bs = [_as_bound(e) for e in errors if e is not None]
    loc = _as_bound(local)
    vals = [_val(b) for b in bs] + [_val(loc)]
    return _combine(_safe_sum(*vals) * _PAD, *bs, loc, note="sum e + local")

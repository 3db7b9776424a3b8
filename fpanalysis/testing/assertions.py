"""Assertions for rounding-error bounds, emulated kernels and models, for your own test suite.

Each assertion raises ``AssertionError`` with a message that says where (the index), by how
much (the error, the bound, their ratio), which bound (its kind, probability and formula) and
the values involved; on success it returns a small record (error/bound ratios, counts) that a
test can log or assert on further.  Invalid arguments (mismatched shapes, a NaN bound, unknown
names) raise ``ValueError`` instead: they are mistakes in the test, not failures of the code.

>>> import numpy as np
>>> from fpanalysis.testing.assertions import assert_within_bound
>>> assert_within_bound([1.0, 2.5], [1.0, 2.0], [0.25, 0.25])
Traceback (most recent call last):
...
AssertionError: assert_within_bound: |computed - reference| exceeds the bound at 1 of 2 entries
  bound: the given bound array (max 0.25)
  worst at index (1,): computed 2.5, reference 2.0, |error| 0.5 > bound 0.25 (2x the bound, exceeds it by 0.25)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..formats import FloatFormat, get_format

__all__ = [
    "BoundCheck",
    "CertificateCheck",
    "EmulationCheck",
    "FailureRate",
    "assert_certificates_hold",
    "assert_certified_agreement",
    "assert_check_verdict",
    "assert_emulated_close",
    "assert_within_bound",
    "assert_within_probabilistic_bound",
    "check_failure_rate",
]

_LISTED = 5  # violations listed in a message besides the worst one
VERDICTS = ("SAFE", "SAFE WITH CHANGES", "UNSAFE")


# --------------------------------------------------------------------------------------------
# Records returned on success
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoundCheck:
    """Outcome of a bound assertion.

    ``max_ratio`` is the largest ``|error| / bound`` over the entries with a finite bound (at
    most 1 when the assertion passed; its inverse is the bound's tightness on this data).
    """

    n: int
    violations: int
    vacuous: int
    max_error: float
    max_ratio: float
    worst_index: tuple[int, ...] | None
    probability: float = 1.0


@dataclass(frozen=True)
class FailureRate:
    """Outcome of :func:`check_failure_rate`.

    ``max_allowed`` is the largest number of failures that would not have been significant
    at level ``alpha``; ``p_value`` is ``P(X >= failures)`` for ``X ~ Binomial(n_trials,
    stated)``.
    """

    n_trials: int
    failures: int
    stated: float
    alpha: float
    p_value: float
    max_allowed: int
    failed_trials: tuple[int, ...] = ()

    @property
    def rate(self) -> float:
        return self.failures / self.n_trials if self.n_trials else 0.0


@dataclass(frozen=True)
class EmulationCheck:
    """Outcome of :func:`assert_emulated_close`: both runs' outputs (float64) and the largest
    errors over finite entries, in ulps of the format at the reference and in units of
    roundoff ``u |reference|``."""

    emulated: Any
    reference: Any
    max_ulps: float
    max_units_of_roundoff: float
    arithmetic: str = ""


@dataclass(frozen=True)
class CertificateCheck:
    """Outcome of :func:`assert_certificates_hold` / :func:`assert_certified_agreement`
    (``report``: the :class:`~fpanalysis.report.AnalysisReport` of the latter)."""

    n: int
    certified: int
    agreement: float
    flips: int
    max_delta_over_bound: float
    certified_mask: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))
    report: Any = field(repr=False, default=None)

    @property
    def certified_fraction(self) -> float:
        return self.certified / self.n if self.n else 0.0


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------
def _num(v: float) -> str:
    """Exact-enough text for a value: repr for floats (round-trips), integers as integers."""
    v = float(v)
    return repr(v)


def _short(v: float) -> str:
    v = float(v)
    return f"{v:.4g}" if math.isfinite(v) and v != 0 else repr(v)


def _ratio(v: float) -> str:
    """A ratio to the bound, with enough digits to show that it exceeds 1."""
    v = float(v)
    return f"{v:.4g}" if not (1.0 <= v < 1.001) else f"{v:.12g}"


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(flat), shape)) if shape else ()


def _abs_error(c: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``|c - r|``: 0 where the values are equal (equal infinities included) or both NaN, NaN
    where only one is NaN, inf where they differ by an infinity."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(c - r)
    same = (c == r) | (np.isnan(c) & np.isnan(r))
    err = np.where(same, 0.0, err)
    return np.where(np.isnan(c) ^ np.isnan(r), np.nan, err)


def _describe_bound(bound: Any, values: np.ndarray, label: str | None) -> str:
    from ..bounds import Bound

    name = f"{label}: " if label else ""
    if isinstance(bound, Bound):
        prob = "" if bound.kind == "deterministic" else f", holds with probability >= {bound.probability:.10g}"
        note = f"; {bound.note}" if bound.note else ""
        return f"{name}{bound.kind} Bound (max {_short(bound.max())}{prob}){note}"
    return f"{name}the given bound array (max {_short(np.max(values)) if values.size else 'n/a'})"


def _bound_values(bound: Any, shape: tuple[int, ...]) -> np.ndarray:
    from ..bounds import Bound

    raw = bound.value if isinstance(bound, Bound) else bound
    b = np.asarray(raw, dtype=np.float64)
    if np.isnan(b).any() or (b < 0).any():
        raise ValueError("the bound must be nonnegative and not NaN")
    try:
        return np.broadcast_to(b, shape)
    except ValueError:
        raise ValueError(f"the bound has shape {b.shape}, which does not broadcast to the values' shape {shape}") from None


def _pair(computed: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(computed, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if c.shape != r.shape:
        raise ValueError(f"computed has shape {c.shape} but reference has shape {r.shape}")
    return c, r


def _check_against(c: np.ndarray, r: np.ndarray, b: np.ndarray, what: str, bound_text: str,
                   allow_vacuous: bool, probability: float, extra: str = "") -> BoundCheck:
    err = _abs_error(c, r)
    finite_b = np.isfinite(b)
    n = int(c.size)
    vacuous = int(n - np.count_nonzero(finite_b))
    bad = ~(err <= b)  # NaN errors are violations
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / b)
    ratio = np.where(np.isnan(err), np.inf, ratio)
    rat_f = np.where(finite_b, ratio, 0.0)
    nviol = int(np.count_nonzero(bad))
    worst_flat = int(np.argmax(rat_f)) if n else None
    worst = _index(worst_flat, c.shape) if n else None
    max_err = float(np.nanmax(np.where(finite_b, err, 0.0))) if n and not np.isnan(err).all() else (math.nan if n else 0.0)
    if nviol:
        flat_bad = np.flatnonzero(bad)
        if not np.isnan(ratio).all():
            worst_flat = int(flat_bad[np.argmax(ratio.reshape(-1)[flat_bad])])
        lines = [f"{what}: |computed - reference| exceeds the bound at {nviol} of {n} entries",
                 f"  bound: {bound_text}"]
        if extra:
            lines.append(f"  {extra}")

        def entry(k: int) -> str:
            i = _index(k, c.shape)
            cv, rv, ev, bv = c.reshape(-1)[k], r.reshape(-1)[k], err.reshape(-1)[k], b.reshape(-1)[k]
            if np.isnan(ev):
                return f"index {i}: computed {_num(cv)}, reference {_num(rv)}: NaN on one side only (bound {_num(bv)})"
            over = f" ({_ratio(ev / bv)}x the bound, exceeds it by {_short(ev - bv)})" if bv > 0 else " (the bound is 0)"
            return f"index {i}: computed {_num(cv)}, reference {_num(rv)}, |error| {_num(ev)} > bound {_num(bv)}{over}"

        lines.append("  worst at " + entry(worst_flat))
        others = [k for k in flat_bad[: _LISTED + 1] if k != worst_flat][:_LISTED]
        if others:
            lines.append(f"  other violations (first {len(others)}):")
            lines.extend("    " + entry(int(k)) for k in others)
        raise AssertionError("\n".join(lines))
    if vacuous and not allow_vacuous:
        first = _index(int(np.argmax(~finite_b)), c.shape)
        raise AssertionError(
            f"{what}: the bound is vacuous (inf) at {vacuous} of {n} entries (first at index {first}), "
            f"so the assertion cannot fail there\n  bound: {bound_text}\n"
            "  pass allow_vacuous=True if that is intended (e.g. n u >= 1, or overflow not excluded)"
        )
    return BoundCheck(n, 0, vacuous, 0.0 if not n else max_err,
                      float(np.max(rat_f)) if n else 0.0, worst, probability)


# --------------------------------------------------------------------------------------------
# Deterministic and probabilistic bounds
# --------------------------------------------------------------------------------------------
def assert_within_bound(computed: Any, reference: Any, bound: Any, *, allow_vacuous: bool = False,
                        label: str | None = None) -> BoundCheck:
    """Assert ``|computed - reference| <= bound`` componentwise.

    Parameters
    ----------
    computed, reference : array_like
        Same shape.  Equal values (equal infinities included) and NaN on both sides agree;
        NaN on one side only is a violation.
    bound : array_like or fpanalysis.bounds.Bound
        Broadcast to the values' shape; e.g. :func:`fpanalysis.bounds.dot_bound`.
    allow_vacuous : bool
        An infinite (vacuous) bound entry cannot be violated; by default that fails the
        assertion, since a test that cannot fail tests nothing.
    label : str, optional
        Name of the bound for the message (e.g. ``"gamma_n |x|^T|y|"``).

    Returns
    -------
    BoundCheck

    Examples
    --------
    >>> from fpanalysis.bounds import dot_bound
    >>> x = np.full(64, 0.1); y = np.ones(64)
    >>> s = float(np.float16(x.astype(np.float16).astype(np.float32) @ y.astype(np.float32)))
    >>> assert_within_bound(s, x @ y, dot_bound(x, y, "fp16", "fp32-accumulate", round_inputs=True)).violations
    0
    """
    c, r = _pair(computed, reference)
    b = _bound_values(bound, c.shape)
    from ..bounds import Bound

    if isinstance(bound, Bound) and bound.kind == "probabilistic":
        return assert_within_probabilistic_bound(computed, reference, bound, allow_vacuous=allow_vacuous, label=label)
    return _check_against(c, r, b, "assert_within_bound", _describe_bound(bound, b, label), allow_vacuous, 1.0)


def assert_within_probabilistic_bound(
    computed: Any,
    reference: Any,
    bound: Any | Callable[[float], Any],
    *,
    confidence: float | None = None,
    allow_vacuous: bool = False,
    label: str | None = None,
) -> BoundCheck:
    """Assert ``|computed - reference| <= bound`` for a bound that holds with probability
    ``confidence``.

    A violation is then an event of probability at most ``1 - confidence`` under the bound's
    model (for Higham-Mary bounds: independent, mean-zero rounding errors), so it is evidence
    against the bound or its assumptions on this data.  To test how *often* a probabilistic
    bound fails, use :func:`check_failure_rate`.

    Parameters
    ----------
    bound : Bound, array_like, or callable
        A :class:`~fpanalysis.bounds.Bound` (its ``probability`` must be at least
        ``confidence`` when that is given); an array, with ``confidence`` stating the
        probability it holds with; or a callable ``failure_prob -> Bound or array`` that builds
        the bound at the requested confidence, e.g.
        ``lambda q: dot_bound(x, y, "fp16", method="probabilistic", failure_prob=q)``.
    confidence : float in (0, 1]
        ``1 - p``; required for arrays and callables.

    Examples
    --------
    >>> from fpanalysis.bounds import dot_bound
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(-1, 1, 4096).astype(np.float16).astype(np.float64); y = np.ones(4096)
    >>> s = 0.0
    >>> for t in x: s = float(np.float16(s + t))          # fp16 accumulation: 4096 u > 1
    >>> bound = lambda q: dot_bound(x, y, "fp16", "ieee", method="probabilistic", failure_prob=q)
    >>> r = assert_within_probabilistic_bound(s, x @ y, bound, confidence=1 - 1e-6)
    >>> r.probability, r.max_ratio < 1
    (0.999999, True)
    """
    from ..bounds import Bound

    if confidence is not None and not 0.0 < float(confidence) <= 1.0:
        raise ValueError(f"confidence must be in (0, 1], got {confidence!r}")
    if callable(bound) and not isinstance(bound, Bound):
        if confidence is None:
            raise ValueError("a bound given as a callable needs confidence= (it is called with 1 - confidence)")
        bound = bound(1.0 - float(confidence))
    c, r = _pair(computed, reference)
    b = _bound_values(bound, c.shape)
    if isinstance(bound, Bound):
        prob = bound.probability
        if confidence is not None and prob < float(confidence) * (1 - 1e-12):
            raise ValueError(
                f"the bound holds with probability >= {prob:.10g}, less than the requested confidence "
                f"{float(confidence):.10g}; build it with failure_prob <= {1 - float(confidence):.3g}"
            )
    else:
        if confidence is None:
            raise ValueError("a bound given as an array needs confidence= (the probability that it holds)")
        prob = float(confidence)
    extra = ""
    if prob < 1.0:
        extra = (f"the bound claims to hold with probability >= {prob:.10g}: under its model this violation has "
                 f"probability <= {1 - prob:.3g}, so the model (independent, mean-zero rounding errors) or the "
                 "bound is suspect for this data")
    return _check_against(c, r, b, "assert_within_probabilistic_bound",
                          _describe_bound(bound, b, label) + ("" if isinstance(bound, Bound) else f", confidence {prob:.10g}"),
                          allow_vacuous, prob, extra)


def _critical_count(n: int, p: float, alpha: float) -> int:
    """Largest k with ``P(X >= k) >= alpha`` for ``X ~ Binomial(n, p)`` (k = 0 when p = 0)."""
    from scipy.stats import binom

    if p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    k = int(binom.isf(alpha, n, p))  # approximately the threshold; adjust exactly below
    k = max(0, min(k, n))
    while k < n and binom.sf(k, n, p) >= alpha:  # P(X >= k+1) still not significant
        k += 1
    while k > 0 and binom.sf(k - 1, n, p) < alpha:  # P(X >= k) significant: step down
        k -= 1
    return k


def check_failure_rate(
    trial_fn: Callable[[np.random.Generator], Any],
    n_trials: int,
    stated_failure_probability: float,
    alpha: float = 1e-6,
    *,
    seed: Any = 0,
) -> FailureRate:
    """Run ``n_trials`` trials of a probabilistic bound and fail when it fails significantly
    more often than it says.

    A trial *fails* when ``trial_fn(rng)`` returns ``False`` or raises ``AssertionError``
    (e.g. from :func:`assert_within_bound`); any other return value (``True``, ``None``) is a
    success, and other exceptions propagate.  With ``k`` failures, the one-sided binomial test
    of ``H0: failure probability <= stated`` has p-value ``P(X >= k)``, ``X ~ Binomial(n_trials,
    stated)`` (scipy.stats.binom); the assertion fails when it is below ``alpha``.  A small
    ``alpha`` (default ``1e-6``) keeps a correct bound from failing a test suite by chance.

    Parameters
    ----------
    trial_fn : callable
        Called as ``trial_fn(rng)`` with one ``numpy.random.Generator`` (seeded by ``seed``)
        shared by all trials, so the run is reproducible.
    stated_failure_probability : float in [0, 1]
        E.g. ``bound.failure_probability``; 0 for a deterministic bound (any failure fails).

    Returns
    -------
    FailureRate

    Examples
    --------
    A "bound" that fails with probability 0.05 (a normal sample beyond 1.96) tested against
    the stated 0.05:

    >>> r = check_failure_rate(lambda rng: abs(rng.normal()) <= 1.96, 2000, 0.05)
    >>> r.failures <= r.max_allowed
    True
    """
    n = int(n_trials)
    p = float(stated_failure_probability)
    if n < 1:
        raise ValueError(f"n_trials must be positive, got {n_trials!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"stated_failure_probability must be in [0, 1], got {p!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    from scipy.stats import binom

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    failed: list[int] = []
    first_messages: list[str] = []
    for i in range(n):
        try:
            ok = trial_fn(rng)
        except AssertionError as exc:
            failed.append(i)
            if len(first_messages) < 3:
                first_messages.append(f"trial {i}: " + str(exc).strip().replace("\n", "\n    "))
            continue
        if ok is False or (isinstance(ok, np.bool_) and not ok):
            failed.append(i)
            if len(first_messages) < 3:
                first_messages.append(f"trial {i}: trial_fn returned False")
    k = len(failed)
    pval = float(binom.sf(k - 1, n, p)) if k > 0 else 1.0
    kmax = _critical_count(n, p, alpha)
    result = FailureRate(n, k, p, float(alpha), pval, kmax, tuple(failed))
    if pval < alpha:
        lines = [
            (f"check_failure_rate: the bound failed in {k} of {n} trials (rate {k / n:.4g}), more often than its "
             f"stated failure probability {p:.4g} allows"),
            f"  expected about {n * p:.4g} failures; at most {kmax} would pass at alpha = {alpha:.3g}",
            f"  one-sided binomial test: P(X >= {k} | n={n}, p={p:.4g}) = {pval:.3g} < alpha = {alpha:.3g}",
            f"  failing trials (first 10): {failed[:10]}",
        ]
        lines.extend("  " + m for m in first_messages)
        raise AssertionError("\n".join(lines))
    return result


# --------------------------------------------------------------------------------------------
# Emulated functions
# --------------------------------------------------------------------------------------------
def _is_float_value(a: Any) -> bool:
    if isinstance(a, bool):
        return False
    if isinstance(a, (float, np.floating)):
        return True
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def _prepare_args(args: Sequence[Any], f: FloatFormat, round_inputs: bool) -> tuple[Any, ...]:
    from ..rounding import round_to

    out = []
    for k, a in enumerate(args):
        if isinstance(a, (list, tuple)) and a and all(isinstance(v, (float, np.floating)) for v in a):
            raise ValueError(f"argument {k} is a {type(a).__name__} of floats; pass a numpy array so that it "
                             "can be rounded to the format (and the reference sees the same values)")
        if not _is_float_value(a):
            out.append(a)
            continue
        a64 = np.asarray(a, dtype=np.float64)
        r = np.asarray(round_to(a64, f), dtype=np.float64)
        if not round_inputs:
            bad = (r != a64) & ~np.isnan(a64)
            if bad.any():
                i = _index(int(np.argmax(bad)), a64.shape)
                raise ValueError(
                    f"argument {k} holds values that are not {f.name} numbers (first at index {i}: "
                    f"{_num(a64[i] if i else a64)}); round them or pass round_inputs=True"
                )
        out.append(float(r) if r.ndim == 0 else r)
    return tuple(out)


def _as_outputs(y: Any, ar: Any) -> list[np.ndarray]:
    items = list(y) if isinstance(y, (tuple, list)) else [y]
    return [np.asarray(ar.to_float(v), dtype=np.float64) for v in items]


def _overflow_agrees(c: np.ndarray, r: np.ndarray, f: FloatFormat, mode: Any) -> np.ndarray:
    """Where an emulated infinity is the format's rounding of a finite reference beyond its range
    (for stochastic rounding: any reference beyond the largest finite number, same sign)."""
    cand = np.isinf(c) & np.isfinite(r) & (np.abs(r) > f.max) & (np.sign(c) == np.sign(r))
    if not cand.any() or str(getattr(mode, "value", mode)) == "stochastic":
        return cand
    from ..rounding import round_to

    ok = np.zeros(c.shape, dtype=bool)
    ok[cand] = np.asarray(round_to(r[cand], f, mode), dtype=np.float64) == c[cand]
    return ok


def _emulation_entry(k: int, shape: tuple[int, ...], cols: tuple, f: FloatFormat) -> str:
    cv, rv, ev, ulps_k, units_k, tol_k = (a[k] for a in cols)
    i = _index(k, shape)
    if not np.isfinite(ev):
        if np.isnan(ev):
            why = "NaN on one side only"
        elif np.isinf(cv):
            why = f"overflow: {f.name}'s largest finite number is {_num(f.max)}"
        else:
            why = "non-finite difference"
        return f"index {i}: emulated {_num(cv)}, reference {_num(rv)} ({why})"
    return (f"index {i}: emulated {_num(cv)}, reference {_num(rv)}, |difference| {_num(ev)} = "
            f"{_short(ulps_k)} ulp = {_short(units_k)} u|ref| (allowed {_short(tol_k)})")


def _ulp_at(f: FloatFormat, r: np.ndarray) -> np.ndarray:
    a = np.abs(r)
    _, ex = np.frexp(np.where(np.isfinite(a), a, 1.0))
    e = np.clip(ex - 1, f.emin, f.emax)
    e = np.where(np.isfinite(a), e, f.emax)
    return np.ldexp(1.0, (e - f.p + 1).astype(np.int64))


def assert_emulated_close(
    fn: Callable[..., Any],
    args: Sequence[Any],
    fmt: str | FloatFormat = "fp16",
    *,
    mode: str = "nearest-even",
    profile: str = "fp32-accumulate",
    reference: str = "float64",
    ulps: float | None = None,
    units_of_roundoff: float | None = None,
    atol: float = 0.0,
    round_inputs: bool = True,
    seed: Any = None,
    order: str = "sequential",
    block: int = 32,
    fma: bool = False,
    kwargs: dict[str, Any] | None = None,
) -> EmulationCheck:
    """Assert that ``fn`` run in an emulated format agrees with its float64 or exact reference.

    ``fn(ar, *args, **kwargs)`` is called twice with the same inputs: with an
    :class:`~fpanalysis.testing.emulator.Emulator` for ``(fmt, mode, profile)`` and with the
    reference arithmetic (see :mod:`fpanalysis.testing.emulator` for how ``fn`` is written).
    It returns an array, a number, or a tuple/list of them.

    Parameters
    ----------
    args : sequence
        Positional arguments after ``ar``.  Floating-point arrays and floats are rounded to
        ``fmt`` (nearest even) first, and the *rounded* values go to both runs, so the
        comparison measures the arithmetic only; with ``round_inputs=False`` they must already
        be numbers of ``fmt``.  Other arguments (ints, strings, callables) pass unchanged.
    reference : str
        ``"float64"`` or ``"exact"`` (rational arithmetic; slow, for small inputs).
    ulps, units_of_roundoff, atol : float
        The tolerance per entry, the sum of those given (at least one):
        ``ulps * ulp(ref) + units_of_roundoff * u * |ref| + atol``, where ``ulp(ref)`` is the
        spacing of ``fmt`` at the reference value and ``u = 2**-p`` is its unit roundoff.
    mode, profile, seed, order, block, fma
        The emulated arithmetic (see :class:`~fpanalysis.testing.emulator.Emulator`).

    Special values: NaN agrees with NaN; equal infinities agree; an emulated ``+-inf`` agrees
    with a finite reference that the format rounds (with ``mode``) to that infinity, e.g. fp16
    ``inf`` with a reference of at least 65520 under round-to-nearest.  Any other non-finite
    difference is a violation.

    Returns
    -------
    EmulationCheck

    Examples
    --------
    >>> def mean(ar, x):
    ...     return ar.div(ar.sum(x), float(len(x)))
    >>> x = np.linspace(0, 1, 100)
    >>> assert_emulated_close(mean, (x,), "fp16", ulps=1).max_ulps <= 1
    True
    """
    from .emulator import Emulator, reference_arithmetic

    f = get_format(fmt)
    if ulps is None and units_of_roundoff is None and not atol:
        raise ValueError("give a tolerance: ulps=, units_of_roundoff= and/or atol=")
    for name, v in (("ulps", ulps), ("units_of_roundoff", units_of_roundoff), ("atol", atol)):
        if v is not None and not (float(v) >= 0):
            raise ValueError(f"{name} must be a nonnegative number, got {v!r}")
    em = Emulator(f, mode, profile, order=order, block=block, fma=fma, seed=seed)
    ref = reference_arithmetic(reference)
    xs = _prepare_args(args, f, round_inputs)
    kw = kwargs or {}
    outs_e = _as_outputs(fn(em, *xs, **kw), em)
    outs_r = _as_outputs(fn(ref, *xs, **kw), ref)
    fname = getattr(fn, "__name__", repr(fn))
    if len(outs_e) != len(outs_r):
        raise AssertionError(f"assert_emulated_close: {fname} returned {len(outs_e)} outputs in {em.name} "
                             f"but {len(outs_r)} in the {ref.name} reference")
    tol_text = " + ".join(t for t in (
        f"{ulps:g} ulp" if ulps is not None else "",
        f"{units_of_roundoff:g} u|ref|" if units_of_roundoff is not None else "",
        f"{atol:g}" if atol else "") if t)
    max_ulps = 0.0
    max_units = 0.0
    for j, (c, r) in enumerate(zip(outs_e, outs_r)):
        where = f"output {j} " if len(outs_e) > 1 else ""
        if c.shape != r.shape:
            raise AssertionError(f"assert_emulated_close: {fname} {where}has shape {c.shape} in {em.name} but "
                                 f"{r.shape} in the {ref.name} reference")
        ulp = _ulp_at(f, r)
        tol = (ulps or 0.0) * ulp + (units_of_roundoff or 0.0) * f.u * np.abs(r) + float(atol)
        err = _abs_error(c, r)
        err = np.where(_overflow_agrees(c, r, f, em.mode), 0.0, err)
        bad = ~(err <= tol)
        with np.errstate(divide="ignore", invalid="ignore"):
            in_ulps = err / ulp
            in_units = np.where(err == 0, 0.0, err / (f.u * np.abs(r)))
        fin = np.isfinite(err)
        if fin.any():
            max_ulps = max(max_ulps, float(np.max(in_ulps[fin])))
            max_units = max(max_units, float(np.max(in_units[fin])))
        if bad.any():
            flat_bad = np.flatnonzero(bad)
            score = np.where(np.isfinite(err), err / np.maximum(tol, np.finfo(float).tiny), np.inf).reshape(-1)
            worst = int(flat_bad[np.argmax(score[flat_bad])])

            cols = (c.reshape(-1), r.reshape(-1), err.reshape(-1), in_ulps.reshape(-1), in_units.reshape(-1),
                    tol.reshape(-1))

            def entry(k: int, shape: tuple[int, ...] = c.shape, cols: tuple = cols) -> str:
                return _emulation_entry(k, shape, cols, f)

            lines = [(f"assert_emulated_close: {fname} {where}run in {em.name} differs from its {ref.name} reference "
                      f"by more than {tol_text} at {flat_bad.size} of {c.size} entries"),
                     "  worst at " + entry(worst)]
            others = [int(k) for k in flat_bad[: _LISTED + 1] if k != worst][:_LISTED]
            if others:
                lines.append(f"  other violations (first {len(others)}):")
                lines.extend("    " + entry(k) for k in others)
            lines.append(f"  (ulp = spacing of {f.name} at the reference value; u = 2**-{f.p})")
            raise AssertionError("\n".join(lines))
    single = len(outs_e) == 1
    return EmulationCheck(outs_e[0] if single else outs_e, outs_r[0] if single else outs_r,
                          max_ulps, max_units, em.name)


# --------------------------------------------------------------------------------------------
# Models: certificates and the check verdict
# --------------------------------------------------------------------------------------------
def _check_certificates(gamma: np.ndarray, B: np.ndarray, cert: np.ndarray, cls_ref: np.ndarray,
                        cls_low: np.ndarray, delta: np.ndarray, *, check_bound: bool, min_certified: float | None,
                        names: tuple[str, str], kind: str, what: str) -> CertificateCheck:
    """The certificate checks on per-input arrays (Gamma, B, certified, classes, delta)."""
    N = int(gamma.shape[0])
    flips = (cls_ref != cls_low) | np.isnan(delta)
    a, b = names
    bad = cert & flips
    if bad.any():
        idx = np.flatnonzero(bad)
        lines = [(f"{what}: {idx.size} of {int(cert.sum())} certified inputs changed class in {b} "
                  f"(Gamma > 2B promised the {a} argmax; {kind})")]
        for i in idx[:_LISTED + 1]:
            lines.append(f"  input {i}: Gamma = {_short(gamma[i])} > 2B = {_short(2 * B[i])}, but {b} argmax "
                         f"{cls_low[i]} != {a} argmax {cls_ref[i]}; delta = {_short(delta[i])} > B = {_short(B[i])}")
        raise AssertionError("\n".join(lines))
    fin = np.isfinite(B)
    viol = fin & ~(delta <= B)
    if check_bound and viol.any():
        idx = np.flatnonzero(viol)
        lines = [(f"{what}: delta = ||{b} - {a}||_inf exceeds the bound B at {idx.size} of {N} "
                  f"inputs ({kind})")]
        for i in idx[:_LISTED + 1]:
            lines.append(f"  input {i}: delta = {_num(delta[i])} > B = {_num(B[i])} "
                         f"({_ratio(delta[i] / B[i]) if B[i] > 0 else 'inf'}x)")
        raise AssertionError("\n".join(lines))
    ncert = int(cert.sum())
    if min_certified is not None and ncert < float(min_certified) * N:
        raise AssertionError(f"{what}: only {ncert} of {N} inputs ({ncert / max(N, 1):.1%}) are "
                             f"certified (Gamma > 2B); expected at least {float(min_certified):.1%}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(delta == 0, 0.0, delta / B)
    mx = float(np.max(ratio[fin])) if fin.any() else 0.0
    return CertificateCheck(N, ncert, float(np.mean(~flips)) if N else 1.0, int(flips.sum()), mx, cert)


def assert_certificates_hold(
    reference_outputs: Any,
    lowp_outputs: Any,
    bound: Any,
    *,
    check_bound: bool = True,
    min_certified: float | None = None,
    names: tuple[str, str] = ("fp32", "fp16"),
) -> CertificateCheck:
    """Assert the tolerance certificate on a batch: wherever ``Gamma(x) > 2 B(x)``, the
    low-precision outputs keep the reference argmax (docs/theory.md §2.2; Yun et al.,
    arXiv:2305.10947, the lemma: ``Gamma > 2 delta`` implies equal argmax).

    ``Gamma > 2B`` is evaluated as :func:`fpanalysis.tolerance.certify` does (float64 rounding
    can only make it say "not certified").

    Parameters
    ----------
    reference_outputs, lowp_outputs : array_like, shape (N, K)
        Outputs (logits or probabilities) of the reference (fp32) and the low-precision run.
    bound : array_like (N,) or Bound or float
        ``B(x) >= ||lowp(x) - reference(x)||_inf`` claimed per input.
    check_bound : bool
        Also assert ``delta(x) = ||lowp(x) - reference(x)||_inf <= B(x)`` for every input with a
        finite bound (stronger: a certified flip implies it is violated).
    min_certified : float, optional
        Also assert that at least this fraction of inputs is certified (a certificate that
        certifies nothing is not useful).
    names : (str, str)
        How the two runs are called in messages.

    Examples
    --------
    >>> ref = np.array([[3.0, 1.0], [1.0, 1.25]]); low = np.array([[2.875, 1.125], [1.125, 1.0]])
    >>> r = assert_certificates_hold(ref, low, [0.125, 0.25])   # input 1: not certified, flips
    >>> r.certified, r.flips
    (1, 1)
    """
    from ..bounds import Bound
    from ..tolerance import certify, classification_tolerance, output_error

    R = np.asarray(reference_outputs, dtype=np.float64)
    L = np.asarray(lowp_outputs, dtype=np.float64)
    if R.ndim != 2 or R.shape != L.shape or R.shape[1] < 2:
        raise ValueError(f"outputs must both have shape (N, K) with K >= 2; got {R.shape} and {L.shape}")
    N = R.shape[0]
    B = np.array(_bound_values(bound.value if isinstance(bound, Bound) else bound, (N,)))
    cert = np.isfinite(B) & certify(R, B)
    delta = output_error(R, L)
    cls_low = np.where(np.isnan(L).any(axis=1), -1, np.argmax(L, axis=1))
    kind = (f"{bound.kind} bound" + (f", probability >= {bound.probability:.10g}" if bound.kind != "deterministic" else "")
            if isinstance(bound, Bound) else "the given bound")
    return _check_certificates(classification_tolerance(R), B, cert, np.argmax(R, axis=1), cls_low, delta,
                               check_bound=check_bound, min_certified=min_certified, names=names, kind=kind,
                               what="assert_certificates_hold")


_METHODS = ("deterministic", "probabilistic")
_SPACES = ("logits", "probs")


def assert_certified_agreement(
    model: Any,
    inputs: Any,
    fmt: str | FloatFormat = "fp16",
    *,
    profile: str = "fp32-accumulate",
    method: str = "deterministic",
    run: str = "emulator",
    space: str = "logits",
    check_bound: bool = True,
    min_certified: float | None = None,
    **analyze_kwargs: Any,
) -> CertificateCheck:
    """Assert that ``model``'s low-precision outputs keep the fp32 argmax wherever the
    certificate ``Gamma(x) > 2 B(x)`` of :func:`fpanalysis.analysis.analyze` says they must.

    Runs ``analyze(model, inputs, fmt, profile, **analyze_kwargs)`` and checks its per-input
    certificates (:mod:`fpanalysis.tolerance`) against one of its low-precision runs.

    Parameters
    ----------
    model, inputs :
        A torch ``nn.Module`` (of the layers ``analyze`` supports) and an input batch.
    method : str
        ``"deterministic"`` (sound bound ``B``) or ``"probabilistic"`` (Higham-Mary, holding with
        the probability ``1 - failure_prob`` per input; ``failure_prob`` is an ``analyze``
        argument).
    run : str
        Which low-precision outputs: ``"emulator"`` (the emulator under ``profile``),
        ``"torch-half"`` (torch's float16 kernels on the CPU, layer by layer; ``"torch-bf16"``
        for bf16), or another run ``analyze`` recorded (``"cuda-half"`` / ``"cuda-bf16"`` when
        CUDA is present).
    space : str
        ``"logits"`` or ``"probs"`` (softmax probabilities, with the bound mapped through it).
    check_bound, min_certified :
        See :func:`assert_certificates_hold`.
    **analyze_kwargs :
        Passed to ``analyze`` (``mode``, ``failure_prob``, ``batch_size``, ``seed``, ...);
        ``progress`` defaults to False.

    Returns
    -------
    CertificateCheck
        With the analysis report as ``.report``.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    >>> r = assert_certified_agreement(model, torch.randn(64, 20), "fp16", run="torch-half", min_certified=0.5)
    >>> r.flips <= r.n - r.certified
    True
    """
    import warnings

    meth = _choice(method, _METHODS, "method")
    sp = _choice(space, _SPACES, "space")
    from ..analysis import analyze
    from ..tolerance import BoundViolationWarning

    f = get_format(fmt)
    analyze_kwargs.setdefault("progress", False)
    analyze_kwargs["keep_per_input"] = True
    with warnings.catch_warnings():  # a bound violation is reported below, as an assertion
        warnings.simplefilter("ignore", BoundViolationWarning)
        report = analyze(model, inputs, f, profile, **analyze_kwargs)
    per = report.per_input.get(sp, {})
    runs = sorted(k[len("delta_"):] for k in per if k.startswith("delta_"))
    if run not in runs:
        raise ValueError(f"analyze recorded no run {run!r}; runs available: {', '.join(runs) or 'none'}")
    suffix = "" if meth == "deterministic" else "_prob"
    arr = {k: np.asarray(v) for k, v in per.items()}
    kind = ("deterministic bound" if meth == "deterministic"
            else f"probabilistic bound, probability >= {report.probability:.10g} per input")
    check = _check_certificates(
        arr["gamma"].astype(np.float64), arr["B" + suffix].astype(np.float64), arr["certified" + suffix].astype(bool),
        arr["class_fp32"], arr[f"class_{run}"], arr[f"delta_{run}"].astype(np.float64), check_bound=check_bound,
        min_certified=min_certified, names=("fp32", f"{f.name} ({run}, {profile})"), kind=f"{sp}, {kind}",
        what="assert_certified_agreement")
    return CertificateCheck(check.n, check.certified, check.agreement, check.flips, check.max_delta_over_bound,
                            check.certified_mask, report)


def _choice(value: Any, valid: tuple[str, ...], what: str) -> str:
    key = str(value).strip().lower()
    if key not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid {what}s are: {', '.join(valid)}")
    return key


def _verdicts(verdict: str | Iterable[str]) -> tuple[str, ...]:
    items = [verdict] if isinstance(verdict, str) else list(verdict)
    out = []
    for v in items:
        key = " ".join(str(v).replace("_", " ").replace("-", " ").upper().split())
        if key not in VERDICTS:
            raise ValueError(f"unknown verdict {v!r}; valid verdicts are: {', '.join(VERDICTS)}")
        out.append(key)
    if not out:
        raise ValueError(f"give at least one verdict of: {', '.join(VERDICTS)}")
    return tuple(out)


def assert_check_verdict(model: Any, data: Any, verdict: str | Iterable[str], **kwargs: Any) -> Any:
    """Assert that ``fpanalysis check`` gives ``model`` on ``data`` the expected verdict.

    Parameters
    ----------
    verdict : str or iterable of str
        ``"SAFE"``, ``"SAFE WITH CHANGES"`` or ``"UNSAFE"`` (case, ``_`` and ``-`` ignored), or
        several acceptable ones.
    **kwargs :
        Passed to :func:`fpanalysis.check.check` (``fmt``, ``optimizer``, ``lr``, ``eps``,
        ``steps``, ``certify``, ...).

    Returns
    -------
    fpanalysis.check.CheckReport
        On success, for further assertions on its findings.
    """
    want = _verdicts(verdict)
    from ..check import check

    report = check(model, data, **kwargs)
    if report.verdict not in want:
        bad = [fd for fd in report.findings if fd.status != "ok"]
        lines = [f"assert_check_verdict: fpanalysis check says {report.verdict}, expected "
                 + " or ".join(want)]
        for fd in bad:
            where = f" ({fd.layer})" if fd.layer else ""
            fix = f"; fix: {fd.fix}" if fd.fix else ""
            lines.append(f"  [{fd.status}] {fd.check}{where}: measured {_short(fd.measured)} {fd.comparison} "
                         f"threshold {_short(fd.threshold)}{fix}")
        lines += ["", report.render()]
        raise AssertionError("\n".join(lines))
    return report

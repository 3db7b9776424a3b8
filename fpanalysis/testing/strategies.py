"""Hypothesis strategies for values of a floating-point format and adversarial dot products.

Every value is built from its integer significand and exponent (``m * 2**(e - p + 1)``), so it
is exactly a number of the format (or, for the ``"tie"`` class, exactly the midpoint between two
neighbours) by construction, for any :class:`~fpanalysis.formats.FloatFormat`.  Values are
Python floats (float64 arrays for the array strategies), which hold every number of every
format the project supports.

Value classes
-------------
``"normal"``
    ``2**emin <= |x| <= max``, exponent drawn uniformly over ``[emin, emax]``.
``"subnormal"``
    ``0 < |x| < 2**emin`` (only for formats with subnormals).
``"near_overflow"``
    The top binade, ``2**emax <= |x| <= max`` (a subset of ``"normal"``).
``"tie"``
    Midpoints between two adjacent numbers of the format, subnormal range included, up to the
    midpoint between ``max`` and ``2**(emax+1)`` (the round-to-nearest overflow threshold,
    65520 for fp16).  Not numbers of the format: what every rounding mode must decide on.
``"zero"``
    ``+0.0`` and ``-0.0``.
``"inf"``
    ``+inf`` and ``-inf`` (only for formats that have infinities).
``"nan"``
    ``nan``.

>>> from hypothesis import given
>>> from fpanalysis.testing.strategies import values
>>> @given(values("fp16", classes=("subnormal",)))
... def test_subnormals_are_small(x):
...     assert 0 < abs(x) < 2.0**-14
>>> test_subnormals_are_small()
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..formats import FloatFormat, get_format

__all__ = [
    "VALUE_CLASSES",
    "arrays_of",
    "cancellation_vectors",
    "same_sign_vectors",
    "values",
    "wide_range_vectors",
]

VALUE_CLASSES = ("normal", "subnormal", "near_overflow", "tie", "zero", "inf", "nan")
_SIGNS = ("any", "positive", "negative")


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def _top_significand(f: FloatFormat) -> int:
    """Largest integer significand at ``emax`` (``max = M * 2**(emax - p + 1)``)."""
    return int(math.ldexp(f.max, f.p - 1 - f.emax))


def _available(f: FloatFormat) -> tuple[str, ...]:
    out = []
    for c in VALUE_CLASSES:
        if c == "subnormal" and not f.subnormals:
            continue
        if c == "inf" and not f.has_inf:
            continue
        if c == "tie" and f.p >= 53:
            continue
        out.append(c)
    return tuple(out)


def _check_classes(f: FloatFormat, classes: Iterable[str] | str | None) -> tuple[str, ...]:
    avail = _available(f)
    if classes is None:
        return avail
    if isinstance(classes, str):
        classes = (classes,)
    chosen = tuple(str(c).strip().lower().replace("-", "_") for c in classes)
    if not chosen:
        raise ValueError(f"classes must name at least one of: {', '.join(VALUE_CLASSES)}")
    for c, orig in zip(chosen, classes):
        if c not in VALUE_CLASSES:
            raise ValueError(f"unknown value class {orig!r}; valid classes are: {', '.join(VALUE_CLASSES)}")
        if c not in avail:
            why = {
                "subnormal": "has no subnormals",
                "inf": "has no infinities (it overflows to NaN or saturates)",
                "tie": "has p >= 53, so its midpoints are not float64 numbers",
            }[c]
            raise ValueError(f"format {f.name!r} {why}; classes available for it are: {', '.join(avail)}")
    return chosen


def _check_sign(sign: str) -> str:
    s = str(sign).strip().lower()
    if s not in _SIGNS:
        raise ValueError(f"unknown sign {sign!r}; valid signs are: {', '.join(_SIGNS)}")
    return s


def _signed(strategy: st.SearchStrategy[float], sign: str) -> st.SearchStrategy[float]:
    if sign == "positive":
        return strategy
    if sign == "negative":
        return strategy.map(lambda v: -v)
    return st.tuples(st.booleans(), strategy).map(lambda t: -t[1] if t[0] else t[1])


@st.composite
def _magnitude(draw: Any, f: FloatFormat, lo_e: int, hi_e: int) -> float:
    """A positive number of ``f`` with exponent in ``[lo_e, hi_e]``; exponents below ``emin``
    give subnormals of that binade (``2**e <= x < 2**(e+1)``)."""
    e = draw(st.integers(lo_e, hi_e))
    p = f.p
    if e < f.emin:  # subnormal binade: m * 2**(emin - p + 1) with 2**(e - emin + p - 1) <= m
        k = e - f.emin + p - 1
        m = draw(st.integers(1 << k, (1 << (k + 1)) - 1))
        return math.ldexp(m, f.emin - p + 1)
    top = _top_significand(f) if e == f.emax else (1 << p) - 1
    m = draw(st.integers(1 << (p - 1), top))
    return math.ldexp(m, e - p + 1)


@st.composite
def _tie(draw: Any, f: FloatFormat) -> float:
    """Midpoint ``(2m + 1) * 2**(e - p)`` between ``m * 2**(e-p+1)`` and its successor."""
    p = f.p
    lo = f.emin - 1 if f.subnormals else f.emin
    e = draw(st.integers(lo, f.emax))
    if e < f.emin:  # subnormal spacing, from (0, min_subnormal) to (largest subnormal, min_normal)
        m = draw(st.integers(0, (1 << (p - 1)) - 1))
        return math.ldexp(2 * m + 1, f.emin - p)
    top = _top_significand(f) if e == f.emax else (1 << p) - 1
    m = draw(st.integers(1 << (p - 1), top))
    return math.ldexp(2 * m + 1, e - p)


def _class_strategy(f: FloatFormat, c: str, sign: str) -> st.SearchStrategy[float]:
    if c == "normal":
        return _signed(_magnitude(f, f.emin, f.emax), sign)
    if c == "subnormal":
        return _signed(_magnitude(f, f.emin - f.p + 1, f.emin - 1), sign)
    if c == "near_overflow":
        return _signed(_magnitude(f, f.emax, f.emax), sign)
    if c == "tie":
        return _signed(_tie(f), sign)
    if c == "zero":
        return _signed(st.just(0.0), sign)
    if c == "inf":
        return _signed(st.just(math.inf), sign)
    return st.just(math.nan)


# --------------------------------------------------------------------------------------------
# Public strategies
# --------------------------------------------------------------------------------------------
def values(
    fmt: str | FloatFormat = "fp16",
    classes: Iterable[str] | str | None = None,
    *,
    sign: str = "any",
) -> st.SearchStrategy[float]:
    """Floats of the format ``fmt`` from the chosen classes (see the module docstring).

    Parameters
    ----------
    fmt : str or FloatFormat
        ``"fp16"``, ``"bf16"``, ``"fp8_e4m3fn"``, a custom ``FloatFormat``, ...
    classes : iterable of str, optional
        Any of ``VALUE_CLASSES``; default: every class the format has (no ``"inf"`` for
        fp8 E4M3FN, no ``"subnormal"`` without gradual underflow).  Asking for a class the
        format lacks raises ``ValueError``.
    sign : str
        ``"any"`` (default), ``"positive"`` or ``"negative"`` (NaN has no sign to choose).

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(values("bf16", classes=["near_overflow"], sign="negative"))
    ... def test_top_binade(x):
    ...     assert -3.39e38 < x <= -(2.0**127)
    >>> test_top_binade()
    """
    f = get_format(fmt)
    chosen = _check_classes(f, classes)
    s = _check_sign(sign)
    return st.one_of(*[_class_strategy(f, c, s) for c in chosen])


def arrays_of(
    fmt: str | FloatFormat = "fp16",
    shape: Any = None,
    classes: Iterable[str] | str | None = ("normal", "subnormal", "zero"),
    *,
    sign: str = "any",
    dtype: Any = np.float64,
) -> st.SearchStrategy[np.ndarray]:
    """Arrays whose entries come from :func:`values` ``(fmt, classes, sign=sign)``.

    Parameters
    ----------
    shape : int, tuple or strategy, optional
        As in ``hypothesis.extra.numpy.arrays`` (default: 1-D, length 1 to 16).
    classes : iterable of str
        Default: finite numbers of the format (normal, subnormal, zero).
    dtype : numpy dtype
        ``float64`` (default), ``float32`` when every number of the format is a float32, or
        ``float16`` for fp16 (without ties, which no float16 holds).

    Examples
    --------
    >>> from hypothesis import given
    >>> import numpy as np
    >>> @given(arrays_of("fp16", (3, 4), dtype=np.float16))
    ... def test_shape(a):
    ...     assert a.shape == (3, 4) and a.dtype == np.float16
    >>> test_shape()
    """
    f = get_format(fmt)
    chosen = _check_classes(f, classes)
    dt = np.dtype(dtype)
    if dt == np.float16:
        ok = (f.p, f.emin, f.emax) == (11, -14, 15) and f.subnormals and "tie" not in chosen
        if not ok:
            raise ValueError(f"dtype float16 holds the fp16 numbers only (no ties); got format {f.name!r}, classes {chosen}")
    elif dt == np.float32:
        fits = f.p <= 24 and f.emax <= 127 and f.emin - f.p + 1 >= -149 and not ("tie" in chosen and f.p >= 24)
        if not fits:
            raise ValueError(f"float32 cannot hold every value of format {f.name!r} for classes {chosen}; use float64")
    elif dt != np.float64:
        raise ValueError(f"dtype must be float64, float32 or float16, got {dt}")
    if shape is None:
        shape = st.integers(1, 16)
    elif isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    return hnp.arrays(dt, shape, elements=values(f, chosen, sign=sign))


def _length(n: int | None, min_n: int, max_n: int, even: bool = False) -> st.SearchStrategy[int]:
    if n is not None:
        if n < min_n or (even and n % 2):
            raise ValueError(f"n must be {'an even integer ' if even else 'an integer '}>= {min_n}, got {n}")
        return st.just(int(n))
    if not 1 <= min_n <= max_n:
        raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
    if even:
        lo, hi = (min_n + 1) // 2, max_n // 2
        if lo > hi:
            raise ValueError(f"no even length in [{min_n}, {max_n}]")
        return st.integers(lo, hi).map(lambda k: 2 * k)
    return st.integers(min_n, max_n)


def _product_exponent_cap(f: FloatFormat, n_max: int) -> int:
    """``S`` such that ``e_x + e_y <= S`` keeps ``sum |x_i y_i| < 2**emax`` for ``n_max`` terms:
    each ``|x_i y_i| < 2**(e_x + e_y + 2) <= 2**(emax - ceil(log2 n_max))``."""
    return f.emax - max(0, math.ceil(math.log2(max(n_max, 1)))) - 2


def _moderate_range(f: FloatFormat, n_max: int) -> tuple[int, int]:
    hi = _product_exponent_cap(f, n_max) // 2
    return max(f.emin, hi - (f.p + 4)), hi


def same_sign_vectors(
    fmt: str | FloatFormat = "fp16", n: int | None = None, *, min_n: int = 1, max_n: int = 64
) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """Pairs ``(x, y)`` of positive vectors of ``fmt``: nothing cancels in ``x^T y``.

    Every product and partial sum has the same sign (post-ReLU activations times positive
    weights, softmax denominators), the case where round-to-nearest errors can share a bias
    and a long sum stagnates.  Exponents span ``p + 4`` binades below the largest one that
    keeps ``|x|^T |y| < 2**emax`` for ``max_n`` terms, so small terms fall below half an ulp
    of the running sum.

    Parameters
    ----------
    n : int, optional
        Fixed length; default: drawn from ``[min_n, max_n]``.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(same_sign_vectors("fp16", max_n=8))
    ... def test_positive(xy):
    ...     x, y = xy
    ...     assert (x > 0).all() and (y > 0).all() and x @ y < 65504
    >>> test_positive()
    """
    f = get_format(fmt)
    lengths = _length(n, min_n, max_n)
    lo, hi = _moderate_range(f, n if n is not None else max_n)
    mag = _magnitude(f, lo, hi)

    def pair(k: int) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
        vec = st.lists(mag, min_size=k, max_size=k).map(lambda v: np.array(v, dtype=np.float64))
        return st.tuples(vec, vec)

    return lengths.flatmap(pair)


@st.composite
def _cancelling(draw: Any, f: FloatFormat, k: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    p = f.p
    mag = _magnitude(f, lo, hi)
    a = draw(st.lists(_signed(mag, "any"), min_size=k, max_size=k))
    b = draw(st.lists(_signed(mag, "any"), min_size=k, max_size=k))
    shifts = draw(st.lists(st.integers(-2, 2), min_size=k, max_size=k))
    a2 = []
    for ai, d in zip(a, shifts):
        m, e = math.frexp(abs(ai))  # |ai| = m 2**e, m in [0.5, 1): integer significand M
        M = int(math.ldexp(m, p))
        M2 = min(max(M + d, 1 << (p - 1)), (1 << p) - 1)
        a2.append(math.copysign(math.ldexp(M2, e - p), ai))
    perm = draw(st.permutations(range(2 * k)))
    x = np.array(a + a2, dtype=np.float64)[list(perm)]
    y = np.array(b + [-v for v in b], dtype=np.float64)[list(perm)]
    return x, y


def cancellation_vectors(
    fmt: str | FloatFormat = "fp16", n: int | None = None, *, min_n: int = 2, max_n: int = 64
) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """Pairs ``(x, y)`` of even length whose exact ``x^T y`` nearly cancels.

    Built from terms ``a_i b_i`` and ``-a'_i b_i`` where ``a'_i`` is ``a_i`` moved by at most
    two units in the last place (same binade), in a random order, so that

        ``|x^T y| <= 2**(1-p) |x|^T |y|``   (exactly 0 when every ``a'_i = a_i``):

    the relative error of any computed ``x^T y`` is unbounded, and only an absolute bound in
    ``|x|^T |y|`` (Higham 2002, eq. (3.5)) can hold.  Magnitudes as in :func:`same_sign_vectors`.

    Examples
    --------
    >>> from fractions import Fraction
    >>> from hypothesis import given
    >>> @given(cancellation_vectors("bf16", max_n=8))
    ... def test_cancels(xy):
    ...     x, y = xy
    ...     exact = abs(sum(Fraction(a) * Fraction(b) for a, b in zip(x, y)))
    ...     assert exact <= Fraction(2) ** (1 - 8) * sum(abs(Fraction(a) * Fraction(b)) for a, b in zip(x, y))
    >>> test_cancels()
    """
    f = get_format(fmt)
    lengths = _length(n, max(min_n, 2), max_n, even=True)
    lo, hi = _moderate_range(f, n if n is not None else max_n)
    return lengths.flatmap(lambda m: _cancelling(f, m // 2, lo, hi))


@st.composite
def _wide(draw: Any, f: FloatFormat, k: int, S: int) -> tuple[np.ndarray, np.ndarray]:
    low = f.emin - f.p + 1 if f.subnormals else f.emin
    big = max(S // 2, low)
    ex = [min(big, f.emax), low]  # a large x (with a large y) and a tiny x: the range is forced
    ey = [min(big, f.emax), draw(st.integers(low, min(S - low, f.emax)))]
    for _ in range(k - 2):
        a = draw(st.integers(low, min(S - low, f.emax)))
        ex.append(a)
        ey.append(draw(st.integers(low, min(S - a, f.emax))))
    sx = draw(st.lists(st.booleans(), min_size=k, max_size=k))
    sy = draw(st.lists(st.booleans(), min_size=k, max_size=k))
    x = [(-1.0 if s else 1.0) * draw(_magnitude(f, e, e)) for e, s in zip(ex, sx)]
    y = [(-1.0 if s else 1.0) * draw(_magnitude(f, e, e)) for e, s in zip(ey, sy)]
    perm = list(draw(st.permutations(range(k))))
    return np.array(x, dtype=np.float64)[perm], np.array(y, dtype=np.float64)[perm]


def wide_range_vectors(
    fmt: str | FloatFormat = "fp16", n: int | None = None, *, min_n: int = 2, max_n: int = 64
) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """Pairs ``(x, y)`` with entries across the whole exponent range of ``fmt``, mixed signs.

    Exponents run from the smallest binade (subnormals when the format has them) up to the
    largest that cannot overflow: with ``S = emax - ceil(log2 max_n) - 2`` every pair has
    ``e_x + e_y <= S``, so ``|x|^T |y| < 2**emax``.  Products underflow, and terms differ by
    far more than the precision.  ``x`` always holds a value of the smallest binade (the
    smallest subnormal binade, or ``2**emin``) and one of at least ``2**(S // 2)``.

    Examples
    --------
    >>> from hypothesis import given
    >>> import numpy as np
    >>> @given(wide_range_vectors("fp16", max_n=8))
    ... def test_range(xy):
    ...     x, y = xy
    ...     assert np.abs(x).min() < 2.0**-23 and np.abs(x).max() >= 2.0**2
    >>> test_range()
    """
    f = get_format(fmt)
    lengths = _length(n, max(min_n, 2), max_n)
    S = _product_exponent_cap(f, n if n is not None else max_n)
    return lengths.flatmap(lambda k: _wide(f, k, S))

"""Exact and high-precision references: exact dot products, sums and matrix products rounded
once, and mpmath evaluations of the transcendental functions networks use.

>>> import numpy as np
>>> from fpanalysis.reference import exact_dot, exact_dot_fraction
>>> x = np.array([2.0**30, 1.0, -2.0**30], dtype=np.float32)
>>> y = np.array([2.0**30, 2.0**-24, 2.0**30], dtype=np.float32)
>>> exact_dot(x, y)                      # float64 summation would return 0.0
5.960464477539063e-08
>>> exact_dot_fraction(x, y)
Fraction(1, 16777216)
>>> exact_dot([1.0, 2.0**-11], [1.0, 1.0], "fp16")     # a tie: rounds to even
1.0

**Exact products.**  ``exact_dot``, ``exact_sum`` and ``exact_matmul`` compute
``sum_i x_i*y_i`` exactly (a Kulisch accumulator; see :mod:`fpanalysis._kernels.exact`) and
round the exact value once, correctly, to float64 (``fmt=None``) or to any
:class:`~fpanalysis.formats.FloatFormat` in any deterministic rounding mode, with the same
semantics as :func:`fpanalysis.round_to` (overflow policy, subnormals or flush to zero).  They are
exact for *any* finite float32/float64 inputs; they are fastest for values of formats with
``p <= 26`` (fp8, fp16, bf16, tf32, fp32), whose products are exact in float64.  There is no
intermediate overflow: only the final rounding can overflow.  IEEE 754 semantics for infinities
and NaNs: a NaN operand, ``inf * 0`` or ``inf - inf`` among the products gives NaN, otherwise an
infinite product gives an infinity of its sign; the result then goes through the format's
overflow policy (``inf`` -> NaN in fp8 E4M3FN, -> max when saturating).  An exact zero sum is
``+0.0`` in every mode (the exact value zero, rounded; the ``exact`` profile of
:mod:`fpanalysis.linalg` gives it IEEE 754's ``-0`` in round-down instead).

**mpmath references** (``mp_*``) evaluate at ``prec`` bits (default :data:`DEFAULT_PREC` = 113,
IEEE quad) with the precision scoped by ``mpmath.workprec`` (never set globally), then round to
the nearest float64 once, from the exact binary value of the mpf (subnormal results included;
mpmath's own ``float()`` rounds twice there).  Each function is a short formula whose every step is accurate to a few
units of ``2**-prec`` relative (GELU uses the ``erfc`` form, which has no cancellation), so the
float64 returned is the correctly rounded value unless the exact value lies within about
``2**(8-prec)`` (relative) of a rounding boundary between two float64 numbers.  Non-finite
inputs give the mathematical limits (``exp(-inf) = 0``, ``log(0) = -inf``, ``gelu(-inf) = 0``);
outside the domain (``log(-1)``, ``rsqrt(-1)``) the result is NaN.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from .formats import FloatFormat, get_format
from .rounding import RoundingMode, fits_float32, kernel_args, native_byte_order

__all__ = [
    "DEFAULT_PREC",
    "exact_dot",
    "exact_dot_fraction",
    "exact_matmul",
    "exact_sum",
    "mp_dot",
    "mp_erf",
    "mp_exp",
    "mp_gelu",
    "mp_log",
    "mp_log_softmax",
    "mp_rsqrt",
    "mp_sigmoid",
    "mp_silu",
    "mp_softmax",
    "mp_tanh",
]

ArrayLike = np.ndarray | Sequence[float] | float
FormatLike = str | FloatFormat | None

#: Default working precision (bits) of the mpmath references: IEEE binary128.
DEFAULT_PREC = 113

_F64_ARGS = (53, -1022, sys.float_info.min, sys.float_info.max, True, 0)
_CARRY_EVERY = 1 << 13  # blocks between carry passes (fpanalysis._kernels.exact.CARRY_EVERY)


# --- argument handling --------------------------------------------------------------------


def _round_args_uncached(fmt: FormatLike, mode: str | RoundingMode) -> tuple:
    m = RoundingMode.parse(mode)
    if m is RoundingMode.STOCHASTIC:
        valid = ", ".join(r.value for r in RoundingMode if r is not RoundingMode.STOCHASTIC)
        raise ValueError(f"exact references round deterministically; valid modes are: {valid}")
    if fmt is None:
        return (*_F64_ARGS, m.code)
    f = get_format(fmt)
    p, emin, minnorm, maxval, sub, ovf, code, _, _ = kernel_args(f, m, None, None, 0)
    return (p, emin, minnorm, maxval, sub, ovf, code)


def _params(
    fmt: FormatLike, mode: str | RoundingMode, carry_every: int = _CARRY_EVERY, force_general: bool = False
) -> np.ndarray:
    """The kernels' parameter vector ``[p, emin, minnorm, maxval, subnormals, ovf, mode,
    carry_every, force_general]`` (cached per format and mode; read-only)."""
    key = (
        (fmt, mode)
        if (carry_every, force_general) == (_CARRY_EVERY, False)
        else (fmt, mode, carry_every, force_general)
    )
    try:
        return _PARAMS[key]
    except KeyError:
        pass
    except TypeError:  # unhashable argument: the uncached path raises a clear error
        key = None
    vec = np.array([*_round_args_uncached(fmt, mode), carry_every, force_general], dtype=np.float64)
    vec.flags.writeable = False
    if key is not None and len(_PARAMS) < 1024:
        _PARAMS[key] = vec
    return vec


_SERIAL_BELOW = 1 << 20  # exact_matmul runs on one thread below this many products
_PARAMS: dict = {}
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_KERNELS: Any = None


def _kernels() -> Any:
    """The numba kernel module, imported on first use (``import fpanalysis`` stays cheap)."""
    global _KERNELS
    if _KERNELS is None:
        from ._kernels import exact as _exact_kernels

        _KERNELS = _exact_kernels
    return _KERNELS


def _kernel_array(a: Any, what: str) -> np.ndarray:
    """``a`` as a float32 or float64 array holding exactly the same values."""
    arr = native_byte_order(np.asarray(a))
    dt = arr.dtype
    if dt == np.float64 or dt == np.float32:
        return arr
    if (dt.kind == "f" and dt.itemsize == 2) or (dt.kind == "V" and dt.itemsize in (1, 2)):
        return arr.astype(np.float32)  # float16, ml_dtypes bf16/fp8: exact in float32
    if dt.kind == "b" or (dt.kind in "iu" and dt.itemsize <= 4):
        return arr.astype(np.float64)
    if dt.kind in "iu":
        out = arr.astype(np.float64)
        if arr.size and np.abs(out).max() > 2.0**53:
            raise ValueError(f"{what}: integers above 2**53 are not exactly representable in float64")
        return out
    if dt.kind == "f":
        raise TypeError(f"{what}: {dt} inputs are not supported; convert to float64")
    raise TypeError(f"{what}: cannot use values of dtype {dt}; pass real numbers")


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _kernel_array(x, "x")
    b = _kernel_array(y, "y")
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"x and y must be 1-D vectors, got shapes {a.shape} and {b.shape}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x and y must have the same length, got {a.shape[0]} and {b.shape[0]}")
    if a.dtype != b.dtype:
        a = a.astype(np.float64)
        b = b.astype(np.float64)
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


# --- exact dot products -------------------------------------------------------------------


def exact_dot(
    x: ArrayLike, y: ArrayLike, fmt: FormatLike = None, mode: str | RoundingMode = "nearest-even"
) -> float:
    """The exact ``sum_i x_i * y_i``, rounded once to ``fmt`` (float64 when ``None``).

    Parameters
    ----------
    x, y : array_like, 1-D, same length
        float16/32/64 values (or ml_dtypes bf16/fp8, or integers up to ``2**53``).
    fmt : str, FloatFormat or None
        Format of the result; ``None`` gives the correctly rounded float64.
    mode : str
        Any deterministic rounding mode (``"nearest-even"``, ``"nearest-away"``,
        ``"toward-zero"``, ``"up"``, ``"down"``, ``"odd"``).

    Returns
    -------
    float

    Notes
    -----
    Work is done in blocks of 512 products.  When a block's products are exact in float64
    (inputs of formats with ``p <= 26``, no over/underflow) they are split error-free into
    integers (one per 51 bits of the block's dynamic range: usually one or two per product) and
    summed in int64 (vectorised loops);
    otherwise the block's significands are multiplied as integers.  About 2 microseconds for
    ``n = 1024`` fp16 values on one core, over 1000 times faster than :func:`mp_dot`
    (``experiments/bench_exact.py``).

    Examples
    --------
    >>> exact_dot([1e308, 1e308, -1e308], [10.0, 1.0, 10.0])    # no intermediate overflow
    1e+308
    >>> exact_dot([65504.0, 16.0], [1.0, 1.0], "fp16", mode="toward-zero")
    65504.0
    """
    try:
        params = _PARAMS[fmt, mode]
    except (KeyError, TypeError):
        params = _params(fmt, mode)
    K = _KERNELS or _kernels()
    if type(x) is np.ndarray and type(y) is np.ndarray:  # fast path: no conversion needed
        dt = x.dtype
        if (
            (dt is _F32 or dt is _F64)
            and y.dtype is dt
            and x.ndim == 1
            and y.ndim == 1
            and x.size == y.size
            and x.flags.c_contiguous
            and y.flags.c_contiguous
        ):
            return K.dot(x, y, params)  # type: ignore[no-any-return]
    a, b = _pair(x, y)
    return K.dot(a, b, params)  # type: ignore[no-any-return]


def _exact_value(
    x: ArrayLike, y: ArrayLike, carry_every: int = _CARRY_EVERY, force_general: bool = False
) -> Fraction | float:
    """The exact sum as a Fraction, or the inf/nan float when there are inf/nan products.
    ``carry_every``/``force_general`` let the tests exercise the carry passes and the general path."""
    K = _kernels()
    a, b = _pair(x, y)
    neg, digits, special = K.dot_digits(
        a, b, _params(None, "nearest-even", int(carry_every), bool(force_general))
    )
    if special != 0.0:
        return float(special)
    n = int.from_bytes(digits.astype("<u4").tobytes(), "little")
    return Fraction(-n if neg else n) * Fraction(2) ** K.BASE


def exact_dot_fraction(x: ArrayLike, y: ArrayLike) -> Fraction:
    """The exact value of ``sum_i x_i * y_i`` as a :class:`fractions.Fraction`.

    Raises ValueError when the sum is infinite or NaN (an inf/nan input).

    >>> exact_dot_fraction([0.1], [3.0]) == 3 * Fraction(0.1)
    True
    """
    value = _exact_value(x, y)
    if isinstance(value, float):
        raise ValueError(f"the dot product is {value} (the inputs hold infinities or NaNs)")
    return value


def exact_sum(
    x: ArrayLike,
    fmt: FormatLike = None,
    mode: str | RoundingMode = "nearest-even",
    *,
    axis: int | None = None,
) -> Any:
    """The exact sum of ``x`` (all elements, or along ``axis``), rounded once to ``fmt``.

    >>> exact_sum([1e20, 1.0, -1e20, 2.0**-30])
    1.0000000009313226
    >>> exact_sum(np.ones((2, 3), dtype=np.float32), "fp16", axis=1).tolist()
    [3.0, 3.0]
    """
    arr = _kernel_array(x, "x")
    if axis is None:
        flat = np.ascontiguousarray(arr).reshape(-1)
        return exact_dot(flat, np.ones(flat.shape, dtype=flat.dtype), fmt, mode)
    moved = np.moveaxis(arr, axis, -1)
    k = moved.shape[-1]
    rows = moved.reshape(math.prod(moved.shape[:-1]), k)
    out = exact_matmul(rows, np.ones((k, 1), dtype=arr.dtype), fmt, mode)
    return out.reshape(moved.shape[:-1])


def exact_matmul(
    A: ArrayLike,
    B: ArrayLike,
    fmt: FormatLike = None,
    mode: str | RoundingMode = "nearest-even",
    *,
    dtype: Any = None,
) -> np.ndarray:
    """``A @ B`` with every entry the exact dot product rounded once to ``fmt`` (the values of the
    ``exact`` arithmetic profile; exact zero sums are ``+0.0`` here, see the module docstring).
    Parallel over the entries.

    Parameters
    ----------
    A, B : array_like
        ``(m, k)`` and ``(k, n)`` matrices, or stacks ``(..., m, k)`` / ``(..., k, n)`` with
        broadcastable leading dimensions; 1-D operands are treated as in ``numpy.matmul``.
    fmt, mode : as in :func:`exact_dot`.
    dtype : numpy dtype, optional
        float32 or float64.  Default: float32 when both inputs are float32 (or float16) and
        ``fmt`` is a format whose numbers float32 holds, else float64.

    Examples
    --------
    >>> A = np.array([[1.0, 2.0**-11], [3.0, 4.0]], dtype=np.float32)
    >>> exact_matmul(A, np.eye(2, dtype=np.float32) + 2.0**-11, "fp16").tolist()
    [[1.0009765625, 0.0009765625], [3.00390625, 4.00390625]]
    """
    K = _kernels()
    a = _kernel_array(A, "A")
    b = _kernel_array(B, "B")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(
            "exact_matmul: operands must have at least one dimension (use exact_dot for scalars)"
        )
    params = _params(fmt, mode)
    if dtype is None:
        f32 = (
            a.dtype == np.float32
            and b.dtype == np.float32
            and fmt is not None
            and fits_float32(get_format(fmt))
        )
        out_dtype = np.float32 if f32 else np.float64
    else:
        out_dtype = np.dtype(dtype).type
        if out_dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        if out_dtype is np.float32 and (fmt is None or not fits_float32(get_format(fmt))):
            raise ValueError("dtype=float32 cannot hold every result; use float64")
    if a.dtype != b.dtype:
        a = a.astype(np.float64)
        b = b.astype(np.float64)
    squeeze_a = a.ndim == 1
    squeeze_b = b.ndim == 1
    if squeeze_a:
        a = a[None, :]
    if squeeze_b:
        b = b[:, None]
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"exact_matmul: shapes {a.shape} and {b.shape} do not align (k = {a.shape[-1]} vs {b.shape[-2]})"
        )
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, n = a.shape[-2], b.shape[-1]
    a = np.broadcast_to(a, batch + a.shape[-2:])
    bt = np.broadcast_to(np.swapaxes(b, -1, -2), batch + (n, b.shape[-2]))
    out = np.empty(batch + (m, n), dtype=np.float64)
    a = a.astype(np.float64, copy=False)  # O(mk + kn) conversions: one compiled kernel
    bt = bt.astype(np.float64, copy=False)
    import numba

    threads = numba.get_num_threads()
    if out.size * max(a.shape[-1], 1) < _SERIAL_BELOW:
        numba.set_num_threads(1)  # waking worker threads costs more than small products
    try:
        for idx in np.ndindex(*batch):
            K.matmul(np.ascontiguousarray(a[idx]), np.ascontiguousarray(bt[idx]), out[idx], params)
    finally:
        numba.set_num_threads(threads)
    if squeeze_b:
        out = out[..., 0]
    if squeeze_a:
        out = out[..., 0, :] if not squeeze_b else out[..., 0]
    return out.astype(out_dtype, copy=False)


# --- pure-Python twins (test oracles) -----------------------------------------------------


def _exact_dot_python(x: ArrayLike, y: ArrayLike) -> Fraction | float:
    """Twin of the exact dot kernels: a ``Fraction`` sum, or the IEEE sum of the inf/nan
    products when there are any."""
    exact = Fraction(0)
    special = 0.0
    for a, b in zip(np.asarray(x, dtype=np.float64).tolist(), np.asarray(y, dtype=np.float64).tolist()):
        if math.isfinite(a) and math.isfinite(b):
            exact += Fraction(a) * Fraction(b)
        else:
            special += a * b
    return special if special != 0.0 else exact


def _round_fraction(
    q: Fraction | float, fmt: FormatLike = None, mode: str | RoundingMode = "nearest-even"
) -> float:
    """Twin of :func:`fpanalysis._kernels.exact.round_exact`: round an exact rational once.

    Integer arithmetic on ``q / 2**qe`` with the quantum ``2**qe`` of ``q``'s binade in the
    format, then the format's overflow and flush-to-zero policies (as ``round_to``).
    """
    p, emin, minnorm, maxval, subnormals, ovf, _ = _round_args_uncached(fmt, mode)
    m = RoundingMode.parse(mode)
    if isinstance(q, float) and not math.isfinite(q):
        if math.isnan(q) or ovf == 0:
            return q
        return math.copysign(maxval, q) if ovf == 1 else math.nan
    q = Fraction(q)
    if q == 0:
        return 0.0
    neg = q < 0
    a = -q if neg else q
    e = a.numerator.bit_length() - a.denominator.bit_length()  # 2**(e-1) < a < 2**(e+1)
    if a < Fraction(2) ** e:
        e -= 1  # now 2**e <= a < 2**(e+1)
    qe = max(e, emin if subnormals else emin - 1) - p + 1
    scaled = a / Fraction(2) ** qe
    t = scaled.numerator // scaled.denominator
    rem = scaled - t
    half = Fraction(1, 2)
    if m is RoundingMode.NEAREST_EVEN:
        t += 1 if rem > half or (rem == half and t % 2 == 1) else 0
    elif m is RoundingMode.NEAREST_AWAY:
        t += 1 if rem >= half else 0
    elif m is RoundingMode.UP:
        t += 1 if rem > 0 and not neg else 0
    elif m is RoundingMode.DOWN:
        t += 1 if rem > 0 and neg else 0
    elif m is RoundingMode.ODD:
        t |= 1 if rem > 0 else 0
    y = math.inf if t and t.bit_length() + qe > 1024 else math.ldexp(float(t), qe)
    if y > maxval:
        to_max = ovf == 1 or m in (RoundingMode.TOWARD_ZERO, RoundingMode.ODD)
        to_max = to_max or (m is RoundingMode.UP and neg) or (m is RoundingMode.DOWN and not neg)
        y = maxval if to_max else (math.nan if ovf == 2 else math.inf)
    if not subnormals and y < minnorm:
        y = 0.0
    return -y if neg else y


# --- mpmath references --------------------------------------------------------------------


def prec_for_exact_dot(xs: list, ys: list) -> int:
    """Bits that hold ``sum x_i y_i`` exactly: the span from the lowest set bit of any product
    to the top of the largest, plus the carries of ``n`` terms."""
    hi = None
    lo = None
    for a, b in zip(xs, ys):
        if a == 0.0 or b == 0.0 or not (math.isfinite(a) and math.isfinite(b)):
            continue
        na, da = abs(a).as_integer_ratio()
        nb, db = abs(b).as_integer_ratio()
        num, den = na * nb, da * db  # odd numerator or den == 1
        low = (num & -num).bit_length() - den.bit_length()
        top = num.bit_length() - den.bit_length() + 1
        lo = low if lo is None else min(lo, low)
        hi = top if hi is None else max(hi, top)
    if hi is None:
        return 53
    return max(53, hi - lo + len(xs).bit_length() + 2)


def mp_dot(x: ArrayLike, y: ArrayLike, prec: int | None = None, *, as_mpf: bool = False) -> Any:
    """``sum_i x_i*y_i`` with mpmath: products exact, the sum rounded once to ``prec`` bits.

    ``prec=None`` chooses a precision that holds the sum exactly, so the result is the exact
    value rounded to the nearest float64, correctly rounded (subnormals included).  Returns a
    float, or the ``mpf`` when ``as_mpf``.

    >>> mp_dot([2.0**60, 1.0, -2.0**60], [1.0, 1.0, 1.0])
    1.0
    """
    import mpmath

    xs = np.asarray(x, dtype=np.float64).ravel().tolist()
    ys = np.asarray(y, dtype=np.float64).ravel().tolist()
    if len(xs) != len(ys):
        raise ValueError(f"x and y must have the same length, got {len(xs)} and {len(ys)}")
    if prec is None:
        prec = prec_for_exact_dot(xs, ys)
    with mpmath.workprec(int(prec)):
        s = mpmath.fdot(xs, ys)
    return s if as_mpf else _to_float(s)


def _mp_elementwise(
    fn: Callable,
    special: Callable[[float], float],
    x: ArrayLike,
    prec: int,
    as_mpf: bool,
    zero: Callable[[float], float] | None = None,
) -> Any:
    """Apply ``fn(mpmath, mpf(v))`` to every element at ``prec`` bits; non-finite inputs (and
    zeros, when ``zero`` is given: signed results) take the exact limits from ``special``."""
    import mpmath

    arr = np.asarray(x, dtype=np.float64)
    out = np.empty(arr.shape, dtype=object if as_mpf else np.float64)
    flat_in = arr.reshape(-1).tolist()
    flat_out = out.reshape(-1)
    with mpmath.workprec(int(prec)):
        for i, v in enumerate(flat_in):
            if not math.isfinite(v):
                r = special(v)
            elif v == 0.0 and zero is not None:
                r = zero(v)
            else:
                r = fn(mpmath, mpmath.mpf(v))
            flat_out[i] = (mpmath.mpf(r) if isinstance(r, float) else r) if as_mpf else _to_float(r)
    if arr.ndim == 0:
        return out[()]
    return out


def _same(v: float) -> float:
    return v


def _to_float(v: Any) -> float:
    """The float64 nearest to the mpf (or float) ``v``, ties to even, rounded once from its exact
    binary value ``man * 2**exp``, subnormal and overflowing results included.

    ``float(mpf)`` rounds to 53 bits first and then again to the subnormal grid (double
    rounding, off by one ulp there); CPython's integer true division is correctly rounded over
    the whole float64 range, subnormals included.
    """
    if isinstance(v, float):
        return v
    sign, man, exp, _ = v._mpf_
    man, exp = int(man), int(exp)  # plain ints: with the gmpy2 backend they are mpz, whose / is mpfr
    if not man:  # zero, inf or nan (mpmath encodes those with a zero mantissa)
        return float(v)
    try:
        r = (man << exp) / 1 if exp >= 0 else man / (1 << -exp)
    except OverflowError:
        r = math.inf
    return -r if sign else r


def mp_exp(x: ArrayLike, prec: int = DEFAULT_PREC, *, as_mpf: bool = False) -> Any:
    """``exp(x)`` elementwise at ``prec`` bits, rounded to float64.

    >>> mp_exp([0.0, 1.0]).tolist()
    [1.0, 2.718281828459045]
    """
    return _mp_elementwise(
        lambda mp, v: mp.exp(v), lambda v: math.exp(v) if not math.isnan(v) else v, x, prec, as_mpf
    )


def mp_log(x: ArrayLike, prec: int = DEFAULT_PREC, *, as_mpf: bool = False) -> Any:
    """Natural logarithm; ``log(0) = -inf``, negative inputs give NaN.

    >>> mp_log([1.0, 0.0, -1.0]).tolist()
    [0.0, -inf, nan]
    """

    def fn(mp: Any, v: Any) -> Any:
        return mp.log(v) if v > 0 else mp.nan

    return _mp_elementwise(fn, lambda v: v if v > 0 else math.nan, x, prec, as_mpf, zero=lambda v: -math.inf)


def mp_tanh(x: ArrayLike, prec: int = DEFAULT_PREC, *, as_mpf: bool = False) -> Any:
    """Hyperbolic tangent.

    >>> mp_tanh([0.5]).tolist()
    [0.46211715726000974]
    """
    return _mp_elementwise(
        lambda mp, v: mp.tanh(v),
        lambda v: math.copysign(1.0, v) if not math.isnan(v) else v,
        x,
        prec,
        as_mpf,
        zero=_same,
    )


def mp_erf(x: ArrayLike, prec: int = DEFAULT_PREC, *, as_mpf: bool = False) -> Any:
    """The error function.

    >>> mp_erf([1.0]).tolist()
    [0.8427007929497149]
    """
    return _mp_elementwise(
        lambda mp, v: mp.erf(v),
        lambda v: math.copysign(1.0, v) if not math.isnan(v) else v,
        x,
        prec,
        as_mpf,
        zero=_same,
    )


def mp_gelu(x: ArrayLike, prec: int = DEFAULT_PREC, *, as_mpf: bool = False) -> Any:
    """GELU in its exact form ``x * Phi(x) = x/2 * erfc(-x/sqrt(2))`` (PyTorch's default
    ``approximate='none'``); the erfc form avoids the cancellation of ``1 + erf(x/sqrt 2)``.

    >>> mp_gelu([1.0, -10.0]).tolist()
    [0.8413447460685429, -7.619853024160526e-23]
    """
    return _mp_elementwise(
        lambda mp, v: v / 2 * mp.erfc(-v / mp.sqrt(2)),
        lambda v: v if (math.isnan(v) or v > 0) else 0.0,
        x,
        prec,
        as_mpf,
        zero=_same,
    )


def mp_sigmoid(x: ArrayLike, prec: int = DEFAULT_PREC, *, as_mpf: bool = False) -> Any:
    """Logistic sigmoid ``1/(1 + exp(-x))``.

    >>> mp_sigmoid([0.0, -800.0]).tolist()
    [0.5, 0.0]
    """
    return _mp_elementwise(
        lambda mp, v: 1 / (1 + mp.exp(-v)),
        lambda v: v if math.isnan(v) else (1.0 if v > 0 else 0.0),
        x,
        prec,
        as_mpf,
    )


def mp_silu(x: ArrayLike, prec: int = DEFAULT_PREC, *, as_mpf: bool = False) -> Any:
    """SiLU (swish) ``x * sigmoid(x)``.

    >>> mp_silu([1.0]).tolist()
    [0.7310585786300049]
    """
    return _mp_elementwise(
        lambda mp, v: v / (1 + mp.exp(-v)),
        lambda v: v if (math.isnan(v) or v > 0) else 0.0,
        x,
        prec,
        as_mpf,
        zero=_same,
    )


def mp_rsqrt(x: ArrayLike, prec: int = DEFAULT_PREC, *, as_mpf: bool = False) -> Any:
    """``1/sqrt(x)``; ``rsqrt(0) = inf``, negative inputs give NaN.

    >>> mp_rsqrt([4.0, 0.0, -1.0]).tolist()
    [0.5, inf, nan]
    """

    def fn(mp: Any, v: Any) -> Any:
        return 1 / mp.sqrt(v) if v > 0 else mp.nan

    return _mp_elementwise(
        fn, lambda v: 0.0 if v > 0 else math.nan, x, prec, as_mpf, zero=lambda v: math.copysign(math.inf, v)
    )


def _mp_rows(x: ArrayLike, axis: int, prec: int, as_mpf: bool, log: bool) -> Any:
    import mpmath

    arr = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim else arr.reshape(1, 1)
    out = np.empty(rows.shape, dtype=object if as_mpf else np.float64)
    with mpmath.workprec(int(prec)):
        for r, row in enumerate(rows.tolist()):
            if any(math.isnan(v) or v == math.inf for v in row) or all(v == -math.inf for v in row):
                vals = [mpmath.nan] * len(row)
            else:
                m = max(row)
                e = [mpmath.exp(mpmath.mpf(v) - m) if v != -math.inf else mpmath.mpf(0) for v in row]
                s = mpmath.fsum(e)
                if log:
                    # log(s) = log1p(s - 1), and s - 1 is the sum of the terms other than one
                    # maximal term (exactly 1): log(1 + tiny) at prec bits would round to 0
                    rest = list(e)
                    rest.pop(row.index(m))
                    ls = mpmath.log1p(mpmath.fsum(rest))
                    vals = [mpmath.mpf(v) - m - ls if v != -math.inf else mpmath.ninf for v in row]
                else:
                    vals = [t / s for t in e]
            for c, v in enumerate(vals):
                out[r, c] = v if as_mpf else _to_float(v)
    return np.moveaxis(out.reshape(arr.shape), -1, axis)


def mp_softmax(x: ArrayLike, axis: int = -1, prec: int = DEFAULT_PREC, *, as_mpf: bool = False) -> Any:
    """Softmax along ``axis``: ``exp(x_i - max x) / sum_j exp(x_j - max x)``.  ``-inf`` entries
    get 0 (masking); a row with NaN or ``+inf``, or only ``-inf``, gives NaN (as PyTorch).

    >>> mp_softmax([[0.0, 0.0], [0.0, -math.inf]]).tolist()
    [[0.5, 0.5], [1.0, 0.0]]
    """
    return _mp_rows(x, axis, prec, as_mpf, log=False)


def mp_log_softmax(x: ArrayLike, axis: int = -1, prec: int = DEFAULT_PREC, *, as_mpf: bool = False) -> Any:
    """Log-softmax along ``axis``: ``x_i - max x - log sum_j exp(x_j - max x)``.

    >>> mp_log_softmax([0.0, 0.0]).tolist()
    [-0.6931471805599453, -0.6931471805599453]
    """
    return _mp_rows(x, axis, prec, as_mpf, log=True)

"""Correctly rounded elementwise arithmetic in a low-precision format.

``add``, ``sub``, ``mul``, ``div``, ``sqrt`` and ``fma`` return the exact result of the
operation on values of the format, rounded once to the format with the chosen rounding mode:
what an IEEE 754 unit working natively in that format would return.

>>> import numpy as np
>>> from fpanalysis.ops import add, fma
>>> add(np.array([1.0, 65504.0]), np.array([2.0**-11, 16.0]), "fp16").tolist()
[1.0, inf]
>>> add(1.0, 2.0**-11, "fp16", mode="up")
1.0009765625

The known case where double rounding through binary32 goes wrong (docs/theory.md §1.4):

>>> float.hex(fma(float.fromhex("0x1.eacp+7"), float.fromhex("0x1.3f4p+4"), float.fromhex("0x1.c04p+14")))
'0x1.0640000000000p+15'

How: the exact result is computed with error-free transformations in float64, rounded to odd
at 53 bits, and then rounded to the format (see :mod:`fpanalysis._kernels.ops` for the method and
its sources).  Works for every :class:`~fpanalysis.formats.FloatFormat` with ``p <= 26``,
``emax <= 509`` and ``emin - p + 1 >= -509`` (fp16, bf16, tf32, fp32, the fp8 formats, ...).

Special values follow IEEE 754: ``inf - inf``, ``0 * inf``, ``0/0``, ``inf/inf`` and
``sqrt(x < 0)`` are NaN; ``x/0`` is a signed infinity; ``sqrt(-0) = -0``; an exact zero sum is
``+0`` except in round-down, where it is ``-0``.  A format without infinities maps an infinite
result through its overflow policy (NaN for fp8 E4M3FN, ``+-max`` for saturating formats).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .formats import FloatFormat, get_format
from .rounding import RoundingMode, RoundingStats, _wide_ints, as_float_array, fits_float32, kernel_args, round_to

__all__ = ["add", "sub", "mul", "div", "sqrt", "fma", "check_ops_format"]

_OPS = {"add": 0, "sub": 1, "mul": 2, "div": 3}
_ARG_NAMES = ("a", "b", "c")


def check_ops_format(fmt: "str | FloatFormat") -> FloatFormat:
    """Return the format if the emulated operations are exact for it, else raise ValueError.

    Conditions: ``p <= 26`` (products of two operands are exact in float64) and an exponent
    range that keeps every intermediate (products, quotients, remainders) inside the normal
    float64 range: ``emax <= 509`` and ``emin - p + 1 >= -509``.

    >>> check_ops_format("bf16").name
    'bf16'
    """
    f = get_format(fmt)
    if f.p > 26:
        raise ValueError(
            f"format {f.name!r} has p={f.p}; the emulated operations support p <= 26 "
            "(the product of two operands must be exact in float64)"
        )
    if f.emax > 509 or f.emin - f.p + 1 < -509:
        raise ValueError(
            f"format {f.name!r}: exponent range [{f.emin}, {f.emax}] is too wide for the emulated "
            "operations; they need emax <= 509 and emin - p + 1 >= -509"
        )
    return f


def _prepare(
    name: str,
    args: tuple[Any, ...],
    fmt: "str | FloatFormat",
    mode: "str | RoundingMode",
    seed: Any,
    random_bits: int | None,
    stream: int,
    round_inputs: bool,
    dtype: Any,
) -> tuple[FloatFormat, tuple, list[np.ndarray], tuple[int, ...], type, bool]:
    f = check_ops_format(fmt)
    m = RoundingMode.parse(mode)
    kargs = kernel_args(f, m, seed, random_bits, stream)
    arrays = []
    for k, x in enumerate(args):
        _, wide = _wide_ints(x)
        if wide and not round_inputs:
            raise ValueError(
                f"{name}: argument {_ARG_NAMES[k]!r} has {len(wide)} integer value(s) that are not "
                f"{f.name} numbers (first: {wide[0]!r}); round them first with "
                f"round_to(x, {f.name!r}) or pass round_inputs=True"
            )
        # with round_inputs, such integers are rounded exactly (once) by round_to
        arrays.append(np.asarray(round_to(x, f, "nearest-even"), dtype=np.float64) if wide else as_float_array(x))
    weak = [type(x) in (float, int, bool) for x in args]
    scalar_in = all(weak)
    if dtype is None:
        # Python scalars are "weak" (as in NumPy 2): they do not widen float32 arrays.
        strong = [a for w, a in zip(weak, arrays) if not w]
        narrow = bool(strong) and all(a.dtype == np.float32 for a in strong)
        out_dtype = np.float32 if (narrow and fits_float32(f)) else np.float64
    else:
        out_dtype = np.dtype(dtype).type
        if out_dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        if out_dtype is np.float32 and not fits_float32(f):
            raise ValueError(f"format {f.name} has numbers that float32 cannot hold; use dtype=float64")
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"{name}: operands with shapes {shapes} cannot be broadcast together") from None
    flat = []
    for a in arrays:
        with np.errstate(invalid="ignore"):  # float32 signalling NaNs stay NaNs, without a warning
            a64 = np.broadcast_to(a.astype(np.float64, copy=False), shape).reshape(-1)
        if round_inputs:
            a64 = np.asarray(round_to(a64, f, "nearest-even"), dtype=np.float64)
        flat.append(np.ascontiguousarray(a64))
    return f, kargs, flat, shape, out_dtype, scalar_in


def _finish(
    name: str,
    f: FloatFormat,
    flat_in: list[np.ndarray],
    counts: tuple,
    out: np.ndarray,
    shape: tuple[int, ...],
    out_dtype: type,
    scalar_in: bool,
    return_stats: bool,
) -> Any:
    bad = counts[4:]
    for k, nbad in enumerate(bad):
        if nbad:
            x = flat_in[k]
            r = np.asarray(round_to(x, f), dtype=np.float64)
            wrong = (r != x) & ~np.isnan(x)
            first = float(x[np.argmax(wrong)])
            raise ValueError(
                f"{name}: argument {_ARG_NAMES[k]!r} has {int(nbad)} value(s) that are not "
                f"{f.name} numbers (first: {first!r}); round them first with "
                f"round_to(x, {f.name!r}) or pass round_inputs=True"
            )
    with np.errstate(invalid="ignore"):
        result = out.reshape(shape).astype(out_dtype, copy=False)
    if result.ndim == 0:
        result = result[()]
        if scalar_in:
            result = float(result)
    if return_stats:
        stats = RoundingStats(out.size, *(int(c) for c in counts[:4]))
        return result, stats
    return result


def _binary(
    name: str, a: Any, b: Any, fmt: Any, mode: Any, seed: Any, random_bits: Any, stream: int,
    return_stats: bool, round_inputs: bool, dtype: Any,
) -> Any:
    from ._kernels import ops as ops_kernels

    f, kargs, flat, shape, out_dtype, scalar_in = _prepare(
        name, (a, b), fmt, mode, seed, random_bits, stream, round_inputs, dtype
    )
    p, emin, minnorm, maxval, sub, ovf, code, key, kbits = kargs
    out = np.empty(flat[0].shape, dtype=np.float64)
    counts = ops_kernels.binary_kernel(
        _OPS[name], flat[0], flat[1], out, p, emin, minnorm, maxval, sub, ovf, code, key, kbits, not round_inputs
    )
    return _finish(name, f, flat, counts, out, shape, out_dtype, scalar_in, return_stats)


_PARAMS_DOC = """
    fmt : str or FloatFormat
        The format (``"fp16"``, ``"bf16"``, ``"fp8_e4m3fn"``, a custom ``FloatFormat`` with
        ``p <= 26``, ...).  Inputs must be numbers of this format.
    mode : str
        ``"nearest-even"`` (default), ``"nearest-away"``, ``"toward-zero"``, ``"up"``,
        ``"down"``, ``"odd"`` or ``"stochastic"``.
    seed, random_bits, stream
        Stochastic rounding, as in :func:`fpanalysis.round_to`: element ``i`` of the (broadcast)
        result uses the random word ``i`` of the stream ``(seed, stream)``.  The probability of
        rounding away from zero is the distance to the truncated value over the spacing,
        computed from the exact result to 64 bits (to within ``2**-63`` for div and sqrt).
    return_stats : bool
        Also return a :class:`~fpanalysis.rounding.RoundingStats` for the final roundings.
    round_inputs : bool
        Round the inputs to the format (nearest-even) first instead of requiring that they
        are numbers of the format (the default raises ValueError naming the first offender).
    dtype : float32 or float64, optional
        Output dtype; by default float32 when the array inputs are float32 and the format fits
        in float32, else float64.

    Returns
    -------
    numpy.ndarray (float for Python scalar inputs), and RoundingStats when ``return_stats``.
"""


def add(
    a: Any, b: Any, fmt: "str | FloatFormat" = "fp16", mode: "str | RoundingMode" = "nearest-even", *,
    seed: Any = None, random_bits: int | None = None, stream: int = 0, return_stats: bool = False,
    round_inputs: bool = False, dtype: Any = None,
) -> Any:
    return _binary("add", a, b, fmt, mode, seed, random_bits, stream, return_stats, round_inputs, dtype)


def sub(
    a: Any, b: Any, fmt: "str | FloatFormat" = "fp16", mode: "str | RoundingMode" = "nearest-even", *,
    seed: Any = None, random_bits: int | None = None, stream: int = 0, return_stats: bool = False,
    round_inputs: bool = False, dtype: Any = None,
) -> Any:
    return _binary("sub", a, b, fmt, mode, seed, random_bits, stream, return_stats, round_inputs, dtype)


def mul(
    a: Any, b: Any, fmt: "str | FloatFormat" = "fp16", mode: "str | RoundingMode" = "nearest-even", *,
    seed: Any = None, random_bits: int | None = None, stream: int = 0, return_stats: bool = False,
    round_inputs: bool = False, dtype: Any = None,
) -> Any:
    return _binary("mul", a, b, fmt, mode, seed, random_bits, stream, return_stats, round_inputs, dtype)


def div(
    a: Any, b: Any, fmt: "str | FloatFormat" = "fp16", mode: "str | RoundingMode" = "nearest-even", *,
    seed: Any = None, random_bits: int | None = None, stream: int = 0, return_stats: bool = False,
    round_inputs: bool = False, dtype: Any = None,
) -> Any:
    return _binary("div", a, b, fmt, mode, seed, random_bits, stream, return_stats, round_inputs, dtype)


def sqrt(
    a: Any, fmt: "str | FloatFormat" = "fp16", mode: "str | RoundingMode" = "nearest-even", *,
    seed: Any = None, random_bits: int | None = None, stream: int = 0, return_stats: bool = False,
    round_inputs: bool = False, dtype: Any = None,
) -> Any:
    """Correctly rounded square root of values of ``fmt``.

    Parameters
    ----------
    a : array_like
        Values of the format.
    """
    from ._kernels import ops as ops_kernels

    f, kargs, flat, shape, out_dtype, scalar_in = _prepare(
        "sqrt", (a,), fmt, mode, seed, random_bits, stream, round_inputs, dtype
    )
    p, emin, minnorm, maxval, sub_, ovf, code, key, kbits = kargs
    out = np.empty(flat[0].shape, dtype=np.float64)
    counts = ops_kernels.sqrt_kernel(flat[0], out, p, emin, minnorm, maxval, sub_, ovf, code, key, kbits, not round_inputs)
    return _finish("sqrt", f, flat, counts, out, shape, out_dtype, scalar_in, return_stats)


def fma(
    a: Any, b: Any, c: Any, fmt: "str | FloatFormat" = "fp16", mode: "str | RoundingMode" = "nearest-even",
    *, seed: Any = None, random_bits: int | None = None, stream: int = 0, return_stats: bool = False,
    round_inputs: bool = False, dtype: Any = None,
) -> Any:
    """Fused multiply-add ``a*b + c`` with a single rounding to ``fmt``.

    Parameters
    ----------
    a, b, c : array_like
        Values of the format; broadcast together like NumPy arrays.
    """
    from ._kernels import ops as ops_kernels

    f, kargs, flat, shape, out_dtype, scalar_in = _prepare(
        "fma", (a, b, c), fmt, mode, seed, random_bits, stream, round_inputs, dtype
    )
    p, emin, minnorm, maxval, sub_, ovf, code, key, kbits = kargs
    out = np.empty(flat[0].shape, dtype=np.float64)
    counts = ops_kernels.fma_kernel(
        flat[0], flat[1], flat[2], out, p, emin, minnorm, maxval, sub_, ovf, code, key, kbits, not round_inputs
    )
    return _finish("fma", f, flat, counts, out, shape, out_dtype, scalar_in, return_stats)


_BINARY_DOC = """Correctly rounded ``a {sym} b`` for values ``a``, ``b`` of ``fmt``.

    Parameters
    ----------
    a, b : array_like
        Values of the format; broadcast together like NumPy arrays.
{params}
    Examples
    --------
    >>> from fpanalysis.ops import {name}
    >>> {name}({ex})
    {res}
"""
_EXAMPLES = {
    "add": ("+", "1.0, 2.0**-11, 'fp16'", "1.0"),
    "sub": ("-", "1.0, 2.0**-12, 'fp16', mode='down'", "0.99951171875"),
    "mul": ("*", "3.0, 1.0 / 3.0, 'bf16', round_inputs=True", "1.0"),
    "div": ("/", "1.0, 3.0, 'fp8_e4m3fn'", "0.34375"),
}
for _name, (_sym, _ex, _res) in _EXAMPLES.items():
    globals()[_name].__doc__ = _BINARY_DOC.format(sym=_sym, name=_name, ex=_ex, res=_res, params=_PARAMS_DOC)
sqrt.__doc__ = (sqrt.__doc__ or "") + _PARAMS_DOC + """
    Examples
    --------
    >>> sqrt(2.0, "fp16")
    1.4140625
"""
fma.__doc__ = (fma.__doc__ or "") + _PARAMS_DOC + """
    Examples
    --------
    >>> fma(1.0 + 2.0**-10, 1.0 - 2.0**-10, -1.0, "fp16")
    -9.5367431640625e-07
"""


# --- NumPy twin (the kernels' test oracle for deterministic modes) ---------------------------


def _ops_numpy(op: str, args: tuple[np.ndarray, ...], fmt: FloatFormat, mode: RoundingMode) -> np.ndarray:
    """Plain NumPy twin of the kernels for the deterministic modes: builds the exact result's
    round-to-odd float64 with ``np.nextafter`` (instead of bit arithmetic), then rounds it with
    :func:`fpanalysis.rounding.round_numpy`."""
    from .rounding import round_numpy

    if mode is RoundingMode.STOCHASTIC:
        raise ValueError("the NumPy twin covers the deterministic modes only")
    xs = [np.asarray(a, dtype=np.float64) for a in args]
    with np.errstate(all="ignore"):
        if op in ("add", "sub", "fma"):
            if op == "fma":
                x, y = xs[0] * xs[1], xs[2]
            else:
                x, y = xs[0], (xs[1] if op == "add" else -xs[1])
            hi = x + y
            yv = hi - x
            lo = (x - (hi - yv)) + (y - yv)
            lo = np.where(np.isfinite(hi), lo, 0.0)
            if mode is RoundingMode.DOWN:
                hi = np.where(hi == 0.0, -((-x) + (-y)), hi)
        elif op == "mul":
            hi = xs[0] * xs[1]
            lo = np.zeros_like(hi)
        elif op == "div":
            a, b = xs
            hi = a / b
            # remainder with the exact integers of Python, one element at a time
            lo = np.zeros_like(hi)
            for i in np.flatnonzero(np.isfinite(hi) & (hi != 0.0)):
                from fractions import Fraction

                r = Fraction(float(a.flat[i])) - Fraction(float(hi.flat[i])) * Fraction(float(b.flat[i]))
                lo.flat[i] = float(np.sign(float(r))) * np.sign(b.flat[i])
        elif op == "sqrt":
            (a,) = xs
            hi = np.sqrt(a)
            lo = np.zeros_like(hi)
            for i in np.flatnonzero(np.isfinite(hi) & (hi > 0.0)):
                from fractions import Fraction

                r = Fraction(float(a.flat[i])) - Fraction(float(hi.flat[i])) ** 2
                lo.flat[i] = float(np.sign(float(r)))
        else:
            raise ValueError(f"unknown op {op!r}")
        target = np.where(lo > 0, np.inf, -np.inf)
        nb = np.nextafter(hi, target)
        odd = (hi.view(np.uint64) & np.uint64(1)) == 1
        xo = np.where((lo != 0) & ~odd, nb, hi)
    return round_numpy(xo, fmt, mode)

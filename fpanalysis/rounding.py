"""Rounding real numbers to a floating-point format, and the formats' bit encodings.

>>> import numpy as np
>>> from fpanalysis import round_to
>>> round_to(np.array([1.0 + 2**-11, 65519.0, 65520.0, 1e-8]), "fp16").tolist()
[1.0, 65504.0, inf, 0.0]
>>> round_to(1.0 + 2**-11, "fp16", mode="up")
1.0009765625

Values are held in float32 or float64 arrays; a value "in fp16" is a float32/float64 number that
fp16 can represent.  Every rounding is computed exactly (integer operations on the significand),
for every mode, overflow policy and subnormal setting of the format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Union

import numpy as np

from ._kernels.rng import counter_random_numpy, stream_key
from .formats import FloatFormat, Overflow, get_format

__all__ = [
    "RoundingMode",
    "RoundingStats",
    "round_to",
    "to_bits",
    "from_bits",
    "fits_float32",
]

ArrayLike = Union[float, int, np.ndarray, list, tuple]


class RoundingMode(str, Enum):
    """The rounding modes: a closed, named set."""

    NEAREST_EVEN = "nearest-even"
    NEAREST_AWAY = "nearest-away"
    TOWARD_ZERO = "toward-zero"
    UP = "up"
    DOWN = "down"
    ODD = "odd"
    STOCHASTIC = "stochastic"

    @classmethod
    def parse(cls, value: "str | RoundingMode") -> "RoundingMode":
        if isinstance(value, RoundingMode):
            return value
        if isinstance(value, str):
            key = value.strip().lower().replace("_", "-")
            key = _MODE_ALIASES.get(key, key)
            for m in cls:
                if m.value == key:
                    return m
        valid = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown rounding mode {value!r}; valid modes are: {valid}")

    @property
    def code(self) -> int:
        return _MODE_CODES[self]


_MODE_ALIASES = {
    "rne": "nearest-even",
    "rn": "nearest-even",
    "nearest": "nearest-even",
    "rna": "nearest-away",
    "rz": "toward-zero",
    "rtz": "toward-zero",
    "truncate": "toward-zero",
    "ru": "up",
    "toward-positive": "up",
    "rd": "down",
    "toward-negative": "down",
    "rto": "odd",
    "round-to-odd": "odd",
    "sr": "stochastic",
}
# Codes shared with the private kernels (fpanalysis._kernels.round).
_MODE_CODES = {
    RoundingMode.NEAREST_EVEN: 0,
    RoundingMode.NEAREST_AWAY: 1,
    RoundingMode.TOWARD_ZERO: 2,
    RoundingMode.UP: 3,
    RoundingMode.DOWN: 4,
    RoundingMode.ODD: 5,
    RoundingMode.STOCHASTIC: 6,
}
_SRK = 7
_OVF_CODES = {Overflow.INF: 0, Overflow.SATURATE: 1, Overflow.NAN: 2}


@dataclass(frozen=True)
class RoundingStats:
    """What happened while rounding ``n`` values (IEEE 754 exception accounting).

    ``overflow``: finite inputs whose rounded value exceeded the format's max (they became
    inf, max or NaN per the format's policy).  ``subnormal``: nonzero results below the smallest
    normal number.  ``flushed``: nonzero finite inputs that became zero (underflow to zero, or
    flush-to-zero in formats without subnormals).  ``inexact``: results different from the input.
    """

    n: int
    inexact: int
    overflow: int
    subnormal: int
    flushed: int

    def fraction(self, what: str) -> float:
        return getattr(self, what) / self.n if self.n else 0.0

    def __add__(self, other: "RoundingStats") -> "RoundingStats":
        return RoundingStats(
            self.n + other.n,
            self.inexact + other.inexact,
            self.overflow + other.overflow,
            self.subnormal + other.subnormal,
            self.flushed + other.flushed,
        )


def fits_float32(fmt: FloatFormat) -> bool:
    """Whether every number of ``fmt`` is a float32 number (so float32 can hold its values)."""
    return fmt.p <= 24 and fmt.emin - fmt.p + 1 >= -149 and fmt.emax <= 127


def kernel_args(fmt: FloatFormat, mode: RoundingMode, seed: Any, random_bits: int | None, stream: int):
    """Validated plain-number arguments for the private kernels."""
    code = mode.code
    kbits = 0
    key = np.uint64(0)
    if mode is RoundingMode.STOCHASTIC:
        if seed is None:
            raise ValueError(
                "stochastic rounding needs an explicit seed (an int or a numpy Generator), "
                "e.g. round_to(x, 'fp16', mode='stochastic', seed=0)"
            )
        if isinstance(seed, np.random.Generator):
            seed = int(seed.integers(0, 2**63))
        if not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int or numpy Generator, got {type(seed).__name__}")
        key = stream_key(int(seed), int(stream))
        if random_bits is not None:
            if not isinstance(random_bits, (int, np.integer)) or not 1 <= random_bits <= 63:
                raise ValueError(f"random_bits must be an integer in [1, 63], got {random_bits!r}")
            code = _SRK
            kbits = int(random_bits)
    elif random_bits is not None:
        raise ValueError("random_bits applies only to mode='stochastic'")
    return (
        fmt.p,
        fmt.emin,
        fmt.min_normal,
        fmt.max,
        fmt.subnormals,
        _OVF_CODES[fmt.overflow],
        code,
        key,
        kbits,
    )


def native_byte_order(arr: np.ndarray) -> np.ndarray:
    """``arr`` in the machine's byte order (the kernels read native numbers only); the values
    are unchanged, so a big-endian array rounds exactly as its little-endian twin."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def as_float_array(x: ArrayLike) -> np.ndarray:
    arr = native_byte_order(np.asarray(x))
    if arr.dtype.kind == "f":
        if arr.dtype.itemsize < 4:
            arr = arr.astype(np.float32)
        elif arr.dtype.itemsize > 8:
            raise TypeError("float128/longdouble inputs are not supported; convert to float64")
        return arr
    if arr.dtype.kind in "iub":
        return arr.astype(np.float64)
    if arr.dtype.kind == "V" and arr.dtype.itemsize in (1, 2):  # ml_dtypes scalars
        return arr.astype(np.float32)
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"cannot round values of dtype {arr.dtype}; pass real numbers") from None


_F64_INT_LIMIT = 1 << 53  # every integer of magnitude <= 2**53 is a float64 number


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _wide_ints(x: Any) -> tuple[np.ndarray, list[int]]:
    """Flat positions and values of the integers in ``x`` that float64 cannot hold exactly
    (magnitude above ``2**53`` with more than 53 significant bits, or beyond float64's range).

    Converting those to float64 would round them once before the rounding asked for: the
    callers round them exactly with :func:`_round_int` or refuse them.  Python scalars, int64
    and uint64 arrays and lists/tuples (possibly mixing floats and ints) are examined.
    """
    if _is_int(x):
        v = int(x)
        return (np.zeros(1, dtype=np.intp), [v]) if _int_needs_exact(v) else (np.zeros(0, dtype=np.intp), [])
    if isinstance(x, np.ndarray) and x.dtype.kind in "iu":
        if x.dtype.itemsize < 8:
            return np.zeros(0, dtype=np.intp), []
        flat = x.reshape(-1)
        cand = np.flatnonzero((flat > _F64_INT_LIMIT) | (flat < -_F64_INT_LIMIT))
    elif (isinstance(x, np.ndarray) and x.dtype.kind == "O") or isinstance(x, (list, tuple)):
        try:
            flat = np.array(x, dtype=object).reshape(-1)
        except ValueError:  # ragged: numpy's own conversion reports it later
            return np.zeros(0, dtype=np.intp), []
        cand = np.array([i for i, v in enumerate(flat.tolist()) if _is_int(v) and _int_needs_exact(int(v))],
                        dtype=np.intp)
    else:
        return np.zeros(0, dtype=np.intp), []
    vals = [int(v) for v in flat[cand].tolist()] if cand.size else []
    keep = [k for k, v in enumerate(vals) if _int_needs_exact(v)]
    return cand[keep], [vals[k] for k in keep]


def _int_needs_exact(v: int) -> bool:
    if -_F64_INT_LIMIT <= v <= _F64_INT_LIMIT:
        return False
    a = abs(v)
    return a.bit_length() > 1024 or (a >> ((a & -a).bit_length() - 1)).bit_length() > 53


def _round_int(n: int, fmt: FloatFormat, mode: RoundingMode, rbits: int, kbits: int) -> tuple[float, int, bool]:
    """Round the integer ``n`` (``|n| > 2**53``) to ``fmt`` with exact integer arithmetic, with the
    semantics of the kernels (overflow policy per mode; stochastic modes decide from the exact
    dropped fraction and the 64 random bits ``rbits``, ``kbits`` of them for ``random_bits``).

    Returns ``(value, inexact, overflow)``.  ``|n| >= 2**53 > 2**emin``: never subnormal or
    flushed.
    """
    neg = n < 0
    a = -n if neg else n
    s = a.bit_length() - fmt.p  # drop s >= 1 bits: the quantum is 2**s (the binade is above emin)
    fl = a >> s
    rem = a - (fl << s)
    half = 1 << (s - 1)
    if mode is RoundingMode.NEAREST_EVEN:
        up = rem > half or (rem == half and fl & 1 == 1)
    elif mode is RoundingMode.NEAREST_AWAY:
        up = rem >= half
    elif mode is RoundingMode.TOWARD_ZERO:
        up = False
    elif mode is RoundingMode.UP:
        up = rem != 0 and not neg
    elif mode is RoundingMode.DOWN:
        up = rem != 0 and neg
    elif mode is RoundingMode.ODD:
        up = rem != 0 and fl & 1 == 0
    elif kbits == 0:  # stochastic: up when u = (rbits >> 11) * 2**-53 < rem / 2**s
        up = ((rbits >> 11) << s) < (rem << 53)
    else:  # k random bits added to the top k dropped bits
        up = ((rem << kbits) >> s) + (rbits >> (64 - kbits)) >= (1 << kbits)
    y = (fl + int(up)) << s
    over = y > fmt.max
    if over:
        to_max = (
            fmt.overflow is Overflow.SATURATE
            or mode in (RoundingMode.TOWARD_ZERO, RoundingMode.ODD)
            or (mode is RoundingMode.UP and neg)
            or (mode is RoundingMode.DOWN and not neg)
        )
        val = fmt.max if to_max else (math.nan if fmt.overflow is Overflow.NAN else math.inf)
    else:
        val = float(y)  # y has at most p <= 53 significant bits and y <= max: exact
    return (-val if neg else val), bool(rem != 0 or over), bool(over)


def _with_exact_ints(
    x: Any, arr: "np.ndarray | None", fmt: FloatFormat, mode: RoundingMode, key: np.uint64, kbits: int
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """``arr`` (the float64 conversion of ``x``, or None when it failed) with the integers that
    float64 cannot hold replaced by their exact roundings to ``fmt`` (numbers of the format, or
    the overflow policy's value, which rounding leaves unchanged).  Also returns the counts
    (inexact, overflow) of those replaced entries, or None when there were none."""
    idx, vals = _wide_ints(x)
    if not vals:
        if arr is None:
            raise TypeError("cannot round values of this input; pass real numbers")
        return arr, None
    if arr is None:  # object array with integers beyond float64's range
        flat_obj = np.array(x, dtype=object).reshape(-1)
        flat_obj[idx] = 0.0
        shape = np.shape(np.array(x, dtype=object))
        try:
            arr = flat_obj.astype(np.float64).reshape(shape)
        except (TypeError, ValueError, OverflowError):
            raise TypeError("cannot round values of this input; pass real numbers") from None
    else:
        arr = np.array(arr, dtype=np.float64, copy=True)
    rb = counter_random_numpy(key, idx.astype(np.uint64)) if mode is RoundingMode.STOCHASTIC else None
    flat = arr.reshape(-1)
    n_inexact = n_over = 0
    for k, (i, v) in enumerate(zip(idx.tolist(), vals)):
        y, inexact, over = _round_int(v, fmt, mode, 0 if rb is None else int(rb[k]), kbits)
        flat[i] = y
        n_inexact += inexact
        n_over += over
    return arr, (n_inexact, n_over)


def round_to(
    x: ArrayLike,
    fmt: "str | FloatFormat" = "fp16",
    mode: "str | RoundingMode" = "nearest-even",
    *,
    seed: Any = None,
    random_bits: int | None = None,
    stream: int = 0,
    dtype: Any = None,
    out: np.ndarray | None = None,
    return_stats: bool = False,
) -> Any:
    """Round real numbers to the format ``fmt``.

    Parameters
    ----------
    x : array_like or scalar
        Real values (float16/32/64 or integers).  Integers that float64 cannot hold exactly
        (above ``2**53`` in magnitude, Python ints of any size) are rounded exactly, once.
    fmt : str or FloatFormat
        Target format (``"fp16"``, ``"bf16"``, ``"fp8_e4m3fn"``, a custom ``FloatFormat``, ...).
    mode : str
        ``"nearest-even"`` (default), ``"nearest-away"``, ``"toward-zero"``, ``"up"``,
        ``"down"``, ``"odd"`` or ``"stochastic"``.
    seed : int or numpy.random.Generator
        Required for stochastic rounding.  The random bits for element ``i`` depend only on
        ``(seed, stream, i)`` (a counter-based generator), so results are reproducible and do
        not depend on the number of threads.
    random_bits : int, optional
        Stochastic rounding with only ``k`` random bits: round up when the top ``k`` dropped
        bits plus a ``k``-bit random number carry.  ``None`` (default) rounds up with
        probability exactly proportional to the distance (to 2**-64).
    stream : int
        Independent random stream under the same seed (e.g. one per training step).
    dtype : numpy dtype, optional
        Output dtype.  Default: float32 when the input is float32 (or float16) and the format's
        numbers are all float32 numbers, else float64.  ``numpy.float16`` (for fp16) and the
        ml_dtypes types ``bfloat16``, ``float8_e4m3fn``, ``float8_e5m2`` (for the matching
        formats) give the format's native storage, written in one pass.
    out : numpy.ndarray, optional
        A C-contiguous array of the input's shape to write the result into and return: float32
        or float64 (may be ``x`` itself: rounding in place), or a native storage type of the
        format (e.g. a preallocated ``numpy.float16`` array for fp16).
    return_stats : bool
        Also return a :class:`RoundingStats` with overflow/subnormal/flush/inexact counts.

    Returns
    -------
    numpy.ndarray or float, and RoundingStats when ``return_stats``.

    Examples
    --------
    >>> round_to([0.1, -0.1], "bf16", mode="toward-zero").tolist()
    [0.099609375, -0.099609375]
    >>> y, st = round_to([1e5, 1e-9, 3.0], "fp16", return_stats=True)
    >>> st.overflow, st.flushed, st.inexact
    (1, 1, 2)
    """
    from ._kernels import round as round_kernels

    f = get_format(fmt)
    m = RoundingMode.parse(mode)
    args = kernel_args(f, m, seed, random_bits, stream)
    try:
        arr = as_float_array(x)
    except OverflowError:  # integers beyond float64's range: rounded exactly below
        arr = None
    arr, int_counts = _with_exact_ints(x, arr, f, m, args[7], args[8])
    if dtype is None and out is not None and _storage_name(out.dtype) in _NATIVE_STORAGE:
        dtype = out.dtype
    if dtype is not None and _storage_name(dtype) in _NATIVE_STORAGE:
        if return_stats:
            raise ValueError("return_stats is not supported with a native low-precision dtype")
        if out is not None and (out.shape != arr.shape or not out.flags.c_contiguous or out.dtype != np.dtype(dtype)):
            raise ValueError(f"out must be a C-contiguous {np.dtype(dtype)} array of shape {arr.shape}")
        return _round_to_native(arr, f, _storage_name(dtype), np.dtype(dtype), args, out)
    if dtype is None:
        out_dtype = np.float32 if (arr.dtype == np.float32 and fits_float32(f)) else np.float64
    else:
        out_dtype = np.dtype(dtype).type
        if out_dtype not in (np.float32, np.float64):
            raise ValueError(
                f"dtype must be float32, float64 or a native storage type of the format "
                f"({', '.join(_NATIVE_STORAGE)}); got {np.dtype(dtype)}"
            )
        if out_dtype is np.float32 and not fits_float32(f):
            raise ValueError(f"format {f.name} has numbers that float32 cannot hold; use dtype=float64")
    flat = np.ascontiguousarray(arr).reshape(-1)
    if out is None:
        dest = np.empty(flat.shape, dtype=out_dtype)
    else:
        if not isinstance(out, np.ndarray) or out.shape != arr.shape or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous array of shape {arr.shape}")
        if not out.dtype.isnative:
            raise ValueError(f"out must be in the machine's byte order, got {out.dtype.str}")
        if out.dtype.type not in (np.float32, np.float64) or (out.dtype == np.float32 and not fits_float32(f)):
            raise ValueError(f"out must be float64, or float32 for formats whose numbers float32 holds; got {out.dtype}")
        dest = out.reshape(-1)
    p, emin, minnorm, maxval, sub, ovf, code, key, kbits = args
    if return_stats:
        kern = round_kernels.round_array_stats if flat.size >= round_kernels.SERIAL_BELOW else round_kernels.round_array_stats_serial
        counts = kern(flat, dest, p, emin, minnorm, maxval, sub, ovf, code, key, 0, kbits)
        stats = RoundingStats(flat.size, *(int(c) for c in counts))
        if int_counts is not None:  # the replaced entries are format numbers: no counts above
            stats = stats + RoundingStats(0, int_counts[0], int_counts[1], 0, 0)
    elif flat.dtype == np.float32 and dest.dtype == np.float32 and code < 6 and round_kernels.f32_kernel_applies(
        f.p, f.emin, f.emax, f.subnormals
    ):
        kern = round_kernels.round_array_f32 if flat.size >= round_kernels.SERIAL_BELOW else round_kernels.round_array_f32_serial
        kern(flat, dest, p, emin, minnorm, maxval, sub, ovf, code)
    else:
        kern = round_kernels.round_array if flat.size >= round_kernels.SERIAL_BELOW else round_kernels.round_array_serial
        kern(flat, dest, p, emin, minnorm, maxval, sub, ovf, code, key, 0, kbits)
    result = dest.reshape(arr.shape) if out is None else out
    if result.ndim == 0 and out is None:
        result = result[()]
        if isinstance(x, (float, int)):
            result = float(result)
    return (result, stats) if return_stats else result


# numpy/ml_dtypes storage types and the format each one stores
_NATIVE_STORAGE = {
    "float16": "fp16",
    "bfloat16": "bf16",
    "float8_e4m3fn": "fp8_e4m3fn",
    "float8_e5m2": "fp8_e5m2",
}


def _storage_name(dtype: Any) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def _round_to_native(
    arr: np.ndarray, f: FloatFormat, name: str, dt: np.dtype, args: tuple, out: np.ndarray | None
) -> Any:
    from ._kernels import round as round_kernels

    native = get_format(_NATIVE_STORAGE[name])
    same = (native.p, native.emin, native.emax, native.subnormals, native.overflow, native.max) == (
        f.p, f.emin, f.emax, f.subnormals, f.overflow, f.max
    )
    if not same:
        raise ValueError(f"dtype {name} stores format {native.name}, not {f.name}")
    w, bias, total = _encoding(f)
    fb = f.p - 1
    top = (1 << w) - 1
    inf_code = top << fb
    nan_code = (top << fb) | ((1 << (fb - 1)) if f.overflow is Overflow.INF else ((1 << fb) - 1))
    p, emin, minnorm, maxval, sub, ovf, code, key, kbits = args
    flat = np.ascontiguousarray(arr).reshape(-1)
    if name == "float16" and code == 0 and flat.dtype == np.float32:
        # binary16, nearest even, from float32: the hardware conversion is exactly this rounding
        dest = np.empty(flat.shape, dtype=np.uint16) if out is None else out.reshape(-1).view(np.uint16)
        round_kernels.f32_to_binary16_bits(flat, dest)
        if out is not None:
            return out
        res = dest.view(dt).reshape(arr.shape)
        return res[()] if res.ndim == 0 else res
    bits = np.empty(flat.shape, dtype=_uint_dtype(total)) if out is None else out.reshape(-1).view(_uint_dtype(total))
    round_kernels.round_array_bits(
        flat, bits, p, emin, minnorm, maxval, sub, ovf, code, key, 0, kbits,
        fb, bias, 1.0 / f.min_subnormal, np.uint64(inf_code), np.uint64(nan_code), total - 1,
        flat.dtype == np.float32 and round_kernels.f32_kernel_applies(f.p, f.emin, f.emax, f.subnormals),
    )
    if out is not None:
        return out
    result = bits.view(dt).reshape(arr.shape)
    return result[()] if result.ndim == 0 else result


def round_numpy(
    x: np.ndarray,
    fmt: FloatFormat,
    mode: RoundingMode,
    *,
    key: np.uint64 = np.uint64(0),
    kbits: int | None = None,
) -> np.ndarray:
    """Plain NumPy twin of the rounding kernel (the test oracle).  float64 in, float64 out.

    Scales each value by its quantum ``q = 2**(max(e, emin) - p + 1)`` (exact), rounds the
    scaled value to an integer with ``np.rint``/``np.floor``/``np.ceil``, and scales back.
    """
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    finite = np.isfinite(x)
    axf = np.where(finite, ax, 0.0)
    _, ex = np.frexp(axf)
    e = ex.astype(np.int64) - 1
    lo = fmt.emin if fmt.subnormals else fmt.emin - 1
    e_eff = np.maximum(e, lo)
    q = np.ldexp(1.0, (e_eff - fmt.p + 1).astype(np.int64))
    t = axf / q
    fl = np.floor(t)
    neg = np.signbit(x)
    if mode is RoundingMode.NEAREST_EVEN:
        r = np.rint(t)
    elif mode is RoundingMode.NEAREST_AWAY:
        r = np.floor(t + 0.5)
    elif mode is RoundingMode.TOWARD_ZERO:
        r = fl
    elif mode is RoundingMode.UP:
        r = np.where(neg, fl, np.ceil(t))
    elif mode is RoundingMode.DOWN:
        r = np.where(neg, np.ceil(t), fl)
    elif mode is RoundingMode.ODD:
        r = np.where((fl != t) & (np.fmod(fl, 2.0) == 0.0), fl + 1.0, fl)
    else:
        frac = t - fl
        rb = counter_random_numpy(key, np.arange(x.size, dtype=np.uint64)).reshape(x.shape)
        if kbits is None:
            up = (rb >> np.uint64(11)).astype(np.float64) * 2.0**-53 < frac
        else:
            up = np.floor(frac * 2.0**kbits) + (rb >> np.uint64(64 - kbits)).astype(np.float64) >= 2.0**kbits
        r = fl + up
    y = r * q
    big = y > fmt.max
    if big.any():
        to_max = np.full(x.shape, fmt.overflow is Overflow.SATURATE)
        if mode in (RoundingMode.TOWARD_ZERO, RoundingMode.ODD):
            to_max[:] = True
        elif mode is RoundingMode.UP:
            to_max |= neg
        elif mode is RoundingMode.DOWN:
            to_max |= ~neg
        over = np.where(to_max, fmt.max, np.nan if fmt.overflow is Overflow.NAN else np.inf)
        y = np.where(big, over, y)
    if not fmt.subnormals:
        y = np.where(y < fmt.min_normal, 0.0, y)
    y = np.copysign(y, np.where(neg, -1.0, 1.0))
    inf_out = {Overflow.INF: np.inf, Overflow.SATURATE: fmt.max, Overflow.NAN: np.nan}[fmt.overflow]
    y = np.where(np.isinf(x), np.copysign(inf_out, x), y)
    return np.where(np.isnan(x), np.nan, y)


# --- bit encodings -------------------------------------------------------------------------


def _encoding(fmt: FloatFormat) -> tuple[int, int, int]:
    """(exponent bits w, bias, total bits) for formats with a standard encoding."""
    w = fmt.exponent_bits
    if w is None:
        raise ValueError(
            f"format {fmt.name!r} has no bit encoding; give it exponent_bits "
            "(IEEE-style layout: sign, exponent, fraction)"
        )
    bias = (1 << (w - 1)) - 1
    top = (1 << w) - 1
    ok_ieee = fmt.emin == 1 - bias and fmt.emax == bias and fmt.overflow is Overflow.INF
    ok_fn = fmt.emin == 1 - bias and fmt.emax == top - bias and fmt.overflow is not Overflow.INF
    if not (ok_ieee or ok_fn) or not fmt.subnormals:
        raise ValueError(
            f"format {fmt.name!r}: emin={fmt.emin}, emax={fmt.emax} with {w} exponent bits is "
            "neither an IEEE layout nor an OCP 'FN' layout (top exponent finite, NaN = all ones)"
        )
    total = 1 + w + fmt.p - 1
    if total > 32:
        raise ValueError(f"format {fmt.name!r}: encodings wider than 32 bits are not supported")
    return w, bias, total


def _uint_dtype(total: int) -> type:
    return np.uint8 if total <= 8 else np.uint16 if total <= 16 else np.uint32


def from_bits(bits: ArrayLike, fmt: "str | FloatFormat") -> np.ndarray:
    """Decode bit patterns of ``fmt`` to float64 values.

    >>> from_bits([0x3C00, 0x7BFF, 0x0001, 0xFC00], "fp16").tolist()
    [1.0, 65504.0, 5.960464477539063e-08, -inf]
    """
    f = get_format(fmt)
    w, bias, total = _encoding(f)
    b = np.asarray(bits)
    if b.dtype.kind not in "iu":
        raise TypeError(f"bit patterns must be integers, got dtype {b.dtype}")
    if b.size and (b.min() < 0 or int(b.max()) >= (1 << total)):
        raise ValueError(f"bit patterns of {f.name} are {total}-bit unsigned integers")
    b = b.astype(np.int64)
    fb = f.p - 1
    sign = (b >> (total - 1)) & 1
    E = (b >> fb) & ((1 << w) - 1)
    F = b & ((1 << fb) - 1)
    mag = np.where(
        E == 0,
        np.ldexp(F.astype(np.float64), f.emin - fb),
        np.ldexp((F + (1 << fb)).astype(np.float64), (E - bias - fb).astype(np.int64)),
    )
    top = (1 << w) - 1
    if f.overflow is Overflow.INF:
        mag = np.where(E == top, np.where(F == 0, np.inf, np.nan), mag)
    else:
        mag = np.where((E == top) & (F == (1 << fb) - 1), np.nan, mag)
    return np.where(sign == 1, -mag, mag)


def to_bits(x: ArrayLike, fmt: "str | FloatFormat", mode: "str | RoundingMode" = "nearest-even") -> np.ndarray:
    """Round ``x`` to ``fmt`` (with ``mode``) and encode as unsigned integers
    (uint8 for fp8, uint16 for fp16/bf16, uint32 for wider).  NaN encodes as the canonical quiet NaN.

    >>> [hex(b) for b in to_bits([1.0, -2.0, 65520.0], "fp16")]
    ['0x3c00', '0xc000', '0x7c00']
    """
    f = get_format(fmt)
    w, bias, total = _encoding(f)
    with np.errstate(invalid="ignore"):  # widening a signalling NaN warns; it encodes as NaN
        y = np.asarray(round_to(np.asarray(x, dtype=np.float64), f, mode), dtype=np.float64)
    fb = f.p - 1
    neg = np.signbit(y) & ~np.isnan(y)
    ay = np.abs(y)
    finite = np.isfinite(ay)
    ayf = np.where(finite, ay, 0.0)
    _, ex = np.frexp(ayf)
    e = ex.astype(np.int64) - 1
    sub = ayf < f.min_normal
    E = np.where(sub, 0, e + bias)
    F = np.where(sub, ayf / f.min_subnormal, np.ldexp(ayf, (fb - e).astype(np.int64)) - (1 << fb))
    code = (E << fb) | F.astype(np.int64)
    top = (1 << w) - 1
    if f.overflow is Overflow.INF:
        code = np.where(np.isinf(ay), top << fb, code)
        code = np.where(np.isnan(ay), (top << fb) | (1 << (fb - 1)), code)
    else:
        code = np.where(np.isnan(ay), (top << fb) | ((1 << fb) - 1), code)
    code = code | (neg.astype(np.int64) << (total - 1))
    return code.astype(_uint_dtype(total))

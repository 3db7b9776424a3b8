"""The arithmetic a function under test is written against: emulated, float64 or exact.

A kernel you want to test in a low-precision format is written once, as a Python function
whose first argument is an *arithmetic* object ``ar`` and which does every floating-point
operation through it::

    def my_dot(ar, x, y):
        s = 0.0
        for xi, yi in zip(x, y):
            s = ar.add(s, ar.mul(xi, yi))     # one rounding per operation in the emulator
        return s

:func:`~fpanalysis.testing.assert_emulated_close` then runs it three ways with the same code:

* :class:`Emulator` (``fmt``, ``mode``, ``profile``): every ``add``/``sub``/``mul``/``div``/
  ``sqrt``/``fma`` is correctly rounded to ``fmt`` with ``mode`` (:mod:`fpanalysis.ops`);
  ``dot``/``matmul``/``sum`` follow the arithmetic ``profile`` (``"ieee"``,
  ``"fp32-accumulate"``, ``"exact"``: :mod:`fpanalysis.linalg`); ``apply(fn, *xs)`` evaluates
  an elementwise function in float64 and rounds its result once (what PyTorch does for
  activations, in fp32 "opmath"); ``round(x)`` rounds to the format;
* the float64 reference: the same methods in NumPy float64;
* the exact reference: rational arithmetic (:class:`fractions.Fraction`) for ``add``,
  ``sub``, ``mul``, ``div``, ``fma``, ``dot``, ``matmul`` and ``sum``; ``sqrt`` to 200
  correct bits; ``apply`` in float64 (a relative error of ``2**-53``, far below any
  low-precision tolerance); ``round`` is the identity.

Indexing, slicing, reshaping and stacking values are exact and may be done with NumPy directly.
Constants the function introduces (``0.0``, ``0.5``, ``np.zeros``) are rounded to the format
(nearest even) when they enter an emulated operation, as a framework stores them in its
tensors' dtype.  Operations done with NumPy operators (``x * y``) bypass the arithmetic and are
*not* emulated: route every arithmetic operation through ``ar``.

>>> import numpy as np
>>> from fpanalysis.testing.emulator import Emulator, reference_arithmetic
>>> def total(ar, x):
...     s = 0.0
...     for v in x:
...         s = ar.add(s, v)
...     return s
>>> x = np.array([1.0] + [2.0**-11] * 8)
>>> total(Emulator("fp16"), x), total(reference_arithmetic("float64"), x)
(1.0, 1.00390625)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from ..formats import FloatFormat, get_format
from ..linalg import Profile
from ..rounding import RoundingMode

__all__ = [
    "PROFILES",
    "REFERENCES",
    "Arithmetic",
    "Emulator",
    "ExactArithmetic",
    "Float64Arithmetic",
    "reference_arithmetic",
]

#: The arithmetic profiles of :class:`fpanalysis.linalg.Profile`, by name.
PROFILES = tuple(p.value for p in Profile)
REFERENCES = ("float64", "exact")
_SQRT_BITS = 200
# Below this many elements an operation runs its (parallel) kernel on one thread: starting the
# thread pool costs milliseconds per call, which dominates the scalar loops kernels are
# written as.  Measured on 2 busy cores: ops.add on one element ~3.5 ms CPU with 2 threads,
# ~50 us with 1.
_SERIAL_BELOW = 1 << 14


@contextlib.contextmanager
def _threads_for(size: int):
    if size >= _SERIAL_BELOW:
        yield
        return
    import numba  # loaded already by the kernels this wraps

    prev = numba.get_num_threads()
    if prev == 1:
        yield
        return
    numba.set_num_threads(1)  # a thread-local mask (numba docs: threading implementation)
    try:
        yield
    finally:
        numba.set_num_threads(prev)


def _out(a: np.ndarray) -> Any:
    return float(a) if a.ndim == 0 else a


def _choice(value: Any, valid: tuple[str, ...], what: str) -> str:
    key = str(getattr(value, "value", value)).strip().lower().replace("_", "-")
    if key not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid {what}s are: {', '.join(valid)}")
    return key


class Arithmetic:
    """Interface shared by :class:`Emulator` and the references (see the module docstring).

    Attributes
    ----------
    name : str
        ``"fp16 (nearest-even, fp32-accumulate)"``, ``"float64"`` or ``"exact"``: for messages.
    """

    name = "arithmetic"

    def round(self, x: Any) -> Any:
        """``x`` as a value of this arithmetic (rounded to the format in the emulator)."""
        raise NotImplementedError

    def add(self, a: Any, b: Any) -> Any:
        """``a + b`` (elementwise, broadcasting)."""
        raise NotImplementedError

    def sub(self, a: Any, b: Any) -> Any:
        """``a - b``."""
        raise NotImplementedError

    def mul(self, a: Any, b: Any) -> Any:
        """``a * b``."""
        raise NotImplementedError

    def div(self, a: Any, b: Any) -> Any:
        """``a / b``."""
        raise NotImplementedError

    def sqrt(self, a: Any) -> Any:
        """``sqrt(a)``."""
        raise NotImplementedError

    def fma(self, a: Any, b: Any, c: Any) -> Any:
        """``a * b + c`` with one rounding."""
        raise NotImplementedError

    def dot(self, x: Any, y: Any) -> Any:
        """Inner product of two 1-D vectors."""
        raise NotImplementedError

    def matmul(self, A: Any, B: Any) -> Any:
        """``A @ B`` (``numpy.matmul`` shapes)."""
        raise NotImplementedError

    def sum(self, x: Any, axis: int = -1) -> Any:
        """Sum along ``axis``."""
        raise NotImplementedError

    def apply(self, fn: Callable[..., Any], *xs: Any) -> Any:
        """Elementwise ``fn(*xs)`` evaluated in float64, rounded once."""
        raise NotImplementedError

    def to_float(self, x: Any) -> Any:
        """A result as float64 (a float or an array): correctly rounded for exact values."""
        return _out(np.asarray(x, dtype=np.float64))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Emulator(Arithmetic):
    """Arithmetic in the format ``fmt`` with rounding ``mode`` under an arithmetic ``profile``.

    Parameters
    ----------
    fmt : str or FloatFormat
        Format of every value and result (``"fp16"``, ``"bf16"``, ...).
    mode : str
        Rounding mode of every rounding to ``fmt`` (see :class:`~fpanalysis.rounding.RoundingMode`).
    profile : str
        How ``dot``, ``matmul`` and ``sum`` round (``"ieee"``: every product and addition in
        ``fmt``; ``"fp32-accumulate"``: exact products, binary32 accumulation, one final
        rounding; ``"exact"``: one rounding of the exact result); see ``docs/semantics.md`` §1.
    order, block, fma :
        Summation order (``"sequential"``, ``"pairwise"``, ``"blocked"``), block length and
        fused accumulation for ``dot``/``matmul``/``sum``, as in :func:`fpanalysis.linalg.matmul`.
    seed : int, optional
        Needed for ``mode="stochastic"``; every operation draws from its own stream
        (``stream = 0, 1, 2, ...`` in call order), so a run is reproducible.

    Examples
    --------
    >>> em = Emulator("bf16", mode="toward-zero")
    >>> em.div(1.0, 3.0), em.apply(np.exp, 1.0)
    (0.33203125, 2.703125)
    """

    def __init__(self, fmt: str | FloatFormat = "fp16", mode: str | RoundingMode = "nearest-even",
                 profile: str = "fp32-accumulate", *, order: str = "sequential", block: int = 32,
                 fma: bool = False, seed: Any = None) -> None:
        self.fmt = get_format(fmt)
        self.mode = RoundingMode.parse(mode)
        self.profile = _choice(profile, PROFILES, "profile")
        self.order = order
        self.block = block
        self.fused = bool(fma)
        self.seed = seed
        self._stream = 0
        self.name = f"{self.fmt.name} ({self.mode.value}, profile {self.profile})"

    def _rand(self) -> dict[str, Any]:
        if self.seed is None:
            return {}
        self._stream += 1
        return {"seed": self.seed, "stream": self._stream - 1}

    def _lin(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"mode": self.mode, "round_inputs": True, **self._rand()}
        if self.profile != "exact":
            kw.update(order=self.order, block=self.block, fma=self.fused)
        return kw

    @staticmethod
    def _f64(x: Any) -> Any:
        return _out(np.asarray(x, dtype=np.float64))

    def round(self, x: Any) -> Any:
        from ..rounding import round_to

        xa = np.asarray(x, dtype=np.float64)
        with _threads_for(xa.size):
            return self._f64(round_to(xa, self.fmt, self.mode, **self._rand()))

    def _op(self, name: str, *args: Any) -> Any:
        from .. import ops

        fn = getattr(ops, name)
        size = max(np.size(a) for a in args)
        rand = self._rand()
        with _threads_for(size):
            try:  # operands are usually numbers of the format already: skip rounding them
                y = fn(*args, self.fmt, self.mode, dtype=np.float64, **rand)
            except ValueError:  # a constant that is not: rounded to nearest even, as stored
                y = fn(*args, self.fmt, self.mode, round_inputs=True, dtype=np.float64, **rand)
        return self._f64(y)

    def add(self, a: Any, b: Any) -> Any:
        return self._op("add", a, b)

    def sub(self, a: Any, b: Any) -> Any:
        return self._op("sub", a, b)

    def mul(self, a: Any, b: Any) -> Any:
        return self._op("mul", a, b)

    def div(self, a: Any, b: Any) -> Any:
        return self._op("div", a, b)

    def sqrt(self, a: Any) -> Any:
        return self._op("sqrt", a)

    def fma(self, a: Any, b: Any, c: Any) -> Any:
        return self._op("fma", a, b, c)

    def dot(self, x: Any, y: Any) -> Any:
        from .. import linalg

        xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        with _threads_for(xa.size):
            return float(linalg.dot(xa, ya, self.fmt, self.profile, **self._lin()))

    def matmul(self, A: Any, B: Any) -> Any:
        from .. import linalg

        Aa, Ba = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
        with _threads_for(max(Aa.size, Ba.size)):
            return self._f64(linalg.matmul(Aa, Ba, self.fmt, self.profile, **self._lin()))

    def sum(self, x: Any, axis: int = -1) -> Any:
        xa = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
        if xa.shape[-1] == 0:
            return self._f64(np.zeros(xa.shape[:-1]))
        return self.matmul(xa, np.ones(xa.shape[-1]))

    def apply(self, fn: Callable[..., Any], *xs: Any) -> Any:
        from ..rounding import round_to

        # operands are values of the format (constants rounded to nearest even, as stored)
        arrs = [np.asarray(x, dtype=np.float64) for x in xs]
        with _threads_for(max((a.size for a in arrs), default=1)):
            inner = [np.asarray(round_to(a, self.fmt), dtype=np.float64) for a in arrs]
            with np.errstate(all="ignore"):
                y = np.asarray(fn(*inner), dtype=np.float64)
            return self._f64(round_to(y, self.fmt, self.mode, **self._rand()))


class Float64Arithmetic(Arithmetic):
    """The float64 reference: NumPy float64 operations (``fma`` as ``a*b + c``, two roundings)."""

    name = "float64"

    @staticmethod
    def _f(x: Any) -> Any:
        return np.asarray(x, dtype=np.float64)

    def _done(self, y: Any) -> Any:
        return _out(np.asarray(y, dtype=np.float64))

    def round(self, x: Any) -> Any:
        return self._done(self._f(x))

    def add(self, a: Any, b: Any) -> Any:
        return self._done(self._f(a) + self._f(b))

    def sub(self, a: Any, b: Any) -> Any:
        return self._done(self._f(a) - self._f(b))

    def mul(self, a: Any, b: Any) -> Any:
        return self._done(self._f(a) * self._f(b))

    def div(self, a: Any, b: Any) -> Any:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._done(self._f(a) / self._f(b))

    def sqrt(self, a: Any) -> Any:
        with np.errstate(invalid="ignore"):
            return self._done(np.sqrt(self._f(a)))

    def fma(self, a: Any, b: Any, c: Any) -> Any:
        return self._done(self._f(a) * self._f(b) + self._f(c))

    def dot(self, x: Any, y: Any) -> Any:
        return float(np.dot(self._f(x), self._f(y)))

    def matmul(self, A: Any, B: Any) -> Any:
        return self._done(np.matmul(self._f(A), self._f(B)))

    def sum(self, x: Any, axis: int = -1) -> Any:
        return self._done(np.sum(self._f(x), axis=axis))

    def apply(self, fn: Callable[..., Any], *xs: Any) -> Any:
        with np.errstate(all="ignore"):
            return self._done(fn(*[self._f(x) for x in xs]))


def _frac(v: Any) -> Fraction:
    if isinstance(v, Fraction):
        return v
    if isinstance(v, (int, np.integer)):
        return Fraction(int(v))
    fv = float(v)
    if not math.isfinite(fv):
        raise ValueError(f"the exact reference holds rational numbers only; got {fv!r} "
                         "(use reference='float64' for inputs with inf or NaN)")
    return Fraction(fv)


_to_frac = np.frompyfunc(_frac, 1, 1)


def _sqrt_frac(q: Fraction) -> Fraction:
    if q < 0:
        raise ValueError(f"sqrt of a negative number ({float(q)!r}) in the exact reference")
    n, d = q.numerator, q.denominator
    k = _SQRT_BITS + max(0, d.bit_length() - n.bit_length())
    return Fraction(math.isqrt(n * d << (2 * k)), d << k)


_sqrt_frac_u = np.frompyfunc(_sqrt_frac, 1, 1)


class ExactArithmetic(Arithmetic):
    """The exact reference: values are object arrays of :class:`fractions.Fraction`."""

    name = "exact"

    @staticmethod
    def _q(x: Any) -> Any:
        return _to_frac(np.asarray(x, dtype=object))

    @staticmethod
    def _done(y: Any) -> Any:
        return y[()] if isinstance(y, np.ndarray) and y.ndim == 0 else y

    def round(self, x: Any) -> Any:
        return self._done(self._q(x))

    def add(self, a: Any, b: Any) -> Any:
        return self._done(np.add(self._q(a), self._q(b)))

    def sub(self, a: Any, b: Any) -> Any:
        return self._done(np.subtract(self._q(a), self._q(b)))

    def mul(self, a: Any, b: Any) -> Any:
        return self._done(np.multiply(self._q(a), self._q(b)))

    def div(self, a: Any, b: Any) -> Any:
        return self._done(np.true_divide(self._q(a), self._q(b)))

    def sqrt(self, a: Any) -> Any:
        return self._done(_sqrt_frac_u(self._q(a)))

    def fma(self, a: Any, b: Any, c: Any) -> Any:
        return self._done(np.add(np.multiply(self._q(a), self._q(b)), self._q(c)))

    def dot(self, x: Any, y: Any) -> Any:
        xs, ys = self._q(x), self._q(y)
        if xs.ndim != 1 or ys.ndim != 1 or xs.shape != ys.shape:
            raise ValueError(f"dot needs two 1-D vectors of one length, got shapes {xs.shape} and {ys.shape}")
        return sum((a * b for a, b in zip(xs, ys)), Fraction(0))

    def matmul(self, A: Any, B: Any) -> Any:
        return self._done(np.matmul(self._q(A), self._q(B)))

    def sum(self, x: Any, axis: int = -1) -> Any:
        xa = self._q(x)
        return self._done(np.sum(xa, axis=axis, initial=Fraction(0)))

    def apply(self, fn: Callable[..., Any], *xs: Any) -> Any:
        fl = [self.to_float(self._q(x)) for x in xs]
        with np.errstate(all="ignore"):
            return self._done(self._q(np.asarray(fn(*fl), dtype=np.float64)))

    def to_float(self, x: Any) -> Any:
        a = np.asarray(x, dtype=object)
        return _out(np.asarray(np.frompyfunc(float, 1, 1)(a), dtype=np.float64))


def reference_arithmetic(kind: str = "float64") -> Arithmetic:
    """The reference arithmetic ``"float64"`` or ``"exact"`` (see the module docstring).

    >>> ar = reference_arithmetic("exact")
    >>> ar.to_float(ar.sub(ar.add(1.0, 1e-30), 1.0))
    1e-30
    """
    k = _choice(kind, REFERENCES, "reference")
    return Float64Arithmetic() if k == "float64" else ExactArithmetic()

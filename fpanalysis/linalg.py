"""Emulated low-precision linear algebra: ``dot``, ``matmul`` and ``conv2d`` under a named
arithmetic profile (see ``docs/semantics.md`` §1).

>>> import numpy as np
>>> from fpanalysis.linalg import dot
>>> x = np.array([1.0] + [2.0**-11] * 2048)        # 1 followed by 2048 halves of an fp16 ulp
>>> y = np.ones_like(x)
>>> dot(x, y, "fp16", "ieee")                       # fp16 accumulation stagnates at 1
1.0
>>> dot(x, y, "fp16", "fp32-accumulate")            # fp32 accumulation: 1 + 2048 * 2**-11
2.0

Profiles
--------
``ieee``
    Every product is rounded to ``fmt`` and every addition is rounded to ``fmt`` (op-by-op
    emulation, as in chop/CPFloat studies or a naive fp16 kernel).  With ``fma=True`` each step
    is ``s = fl(a*b + s)`` with a single rounding.  All roundings use ``mode``.
``fp32-accumulate``
    Products rounded to binary32 (exact when ``fmt``'s products are binary32 numbers: fp16,
    fp8), accumulated in binary32 with round-to-nearest-even after every addition, then one
    final rounding to ``fmt`` with ``mode``.  This is the arithmetic of numpy's float16
    ``matmul`` (it matches the sequential order bit for bit in the tests), of torch's CPU half
    ``mm`` and ``conv2d`` (in an order that depends on the CPU and the kernel torch picks:
    sequential on some, lane-parallel on others; docs/semantics.md §5) and of cuBLAS/cuDNN fp16
    GEMMs with fp32 compute (in their own orders).
    ``fma=True`` makes each step one binary32 fused multiply-add (identical when the products
    are exact).
``exact``
    The exact sum of the exact products, rounded once to ``fmt`` with ``mode``
    (:func:`fpanalysis.reference.exact_matmul`).  ``order``, ``block`` and ``fma`` do not apply.
    With ``mode="stochastic"`` the exact sum is first rounded to odd at 53 bits.

``volta``, ``turing``, ``ampere``, ``ada``, ``hopper``, ``blackwell`` (aliases ``v100``, ``t4``,
``a100``, ``l40``, ``h100``, ``h200``, ``b200``)
    The tensor-core profiles (docs/semantics.md §1.4, :mod:`fpanalysis.tensorcore`): the
    architecture's multi-term fused steps with inputs of ``fmt`` (fp16, bf16, tf32, fp8 E4M3 or
    E5M2, as the architecture supports) and its fp32 accumulator (13 fraction bits for FP8 on
    Ada and Hopper, promoted to binary32 every 128 terms as in cuBLAS's default FP8 GEMMs),
    chained along ``K`` from +0, then one final rounding to ``fmt`` with ``mode`` (the GEMM's
    output conversion).  ``order``, ``block`` and ``fma`` do not apply.

Orders (for ``ieee`` and ``fp32-accumulate``)
---------------------------------------------
``sequential``
    ``s = +0; s = s + t_1; s = s + t_2; ...`` over ``k = 1..K`` (``t_k = a_k b_k``).
``pairwise``
    Higham's pairwise summation (*Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
    sec. 4.1): adjacent terms are added in pairs ``(t_1+t_2), (t_3+t_4), ...``, an odd last term
    passes to the next level unchanged, and the pairing repeats until one value is left (no
    leading +0).  Not combinable with ``fma``.
``blocked``
    Blocked summation (Blanchard, Higham & Mary, SIAM J. Sci. Comput. 42(3), 2020): the terms
    are cut into consecutive blocks of ``block`` terms, each summed sequentially from +0, and
    the block sums are added sequentially to a total that starts at +0.
``blas`` (``fp32-accumulate`` only)
    NumPy's float32 ``matmul`` (the BLAS library's own blocked order, with FMAs), then the
    final rounding.  Fast, but the summation order is the library's and not documented here.

Signed zeros follow IEEE 754 (sec. 6.3: an exact zero sum of operands of opposite signs is +0,
except in round-down where it is -0).  ``ieee``: every addition follows that rule, from a sum
that starts at +0, so a sum of -0 terms is +0 (as in BLAS and torch) and, with ``"down"``, an
exact zero sum is -0 unless every term is +0.  ``fp32-accumulate``: the binary32 additions
round to nearest even whatever ``mode`` is, so an exact zero sum is +0 in every mode (the final
rounding keeps it).  ``exact``: the rule applied once to the exact sum, as for one fused
operation: +0, except with ``"down"``, where it is -0 unless every product is +0 (the same
zeros as ``ieee`` gives then).  A zero produced by underflow keeps the sign of the exact sum.  A NaN result is a NaN,
but its sign and payload are not specified (as in IEEE 754, sec. 6.3): when both operands of
an addition are NaNs the hardware keeps one of them, and which one can differ between kernels
(e.g. with the number of rows of A) and between CPUs.  Every non-NaN result is bit-exact.

Speed: the ``ieee`` profile for fp16 with ``"nearest-even"`` and no ``fma`` uses binary16
arithmetic directly (LLVM ``half``; native AVX512-FP16 where available); on x86-64 CPUs with
F16C but without AVX512-FP16 its sequential and blocked orders instead run a register-tiled
kernel that holds binary16 values in float32 registers and rounds every product and sum with a
pair of vector conversions (the same bits; from 12 rows of A on).  ``fp32-accumulate``
sequential and blocked (any format, any mode: only the final rounding depends on them) use a
register-tiled float32 kernel, from 12 rows of A on (6 without AVX-512).  Measured ratios to
numpy's float32 BLAS are in ``experiments/bench_gemm.py``'s output; they depend on the CPU.  Other
``ieee`` modes, formats and ``fma=True`` use a general float64 kernel, 50 to 100 times slower
(0.4 to 1 GFLOP/s per core).

Values
------
Inputs must already be numbers of ``fmt`` (float16/float32/float64 arrays); otherwise a
``ValueError`` names the first offending entry, unless ``round_inputs=True``, which rounds them
to ``fmt`` first (round to nearest even, like ``tensor.half()``).  Results are numbers of
``fmt`` held in float32 (float64 for float64 inputs or formats float32 cannot hold).

Stochastic rounding (``mode="stochastic"``, needs ``seed``) draws the bits of each rounding
from a counter-based generator indexed by (batch, entry, term, kind of rounding), so results
are reproducible and independent of the number of threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np

from ._kernels.workspace import scratch
from .formats import FloatFormat, Overflow, get_format
from .rounding import RoundingMode, _wide_ints, fits_float32, kernel_args, native_byte_order, round_to

__all__ = ["Order", "Profile", "conv2d", "dot", "matmul"]

ArrayLike = np.ndarray | Sequence[Any] | float


class Profile(str, Enum):
    """Arithmetic profiles of an emulated dot product (see the module docstring).

    The architecture names are the tensor-core profiles (:mod:`fpanalysis.tensorcore`).
    """

    IEEE = "ieee"
    FP32_ACCUMULATE = "fp32-accumulate"
    EXACT = "exact"
    VOLTA = "volta"
    TURING = "turing"
    AMPERE = "ampere"
    ADA = "ada"
    HOPPER = "hopper"
    BLACKWELL = "blackwell"

    @property
    def tensor_core(self) -> str | None:
        """The tensor-core architecture of the profile, or None."""
        return None if self in (Profile.IEEE, Profile.FP32_ACCUMULATE, Profile.EXACT) else self.value

    @classmethod
    def parse(cls, value: str | Profile) -> Profile:
        if isinstance(value, Profile):
            return value
        if isinstance(value, str):
            from .tensorcore import ALIASES

            key = value.strip().lower().replace("_", "-")
            key = {"fp32-acc": "fp32-accumulate", "fp32": "fp32-accumulate", "op-by-op": "ieee"}.get(key, key)
            key = ALIASES.get(key, key)
            for m in cls:
                if m.value == key:
                    return m
        valid = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown arithmetic profile {value!r}; valid profiles are: {valid} "
                         "(tensor-core aliases: v100, t4, a100, l40, h100, h200, b200)")


class Order(str, Enum):
    """Summation orders (see the module docstring)."""

    SEQUENTIAL = "sequential"
    PAIRWISE = "pairwise"
    BLOCKED = "blocked"
    BLAS = "blas"

    @classmethod
    def parse(cls, value: str | Order) -> Order:
        if isinstance(value, Order):
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            for m in cls:
                if m.value == key:
                    return m
        valid = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown summation order {value!r}; valid orders are: {valid}")


_ORDER_CODES = {Order.SEQUENTIAL: 0, Order.PAIRWISE: 1, Order.BLOCKED: 2}
_FAST_PATHS = True  # tests switch this off to run the general kernels on every case


def _is_binary16(f: FloatFormat) -> bool:
    return (
        (f.p, f.emin, f.emax) == (11, -14, 15)
        and f.subnormals
        and f.overflow is Overflow.INF
        and f.max_significand is None
    )


def _products_exact_in_fp32(f: FloatFormat) -> bool:
    """Whether every product of two numbers of ``f`` is a binary32 number."""
    return 2 * f.p <= 24 and 2 * (f.emin - f.p + 1) >= -149 and 2 * (f.emax + 1) <= 127


def _check_ieee_format(f: FloatFormat) -> None:
    if f.p > 26 or 2 * (f.emax + 1) > 1023 or 2 * (f.emin - f.p + 1) < -1074:
        raise ValueError(
            f"format {f.name!r}: the ieee profile needs products of two numbers of the format to be "
            "exact in float64 (p <= 26 and a moderate exponent range)"
        )


def _bad_entry(bad: np.ndarray, arr: np.ndarray, f: FloatFormat, name: str) -> ValueError:
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"{name}[{', '.join(map(str, idx))}]" if idx else name
    return ValueError(
        f"{where} = {float(arr[idx])!r} is not a number of format {f.name!r}; round the inputs first "
        f"(fpanalysis.round_to(x, {f.name!r})) or pass round_inputs=True"
    )


def _prepare(x: ArrayLike, f: FloatFormat, name: str, round_inputs: bool) -> np.ndarray:
    """Validate that ``x`` holds numbers of ``f``.

    Returns a float16 array for IEEE binary16 formats (the kernels read its bits), else a
    float32 or float64 array.
    """
    _, wide = _wide_ints(x)
    if wide:  # integers that float64 cannot hold: never numbers of a format (p <= 53)
        if not round_inputs:
            raise ValueError(
                f"{name} has {len(wide)} integer value(s) that are not numbers of format {f.name!r} "
                f"(first: {wide[0]!r}); round the inputs first (fpanalysis.round_to(x, {f.name!r})) "
                "or pass round_inputs=True"
            )
        x = round_to(x, f, dtype=np.float64)  # rounded exactly, once
    arr = native_byte_order(np.asarray(x))
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
        raise TypeError(f"{name}: long double inputs are not supported; convert to float64")
    b16 = _is_binary16(f)
    if arr.dtype == np.float16:
        if b16:
            return arr
        arr = _h16_as_f32(arr)
    elif arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if round_inputs:
        arr = np.asarray(round_to(arr, f, dtype=arr.dtype if fits_float32(f) else np.float64))
    if b16:
        x32 = arr.astype(np.float32)
        if arr.dtype != np.float32:
            bad = ~((x32 == arr) | np.isnan(arr))
            if bad.any():
                raise _bad_entry(bad, arr, f, name)
        flat = np.ascontiguousarray(x32).reshape(-1)
        bits = np.empty(flat.shape, dtype=np.uint16)
        if _elementwise("f32_to_h16_checked", flat.size)(flat, bits):
            back = bits.view(np.float16).astype(np.float32).reshape(arr.shape)
            raise _bad_entry(~((back == x32) | np.isnan(x32)), arr, f, name)
        return bits.view(np.float16).reshape(arr.shape)
    r = round_to(arr, f, dtype=arr.dtype if (arr.dtype == np.float64 or fits_float32(f)) else np.float64)
    bad = ~((r == arr) | np.isnan(arr))
    if bad.any():
        raise _bad_entry(bad, arr, f, name)
    return arr


def _h16_as_f32(a: np.ndarray, work: str | None = None) -> np.ndarray:
    """float16 -> float32 with the vectorised kernel (numpy's astype is slow); into the
    workspace array ``work`` (:mod:`._kernels.workspace`) if named, else a fresh array."""

    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32) if work is None else scratch(work, flat.shape, np.float32)
    _elementwise("h16_to_f32", flat.size)(flat.view(np.uint16), out)
    return out.reshape(a.shape)


def _kernel(name: str, work: int, threshold: int) -> Any:
    """The parallel kernel ``name``, or its one-thread variant when ``work`` is below
    ``threshold`` (waking the worker threads costs more than small jobs)."""
    from ._kernels import gemm

    return getattr(gemm, name if work >= threshold else name + "_serial")


def _elementwise(name: str, n: int) -> Any:
    from ._kernels import gemm

    return _kernel(name, n, gemm.SERIAL_ELEMENTS)


def _as(a: np.ndarray, dtype: type, work: str | None = None) -> np.ndarray:
    """``a`` (float16/32/64 values of the format) as a C-contiguous, writeable array of
    ``dtype`` (numba compiles read-only arrays separately).  ``work``: a float16 ``a`` is
    converted into that workspace array (for operands that are not returned)."""
    if a.dtype == np.float16 and dtype != np.uint16:
        a = _h16_as_f32(a, work)
    if dtype == np.uint16:
        return np.require(a, np.float16, ["C_CONTIGUOUS", "WRITEABLE"]).view(np.uint16)
    return np.require(a, dtype, ["C_CONTIGUOUS", "WRITEABLE"])


class _Spec:
    """Validated options shared by dot/matmul/conv2d."""

    def __init__(
        self, fmt: Any, profile: Any, order: Any, block: Any, fma: Any, mode: Any, seed: Any, stream: int
    ):
        self.fmt = get_format(fmt)
        self.profile = Profile.parse(profile)
        self.order = Order.parse(order)
        self.mode = RoundingMode.parse(mode)
        if not isinstance(block, (int, np.integer)) or isinstance(block, bool) or block < 1:
            raise ValueError(f"block must be a positive integer, got {block!r}")
        self.block = int(block)
        self.fma = bool(fma)
        f = self.fmt
        if self.profile is Profile.IEEE:
            _check_ieee_format(f)
            if self.order is Order.BLAS:
                raise ValueError("order='blas' applies only to the fp32-accumulate profile")
        if self.profile is Profile.FP32_ACCUMULATE and not fits_float32(f):
            raise ValueError(
                f"format {f.name!r} has numbers that binary32 cannot hold; fp32-accumulate needs it"
            )
        if self.fma and self.order is Order.PAIRWISE and self.profile is not Profile.EXACT:
            raise ValueError("fma=True applies to the sequential and blocked orders, not pairwise")
        self.kargs = kernel_args(f, self.mode, seed, None, stream)
        self.tensor_core = None
        if self.profile.tensor_core is not None:
            from .tensorcore import tensor_core_for_format

            self.tensor_core = tensor_core_for_format(self.profile.tensor_core, f)

    def out_dtype(self, *arrays: np.ndarray) -> type:
        wide = any(a.dtype == np.float64 for a in arrays)  # binary16 inputs arrive as float16
        return np.float64 if (wide or not fits_float32(self.fmt)) else np.float32


def _round_final(acc: np.ndarray, spec: _Spec, offset: int, dtype: type) -> np.ndarray:
    """Round the accumulated float32/float64 sums to the format (the last step of a profile)."""

    flat = _as(acc, acc.dtype.type).reshape(-1)
    out = np.empty(flat.shape, dtype=dtype)
    if (
        _FAST_PATHS
        and acc.dtype == np.float32
        and _is_binary16(spec.fmt)
        and spec.mode is RoundingMode.NEAREST_EVEN
    ):
        _elementwise("f32_round_h16", flat.size)(flat, out)
    else:
        p, emin, minnorm, maxval, sub, ovf, code, key, kbits = spec.kargs
        _elementwise("round_final", flat.size)(
            flat, out, p, emin, minnorm, maxval, sub, ovf, code, key, offset, kbits
        )
    return out.reshape(acc.shape)


def _matmul2d(A: np.ndarray, B: np.ndarray, spec: _Spec, offset: int, dtype: type) -> np.ndarray:
    """One 2-D product of validated arrays; ``offset`` starts this product's random counters."""
    from ._kernels import gemm

    M, K = A.shape
    N = B.shape[1]
    f, prof, order = spec.fmt, spec.profile, spec.order
    work = M * N * K

    def kern(name: str, cost: int = 1) -> Any:  # cost: time per multiply-add relative to the fast kernels
        return _kernel(name, work * cost, gemm.SERIAL_BELOW)

    code = spec.kargs[6]
    if prof is Profile.EXACT:
        return _exact(A, B, spec, offset, dtype)
    if spec.tensor_core is not None:
        from .tensorcore import _matmul2d as tc_matmul2d

        acc = tc_matmul2d(_as(A, np.float64), _as(B, np.float64), spec.tensor_core)
        return _round_final(acc.astype(np.float32), spec, offset, dtype)
    if prof is Profile.FP32_ACCUMULATE:
        A32, B32 = _as(A, np.float32, "linalg.A"), _as(B, np.float32, "linalg.B")
        exact_prod = _products_exact_in_fp32(f)
        if order is Order.BLAS:
            with np.errstate(invalid="ignore", over="ignore"):  # inf/nan follow IEEE rules, silently
                acc = A32 @ B32
        else:
            acc = scratch("linalg.acc", (M, N), np.float32)  # rounded into a fresh array below
            fused = exact_prod or spec.fma  # exact products: an FMA gives the same bits
            # the tiled kernel packs B and pads rows to tiles of gemm.MR: worth it from gemm.MR rows
            tiled = _FAST_PATHS and M >= gemm.MR
            if order is Order.SEQUENTIAL and tiled:
                kern("f32_tiled")(A32, B32, acc, fused, 0)
            elif order is Order.SEQUENTIAL:
                kern("f32_sequential")(A32, B32, acc, fused)
            elif order is Order.BLOCKED and tiled:
                kern("f32_tiled")(A32, B32, acc, fused, spec.block)
            elif order is Order.BLOCKED:
                kern("f32_blocked")(A32, B32, acc, spec.block, fused)
            else:
                kern("f32_pairwise")(A32, B32, acc)
        return _round_final(acc, spec, offset, dtype)
    # ieee
    if _FAST_PATHS and _is_binary16(f) and code == RoundingMode.NEAREST_EVEN.code and not spec.fma:
        if gemm.H16_TILED and M >= gemm.MR and order is not Order.PAIRWISE:
            # register-tiled, binary16 values in float32 with vector conversions (same bits)
            C32 = np.empty((M, N), dtype=np.float32)
            blk = spec.block if order is Order.BLOCKED else 0
            kern("h16_tiled")(_as(A, np.float32, "linalg.A"), _as(B, np.float32, "linalg.B"), C32, blk)
            return C32.astype(dtype, copy=False)
        A16, B16 = _as(A, np.uint16), _as(B, np.uint16)
        C16 = np.empty((M, N), dtype=np.uint16)
        if order is Order.SEQUENTIAL:
            kern("h16_sequential")(A16, B16, C16)
        elif order is Order.BLOCKED:
            kern("h16_blocked")(A16, B16, C16, spec.block)
        else:
            kern("h16_pairwise")(A16, B16, C16)
        return _as(C16.view(np.float16), np.float32).astype(dtype, copy=False)
    p, emin, minnorm, maxval, sub, ovf, code, key, kbits = spec.kargs
    C = np.empty((M, N), dtype=np.float64)
    kern("ieee_general", 64)(
        _as(A, np.float64),
        _as(B, np.float64),
        C,
        _ORDER_CODES[order],
        spec.block,
        spec.fma,
        p,
        emin,
        minnorm,
        maxval,
        sub,
        ovf,
        code,
        key,
        offset,
        kbits,
    )
    return C.astype(dtype, copy=False)


def _exact(A: np.ndarray, B: np.ndarray, spec: _Spec, offset: int, dtype: type) -> np.ndarray:
    from .reference import exact_matmul  # another module of the package; imported when needed

    A64 = np.asarray(A, dtype=np.float64)
    B64 = np.asarray(B, dtype=np.float64)
    if spec.mode is RoundingMode.STOCHASTIC:
        # exact sum rounded to odd at 53 bits, then stochastically rounded: the probability of
        # rounding up is exact up to 2**-(53 - p) relative to the gap
        if spec.fmt.emin - spec.fmt.p + 1 < -900:
            raise ValueError(f"stochastic exact products are not supported for format {spec.fmt.name!r}")
        wide = FloatFormat("binary64-odd", 53, -960, 1000)  # float64's precision, narrower range
        z = np.asarray(exact_matmul(A64, B64, wide, "odd"), dtype=np.float64)
        return _round_final(z, spec, offset, dtype)
    z = np.asarray(exact_matmul(A64, B64, spec.fmt, spec.mode.value), dtype=np.float64)
    if spec.mode is RoundingMode.DOWN and (z == 0.0).any():
        z = _exact_zero_signs_down(A64, B64, z)
    return z.astype(dtype, copy=False)


def _exact_zero_signs_down(A: np.ndarray, B: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The sign of an exact zero sum in round-down (``exact`` profile, IEEE 754 sec. 6.3 as for
    one fused operation): ``-0`` unless every product is ``+0``.

    Those are the zeros a sum started from ``+0`` gives in round-down: ``+0 + (+0) = +0``, and a
    ``-0`` product or a nonzero product (the sum being zero, terms of both signs) makes it
    ``-0``.  Zero results of nonzero sums (underflow) keep the sign the rounding gave them.
    """
    from .reference import exact_matmul

    wide = FloatFormat("binary64-odd", 53, -960, 1000)  # round to odd: zero only for a zero sum
    zero_sum = np.asarray(exact_matmul(A, B, wide, "odd"), dtype=np.float64) == 0.0
    sa, sb = np.signbit(A).astype(np.float64), np.signbit(B).astype(np.float64)
    na, nb = (A != 0).astype(np.float64), (B != 0).astype(np.float64)
    with np.errstate(invalid="ignore"):  # 0/1 matrices: exact counts (K < 2**53)
        same_sign = sa @ sb + (1 - sa) @ (1 - sb)
        nonzero_same_sign = (na * sa) @ (nb * sb) + (na * (1 - sa)) @ (nb * (1 - sb))
    all_plus_zero = same_sign - nonzero_same_sign == A.shape[-1]
    return np.where(zero_sum & (z == 0.0) & ~all_plus_zero, -0.0, z)


def _counter_span(M: int, K: int, N: int) -> int:
    return max(M * N * max(K, 1) * 4, 1)


def matmul(
    A: ArrayLike,
    B: ArrayLike,
    fmt: str | FloatFormat = "fp16",
    profile: str | Profile = "fp32-accumulate",
    *,
    order: str | Order = "sequential",
    block: int = 32,
    fma: bool = False,
    mode: str | RoundingMode = "nearest-even",
    seed: Any = None,
    stream: int = 0,
    round_inputs: bool = False,
) -> np.ndarray:
    """Emulated matrix product ``A @ B`` in the format ``fmt`` under an arithmetic profile.

    Parameters
    ----------
    A, B : array_like
        Numbers of ``fmt``; shapes ``(..., M, K)`` and ``(..., K, N)`` with broadcasting batch
        dimensions, or 1-D as in ``numpy.matmul``.
    fmt : str or FloatFormat
        Storage format of inputs and result (``"fp16"``, ``"bf16"``, ...).
    profile : str
        ``"ieee"``, ``"fp32-accumulate"`` (default) or ``"exact"``; see the module docstring.
    order : str
        ``"sequential"`` (default), ``"pairwise"``, ``"blocked"`` or (fp32-accumulate only)
        ``"blas"``.
    block : int
        Block length of the ``"blocked"`` order.
    fma : bool
        Fused multiply-add accumulation steps (``ieee``: ``s = fl(a*b + s)``).
    mode : str
        Rounding mode of every rounding to ``fmt`` (the binary32 accumulation of
        ``fp32-accumulate`` always rounds to nearest even, like the hardware).
    seed, stream :
        Random stream for ``mode="stochastic"``.
    round_inputs : bool
        Round ``A`` and ``B`` to ``fmt`` (nearest even) instead of rejecting non-members.

    Returns
    -------
    numpy.ndarray
        The product, values of ``fmt`` in float32 (float64 for float64 inputs or wide formats).

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[1.0, 2.0**-11, 2.0**-11]])
    >>> B = np.ones((3, 1))
    >>> matmul(A, B, "fp16", "ieee").tolist(), matmul(A, B, "fp16", "fp32-accumulate").tolist()
    ([[1.0]], [[1.0009765625]])
    """
    spec = _Spec(fmt, profile, order, block, fma, mode, seed, stream)
    return _matmul(A, B, spec, round_inputs, ("A", "B"))


def _matmul(
    A: ArrayLike, B: ArrayLike, spec: _Spec, round_inputs: bool, names: tuple[str, str]
) -> np.ndarray:
    a = _prepare(A, spec.fmt, names[0], round_inputs)
    b = _prepare(B, spec.fmt, names[1], round_inputs)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul needs arrays with at least one dimension; use a * b for scalars")
    dtype = spec.out_dtype(a, b)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul: shapes {a.shape} and {b.shape} do not align (K = {a2.shape[-1]} vs {b2.shape[-2]})"
        )
    M, K = a2.shape[-2:]
    N = b2.shape[-1]
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    if not batch:
        out = _matmul2d(a2, b2, spec, 0, dtype)
    else:
        nb = int(np.prod(batch))  # not -1: that is ambiguous when K or N is 0
        aa = np.broadcast_to(a2, batch + (M, K)).reshape(nb, M, K)
        bb = np.broadcast_to(b2, batch + (K, N)).reshape(nb, K, N)
        span = _counter_span(M, K, N)
        out = np.empty((aa.shape[0], M, N), dtype=dtype)
        for t in range(aa.shape[0]):
            out[t] = _matmul2d(aa[t], bb[t], spec, t * span, dtype)
        out = out.reshape(batch + (M, N))
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


def dot(
    x: ArrayLike,
    y: ArrayLike,
    fmt: str | FloatFormat = "fp16",
    profile: str | Profile = "fp32-accumulate",
    *,
    order: str | Order = "sequential",
    block: int = 32,
    fma: bool = False,
    mode: str | RoundingMode = "nearest-even",
    seed: Any = None,
    stream: int = 0,
    round_inputs: bool = False,
) -> float:
    """Emulated dot product of two 1-D vectors of numbers of ``fmt``; returns a float.

    Options as in :func:`matmul`.

    Examples
    --------
    >>> dot([65504.0, 65504.0], [1.0, -1.0], "fp16", "ieee")
    0.0
    >>> dot([65504.0, 16.0], [1.0, 1.0], "fp16", "ieee", mode="toward-zero")
    65504.0
    """
    xs, ys = np.asarray(x), np.asarray(y)
    if xs.ndim != 1 or ys.ndim != 1:
        raise ValueError(f"dot needs two 1-D vectors, got shapes {xs.shape} and {ys.shape}")
    if xs.shape != ys.shape:
        raise ValueError(f"dot: vectors of different lengths {xs.shape[0]} and {ys.shape[0]}")
    spec = _Spec(fmt, profile, order, block, fma, mode, seed, stream)
    return float(_matmul(xs, ys, spec, round_inputs, ("x", "y")))


def _pair(v: Any, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, (int, np.integer)) for i in t):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(t[0]), int(t[1])


def conv2d(
    x: ArrayLike,
    w: ArrayLike,
    bias: ArrayLike | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    fmt: str | FloatFormat = "fp16",
    profile: str | Profile = "fp32-accumulate",
    *,
    order: str | Order = "sequential",
    block: int = 32,
    fma: bool = False,
    mode: str | RoundingMode = "nearest-even",
    seed: Any = None,
    stream: int = 0,
    round_inputs: bool = False,
) -> np.ndarray:
    """Emulated 2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``), NCHW.

    Computed as im2col followed by :func:`matmul`: output ``(n, o, y, x)`` is the dot product
    of the weights ``w[o]`` (flattened in ``(c, kh, kw)`` order) with the matching input
    window, with the bias, when given, as one more term at the end (weight ``bias[o]``, input 1).
    Zero padding.  Other options as in :func:`matmul`.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    w : array_like, shape (O, C // groups, kh, kw)
    bias : array_like, shape (O,), optional

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> conv2d(x, np.ones((1, 1, 2, 2)), stride=2)[0, 0].tolist()
    [[10.0, 18.0], [42.0, 50.0]]
    """
    spec = _Spec(fmt, profile, order, block, fma, mode, seed, stream)
    xa = _prepare(x, spec.fmt, "x", round_inputs)
    wa = _prepare(w, spec.fmt, "w", round_inputs)
    if xa.ndim != 4 or wa.ndim != 4:
        raise ValueError(
            f"conv2d needs x of shape (N, C, H, W) and w of shape (O, C/groups, kh, kw), got {xa.shape}, {wa.shape}"
        )
    ba = None if bias is None else _prepare(bias, spec.fmt, "bias", round_inputs)
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError("stride and dilation must be >= 1 and padding >= 0")
    n, c, h, wd = xa.shape
    o, cg, kh, kw = wa.shape
    if (
        not isinstance(groups, (int, np.integer))
        or groups < 1
        or c % groups
        or o % groups
        or cg != c // groups
    ):
        raise ValueError(
            f"conv2d: groups={groups!r} does not fit {c} input channels, weight shape {wa.shape}"
        )
    if ba is not None and ba.shape != (o,):
        raise ValueError(f"conv2d: bias must have shape ({o},), got {ba.shape}")
    dtype = spec.out_dtype(*(a for a in (xa, wa, ba) if a is not None))
    xp = np.pad(xa, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ekh, ekw = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    ho = (h + 2 * ph - ekh) // sh + 1
    wo = (wd + 2 * pw - ekw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError("conv2d: the kernel does not fit in the padded input")
    win = np.lib.stride_tricks.sliding_window_view(xp, (ekh, ekw), axis=(2, 3))
    win = win[:, :, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw, ::dh, ::dw]  # (n, c, ho, wo, kh, kw)
    og = o // groups
    out = np.empty((n, ho, wo, o), dtype=dtype)
    Kc = cg * kh * kw + (ba is not None)
    span = _counter_span(n * ho * wo, Kc, og)
    for g in range(groups):
        cols = win[:, g * cg : (g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cg * kh * kw)
        wm = wa[g * og : (g + 1) * og].reshape(og, cg * kh * kw).T
        if ba is not None:
            cols = np.concatenate([cols, np.ones((cols.shape[0], 1), dtype=cols.dtype)], axis=1)
            wm = np.concatenate([wm, ba[None, g * og : (g + 1) * og].astype(wm.dtype)], axis=0)
        r = _matmul2d(np.ascontiguousarray(cols), np.ascontiguousarray(wm), spec, g * span, dtype)
        out[..., g * og : (g + 1) * og] = r.reshape(n, ho, wo, og)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

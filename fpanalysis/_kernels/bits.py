"""Private numba helpers: bit casts between floats and unsigned integers, and a counter-based
random number generator.  Nothing here is public; every kernel in the package builds on it.

The bit casts are LLVM ``bitcast`` instructions, so loops that use them still vectorise.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .rng import GOLDEN, MIX1, MIX2, counter_random_numpy, stream_key  # noqa: F401  (re-exported)

U64 = np.uint64
SIGN64 = U64(0x8000000000000000)
ABS64 = U64(0x7FFFFFFFFFFFFFFF)
EXP64 = U64(0x7FF0000000000000)
MANT64 = U64(0x000FFFFFFFFFFFFF)
HIDDEN64 = U64(0x0010000000000000)

_GOLDEN = U64(GOLDEN)
_MIX1 = U64(MIX1)
_MIX2 = U64(MIX2)


@intrinsic
def f64_to_u64(typingctx, x):  # type: ignore[no-untyped-def]
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(64))

    return types.uint64(types.float64), codegen


@intrinsic
def u64_to_f64(typingctx, b):  # type: ignore[no-untyped-def]
    if b != types.uint64:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.uint64), codegen


@intrinsic
def f32_to_u32(typingctx, x):  # type: ignore[no-untyped-def]
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def u32_to_f32(typingctx, b):  # type: ignore[no-untyped-def]
    if b != types.uint32:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@njit(inline="always", cache=True)
def mix64(z):  # type: ignore[no-untyped-def]
    """SplitMix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mixer."""
    z = (z ^ (z >> U64(30))) * _MIX1
    z = (z ^ (z >> U64(27))) * _MIX2
    return z ^ (z >> U64(31))


@njit(inline="always", cache=True)
def counter_random(key, index):  # type: ignore[no-untyped-def]
    """64 random bits for element ``index`` of the stream ``key``; depends on nothing else,
    so results do not change with the number of threads or the chunking of the work."""
    return mix64(key + (index + U64(1)) * _GOLDEN)


@functools.lru_cache(maxsize=1)
def target_features() -> frozenset[str]:
    """The CPU features numba compiles for (``NUMBA_CPU_FEATURES``, else the host's; numba
    assumes none for ``NUMBA_CPU_NAME=generic``)."""
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    feats = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return frozenset(f[1:] for f in feats.split(",") if f.startswith("+"))


def _native_half_conversions() -> bool:
    """Whether LLVM turns float32 <-> binary16 conversions into instructions for the target.

    Without them (x86 before F16C, or a generic target) LLVM emits calls to compiler-rt's
    ``__truncsfhf2``/``__extendhfsf2``, which numba's JIT does not link: the process would
    abort.  The integer versions below are used there instead (same bits, slower).
    """
    import platform

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "f16c" in target_features()
    return machine in ("aarch64", "arm64")  # ARMv8 has the conversions in its base FP unit


NATIVE_HALF = _native_half_conversions()


@intrinsic
def _f32_to_h16_native(typingctx, x):  # type: ignore[no-untyped-def]
    """float32 -> binary16 bit pattern, round to nearest even (LLVM ``fptrunc``)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def _h16_to_f32_native(typingctx, b):  # type: ignore[no-untyped-def]
    """binary16 bit pattern -> float32 (exact)."""
    if b != types.uint16:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


_U32 = np.uint32
_HALF = np.float32(0.5)


@njit(inline="always", cache=True)
def _f32_to_h16_soft(x):  # type: ignore[no-untyped-def]
    """:func:`_f32_to_h16_native` in integer arithmetic (as F16C's ``vcvtps2ph``: NaNs keep the
    sign and the top payload bits, and become quiet).

    Normal results: the rebiased bits plus a rounding increment (``0xFFF`` + the lowest kept
    bit is round to nearest even); subnormal results: one float32 addition of 0.5, whose
    rounding (to a multiple of 2**-24) is the wanted one (Giesen's ``float_to_half``).
    """
    u = f32_to_u32(x)
    sign = (u >> _U32(16)) & _U32(0x8000)
    a = u & _U32(0x7FFFFFFF)
    if a > _U32(0x7F800000):
        h = _U32(0x7E00) | ((a >> _U32(13)) & _U32(0x3FF))
    elif a >= _U32(0x477FF000):  # >= 65520, the midpoint above 65504: inf
        h = _U32(0x7C00)
    elif a >= _U32(0x38800000):  # >= 2**-14: normal
        h = (a + _U32(0xFFF) + ((a >> _U32(13)) & _U32(1)) - _U32(112 << 23)) >> _U32(13)
    else:
        h = f32_to_u32(u32_to_f32(_U32(a)) + _HALF) - _U32(0x3F000000)
    return np.uint16(sign | h)


@njit(inline="always", cache=True)
def _h16_to_f32_soft(b):  # type: ignore[no-untyped-def]
    """:func:`_h16_to_f32_native` in integer arithmetic (NaNs become quiet, as ``vcvtph2ps``)."""
    h = _U32(b)
    sign = (h & _U32(0x8000)) << _U32(16)
    e = (h >> _U32(10)) & _U32(0x1F)
    m = h & _U32(0x3FF)
    if e == _U32(0x1F):
        u = _U32(0x7F800000) | (m << _U32(13)) | (_U32(0x400000) if m != _U32(0) else _U32(0))
    elif e == _U32(0):  # zero or subnormal: m * 2**-24, exact in float32
        u = f32_to_u32(np.float32(m) * np.float32(2.0**-24))
    else:
        u = ((e + _U32(112)) << _U32(23)) | (m << _U32(13))
    return u32_to_f32(_U32(sign | u))


# float32 <-> binary16 (round to nearest even) for the kernels: the conversion instructions
# where the target has them, else the integer versions.
f32_to_h16 = _f32_to_h16_native if NATIVE_HALF else _f32_to_h16_soft
h16_to_f32 = _h16_to_f32_native if NATIVE_HALF else _h16_to_f32_soft

"""Private numba helpers: bit casts between floats and unsigned integers, and a counter-based
random number generator.  Nothing here is public; every kernel in the package builds on it.

The bit casts are LLVM ``bitcast`` instructions, so loops that use them still vectorise.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._rng import counter_random_numpy, stream_key  # noqa: F401  (re-exported)

U64 = np.uint64
SIGN64 = U64(0x8000000000000000)
ABS64 = U64(0x7FFFFFFFFFFFFFFF)
EXP64 = U64(0x7FF0000000000000)
MANT64 = U64(0x000FFFFFFFFFFFFF)
HIDDEN64 = U64(0x0010000000000000)

_GOLDEN = U64(0x9E3779B97F4A7C15)
_MIX1 = U64(0xBF58476D1CE4E5B9)
_MIX2 = U64(0x94D049BB133111EB)


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


@intrinsic
def f32_to_h16(typingctx, x):  # type: ignore[no-untyped-def]
    """float32 -> binary16 bit pattern, round to nearest even (LLVM ``fptrunc``)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def h16_to_f32(typingctx, b):  # type: ignore[no-untyped-def]
    """binary16 bit pattern -> float32 (exact)."""
    if b != types.uint16:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen

"""Private numba kernels for emulated matrix products ``C = A @ B`` (see fpanalysis.linalg).

Three families, all computing every output entry with the summation order documented in
:mod:`fpanalysis.linalg` (sums start from +0 for the sequential and blocked orders; pairwise is
Higham's recursive pairing of the terms):

* ``h16_*`` -- the ``ieee`` profile for IEEE binary16 with round-to-nearest-even, on ``uint16``
  bit patterns.  Each product and each sum is one LLVM ``half`` operation (``fmul``/``fadd``),
  which LLVM defines as the correctly rounded IEEE binary16 operation: on CPUs with
  AVX512-FP16 it becomes ``vmulph``/``vaddph`` (32 lanes); elsewhere LLVM promotes to float32
  and rounds back after every operation, which is also exact (an fp16 product is exact in
  float32, and float32 is wide enough, 24 >= 2*11 + 2, for double rounding of a sum of two
  fp16 numbers to be innocuous; Figueroa, ACM SIGNUM 1995).  ``h16_tiled`` (sequential and
  blocked orders) is the same arithmetic in the register tile of ``f32_tiled``: binary16 values
  held in float32 vectors, each product and sum rounded by a vector ``fptrunc``/``fpext`` pair;
  it is used on x86-64 with F16C and without AVX512-FP16 (``H16_TILED``), where it saves the
  per-operation conversions of the operands and the loads and stores of the sums.
* ``f32_*`` -- the ``fp32-accumulate`` profile on float32 values: products rounded to float32
  (exact for fp16 operands) and float32 additions, both IEEE round-to-nearest-even.  When the
  products are exact the kernels use a float32 fused multiply-add, which then gives the same
  bits as a multiply followed by an add.  ``f32_tiled`` (sequential and blocked orders) is a
  register-tiled kernel written with explicit LLVM vector types; the ``_rows`` loops are its
  twins and serve products with few rows.
* ``ieee_general`` -- the ``ieee`` profile for any format with ``p <= 26`` and any rounding mode,
  in float64: products are exact in float64 and rounded with ``round_scalar``; a sum (or an
  ``fma``) is computed exactly as ``z + err`` (TwoSum, Knuth), turned into the float64 number
  rounded to odd, and rounded to the format.  Rounding to odd at 53 bits followed by rounding to
  ``p <= 51`` bits is a correct single rounding for every mode (Boldo & Melquiond, IEEE Trans.
  Computers 57(4), 2008).

The loops are written so that LLVM vectorises the innermost ``j`` loop; ``_wide_vectors`` asks
LLVM for 512-bit vectors (its default on recent Intel server cores is 256 bits).  The test
oracle for all of them is the exact-rational twin in ``tests/emulator/test_linalg.py``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .bits import EXP64, NATIVE_HALF, U64, counter_random, f64_to_u64, target_features, u64_to_f64
from .bits import f32_to_h16 as _f32_to_h16
from .bits import h16_to_f32 as _h16_to_f32
from .round import RD, RNA, RNE, RTO, RU, RZ, SR, SRK, round_scalar
from .workspace import scratch

SEQUENTIAL, PAIRWISE, BLOCKED = 0, 1, 2
# Kinds of rounding, for the counters of stochastic rounding (index = (entry*K + k)*4 + kind).
_K_PROD, _K_ADD, _K_BLOCK = 0, 1, 2


@intrinsic
def _wide_vectors(typingctx):  # type: ignore[no-untyped-def]
    """Mark the enclosing function with LLVM's ``"prefer-vector-width"="512"``.

    A code-generation hint only (results do not change).  llvmlite has no API for string
    function attributes, so the attribute is added to the set it prints verbatim.
    """

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _fma32(typingctx, a, b, c):  # type: ignore[no-untyped-def]
    """float32 fused multiply-add ``a*b + c`` with a single rounding (``llvm.fma.f32``)."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        f = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f], ir.FunctionType(f, [f, f, f]))
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


def _half_binop(op: str):  # type: ignore[no-untyped-def]
    @intrinsic
    def impl(typingctx, a, b):  # type: ignore[no-untyped-def]
        if not (a == types.uint16 and b == types.uint16):
            return None

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            h = ir.HalfType()
            x, y = (builder.bitcast(v, h) for v in args)
            r = builder.fmul(x, y) if op == "mul" else builder.fadd(x, y)
            return builder.bitcast(r, ir.IntType(16))

        return types.uint16(types.uint16, types.uint16), codegen

    return impl


@njit(inline="always", cache=True)
def _h16_mul_soft(a, b):  # type: ignore[no-untyped-def]
    return _f32_to_h16(_h16_to_f32(a) * _h16_to_f32(b))


@njit(inline="always", cache=True)
def _h16_add_soft(a, b):  # type: ignore[no-untyped-def]
    return _f32_to_h16(_h16_to_f32(a) + _h16_to_f32(b))


# LLVM lowers ``half`` arithmetic through float32 when the CPU lacks it, using the conversion
# instructions; without those (NATIVE_HALF false) the integer conversions are spelled out here
# (the same promotion, which is exact as explained at the top).
_h16_mul = _half_binop("mul") if NATIVE_HALF else _h16_mul_soft
_h16_add = _half_binop("add") if NATIVE_HALF else _h16_add_soft


# --- conversions ----------------------------------------------------------------------------


CHUNK = 16384  # elements per parallel work item of the elementwise kernels
SERIAL_ELEMENTS = 1 << 20  # arrays shorter than this use the one-thread variants (a parallel
# launch costs about 0.1 ms, the serial conversion runs at several G values/s)


@njit(cache=True)
def _to_h16_range(x, out, s, e):  # type: ignore[no-untyped-def]
    _wide_vectors()
    bad = 0
    for i in range(s, e):
        v = x[i]
        h = _f32_to_h16(v)
        out[i] = h
        bad += np.int64((_h16_to_f32(h) != v) & (not np.isnan(v)))
    return bad


@njit(parallel=True, cache=True)
def f32_to_h16_checked(x, out):  # type: ignore[no-untyped-def]
    """Convert float32 ``x`` (1-D) to binary16 bits (nearest even); return how many values were
    not binary16 numbers (NaNs count as binary16 numbers)."""
    n = x.shape[0]
    bad = 0
    for c in prange((n + CHUNK - 1) // CHUNK):
        bad += _to_h16_range(x, out, c * CHUNK, min(n, (c + 1) * CHUNK))
    return bad


@njit(cache=True)
def f32_to_h16_checked_serial(x, out):  # type: ignore[no-untyped-def]
    return _to_h16_range(x, out, 0, x.shape[0])


@njit(cache=True)
def _round_h16_range(x, out, s, e):  # type: ignore[no-untyped-def]
    _wide_vectors()
    for i in range(s, e):
        out[i] = _h16_to_f32(_f32_to_h16(x[i]))


@njit(parallel=True, cache=True)
def f32_round_h16(x, out):  # type: ignore[no-untyped-def]
    """Round float32 ``x`` (1-D) to binary16, nearest even; the results as ``out``'s dtype."""
    n = x.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        _round_h16_range(x, out, c * CHUNK, min(n, (c + 1) * CHUNK))


@njit(cache=True)
def f32_round_h16_serial(x, out):  # type: ignore[no-untyped-def]
    _round_h16_range(x, out, 0, x.shape[0])


@njit(cache=True)
def _from_h16_range(b, out, s, e):  # type: ignore[no-untyped-def]
    _wide_vectors()
    for i in range(s, e):
        out[i] = _h16_to_f32(b[i])


@njit(parallel=True, cache=True)
def h16_to_f32(b, out):  # type: ignore[no-untyped-def]
    """Convert binary16 bit patterns (1-D) to float32."""
    n = b.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        _from_h16_range(b, out, c * CHUNK, min(n, (c + 1) * CHUNK))


@njit(cache=True)
def h16_to_f32_serial(b, out):  # type: ignore[no-untyped-def]
    _from_h16_range(b, out, 0, b.shape[0])


# --- ieee profile, binary16, round to nearest even -------------------------------------------


@njit(cache=True)
def _h16_sequential_rows(A, B, C, r0, r1):  # type: ignore[no-untyped-def]
    """C[i,j] = (((0 + a_i0 b_0j) + a_i1 b_1j) + ...), every product and sum rounded (RNE)."""
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        c = C[i]
        for j in range(N):
            c[j] = np.uint16(0)
        for k in range(K):
            a = A[i, k]
            b = B[k]
            for j in range(N):
                c[j] = _h16_add(c[j], _h16_mul(a, b[j]))


@njit(cache=True)
def _h16_blocked_rows(A, B, C, block, r0, r1):  # type: ignore[no-untyped-def]
    """Blocked order: each block of ``block`` terms summed sequentially from +0, then the block
    sums added sequentially to a total that starts at +0."""
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        c = C[i]
        s = np.zeros(N, dtype=np.uint16)
        for j in range(N):
            c[j] = np.uint16(0)
        for k0 in range(0, K, block):
            for j in range(N):
                s[j] = np.uint16(0)
            for k in range(k0, min(K, k0 + block)):
                a = A[i, k]
                b = B[k]
                for j in range(N):
                    s[j] = _h16_add(s[j], _h16_mul(a, b[j]))
            for j in range(N):
                c[j] = _h16_add(c[j], s[j])


@njit(cache=True)
def _h16_pairwise_rows(A, B, C, r0, r1):  # type: ignore[no-untyped-def]
    """Pairwise order (Higham 2002, sec. 4.1): the rounded products are added in adjacent pairs,
    an odd last term passes to the next level unchanged, and this repeats until one is left.

    Computed with a stack of partial sums (a binary counter over k): after term k is pushed,
    the two top blocks are merged while they have equal sizes; at the end the stack is merged
    from the top down.  This performs exactly the additions of the level-by-level description.
    """
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        S = np.empty((66, N), dtype=np.uint16)
        top = -1
        for k in range(K):
            top += 1
            a = A[i, k]
            b = B[k]
            t = S[top]
            for j in range(N):
                t[j] = _h16_mul(a, b[j])
            c = k + 1
            while c % 2 == 0:
                u = S[top - 1]
                v = S[top]
                for j in range(N):
                    u[j] = _h16_add(u[j], v[j])
                top -= 1
                c //= 2
        while top > 0:
            u = S[top - 1]
            v = S[top]
            for j in range(N):
                u[j] = _h16_add(u[j], v[j])
            top -= 1
        c = C[i]
        for j in range(N):
            c[j] = S[0, j] if K > 0 else np.uint16(0)


# --- fp32-accumulate profile -----------------------------------------------------------------
#
# The fast kernel is a register-tiled product in the manner of BLAS micro-kernels (Goto & van
# de Geijn, ACM TOMS 34(3), 2008): B is packed into panels of NR columns, a block of MR rows of
# A into a (k, row) strip, and an MR x NR tile of C is held in MR*NV vector registers while k
# runs over the block.  Each C entry still receives its terms one at a time in increasing k,
# each step one IEEE float32 operation, so the bits equal those of the plain row loop
# (``_f32_sequential_rows``, its test twin).  The inner loop is written in LLVM IR with explicit
# vector types, because numba cannot express a tile of accumulators that stays in registers.


def _vector_lanes() -> int:
    """float32 lanes of the vector registers the tile is sized for: 16 where numba's target
    has AVX-512, else 8.  Only speed depends on this: LLVM splits wider vectors into what the
    target has."""
    return 16 if "avx512f" in target_features() else 8


VL = _vector_lanes()
NV = 2  # vectors per tile row
NR = NV * VL  # columns of a tile (and of a packed panel of B)
MR = 8 if VL == 16 else 6  # rows of a tile: MR*NV accumulators + NV loads + 1 broadcast (+ temporaries) fit
# in the 32 (AVX-512) or 16 (AVX2) vector registers

# The ieee profile for binary16 with round to nearest even through the register tile: only
# where the float32 <-> binary16 conversions are vector instructions and the CPU has no binary16
# arithmetic of its own (x86-64 with F16C but without AVX512-FP16; there the ``h16_*`` kernels
# would convert every operand and result of every operation).
H16_TILED = "f16c" in target_features() and "avx512fp16" not in target_features()
KC = 256  # k per pass over a tile: a packed A strip (KC x MR) stays in L1, a B panel in L2


_MUL_ADD, _FMA, _H16 = 0, 1, 2  # kinds of tile step


def _tile_kernel(kind: int):  # type: ignore[no-untyped-def]
    """An intrinsic ``tile(Ap, Bp, b_off, C, c_off, ldc, kc, load_c)``: for k < kc,
    ``acc[r, j] = acc[r, j] + Ap[k, r] * Bp.flat[b_off + k*NR + j]`` on the MR x NR tile of C
    whose first entry is ``C.flat[c_off]`` with row stride ``ldc`` elements; the accumulators
    start from the tile (``load_c``) or from +0, and are stored back to it.

    Each step is, by ``kind``: ``_FMA`` one float32 FMA; ``_MUL_ADD`` a float32 product then a
    float32 sum; ``_H16`` (operands and accumulators are binary16 numbers held in float32) the
    float32 product rounded to binary16, then the float32 sum rounded to binary16, each
    rounding a vector ``fptrunc`` to ``half`` and ``fpext`` back (``vcvtps2ph``/``vcvtph2ps``
    with F16C).  That is IEEE binary16 arithmetic with round to nearest even: the product of two
    binary16 numbers is exact in float32, and for a sum of two binary16 numbers rounding to
    float32 first and then to binary16 gives the correctly rounded binary16 sum, because
    24 >= 2*11 + 2 (Figueroa, "When is double rounding innocuous?", ACM SIGNUM Newsletter 30(3),
    1995).  Overflow gives inf, subnormals are kept (no flush to zero in numba's code)."""

    @intrinsic
    def tile(typingctx, Ap, Bp, b_off, C, c_off, ldc, kc, load_c):  # type: ignore[no-untyped-def]
        arrays = (Ap, Bp, C)  # C-contiguous float32 (flat offsets; C's rows ldc apart)
        if not all(isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C" for a in arrays):
            return None
        sig = types.none(Ap, Bp, types.intp, C, types.intp, types.intp, types.intp, types.boolean)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            _, _, b_off_v, _, c_off_v, ldc_v, kc_v, load_v = args
            f32 = ir.FloatType()
            vt = ir.VectorType(f32, VL)
            vp = ir.PointerType(vt)
            i64 = b_off_v.type
            i32 = ir.IntType(32)

            def data(k: int):  # type: ignore[no-untyped-def]
                return context.make_array(signature.args[k])(context, builder, args[k]).data

            def const(v: int):  # type: ignore[no-untyped-def]
                return ir.Constant(i64, v)

            def vec_at(base, off):  # type: ignore[no-untyped-def]
                return builder.bitcast(builder.gep(base, [off]), vp)

            a_p = data(0)
            b_p = builder.gep(data(1), [b_off_v])
            c_p = builder.gep(data(3), [c_off_v])
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{VL}f32"
            )
            acc = [[cgutils.alloca_once(builder, vt) for _ in range(NV)] for _ in range(MR)]
            c_rows = [builder.gep(c_p, [builder.mul(ldc_v, const(r))]) for r in range(MR)]
            with builder.if_else(load_v) as (then, otherwise):
                with then:
                    for r in range(MR):
                        for v in range(NV):
                            x = builder.load(vec_at(c_rows[r], const(v * VL)), align=4)
                            builder.store(x, acc[r][v])
                with otherwise:
                    for r in range(MR):
                        for v in range(NV):
                            builder.store(ir.Constant(vt, [0.0] * VL), acc[r][v])
            hv = ir.VectorType(ir.HalfType(), VL)

            def to_h16(x):  # type: ignore[no-untyped-def]
                return builder.fpext(builder.fptrunc(x, hv), vt)  # RNE to binary16, exactly back

            undef = ir.Constant(vt, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, VL), [0] * VL)
            with cgutils.for_range(builder, kc_v) as loop:
                k = loop.index
                b_row = builder.gep(b_p, [builder.mul(k, const(NR))])
                b = [builder.load(vec_at(b_row, const(v * VL)), align=4) for v in range(NV)]
                a_row = builder.gep(a_p, [builder.mul(k, const(MR))])
                for r in range(MR):
                    s = builder.load(builder.gep(a_row, [const(r)]))
                    a = builder.shuffle_vector(
                        builder.insert_element(undef, s, ir.Constant(i32, 0)), undef, splat
                    )
                    for v in range(NV):
                        c = builder.load(acc[r][v])
                        if kind == _FMA:
                            x = builder.call(fma, [a, b[v], c])
                        elif kind == _MUL_ADD:  # no fast-math flags: LLVM keeps the two roundings
                            x = builder.fadd(c, builder.fmul(a, b[v]))
                        else:
                            x = to_h16(builder.fadd(c, to_h16(builder.fmul(a, b[v]))))
                        builder.store(x, acc[r][v])
            for r in range(MR):
                for v in range(NV):
                    builder.store(builder.load(acc[r][v]), vec_at(c_rows[r], const(v * VL)), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile_fma = _tile_kernel(_FMA)
_tile_mul_add = _tile_kernel(_MUL_ADD)
if NATIVE_HALF:
    _tile_h16 = _tile_kernel(_H16)
else:  # LLVM would call compiler-rt for the vector conversions, which numba does not link

    @njit(cache=True)
    def _tile_h16(Ap, Bp, b_off, C, c_off, ldc, kc, load_c):  # type: ignore[no-untyped-def]
        raise NotImplementedError("the binary16 register tile needs float32 <-> binary16 instructions")


@njit(inline="always", cache=True)
def _tile(kind, Ap, Bp, b_off, C, c_off, ldc, kc, load_c):  # type: ignore[no-untyped-def]
    if kind == _FMA:
        _tile_fma(Ap, Bp, b_off, C, c_off, ldc, kc, load_c)
    elif kind == _MUL_ADD:
        _tile_mul_add(Ap, Bp, b_off, C, c_off, ldc, kc, load_c)
    else:
        _tile_h16(Ap, Bp, b_off, C, c_off, ldc, kc, load_c)


@njit(inline="always", cache=True)
def _merge_block(kind, c, t):  # type: ignore[no-untyped-def]
    """A block sum ``t`` added to the total ``c``: float32, or rounded to binary16 (``_H16``)."""
    if kind == _H16:
        return _h16_to_f32(_f32_to_h16(c + t))
    return c + t


@njit(cache=True)
def _pack_b(B, Bp, p0, p1):  # type: ignore[no-untyped-def]
    """Panels p0..p1 of B: ``Bp[p, k, j] = B[k, p*NR + j]``, zero beyond the last column."""
    K, N = B.shape
    for p in range(p0, p1):
        j0 = p * NR
        w = min(NR, N - j0)
        for k in range(K):
            for j in range(w):
                Bp[p, k, j] = B[k, j0 + j]
            for j in range(w, NR):
                Bp[p, k, j] = 0.0


@njit(cache=True)
def _tiled_rows(A, Bp, C, kind, block, rb0, rb1):  # type: ignore[no-untyped-def]
    """Row blocks rb0..rb1 (MR rows each) of C = A @ B, from B packed by :func:`_pack_b`, with
    the tile steps of ``kind`` (see :func:`_tile_kernel`).

    ``block == 0``: sequential order (C = 0 + a_i0 b_0j + a_i1 b_1j + ... in k order, the tile
    saved to C between passes of KC terms).  ``block > 0``: blocked order, each block of
    ``block`` terms summed from +0 in a scratch tile and added to C, which starts at +0 (for
    ``_H16`` each such addition rounded to binary16).
    """
    M, K = A.shape
    N = C.shape[1]
    step = block if block > 0 else KC
    Ap = np.empty((min(K, step), MR), dtype=np.float32)
    T = np.empty((MR, NR), dtype=np.float32)
    ldc = C.strides[0] // 4  # C's rows are contiguous (checked by the entry points)
    for ib in range(rb0, rb1):
        i0 = ib * MR
        h = min(MR, M - i0)
        if block > 0 or K == 0:
            for r in range(h):
                C[i0 + r, :] = 0.0
        for k0 in range(0, K, step):
            kc = min(K, k0 + step) - k0
            for k in range(kc):
                for r in range(h):
                    Ap[k, r] = A[i0 + r, k0 + k]
                for r in range(h, MR):
                    Ap[k, r] = 0.0
            for p in range(Bp.shape[0]):
                j0 = p * NR
                w = min(NR, N - j0)
                b_off = (p * K + k0) * NR
                if block > 0:
                    _tile(kind, Ap, Bp, b_off, T, 0, NR, kc, False)
                    for r in range(h):
                        for j in range(w):
                            C[i0 + r, j0 + j] = _merge_block(kind, C[i0 + r, j0 + j], T[r, j])
                elif h == MR and w == NR:
                    _tile(kind, Ap, Bp, b_off, C, i0 * ldc + j0, ldc, kc, k0 > 0)
                else:  # an edge tile: through the scratch tile
                    for r in range(h):
                        for j in range(w):
                            T[r, j] = C[i0 + r, j0 + j]
                    _tile(kind, Ap, Bp, b_off, T, 0, NR, kc, k0 > 0)
                    for r in range(h):
                        for j in range(w):
                            C[i0 + r, j0 + j] = T[r, j]


@njit(cache=True)
def _f32_sequential_rows(A, B, C, fma, r0, r1):  # type: ignore[no-untyped-def]
    """Sequential order, one row at a time; ``fma=False``: product rounded to float32, then add."""
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        c = C[i]
        for j in range(N):
            c[j] = 0.0
        for k in range(K):
            x = A[i, k]
            b = B[k]
            if fma:
                for j in range(N):
                    c[j] = _fma32(x, b[j], c[j])
            else:
                for j in range(N):
                    c[j] = c[j] + x * b[j]


@njit(cache=True)
def _f32_blocked_rows(A, B, C, block, fma, r0, r1):  # type: ignore[no-untyped-def]
    """Blocked order in float32 (see :func:`h16_blocked`)."""
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        c = C[i]
        s = np.empty(N, dtype=np.float32)
        for j in range(N):
            c[j] = 0.0
        for k0 in range(0, K, block):
            for j in range(N):
                s[j] = 0.0
            for k in range(k0, min(K, k0 + block)):
                x = A[i, k]
                b = B[k]
                if fma:
                    for j in range(N):
                        s[j] = _fma32(x, b[j], s[j])
                else:
                    for j in range(N):
                        s[j] = s[j] + x * b[j]
            for j in range(N):
                c[j] = c[j] + s[j]


@njit(cache=True)
def _f32_pairwise_rows(A, B, C, r0, r1):  # type: ignore[no-untyped-def]
    """Pairwise order in float32 (see :func:`h16_pairwise`); products rounded to float32."""
    K = A.shape[1]
    N = B.shape[1]
    _wide_vectors()
    for i in range(r0, r1):
        S = np.empty((66, N), dtype=np.float32)
        top = -1
        for k in range(K):
            top += 1
            x = A[i, k]
            b = B[k]
            t = S[top]
            for j in range(N):
                t[j] = x * b[j]
            c = k + 1
            while c % 2 == 0:
                u = S[top - 1]
                v = S[top]
                for j in range(N):
                    u[j] = u[j] + v[j]
                top -= 1
                c //= 2
        while top > 0:
            u = S[top - 1]
            v = S[top]
            for j in range(N):
                u[j] = u[j] + v[j]
            top -= 1
        c = C[i]
        for j in range(N):
            c[j] = S[0, j] if K > 0 else np.float32(0.0)


# --- ieee profile, any format and mode (float64) ---------------------------------------------


@njit(inline="always", cache=True)
def _add_odd(x, y):  # type: ignore[no-untyped-def]
    """The float64 number nearest ``x + y`` rounded to odd (exact sum if representable)."""
    z = x + y
    bp = z - x
    err = (x - (z - bp)) + (y - bp)
    zb = f64_to_u64(z)
    adjust = (err != 0.0) & ((zb & EXP64) != EXP64) & ((zb & U64(1)) == U64(0))
    up = (err > 0.0) == (z > 0.0)  # move away from zero when the error has z's sign
    zb2 = (zb + U64(1)) if up else (zb - U64(1))
    return u64_to_f64(zb2) if adjust else z


@njit(inline="always", cache=True)
def _round_add(x, y, p, emin, minnorm, maxval, subnormals, ovf, mode, key, idx, kbits):  # type: ignore[no-untyped-def]
    """fl(x + y) in the format: correctly rounded for every mode, IEEE signs of exact zeros."""
    r = counter_random(key, idx) if mode >= SR else U64(0)
    z = _add_odd(x, y)
    out = round_scalar(z, p, emin, minnorm, maxval, subnormals, ovf, mode, r, kbits)[0]
    # IEEE 754 sec. 6.3: an exact zero sum is -0 under roundTowardNegative (unless both +0).
    both_pos_zero = (f64_to_u64(x) == U64(0)) & (f64_to_u64(y) == U64(0))
    return -0.0 if ((z == 0.0) & (mode == RD) & (not both_pos_zero)) else out


@njit(inline="always", cache=True)
def _round_mul(a, b, p, emin, minnorm, maxval, subnormals, ovf, mode, key, idx, kbits):  # type: ignore[no-untyped-def]
    r = counter_random(key, idx) if mode >= SR else U64(0)
    return round_scalar(a * b, p, emin, minnorm, maxval, subnormals, ovf, mode, r, kbits)[0]


# Row operations of the general kernel.  ``fmt`` is the tuple (p, emin, minnorm, maxval,
# subnormals, ovf, kbits); element j draws the random counter ``base + j*stride``.  Each one
# dispatches once on the mode to a loop compiled for that mode (so the loop vectorises).


@njit(inline="always", cache=True)
def _prod_loop(t, b, a, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    p, emin, minnorm, maxval, sub, ovf, kbits = fmt
    for j in range(t.shape[0]):
        t[j] = _round_mul(
            a, b[j], p, emin, minnorm, maxval, sub, ovf, mode, key, base + U64(j) * stride, kbits
        )


@njit(inline="always", cache=True)
def _add_loop(u, v, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    p, emin, minnorm, maxval, sub, ovf, kbits = fmt
    for j in range(u.shape[0]):
        u[j] = _round_add(
            u[j], v[j], p, emin, minnorm, maxval, sub, ovf, mode, key, base + U64(j) * stride, kbits
        )


@njit(inline="always", cache=True)
def _fma_loop(s, b, a, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    p, emin, minnorm, maxval, sub, ovf, kbits = fmt
    for j in range(s.shape[0]):
        s[j] = _round_add(
            a * b[j], s[j], p, emin, minnorm, maxval, sub, ovf, mode, key, base + U64(j) * stride, kbits
        )


@njit(cache=True)
def _prod_row(t, b, a, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    """t[j] = fl(a * b[j])."""
    if mode == RNE:
        _prod_loop(t, b, a, fmt, RNE, key, base, stride)
    elif mode == RNA:
        _prod_loop(t, b, a, fmt, RNA, key, base, stride)
    elif mode == RZ:
        _prod_loop(t, b, a, fmt, RZ, key, base, stride)
    elif mode == RU:
        _prod_loop(t, b, a, fmt, RU, key, base, stride)
    elif mode == RD:
        _prod_loop(t, b, a, fmt, RD, key, base, stride)
    elif mode == RTO:
        _prod_loop(t, b, a, fmt, RTO, key, base, stride)
    elif mode == SR:
        _prod_loop(t, b, a, fmt, SR, key, base, stride)
    else:
        _prod_loop(t, b, a, fmt, SRK, key, base, stride)


@njit(cache=True)
def _add_row(u, v, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    """u[j] = fl(u[j] + v[j])."""
    if mode == RNE:
        _add_loop(u, v, fmt, RNE, key, base, stride)
    elif mode == RNA:
        _add_loop(u, v, fmt, RNA, key, base, stride)
    elif mode == RZ:
        _add_loop(u, v, fmt, RZ, key, base, stride)
    elif mode == RU:
        _add_loop(u, v, fmt, RU, key, base, stride)
    elif mode == RD:
        _add_loop(u, v, fmt, RD, key, base, stride)
    elif mode == RTO:
        _add_loop(u, v, fmt, RTO, key, base, stride)
    elif mode == SR:
        _add_loop(u, v, fmt, SR, key, base, stride)
    else:
        _add_loop(u, v, fmt, SRK, key, base, stride)


@njit(cache=True)
def _fma_row(s, b, a, fmt, mode, key, base, stride):  # type: ignore[no-untyped-def]
    """s[j] = fl(a * b[j] + s[j]) with one rounding."""
    if mode == RNE:
        _fma_loop(s, b, a, fmt, RNE, key, base, stride)
    elif mode == RNA:
        _fma_loop(s, b, a, fmt, RNA, key, base, stride)
    elif mode == RZ:
        _fma_loop(s, b, a, fmt, RZ, key, base, stride)
    elif mode == RU:
        _fma_loop(s, b, a, fmt, RU, key, base, stride)
    elif mode == RD:
        _fma_loop(s, b, a, fmt, RD, key, base, stride)
    elif mode == RTO:
        _fma_loop(s, b, a, fmt, RTO, key, base, stride)
    elif mode == SR:
        _fma_loop(s, b, a, fmt, SR, key, base, stride)
    else:
        _fma_loop(s, b, a, fmt, SRK, key, base, stride)


@njit(cache=True)
def _ieee_general_rows(
    A, B, C, order, block, fma, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits, r0, r1
):  # type: ignore[no-untyped-def]
    """The ``ieee`` profile in float64 for any format (``p <= 26``) and rounding mode.

    The rounding of ``kind`` (0 product, 1 addition, 2 addition of a block sum) for term ``k``
    of entry ``(i, j)`` draws its random bits from counter ``offset + ((i*N + j)*K + k)*4 +
    kind``; a pairwise addition uses the ``k`` of the first term of its right operand, a block
    addition the block's number.  So results do not depend on threads.
    """
    K = A.shape[1]
    N = B.shape[1]
    fmt = (p, emin, minnorm, maxval, subnormals, ovf, kbits)
    stride = U64(K) * U64(4)
    t = np.empty(N, dtype=np.float64)
    s = np.empty(N, dtype=np.float64)
    S = np.empty((66, N), dtype=np.float64)
    lo = np.empty(66, dtype=np.int64)
    for i in range(r0, r1):
        c = C[i]
        row = U64(offset) + U64(i) * U64(N) * stride  # counter of (i, j=0, k=0, kind 0)
        if order == PAIRWISE:
            # the stack of partial sums of h16_pairwise; lo[l] = first term of stack entry l
            top = -1
            for k in range(K):
                top += 1
                lo[top] = k
                _prod_row(S[top], B[k], A[i, k], fmt, mode, key, row + U64(k) * U64(4), stride)
                cnt = k + 1
                while cnt % 2 == 0 or (k == K - 1 and top > 0):
                    split = U64(lo[top])
                    _add_row(S[top - 1], S[top], fmt, mode, key, row + split * U64(4) + U64(_K_ADD), stride)
                    top -= 1
                    cnt //= 2
            for j in range(N):
                c[j] = S[0, j] if K > 0 else 0.0
        else:
            blk = block if order == BLOCKED else max(K, 1)
            c[:] = 0.0
            for k0 in range(0, K, blk):
                s[:] = 0.0
                for k in range(k0, min(K, k0 + blk)):
                    base = row + U64(k) * U64(4)
                    if fma:
                        _fma_row(s, B[k], A[i, k], fmt, mode, key, base + U64(_K_ADD), stride)
                    else:
                        _prod_row(t, B[k], A[i, k], fmt, mode, key, base, stride)
                        _add_row(s, t, fmt, mode, key, base + U64(_K_ADD), stride)
                if order == BLOCKED:
                    _add_row(c, s, fmt, mode, key, row + U64(k0 // blk) * U64(4) + U64(_K_BLOCK), stride)
                else:
                    c[:] = s


# --- parallel and one-thread entry points ----------------------------------------------------

ROWS = 8  # rows of C per parallel work item
SERIAL_BELOW = 1 << 22  # multiply-adds below which the one-thread kernels are used


@njit(parallel=True, cache=True)
def h16_sequential(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_h16_sequential_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _h16_sequential_rows(A, B, C, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def h16_sequential_serial(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_h16_sequential_rows` over all rows on one thread (small products)."""
    _h16_sequential_rows(A, B, C, 0, A.shape[0])


@njit(parallel=True, cache=True)
def h16_blocked(A, B, C, block):  # type: ignore[no-untyped-def]
    """:func:`_h16_blocked_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _h16_blocked_rows(A, B, C, block, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def h16_blocked_serial(A, B, C, block):  # type: ignore[no-untyped-def]
    """:func:`_h16_blocked_rows` over all rows on one thread (small products)."""
    _h16_blocked_rows(A, B, C, block, 0, A.shape[0])


@njit(parallel=True, cache=True)
def h16_pairwise(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_h16_pairwise_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _h16_pairwise_rows(A, B, C, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def h16_pairwise_serial(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_h16_pairwise_rows` over all rows on one thread (small products)."""
    _h16_pairwise_rows(A, B, C, 0, A.shape[0])


@njit(parallel=True, cache=True)
def _tiled(A, B, Bp, C, kind, block):  # type: ignore[no-untyped-def]
    """:func:`_tiled_rows` over all rows (C's rows contiguous), packing B into ``Bp`` (see
    :func:`_panels`) and running row blocks in parallel."""
    M = A.shape[0]
    P = Bp.shape[0]
    for p in prange(P):
        _pack_b(B, Bp, p, p + 1)
    for ib in prange((M + MR - 1) // MR):
        _tiled_rows(A, Bp, C, kind, block, ib, ib + 1)


@njit(cache=True)
def _tiled_serial(A, B, Bp, C, kind, block):  # type: ignore[no-untyped-def]
    """:func:`_tiled` on one thread (small products)."""
    M = A.shape[0]
    P = Bp.shape[0]
    _pack_b(B, Bp, 0, P)
    _tiled_rows(A, Bp, C, kind, block, 0, (M + MR - 1) // MR)


def _panels(B):  # type: ignore[no-untyped-def]
    """The packed panels of ``B`` for :func:`_tiled`: a reused, 64-byte-aligned workspace array
    (:mod:`.workspace`; fresh arrays of this size cost a page fault per 4 KiB on every call)."""
    K, N = B.shape
    return scratch("gemm.panels", ((N + NR - 1) // NR, K, NR), np.float32)


def f32_tiled(A, B, C, fused, block):  # type: ignore[no-untyped-def]
    """The fp32-accumulate profile, sequential (``block == 0``) or blocked order, with the
    register-tiled kernel: float32 ``A``, ``B``, ``C`` (C-contiguous); FMA steps if ``fused``."""
    _tiled(A, B, _panels(B), C, _FMA if fused else _MUL_ADD, block)


def f32_tiled_serial(A, B, C, fused, block):  # type: ignore[no-untyped-def]
    """:func:`f32_tiled` on one thread (small products)."""
    _tiled_serial(A, B, _panels(B), C, _FMA if fused else _MUL_ADD, block)


def h16_tiled(A, B, C, block):  # type: ignore[no-untyped-def]
    """The ieee profile for binary16, round to nearest even, sequential (``block == 0``) or
    blocked order, with the register-tiled kernel: ``A``, ``B`` binary16 numbers in float32
    (C-contiguous); ``C`` (float32, C-contiguous) receives the binary16 results.  The same
    operations in the same order as :func:`h16_sequential` / :func:`h16_blocked` (its twins)."""
    _tiled(A, B, _panels(B), C, _H16, block)


def h16_tiled_serial(A, B, C, block):  # type: ignore[no-untyped-def]
    """:func:`h16_tiled` on one thread (small products)."""
    _tiled_serial(A, B, _panels(B), C, _H16, block)


@njit(parallel=True, cache=True)
def f32_sequential(A, B, C, fma):  # type: ignore[no-untyped-def]
    """:func:`_f32_sequential_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _f32_sequential_rows(A, B, C, fma, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def f32_sequential_serial(A, B, C, fma):  # type: ignore[no-untyped-def]
    """:func:`_f32_sequential_rows` over all rows on one thread (small products)."""
    _f32_sequential_rows(A, B, C, fma, 0, A.shape[0])


@njit(parallel=True, cache=True)
def f32_blocked(A, B, C, block, fma):  # type: ignore[no-untyped-def]
    """:func:`_f32_blocked_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _f32_blocked_rows(A, B, C, block, fma, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def f32_blocked_serial(A, B, C, block, fma):  # type: ignore[no-untyped-def]
    """:func:`_f32_blocked_rows` over all rows on one thread (small products)."""
    _f32_blocked_rows(A, B, C, block, fma, 0, A.shape[0])


@njit(parallel=True, cache=True)
def f32_pairwise(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_f32_pairwise_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _f32_pairwise_rows(A, B, C, c * ROWS, min(M, (c + 1) * ROWS))


@njit(cache=True)
def f32_pairwise_serial(A, B, C):  # type: ignore[no-untyped-def]
    """:func:`_f32_pairwise_rows` over all rows on one thread (small products)."""
    _f32_pairwise_rows(A, B, C, 0, A.shape[0])


@njit(parallel=True, cache=True)
def ieee_general(
    A, B, C, order, block, fma, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits
):  # type: ignore[no-untyped-def]
    """:func:`_ieee_general_rows` over all rows, in parallel blocks of ``ROWS`` rows."""
    M = A.shape[0]
    for c in prange((M + ROWS - 1) // ROWS):
        _ieee_general_rows(
            A,
            B,
            C,
            order,
            block,
            fma,
            p,
            emin,
            minnorm,
            maxval,
            subnormals,
            ovf,
            mode,
            key,
            offset,
            kbits,
            c * ROWS,
            min(M, (c + 1) * ROWS),
        )


@njit(cache=True)
def ieee_general_serial(
    A, B, C, order, block, fma, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits
):  # type: ignore[no-untyped-def]
    """:func:`_ieee_general_rows` over all rows on one thread (small products)."""
    _ieee_general_rows(
        A,
        B,
        C,
        order,
        block,
        fma,
        p,
        emin,
        minnorm,
        maxval,
        subnormals,
        ovf,
        mode,
        key,
        offset,
        kbits,
        0,
        A.shape[0],
    )


@njit(cache=True)
def _final_range(x, out, s, e, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    for i in range(s, e):
        r = counter_random(key, U64(offset + i)) if mode >= SR else U64(0)
        out[i] = round_scalar(np.float64(x[i]), p, emin, minnorm, maxval, subnormals, ovf, mode, r, kbits)[0]


@njit(parallel=True, cache=True)
def round_final(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    """Round the 1-D ``x`` (the accumulated sums) to the format; counter of entry e: offset+e."""
    n = x.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        _final_range(
            x,
            out,
            c * CHUNK,
            min(n, (c + 1) * CHUNK),
            p,
            emin,
            minnorm,
            maxval,
            subnormals,
            ovf,
            mode,
            key,
            offset,
            kbits,
        )


@njit(cache=True)
def round_final_serial(x, out, p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits):  # type: ignore[no-untyped-def]
    _final_range(x, out, 0, x.shape[0], p, emin, minnorm, maxval, subnormals, ovf, mode, key, offset, kbits)

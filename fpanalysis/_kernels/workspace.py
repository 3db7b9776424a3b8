"""Reused scratch arrays for the intermediate results of emulated products (private).

A product's intermediates (operands converted to float32, the packed panels of ``B``, the
float32 sums before the final rounding) are as large as its operands and live for one call.
Fresh arrays of that size come from ``mmap`` whenever the C allocator decides so (glibc's
threshold moves with the program's history of allocations), and then every call pays a page
fault per 4 KiB: on a 512 x 512 x 512 product that was 1.3 ms of a 2.8 ms call, so the same
kernel ran at 0.72 or 1.55 times numpy's BLAS depending on what had run before.  Keeping one
array per purpose and thread, grown when needed, removes that cost and the dependence on
history.  The arrays start on a 64-byte boundary (one cache line, one AVX-512 register), which
the register tiles' vector loads of packed panels want.

Arrays larger than :data:`MAX_BYTES` are not kept.  Nothing returned to a caller of the public
API may be a workspace array: callers copy or round into fresh arrays.
"""

from __future__ import annotations

import threading

import numpy as np

ALIGN = 64  # bytes
MAX_BYTES = 64 << 20  # larger arrays are allocated per call and not kept

_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An uninitialised, C-contiguous, writeable, 64-byte-aligned array of ``shape`` and
    ``dtype``, backed by this thread's buffer ``name`` (valid until the next request of the same
    name on this thread)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    nbytes = n * dt.itemsize
    if nbytes > MAX_BYTES:
        return _aligned(nbytes).view(dt).reshape(shape)
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    buf = pool.get(name)
    if buf is None or buf.size < nbytes:
        buf = pool[name] = _aligned(max(nbytes, 4096))
    return buf[:nbytes].view(dt).reshape(shape)


def release() -> None:
    """Free this thread's buffers (they are rebuilt on demand)."""
    _local.pool = {}


def _aligned(nbytes: int) -> np.ndarray:
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    return raw[off:off + nbytes]

"""The reused scratch arrays of emulated products (fpanalysis._kernels.workspace)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fpanalysis._kernels import workspace
from fpanalysis.linalg import matmul


def test_scratch_is_aligned_contiguous_and_reused():
    a = workspace.scratch("t.a", (37, 11), np.float32)
    assert a.shape == (37, 11) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % workspace.ALIGN == 0
    b = workspace.scratch("t.a", (5, 3), np.float64)  # smaller: same memory
    assert b.ctypes.data == a.ctypes.data
    c = workspace.scratch("t.b", (5, 3), np.float64)  # another name: other memory
    assert not np.shares_memory(b, c)
    d = workspace.scratch("t.a", (1000, 1000), np.float32)  # larger: grown, still aligned
    assert d.shape == (1000, 1000) and d.ctypes.data % workspace.ALIGN == 0


def test_large_requests_are_not_kept():
    n = workspace.MAX_BYTES // 4 + 16
    a = workspace.scratch("t.big", (n,), np.float32)
    b = workspace.scratch("t.big", (n,), np.float32)
    assert not np.shares_memory(a, b)


def test_threads_get_their_own_buffers():
    seen = {}
    both = threading.Barrier(2)

    def grab(k):
        seen[k] = workspace.scratch("t.thread", (64,), np.float32)
        both.wait()  # both threads alive, each holding its buffer, before either ends

    ts = [threading.Thread(target=grab, args=(k,)) for k in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not np.shares_memory(seen[0], seen[1])


@pytest.mark.parametrize("profile,order", [("fp32-accumulate", "sequential"), ("fp32-accumulate", "blocked"),
                                           ("ieee", "sequential"), ("ieee", "blocked")])
def test_results_never_share_workspace_memory(profile, order):
    """A result handed to the caller must survive the next product (it is never scratch)."""
    rng = np.random.default_rng(3)
    A1, B1 = (rng.standard_normal((40, 48)).astype(np.float16), rng.standard_normal((48, 40)).astype(np.float16))
    A2, B2 = (rng.standard_normal((40, 48)).astype(np.float16), rng.standard_normal((48, 40)).astype(np.float16))
    kw = {"order": order, "block": 16} if order == "blocked" else {"order": order}
    C1 = matmul(A1, B1, "fp16", profile, **kw)
    keep = C1.copy()
    C2 = matmul(A2, B2, "fp16", profile, **kw)
    assert not np.shares_memory(C1, C2)
    np.testing.assert_array_equal(C1, keep)
    # and the products are the products of their own operands (exact-rational oracle: the
    # fp32-accumulate/ieee results stay within 48 * 2^-10 relative of the float64 product)
    ref = A1.astype(np.float64) @ B1.astype(np.float64)
    scale = np.abs(A1.astype(np.float64)) @ np.abs(B1.astype(np.float64))
    assert np.all(np.abs(C1 - ref) <= 48 * 2.0**-10 * scale + 2.0**-14)

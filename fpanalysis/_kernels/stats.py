"""Private numba kernel: all per-layer statistics of one batch in one pass over the arrays.

``layer_stats`` reads the emulated values ``ve``, the fp32 values ``v32``, the bounds ``G``,
``Gp`` and optionally the float64 reference ``v64``, the real 16-bit torch values ``vh``
(float16 or bfloat16), the exact and real 16-bit local results ``lx``, ``lh`` and the local bounds ``L``, ``Lp`` (all flat, same
length) and returns float sums/maxima, integer counts and an exponent histogram of ``v32``.
``layer_stats_numpy`` is its obviously-correct NumPy twin (the test oracle).

Conventions: errors are computed in float64; equal values (equal infinities included) have
error 0; otherwise a NaN error counts as ``inf`` (so it violates every finite bound); a
violation is ``not (err <= bound * (1 + tol))``.
"""

from __future__ import annotations

import math
import types

import numpy as np
from numba import njit, prange

__all__ = [
    "FLOAT_FIELDS",
    "HAS_HALF",
    "HAS_LOCAL",
    "HAS_LOCAL_HALF",
    "HAS_REF",
    "INT_FIELDS",
    "layer_stats",
    "layer_stats_numpy",
    "layer_stats_serial",
]

FLOAT_FIELDS = ("err_max", "err_sum", "ref_max", "bound_max", "bound_sum", "bound_prob_max", "bound_prob_sum",
                "err_exact_max", "fp32_err_max", "half_err_max", "local_err_max", "local_err_sum",
                "local_signed_sum", "local_bound_max", "local_bound_prob_max", "abs_max")
INT_FIELDS = ("violations", "violations_prob", "half_violations", "chain_match", "local_violations",
              "local_violations_prob", "half_match", "n_subnormal", "n_nan", "n_inf", "n_zero")
HAS_REF, HAS_HALF, HAS_LOCAL, HAS_LOCAL_HALF = 1, 2, 4, 8


@njit(cache=True)
def _err(a: float, b: float) -> float:
    if a == b:  # includes equal infinities
        return 0.0
    e = abs(a - b)
    return math.inf if math.isnan(e) else e


@njit(cache=True)
def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@njit(parallel=True, cache=True)
def layer_stats(ve, v32, G, Gp, v64, vh, lx, lh, L, Lp, flags, min_normal, tol, exp_lo, nbins, nchunks):  # pragma: no cover - compiled
    n = ve.size
    NF, NI = 16, 11
    Fo = np.zeros((nchunks, NF))
    Io = np.zeros((nchunks, NI), dtype=np.int64)
    H = np.zeros((nchunks, nbins), dtype=np.int64)
    step = (n + nchunks - 1) // nchunks
    has_ref = (flags & 1) != 0
    has_half = (flags & 2) != 0
    has_loc = (flags & 4) != 0
    has_lh = (flags & 8) != 0
    for c in prange(nchunks):
        lo = c * step
        hi = min(n, lo + step)
        h = H[c]
        err_max = err_sum = ref_max = b_max = b_sum = bp_max = bp_sum = 0.0
        ex_max = f32_max = half_max = le_max = le_sum = sgn_sum = lb_max = lbp_max = abs_max = 0.0
        viol = violp = hviol = chain = lviol = lviolp = hmatch = nsub = nnan = ninf = nzero = 0
        for i in range(lo, hi):
            a = np.float64(ve[i])
            r = np.float64(v32[i])
            e = _err(a, r)
            g = G[i]
            gp = Gp[i]
            err_max = max(err_max, e)
            err_sum += e
            ar = abs(r)
            if math.isfinite(ar):
                ref_max = max(ref_max, ar)
            b_max = max(b_max, g)
            b_sum += g
            bp_max = max(bp_max, gp)
            bp_sum += gp
            if not (e <= g):
                viol += 1
            if not (e <= gp):
                violp += 1
            if has_ref:
                x64 = v64[i]
                ex_max = max(ex_max, _err(a, x64))
                f32_max = max(f32_max, _err(r, x64))
            if has_half:
                xh = np.float64(vh[i])
                eh = _err(xh, r)
                half_max = max(half_max, eh)
                if not (eh <= g):
                    hviol += 1
                if _same(xh, a):
                    chain += 1
            if has_loc:
                x = lx[i]
                le = _err(a, x)
                le_max = max(le_max, le)
                le_sum += le
                d = a - x
                if math.isfinite(d):
                    sgn_sum += d
                lb = L[i]
                lbp = Lp[i]
                lb_max = max(lb_max, lb)
                lbp_max = max(lbp_max, lbp)
                if not (le <= lb * (1.0 + tol)):
                    lviol += 1
                if not (le <= lbp * (1.0 + tol)):
                    lviolp += 1
            if has_lh and _same(np.float64(lh[i]), a):
                hmatch += 1
            aa = abs(a)
            if math.isfinite(aa):
                abs_max = max(abs_max, aa)
                if aa > 0.0 and aa < min_normal:
                    nsub += 1
            elif math.isnan(aa):
                nnan += 1
            else:
                ninf += 1
            if r == 0.0:
                nzero += 1
            elif math.isfinite(ar):
                ex = math.frexp(ar)[1] - 1 - exp_lo
                ex = min(max(ex, 0), nbins - 1)
                h[ex] += 1
        f = Fo[c]
        f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7] = err_max, err_sum, ref_max, b_max, b_sum, bp_max, bp_sum, ex_max
        f[8], f[9], f[10], f[11], f[12], f[13], f[14], f[15] = (f32_max, half_max, le_max, le_sum, sgn_sum, lb_max,
                                                                lbp_max, abs_max)
        k = Io[c]
        k[0], k[1], k[2], k[3], k[4], k[5] = viol, violp, hviol, chain, lviol, lviolp
        k[6], k[7], k[8], k[9], k[10] = hmatch, nsub, nnan, ninf, nzero
    return Fo, Io, H


def _combine(Fo: np.ndarray, Io: np.ndarray, H: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    maxes = [0, 2, 3, 5, 7, 8, 9, 10, 13, 14, 15]
    F = Fo.sum(axis=0)
    F[maxes] = Fo[:, maxes].max(axis=0)
    return F, Io.sum(axis=0), H.sum(axis=0)


def _renamed(py_func, name: str):  # type: ignore[no-untyped-def]
    """``py_func`` under another name: numba names its cache files after the function, so a
    second compilation of the same code (other options) is cached apart."""
    f = types.FunctionType(py_func.__code__, py_func.__globals__, name, py_func.__defaults__, py_func.__closure__)
    f.__qualname__ = name
    return f


# layer_stats on one thread (prange is range there): the same chunks, so the same results.  It
# compiles in a third of the time of the parallel kernel (measured 1.1 s vs 3.0 s of CPU), and
# arrays below SERIAL_BELOW gain nothing from threads.
layer_stats_serial = njit(cache=True)(_renamed(layer_stats.py_func, "layer_stats_serial"))
SERIAL_BELOW = 1 << 20


def run_layer_stats(ve, v32, G, Gp, v64=None, vh=None, lx=None, lh=None, L=None, Lp=None, *, min_normal: float,
                    tol: float, exp_lo: int, nbins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten the arrays, call :func:`layer_stats` (or its one-thread twin for arrays below
    ``SERIAL_BELOW``), combine the per-chunk partial results."""
    dummy64 = np.zeros(1)
    dummy32 = np.zeros(1, dtype=np.float32)
    flags = (HAS_REF if v64 is not None else 0) | (HAS_HALF if vh is not None else 0) | \
        (HAS_LOCAL if lx is not None else 0) | (HAS_LOCAL_HALF if lh is not None else 0)

    def flat(x, like):
        return like if x is None else np.ascontiguousarray(x).reshape(-1)

    n = np.size(ve)
    nchunks = max(1, min(64, n // 4096))
    kern = layer_stats if n >= SERIAL_BELOW else layer_stats_serial
    Fo, Io, H = kern(flat(ve, None), flat(v32, None), flat(G, None), flat(Gp, None), flat(v64, dummy64),
                     flat(vh, dummy32), flat(lx, dummy64), flat(lh, dummy32), flat(L, dummy64),
                     flat(Lp, dummy64), flags, min_normal, tol, exp_lo, nbins, nchunks)
    return _combine(Fo, Io, H)


def layer_stats_numpy(ve, v32, G, Gp, v64=None, vh=None, lx=None, lh=None, L=None, Lp=None, *, min_normal: float,
                      tol: float, exp_lo: int, nbins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy twin of :func:`run_layer_stats` (same outputs)."""
    a = np.asarray(ve, dtype=np.float64).reshape(-1)
    r = np.asarray(v32, dtype=np.float64).reshape(-1)
    G = np.asarray(G, dtype=np.float64).reshape(-1)
    Gp = np.asarray(Gp, dtype=np.float64).reshape(-1)

    def err(x, y):
        with np.errstate(invalid="ignore"):
            e = np.abs(x - y)
        return np.where(x == y, 0.0, np.where(np.isnan(e), np.inf, e))

    F = np.zeros(16)
    Ik = np.zeros(11, dtype=np.int64)
    e = err(a, r)
    fin_r = np.isfinite(r)
    F[0], F[1] = (e.max(), e.sum()) if e.size else (0.0, 0.0)
    F[2] = np.abs(r[fin_r]).max() if fin_r.any() else 0.0
    F[3], F[4], F[5], F[6] = (G.max(), G.sum(), Gp.max(), Gp.sum()) if G.size else (0, 0, 0, 0)
    Ik[0], Ik[1] = int((~(e <= G)).sum()), int((~(e <= Gp)).sum())
    if v64 is not None:
        x64 = np.asarray(v64, dtype=np.float64).reshape(-1)
        F[7], F[8] = err(a, x64).max(), err(r, x64).max()
    if vh is not None:
        xh = np.asarray(vh, dtype=np.float64).reshape(-1)
        eh = err(xh, r)
        F[9] = eh.max()
        Ik[2] = int((~(eh <= G)).sum())
        Ik[3] = int(((xh == a) | (np.isnan(xh) & np.isnan(a))).sum())
    if lx is not None:
        x = np.asarray(lx, dtype=np.float64).reshape(-1)
        le = err(a, x)
        with np.errstate(invalid="ignore"):
            d = a - x
        F[10], F[11] = le.max(), le.sum()
        F[12] = d[np.isfinite(d)].sum()
        Lf = np.asarray(L, dtype=np.float64).reshape(-1)
        Lpf = np.asarray(Lp, dtype=np.float64).reshape(-1)
        F[13], F[14] = Lf.max(), Lpf.max()
        Ik[4] = int((~(le <= Lf * (1 + tol))).sum())
        Ik[5] = int((~(le <= Lpf * (1 + tol))).sum())
    if lh is not None:
        y = np.asarray(lh, dtype=np.float64).reshape(-1)
        Ik[6] = int(((y == a) | (np.isnan(y) & np.isnan(a))).sum())
    aa = np.abs(a)
    fin = np.isfinite(aa)
    F[15] = aa[fin].max() if fin.any() else 0.0
    Ik[7] = int(((aa > 0) & (aa < min_normal) & fin).sum())
    Ik[8] = int(np.isnan(aa).sum())
    Ik[9] = int(np.isinf(aa).sum())
    Ik[10] = int((r == 0).sum())
    nz = r[fin_r & (r != 0)]
    ex = np.frexp(np.abs(nz))[1].astype(np.int64) - 1 - exp_lo
    H = np.bincount(np.clip(ex, 0, nbins - 1), minlength=nbins)
    return F, Ik, H

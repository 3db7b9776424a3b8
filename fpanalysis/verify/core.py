"""Shared machinery of :mod:`fpanalysis.verify` (private): result rows, exact comparisons,
test inputs, and the oracles (gmpy2/MPFR, softfloatpy) with the formats' policies.

MPFR's exponent convention: significands in ``[0.5, 1)``, so a format with normal exponents
``[emin, emax]`` is ``emax_mpfr = emax + 1`` and, with subnormals, ``emin_mpfr = emin - p + 2``
(``gmpy2.ieee(16)`` is ``precision=11, emin=-23, emax=16``).  Nearest-away and round-to-odd
are not MPFR modes (``RoundAwayZero`` is *directed* rounding away from zero); they are derived
from the toward-zero result ``z`` and the away-from-zero result ``a``: nearest-away picks ``a``
when ``|x| >= |(z + a) / 2|`` (exact: the midpoint of two neighbours with ``p <= 52`` bits is a
float64 number), round-to-odd picks whichever of ``z``, ``a`` has an odd last significand bit
when ``x`` is inexact (Boldo & Melquiond, IEEE Trans. Computers 57(4), 2008).

>>> gmpy2_round(np.array([464.0, 465.0, -np.inf]), "fp8_e4m3fn", "nearest-even").tolist()
[448.0, nan, nan]
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..formats import FloatFormat, Overflow, get_format
from ..rounding import RoundingMode

Row = dict[str, Any]
#: ``progress(done, total, desc)``: called as long checks advance (the CLI's progress bars).
ProgressFn = Callable[[int, int, str], None]

DETERMINISTIC_MODES = [m for m in RoundingMode if m is not RoundingMode.STOCHASTIC]
CHUNK = 1 << 24
#: ``mismatches`` of a check that could not run (a library or function is missing).
UNAVAILABLE = -1


# --- rows and comparisons --------------------------------------------------------------------


def row(check: str, fmt: str, mode: str, oracle: str, n: int, mismatches: int,
         first: str = "", seconds: float = 0.0) -> Row:
    return {
        "check": check,
        "format": fmt,
        "mode": mode,
        "oracle": oracle,
        "n": int(n),
        "mismatches": int(mismatches),
        "first_mismatch": first,
        "seconds": round(float(seconds), 3),
    }


def unavailable_row(check: str, fmt: str, mode: str, oracle: str, reason: str) -> Row:
    return row(check, fmt, mode, oracle, 0, UNAVAILABLE, f"not available: {reason}")


def optional_import(module: str) -> Any:
    """Import an optional oracle library, or return the ImportError message."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        return f"{module} is not installed ({exc})"


def same_bits(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Elementwise: identical float64 bit patterns (so -0 != +0), or both NaN."""
    with np.errstate(invalid="ignore"):  # signalling NaNs warn when widened
        a = np.asarray(ours, dtype=np.float64)
        b = np.asarray(ref, dtype=np.float64)
    return (a.view(np.uint64) == b.view(np.uint64)) | (np.isnan(a) & np.isnan(b))


def widen(a: Any, dtype: Any = np.float64) -> np.ndarray:
    """``a.astype(dtype)`` without the warnings of signalling NaNs and (narrowing) overflow."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(a).astype(dtype)


def fmt_value(v: Any) -> str:
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return repr(v)
    return f"{v!r} ({v.hex()})"


def compare(x: Any, ours: np.ndarray, ref: np.ndarray) -> tuple[int, int, str]:
    """(n, mismatches, description of the first mismatch)."""
    ok = same_bits(ours, ref)
    bad = np.flatnonzero(~ok.reshape(-1))
    first = ""
    if bad.size:
        i = int(bad[0])
        xi = np.asarray(x).reshape(-1)[i]
        first = (
            f"input {fmt_value(xi)}: ours {fmt_value(np.asarray(ours).reshape(-1)[i])}, "
            f"oracle {fmt_value(np.asarray(ref).reshape(-1)[i])}"
        )
    return ok.size, int(bad.size), first


def timed(fn: Callable[[], tuple[int, int, str]]) -> tuple[int, int, str, float]:
    t0 = time.perf_counter()
    n, bad, first = fn()
    return n, bad, first, time.perf_counter() - t0


# --- inputs ----------------------------------------------------------------------------------


def _format_values(fmt: FloatFormat) -> np.ndarray:
    """All nonnegative finite numbers of ``fmt`` (built from integer significands, not from
    the code under test), plus the first number above ``max`` in the unbounded-exponent format.
    Only for formats with at most ~2**20 numbers."""
    p, emin, emax = fmt.p, fmt.emin, fmt.emax
    m = np.arange(1 << (p - 1), 1 << p, dtype=np.float64)
    parts = [np.zeros(1)]
    if fmt.subnormals:
        parts.append(np.ldexp(np.arange(1, 1 << (p - 1), dtype=np.float64), emin - p + 1))
    for e in range(emin, emax + 1):
        parts.append(np.ldexp(m, e - p + 1))
    v = np.concatenate(parts)
    v = v[v <= fmt.max]
    nxt = v[-1] + math.ldexp(1.0, emax - p + 1)
    return np.append(v, nxt)


def stratified_float32(fmt: str | FloatFormat, sample: int = 1 << 20, seed: int = 0) -> np.ndarray:
    """float32 inputs that probe every region of a rounding to ``fmt``.

    Every number of the format, every midpoint between neighbours (the ties), each of these
    moved by 1 and 2 float32 ulps either way, both signs; every float32 pattern within 2**11
    patterns of the special points (max, the overflow midpoint, min normal, min subnormal and
    half of it, 1); a few patterns of every (sign, exponent) pair including mantissa extremes;
    ``sample`` uniformly random bit patterns; and the special values (+-0, +-inf, quiet and
    signalling NaNs).

    >>> x = stratified_float32("fp8_e4m3fn", sample=0)
    >>> bool(np.any(x == 464.0)) and bool(np.any(x == np.float32(464.0) + np.float32(2**-15)))
    True
    """
    f = get_format(fmt)
    rng = np.random.default_rng(seed)
    vals = _format_values(f)
    if vals.size > (1 << 21):
        raise ValueError(f"format {f.name} has too many numbers to enumerate")
    mids = (vals[:-1] + vals[1:]) / 2.0
    pts = np.concatenate([vals, mids])
    with np.errstate(all="ignore"):
        pts32 = pts.astype(np.float32)
    pts32 = pts32[np.isfinite(pts32)]
    pts32 = np.concatenate([pts32, -pts32])
    around = [pts32]
    up, down = pts32.copy(), pts32.copy()
    for _ in range(2):
        up = np.nextafter(up, np.float32(np.inf))
        down = np.nextafter(down, np.float32(-np.inf))
        around += [up, down]
    anchors = [f.max, (vals[-1] + vals[-2]) / 2.0, vals[-1], f.min_normal, f.min_subnormal,
               f.min_subnormal / 2.0, 1.0]
    for a in anchors:
        with np.errstate(all="ignore"):
            a32 = np.float32(a)
        if not np.isfinite(a32):
            continue
        c = np.int64(a32.view(np.uint32))
        w = np.arange(max(c - 2048, 0), min(c + 2048, 0x7F800000), dtype=np.int64).astype(np.uint32)
        around += [w.view(np.float32), (w | np.uint32(0x80000000)).view(np.float32)]
    se = np.arange(512, dtype=np.uint32) << np.uint32(23)
    mant = np.concatenate([
        np.array([0, 1, 0x400000, 0x7FFFFF], dtype=np.uint32),
        rng.integers(0, 1 << 23, size=12, dtype=np.uint32),
    ])
    around.append((se[:, None] | mant[None, :]).reshape(-1).view(np.float32))
    around.append(rng.integers(0, 1 << 32, size=int(sample), dtype=np.uint32).view(np.float32))
    specials = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC00001],
                        dtype=np.uint32).view(np.float32)
    around.append(specials)
    return np.concatenate(around)


def directed_inputs(fmt: str | FloatFormat, n: int, seed: int = 0) -> np.ndarray:
    """``n`` float64 inputs for a rounding to ``fmt``: random significands over the format's
    exponent range and a little beyond, numbers of the format, exact ties and their float64
    neighbours, the overflow threshold region, the whole float64 range, and specials.

    >>> x = directed_inputs("fp16", 1000, seed=1)
    >>> x.dtype, x.size, bool(np.any(x == 65520.0)), bool(np.any(np.isnan(x)))
    (dtype('float64'), 1000, True, True)
    """
    f = get_format(fmt)
    rng = np.random.default_rng(seed)
    p, emin, emax = f.p, f.emin, f.emax
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, f.max, -f.max, f.min_normal,
                         f.min_subnormal, -f.min_subnormal, f.min_subnormal / 2, f.max + f.ulp(f.max) / 2,
                         -(f.max + f.ulp(f.max) / 2), 1.0, -1.0, 5e-324, 1.7976931348623157e308, 1e300])
    k = max(n - specials.size, 0)
    counts = np.array([0.35, 0.10, 0.15, 0.15, 0.10, 0.05, 0.05, 0.05]) * k
    c = np.floor(counts).astype(int)
    c[0] += k - c.sum()
    sign = lambda m: np.where(rng.random(m) < 0.5, -1.0, 1.0)
    parts = []
    # 1. random 53-bit significands, exponents over the range and a few beyond
    e = rng.integers(emin - p - 3, emax + 4, size=c[0])
    sig = 1.0 + rng.integers(0, 1 << 52, size=c[0], dtype=np.int64).astype(np.float64) * 2.0**-52
    parts.append(sign(c[0]) * np.ldexp(sig, e))
    # 2. numbers of the format: random significand and exponent (not from the code under test)
    def fmt_numbers(m: int) -> np.ndarray:
        ee = rng.integers(emin, emax + 1, size=m)
        ii = rng.integers(1 << (p - 1), 1 << p, size=m).astype(np.float64)
        sub = rng.random(m) < 0.1
        if f.subnormals:  # subnormal significands: all of [0, 2**(p-1))
            ii = np.where(sub, rng.integers(0, 1 << (p - 1), size=m).astype(np.float64), ii)
        ee = np.where(sub, emin, ee)
        v = np.ldexp(ii, (ee - p + 1).astype(np.int64))
        return np.minimum(v, f.max)

    parts.append(sign(c[1]) * fmt_numbers(c[1]))
    # 3. exact ties: a number plus half its quantum
    def ties(m: int) -> np.ndarray:
        v = fmt_numbers(m)
        ex = np.frexp(np.where(v == 0, f.min_normal, v))[1] - 1
        q = np.ldexp(1.0, (np.maximum(ex, emin) - p + 1).astype(np.int64))
        return v + q / 2

    parts.append(sign(c[2]) * ties(c[2]))
    # 4. ties moved by 1..3 float64 ulps
    t = ties(c[3])
    steps = rng.integers(1, 4, size=c[3])
    direction = np.where(rng.random(c[3]) < 0.5, np.inf, -np.inf)
    for s in range(1, 4):
        sel = steps >= s
        t[sel] = np.nextafter(t[sel], direction[sel])
    parts.append(sign(c[3]) * t)
    # 5. numbers of the format moved by one float64 ulp
    v = fmt_numbers(c[4])
    parts.append(sign(c[4]) * np.nextafter(v, np.where(rng.random(c[4]) < 0.5, np.inf, -np.inf)))
    # 6. the overflow region: [max - 2 ulp, first number above max + 2 ulp]
    u = f.ulp(f.max)
    parts.append(sign(c[5]) * rng.uniform(f.max - 2 * u, f.max + 3 * u, size=c[5]))
    # 7. the underflow region: [0, 2 min_normal]
    parts.append(sign(c[6]) * rng.uniform(0.0, 2 * f.min_normal, size=c[6]))
    # 8. the whole float64 range (random bit patterns, including inf and NaN payloads)
    parts.append(rng.integers(0, 1 << 64, size=c[7], dtype=np.uint64).view(np.float64))
    x = np.concatenate([specials[:n]] + parts)
    return x[:n]


# --- directed modes vs gmpy2 and softfloat ---------------------------------------------------

SOFTFLOAT_MODE_NAMES = {
    RoundingMode.NEAREST_EVEN: "NEAR_EVEN",
    RoundingMode.NEAREST_AWAY: "NEAR_MAX_MAG",
    RoundingMode.TOWARD_ZERO: "MIN_MAG",
    RoundingMode.UP: "MAX",
    RoundingMode.DOWN: "MIN",
}


def is_ieee(fmt: FloatFormat) -> bool:
    return fmt.overflow is Overflow.INF and fmt.max_significand is None and fmt.subnormals


def _odd_last_bit(r: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Whether the finite format numbers ``r`` have an odd integer significand (subnormals
    have the quantum of ``2**emin``; without subnormals the exponent is unbounded below)."""
    a = np.abs(np.where(np.isfinite(r), r, 0.0))
    e = np.frexp(a)[1].astype(np.int64) - 1
    if fmt.subnormals:
        e = np.maximum(e, fmt.emin)
    k = np.ldexp(a, (fmt.p - 1 - e).astype(np.int64))
    return (a != 0) & (np.fmod(k, 2.0) == 1.0)


def derive(mode: RoundingMode, x: np.ndarray, res: dict[str, np.ndarray], fmt: FloatFormat,
            op: str = "round") -> np.ndarray:
    """Result of ``mode`` from MPFR results ``res``: n, z, a, u, d = nearest, toward zero, away
    from zero, up, down.  ``op`` says what the exact value is: ``"round"`` (``x`` itself) or
    ``"sqrt"`` (``sqrt(x)``, compared through exact squares: ``z*z`` and ``mid*mid`` have at
    most ``2p + 2`` bits, exact in float64 for ``p <= 25``)."""
    if mode is RoundingMode.NEAREST_EVEN:
        return res["n"]
    if mode is RoundingMode.TOWARD_ZERO:
        return res["z"]
    if mode is RoundingMode.UP:
        return res["u"]
    if mode is RoundingMode.DOWN:
        return res["d"]
    z, a = res["z"], res["a"]
    if fmt.p > (52 if op == "round" else 25):
        raise ValueError(f"the exact midpoint test for {op} needs a smaller precision than p={fmt.p}")
    with np.errstate(invalid="ignore", over="ignore"):
        mid = (z + a) / 2.0  # exact: the midpoint of neighbours with p <= 52 bits
        if op == "round":
            at_or_above_mid = np.abs(x) >= np.abs(mid)
            inexact = z != x
        else:
            at_or_above_mid = x >= mid * mid
            inexact = z * z != x
        if mode is RoundingMode.NEAREST_AWAY:
            return np.where(at_or_above_mid, a, z)
        return np.where(inexact & ~_odd_last_bit(z, fmt), a, z)


def apply_policy(x: np.ndarray, r: np.ndarray, fmt: FloatFormat, mode: RoundingMode) -> np.ndarray:
    """The format's overflow, infinity and flush-to-zero policies on exponent-unbounded results."""
    neg = np.signbit(x)
    with np.errstate(invalid="ignore"):
        over = np.abs(r) > fmt.max
    to_max = (fmt.overflow is Overflow.SATURATE) or mode in (RoundingMode.TOWARD_ZERO, RoundingMode.ODD)
    to_max_v = np.full(x.shape, to_max)
    if mode is RoundingMode.UP:
        to_max_v |= neg
    if mode is RoundingMode.DOWN:
        to_max_v |= ~neg
    inf_val = np.nan if fmt.overflow is Overflow.NAN else np.inf
    r = np.where(over, np.where(to_max_v, fmt.max, inf_val) * np.where(neg, -1.0, 1.0), r)
    if not fmt.subnormals:
        r = np.where(np.abs(r) < fmt.min_normal, np.where(neg, -0.0, 0.0), r)
    spec = {Overflow.INF: np.inf, Overflow.SATURATE: fmt.max, Overflow.NAN: np.nan}[fmt.overflow]
    r = np.where(np.isinf(x), np.where(neg, -spec, spec), r)
    return np.where(np.isnan(x), np.nan, r)


def gmpy2_results(gm: Any, fmt: FloatFormat, xs: list[float], bounded: bool, keys: Iterable[str]) -> dict[str, np.ndarray]:
    p = fmt.p
    if bounded:
        emin, emax, sub = fmt.emin - p + 2, fmt.emax + 1, True
    else:
        emin = fmt.emin - p + 2 if fmt.subnormals else -2000
        emax, sub = fmt.emax + 5, fmt.subnormals
    rnd = {"n": gm.RoundToNearest, "z": gm.RoundToZero, "a": gm.RoundAwayZero, "u": gm.RoundUp, "d": gm.RoundDown}
    ieee_bits = {(11, -14, 15): 16, (24, -126, 127): 32, (53, -1022, 1023): 64}.get((p, fmt.emin, fmt.emax))
    out = {}
    for k in keys:
        if bounded and ieee_bits is not None:
            ctx = gm.ieee(ieee_bits)  # gmpy2's own binary16/32 parameters
            ctx.round = rnd[k]
        else:
            ctx = gm.context(precision=p, emin=emin, emax=emax, subnormalize=sub, round=rnd[k])
        plus = ctx.plus
        out[k] = np.array([float(plus(v)) for v in xs])
    return out


def gmpy2_round(x: np.ndarray, fmt: str | FloatFormat, mode: str | RoundingMode,
                return_overflow: bool = False) -> Any:
    """The oracle: ``x`` rounded to ``fmt`` in ``mode`` by MPFR (plus derivations and policies).

    With ``return_overflow`` also the mask of finite inputs whose rounding with an unbounded
    exponent exceeds ``fmt.max`` (IEEE 754 overflow).

    >>> gmpy2_round(np.array([65520.0, 464.0, 465.0]), "fp8_e4m3fn", "nearest-even").tolist()
    [nan, 448.0, nan]
    """
    gm = importlib.import_module("gmpy2")
    f = get_format(fmt)
    m = RoundingMode.parse(mode)
    x = widen(x).reshape(-1)
    need = {RoundingMode.NEAREST_EVEN: ["n"], RoundingMode.TOWARD_ZERO: ["z"], RoundingMode.UP: ["u"],
            RoundingMode.DOWN: ["d"], RoundingMode.NEAREST_AWAY: ["z", "a"], RoundingMode.ODD: ["z", "a"]}
    if m is RoundingMode.STOCHASTIC:
        raise ValueError("stochastic rounding has no deterministic oracle")
    res = gmpy2_results(gm, f, x.tolist(), False, need[m])
    r = derive(m, x, res, f)
    out = apply_policy(x, r, f, m)
    if not return_overflow:
        return out
    with np.errstate(invalid="ignore"):
        over = np.isfinite(x) & (np.abs(r) > f.max)
    return out, over


def oracle_stats(x: np.ndarray, ref: np.ndarray, over: np.ndarray, fmt: str | FloatFormat) -> tuple[int, int, int, int]:
    """(inexact, overflow, subnormal, flushed) counts, as :class:`fpanalysis.RoundingStats`
    defines them, from oracle results ``ref`` and the overflow mask ``over``."""
    f = get_format(fmt)
    x = widen(x).reshape(-1)
    ref = widen(ref).reshape(-1)
    fin = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        inexact = fin & ~same_bits(ref, x)
        sub = fin & np.isfinite(ref) & (ref != 0) & (np.abs(ref) < f.min_normal)
        flushed = fin & (x != 0) & (ref == 0)
    return (int(inexact.sum()), int(np.count_nonzero(over)), int(sub.sum()), int(flushed.sum()))




def softfloat_round(sf: Any, fmt: FloatFormat, x: np.ndarray, mode: RoundingMode) -> np.ndarray | None:
    """softfloatpy conversion of ``x`` (float64 or float32 array) to fp16/bf16/fp32, or None."""
    if fmt.name == "fp16" and x.dtype == np.float64:
        cvt, src = sf.f64_to_f16, sf.Float64.from_float
    elif fmt.name == "fp16" and x.dtype == np.float32:
        cvt, src = sf.f32_to_f16, sf.Float32.from_float
    elif fmt.name == "bf16" and x.dtype == np.float32:
        cvt, src = sf.f32_to_bf16, sf.Float32.from_float
    elif fmt.name == "fp32" and x.dtype == np.float64:
        cvt, src = sf.f64_to_f32, sf.Float64.from_float
    else:
        return None
    sf.set_rounding_mode(getattr(sf.RoundingMode, SOFTFLOAT_MODE_NAMES[mode]))
    try:
        return np.array([cvt(src(v)).to_float() for v in x.tolist()])
    finally:
        sf.set_rounding_mode(sf.RoundingMode.NEAR_EVEN)


_NATIVE = {"fp16": ("numpy", "float16"), "bf16": ("ml_dtypes", "bfloat16"),
           "fp8_e4m3fn": ("ml_dtypes", "float8_e4m3fn"), "fp8_e5m2": ("ml_dtypes", "float8_e5m2")}


def native_dtype(fmt: FloatFormat) -> Any:
    mod, name = _NATIVE.get(fmt.name, (None, None))
    if mod is None:
        return None
    lib = optional_import(mod)
    return None if isinstance(lib, str) else np.dtype(getattr(lib, name))



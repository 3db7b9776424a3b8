"""Differential verification of the emulated arithmetic (:mod:`fpanalysis.ops`) against
independent oracles.

Oracles (each imported only when used):

* ``gmpy2`` (MPFR): correctly rounded results in a context with the format's precision and
  exponent range (``gmpy2.ieee(16)`` for fp16; MPFR's significands lie in ``[1/2, 1)``, so
  ``emax_mpfr = emax + 1`` and ``emin_mpfr = emin - p + 2`` with ``subnormalize=True``).
  Modes nearest-even, toward-zero, up, down, and odd (toward-zero plus MPFR's inexact flag:
  set the last bit).  Results above the format's largest finite value (only possible in
  formats whose top significand is reserved, such as fp8 E4M3FN) get the format's overflow
  policy.
* ``softfloat`` (Berkeley SoftFloat 3 through ``softfloatpy``): binary16 add, sub, mul, div,
  sqrt and mulAdd in nearest-even, nearest-away (``near_maxMag``), toward-zero, up and down.
* ``ml_dtypes``: arithmetic on ``bfloat16`` / ``float8_*`` arrays, which computes in float32
  and rounds once to nearest-even; correct for + - * / sqrt because 24 >= 2p + 2 (Figueroa,
  "When is double rounding innocuous?", SIGNUM Newsletter 30(3), 1995).  No fma.
* ``exact``: Python integers.  The exact result as a ratio of integers, the 64-bit fraction
  ``floor(2**64 * (x - trunc(x)) / ulp)`` by integer division (``math.isqrt`` for sqrt), then
  each mode's rule.  Used for nearest-away outside fp16 and for stochastic rounding (the
  random words come from the documented counter-based stream, so every decision is predicted).

>>> rows = verify_ops(200, seed=0, formats=("fp8_e5m2",))
>>> sum(r["mismatches"] for r in rows)
0
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from ..formats import FloatFormat, Overflow, get_format
from ..rounding import RoundingMode, round_to
from .core import row, same_bits

__all__ = ["verify_ops", "OPS", "sample_operands", "exact_op", "exact_fraction"]

OPS = ("add", "sub", "mul", "div", "sqrt", "fma")
_ARITY = {"add": 2, "sub": 2, "mul": 2, "div": 2, "sqrt": 1, "fma": 3}
_SR_KBITS = 6  # the few-random-bits variant checked by the exact oracle


# --- operand generation ----------------------------------------------------------------------


def _all_values(f: FloatFormat) -> np.ndarray | None:
    """Every bit pattern's value (formats with an encoding of <= 16 bits), else None."""
    from ..rounding import from_bits

    if f.total_bits is None or f.total_bits > 16:
        return None
    return from_bits(np.arange(1 << f.total_bits, dtype=np.uint32), f)


def _random_values(f: FloatFormat, n: int, rng: np.random.Generator, e: np.ndarray | None = None) -> np.ndarray:
    """Random numbers of ``f`` with exponents ``e`` (default: uniform over every binade,
    the subnormal binades included), uniform significands and random signs."""
    lowest = f.emin - f.p + 1 if f.subnormals else f.emin
    if e is None:
        e = rng.integers(lowest, f.emax + 1, n)
    e = np.clip(e, lowest, f.emax)
    qe = np.maximum(e, f.emin) - f.p + 1
    k = e - qe  # the significand has k + 1 bits
    m = rng.integers(np.int64(1) << k, np.int64(2) << k)
    if f.max_significand is not None:
        top = int(round(f.max_significand * 2 ** (f.p - 1)))
        m = np.where(e == f.emax, np.minimum(m, top), m)
    v = np.ldexp(m.astype(np.float64), qe.astype(np.int64))
    return np.where(rng.random(n) < 0.5, -v, v)


def _few_bits(f: FloatFormat, n: int, rng: np.random.Generator, e: np.ndarray) -> np.ndarray:
    """Numbers whose significands have at most 3 bits set (products/quotients hit ties)."""
    m = np.full(n, 1 << (f.p - 1), dtype=np.int64)
    for _ in range(2):
        k = rng.integers(0, f.p - 1, n)
        m |= np.where(rng.random(n) < 0.6, np.int64(1) << k, 0)
    e = np.clip(e, f.emin, f.emax)
    v = np.ldexp(m.astype(np.float64), (e - f.p + 1).astype(np.int64))
    v = np.where(np.abs(v) > f.max, f.max, v)
    return np.where(rng.random(n) < 0.5, -v, v)


def _specials(f: FloatFormat) -> np.ndarray:
    eps = f.eps
    base = [
        0.0, f.min_subnormal, 2 * f.min_subnormal, f.min_normal - f.min_subnormal, f.min_normal,
        f.min_normal * (1 + eps), 1.0, 1.0 + eps, 2.0 - eps, 3.0, f.max, f.max * (1 - eps / 2),
        np.nan,
    ]
    if f.has_inf:
        base.append(np.inf)
    v = np.array(base, dtype=np.float64)
    v = np.concatenate([v, -v])
    return _snap(f, v)


def _snap(f: FloatFormat, v: np.ndarray) -> np.ndarray:
    """Round to the format (nearest-even) and drop what the format cannot hold (inf -> max)."""
    v = np.asarray(round_to(np.asarray(v, dtype=np.float64), f), dtype=np.float64)
    if not f.has_inf:
        v = np.where(np.isinf(v), np.copysign(f.max, v), v)
    return v


def _exponent(v: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        _, ex = np.frexp(np.where(np.isfinite(v), v, 1.0))
    return ex.astype(np.int64) - 1


def sample_operands(
    op: str, fmt: "str | FloatFormat", n: int, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """Operands of ``op`` that span the format: the whole exponent range, subnormals, signed
    zeros, infinities, NaN, close exponents (cancellation and ties), few-bit significands
    (exact ties in products and quotients) and results aimed at the overflow threshold, the
    smallest normal and the subnormal range.  Exhaustive when all combinations fit in ``n``.

    >>> a, b = sample_operands("add", "fp16", 1000, np.random.default_rng(0))
    >>> a.shape, bool(np.isnan(a).any()), bool((np.abs(a) > 65000).any())
    ((1000,), True, True)
    """
    f = get_format(fmt)
    k = _ARITY[op]
    allv = _all_values(f)
    if allv is not None and not f.has_inf:
        allv = allv[~np.isinf(allv)]
    if allv is not None and allv.size**k <= n:
        grids = np.meshgrid(*([allv] * k), indexing="ij")
        return tuple(g.reshape(-1).copy() for g in grids)

    a = _random_values(f, n, rng)
    ea = _exponent(a)
    strategy = rng.integers(0, 10, n)
    sp = _specials(f)
    out = [a]
    for j in range(1, k):
        indep = _random_values(f, n, rng)
        near = _random_values(f, n, rng, ea + rng.integers(-f.p - 3, f.p + 4, n))
        few = _few_bits(f, n, rng, ea + rng.integers(-3, 4, n))
        # far below the other operand's last bit (only the sticky bit of the exact result)
        gap = f.p + 2 + rng.integers(0, 64, n)
        far = _random_values(f, n, rng, (ea - gap) if op in ("add", "sub") else (-gap // 2))
        b = np.where(strategy < 3, indep, np.where(strategy < 6, near, np.where(strategy < 8, few, far)))
        out.append(b)
    if op == "fma":  # the product a*b far below the last bit of c
        far = strategy == 8
        ec = rng.integers(f.emin - 1, f.emax + 1, n)
        ep = ec - (f.p + 2 + rng.integers(0, 64, n))
        ea = ep // 2 + rng.integers(-3, 4, n)
        out[0] = np.where(far, _random_values(f, n, rng, ea), out[0])
        out[1] = np.where(far, _random_values(f, n, rng, ep - ea), out[1])
        out[2] = np.where(far, _random_values(f, n, rng, ec), out[2])
    # aimed at boundaries
    aim = strategy == 9
    na = int(aim.sum())
    if na:
        top = f.max
        targets = np.array([top, top * (1 + f.eps / 2), top * (1 + f.eps / 4), f.min_normal, f.min_normal * (1 - f.eps / 2),
                            f.min_subnormal, f.min_subnormal / 2, f.min_subnormal * 1.5, 1.0])
        t = targets[rng.integers(0, targets.size, na)] * np.where(rng.random(na) < 0.5, -1, 1)
        x = out[0][aim]
        with np.errstate(all="ignore"):
            if op in ("add", "sub"):
                half_ulp = np.array([f.ulp(v) / 2 for v in t])
                s = np.where(op == "add", 1.0, -1.0)
                pert = 1.0 + rng.integers(-2, 3, na) * f.eps
                x = _snap(f, t - np.sign(t) * half_ulp * pert)
                y = s * _snap(f, np.sign(t) * half_ulp * pert * (1 + rng.integers(-1, 2, na) * f.eps))
                out[0][aim], out[1][aim] = x, y
            elif op == "mul":
                out[1][aim] = _snap(f, t / np.where(x == 0, 1.0, x))
            elif op == "div":
                b = out[1][aim]
                out[0][aim] = _snap(f, t * np.where(np.isfinite(b) & (b != 0), b, 1.0))
            elif op == "sqrt":
                out[0][aim] = _snap(f, np.abs(t * x))
            else:  # fma: cancellation against the product, or a product near a boundary
                b = out[1][aim]
                out[2][aim] = _snap(f, -(x * b) * (1 + rng.integers(-2, 3, na) * f.eps))
    if op == "sqrt":  # mostly non-negative, and near-squares (exact results, near-ties)
        r = out[0]
        sq = _snap(f, _random_values(f, n, rng, rng.integers(f.emin // 2, f.emax // 2 + 1, n)) ** 2)
        out[0] = np.where(strategy < 4, sq, np.where(strategy < 8, np.abs(r), r))
    # special classes: ~5% of each operand
    for j in range(k):
        m = rng.random(n) < 0.05
        out[j][m] = sp[rng.integers(0, sp.size, int(m.sum()))]
    out = [_snap(f, o) for o in out]
    return tuple(out)


# --- the exact (integer) oracle ----------------------------------------------------------------


def _ratio(x: float) -> tuple[int, int]:
    return x.as_integer_ratio()


def _exact_value(op: str, xs: Sequence[float]) -> tuple[int, int, bool] | float:
    """The exact finite result as ``(num, den, is_sqrt)`` (for sqrt: the value is
    ``sqrt(num/den)``), or a float (NaN, +-inf, or a signed zero) for the IEEE special cases."""
    with np.errstate(all="ignore"):
        if any(math.isnan(x) for x in xs):
            return math.nan
        if any(math.isinf(x) for x in xs):
            a = [np.float64(x) for x in xs]
            r = {"add": lambda: a[0] + a[1], "sub": lambda: a[0] - a[1], "mul": lambda: a[0] * a[1],
                 "div": lambda: a[0] / a[1], "sqrt": lambda: np.sqrt(a[0]),
                 "fma": lambda: a[0] * a[1] + a[2]}[op]()
            return float(r)
    if op == "sqrt":
        a = xs[0]
        if a < 0:
            return math.nan
        if a == 0:
            return a
        n, d = _ratio(a)
        return n, d, True
    if op == "div":
        if xs[1] == 0:
            return math.nan if xs[0] == 0 else math.copysign(math.inf, xs[0]) * math.copysign(1.0, xs[1])
        (n1, d1), (n2, d2) = _ratio(xs[0]), _ratio(xs[1])
        n, d = n1 * d2, d1 * n2
    elif op == "mul":
        (n1, d1), (n2, d2) = _ratio(xs[0]), _ratio(xs[1])
        n, d = n1 * n2, d1 * d2
    else:
        if op == "fma":
            (n1, d1), (n2, d2), (n3, d3) = _ratio(xs[0]), _ratio(xs[1]), _ratio(xs[2])
            n, d = n1 * n2 * d3 + n3 * d1 * d2, d1 * d2 * d3
        else:
            y = xs[1] if op == "add" else -xs[1]
            (n1, d1), (n2, d2) = _ratio(xs[0]), _ratio(y)
            n, d = n1 * d2 + n2 * d1, d1 * d2
    if d < 0:
        n, d = -n, -d
    return n, d, False


def _zero_sign(op: str, xs: Sequence[float], mode: RoundingMode) -> float:
    """Sign of an exact zero result (IEEE 754 §6.3)."""
    sb = [math.copysign(1.0, x) < 0 for x in xs]
    if op in ("mul", "div"):
        return -0.0 if sb[0] != sb[1] else 0.0
    if op == "sqrt":
        return xs[0]
    if op == "fma":
        terms = [sb[0] != sb[1], sb[2]]
        both_zero = xs[0] * xs[1] == 0 and xs[2] == 0
    else:
        terms = [sb[0], sb[1] if op == "add" else not sb[1]]
        both_zero = xs[0] == 0 and xs[1] == 0
    if both_zero and terms[0] == terms[1]:
        return -0.0 if terms[0] else 0.0
    return -0.0 if mode is RoundingMode.DOWN else 0.0


def _apply_policy(f: FloatFormat, y: float, neg: bool, mode: RoundingMode | None) -> float:
    """Overflow policy of ``f`` for a rounded magnitude ``y`` (or an infinite result when
    ``mode`` is None), as documented in :class:`fpanalysis.formats.Overflow`."""
    if mode is None or y > f.max:
        to_max = f.overflow is Overflow.SATURATE
        if mode is not None:
            to_max = to_max or mode in (RoundingMode.TOWARD_ZERO, RoundingMode.ODD)
            to_max = to_max or (mode is RoundingMode.UP and neg) or (mode is RoundingMode.DOWN and not neg)
        y = f.max if to_max else (math.nan if f.overflow is Overflow.NAN else math.inf)
    return -y if neg else y


def exact_fraction(op: str, xs: Sequence[float], fmt: "str | FloatFormat") -> tuple[bool, int, int, bool, int] | None:
    """For a finite nonzero exact result ``x``: ``(x < 0, t, fr, exact, qe)`` where
    ``|x| = (t + fr / 2**64 + rest) * 2**qe`` with integers ``t``, ``0 <= fr < 2**64``,
    ``0 <= rest < 2**-64`` (``exact`` when ``rest == 0``) and ``2**qe`` the format's spacing
    at ``x``.  None for NaN, infinite or zero results."""
    f = get_format(fmt)
    ex = _exact_value(op, xs)
    if isinstance(ex, float) or ex[0] == 0:
        return None
    n, d, is_sqrt = ex
    neg = n < 0
    n = abs(n)
    e = n.bit_length() - d.bit_length()  # floor(log2(n/d)) is e or e - 1
    if (n << max(-e, 0)) < (d << max(e, 0)):
        e -= 1
    if is_sqrt:
        e = e // 2
    lo = f.emin if f.subnormals else f.emin - 1
    qe = max(e, lo) - f.p + 1
    s = 64 - qe  # W = floor(x * 2**s)
    if is_sqrt:
        num, den = (n << (2 * s), d) if s >= 0 else (n, d << (-2 * s))
        w = math.isqrt(num // den)
        exact = w * w * den == num
    else:
        num, den = (n << s, d) if s >= 0 else (n, d << (-s))
        w, rem = divmod(num, den)
        exact = rem == 0
    return neg, w >> 64, w & ((1 << 64) - 1), exact, qe


def exact_op(
    op: str, xs: Sequence[float], fmt: "str | FloatFormat", mode: "str | RoundingMode",
    rbits: int = 0, kbits: int | None = None,
) -> float:
    """One correctly rounded operation computed with Python integers (the test oracle).

    ``rbits`` is the 64-bit random word for stochastic rounding (round away from zero when
    ``rbits < floor(2**64 * fraction)``; with ``kbits``, when the top ``kbits`` bits of both
    sum to a carry).

    >>> exact_op("fma", [float.fromhex("0x1.eacp+7"), float.fromhex("0x1.3f4p+4"),
    ...                  float.fromhex("0x1.c04p+14")], "fp16", "nearest-even").hex()
    '0x1.0640000000000p+15'
    """
    f = get_format(fmt)
    m = RoundingMode.parse(mode)
    fr_ = exact_fraction(op, xs, f)
    if fr_ is None:
        ex = _exact_value(op, xs)
        if isinstance(ex, tuple):
            return _zero_sign(op, xs, m)
        if math.isnan(ex):
            return math.nan
        if math.isinf(ex):
            return _apply_policy(f, math.inf, ex < 0, None) if not f.has_inf else ex
        return ex  # sqrt of a signed zero, x / inf
    neg, t, fr, exact, qe = fr_
    sticky = not exact
    inexact = fr != 0 or sticky
    half = 1 << 63
    if m is RoundingMode.NEAREST_EVEN:
        go = fr > half or (fr == half and (sticky or t & 1 == 1))
    elif m is RoundingMode.NEAREST_AWAY:
        go = fr >= half
    elif m is RoundingMode.TOWARD_ZERO:
        go = False
    elif m is RoundingMode.UP:
        go = inexact and not neg
    elif m is RoundingMode.DOWN:
        go = inexact and neg
    elif m is RoundingMode.ODD:
        t |= int(inexact)
        go = False
    elif kbits is None:
        go = rbits < fr
    else:
        sh = 64 - kbits
        go = (fr >> sh) + (rbits >> sh) >= (1 << kbits)
    y = math.ldexp(float(t + go), qe)
    if not f.subnormals and y < f.min_normal:
        y = 0.0
    return _apply_policy(f, y, neg, m)


# --- comparison ----------------------------------------------------------------------------------


def _row(op: str, f: FloatFormat, mode: str, oracle: str, args: tuple, got: np.ndarray, exp: np.ndarray) -> dict:
    """One result row in the suite's common shape (:func:`fpanalysis.verify.core.row`): the
    operation is the row's ``check``; ``first_mismatch`` is ``""`` when there is none."""
    ok = same_bits(got, exp)
    bad = np.flatnonzero(~ok)
    first = ""
    if bad.size:
        i = int(bad[0])
        ins = ", ".join(float(a[i]).hex() for a in args)
        first = f"{op}({ins}) = {float(got[i]).hex()}, oracle {float(exp[i]).hex()}"
    return row(op, f.name, mode, oracle, int(got.size), int(bad.size), first)


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"verify_ops needs the oracle package {module!r}; install the development "
            f"environment (pip install -e '.[dev]') or pip install {module}"
        ) from None


# --- oracles ---------------------------------------------------------------------------------------


_GMPY_MODES = ("nearest-even", "toward-zero", "up", "down", "odd")
_SOFTFLOAT_MODES = ("nearest-even", "nearest-away", "toward-zero", "up", "down")
_ML_DTYPES = {"bf16": "bfloat16", "fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


def _gmpy2_oracle(op: str, f: FloatFormat, mode: RoundingMode, args: tuple) -> np.ndarray:
    gmpy2 = _need("gmpy2")
    rnd = {
        RoundingMode.NEAREST_EVEN: gmpy2.RoundToNearest, RoundingMode.TOWARD_ZERO: gmpy2.RoundToZero,
        RoundingMode.UP: gmpy2.RoundUp, RoundingMode.DOWN: gmpy2.RoundDown, RoundingMode.ODD: gmpy2.RoundToZero,
    }[mode]
    if f.name == "fp16" and (f.p, f.emin, f.emax) == (11, -14, 15):
        ctx = gmpy2.ieee(16)
    else:
        ctx = gmpy2.context(precision=f.p, emin=f.emin - f.p + 2, emax=f.emax + 1, subnormalize=True)
    ctx.round = rnd
    fn = {"add": ctx.add, "sub": ctx.sub, "mul": ctx.mul, "div": ctx.div, "sqrt": ctx.sqrt, "fma": ctx.fma}[op]
    cols = [a.tolist() for a in args]
    n = len(cols[0])
    out = np.empty(n)
    odd = mode is RoundingMode.ODD
    inexact = np.zeros(n, dtype=bool)
    for i, xs in enumerate(zip(*cols)):
        if odd:
            ctx.inexact = False
        out[i] = float(fn(*xs))
        if odd:
            inexact[i] = ctx.inexact
    if odd:  # truncated value with its last bit set when inexact
        fin = np.isfinite(out)
        mag = np.where(fin, np.abs(out), 0.0)
        ulp = np.ldexp(1.0, np.maximum(_exponent(np.where(mag > 0, mag, f.min_normal)), f.emin) - f.p + 1)
        even = np.fmod(mag / ulp, 2.0) == 0.0
        out = np.where(fin & inexact & even, np.copysign(mag + ulp, out), out)
    over = np.isfinite(out) & (np.abs(out) > f.max)
    infinite = np.isinf(out) & ~f.has_inf
    for i in np.flatnonzero(over | infinite):
        y = out[i]
        out[i] = _apply_policy(f, abs(y), y < 0, None if np.isinf(y) else mode)
    return out


@functools.lru_cache(maxsize=1)
def _softfloat_table() -> list:
    """softfloatpy Float16 objects for every bit pattern (built once)."""
    sf = _need("softfloatpy")
    return [sf.Float16.from_bytes(b.to_bytes(2, "big")) for b in range(1 << 16)]


def _softfloat_oracle(op: str, mode: RoundingMode, args: tuple) -> np.ndarray:
    sf = _need("softfloatpy")
    from ..rounding import from_bits, to_bits

    sf.set_rounding_mode({
        RoundingMode.NEAREST_EVEN: sf.RoundingMode.NEAR_EVEN, RoundingMode.NEAREST_AWAY: sf.RoundingMode.NEAR_MAX_MAG,
        RoundingMode.TOWARD_ZERO: sf.RoundingMode.MIN_MAG, RoundingMode.UP: sf.RoundingMode.MAX,
        RoundingMode.DOWN: sf.RoundingMode.MIN,
    }[mode])
    try:
        fn = {"add": sf.f16_add, "sub": sf.f16_sub, "mul": sf.f16_mul, "div": sf.f16_div,
              "sqrt": sf.f16_sqrt, "fma": sf.f16_mul_add}[op]
        table = _softfloat_table()
        cols = [[table[b] for b in to_bits(a, "fp16").tolist()] for a in args]
        res = [int.from_bytes(fn(*xs).to_bytes(), "big") for xs in zip(*cols)]
    finally:
        sf.set_rounding_mode(sf.RoundingMode.NEAR_EVEN)
    return from_bits(np.array(res, dtype=np.uint32), "fp16")


def _ml_dtypes_oracle(op: str, f: FloatFormat, args: tuple) -> np.ndarray:
    md = _need("ml_dtypes")
    dt = getattr(md, _ML_DTYPES[f.name])
    xs = [np.asarray(a, dtype=np.float64).astype(np.float32).astype(dt) for a in args]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = {"add": lambda: xs[0] + xs[1], "sub": lambda: xs[0] - xs[1], "mul": lambda: xs[0] * xs[1],
             "div": lambda: xs[0] / xs[1], "sqrt": lambda: np.sqrt(xs[0])}[op]()
    assert r.dtype == dt, f"ml_dtypes returned {r.dtype} for {op} on {dt}"
    return r.astype(np.float32).astype(np.float64)


def _exact_oracle(op: str, f: FloatFormat, mode: RoundingMode, args: tuple, key: Any, kbits: int | None) -> np.ndarray:
    from .._kernels.bits import counter_random_numpy

    n = args[0].size
    rb = counter_random_numpy(key, np.arange(n, dtype=np.uint64)).tolist() if key is not None else [0] * n
    cols = [a.tolist() for a in args]
    return np.array([exact_op(op, xs, f, mode, r, kbits) for xs, r in zip(zip(*cols), rb)])


def _emulate(op: str, args: tuple, f: FloatFormat, mode: str, **kw: Any) -> np.ndarray:
    from .. import ops

    return np.asarray(getattr(ops, op)(*args, fmt=f, mode=mode, dtype=np.float64, **kw), dtype=np.float64)


def verify_ops(
    n_pairs: int,
    seed: int,
    formats: Sequence["str | FloatFormat"] = ("fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"),
    progress: Callable[[str], None] | None = None,
    ops: Sequence[str] = OPS,
    n_exact: int | None = None,
) -> list[dict]:
    """Compare every emulated op with the independent oracles; one row per
    (op, format, mode, oracle).

    Parameters
    ----------
    n_pairs : int
        Operand tuples per (op, format); small formats are tested exhaustively when all
        combinations fit.
    seed : int
        Seed of the operand generator and of the stochastic-rounding streams.
    formats : sequence of str or FloatFormat
        Formats to check.  softfloat covers fp16, ml_dtypes bf16 and the fp8 formats, gmpy2
        every format with subnormals, the exact integer oracle every format.
    progress : callable, optional
        Called with a one-line description before each comparison.
    ops : sequence of str
        Subset of ``OPS``.
    n_exact : int, optional
        Operand tuples for the (slower, ~5 us per op) exact-integer oracle; default
        ``min(n_pairs, 100_000)``.

    Returns
    -------
    list of dict
        ``{check, format, mode, oracle, n, mismatches, first_mismatch, seconds}`` (``check`` names the
        operation); ``first_mismatch`` is a readable string (inputs, emulator result, oracle
        result in hex), empty when the check found no mismatch.

    Raises
    ------
    ImportError
        When an oracle package (gmpy2, softfloatpy, ml_dtypes) is missing.
    """
    from .._kernels.bits import stream_key

    for mod in ("gmpy2", "softfloatpy", "ml_dtypes"):
        _need(mod)
    bad_ops = [o for o in ops if o not in OPS]
    if bad_ops:
        raise ValueError(f"unknown ops {bad_ops}; valid ops are: {', '.join(OPS)}")
    n_exact = min(n_pairs, 100_000) if n_exact is None else n_exact
    rows: list[dict] = []
    say = progress or (lambda s: None)
    for fi, fmt in enumerate(formats):
        f = get_format(fmt)
        for oi, op in enumerate(ops):
            rng = np.random.default_rng([seed, fi, oi])
            args = sample_operands(op, f, n_pairs, rng)
            plan: list[tuple[str, str]] = []
            if f.subnormals:
                plan += [("gmpy2", m) for m in _GMPY_MODES]
            if f == get_format("fp16"):
                plan += [("softfloat", m) for m in _SOFTFLOAT_MODES]
            if f.name in _ML_DTYPES and f == get_format(f.name) and op != "fma":
                plan.append(("ml_dtypes", "nearest-even"))
            exact_modes = ["stochastic", f"stochastic/{_SR_KBITS}bits"]
            if f != get_format("fp16"):
                exact_modes.insert(0, "nearest-away")
            if not f.subnormals:
                exact_modes[:0] = list(_GMPY_MODES)
            plan += [("exact", m) for m in exact_modes]
            cache: dict[str, np.ndarray] = {}
            for oracle, mode in plan:
                say(f"{f.name} {op} {mode} vs {oracle}")
                sub_args = args if oracle != "exact" else tuple(a[:n_exact] for a in args)
                if mode.startswith("stochastic"):
                    kb = _SR_KBITS if "/" in mode else None
                    stream = 1 + oi
                    got = _emulate(op, sub_args, f, "stochastic", seed=seed, stream=stream, random_bits=kb)
                    exp = _exact_oracle(op, f, RoundingMode.STOCHASTIC, sub_args, stream_key(seed, stream), kb)
                else:
                    m = RoundingMode.parse(mode)
                    if mode not in cache:
                        cache[mode] = _emulate(op, args, f, mode)
                    got = cache[mode][: sub_args[0].size]
                    if oracle == "gmpy2":
                        exp = _gmpy2_oracle(op, f, m, sub_args)
                    elif oracle == "softfloat":
                        exp = _softfloat_oracle(op, m, sub_args)
                    elif oracle == "ml_dtypes":
                        exp = _ml_dtypes_oracle(op, f, sub_args)
                    else:
                        exp = _exact_oracle(op, f, m, sub_args, None, None)
                rows.append(_row(op, f, mode, oracle, sub_args, got, exp))
    return rows

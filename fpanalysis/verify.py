"""Verification of rounding, conversion and bit encodings against independent oracles.

Each ``verify_*`` function compares :func:`fpanalysis.round_to`, :func:`fpanalysis.to_bits`
and :func:`fpanalysis.from_bits` with libraries that implement the same arithmetic
independently, and returns one row per comparison::

    {"check", "format", "mode", "oracle", "n", "mismatches", "first_mismatch", "seconds"}

``mismatches`` is an int (0 means the check passed) or ``None`` when the check could not run
(the oracle or the code under test is not installed); ``first_mismatch`` then says why.

Oracles
-------
* numpy ``float16`` and torch ``.half()`` (fp16 decode and float32 -> fp16 nearest-even),
* ml_dtypes (bf16, fp8 E4M3FN, fp8 E5M2: decode, encode, float32 -> format nearest-even),
* gmpy2 / MPFR contexts (every deterministic mode, any ``(p, emin, emax)``), with MPFR's
  exponent convention: significands in ``[0.5, 1)``, so a format with normal exponents
  ``[emin, emax]`` is ``emax_mpfr = emax + 1`` and, with subnormals, ``emin_mpfr = emin - p + 2``,
* softfloatpy (Berkeley SoftFloat 3): ``f64_to_f16``, ``f32_to_f16``, ``f32_to_bf16``,
  ``f64_to_f32``, ``f16_sqrt`` in its five rounding modes (it has no round-to-odd),
* exact rational arithmetic (``fractions.Fraction``) and binomial tolerances for stochastic
  rounding.

Nearest-away and round-to-odd are not MPFR modes (``RoundAwayZero`` is directed rounding away
from zero).  They are derived from MPFR's toward-zero result ``z`` and away-from-zero result
``a``: nearest-away picks ``a`` when ``|x| >= |(z + a) / 2|`` (the midpoint of two neighbours
with ``p <= 52`` bits is exact in float64, so the comparison is exact); round-to-odd picks
whichever of ``z``, ``a`` has an odd last significand bit when ``x`` is inexact (Boldo &
Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using rounding to
odd", IEEE TC 2008).

Overflow, saturation and flush-to-zero policies (documented in :mod:`fpanalysis.formats`) are
applied to MPFR results computed with an exponent range wide enough that MPFR never overflows
inside the format's range: results above ``fmt.max`` become ``+-inf`` (policy ``inf``), NaN
(policy ``nan``) or ``+-max`` (policy ``saturate``, and for every policy in the modes that
round toward zero in magnitude: toward-zero, round-to-odd, up for negatives, down for
positives, as IEEE 754 §7.4 prescribes for directed roundings); infinite inputs become inf,
NaN or max.  For IEEE-style formats the directed modes are also checked against MPFR's own
bounded exponent range, which applies IEEE 754 overflow rules by itself.

>>> rows = verify_directed(n=2000, seed=0, formats=["fp16"], modes=["nearest-even"])
>>> [r["oracle"] for r in rows][:2], all(r["mismatches"] in (0, None) for r in rows)
(['gmpy2 ieee(16)', 'softfloatpy f64/f32_to_f16'], True)
"""

from __future__ import annotations

import importlib
import math
import time
from fractions import Fraction
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .formats import FP8_E4M3FN, FP16, BF16, FP8_E5M2, FP32, TF32, FloatFormat, Overflow, get_format
from .rounding import RoundingMode, from_bits, round_to, to_bits

__all__ = [
    "Row",
    "ProgressFn",
    "verify_fp16_patterns",
    "verify_f32_to_fp16",
    "verify_bf16_fp8",
    "verify_directed",
    "verify_stochastic",
    "run_all",
    "format_table",
    "stratified_float32",
    "directed_inputs",
    "DIRECTED_FORMATS",
]

Row = dict[str, Any]
#: ``progress(label, done, total)``: called as long checks advance.
ProgressFn = Callable[[str, int, int], None]

DETERMINISTIC_MODES = [m for m in RoundingMode if m is not RoundingMode.STOCHASTIC]

#: Formats that :func:`verify_directed` checks by default: the presets plus variants that
#: exercise every policy (saturation, NaN on overflow, flush-to-zero, a custom precision).
DIRECTED_FORMATS: list[FloatFormat] = [
    FP16,
    BF16,
    FP8_E4M3FN,
    FP8_E5M2,
    TF32,
    FP32,
    FP16.with_(name="fp16-saturate", overflow="saturate"),
    FP16.with_(name="fp16-no-subnormals", subnormals=False),
    FP8_E4M3FN.with_(name="fp8_e4m3fn-saturate", overflow="saturate"),
    FloatFormat("custom-p5", p=5, emin=-10, emax=11),
    FloatFormat("custom-p6-ftz-nan", p=6, emin=-20, emax=20, subnormals=False, overflow="nan"),
]

_CHUNK = 1 << 24


# --- rows and comparisons --------------------------------------------------------------------


def _row(check: str, fmt: str, mode: str, oracle: str, n: int, mismatches: int | None,
         first: str = "", seconds: float = 0.0) -> Row:
    return {
        "check": check,
        "format": fmt,
        "mode": mode,
        "oracle": oracle,
        "n": int(n),
        "mismatches": None if mismatches is None else int(mismatches),
        "first_mismatch": first,
        "seconds": round(float(seconds), 3),
    }


def _unavailable(check: str, fmt: str, mode: str, oracle: str, reason: str) -> Row:
    return _row(check, fmt, mode, oracle, 0, None, f"not available: {reason}")


def _optional(module: str) -> Any:
    """Import an optional oracle library, or return the ImportError message."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        return f"{module} is not installed ({exc})"


def _same(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Elementwise: identical float64 bit patterns (so -0 != +0), or both NaN."""
    with np.errstate(invalid="ignore"):  # signalling NaNs warn when widened
        a = np.asarray(ours, dtype=np.float64)
        b = np.asarray(ref, dtype=np.float64)
    return (a.view(np.uint64) == b.view(np.uint64)) | (np.isnan(a) & np.isnan(b))


def _wide(a: Any, dtype: Any = np.float64) -> np.ndarray:
    """``a.astype(dtype)`` without the warnings of signalling NaNs and (narrowing) overflow."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(a).astype(dtype)


def _fmt_value(v: Any) -> str:
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return repr(v)
    return f"{v!r} ({v.hex()})"


def _compare(x: Any, ours: np.ndarray, ref: np.ndarray) -> tuple[int, int, str]:
    """(n, mismatches, description of the first mismatch)."""
    ok = _same(ours, ref)
    bad = np.flatnonzero(~ok.reshape(-1))
    first = ""
    if bad.size:
        i = int(bad[0])
        xi = np.asarray(x).reshape(-1)[i]
        first = (
            f"input {_fmt_value(xi)}: ours {_fmt_value(np.asarray(ours).reshape(-1)[i])}, "
            f"oracle {_fmt_value(np.asarray(ref).reshape(-1)[i])}"
        )
    return ok.size, int(bad.size), first


def _timed(fn: Callable[[], tuple[int, int, str]]) -> tuple[int, int, str, float]:
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


def stratified_float32(fmt: "str | FloatFormat", sample: int = 1 << 20, seed: int = 0) -> np.ndarray:
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


def directed_inputs(fmt: "str | FloatFormat", n: int, seed: int = 0) -> np.ndarray:
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
                         f.min_subnormal, -f.min_subnormal, f.min_subnormal / 2, f.max * (1 + 2.0**-p),
                         -f.max * (1 + 2.0**-p), 1.0, -1.0, 5e-324, 1.7976931348623157e308, 1e300])
    k = max(n - specials.size, 0)
    counts = np.array([0.35, 0.10, 0.15, 0.15, 0.10, 0.05, 0.05, 0.05]) * k
    c = np.floor(counts).astype(int)
    c[0] += k - c.sum()
    sign = lambda m: np.where(rng.random(m) < 0.5, -1.0, 1.0)  # noqa: E731
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
        ii = np.where(sub, np.floor(ii / 2) if f.subnormals else ii, ii)
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


# --- fp16 bit patterns -------------------------------------------------------------------------


def _fp16_all() -> tuple[np.ndarray, np.ndarray]:
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    return bits, bits.view(np.float16)


def _sqrt_fn() -> Any:
    try:
        ops = importlib.import_module("fpanalysis.ops")
    except ImportError as exc:
        return f"fpanalysis.ops is not importable ({exc})"
    fn = getattr(ops, "sqrt", None)
    if fn is None:
        return "fpanalysis.ops has no sqrt"
    return fn


def _call_sqrt(fn: Any, x: np.ndarray, fmt: str, mode: str) -> np.ndarray:
    try:
        return np.asarray(fn(x, fmt, mode=mode), dtype=np.float64)
    except TypeError:
        return np.asarray(fn(x, fmt=fmt, mode=mode), dtype=np.float64)


def verify_fp16_patterns(progress: ProgressFn | None = None) -> list[Row]:
    """All 65,536 fp16 bit patterns through every unary path.

    Decode (``from_bits`` vs the numpy float16 view), encode (``to_bits`` of numpy's values
    gives the pattern back; NaNs as NaNs), the round trip ``to_bits(from_bits(b))``, rounding
    an fp16 value to fp16 is the identity in every mode and input dtype, fp16 -> fp32 (vs
    numpy and torch), and sqrt in every deterministic mode (vs softfloatpy ``f16_sqrt``, gmpy2
    ``ieee(16)`` and numpy float16 sqrt), when ``fpanalysis.ops.sqrt`` exists.

    >>> all(r["mismatches"] in (0, None) for r in verify_fp16_patterns())
    True
    """
    rows: list[Row] = []
    bits, h = _fp16_all()
    ref = _wide(h, np.float64)
    isnan = np.isnan(ref)

    def decode() -> tuple[int, int, str]:
        return _compare(bits, from_bits(bits, "fp16"), ref)

    rows.append(_row("decode all patterns", "fp16", "-", "numpy float16 view", *_timed(decode)))

    def encode() -> tuple[int, int, str]:
        out = to_bits(ref, "fp16").astype(np.uint16)
        back = _wide(out.view(np.float16), np.float64)
        ok = (out == bits) | (isnan & np.isnan(back))
        bad = np.flatnonzero(~ok)
        first = f"value {_fmt_value(ref[bad[0]])}: ours {int(out[bad[0]]):#06x}, oracle {int(bits[bad[0]]):#06x}" if bad.size else ""
        return ok.size, bad.size, first

    rows.append(_row("encode all values", "fp16", "nearest-even", "pattern of numpy float16", *_timed(encode)))

    def round_trip() -> tuple[int, int, str]:
        out = to_bits(from_bits(bits, "fp16"), "fp16").astype(np.uint16)
        ok = (out == bits) | (isnan & np.isnan(out.view(np.float16)))
        bad = np.flatnonzero(~ok)
        first = f"pattern {int(bits[bad[0]]):#06x} -> {int(out[bad[0]]):#06x}" if bad.size else ""
        return ok.size, bad.size, first

    rows.append(_row("to_bits(from_bits(b)) == b", "fp16", "nearest-even", "identity (NaN as NaN)",
                     *_timed(round_trip)))

    for m in RoundingMode:
        def ident(m: RoundingMode = m) -> tuple[int, int, str]:
            kw = {"seed": 0} if m is RoundingMode.STOCHASTIC else {}
            n = bad = 0
            first = ""
            for x in (h, _wide(h, np.float32), ref):
                nn, bb, ff = _compare(x, round_to(x, "fp16", m, **kw), ref)
                n, bad, first = n + nn, bad + bb, first or (f"[{x.dtype}] " + ff if ff else "")
            return n, bad, first

        rows.append(_row("round_to(fp16 value) identity", "fp16", m.value,
                         "identity (float16/32/64 inputs)", *_timed(ident)))
    if progress:
        progress("fp16 patterns", 1, 3)

    ours32 = round_to(from_bits(bits, "fp16"), "fp32", dtype=np.float32)
    rows.append(_row("fp16 -> fp32", "fp16", "-", "numpy astype(float32)",
                     *_timed(lambda: _compare(bits, ours32, _wide(h, np.float32)))))
    torch = _optional("torch")
    if isinstance(torch, str):
        rows.append(_unavailable("fp16 -> fp32", "fp16", "-", "torch .float()", torch))
    else:
        ref_t = torch.from_numpy(h.copy()).float().numpy()
        rows.append(_row("fp16 -> fp32", "fp16", "-", "torch half.float()",
                         *_timed(lambda: _compare(bits, ours32, ref_t))))
    if progress:
        progress("fp16 patterns", 2, 3)
    rows += _verify_sqrt(h)
    if progress:
        progress("fp16 patterns", 3, 3)
    return rows


def _verify_sqrt(h: np.ndarray) -> list[Row]:
    rows: list[Row] = []
    fn = _sqrt_fn()
    if isinstance(fn, str):
        return [_unavailable("sqrt all fp16 values", "fp16", "all", "softfloatpy / gmpy2 / numpy", fn)]
    x = _wide(h, np.float32)
    xs = _wide(h, np.float64).tolist()
    with np.errstate(invalid="ignore"):
        ref_np = _wide(np.sqrt(h), np.float64)
    sf = _optional("softfloatpy")
    gm = _optional("gmpy2")
    for m in DETERMINISTIC_MODES:
        try:
            ours = _call_sqrt(fn, x, "fp16", m.value)
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            rows.append(_unavailable("sqrt all fp16 values", "fp16", m.value, "-",
                                     f"fpanalysis.ops.sqrt(x, 'fp16', mode=...) raised {exc!r}"))
            continue
        if m is RoundingMode.NEAREST_EVEN:
            rows.append(_row("sqrt all fp16 values", "fp16", m.value, "numpy float16 sqrt",
                             *_timed(lambda: _compare(x, ours, ref_np))))
        if isinstance(sf, str):
            rows.append(_unavailable("sqrt all fp16 values", "fp16", m.value, "softfloatpy f16_sqrt", sf))
        elif m in _SF_MODES_NAME:
            def sf_ref(m: RoundingMode = m) -> np.ndarray:
                sf.set_rounding_mode(getattr(sf.RoundingMode, _SF_MODES_NAME[m]))
                try:
                    from_b = sf.Float16.from_bytes
                    out = [sf.f16_sqrt(from_b(int(b).to_bytes(2, "big"))).to_float()
                           for b in range(1 << 16)]
                finally:
                    sf.set_rounding_mode(sf.RoundingMode.NEAR_EVEN)
                return np.array(out)

            rows.append(_row("sqrt all fp16 values", "fp16", m.value, "softfloatpy f16_sqrt",
                             *_timed(lambda: _compare(x, ours, sf_ref()))))
        if isinstance(gm, str):
            rows.append(_unavailable("sqrt all fp16 values", "fp16", m.value, "gmpy2 ieee(16)", gm))
        else:
            def gm_ref(m: RoundingMode = m) -> np.ndarray:
                ctxs = {r: gm.ieee(16) for r in ("z", "a", "n", "u", "d")}
                for key, rnd in (("z", gm.RoundToZero), ("a", gm.RoundAwayZero), ("n", gm.RoundToNearest),
                                 ("u", gm.RoundUp), ("d", gm.RoundDown)):
                    ctxs[key].round = rnd
                res = {k: np.array([float(c.sqrt(v)) for v in xs]) for k, c in ctxs.items()}
                return _derive(m, np.array(xs), res, FP16)

            label = {RoundingMode.NEAREST_AWAY: "gmpy2 ieee(16) RZ/RA + exact midpoint",
                     RoundingMode.ODD: "gmpy2 ieee(16) RZ/RA + odd last bit"}.get(m, "gmpy2 ieee(16)")
            rows.append(_row("sqrt all fp16 values", "fp16", m.value, label,
                             *_timed(lambda: _compare(x, ours, gm_ref()))))
    return rows


# --- float32 -> fp16 -------------------------------------------------------------------------


def _sweep(lo: int, hi: int, fmt: FloatFormat, oracle: Callable[[np.ndarray, np.ndarray], None],
           label: str, progress: ProgressFn | None) -> tuple[int, int, str]:
    """Compare round_to(x, fmt) with ``oracle(x, out)`` for every float32 pattern in [lo, hi)."""
    total = hi - lo
    n = bad = 0
    first = ""
    base = np.arange(min(_CHUNK, total), dtype=np.uint32)
    xbuf = np.empty(base.size, dtype=np.uint32)
    rbuf = np.empty(base.size, dtype=np.float32)
    for start in range(lo, hi, _CHUNK):
        m = min(_CHUNK, hi - start)
        xb = xbuf[:m]
        np.add(base[:m], np.uint32(start), out=xb)
        x = xb.view(np.float32)
        ref = rbuf[:m]
        oracle(x, ref)
        ours = round_to(x, fmt)
        if ours.dtype == np.float32:
            neq = ours.view(np.uint32) != ref.view(np.uint32)
        else:
            neq = ours.view(np.uint64) != _wide(ref, np.float64).view(np.uint64)
        if neq.any():
            idx = np.flatnonzero(neq)
            idx = idx[~(np.isnan(ours[idx]) & np.isnan(ref[idx]))]
            if idx.size and not first:
                i = int(idx[0])
                first = f"input {_fmt_value(x[i])}: ours {_fmt_value(ours[i])}, oracle {_fmt_value(ref[i])}"
            bad += idx.size
        n += m
        if progress:
            progress(label, start + m - lo, total)
    return n, bad, first


def _torch_half_oracle() -> Any:
    torch = _optional("torch")
    if isinstance(torch, str):
        return torch
    hbuf = torch.empty(_CHUNK, dtype=torch.float16)

    def oracle(x: np.ndarray, out: np.ndarray) -> None:
        h = hbuf[: x.size]
        h.copy_(torch.from_numpy(x))
        torch.from_numpy(out).copy_(h)

    return oracle


def verify_f32_to_fp16(exhaustive: bool = False, sample: int = 1 << 20, seed: int = 0,
                       progress: ProgressFn | None = None) -> list[Row]:
    """float32 -> fp16 nearest-even: ``round_to(x, "fp16")`` vs torch ``.half()`` and numpy
    ``astype(float16)``.

    On a stratified sample (:func:`stratified_float32`, float32 and float64 input paths, and
    ``to_bits`` vs numpy's bit patterns) and, with ``exhaustive=True``, on all 2**32 float32
    bit patterns against torch (chunks of 2**24).  NaNs are compared as NaNs (torch quiets
    signalling-NaN payloads, numpy keeps them).

    >>> [r["mismatches"] for r in verify_f32_to_fp16(sample=1000)][:2]
    [0, 0]
    """
    rows: list[Row] = []
    x = stratified_float32(FP16, sample, seed)
    with np.errstate(all="ignore"):
        ref_np = x.astype(np.float16)
    ours = round_to(x, "fp16")
    rows.append(_row("f32 -> fp16 stratified", "fp16", "nearest-even", "numpy astype(float16)",
                     *_timed(lambda: _compare(x, ours, ref_np))))
    x64 = _wide(x, np.float64)
    rows.append(_row("f64 -> fp16 (float32 values)", "fp16", "nearest-even", "numpy astype(float16)",
                     *_timed(lambda: _compare(x64, round_to(x64, "fp16"), ref_np))))

    def enc() -> tuple[int, int, str]:
        out = to_bits(x, "fp16").astype(np.uint16)
        rb = ref_np.view(np.uint16)
        ok = (out == rb) | (np.isnan(ref_np) & np.isnan(out.view(np.float16)))
        bad = np.flatnonzero(~ok)
        first = f"input {_fmt_value(x[bad[0]])}: ours {int(out[bad[0]]):#06x}, oracle {int(rb[bad[0]]):#06x}" if bad.size else ""
        return ok.size, bad.size, first

    rows.append(_row("to_bits(f32) stratified", "fp16", "nearest-even", "numpy float16 bit pattern", *_timed(enc)))
    oracle = _torch_half_oracle()
    if isinstance(oracle, str):
        rows.append(_unavailable("f32 -> fp16 stratified", "fp16", "nearest-even", "torch .half()", oracle))
        if exhaustive:
            rows.append(_unavailable("f32 -> fp16 all 2^32", "fp16", "nearest-even", "torch .half()", oracle))
        return rows
    ref_t = np.empty(x.size, dtype=np.float32)
    for s in range(0, x.size, _CHUNK):
        oracle(x[s:s + _CHUNK], ref_t[s:s + _CHUNK])
    rows.append(_row("f32 -> fp16 stratified", "fp16", "nearest-even", "torch .half()",
                     *_timed(lambda: _compare(x, ours, ref_t))))
    if exhaustive:
        rows.append(_row("f32 -> fp16 all 2^32", "fp16", "nearest-even", "torch .half()",
                         *_timed(lambda: _sweep(0, 1 << 32, FP16, oracle, "f32->fp16 2^32", progress))))
    return rows


# --- bf16 and fp8 vs ml_dtypes ---------------------------------------------------------------

_ML_NAMES = {"bf16": "bfloat16", "fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


def _ml_oracle(dt: Any) -> Callable[[np.ndarray, np.ndarray], None]:
    def oracle(x: np.ndarray, out: np.ndarray) -> None:
        with np.errstate(all="ignore"):
            out[...] = x.astype(dt).astype(np.float32)

    return oracle


def verify_bf16_fp8(exhaustive: bool = False, sample: int = 1 << 20, seed: int = 0, fp8_sweep: bool = True,
                    progress: ProgressFn | None = None) -> list[Row]:
    """bf16, fp8 E4M3FN and fp8 E5M2 against ml_dtypes.

    For each format: ``from_bits`` of every bit pattern vs the ml_dtypes view, ``to_bits`` of
    every value vs its pattern, float32 -> format nearest-even (``round_to`` and ``to_bits``)
    on a stratified sample vs ``astype``; with ``fp8_sweep`` every float32 whose magnitude
    lies in ``[2**(emin-p-2), 2**(emax+3))`` (both signs) for the fp8 formats; with
    ``exhaustive`` all 2**32 float32 patterns for bf16.
    """
    md = _optional("ml_dtypes")
    fmts = [BF16, FP8_E4M3FN, FP8_E5M2]
    if isinstance(md, str):
        return [_unavailable("vs ml_dtypes", f.name, "-", "ml_dtypes", md) for f in fmts]
    rows: list[Row] = []
    for f in fmts:
        dt = getattr(md, _ML_NAMES[f.name])
        nbits = 16 if f is BF16 else 8
        udt = np.uint16 if nbits == 16 else np.uint8
        bits = np.arange(1 << nbits, dtype=np.uint32).astype(udt)
        vals = _wide(bits.view(dt), np.float64)
        rows.append(_row("decode all patterns", f.name, "-", "ml_dtypes view",
                         *_timed(lambda: _compare(bits, from_bits(bits, f), vals))))

        def enc_all() -> tuple[int, int, str]:
            out = to_bits(vals, f).astype(udt)
            ok = (out == bits) | (np.isnan(vals) & np.isnan(_wide(out.view(dt))))
            bad = np.flatnonzero(~ok)
            first = f"value {_fmt_value(vals[bad[0]])}: ours {int(out[bad[0]]):#x}, oracle {int(bits[bad[0]]):#x}" if bad.size else ""
            return ok.size, bad.size, first

        rows.append(_row("encode all values", f.name, "nearest-even", "ml_dtypes pattern", *_timed(enc_all)))
        x = stratified_float32(f, sample, seed)
        with np.errstate(all="ignore"):
            ref = x.astype(dt)
        rows.append(_row("f32 -> fmt stratified", f.name, "nearest-even", "ml_dtypes astype",
                         *_timed(lambda: _compare(x, round_to(x, f), _wide(ref, np.float64)))))

        def enc() -> tuple[int, int, str]:
            out = to_bits(x, f).astype(udt)
            rb = ref.view(udt)
            ok = (out == rb) | (np.isnan(_wide(ref)) & np.isnan(_wide(out.view(dt))))
            bad = np.flatnonzero(~ok)
            first = f"input {_fmt_value(x[bad[0]])}: ours {int(out[bad[0]]):#x}, oracle {int(rb[bad[0]]):#x}" if bad.size else ""
            return ok.size, bad.size, first

        rows.append(_row("to_bits(f32) stratified", f.name, "nearest-even", "ml_dtypes bit pattern", *_timed(enc)))
        if f is not BF16 and fp8_sweep:
            lo_e = f.emin - f.p - 2 + 127
            hi_e = f.emax + 3 + 127
            n = bad = 0
            first = ""
            t0 = time.perf_counter()
            for s in (0, 0x80000000):
                nn, bb, ff = _sweep(s + (lo_e << 23), s + (hi_e << 23), f, _ml_oracle(dt),
                                    f"f32->{f.name} range", progress)
                n, bad, first = n + nn, bad + bb, first or ff
            rows.append(_row("f32 -> fmt all float32 in range", f.name, "nearest-even", "ml_dtypes astype",
                             n, bad, first, time.perf_counter() - t0))
        if f is BF16 and exhaustive:
            rows.append(_row("f32 -> bf16 all 2^32", f.name, "nearest-even", "ml_dtypes astype",
                             *_timed(lambda: _sweep(0, 1 << 32, BF16, _ml_oracle(dt), "f32->bf16 2^32", progress))))
    return rows


# --- directed modes vs gmpy2 and softfloat ---------------------------------------------------

_SF_MODES_NAME = {
    RoundingMode.NEAREST_EVEN: "NEAR_EVEN",
    RoundingMode.NEAREST_AWAY: "NEAR_MAX_MAG",
    RoundingMode.TOWARD_ZERO: "MIN_MAG",
    RoundingMode.UP: "MAX",
    RoundingMode.DOWN: "MIN",
}


def _is_ieee(fmt: FloatFormat) -> bool:
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


def _derive(mode: RoundingMode, x: np.ndarray, res: dict[str, np.ndarray], fmt: FloatFormat) -> np.ndarray:
    """Result of ``mode`` from MPFR results: n, z, a, u, d = nearest, toward zero, away, up, down."""
    if mode is RoundingMode.NEAREST_EVEN:
        return res["n"]
    if mode is RoundingMode.TOWARD_ZERO:
        return res["z"]
    if mode is RoundingMode.UP:
        return res["u"]
    if mode is RoundingMode.DOWN:
        return res["d"]
    z, a = res["z"], res["a"]
    if fmt.p > 52:
        raise ValueError("the midpoint test is exact only for p <= 52")
    with np.errstate(invalid="ignore"):
        if mode is RoundingMode.NEAREST_AWAY:
            mid = (z + a) / 2.0  # exact: neighbours with p <= 52 bits
            return np.where(np.abs(x) >= np.abs(mid), a, z)
        inexact = z != x
        return np.where(inexact & ~_odd_last_bit(z, fmt), a, z)


def _apply_policy(x: np.ndarray, r: np.ndarray, fmt: FloatFormat, mode: RoundingMode) -> np.ndarray:
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


def _gmpy2_results(gm: Any, fmt: FloatFormat, xs: list[float], bounded: bool, keys: Iterable[str]) -> dict[str, np.ndarray]:
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


def gmpy2_round(x: np.ndarray, fmt: "str | FloatFormat", mode: "str | RoundingMode",
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
    x = _wide(x).reshape(-1)
    need = {RoundingMode.NEAREST_EVEN: ["n"], RoundingMode.TOWARD_ZERO: ["z"], RoundingMode.UP: ["u"],
            RoundingMode.DOWN: ["d"], RoundingMode.NEAREST_AWAY: ["z", "a"], RoundingMode.ODD: ["z", "a"]}
    if m is RoundingMode.STOCHASTIC:
        raise ValueError("stochastic rounding has no deterministic oracle")
    res = _gmpy2_results(gm, f, x.tolist(), False, need[m])
    r = _derive(m, x, res, f)
    out = _apply_policy(x, r, f, m)
    if not return_overflow:
        return out
    with np.errstate(invalid="ignore"):
        over = np.isfinite(x) & (np.abs(r) > f.max)
    return out, over


def oracle_stats(x: np.ndarray, ref: np.ndarray, over: np.ndarray, fmt: "str | FloatFormat") -> tuple[int, int, int, int]:
    """(inexact, overflow, subnormal, flushed) counts, as :class:`fpanalysis.RoundingStats`
    defines them, from oracle results ``ref`` and the overflow mask ``over``."""
    f = get_format(fmt)
    x = _wide(x).reshape(-1)
    ref = _wide(ref).reshape(-1)
    fin = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        inexact = fin & ~_same(ref, x)
        sub = fin & np.isfinite(ref) & (ref != 0) & (np.abs(ref) < f.min_normal)
        flushed = fin & (x != 0) & (ref == 0)
    return (int(inexact.sum()), int(np.count_nonzero(over)), int(sub.sum()), int(flushed.sum()))


__all__ += ["gmpy2_round", "oracle_stats"]


def _softfloat_round(sf: Any, fmt: FloatFormat, x: np.ndarray, mode: RoundingMode) -> np.ndarray | None:
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
    sf.set_rounding_mode(getattr(sf.RoundingMode, _SF_MODES_NAME[mode]))
    try:
        return np.array([cvt(src(v)).to_float() for v in x.tolist()])
    finally:
        sf.set_rounding_mode(sf.RoundingMode.NEAR_EVEN)


_NATIVE = {"fp16": ("numpy", "float16"), "bf16": ("ml_dtypes", "bfloat16"),
           "fp8_e4m3fn": ("ml_dtypes", "float8_e4m3fn"), "fp8_e5m2": ("ml_dtypes", "float8_e5m2")}


def _native_dtype(fmt: FloatFormat) -> Any:
    mod, name = _NATIVE.get(fmt.name, (None, None))
    if mod is None:
        return None
    lib = _optional(mod)
    return None if isinstance(lib, str) else np.dtype(getattr(lib, name))


def verify_directed(n: int = 200_000, seed: int = 0, formats: Sequence["str | FloatFormat"] | None = None,
                    modes: Sequence["str | RoundingMode"] | None = None,
                    progress: ProgressFn | None = None) -> list[Row]:
    """Every deterministic mode, for presets and policy variants, vs gmpy2 and softfloatpy.

    ``n`` inputs per format from :func:`directed_inputs` (three quarters float64, one quarter
    the same generator rounded to float32, so both input paths are checked).  For IEEE-style
    formats (inf on overflow, subnormals) nearest-even and the directed modes use MPFR's own
    bounded exponent range; other policies and the derived modes (nearest-away, odd) use
    :func:`gmpy2_round`.  softfloatpy covers fp16 (float64 and float32 inputs), bf16 (float32
    inputs) and fp32 (float64 inputs) in its five modes.  Per format, two more rows cover all
    modes at once: ``return_stats=True`` (values and the four counts vs :func:`oracle_stats`)
    and, where ``round_to`` supports it, the native storage dtype (``dtype=numpy.float16`` or
    the ml_dtypes type).
    """
    gm = _optional("gmpy2")
    sf = _optional("softfloatpy")
    fmts = [get_format(f) for f in formats] if formats is not None else DIRECTED_FORMATS
    mlist = [RoundingMode.parse(m) for m in modes] if modes is not None else DETERMINISTIC_MODES
    if isinstance(gm, str):
        return [_unavailable("round_to", f.name, m.value, "gmpy2", gm) for f in fmts for m in mlist]
    key_of = {RoundingMode.NEAREST_EVEN: "n", RoundingMode.TOWARD_ZERO: "z", RoundingMode.UP: "u",
              RoundingMode.DOWN: "d"}
    rows: list[Row] = []
    for fi, f in enumerate(fmts):
        n64 = n - n // 4
        x64 = directed_inputs(f, n64, seed + fi)
        x32 = _wide(directed_inputs(f, n - n64, seed + 1000 + fi), np.float32)
        inputs = [x64, x32]
        native = _native_dtype(f)
        st = {"n": 0, "bad": 0, "first": "", "t": 0.0}
        nat = {"n": 0, "bad": 0, "first": "", "t": 0.0, "skip": ""}
        for m in mlist:
            t0 = time.perf_counter()
            ext = [gmpy2_round(x, f, m, return_overflow=True) for x in inputs]
            t_ext = time.perf_counter() - t0
            direct = _is_ieee(f) and m in key_of
            if direct:
                label = {"fp16": "gmpy2 ieee(16)", "fp32": "gmpy2 ieee(32)"}.get(f.name, "gmpy2 bounded context")
            elif m is RoundingMode.NEAREST_AWAY:
                label = "gmpy2 RZ/RA + exact midpoint"
            elif m is RoundingMode.ODD:
                label = "gmpy2 RZ/RA + odd last bit"
            else:
                label = "gmpy2 + format policy"

            def check(m: RoundingMode = m, direct: bool = direct) -> tuple[int, int, str]:
                n_all = bad = 0
                first = ""
                for x, (ref, _) in zip(inputs, ext):
                    if direct:
                        ref = _gmpy2_results(gm, f, _wide(x).tolist(), True, [key_of[m]])[key_of[m]]
                    nn, bb, ff = _compare(x, round_to(x, f, m), ref)
                    n_all, bad = n_all + nn, bad + bb
                    first = first or (f"[{x.dtype}] {ff}" if ff else "")
                return n_all, bad, first

            nn, bb, ff, tt = _timed(check)
            rows.append(_row("round_to", f.name, m.value, label, nn, bb, ff, tt + (0 if direct else t_ext)))

            # return_stats: the values and the counts
            t0 = time.perf_counter()
            for x, (ref, over) in zip(inputs, ext):
                y, stats = round_to(x, f, m, return_stats=True)
                nn, bb, ff = _compare(x, y, ref)
                want = oracle_stats(x, ref, over, f)
                got = (stats.inexact, stats.overflow, stats.subnormal, stats.flushed)
                st["n"] += nn
                st["bad"] += bb + (0 if got == want and stats.n == x.size else 1)
                if not st["first"]:
                    if ff:
                        st["first"] = f"[{m.value}, {x.dtype}] {ff}"
                    elif got != want:
                        st["first"] = (f"[{m.value}, {x.dtype}] (inexact, overflow, subnormal, flushed) = {got}, "
                                       f"oracle {want}")
            st["t"] += time.perf_counter() - t0

            # native storage dtype
            if native is not None and not nat["skip"]:
                t0 = time.perf_counter()
                for x, (ref, _) in zip(inputs, ext):
                    try:
                        y = round_to(x, f, m, dtype=native)
                    except (ValueError, TypeError) as exc:
                        nat["skip"] = f"round_to(..., dtype={native}) is not supported ({exc})"
                        break
                    ok_dtype = np.asarray(y).dtype == native
                    nn, bb, ff = _compare(x, _wide(y), ref)
                    nat["n"] += nn
                    nat["bad"] += bb + (0 if ok_dtype else 1)
                    if not nat["first"]:
                        nat["first"] = (f"[{m.value}, {x.dtype}] {ff}" if ff else
                                        ("" if ok_dtype else f"result dtype {np.asarray(y).dtype}, not {native}"))
                nat["t"] += time.perf_counter() - t0

            if f.name in ("fp16", "bf16", "fp32") and m in _SF_MODES_NAME:
                if isinstance(sf, str):
                    rows.append(_unavailable("round_to", f.name, m.value, "softfloatpy", sf))
                    continue
                name = {"fp16": "f64/f32_to_f16", "bf16": "f32_to_bf16", "fp32": "f64_to_f32"}[f.name]

                def check_sf(m: RoundingMode = m) -> tuple[int, int, str]:
                    n_all = bad = 0
                    first = ""
                    for x in inputs:
                        ref = _softfloat_round(sf, f, x, m)
                        if ref is None:
                            continue
                        nn, bb, ff = _compare(x, round_to(x, f, m), ref)
                        n_all, bad = n_all + nn, bad + bb
                        first = first or (f"[{x.dtype}] {ff}" if ff else "")
                    return n_all, bad, first

                rows.append(_row("round_to", f.name, m.value, f"softfloatpy {name}", *_timed(check_sf)))
        modes_label = "all" if len(mlist) > 1 else mlist[0].value
        rows.append(_row("round_to return_stats (values, counts)", f.name, modes_label,
                         "gmpy2 + counts from oracle results", st["n"], st["bad"], st["first"], st["t"]))
        if native is not None:
            if nat["skip"]:
                rows.append(_unavailable(f"round_to dtype={native}", f.name, modes_label, "gmpy2", nat["skip"]))
            else:
                rows.append(_row(f"round_to dtype={native}", f.name, modes_label, "gmpy2", nat["n"], nat["bad"],
                                 nat["first"], nat["t"]))
        if progress:
            progress("directed modes", fi + 1, len(fmts))
    return rows


# --- stochastic rounding ---------------------------------------------------------------------


def _neighbours(x: float, fmt: FloatFormat) -> tuple[float, float]:
    """The format numbers (in the exponent-unbounded-above format) just below and above |x|,
    as an MPFR oracle computes them: (toward zero, away from zero)."""
    gm = importlib.import_module("gmpy2")
    r = _gmpy2_results(gm, fmt, [abs(x)], False, ["z", "a"])
    return float(r["z"][0]), float(r["a"][0])


def _binom_bounds(n: int, prob: float, delta: float) -> tuple[int, int]:
    """Counts k with P(K < lo) + P(K > hi) <= delta for K ~ Binomial(n, prob)."""
    from scipy.stats import binom

    if prob <= 0.0:
        return 0, 0
    if prob >= 1.0:
        return n, n
    lo = int(binom.ppf(delta / 2, n, prob))
    hi = int(binom.isf(delta / 2, n, prob))
    return max(lo - 1, 0), min(hi + 1, n)


#: (format, value, random_bits or None, input dtype) for the statistical checks.
_SR_CASES: list[tuple[str, float, int | None, type]] = [
    ("fp16", 1.0 + 0.3 * 2.0**-10, None, np.float64),
    ("fp16", -(1.0 + 0.7 * 2.0**-10), None, np.float64),
    ("fp16", 1.0 + 0.5 * 2.0**-10, None, np.float64),
    ("fp16", 1.0 + 2.0**-30, None, np.float64),
    ("fp16", 1.0 + (1.0 - 2.0**-20) * 2.0**-10, None, np.float64),
    ("fp16", 0.75 * 2.0**-24, None, np.float64),
    ("fp16", -5.375 * 2.0**-24, None, np.float32),
    ("fp16", 1000.1, None, np.float32),
    ("fp16", 65504.0 + 0.25 * 32.0, None, np.float64),
    ("bf16", 1.0 / 3.0, None, np.float32),
    ("fp8_e4m3fn", 0.1, None, np.float64),
    ("fp8_e5m2", -1000.3, None, np.float64),
    ("fp16", 1.0 + 0.3 * 2.0**-10, 1, np.float64),
    ("fp16", 1.0 + 0.3 * 2.0**-10, 2, np.float64),
    ("fp16", 1.0 + 0.3 * 2.0**-10, 4, np.float64),
    ("fp16", 1.0 + 0.3 * 2.0**-10, 8, np.float64),
    ("fp16", 1.0 + 0.5 * 2.0**-10, 1, np.float64),
    ("bf16", -1.0 / 3.0, 3, np.float32),
]


def verify_stochastic(seed: int = 0, n: int = 1_000_000, delta: float = 1e-6,
                      progress: ProgressFn | None = None) -> list[Row]:
    """Statistical and exact checks of stochastic rounding.

    * For each case of ``_SR_CASES``: ``n`` roundings of one value give only its two
      neighbours ``lo < hi`` (the one above ``max`` becoming inf or NaN per the format's
      policy); the number rounded away from zero lies in the two-sided binomial interval
      (failure probability ``delta``) for ``P = frac = (|x| - lo) / (hi - lo)`` (exact, with
      Fractions), or ``floor(frac * 2**k) / 2**k`` with ``random_bits=k``; the mean is then
      within ``(hi - lo) * max|K - nP| / n`` of ``x`` (unbiasedness).
    * Bitwise: for 50,000 varied inputs, rounds up exactly when the documented counter-based
      random number (``fpanalysis._bits.counter_random_numpy``) is below ``floor(frac * 2**64)``
      (the fraction computed with Fractions).
    * Same seed twice gives the same bits; another seed or stream gives other bits; 1 vs 2
      numba threads give identical bits.
    """
    from ._bits import counter_random_numpy, stream_key

    rows: list[Row] = []
    gm = _optional("gmpy2")
    scipy = _optional("scipy.stats")
    if isinstance(gm, str) or isinstance(scipy, str):
        reason = gm if isinstance(gm, str) else scipy
        return [_unavailable("stochastic", "-", "stochastic", "gmpy2 + binomial", str(reason))]
    total_mean = 0
    mean_bad = 0
    mean_first = ""
    t_mean = 0.0
    for ci, (fname, value, k, dtype) in enumerate(_SR_CASES):
        t0 = time.perf_counter()
        f = get_format(fname)
        xv = float(dtype(value))
        lo, hi = _neighbours(xv, f)
        frac = (Fraction(abs(xv)) - Fraction(lo)) / (Fraction(hi) - Fraction(lo))
        prob = frac if k is None else Fraction(math.floor(frac * 2**k), 2**k)
        sgn = -1.0 if xv < 0 else 1.0
        hi_out = float(_apply_policy(np.array([xv]), np.array([sgn * hi]), f, RoundingMode.UP if xv > 0 else RoundingMode.DOWN)[0])
        lo_out = sgn * lo
        x = np.full(n, xv, dtype=dtype)
        y = np.asarray(round_to(x, f, "stochastic", seed=seed + ci, random_bits=k), dtype=np.float64)
        is_hi = _same(y, np.full(n, hi_out))
        is_lo = _same(y, np.full(n, lo_out))
        stray = int(np.count_nonzero(~(is_hi | is_lo)))
        cnt = int(np.count_nonzero(is_hi))
        blo, bhi = _binom_bounds(n, float(prob), delta)
        bad = stray + (0 if blo <= cnt <= bhi else 1)
        desc = f"x={xv!r} k={k}: P(away)={float(prob):.6g}, expected count in [{blo}, {bhi}], got {cnt}"
        if stray:
            desc += f"; {stray} results other than {lo_out!r}/{hi_out!r}"
        what = "P(away) = fraction" if k is None else f"random_bits={k}: P(away) = floor(frac*2^k)/2^k"
        rows.append(_row(f"stochastic {what}, x={xv:.9g} ({np.dtype(dtype).name})",
                         f.name, "stochastic", "exact fraction + binomial bound", n, bad,
                         desc if bad else "", time.perf_counter() - t0))
        if k is None and math.isfinite(hi_out):
            t0 = time.perf_counter()
            dev = (hi - lo) * max(abs(blo - n * float(prob)), abs(bhi - n * float(prob))) / n
            mean = float(np.mean(y))
            total_mean += 1
            if abs(mean - xv) > dev * (1 + 1e-9) + 4 * abs(xv) * 2.0**-52:
                mean_bad += 1
                mean_first = mean_first or f"x={xv!r}: mean {mean!r}, allowed deviation {dev:.3g}"
            t_mean += time.perf_counter() - t0
        if progress:
            progress("stochastic", ci + 1, len(_SR_CASES))
    rows.append(_row("stochastic mean = x (unbiased)", "several", "stochastic", "binomial bound on the mean",
                     total_mean, mean_bad, mean_first, t_mean))

    # bitwise vs the exact-fraction oracle with the documented counter stream
    t0 = time.perf_counter()
    bad = nn = 0
    first = ""
    m_bits = max(n // 20, 1000)
    for fname in ("fp16", "fp8_e5m2", "bf16"):
        f = get_format(fname)
        x = directed_inputs(f, m_bits, seed + 7)
        x = x[np.isfinite(x)]
        x = x[np.abs(x) <= f.max]
        xs = x.tolist()
        res = _gmpy2_results(gm, f, [abs(v) for v in xs], False, ["z", "a"])
        key = stream_key(seed, 3)
        rb = counter_random_numpy(key, np.arange(x.size, dtype=np.uint64)).tolist()
        for kb in (None, 5):
            want_a = np.empty(x.size)
            want_b = np.empty(x.size)
            for i, v in enumerate(xs):
                lo, hi = float(res["z"][i]), float(res["a"][i])
                if lo == hi:
                    want_a[i] = want_b[i] = v
                    continue
                fr = (Fraction(abs(v)) - Fraction(lo)) / (Fraction(hi) - Fraction(lo))
                r = rb[i]
                if kb is None:
                    # round away iff the 64-bit random integer r is below frac * 2**64; kernels
                    # that use its top 53 bits compare r >> 11 with frac * 2**53 instead (the
                    # two decisions differ only for r within 2**11 of the threshold)
                    up_a = r < math.floor(fr * 2**64)
                    up_b = (r >> 11) < math.ceil(fr * 2**53)
                else:
                    top = math.floor(fr * 2**kb)
                    up_a = up_b = top + (r >> (64 - kb)) >= 2**kb
                want_a[i] = math.copysign(hi if up_a else lo, v)
                want_b[i] = math.copysign(hi if up_b else lo, v)
            ours = round_to(x, f, "stochastic", seed=seed, stream=3, random_bits=kb)
            ok = _same(ours, want_a) | _same(ours, want_b)
            badi = np.flatnonzero(~ok)
            nn, bad = nn + x.size, bad + badi.size
            if badi.size and not first:
                i = int(badi[0])
                first = (f"[{fname} k={kb}] input {_fmt_value(x[i])}: ours {_fmt_value(ours[i])}, "
                         f"oracle {_fmt_value(want_a[i])}")
    rows.append(_row("stochastic bitwise", "fp16/e5m2/bf16", "stochastic",
                     "Fractions + documented counter RNG", nn, bad, first, time.perf_counter() - t0))

    # reproducibility and thread independence
    t0 = time.perf_counter()
    x = directed_inputs(FP16, 1 << 20, seed)
    a = round_to(x, "fp16", "stochastic", seed=seed)
    b = round_to(x, "fp16", "stochastic", seed=seed)
    n_rep, bad_rep, first_rep = _compare(x, a, b)
    rows.append(_row("stochastic same seed twice", "fp16", "stochastic", "identical bits", n_rep, bad_rep,
                     first_rep, time.perf_counter() - t0))
    inexact = ~_same(x, round_to(x, "fp16"))
    for what, kw in (("another seed", {"seed": seed + 1}), ("another stream", {"seed": seed, "stream": 1})):
        c2 = round_to(x, "fp16", "stochastic", **kw)
        differ = int(np.count_nonzero(~_same(a, c2) & inexact))
        n_inexact = int(np.count_nonzero(inexact))
        ok = differ > n_inexact // 10
        rows.append(_row(f"stochastic {what} gives other bits", "fp16", "stochastic",
                         "> 10% of inexact results differ", n_inexact, 0 if ok else 1,
                         "" if ok else f"only {differ} of {n_inexact} inexact results differ"))
    import numba

    t0 = time.perf_counter()
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = round_to(x, "fp16", "stochastic", seed=seed, random_bits=None)
        one_k = round_to(x, "fp16", "stochastic", seed=seed, random_bits=7)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = round_to(x, "fp16", "stochastic", seed=seed)
        two_k = round_to(x, "fp16", "stochastic", seed=seed, random_bits=7)
    finally:
        numba.set_num_threads(old)
    n1, b1, f1 = _compare(x, one, two)
    n2, b2, f2 = _compare(x, one_k, two_k)
    rows.append(_row("stochastic 1 vs 2 numba threads", "fp16", "stochastic", "identical bits", n1 + n2,
                     b1 + b2, f1 or f2, time.perf_counter() - t0))
    return rows


# --- everything --------------------------------------------------------------------------------


def run_all(exhaustive: bool = False, n: int = 200_000, seed: int = 0, sample: int = 1 << 20,
            progress: ProgressFn | None = None) -> list[Row]:
    """All rounding/conversion/encoding checks; ``exhaustive`` adds the 2**32 sweeps.

    >>> rows = run_all(n=1000, sample=1000)  # doctest: +SKIP
    >>> all(r["mismatches"] in (0, None) for r in rows)  # doctest: +SKIP
    True
    """
    rows = verify_fp16_patterns(progress)
    rows += verify_f32_to_fp16(exhaustive, sample, seed, progress)
    rows += verify_bf16_fp8(exhaustive, sample, seed, True, progress)
    rows += verify_directed(n, seed, progress=progress)
    rows += verify_stochastic(seed, progress=progress)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table of verification rows (``ok``/``FAIL``/``n/a`` per row).

    >>> print(format_table([{"check": "c", "format": "fp16", "mode": "-", "oracle": "o", "n": 3,
    ...                      "mismatches": 0, "first_mismatch": "", "seconds": 0.1}]))
    status  check  format  mode  oracle  n  mismatches  seconds
    ok      c      fp16    -     o       3  0           0.1
    """
    head = ["status", "check", "format", "mode", "oracle", "n", "mismatches", "seconds"]
    body = []
    for r in rows:
        mm = r["mismatches"]
        status = "n/a" if mm is None else ("ok" if mm == 0 else "FAIL")
        body.append([status, r["check"], r["format"], r["mode"], r["oracle"], str(r["n"]),
                     "-" if mm is None else str(mm), str(r.get("seconds", ""))])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip()]
    for b in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip())
    details = [f"  {r['check']} [{r['format']}, {r['mode']}, {r['oracle']}]: {r['first_mismatch']}"
               for r in rows if r["first_mismatch"]]
    if details:
        lines.append("details:")
        lines += details
    return "\n".join(lines)

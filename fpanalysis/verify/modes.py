"""Rounding modes against oracles (private part of :mod:`fpanalysis.verify`): every
deterministic mode vs gmpy2/softfloatpy, and stochastic rounding by statistics and bitwise.

Overflow, saturation and flush-to-zero policies (:mod:`fpanalysis.formats`) are applied to
MPFR results computed with an exponent range wide enough that MPFR never overflows inside the
format's range: results above ``fmt.max`` become ``+-inf`` (policy ``inf``), NaN (policy
``nan``) or ``+-max`` (policy ``saturate``, and for every policy in the modes that round
toward zero in magnitude: toward-zero, round-to-odd, up for negatives, down for positives, as
IEEE 754-2019 §7.4 prescribes for directed roundings); infinite inputs become inf, NaN or max.
For IEEE-style formats the directed modes are also checked against MPFR's own bounded exponent
range, which applies the IEEE 754 overflow rules by itself.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from .. import rounding as _rounding
from ..formats import BF16, FP8_E4M3FN, FP8_E5M2, FP16, FP32, TF32, FloatFormat, get_format
from ..rounding import RoundingMode
from .core import (
    DETERMINISTIC_MODES,
    SOFTFLOAT_MODE_NAMES,
    ProgressFn,
    Row,
    apply_policy,
    compare,
    directed_inputs,
    fmt_value,
    gmpy2_results,
    gmpy2_round,
    is_ieee,
    native_dtype,
    optional_import,
    oracle_stats,
    row,
    same_bits,
    softfloat_round,
    unavailable_row,
    widen,
)

__all__ = ["DIRECTED_FORMATS", "verify_directed", "verify_stochastic"]

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


def _compare_inputs(inputs: Sequence[np.ndarray], refs: Sequence[np.ndarray | None], fmt: FloatFormat,
                    mode: RoundingMode) -> tuple[int, int, str]:
    """round_to of each input array vs its oracle results (``None``: no oracle for that dtype)."""
    n_all = bad = 0
    first = ""
    for x, ref in zip(inputs, refs):
        if ref is None:
            continue
        nn, bb, ff = compare(x, _rounding.round_to(x, fmt, mode), ref)
        n_all, bad = n_all + nn, bad + bb
        first = first or (f"[{x.dtype}] {ff}" if ff else "")
    return n_all, bad, first


def verify_directed(n: int = 200_000, seed: int = 0, formats: Sequence[str | FloatFormat] | None = None,
                    modes: Sequence[str | RoundingMode] | None = None,
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
    gm = optional_import("gmpy2")
    sf = optional_import("softfloatpy")
    fmts = [get_format(f) for f in formats] if formats is not None else DIRECTED_FORMATS
    mlist = [RoundingMode.parse(m) for m in modes] if modes is not None else DETERMINISTIC_MODES
    if isinstance(gm, str):
        return [unavailable_row("round_to", f.name, m.value, "gmpy2", gm) for f in fmts for m in mlist]
    key_of = {RoundingMode.NEAREST_EVEN: "n", RoundingMode.TOWARD_ZERO: "z", RoundingMode.UP: "u",
              RoundingMode.DOWN: "d"}
    rows: list[Row] = []
    for fi, f in enumerate(fmts):
        n64 = n - n // 4
        x64 = directed_inputs(f, n64, seed + fi)
        x32 = widen(directed_inputs(f, n - n64, seed + 1000 + fi), np.float32)
        inputs = [x64, x32]
        native = native_dtype(f)
        st = {"n": 0, "bad": 0, "first": "", "t": 0.0}
        nat = {"n": 0, "bad": 0, "first": "", "t": 0.0, "skip": ""}
        for m in mlist:
            t0 = time.perf_counter()
            ext = [gmpy2_round(x, f, m, return_overflow=True) for x in inputs]
            t_ext = time.perf_counter() - t0
            direct = is_ieee(f) and m in key_of
            if direct:
                label = {"fp16": "gmpy2 ieee(16)", "fp32": "gmpy2 ieee(32)"}.get(f.name, "gmpy2 bounded context")
            elif m is RoundingMode.NEAREST_AWAY:
                label = "gmpy2 RZ/RA + exact midpoint"
            elif m is RoundingMode.ODD:
                label = "gmpy2 RZ/RA + odd last bit"
            else:
                label = "gmpy2 + format policy"

            t0 = time.perf_counter()
            if direct:
                refs = [gmpy2_results(gm, f, widen(x).tolist(), True, [key_of[m]])[key_of[m]] for x in inputs]
            else:
                refs = [r for r, _ in ext]
            nn, bb, ff = _compare_inputs(inputs, refs, f, m)
            tt = time.perf_counter() - t0 + (0.0 if direct else t_ext)
            rows.append(row("round_to", f.name, m.value, label, nn, bb, ff, tt))

            # return_stats: the values and the counts
            t0 = time.perf_counter()
            for x, (ref, over) in zip(inputs, ext):
                y, stats = _rounding.round_to(x, f, m, return_stats=True)
                nn, bb, ff = compare(x, y, ref)
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
                        y = _rounding.round_to(x, f, m, dtype=native)
                    except (ValueError, TypeError) as exc:
                        nat["skip"] = f"round_to(..., dtype={native}) is not supported ({exc})"
                        break
                    ok_dtype = np.asarray(y).dtype == native
                    nn, bb, ff = compare(x, widen(y), ref)
                    nat["n"] += nn
                    nat["bad"] += bb + (0 if ok_dtype else 1)
                    if not nat["first"]:
                        nat["first"] = (f"[{m.value}, {x.dtype}] {ff}" if ff else
                                        ("" if ok_dtype else f"result dtype {np.asarray(y).dtype}, not {native}"))
                nat["t"] += time.perf_counter() - t0

            if f.name in ("fp16", "bf16", "fp32") and m in SOFTFLOAT_MODE_NAMES:
                if isinstance(sf, str):
                    rows.append(unavailable_row("round_to", f.name, m.value, "softfloatpy", sf))
                    continue
                name = {"fp16": "f64/f32_to_f16", "bf16": "f32_to_bf16", "fp32": "f64_to_f32"}[f.name]

                t0 = time.perf_counter()
                refs = [softfloat_round(sf, f, x, m) for x in inputs]
                nn, bb, ff = _compare_inputs(inputs, refs, f, m)
                rows.append(row("round_to", f.name, m.value, f"softfloatpy {name}", nn, bb, ff,
                                 time.perf_counter() - t0))
        modes_label = "all" if len(mlist) > 1 else mlist[0].value
        rows.append(row("round_to return_stats (values, counts)", f.name, modes_label,
                         "gmpy2 + counts from oracle results", st["n"], st["bad"], st["first"], st["t"]))
        if native is not None:
            if nat["skip"]:
                rows.append(unavailable_row(f"round_to dtype={native}", f.name, modes_label, "gmpy2", nat["skip"]))
            else:
                rows.append(row(f"round_to dtype={native}", f.name, modes_label, "gmpy2", nat["n"], nat["bad"],
                                 nat["first"], nat["t"]))
        if progress:
            progress(fi + 1, len(fmts), "directed modes")
    return rows


# --- stochastic rounding ---------------------------------------------------------------------


def _neighbours(x: float, fmt: FloatFormat) -> tuple[float, float]:
    """The format numbers (in the exponent-unbounded-above format) just below and above |x|,
    as an MPFR oracle computes them: (toward zero, away from zero)."""
    gm = importlib.import_module("gmpy2")
    r = gmpy2_results(gm, fmt, [abs(x)], False, ["z", "a"])
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
    * Bitwise: for ``n // 20`` varied inputs per format (fp16, fp8 E5M2, bf16), the result is
      the neighbour that the documented counter-based random number ``r``
      (``fpanalysis._kernels.bits.counter_random_numpy``, stream 3) selects: away from zero when
      ``r < floor(frac * 2**64)`` or, for kernels that use the top 53 bits,
      ``r >> 11 < ceil(frac * 2**53)`` (the two rules differ only for ``r`` within ``2**11``
      of the threshold); with ``random_bits=5`` when ``floor(frac * 32) + (r >> 59) >= 32``.
      ``frac`` is computed exactly with Fractions.
    * Same seed twice gives the same bits; another seed or stream gives other bits; 1 vs 2
      numba threads give identical bits.
    """
    from .._kernels.bits import counter_random_numpy, stream_key

    rows: list[Row] = []
    gm = optional_import("gmpy2")
    scipy = optional_import("scipy.stats")
    if isinstance(gm, str) or isinstance(scipy, str):
        reason = gm if isinstance(gm, str) else scipy
        return [unavailable_row("stochastic", "-", "stochastic", "gmpy2 + binomial", str(reason))]
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
        hi_out = float(apply_policy(np.array([xv]), np.array([sgn * hi]), f, RoundingMode.UP if xv > 0 else RoundingMode.DOWN)[0])
        lo_out = sgn * lo
        x = np.full(n, xv, dtype=dtype)
        y = np.asarray(_rounding.round_to(x, f, "stochastic", seed=seed + ci, random_bits=k), dtype=np.float64)
        is_hi = same_bits(y, np.full(n, hi_out))
        is_lo = same_bits(y, np.full(n, lo_out))
        stray = int(np.count_nonzero(~(is_hi | is_lo)))
        cnt = int(np.count_nonzero(is_hi))
        blo, bhi = _binom_bounds(n, float(prob), delta)
        bad = stray + (0 if blo <= cnt <= bhi else 1)
        desc = f"x={xv!r} k={k}: P(away)={float(prob):.6g}, expected count in [{blo}, {bhi}], got {cnt}"
        if stray:
            desc += f"; {stray} results other than {lo_out!r}/{hi_out!r}"
        what = "P(away) = fraction" if k is None else f"random_bits={k}: P(away) = floor(frac*2^k)/2^k"
        rows.append(row(f"stochastic {what}, x={xv:.9g} ({np.dtype(dtype).name})",
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
            progress(ci + 1, len(_SR_CASES), "stochastic")
    rows.append(row("stochastic mean = x (unbiased)", "several", "stochastic", "binomial bound on the mean",
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
        res = gmpy2_results(gm, f, [abs(v) for v in xs], False, ["z", "a"])
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
            ours = _rounding.round_to(x, f, "stochastic", seed=seed, stream=3, random_bits=kb)
            ok = same_bits(ours, want_a) | same_bits(ours, want_b)
            badi = np.flatnonzero(~ok)
            nn, bad = nn + x.size, bad + badi.size
            if badi.size and not first:
                i = int(badi[0])
                first = (f"[{fname} k={kb}] input {fmt_value(x[i])}: ours {fmt_value(ours[i])}, "
                         f"oracle {fmt_value(want_a[i])}")
    rows.append(row("stochastic bitwise", "fp16/e5m2/bf16", "stochastic",
                     "Fractions + documented counter RNG", nn, bad, first, time.perf_counter() - t0))

    # reproducibility and thread independence
    t0 = time.perf_counter()
    x = directed_inputs(FP16, 1 << 20, seed)
    a = _rounding.round_to(x, "fp16", "stochastic", seed=seed)
    b = _rounding.round_to(x, "fp16", "stochastic", seed=seed)
    n_rep, bad_rep, first_rep = compare(x, a, b)
    rows.append(row("stochastic same seed twice", "fp16", "stochastic", "identical bits", n_rep, bad_rep,
                     first_rep, time.perf_counter() - t0))
    inexact = ~same_bits(x, _rounding.round_to(x, "fp16"))
    for what, kw in (("another seed", {"seed": seed + 1}), ("another stream", {"seed": seed, "stream": 1})):
        c2 = _rounding.round_to(x, "fp16", "stochastic", **kw)
        differ = int(np.count_nonzero(~same_bits(a, c2) & inexact))
        n_inexact = int(np.count_nonzero(inexact))
        ok = differ > n_inexact // 10
        rows.append(row(f"stochastic {what} gives other bits", "fp16", "stochastic",
                         "> 10% of inexact results differ", n_inexact, 0 if ok else 1,
                         "" if ok else f"only {differ} of {n_inexact} inexact results differ"))
    import numba

    t0 = time.perf_counter()
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _rounding.round_to(x, "fp16", "stochastic", seed=seed, random_bits=None)
        one_k = _rounding.round_to(x, "fp16", "stochastic", seed=seed, random_bits=7)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = _rounding.round_to(x, "fp16", "stochastic", seed=seed)
        two_k = _rounding.round_to(x, "fp16", "stochastic", seed=seed, random_bits=7)
    finally:
        numba.set_num_threads(old)
    n1, b1, f1 = compare(x, one, two)
    n2, b2, f2 = compare(x, one_k, two_k)
    rows.append(row("stochastic 1 vs 2 numba threads", "fp16", "stochastic", "identical bits", n1 + n2,
                     b1 + b2, f1 or f2, time.perf_counter() - t0))
    return rows



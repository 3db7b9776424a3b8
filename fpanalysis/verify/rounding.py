"""Verification of rounding, conversions and bit encodings against independent oracles.

Each ``verify_*`` function compares :func:`fpanalysis.round_to`, :func:`fpanalysis.to_bits`
and :func:`fpanalysis.from_bits` with libraries that implement the same arithmetic
independently, and returns one row per comparison::

    {"check", "format", "mode", "oracle", "n", "mismatches", "first_mismatch", "seconds"}

``mismatches`` is 0 when the check passed, the number of disagreeing inputs otherwise, and
``-1`` when the check could not run (an oracle library or the function under test is missing;
``first_mismatch`` then says why).  ``first_mismatch`` describes the first disagreement.
``progress(done, total, desc)`` is called as long checks advance.

Oracles: numpy ``float16`` and torch ``.half()`` (fp16 decode, float32 -> fp16 nearest-even);
ml_dtypes (bf16, fp8 E4M3FN, fp8 E5M2); gmpy2 / MPFR contexts (every deterministic mode, any
``(p, emin, emax)``; see :mod:`fpanalysis.verify.core` for the exponent convention and how
nearest-away and round-to-odd are derived); softfloatpy (Berkeley SoftFloat 3: ``f64_to_f16``,
``f32_to_f16``, ``f32_to_bf16``, ``f64_to_f32``, ``f16_sqrt`` in its five modes; it has no
round-to-odd); exact rationals (``fractions.Fraction``) and binomial tolerances for
stochastic rounding.  The optional libraries (torch, gmpy2, softfloatpy, ml_dtypes) are
imported inside the checks; a missing one gives rows with ``mismatches == -1``.

>>> rows = verify_directed(n=2000, seed=0, formats=["fp16"], modes=["nearest-even"])
>>> [r["oracle"] for r in rows][:2], all(r["mismatches"] in (0, -1) for r in rows)
(['gmpy2 ieee(16)', 'softfloatpy f64/f32_to_f16'], True)
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import rounding as _rounding
from ..formats import BF16, FP8_E4M3FN, FP8_E5M2, FP16, FloatFormat
from ..rounding import RoundingMode
from .core import (
    CHUNK,
    DETERMINISTIC_MODES,
    SOFTFLOAT_MODE_NAMES,
    ProgressFn,
    Row,
    compare,
    derive,
    directed_inputs,
    fmt_value,
    gmpy2_round,
    optional_import,
    oracle_stats,
    row,
    stratified_float32,
    timed,
    unavailable_row,
    widen,
)
from .modes import DIRECTED_FORMATS, verify_directed, verify_stochastic

__all__ = [
    "DIRECTED_FORMATS",
    "ProgressFn",
    "Row",
    "directed_inputs",
    "gmpy2_round",
    "oracle_stats",
    "run_all",
    "stratified_float32",
    "verify_bf16_fp8",
    "verify_directed",
    "verify_f32_to_fp16",
    "verify_fp16_patterns",
    "verify_stochastic",
]


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

    >>> all(r["mismatches"] in (0, -1) for r in verify_fp16_patterns())
    True
    """
    rows: list[Row] = []
    bits, h = _fp16_all()
    ref = widen(h, np.float64)
    isnan = np.isnan(ref)

    def decode() -> tuple[int, int, str]:
        return compare(bits, _rounding.from_bits(bits, "fp16"), ref)

    rows.append(row("decode all patterns", "fp16", "-", "numpy float16 view", *timed(decode)))

    def encode() -> tuple[int, int, str]:
        out = _rounding.to_bits(ref, "fp16").astype(np.uint16)
        back = widen(out.view(np.float16), np.float64)
        ok = (out == bits) | (isnan & np.isnan(back))
        bad = np.flatnonzero(~ok)
        first = f"value {fmt_value(ref[bad[0]])}: ours {int(out[bad[0]]):#06x}, oracle {int(bits[bad[0]]):#06x}" if bad.size else ""
        return ok.size, bad.size, first

    rows.append(row("encode all values", "fp16", "nearest-even", "pattern of numpy float16", *timed(encode)))

    def round_trip() -> tuple[int, int, str]:
        out = _rounding.to_bits(_rounding.from_bits(bits, "fp16"), "fp16").astype(np.uint16)
        ok = (out == bits) | (isnan & np.isnan(out.view(np.float16)))
        bad = np.flatnonzero(~ok)
        first = f"pattern {int(bits[bad[0]]):#06x} -> {int(out[bad[0]]):#06x}" if bad.size else ""
        return ok.size, bad.size, first

    rows.append(row("to_bits(from_bits(b)) == b", "fp16", "nearest-even", "identity (NaN as NaN)",
                     *timed(round_trip)))

    for m in RoundingMode:
        def ident(m: RoundingMode = m) -> tuple[int, int, str]:
            kw = {"seed": 0} if m is RoundingMode.STOCHASTIC else {}
            n = bad = 0
            first = ""
            for x in (h, widen(h, np.float32), ref):
                nn, bb, ff = compare(x, _rounding.round_to(x, "fp16", m, **kw), ref)
                n, bad, first = n + nn, bad + bb, first or (f"[{x.dtype}] " + ff if ff else "")
            return n, bad, first

        rows.append(row("round_to(fp16 value) identity", "fp16", m.value,
                         "identity (float16/32/64 inputs)", *timed(ident)))
    if progress:
        progress(1, 3, "fp16 patterns")

    ours32 = _rounding.round_to(_rounding.from_bits(bits, "fp16"), "fp32", dtype=np.float32)
    rows.append(row("fp16 -> fp32", "fp16", "-", "numpy astype(float32)",
                     *timed(lambda: compare(bits, ours32, widen(h, np.float32)))))
    torch = optional_import("torch")
    if isinstance(torch, str):
        rows.append(unavailable_row("fp16 -> fp32", "fp16", "-", "torch .float()", torch))
    else:
        ref_t = torch.from_numpy(h.copy()).float().numpy()
        rows.append(row("fp16 -> fp32", "fp16", "-", "torch half.float()",
                         *timed(lambda: compare(bits, ours32, ref_t))))
    if progress:
        progress(2, 3, "fp16 patterns")
    rows += _verify_sqrt(h)
    if progress:
        progress(3, 3, "fp16 patterns")
    return rows


def _verify_sqrt(h: np.ndarray) -> list[Row]:
    rows: list[Row] = []
    fn = _sqrt_fn()
    if isinstance(fn, str):
        return [unavailable_row("sqrt all fp16 values", "fp16", "all", "softfloatpy / gmpy2 / numpy", fn)]
    x = widen(h, np.float32)
    xs = widen(h, np.float64).tolist()
    refs: dict[tuple[RoundingMode, str], Any] = {}
    with np.errstate(invalid="ignore"):
        refs[(RoundingMode.NEAREST_EVEN, "numpy float16 sqrt")] = widen(np.sqrt(h), np.float64)
    sf = optional_import("softfloatpy")
    gm = optional_import("gmpy2")
    for m in DETERMINISTIC_MODES:
        if m in SOFTFLOAT_MODE_NAMES:
            refs[(m, "softfloatpy f16_sqrt")] = sf if isinstance(sf, str) else _softfloat_sqrt(sf, m)
    if isinstance(gm, str):
        for m in DETERMINISTIC_MODES:
            refs[(m, "gmpy2 ieee(16)")] = gm
    else:
        res = {}
        for key, rnd in (("z", gm.RoundToZero), ("a", gm.RoundAwayZero), ("n", gm.RoundToNearest),
                         ("u", gm.RoundUp), ("d", gm.RoundDown)):
            ctx = gm.ieee(16)
            ctx.round = rnd
            res[key] = np.array([float(ctx.sqrt(v)) for v in xs])
        for m in DETERMINISTIC_MODES:
            label = {RoundingMode.NEAREST_AWAY: "gmpy2 ieee(16) RZ/RA + exact midpoint",
                     RoundingMode.ODD: "gmpy2 ieee(16) RZ/RA + odd last bit"}.get(m, "gmpy2 ieee(16)")
            refs[(m, label)] = derive(m, np.array(xs), res, FP16, op="sqrt")
    warned: list[str] = []
    for m in DETERMINISTIC_MODES:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ours = _call_sqrt(fn, x, "fp16", m.value)
        except Exception as exc:  # noqa: BLE001 - reported as a failed row, not hidden
            rows.append(row("sqrt all fp16 values", "fp16", m.value, "-", 0, 1,
                             f"fpanalysis.ops.sqrt(x, 'fp16', mode=...) raised {exc!r}"))
            continue
        if caught:
            warned.append(f"{m.value}: {caught[0].category.__name__}: {caught[0].message}")
        for (mm, label), ref in refs.items():
            if mm is not m:
                continue
            if isinstance(ref, str):
                rows.append(unavailable_row("sqrt all fp16 values", "fp16", m.value, label, ref))
            else:
                rows.append(row("sqrt all fp16 values", "fp16", m.value, label, *compare(x, ours, ref),
                                 time.perf_counter() - t0))
    rows.append(row("sqrt all fp16 values: no warnings", "fp16", "all", "warnings module",
                     len(DETERMINISTIC_MODES), len(warned), "; ".join(warned[:1])))
    return rows


def _softfloat_sqrt(sf: Any, m: RoundingMode) -> np.ndarray:
    """softfloatpy ``f16_sqrt`` of every fp16 bit pattern, in order."""
    sf.set_rounding_mode(getattr(sf.RoundingMode, SOFTFLOAT_MODE_NAMES[m]))
    try:
        from_b = sf.Float16.from_bytes
        return np.array([sf.f16_sqrt(from_b(b.to_bytes(2, "big"))).to_float() for b in range(1 << 16)])
    finally:
        sf.set_rounding_mode(sf.RoundingMode.NEAR_EVEN)


# --- float32 -> fp16 -------------------------------------------------------------------------


def _native_bits_mismatch(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Indices where two arrays of a native storage dtype differ, NaNs compared as NaNs."""
    u = np.dtype(f"u{ref.dtype.itemsize}")
    idx = np.flatnonzero(ours.view(u) != ref.view(u))
    if idx.size:
        with np.errstate(invalid="ignore"):
            both_nan = np.isnan(ours[idx].astype(np.float32)) & np.isnan(ref[idx].astype(np.float32))
        idx = idx[~both_nan]
    return idx


def _sweep(lo: int, hi: int, fmt: FloatFormat, oracle: Callable[[np.ndarray, np.ndarray], None],
           native: Any, label: str, progress: ProgressFn | None) -> dict[str, tuple[int, int, str]]:
    """Every float32 pattern in ``[lo, hi)``, in chunks of 2**24: ``oracle(x, out)`` writes the
    correctly rounded values into ``out`` of the storage dtype ``native`` (float16, an ml_dtypes
    type); compared with ``round_to(x, fmt)`` (values) and, where ``round_to`` supports it,
    ``round_to(x, fmt, dtype=native)`` (bit patterns).  Returns ``{"float32": (n, mismatches,
    first), "native": ...}``; ``"native"`` is absent when that output is not supported."""
    total = hi - lo
    res = {"float32": [0, 0, ""], "native": [0, 0, ""]}
    use_native = True
    base = np.arange(min(CHUNK, total), dtype=np.uint32)
    xbuf = np.empty(base.size, dtype=np.uint32)
    rbuf = np.empty(base.size, dtype=native)
    r32buf = np.empty(base.size, dtype=np.float32)
    for start in range(lo, hi, CHUNK):
        m = min(CHUNK, hi - start)
        xb = xbuf[:m]
        np.add(base[:m], np.uint32(start), out=xb)
        x = xb.view(np.float32)
        ref = rbuf[:m]
        oracle(x, ref)
        ref32 = r32buf[:m]
        with np.errstate(invalid="ignore"):
            ref32[...] = ref  # exact: every value of the format is a float32 number
        ours = _rounding.round_to(x, fmt)
        if ours.dtype == np.float32:
            neq = ours.view(np.uint32) != ref32.view(np.uint32)
        else:
            neq = ours.view(np.uint64) != widen(ref32, np.float64).view(np.uint64)
        acc = res["float32"]
        if neq.any():
            idx = np.flatnonzero(neq)
            idx = idx[~(np.isnan(ours[idx]) & np.isnan(ref32[idx]))]
            if idx.size and not acc[2]:
                i = int(idx[0])
                acc[2] = f"input {fmt_value(x[i])}: ours {fmt_value(ours[i])}, oracle {fmt_value(ref32[i])}"
            acc[1] += idx.size
        acc[0] += m
        if use_native:
            try:
                ours_n = _rounding.round_to(x, fmt, dtype=native)
            except (ValueError, TypeError):
                use_native = False
            else:
                acc = res["native"]
                if np.asarray(ours_n).dtype != ref.dtype:
                    acc[1] += m
                    acc[2] = acc[2] or f"result dtype {np.asarray(ours_n).dtype}, not {ref.dtype}"
                else:
                    idx = _native_bits_mismatch(ours_n, ref)
                    if idx.size and not acc[2]:
                        i = int(idx[0])
                        u = np.dtype(f"u{ref.dtype.itemsize}")
                        acc[2] = (f"input {fmt_value(x[i])}: ours {int(ours_n.view(u)[i]):#x}, "
                                  f"oracle {int(ref.view(u)[i]):#x}")
                    acc[1] += idx.size
                acc[0] += m
        if progress:
            progress(start + m - lo, total, label)
    out = {k: (int(v[0]), int(v[1]), str(v[2])) for k, v in res.items()}
    if not use_native:
        del out["native"]
    return out


def _sweep_rows(check: str, fmt: FloatFormat, oracle_name: str, native: Any, ranges: list[tuple[int, int]],
                oracle: Callable[[np.ndarray, np.ndarray], None], progress: ProgressFn | None) -> list[Row]:
    """Rows for a sweep over several pattern ranges: the float32 path and the native dtype path."""
    t0 = time.perf_counter()
    tot = {"float32": [0, 0, ""], "native": [0, 0, ""]}
    has_native = True
    for lo, hi in ranges:
        got = _sweep(lo, hi, fmt, oracle, native, f"{check} [{fmt.name}]", progress)
        has_native = has_native and "native" in got
        for k, (n, bad, first) in got.items():
            tot[k][0] += n
            tot[k][1] += bad
            tot[k][2] = tot[k][2] or first
    dt = time.perf_counter() - t0
    rows = [row(check, fmt.name, "nearest-even", oracle_name, *tot["float32"], dt)]
    name = f"{check}, dtype={np.dtype(native).name}"
    if has_native:
        rows.append(row(name, fmt.name, "nearest-even", oracle_name, *tot["native"], dt))
    else:
        rows.append(unavailable_row(name, fmt.name, "nearest-even", oracle_name,
                                 f"round_to(..., dtype={np.dtype(native).name}) is not supported"))
    return rows


def _torch_half_oracle() -> Any:
    """``oracle(x, out)``: torch ``.half()`` of float32 ``x`` into ``out`` (float16 or float32)."""
    torch = optional_import("torch")
    if isinstance(torch, str):
        return torch
    hbuf = torch.empty(CHUNK, dtype=torch.float16)

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
    ours = _rounding.round_to(x, "fp16")
    rows.append(row("f32 -> fp16 stratified", "fp16", "nearest-even", "numpy astype(float16)",
                     *timed(lambda: compare(x, ours, ref_np))))
    x64 = widen(x, np.float64)
    rows.append(row("f64 -> fp16 (float32 values)", "fp16", "nearest-even", "numpy astype(float16)",
                     *timed(lambda: compare(x64, _rounding.round_to(x64, "fp16"), ref_np))))

    def enc() -> tuple[int, int, str]:
        out = _rounding.to_bits(x, "fp16").astype(np.uint16)
        rb = ref_np.view(np.uint16)
        ok = (out == rb) | (np.isnan(ref_np) & np.isnan(out.view(np.float16)))
        bad = np.flatnonzero(~ok)
        first = f"input {fmt_value(x[bad[0]])}: ours {int(out[bad[0]]):#06x}, oracle {int(rb[bad[0]]):#06x}" if bad.size else ""
        return ok.size, bad.size, first

    rows.append(row("to_bits(f32) stratified", "fp16", "nearest-even", "numpy float16 bit pattern", *timed(enc)))
    oracle = _torch_half_oracle()
    if isinstance(oracle, str):
        rows.append(unavailable_row("f32 -> fp16 stratified", "fp16", "nearest-even", "torch .half()", oracle))
        if exhaustive:
            rows.append(unavailable_row("f32 -> fp16 all 2^32", "fp16", "nearest-even", "torch .half()", oracle))
        return rows
    ref_t = np.empty(x.size, dtype=np.float32)
    for s in range(0, x.size, CHUNK):
        oracle(x[s:s + CHUNK], ref_t[s:s + CHUNK])
    rows.append(row("f32 -> fp16 stratified", "fp16", "nearest-even", "torch .half()",
                     *timed(lambda: compare(x, ours, ref_t))))
    try:
        nat = _rounding.round_to(x, "fp16", dtype=np.float16)
    except (ValueError, TypeError) as exc:
        rows.append(unavailable_row("f32 -> fp16 stratified, dtype=float16", "fp16", "nearest-even",
                                 "numpy astype(float16)", f"round_to(..., dtype=float16): {exc}"))
    else:
        idx = _native_bits_mismatch(np.asarray(nat, dtype=np.float16), ref_np)
        first = f"input {fmt_value(x[idx[0]])}: ours {fmt_value(nat[idx[0]])}, oracle {fmt_value(ref_np[idx[0]])}" if idx.size else ""
        bad = idx.size + (0 if np.asarray(nat).dtype == np.float16 else 1)
        rows.append(row("f32 -> fp16 stratified, dtype=float16", "fp16", "nearest-even",
                         "numpy astype(float16)", x.size, bad, first))
    if exhaustive:
        rows += _sweep_rows("f32 -> fp16 all 2^32", FP16, "torch .half()", np.float16, [(0, 1 << 32)],
                            oracle, progress)
    return rows


# --- bf16 and fp8 vs ml_dtypes ---------------------------------------------------------------

_ML_NAMES = {"bf16": "bfloat16", "fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


def _ml_oracle(dt: Any) -> Callable[[np.ndarray, np.ndarray], None]:
    """``oracle(x, out)``: ml_dtypes ``astype`` of float32 ``x`` into ``out`` (of type ``dt``)."""
    def oracle(x: np.ndarray, out: np.ndarray) -> None:
        with np.errstate(all="ignore"):
            out[...] = x.astype(dt)

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
    md = optional_import("ml_dtypes")
    fmts = [BF16, FP8_E4M3FN, FP8_E5M2]
    if isinstance(md, str):
        return [unavailable_row("vs ml_dtypes", f.name, "-", "ml_dtypes", md) for f in fmts]
    rows: list[Row] = []
    for f in fmts:
        rows += _check_ml_format(md, f, exhaustive, sample, seed, fp8_sweep, progress)
    return rows


def _check_ml_format(md: Any, f: FloatFormat, exhaustive: bool, sample: int, seed: int, fp8_sweep: bool,
                     progress: ProgressFn | None) -> list[Row]:
    rows: list[Row] = []
    dt = getattr(md, _ML_NAMES[f.name])
    nbits = 16 if f is BF16 else 8
    udt = np.uint16 if nbits == 16 else np.uint8
    bits = np.arange(1 << nbits, dtype=np.uint32).astype(udt)
    vals = widen(bits.view(dt), np.float64)
    rows.append(row("decode all patterns", f.name, "-", "ml_dtypes view",
                     *timed(lambda: compare(bits, _rounding.from_bits(bits, f), vals))))

    def enc_all() -> tuple[int, int, str]:
        out = _rounding.to_bits(vals, f).astype(udt)
        ok = (out == bits) | (np.isnan(vals) & np.isnan(widen(out.view(dt))))
        bad = np.flatnonzero(~ok)
        first = f"value {fmt_value(vals[bad[0]])}: ours {int(out[bad[0]]):#x}, oracle {int(bits[bad[0]]):#x}" if bad.size else ""
        return ok.size, bad.size, first

    rows.append(row("encode all values", f.name, "nearest-even", "ml_dtypes pattern", *timed(enc_all)))
    x = stratified_float32(f, sample, seed)
    with np.errstate(all="ignore"):
        ref = x.astype(dt)
    rows.append(row("f32 -> fmt stratified", f.name, "nearest-even", "ml_dtypes astype",
                     *timed(lambda: compare(x, _rounding.round_to(x, f), widen(ref, np.float64)))))

    def enc() -> tuple[int, int, str]:
        out = _rounding.to_bits(x, f).astype(udt)
        rb = ref.view(udt)
        ok = (out == rb) | (np.isnan(widen(ref)) & np.isnan(widen(out.view(dt))))
        bad = np.flatnonzero(~ok)
        first = f"input {fmt_value(x[bad[0]])}: ours {int(out[bad[0]]):#x}, oracle {int(rb[bad[0]]):#x}" if bad.size else ""
        return ok.size, bad.size, first

    rows.append(row("to_bits(f32) stratified", f.name, "nearest-even", "ml_dtypes bit pattern", *timed(enc)))
    try:
        nat = _rounding.round_to(x, f, dtype=dt)
    except (ValueError, TypeError) as exc:
        rows.append(unavailable_row(f"f32 -> fmt stratified, dtype={np.dtype(dt).name}", f.name, "nearest-even",
                                 "ml_dtypes astype", f"round_to(..., dtype={np.dtype(dt).name}): {exc}"))
    else:
        ok_dtype = np.asarray(nat).dtype == np.dtype(dt)
        idx = _native_bits_mismatch(np.asarray(nat).astype(dt), ref)
        first = (f"input {fmt_value(x[idx[0]])}: ours {fmt_value(float(nat[idx[0]]))}, "
                 f"oracle {fmt_value(float(ref[idx[0]]))}") if idx.size else ""
        rows.append(row(f"f32 -> fmt stratified, dtype={np.dtype(dt).name}", f.name, "nearest-even",
                         "ml_dtypes astype", x.size, idx.size + (0 if ok_dtype else 1), first))
    if f is not BF16 and fp8_sweep:
        lo_e = f.emin - f.p - 2 + 127
        hi_e = f.emax + 3 + 127
        ranges = [(s + (lo_e << 23), s + (hi_e << 23)) for s in (0, 0x80000000)]
        rows += _sweep_rows("f32 -> fmt all float32 in range", f, "ml_dtypes astype", dt, ranges,
                            _ml_oracle(dt), progress)
    if f is BF16 and exhaustive:
        rows += _sweep_rows("f32 -> bf16 all 2^32", f, "ml_dtypes astype", dt, [(0, 1 << 32)],
                            _ml_oracle(dt), progress)
    return rows


# --- everything --------------------------------------------------------------------------------


def run_all(exhaustive: bool = False, n: int = 100_000, seed: int = 0, sample: int = 1 << 20,
            progress: ProgressFn | None = None) -> list[Row]:
    """All rounding/conversion/encoding checks; ``exhaustive`` adds the 2**32 sweeps.

    >>> rows = run_all(n=1000, sample=1000)  # doctest: +SKIP
    >>> all(r["mismatches"] in (0, -1) for r in rows)  # doctest: +SKIP
    True
    """
    rows = verify_fp16_patterns(progress)
    rows += verify_f32_to_fp16(exhaustive, sample, seed, progress)
    rows += verify_bf16_fp8(exhaustive, sample, seed, True, progress)
    rows += verify_directed(n, seed, progress=progress)
    rows += verify_stochastic(seed, progress=progress)
    return rows



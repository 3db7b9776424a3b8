"""Binary floating-point formats as data.

A format is four numbers and two policies, in the style of CPFloat: the precision ``p``
(significand bits including the hidden bit), the exponent range ``[emin, emax]`` of normal
numbers ``m * 2**e`` with ``1 <= m < 2``, whether subnormals exist, and what happens on
overflow.  Everything else (unit roundoff, largest finite value, ...) is derived.

>>> from fpanalysis.formats import get_format
>>> fp16 = get_format("fp16")
>>> fp16.max, fp16.min_normal, fp16.min_subnormal, fp16.u
(65504.0, 6.103515625e-05, 5.960464477539063e-08, 0.00048828125)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "FloatFormat",
    "Overflow",
    "FORMATS",
    "get_format",
    "parse_format_spec",
    "format_names",
    "FP16",
    "BF16",
    "TF32",
    "FP32",
    "FP8_E4M3FN",
    "FP8_E5M2",
    "FP6_E2M3",
    "FP6_E3M2",
    "FP4_E2M1",
]


class Overflow(str, Enum):
    """What a rounding whose result exceeds the largest finite value produces.

    ``inf``: IEEE 754 behaviour (round-to-nearest gives +-inf, directed modes may give max).
    ``saturate``: every overflow (and an infinite input) gives +-max.
    ``nan``: overflow and infinite inputs give NaN (OCP fp8 E4M3FN without saturation).
    """

    INF = "inf"
    SATURATE = "saturate"
    NAN = "nan"

    @classmethod
    def parse(cls, value: "str | Overflow") -> "Overflow":
        if isinstance(value, Overflow):
            return value
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown overflow policy {value!r}; valid policies are: {valid}") from None


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format ``(p, emin, emax)`` plus policies.

    Parameters
    ----------
    name : str
        A label used in reports.
    p : int
        Precision in bits, hidden bit included (fp16: 11).  ``2 <= p <= 53``.
    emin, emax : int
        Exponent range of normal numbers (fp16: -14 and 15).
    subnormals : bool
        Whether gradual underflow exists.  Without it, results below ``min_normal`` are
        flushed to a signed zero.
    overflow : Overflow or str
        ``"inf"``, ``"saturate"`` or ``"nan"``.
    max_significand : float or None
        Largest significand at ``emax`` (in ``[1, 2)``) when it is smaller than
        ``2 - 2**(1-p)`` because a bit pattern is reserved (E4M3FN: 1.75, since 1.875 encodes
        NaN).  ``None`` means all significands are finite numbers.
    exponent_bits : int or None
        Width of the exponent field when the format has a standard bit encoding (needed only
        by ``to_bits``/``from_bits``).

    Examples
    --------
    >>> FloatFormat("my-fp12", p=7, emin=-14, emax=15).max
    65024.0
    """

    name: str
    p: int
    emin: int
    emax: int
    subnormals: bool = True
    overflow: Overflow = Overflow.INF
    max_significand: float | None = None
    exponent_bits: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overflow", Overflow.parse(self.overflow))
        if not isinstance(self.p, int) or not 2 <= self.p <= 53:
            raise ValueError(f"format {self.name!r}: precision p must be an integer in [2, 53], got {self.p!r}")
        if not (isinstance(self.emin, int) and isinstance(self.emax, int)):
            raise ValueError(f"format {self.name!r}: emin and emax must be integers")
        if not self.emin <= 0 < self.emax:
            raise ValueError(f"format {self.name!r}: need emin <= 0 < emax, got emin={self.emin}, emax={self.emax}")
        if self.emin - self.p + 1 < -1074 + 54 or self.emax > 1000:
            raise ValueError(
                f"format {self.name!r}: exponent range [{self.emin}, {self.emax}] with p={self.p} "
                "does not fit inside float64 with room for exact products; "
                "values are held in float64, so need emin - p + 1 >= -1020 and emax <= 1000"
            )
        if self.max_significand is not None:
            top = 2.0 - 2.0 ** (1 - self.p)
            q = 2.0 ** (1 - self.p)
            ok = 1.0 <= self.max_significand <= top and (self.max_significand / q).is_integer()
            if not ok:
                raise ValueError(
                    f"format {self.name!r}: max_significand must be a multiple of 2**(1-p) in [1, {top}]"
                )

    # --- derived constants -------------------------------------------------------------
    @property
    def u(self) -> float:
        """Unit roundoff for round-to-nearest, ``2**-p``."""
        return math.ldexp(1.0, -self.p)

    @property
    def eps(self) -> float:
        """Machine epsilon: the gap between 1 and the next larger number, ``2**(1-p)``."""
        return math.ldexp(1.0, 1 - self.p)

    @property
    def max(self) -> float:
        """Largest finite value."""
        sig = self.max_significand if self.max_significand is not None else 2.0 - self.eps
        return math.ldexp(sig, self.emax)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, ``2**emin``."""
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value: ``2**(emin-p+1)`` with subnormals, else ``min_normal``."""
        return math.ldexp(1.0, self.emin - self.p + 1) if self.subnormals else self.min_normal

    @property
    def has_inf(self) -> bool:
        return self.overflow is Overflow.INF

    def ulp(self, x: float) -> float:
        """Spacing of the format's numbers at ``|x|`` (``2**(max(e, emin) - p + 1)``)."""
        ax = abs(float(x))
        if ax == 0.0 or not math.isfinite(ax):
            return self.min_subnormal if ax == 0.0 else math.inf
        e = max(math.frexp(ax)[1] - 1, self.emin)
        return math.ldexp(1.0, e - self.p + 1)

    @property
    def total_bits(self) -> int | None:
        """Storage width (sign + exponent + fraction) when the encoding is known."""
        return None if self.exponent_bits is None else 1 + self.exponent_bits + self.p - 1

    def with_(self, **changes: object) -> "FloatFormat":
        """A copy with some fields changed (e.g. ``FP8_E4M3FN.with_(overflow="saturate")``)."""
        from dataclasses import replace

        return replace(self, **changes)  # type: ignore[arg-type]

    def describe(self) -> str:
        return (
            f"{self.name}: p={self.p}, emin={self.emin}, emax={self.emax}, "
            f"subnormals={'on' if self.subnormals else 'off'}, overflow={self.overflow.value}, "
            f"u={self.u:.3g}, max={self.max:.6g}, min normal={self.min_normal:.3g}, "
            f"min subnormal={self.min_subnormal:.3g}"
        )


FP16 = FloatFormat("fp16", p=11, emin=-14, emax=15, exponent_bits=5)
BF16 = FloatFormat("bf16", p=8, emin=-126, emax=127, exponent_bits=8)
TF32 = FloatFormat("tf32", p=11, emin=-126, emax=127, exponent_bits=8)
FP32 = FloatFormat("fp32", p=24, emin=-126, emax=127, exponent_bits=8)
FP8_E4M3FN = FloatFormat(
    "fp8_e4m3fn", p=4, emin=-6, emax=8, overflow=Overflow.NAN, max_significand=1.75, exponent_bits=4
)
FP8_E5M2 = FloatFormat("fp8_e5m2", p=3, emin=-14, emax=15, exponent_bits=5)
# OCP Microscaling (MX) v1.0 element formats (section 5.3): no infinity or NaN encoding, every
# exponent field finite, so an overflowing conversion saturates.  Their bit encodings (and the
# E8M0 scale format, which has no sign, zero or significand) live in fpanalysis.scaled; see
# docs/scaled_formats.md.
FP6_E2M3 = FloatFormat("fp6_e2m3", p=4, emin=0, emax=2, overflow=Overflow.SATURATE)
FP6_E3M2 = FloatFormat("fp6_e3m2", p=3, emin=-2, emax=4, overflow=Overflow.SATURATE)
FP4_E2M1 = FloatFormat("fp4_e2m1", p=2, emin=0, emax=2, overflow=Overflow.SATURATE)

FORMATS: dict[str, FloatFormat] = {
    f.name: f for f in (FP16, BF16, TF32, FP32, FP8_E4M3FN, FP8_E5M2, FP6_E2M3, FP6_E3M2, FP4_E2M1)
}
_ALIASES = {
    "half": "fp16",
    "float16": "fp16",
    "binary16": "fp16",
    "bfloat16": "bf16",
    "float32": "fp32",
    "single": "fp32",
    "binary32": "fp32",
    "e4m3": "fp8_e4m3fn",
    "e4m3fn": "fp8_e4m3fn",
    "fp8-e4m3fn": "fp8_e4m3fn",
    "float8_e4m3fn": "fp8_e4m3fn",
    "e5m2": "fp8_e5m2",
    "fp8-e5m2": "fp8_e5m2",
    "float8_e5m2": "fp8_e5m2",
    "e2m3": "fp6_e2m3",
    "float6_e2m3fn": "fp6_e2m3",
    "e3m2": "fp6_e3m2",
    "float6_e3m2fn": "fp6_e3m2",
    "e2m1": "fp4_e2m1",
    "fp4": "fp4_e2m1",
    "float4_e2m1fn": "fp4_e2m1",
}


def format_names() -> list[str]:
    """Names of the preset formats."""
    return list(FORMATS)


_SPEC_SYNTAX = "p=P,emin=EMIN,emax=EMAX[,subnormals=1|0][,overflow=inf|saturate|nan]"
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def parse_format_spec(spec: str) -> FloatFormat:
    """A format written as ``"p=11,emin=-14,emax=15"``, optionally with ``subnormals=0`` (flush
    to zero) and ``overflow=saturate`` (or ``nan``).

    A spec with the parameters of a preset returns the preset (so ``"p=11,emin=-14,emax=15"`` is
    ``fp16``, with its bit encoding); any other spec is a format named by its canonical spec,
    with an IEEE bit encoding when its exponent range is an IEEE one.

    >>> parse_format_spec("p=11, emin=-14, emax=15").name
    'fp16'
    >>> f = parse_format_spec("p=5,emin=-6,emax=7,subnormals=0")
    >>> f.name, f.max, f.subnormals
    ('p=5,emin=-6,emax=7,subnormals=0', 248.0, False)
    """
    def bad(why: str) -> ValueError:
        return ValueError(f"malformed format spec {spec!r}: {why}; write {_SPEC_SYNTAX}, e.g. p=11,emin=-14,emax=15 (fp16)")

    fields_: dict[str, str] = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        if not eq or not key or not value:
            raise bad(f"{part.strip()!r} is not key=value")
        if key not in ("p", "emin", "emax", "subnormals", "overflow"):
            raise bad(f"unknown key {key!r} (keys: p, emin, emax, subnormals, overflow)")
        if key in fields_:
            raise bad(f"{key!r} is given twice")
        fields_[key] = value
    missing = [k for k in ("p", "emin", "emax") if k not in fields_]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    ints: dict[str, int] = {}
    for k in ("p", "emin", "emax"):
        try:
            ints[k] = int(fields_[k])
        except ValueError:
            raise bad(f"{k} must be an integer, got {fields_[k]!r}") from None
    sub = fields_.get("subnormals", "1")
    if sub not in _BOOL_WORDS:
        raise bad(f"subnormals must be 1 or 0, got {sub!r}")
    subnormals = _BOOL_WORDS[sub]
    overflow = Overflow.parse(fields_.get("overflow", "inf"))
    key = (ints["p"], ints["emin"], ints["emax"], subnormals, overflow)
    for preset in FORMATS.values():
        if preset.max_significand is None and key == (preset.p, preset.emin, preset.emax, preset.subnormals,
                                                      preset.overflow):
            return preset
    name = f"p={ints['p']},emin={ints['emin']},emax={ints['emax']}"
    name += "" if subnormals else ",subnormals=0"
    name += "" if overflow is Overflow.INF else f",overflow={overflow.value}"
    bias = ints["emax"]
    ieee = (ints["emin"] == 1 - bias and bias >= 1 and (bias + 1) & bias == 0 and subnormals
            and overflow is Overflow.INF and ints["p"] + (bias + 1).bit_length() <= 32)
    return FloatFormat(name, ints["p"], ints["emin"], ints["emax"], subnormals=subnormals, overflow=overflow,
                       exponent_bits=(bias + 1).bit_length() if ieee else None)


def get_format(fmt: "str | FloatFormat") -> FloatFormat:
    """Look a format up by name (``"fp16"``, ``"bf16"``, ...) or spec (``"p=11,emin=-14,emax=15"``,
    see :func:`parse_format_spec`), or pass a ``FloatFormat`` through.

    >>> get_format("half").name
    'fp16'
    """
    if isinstance(fmt, FloatFormat):
        return fmt
    if not isinstance(fmt, str):
        raise TypeError(f"a format is a name or a FloatFormat, got {type(fmt).__name__}")
    key = fmt.strip().lower()
    key = _ALIASES.get(key, key)
    if key in FORMATS:
        return FORMATS[key]
    if "=" in key:
        return parse_format_spec(fmt)
    raise ValueError(
        f"unknown format {fmt!r}; known formats are: {', '.join(FORMATS)}, "
        f"or any (p, emin, emax) written as {_SPEC_SYNTAX} "
        "(in Python also FloatFormat(name, p, emin, emax))"
    )

"""Block-scaled formats: OCP Microscaling (MXFP8, MXFP6, MXFP4) and NVIDIA NVFP4.

A block-scaled tensor stores narrow elements (FP8, FP6 or FP4) and, for each block of
consecutive elements along one axis, a shared scale; the value of an element is
``element * scale`` (NVFP4: ``element * block_scale * tensor_scale``).

>>> import numpy as np
>>> from fpanalysis.scaled import quantize, dequantize
>>> x = np.linspace(-1.0, 1.0, 32, dtype=np.float32)
>>> q = quantize(x, "mxfp4")
>>> q.scales.tolist()            # E8M0 code 125: scale 2**-2 (amax 1 = 2**0, emax(E2M1) = 2)
[125]
>>> dequantize(q)[:4].tolist()
[-1.0, -1.0, -0.75, -0.75]

Formats (see docs/scaled_formats.md for the sources and the exact semantics):

==============  ===========  ==========  =====================================
name            elements     block       scale
==============  ===========  ==========  =====================================
mxfp8_e4m3      E4M3         32          E8M0 (power of two)
mxfp8_e5m2      E5M2         32          E8M0
mxfp6_e2m3      E2M3         32          E8M0
mxfp6_e3m2      E3M2         32          E8M0
mxfp4_e2m1      E2M1         32          E8M0
nvfp4           E2M1         16          E4M3 per block, times an fp32 per-tensor scale
==============  ===========  ==========  =====================================

MX scale selection (OCP Microscaling Formats (MX) Specification v1.0, 2023, section 6.3): the
shared exponent of a block is ``floor(log2(amax)) - emax_elem``, clamped to the E8M0 range
``[-127, 127]``; a block holding Inf or NaN gets the NaN scale (code 0xFF).  Elements are
``x / 2**shared`` rounded to the element format, to nearest even (or stochastically), saturating
at the element format's largest finite value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._kernels.rng import stream_key
from .formats import FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3FN, FP8_E5M2, FloatFormat, Overflow
from .rounding import RoundingMode, round_numpy

__all__ = [
    "MXFP4_E2M1",
    "MXFP6_E2M3",
    "MXFP6_E3M2",
    "MXFP8_E4M3",
    "MXFP8_E5M2",
    "NVFP4",
    "SCALED_FORMATS",
    "BlockScaledFormat",
    "BlockScaledTensor",
    "block_scaled_matmul",
    "decode_elements",
    "dequantize",
    "e8m0_decode",
    "e8m0_encode",
    "element_values",
    "encode_elements",
    "get_scaled_format",
    "quantize",
    "quantize_dequantize",
]

# Element formats as the MX and NVFP4 conversions use them: every overflow saturates.
_E4M3_SAT = FP8_E4M3FN.with_(name="e4m3", overflow=Overflow.SATURATE)
_E5M2_SAT = FP8_E5M2.with_(name="e5m2", overflow=Overflow.SATURATE)

# element format name -> (format, total bits, fraction bits)
_ELEMENTS: dict[str, tuple[FloatFormat, int, int]] = {
    "e4m3": (_E4M3_SAT, 8, 3),
    "e5m2": (_E5M2_SAT, 8, 2),
    "e2m3": (FP6_E2M3, 6, 3),
    "e3m2": (FP6_E3M2, 6, 2),
    "e2m1": (FP4_E2M1, 4, 1),
}


@dataclass(frozen=True)
class BlockScaledFormat:
    """A block-scaled format: element format, block size and scale format.

    Parameters
    ----------
    name : str
        Label (``"mxfp8_e4m3"``, ``"nvfp4"``, ...).
    element : str
        Element format: ``"e4m3"``, ``"e5m2"``, ``"e2m3"``, ``"e3m2"`` or ``"e2m1"``.
    block_size : int
        Number of consecutive elements along the quantisation axis sharing one scale.
    scale : str
        ``"e8m0"`` (MX: a power of two ``2**(code - 127)``, code 0xFF is NaN) or ``"e4m3"``
        (NVFP4: an unsigned E4M3 number, with an fp32 per-tensor scale on top).
    """

    name: str
    element: str
    block_size: int
    scale: str

    def __post_init__(self) -> None:
        if self.element not in _ELEMENTS:
            raise ValueError(
                f"block-scaled format {self.name!r}: unknown element format {self.element!r}; "
                f"valid element formats are: {', '.join(_ELEMENTS)}"
            )
        if self.scale not in ("e8m0", "e4m3"):
            raise ValueError(f"block-scaled format {self.name!r}: scale must be 'e8m0' or 'e4m3', got {self.scale!r}")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block-scaled format {self.name!r}: block_size must be a positive integer")

    @property
    def element_format(self) -> FloatFormat:
        """The element format (saturating on overflow)."""
        return _ELEMENTS[self.element][0]

    @property
    def element_bits(self) -> int:
        return _ELEMENTS[self.element][1]

    @property
    def tensor_scale(self) -> bool:
        """Whether an fp32 per-tensor scale multiplies the block scales (NVFP4)."""
        return self.scale == "e4m3"

    @property
    def bits_per_element(self) -> float:
        """Storage per element, the block's scale included (per-tensor scale not counted)."""
        return self.element_bits + 8 / self.block_size

    def describe(self) -> str:
        f = self.element_format
        extra = ", fp32 per-tensor scale" if self.tensor_scale else ""
        return (
            f"{self.name}: {self.element.upper()} elements (max {f.max:g}, min subnormal "
            f"{f.min_subnormal:g}), {self.scale.upper()} scale per {self.block_size} elements{extra}, "
            f"{self.bits_per_element:g} bits per element"
        )


MXFP8_E4M3 = BlockScaledFormat("mxfp8_e4m3", "e4m3", 32, "e8m0")
MXFP8_E5M2 = BlockScaledFormat("mxfp8_e5m2", "e5m2", 32, "e8m0")
MXFP6_E2M3 = BlockScaledFormat("mxfp6_e2m3", "e2m3", 32, "e8m0")
MXFP6_E3M2 = BlockScaledFormat("mxfp6_e3m2", "e3m2", 32, "e8m0")
MXFP4_E2M1 = BlockScaledFormat("mxfp4_e2m1", "e2m1", 32, "e8m0")
NVFP4 = BlockScaledFormat("nvfp4", "e2m1", 16, "e4m3")

SCALED_FORMATS: dict[str, BlockScaledFormat] = {
    f.name: f for f in (MXFP8_E4M3, MXFP8_E5M2, MXFP6_E2M3, MXFP6_E3M2, MXFP4_E2M1, NVFP4)
}
_SCALED_ALIASES = {"mxfp8": "mxfp8_e4m3", "mxfp6": "mxfp6_e2m3", "mxfp4": "mxfp4_e2m1"}


def get_scaled_format(fmt: str | BlockScaledFormat) -> BlockScaledFormat:
    """Look a block-scaled format up by name, or pass a ``BlockScaledFormat`` through.

    >>> get_scaled_format("mxfp4").name
    'mxfp4_e2m1'
    """
    if isinstance(fmt, BlockScaledFormat):
        return fmt
    if not isinstance(fmt, str):
        raise TypeError(f"a block-scaled format is a name or a BlockScaledFormat, got {type(fmt).__name__}")
    key = fmt.strip().lower().replace("-", "_")
    key = _SCALED_ALIASES.get(key, key)
    if key in SCALED_FORMATS:
        return SCALED_FORMATS[key]
    names = ", ".join(list(SCALED_FORMATS) + list(_SCALED_ALIASES))
    raise ValueError(f"unknown block-scaled format {fmt!r}; known formats are: {names}")


# --- element and scale encodings ----------------------------------------------------------


def element_values(element: str) -> np.ndarray:
    """Value of every bit pattern of an element format (float64, indexed by the code).

    Layout: sign, exponent with bias ``1 - emin``, fraction; every exponent field is finite
    (E4M3: code 0x7F/0xFF is NaN; E5M2: the all-ones exponent is Inf/NaN, as in OCP FP8).
    """
    if element not in _ELEMENTS:
        raise ValueError(f"unknown element format {element!r}; valid element formats are: {', '.join(_ELEMENTS)}")
    f, nbits, m = _ELEMENTS[element]
    c = np.arange(1 << nbits, dtype=np.int64)
    w = nbits - 1 - m
    E = (c >> m) & ((1 << w) - 1)
    F = c & ((1 << m) - 1)
    mag = np.where(
        E == 0,
        np.ldexp(F.astype(np.float64), f.emin - m),
        np.ldexp((F + (1 << m)).astype(np.float64), (E - 1 + f.emin - m).astype(np.int64)),
    )
    if element == "e4m3":
        mag = np.where((E == 15) & (F == 7), np.nan, mag)
    elif element == "e5m2":
        mag = np.where(E == 31, np.where(F == 0, np.inf, np.nan), mag)
    return np.where((c >> (nbits - 1)) == 1, -mag, mag)


def decode_elements(codes: Any, element: str) -> np.ndarray:
    """Values (float64) of element bit patterns (unsigned integers)."""
    table = element_values(element)
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise TypeError(f"element codes must be integers, got dtype {c.dtype}")
    if c.size and (c.min() < 0 or int(c.max()) >= table.size):
        raise ValueError(f"{element} codes are {int(math.log2(table.size))}-bit unsigned integers")
    return table[c.astype(np.int64)]


def encode_elements(values: Any, element: str, mode: str | RoundingMode = "nearest-even", *, seed: Any = None) -> np.ndarray:
    """Round real values to an element format (saturating) and return their bit patterns (uint8).

    NaN encodes as E4M3 0x7F / E5M2 0x7F; the FP6 and FP4 formats have no NaN (error).
    """
    from .rounding import round_to

    table = element_values(element)
    f, nbits, _ = _ELEMENTS[element]
    x = np.asarray(values, dtype=np.float64)
    nan = np.isnan(x)
    if nan.any() and element not in ("e4m3", "e5m2"):
        raise ValueError(f"{element} has no NaN encoding; the input holds NaN")
    y = np.asarray(round_to(np.where(nan, 0.0, x), f, mode, seed=seed), dtype=np.float64)
    half = table[: table.size // 2]
    pos = np.where(np.isfinite(half), half, np.inf)
    idx = np.searchsorted(pos, np.abs(y))
    code = idx.astype(np.int64) | (np.signbit(y).astype(np.int64) << (nbits - 1))
    code = np.where(nan, 0x7F, code)
    return code.astype(np.uint8)


def e8m0_decode(codes: Any) -> np.ndarray:
    """E8M0 scale values: ``2**(code - 127)``, code 255 is NaN (float64)."""
    c = np.asarray(codes).astype(np.int64)
    return np.where(c == 255, np.nan, np.ldexp(1.0, c - 127))


def e8m0_encode(exponents: Any) -> np.ndarray:
    """E8M0 codes of the scales ``2**e`` for integer ``e`` in ``[-127, 127]``."""
    e = np.asarray(exponents)
    if e.dtype.kind not in "iu":
        raise TypeError("E8M0 encodes integer exponents (the scale is 2**e)")
    if e.size and (e.min() < -127 or e.max() > 127):
        raise ValueError("E8M0 exponents lie in [-127, 127]")
    return (e.astype(np.int64) + 127).astype(np.uint8)


# --- quantisation ---------------------------------------------------------------------------


@dataclass
class BlockScaledTensor:
    """A quantised tensor: element codes, block scale codes, and how to undo the layout.

    Attributes
    ----------
    fmt : BlockScaledFormat
    codes : numpy.ndarray of uint8, shape ``(..., nblocks, block_size)``
        Element bit patterns (low bits of each byte), with the quantisation axis moved last and
        zero-padded to a whole number of blocks.
    scales : numpy.ndarray of uint8, shape ``(..., nblocks)``
        Block scale codes: E8M0 (MX) or E4M3 (NVFP4, 0x7F for NaN).
    tensor_scale : float
        The fp32 per-tensor scale (NVFP4); 1.0 for MX.
    shape, axis : the original shape and the quantisation axis.
    dtype : numpy dtype of the input (float32 or float64), used for dequantisation.
    saturated, underflow, nonfinite_blocks : int
        Elements whose scaled value exceeded the element format's largest finite value (they
        were clamped to it); nonzero finite elements that became zero; blocks holding Inf/NaN.
    n : int
        Number of elements (padding excluded).
    """

    fmt: BlockScaledFormat
    codes: np.ndarray
    scales: np.ndarray
    tensor_scale: float
    shape: tuple[int, ...]
    axis: int
    dtype: np.dtype
    saturated: int
    underflow: int
    nonfinite_blocks: int
    n: int

    @property
    def saturation_share(self) -> float:
        return self.saturated / self.n if self.n else 0.0

    @property
    def underflow_share(self) -> float:
        return self.underflow / self.n if self.n else 0.0

    def scale_values(self) -> np.ndarray:
        """Block scales (float64, NaN for NaN blocks); NVFP4: block scale times tensor scale."""
        if self.fmt.scale == "e8m0":
            return e8m0_decode(self.scales)
        return element_values("e4m3")[self.scales.astype(np.int64)] * self.tensor_scale

    def element_values(self) -> np.ndarray:
        """Unscaled element values, shape of :attr:`codes` (float64)."""
        return element_values(self.fmt.element)[self.codes.astype(np.int64)]

    def dequantize(self, dtype: Any = None) -> np.ndarray:
        return dequantize(self, dtype)


_QUANT_MODES = (RoundingMode.NEAREST_EVEN, RoundingMode.STOCHASTIC)


def _blocks(x: np.ndarray, axis: int, bsize: int) -> tuple[np.ndarray, int]:
    """``x`` with ``axis`` moved last and zero-padded, as ``(..., nblocks, bsize)``, C-contiguous."""
    xm = np.moveaxis(x, axis, -1)
    L = xm.shape[-1]
    nb = -(-L // bsize) if L else 0
    if nb * bsize != L:
        pad = np.zeros(xm.shape[:-1] + (nb * bsize - L,), dtype=xm.dtype)
        xm = np.concatenate([xm, pad], axis=-1)
    return np.ascontiguousarray(xm).reshape(xm.shape[:-1] + (nb, bsize)), L


def _tensor_scale(x: np.ndarray) -> float:
    """NVFP4 per-tensor scale: fp32(amax / (6 * 448)) over the finite values; 1 when amax is 0."""
    fin = np.abs(x[np.isfinite(x)]) if x.size else np.zeros(0)
    amax = float(fin.max()) if fin.size else 0.0
    if amax == 0.0:
        return 1.0
    t64 = amax / (FP4_E2M1.max * _E4M3_SAT.max)
    if t64 > float(np.finfo(np.float32).max):
        raise ValueError(
            f"nvfp4: the per-tensor scale amax / (6 * 448) = {t64:.3g} exceeds the fp32 range "
            "(inputs beyond about 9e41 in magnitude cannot be quantised to NVFP4)"
        )
    t = float(np.float32(t64))
    return t if t > 0.0 else 2.0**-149


def _check_input(x: Any, axis: int) -> tuple[np.ndarray, int]:
    arr = np.asarray(x)
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
        if arr.dtype.kind in "iub" or (arr.dtype.kind == "f" and arr.dtype.itemsize == 2):
            arr = arr.astype(np.float32 if arr.dtype.kind == "f" else np.float64)
        else:
            raise TypeError(f"block-scaled quantisation takes float32/float64 arrays, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError("block-scaled quantisation needs an array with at least one axis")
    if not isinstance(axis, (int, np.integer)) or not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"axis {axis!r} is out of range for an array with {arr.ndim} dimensions")
    return arr, int(axis) % arr.ndim


def _mode_args(mode: Any, seed: Any, random_bits: Any, stream: int) -> tuple[RoundingMode, np.uint64, int, int]:
    m = RoundingMode.parse(mode)
    if m not in _QUANT_MODES:
        raise ValueError(
            f"block-scaled quantisation rounds elements with 'nearest-even' (the specification's) "
            f"or 'stochastic'; got {m.value!r}"
        )
    from .rounding import kernel_args

    args = kernel_args(FP4_E2M1, m, seed, random_bits, stream)
    return m, args[7], args[6], args[8]


def quantize(
    x: Any,
    fmt: str | BlockScaledFormat = "mxfp8_e4m3",
    axis: int = -1,
    *,
    mode: str | RoundingMode = "nearest-even",
    seed: Any = None,
    random_bits: int | None = None,
    stream: int = 0,
) -> BlockScaledTensor:
    """Quantise ``x`` to a block-scaled format along ``axis``.

    Parameters
    ----------
    x : array_like of float32/float64
    fmt : str or BlockScaledFormat
        ``"mxfp8_e4m3"`` (``"mxfp8"``), ``"mxfp8_e5m2"``, ``"mxfp6_e2m3"`` (``"mxfp6"``),
        ``"mxfp6_e3m2"``, ``"mxfp4_e2m1"`` (``"mxfp4"``) or ``"nvfp4"``.
    axis : int
        The axis along which consecutive elements form blocks (for a GEMM operand, the
        reduction axis).  The last block is padded with zeros, which do not change its amax.
    mode : str
        Element rounding: ``"nearest-even"`` (the specification's) or ``"stochastic"``
        (needs ``seed``; the random bits of element ``i`` of the padded block layout depend only
        on ``(seed, stream, i)``, as in :func:`fpanalysis.rounding.round_to`).
    random_bits : int, optional
        Stochastic rounding with ``k`` random bits (see :func:`fpanalysis.rounding.round_to`).

    Returns
    -------
    BlockScaledTensor

    Notes
    -----
    MX (OCP MX v1.0, section 6.3): shared exponent ``clamp(floor(log2(amax)) - emax_elem, -127,
    127)``; NaN scale for blocks holding Inf or NaN; elements ``x / 2**shared`` rounded and
    saturated.  NVFP4 (NVIDIA, "Introducing NVFP4", 2025; Transformer Engine's recipe): tensor
    scale ``t = fp32(amax_tensor / (6 * 448))``, block scale ``s = E4M3(amax_block / (6 t))``
    (nearest even, saturating), elements ``E2M1(x / (s t))``; every quotient is computed exactly
    before its single rounding.  See docs/scaled_formats.md.
    """
    from ._kernels import scaled as K

    f = get_scaled_format(fmt)
    arr, ax = _check_input(x, axis)
    _, key, code, kbits = _mode_args(mode, seed, random_bits, stream)
    xb, _ = _blocks(arr, ax, f.block_size)
    lead = xb.shape[:-1]
    x2 = xb.reshape(-1, f.block_size)
    codes = np.empty(x2.shape, dtype=np.uint8)
    scales = np.empty(x2.shape[0], dtype=np.uint8)
    ef, nbits, mbits = _ELEMENTS[f.element]
    if f.scale == "e8m0":
        tscale = 1.0
        if x2.dtype == np.float32 and code == 0:
            nsat, nflush = K.mx_quantize_f32(
                x2, codes, scales, ef.p, ef.emin, ef.emax, ef.max, mbits, nbits, ef.min_subnormal
            )
        else:
            kern = K.mx_quantize if x2.shape[0] >= K.SERIAL_BELOW_BLOCKS else K.mx_quantize_serial
            nsat, nflush = kern(
                x2, codes, scales, ef.p, ef.emin, ef.emax, ef.min_normal, ef.max, code, key, kbits,
                mbits, nbits, ef.min_subnormal,
            )
        nonfinite = int(np.count_nonzero(scales == 255))
    else:
        tscale = _tensor_scale(arr)
        sf = _E4M3_SAT
        nsat, nflush = K.nv_quantize(
            x2, codes, scales, tscale, ef.p, ef.emin, ef.min_normal, ef.max, code, key, kbits,
            mbits, nbits, ef.min_subnormal, sf.p, sf.emin, sf.min_normal, sf.max,
        )
        nonfinite = int(np.count_nonzero(scales == 0x7F))
    return BlockScaledTensor(
        f, codes.reshape(lead + (f.block_size,)), scales.reshape(lead), tscale, arr.shape, ax,
        arr.dtype, int(nsat), int(nflush), nonfinite, arr.size,
    )


def dequantize(q: BlockScaledTensor, dtype: Any = None) -> np.ndarray:
    """The values of a quantised tensor, in the input's shape.

    The product ``element * scale`` is exact in float64 (float64 has room for every product);
    ``dtype`` float32 (the default for float32 inputs) rounds it once, to nearest even.
    Elements of NaN-scale blocks are NaN.
    """
    if not isinstance(q, BlockScaledTensor):
        raise TypeError(f"dequantize takes a BlockScaledTensor (from quantize), got {type(q).__name__}")
    vals = q.element_values() * q.scale_values()[..., None]
    L = q.shape[q.axis]
    vals = vals.reshape(vals.shape[:-2] + (-1,))[..., :L]
    out = np.moveaxis(vals, -1, q.axis)
    dt = np.dtype(dtype) if dtype is not None else q.dtype
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(out.astype(dt))


def quantize_dequantize(
    x: Any,
    fmt: str | BlockScaledFormat = "mxfp8_e4m3",
    axis: int = -1,
    *,
    mode: str | RoundingMode = "nearest-even",
    seed: Any = None,
    random_bits: int | None = None,
    stream: int = 0,
    return_tensor: bool = False,
) -> Any:
    """``dequantize(quantize(x, ...))``: the values a block-scaled GEMM sees instead of ``x``.

    With ``return_tensor`` also returns the :class:`BlockScaledTensor` (saturation and
    underflow counts).
    """
    f = get_scaled_format(fmt)
    if return_tensor or f.scale != "e8m0":
        q = quantize(x, f, axis, mode=mode, seed=seed, random_bits=random_bits, stream=stream)
        y = dequantize(q)
        return (y, q) if return_tensor else y
    from ._kernels import scaled as K

    arr, ax = _check_input(x, axis)
    _, key, code, kbits = _mode_args(mode, seed, random_bits, stream)
    xb, L = _blocks(arr, ax, f.block_size)
    x2 = xb.reshape(-1, f.block_size)
    ef = f.element_format
    # float32 inputs give shared exponents <= 127 - emax_elem, so float32 holds every product
    out = np.empty(x2.shape, dtype=arr.dtype)
    scales = np.empty(x2.shape[0], dtype=np.uint8)
    if x2.dtype == np.float32 and code == 0:
        K.mx_qdq_f32(x2, out, scales, ef.p, ef.emin, ef.emax, ef.max)
    else:
        kern = K.mx_qdq if x2.shape[0] >= K.SERIAL_BELOW_BLOCKS else K.mx_qdq_serial
        kern(x2, out, scales, ef.p, ef.emin, ef.emax, ef.min_normal, ef.max, code, key, kbits)
    y = out.reshape(xb.shape[:-2] + (-1,))[..., :L]
    return np.ascontiguousarray(np.moveaxis(y, -1, ax))


# --- the NumPy twin (test oracle) -------------------------------------------------------------

_KEY0 = np.uint64(0)


def _quantize_numpy(
    x2: np.ndarray,
    fmt: BlockScaledFormat,
    mode: RoundingMode = RoundingMode.NEAREST_EVEN,
    key: np.uint64 = _KEY0,
    kbits: int | None = None,
    tscale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Straightforward NumPy block quantisation of ``x2`` (shape ``(nblocks, block_size)``).

    Returns ``(codes, scale_codes, saturated, underflow)``.  Scale exponent from ``np.frexp``,
    element rounding by :func:`fpanalysis.rounding.round_numpy`, encoding by searching the
    table of element values.
    """
    from .rounding import to_bits

    ef, nbits, _ = _ELEMENTS[fmt.element]
    x = np.asarray(x2, dtype=np.float64)
    finite = np.isfinite(x)
    bad = ~finite.all(axis=1)
    ax = np.where(finite, np.abs(x), 0.0)
    amax = ax.max(axis=1) if x.shape[1] else np.zeros(x.shape[0])
    if fmt.scale == "e8m0":
        _, ex = np.frexp(amax)  # amax = f * 2**ex with 0.5 <= f < 1
        flog = np.where(amax > 0, ex.astype(np.int64) - 1, -100000)
        sh = np.clip(flog - ef.emax, -127, 127)
        scale_codes = np.where(bad, 255, sh + 127).astype(np.uint8)
        d = np.ldexp(1.0, sh)
    else:
        s = round_numpy(amax / (ef.max * tscale), _E4M3_SAT, RoundingMode.NEAREST_EVEN)
        scale_codes = np.where(bad, 0x7F, to_bits(s, FP8_E4M3FN)).astype(np.uint8)
        d = s * tscale
    dz = d == 0.0
    v = np.where(dz[:, None] | ~finite, 0.0, x / np.where(dz, 1.0, d)[:, None])
    flat = v.reshape(-1)
    kb = None if mode is RoundingMode.NEAREST_EVEN or not kbits else kbits
    y = round_numpy(flat, ef, mode, key=key, kbits=kb)
    y_inf = round_numpy(flat, ef.with_(overflow=Overflow.INF), mode, key=key, kbits=kb)
    table = element_values(fmt.element)
    half = table[: table.size // 2]
    idx = np.searchsorted(np.where(np.isfinite(half), half, np.inf), np.abs(y))
    codes = (idx | (np.signbit(y).astype(np.int64) << (nbits - 1))).reshape(x.shape)
    ok = ~bad[:, None]
    codes = np.where(ok, codes, 0)
    codes = np.where(dz[:, None], 0, codes).astype(np.uint8)
    sat = int(np.count_nonzero(np.isinf(y_inf).reshape(x.shape) & ok))
    under = int(np.count_nonzero((x != 0) & ok & ((y.reshape(x.shape) == 0) | dz[:, None])))
    return codes, scale_codes, sat, under


def _stream_key(seed: int, stream: int = 0) -> np.uint64:
    return stream_key(seed, stream)


# --- block-scaled matrix products: the Blackwell block-scale MMA model ----------------------

# exponent given to zero terms, and fraction bits kept per aligned term, of the two datapaths
_MMA_K32 = {"e_zero": -133, "F": 25}
_MMA_K64 = {"e_zero": -139, "F": 35, "G": 16}


def _normalize(v: np.ndarray, e_sub: int) -> tuple[np.ndarray, np.ndarray]:
    """``v = s * 2**e`` with ``1 <= |s| < 2``, or ``e = e_sub`` (and ``|s| < 1``) below ``2**e_sub``."""
    av = np.abs(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        _, ex = np.frexp(np.where(np.isfinite(av), av, 1.0))
    e = np.maximum(ex.astype(np.int64) - 1, e_sub)
    e = np.where(av == 0, e_sub, e)
    return np.ldexp(v, -e), e


def _rz_fp32(s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``s * 2**e`` (exact in float64) truncated to fp32 (subnormals included); NaN stays NaN,
    finite values beyond the fp32 range become Inf; -0 becomes +0."""
    v = np.ldexp(s, e)
    m, e2 = _normalize(v, -126)
    t = np.trunc(np.ldexp(m, 23))
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.ldexp(t, e2 - 23).astype(np.float32)
    return r + np.float32(0.0)


def _fused_sum(s: np.ndarray, e: np.ndarray, F: int) -> tuple[np.ndarray, np.ndarray]:
    """Terms ``s * 2**e`` aligned to the largest exponent, each truncated to ``F`` fraction
    bits there, and summed (exactly: float64 holds every partial sum)."""
    emax = e.max(axis=-1)
    t = np.trunc(np.ldexp(s, e - emax[..., None] + F))
    return np.ldexp(t.sum(axis=-1), -F), emax


def block_scaled_matmul(qa: BlockScaledTensor, qb: BlockScaledTensor, c: Any = None) -> np.ndarray:
    """``qa @ qb + c`` as NVIDIA Blackwell's block-scaled MMA instructions compute it (fp32).

    ``qa`` is ``(M, K)`` quantised along axis 1 and ``qb`` ``(K, N)`` quantised along axis 0,
    in the same family: MX formats run the ``kind::mxf8f6f4`` datapath (one K=32 block per step:
    the 32 exact products, scales applied, and the accumulator are aligned to the largest
    exponent, truncated to 25 fraction bits, summed, and truncated to fp32); NVFP4 runs
    ``kind::mxf4nvf4`` with 16-element E4M3 scales (K=64 per step: exact sums of 16 products,
    scaled, aligned with the accumulator, truncated to 35 fraction bits, summed, truncated to
    fp32).  Steps chain through the fp32 accumulator, starting from ``c`` (default 0).  Zero
    terms take a fixed small exponent (-133 and -139), so they never set the alignment.  The
    datapath model and its parameters are those of the mmasim package's ``MMABlockScale``
    (RTX Blackwell ``mma.sync`` block-scale instructions), which the tests check bit for bit; see
    docs/scaled_formats.md.  The NVFP4 per-tensor scales are not applied (multiply the result by
    ``qa.tensor_scale * qb.tensor_scale``).
    """
    for q, name, ax in ((qa, "qa", 1), (qb, "qb", 0)):
        if not isinstance(q, BlockScaledTensor):
            raise TypeError(f"{name} must be a BlockScaledTensor (from quantize)")
        if len(q.shape) != 2 or q.axis != ax:
            raise ValueError(f"{name} must be 2-D and quantised along axis {ax} (the reduction axis)")
    if qa.fmt.scale != qb.fmt.scale or qa.fmt.block_size != qb.fmt.block_size:
        raise ValueError(f"operands of one MMA share the block and scale format; got {qa.fmt.name} and {qb.fmt.name}")
    M, K = qa.shape
    K2, N = qb.shape
    if K != K2:
        raise ValueError(f"inner dimensions differ: {qa.shape} @ {qb.shape}")
    step = 32 if qa.fmt.scale == "e8m0" else 64
    if K % step:
        raise ValueError(f"K = {K} must be a multiple of {step} for {qa.fmt.name}")
    acc = np.zeros((M, N), dtype=np.float32) if c is None else np.array(c, dtype=np.float32).reshape(M, N)
    av = qa.element_values().reshape(M, -1)  # (M, K)
    bv = qb.element_values().reshape(N, -1)  # (N, K)
    if qa.fmt.scale == "e8m0":
        ea_sub = _ELEMENTS[qa.fmt.element][0].emin
        eb_sub = _ELEMENTS[qb.fmt.element][0].emin
        sa, ea = _normalize(av, ea_sub)
        sb, eb = _normalize(bv, eb_sub)
        nan_a = qa.scales == 255
        nan_b = qb.scales == 255
        xa = qa.scales.astype(np.int64) - 127  # (M, K/32)
        xb = qb.scales.astype(np.int64) - 127  # (N, K/32)
        for k in range(K // 32):
            sl = slice(32 * k, 32 * k + 32)
            s = sa[:, None, sl] * sb[None, :, sl]
            e = ea[:, None, sl] + eb[None, :, sl] + (xa[:, None, k] + xb[None, :, k])[..., None]
            e = np.where(s == 0, _MMA_K32["e_zero"], e)
            nan = nan_a[:, None, k] | nan_b[None, :, k]
            s = np.where(nan[..., None], np.nan, s)
            sc, ec = _normalize(acc.astype(np.float64), -126)
            ec = np.where(sc == 0, _MMA_K32["e_zero"], ec)
            tot, emax = _fused_sum(np.concatenate([s, sc[..., None]], -1), np.concatenate([e, ec[..., None]], -1), _MMA_K32["F"])
            acc = _rz_fp32(tot, emax)
    else:
        G, F, ez = _MMA_K64["G"], _MMA_K64["F"], _MMA_K64["e_zero"]
        sva = element_values("e4m3")[qa.scales.astype(np.int64) & 0x7F]  # unsigned E4M3 (sign bit dropped)
        svb = element_values("e4m3")[qb.scales.astype(np.int64) & 0x7F]
        ssa, esa = _normalize(sva, -6)
        ssb, esb = _normalize(svb, -6)
        for k in range(K // 64):
            sl = slice(64 * k, 64 * k + 64)
            p = (av[:, None, sl] * bv[None, :, sl]).reshape(M, N, 4, G)
            zero = (p == 0).all(axis=-1)
            ps = p.sum(axis=-1)  # exact: products are multiples of 1/4 below 37
            gs = slice(4 * k, 4 * k + 4)
            s_sc = ssa[:, None, gs] * ssb[None, :, gs]
            e_sc = esa[:, None, gs] + esb[None, :, gs]
            e_sc = np.where(zero | (s_sc == 0), ez, e_sc)
            sc, ec = _normalize(acc.astype(np.float64), -126)
            ec = np.where(sc == 0, ez, ec)
            tot, emax = _fused_sum(np.concatenate([ps * s_sc, sc[..., None]], -1), np.concatenate([e_sc, ec[..., None]], -1), F)
            acc = _rz_fp32(tot, emax)
    nan = np.isnan(acc)
    if nan.any():
        acc = acc.copy()
        acc.view(np.uint32)[nan] = 0x7FFFFFFF
    return acc

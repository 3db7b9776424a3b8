"""Tensor-core arithmetic: NVIDIA's multi-term fused dot products, per architecture
(``docs/semantics.md`` §1.4; the profiles ``volta`` ... ``blackwell`` of :mod:`fpanalysis.linalg`).

A tensor-core instruction ``D = A B + C`` computes every entry of ``D`` as a chain of *fused
steps*: a step takes ``n`` products and the accumulator ``c`` and returns one rounded number,

1. inputs are decoded as ``s * 2**e`` with ``e = max(floor(log2|x|), emin)`` of their format
   (subnormal inputs are kept), and each product is exact, with exponent ``e_a + e_b``;
2. a zero term (a zero product or a zero ``c``) counts with the exponent ``e_zero``, and ``E`` is
   the largest exponent of the ``n + 1`` terms (the *zero-exponent floor*: whenever a term is
   zero, ``E >= e_zero``);
3. every term is truncated toward zero to a multiple of ``2**(E - F)``: only ``F`` bits below the
   leading position ``2**E`` survive the alignment (``F`` extra alignment bits);
4. the truncated terms are added exactly and the sum is rounded to the accumulator: binary32
   toward zero (fp32 accumulators), binary32 toward zero to 13 fraction bits (``fp32-e8m13``,
   the FP8 accumulator of Ada and Hopper), or binary16 to nearest even (fp16 accumulators);
   subnormal results are kept, overflow gives infinity, a zero result is +0.

A dot product of length ``K`` is ``ceil(K / n)`` such steps chained through the accumulator
(from +0), the ragged tail zero padded; an instruction of depth ``k`` performs ``k / n`` of
them.  With ``promote_every=N`` (FP8 only in practice: cuBLAS's default "slow accumulation",
DeepGEMM, Transformer Engine) the chain restarts from +0 every ``N`` terms and the chunk
results are added into a binary32 total with round-to-nearest-even additions.

This is the model of Fasi, Higham, Mikaitis & Pranesh, "Numerical behavior of NVIDIA tensor
cores" (PeerJ Comput. Sci. 7:e330, 2021) in the parameterisation of Khattak & Mikaitis,
"Accurate models of NVIDIA tensor cores" (2025) and of the MMA-Sim simulator (Xie et al.,
package ``mmasim`` 2.1.1, validated on the hardware), against which ``fpanalysis verify``
checks every model of :data:`ARCHITECTURES` bit for bit
(:func:`fpanalysis.verify.tensorcore.verify_tensorcore`).

What is modelled: one instruction family per architecture and input type (the one cuBLAS uses
there: ``mma.sync`` up to Ada, ``wgmma`` on Hopper, ``tcgen05.mma`` on Blackwell), sequential
chaining along ``K``, FP8 promotion.  What is not: cuBLAS's choice of kernel (its k-tile, split-K
and the order in which split partial sums are combined, which change the chaining), epilogues
(alpha/beta scaling, bias, the conversion of the fp32 result to the output dtype), block-scaled
(MX) formats, the ``mma.sync`` FP8 path of Hopper/Blackwell (rewritten by ptxas), and FP64.

>>> import numpy as np
>>> from fpanalysis.tensorcore import tc_dot
>>> x = np.array([1.0] + [2.0**-24] * 15, dtype=np.float16)  # 1 and fifteen 2**-24
>>> print(tc_dot(x, np.ones(16, np.float16), "hopper"))       # F = 25: the small terms survive
1.0000008
>>> print(tc_dot(x, np.ones(16, np.float16), "volta"))        # F = 23: truncated away
1.0
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = [
    "ACCUMULATORS",
    "ARCHITECTURES",
    "INPUT_FORMATS",
    "Architecture",
    "TensorCoreModel",
    "get_tensor_core",
    "tc_dot",
    "tc_matmul",
]

# input format -> (fpanalysis format name, emin, mmasim/PTX type)
_INPUTS = {
    "fp16": ("fp16", -14, "f16"),
    "bf16": ("bf16", -126, "bf16"),
    "tf32": ("tf32", -126, "tf32"),
    "fp8_e4m3fn": ("fp8_e4m3fn", -6, "e4m3"),
    "fp8_e5m2": ("fp8_e5m2", -14, "e5m2"),
}
_INPUT_ALIASES = {"e4m3": "fp8_e4m3fn", "e4m3fn": "fp8_e4m3fn", "fp8-e4m3": "fp8_e4m3fn", "fp8_e4m3": "fp8_e4m3fn",
                  "e5m2": "fp8_e5m2", "fp8-e5m2": "fp8_e5m2", "half": "fp16", "float16": "fp16",
                  "bfloat16": "bf16"}
INPUT_FORMATS = tuple(_INPUTS)
# accumulator -> (rounding code of fpanalysis._kernels.tensorcore, emin of c, precision)
_ACCS = {"fp32": (0, -126, 24), "fp32-e8m13": (1, -126, 14), "fp16": (2, -14, 11)}
ACCUMULATORS = tuple(_ACCS)


@dataclass(frozen=True)
class TensorCoreModel:
    """One tensor-core instruction's arithmetic (see the module docstring).

    Attributes
    ----------
    arch : str
        Architecture (a key of :data:`ARCHITECTURES`).
    instruction : str
        The modelled PTX instruction (shape and types).
    a_format, b_format : str
        Input formats of ``A`` and ``B`` (fpanalysis format names).
    accumulator : str
        ``"fp32"``, ``"fp32-e8m13"`` (FP8 accumulation with 13 fraction bits) or ``"fp16"``.
    n : int
        Products per fused step (block length).
    k : int
        Depth of the instruction (``k / n`` chained steps per instruction).
    F : int
        Bits kept below the block's leading exponent ``E`` when the terms are aligned (truncated).
    e_zero : int
        Exponent given to zero terms (the zero-exponent floor).
    promote_every : int or None
        Restart the chain every this many terms and add the chunks in binary32 (None: never).
    """

    arch: str
    instruction: str
    a_format: str
    b_format: str
    accumulator: str
    n: int
    k: int
    F: int
    e_zero: int
    promote_every: int | None = None

    @property
    def rounding(self) -> str:
        """Rounding of each step's result: ``"toward-zero"`` or ``"nearest-even"``."""
        return "nearest-even" if self.accumulator == "fp16" else "toward-zero"

    @property
    def name(self) -> str:
        ins = self.a_format if self.a_format == self.b_format else f"{self.a_format}x{self.b_format}"
        promo = f", promoted every {self.promote_every}" if self.promote_every else ""
        return f"{self.arch} {ins}->{self.accumulator}{promo}"

    @property
    def output_dtype(self) -> type:
        return np.float16 if self.accumulator == "fp16" else np.float32

    def kernel_args(self) -> tuple[int, ...]:
        """``(n, F, rho, e_zero, emin_a, emin_b, emin_c, promote)`` for the private kernels."""
        rho, emin_c, _ = _ACCS[self.accumulator]
        return (self.n, self.F, rho, self.e_zero, _INPUTS[self.a_format][1], _INPUTS[self.b_format][1],
                emin_c, self.promote_every or 0)

    def with_promotion(self, every: int | None) -> TensorCoreModel:
        """The same model with FP8-style promotion to binary32 every ``every`` terms."""
        if every is not None and (int(every) != every or every <= 0 or every % self.n):
            raise ValueError(f"promote_every must be a positive multiple of the block length {self.n}, "
                             f"got {every!r}")
        return replace(self, promote_every=None if every is None else int(every))


@dataclass(frozen=True)
class Architecture:
    """Per-architecture constants of the tensor-core model.

    ``F``: alignment bits of the fp16/bf16/tf32 (and Blackwell FP8) paths; ``block_bytes``: bytes
    of one operand per fused step (``n = block_bytes / input size``, at most the instruction's k);
    ``e_zero_fp32``/``e_zero_fp16``: exponent of zero terms with fp32/fp16 accumulators;
    ``fp8_F``: alignment bits of FP8 inputs (None: no FP8 instruction modelled); ``fp8_e8m13``:
    whether FP8 with an fp32 accumulator keeps only 13 fraction bits; ``shapes``: input kind ->
    (instruction, k); ``mmasim``: (simulator class, architecture name) of ``mmasim`` 2.1.1.
    """

    name: str
    sm: str
    F: int
    block_bytes: int
    e_zero_fp32: int
    e_zero_fp16: int
    fp8_F: int | None
    fp8_e8m13: bool
    shapes: dict[str, tuple[str, int]]
    mmasim: tuple[str, str]
    source: str


# Sources.  All constants below are those of MMA-Sim (mmasim 2.1.1, nv_ptx/sim.py: _mma_F_bits,
# _mma_L_max_bytes, _mma_e_zero_for_fp16/_fp32; WGMMA and TCGen05MMA classes), which its authors
# validated against the hardware; the structure (exact products, alignment to the largest
# exponent with truncation, round-toward-zero normalisation, 4-term steps on Volta, 8 on Ampere,
# subnormals kept) was first measured by Fasi et al. (PeerJ CS 2021), and the per-architecture
# F (Volta 23, Turing/Ampere/Ada 24, Hopper/Blackwell 25), the FP8 13-bit accumulator of Ada
# and Hopper and the block lengths are also those of Khattak & Mikaitis (2025).
ARCHITECTURES: dict[str, Architecture] = {
    "volta": Architecture(
        "volta", "sm_70", F=23, block_bytes=8, e_zero_fp32=-131, e_zero_fp16=-19, fp8_F=None, fp8_e8m13=False,
        shapes={"fp16": ("mma.sync.m8n8k4", 4)}, mmasim=("MMA", "Volta"),
        source="mmasim 2.1.1 sim.py (F 23, L_max 4*2 bytes, e_zero -131/-19); Fasi et al. 2021 (V100)"),
    "turing": Architecture(
        "turing", "sm_75", F=24, block_bytes=16, e_zero_fp32=-132, e_zero_fp16=-20, fp8_F=None, fp8_e8m13=False,
        shapes={"fp16": ("mma.sync.m16n8k8", 8)}, mmasim=("MMA", "Turing"),
        source="mmasim 2.1.1 sim.py (F 24, L_max 8*2 bytes, e_zero -132/-20); Fasi et al. 2021 (T4)"),
    "ampere": Architecture(
        "ampere", "sm_80", F=24, block_bytes=16, e_zero_fp32=-132, e_zero_fp16=-20, fp8_F=None, fp8_e8m13=False,
        shapes={"fp16": ("mma.sync.m16n8k16", 16), "bf16": ("mma.sync.m16n8k16", 16),
                "tf32": ("mma.sync.m16n8k8", 8)}, mmasim=("MMA", "Ampere"),
        source="mmasim 2.1.1 sim.py (F 24, L_max 8*2 bytes, e_zero -132/-20); Fasi et al. 2021 (A100)"),
    "ada": Architecture(
        "ada", "sm_89", F=24, block_bytes=16, e_zero_fp32=-132, e_zero_fp16=-20, fp8_F=13, fp8_e8m13=True,
        shapes={"fp16": ("mma.sync.m16n8k16", 16), "bf16": ("mma.sync.m16n8k16", 16),
                "tf32": ("mma.sync.m16n8k8", 8), "fp8": ("mma.sync.m16n8k32", 32)},
        mmasim=("MMA", "Ada Lovelace"),
        source="mmasim 2.1.1 sim.py (F 24; FP8: F 13, RZ-E8M13; L_max 8*2 bytes; e_zero -132/-20); "
               "Khattak & Mikaitis 2025 (FP8 on Ada)"),
    "hopper": Architecture(
        "hopper", "sm_90", F=25, block_bytes=32, e_zero_fp32=-133, e_zero_fp16=-21, fp8_F=13, fp8_e8m13=True,
        shapes={"fp16": ("wgmma.mma_async.m64nNk16", 16), "bf16": ("wgmma.mma_async.m64nNk16", 16),
                "tf32": ("wgmma.mma_async.m64nNk8", 8), "fp8": ("wgmma.mma_async.m64nNk32", 32)},
        mmasim=("WGMMA", "Hopper"),
        source="mmasim 2.1.1 sim.py WGMMA (F 25; FP8: F 13, RZ-E8M13; 32 bytes per step; e_zero -133/-21); "
               "Khattak & Mikaitis 2025 (H100/H200)"),
    "blackwell": Architecture(
        "blackwell", "sm_100", F=25, block_bytes=32, e_zero_fp32=-133, e_zero_fp16=-21, fp8_F=25, fp8_e8m13=False,
        shapes={"fp16": ("tcgen05.mma.m64nNk16.kind::f16", 16), "bf16": ("tcgen05.mma.m64nNk16.kind::f16", 16),
                "tf32": ("tcgen05.mma.m64nNk8.kind::tf32", 8),
                "fp8": ("tcgen05.mma.m64nNk32.kind::f8f6f4", 32)},
        mmasim=("TCGen05MMA", "Blackwell"),
        source="mmasim 2.1.1 sim.py TCGen05MMA (F 25 for every input; 32 bytes per step; e_zero -133/-21); "
               "Khattak & Mikaitis 2025 (B200)"),
}

ALIASES = {"v100": "volta", "t4": "turing", "a100": "ampere", "rtx3090": "ampere", "l4": "ada", "l40": "ada",
           "l40s": "ada", "rtx4090": "ada", "ada-lovelace": "ada", "h100": "hopper", "h200": "hopper",
           "b200": "blackwell", "gb200": "blackwell"}

_ITEMSIZE = {"fp16": 2, "bf16": 2, "tf32": 4, "fp8_e4m3fn": 1, "fp8_e5m2": 1}


def _arch_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown tensor-core architecture {name!r}; valid names are: "
                         f"{', '.join(ARCHITECTURES)} (aliases: {', '.join(ALIASES)})")
    return key


def _input_name(fmt: str) -> str:
    key = str(fmt).strip().lower()
    key = _INPUT_ALIASES.get(key, key)
    if key not in _INPUTS:
        raise ValueError(f"unknown tensor-core input format {fmt!r}; valid formats are: {', '.join(_INPUTS)} "
                         "(aliases e4m3, e5m2)")
    return key


def get_tensor_core(name: str | TensorCoreModel = "hopper", inputs: str = "fp16", accumulator: str = "fp32",
                    *, b_inputs: str | None = None, promote_every: int | None = None) -> TensorCoreModel:
    """The tensor-core model of architecture ``name`` for ``inputs`` (``b_inputs`` for ``B`` when
    different: FP8 only) and ``accumulator``.

    Parameters
    ----------
    name : str or TensorCoreModel
        ``"volta"``, ``"turing"``, ``"ampere"``, ``"ada"``, ``"hopper"``, ``"blackwell"`` or an
        alias (``"v100"``, ``"a100"``, ``"h100"``, ``"h200"``, ``"b200"``, ...).  A model is
        returned unchanged (with ``promote_every`` applied when given).
    inputs : str
        ``"fp16"``, ``"bf16"``, ``"tf32"``, ``"fp8_e4m3fn"`` (``"e4m3"``) or ``"fp8_e5m2"``.
    accumulator : str
        ``"fp32"`` (for FP8 on Ada and Hopper this is the 13-fraction-bit ``"fp32-e8m13"``
        accumulator, which is returned) or ``"fp16"`` (fp16 and FP8 inputs only).
    promote_every : int, optional
        Promote to binary32 every this many terms (a multiple of the block length).

    Raises
    ------
    ValueError
        Unknown names, or a combination the architecture has no instruction for.

    >>> m = get_tensor_core("h100", "e4m3")
    >>> (m.n, m.F, m.accumulator)
    (32, 13, 'fp32-e8m13')
    """
    if isinstance(name, TensorCoreModel):
        return name if promote_every is None else name.with_promotion(promote_every)
    arch = ARCHITECTURES[_arch_name(name)]
    a = _input_name(inputs)
    b = a if b_inputs is None else _input_name(b_inputs)
    acc = str(accumulator).strip().lower()
    if acc not in _ACCS:
        raise ValueError(f"unknown accumulator {accumulator!r}; valid accumulators are: {', '.join(_ACCS)}")
    fp8 = a.startswith("fp8")
    if fp8 != b.startswith("fp8") or (a != b and not fp8):
        raise ValueError(f"mixed inputs {a} x {b}: only FP8 formats (e4m3, e5m2) may be mixed")
    kind = "fp8" if fp8 else a
    if kind not in arch.shapes:
        raise ValueError(f"{arch.name} has no tensor-core instruction for {a} inputs in this model; it has: "
                         f"{', '.join(arch.shapes)}")
    if acc == "fp16" and kind not in ("fp16", "fp8"):
        raise ValueError(f"an fp16 accumulator exists for fp16 and FP8 inputs only, not {a}")
    F = arch.F
    if fp8:
        F = int(arch.fp8_F)  # type: ignore[arg-type]
        if acc != "fp16" and arch.fp8_e8m13:
            acc = "fp32-e8m13"
    if acc == "fp32-e8m13" and not (fp8 and arch.fp8_e8m13):
        raise ValueError(f"the fp32-e8m13 accumulator is the FP8 accumulator of Ada and Hopper, not of "
                         f"{arch.name} with {a} inputs")
    ins, k = arch.shapes[kind]
    n = min(k, arch.block_bytes // _ITEMSIZE[a])
    e_zero = arch.e_zero_fp16 if acc == "fp16" else arch.e_zero_fp32
    types = f"{'f16' if acc == 'fp16' else 'f32'}.{_INPUTS[a][2]}.{_INPUTS[b][2]}"
    model = TensorCoreModel(arch.name, f"{ins}.{types}", a, b, acc, n, k, F, e_zero)
    return model.with_promotion(promote_every) if promote_every is not None else model


_FORMAT_INPUTS = {"fp16": "fp16", "bf16": "bf16", "tf32": "tf32", "fp8_e4m3fn": "fp8_e4m3fn", "fp8_e5m2": "fp8_e5m2"}


def tensor_core_for_format(arch: str, fmt: Any) -> TensorCoreModel:
    """The model of ``arch`` whose inputs are numbers of ``fmt`` (fp32 accumulator): the
    arithmetic of the tensor-core profiles of :mod:`fpanalysis.linalg`.  FP8 on Ada and Hopper
    is promoted to binary32 every 128 terms, as cuBLAS does for ``torch._scaled_mm`` by default
    (``use_fast_accum=False``).  Raises ValueError for a format the architecture's tensor cores
    do not take."""
    from .formats import get_format

    f = get_format(fmt)
    name = _FORMAT_INPUTS.get(f.name)
    if name is None:
        raise ValueError(f"the {arch} tensor-core profile takes inputs in {', '.join(ARCHITECTURES[_arch_name(arch)].shapes)} "
                         f"(fp8: fp8_e4m3fn, fp8_e5m2), not {f.name!r}")
    model = get_tensor_core(arch, name, "fp32")
    if name.startswith("fp8") and model.accumulator == "fp32-e8m13":
        # torch._scaled_mm's default (use_fast_accum=False): cuBLAS promotes every 128 terms
        # (mmaemu 0.1.0's presets ada and hopper: slow_chunk = 128)
        model = model.with_promotion(128)
    return model


def all_models() -> list[TensorCoreModel]:
    """Every (architecture, inputs, accumulator) model of the table, FP8 format pairs included."""
    out = []
    for arch in ARCHITECTURES.values():
        for kind in arch.shapes:
            pairs = ([(a, b) for a in ("fp8_e4m3fn", "fp8_e5m2") for b in ("fp8_e4m3fn", "fp8_e5m2")]
                     if kind == "fp8" else [(kind, kind)])
            accs = ("fp32", "fp16") if kind in ("fp16", "fp8") else ("fp32",)
            for a, b in pairs:
                for acc in accs:
                    out.append(get_tensor_core(arch.name, a, acc, b_inputs=b))
    return out


# --- inputs -----------------------------------------------------------------------------------


def _values(x: Any, fmt: str, name: str, dtype: Any = np.float64, half_bits: bool = False) -> np.ndarray:
    """float64 values of ``x``, checked to be numbers of ``fmt`` (tf32: float32 values whose low
    13 significand bits are dropped, as the tensor core reads them).  ``dtype=np.float32`` for
    formats whose numbers are float32 numbers (all but bf16); ``half_bits``: a float16 array
    for fp16 is returned as its bit patterns (a uint16 view)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub" and not str(arr.dtype).startswith(("bfloat16", "float8")):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if fmt == "tf32":
        x32 = arr.astype(np.float32)
        with np.errstate(invalid="ignore"):
            bad = ~((x32.astype(np.float64) == arr.astype(np.float64)) | np.isnan(x32))
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name}{list(idx)} = {float(arr[idx])!r} is not a float32 number (tf32 inputs "
                             "are float32 values whose low 13 significand bits the tensor core ignores)")
        bits = np.ascontiguousarray(x32).view(np.uint32) & np.uint32(0xFFFFE000)
        return bits.view(np.float32).astype(np.float64)
    if fmt == "fp16" and arr.dtype == np.float16:  # binary16 numbers by their type
        return arr.view(np.uint16) if half_bits else arr.astype(dtype)
    v = arr.astype(np.float64)
    from .rounding import round_to

    with np.errstate(over="ignore", invalid="ignore"):
        r = np.asarray(round_to(v, fmt), dtype=np.float64)
        bad = ~((r == v) | np.isnan(v))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}{list(idx)} = {float(v[idx])!r} is not a number of format {fmt!r}; "
                         f"round the inputs first (fpanalysis.round_to(x, {fmt!r}))")
    return v.astype(dtype, copy=False)


def _pad(x: np.ndarray, axis: int, n: int) -> np.ndarray:
    K = x.shape[axis]
    pad = (-K) % n
    if pad == 0 and K > 0:
        return x
    if K == 0:
        pad = n
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return np.pad(x, widths)


def _out(v: np.ndarray, model: TensorCoreModel) -> np.ndarray:
    """float64 or float32 results -> the accumulator's dtype, NaNs canonical (0x7FFFFFFF /
    0x7FFF); a float32 ``v`` may be returned itself."""
    nan = np.isnan(v)
    if model.accumulator == "fp16":
        with np.errstate(over="ignore"):
            r = v.astype(np.float16)
        r.view(np.uint16)[nan] = 0x7FFF
        return r
    r = v.astype(np.float32, copy=False)
    if nan.any():
        r.view(np.uint32)[nan] = 0x7FFFFFFF
    return r


def _model(tensor_core: str | TensorCoreModel, inputs: str, accumulator: str, b_inputs: str | None,
           promote_every: int | None) -> TensorCoreModel:
    return get_tensor_core(tensor_core, inputs, accumulator, b_inputs=b_inputs, promote_every=promote_every)


def tc_dot(x: Any, y: Any, tensor_core: str | TensorCoreModel = "hopper", inputs: str = "fp16",
           accumulator: str = "fp32", *, c: float = 0.0, b_inputs: str | None = None,
           promote_every: int | None = None) -> Any:
    """``sum_k x_k y_k + c`` as the tensor core computes it (chained fused steps, see the module
    docstring).

    ``x`` and ``y`` (1-D, same length) must hold numbers of ``inputs`` (``b_inputs`` for ``y``),
    ``c`` a number of the accumulator.  Returns a numpy float32 (float16 for an fp16
    accumulator).
    """
    model = _model(tensor_core, inputs, accumulator, b_inputs, promote_every)
    xv = np.atleast_1d(_values(x, model.a_format, "x"))
    yv = np.atleast_1d(_values(y, model.b_format, "y"))
    if xv.ndim != 1 or xv.shape != yv.shape:
        raise ValueError(f"x and y must be 1-D of the same length, got shapes {xv.shape} and {yv.shape}")
    cfmt = "fp16" if model.accumulator == "fp16" else "fp32"
    cv = float(_values(np.float64(c), cfmt, "c"))
    from ._kernels import tensorcore as K

    r = K.dot_chain(_pad(xv, 0, model.n), _pad(yv, 0, model.n), cv, *model.kernel_args())
    return _out(np.array([r]), model)[0]


def tc_matmul(A: Any, B: Any, tensor_core: str | TensorCoreModel = "hopper", inputs: str = "fp16",
              accumulator: str = "fp32", *, b_inputs: str | None = None,
              promote_every: int | None = None) -> np.ndarray:
    """``A @ B`` as the tensor core computes it: every entry a chain of fused steps along ``K``
    from +0 (see the module docstring).  Leading batch dimensions broadcast as in ``np.matmul``.

    Returns float32 (float16 for an fp16 accumulator).  Rows of ``A`` or columns of ``B`` that
    hold infinities or NaNs are computed by the (slower) one-entry kernel.
    """
    model = _model(tensor_core, inputs, accumulator, b_inputs, promote_every)
    dt = np.float32 if model.a_format in _F32_EXACT and model.b_format in _F32_EXACT else np.float64
    tiled = _tiled_mask(model) is not None  # the tiled kernel reads binary16 bits
    Av = _values(A, model.a_format, "A", dt, tiled)
    Bv = _values(B, model.b_format, "B", dt, tiled)
    if Av.ndim < 2 or Bv.ndim < 2 or Av.shape[-1] != Bv.shape[-2]:
        raise ValueError(f"tc_matmul needs A (..., M, K) and B (..., K, N), got shapes {Av.shape} and {Bv.shape}")
    batch = np.broadcast_shapes(Av.shape[:-2], Bv.shape[:-2])
    M, N = Av.shape[-2], Bv.shape[-1]
    nb = int(np.prod(batch, dtype=np.int64))
    Ab = np.broadcast_to(Av, batch + Av.shape[-2:]).reshape((nb,) + Av.shape[-2:])
    Bb = np.broadcast_to(Bv, batch + Bv.shape[-2:]).reshape((nb,) + Bv.shape[-2:])
    out = np.empty((Ab.shape[0], M, N), np.float32)  # every result is a float32 number (or NaN)
    for t in range(Ab.shape[0]):
        out[t] = _matmul2d(Ab[t], Bb[t], model)
    return _out(out.reshape(batch + (M, N)), model)


# precision and exponent range of the input formats
_PRECISION = {"fp16": 11, "bf16": 8, "tf32": 11, "fp8_e4m3fn": 4, "fp8_e5m2": 3}
_EMAX = {"fp16": 15, "bf16": 127, "tf32": 127, "fp8_e4m3fn": 8, "fp8_e5m2": 15}
_OUT_EMIN = {"fp32": -126, "fp32-e8m13": -126, "fp16": -14}
_TILED_MIN_WORK = 1 << 21  # M*N*K from which the tiled kernel runs on all threads


def _tiled_mask(model: TensorCoreModel) -> int | None:
    """The float64 mask of toward-zero rounding to the accumulator (0 for the fp16 accumulator)
    when ``model`` meets the conditions of the tiled kernel (fpanalysis._kernels.tensorcore,
    section "register-tiled GEMM"), else None:

    * fp16 or FP8 inputs (every product is an exact normal float32 number) with exponents in
      [-18, 20] (biased uint8 exponent sums, see the kernel);
    * ``n * max|a b| * 2**F < 2**31``: the block's truncated products are summed in int32;
    * ``p_out - 1 <= F`` and ``e_zero < emin_c``: a block whose products are all zero leaves
      the accumulator as it is;
    * toward-zero accumulators only: ``e_zero <= emin_a + emin_b`` (the zero-exponent floor never
      decides ``E`` when a product is nonzero) and ``emin_a + emin_b - F >= emin_out`` (a nonzero
      result lies in the accumulator's normal range, where the rounding clears low bits).
    """
    a, b = model.a_format, model.b_format
    if a not in _F32_EXACT or b not in _F32_EXACT:
        return None
    emin_a, emin_b = _INPUTS[a][1], _INPUTS[b][1]
    if min(emin_a, emin_b) < -18 or max(_EMAX[a], _EMAX[b]) > 20:
        return None
    pa, pb = _PRECISION[a], _PRECISION[b]
    if model.n * (2.0 - 2.0 ** (1 - pa)) * (2.0 - 2.0 ** (1 - pb)) * 2.0**model.F >= 2.0**31:
        return None
    _, emin_c, p_out = _ACCS[model.accumulator]
    if p_out - 1 > model.F or model.e_zero >= emin_c:
        return None
    if model.accumulator == "fp16":
        return 0
    if model.e_zero > emin_a + emin_b or emin_a + emin_b - model.F < _OUT_EMIN[model.accumulator]:
        return None
    return -(1 << (52 - (p_out - 1)))


_F32_EXACT = ("fp16", "fp8_e4m3fn", "fp8_e5m2")


def _f64(x: np.ndarray) -> np.ndarray:
    """float64 values of an array of values or of binary16 bits (uint16)."""
    return (x.view(np.float16) if x.dtype == np.uint16 else x).astype(np.float64)


def _matmul2d(A: np.ndarray, B: np.ndarray, model: TensorCoreModel) -> np.ndarray:
    from ._kernels import tensorcore as K

    n, F, rho, e_zero, emin_a, emin_b, emin_c, promote = model.kernel_args()
    M, N = A.shape[0], B.shape[1]
    if M == 0 or N == 0:
        return np.zeros((M, N), np.float32)
    A = np.ascontiguousarray(_pad(A, 1, n))
    B = np.ascontiguousarray(_pad(B, 0, n))
    Kp = A.shape[1]
    mask = _tiled_mask(model)
    if mask is not None:
        kernel = K.gemm_tiled if M * N * Kp >= _TILED_MIN_WORK else K.gemm_tiled_serial
        out, bad_a, bad_b = kernel(A, B, n, F, rho, e_zero, emin_a, emin_b, emin_c, promote, mask)
        bad_rows, bad_cols = np.flatnonzero(bad_a), np.flatnonzero(bad_b)
    else:
        A, B = A.astype(np.float64, copy=False), B.astype(np.float64, copy=False)
        EA, A0 = K.exponents(A, emin_a)
        EB, B0 = K.exponents(B, emin_b)
        ZA = (A0 == 0).reshape(M, Kp // n, n).any(axis=2)
        ZB = (B0 == 0).reshape(Kp // n, n, N).any(axis=1)
        out = K.gemm(A0, B0, EA, EB, ZA, ZB, n, F, rho, e_zero, emin_c, promote)
        bad_rows = np.flatnonzero(~np.isfinite(A).all(axis=1))
        bad_cols = np.flatnonzero(~np.isfinite(B).all(axis=0))
    if bad_rows.size or bad_cols.size:
        ii, jj = np.meshgrid(np.arange(M), np.arange(N), indexing="ij")
        sel = np.zeros((M, N), bool)
        sel[bad_rows, :] = True
        sel[:, bad_cols] = True
        ii, jj = ii[sel], jj[sel]
        out[ii, jj] = K.dot_rows(_f64(A[ii]), _f64(np.ascontiguousarray(B.T)[jj]), np.zeros(ii.size), n, F, rho,
                                 e_zero, emin_a, emin_b, emin_c, promote)
    return out

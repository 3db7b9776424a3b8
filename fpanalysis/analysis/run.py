"""``analyze``: where does the fp16 rounding error of a PyTorch model come from, and is it safe?

:func:`analyze` traces a model (:mod:`fpanalysis.nn.trace`), streams a data set through it
four ways -- real torch fp32 (``M32``), a float64 reference, the emulator in the chosen
format/profile/mode, and real torch 16-bit kernels (float16 for fp16, bfloat16 for bf16) --
records every layer, bounds every
layer's error from the fp32 run alone (:mod:`fpanalysis.analysis.network_bounds`), and turns the
bound at the logits into per-input certificates (:mod:`fpanalysis.tolerance`).  The result is
an :class:`~fpanalysis.report.AnalysisReport`.

This module imports torch only inside :func:`analyze`, so ``import fpanalysis`` stays cheap.

>>> import torch
>>> from fpanalysis.analysis import analyze
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
>>> rep = analyze(model, torch.randn(64, 20), "fp16", progress=False)
>>> rep.violations, rep.tolerance["logits"].runs["emulator"].bound_violations
(0, 0)
>>> rep.tolerance["logits"].certified_fraction > 0.9
True
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..formats import get_format
from ..rounding import RoundingMode
from ..tolerance import summarize
from .report import AnalysisReport

__all__ = ["AnalysisConfig", "analyze"]


def _environment(torch: Any) -> dict[str, Any]:
    import numba

    from ..version import __version__

    env: dict[str, Any] = {
        "fpanalysis": __version__, "python": platform.python_version(), "numpy": np.__version__,
        "numba": numba.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "cuda": bool(torch.cuda.is_available()),
    }
    try:
        env["mkldnn_matmul_fp32_precision"] = str(torch.backends.mkldnn.matmul.fp32_precision)
        env["mkldnn_conv_fp32_precision"] = str(torch.backends.mkldnn.conv.fp32_precision)
    except AttributeError:  # older torch
        pass
    env["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return env


@contextmanager
def _strict_fp32(torch: Any) -> Iterator[dict[str, Any]]:
    """Run the fp32 baseline in IEEE binary32 and fp16 GEMMs with binary32 reductions.

    oneDNN (CPU) and cuBLAS/cuDNN (CUDA) may silently compute "fp32" in bf16/TF32, and CUDA fp16
    GEMMs may reduce in fp16 (docs/semantics.md §4); the bounds assume neither.  The flags are set for
    the duration of the analysis, restored afterwards, and recorded in the report.
    """
    saved: list[tuple[Any, str, Any]] = []
    record: dict[str, Any] = {}

    def setflag(label: str, obj: Any, name: str, value: Any) -> None:
        if obj is not None and hasattr(obj, name):
            saved.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)
            record[label] = value

    mk = torch.backends.mkldnn
    setflag("torch.backends.mkldnn.matmul.fp32_precision", getattr(mk, "matmul", None), "fp32_precision", "ieee")
    setflag("torch.backends.mkldnn.conv.fp32_precision", getattr(mk, "conv", None), "fp32_precision", "ieee")
    setflag("torch.backends.cuda.matmul.allow_tf32", torch.backends.cuda.matmul, "allow_tf32", False)
    setflag("torch.backends.cudnn.allow_tf32", torch.backends.cudnn, "allow_tf32", False)
    setflag("torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction", torch.backends.cuda.matmul,
            "allow_fp16_reduced_precision_reduction", False)
    old_prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    record["torch.float32_matmul_precision"] = "highest"
    try:
        yield record
    finally:
        torch.set_float32_matmul_precision(old_prec)
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


@dataclass(frozen=True)
class AnalysisConfig:
    """Every option of :func:`analyze` except the model, the data and the labels, checked once
    (``fmt`` becomes a :class:`~fpanalysis.formats.FloatFormat`, ``profile`` a canonical name).
    The fields are :func:`analyze`'s parameters of the same names."""

    fmt: Any = "fp16"
    profile: str = "fp32-accumulate"
    mode: str = "nearest-even"
    failure_prob: float = 1e-6
    batch_size: int = 128
    progress: Any = True
    order: str | None = None
    block: int = 32
    seed: int | None = None
    real_half: bool | None = None
    half_device: str = "cpu"
    cuda: bool | None = None
    reference: bool = True
    local: bool = True
    keep_per_input: bool = True
    name: str | None = None
    certificate: str = "adjoint"

    def __post_init__(self) -> None:
        from ..linalg import Profile

        if self.certificate not in CERTIFICATES:
            raise ValueError(f"unknown certificate {self.certificate!r}; valid certificates are: "
                             f"{', '.join(CERTIFICATES)}")

        object.__setattr__(self, "fmt", get_format(self.fmt))
        object.__setattr__(self, "profile", Profile.parse(self.profile).value)
        RoundingMode.parse(self.mode)  # an unknown mode is refused here, before any model runs
        if not 0.0 < self.failure_prob < 1.0:
            raise ValueError(f"failure_prob must be in (0, 1), got {self.failure_prob}")
        if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size}")
        if int(self.block) < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")


#: Certificates :func:`analyze` can use: the adjoint one (:mod:`.adjoint`, piecewise-linear
#: networks and GELU / layer norm / softmax / attention products, falling back to the interval one
#: elsewhere), the same with tier-B (exact-row) radii (costly: one backward pass per neuron at every
#: ReLU / max-pool / smooth-step input), the windowed tier B and the interval one alone.
CERTIFICATES = ("adjoint", "adjoint-exact", "adjoint-windowed", "interval")
#: the adjoint certificates and their radii (docs/theory.md section 2.3a)
_RADII = {"adjoint": "interval", "adjoint-exact": "exact", "adjoint-windowed": "windowed"}


def _as_tensor(torch: Any, x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))


def analyze(
    model: Any,
    inputs: Any,
    fmt: Any = "fp16",
    profile: str = "fp32-accumulate",
    mode: str = "nearest-even",
    failure_prob: float = 1e-6,
    batch_size: int = 128,
    progress: bool = True,
    *,
    labels: Any = None,
    order: str | None = None,
    block: int = 32,
    seed: int | None = None,
    real_half: bool | None = None,
    half_device: str = "cpu",
    cuda: bool | None = None,
    reference: bool = True,
    local: bool = True,
    keep_per_input: bool = True,
    name: str | None = None,
    certificate: str = "adjoint",
) -> AnalysisReport:
    """Analyse the rounding error of ``model`` in ``fmt`` on ``inputs``, layer by layer.

    Parameters
    ----------
    model : torch.nn.Module
        Any model torch.fx can trace built from the supported layers
        (:data:`fpanalysis.nn.trace.SUPPORTED_LAYERS`); analysed in eval mode, in float32, on
        the CPU (a copy: the argument is not modified).
    inputs : torch.Tensor or array_like, shape (N, ...)
        The data set (taken as float32: the fp32 model's inputs).
    fmt : str or FloatFormat
        Low-precision format (``"fp16"``, ``"bf16"``, ...).
    profile : str
        Arithmetic of Linear/Conv/matmul in the emulator and the bounds: ``"fp32-accumulate"``
        (PyTorch/cuBLAS: exact products, binary32 accumulation, one rounding), ``"ieee"``
        (every operation rounded to ``fmt``) or ``"exact"``.
    mode : str
        Rounding mode of the emulator's arithmetic (conversions of weights and inputs are
        round-to-nearest-even, like ``tensor.half()``).
    failure_prob : float
        Per-input failure probability of the probabilistic bound (Higham-Mary): one
        ``lambda`` is chosen for the whole network so that the union bound over all its
        rounding events is ``failure_prob``.
    batch_size : int
        Inputs per batch (memory vs speed).
    progress : bool or callable
        Show a progress bar; or a callback ``progress(done, total, phase)`` called after each
        batch.
    labels : array_like, optional
        Class labels, to report accuracies.
    order, block : str, int
        Summation order of the emulated linear algebra (default ``"blas"`` for
        fp32-accumulate, ``"sequential"`` for ieee).
    seed : int, optional
        For stochastic rounding.
    real_half : bool, optional
        Also run the real torch 16-bit kernels in the format's own dtype, step by step, on
        ``half_device`` (CPU by default): ``torch.float16`` for fp16 (the run is named
        ``"torch-half"``), ``torch.bfloat16`` for bf16 (``"torch-bf16"``).  Default: when torch
        has the format; ``True`` for another format is an error.
    cuda : bool, optional
        Also run the whole model in the format's torch dtype on CUDA and compare its outputs
        (``"cuda-half"`` / ``"cuda-bf16"``; default: when CUDA is available and torch has the
        format).  Certified only under the assumption that cuBLAS/cuDNN use classical
        algorithms with binary32 accumulation (no Winograd/FFT, no reduced-precision
        reductions): reported, not asserted.
    reference : bool
        Also run the float64 reference (errors against "exact").
    local : bool
        Also evaluate every step's own error (exact and torch-half op on the emulated input).
    keep_per_input : bool
        Keep per-input certificates (Gamma, B, delta, classes) in the report.
    name : str, optional
        Model name for the report.
    certificate : {"adjoint", "adjoint-exact", "adjoint-windowed", "interval"}
        ``"adjoint"`` (default): the per-input certificate of :mod:`fpanalysis.analysis.adjoint`
        (error propagated through the network's Jacobian, margins against each class) combined
        with the interval one (either suffices; the logit bound is the smaller of the two), plus
        its limit and the calibrated, NOT sound, predictor ``delta_pred`` with the quantiles of
        ``delta / delta_pred`` (``report.certificate``).  Networks with layers it does not cover
        (tanh, sigmoid, SiLU, GELU's tanh form, ...) are not certified by the adjoint method: the
        report says so and uses the interval certificate.  ``"adjoint-exact"``: the same with
        tier-B radii (exact Jacobian rows at every ReLU / max-pool / smooth-step input,
        docs/theory.md section 2.3a): certifies deep
        CNNs that tier A cannot, at the cost of one backward pass per neuron or per group of
        neurons whose receptive fields never overlap (tens to hundreds of times the tier-A
        time).  ``"adjoint-windowed"``: tier B with the rows stopped at the last change of
        resolution before each step (sound, looser, several times cheaper on networks with
        strided stages).  ``"interval"``: the interval certificate
        ``Gamma > 2 B`` alone (:mod:`fpanalysis.analysis.network_bounds`).

    Returns
    -------
    AnalysisReport

    Raises
    ------
    ValueError
        Unsupported layer (naming its path and type), bad option.
    fpanalysis.tolerance.LemmaViolation
        If an input with Gamma > 2 delta changes class (a bug, never expected).
    """
    import torch

    cfg = AnalysisConfig(fmt, profile, mode, failure_prob, batch_size, progress, order, block, seed, real_half,
                         half_device, cuda, reference, local, keep_per_input, name, certificate)
    with _strict_fp32(torch) as flags:
        report = _analyze(torch, model, inputs, labels, cfg)
    report.environment["precision_flags"] = flags
    return report


def _analyze(torch: Any, model: Any, inputs: Any, labels: Any, c: AnalysisConfig) -> AnalysisReport:
    from ..nn.execute import LayerEmulator
    from ..nn.trace import trace_model
    from ..progress import progress_bar, progress_enabled
    from .network_bounds import BoundConfig, network_lambda
    from .record import LayerStats, shapes_and_events, stream_batches

    t_start = time.perf_counter()
    f, block, name, real_half, cuda = c.fmt, c.block, c.name, c.real_half, c.cuda
    emu = LayerEmulator(f, c.profile, c.mode, c.order, block, c.seed)
    half_dtype, tag = real_dtype(torch, f)
    if real_half and half_dtype is None:
        raise ValueError(f"real_half=True: torch has no dtype for {f.name} (only fp16 and bf16 run for real)")
    if cuda and half_dtype is None:
        raise ValueError(f"cuda=True: torch has no dtype for {f.name} (only fp16 and bf16 run for real)")
    real_half = half_dtype is not None and real_half is not False
    m = copy.deepcopy(model).float().eval().cpu()
    traced = trace_model(m)
    X = _as_tensor(torch, inputs)
    if X.ndim < 1 or X.shape[0] == 0:
        raise ValueError("inputs must be a non-empty batch (N, ...)")
    N = int(X.shape[0])
    shapes, ns, events = shapes_and_events(traced, X[:1])
    cfg0 = BoundConfig.make(f, emu.profile, emu.mode, emu.order, block)
    lam = network_lambda(events, c.failure_prob, cfg0) if events else None
    cfg = BoundConfig.make(f, emu.profile, emu.mode, emu.order, block, lam)
    stats = {s.name: LayerStats(s, f, shapes.get(s.name, ()), ns.get(s.name)) for s in traced.steps
             if s.kind != "size"}
    timings: dict[str, float] = {"trace": time.perf_counter() - t_start}
    bs = int(c.batch_size)
    nb = -(-N // bs)
    batches = (X[i * bs:(i + 1) * bs] for i in range(nb))
    kw = {"reference": c.reference, "real_half": real_half, "local": c.local, "timings": timings, "half_device": c.half_device,
          "half_dtype": half_dtype or torch.float16}
    if callable(c.progress):  # a caller's callback (the check forwards it to its own bar)
        out = stream_batches(traced, batches, emu, cfg, stats, on_batch=lambda i: c.progress(i + 1, nb, "certificate"),
                             **kw)
    elif c.progress and progress_enabled():
        with progress_bar(f"analyze {name or type(model).__name__} ({f.name})", total=nb, unit="batch") as bar:
            out = stream_batches(traced, batches, emu, cfg, stats, on_batch=lambda i: bar.update(1), **kw)
    else:
        out = stream_batches(traced, batches, emu, cfg, stats, **kw)
    arrs = out.arrays()
    runs: dict[str, np.ndarray] = {"emulator": arrs["emulator"]}
    if real_half:
        runs[f"torch-{tag}"] = arrs["half"]
    decomposed = any(s.origin == "nn.MultiheadAttention" for s in traced.steps)
    if real_half and decomposed:  # the whole model with torch's fused attention kernels
        t0 = time.perf_counter()
        runs[f"torch-{tag}-model"] = _whole_model_half(torch, m, X, bs, "cpu", half_dtype)
        timings["half-model"] = time.perf_counter() - t0
    use_cuda = (half_dtype is not None and torch.cuda.is_available()) if cuda is None else bool(cuda)
    cuda_run = f"cuda-{tag}"
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("cuda=True but torch reports no CUDA device")
        t0 = time.perf_counter()
        runs[cuda_run] = _whole_model_half(torch, m, X, bs, "cuda", half_dtype)
        timings[cuda_run] = time.perf_counter() - t0
    fail = sum(s.fail for s in stats.values())
    probability = max(0.0, 1.0 - fail)
    t0 = time.perf_counter()
    G, Gp, cert_extra, adj, cert_info = arrs["G"], arrs["Gp"], None, None, {"method": "interval"}
    if c.certificate in _RADII:
        from .adjoint import NotCovered, adjoint_certificate, unsupported_steps
        from .adjoint import _unsupported_message as unsupported_message

        bad = unsupported_steps(traced)
        if bad:
            cert_info["note"] = unsupported_message(bad) + "; the interval certificate is used"
        else:
            try:
                adj = adjoint_certificate(traced, X, cfg0, batch_size=min(bs, 64),
                                          radii=_RADII[c.certificate])
            except NotCovered as e:
                cert_info["note"] = f"{e}; the interval certificate is used"
        if adj is not None:
            G, Gp = np.minimum(G, adj.bound), np.minimum(Gp, adj.bound)  # both bounds are sound
            cert_extra = adj.certified
            cert_info["method"] = "adjoint"
            cert_info["radii"] = _RADII[c.certificate]
    timings["adjoint"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tol, per = {}, {}
    for space in ("logits", "probs"):
        cuda_free = {k: v for k, v in runs.items() if k != cuda_run}
        extra = cert_extra if space == "logits" else None
        summ, per_in = summarize(arrs["fp32"], G, Gp, probability, cuda_free, space=space, certified=extra)
        if cuda_run in runs:  # observed only: CUDA kernels are outside the bound's assumptions
            s2, p2 = summarize(arrs["fp32"], G, Gp, probability, {cuda_run: runs[cuda_run]},
                               space=space, warn=False, certified=extra)
            summ.runs.update(s2.runs)
            per_in.update({k: v for k, v in p2.items() if k.endswith(cuda_run)})
        tol[space] = summ
        if c.keep_per_input:
            per[space] = {k: np.asarray(v).tolist() for k, v in per_in.items()}
    if adj is not None:
        from .adjoint import summarize_adjoint

        cert_info.update(summarize_adjoint(adj, arrs["fp32"], arrs["G"], runs))
        if c.keep_per_input:
            per["adjoint"] = {"bound": adj.bound.max(1).tolist(), "limit": adj.limit.tolist(),
                              "predicted": adj.predicted.tolist(), "certified": adj.certified.tolist()}
    timings["tolerance"] = time.perf_counter() - t0
    acc: dict[str, float] = {}
    if labels is not None:
        y = np.asarray(labels.cpu().numpy() if hasattr(labels, "cpu") else labels).reshape(-1)
        if y.shape[0] != N:
            raise ValueError(f"labels has {y.shape[0]} entries for {N} inputs")
        acc["fp32"] = float((np.argmax(arrs["fp32"], 1) == y).mean())
        for k, v in runs.items():
            acc[k] = float((np.argmax(v, 1) == y).mean())
    timings["total"] = time.perf_counter() - t_start
    config = {
        "model": name or type(model).__name__, "fmt": f.name, "profile": emu.profile, "mode": emu.mode,
        "order": emu.order, "block": block, "failure_prob": c.failure_prob, "lam": lam, "events_per_input": events,
        "n_inputs": N, "batch_size": bs, "real_half": real_half, "real_dtype": str(half_dtype) if real_half else None,
        "reference": c.reference, "local": c.local,
        "steps": len(traced.steps), "certificate": c.certificate,
    }
    return AnalysisReport(config=config, layers=[s.report() for s in stats.values()], tolerance=tol, per_input=per,
                          timings=timings, environment=_environment(torch), probability=probability, accuracy=acc,
                          certificate=cert_info)


def real_dtype(torch: Any, f: Any) -> tuple[Any, str]:
    """The torch dtype that runs format ``f`` for real, and the tag of its runs:
    ``(torch.float16, "half")`` for IEEE binary16, ``(torch.bfloat16, "bf16")`` for bfloat16,
    ``(None, "half")`` for every other format (saturating or NaN-on-overflow variants
    included: torch's dtypes overflow to inf)."""
    from ..formats import Overflow

    ieee_like = f.subnormals and f.overflow is Overflow.INF and f.max_significand is None
    if ieee_like and (f.p, f.emin, f.emax) == (11, -14, 15):
        return torch.float16, "half"
    if ieee_like and (f.p, f.emin, f.emax) == (8, -126, 127):
        return torch.bfloat16, "bf16"
    return None, "half"


def _whole_model_half(torch: Any, model: Any, X: Any, bs: int, device: str, dtype: Any) -> np.ndarray:
    mh = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    outs = []
    with torch.no_grad():
        for i in range(0, X.shape[0], bs):
            outs.append(mh(X[i:i + bs].to(device=device, dtype=dtype)).double().cpu().numpy())
    return np.concatenate(outs, 0)  # non-finite outputs count as delta = inf

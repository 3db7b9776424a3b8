"""Adjoint (first-order exact) certificates of fp16-vs-fp32 agreement for piecewise-linear networks.

The interval certificate (:mod:`.network_bounds`) propagates a componentwise bound through
``|W|`` and so ignores the sign cancellations that keep the real error near one local
rounding per layer; on deep networks it grows by the row sums of ``|W|`` per layer.  This
module bounds the error at the logits through the network's Jacobian instead.

Decomposition (exact, not first order).  Let ``x~_s`` be the fp32 run's value of step ``s``,
``x^_s`` the low-precision run's value, ``d_s = x^_s - x~_s``.  Every supported step is, with the
rounded parameters, affine (linear, conv, batch norm in eval, pooling by averaging, residual
add, reshapes) or piecewise linear (ReLU, max pooling), and each is split as::

    d_s = L_s d_in + k_s + e_s + eta_s

* ``L_s``: the step's linear map with the ROUNDED parameters (``W^``, ``alpha^ = w^/sqrt(v^+eps)``),
  and for ReLU / max pooling the selection made by the fp32 run (the fp32 activation pattern);
* ``k_s``: the known part -- the rounding of the input, ``(W^ - W) x~ + (b^ - b)`` of a
  linear/conv layer, ``(alpha^ - alpha) x~ + (beta^ - beta)`` of batch norm;
* ``e_s = (f^(x^) - f_p^(x^)) - (f~_32(x~) - f(x~))``: the step's own low-precision rounding error
  on its actual input minus the fp32 run's own error, ``|e_s| <= e_bar_s`` by the local bounds of
  :mod:`fpanalysis.bounds.layers` / :mod:`fpanalysis.bounds.accumulation` evaluated on the interval
  ``|x^| <= |x~| + R_in`` (this is the "growth of the local error with the incoming radius");
* ``eta_s``: the switching slack.  ReLU: ``relu(z + d) - relu(z) - [z > 0] d`` lies between 0
  and ``-(|d| - |z|)_+`` (z > 0) or ``(|d| - |z|)_+`` (z <= 0), so ``|eta| <= (R - |z|)_+`` for
  ``|d| <= R``.  Max pooling with the fp32 winner ``i*``: ``max_i(z_i + d_i) - z_i* - d_i*``
  lies in ``[0, max_{i != i*} (R_i + R_i* - (z_i* - z_i))_+]``.

Unrolling over the steps, the logit difference is exactly ``d_L = sum_s J_{L<-s}(k_s + e_s + eta_s)``
with ``J`` the product of the ``L_s``.  So ``mu = J k`` (one forward pass of the linear
network: a JVP) and, for any vector ``c``, ``|c^T d_L - c^T mu| <= sum_s |g_s| (e_bar_s + eta_bar_s)``
with ``g_s = J_{L<-s}^T c`` (one backward pass: a VJP).  The certificate takes ``c = e_c - e_j``
(``c`` the fp32 class): the margin ``m_j = z_c - z_j`` cannot change sign when
``m_j > |mu_c - mu_j| + sum_s |g_{j,s}| (e_bar_s + eta_bar_s)`` for every ``j != c``; ``c = e_i``
gives the componentwise bound on ``|z16_i - z32_i|`` that is compared with the observed delta.
This is the first-order term of FPTaylor (Solovyev, Baranowski, Briggs, Jacobsen, Rakamaric,
Gopalakrishnan, "Rigorous Estimation of Floating-Point Round-Off Errors with Symbolic Taylor
Expansions", TOPLAS 41(1), 2018), made exact for piecewise-linear maps by the switching slack,
i.e. the small-perturbation case of the linear relaxations of CROWN / auto_LiRPA (Zhang et al.,
NeurIPS 2018; Xu et al., NeurIPS 2020) with the rounding errors as perturbations.

Radii.  ``R_s >= |d_s|`` is needed at every ReLU / max-pool input and for the local bounds:
``R_s = min(G_s, |mu_s| + |J| (e_bar + eta_bar))`` where ``G_s`` is the interval bound of
:mod:`.network_bounds` ("tier A", recomputed here step by step from the smaller radius) and the
second term is the same linear network propagated with absolute values; both are sound, so is
their minimum.

Soundness of the arithmetic.  ``mu``, ``g`` and the magnitudes are computed in float64.  Each is
a sum of at most ``N`` products along any path (``N`` = the sum of the reduction lengths), so
its float64 error is at most ``gamma_N(u64)`` times the same computation with absolute values,
which the absolute pass ``A = |J| (|k| + e_bar + eta_bar)`` bounds; the certificate and every
radius add ``gamma A`` with ``gamma = 4 N u64 / (1 - 4 N u64)`` (``N`` also counting the widest
per-step sum; computed from the network's shapes before any radius, required ``<= 2**-30``) and
pad every sum by ``1 + 2**-40``.  ``A`` is a product of absolute values and grows like the
interval bound on deep networks, so this allowance must be the network's own ``gamma_N``, not a
fixed one: on ResNet-20 a fixed ``2**-30`` alone exceeded the logit margins.  ``k`` is
computed in float64 from the exact rounded parameters (its error, ``2 (n + 2) u64 |W^ - W| |x~|``,
is added to ``e_bar``).  If any ``e_bar`` or ``eta_bar`` of an input is infinite (possible
overflow), that input is not certified and its bounds are infinite.

The limit.  Any bound that only knows ``|e_s| <= e_bar_s`` cannot go below
``sum_s |g_s| e_bar_s`` (the errors may align with the signs of ``g``).  It is reported per input
(``limit``, ``max_i``, with the local bounds at radius 0, i.e. at the fp32 point: what the
certificate would give with exact radii and no switching), so users see how far a certificate is
from what interval-style reasoning allows; on deep networks the gap is the radius (see above).

The predictor (NOT sound).  Modelling each rounding error as independent, zero-mean and uniform
over one ulp of the result (Higham & Mary, "A New Approach to Probabilistic Rounding Error
Analysis", SISC 41(5), 2019), ``z16_i - z32_i`` has mean ``mu_i`` and standard deviation
``sigma_i``, ``sigma_i^2 = sum_s g_{i,s}^2 ulp(y_s)^2 / 12``; ``delta_pred = max_i (|mu_i| + sigma_i)``.
Under the ``ieee`` profile, where every product and every addition of a dot product is rounded
to the format, a linear / conv output's variance ``ulp(y_s)^2 / 12`` becomes the sum over those
roundings in the profile's summation tree (:func:`_ieee_var`, :func:`partial_sum_ulp2`); the
other profiles round the output once.  It is a calibrated estimate, labelled as such, never
used to certify (docs/theory.md section 2.3a).

Smooth layers (layer norm, softmax, GELU, tanh, sigmoid, SiLU, products of activations such as
``Q K^T``) are not certified by the adjoint method: :func:`unsupported_steps` lists them and
:func:`fpanalysis.analysis.analyze` falls back to the interval certificate, saying so.
See docs/theory.md (sections 2.3a and 3.3) for the certificate and the interval bounds it builds on.

>>> import torch
>>> from fpanalysis.nn.trace import trace_model
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
>>> res = adjoint_certificate(trace_model(m), torch.randn(32, 8), BoundConfig.make("fp16"))
>>> res.bound.shape, bool(res.certified.mean() > 0.9), bool((res.limit <= res.bound.max(1)).all())
((32, 3), True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..bounds import layers as LB
from ..nn.execute import ParamCache, torch_step
from ..nn.trace import Step, TracedModel
from ..rounding import round_to
from . import rows
from .network_bounds import (
    BoundConfig,
    _bn_params,
    _fix,
    _mag,
    _np,
    _pool_op,
    _rnd,
    _t,
    _weights,
    accumulation_bounds,
    reduction_length,
)

__all__ = ["ADJOINT_KINDS", "RADII", "AdjointResult", "adjoint_certificate", "adjoint_radii", "partial_sum_ulp2",
           "unsupported_steps"]

#: Step kinds the adjoint certificate covers (piecewise-linear networks).
ADJOINT_KINDS = frozenset({"input", "output", "size", "identity", "shape", "cat", "linear", "conv2d", "batchnorm",
                           "relu", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "mean", "sum", "add", "sub",
                           "affine"})

_U64 = 2.0**-53
_PAD = 1.0 + 2.0**-40


def unsupported_steps(traced: TracedModel) -> list[Step]:
    """Steps the adjoint method does not cover (smooth or bilinear layers: not certified by it)."""
    out = []
    for s in traced.steps:
        if s.kind not in ADJOINT_KINDS or s.kind == "maxpool2d" and s.attrs.get("ceil_mode"):
            out.append(s)
    return out


def _unsupported_message(bad: list[Step]) -> str:
    names = ", ".join(f"{s.describe()} [{s.kind}]" for s in bad[:5])
    return (f"the adjoint certificate covers piecewise-linear networks only (linear, conv, batch norm, ReLU, "
            f"max/average pooling, additions, reshapes); not certified by the adjoint method: {names}"
            f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}")


@dataclass
class AdjointResult:
    """Per-input results of :func:`adjoint_certificate` (arrays over the N inputs, K classes)."""

    bound: np.ndarray          # (N, K) sound bound on |z16_i - z32_i|
    margin_bound: np.ndarray   # (N, K) sound bound on |change of z_c - z_j| (0 at j = c)
    margin: np.ndarray         # (N, K) z_c - z_j of the fp32 run
    certified: np.ndarray      # (N,) every margin exceeds its bound
    limit: np.ndarray          # (N,) max_i sum_s |g_is| e_bar_s at radius 0 (no interval-style bound goes below)
    mu: np.ndarray             # (N, K) known part J k (input and parameter roundings)
    sigma: np.ndarray          # (N, K) predictor's standard deviation
    predicted: np.ndarray      # (N,) delta_pred = max_i (|mu_i| + sigma_i)  (NOT sound)
    switching: np.ndarray      # (N,) max_i sum_s |g_is| eta_s (ReLU / max-pool switching slack)
    stats: dict[str, Any] = field(default_factory=dict)


class _Rec:
    __slots__ = ("Ak", "Aw", "D", "G", "gam", "is_eta", "lin", "mu", "var", "w", "w0", "z")

    def __init__(self) -> None:
        self.z = self.G = self.mu = self.Ak = self.Aw = self.lin = self.w = self.w0 = self.var = None
        self.D = None  # tier B: bound on |d - mu| from exact rows (the windowed radii start from it)
        self.is_eta = False
        self.gam = _SLACK


def _ulp_var(z: torch.Tensor, fmt: Any) -> torch.Tensor:
    """ulp(z)^2 / 12 in ``fmt`` (variance of a rounding error uniform over one ulp)."""
    a = z.double().abs()
    e = torch.floor(torch.log2(torch.where(a > 0, a, torch.full_like(a, fmt.min_normal))))
    e = torch.clamp(e, min=fmt.emin)
    ulp = torch.exp2(e - (fmt.p - 1))
    return ulp * ulp / 12.0


def _ulp2(v: torch.Tensor, fmt: Any) -> torch.Tensor:
    """``ulp(v)^2`` in ``fmt`` (subnormal-aware: the ulp is ``2**(emin - p + 1)`` below the normal
    range), 0 where ``v == 0`` (an exact zero is not a rounding)."""
    v = v.double()
    e = ((v.view(torch.int64) >> 52) & 0x7FF) - 1023  # binary64 exponent field (a subnormal: -1023)
    e2 = torch.clamp(2 * (torch.clamp(e, min=fmt.emin) - (fmt.p - 1)), -1022, 1023)
    return torch.where(v != 0, ((e2 + 1023) << 52).view(torch.float64), torch.zeros_like(v))


def _sequential_ulp2(t: torch.Tensor, fmt: Any) -> torch.Tensor:
    """``sum_{k >= 2} ulp(s_k)^2`` over the partial sums ``s_k = t_1 + ... + t_k`` of a sum started at
    +0 (its first addition, ``0 + t_1``, is exact), counting a rounding only where both operands
    ``s_{k-1}`` and ``t_k`` are nonzero (else the addition is exact)."""
    if t.shape[-1] < 2:
        return torch.zeros(t.shape[:-1], dtype=t.dtype)
    s = torch.cumsum(t, -1)
    live = (t[..., 1:] != 0) & (s[..., :-1] != 0)
    return (_ulp2(s[..., 1:], fmt) * live).sum(-1)


def partial_sum_ulp2(t: torch.Tensor, fmt: Any, order: str = "sequential", block: int = 32) -> torch.Tensor:
    """``sum ulp(p)^2`` over the rounded additions ``p = a + b`` of summing ``t`` (last axis) in ``order``.

    The additions are those of the ``ieee`` profile's summation trees (docs/semantics.md section
    1.1; :mod:`fpanalysis.linalg`): ``sequential`` from +0, ``blocked`` (blocks of ``block`` terms
    summed sequentially from +0, then the block sums sequentially from +0) and ``pairwise``
    (adjacent pairs, an odd last value moving up a level unchanged).  Each partial sum is taken
    exactly (float64 of the given terms, not the rounded run's values: this serves the predictor,
    which is not sound) and an addition with a zero operand is exact and not counted.  ``ulp`` is
    that of ``fmt``, subnormal-aware.  The result, over 12, is the variance the additions add to
    the sum when each rounding error is uniform over one ulp (Higham & Mary, SISC 41(5), 2019).
    """
    t = t.double()
    if order == "sequential":
        return _sequential_ulp2(t, fmt)
    if order == "blocked":
        K = t.shape[-1]
        nb = -(-K // block)
        tp = F.pad(t, (0, nb * block - K))
        tb = tp.reshape(t.shape[:-1] + (nb, block))
        return _sequential_ulp2(tb, fmt).sum(-1) + _sequential_ulp2(tb.sum(-1), fmt)
    if order == "pairwise":
        tot = torch.zeros(t.shape[:-1], dtype=t.dtype)
        v = t
        while v.shape[-1] > 1:
            m = v.shape[-1] // 2
            a, b = v[..., 0:2 * m:2], v[..., 1:2 * m:2]
            p = a + b
            tot = tot + (_ulp2(p, fmt) * ((a != 0) & (b != 0))).sum(-1)
            v = torch.cat([p, v[..., 2 * m:]], -1)
        return tot
    raise ValueError(f"unknown summation order {order!r}; valid orders are: sequential, pairwise, blocked")


#: Elements of the per-chunk term tensors of :func:`_ieee_var` (float64; about 128 MiB).
_TERMS_CHUNK = 1 << 24


def _ieee_var(s: Step, z: torch.Tensor, Wh: torch.Tensor, bh: torch.Tensor | None, cfg: BoundConfig) -> torch.Tensor:
    """Predictor variance of a linear / conv output under the ``ieee`` profile (not sound).

    Every product ``w_jk x_k`` and every addition of the dot product is rounded to the format
    (docs/semantics.md section 1.1), the bias being one more term at the end (weight ``b_j``,
    input 1: its product is exact), as the emulator computes it (:func:`fpanalysis.linalg.conv2d`,
    ``fpanalysis.nn.execute``).  Each rounding error is modelled as uniform over one ulp of its
    result and enters ``y_j`` with coefficient 1, so ``var(y_j) = (sum_k ulp(w_jk x_k)^2 +
    sum_adds ulp(partial sum)^2) / 12``, in the profile's summation order
    (:func:`partial_sum_ulp2`); the last addition is the rounding of ``y_j`` itself.  Terms are
    the rounded weights times the fp32 run's inputs; a convolution's terms come from an unfold of
    its input in the emulator's ``(c, kh, kw)`` order, so the tree is the emulator's own.
    """
    f = cfg.fmt
    B = z.shape[0]

    def terms_var(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        # X (B, L, Kc), W (O, Kc), b (O,) or None -> (B, O, L)
        O = W.shape[0]
        Bx, L, Kc = X.shape
        step = max(1, _TERMS_CHUNK // max(1, Bx * L * (Kc + 1)))
        out = []
        for o in range(0, O, step):
            T = X[:, None, :, :] * W[None, o:o + step, None, :]  # (B, o, L, Kc)
            pv = _ulp2(T, f).sum(-1)
            if b is not None:
                T = torch.cat([T, b[o:o + step].reshape(1, -1, 1, 1).expand(Bx, -1, L, 1)], -1)
            out.append(pv + partial_sum_ulp2(T, f, cfg.order, cfg.block))
            del T
        return torch.cat(out, 1) / 12.0

    if s.kind == "linear":
        lead = z.shape[:-1]
        X = z.reshape(-1, 1, z.shape[-1])
        v = terms_var(X, Wh, bh)  # (B', O, 1)
        return v.reshape(*lead, Wh.shape[0])
    a = s.attrs
    groups = int(a["groups"])
    O, cg, kh, kw = Wh.shape
    og = O // groups
    pad = a["padding"]  # a pair: the trace resolves padding='same' (fpanalysis.nn.trace)
    (sh, sw), (ph, pw), (dh, dw) = _pair(a["stride"]), _pair(pad), _pair(a["dilation"])
    zp = F.pad(z, (pw, pw, ph, ph)) if ph or pw else z
    # windows as a strided view (torch's float64 im2col is slow): (B, C, Ho, Wo, kh, kw)
    win = zp.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
    Ho, Wo = win.shape[2], win.shape[3]
    parts = []
    for g in range(groups):
        # (B, L, Kc) in the emulator's (c, kh, kw) order
        Xg = win[:, g * cg:(g + 1) * cg].permute(0, 2, 3, 1, 4, 5).reshape(B, Ho * Wo, cg * kh * kw)
        Wg = Wh[g * og:(g + 1) * og].reshape(og, -1)
        parts.append(terms_var(Xg, Wg, None if bh is None else bh[g * og:(g + 1) * og]))
    return torch.cat(parts, 1).reshape(B, O, Ho, Wo)


def _chan(v: np.ndarray, nd: int) -> torch.Tensor:
    return torch.from_numpy(np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (nd - 2)))


def _maxpool_windows(step: Step, t: torch.Tensor, fill: float) -> tuple[torch.Tensor, tuple]:
    """Windows of a max pooling, (B, C, k, L), padding with ``fill``."""
    a = step.attrs
    ks, st, pd, dl = (_pair(a["kernel_size"]), _pair(a["stride"] or a["kernel_size"]), _pair(a["padding"]),
                      _pair(a["dilation"]))
    B, C, H, W = t.shape
    tp = F.pad(t, (pd[1], pd[1], pd[0], pd[0]), value=fill) if any(pd) else t
    u = F.unfold(tp, ks, dilation=dl, stride=st)  # (B, C k, L)
    return u.reshape(B, C, ks[0] * ks[1], -1), (ks, st, pd, dl, (H, W))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


#: Radius tiers: "interval" (tier A: min of the interval bound and |mu| + |J| w propagated with
#: absolute values, cheap) and "exact" (tier B: also the exact rows of the Jacobian at every ReLU /
#: max-pool input, one backward pass per neuron: costly, see :func:`_exact_rows`).
RADII = ("interval", "exact", "windowed")


def _check_radii(radii: str) -> None:
    if radii not in RADII:
        raise ValueError(f"unknown radii {radii!r}; valid choices are: {', '.join(RADII)} "
                         f"('interval': tier A, cheap; 'exact': tier B, exact Jacobian rows at ReLU / max-pool "
                         f"inputs, one backward pass per neuron or per group of neurons whose receptive fields "
                         f"never overlap; 'windowed': tier B with the rows stopped at the last change of "
                         f"resolution, cheaper and looser)")


def adjoint_certificate(traced: TracedModel, X: torch.Tensor, cfg: BoundConfig, *, batch_size: int = 64,
                        cache: ParamCache | None = None, radii: str = "interval",
                        row_chunk: int = 256) -> AdjointResult:
    """Sound per-input certificates by adjoint error propagation (see the module docstring).

    ``radii``: ``"interval"`` (tier A, default) or ``"exact"`` (tier B: exact Jacobian rows at
    every ReLU / max-pool input, :func:`_exact_rows`; ``row_chunk`` neurons per backward pass).
    """
    _check_radii(radii)
    bad = unsupported_steps(traced)
    if bad:
        raise ValueError(_unsupported_message(bad))
    if cfg.lam is not None:
        cfg = BoundConfig(cfg.fmt, cfg.profile, cfg.mode, cfg.order, cfg.block, None, cfg.fast_magnitudes)
    cache = cache or ParamCache()
    parts = []
    for i in range(0, int(X.shape[0]), int(batch_size)):
        parts.append(_chunk(traced, X[i:i + batch_size].detach().to("cpu", torch.float32), cfg, cache, radii,
                            row_chunk))
    keys = parts[0].keys()
    cat = {k: np.concatenate([p[k] for p in parts], 0) for k in keys if k != "stats"}
    return AdjointResult(stats=parts[0]["stats"], **cat)


def _dot(a: torch.Tensor, w: torch.Tensor, B: int) -> torch.Tensor:
    """``sum_n a[k, b, n] w[b, n]`` (K, B) for nonnegative ``a``; infinite ``w`` (an input that is
    not certified anyway) counts as 0 here."""
    wf = torch.nan_to_num(w.reshape(B, -1), nan=0.0, posinf=0.0)
    return torch.einsum("kbn,bn->kb", a, wf)


def _gamma64(traced: TracedModel, shapes: dict) -> float:
    """Relative float64 error allowance: ``gamma_N(u64)`` with ``N`` the reduction lengths of all
    steps plus the largest sum over one step's elements (the weighted sums of the certificate)."""
    n = 0
    widest = 1
    for s in traced.steps:
        n += (reduction_length(s, shapes.get(s.name, [])) or 1) + 4
        for shp in shapes.get(s.name, []):
            widest = max(widest, int(np.prod(shp[1:])))
    n += widest
    nu = n * _U64
    return 4 * nu / (1 - 4 * nu)


def _forward_sweep(traced: TracedModel, x: torch.Tensor, cfg: BoundConfig, cache: ParamCache,
                   radii: str = "interval", row_chunk: int = 256
                   ) -> tuple[dict[str, _Rec], dict[str, Any], dict[str, list]]:
    f = cfg.fmt
    R: dict[str, _Rec] = {}
    exact_at = set()
    dom = rows.dominators(traced) if radii == "windowed" else {}
    if radii in ("exact", "windowed"):
        for s in traced.steps:
            if s.kind in ("relu", "maxpool2d"):
                exact_at.update(n for n in s.inputs)
    sizes: dict[str, Any] = {}
    in_shapes: dict[str, list] = {}
    with torch.no_grad():
        # pass 1: the fp32 run (values and shapes), so that the float64 allowance gamma_N(u64) of
        # the whole network is known before any radius uses it
        for s in traced.steps:
            if s.kind == "size":
                sizes[s.name] = torch_step(s, [sizes[n] if n in sizes else R[n].z for n in s.inputs], torch.float32,
                                           cache, dict(sizes))
                continue
            r = _Rec()
            R[s.name] = r
            if s.kind == "input":
                r.z = x
                continue
            in_shapes[s.name] = [tuple(R[n].z.shape) for n in s.inputs if n in R]
            r.z = torch_step(s, [sizes[n] if n in sizes else R[n].z for n in s.inputs], torch.float32, cache,
                             dict(sizes))
        gam = _gamma64(traced, in_shapes)
        if not gam <= _SLACK:
            raise ValueError(f"network too large for the float64 allowance of the adjoint certificate "
                             f"(gamma {gam:.3g} > 2**-30)")
        # pass 2: known parts, magnitudes, local bounds and radii
        for s in traced.steps:
            if s.kind == "size":
                continue
            r = R[s.name]
            r.gam = gam
            if s.kind == "input":
                xh = torch.from_numpy(np.asarray(_round(x, f), dtype=np.float64)).reshape(x.shape)
                k = xh - x.double()  # exact: both are binary32 numbers of close magnitude
                r.G = k.abs()
                r.mu, r.Ak, r.Aw = k, k.abs(), torch.zeros_like(k)
                continue
            ins = [R[n] for n in s.inputs if n in R]
            _forward(s, ins, r, cfg, cache, sizes)
            if s.name in exact_at:
                cut = _window_cut(s.name, dom, R) if dom else None
                r.G = torch.minimum(r.G, _exact_rows(traced, R, s.name, sizes, cache, row_chunk, cut))
    return R, sizes, in_shapes


def _window_cut(upto: str, dom: dict[str, set[str]], R: dict[str, _Rec]) -> str | None:
    """The cut of the windowed radii for step ``upto``: the latest step that every path to it passes
    through, whose exact-row bound ``D`` is known and whose spatial size is larger (the rows stop
    at the last change of resolution); ``None``: rows over the whole prefix."""
    size = R[upto].z.shape[2:].numel() if R[upto].z.ndim == 4 else None
    if size is None:
        return None
    best, best_pos = None, -1
    order = {n: i for i, n in enumerate(R)}
    for a in dom[upto] - {upto}:
        r = R.get(a)
        if r is None or r.D is None or r.z.ndim != 4 or r.z.shape[2:].numel() <= size:
            continue
        if order[a] > best_pos:
            best, best_pos = a, order[a]
    return best


def _exact_rows(traced: TracedModel, R: dict[str, _Rec], upto: str, sizes: dict, cache: ParamCache,
                row_chunk: int, cut: str | None = None) -> torch.Tensor:
    """Tier-B radius of step ``upto``: ``|mu_t| + sum_{s <= t} |J_{t<-s}| (e_bar_s + eta_bar_s)``, exact rows.

    Soundness.  The decomposition of the module docstring, stopped at step ``t`` instead of the
    logits, is exact: ``d_t = mu_t + sum_{s <= t} J_{t<-s} (e_s + eta_s)`` with ``|e_s| <= e_bar_s``
    and ``|eta_s| <= eta_bar_s`` (these use only the radii of steps before ``t``, already sound by
    induction over the sweep).  Hence ``|d_t[n]| <= |mu_t[n]| + sum_s |row_n(J_{t<-s})| w_s`` for every
    neuron ``n``, with the rows obtained as ``J_{t<-s}^T e_n`` by one backward pass of the same
    linearisation the certificate uses (a VJP per neuron, ``row_chunk`` seeds stacked per pass).
    The float64 evaluation error of the rows and sums is bounded as for the certificate: by
    ``gamma_N(u64) <= 2**-30`` times the absolute-value propagation ``Ak + Aw`` of step ``t`` (which
    dominates every ``|J| |k|`` and ``|J| w`` path sum), and each sum is padded by ``1 + 2**-40``.
    An input whose local bound or switching slack is infinite at any step before ``t`` gets an
    infinite radius here (the tier-A radius, kept by the minimum, still applies).  Cost: one
    backward pass through the prefix per ``row_chunk`` neurons of ``t`` (CROWN's per-neuron
    backward bounds, Zhang et al., NeurIPS 2018, have the same cost); see docs/theory.md
    section 2.3a.

    Windowed (``cut``, a step every path to ``t`` passes through, with ``D_a >= |d_a - mu_a|``
    known): ``d_t - mu_t = J_{t<-a} (d_a - mu_a) + sum_{a < s <= t} J_{t<-s} (e_s + eta_s)`` (the
    known parts propagate linearly, ``mu_t = J_{t<-a} mu_a + sum_{a < s <= t} J_{t<-s} k_s``), so
    the rows stop at ``a`` and take ``|row(J_{t<-a})| D_a`` there: sound, looser by the triangle
    inequality at one step, and the passes no longer run through the prefix before ``a``.
    The bound on ``|d_t - mu_t|`` is kept as ``D`` of step ``t`` for later windows.
    """
    r_t = R[upto]
    B = int(r_t.z.shape[0])
    shape = tuple(r_t.z.shape[1:])
    n = int(np.prod(shape)) if shape else 1
    prefix = []
    for s in traced.steps:
        prefix.append(s)
        if s.name == upto:
            break
    finite = torch.ones(B, dtype=torch.bool)
    for s in prefix:
        w = R[s.name].w if s.name in R else None
        if w is not None:
            finite &= torch.isfinite(w.reshape(B, -1)).all(1)
    colored = _colored_rows(traced, R, upto, prefix, sizes, cache, row_chunk, cut)
    acc = torch.zeros(B, n, dtype=torch.float64) if colored is None else colored
    with torch.no_grad():
        for start in range(0, n if colored is None else 0, int(row_chunk)):
            S = min(int(row_chunk), n - start)
            seed = torch.zeros(S, B, n, dtype=torch.float64)
            seed[torch.arange(S), :, start + torch.arange(S)] = 1.0
            grads = {upto: seed.reshape((S, B) + shape)}
            part = torch.zeros(S, B, dtype=torch.float64)
            for s in reversed(prefix):
                if s.kind == "size" or s.name not in grads:
                    continue
                g = grads.pop(s.name)
                r = R[s.name]
                if s.name == cut:
                    part += _dot(g.reshape(S, B, -1).abs(), r.D, B)
                    continue
                if r.w is not None:
                    part += _dot(g.reshape(S, B, -1).abs(), r.w, B)
                if s.kind == "input":
                    continue
                for name, gi in _backward(s, g, r, [R[m] for m in s.inputs if m in R], S, B, cache, sizes):
                    grads[name] = grads[name] + gi if name in grads else gi
            acc[:, start:start + S] = part.T
    acc = acc.reshape((B,) + shape)
    if cut is not None:
        finite &= torch.isfinite(R[cut].D.reshape(B, -1)).all(1)
    fin = finite.reshape((B,) + (1,) * len(shape))
    dev = _fix((acc * _PAD + r_t.gam * (r_t.Ak + r_t.Aw)) * _PAD)
    r_t.D = torch.where(fin, dev, torch.full_like(dev, math.inf))
    rad = _fix((r_t.mu.abs() + acc * _PAD + r_t.gam * (r_t.Ak + r_t.Aw)) * _PAD)
    return torch.where(fin, rad, torch.full_like(rad, math.inf))


def _colored_rows(traced: TracedModel, R: dict[str, _Rec], upto: str, prefix: list[Step], sizes: dict,
                  cache: ParamCache, row_chunk: int, cut: str | None = None) -> torch.Tensor | None:
    """``sum_{s <= t} |row_n(J_{t<-s})| w_s`` (B, n) for every neuron ``n`` of step ``t = upto``, with
    the neurons whose receptive fields never overlap sharing a backward pass (:mod:`.rows`); ``None``
    when the prefix is not a convolutional one (or no pass would be saved).  Each entry of a
    shared pass's gradient belongs to the one seed whose box holds it; an entry outside every box
    must be zero, and a nonzero one there raises (the geometry would be wrong)."""
    r_t = R[upto]
    shape = tuple(r_t.z.shape[1:])
    if len(shape) != 3:
        return None
    shapes = {name: tuple(rec.z.shape) for name, rec in R.items() if rec.z is not None}
    bx = rows.boxes(traced, upto, shapes, stop=cut)
    if bx is None:
        return None
    C, H, W = shape
    per = rows.periods(bx, (H, W))
    nh, nw = rows.counts(per, (H, W))
    colors = [(c, a, b) for c in range(C) for a in range(per[0]) for b in range(per[1])]
    if len(colors) >= C * H * W:
        return None
    B = int(r_t.z.shape[0])
    acc = torch.zeros(B, C, H, W, dtype=torch.float64)
    slot = nh * nw
    with torch.no_grad():
        for start in range(0, len(colors), int(row_chunk)):
            chunk = colors[start:start + int(row_chunk)]
            S = len(chunk)
            seed = torch.zeros((S, B) + shape, dtype=torch.float64)
            for k, (c, a, b) in enumerate(chunk):
                seed[k, :, c, a::per[0], b::per[1]] = 1.0
            offsets = torch.tensor([[a, b] for _, a, b in chunk], dtype=torch.int64)
            grads = {upto: seed}
            part = torch.zeros(S, B, slot + 1, dtype=torch.float64)
            for s in reversed(prefix):
                if s.kind == "size" or s.name not in grads:
                    continue
                g = grads.pop(s.name)
                r = R[s.name]
                w = r.D if s.name == cut else r.w
                if w is not None:
                    Hs, Ws = g.shape[-2:]
                    wf = torch.nan_to_num(w.reshape(B, -1, Hs, Ws), nan=0.0, posinf=0.0)
                    contrib = (g.abs() * wf.unsqueeze(0)).sum(2).reshape(S, B, Hs * Ws)
                    own = rows.owners(bx[s.name], (Hs, Ws), offsets, per, (H, W)).reshape(S, 1, Hs * Ws)
                    part.scatter_add_(2, own.expand(S, B, Hs * Ws), contrib)
                if s.kind == "input" or s.name == cut:
                    continue
                for name, gi in _backward(s, g, r, [R[m] for m in s.inputs if m in R], S, B, cache, sizes):
                    grads[name] = grads[name] + gi if name in grads else gi
            if bool((part[:, :, slot] != 0).any()):
                raise RuntimeError(f"internal error: the rows of {upto!r} reach outside their receptive boxes")
            for k, (c, a, b) in enumerate(chunk):
                hi, wi = len(range(a, H, per[0])), len(range(b, W, per[1]))
                vals = part[k, :, :slot].reshape(B, nh, nw)[:, :hi, :wi]
                acc[:, c, a::per[0], b::per[1]] = vals
    return acc.reshape(B, -1)


def adjoint_radii(traced: TracedModel, x: torch.Tensor, cfg: BoundConfig, cache: ParamCache | None = None, *,
                  radii: str = "interval", row_chunk: int = 256) -> dict[str, torch.Tensor]:
    """Sound per-neuron radii ``R_s >= |x^_s - x~_s|`` of every tensor step (float64), for tests and reports.

    ``radii``: ``"interval"`` (tier A) or ``"exact"`` (tier B, :func:`_exact_rows`)."""
    _check_radii(radii)
    bad = unsupported_steps(traced)
    if bad:
        raise ValueError(_unsupported_message(bad))
    R, _, _ = _forward_sweep(traced, x.detach().to("cpu", torch.float32), cfg, cache or ParamCache(), radii,
                                     row_chunk)
    return {n: r.G for n, r in R.items()}


def _chunk(traced: TracedModel, x: torch.Tensor, cfg: BoundConfig, cache: ParamCache, radii: str = "interval",
           row_chunk: int = 256) -> dict[str, Any]:
    B = int(x.shape[0])
    R, sizes, _ = _forward_sweep(traced, x, cfg, cache, radii, row_chunk)
    out = R[traced.output]
    z = out.z.double()
    K = int(z.shape[1])
    gam = out.gam  # gamma_N(u64) of the network (checked <= 2**-30 in the sweep)
    # per-input validity: every injected bound finite
    finite = torch.ones(B, dtype=torch.bool)
    for r in R.values():
        if r.w is not None:
            finite &= torch.isfinite(r.w.reshape(B, -1)).all(1)
    # ---- backward sweep: K seeds stacked in front of the batch
    cls = torch.argmax(z, 1)
    Sabs = torch.zeros(K, B, dtype=torch.float64)   # sum |g_i| w
    Seta = torch.zeros(K, B, dtype=torch.float64)   # sum |g_i| eta
    Slim = torch.zeros(K, B, dtype=torch.float64)   # sum |g_i| e_bar(radius 0)
    Mabs = torch.zeros(K, B, dtype=torch.float64)   # sum |g_c - g_j| w
    Var = torch.zeros(K, B, dtype=torch.float64)
    grads: dict[str, torch.Tensor] = {traced.output: torch.eye(K, dtype=torch.float64)[:, None, :].expand(K, B, K)}
    ar = torch.arange(B)
    with torch.no_grad():
        for s in reversed(traced.steps):
            if s.kind == "size" or s.name not in grads:
                continue
            g = grads.pop(s.name)
            r = R[s.name]
            gf = g.reshape(K, B, -1)
            if r.w is not None:
                ga = gf.abs()
                contrib = _dot(ga, r.w, B)
                Sabs += contrib
                if r.is_eta:
                    Seta += contrib
                else:
                    Slim += _dot(ga, r.w0, B)
                del ga
                gc = gf[cls, ar]  # (B, n): the seed of the fp32 class
                Mabs += _dot((gc.unsqueeze(0) - gf).abs_(), r.w, B)
            if r.var is not None:
                Var += _dot(gf * gf, r.var, B)
            if s.kind == "input":
                continue
            for name, gi in _backward(s, g, r, [R[n] for n in s.inputs if n in R], K, B, cache, sizes):
                if name in grads:
                    grads[name] = grads[name] + gi
                else:
                    grads[name] = gi
    mu = out.mu
    Ak, Aw = out.Ak, out.Aw
    slack = gam * (Ak + Aw)
    bound = (mu.abs() + Sabs.T * _PAD + slack) * _PAD
    mc = mu[ar, cls]
    mmu = (mc[:, None] - mu).abs()
    sl_c = slack[ar, cls]
    mb = (mmu + Mabs.T * _PAD + sl_c[:, None] + slack) * _PAD
    mb[ar, cls] = 0.0
    zc = z[ar, cls]
    margin = zc[:, None] - z
    ok = (margin * (1 - 2.0**-50) > mb)
    ok[ar, cls] = True
    cert = ok.all(1) & finite
    bound = torch.where(finite[:, None], bound, torch.full_like(bound, math.inf))
    mb = torch.where(finite[:, None], mb, torch.full_like(mb, math.inf))
    lim = Slim.T * _PAD
    sig = Var.T.sqrt()
    pred = (mu.abs() + sig).max(1).values
    return {"bound": bound.numpy(), "margin_bound": mb.numpy(), "margin": margin.numpy(), "certified": cert.numpy(),
            "limit": lim.max(1).values.numpy(), "mu": mu.numpy(), "sigma": sig.numpy(), "predicted": pred.numpy(),
            "switching": Seta.T.max(1).values.numpy(), "stats": {"gamma64": gam}}


def _round(x: torch.Tensor, f: Any) -> np.ndarray:
    return round_to(x.detach().double().numpy(), f, "nearest-even")


def _forward(s: Step, ins: list[_Rec], r: _Rec, cfg: BoundConfig, cache: ParamCache, sizes: dict) -> None:
    """Tier-A radius G, known part mu = J k, magnitudes Ak = |J| |k|, Aw = |J| w, local bounds w."""
    k = s.kind
    x = ins[0] if ins else None
    f = cfg.fmt
    if k in ("output", "identity"):
        r.G, r.mu, r.Ak, r.Aw, r.lin = x.G, x.mu, x.Ak, x.Aw, None
        return
    if k in ("shape", "cat"):
        def op(*ts: torch.Tensor) -> torch.Tensor:
            return torch_step(s, list(ts), torch.float64, cache, dict(sizes))
        r.G = op(*[i.G for i in ins])
        r.mu = op(*[i.mu for i in ins])
        r.Ak = op(*[i.Ak for i in ins])
        r.Aw = op(*[i.Aw for i in ins])
        return
    if k in ("linear", "conv2d"):
        _linear(s, x, r, cfg, cache)
        return
    if k == "batchnorm":
        _batchnorm(s, x, r, cfg, cache)
        return
    if k == "relu":
        z = x.z.double()
        D = (z > 0)
        Rin = x.G
        eta = torch.clamp(Rin - z.abs(), min=0.0)
        eta = torch.where(torch.isnan(eta), torch.full_like(eta, math.inf), eta)
        Df = D.double()
        r.lin = D
        r.w, r.is_eta = eta, True
        r.mu = Df * x.mu
        r.Ak = Df * x.Ak
        r.Aw = Df * x.Aw + eta
        tierA = torch.where(z + Rin > 0, Rin, torch.zeros_like(Rin))
        r.G = torch.minimum(tierA, _radius(r))
        return
    if k == "maxpool2d":
        z = x.z.double()
        Wz, geo = _maxpool_windows(s, z, -math.inf)
        WR, _ = _maxpool_windows(s, x.G, 0.0)
        idx = Wz.argmax(2, keepdim=True)  # our i* (any choice keeps the decomposition exact)
        onehot = torch.zeros_like(Wz).scatter_(2, idx, 1.0)
        zs = Wz.gather(2, idx)
        Rs = WR.gather(2, idx)
        others = torch.where(onehot > 0, torch.full_like(Wz, -math.inf), Wz + WR)
        eta = torch.clamp(others.max(2).values - zs[:, :, 0] + Rs[:, :, 0], min=0.0)
        oshape = r.z.shape
        eta = eta.reshape(oshape)
        eta = torch.where(torch.isnan(eta), torch.full_like(eta, math.inf), eta)
        r.lin = (onehot, geo)
        r.w, r.is_eta = eta, True

        def sel(t: torch.Tensor) -> torch.Tensor:
            Wt, _ = _maxpool_windows(s, t, 0.0)
            return (Wt * onehot).sum(2).reshape(oshape)

        r.mu = sel(x.mu)
        r.Ak = sel(x.Ak)
        r.Aw = sel(x.Aw) + eta
        a = s.attrs
        tierA = F.max_pool2d(x.G, a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
        r.G = torch.minimum(tierA, _radius(r))
        return
    if k in ("avgpool2d", "adaptive_avgpool2d", "mean", "sum"):
        op = _pool_op(s)
        n = reduction_length(s, [tuple(x.z.shape)]) or 1
        c = 1.0 + 2.0 * (n + 2) * _U64
        z = x.z.double()
        mean = _np(op(z))
        mean_abs = _np(op(z.abs()) * c)
        shape = mean.shape
        rad = _np(op(torch.nan_to_num(x.G, posinf=0.0)) * c)
        with np.errstate(all="ignore"):
            loc = _t(LB.avgpool_local_bound(mean, mean_abs, n, f, radius=rad, mode=cfg.mode).value, shape)
            own32 = _t(LB.avgpool_local_bound(mean, mean_abs, n, "fp32").value, shape)
            loc0 = _t(LB.avgpool_local_bound(mean, mean_abs, n, f, mode=cfg.mode).value, shape)
        r.w0 = _fix(loc0 + own32)
        loc = torch.where(torch.isfinite(op(x.G)), loc, torch.full_like(loc, math.inf))
        r.w = _fix(loc + own32)
        r.var = _ulp_var(r.z, f)
        r.mu = op(x.mu)
        r.Ak = op(x.Ak) * c
        r.Aw = op(x.Aw) * c + r.w
        r.G = torch.minimum(_fix(loc + op(x.G) * c + own32), _radius(r))
        return
    if k in ("add", "sub"):
        a, b = ins[0], ins[1]
        sign = -1.0 if k == "sub" else 1.0
        shape = tuple(r.z.shape)
        zan = np.broadcast_to(_np(a.z.double()), shape)
        zbn = sign * np.broadcast_to(_np(b.z.double()), shape)
        Gs = _fix(a.G + b.G).expand(shape)
        with np.errstate(all="ignore"):
            loc = _t(LB.add_local_bound(zan, zbn, f, radius=_np(torch.nan_to_num(Gs, posinf=0.0)),
                                        mode=cfg.mode).value, shape)
            own32 = _t(LB.add_local_bound(zan, zbn, "fp32").value, shape)
            r.w0 = _fix(_t(LB.add_local_bound(zan, zbn, f, mode=cfg.mode).value, shape) + own32)
        loc = torch.where(torch.isfinite(Gs), loc, torch.full_like(loc, math.inf))
        r.w = _fix(loc + own32)
        r.var = _ulp_var(r.z, f)
        r.mu = (a.mu + sign * b.mu).expand(shape)
        r.Ak = (a.Ak + b.Ak).expand(shape)
        r.Aw = (a.Aw + b.Aw).expand(shape) + r.w
        r.G = torch.minimum(_fix(loc + Gs + own32), _radius(r))
        return
    if k == "affine":
        sc, sh, dv = s.attrs["scale"], s.attrs["shift"], s.attrs["div"]
        lin = (1.0 / dv) if dv is not None else sc
        r.lin = lin
        if abs(sc) == 1.0 and sh == 0.0 and dv is None:
            r.G, r.mu, r.Ak, r.Aw = x.G, sc * x.mu, x.Ak, x.Aw
            return
        sa = abs(lin) * (1 + 2 * _U64)
        xa = x.z.double().abs()
        comp = 4 * 2.0**-24 * (sa * (xa + x.G) + abs(sh)) + 2.0**-149
        T = _fix(sa * (xa + x.G) + abs(sh) + comp)
        loc = _fix(comp + _rnd(T, cfg))
        own32 = 4 * 2.0**-24 * (sa * xa + abs(sh)) + 2.0**-149
        r.w = _fix(loc + own32)
        r.w0 = _fix(own32 + own32 + _rnd(_fix(sa * xa + abs(sh) + own32), cfg))
        r.var = _ulp_var(r.z, f)
        r.mu = lin * x.mu
        r.Ak = sa * x.Ak
        r.Aw = sa * x.Aw + r.w
        r.G = torch.minimum(_fix(loc + sa * x.G + own32), _radius(r))
        return
    raise ValueError(f"step {s.describe()}: kind {k!r} is not certified by the adjoint method")


#: Relative float64 slack of the running magnitudes (checked against gamma64 of the network per chunk).
_SLACK = 2.0**-30


def _radius(r: _Rec) -> torch.Tensor:
    """Sound radius from the adjoint forward quantities: |d| <= |mu| + |J| w (+ float64 slack)."""
    return _fix((r.mu.abs() + r.Aw + r.gam * (r.Ak + r.Aw)) * _PAD)


def _linear(s: Step, x: _Rec, r: _Rec, cfg: BoundConfig, cache: ParamCache) -> None:
    w = _weights(s, cfg, cache)
    a = s.attrs
    Kn = int(a["weight"][0].numel())
    nt = Kn + ("bh" in w)
    z = x.z.double()
    xa = z.abs()
    G = x.G
    B = xa.shape[0]
    S = _mag(s, torch.cat([xa, G], 0), w["Wh"], w["Wh32"], w["wmax"], Kn, cfg)
    WX, WG = S[:B], S[B:]
    DX = _mag(s, xa, w["dW"], w["dW32"], w["wmax"], Kn, cfg)

    def bias(key: str) -> Any:
        if key not in w:
            return 0.0
        v = w[key]
        return v.reshape(-1, 1, 1) if s.kind == "conv2d" else v

    out32 = r.z.double()
    acc32 = accumulation_bounds(WX + DX + bias("ba"), torch.zeros(()), nt + 1, cfg, fmt="fp32", profile="ieee",
                                probabilistic=False)[0]
    mid = WG + DX + bias("db")
    A = WX + WG + bias("bh")
    Rr = _fix(out32.abs() + acc32 + mid)
    loc = accumulation_bounds(A, Rr, nt, cfg, probabilistic=False)[0]
    kslack = 2.0 * (nt + 2) * _U64 * (DX + bias("db"))
    r.w = _fix(loc + acc32 + kslack)
    loc0 = accumulation_bounds(WX + bias("bh"), _fix(out32.abs() + acc32 + DX + bias("db")), nt, cfg,
                               probabilistic=False)[0]
    r.w0 = _fix(loc0 + acc32 + kslack)
    Wh, dWs, dbs = _signed_weights(s, cfg, cache)
    if cfg.profile == "ieee":
        bias_h = None if dbs is None else s.attrs["bias"].detach().double() + dbs
        r.var = _ieee_var(s, z, Wh, bias_h, cfg)  # every product and partial sum rounded
    else:
        r.var = _ulp_var(r.z, cfg.fmt)  # one rounding of the output (fp32 or wider accumulation)
    kk = _op(s, z, dWs) + (0.0 if dbs is None else _bshape(s, dbs))
    r.lin = Wh
    r.mu = _op(s, x.mu, Wh) + kk
    Wa = Wh.abs()
    r.Ak = _op(s, x.Ak, Wa) + kk.abs()
    r.Aw = _op(s, x.Aw, Wa) + r.w
    r.G = torch.minimum(_fix(loc + mid + acc32), _radius(r))


def _bshape(s: Step, b: torch.Tensor) -> torch.Tensor:
    return b.reshape(-1, 1, 1) if s.kind == "conv2d" else b


def _op(s: Step, t: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    a = s.attrs
    if s.kind == "linear":
        return F.linear(t, W)
    return F.conv2d(t, W, None, a["stride"], a["padding"], a["dilation"], a["groups"])


def _signed_weights(s: Step, cfg: BoundConfig, cache: ParamCache) -> tuple:
    def make() -> tuple:
        W = s.attrs["weight"].detach().double()
        Wh = torch.from_numpy(np.asarray(_round(W, cfg.fmt), dtype=np.float64)).reshape(W.shape)
        b = s.attrs.get("bias")
        db = None
        if b is not None:
            b = b.detach().double()
            bh = torch.from_numpy(np.asarray(_round(b, cfg.fmt), dtype=np.float64)).reshape(b.shape)
            db = bh - b
        return Wh, Wh - W, db

    return cache.memo((s.name, "adjoint_weights", cfg.fmt), make)


def _batchnorm(s: Step, x: _Rec, r: _Rec, cfg: BoundConfig, cache: ParamCache) -> None:
    p = _bn_params(s, cfg, cache)
    eps = s.attrs["eps"]
    z = x.z.double()
    zn = _np(z)
    nd = z.ndim
    shape = z.shape
    rn = _np(torch.nan_to_num(x.G, posinf=0.0))
    with np.errstate(all="ignore"):
        loc = _t(LB.batchnorm_local_bound(zn, p["running_mean_h"], p["running_var_h"], p["weight_h"], p["bias_h"],
                                          eps, cfg.fmt, radius=rn, mode=cfg.mode).value, shape)
        own32 = _t(LB.batchnorm_local_bound(zn, p["running_mean"], p["running_var"], p["weight"], p["bias"],
                                            eps, "fp32").value, shape)
        loc0 = _t(LB.batchnorm_local_bound(zn, p["running_mean_h"], p["running_var_h"], p["weight_h"], p["bias_h"],
                                           eps, cfg.fmt, mode=cfg.mode).value, shape)

        def val(key: str, default: float) -> np.ndarray:
            v = p[key]
            return np.asarray(default if v is None else v, dtype=np.float64)

        w, wh = val("weight", 1.0), val("weight_h", 1.0)
        b, bh = val("bias", 0.0), val("bias_h", 0.0)
        m, mh = val("running_mean", 0.0), val("running_mean_h", 0.0)
        v, vh = val("running_var", 1.0), val("running_var_h", 1.0)
        al, alh = w / np.sqrt(v + eps), wh / np.sqrt(vh + eps)
        be, beh = b - m * al, bh - mh * alh
        # float64 evaluation of alpha, beta (and of k below): relative 2**-50, covered by this slack
        sa = 2.0**-48 * (np.abs(al) + np.abs(alh))
        sb = 2.0**-48 * (np.abs(b) + np.abs(bh) + np.abs(m * al) + np.abs(mh * alh))
    loc = torch.where(torch.isfinite(x.G), loc, torch.full_like(loc, math.inf))
    A_h, dA, dB = _chan(alh, nd), _chan(alh - al, nd), _chan(beh - be, nd)
    kk = dA * z + dB
    r.w = _fix(loc + own32 + _chan(sa, nd) * z.abs() + _chan(sb, nd))
    r.w0 = _fix(loc0 + own32 + _chan(sa, nd) * z.abs() + _chan(sb, nd))
    r.var = _ulp_var(r.z, cfg.fmt)
    r.lin = A_h
    r.mu = A_h * x.mu + kk
    Aa = A_h.abs()
    r.Ak = Aa * x.Ak + kk.abs()
    r.Aw = Aa * x.Aw + r.w
    par = _fix((z.abs() + x.G) * (dA.abs() + _chan(sa, nd)) + dB.abs() + _chan(sb, nd))
    alpha = (_chan(np.abs(al), nd)) * _PAD
    r.G = torch.minimum(_fix(loc + par + alpha * x.G + own32), _radius(r))


def _backward(s: Step, g: torch.Tensor, r: _Rec, ins: list[_Rec], K: int, B: int, cache: ParamCache,
              sizes: dict) -> list[tuple[str, torch.Tensor]]:
    """Transpose of the step's linearisation applied to g (K, B, ...)."""
    k = s.kind
    names = [n for n in s.inputs if n not in sizes]
    if k in ("output", "identity"):
        return [(names[0], g)]
    if k == "relu":
        return [(names[0], g * r.lin)]
    if k == "batchnorm":
        return [(names[0], g * r.lin)]
    if k == "affine":
        return [(names[0], g * r.lin)]
    if k in ("add", "sub"):
        out = []
        for j, (n, i) in enumerate(zip(names, ins)):
            gi = g if (j == 0 or k == "add") else -g
            gi = gi.reshape(K * B, *gi.shape[2:]).sum_to_size(K * B, *i.z.shape[1:]) if tuple(i.z.shape) != tuple(
                r.z.shape) else gi
            out.append((n, gi.reshape(K, *i.z.shape)))
        return out
    if k == "linear":
        return [(names[0], g @ r.lin)]
    if k == "conv2d":
        a = s.attrs
        gi = torch.nn.grad.conv2d_input((K * B,) + tuple(ins[0].z.shape[1:]), r.lin, g.reshape(K * B, *g.shape[2:]),
                                        a["stride"], a["padding"], a["dilation"], a["groups"])
        return [(names[0], gi.reshape(K, B, *gi.shape[1:]))]
    if k == "maxpool2d":
        onehot, (ks, st, pd, dl, (H, W)) = r.lin
        C = onehot.shape[1]
        gg = g.reshape(K, B, C, 1, -1) * onehot.unsqueeze(0)
        gg = gg.reshape(K * B, C * ks[0] * ks[1], -1)
        gi = F.fold(gg, (H, W), ks, dilation=dl, padding=pd, stride=st)
        return [(names[0], gi.reshape(K, B, C, H, W))]
    if k in ("shape", "cat"):
        # a gather: apply the step to the element indices and scatter-add g back (exact transpose)
        offs, idx_in = 0, []
        for i in ins:
            n = i.z.numel()
            idx_in.append(torch.arange(offs, offs + n, dtype=torch.float64).reshape(i.z.shape))
            offs += n
        idx = torch_step(s, idx_in, torch.float64, cache, dict(sizes)).reshape(-1).long()
        flat = torch.zeros(K, offs, dtype=torch.float64).index_add_(1, idx, g.reshape(K, -1))
        out, offs = [], 0
        for n_, i in zip(names, ins):
            n = i.z.numel()
            out.append((n_, flat[:, offs:offs + n].reshape(K, *i.z.shape)))
            offs += n
        return out
    # pooling by averaging, means and sums: torch's own transpose on the K B stacked seeds
    op = _pool_op(s)
    with torch.enable_grad():
        t = torch.zeros((K * B,) + tuple(ins[0].z.shape[1:]), dtype=torch.float64, requires_grad=True)
        (gi,) = torch.autograd.grad(op(t), t, g.reshape((K * B,) + tuple(g.shape[2:])))
    return [(names[0], gi.reshape(K, *ins[0].z.shape))]


#: Quantiles of delta / delta_pred reported as the predictor's calibration.
CALIBRATION_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def summarize_adjoint(res: AdjointResult, fp32: Any, interval_bound: Any, runs: dict[str, Any]) -> dict[str, Any]:
    """Counts, medians and, per observed run, violations and the predictor's calibration.

    ``fp32``: the fp32 logits (N, K); ``interval_bound``: the interval bound (N, K) or (N,);
    ``runs``: name -> low-precision logits (N, K).  Returned as plain JSON-able values:
    ``certified_adjoint`` / ``certified_interval`` / ``certified`` (either), medians of the bound,
    its limit, the switching part and the predictor, and for each run ``bound_violations``
    (``|z16_i - z32_i| > bound_i``, must be 0), ``margin_violations`` (a margin change above its
    bound, must be 0), ``flips_certified`` (must be 0), and ``calibration``: quantiles of
    ``delta / delta_pred`` and the fraction within ``[0.25, 2]`` (the predictor is not sound).
    """
    from ..tolerance import certify

    z = np.asarray(fp32, dtype=np.float64)
    n = z.shape[0]
    c = z.argmax(1)
    ar = np.arange(n)
    interval = certify(z, interval_bound)
    rowb = res.bound.max(1)
    out: dict[str, Any] = {
        "n": int(n), "certified_adjoint": int(res.certified.sum()), "certified_interval": int(interval.sum()),
        "certified": int((res.certified | interval).sum()),
        "median_bound": float(np.median(rowb)), "median_limit": float(np.median(res.limit)),
        "median_switching": float(np.median(res.switching)), "median_predicted": float(np.median(res.predicted)),
        "predictor": ("not sound: delta_pred = max_i (|mu_i| + sigma_i), sigma_i^2 = sum_s g_is^2 ulp(y_s)^2 / 12 "
                      "(ieee profile: y_s's variance sums every product and partial-sum rounding)"),
        "runs": {},
    }
    for name, o in runs.items():
        o = np.asarray(o, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            d = o - z
            ad = np.where(np.isfinite(d), np.abs(d), np.inf)
            dm = np.abs(d[ar, c][:, None] - d)
            dm = np.where(np.isfinite(dm), dm, np.inf)
            delta = ad.max(1)
            ratio = np.where(res.predicted > 0, delta / res.predicted, np.where(delta > 0, np.inf, 1.0))
        flips = o.argmax(1) != c
        fin = np.isfinite(delta) & (delta > 0)
        out["runs"][name] = {
            "bound_violations": int((ad > res.bound).any(1).sum()),
            "margin_violations": int((dm > res.margin_bound).any(1).sum()),
            "flips": int(flips.sum()), "flips_certified": int((flips & res.certified).sum()),
            "median_delta": float(np.median(delta)),
            "median_bound_over_delta": float(np.median(rowb[fin] / delta[fin])) if fin.any() else float("nan"),
            "median_limit_over_delta": float(np.median(res.limit[fin] / delta[fin])) if fin.any() else float("nan"),
            "calibration": {f"q{round(100 * q):02d}": _quantile(ratio, q) for q in CALIBRATION_QUANTILES}
            | {"within_0.25_2": float(np.mean((ratio >= 0.25) & (ratio <= 2.0)))},
        }
    return out



def _quantile(v: np.ndarray, q: float) -> float:
    """Order-statistic quantile (no interpolation, so infinite ratios stay infinite, never NaN)."""
    srt = np.sort(np.asarray(v, dtype=np.float64).reshape(-1))
    return float(srt[min(len(srt) - 1, int(np.ceil(q * (len(srt) - 1))))]) if len(srt) else float("nan")

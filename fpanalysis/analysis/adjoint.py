"""Adjoint (first-order exact) certificates of fp16-vs-fp32 agreement: piecewise-linear and smooth networks.

The interval certificate (:mod:`.network_bounds`) propagates a componentwise bound through
``|W|`` and so ignores the sign cancellations that keep the real error near one local
rounding per layer; on deep networks it grows by the row sums of ``|W|`` per layer.  This
module bounds the error at the logits through the network's Jacobian instead.

Decomposition (exact, not first order).  Let ``x~_s`` be the fp32 run's value of step ``s``,
``x^_s`` the low-precision run's value, ``d_s = x^_s - x~_s``.  Every supported step is, with the
rounded parameters, affine (linear, conv, batch norm in eval, pooling by averaging, residual
add, reshapes) or piecewise linear (ReLU, max pooling), or smooth (GELU, layer norm, softmax, the
product of two activations), and each is split as::

    d_s = L_s d_in + k_s + e_s + eta_s        (+ rho_s for a smooth step)

* ``L_s``: the step's linear map with the ROUNDED parameters (``W^``, ``alpha^ = w^/sqrt(v^+eps)``),
  and for ReLU / max pooling the selection made by the fp32 run (the fp32 activation pattern);
* ``k_s``: the known part -- the rounding of the input, ``(W^ - W) x~ + (b^ - b)`` of a
  linear/conv layer, ``(alpha^ - alpha) x~ + (beta^ - beta)`` of batch norm;
* ``e_s = (f^(x^) - f_p^(x^)) - (f~_32(x~) - f(x~))``: the step's own low-precision rounding error
  on its actual input minus the fp32 run's own error, ``|e_s| <= e_bar_s`` by the local bounds of
  :mod:`fpanalysis.bounds.layers` / :mod:`fpanalysis.bounds.accumulation` evaluated on the interval
  ``|x^| <= |x~| + R_in`` (this is the "growth of the local error with the incoming radius");
* ``eta_s``: the switching slack.  ReLU: a neuron with ``|z| >= R`` cannot switch (slope
  ``[z > 0]``, no slack); one with ``|z| < R`` may: tier A keeps slope ``[z > 0]`` with
  ``|eta| <= (R - |z|)_+``, tier B relaxes it by the chord of ``relu`` over ``[z - R, z + R]``
  (:func:`_relu`): slope ``(z + R) / 2R``, a known offset (part of ``mu``) and
  ``|eta| <= (R^2 - z^2) / 4R`` for ``|d| <= R``.  Max pooling with the fp32 winner ``i*``: ``max_i(z_i + d_i) - z_i* - d_i*``
  lies in ``[0, max_{i != i*} (R_i + R_i* - (z_i* - z_i))_+]``;
* ``rho_s`` (smooth steps): ``L_s`` is the Jacobian at the fp32 value ``x~`` (with the rounded
  parameters) and ``rho_s = f(x~ + d) - f(x~) - J d`` the second-order remainder, bounded rigorously
  over the box ``|d| <= R_in`` by Taylor's theorem with the Lagrange remainder,
  ``|rho_i| <= sup_box |d^T H_i d| / 2``: GELU ``sup |GELU''| R^2 / 2`` (``|GELU''| <= 2 phi(0)``,
  :func:`gelu_second_sup`); softmax through ``d^T H_i d = s_i ((d_i - dbar)^2 - Var_s(d))`` and
  ``s_i <= y_i exp(R_i + max R)`` on the box (:func:`softmax_remainder`); layer norm through the
  Hessian of ``c / sqrt(|c|^2/n + eps)`` and ``sqrt(var) >= sqrt(var~) - rms(R)`` on the box (infinite
  when the box reaches zero variance without ``eps``; :func:`layernorm_remainder`); the product of
  two activations ``(A~ + dA)(B~ + dB) - A~ B~ = dA B~ + A~ dB + dA dB`` exactly, ``|dA dB| <= R_A R_B``.
  Each is also capped by the triangle inequality (exact change plus ``|J| R``) where that is
  smaller, and carries the error of the float64 Jacobian data.  ``rho`` is an unknown slack like
  ``eta``: it enters the margin bound (``sum |g| rho_bar``) and the radii of later steps.  A constant
  tensor (``param``, a position embedding) contributes its rounding as a known part ``k``.

Unrolling over the steps, the logit difference is exactly ``d_L = sum_s J_{L<-s}(k_s + e_s + eta_s)``
with ``J`` the product of the ``L_s``.  So ``mu = J k`` (one forward pass of the linear
network: a JVP) and, for any vector ``c``, ``|c^T d_L - c^T mu| <= sum_s |g_s| (e_bar_s + eta_bar_s)``
with ``g_s = J_{L<-s}^T c`` (one backward pass: a VJP).  The certificate takes ``c = e_c - e_j``
(``c`` the fp32 class): the margin ``m_j = z_c - z_j`` cannot change sign when
``m_j > |mu_c - mu_j| + sum_s |g_{j,s}| (e_bar_s + eta_bar_s + rho_bar_s)`` for every ``j != c``; ``c = e_i``
gives the componentwise bound on ``|z16_i - z32_i|`` that is compared with the observed delta.
This is the first-order term of FPTaylor (Solovyev, Baranowski, Briggs, Jacobsen, Rakamaric,
Gopalakrishnan, "Rigorous Estimation of Floating-Point Round-Off Errors with Symbolic Taylor
Expansions", TOPLAS 41(1), 2018), made exact for piecewise-linear maps by the switching slack and
for smooth maps by the remainder, i.e. the small-perturbation case of the linear relaxations of CROWN / auto_LiRPA (Zhang et al.,
NeurIPS 2018; Xu et al., NeurIPS 2020) with the rounding errors as perturbations.

Radii.  ``R_s >= |d_s|`` is needed at every ReLU / max-pool / smooth-step input and for the local bounds:
``R_s = min(G_s, |mu_s| + |J| (e_bar + eta_bar))`` where ``G_s`` is the interval bound of
:mod:`.network_bounds` ("tier A", recomputed here step by step from the smaller radius) and the
second term is the same linear network propagated with absolute values; both are sound, so is
their minimum.  Tier B (``radii="exact"``, :func:`_exact_rows`) adds exact Jacobian rows at those
inputs, neurons with disjoint receptive fields sharing a backward pass (:mod:`.rows`);
``radii="windowed"`` stops the rows at the last change of resolution (:func:`_window_cut`).
On deep ReLU networks even exact radii can run away through the switching slack
(docs/theory.md section 2.3a, measured on ResNet-20).

Soundness of the arithmetic.  ``mu``, ``g`` and the magnitudes are computed in float64.  Each is
a sum of at most ``N`` products along any path (``N`` = the sum of the reduction lengths), so
its float64 error is at most ``gamma_N(u64)`` times the same computation with absolute values,
which the absolute pass ``A = |J| (|k| + e_bar + eta_bar)`` bounds; the certificate and every
radius add ``gamma A`` with ``gamma = 4 N u64 / (1 - 4 N u64)`` (``N`` also counting the widest
per-step sum; computed from the network's shapes before any radius, required ``<= 2**-30``) and
pad every sum by ``1 + 2**-40``.  ``A`` is a product of absolute values and grows like the
interval bound on deep networks, so this allowance must be the network's own ``gamma_N``, not a
fixed one: on ResNet-20 a fixed ``2**-30`` alone exceeded the logit margins.  Smooth steps use
upper forms of ``|J|`` in the absolute pass (softmax ``y_i (v_i + sum_j y_j v_j)``, layer norm
``|gamma|/sigma (v + mean v + |c^| mean(|c^| (v + mean v)))``), which are the absolute values of their
float64 evaluations, and a layer norm counts ``2 n`` in ``N`` (two nested means).  ``k`` is
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

Smooth layers other than those above (tanh, sigmoid, SiLU, GELU's tanh approximation) are not
certified by the adjoint method: :func:`unsupported_steps` lists them and
:func:`fpanalysis.analysis.analyze` falls back to the interval certificate, saying so.  On the
tiny ViT the remainders are quadratic in radii that are worst-case sums (~50-100x the observed
error after one block), so they compound through the second block's attention and layer norms:
with tier-A radii no logit bound is finite; with tier-B radii (and the layer-norm functional
bound :func:`_ln_phi`) 71 of 256 MNIST test images are certified (``experiments/adjoint_vit.py``,
docs/theory.md section 2.3a).
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

__all__ = ["ADJOINT_KINDS", "RADII", "AdjointResult", "NotCovered", "adjoint_certificate", "adjoint_radii",
           "partial_sum_ulp2", "unsupported_steps"]

#: Step kinds the adjoint certificate covers: piecewise-linear steps (exact linearisation with a
#: switching slack) and the smooth steps GELU (erf form), layer norm, softmax and the product of two
#: activations ``matmul`` (first-order linearisation with a rigorous second-order remainder), and
#: constant tensors ``param`` (their rounding is a known part, like a bias's).
ADJOINT_KINDS = frozenset({"input", "output", "size", "identity", "shape", "cat", "linear", "conv2d", "batchnorm",
                           "relu", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "mean", "sum", "add", "sub",
                           "affine", "param", "gelu", "layernorm", "softmax", "matmul"})

_U64 = 2.0**-53
_PAD = 1.0 + 2.0**-40


class NotCovered(ValueError):
    """A step the adjoint method does not cover, found only once shapes are known (a matmul with a
    1-D operand); :func:`fpanalysis.analysis.analyze` then uses the interval certificate."""


def unsupported_steps(traced: TracedModel) -> list[Step]:
    """Steps the adjoint method does not cover (not certified by it): kinds outside :data:`ADJOINT_KINDS`,
    max pooling with ``ceil_mode`` and GELU's tanh approximation."""
    out = []
    for s in traced.steps:
        if (s.kind not in ADJOINT_KINDS or s.kind == "maxpool2d" and s.attrs.get("ceil_mode")
                or s.kind == "gelu" and s.attrs.get("approximate", "none") != "none"):
            out.append(s)
    return out


def _unsupported_message(bad: list[Step]) -> str:
    names = ", ".join(f"{s.describe()} [{s.kind}]" for s in bad[:5])
    return (f"the adjoint certificate covers linear, conv, batch norm, ReLU, max/average pooling, additions, "
            f"reshapes, constant tensors, GELU (erf form), layer norm, softmax and products of activations; "
            f"not certified by the adjoint method: {names}"
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
    switching: np.ndarray      # (N,) max_i sum_s |g_is| (eta_s + rho_s): switching slack and second-order remainders
    stats: dict[str, Any] = field(default_factory=dict)


class _Rec:
    __slots__ = ("Ak", "Aw", "D", "G", "gam", "is_eta", "lin", "mu", "off", "phi", "rho", "var", "w", "w0", "z")

    def __init__(self) -> None:
        self.z = self.G = self.mu = self.Ak = self.Aw = self.lin = self.w = self.w0 = self.var = self.rho = None
        self.phi = None
        self.D = None  # tier B: bound on |d - mu| from exact rows (the windowed radii start from it)
        self.is_eta = False
        self.off = None  # ReLU: the known offset of the chord relaxation (inside mu; not a rounding)
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
#: max-pool / smooth-step input, one backward pass per neuron, and one per layer-norm row for
#: :func:`_ln_phi`: costly, see :func:`_exact_rows`; "windowed": tier B with the rows stopped at the
#: last change of resolution).
RADII = ("interval", "exact", "windowed")


def _check_radii(radii: str) -> None:
    if radii not in RADII:
        raise ValueError(f"unknown radii {radii!r}; valid choices are: {', '.join(RADII)} "
                         f"('interval': tier A, cheap; 'exact': tier B, exact Jacobian rows at ReLU / max-pool / "
                         f"smooth-step inputs, one backward pass per neuron or per group of neurons whose receptive "
                         f"fields never overlap; 'windowed': tier B with the rows stopped at the last change of "
                         f"resolution, cheaper and looser)")


def adjoint_certificate(traced: TracedModel, X: torch.Tensor, cfg: BoundConfig, *, batch_size: int = 64,
                        cache: ParamCache | None = None, radii: str = "interval",
                        row_chunk: int = 256) -> AdjointResult:
    """Sound per-input certificates by adjoint error propagation (see the module docstring).

    ``radii``: ``"interval"`` (tier A, default) or ``"exact"`` (tier B: exact Jacobian rows at
    every ReLU / max-pool / smooth-step input, :func:`_exact_rows`, and the layer-norm functional
    bound :func:`_ln_phi`; ``row_chunk`` neurons per backward pass).
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
        m = reduction_length(s, shapes.get(s.name, [])) or 1
        # layer norm's linearisation nests two means (centring, then the projection on c^): 2 n
        n += (2 * m if s.kind == "layernorm" else m) + 4
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
            if s.kind in _EXACT_AT:
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
            if s.kind in ("input", "param"):
                # the input or a constant tensor (a position embedding): its rounding is known
                v = x if s.kind == "input" else r.z
                xh = torch.from_numpy(np.asarray(_round(v, f), dtype=np.float64)).reshape(v.shape)
                k = xh - v.double()  # exact: both are binary32 numbers of close magnitude
                r.G = k.abs()
                r.mu, r.Ak, r.Aw = k, k.abs(), torch.zeros_like(k)
                continue
            ins = [R[n] for n in s.inputs if n in R]
            if radii in ("exact", "windowed") and s.kind == "layernorm":
                r.phi = _ln_phi(traced, R, s, sizes, cache)
            _forward(s, ins, r, cfg, cache, sizes, chord=radii != "interval")
            if s.name in exact_at and r.z.is_floating_point() and r.z.ndim >= 1 and s.kind != "param":
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
            part = _prefix_abs(prefix, R, upto, seed.reshape((S, B) + shape), sizes, cache, cut)
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
            part = torch.zeros(S, B, slot + 1, dtype=torch.float64)
            for s, r, g in _walk_back(prefix, R, upto, seed, S, B, sizes, cache, cut):
                w = r.D if s.name == cut else r.w
                if w is not None:
                    Hs, Ws = g.shape[-2:]
                    wf = torch.nan_to_num(w.reshape(B, -1, Hs, Ws), nan=0.0, posinf=0.0)
                    contrib = (g.abs() * wf.unsqueeze(0)).sum(2).reshape(S, B, Hs * Ws)
                    own = rows.owners(bx[s.name], (Hs, Ws), offsets, per, (H, W)).reshape(S, 1, Hs * Ws)
                    part.scatter_add_(2, own.expand(S, B, Hs * Ws), contrib)
            if bool((part[:, :, slot] != 0).any()):
                raise RuntimeError(f"internal error: the rows of {upto!r} reach outside their receptive boxes")
            for k, (c, a, b) in enumerate(chunk):
                hi, wi = len(range(a, H, per[0])), len(range(b, W, per[1]))
                vals = part[k, :, :slot].reshape(B, nh, nw)[:, :hi, :wi]
                acc[:, c, a::per[0], b::per[1]] = vals
    return acc.reshape(B, -1)


def _walk_back(steps: list[Step], R: dict[str, _Rec], start: str, seed: torch.Tensor, K: int, B: int,
               sizes: dict, cache: ParamCache, cut: str | None = None, pattern: bool = False):
    """One backward pass of the linearisation from step ``start`` (seeds ``(K, B, *shape)``) through
    ``steps``: yields ``(step, record, gradient)`` at every step it reaches, in reverse order, then
    carries the gradient to the step's inputs -- except at the input (a source), at ``cut`` (the
    pass stops there) and past constant tensors (never yielded).  ``pattern``: ReLUs take the fp32
    activation pattern ``[z > 0]`` as slope instead of their recorded linearisation."""
    grads = {start: seed}
    for s in reversed(steps):
        if s.kind == "size" or s.name not in grads:
            continue
        g = grads.pop(s.name)
        if s.kind == "param":  # a constant: its rounding is in mu, nothing to inject or carry
            continue
        r = R[s.name]
        yield s, r, g
        if s.kind == "input" or s.name == cut:
            continue
        if pattern and s.kind == "relu":
            back = [(n, g * (R[n].z > 0)) for n in s.inputs if n not in sizes]
        else:
            back = _backward(s, g, r, [R[m] for m in s.inputs if m in R], K, B, cache, sizes)
        for name, gi in back:
            grads[name] = grads[name] + gi if name in grads else gi


def _prefix_abs(prefix: list[Step], R: dict[str, _Rec], upto: str, seed: torch.Tensor, sizes: dict,
                cache: ParamCache, cut: str | None = None) -> torch.Tensor:
    """``sum_{s <= upto} |J_{upto<-s}^T v| w_s`` (S, B) for the S seeds ``v`` (S, B, *shape of upto):
    one backward pass of the linearisation through ``prefix`` (the steps up to ``upto``); windowed
    (``cut``): the pass stops at ``cut`` and takes ``|J_{upto<-cut}^T v| D_cut`` there."""
    S, B = int(seed.shape[0]), int(seed.shape[1])
    part = torch.zeros(S, B, dtype=torch.float64)
    for s, r, g in _walk_back(prefix, R, upto, seed, S, B, sizes, cache, cut):
        w = r.D if s.name == cut else (None if s.kind == "input" else r.w)
        if w is not None:
            part += _dot(g.reshape(S, B, -1).abs(), w, B)
    return part


def _ln_phi(traced: TracedModel, R: dict[str, _Rec], s: Step, sizes: dict, cache: ParamCache) -> torch.Tensor:
    """Tier B at a layer norm: a sound bound on ``|c^ . d| / n`` per normalised row of its input.

    ``c^ = (x~ - mean) / sigma`` (centred, so ``c^ . P d = c^ . d``) is one linear functional of the
    input's perturbation ``d``; as for an exact row (:func:`_exact_rows`),
    ``|c^ . d| <= |c^ . mu| + sum_s |J^T c^| w_s`` with one backward pass per row, plus the float64
    allowance ``gamma sum |c^| (Ak + Aw)`` and the error of the computed ``c^'`` (``|c^ - c^'| <=
    t (1 + 2 |c^'|)``, :func:`_layernorm`) times ``R``.  Used by :func:`layernorm_remainder` in place
    of the Cauchy-Schwarz bound ``rms(R)``: the worst case of one functional is far below the
    worst case over all sign patterns.  Returns (B, *lead, 1); inf where any bound is infinite.
    """
    x = R[s.inputs[0]]
    nd = len(s.attrs["normalized_shape"])
    eps = float(s.attrs["eps"])
    z = x.z.double()
    B = int(z.shape[0])
    flat = tuple(z.shape[:z.ndim - nd]) + (-1,)
    zf = z.reshape(flat)
    n = int(zf.shape[-1])
    c = zf - zf.mean(-1, keepdim=True)
    sig = torch.sqrt((c * c).mean(-1, keepdim=True) + eps)
    ch = c / sig
    t = 6 * (n + 2) * _U64 * zf.abs().max(-1, keepdim=True).values / sig + 2 * (n + 4) * _U64
    rows = int(np.prod(zf.shape[1:-1])) if zf.ndim > 2 else 1
    chr_ = ch.reshape(B, rows, n)
    seed = torch.zeros(rows, B, rows, n, dtype=torch.float64)
    for i in range(rows):
        seed[i, :, i, :] = chr_[:, i, :] / n
    prefix = []
    for st in traced.steps:
        prefix.append(st)
        if st.name == s.inputs[0]:
            break
    part = _prefix_abs(prefix, R, s.inputs[0], seed.reshape((rows,) + tuple(z.shape)), sizes, cache).T  # (B, rows)
    v = ch.abs().reshape(B, rows, n) / n
    mu = (chr_ * x.mu.expand(z.shape).reshape(B, rows, n)).sum(-1).abs() / n
    allow = x.gam * (v * (x.Ak + x.Aw).expand(z.shape).reshape(B, rows, n)).sum(-1)
    Rf = x.G.reshape(B, rows, n)
    dch = ((t.reshape(B, rows, 1) * (1 + 2 * ch.abs().reshape(B, rows, n))) * Rf).sum(-1) / n
    phi = _fix((mu + part * _PAD + allow + dch) * _PAD)
    phi = torch.where(t.reshape(B, rows) > 0.01, torch.full_like(phi, math.inf), phi)
    return phi.reshape(tuple(z.shape[:z.ndim - nd]) + (1,))


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
    Off = torch.zeros(K, B, dtype=torch.float64)    # the relaxation offsets' share of mu (J c)
    # the chord relaxation (tier B) changes the slopes of unstable ReLUs; the predictor and the limit
    # describe the fp32 activation pattern and then take their own pass with slopes [z > 0]
    chord = any(r.off is not None for r in R.values())
    seed = torch.eye(K, dtype=torch.float64)[:, None, :].expand(K, B, K)
    ar = torch.arange(B)
    with torch.no_grad():
        for _s, r, g in _walk_back(traced.steps, R, traced.output, seed, K, B, sizes, cache):
            gf = g.reshape(K, B, -1)
            if r.w is not None:
                ga = gf.abs()
                contrib = _dot(ga, r.w, B)
                Sabs += contrib
                if r.is_eta:
                    Seta += contrib
                elif not chord:
                    Slim += _dot(ga, r.w0, B)
                del ga
                gc = gf[cls, ar]  # (B, n): the seed of the fp32 class
                Mabs += _dot((gc.unsqueeze(0) - gf).abs_(), r.w, B)
                if r.rho is not None:
                    Seta += _dot(gf.abs(), r.rho, B)
            if r.var is not None and not chord:
                Var += _dot(gf * gf, r.var, B)
            if r.off is not None:
                Off += torch.einsum("kbn,bn->kb", gf, r.off.reshape(B, -1))
    if chord:
        Var, Slim = _pattern_sweep(traced, R, K, B, cache, sizes)
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
    known = mu - Off.T  # the roundings' part of mu: what the predictor and the report call mu
    pred = (known.abs() + sig).max(1).values
    return {"bound": bound.numpy(), "margin_bound": mb.numpy(), "margin": margin.numpy(), "certified": cert.numpy(),
            "limit": lim.max(1).values.numpy(), "mu": known.numpy(), "sigma": sig.numpy(), "predicted": pred.numpy(),
            "switching": Seta.T.max(1).values.numpy(), "stats": {"gamma64": gam}}


def _pattern_sweep(traced: TracedModel, R: dict[str, _Rec], K: int, B: int, cache: ParamCache,
                   sizes: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The predictor's variance and the limit's ``sum |g| e_bar(radius 0)`` (both (K, B)) with the
    gradients of the fp32 activation pattern (ReLU slopes ``[z > 0]``, not the chord slopes)."""
    Var = torch.zeros(K, B, dtype=torch.float64)
    Slim = torch.zeros(K, B, dtype=torch.float64)
    seed = torch.eye(K, dtype=torch.float64)[:, None, :].expand(K, B, K)
    with torch.no_grad():
        for _s, r, g in _walk_back(traced.steps, R, traced.output, seed, K, B, sizes, cache, pattern=True):
            gf = g.reshape(K, B, -1)
            if r.w is not None and not r.is_eta:
                Slim += _dot(gf.abs(), r.w0, B)
            if r.var is not None:
                Var += _dot(gf * gf, r.var, B)
    return Var, Slim


def _round(x: torch.Tensor, f: Any) -> np.ndarray:
    return round_to(x.detach().double().numpy(), f, "nearest-even")


def _forward(s: Step, ins: list[_Rec], r: _Rec, cfg: BoundConfig, cache: ParamCache, sizes: dict,
             chord: bool = False) -> None:
    """Tier-A radius G, known part mu = J k, magnitudes Ak = |J| |k|, Aw = |J| w, local bounds w.
    ``chord``: relax unstable ReLUs by their chord (tier B; see :func:`_relu`)."""
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
    if k == "gelu":
        _gelu(x, r, cfg)
        return
    if k == "softmax":
        _softmax(s, x, r, cfg)
        return
    if k == "layernorm":
        _layernorm(s, x, r, cfg, cache)
        return
    if k == "matmul":
        _matmul(ins[0], ins[1], r, cfg)
        return
    if k == "batchnorm":
        _batchnorm(s, x, r, cfg, cache)
        return
    if k == "relu":
        _relu(x, r, chord)
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


def _relu(x: _Rec, r: _Rec, chord: bool = True) -> None:
    """ReLU at the fp32 pre-activation ``z`` with ``|d| <= R``.  Stable neurons (``|z| >= R``) keep
    slope ``[z > 0]`` and no slack.  An unstable one (``|z| < R``, finite ``R``) is relaxed by the
    chord of ``relu`` over ``[z - R, z + R]`` (the triangle relaxation of CROWN, Zhang et al.,
    NeurIPS 2018): with ``a = (z + R) / (2R)``, ``relu(x) = a x + a (R - z) / 2 + eps``,
    ``|eps| <= a (R - z) / 2`` for every ``x`` in the interval, so exactly
    ``relu(z + d) - relu(z) = a d + c + eps`` with the known offset
    ``c = (z + R)^2 / (4R) - relu(z)`` (a known part, propagated with ``mu``) and the slack
    ``|eps| <= (R^2 - z^2) / (4R)``: a quarter of the former ``(R - |z|)_+`` at ``z = 0``, at most
    half of it anywhere, and ``|c| + (R^2 - z^2)/(4R) = (R - |z|) / 2``.  The float64 evaluation of
    ``a`` and ``c`` is covered by padding the slack with ``2**-40 (R + |z|)``.  An infinite radius
    keeps the slack infinite (the input is not certified).

    ``chord=False`` (tier A, where the radii are too wide for the relaxation to matter and its
    extra backward pass for the predictor would cost ~20% of the certificate): slope ``[z > 0]``
    and slack ``(R - |z|)_+`` for every neuron."""
    z = x.z.double()
    Rin = x.G
    fin = torch.isfinite(Rin)
    if not chord:
        D = (z > 0).double()
        eta = torch.clamp(Rin - z.abs(), min=0.0)
        eta = torch.where(torch.isnan(eta), torch.full_like(eta, math.inf), eta)
        r.lin, r.w, r.is_eta = D, eta, True
        r.mu, r.Ak, r.Aw = D * x.mu, D * x.Ak, D * x.Aw + eta
        r.G = torch.minimum(torch.where(z > 0, Rin, torch.clamp(z + Rin, min=0.0)), _radius(r))
        return
    U = (z.abs() < Rin) & fin & (Rin > 0)
    Rs = torch.where(U, Rin, torch.ones_like(Rin))
    a = torch.where(U, (z + Rs) / (2 * Rs), (z > 0).double())
    c = torch.where(U, (z + Rs) ** 2 / (4 * Rs) - torch.clamp(z, min=0.0), torch.zeros_like(z))
    hw = torch.where(U, (Rs * Rs - z * z) / (4 * Rs) * _PAD + 2.0**-40 * (Rs + z.abs()), torch.zeros_like(z))
    eta = torch.where(fin, hw, torch.full_like(hw, math.inf))
    r.lin = a
    r.w, r.is_eta = eta, True
    r.off = c if bool(U.any()) else None
    r.mu = a * x.mu + c
    r.Ak = a * x.Ak + c.abs()
    r.Aw = a * x.Aw + eta
    # directly: |relu(z + d) - relu(z)| <= |d| <= R, and <= (z + R)_+ where z <= 0
    tierA = torch.where(z > 0, Rin, torch.clamp(z + Rin, min=0.0))
    r.G = torch.minimum(tierA, _radius(r))


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


# ------------------------------------------------------------------------------------------
# smooth steps: first-order linearisation at the fp32 value plus a rigorous second-order remainder
# ------------------------------------------------------------------------------------------
#: Steps at whose inputs tier-B radii take the exact Jacobian rows: where a radius enters a
#: switching slack (ReLU, max pooling) or a second-order remainder (the smooth steps).
_EXACT_AT = ("relu", "maxpool2d", "gelu", "layernorm", "softmax", "matmul")

#: Relative slack of the remainder bounds' own float64 evaluation (sums of a few nonnegative
#: terms, exp and sqrt of float64 values: a few hundred u64 at most).
_RPAD = 1.0 + 2.0**-30


def _gelu2(t: np.ndarray) -> np.ndarray:
    """``GELU''(t) = phi(t) (2 - t^2)`` (phi the standard normal density)."""
    return np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi) * (2.0 - t * t)


#: Points between which ``|GELU''|`` is monotone: its extrema (0, +-2: ``GELU''' = phi(t) t (t^2 - 4)``)
#: and zeros (+-sqrt 2).
_GELU2_POINTS = (-2.0, -math.sqrt(2.0), 0.0, math.sqrt(2.0), 2.0)


def gelu_second_sup(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``sup |GELU''|`` over ``[lo, hi]`` (elementwise; at most ``2 phi(0) = 0.798``), padded for float64.

    >>> np.round(gelu_second_sup(np.array([-1.0, 3.0]), np.array([1.0, 4.0])), 4).tolist()  # 2 phi(0), 7 phi(3)
    [0.7979, 0.031]
    """
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    out = np.maximum(np.abs(_gelu2(lo)), np.abs(_gelu2(hi)))
    for c in _GELU2_POINTS:
        out = np.where((lo <= c) & (c <= hi), np.maximum(out, abs(float(_gelu2(np.float64(c))))), out)
    return out * _RPAD + 2.0**-1000


def _gelu1_range(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inf, sup) of ``GELU'`` over ``[lo, hi]`` (its extrema are at ``+-sqrt 2``, the zeros of ``GELU''``),
    widened by ``2**-40`` for the float64 evaluation."""
    d = LB.activation_derivative
    a, b = d("gelu", lo), d("gelu", hi)
    mn, mx = np.minimum(a, b), np.maximum(a, b)
    for c in (-math.sqrt(2.0), math.sqrt(2.0)):
        inside = (lo <= c) & (c <= hi)
        v = float(d("gelu", np.float64(c)))
        mn, mx = np.where(inside, np.minimum(mn, v), mn), np.where(inside, np.maximum(mx, v), mx)
    return mn - 2.0**-40, mx + 2.0**-40


def gelu_remainder(x: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Bound on ``|GELU(x + d) - GELU(x) - GELU'(x) d|`` for ``|d| <= R`` (elementwise, float64).

    ``r(d) = int_0^d (GELU'(x + t) - GELU'(x)) dt`` and the integrand is at most ``L |t|`` (``L`` the
    sup of ``|GELU''|`` on the side's segment, :func:`gelu_second_sup`) and at most ``D``, the largest
    deviation of ``GELU'`` from ``GELU'(x)`` on it; so ``|r| <= int_0^R min(L t, D) dt``, which is
    ``L R^2 / 2`` when ``L R <= D`` and ``D R - D^2 / (2 L)`` otherwise (the Lagrange bound for small
    radii, nearly ``D R`` for large ones).  The larger of the two sides ``[x - R, x]``, ``[x, x + R]``.

    >>> float(gelu_remainder(np.array(0.0), np.array(1e-3))) <= 0.5 * 0.7979 * 1e-6 * 1.0001
    True
    """
    x, R = np.asarray(x, dtype=np.float64), np.asarray(R, dtype=np.float64)
    J = LB.activation_derivative("gelu", x)
    out = np.zeros(np.broadcast_shapes(x.shape, R.shape))
    with np.errstate(all="ignore"):
        for lo, hi in ((x - R, x), (x, x + R)):
            L = gelu_second_sup(lo, hi)
            mn, mx = _gelu1_range(lo, hi)
            D = np.maximum(mx - J, J - mn) * _RPAD
            F = np.where(L * R <= D, 0.5 * L * R * R, D * R - D * D / (2 * L))
            out = np.maximum(out, F * _RPAD * _RPAD)
    return np.where(np.isfinite(R), out, np.inf)


def _gelu(x: _Rec, r: _Rec, cfg: BoundConfig) -> None:
    """GELU (erf form) linearised at the fp32 value: ``d = GELU'(x~) d_in + rho + e``.

    ``|rho| <= int_0^R min(L t, D) dt`` (:func:`gelu_remainder`: Taylor with the Lagrange remainder
    ``sup |GELU''| R^2 / 2`` for small radii, the range of ``GELU'`` on the box for large ones), plus
    ``2**-40 R`` for the float64 value of ``GELU'(x~)`` (an absolute error of a few u64: its two terms are at most 1 and
    0.25 in magnitude).  ``e``: the local
    bound of :func:`fpanalysis.bounds.layers.activation_local_bound` on the box plus fp32's own.
    """
    f = cfg.fmt
    z = x.z.double()
    zn = _np(z)
    shape = z.shape
    R = x.G
    rn = _np(torch.nan_to_num(R, posinf=0.0))
    with np.errstate(all="ignore"):
        loc = _t(LB.activation_local_bound("gelu", zn, f, radius=rn, mode=cfg.mode).value, shape)
        loc0 = _t(LB.activation_local_bound("gelu", zn, f, mode=cfg.mode).value, shape)
        own32 = _t(LB.activation_local_bound("gelu", zn, "fp32").value, shape)
        slope = _t(LB.activation_slope("gelu", zn, radius=rn), shape)
        J = _t(LB.activation_derivative("gelu", zn), shape)
    bad = ~torch.isfinite(R)
    rho = _fix(_t(gelu_remainder(zn, _np(R)), shape) + 2.0**-40 * R)
    loc = torch.where(bad, torch.full_like(loc, math.inf), loc)
    r.rho = rho
    r.w = _fix(loc + own32 + rho)
    r.w0 = _fix(loc0 + own32)
    r.var = _ulp_var(r.z, f)
    r.lin = J
    r.mu = J * x.mu
    Ja = J.abs()
    r.Ak = Ja * x.Ak
    r.Aw = Ja * x.Aw + r.w
    r.G = torch.minimum(_fix(loc + slope * R + own32), _radius(r))


def softmax_remainder(y: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Bound on ``|s(x~ + d) - s(x~) - J d|`` for ``|d| <= R`` (softmax along the last axis, ``y = s(x~)``).

    With ``H_i`` the Hessian of ``s_i``, ``d^T H_i d = s_i ((d_i - dbar)^2 - V)``, where ``dbar = s.d``
    and ``V = sum_j s_j (d_j - dbar)^2 >= 0`` (all at the Lagrange point ``xi`` of the segment), so
    ``|d^T H_i d| <= s_i(xi) max((d_i - dbar)^2, V)``.  ``s_j(xi) <= y^_j := min(1, y_j exp(R_j + max R))``
    because ``log s_j`` changes by at most ``|d_j| + max |d|`` (logsumexp is 1-Lipschitz in the
    max-norm), refined once to ``y_j exp(R_j + sum_k y^_k R_k)`` (the change of logsumexp along the
    segment is ``sum_k s_k(xi') theta d_k``, at most ``sum_k y^_k R_k``).  Two bounds on each part: ``|d_i - dbar| = |sum_{j != i} s_j (d_i - d_j)|`` is at most
    ``R_i + min(max R, sum_j y^_j R_j)`` and at most ``T_i := sum_{j != i} y^_j (R_i + R_j)`` (small for
    the peak of a peaked row); ``V = min_c sum_j s_j (d_j - c)^2`` is at most ``sum_j s_j d_j^2 <=
    min(max R^2, sum_j y^_j R_j^2)`` and, with ``c = d_p`` (``p`` the row's largest ``y``), at most
    ``sum_{j != p} y^_j (R_j + R_p)^2``.  Hence ``rho_i <= y^_i max(D_i^2, V^) / 2`` with ``D_i`` and ``V^``
    the smaller bounds.  ``inf`` on a row with an infinite radius.
    """
    Rm = R.max(-1, keepdim=True).values
    with np.errstate(over="ignore"):
        yup = torch.clamp(y * torch.exp(R + Rm) * _RPAD, max=1.0)
        # refined: logsumexp changes by sum_j s_j(xi') theta d_j on the segment, at most sum_j y^_j R_j
        yup = torch.minimum(yup, y * torch.exp(R + (yup * R).sum(-1, keepdim=True) * _RPAD) * _RPAD)
    S1 = (yup * R).sum(-1, keepdim=True) * _RPAD
    Sy = yup.sum(-1, keepdim=True) * _RPAD
    m = torch.minimum(Rm, S1)
    # T_i by subtraction from the row sums: each difference is padded by its operands' magnitude
    T = (torch.clamp(R * (Sy - yup), min=0.0) + torch.clamp(S1 - yup * R, min=0.0)) * _RPAD \
        + 2.0**-44 * (R * Sy + S1)
    D = torch.minimum(R + m, T)
    p = y.argmax(-1, keepdim=True)
    Rp = R.gather(-1, p)
    others = torch.ones_like(R).scatter_(-1, p, 0.0)
    V = torch.minimum(torch.minimum(Rm * Rm, (yup * R * R).sum(-1, keepdim=True) * _RPAD),
                      (others * yup * (R + Rp) ** 2).sum(-1, keepdim=True) * _RPAD)
    return _fix(0.5 * yup * torch.maximum(D * D, V) * _RPAD)


def _softmax(s: Step, x: _Rec, r: _Rec, cfg: BoundConfig) -> None:
    """Softmax along ``dim`` linearised at the fp32 value: ``J = diag(y) - y y^T`` per row.

    ``rho``: :func:`softmax_remainder` (or where smaller, the triangle inequality: the exact change
    ``min(1, y_i expm1(R_i + max R))`` of :func:`fpanalysis.bounds.layers.propagate_softmax` plus
    ``|J d|_i <= y_i (R_i + sum_j y_j R_j)``) plus the float64 Jacobian's own error: the computed
    ``y'`` has relative error ``t <= 8 (n + 8) u64`` (exp within a few ulps, a sum of ``n``
    positive terms, a division), and ``|(J - J')d|_i <= 3 t y_i (R_i + max R)``, bounded by
    ``4 t y'_i (R_i + max R)``.  The absolute pass uses ``y_i (v_i + sum_j y_j v_j) >= (|J| v)_i``.
    """
    f = cfg.fmt
    d = s.attrs["dim"] % x.z.ndim
    zm = x.z.double().movedim(d, -1).contiguous()
    Rm = x.G.movedim(d, -1).contiguous()
    n = int(zm.shape[-1])
    shape = zm.shape
    y = torch.softmax(zm, -1)
    rowbad = (~torch.isfinite(Rm)).any(-1, keepdim=True).expand(shape)
    zn = _np(zm)
    rn = np.ascontiguousarray(_np(torch.nan_to_num(Rm, posinf=0.0)))
    with np.errstate(all="ignore"):
        loc = _t(LB.softmax_local_bound(zn, f, radius=rn, mode=cfg.mode).value, shape)
        loc0 = _t(LB.softmax_local_bound(zn, f, mode=cfg.mode).value, shape)
        own32 = _t(LB.softmax_local_bound(zn, "fp32").value, shape)
        prop = _t(LB.propagate_softmax(rn, _np(y)).value, shape)
    inf = torch.full_like(loc, math.inf)
    loc = torch.where(rowbad, inf, loc)
    t = 8 * (n + 8) * _U64
    Rc = torch.where(rowbad, torch.zeros_like(Rm), Rm)
    # the quadratic bound, or (large radii) |s(x~+d) - s(x~)| + |J d| (propagate_softmax, y (R + y.R))
    cap1 = (prop + y * (Rc + (y * Rc).sum(-1, keepdim=True))) * _RPAD
    rho = (torch.minimum(softmax_remainder(y, Rc), cap1)
           + 4 * t * y * (Rc + Rc.max(-1, keepdim=True).values) * _RPAD)
    rho = torch.where(rowbad, inf, rho)
    cap = 1.0 + 4 * cfg.u  # both results lie in [0, 1]
    tierA = torch.clamp(_fix(loc + prop + own32), max=cap)
    tierA = torch.where(rowbad, torch.full_like(tierA, cap), tierA)

    def back(v: torch.Tensor) -> torch.Tensor:
        return v.movedim(-1, d)

    def fwd(v: torch.Tensor) -> torch.Tensor:
        vm = v.expand(x.z.shape).movedim(d, -1)
        return back(y * (vm - (y * vm).sum(-1, keepdim=True)))

    def fwd_abs(v: torch.Tensor) -> torch.Tensor:
        vm = v.expand(x.z.shape).movedim(d, -1)
        return back(y * (vm + (y * vm).sum(-1, keepdim=True)))

    r.rho = back(rho)
    r.w = back(_fix(loc + own32 + rho))
    r.w0 = back(_fix(loc0 + own32))
    r.var = _ulp_var(r.z, f)
    r.lin = (y, d)
    r.mu = fwd(x.mu)
    r.Ak = fwd_abs(x.Ak)
    r.Aw = fwd_abs(x.Aw) + r.w
    r.G = torch.minimum(back(tierA), _radius(r))


def layernorm_remainder(c: torch.Tensor, R: torch.Tensor, gamma: torch.Tensor, eps: float,
                        sd_lo: torch.Tensor, phi: torch.Tensor | None = None,
                        sig_hi: torch.Tensor | None = None) -> torch.Tensor:
    """Bound on ``|LN(x~ + d) - LN(x~) - J d|`` for ``|d| <= R`` (last axis normalised, ``n`` long).

    ``LN(x) = gamma n(P x) + beta`` with ``P`` the centring projection and ``n(c) = c / s(c)``,
    ``s(c) = sqrt(|c|^2 / n + eps)``.  The Hessian of ``n_i`` gives, with ``delta = P d`` and
    ``c^ = xi / s(xi)`` at the Lagrange point ``xi`` of the segment::

        delta^T H_i delta = (-2 delta_i (c^.delta)/n - c^_i |delta|^2/n + 3 c^_i (c^.delta)^2/n^2) / s(xi)^2

    With ``t = c^.delta / n`` and ``rho_d^2 = |delta|^2 / n``: ``|t| <= rho_d <= rho := rms(R)``
    (``|c^|_2 <= sqrt n``, ``|P d|_2 <= |d|_2``); also ``|t| <= mean(c^max R)`` (``c^(xi)`` is centred, so
    ``c^.P d = c^.d``) and, given ``phi >= |c^(x~).d| / n`` (tier B, :func:`_ln_phi`), ``|t| <= phi +
    rho^2 / s_lo`` (``c^`` turns by at most ``|delta|_2 / s_lo`` along the segment: ``|Dn| <= 1/s``);
    ``tb`` is the smallest.  ``|delta_i| <= q_i := R_i + mean R``, ``|c^_i| <= c^max_i := min(sqrt n,
    (|c_i| + q_i) / s_lo)``, and ``s(xi)^2 >= s_lo^2 := max((sd - rho)_+^2, var - 2 |c.d|/n) + eps``
    (``sqrt(|c|^2/n)`` is 1-Lipschitz in ``rms``; ``|xi|^2/n = var + 2 theta c.delta/n + theta^2
    rho_d^2``; ``|c.d|/n <= mean(|c| R)``, or ``<= sigma phi``).  ``c^_i (3 t^2 - rho_d^2)`` lies between
    ``-|c^_i| rho^2`` and ``|c^_i| min(3 tb^2, 2 rho^2)``, so
    ``|rho_i| <= |gamma_i| (q_i tb + c^max_i max(rho^2, min(3 tb^2, 2 rho^2)) / 2) / s_lo^2``; ``inf`` when
    ``s_lo = 0`` (``eps = 0`` and the box reaches a constant row).  ``c`` (the centred fp32 value,
    ``|c_i|`` may be an upper bound), ``sd_lo <= sqrt(var)``, ``phi`` and ``sig_hi >= sqrt(var + eps)``:
    arrays over the last axis / per row.
    """
    n = int(c.shape[-1])
    rho = torch.sqrt((R * R).mean(-1, keepdim=True)) * _RPAD
    q = R + R.mean(-1, keepdim=True) * _RPAD
    gap = torch.clamp(sd_lo - rho, min=0.0)
    # |xi|^2/n = var + 2 theta c.delta/n + theta^2 |delta|^2/n >= var - 2 |c.d|/n (c centred), and
    # |c.d|/n <= mean(|c| R), or sigma phi with the exact functional phi >= |c^.d|/n
    cd = (c.abs() * R).mean(-1, keepdim=True) * _RPAD
    if phi is not None and sig_hi is not None:
        cd = torch.minimum(cd, sig_hi * phi * _RPAD)
    g2 = torch.maximum(gap * gap, sd_lo * sd_lo / _RPAD - 2 * cd)
    s2 = torch.clamp(g2, min=0.0) / _RPAD + eps / _RPAD
    s_lo = torch.sqrt(s2) / _RPAD
    with np.errstate(divide="ignore", invalid="ignore"):
        chat = torch.minimum(torch.full_like(c, math.sqrt(n) * _RPAD), (c.abs() + q) / s_lo * _RPAD)
        # |t| = |c^(xi) . delta| / n: Cauchy-Schwarz rho, or mean(c^max R) (c^(xi) centred), or the
        # exact functional phi at x~ plus the turn of c^ along the segment, rho^2 / s_lo
        tb = torch.minimum(rho, (chat * R).mean(-1, keepdim=True) * _RPAD)
        if phi is not None:
            tb = torch.minimum(tb, (phi + rho * rho / s_lo) * _RPAD)
        cterm = 0.5 * torch.maximum(rho * rho, torch.minimum(3 * tb * tb, 2 * rho * rho))
        val = gamma.abs() * (q * tb + chat * cterm) / s2 * _RPAD * _RPAD
    val = torch.where(s2 > 0, val, torch.full_like(val, math.inf))
    return _fix(val)


def _layernorm(s: Step, x: _Rec, r: _Rec, cfg: BoundConfig, cache: ParamCache) -> None:
    """Layer norm with the rounded affine parameters, linearised at the fp32 value.

    ``J = diag(gamma^ / sigma) (I - c^ c^T / n) P`` (``c^ = (x~ - mean) / sigma``, ``sigma =
    sqrt(var + eps)``); ``k = (gamma^ - gamma) c^ + (beta^ - beta)``; ``rho``:
    :func:`layernorm_remainder` (or where smaller, the triangle inequality: the exact change of
    :func:`fpanalysis.bounds.layers.propagate_layernorm` with ``gamma^`` plus ``|J| R``) plus the
    error of the float64 Jacobian data: with ``A = max |x~|``
    of the row, the computed mean, centred values and ``sigma'`` obey ``|c' - c| <= dc := 6 (n + 2)
    u64 A`` and ``|sigma' - sigma| <= t sigma'``, ``t = dc / sigma' + 2 (n + 4) u64``; then
    ``|c^' - c^| <= t (1 + 2 |c^'|)`` and ``|(J - J')d|_i <= 12 t |gamma^_i| / sigma' U_i (q_i + mean(U q))``
    with ``U = 1 + |c^'| + t (1 + 2 |c^'|)``, ``q = R + mean R`` (inf if ``t > 0.01``).  ``e``: the
    local bound of :func:`fpanalysis.bounds.layers.layernorm_local_bound` on the box plus fp32's own.
    """
    f = cfg.fmt
    a = s.attrs
    nd = len(a["normalized_shape"])
    eps = float(a["eps"])
    x_phi = r.phi
    z = x.z.double()
    shape = z.shape
    flat = shape[:len(shape) - nd] + (-1,)
    zn = _np(z)

    def params() -> dict[str, Any]:
        out = {}
        for key in ("weight", "bias"):
            v = a.get(key)
            out[key] = None if v is None else v.detach().double().numpy()
            out[key + "_h"] = None if v is None else np.asarray(round_to(out[key], f, "nearest-even"),
                                                                dtype=np.float64)
        return out

    p = cache.memo((s.name, "ln_params", f), params)
    R = x.G
    rn = _np(torch.nan_to_num(R, posinf=0.0))
    with np.errstate(all="ignore"):
        loc = _t(LB.layernorm_local_bound(zn, p["weight_h"], p["bias_h"], eps, f, normalized_ndim=nd, radius=rn,
                                          mode=cfg.mode).value, shape)
        loc0 = _t(LB.layernorm_local_bound(zn, p["weight_h"], p["bias_h"], eps, f, normalized_ndim=nd,
                                           mode=cfg.mode).value, shape)
        own32 = _t(LB.layernorm_local_bound(zn, p["weight"], p["bias"], eps, "fp32", normalized_ndim=nd).value, shape)
        # tier A as the interval certificate: parameter rounding over the box + exact propagation
        axes = tuple(range(-nd, 0))
        c0 = zn - zn.mean(axis=axes, keepdims=True)
        s0 = np.sqrt((c0 * c0).mean(axis=axes, keepdims=True) + eps)
        nbound = np.abs(c0) / s0 * _PAD + LB.propagate_layernorm(rn, zn, None, eps, normalized_ndim=nd).value
        par = np.zeros(shape)
        if p["weight"] is not None:
            par = par + np.abs(p["weight_h"] - p["weight"]) * nbound
        if p["bias"] is not None:
            par = par + np.abs(p["bias_h"] - p["bias"])
        prop = _t(LB.propagate_layernorm(rn, zn, p["weight"], eps, normalized_ndim=nd).value, shape)
    rowbad = (~torch.isfinite(R)).reshape(flat).any(-1, keepdim=True)
    # linearisation data (float64) on rows flattened over the normalised axes
    zf = z.reshape(flat)
    n = int(zf.shape[-1])
    mean = zf.mean(-1, keepdim=True)
    c = zf - mean
    var = (c * c).mean(-1, keepdim=True)
    sig = torch.sqrt(var + eps)
    ch = c / sig

    def vec(key: str, default: float) -> torch.Tensor:
        v = p[key]
        return torch.full((n,), default, dtype=torch.float64) if v is None else torch.from_numpy(
            np.asarray(v, dtype=np.float64).reshape(-1))

    gh = vec("weight_h", 1.0)
    dg, db = gh - vec("weight", 1.0), vec("bias_h", 0.0) - vec("bias", 0.0)
    gs = gh / sig
    Amax = zf.abs().max(-1, keepdim=True).values
    dc = 6 * (n + 2) * _U64 * Amax
    t = dc / sig + 2 * (n + 4) * _U64
    Rf = torch.where(rowbad, torch.zeros_like(zf), R.reshape(flat))
    q = Rf + Rf.mean(-1, keepdim=True)
    chu = ch.abs() + t * (1 + 2 * ch.abs())
    U = 1 + chu
    rhoJ = 12 * t * gh.abs() / sig * U * (q + (U * q).mean(-1, keepdim=True)) * _RPAD
    sd_lo = torch.clamp(torch.sqrt(var) * (1 - 2 * (n + 4) * _U64) - dc, min=0.0)
    # the quadratic bound, or (large radii) |LN(x~+d) - LN(x~)| (propagate_layernorm, rounded weight)
    # + |J d| (the absolute pass on R)
    with np.errstate(all="ignore"):
        lip = _t(LB.propagate_layernorm(rn, zn, p["weight_h"], eps, normalized_ndim=nd).value, shape).reshape(flat)
    Pq = Rf + Rf.mean(-1, keepdim=True)
    cap1 = _fix((lip + gs.abs() * (Pq + ch.abs() * (ch.abs() * Pq).mean(-1, keepdim=True))) * _RPAD)
    phi = None if x_phi is None else x_phi.reshape(flat[:-1] + (1,))
    sig_hi = sig * (1 + t) * _RPAD
    rho = torch.minimum(layernorm_remainder(c.abs() + dc, Rf, gh, eps, sd_lo, phi, sig_hi), cap1) + rhoJ
    rho = torch.where(rowbad | (t > 0.01), torch.full_like(rho, math.inf), rho)
    kk = dg * ch + db
    kerr = dg.abs() * (t * (1 + 2 * ch.abs()) + 2 * _U64 * ch.abs()) + 2 * _U64 * kk.abs()
    kerr = torch.where(t > 0.01, torch.full_like(kerr, math.inf), kerr)
    rho, kk, kerr = rho.reshape(shape), kk.reshape(shape), kerr.reshape(shape)
    rowbad_full = rowbad.expand(zf.shape).reshape(shape)
    loc = torch.where(rowbad_full, torch.full_like(loc, math.inf), loc)

    def fwd(v: torch.Tensor) -> torch.Tensor:
        vf = v.expand(shape).reshape(flat)
        Pv = vf - vf.mean(-1, keepdim=True)
        return (gs * (Pv - ch * (ch * Pv).mean(-1, keepdim=True))).reshape(shape)

    gsa, cha = gs.abs(), ch.abs()

    def fwd_abs(v: torch.Tensor) -> torch.Tensor:
        vf = v.expand(shape).reshape(flat)
        Pv = vf + vf.mean(-1, keepdim=True)
        return (gsa * (Pv + cha * (cha * Pv).mean(-1, keepdim=True))).reshape(shape)

    r.rho = rho
    r.w = _fix(loc + own32 + kerr + rho)
    r.w0 = _fix(loc0 + own32 + kerr)
    r.var = _ulp_var(r.z, f)
    r.lin = (gs, ch, nd)
    r.mu = fwd(x.mu) + kk
    r.Ak = fwd_abs(x.Ak) + kk.abs()
    r.Aw = fwd_abs(x.Aw) + r.w
    r.G = torch.minimum(_fix(loc + _t(par, shape) + prop + own32), _radius(r))


def _matmul(a: _Rec, b: _Rec, r: _Rec, cfg: BoundConfig) -> None:
    """Product of two activations: ``(A + dA)(B + dB) - A B = dA B + A dB + dA dB`` (exact).

    ``L``: ``(dA, dB) -> dA B~ + A~ dB`` with the fp32 operands (exact binary32 values); ``rho = dA dB``,
    ``|rho| <= R_A R_B``; no parameters, so ``k = 0``.  ``e``: the accumulation bound of the
    profile for ``fl(A^ B^)`` with ``|A^||B^| <= (|A~| + R_A)(|B~| + R_B)`` and ``|A^ B^| <= |y~| + own32
    + R_A |B~| + (|A~| + R_A) R_B``, plus fp32's own error (``ieee`` binary32 accumulation, any order).
    Every float64 product of nonnegative matrices is inflated by ``1 + 2 (k + 2) u64``.
    """
    A, Bm = a.z.double(), b.z.double()
    if A.ndim < 2 or Bm.ndim < 2:
        raise NotCovered("the adjoint certificate covers matmul of operands with 2 or more axes only (a 1-D "
                         "operand is not certified by the adjoint method)")
    k = int(A.shape[-1])
    c = 1.0 + 2.0 * (k + 2) * _U64
    Aa, Ba = A.abs(), Bm.abs()
    RA, RB = a.G.expand(A.shape), b.G.expand(Bm.shape)
    AU, BU = _fix(Aa + RA), _fix(Ba + RB)
    out = r.z.double()
    AB = torch.matmul(Aa, Ba) * c
    own32 = accumulation_bounds(AB, torch.zeros(()), k, cfg, fmt="fp32", profile="ieee", probabilistic=False)[0]
    P = _fix((torch.matmul(RA, Ba) + torch.matmul(AU, RB)) * c)
    Aabs = _fix(torch.matmul(AU, BU) * c)
    loc = accumulation_bounds(Aabs, _fix(out.abs() + own32 + P), k, cfg, probabilistic=False)[0]
    loc0 = accumulation_bounds(AB, _fix(out.abs() + own32), k, cfg, probabilistic=False)[0]
    rho = _fix(torch.matmul(RA, RB) * c)
    r.rho = rho
    r.w = _fix(loc + own32 + rho)
    r.w0 = _fix(loc0 + own32)
    r.var = _ulp_var(r.z, cfg.fmt)
    r.lin = (A, Bm)
    r.mu = torch.matmul(a.mu, Bm) + torch.matmul(A, b.mu)
    r.Ak = torch.matmul(a.Ak, Ba) + torch.matmul(Aa, b.Ak)
    r.Aw = torch.matmul(a.Aw, Ba) + torch.matmul(Aa, b.Aw) + r.w
    r.G = torch.minimum(_fix(loc + P + own32), _radius(r))


def _unbroadcast(g: torch.Tensor, shape: tuple, K: int) -> torch.Tensor:
    """Sum ``g`` (K, ...) over the axes an input of ``shape`` was broadcast along (transpose of the
    broadcast), as (K, *shape)."""
    if tuple(g.shape[1:]) == shape:
        return g
    pad = (1,) * (g.ndim - 1 - len(shape)) + shape
    return g.sum_to_size((K,) + pad).reshape((K,) + shape)


def _backward(s: Step, g: torch.Tensor, r: _Rec, ins: list[_Rec], K: int, B: int, cache: ParamCache,
              sizes: dict) -> list[tuple[str, torch.Tensor]]:
    """Transpose of the step's linearisation applied to g (K, B, ...)."""
    k = s.kind
    names = [n for n in s.inputs if n not in sizes]
    if k in ("input", "param"):
        return []
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
            out.append((n, _unbroadcast(gi, tuple(i.z.shape), K)))
        return out
    if k == "gelu":
        return [(names[0], g * r.lin)]
    if k == "softmax":
        y, d = r.lin
        gm = g.movedim(d + 1, -1)
        gi = y * (gm - (gm * y).sum(-1, keepdim=True))
        return [(names[0], gi.movedim(-1, d + 1))]
    if k == "layernorm":
        gs, ch, nd = r.lin
        gf = g.reshape(g.shape[:g.ndim - nd] + (-1,))
        h = gf * gs
        h = h - ch * (ch * h).mean(-1, keepdim=True)
        h = h - h.mean(-1, keepdim=True)
        return [(names[0], h.reshape(g.shape))]
    if k == "matmul":
        A, Bm = r.lin
        ga = torch.matmul(g, Bm.transpose(-1, -2))
        gb = torch.matmul(A.transpose(-1, -2), g)
        return [(names[0], _unbroadcast(ga, tuple(ins[0].z.shape), K)),
                (names[1], _unbroadcast(gb, tuple(ins[1].z.shape), K))]
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

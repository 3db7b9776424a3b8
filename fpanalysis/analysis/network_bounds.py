"""Per-step rounding-error bounds of a traced model, propagated to the logits.

For every step of a :class:`~fpanalysis.nn.trace.TracedModel` this module bounds, from the
fp32 run alone, how far the low-precision result can be from the fp32 result:

    G_l >= |x^_l - x~_l|   componentwise,

where ``x~_l`` is the value of the fp32 run (torch float32 kernels) and ``x^_l`` the value
of the emulated ``fmt`` run (the profile's arithmetic) -- and, because the bound only assumes
"binary32 accumulation in any order, fp32 opmath for everything else", also of a real
``model.half()`` run.  At the logits ``B(x) = max_i G_L`` is the certificate bound of
:mod:`fpanalysis.tolerance`: ``|M16(x) - M32(x)| <= B(x)``.

Every step is split, around the exact operation ``f`` (fp32 parameters) at the known fp32
input ``x~``, as::

    y^ - y~ = [f^_fmt(x^) - f_p^(x^)]  +  [f_p^(x^) - f(x^)]  +  [f(x^) - f(x~)]  +  [f(x~) - f~_32(x~)]
              local rounding (fmt)       parameter rounding    propagation        fp32's own error

with ``|x^ - x~| <= G_in``; each bracket is bounded rigorously (finite perturbations, not
first order): the local terms by the formulas of :mod:`fpanalysis.bounds` /
:mod:`fpanalysis.bounds.layers` evaluated on the interval ``x~ +- G_in`` (magnitudes
``|x~| + G_in``), parameter rounding with the exact ``|p^ - p|``, propagation with exact
linear maps (``|W^| G``), maximum (max pooling), sound Lipschitz constants or the supremum of
``|phi'|`` over the interval (activations), and the exact softmax / layer-norm perturbation
lemmas.  The fp32 library functions (exp, erf, tanh, rsqrt) are assumed accurate to a few fp32
ulps (``fpanalysis.bounds.layers.OPMATH_ULPS``).

Probabilistic flavour (Higham & Mary, SISC 41(5), 2019): the accumulation constants of the
low-precision inner products (``gamma_n`` of the accumulator) are replaced by
``gamma~_n(lam)`` with one ``lam`` for the whole network, chosen so that the union bound over
all ``m n`` rounding events of all layers of one input is the requested failure probability;
every other term stays deterministic.

The magnitude products ``|W| v`` of linear and convolution layers are evaluated with torch in
binary32 and inflated rigorously (nonnegative terms: ``(1 + gamma_{n}(u32))`` plus the
conversion of ``v`` to binary32); everything else is float64.

>>> import torch
>>> from fpanalysis.nn.trace import trace_model
>>> from fpanalysis.nn.execute import ParamCache
>>> layer = torch.nn.Linear(8, 4)
>>> steps = trace_model(torch.nn.Sequential(layer)).steps
>>> x = torch.randn(3, 8)
>>> cfg, cache = BoundConfig.make("fp16"), ParamCache()
>>> b_in = step_bound(steps[0], [x], x, cfg, cache)          # rounding the input to fp16
>>> with torch.no_grad():
...     b = step_bound(steps[1], [b_in], layer(x), cfg, cache)
>>> b.G.shape, bool((b.G < 0.05).all())
(torch.Size([3, 4]), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..bounds import accumulation, layers
from ..formats import FloatFormat, get_format
from ..linalg import Profile
from ..nn.execute import ParamCache
from ..nn.trace import Step
from ..rounding import RoundingMode, round_to

__all__ = [
    "PROBABILISTIC_KINDS",
    "BoundConfig",
    "StepBound",
    "local_bound",
    "network_lambda",
    "rounding_events",
    "step_bound",
]

_U32 = 2.0**-24
_U64 = 2.0**-53
_PAD = 1.0 + 2.0**-40
_FP32 = get_format("fp32")
#: Steps whose accumulations get the probabilistic constant gamma~ in the probabilistic flavour.
PROBABILISTIC_KINDS = ("linear", "conv2d", "matmul")


@dataclass(frozen=True)
class BoundConfig:
    """What the bounds are about: format, profile, rounding mode, summation order, lambda.

    ``lam`` is the Higham-Mary parameter of the probabilistic flavour (``None``: the
    probabilistic flavour equals the deterministic one).  ``order``/``block`` matter for the
    ``ieee`` profile only (``fp32-accumulate`` bounds hold for every order).
    """

    fmt: FloatFormat
    profile: str = "fp32-accumulate"
    mode: str = "nearest-even"
    order: str = "sequential"
    block: int = 32
    lam: float | None = None
    fast_magnitudes: bool = True

    @classmethod
    def make(cls, fmt: Any = "fp16", profile: str = "fp32-accumulate", mode: str = "nearest-even",
             order: str | None = None, block: int = 32, lam: float | None = None,
             fast_magnitudes: bool = True) -> BoundConfig:
        """Validated configuration; ``order`` takes the emulator's names (``blas`` -> any order).

        >>> BoundConfig.make("fp16", "ieee", order="pairwise").order
        'pairwise'
        """
        prof = str(profile).strip().lower().replace("_", "-")
        try:
            from ..linalg import Profile

            prof = Profile.parse(prof).value  # tensor-core aliases (h100, ...) -> architecture names
        except ValueError:
            pass
        if prof not in accumulation.PROFILES:
            raise ValueError(f"unknown profile {profile!r}; valid profiles are: {', '.join(accumulation.PROFILES)}")
        o = {"blas": "sequential", "recursive": "sequential", None: "sequential"}.get(order, order)
        if o not in accumulation.ORDERS:
            raise ValueError(f"unknown order {order!r}; valid orders are: sequential, pairwise, blocked, blas")
        return cls(get_format(fmt), prof, RoundingMode.parse(mode).value, o, int(block), lam, fast_magnitudes)

    @property
    def u(self) -> float:
        return accumulation.unit_roundoff(self.fmt, self.mode)

    @property
    def eta(self) -> float:
        return accumulation.underflow_unit(self.fmt, self.mode)

    @property
    def nearest(self) -> bool:
        return self.u == self.fmt.u

    @property
    def accumulator_u(self) -> float:
        """Unit roundoff of the accumulations that the probabilistic flavour relaxes."""
        return self.u if self.profile == "ieee" else _U32


@dataclass
class StepBound:
    """Bounds attached to one step's output.

    Attributes
    ----------
    ref : torch.Tensor or object
        The fp32 run's value as float64 (for ``size`` steps: the Python value).
    G, Gp : torch.Tensor
        Deterministic / probabilistic bound on ``|low-precision value - fp32 value|``.
    fail : float
        Per-input failure probability of this step's probabilistic terms (0 if none).
    n : int or None
        Reduction length (terms per output) of the step, for reports.
    """

    ref: Any
    G: torch.Tensor | None = None
    Gp: torch.Tensor | None = None
    fail: float = 0.0
    n: int | None = None


# ------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _t(a: Any, shape: torch.Size | tuple) -> torch.Tensor:
    arr = np.asarray(a, dtype=np.float64)
    if arr.shape == tuple(shape) and arr.flags.c_contiguous and arr.flags.writeable:
        return torch.from_numpy(arr)
    return torch.from_numpy(np.array(np.broadcast_to(arr, tuple(shape)), dtype=np.float64, order="C", copy=True))


def _fix(t: torch.Tensor) -> torch.Tensor:
    """Magnitudes: NaN (0 * inf) means 'unbounded'.  In place: only for freshly computed tensors."""
    return torch.nan_to_num_(t, nan=math.inf, posinf=math.inf)


def _clean(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(t with non-finite entries set to 0, mask of those entries or None when all are finite)."""
    if bool(torch.isfinite(t).all()):
        return t, None
    bad = ~torch.isfinite(t)
    return torch.where(bad, torch.zeros_like(t), t), bad


def _or(*masks: torch.Tensor | None) -> torch.Tensor | None:
    ms = [m for m in masks if m is not None]
    if not ms:
        return None
    out = ms[0]
    for m in ms[1:]:
        out = out | m
    return out


def _rnd(T: torch.Tensor, cfg: BoundConfig) -> torch.Tensor:
    """Error of one rounding to fmt of a value of magnitude <= T (bounds.final_rounding); inf on overflow."""
    f = cfg.fmt
    e = accumulation.final_rounding(_np(T), cfg.u, cfg.eta, cfg.nearest)
    return torch.where(T <= f.max, torch.from_numpy(np.asarray(e, dtype=np.float64)), torch.full_like(T, math.inf))


def _rnd32(T: torch.Tensor) -> torch.Tensor:
    """Error of one binary32 rounding (round to nearest) of a value of magnitude <= T."""
    return torch.where(T <= _FP32.max, _U32 * T + 2.0**-150, torch.full_like(T, math.inf))


def accumulation_bounds(A: torch.Tensor, R: torch.Tensor, n: int, cfg: BoundConfig, *, fmt: Any = None,
                        profile: str | None = None, union: int = 1,
                        probabilistic: bool = True) -> tuple[torch.Tensor, torch.Tensor, float]:
    """:func:`fpanalysis.bounds.accumulation_bound` on torch tensors, deterministic and probabilistic at once.

    The same formula, term by term (``gamma``/``gamma~``, :func:`~fpanalysis.bounds.rounding_depth`,
    the underflow and final-rounding terms, overflow -> inf), evaluated with in-place torch
    operations instead of NumPy; the tests check it against ``accumulation_bound`` itself.
    ``A`` (sum of |terms|) and ``R`` (bound on |result|) must be nonnegative, NaN-free.
    Returns (deterministic value, probabilistic value, per-input failure probability).
    """
    f = get_format(cfg.fmt if fmt is None else fmt)
    prof = cfg.profile if profile is None else profile
    nearest_mode = cfg.mode if fmt is None else "nearest-even"
    u, eta = accumulation.unit_roundoff(f, nearest_mode), accumulation.underflow_unit(f, nearest_mode)
    nearest = u == f.u
    lam = cfg.lam if probabilistic else None

    def final(Rt: torch.Tensor, uu: float, ee: float, near: bool) -> torch.Tensor:
        if near:
            return torch.minimum(Rt * uu + ee, Rt)
        return torch.where(Rt > 0, Rt * uu + ee, torch.zeros_like(Rt))

    def times(g: float, a: torch.Tensor) -> torch.Tensor:
        if math.isinf(g):
            return torch.where(a > 0, torch.full_like(a, math.inf), torch.zeros_like(a))
        return a * g

    def under(a: torch.Tensor, n_mul: int, n_add: int, ee: float, near: bool) -> torch.Tensor:
        pos = a > 0
        prod = torch.clamp(a, max=n_mul * ee) if near else torch.where(pos, torch.full_like(a, n_mul * ee),
                                                                      torch.zeros_like(a))
        if n_add:
            prod = prod + torch.where(pos, torch.full_like(a, n_add * ee), torch.zeros_like(a))
        return prod

    def where_ok(err: torch.Tensor, bounds_and_caps: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
        # overflow -> inf; one reduction per check decides whether any entry can be affected
        err.mul_(accumulation._PAD)
        ok = None
        for v, cap in bounds_and_caps:
            vmax = float(v.max()) if v.numel() else 0.0
            if not vmax <= cap:
                c = v <= cap
                ok = c if ok is None else ok & c
        return err if ok is None else torch.where(ok, err, torch.full_like(err, math.inf))

    if prof == "exact":
        v = where_ok(final(R, u, eta, nearest), [(R, f.max)])
        return v, v, 0.0
    tc = None if prof in ("ieee", "fp32-accumulate") else Profile.parse(prof).tensor_core
    if tc is not None:  # tensor-core profile: accumulation.accumulation_bound's tensor-core branch
        from ..bounds.tensorcore import tc_accumulation_coefficients
        from ..tensorcore import tensor_core_for_format

        g, absolute = tc_accumulation_coefficients(n, tensor_core_for_format(tc, f))
        t_err = torch.where(A > 0, A * g + absolute, torch.zeros_like(A))
        err = final(R + t_err, u, eta, nearest).add_(t_err)
        v = where_ok(err, [(A + t_err, _FP32.max), (R + t_err, f.max)])
        return v, v, 0.0  # deterministic only
    if prof == "ieee":
        order = cfg.order if fmt is None else "sequential"  # the fp32 run's order is the library's
        k = accumulation.rounding_depth(n, order, cfg.block, True)
        ua, acc_max = u, f.max
        und = under(A, n, 0 if f.subnormals else max(n - 1, 0), eta, nearest)
    else:
        a32 = get_format("fp32")
        k = n
        ua, acc_max = a32.u, a32.max
        und = under(A, n, 0 if a32.subnormals else max(n - 1, 0), accumulation.underflow_unit(a32), True)
    und_term = times(accumulation.growth_factor(ua, k), und)
    out = []
    fail = 0.0
    for meth in ("deterministic",) + (("probabilistic",) if lam is not None else ()):
        g, fl = accumulation.gamma_for(k, n, ua, meth, None, lam, union)
        t_err = times(g, A).add_(und_term)
        if prof == "ieee":
            out.append(where_ok(t_err, [(A + t_err, f.max)]))
        else:
            err = final(R + t_err, u, eta, nearest).add_(t_err)
            out.append(where_ok(err, [(A + t_err, acc_max), (R + t_err, f.max)]))
        fail = fl
    if lam is None:
        return out[0], out[0], 0.0
    return out[0], out[1], fail


def _bound_value(b: accumulation.Bound, shape: tuple) -> torch.Tensor:
    return _t(b.value, shape)


# ------------------------------------------------------------------------------------------
# probabilistic budget
# ------------------------------------------------------------------------------------------
def reduction_length(step: Step, in_shapes: list[tuple]) -> int | None:
    k, a = step.kind, step.attrs
    if k == "linear":
        return int(a["weight"].shape[1]) + (a["bias"] is not None)
    if k == "conv2d":
        w = a["weight"]
        return int(w.shape[1] * w.shape[2] * w.shape[3]) + (a["bias"] is not None)
    if k == "matmul":
        return int(in_shapes[0][-1])
    if k in ("avgpool2d",):
        return int(a["kernel_size"][0] * a["kernel_size"][1])
    if k == "adaptive_avgpool2d":
        return _adaptive_window(in_shapes[0], a["output_size"])
    if k in ("mean", "sum"):
        shp = in_shapes[0]
        return int(np.prod([shp[d] for d in a["dim"]]))
    if k in ("layernorm",):
        return int(np.prod(a["normalized_shape"]))
    if k == "softmax":
        return int(in_shapes[0][a["dim"]])
    return None


def rounding_events(step: Step, out_shape: tuple, in_shapes: list[tuple]) -> int:
    """Number of rounding events ``m n`` of one input that the probabilistic flavour covers.

    ``out_shape`` and ``in_shapes`` include the batch axis (of any size).

    >>> from fpanalysis.nn.trace import trace_model
    >>> import torch
    >>> s = trace_model(torch.nn.Sequential(torch.nn.Linear(8, 4))).steps[1]
    >>> rounding_events(s, (2, 4), [(2, 8)])      # 4 outputs x (8 products + bias)
    36
    """
    if step.kind not in PROBABILISTIC_KINDS:
        return 0
    n = reduction_length(step, in_shapes) or 0
    m = int(np.prod(out_shape[1:]))
    return m * n


def network_lambda(events: int, failure_prob: float, cfg: BoundConfig) -> float:
    """One ``lam`` for the whole network: ``events (1 - P(lam)) = failure_prob`` (union bound).

    >>> cfg = BoundConfig.make("fp16")
    >>> lam = network_lambda(10**6, 1e-6, cfg)
    >>> round(lam, 2)
    7.53
    """
    return accumulation.choose_lambda(failure_prob, max(1, int(events)), cfg.accumulator_u)


# ------------------------------------------------------------------------------------------
# linear and convolution layers
# ------------------------------------------------------------------------------------------
def _adaptive_window(in_shape: tuple, out_size: Any) -> int:
    H, W = in_shape[-2], in_shape[-1]
    oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
    oh = H if oh is None else oh
    ow = W if ow is None else ow

    def win(n: int, o: int) -> int:
        return max(-(-((i + 1) * n) // o) - (i * n) // o for i in range(o))

    return win(H, oh) * win(W, ow)


def _weights(step: Step, cfg: BoundConfig, cache: ParamCache) -> dict[str, Any]:
    """|W^|, |W^ - W|, |b^|, |b^ - b|, |b| (float64 and float32), computed once per step."""

    def make() -> dict[str, Any]:
        W = step.attrs["weight"].detach().double()
        Wh = torch.from_numpy(np.asarray(round_to(_np(W), cfg.fmt, "nearest-even"), dtype=np.float64))
        out = {"Wh": Wh.abs(), "dW": (Wh - W).abs()}
        out["Wh32"], out["dW32"] = out["Wh"].float(), out["dW"].float()
        out["wmax"] = float(torch.nan_to_num(out["Wh"], posinf=0).max()) if W.numel() else 0.0
        b = step.attrs.get("bias")
        if b is not None:
            b = b.detach().double()
            bh = torch.from_numpy(np.asarray(round_to(_np(b), cfg.fmt, "nearest-even"), dtype=np.float64))
            out["bh"], out["db"], out["ba"] = bh.abs(), (bh - b).abs(), b.abs()
        return out

    return cache.memo((step.name, "bound_weights", cfg.fmt), make)


def _mag(step: Step, X: torch.Tensor, Wabs: torch.Tensor, W32: torch.Tensor, wmax: float, n: int,
         cfg: BoundConfig) -> torch.Tensor:
    """Upper bound on ``|W| X`` (linear) or ``conv(X, |W|)`` for nonnegative ``X``.

    Binary32 evaluation (``fast_magnitudes``): ``X`` rounded to binary32 (relative ``u32``,
    absolute ``2**-150``), a nonnegative sum of ``n`` products in any order (relative
    ``gamma_n(u32)``), underflow (``2**-125`` per term, flush-to-zero included); so the exact
    value is at most ``(c + n 2**-125 (1 + max|W|)) / ((1 - gamma_n(u32)) (1 - u32))``.
    Float64 otherwise, inflated by ``1 + 2 (n + 2) 2**-53``.
    """
    a = step.attrs

    def op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if step.kind == "linear":
            return F.linear(x, w)
        return F.conv2d(x, w, None, a["stride"], a["padding"], a["dilation"], a["groups"])

    if cfg.fast_magnitudes and n * _U32 < 0.01:
        y = op(X.float(), W32).double()
        g = accumulation.gamma(n + 1, _U32)
        y.add_(n * 2.0**-125 * (1.0 + wmax)).mul_(_PAD / ((1.0 - g) * (1.0 - _U32)))
    else:
        y = op(X, Wabs).mul_(1.0 + 2.0 * (n + 2) * _U64)
    return _fix(y)


def _linear_like(step: Step, x: StepBound, out32: torch.Tensor, cfg: BoundConfig, cache: ParamCache,
                 run32: bool) -> StepBound:
    """Linear / Conv2d.  Non-finite inputs need no special care: ``|W| inf`` is inf (NaN from
    ``0 * inf`` becomes inf), so every output that reads them is unbounded."""
    w = _weights(step, cfg, cache)
    K = int(step.attrs["weight"][0].numel())
    nt = K + ("bh" in w)
    xa = x.ref.abs()
    G, Gp = x.G, x.Gp
    B = xa.shape[0]
    shape = out32.shape
    if run32:
        parts = [xa, G] + ([Gp] if Gp is not G else [])
        S = _mag(step, torch.cat(parts, 0), w["Wh"], w["Wh32"], w["wmax"], K, cfg)
        WX, WG = S[:B], S[B:2 * B]
        WGp = S[2 * B:] if Gp is not G else WG
    else:  # local: the input is known exactly
        WX = _mag(step, xa, w["Wh"], w["Wh32"], w["wmax"], K, cfg)
        WG = WGp = torch.zeros((), dtype=torch.float64)
    DX = _mag(step, xa, w["dW"], w["dW32"], w["wmax"], K, cfg)

    def bias(key: str) -> Any:
        if key not in w:
            return 0.0
        v = w[key]
        return v.reshape(-1, 1, 1) if step.kind == "conv2d" else v

    if run32:  # fp32's own error: every product and sum rounded to binary32, bias included (n + 1 terms)
        acc32 = accumulation_bounds(WX + DX + bias("ba"), torch.zeros(()), nt + 1, cfg, fmt="fp32", profile="ieee",
                                    probabilistic=False)[0]
    else:
        acc32 = torch.zeros((), dtype=torch.float64)
    mid = WG + DX + bias("db")          # |W^ x^ + b^ - (W x~ + b)|
    midp = WGp + DX + bias("db")
    A = WX + WG + bias("bh")            # >= |W^||x^| + |b^|
    R = _fix(out32.abs() + acc32 + mid)  # >= |W^ x^ + b^|
    loc, locp, fail = accumulation_bounds(A, R, nt, cfg, union=int(np.prod(shape[1:])))
    return StepBound(out32, loc + mid + acc32, locp + midp + acc32, fail=fail, n=nt)


def _matmul(step: Step, a: StepBound, b: StepBound, out32: torch.Tensor, cfg: BoundConfig, run32: bool) -> StepBound:
    A, badA = _clean(a.ref)
    Bm, badB = _clean(b.ref)
    shape = out32.shape
    An, Bn = _np(A), _np(Bm)
    k = A.shape[-1]
    kw = {"order": cfg.order, "block": cfg.block, "mode": cfg.mode}
    # |y^ - A~ B~| (local rounding of the perturbed product + perturbation) and |y~ - A~ B~| (fp32)
    ar, br = (_np(a.G), _np(b.G)) if run32 else (None, None)
    det = accumulation.matmul_bound(An, Bn, cfg.fmt, cfg.profile, a_radius=ar, b_radius=br, **kw)
    own32 = _bound_value(accumulation.matmul_bound(An, Bn, "fp32", "ieee"), shape) if run32 else 0.0
    G = _fix(_bound_value(det, shape) + own32)
    if cfg.lam is not None:
        arp, brp = (_np(a.Gp), _np(b.Gp)) if run32 else (None, None)
        pr = accumulation.matmul_bound(An, Bn, cfg.fmt, cfg.profile, a_radius=arp, b_radius=brp,
                             method="probabilistic", lam=cfg.lam, **kw)
        Gp, fail = _fix(_bound_value(pr, shape) + own32), pr.failure_probability
    else:
        Gp, fail = G, 0.0
    if badA is not None or badB is not None:
        rowbad = badA.any(dim=-1, keepdim=True).double() if badA is not None else torch.zeros(())
        colbad = badB.any(dim=-2, keepdim=True).double() if badB is not None else torch.zeros(())
        reach = (rowbad + colbad) > 0
        G = torch.where(reach, torch.full_like(G, math.inf), G)
        Gp = torch.where(reach, torch.full_like(Gp, math.inf), Gp)
    return StepBound(out32, G, Gp, fail=fail, n=int(k))


# ------------------------------------------------------------------------------------------
# elementwise and normalisation layers (formulas of fpanalysis.bounds.layers)
# ------------------------------------------------------------------------------------------
_ACT = {"tanh": "tanh", "sigmoid": "sigmoid", "silu": "silu"}


def _taint(G: torch.Tensor, Gp: torch.Tensor, bad: torch.Tensor | None, value: float = math.inf) -> tuple:
    if bad is not None:
        fill = torch.full_like(G, value)
        return torch.where(bad, fill, G), torch.where(bad, fill, Gp)
    return G, Gp


def _radius(x: StepBound, run32: bool) -> tuple[np.ndarray | None, torch.Tensor]:
    """The propagated radius G as a clean numpy array (None in local mode) and its bad mask."""
    if not run32:
        return None, None
    r, bad = _clean(x.G)
    return _np(r), bad


def _activation(step: Step, x: StepBound, out32: torch.Tensor, cfg: BoundConfig, run32: bool) -> StepBound:
    if step.kind == "relu":  # exact; |relu(a) - relu(b)| <= |a - b|, and 0 when both are <= 0
        zero = torch.zeros_like(x.ref)
        if not run32:
            return StepBound(out32, zero, zero)
        return StepBound(out32, torch.where(x.ref + x.G > 0, x.G, zero), torch.where(x.ref + x.Gp > 0, x.Gp, zero))
    name = _ACT.get(step.kind) or ("gelu_tanh" if step.attrs.get("approximate") == "tanh" else "gelu")
    z, badz = _clean(x.ref)
    rn, badr = _radius(x, run32)
    zn = _np(z)
    with np.errstate(all="ignore"):
        loc = _t(layers.activation_local_bound(name, zn, cfg.fmt, radius=rn, mode=cfg.mode).value, z.shape)
        if not run32:
            return StepBound(out32, loc, loc)
        own32 = _t(layers.activation_local_bound(name, zn, "fp32").value, z.shape)
        slope = _t(layers.activation_slope(name, zn, radius=rn), z.shape)
    G, Gp = _taint(_fix(loc + slope * x.G + own32), _fix(loc + slope * x.Gp + own32), _or(badz, badr))
    return StepBound(out32, G, Gp)


def _bn_params(step: Step, cfg: BoundConfig, cache: ParamCache) -> dict[str, np.ndarray | None]:
    def make() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("weight", "bias", "running_mean", "running_var"):
            v = step.attrs.get(key)
            if v is None:
                out[key] = out[key + "_h"] = None
                continue
            vv = v.detach().double().numpy()
            out[key] = vv
            out[key + "_h"] = np.asarray(round_to(vv, cfg.fmt, "nearest-even"), dtype=np.float64)
        return out

    return cache.memo((step.name, "bn_params", cfg.fmt), make)


def _batchnorm(step: Step, x: StepBound, out32: torch.Tensor, cfg: BoundConfig, cache: ParamCache,
               run32: bool) -> StepBound:
    p = _bn_params(step, cfg, cache)
    eps = step.attrs["eps"]
    z, badz = _clean(x.ref)
    rn, badr = _radius(x, run32)
    zn = _np(z)
    shape = z.shape
    with np.errstate(all="ignore"):
        loc = _t(layers.batchnorm_local_bound(zn, p["running_mean_h"], p["running_var_h"], p["weight_h"], p["bias_h"],
                                          eps, cfg.fmt, radius=rn, mode=cfg.mode).value, shape)
        par = _exact_bn_param_error(np.abs(zn) + (0.0 if rn is None else rn), p, eps, shape)
        if not run32:
            return StepBound(out32, _fix(loc + par), _fix(loc + par))
        own32 = _t(layers.batchnorm_local_bound(zn, p["running_mean"], p["running_var"], p["weight"], p["bias"],
                                            eps, "fp32").value, shape)
    wv = 1.0 if p["weight"] is None else p["weight"]
    alpha = np.abs(np.asarray(wv, dtype=np.float64) / np.sqrt(p["running_var"] + eps)) * _PAD
    a = torch.from_numpy(alpha.reshape((1, -1) + (1,) * (len(shape) - 2)) if alpha.ndim else np.asarray(alpha))
    G, Gp = _taint(_fix(loc + par + a * x.G + own32), _fix(loc + par + a * x.Gp + own32), _or(badz, badr))
    return StepBound(out32, G, Gp)


def _exact_bn_param_error(X: np.ndarray, p: dict, eps: float, shape: tuple) -> torch.Tensor:
    """|BN_p^(x) - BN_p(x)| <= |x| |alpha^ - alpha| + |beta^ - beta| with the exact rounded parameters.

    ``alpha = w / sqrt(v + eps)``, ``beta = b - mean alpha``, evaluated in float64 (relative
    error below ``2**-50``, covered by a ``2**-48 (|alpha| + |beta| terms)`` slack).
    """
    def val(key: str, default: float) -> np.ndarray:
        v = p[key]
        return np.asarray(default if v is None else v, dtype=np.float64)

    w, wh = val("weight", 1.0), val("weight_h", 1.0)
    b, bh = val("bias", 0.0), val("bias_h", 0.0)
    m, mh = val("running_mean", 0.0), val("running_mean_h", 0.0)
    v, vh = val("running_var", 1.0), val("running_var_h", 1.0)
    with np.errstate(all="ignore"):
        al, alh = w / np.sqrt(v + eps), wh / np.sqrt(vh + eps)
        be, beh = b - m * al, bh - mh * alh
        slack = 2.0**-48 * (np.abs(al) + np.abs(alh))
        da = np.abs(alh - al) + slack
        db = np.abs(beh - be) + 2.0**-48 * (np.abs(b) + np.abs(bh) + np.abs(m * al) + np.abs(mh * alh))
    nd = len(shape)
    cs = (1, -1) + (1,) * (nd - 2)
    da = da.reshape(cs) if da.ndim else da
    db = db.reshape(cs) if db.ndim else db
    return _fix(_t(X * da + db, shape))


def _layernorm(step: Step, x: StepBound, out32: torch.Tensor, cfg: BoundConfig, cache: ParamCache,
               run32: bool) -> StepBound:
    a = step.attrs
    k = len(a["normalized_shape"])
    dims = tuple(range(-k, 0))
    z, badz = _clean(x.ref)
    rn, badr = _radius(x, run32)
    zn = _np(z)
    shape = z.shape

    def params() -> dict[str, Any]:
        out = {}
        for key in ("weight", "bias"):
            v = a.get(key)
            out[key] = None if v is None else v.detach().double().numpy()
            out[key + "_h"] = None if v is None else np.asarray(round_to(out[key], cfg.fmt, "nearest-even"),
                                                                dtype=np.float64)
        return out

    p = cache.memo((step.name, "ln_params", cfg.fmt), params)
    eps = a["eps"]
    n = int(np.prod(a["normalized_shape"]))
    with np.errstate(all="ignore"):
        loc = _t(layers.layernorm_local_bound(zn, p["weight_h"], p["bias_h"], eps, cfg.fmt, normalized_ndim=k,
                                          radius=rn, mode=cfg.mode).value, shape)
        # parameter rounding: |(w^ - w) n(x^) + (b^ - b)|, |n(x^)| <= |n(x~)| + LN_{w=1} perturbation
        mu = zn.mean(axis=dims, keepdims=True)
        c = zn - mu
        s = np.sqrt((c * c).mean(axis=dims, keepdims=True) + eps)
        nbound = np.abs(c) / s * _PAD
        if rn is not None:
            nbound = nbound + layers.propagate_layernorm(rn, zn, None, eps, normalized_ndim=k).value
        par = np.zeros(shape)
        if p["weight"] is not None:
            par = par + np.abs(p["weight_h"] - p["weight"]) * nbound
        if p["bias"] is not None:
            par = par + np.abs(p["bias_h"] - p["bias"])
        par_t = _t(par, shape)
        if not run32:
            return StepBound(out32, _fix(loc + par_t), _fix(loc + par_t), n=n)
        own32 = _t(layers.layernorm_local_bound(zn, p["weight"], p["bias"], eps, "fp32", normalized_ndim=k).value, shape)
        prop = _t(layers.propagate_layernorm(rn, zn, p["weight"], eps, normalized_ndim=k).value, shape)
        rpn = _np(_clean(x.Gp)[0])
        propp = _t(layers.propagate_layernorm(rpn, zn, p["weight"], eps, normalized_ndim=k).value, shape)
    bad = _or(badz, badr)
    rows = None
    if bad is not None:
        bad = bad.reshape(shape[: len(shape) - k] + (-1,)).any(-1)
        rows = bad.reshape(bad.shape + (1,) * k).expand(shape)
    G, Gp = _taint(_fix(loc + par_t + prop + own32), _fix(loc + par_t + propp + own32), rows)
    return StepBound(out32, G, Gp, n=n)


def _softmax(step: Step, x: StepBound, out32: torch.Tensor, cfg: BoundConfig, run32: bool) -> StepBound:
    d = step.attrs["dim"] % x.ref.ndim
    z, badz = _clean(x.ref)
    zm = z.movedim(d, -1).contiguous()
    zn = _np(zm)
    shape = zm.shape
    cap = 1.0 + 4 * cfg.u  # both results lie in [0, 1]

    def back(t: torch.Tensor) -> torch.Tensor:
        return t.movedim(-1, d)

    with np.errstate(all="ignore"):
        if not run32:
            loc = _t(layers.softmax_local_bound(zn, cfg.fmt, mode=cfg.mode).value, shape)
            return StepBound(out32, back(loc), back(loc), n=int(shape[-1]))
        r, badr = _clean(x.G)
        rm = _np(r.movedim(d, -1).contiguous())
        rpm = _np(_clean(x.Gp)[0].movedim(d, -1).contiguous())
        y = _np(torch.softmax(zm, -1))
        loc = _t(layers.softmax_local_bound(zn, cfg.fmt, radius=rm, mode=cfg.mode).value, shape)
        own32 = _t(layers.softmax_local_bound(zn, "fp32").value, shape)
        prop = _t(layers.propagate_softmax(rm, y).value, shape)
        propp = _t(layers.propagate_softmax(rpm, y).value, shape)
    G = torch.clamp(_fix(loc + prop + own32), max=cap)
    Gp = torch.clamp(_fix(loc + propp + own32), max=cap)
    bad = _or(badz, badr)
    if bad is not None:
        bad = bad.movedim(d, -1).any(-1, keepdim=True).expand(shape)
    G, Gp = _taint(G, Gp, bad, cap)
    return StepBound(out32, back(G), back(Gp), n=int(shape[-1]))


def _pool_op(step: Step) -> Any:
    a, k = step.attrs, step.kind
    if k == "avgpool2d":
        return lambda t: F.avg_pool2d(t, a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"],
                                      a["count_include_pad"])
    if k == "adaptive_avgpool2d":
        return lambda t: F.adaptive_avg_pool2d(t, a["output_size"])
    if k == "sum":
        return lambda t: t.sum(dim=a["dim"], keepdim=a["keepdim"])
    return lambda t: t.mean(dim=a["dim"], keepdim=a["keepdim"])


def _average(step: Step, x: StepBound, out32: torch.Tensor, cfg: BoundConfig, run32: bool) -> StepBound:
    op = _pool_op(step)
    k = reduction_length(step, [tuple(x.ref.shape)]) or 1
    z, badz = _clean(x.ref)
    c = 1.0 + 2.0 * (k + 2) * _U64
    mean = _np(op(z))
    mean_abs = _np(op(z.abs()) * c)
    shape = mean.shape
    with np.errstate(all="ignore"):
        if not run32:
            loc = _t(layers.avgpool_local_bound(mean, mean_abs, k, cfg.fmt, mode=cfg.mode).value, shape)
            return StepBound(out32, loc, loc, n=k)
        r, badr = _clean(x.G)
        loc = _t(layers.avgpool_local_bound(mean, mean_abs, k, cfg.fmt, radius=_np(op(r) * c), mode=cfg.mode).value,
                 shape)
        own32 = _t(layers.avgpool_local_bound(mean, mean_abs, k, "fp32").value, shape)
    pr, prp = _fix(op(x.G) * c), _fix(op(x.Gp) * c)
    bad = _or(badz, badr)
    reach = None if bad is None else op(bad.double()) > 0
    G, Gp = _taint(_fix(loc + pr + own32), _fix(loc + prp + own32), reach)
    return StepBound(out32, G, Gp, n=k)


def _add(step: Step, a: StepBound, b: StepBound, out32: torch.Tensor, cfg: BoundConfig, run32: bool) -> StepBound:
    sign = -1.0 if step.kind == "sub" else 1.0
    za, bada = _clean(a.ref)
    zb, badb = _clean(b.ref)
    shape = tuple(out32.shape)
    zan = np.broadcast_to(_np(za), shape)
    zbn = sign * np.broadcast_to(_np(zb), shape)
    with np.errstate(all="ignore"):
        if not run32:
            loc = _t(layers.add_local_bound(zan, zbn, cfg.fmt, mode=cfg.mode).value, shape)
            return StepBound(out32, loc, loc)
        Gs = _fix(a.G + b.G).expand(shape)
        Gps = _fix(a.Gp + b.Gp).expand(shape)
        rs, bad_r = _clean(Gs)
        loc = _t(layers.add_local_bound(zan, zbn, cfg.fmt, radius=_np(rs), mode=cfg.mode).value, shape)
        own32 = _t(layers.add_local_bound(zan, zbn, "fp32").value, shape)
    bad = _or(bada, badb)
    G, Gp = _taint(_fix(loc + Gs + own32), _fix(loc + Gps + own32),
                   _or(None if bad is None else bad.expand(shape), bad_r))
    return StepBound(out32, G, Gp)


def _mul(step: Step, a: StepBound, b: StepBound, out32: torch.Tensor, cfg: BoundConfig, run32: bool) -> StepBound:
    """``fl(fl32(a^ b^))``: |a^ b^ - a~ b~| <= Ga (|b~| + Gb) + |a~| Gb; one fp32 and one fmt rounding."""
    shape = out32.shape
    aa, bb = _clean(a.ref.abs())[0], _clean(b.ref.abs())[0]
    if not run32:
        T = _fix(aa * bb)
        loc = _fix(_rnd32(T) + _rnd(T * (1 + _U32) + 2.0**-150, cfg)).expand(shape)
        return StepBound(out32, loc, loc)
    prop = _fix(a.G * (bb + b.G) + aa * b.G).expand(shape)
    propp = _fix(a.Gp * (bb + b.Gp) + aa * b.Gp).expand(shape)
    T = _fix(aa * bb + prop)
    loc = _fix(_rnd32(T) + _rnd(T * (1 + _U32) + 2.0**-150, cfg)).expand(shape)
    own32 = _rnd32(_clean(out32.abs())[0] / (1 - _U32))
    return StepBound(out32, _fix(loc + prop + own32), _fix(loc + propp + own32))


def _affine(step: Step, x: StepBound, out32: torch.Tensor, cfg: BoundConfig, run32: bool) -> StepBound:
    """``y = s x + c`` with constants (scaling, shifting, negation, division by a constant).

    fp32 opmath: the constant held in binary32 and one or two binary32 roundings, at most
    ``4 u32 (|s x| + |c|)``; then one rounding to ``fmt``.  Exact when ``s = +-1, c = 0``.
    """
    s, c = step.attrs["scale"], step.attrs["shift"]
    if abs(s) == 1.0 and c == 0.0 and step.attrs["div"] is None:
        z = torch.zeros_like(x.ref)
        return StepBound(out32, x.G if run32 else z, x.Gp if run32 else z)
    xa = _clean(x.ref.abs())[0]
    G_in = x.G if run32 else torch.zeros_like(xa)
    comp = 4 * _U32 * (abs(s) * (xa + G_in) + abs(c)) + 2.0**-149
    T = abs(s) * (xa + G_in) + abs(c) + comp
    loc = _fix(comp + _rnd(_fix(T), cfg))
    if not run32:
        return StepBound(out32, loc, loc)
    own32 = 4 * _U32 * (abs(s) * xa + abs(c)) + 2.0**-149
    return StepBound(out32, _fix(loc + abs(s) * x.G + own32), _fix(loc + abs(s) * x.Gp + own32))


# ------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------
def _source(value: torch.Tensor, cfg: BoundConfig) -> StepBound:
    """Input or parameter: the rounding to ``fmt`` (nearest even), exactly."""
    v = value.detach().double().cpu()
    vh = torch.from_numpy(np.asarray(round_to(_np(v), cfg.fmt, "nearest-even"), dtype=np.float64)).reshape(v.shape)
    G = _fix((vh - v).abs())
    return StepBound(v, G, G)


def _dispatch(step: Step, ins: list[Any], o: Any, cfg: BoundConfig, cache: ParamCache, values: dict | None,
              run32: bool) -> StepBound:
    k = step.kind
    x = ins[0] if ins else None

    def zero() -> StepBound:
        z = torch.zeros(o.shape, dtype=torch.float64)
        return StepBound(o, z, z)

    if k in ("output", "identity"):
        return StepBound(o, x.G, x.Gp) if run32 else zero()
    if k == "shape":
        if not run32:
            return zero()
        vals = dict(values or {})
        a = step.attrs
        args = step.resolve(a["args"], vals)
        kwargs = step.resolve(a["kwargs"], vals)

        def f(t: torch.Tensor) -> torch.Tensor:
            return a["fn"](t, *args, **kwargs)

        return StepBound(o, f(x.G), f(x.Gp))
    if k == "cat":
        if not run32:
            return zero()
        d = step.attrs["dim"]
        return StepBound(o, torch.cat([i.G for i in ins], d), torch.cat([i.Gp for i in ins], d))
    if k == "maxpool2d":
        if not run32:
            return zero()
        a = step.attrs

        def mp(t: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(t, a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])

        return StepBound(o, mp(x.G), mp(x.Gp))
    if k in ("linear", "conv2d"):
        return _linear_like(step, x, o, cfg, cache, run32)
    if k == "matmul":
        return _matmul(step, ins[0], ins[1], o, cfg, run32)
    if k in ("relu", "gelu", "tanh", "sigmoid", "silu"):
        return _activation(step, x, o, cfg, run32)
    if k == "batchnorm":
        return _batchnorm(step, x, o, cfg, cache, run32)
    if k == "layernorm":
        return _layernorm(step, x, o, cfg, cache, run32)
    if k == "softmax":
        return _softmax(step, x, o, cfg, run32)
    if k in ("avgpool2d", "adaptive_avgpool2d", "mean", "sum"):
        return _average(step, x, o, cfg, run32)
    if k in ("add", "sub"):
        return _add(step, ins[0], ins[1], o, cfg, run32)
    if k == "mul":
        return _mul(step, ins[0], ins[1], o, cfg, run32)
    if k == "affine":
        return _affine(step, x, o, cfg, run32)
    raise ValueError(f"step {step.describe()}: no bound for kind {k!r}")  # pragma: no cover


def step_bound(step: Step, ins: list[Any], out32: Any, cfg: BoundConfig, cache: ParamCache,
               values: dict[str, Any] | None = None) -> StepBound:
    """Bounds on ``|low-precision output - fp32 output|`` of one step (``G`` and ``Gp``).

    Parameters
    ----------
    step : Step
    ins : list
        :class:`StepBound` of each input (for ``input`` steps: the fp32 input tensor itself;
        for size inputs: their Python values).
    out32 : torch.Tensor
        The step's output in the fp32 run (any float dtype; used as float64).
    cfg : BoundConfig
    cache : ParamCache
        Per-step memo (rounded parameters, magnitudes).
    values : dict, optional
        Step name -> size values, to resolve argument templates of shape steps.

    Returns
    -------
    StepBound
    """
    k = step.kind
    if k == "input":
        return _source(ins[0], cfg)
    if k == "param":
        return _source(step.attrs["value"], cfg)
    if k == "size":
        return StepBound(out32)
    o = out32.detach().double() if isinstance(out32, torch.Tensor) else out32
    return _dispatch(step, ins, o, cfg, cache, values, True)


def local_bound(step: Step, ins: list[Any], exact_out: torch.Tensor, cfg: BoundConfig, cache: ParamCache,
                values: dict[str, Any] | None = None) -> StepBound:
    """Bound on the step's own error: the ``fmt`` operation applied to its actual input ``ins``
    (emulated values, known exactly) against the exact operation (fp32 parameters) on the same
    input, whose value is ``exact_out`` (float64).  Returned as ``G`` (deterministic) and ``Gp``
    (probabilistic flavour).
    """
    k = step.kind
    if k in ("input", "param"):
        return step_bound(step, ins, exact_out, cfg, cache, values)
    if k == "size":
        return StepBound(exact_out)
    z = [StepBound(t.detach().double(), None, None) if isinstance(t, torch.Tensor) else t for t in ins]
    return _dispatch(step, z, exact_out.detach().double(), cfg, cache, values, False)

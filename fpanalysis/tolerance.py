"""Classification tolerance and fp16 agreement certificates (the seed paper's lemma, made predictive).

Yun et al., "Revisiting 16-bit Neural Network Training" (arXiv:2305.10947), define for a model
``M`` and an input ``x``

* the classification tolerance ``Gamma(x) = M(x)_(1) - M(x)_(2)`` (top-1 minus top-2 output),
* the floating-point error ``delta(x) = ||M32(x) - M16(x)||_inf``,

and prove: ``Gamma(M32, x) > 2 delta(x)  =>  argmax M16(x) = argmax M32(x)``.  The paper
measures ``delta`` after the fact.  Given a bound ``B(x) >= delta(x)`` computed from the fp32
run alone (:mod:`fpanalysis.analysis.network_bounds`), ``Gamma(x) > 2 B(x)`` *certifies* before running
fp16 that it will classify ``x`` as fp32 does: deterministically (a sound certificate) or with
a stated probability (the probabilistic bound).

Outputs are compared as logits (the model's output) or as softmax probabilities computed in
float64 from those logits.  Softmax is 1/2-Lipschitz from the max-norm to the max-norm, and
componentwise ``|softmax(z^)_i - softmax(z)_i| <= softmax(z)_i expm1(b_i + max_j b_j)`` when
``|z^ - z| <= b``; the probability-space bound is the smaller of the two.

Everything here is NumPy; the functions take arrays of shape (N, K).

>>> import numpy as np
>>> ref = np.array([[3.0, 1.0, 0.0], [1.0, 0.9, 0.0]])
>>> classification_tolerance(ref).tolist()
[2.0, 0.09999999999999998]
>>> certify(ref, np.array([0.5, 0.5])).tolist()
[True, False]
>>> check_lemma(ref, ref + 0.01)                 # Gamma > 2 delta for both inputs: same classes
2
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BoundViolationWarning",
    "LemmaViolation",
    "RunAgreement",
    "ToleranceSummary",
    "certify",
    "check_lemma",
    "classification_tolerance",
    "output_error",
    "softmax",
    "softmax_error_bound",
    "summarize",
]

_E = 2.0**-52  # relative rounding of one float64 subtraction


class LemmaViolation(AssertionError):
    """An input with ``Gamma > 2 delta`` whose fp16 and fp32 classes differ: impossible, so a bug."""


class BoundViolationWarning(UserWarning):
    """A measured ``delta`` above its deterministic bound ``B``: the bound (or an assumption) is wrong."""


def _rows(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"{name} must have shape (N, K) with K >= 2 classes, got {np.shape(a)}")
    return arr


def classification_tolerance(outputs: Any) -> np.ndarray:
    """``Gamma = top-1 - top-2`` of each row (float64).

    >>> classification_tolerance([[0.1, 0.7, 0.2]]).round(12).tolist()
    [0.5]
    """
    z = _rows(outputs, "outputs")
    top2 = np.partition(z, -2, axis=1)[:, -2:]
    with np.errstate(invalid="ignore"):
        return top2[:, 1] - top2[:, 0]


def output_error(a: Any, b: Any) -> np.ndarray:
    """``delta = ||a - b||_inf`` per row; ``inf`` where either has a NaN or an infinity.

    >>> output_error([[1.0, 2.0]], [[1.5, 2.0]]).tolist()
    [0.5]
    """
    x, y = _rows(a, "a"), _rows(b, "b")
    with np.errstate(invalid="ignore"):
        d = np.abs(x - y)
    d = np.where(np.isfinite(d), d, np.inf)
    return d.max(axis=1)


def softmax(z: Any) -> np.ndarray:
    """Softmax of each row in float64 (max subtracted first).

    >>> softmax([[0.0, 0.0]]).tolist()
    [[0.5, 0.5]]
    """
    x = _rows(z, "z")
    with np.errstate(invalid="ignore", over="ignore"):  # rows with inf/NaN become NaN (delta = inf)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def softmax_error_bound(logits: Any, bound: Any) -> np.ndarray:
    """Bound on ``||softmax(z^) - softmax(z)||_inf`` for ``|z^ - z| <= bound`` (componentwise or per row).

    ``min(max_j b_j / 2, max_i min(1, t_i, sum_{j != i} t_j))`` with ``p = softmax(z)``,
    ``t_i = p_i expm1(b_i + max_j b_j)``: the 1/2-Lipschitz constant of softmax in the
    max-norm (docs/theory.md §2.4); the exact ratio lemma ``|log p^_i - log p_i| <= b_i +
    max_j b_j``, so ``|p^_i - p_i| <= t_i``; and, since both vectors sum to 1,
    ``|p^_i - p_i| <= sum_{j != i} |p^_j - p_j|``.  Relative float64 slack ``2**-40``.
    ``inf`` where some ``b_j`` is infinite (the perturbed logits may be non-finite).

    >>> float(softmax_error_bound([[10.0, 0.0]], [[0.01, 0.01]])[0]) < 1e-6   # vs 0.005 from Lipschitz alone
    True
    """
    z = _rows(logits, "logits")
    b = np.asarray(bound, dtype=np.float64)
    if b.ndim <= 1:
        b = np.broadcast_to(b.reshape(-1, 1), z.shape)
    b = np.broadcast_to(b, z.shape)
    p = softmax(z)
    bmax = b.max(axis=1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.expm1(b + bmax), 0.0)
        S = t.sum(axis=1, keepdims=True)
        others = S - t + 4 * 2.0**-53 * S  # the other classes' changes sum to minus this one's
        comp = np.minimum(1.0, np.minimum(t, others))
    comp = np.where(np.isnan(comp), 1.0, comp)
    out = np.minimum(bmax[:, 0] / 2.0, comp.max(axis=1)) * (1 + 2.0**-40)
    # an unbounded logit error allows non-finite logits, whose softmax is not a probability vector
    return np.where(np.isfinite(bmax[:, 0]), out, np.inf)


def certify(outputs: Any, bound: Any) -> np.ndarray:
    """``Gamma(x) > 2 B(x)``, evaluated so that float64 rounding can only say "not certified".

    ``bound`` is per row (N,) or componentwise (N, K) (then its row maximum is used).

    >>> certify([[1.0, 0.0]], [0.49]).tolist(), certify([[1.0, 0.0]], [0.5]).tolist()
    ([True], [False])
    """
    g = classification_tolerance(outputs)
    B = _row_bound(bound, g.shape[0])
    with np.errstate(invalid="ignore"):
        return g * (1 - 2 * _E) > 2 * B * (1 + 2 * _E)


def _row_bound(bound: Any, n: int) -> np.ndarray:
    B = np.asarray(bound, dtype=np.float64)
    if B.ndim == 2:
        B = B.max(axis=1)
    B = np.broadcast_to(B, (n,))
    return np.where(np.isnan(B), np.inf, B)


def check_lemma(ref: Any, other: Any, *, name: str = "fp16") -> int:
    """Check the lemma on every input; return how many inputs have ``Gamma > 2 delta``.

    Raises
    ------
    LemmaViolation
        If any input with ``Gamma(ref) > 2 ||ref - other||_inf`` (robustly, allowing for
        float64 rounding) has ``argmax other != argmax ref``.

    >>> check_lemma([[1.0, 0.0]], [[0.2, 0.6]])      # Gamma = 1 < 2 delta = 1.6: nothing to check
    0
    """
    r, o = _rows(ref, "ref"), _rows(other, "other")
    g = classification_tolerance(r)
    d = output_error(r, o)
    with np.errstate(invalid="ignore"):
        applies = g * (1 - 2 * _E) > 2 * d * (1 + 2 * _E)
    differ = np.argmax(r, axis=1) != np.argmax(o, axis=1)
    bad = np.flatnonzero(applies & differ)
    if bad.size:
        i = int(bad[0])
        raise LemmaViolation(
            f"lemma violated for {bad.size} input(s) of the {name} run, e.g. input {i}: Gamma = {g[i]!r} > "
            f"2 delta = {2 * d[i]!r} but argmax {name} = {int(np.argmax(o[i]))} != argmax fp32 = "
            f"{int(np.argmax(r[i]))}. This cannot happen: the outputs compared are not what they claim to be."
        )
    return int(applies.sum())


@dataclass
class RunAgreement:
    """How one low-precision run (emulator, torch CPU half, CUDA half) compares with fp32."""

    name: str
    n: int
    agree: int                 # same class as fp32
    flips: int                 # different class
    lemma_applies: int         # inputs with Gamma > 2 delta (all of them agree, or LemmaViolation)
    bound_violations: int      # delta > deterministic B (must be 0)
    bound_violations_prob: int  # delta > probabilistic B
    max_delta: float
    max_delta_over_bound: float  # max delta / B (<= 1 when the bound holds)
    flips_certified: int       # certified inputs that flipped (must be 0)

    @property
    def agreement(self) -> float:
        return self.agree / self.n if self.n else float("nan")


@dataclass
class ToleranceSummary:
    """Certified vs observed agreement over a data set, in one output space.

    ``certified`` / ``certified_prob``: inputs with ``Gamma > 2 B`` for the deterministic /
    probabilistic bound (the latter holds with probability ``>= probability`` per input).
    """

    space: str
    n: int
    certified: int
    certified_prob: int
    probability: float
    runs: dict[str, RunAgreement] = field(default_factory=dict)
    gamma_median: float = float("nan")
    bound_median: float = float("nan")
    bound_prob_median: float = float("nan")

    @property
    def certified_fraction(self) -> float:
        return self.certified / self.n if self.n else float("nan")

    @property
    def certified_prob_fraction(self) -> float:
        return self.certified_prob / self.n if self.n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["certified_fraction"] = self.certified_fraction
        d["certified_prob_fraction"] = self.certified_prob_fraction
        for k, r in self.runs.items():
            d["runs"][k]["agreement"] = r.agreement
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToleranceSummary:
        d = dict(d)
        d.pop("certified_fraction", None)
        d.pop("certified_prob_fraction", None)
        runs = {}
        for k, r in d.pop("runs", {}).items():
            r = dict(r)
            r.pop("agreement", None)
            runs[k] = RunAgreement(**r)
        return cls(runs=runs, **d)

    def lines(self) -> list[str]:
        out = [(f"[{self.space}] certified (deterministic, sound): {self.certified}/{self.n} "
               f"({100 * self.certified_fraction:.2f}%); certified (probabilistic, p >= {self.probability:.6g}): "
               f"{self.certified_prob}/{self.n} ({100 * self.certified_prob_fraction:.2f}%)")]
        for r in self.runs.values():
            out.append(f"  {r.name}: agreement {r.agree}/{r.n} ({100 * r.agreement:.2f}%), flips {r.flips}, "
                       f"Gamma > 2 delta on {r.lemma_applies}, lemma violations 0, delta > B on "
                       f"{r.bound_violations} (probabilistic: {r.bound_violations_prob}), "
                       f"max delta/B = {r.max_delta_over_bound:.3g}")
        return out


def summarize(ref: Any, bound: Any, bound_prob: Any, probability: float, runs: dict[str, Any], *,
              space: str = "logits", warn: bool = True,
              certified: Any = None) -> tuple[ToleranceSummary, dict[str, np.ndarray]]:
    """Certificates and observed agreement of low-precision runs against the fp32 outputs.

    Parameters
    ----------
    ref : array_like (N, K)
        fp32 outputs (logits).
    bound, bound_prob : array_like (N, K) or (N,)
        Deterministic / probabilistic bounds on ``|run - ref|`` in logit space (componentwise
        or per row).
    probability : float
        Probability with which ``bound_prob`` holds for one input.
    runs : dict
        Name -> low-precision outputs (N, K) (logits).
    space : str
        ``"logits"`` or ``"probs"`` (softmax in float64 of the logits; the bounds are mapped
        by :func:`softmax_error_bound`).
    warn : bool
        Emit :class:`BoundViolationWarning` when a run exceeds its deterministic bound.
    certified : array_like of bool (N,), optional
        Inputs certified by another sound argument (the adjoint margins of
        :mod:`fpanalysis.analysis.adjoint`); an input is certified when it or ``Gamma > 2 B`` says so
        (deterministic and probabilistic).

    Returns
    -------
    (ToleranceSummary, dict of per-input arrays: gamma, B, B_prob, certified, certified_prob,
    and delta_<run>, class_<run>)

    Raises
    ------
    LemmaViolation
        If the lemma fails for any run.

    >>> ref = np.array([[2.0, 0.0], [0.1, 0.0]])
    >>> s, per = summarize(ref, [0.01, 0.01], [0.005, 0.005], 0.999, {"fp16": ref + 0.001})
    >>> s.certified, s.runs["fp16"].agree, s.runs["fp16"].bound_violations
    (2, 2, 0)
    """
    if space not in ("logits", "probs"):
        raise ValueError(f"unknown output space {space!r}; valid spaces are: logits, probs")
    r = _rows(ref, "ref")
    n = r.shape[0]
    Bc = np.asarray(bound, dtype=np.float64)
    Bpc = np.asarray(bound_prob, dtype=np.float64)
    if space == "probs":
        B = softmax_error_bound(r, Bc if Bc.ndim == 2 else Bc.reshape(-1, 1))
        Bp = softmax_error_bound(r, Bpc if Bpc.ndim == 2 else Bpc.reshape(-1, 1))
        R = softmax(r)
    else:
        B, Bp, R = _row_bound(Bc, n), _row_bound(Bpc, n), r
    g = classification_tolerance(R)
    cert = certify(R, B)
    certp = certify(R, Bp)
    if certified is not None:
        extra = np.asarray(certified, dtype=bool).reshape(n)
        cert, certp = cert | extra, certp | extra
    per: dict[str, np.ndarray] = {"gamma": g, "B": B, "B_prob": Bp, "certified": cert, "certified_prob": certp,
                                  "class_fp32": np.argmax(r, axis=1)}
    summary = ToleranceSummary(space, n, int(cert.sum()), int(certp.sum()), float(probability),
                               gamma_median=float(np.median(g)) if n else float("nan"),
                               bound_median=float(np.median(B)) if n else float("nan"),
                               bound_prob_median=float(np.median(Bp)) if n else float("nan"))
    for name, out in runs.items():
        o = _rows(out, name)
        O = softmax(o) if space == "probs" else o
        d = output_error(R, O)
        applies = check_lemma(R, O, name=name)
        cls = np.argmax(o, axis=1)
        same = cls == per["class_fp32"]
        viol = d > B
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(B > 0, d / B, np.where(d > 0, np.inf, 0.0))
        summary.runs[name] = RunAgreement(
            name, n, int(same.sum()), int((~same).sum()), applies, int(viol.sum()), int((d > Bp).sum()),
            float(d.max()) if n else 0.0, float(ratio.max()) if n else 0.0, int((cert & ~same).sum()))
        per[f"delta_{name}"] = d
        per[f"class_{name}"] = cls
        if warn and viol.any():
            i = int(np.flatnonzero(viol)[0])
            warnings.warn(BoundViolationWarning(
                f"[{space}] {name}: measured delta exceeds the deterministic bound on {int(viol.sum())} input(s), "
                f"e.g. input {i}: delta = {d[i]:.6g} > B = {B[i]:.6g}"), stacklevel=2)
    return summary, per

"""Tolerance, certificates and the lemma (fpanalysis.tolerance).

Oracles: Python floats / Fractions for Gamma and delta, brute-force random perturbations for
the softmax bound, and direct re-statements of the lemma.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest

from fpanalysis import tolerance as T


def test_gamma_delta_against_python(rng: np.random.Generator) -> None:
    z = rng.standard_normal((200, 7)).astype(np.float32)
    w = (z + rng.standard_normal(z.shape).astype(np.float32) * 1e-3).astype(np.float16)
    g = T.classification_tolerance(z)
    d = T.output_error(z, w)
    for i in range(z.shape[0]):
        row = sorted((Fraction(float(v)) for v in z[i]), reverse=True)
        assert g[i] == float(row[0] - row[1])  # exact: two fp32 numbers within a factor 2^30
        assert d[i] == max(abs(float(a) - float(b)) for a, b in zip(z[i], w[i]))
    assert T.output_error([[1.0, np.nan]], [[1.0, 2.0]])[0] == np.inf
    with pytest.raises(ValueError, match="K >= 2"):
        T.classification_tolerance([[1.0]])


def test_certificate_implies_agreement_whenever_bound_holds(rng: np.random.Generator) -> None:
    """Random outputs perturbed within a bound: certified inputs never change class (the lemma)."""
    n, k = 20000, 10
    ref = rng.standard_normal((n, k)) * rng.uniform(0.01, 3, (n, 1))
    B = rng.uniform(0, 0.5, n)
    pert = ref + rng.uniform(-1, 1, (n, k)) * B[:, None]
    cert = T.certify(ref, B)
    same = np.argmax(ref, 1) == np.argmax(pert, 1)
    assert cert.any() and (~cert).any()
    assert np.all(same[cert])
    assert T.check_lemma(ref, pert) >= cert.sum()
    # adversarial: push the top two classes towards each other by exactly B
    top = np.argsort(ref, 1)[:, -2:]
    adv = ref.copy()
    rows = np.arange(n)
    adv[rows, top[:, 1]] -= B
    adv[rows, top[:, 0]] += B
    assert np.all((np.argmax(adv, 1) == np.argmax(ref, 1))[cert])
    T.check_lemma(ref, adv)


def test_certify_is_strict_and_conservative() -> None:
    ref = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert T.certify(ref, [0.5, 0.4999, np.nan]).tolist() == [False, True, False]
    assert T.certify(ref, np.array([[0.1, 0.6], [0.1, 0.2], [0.0, 0.0]])).tolist() == [False, True, True]


def test_lemma_violation_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lemma cannot fail on real outputs; a corrupted delta must be caught loudly."""
    ref = np.array([[2.0, 0.0]])
    other = np.array([[0.0, 2.0]])
    assert T.check_lemma(ref, other) == 0  # Gamma = 2 < 2 delta = 4: nothing to check
    monkeypatch.setattr(T, "output_error", lambda a, b: np.zeros(len(np.asarray(a))))
    with pytest.raises(T.LemmaViolation, match="lemma violated"):
        T.check_lemma(ref, other, name="fake")
    with pytest.raises(AssertionError):
        T.summarize(ref, [0.1], [0.1], 1.0, {"fake": other})


def test_softmax_bound_holds_under_random_and_adversarial_perturbations(rng: np.random.Generator) -> None:
    for trial in range(300):
        k = int(rng.integers(2, 12))
        z = rng.standard_normal((1, k)) * rng.choice([0.1, 1.0, 10.0, 50.0])
        b = rng.uniform(0, rng.choice([1e-4, 1e-2, 0.5, 3.0]), (1, k))
        bound = T.softmax_error_bound(z, b)[0]
        p = T.softmax(z)
        worst = 0.0
        for _ in range(20):
            s = rng.choice([-1.0, 1.0], size=(1, k)) * b
            worst = max(worst, np.abs(T.softmax(z + s) - p).max())
        for i in range(k):  # one class up, all others down: extreme for that class
            s = -b.copy()
            s[0, i] = b[0, i]
            worst = max(worst, np.abs(T.softmax(z + s) - p).max(), np.abs(T.softmax(z - s) - p).max())
        # the float64 oracle itself errs by a few ulps of 1 (checked against mpmath on a failing case)
        assert worst <= bound + 8 * k * 2.0**-53, (trial, worst, bound)
    assert T.softmax_error_bound([[0.0, 0.0]], [[10.0, 10.0]])[0] <= 1.0 + 1e-9
    assert T.softmax_error_bound([[0.0, 0.0]], [[np.inf, 0.0]])[0] == np.inf


def test_summarize_counts(rng: np.random.Generator) -> None:
    n, k = 500, 5
    ref = rng.standard_normal((n, k))
    B = np.full((n, k), 0.05)
    run = ref + rng.uniform(-0.05, 0.05, (n, k))
    bad = ref.copy()
    bad[:3] += 1.0  # three inputs beyond the bound
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s, per = T.summarize(ref, B, B * 0.5, 0.99, {"ok": run, "bad": bad})
    assert any(issubclass(x.category, T.BoundViolationWarning) for x in w)
    assert s.runs["ok"].bound_violations == 0 and s.runs["bad"].bound_violations == 3
    assert s.runs["ok"].flips_certified == 0
    assert s.certified == int(T.certify(ref, B).sum()) and s.certified_prob >= s.certified
    assert s.runs["ok"].agree + s.runs["ok"].flips == n
    assert per["delta_ok"].shape == (n,) and per["certified"].dtype == bool
    sp, _ = T.summarize(ref, B, B, 1.0, {"ok": run}, space="probs")
    assert sp.runs["ok"].bound_violations == 0
    d = T.ToleranceSummary.from_dict(s.to_dict())
    assert d.runs["bad"].bound_violations == 3 and d.certified == s.certified
    assert "certified" in "\n".join(s.lines())
    with pytest.raises(ValueError, match="valid spaces"):
        T.summarize(ref, B, B, 1.0, {}, space="logit")

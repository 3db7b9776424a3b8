"""fpanalysis.testing assertions: each passes on correct inputs and fails, with the promised
message, on inputs just outside its bound.

Oracles: numpy float16 arithmetic (correctly rounded for one + or *), Fractions, math.comb
binomial tails, hand-computed errors.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from fpanalysis.bounds import Bound, dot_bound
from fpanalysis.testing import (
    Emulator,
    assert_certificates_hold,
    assert_certified_agreement,
    assert_check_verdict,
    assert_emulated_close,
    assert_within_bound,
    assert_within_probabilistic_bound,
    check_failure_rate,
    reference_arithmetic,
)

EPS52 = 2.0**-52


# --------------------------------------------------------------------------------------------
# assert_within_bound
# --------------------------------------------------------------------------------------------
def test_within_bound_passes_on_the_boundary_and_fails_just_outside() -> None:
    ref = np.array([1.0, 2.0, -3.0])
    bound = np.array([2.0**-10, 2.0**-9, 2.0**-8])
    on = ref + np.array([2.0**-10, -(2.0**-9), 2.0**-8])  # |error| == bound, exactly
    r = assert_within_bound(on, ref, bound)
    assert (r.n, r.violations, r.vacuous, r.max_ratio) == (3, 0, 0, 1.0)
    out = on.copy()
    out[1] = np.nextafter(out[1], -np.inf)  # one float64 step outside
    with pytest.raises(AssertionError) as e:
        assert_within_bound(out, ref, bound)
    msg = str(e.value)
    assert "exceeds the bound at 1 of 3 entries" in msg
    assert f"worst at index (1,): computed {float(out[1])!r}, reference 2.0" in msg
    assert f"|error| {float(abs(out[1] - 2.0))!r} > bound 0.001953125" in msg
    assert "the given bound array (max 0.003906)" in msg


def test_within_bound_names_a_Bound_and_ranks_violations() -> None:
    x = np.full(64, 0.1)
    y = np.ones(64)
    b = dot_bound(x, y, "fp16", "ieee")
    exact = float(x @ y)
    comp = np.array([exact + 0.5 * float(b.value), exact + 3 * float(b.value), exact + 2 * float(b.value)])
    with pytest.raises(AssertionError) as e:
        assert_within_bound(comp, np.full(3, exact), float(b.value), label="dot_bound")
    msg = str(e.value)
    assert "at 2 of 3 entries" in msg and "worst at index (1,)" in msg and "(3x the bound" in msg
    assert "other violations (first 1):" in msg and "index (2,)" in msg
    assert msg.count("index (0,)") == 0
    assert "dot_bound: the given bound array" in msg
    with pytest.raises(AssertionError, match=r"deterministic Bound \(max .*\); ieee: gamma_64\(u\)"):
        assert_within_bound(comp[1], exact, b)


def test_within_bound_real_fp16_dot_product() -> None:
    """numpy float16 dot products accumulate in fp32 (semantics.md): within dot_bound of the
    fp32-accumulate profile; a fake kernel off by the bound plus one ulp of fp16 fails."""
    rng = np.random.default_rng(1)
    for n in (16, 256, 1000):
        x = rng.uniform(-1, 1, n).astype(np.float16)
        y = rng.uniform(0, 1, n).astype(np.float16)
        computed = float(x @ y)
        exact = float(sum(Fraction(float(a)) * Fraction(float(c)) for a, c in zip(x, y)))
        b = dot_bound(x.astype(np.float64), y.astype(np.float64), "fp16", "fp32-accumulate")
        r = assert_within_bound(computed, exact, b)
        assert r.max_ratio <= 1
        with pytest.raises(AssertionError, match="exceeds the bound at 1 of 1 entries"):
            assert_within_bound(exact + float(b.value) * (1 + 2.0**-20), exact, b)


def test_within_bound_special_values() -> None:
    nan, inf = math.nan, math.inf
    r = assert_within_bound([nan, inf, -inf, 1.0], [nan, inf, -inf, 1.0], [0.0, 0.0, 0.0, 0.0])
    assert r.violations == 0 and r.max_error == 0.0
    with pytest.raises(AssertionError, match=r"index \(0,\): computed nan, reference 1.0: NaN on one side only"):
        assert_within_bound([nan], [1.0], [1.0])
    with pytest.raises(AssertionError, match=r"computed inf, reference 65504.0, \|error\| inf > bound"):
        assert_within_bound([inf], [65504.0], [1e30])


def test_within_bound_vacuous_and_bad_arguments() -> None:
    with pytest.raises(AssertionError, match=r"(?s)vacuous \(inf\) at 1 of 2 entries \(first at index \(1,\)\).*allow_vacuous=True"):
        assert_within_bound([1.0, 5.0], [1.0, 1.0], [0.1, math.inf])
    assert assert_within_bound([1.0, 5.0], [1.0, 1.0], [0.1, math.inf], allow_vacuous=True).vacuous == 1
    with pytest.raises(ValueError, match="shape"):
        assert_within_bound([1.0, 2.0], [1.0], 1.0)
    with pytest.raises(ValueError, match="nonnegative and not NaN"):
        assert_within_bound([1.0], [1.0], [math.nan])
    with pytest.raises(ValueError, match="does not broadcast"):
        assert_within_bound([1.0, 2.0], [1.0, 2.0], [1.0, 2.0, 3.0])


# --------------------------------------------------------------------------------------------
# assert_within_probabilistic_bound
# --------------------------------------------------------------------------------------------
def test_probabilistic_bound_from_a_callable_at_the_requested_confidence() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, 4096).astype(np.float16).astype(np.float64)
    y = np.ones(4096)
    s = np.float16(0)
    for t in x.astype(np.float16):  # fp16 accumulation: the deterministic bound is vacuous
        s = np.float16(s + t)
    exact = float(sum(Fraction(v) for v in x))
    asked: list[float] = []

    def bound(q: float) -> Bound:
        asked.append(q)
        return dot_bound(x, y, "fp16", "ieee", method="probabilistic", failure_prob=q)

    r = assert_within_probabilistic_bound(float(s), exact, bound, confidence=1 - 1e-6)
    assert asked == [pytest.approx(1e-6, rel=1e-9)] and r.probability == pytest.approx(1 - 1e-6)
    b = bound(1e-6)
    just_out = exact + float(b.value) * (1 + 2 * EPS52)
    with pytest.raises(AssertionError) as e:
        assert_within_probabilistic_bound(just_out, exact, b, confidence=1 - 1e-6)
    msg = str(e.value)
    assert "probabilistic Bound" in msg and "holds with probability >= 0.999999" in msg
    assert "this violation has probability <= 1e-06" in msg
    assert "assert_within_probabilistic_bound: |computed - reference| exceeds the bound at 1 of 1 entries" in msg
    # assert_within_bound routes a probabilistic Bound here, with the same message
    with pytest.raises(AssertionError, match="this violation has probability <= 1e-06"):
        assert_within_bound(just_out, exact, b)


def test_probabilistic_bound_arrays_and_confidence_checks() -> None:
    assert_within_probabilistic_bound([1.0], [1.0 + 2.0**-10], [2.0**-10], confidence=0.99)
    with pytest.raises(AssertionError, match=r"confidence 0.99.*\n.*probability <= 0.01"):
        assert_within_probabilistic_bound([1.0], [1.0 + 2.0**-10 + EPS52], [2.0**-10], confidence=0.99)
    with pytest.raises(ValueError, match="needs confidence="):
        assert_within_probabilistic_bound([1.0], [1.0], [0.1])
    with pytest.raises(ValueError, match="needs confidence="):
        assert_within_probabilistic_bound([1.0], [1.0], lambda q: [0.1])
    weak = Bound(np.array([0.1]), "probabilistic", 1e-3)
    with pytest.raises(ValueError, match=r"probability >= 0.999, less than the requested confidence 0.999999"):
        assert_within_probabilistic_bound([1.0], [1.0], weak, confidence=1 - 1e-6)
    with pytest.raises(ValueError, match="confidence must be in"):
        assert_within_probabilistic_bound([1.0], [1.0], [0.1], confidence=1.5)


# --------------------------------------------------------------------------------------------
# check_failure_rate
# --------------------------------------------------------------------------------------------
def _tails(n: int, p: float) -> list[float]:
    """P(X >= k) for k = 0..n+1, X ~ Binomial(n, p), in 60-digit mpmath (independent of scipy)."""
    import mpmath

    with mpmath.workdps(60):
        q = mpmath.mpf(p)
        pmf = [mpmath.binomial(n, j) * q**j * (1 - q) ** (n - j) for j in range(n + 1)]
        out = [mpmath.mpf(0)] * (n + 2)
        for j in range(n, -1, -1):
            out[j] = out[j + 1] + pmf[j]
        return [float(v) for v in out]


def _critical(tails: list[float], alpha: float) -> int:
    """Smallest k with P(X >= k) < alpha."""
    return next(k for k, t in enumerate(tails) if t < alpha)


@pytest.mark.parametrize("n, p, alpha", [(200, 0.01, 1e-6), (500, 0.05, 1e-3), (100, 0.0, 1e-6)])
def test_failure_rate_threshold_matches_the_exact_binomial_tail(n: int, p: float, alpha: float) -> None:
    tails = _tails(n, p)
    k_crit = _critical(tails, alpha)

    def trials(failures: int):
        def trial(rng: np.random.Generator) -> bool:
            trial.i += 1  # type: ignore[attr-defined]
            return trial.i > failures  # type: ignore[attr-defined]

        trial.i = 0  # type: ignore[attr-defined]
        return trial

    r = check_failure_rate(trials(k_crit - 1), n, p, alpha)
    assert r.failures == k_crit - 1 and r.max_allowed == k_crit - 1
    assert r.failed_trials == tuple(range(k_crit - 1))
    with pytest.raises(AssertionError) as e:
        check_failure_rate(trials(k_crit), n, p, alpha)
    msg = str(e.value)
    assert f"the bound failed in {k_crit} of {n} trials" in msg
    assert f"stated failure probability {p:.4g} allows" in msg
    assert f"at most {k_crit - 1} would pass at alpha = {alpha:.3g}" in msg
    assert f"P(X >= {k_crit} | n={n}, p={p:.4g}) = {tails[k_crit]:.3g}" in msg


def test_failure_rate_counts_assertion_errors_and_passes_other_exceptions() -> None:
    def trial(rng: np.random.Generator) -> None:
        assert_within_bound(rng.normal(), 0.0, 1.0)  # fails with probability ~0.317

    r = check_failure_rate(trial, 400, 0.35, alpha=1e-6, seed=3)
    assert 80 < r.failures < 175 and r.rate == r.failures / 400
    with pytest.raises(AssertionError) as e:
        check_failure_rate(trial, 400, 0.05, alpha=1e-6, seed=3)
    assert "trial " in str(e.value) and "exceeds the bound at 1 of 1 entries" in str(e.value)

    def broken(rng: np.random.Generator) -> bool:
        raise ZeroDivisionError("bug in the trial")

    with pytest.raises(ZeroDivisionError):
        check_failure_rate(broken, 10, 0.1)
    with pytest.raises(ValueError, match="stated_failure_probability"):
        check_failure_rate(lambda rng: True, 10, 1.5)


def test_failure_rate_of_a_real_probabilistic_bound() -> None:
    """Higham-Mary bound for fp16 sums under stochastic-like random data at failure_prob 0.01:
    violations are far rarer than stated (the check passes), and a 'bound' shrunk 100x fails."""
    y = np.ones(256)

    def trial(rng: np.random.Generator, shrink: float = 1.0) -> None:
        x = rng.uniform(0, 1, 256).astype(np.float16)
        s = np.float16(0)
        for t in x:
            s = np.float16(s + t)
        xf = x.astype(np.float64)
        b = dot_bound(xf, y, "fp16", "ieee", method="probabilistic", failure_prob=0.01)
        assert_within_bound(float(s), float(np.sum(xf)), np.asarray(b.value) / shrink)

    check_failure_rate(trial, 60, 0.01, alpha=1e-6)
    with pytest.raises(AssertionError, match="more often than its stated failure probability 0.01"):
        check_failure_rate(lambda rng: trial(rng, shrink=100.0), 60, 0.01, alpha=1e-6)


# --------------------------------------------------------------------------------------------
# assert_emulated_close
# --------------------------------------------------------------------------------------------
def naive_sum(ar, x):
    s = 0.0
    for v in x:
        s = ar.add(s, v)
    return s


def test_emulated_close_ulps_on_both_sides() -> None:
    x = np.array([1.0] + [2.0**-11] * 8)
    s16 = np.float16(0)  # independent oracle: numpy float16 additions
    for v in x.astype(np.float16):
        s16 = np.float16(s16 + v)
    # |1 - 1.00390625| = 2**-8 = 4 ulp of fp16 at 1.0039 (ulp 2**-10) = 7.97 u|ref|
    r = assert_emulated_close(naive_sum, (x,), "fp16", ulps=4)
    assert r.emulated == float(s16) == 1.0 and r.reference == 1.00390625
    assert r.max_ulps == 4.0 and r.max_units_of_roundoff == pytest.approx(2.0**-8 / (2.0**-11 * 1.00390625))
    with pytest.raises(AssertionError) as e:
        assert_emulated_close(naive_sum, (x,), "fp16", ulps=3.999)
    msg = str(e.value)
    assert ("naive_sum run in fp16 (nearest-even, profile fp32-accumulate) differs from its float64 reference "
            "by more than 3.999 ulp at 1 of 1 entries") in msg
    assert "worst at index (): emulated 1.0, reference 1.00390625, |difference| 0.00390625 = 4 ulp = 7.969 u|ref|" in msg
    assert "(allowed 0.003905)" in msg
    assert_emulated_close(naive_sum, (x,), "fp16", units_of_roundoff=7.97)
    with pytest.raises(AssertionError, match="by more than 7.96 u|ref|"):
        assert_emulated_close(naive_sum, (x,), "fp16", units_of_roundoff=7.96)
    # upward rounding does not stagnate: 1 + 2**-11 rounds up to 1 + 2**-10 each time
    up = assert_emulated_close(naive_sum, (x,), "fp16", mode="up", ulps=8)
    assert up.emulated == 1.0 + 8 * 2.0**-10


def test_emulated_close_profiles_and_arrays() -> None:
    rng = np.random.default_rng(4)
    W = rng.uniform(-1, 1, (8, 300))
    v = rng.uniform(0, 1, 300)

    def matvec(ar, W, v):
        return ar.matmul(W, v)

    W16, v16 = W.astype(np.float16), v.astype(np.float16)
    oracle = (W16.astype(np.float32) @ v16.astype(np.float32)).astype(np.float16)  # fp32 accumulate
    r = assert_emulated_close(matvec, (W, v), "fp16", profile="fp32-accumulate", atol=0.05)
    np.testing.assert_allclose(r.emulated, oracle.astype(np.float64), rtol=0, atol=2.0**-10 * 8)
    ref = W16.astype(np.float64) @ v16.astype(np.float64)
    np.testing.assert_array_equal(r.reference, ref)
    ieee = assert_emulated_close(matvec, (W, v), "fp16", profile="ieee", atol=1.0).emulated
    errs = np.abs(ieee - ref)
    worst, err = int(np.argmax(errs)), float(np.max(errs))
    assert err > 4 * float(np.max(np.abs(r.emulated - ref)))  # fp16 accumulation is worse
    tol = float(np.sort(errs)[-2])  # only the worst entry is outside
    with pytest.raises(AssertionError, match=rf"at 1 of 8 entries\n  worst at index \({worst},\): emulated {float(ieee[worst])!r}"):
        assert_emulated_close(matvec, (W, v), "fp16", profile="ieee", atol=tol)


def test_emulated_close_exact_reference_differs_from_float64() -> None:
    """(a + b) - a with a = 2**100, b = 1 in bf16: float64 also loses b, the exact reference
    does not."""

    def add_sub(ar, a, b):
        return ar.sub(ar.add(a, b), a)

    a, b = 2.0**100, 1.0
    assert_emulated_close(add_sub, (a, b), "bf16", ulps=0)  # float64 reference: 0 as well
    with pytest.raises(AssertionError, match=r"(?s)from its exact reference .*emulated 0.0, reference 1.0"):
        assert_emulated_close(add_sub, (a, b), "bf16", reference="exact", ulps=100)  # 100 ulp = 0.78
    assert_emulated_close(add_sub, (a, b), "bf16", reference="exact", atol=1.0)


def test_emulated_close_special_values_and_inputs() -> None:
    def double(ar, x):
        return ar.add(x, x)

    assert_emulated_close(double, (np.array([40000.0, 30000.0]),), "fp16", ulps=0.5)  # 80000 -> inf agrees
    def plus16(ar, x):
        return ar.add(x, 16.0)

    big = np.array([65504.0])
    assert_emulated_close(plus16, (big,), "fp16", ulps=0.5)  # 65520: RN gives inf, which agrees
    assert_emulated_close(plus16, (big,), "fp16", mode="toward-zero", ulps=0.5)  # 65504, half an ulp off

    def overshoot(ar, x):  # an intermediate overflows although the result (65510) rounds to 65504
        return ar.sub(ar.add(x, 32.0), 26.0)

    with pytest.raises(AssertionError, match=r"emulated inf, reference 65510.0 \(overflow"):
        assert_emulated_close(overshoot, (big,), "fp16", ulps=100)
    with pytest.raises(ValueError, match="argument 0 is a list of floats; pass a numpy array"):
        assert_emulated_close(double, ([0.1, 0.2],), "fp16", ulps=1)
    with pytest.raises(AssertionError, match=r"emulated inf, reference 40000.0 \(overflow: fp16's largest finite"):
        assert_emulated_close(lambda ar, x: ar.mul(ar.add(x, x), 0.5), (np.array([40000.0]),), "fp16", ulps=1)

    def inf_minus_inf(ar, x):
        return ar.sub(ar.mul(x, x), ar.mul(x, x))

    with pytest.raises(AssertionError, match=r"emulated nan, reference 0.0 \(NaN on one side only\)"):
        assert_emulated_close(inf_minus_inf, (np.array([300.0]),), "fp16", ulps=1)
    with pytest.raises(ValueError, match=r"argument 0 holds values that are not fp16 numbers \(first at index \(1,\): 0.1\)"):
        assert_emulated_close(double, (np.array([1.0, 0.1]),), "fp16", ulps=1, round_inputs=False)
    with pytest.raises(ValueError, match="give a tolerance"):
        assert_emulated_close(double, (np.ones(2),), "fp16")

    def pair(ar, x):
        return ar.round(x), ar.mul(x, 3.0)

    r = assert_emulated_close(pair, (np.array([0.1]),), "fp16", ulps=0.5)
    assert r.emulated[0][0] == float(np.float16(0.1))
    with pytest.raises(AssertionError, match="pair output 1 run in fp16"):
        assert_emulated_close(pair, (np.array([0.1, 0.7]),), "fp16", ulps=0.01)


def test_emulated_close_stochastic_is_reproducible() -> None:
    x = np.array([1.0] + [2.0**-12] * 64)
    r1 = assert_emulated_close(naive_sum, (x,), "fp16", mode="stochastic", seed=5, ulps=16)
    r2 = assert_emulated_close(naive_sum, (x,), "fp16", mode="stochastic", seed=5, ulps=16)
    assert r1.emulated == r2.emulated
    assert 1.0 < r1.emulated  # round-to-nearest would stagnate at 1.0


def test_reference_arithmetics_agree_with_independent_oracles() -> None:
    ex = reference_arithmetic("exact")
    f64 = reference_arithmetic("float64")
    x = np.array([0.1, 0.2, 0.3])
    assert ex.sum(x) == sum(Fraction(v) for v in x)
    assert ex.dot(x, x) == sum(Fraction(v) ** 2 for v in x)
    s = ex.sqrt(2.0)
    assert abs(s * s - 2) < Fraction(1, 2**190)
    assert f64.fma(0.1, 10.0, -1.0) == 0.1 * 10.0 - 1.0
    em = Emulator("fp16", profile="ieee")
    assert em.sum(np.array([[1.0] + [2.0**-11] * 4])).tolist() == [1.0]
    with pytest.raises(ValueError, match="valid profiles are: ieee, fp32-accumulate, exact"):
        Emulator("fp16", profile="fp16-accumulate")
    with pytest.raises(ValueError, match="valid references are: float64, exact"):
        reference_arithmetic("mpfr")


# --------------------------------------------------------------------------------------------
# Certificates and the check verdict
# --------------------------------------------------------------------------------------------
def test_certificates_hold_on_both_sides_of_gamma_equals_2B() -> None:
    ref = np.array([[1.0, 0.0, -1.0], [0.2, 0.0, 0.1]])
    low = np.array([[0.0, 1.0, -1.0], [0.2, 0.0, 0.1]])  # input 0 changes class
    # Gamma(0) = 1 = 2B: not certified (strict), so the flip is allowed
    r = assert_certificates_hold(ref, low, [0.5, 0.01], check_bound=False)
    assert (r.n, r.certified, r.flips, r.agreement) == (2, 1, 1, 0.5)
    assert r.certified_mask.tolist() == [False, True]
    with pytest.raises(AssertionError) as e:
        assert_certificates_hold(ref, low, [0.5 - 2.0**-40, 0.01], check_bound=False)
    msg = str(e.value)
    assert "1 of 2 certified inputs changed class in fp16" in msg
    assert "input 0: Gamma = 1 > 2B = 1, but fp16 argmax 1 != fp32 argmax 0; delta = 1 > B = 0.5" in msg


def test_certificates_check_the_bound_itself() -> None:
    ref = np.array([[3.0, 0.0], [0.0, 3.0]])
    low = ref + np.array([[0.25, 0.0], [0.0, -0.5]])
    r = assert_certificates_hold(ref, low, [0.25, 0.5])
    assert r.max_delta_over_bound == 1.0 and r.certified == 2
    with pytest.raises(AssertionError) as e:
        assert_certificates_hold(ref, low, [0.25, np.nextafter(0.5, 0)])
    msg = str(e.value)
    assert "delta = ||fp16 - fp32||_inf exceeds the bound B at 1 of 2 inputs" in msg
    assert "input 1: delta = 0.5 > B = 0.49999999999999994" in msg
    assert_certificates_hold(ref, low, [0.25, 0.4], check_bound=False)
    with pytest.raises(AssertionError, match=r"only 1 of 2 inputs \(50.0%\) are certified"):
        assert_certificates_hold(ref, low, [0.25, 2.0], min_certified=0.75)
    with pytest.raises(AssertionError, match=r"probabilistic bound, probability >= 0.99"):
        assert_certificates_hold(ref, low + 1.0 * np.array([[0, 0], [3, 0]]),
                                 Bound(np.array([0.25, 0.5]), "probabilistic", 0.01))


def test_certified_agreement_reads_the_analysis_certificates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-input arrays of fpanalysis.analysis (stand-in report): the assertion must pick
    the requested method, run and space, and fail on a certified flip or a violated bound."""
    import fpanalysis.analysis as analysis

    calls: list[tuple] = []
    per = {"gamma": [2.0, 0.5], "B": [0.5, 0.5], "B_prob": [0.25, 0.25], "certified": [True, False],
           "certified_prob": [True, True], "class_fp32": [0, 1], "delta_emulator": [0.25, 0.25],
           "class_emulator": [0, 1], "delta_torch-half": [0.25, 0.75], "class_torch-half": [0, 0]}

    class Report:
        probability = 0.999

        def __init__(self) -> None:
            self.per_input = {"logits": per, "probs": per}

    def fake_analyze(model, inputs, fmt, profile, **kw):
        calls.append((fmt.name, profile, kw))
        return Report()

    monkeypatch.setattr(analysis, "analyze", fake_analyze)
    r = assert_certified_agreement(None, None, "bf16", run="emulator", failure_prob=1e-3)
    assert (r.n, r.certified, r.flips) == (2, 1, 0) and isinstance(r.report, Report)
    assert calls[0] == ("bf16", "fp32-accumulate", {"failure_prob": 1e-3, "progress": False, "keep_per_input": True})
    # torch-half flips input 1, which the deterministic certificate does not cover ...
    assert assert_certified_agreement(None, None, run="torch-half", check_bound=False).flips == 1
    with pytest.raises(AssertionError, match=r"input 1: delta = 0.75 > B = 0.5 \(1.5x\)"):
        assert_certified_agreement(None, None, run="torch-half")
    # ... but the probabilistic one does
    with pytest.raises(AssertionError) as e:
        assert_certified_agreement(None, None, run="torch-half", method="probabilistic", space="probs")
    msg = str(e.value)
    assert "1 of 2 certified inputs changed class in fp16 (torch-half, fp32-accumulate)" in msg
    assert "probs, probabilistic bound, probability >= 0.999 per input" in msg
    assert "input 1: Gamma = 0.5 > 2B = 0.5, but fp16 (torch-half, fp32-accumulate) argmax 0 != fp32 argmax 1" in msg
    with pytest.raises(ValueError, match="runs available: emulator, torch-half"):
        assert_certified_agreement(None, None, run="cuda-half")
    with pytest.raises(ValueError, match="valid methods are: deterministic, probabilistic"):
        assert_certified_agreement(None, None, method="sound")


def test_certified_agreement_on_a_real_model() -> None:
    torch = pytest.importorskip("torch")
    from fpanalysis.tolerance import certify, classification_tolerance

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.ReLU(), torch.nn.Linear(24, 4))
    X = torch.randn(48, 12)
    r = assert_certified_agreement(model, X, "fp16", run="torch-half", min_certified=0.5)
    # independent recomputation of what was certified: fp32 logits and the report's bound
    with torch.no_grad():
        ref = model(X).double().numpy()
    B = np.asarray(r.report.per_input["logits"]["B"])
    assert np.array_equal(r.certified_mask, certify(ref, B))
    with torch.no_grad():
        half = model.half()(X.half()).double().numpy()
    same = np.argmax(half, 1) == np.argmax(ref, 1)
    assert same[r.certified_mask].all() and r.agreement == pytest.approx(same.mean())
    assert np.all(np.max(np.abs(half - ref), axis=1) <= B)
    assert classification_tolerance(ref).shape == (48,)


@pytest.fixture(scope="module")
def tiny_model_data():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    X = np.random.default_rng(0).normal(size=(96, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    return model, (X, y)


def test_check_verdict_on_both_sides(tiny_model_data) -> None:
    model, data = tiny_model_data
    kw = {"steps": 2, "warmup_steps": 2, "certify": False}
    report = assert_check_verdict(model, data, "SAFE", **kw)
    assert report.verdict == "SAFE"
    with pytest.raises(AssertionError, match="fpanalysis check says SAFE, expected UNSAFE"):
        assert_check_verdict(model, data, "unsafe", **kw)
    adam = {**kw, "optimizer": "adam", "eps": 1e-8}
    assert_check_verdict(model, data, ["safe_with_changes", "UNSAFE"], **adam)
    with pytest.raises(AssertionError) as e:
        assert_check_verdict(model, data, "SAFE", **adam)
    msg = str(e.value)
    assert "fpanalysis check says SAFE WITH CHANGES, expected SAFE" in msg
    assert "[fail] optimizer epsilon" in msg and "fix: raise Adam eps" in msg
    assert "verdict: SAFE WITH CHANGES" in msg  # the full report follows
    with pytest.raises(ValueError, match="valid verdicts are: SAFE, SAFE WITH CHANGES, UNSAFE"):
        assert_check_verdict(model, data, "OK", **kw)

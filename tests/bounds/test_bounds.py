"""Property tests for fpanalysis.bounds: deterministic bounds are never violated, probabilistic
bounds fail no more often than stated, and stay informative.

The computations being bounded are emulated here, independently of the bounds code: exact
products in float64 (fp16 and bf16 significands are short enough), every rounding by
``fpanalysis.rounding.round_to`` (itself checked against gmpy2/softfloat in the core tests),
and exact references from ``math.fsum`` (correctly rounded; its error, at most 2**-53 |s|, is
added to the measured error) or Fractions.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from fpanalysis.bounds import accumulation as B
from fpanalysis.formats import get_format
from fpanalysis.rounding import round_to

U16, U32, UBF = 2.0**-11, 2.0**-24, 2.0**-8


@pytest.fixture(scope="module", autouse=True)
def _one_numba_thread():
    """The emulators call round_to on small arrays thousands of times; on a loaded 2-core
    machine the parallel kernel's thread wake-ups cost milliseconds per call, one thread ~40 us."""
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# Emulated computations (the oracles)
# ---------------------------------------------------------------------------------------------
class Rounder:
    """Round float64 arrays to a format; stochastic rounding draws a fresh stream per call."""

    def __init__(self, fmt: str, mode: str = "nearest-even", seed: int = 0):
        self.fmt, self.mode, self.seed, self.calls = fmt, mode, seed, 0

    def __call__(self, a: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.mode == "stochastic":
            return round_to(a, self.fmt, self.mode, seed=self.seed, stream=self.calls, dtype=np.float64)
        return round_to(a, self.fmt, self.mode, dtype=np.float64)


def sum_recursive(P: np.ndarray, rd) -> np.ndarray:
    s = P[..., 0].copy()
    for k in range(1, P.shape[-1]):
        s = rd(s + P[..., k])  # the float64 sum of two fp16 numbers is exact; for wider ranges
    return s  # float64 then one rounding is still the correctly rounded sum (53 >= 2p + 2)


def sum_pairwise(P: np.ndarray, rd) -> np.ndarray:
    n = P.shape[-1]
    if n == 1:
        return P[..., 0].copy()
    m = n // 2
    return rd(sum_pairwise(P[..., :m], rd) + sum_pairwise(P[..., m:], rd))


def sum_blocked(P: np.ndarray, rd, b: int) -> np.ndarray:
    M, n = P.shape
    nb = -(-n // b)
    Q = np.zeros((M, nb * b))
    Q[:, :n] = P  # padding zeros: adding an exact zero is exact
    return sum_recursive(sum_recursive(Q.reshape(M, nb, b), rd), rd)


def emulate_dot(X, Y, fmt, profile, order="recursive", block=16, mode="nearest-even", seed=0):
    """fl(x^T y) row by row, X and Y holding numbers of ``fmt``."""
    P = X * Y  # exact
    rd = Rounder(fmt, mode, seed)
    summer = {
        "recursive": sum_recursive,
        "pairwise": sum_pairwise,
        "blocked": lambda A, r: sum_blocked(A, r, block),
    }[order]
    with np.errstate(invalid="ignore", over="ignore"):
        if profile == "ieee":
            return summer(rd(P), rd)
        if profile == "fp32-accumulate":
            r32 = Rounder("fp32")
            return rd(summer(r32(P), r32))
        if profile == "exact":
            return rd(exact_sum(P))
    raise AssertionError(profile)


def exact_sum(P: np.ndarray) -> np.ndarray:
    """Correctly rounded float64 of each row's exact sum (|error| <= 2**-53 |s|)."""
    return np.array([math.fsum(row) for row in P])


def measured_error(s_hat: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Upper bound on |s_hat - s|: |s_hat - fsum| plus fsum's and the subtraction's errors."""
    r = exact_sum(P)
    with np.errstate(invalid="ignore"):
        d = np.abs(s_hat - r)
    return d + 2.0**-52 * (d + np.abs(r))


# ---------------------------------------------------------------------------------------------
# Data: random and adversarial
# ---------------------------------------------------------------------------------------------
FMT_MAX = {"fp16": 65504.0, "bf16": 3.3895313892515355e38}
FMT_EMIN = {"fp16": -14, "bf16": -126}


def make_cases(kind: str, M: int, n: int, fmt: str, rng: np.random.Generator):
    """(X, Y) of shape (M, n), values of ``fmt``."""
    rd = Rounder(fmt)
    emin = FMT_EMIN[fmt]
    if kind == "uniform":
        X, Y = rng.uniform(-1, 1, (M, n)), rng.uniform(-1, 1, (M, n))
    elif kind == "positive":  # same sign: errors accumulate, no cancellation
        X, Y = rng.uniform(0, 1, (M, n)), rng.uniform(0, 1, (M, n))
    elif kind == "normal":
        X, Y = rng.standard_normal((M, n)), rng.standard_normal((M, n))
    elif kind == "cancel":  # exact result tiny compared with |x|^T |y|
        X, Y = rd(rng.standard_normal((M, n))), rd(rng.standard_normal((M, n)))
        Y[:, -1] = 1.0
        X[:, -1] = -rd(exact_sum(X[:, :-1] * Y[:, :-1]))
        return X, Y
    elif kind == "stagnation":  # one large term, many terms below half an ulp of it
        X = np.full((M, n), 1.0)
        X[:, 1:] = rng.uniform(0.3, 0.5, (M, n - 1)) * 2.0 ** (-8 if fmt == "bf16" else -11)
        Y = np.ones((M, n))
    elif kind == "ties":  # short integers: many exact halfway cases
        X = rng.integers(-64, 65, (M, n)) * 2.0**-6
        Y = rng.integers(-32, 33, (M, n)) * 2.0**-5
    elif kind == "wide":  # magnitudes over the whole range, subnormals included
        lo, hi = emin - 8, (8 if fmt == "fp16" else 60)
        X = rng.choice([-1, 1], (M, n)) * 2.0 ** rng.uniform(lo, hi, (M, n))
        Y = rng.choice([-1, 1], (M, n)) * 2.0 ** rng.uniform(lo, hi / 2, (M, n))
    elif kind == "subnormal":  # products below the smallest normal number
        X = rng.choice([-1, 1], (M, n)) * 2.0 ** rng.uniform(emin / 2 - 6, emin / 2 + 2, (M, n))
        Y = rng.uniform(0, 1, (M, n)) * 2.0 ** rng.uniform(emin / 2 - 6, emin / 2 + 2, (M, n))
    elif kind == "overflow":  # |x|^T |y| from 0.25 to 4 times the format's max: some overflow
        scale = np.sqrt(FMT_MAX[fmt] / n * 2.0 ** rng.uniform(-2, 2, (M, 1)) * 4)
        X, Y = rng.uniform(0, 1, (M, n)) * scale, rng.uniform(0, 1, (M, n)) * scale
    else:
        raise AssertionError(kind)
    return rd(X), rd(Y)


KINDS = ("uniform", "positive", "normal", "cancel", "stagnation", "ties", "wide", "subnormal", "overflow")
SIZES = (2, 3, 7, 16, 64, 100, 256, 1000, 4096)
CONFIGS = [  # (profile, order, block, mode)
    ("ieee", "recursive", None, "nearest-even"),
    ("ieee", "pairwise", None, "nearest-even"),
    ("ieee", "blocked", 16, "nearest-even"),
    ("ieee", "recursive", None, "stochastic"),
    ("ieee", "recursive", None, "toward-zero"),
    ("fp32-accumulate", "recursive", None, "nearest-even"),
    ("fp32-accumulate", "pairwise", None, "nearest-even"),
    ("exact", "recursive", None, "nearest-even"),
]


def check_never_violated(fmt, profile, order, block, mode, seed):
    rng = np.random.default_rng(seed)
    total = 0
    worst = 0.0
    for n in SIZES:
        m_per_kind = int(np.clip(6000 // n, 4, 400))
        pairs = [make_cases(k, m_per_kind, n, fmt, rng) for k in KINDS]
        X = np.concatenate([p[0] for p in pairs])
        Y = np.concatenate([p[1] for p in pairs])
        s_hat = emulate_dot(X, Y, fmt, profile, order, block or 16, mode, seed)
        kw = {"block": block} if order == "blocked" else {}
        bound = np.asarray(B.dot_bound(X, Y, fmt, profile, order=order, mode=mode, **kw).value)
        finite = np.isfinite(s_hat)
        # Overflow is not covered by the bounds: wherever the computation overflowed, the
        # bound must say so (inf), never a finite number.
        assert np.all(np.isinf(bound[~finite])), (fmt, profile, order, n)
        err = measured_error(s_hat[finite], (X * Y)[finite])
        ok = err <= bound[finite]
        assert ok.all(), (fmt, profile, order, mode, n, err[~ok][:3], bound[finite][~ok][:3])
        fin_b = np.isfinite(bound[finite]) & (bound[finite] > 0)
        if fin_b.any():
            worst = max(worst, float(np.max(err[fin_b] / bound[finite][fin_b])))
        total += len(X)
    return total, worst


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_deterministic_dot_bounds_never_violated(fmt):
    """>= 10^5 random and adversarial inner products per format (about 1.4 * 10^5 each)."""
    total = 0
    for i, (profile, order, block, mode) in enumerate(CONFIGS):
        n_cases, worst = check_never_violated(fmt, profile, order, block, mode, seed=100 + i)
        total += n_cases
        assert worst <= 1.0
    assert total >= 100_000


def test_emulator_matches_numpy_float16():
    """Harness check: the emulated ieee/fp32-accumulate fp16 dot equals plain numpy float16/32."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 40)).astype(np.float16)
    Y = rng.standard_normal((50, 40)).astype(np.float16)
    s16 = np.zeros(50, np.float16)
    s32 = np.zeros(50, np.float32)
    for k in range(40):
        s16 = (s16 + X[:, k] * Y[:, k]).astype(np.float16)
        s32 = (s32 + X[:, k].astype(np.float32) * Y[:, k].astype(np.float32)).astype(np.float32)
    Xd, Yd = X.astype(np.float64), Y.astype(np.float64)
    assert np.array_equal(emulate_dot(Xd, Yd, "fp16", "ieee"), s16.astype(np.float64))
    assert np.array_equal(emulate_dot(Xd, Yd, "fp16", "fp32-accumulate"), s32.astype(np.float16).astype(np.float64))


def test_fsum_reference_is_correctly_rounded():
    rng = np.random.default_rng(2)
    X, Y = make_cases("wide", 30, 50, "fp16", rng)
    for row, ref in zip(X * Y, exact_sum(X * Y)):
        assert float(sum(Fraction(v) for v in row)) == ref


# ---------------------------------------------------------------------------------------------
# Constants: gamma, vacuity, theory.md's numbers, lambda
# ---------------------------------------------------------------------------------------------
def test_gamma_exact_values_and_vacuity():
    for p in (8, 11, 24):
        u = 2.0**-p
        for n in (0, 1, 2, 3, 10, 2 ** (p - 1), 2**p - 1):
            nu = Fraction(n) * Fraction(u)
            expected = nu / (1 - nu)
            assert abs(Fraction(B.gamma(n, u)) - expected) <= expected * Fraction(2.0**-52)
        for n in (2**p, 2**p + 1, 10 * 2**p):
            assert B.gamma(n, u) == math.inf and B.is_vacuous(B.gamma(n, u))
    g = B.gamma(np.arange(0, 5000), U16)
    assert np.all(g[:2048] >= 0) and np.all(np.isfinite(g[:2048])) and np.all(np.isinf(g[2048:]))
    assert B.gamma(1024, U16) == 1.0  # "already >= 1 at n = 1024"
    with pytest.raises(ValueError):
        B.gamma(-1, U16)


def test_vacuous_bounds_are_inf_not_wrong():
    b = B.accumulation_bound(np.array([1.0, 0.0]), 4096, "fp16")
    assert b.value[0] == math.inf and b.value[1] == 0.0 and b.vacuous
    b2 = B.accumulation_bound(1.0, 256, "bf16")  # 256 * 2**-8 = 1
    assert b2.value == math.inf and B.is_vacuous(b2)
    # pairwise and the fp32-accumulate profile stay finite there
    assert np.isfinite(B.accumulation_bound(1.0, 4096, "fp16", order="pairwise").value)
    assert np.isfinite(B.accumulation_bound(1.0, 4096, "fp16", "fp32-accumulate").value)


def test_theory_md_numbers():
    u = U16
    for lam, expected in [(3, 2.2e-2), (4, 6.8e-4), (5, 7.5e-6), (6, 3.1e-8), (7, 4.7e-11)]:
        fail = 2 * math.exp(-(lam**2) * (1 - u) ** 2 / 2)
        assert abs((1 - B.probability_P(lam, u)) - fail) <= 1e-15
        assert abs(fail / expected - 1) < 0.05, (lam, fail)
    for n, expected in [(256, 0.040), (1024, 0.082), (4096, 0.17), (16384, 0.37)]:
        direct = math.exp(5 * math.sqrt(n) * u + n * u * u / (1 - u)) - 1
        assert abs(B.gamma_tilde(n, u, 5.0) - direct) <= 1e-15
        assert round(direct, 2 if expected >= 0.1 else 3) == expected
    assert B.probability_P(0.5, u) == 0.0  # clipped, never negative
    assert B.probability_Q(3.0, 1000, u) == 0.0


@pytest.mark.parametrize("delta", [1e-1, 1e-3, 1e-9])
@pytest.mark.parametrize("n,m", [(1, 1), (64, 10), (4096, 1000)])
def test_choose_lambda_inverts_the_failure_probability(delta, n, m):
    lam = B.choose_lambda(delta, n, U16, m)
    stated = m * n * 2 * math.exp(-(lam**2) * (1 - U16) ** 2 / 2)
    assert abs(stated / delta - 1) < 1e-9
    lam2 = lam * (1 - 1e-6)  # any smaller lambda exceeds the requested probability
    assert m * n * 2 * math.exp(-(lam2**2) * (1 - U16) ** 2 / 2) > delta


def test_rounding_depth_counts():
    assert B.rounding_depth(1) == 1 and B.rounding_depth(1, products=False) == 0
    for n in range(1, 300):
        assert B.rounding_depth(n, "pairwise", products=False) == math.ceil(math.log2(n))
        for b in (1, 4, 16, 512):
            expected = (min(b, n) - 1) + (math.ceil(n / b) - 1)
            assert B.rounding_depth(n, "blocked", b, products=False) == expected
    with pytest.raises(ValueError, match="valid orders are"):
        B.rounding_depth(4, "zigzag")
    with pytest.raises(ValueError, match="valid profiles are"):
        B.accumulation_bound(1.0, 4, "fp16", "fp64-accumulate")


# ---------------------------------------------------------------------------------------------
# Underflow
# ---------------------------------------------------------------------------------------------
def test_underflow_term_saves_the_bound():
    n = 16
    X = np.full((1, n), 2.0**-13)  # products 2**-26 < min_subnormal / 2: they round to 0
    Y = X.copy()
    s_hat = emulate_dot(X, Y, "fp16", "ieee")
    err = measured_error(s_hat, X * Y)[0]
    relative_only = n * U16 / (1 - n * U16) * n * 2.0**-26
    assert s_hat[0] == 0.0 and err > 100 * relative_only  # the relative bound alone fails
    assert err <= B.dot_bound(X, Y, "fp16", "ieee").value[0]
    # flush-to-zero format: additions underflow too, eta = min_normal
    ftz = get_format("fp16").with_(name="fp16-ftz", subnormals=False)
    s_ftz = round_to(X * Y, ftz, dtype=np.float64)  # every product flushes to zero
    assert np.all(s_ftz == 0)
    bftz = B.dot_bound(X, Y, ftz, "ieee").value[0]
    assert err <= bftz and bftz >= (n - 1) * 2.0**-14  # each addition may flush too


def test_rounding_error_bound_against_round_to():
    rng = np.random.default_rng(3)
    for fmt in ("fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"):
        x = rng.choice([-1, 1], 100_000) * 2.0 ** rng.uniform(-30, 20, 100_000)
        for mode in ("nearest-even", "toward-zero", "up"):
            y = round_to(x, fmt, mode, dtype=np.float64)
            b = B.rounding_error_bound(x, fmt, mode).value
            fin = np.isfinite(y) & ~np.isnan(y)
            assert np.all(np.abs(y - x)[fin] <= b[fin])
            assert np.all(np.isinf(b[~fin]))


# ---------------------------------------------------------------------------------------------
# Probabilistic bounds
# ---------------------------------------------------------------------------------------------
def _violations(err, bound):
    return int(np.sum(err > bound))


@pytest.mark.parametrize("mode", ["nearest-even", "stochastic"])
def test_theta_product_fails_no_more_often_than_stated(mode):
    """|prod(1 + d_k) - 1| <= gamma~_n(lam) with probability >= P(lam) (Higham & Mary, Thm 3.1)
    on real rounding errors of a multiplication chain, at lambdas where P(lam) is not tiny."""
    rng = np.random.default_rng(4)
    M, n = 4000, 64
    rd = Rounder("fp16", mode, seed=5)
    z = np.ones(M)
    log_prod = np.zeros(M)
    for _ in range(n):
        t = z * rd(rng.uniform(0.5, 2.0, M))  # exact product of two fp16 numbers
        t = np.where(np.abs(t) > 1e3, t / 1024, t)  # stay in range (exact scaling)
        t = np.where(np.abs(t) < 1e-3, t * 1024, t)
        z = rd(t)
        log_prod += np.log1p(z / t - 1)
    theta = np.abs(np.expm1(log_prod))
    u = B.unit_roundoff("fp16", mode)
    for lam in (1.0, 1.5, 2.0, 2.5, 3.0):
        stated = min(1.0, 1 - B.probability_P(lam, u))
        gt = B.gamma_tilde(n, u, lam) * (1 + 1e-9)
        viol = _violations(theta, gt)
        limit = stats.binom.ppf(1 - 1e-6, M, stated)
        assert viol <= limit, (lam, viol, M * stated)


@pytest.mark.parametrize("profile,order", [("ieee", "recursive"), ("ieee", "pairwise"), ("fp32-accumulate", "recursive")])
@pytest.mark.parametrize("mode", ["nearest-even", "stochastic"])
def test_probabilistic_dot_bound_fails_no_more_often_than_stated(profile, order, mode):
    rng = np.random.default_rng(6)
    for n, lam in [(64, 3.6), (256, 3.9), (1024, 4.2)]:
        M = 200
        cases = [make_cases(k, M, n, "fp16", rng) for k in ("uniform", "positive", "normal")]
        X = np.concatenate([c[0] for c in cases])
        Y = np.concatenate([c[1] for c in cases])
        s_hat = emulate_dot(X, Y, "fp16", profile, order, mode=mode, seed=n)
        err = measured_error(s_hat, X * Y)
        b = B.dot_bound(X, Y, "fp16", profile, order=order, mode=mode, method="probabilistic", lam=lam)
        assert b.kind == "probabilistic"
        u = B.unit_roundoff("fp16", mode) if profile == "ieee" else U32
        stated = min(1.0, n * 2 * math.exp(-(lam**2) * (1 - u) ** 2 / 2))
        assert abs(b.failure_probability - stated) < 1e-12
        limit = stats.binom.ppf(1 - 1e-6, len(X), stated)
        assert _violations(err, np.asarray(b.value)) <= limit


def test_probabilistic_bound_is_informative_on_random_data():
    """Tightness ratio bound / measured error (median over inner products) of the
    probabilistic bound (failure probability 1e-6) stays below 100 on random data for the
    fp32-accumulate profile, and for the ieee profile on same-sign data.  (For zero-mean data
    in the ieee profile the |x|^T|y| form itself is loose: |x|^T|y| ~ n while the partial sums
    that carry the errors are ~ sqrt(n); the ratio there grows like sqrt(n), measured in
    test_zero_mean_tightness_is_reported.)"""
    rng = np.random.default_rng(7)
    ratios = {}
    for profile, order, kinds in [
        ("fp32-accumulate", "recursive", ("uniform", "normal", "positive")),
        ("ieee", "recursive", ("positive",)),
        ("ieee", "pairwise", ("positive",)),
    ]:
        for kind in kinds:
            for n in (64, 256, 1024, 4096):
                X, Y = make_cases(kind, 24 if n == 4096 else 48, n, "fp16", rng)
                err = measured_error(emulate_dot(X, Y, "fp16", profile, order), X * Y)
                pb = B.dot_bound(X, Y, "fp16", profile, order=order, method="probabilistic", failure_prob=1e-6)
                db = B.dot_bound(X, Y, "fp16", profile, order=order)
                assert np.all(err <= np.asarray(pb.value))
                r = float(np.median(np.asarray(pb.value) / err))
                ratios[(profile, order, kind, n)] = r
                assert r < 100, (profile, order, kind, n, r)
                assert np.all(np.asarray(db.value) >= np.asarray(pb.value))
    print("\ntightness, probabilistic bound / measured (median):")
    for key, r in ratios.items():
        print("  ", key, round(r, 1))


def test_zero_mean_tightness_is_reported():
    """ieee profile, zero-mean random data: the probabilistic bound still beats the
    deterministic one by a factor growing with n, but is loose against the measured error."""
    rng = np.random.default_rng(8)
    for n in (256, 1024):
        X, Y = make_cases("normal", 40, n, "fp16", rng)
        err = measured_error(emulate_dot(X, Y, "fp16", "ieee"), X * Y)
        pb = np.asarray(B.dot_bound(X, Y, "fp16", "ieee", method="probabilistic", failure_prob=1e-6).value)
        db = np.asarray(B.dot_bound(X, Y, "fp16", "ieee").value)
        r, gain = float(np.median(pb / err)), float(np.median(db / pb))
        print(f"\nieee, normal data, n={n}: prob. bound / measured = {r:.0f}, det. / prob. = {gain:.1f}")
        assert np.all(err <= pb) and 1 <= r < 50 * math.sqrt(n) and gain > 2


def test_probabilistic_bound_combines_failure_probabilities():
    e1 = B.Bound(np.ones(3) * 1e-3, "probabilistic", 1e-4)
    e2 = B.Bound(np.ones(3) * 1e-3, "probabilistic", 2e-4)
    out = B.propagate_add(e1, e2, local=np.zeros(3))
    assert out.kind == "probabilistic" and abs(out.failure_probability - 3e-4) < 1e-15
    det = B.propagate_add(np.ones(3), local=np.zeros(3))
    assert det.kind == "deterministic" and det.probability == 1.0
    with pytest.raises(ValueError):
        B.Bound(np.array([-1.0]))
    with pytest.raises(ValueError):
        B.Bound(np.array([np.nan]))


# ---------------------------------------------------------------------------------------------
# Sums, input rounding, matrix-vector products
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_sum_bound_never_violated(fmt):
    rng = np.random.default_rng(20)
    for n in (2, 5, 33, 256, 2000):
        for kind in ("uniform", "positive", "stagnation", "wide", "subnormal"):
            X = make_cases(kind, 200 if n < 1000 else 20, n, fmt, rng)[0]
            exact = exact_sum(X)
            for order, summer in (("recursive", sum_recursive), ("pairwise", sum_pairwise),
                                  ("blocked", lambda A, r: sum_blocked(A, r, 8))):
                with np.errstate(over="ignore", invalid="ignore"):
                    s_hat = summer(X, Rounder(fmt))
                kw = {"block": 8} if order == "blocked" else {}
                b = np.asarray(B.sum_bound(X, fmt, order=order, **kw).value)
                fin = np.isfinite(s_hat)
                assert np.all(np.isinf(b[~fin]))
                d = np.abs(s_hat[fin] - exact[fin])
                assert np.all(d + 2.0**-52 * (d + np.abs(exact[fin])) <= b[fin]), (fmt, n, kind, order)


def test_dot_bound_with_rounded_inputs():
    """fp32 data rounded to fp16 first: the bound covers |fl(x16^T y16) - x^T y| (exact, Fractions)."""
    rng = np.random.default_rng(21)
    for n in (3, 50, 700):
        X = rng.standard_normal((100, n)).astype(np.float32).astype(np.float64)
        Y = rng.uniform(-2, 2, (100, n)).astype(np.float32).astype(np.float64)
        X16, Y16 = Rounder("fp16")(X), Rounder("fp16")(Y)
        for profile in ("ieee", "fp32-accumulate"):
            s_hat = emulate_dot(X16, Y16, "fp16", profile)
            b = np.asarray(B.dot_bound(X, Y, "fp16", profile, round_inputs=True).value)
            for i in range(0, 100, 7):  # exact reference with Fractions on a subset
                exact = sum(Fraction(a) * Fraction(c) for a, c in zip(X[i], Y[i]))
                assert abs(Fraction(s_hat[i]) - exact) <= Fraction(b[i])
            r = exact_sum(X * Y)  # X*Y of fp32 numbers is exact in float64
            d = np.abs(s_hat - r)
            assert np.all(d + 2.0**-52 * (d + np.abs(r)) <= b)
            assert np.all(b > np.asarray(B.dot_bound(X16, Y16, "fp16", profile).value))


def test_matvec_bound_against_blas_fp32_accumulation():
    """fp16 matrix and vectors, products exact in float32, float32 BLAS accumulation in any
    order (the fp32-accumulate profile, as torch CPU half matmul), one rounding to fp16."""
    rng = np.random.default_rng(22)
    for m, n in [(16, 64), (64, 1000), (8, 5000)]:
        W = Rounder("fp16")(rng.standard_normal((m, n)) * rng.choice([1e-4, 1, 30], (m, 1)))
        x = Rounder("fp16")(rng.standard_normal((40, n)))
        y = Rounder("fp16")((x.astype(np.float32) @ W.T.astype(np.float32)).astype(np.float64))
        exact = np.array([[math.fsum(W[i] * x[b]) for i in range(m)] for b in range(40)])
        bound = B.matvec_bound(W, x, "fp16", "fp32-accumulate")
        d = np.abs(y - exact)
        assert np.all(d + 2.0**-52 * (d + np.abs(exact)) <= np.asarray(bound.value))
        pb = B.matvec_bound(W, x, "fp16", "fp32-accumulate", method="probabilistic", failure_prob=1e-6)
        assert pb.failure_probability <= 1e-6 * (1 + 1e-9) and np.all(np.asarray(pb.value) <= bound.value)
        # the failure probability covers the m outputs of each sample (lambda from m n events)
        lam = B.choose_lambda(1e-6, n, U32, m)
        same = B.matvec_bound(W, x, "fp16", "fp32-accumulate", method="probabilistic", lam=lam)
        assert np.array_equal(np.asarray(same.value), np.asarray(pb.value))

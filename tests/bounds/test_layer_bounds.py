"""Property tests for fpanalysis.bounds.layers: every local bound against independent emulations
(NumPy float32 "opmath" then one rounding with round_to) and against real torch fp16/bf16 CPU
kernels, references in float64 or mpmath; every propagation bound against random perturbations;
a small MLP and CNN end to end.
"""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
from scipy import special

from fpanalysis.bounds import accumulation as B
from fpanalysis.bounds import layers as L
from fpanalysis.rounding import round_to

U16 = 2.0**-11


@pytest.fixture(scope="module", autouse=True)
def _one_numba_thread():
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(old)


def r16(a, fmt="fp16"):
    return round_to(np.asarray(a, dtype=np.float64), fmt, dtype=np.float64)


def all_fp16_values() -> np.ndarray:
    v = np.arange(65536, dtype=np.uint16).view(np.float16)
    return v[np.isfinite(v)].astype(np.float64)


def all_bf16_values() -> np.ndarray:
    bits = np.arange(65536, dtype=np.uint32) << 16
    v = bits.view(np.float32)
    return v[np.isfinite(v)].astype(np.float64)


def check(err, bound, what):
    err = np.asarray(err, dtype=np.float64) * (1 + 2.0**-52)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), err.shape)
    bad = ~(err <= bound)
    assert not bad.any(), (what, int(bad.sum()), err[bad][:3], bound[bad][:3])
    fin = np.isfinite(bound) & (bound > 0)
    return float(np.max(err[fin] / bound[fin])) if fin.any() else 0.0


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------
def act32(name: str, x: np.ndarray) -> np.ndarray:
    """The activation computed in float32 the way torch's CPU kernels write it."""
    x = x.astype(np.float32)
    f = np.float32
    with np.errstate(over="ignore"):
        if name == "relu":
            return np.maximum(x, f(0))
        if name == "gelu":
            return f(0.5) * x * (f(1) + special.erf(x * f(math.sqrt(0.5))))
        if name == "gelu_tanh":
            k, c = f(math.sqrt(2 / math.pi)), f(0.044715)
            return f(0.5) * x * (f(1) + np.tanh(k * (x + c * x * x * x)))
        if name == "tanh":
            return np.tanh(x)
        if name == "sigmoid":
            return f(1) / (f(1) + np.exp(-x))
        if name == "silu":
            return x / (f(1) + np.exp(-x))
    raise AssertionError(name)


ACTS = ("relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu")


def test_critical_points_against_mpmath():
    mpmath.mp.dps = 30
    pdf = lambda t: mpmath.exp(-t * t / 2) / mpmath.sqrt(2 * mpmath.pi)
    gelu_d1 = lambda t: mpmath.ncdf(t) + t * pdf(t)
    sig = lambda t: 1 / (1 + mpmath.exp(-t))
    silu_d1 = lambda t: sig(t) * (1 + t * (1 - sig(t)))
    k, c = mpmath.sqrt(2 / mpmath.pi), mpmath.mpf("0.044715")
    gt = lambda t: t / 2 * (1 + mpmath.tanh(k * (t + c * t**3)))
    expected = {
        "gelu": (mpmath.findroot(gelu_d1, -0.75), mpmath.sqrt(2)),
        "silu": (mpmath.findroot(silu_d1, -1.3), mpmath.findroot(lambda t: t * mpmath.tanh(t / 2) - 2, 2.4)),
        "gelu_tanh": (mpmath.findroot(lambda t: mpmath.diff(gt, t), -0.75),
                      mpmath.findroot(lambda t: mpmath.diff(gt, t, 2), 1.4)),
    }
    for name, (tmin, tinfl) in expected.items():
        (cmin,), (cneg, cpos) = L._critical_points(name)
        assert abs(cmin - float(tmin)) < 1e-12 and abs(cpos - float(tinfl)) < 1e-12 and cneg == -cpos


@pytest.mark.parametrize("name", ACTS + ("identity",))
def test_activation_reference_and_slope(name):
    """float64 reference vs mpmath; sup-slope vs a dense grid; mean value property."""
    mpmath.mp.dps = 30
    k, c = mpmath.sqrt(2 / mpmath.pi), mpmath.mpf("0.044715")
    exact = {
        "identity": lambda t: t,
        "relu": lambda t: max(t, 0),
        "gelu": lambda t: t * mpmath.ncdf(t),
        "gelu_tanh": lambda t: t / 2 * (1 + mpmath.tanh(k * (t + c * t**3))),
        "tanh": mpmath.tanh,
        "sigmoid": lambda t: 1 / (1 + mpmath.exp(-t)),
        "silu": lambda t: t / (1 + mpmath.exp(-t)),
    }[name]
    ts = np.concatenate([np.linspace(-30, 30, 301), [-1e-5, 1e-7, -0.7518, 1.4142]])
    with mpmath.workdps(1000 if name == "gelu_tanh" else 30):  # 1 + tanh(w) cancels to e^(2w)
        ref = np.array([float(exact(mpmath.mpf(t))) for t in ts])
    got = L.activation(name, ts)
    assert np.all(np.abs(got - ref) <= 1e-12 * np.abs(ref) + 1e-300)  # erfc: ~1e-13 far out
    rng = np.random.default_rng(0)
    z = rng.uniform(-6, 6, 400)
    r = rng.uniform(0, 3, 400) * (rng.uniform(size=400) < 0.8)
    slope = L.activation_slope(name, z, radius=r)
    grid = z[:, None] + r[:, None] * np.linspace(-1, 1, 2001)[None, :]
    dense = np.max(np.abs(L.activation_derivative(name, grid)), axis=1)
    if name != "relu":  # the step derivative has no interior maximum to approach
        assert np.all(slope >= dense) and np.all(slope <= dense + 1e-5)
    t = grid[:, ::97]
    lhs = np.abs(L.activation(name, t) - L.activation(name, z)[:, None])
    assert np.all(lhs <= slope[:, None] * np.abs(t - z[:, None]) * (1 + 1e-12) + 1e-300)


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
@pytest.mark.parametrize("name", ACTS)
def test_activation_local_bound_exhaustive_emulated(name, fmt):
    """Every finite fp16 (bf16) input: fl(phi32(x)) is within the local bound of phi(x)."""
    x = all_fp16_values() if fmt == "fp16" else all_bf16_values()
    y = r16(act32(name, x).astype(np.float64), fmt)
    ref = L.activation(name, x)
    b = L.activation_local_bound(name, x, fmt).value
    fin = np.isfinite(y)
    assert np.all(np.isinf(b[~fin]))
    check(np.abs(y - ref)[fin], b[fin], (name, fmt))


@pytest.mark.torch_kernels
@pytest.mark.parametrize("name", ACTS)
def test_activation_local_bound_exhaustive_torch(name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    fn = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
          "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu}[name]
    for fmt, dtype, xs in (("fp16", torch.float16, all_fp16_values()), ("bf16", torch.bfloat16, all_bf16_values())):
        y = fn(torch.tensor(xs, dtype=torch.float64).to(dtype)).double().numpy()
        ref = L.activation(name, xs)
        b = L.activation_local_bound(name, xs, fmt).value
        fin = np.isfinite(y)
        assert np.all(np.isinf(b[~fin]))
        check(np.abs(y - ref)[fin], b[fin], (name, fmt, "torch"))


@pytest.mark.parametrize("name", ACTS)
def test_activation_radius_bounds_are_rigorous(name):
    """Inputs perturbed within a radius (then in fp16): the local bound at the reference point
    with that radius covers the rounding, and slope * |dz| + local covers the total error."""
    rng = np.random.default_rng(1)
    z = rng.standard_normal(20000) * 4
    r = 2.0 ** rng.uniform(-14, 0, z.size)
    z_hat = r16(z + r * rng.uniform(-1, 1, z.size))
    r_eff = np.abs(z_hat - z)  # rounding may land slightly outside: use the true distance
    y = r16(act32(name, z_hat).astype(np.float64))
    local = L.activation_local_bound(name, z, radius=r_eff).value
    check(np.abs(y - L.activation(name, z_hat)), local, (name, "local"))
    total = B.propagate_elementwise(r_eff, L.activation_slope(name, z, radius=r_eff), local).value
    check(np.abs(y - L.activation(name, z)), total, (name, "total"))


# ---------------------------------------------------------------------------------------------
# Addition, pooling, batch norm
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_add_local_bound(fmt):
    rng = np.random.default_rng(2)
    emin = -14 if fmt == "fp16" else -126
    a = r16(rng.choice([-1, 1], 200_000) * 2.0 ** rng.uniform(emin - 10, 15, 200_000), fmt)
    b = r16(rng.choice([-1, 1], 200_000) * 2.0 ** rng.uniform(emin - 10, 15, 200_000), fmt)
    b[:1000] = r16(-a[:1000] * (1 + 2.0**-6), fmt)  # cancellation
    s_hat = r16(a + b, fmt)  # float64 sum then one rounding = correctly rounded sum
    if fmt == "fp16":  # cross-check with numpy's own half-precision addition
        assert np.array_equal(s_hat, (a.astype(np.float16) + b.astype(np.float16)).astype(np.float64))
    bound = L.add_local_bound(a, b, fmt).value
    fin = np.isfinite(s_hat)
    assert np.all(np.isinf(bound[~fin]))
    worst = check(np.abs(s_hat - (a + b))[fin], bound[fin], fmt)
    assert worst > 0.5  # the bound u|a+b| is attained up to a factor 2


def test_avgpool_local_bound():
    rng = np.random.default_rng(3)
    for k in (4, 9, 49, 1024):
        x = r16(rng.standard_normal((3000 if k < 100 else 200, k)) * rng.choice([1e-3, 1, 300], (3000 if k < 100 else 200, 1)))
        s32 = np.zeros(x.shape[0], np.float32)
        for j in range(k):
            s32 = (s32 + x[:, j].astype(np.float32)).astype(np.float32)
        y = r16((s32 * np.float32(1.0 / k)).astype(np.float64))
        exact = np.array([math.fsum(row) for row in x]) / k  # division: <= 2**-53 relative
        b = L.avgpool_local_bound(exact, np.abs(x).mean(axis=1), k).value
        check(np.abs(y - exact) - 2.0**-52 * np.abs(exact), b, k)


@pytest.mark.torch_kernels
def test_avgpool_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = r16(rng.standard_normal((4, 8, 16, 16)) * 3)
    for kernel in (2, 4):
        y = torch.nn.functional.avg_pool2d(torch.tensor(x).half(), kernel).double().numpy()
        ref = torch.nn.functional.avg_pool2d(torch.tensor(x), kernel).numpy()
        ref_abs = torch.nn.functional.avg_pool2d(torch.tensor(np.abs(x)), kernel).numpy()
        check(np.abs(y - ref) - 1e-15 * np.abs(ref), L.avgpool_local_bound(ref, ref_abs, kernel * kernel).value, kernel)


def _bn_data(rng, C=6):
    x = r16(rng.standard_normal((8, C, 5, 5)) * rng.choice([0.01, 1, 50], (1, C, 1, 1)) + rng.choice([0, 3, -200], (1, C, 1, 1)))
    mean = rng.standard_normal(C) * np.array([0.0, 3, -200, 1, 0.5, 10])[:C]
    var = 2.0 ** rng.uniform(-8, 10, C)
    w = rng.standard_normal(C)
    b = rng.standard_normal(C) * 2
    return x, mean, var, w, b


@pytest.mark.torch_kernels
def test_batchnorm_local_bound_emulated_and_torch():
    rng = np.random.default_rng(5)
    eps = 1e-5
    for _ in range(20):
        x, mean, var, w, b = _bn_data(rng)
        m16, v16, w16, b16 = (r16(p) for p in (mean, var, w, b))
        sh = (1, -1, 1, 1)
        f = np.float32
        alpha = (w16.astype(f) / np.sqrt(v16.astype(f) + f(eps))).astype(f)
        beta = (b16.astype(f) - m16.astype(f) * alpha).astype(f)
        y = r16((x.astype(f) * alpha.reshape(sh) + beta.reshape(sh)).astype(np.float64))
        ref = (x - m16.reshape(sh)) * (w16 / np.sqrt(v16 + eps)).reshape(sh) + b16.reshape(sh)
        bound = L.batchnorm_local_bound(x, m16, v16, w16, b16, eps, "fp16").value
        check(np.abs(y - ref), bound, "bn emulated")
        torch = pytest.importorskip("torch")
        h = [torch.tensor(a).half() for a in (x, m16, v16, w16, b16)]
        yt = torch.nn.functional.batch_norm(*h, False, 0.0, eps).double().numpy()
        check(np.abs(yt - ref), bound, "bn torch")
        # rounding the fp32 parameters to fp16 (model.half())
        ref32 = (x - mean.reshape(sh)) * (w / np.sqrt(var + eps)).reshape(sh) + b.reshape(sh)
        check(np.abs(ref - ref32), L.batchnorm_param_error(x, mean, var, w, b, eps, "fp16").value, "bn params")


# ---------------------------------------------------------------------------------------------
# Layer norm
# ---------------------------------------------------------------------------------------------
def _ln_ref(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    c = x - mu
    return c / np.sqrt((c * c).mean(-1, keepdims=True) + eps) * w + b


def _ln32(x, w, b, eps, form):
    f = np.float32
    x32 = x.astype(f)
    n = x.shape[-1]
    mu = (x32.sum(-1, keepdims=True, dtype=f) / f(n)).astype(f)
    c = (x32 - mu).astype(f)
    var = ((c * c).sum(-1, keepdims=True, dtype=f) / f(n)).astype(f)
    rstd = (f(1) / np.sqrt(var + f(eps))).astype(f)
    if form == 1:
        return ((c * rstd) * w.astype(f) + b.astype(f)).astype(np.float64)
    a = (rstd * w.astype(f)).astype(f)
    return (x32 * a + (b.astype(f) - a * mu)).astype(np.float64)


@pytest.mark.torch_kernels
@pytest.mark.parametrize("n", [8, 64, 768])
def test_layernorm_local_bound(n):
    rng = np.random.default_rng(6 + n)
    eps = 1e-5
    torch = pytest.importorskip("torch")
    for shift, scale in [(0, 1), (100, 1), (1000, 0.5), (0, 1e-3), (-30000, 100), (5, 0)]:
        M = 64
        x = r16(shift + scale * rng.standard_normal((M, n)))
        w = r16(rng.standard_normal(n))
        b = r16(rng.standard_normal(n))
        ref = _ln_ref(x, w, b, eps)
        bound = L.layernorm_local_bound(x, w, b, eps, "fp16").value
        for form in (1, 2):
            check(np.abs(r16(_ln32(x, w, b, eps, form)) - ref), bound, ("ln", n, shift, scale, form))
        yt = torch.nn.functional.layer_norm(torch.tensor(x).half(), (n,), torch.tensor(w).half(),
                                            torch.tensor(b).half(), eps).double().numpy()
        check(np.abs(yt - ref), bound, ("ln torch", n, shift, scale))


def test_layernorm_propagation_and_radius_are_rigorous():
    rng = np.random.default_rng(7)
    eps = 1e-5
    for n, shift, rel in [(16, 0, 1e-3), (64, 10, 1e-2), (256, 0, 0.2), (32, 3, 2.0)]:
        x = rng.standard_normal((200, n)) + shift
        w = rng.standard_normal(n)
        b = rng.standard_normal(n)
        e = rel * rng.uniform(0, 1, (200, n)) * np.abs(x).mean()
        prop = L.propagate_layernorm(e, x, w, eps).value
        for _ in range(5):
            xh = x + e * rng.choice([-1.0, 1.0], x.shape) * rng.uniform(0.5, 1, x.shape)
            d = np.abs(_ln_ref(xh, w, b, eps) - _ln_ref(x, w, b, eps))
            fin = np.isfinite(prop)
            check(d[fin], prop[fin], ("ln prop", n))
        # radius: the local bound at x with radius covers fl(LN32(x^)) - LN(x^) for x^ in fp16
        e16 = np.abs(r16(x) - x) + 1e-3 * np.abs(x).mean()
        x16 = r16(x + e16 * rng.uniform(-1, 1, x.shape) * 0.9)
        rad = np.abs(x16 - x)
        loc = L.layernorm_local_bound(x, w, b, eps, "fp16", radius=rad).value
        w16, b16 = r16(w), r16(b)
        check(np.abs(r16(_ln32(x16, w16, b16, eps, 2)) - _ln_ref(x16, w16, b16, eps)),
              np.where(np.isfinite(loc), loc, np.inf), ("ln radius", n))


# ---------------------------------------------------------------------------------------------
# Softmax, log-softmax
# ---------------------------------------------------------------------------------------------
def _softmax32(x, log=False):
    f = np.float32
    x32 = x.astype(f)
    d = (x32 - x32.max(-1, keepdims=True)).astype(f)
    e = np.exp(d).astype(f)
    S = e.sum(-1, keepdims=True, dtype=f)
    if log:
        return (d - np.log(S)).astype(np.float64)
    return (e * (f(1) / S)).astype(np.float64)


def _softmax64(x):
    d = x - x.max(-1, keepdims=True)
    return np.exp(d) / np.exp(d).sum(-1, keepdims=True), d - np.log(np.exp(d).sum(-1, keepdims=True))


@pytest.mark.torch_kernels
@pytest.mark.parametrize("n", [10, 100, 1000])
def test_softmax_and_log_softmax_local_bounds(n):
    rng = np.random.default_rng(8 + n)
    torch = pytest.importorskip("torch")
    for scale in (0.1, 1.0, 10.0, 100.0, 3000.0):
        x = r16(rng.standard_normal((200 if n < 1000 else 40, n)) * scale + rng.choice([0, 500]))
        y, ly = _softmax64(x)
        sb = L.softmax_local_bound(x, "fp16").value
        lb = L.log_softmax_local_bound(x, "fp16").value
        slack = 1e-15 * (1 + np.abs(ly))  # float64 reference error
        check(np.abs(r16(_softmax32(x)) - y), sb, ("softmax", n, scale))
        check(np.abs(r16(_softmax32(x, log=True)) - ly) - slack, lb, ("log_softmax", n, scale))
        xt = torch.tensor(x).half()
        check(np.abs(torch.softmax(xt, -1).double().numpy() - y), sb, ("softmax torch", n, scale))
        check(np.abs(torch.log_softmax(xt, -1).double().numpy() - ly) - slack, lb, ("log_softmax torch", n, scale))


def test_softmax_propagation_and_radius_are_rigorous():
    rng = np.random.default_rng(9)
    for n, scale, rel in [(10, 1, 1e-3), (100, 5, 1e-2), (1000, 1, 0.1), (10, 20, 1.0)]:
        x = rng.standard_normal((100, n)) * scale
        y, ly = _softmax64(x)
        e = rel * rng.uniform(0, 1, x.shape)
        ps = L.propagate_softmax(e, y).value
        pl = L.propagate_log_softmax(e).value
        for _ in range(5):
            xh = x + e * rng.uniform(-1, 1, x.shape)
            yh, lyh = _softmax64(xh)
            check(np.abs(yh - y) - 1e-15, ps, "softmax prop")
            check(np.abs(lyh - ly) - 1e-13 * (1 + np.abs(ly)), pl, "log_softmax prop")
        x16 = r16(x + e * rng.uniform(-1, 1, x.shape))
        rad = np.abs(x16 - x)
        y16, ly16 = _softmax64(x16)
        check(np.abs(r16(_softmax32(x16)) - y16), L.softmax_local_bound(x, radius=rad).value, "softmax radius")
        check(np.abs(r16(_softmax32(x16, log=True)) - ly16) - 1e-13 * (1 + np.abs(ly16)),
              L.log_softmax_local_bound(x, radius=rad).value, "log_softmax radius")


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------
def _attention_emulated(q, k, v, scale, scale_mode):
    f = np.float32
    kT = np.swapaxes(k, -1, -2)
    if scale_mode == "qk":
        rs = f(math.sqrt(scale))
        q = r16((q.astype(f) * rs).astype(np.float64))
        kT = r16((kT.astype(f) * rs).astype(np.float64))
        Z = r16(np.matmul(q.astype(f), kT.astype(f)).astype(np.float64))
    else:
        S = r16(np.matmul(q.astype(f), kT.astype(f)).astype(np.float64))
        Z = r16((S.astype(f) * f(scale)).astype(np.float64))
    P = r16(_softmax32(Z))
    return r16(np.matmul(P.astype(f), v.astype(f)).astype(np.float64))


@pytest.mark.parametrize("scale_mode", ["scores", "qk"])
def test_attention_bound(scale_mode):
    rng = np.random.default_rng(10)
    for L_, d, spread in [(8, 16, 1.0), (32, 64, 3.0), (64, 32, 0.3)]:
        q32, k32, v32 = (rng.standard_normal((4, L_, d)) * spread for _ in range(3))
        scale = 1 / math.sqrt(d)
        q, k, v = r16(q32), r16(k32), r16(v32)
        out = _attention_emulated(q, k, v, scale, scale_mode)

        def exact(q_, k_, v_, scale=scale):
            Z = scale * q_ @ np.swapaxes(k_, -1, -2)
            return _softmax64(Z)[0] @ v_

        b = L.attention_bound(q, k, v, "fp16", scale=scale, scale_mode=scale_mode)
        worst = check(np.abs(out - exact(q, k, v)) - 1e-14, b.value, ("attn", L_, d))
        # inputs given in fp32: rounding them is an input perturbation
        e = [B.rounding_error_bound(a, "fp16") for a in (q32, k32, v32)]
        b2 = L.attention_bound(q32, k32, v32, "fp16", scale=scale, scale_mode=scale_mode, e_q=e[0], e_k=e[1], e_v=e[2])
        check(np.abs(out - exact(q32, k32, v32)) - 1e-14, b2.value, ("attn fp32 in", L_, d))
        pb = L.attention_bound(q, k, v, "fp16", scale=scale, scale_mode=scale_mode, method="probabilistic",
                               failure_prob=1e-3)
        assert pb.kind == "probabilistic" and 0 < pb.failure_probability <= 2e-3 * (1 + 1e-9)
        assert worst > 1e-3  # not absurdly loose


# ---------------------------------------------------------------------------------------------
# End to end: a small MLP and a small CNN
# ---------------------------------------------------------------------------------------------
def _mlp(rng, sizes):
    Ws = [rng.standard_normal((o, i)) / math.sqrt(i) for i, o in itertools.pairwise(sizes)]
    bs = [rng.standard_normal(o) * 0.1 for o in sizes[1:]]
    return Ws, bs


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
def test_mlp_bound_end_to_end(act):
    """fp16 MLP (weights and input rounded from fp32, fp32-accumulate matmuls, bias added with
    its own rounding, fp32-opmath activations): the rigorous propagated bound holds on every
    input; the first-order bound is close to it (measured: within 25% for ReLU, whose kinks the
    first-order slope ignores, 6% for GELU, 4% for tanh)."""
    rng = np.random.default_rng(11)
    sizes = [64, 128, 128, 10]
    Ws, bs = _mlp(rng, sizes)
    x = rng.standard_normal((300, sizes[0]))
    # emulated fp16 network
    f = np.float32
    a = r16(x)
    for li, (W, b) in enumerate(zip(Ws, bs)):
        h = r16(np.matmul(a.astype(f), r16(W).T.astype(f)).astype(np.float64))
        z = r16(h + r16(b))
        a = z if li == len(Ws) - 1 else r16(act32(act, z).astype(np.float64))
    out16 = a
    # reference and bounds
    a_ref = x
    e = B.rounding_error_bound(x, "fp16")
    e_fo = e
    for li, (W, b) in enumerate(zip(Ws, bs)):
        h_ref = a_ref @ W.T
        e_lin = B.matvec_bound(W, a_ref, "fp16", "fp32-accumulate", x_radius=e, round_weights=True)
        e_bias = B.rounding_error_bound(b, "fp16")
        z_ref = h_ref + b
        e_pre = B.propagate_add(e_lin, e_bias)
        e_z = B.propagate_add(e_pre, local=L.add_local_bound(h_ref, b, "fp16", radius=e_pre))
        # first order: local bounds at the reference values, slopes at the points
        lin_fo = B.matvec_bound(W, a_ref, "fp16", "fp32-accumulate", round_weights=True)
        e_fo = B.propagate_add(B.propagate_linear(e_fo, W, lin_fo), e_bias, local=L.add_local_bound(h_ref, b, "fp16"))
        if li == len(Ws) - 1:
            e, a_ref = e_z, z_ref
            break
        slope = L.activation_slope(act, z_ref, radius=e_z)
        e = B.propagate_elementwise(e_z, slope, L.activation_local_bound(act, z_ref, "fp16", radius=e_z))
        e_fo = B.propagate_elementwise(e_fo, L.activation_slope(act, z_ref), L.activation_local_bound(act, z_ref, "fp16"))
        a_ref = L.activation(act, z_ref)
    err = np.abs(out16 - a_ref)
    check(err, e.value, ("mlp", act))
    ratio = np.asarray(e.value) / np.asarray(e_fo.value)
    assert np.all(ratio >= 1 - 1e-9) and np.all(ratio < 1.5) and np.median(ratio) < 1.1
    tight = float(np.median(np.max(e.value, -1) / np.max(err, -1)))
    print(f"\nMLP {act}: deterministic bound / measured (median over inputs, max-norms) = {tight:.0f}")
    assert tight < 2000  # worst case over signs: |W| e vs the ~sqrt(n)-smaller typical |W e|


def _conv_emulated(x16, w16, stride, padding, groups):
    """fp32-accumulate convolution by explicit shifted-slice loops (exact fp16 products)."""
    f = np.float32
    N, _, H, W = x16.shape
    O, Cg, kh, kw = w16.shape
    xp = np.pad(x16, ((0, 0), (0, 0), (padding, padding), (padding, padding))).astype(f)
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    out = np.zeros((N, O, Ho, Wo), f)
    og = O // groups
    for o in range(O):
        g = o // og
        for ci in range(Cg):
            for p in range(kh):
                for q in range(kw):
                    patch = xp[:, g * Cg + ci, p:p + stride * Ho:stride, q:q + stride * Wo:stride]
                    out[:, o] = (out[:, o] + patch * f(w16[o, ci, p, q])).astype(f)
    return out.astype(np.float64)


def _conv_exact(x, w, stride, padding, groups):
    """float64 conv by the same loops; products of fp16 numbers are exact, sums nearly."""
    N, _, H, W = x.shape
    O, Cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    out = np.zeros((N, O, Ho, Wo))
    og = O // groups
    for o in range(O):
        g = o // og
        for ci in range(Cg):
            for p in range(kh):
                for q in range(kw):
                    out[:, o] += xp[:, g * Cg + ci, p:p + stride * Ho:stride, q:q + stride * Wo:stride] * w[o, ci, p, q]
    return out


@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_conv2d_bound_and_cnn(stride, padding, groups):
    rng = np.random.default_rng(12)
    x32 = rng.standard_normal((6, 4, 9, 9)) * rng.choice([1e-3, 1, 100], (6, 1, 1, 1))
    w32 = rng.standard_normal((6, 4 // groups, 3, 3))
    x16, w16 = r16(x32), r16(w32)
    assert np.allclose(B.conv2d_float64(x16, w16, stride, padding, 1, groups), _conv_exact(x16, w16, stride, padding, groups),
                       rtol=1e-13, atol=1e-300)
    y = r16(_conv_emulated(x16, w16, stride, padding, groups))
    ref = _conv_exact(x16, w16, stride, padding, groups)
    A = _conv_exact(np.abs(x16), np.abs(w16), stride, padding, groups)
    slack = 40 * 2.0**-53 * A  # float64 summation error of the reference
    bd = B.conv2d_bound(w16, x16, "fp16", "fp32-accumulate", stride=stride, padding=padding, groups=groups)
    check(np.abs(y - ref) - slack, bd.value, "conv")
    assert np.max((np.abs(y - ref) - slack) / bd.value) > 0.2
    # fp32 inputs and weights rounded; then ReLU and a linear head, rigorous propagation
    ref32 = _conv_exact(x32, w32, stride, padding, groups)
    e1 = B.conv2d_bound(w32, x32, "fp16", "fp32-accumulate", stride=stride, padding=padding, groups=groups,
                        round_weights=True, round_inputs=True)
    check(np.abs(y - ref32) - 40 * 2.0**-53 * _conv_exact(np.abs(x32), np.abs(w32), stride, padding, groups),
          e1.value, "conv fp32 in")
    a16, a_ref = np.maximum(y, 0), np.maximum(ref32, 0)
    e2 = B.propagate_elementwise(e1, L.activation_slope("relu", ref32, radius=e1))
    flat16, flat_ref, e_flat = a16.reshape(6, -1), a_ref.reshape(6, -1), np.asarray(e2.value).reshape(6, -1)
    Wh = rng.standard_normal((5, flat16.shape[1])) * 0.1
    out16 = r16(np.matmul(flat16.astype(np.float32), r16(Wh).T.astype(np.float32)).astype(np.float64))
    eo = B.matvec_bound(Wh, flat_ref, "fp16", "fp32-accumulate", x_radius=e_flat, round_weights=True)
    check(np.abs(out16 - flat_ref @ Wh.T) - 1e-12 * np.abs(flat_ref) @ np.abs(Wh.T), eo.value, "cnn head")
    # propagate_conv2d equals conv with |w| applied to the error
    pc = B.propagate_conv2d(np.ones_like(x16), w16, stride=stride, padding=padding, groups=groups).value
    assert np.allclose(pc, _conv_exact(np.ones_like(x16), np.abs(w16), stride, padding, groups), rtol=1e-12)


def test_conv2d_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 6, 11, 10))
    w = rng.standard_normal((9, 2, 3, 2))
    for stride, padding, dilation in [(1, 0, 1), (2, 1, 1), ((2, 1), (0, 2), (2, 1))]:
        ours = B.conv2d_float64(x, w, stride, padding, dilation, groups=3)
        theirs = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), None, stride, padding, dilation, 3).numpy()
        assert np.allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="supported activations are"):
        L.activation("swishy", 1.0)
    with pytest.raises(ValueError, match="valid modes are"):
        L.attention_bound(np.ones((1, 2, 2)), np.ones((1, 2, 2)), np.ones((1, 2, 2)), scale_mode="fused")

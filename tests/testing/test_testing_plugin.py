"""fpanalysis.testing.plugin, run inside pytester sessions.

Plugin autoloading is switched off in the inner sessions and the plugin is loaded with
``-p fpanalysis.testing.plugin``, so these tests mean the same thing whether or not the
``pytest11`` entry point is installed (with it, the module would otherwise be registered
twice under two names).
"""
from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest

pytest_plugins = ["pytester"]

# With the pytest11 entry point installed, the outer session has imported the plugin already,
# and pytest warns that it cannot rewrite its asserts: harmless here.
PLUGIN = ("-p", "fpanalysis.testing.plugin", "-W", "ignore::pytest.PytestAssertRewriteWarning")


@pytest.fixture
def pt(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return pytester


def _numbers(stdout: list[str], tag: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in stdout:
        m = re.search(rf"{tag} (\S+) (\[.*\])", line)
        if m:
            out[m.group(1)] = [int(v) for v in m.group(2).strip("[]").split(",")]
    return out


RNG_TESTS = """
def test_a(fp_rng, request):
    print("DRAW", request.node.nodeid, list(map(int, fp_rng.integers(0, 10**9, 4))))

def test_b(fp_rng, request):
    print("DRAW", request.node.nodeid, list(map(int, fp_rng.integers(0, 10**9, 4))))
"""


def test_fp_rng_is_seeded_from_the_option_and_the_node_id(pt: pytest.Pytester) -> None:
    pt.makepyfile(test_rng=RNG_TESTS)
    r1 = pt.runpytest(*PLUGIN, "--fp-seed=7", "-s")
    r1.assert_outcomes(passed=2)
    d1 = _numbers(r1.outlines, "DRAW")
    assert len(d1) == 2
    for nodeid, nums in d1.items():  # the documented derivation, recomputed here
        ref = np.random.default_rng([7, zlib.crc32(nodeid.encode())]).integers(0, 10**9, 4)
        assert nums == ref.tolist()
    a, b = d1.values()
    assert a != b  # each test has its own stream
    r2 = pt.runpytest(*PLUGIN, "--fp-seed=7", "-s", "-k", "test_b")  # selection does not shift streams
    assert _numbers(r2.outlines, "DRAW") == {k: v for k, v in d1.items() if k.endswith("test_b")}
    r3 = pt.runpytest(*PLUGIN, "--fp-seed=8", "-s")
    assert _numbers(r3.outlines, "DRAW").keys() == d1.keys() and _numbers(r3.outlines, "DRAW") != d1
    r0 = pt.runpytest(*PLUGIN, "-s")  # default seed 0
    for nodeid, nums in _numbers(r0.outlines, "DRAW").items():
        assert nums == np.random.default_rng([0, zlib.crc32(nodeid.encode())]).integers(0, 10**9, 4).tolist()


def test_seed_in_header_and_in_failure_reports(pt: pytest.Pytester) -> None:
    pt.makepyfile(test_fail="def test_x(fp_rng):\n    assert fp_rng.random() > 2\n\ndef test_y():\n    assert False\n")
    r = pt.runpytest(*PLUGIN, "--fp-seed=1234")
    r.assert_outcomes(failed=2)
    r.stdout.fnmatch_lines(["fpanalysis: fp_rng seed 1234 (--fp-seed)"])
    text = r.stdout.str()
    assert text.count("rerun with --fp-seed=1234") == 1  # only test_x uses fp_rng
    r2 = pt.runpytest(*PLUGIN, "--fp-seed=random")
    seed = re.search(r"fp_rng seed (\d+) \(--fp-seed\)", r2.stdout.str())
    assert seed and f"rerun with --fp-seed={seed.group(1)}" in r2.stdout.str()


def test_bad_seed_is_a_usage_error(pt: pytest.Pytester) -> None:
    pt.makepyfile(test_ok="def test_ok():\n    pass\n")
    r = pt.runpytest(*PLUGIN, "--fp-seed=abc")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--fp-seed must be a non-negative integer or 'random', got 'abc'*"])


FORMAT_TESTS = """
import pytest

P = {"fp16": 11, "bf16": 8, "fp8_e5m2": 3, "fp32": 24}

@pytest.mark.formats("fp16", "bf16")
def test_marked(fp_format):
    assert fp_format.p == P[fp_format.name]

def test_unmarked(fp_format):
    assert fp_format.name in ("fp16", "bf16", "fp8_e5m2")

@pytest.fixture
def unit(fp_format):
    return fp_format.u

@pytest.mark.formats(["fp8_e5m2", "fp32"])
def test_through_a_fixture(unit, fp_format):
    assert unit == 2.0 ** -P[fp_format.name]

@pytest.mark.formats("fp32")
class TestClass:
    def test_in_class(self, fp_format):
        assert fp_format.name == "fp32"
"""


def test_formats_marker_parametrises_fp_format(pt: pytest.Pytester) -> None:
    pt.makepyfile(test_plugin_demo_formats=FORMAT_TESTS)
    r = pt.runpytest(*PLUGIN, "-v", "--strict-markers")
    r.assert_outcomes(passed=6)
    r.stdout.fnmatch_lines_random([
        "*test_marked?fp16? PASSED*",
        "*test_marked?bf16? PASSED*",
        "*test_unmarked?fp16? PASSED*",
        "*test_through_a_fixture?fp8_e5m2? PASSED*",
        "*test_through_a_fixture?fp32? PASSED*",
        "*TestClass::test_in_class?fp32? PASSED*",
    ])


def test_fp_formats_option_sets_the_default(pt: pytest.Pytester) -> None:
    pt.makepyfile(test_plugin_demo_formats=FORMAT_TESTS)
    r = pt.runpytest(*PLUGIN, "-v", "--fp-formats=bf16, fp8_e5m2", "-k", "unmarked or marked")
    r.assert_outcomes(passed=4)  # test_unmarked twice, test_marked keeps its own two formats
    r.stdout.fnmatch_lines_random(["*test_unmarked?bf16? PASSED*", "*test_unmarked?fp8_e5m2? PASSED*",
                                   "*test_marked?fp16? PASSED*"])


def test_marker_is_registered(pt: pytest.Pytester) -> None:
    r = pt.runpytest(*PLUGIN, "--markers")
    assert r.ret == 0
    assert any(line.startswith("@pytest.mark.formats(*names): run the test once per listed fpanalysis format")
               for line in r.stdout.lines)


def test_unknown_format_names_the_valid_ones(pt: pytest.Pytester) -> None:
    pt.makepyfile(test_bad="""
import pytest

@pytest.mark.formats("fp16", "fp17")
def test_x(fp_format):
    pass
""")
    r = pt.runpytest(*PLUGIN)
    assert r.ret != 0
    out = r.stdout.str() + r.stderr.str()
    assert "test_bad.py::test_x: the formats marker: unknown format 'fp17'" in out
    assert "known formats are: fp16, bf16" in out


def test_marker_without_fixture_is_an_error(pt: pytest.Pytester) -> None:
    pt.makepyfile(test_bad="""
import pytest

@pytest.mark.formats("fp16")
def test_x():
    pass
""")
    r = pt.runpytest(*PLUGIN)
    assert r.ret != 0
    out = r.stdout.str() + r.stderr.str()
    assert "the formats marker parametrises the fp_format fixture, but the test does not use fp_format" in out


def test_fp_format_works_with_hypothesis(pt: pytest.Pytester) -> None:
    # fp_format is session-scoped (an immutable format), so @given accepts it without a
    # function-scoped-fixture health check error.
    pt.makepyfile(test_hyp="""
import pytest
from hypothesis import given, settings, strategies as st
from fpanalysis.testing.strategies import values

@pytest.mark.formats("fp16", "bf16")
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_values_round_trip(fp_format, data):
    from fpanalysis.rounding import round_to
    x = data.draw(values(fp_format, classes=("normal", "subnormal")))
    assert round_to(x, fp_format) == x
""")
    r = pt.runpytest("-W", "error", *PLUGIN, "-p", "hypothesis.extra.pytestplugin")  # later -W wins
    r.assert_outcomes(passed=2)


def test_plugin_import_is_cheap() -> None:
    code = (
        "import sys, fpanalysis.testing.plugin;"
        "heavy = [m for m in ('torch', 'numba', 'hypothesis', 'scipy', 'matplotlib', 'mpmath',"
        " 'fpanalysis.testing.assertions', 'fpanalysis.testing.strategies', 'fpanalysis._kernels.round')"
        " if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing the plugin pulled in: {out.stdout.strip()}"


def _entry_point_installed() -> bool:
    eps = importlib.metadata.entry_points(group="pytest11")
    return any(ep.value == "fpanalysis.testing.plugin" for ep in eps)


@pytest.mark.skipif(not _entry_point_installed(), reason="the pytest11 entry point is not installed (pip install -e .)")
def test_entry_point_loads_the_plugin(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile(test_ep="def test_x(fp_rng, fp_format):\n    assert fp_format.name == 'fp16'\n")
    r = pytester.runpytest()
    r.assert_outcomes(passed=1)

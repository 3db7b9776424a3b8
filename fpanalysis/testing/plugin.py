"""pytest plugin: a seeded generator, a format parameterisation and the ``formats`` marker.

Installed with fpanalysis (entry point ``pytest11``: ``fpanalysis = fpanalysis.testing.plugin``),
so it is active in every pytest run once fpanalysis is installed; load it explicitly with
``pytest -p fpanalysis.testing.plugin`` when it is not.  Importing it costs only numpy: the
assertions, strategies and numerical kernels load when a test uses them.

Fixtures
--------
``fp_rng``
    A ``numpy.random.Generator`` seeded from ``--fp-seed`` (default 0) and the test's node id,
    so every test has its own reproducible stream whatever the order or selection of tests.
    ``--fp-seed=random`` draws a fresh seed; the seed in use is printed in the header and,
    when a test using ``fp_rng`` fails, in its report.
``fp_format``
    The :class:`~fpanalysis.formats.FloatFormat` the test runs under.  A test that asks for it
    runs once per format listed in its ``formats`` marker, or once per format given with
    ``--fp-formats`` (default ``fp16``) when it has no marker.

Marker
------
``@pytest.mark.formats("fp16", "bf16")``
    Run the test under each listed format (a parameterisation of ``fp_format``, test ids
    ``[fp16]``, ``[bf16]``).  Names are those of :func:`fpanalysis.formats.get_format`; an
    unknown name is a collection error listing the valid ones.  The marker can decorate a test,
    a class or a module (``pytestmark``); the closest one wins.  ``fp_format`` is
    session-scoped (a format is immutable, and Hypothesis ``@given`` tests may use it), so
    pytest groups the tests that use it by format.

Example (a test module of yours)::

    import pytest
    from fpanalysis.rounding import round_to

    @pytest.mark.formats("fp16", "bf16")
    def test_rounding_is_idempotent(fp_format, fp_rng):
        x = round_to(fp_rng.normal(size=100), fp_format)
        assert (round_to(x, fp_format) == x).all()
"""

from __future__ import annotations

import secrets
import zlib
from typing import Any

import numpy as np
import pytest

__all__ = ["DEFAULT_FORMATS", "DEFAULT_SEED", "fp_format", "fp_rng"]

DEFAULT_SEED = 0
DEFAULT_FORMATS = ("fp16",)
_MARKER_HELP = (
    "formats(*names): run the test once per listed fpanalysis format "
    "(parametrises the fp_format fixture), e.g. @pytest.mark.formats('fp16', 'bf16')"
)
_SEED_KEY = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fpanalysis", "fpanalysis testing helpers")
    group.addoption(
        "--fp-seed",
        action="store",
        default=str(DEFAULT_SEED),
        help="seed of the fp_rng fixture: a non-negative integer (default 0) or 'random'",
    )
    group.addoption(
        "--fp-formats",
        action="store",
        default=None,
        help="comma-separated formats for tests that use fp_format without a formats marker "
        "(default: fp16)",
    )


def _parse_seed(text: str) -> int:
    if str(text).strip().lower() == "random":
        return secrets.randbits(32)
    try:
        seed = int(str(text).strip(), 0)
    except ValueError:
        raise pytest.UsageError(f"--fp-seed must be a non-negative integer or 'random', got {text!r}") from None
    if seed < 0:
        raise pytest.UsageError(f"--fp-seed must be a non-negative integer or 'random', got {text!r}")
    return seed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)
    config.stash[_SEED_KEY] = _parse_seed(config.getoption("--fp-seed", str(DEFAULT_SEED)))


def pytest_report_header(config: pytest.Config) -> str:
    return f"fpanalysis: fp_rng seed {config.stash.get(_SEED_KEY, DEFAULT_SEED)} (--fp-seed)"


def _marker_names(marker: Any) -> list[str]:
    names: list[str] = []
    for a in marker.args:
        if isinstance(a, (list, tuple)):
            names.extend(a)
        else:
            names.append(a)
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("formats")
    if "fp_format" not in metafunc.fixturenames:
        if marker is not None:
            pytest.fail(
                f"{metafunc.definition.nodeid}: the formats marker parametrises the fp_format fixture, "
                "but the test does not use fp_format; add it to the test's arguments",
                pytrace=False,
            )
        return
    if marker is not None:
        names = _marker_names(marker)
        where = "the formats marker"
        if not names:
            pytest.fail(f"{metafunc.definition.nodeid}: the formats marker needs at least one format name", pytrace=False)
    else:
        opt = metafunc.config.getoption("--fp-formats", None)
        names = [s.strip() for s in opt.split(",") if s.strip()] if opt else list(DEFAULT_FORMATS)
        where = "--fp-formats"
    from fpanalysis.formats import get_format  # cheap (numpy only), deferred anyway

    fmts, problem = [], None
    for n in names:
        try:
            fmts.append(get_format(n))
        except (ValueError, TypeError) as exc:
            problem = f"{metafunc.definition.nodeid}: {where}: {exc}"
            break
    if problem:  # outside the except block: one clean message, no chained traceback
        pytest.fail(problem, pytrace=False)
    metafunc.parametrize("fp_format", fmts, ids=[f.name for f in fmts], indirect=True)


@pytest.fixture(scope="session")
def fp_format(request: pytest.FixtureRequest) -> Any:
    """The format this test runs under (see the ``formats`` marker and ``--fp-formats``).

    Session-scoped (a format is immutable), so Hypothesis ``@given`` tests may use it.
    """
    param = getattr(request, "param", None)
    if param is None:  # requested in a way pytest_generate_tests could not see
        from fpanalysis.formats import get_format

        return get_format(DEFAULT_FORMATS[0])
    return param


@pytest.fixture
def fp_rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A ``numpy.random.Generator`` seeded from ``--fp-seed`` and this test's node id."""
    seed = request.config.stash.get(_SEED_KEY, DEFAULT_SEED)
    return np.random.default_rng([seed, zlib.crc32(request.node.nodeid.encode())])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    if report.failed and "fp_rng" in getattr(item, "fixturenames", ()):
        seed = item.config.stash.get(_SEED_KEY, DEFAULT_SEED)
        report.sections.append(("fpanalysis", f"fp_rng seed {seed}: rerun with --fp-seed={seed}"))
    return report

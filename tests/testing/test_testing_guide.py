"""docs/testing.md is executable: its ``python`` blocks, in order, form one test module that
must pass under pytest with the fpanalysis plugin, and every ``text message`` block must be the
message of the ``demo_*`` function defined last before it (numbers compared to 6 digits)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)

CHECK_MESSAGES = '''

import re as _re


def _normalise(text):
    return _re.sub(r"-?\\d+\\.\\d+(?:e[-+]?\\d+)?", lambda m: f"{float(m.group()):.6g}", text.strip())


def test_guide_messages_are_current():
    assert _GUIDE_MESSAGES, "the guide shows no message"
    for name, expected in _GUIDE_MESSAGES:
        with pytest.raises(AssertionError) as excinfo:
            globals()[name]()
        assert _normalise(str(excinfo.value)) == _normalise(expected), name
'''


def guide_blocks() -> list[tuple[str, str]]:
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(GUIDE.read_text(encoding="utf-8"))]


def guide_module() -> tuple[str, list[str]]:
    code: list[str] = []
    messages: list[tuple[str, str]] = []
    last_demo = None
    for info, body in guide_blocks():
        if info == "python":
            code.append(body)
            demos = re.findall(r"^def (demo_\w+)\(", body, re.MULTILINE)
            last_demo = demos[-1] if demos else last_demo
        elif info == "text message":
            assert last_demo, "a message block must follow a python block defining a demo_* function"
            messages.append((last_demo, body))
    source = "\n\n".join(code) + f"\n\n_GUIDE_MESSAGES = {messages!r}\n" + CHECK_MESSAGES
    tests = re.findall(r"^def (test_\w+)\(", source, re.MULTILINE)
    return source, tests


def test_guide_has_the_three_worked_examples() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    for title in ("## Example 1: a custom dot-product kernel", "## Example 2: a layer implementation",
                  "## Example 3: a small model"):
        assert title in text
    kinds = [info for info, _ in guide_blocks()]
    assert set(kinds) <= {"python", "text message"}, f"unexpected code block kinds: {set(kinds)}"


def test_guide_code_runs_and_passes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    source, tests = guide_module()
    assert len(tests) >= 8
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_guide=source)
    # (with the pytest11 entry point installed, the outer session has imported the plugin
    # already: pytest then warns that it cannot rewrite its asserts, which is harmless here)
    result = pytester.runpytest("-p", "fpanalysis.testing.plugin", "-p", "hypothesis.extra.pytestplugin",
                                "-v", "-W", "error", "-W", "ignore::pytest.PytestAssertRewriteWarning",
                                "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()[-6000:]
    assert "skipped" not in outcomes
    text = result.stdout.str()
    for name in tests:
        assert re.search(rf"::{name}(\[\w+\])? PASSED", text), f"{name} did not run and pass"

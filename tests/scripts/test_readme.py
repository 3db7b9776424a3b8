"""The README's Python examples run as doctests, and its two set-up commands are the ones CI uses."""
from __future__ import annotations

import doctest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_examples_run() -> None:
    res = doctest.testfile(str(ROOT / "README.md"), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0
    assert res.failed == 0


def test_readme_has_exactly_two_setup_commands_and_ci_uses_the_test_one() -> None:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0].strip() for b in setup.split("```bash")[1:]]
    assert len(blocks) == 2, blocks
    assert "fpanalysis check --demo" in blocks[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1] in ci

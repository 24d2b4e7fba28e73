"""docs/architecture.md stays true: its promise table names one existing module per promise and
only tests that exist, and the modules and tests it points at are really there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()
PACKAGE = ROOT / "src" / "dicomvault"
TESTS = ROOT / "tests"


def _promise_rows() -> list[list[str]]:
    rows = []
    for line in DOC.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and re.match(r"^\d+ ", cells[0]):
            rows.append(cells)
    return rows


def _test_defined(file: str | None, name: str) -> bool:
    files = [TESTS / file] if file else sorted(TESTS.glob("test_*.py"))
    return any(f.exists() and re.search(rf"^def {name}\(", f.read_text(), re.M) for f in files)


def test_every_promise_has_one_home_module_and_tests():
    rows = _promise_rows()
    assert [int(r[0].split()[0]) for r in rows] == list(range(1, 10))
    for number, home, tests in rows:
        modules = re.findall(r"`([a-z_]+/[a-z_]+\.py)", home)
        assert modules, f"promise {number} names no module"
        assert (PACKAGE / modules[0]).exists(), f"promise {number}: {modules[0]} does not exist"
        assert re.findall(r"`(test_[a-z0-9_]+\.py|::test_[a-z0-9_]+)", tests), f"promise {number} names no test"


def test_every_test_the_table_cites_exists():
    for number, _home, tests in _promise_rows():
        current = None
        for file, name in re.findall(r"`(?:(test_[a-z0-9_]+\.py))?(?:::(test_[a-z0-9_]+))?`", tests):
            current = file or current
            if file and not name:
                assert (TESTS / file).exists(), f"promise {number}: {file} does not exist"
            elif name:
                assert _test_defined(current, name), f"promise {number}: {current}::{name} does not exist"


def test_every_module_path_the_doc_names_exists():
    named = set(re.findall(r"`((?:[a-z_]+/)+[a-z_0-9]+\.py)", DOC))
    missing = sorted(p for p in named if not (PACKAGE / p).exists() and not (ROOT / p).exists())
    assert missing == []

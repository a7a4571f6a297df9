"""``python -O`` strips ``assert`` statements, so the product never relies on one: a broken
invariant raises a real error."""

from __future__ import annotations

import ast
from pathlib import Path

import nomarr_pipeline

PACKAGE = Path(nomarr_pipeline.__file__).parent


def asserts_in(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.Assert)]


def test_no_assert_statements_in_the_product() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40
    assert [found for path in files for found in asserts_in(path)] == []


def test_the_check_sees_an_assert(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("def f(x):\n    assert x is not None\n    return x\n")
    assert asserts_in(planted) == [f"{planted}:2"]

"""The rings of docs/ARCHITECTURE.md, checked on the source of every module (AST, not text search):

* the domain packages (``library/``, ``ml/``, ``calibration/``, ``tagging/``) are plain
  Python: no ``dagster`` import, and no import of the code location or the command line;
* nothing in ``defs/`` (the code location) imports ``cli/`` (the command line);
* ``store/`` is the only place that imports a database driver or holds a SQL or AQL statement.

Each rule is also run on a planted violation, so a checker that finds nothing is caught.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import nomarr_pipeline

PACKAGE = Path(nomarr_pipeline.__file__).parent
REPO = PACKAGE.parent
DOMAIN = ("library", "ml", "calibration", "tagging")
# The rings of nomarr_pipeline that import dagster.
ADAPTERS = ("cli", "defs", "definitions")
DB_DRIVERS = ("sqlite3", "psycopg", "psycopg2", "psycopg_pool", "asyncpg", "arango", "sqlalchemy", "pymongo")

# Statements as this project writes them: upper-case keywords, in the shapes a query takes.
QUERY = re.compile(
    r"""
      \bSELECT\b[\s\S]*?\bFROM\b
    | \bINSERT\s+(?:OR\s+[A-Z]+\s+)?INTO\b
    | \bUPDATE\s+\w+\s+SET\b
    | \bDELETE\s+FROM\b
    | \b(?:CREATE|DROP|ALTER)\s+(?:TABLE|INDEX|VIEW|TRIGGER)\b
    | \bPRAGMA\s+\w+
    | \bFOR\s+\w+\s+IN\s+[@\w]+[\s\S]*?\b(?:FILTER|SORT|COLLECT|RETURN|INSERT|UPDATE|REPLACE|REMOVE|UPSERT)\b
    """,
    re.VERBOSE,
)


def python_files(*roots: Path) -> list[Path]:
    return sorted(path for root in roots for path in root.rglob("*.py") if ".venv" not in path.parts)


def imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, dotted module name) of every import, relative ones resolved against nothing."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module
            # ``from nomarr_pipeline import defs`` imports the package ``nomarr_pipeline.defs``.
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


def string_values(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every string literal, with f-strings and ``+`` chains of literals joined (``{…}``
    parts read as ``x``), so a query assembled in pieces is seen whole."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr | ast.BinOp):
            text = _joined(node)
            if text is not None:
                yield node.lineno, text


def _joined(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_joined(part) or "x" for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _joined(node.left), _joined(node.right)
        if left is not None or right is not None:
            return (left or "x") + (right or "x")
    return None


def dagster_violations(path: Path) -> list[str]:
    return import_violations(path, ("dagster", *(f"nomarr_pipeline.{name}" for name in ADAPTERS)))


def import_violations(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path}:{line} imports {name}"
        for line, name in imports(ast.parse(path.read_text(), str(path)))
        if any(
            name == root or name.startswith(f"{root}.") or name.startswith(f"{root}_") for root in forbidden
        )
    ]


def store_violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = [
        f"{path}:{line} imports the database driver {name}"
        for line, name in imports(tree)
        if name.split(".")[0] in DB_DRIVERS
    ]
    found += [
        f"{path}:{line} holds a query: {match.group(0)[:60]!r}"
        for line, text in string_values(tree)
        if (match := QUERY.search(text))
    ]
    return found


def test_domain_packages_do_not_import_dagster() -> None:
    files = python_files(*(PACKAGE / name for name in DOMAIN))
    assert len(files) > 20
    assert [v for path in files for v in dagster_violations(path)] == []


def test_the_code_location_does_not_import_the_command_line() -> None:
    files = [*python_files(PACKAGE / "defs"), PACKAGE / "definitions.py"]
    assert len(files) > 10
    assert [v for path in files for v in import_violations(path, ("nomarr_pipeline.cli",))] == []


def test_only_the_store_speaks_to_a_database() -> None:
    # benchmarks/ may fill a store by raw SQL for speed: it measures, it is not the product.
    files = [
        path for path in python_files(PACKAGE, REPO / "scripts") if (PACKAGE / "store") not in path.parents
    ]
    assert len(files) > 40
    assert [v for path in files for v in store_violations(path)] == []


def test_the_store_is_what_the_checker_recognises() -> None:
    """Every engine module is flagged, so the patterns match the queries this project writes."""
    for engine in ("sqlite.py", "postgres.py", "sql.py", "arango.py"):
        assert store_violations(PACKAGE / "store" / engine), engine


PLANTED = {
    "import dagster as dg\n": "dagster",
    "from dagster import asset\n": "dagster",
    "from nomarr_pipeline.defs.resources import StoreResource\n": "adapter",
    "from nomarr_pipeline import defs\n": "adapter",
    "from nomarr_pipeline.cli.runner import UserError\n": "adapter",
    "import sqlite3\n": "store",
    "from psycopg import sql\n": "store",
    "from arango import ArangoClient\n": "store",
    'Q = "SELECT _key FROM library_files WHERE path = ?"\n': "store",
    'Q = f"SELECT {columns} FROM {table}"\n': "store",
    'Q = "UPDATE library_files " + "SET written_at = :now"\n': "store",
    'Q = """\n    INSERT OR REPLACE INTO calibration_state (_key) VALUES (?)\n"""\n': "store",
    'Q = "FOR d IN file_tags FILTER d.file_id == @id RETURN d"\n': "store",
    'Q = "PRAGMA journal_mode = WAL"\n': "store",
}


@pytest.mark.parametrize("source", sorted(PLANTED), ids=lambda s: s.split("\n")[0][:40])
def test_a_planted_violation_is_caught(tmp_path: Path, source: str) -> None:
    path = tmp_path / "planted.py"
    path.write_text(source)
    if PLANTED[source] == "store":
        assert store_violations(path)
        assert not dagster_violations(path)
    else:
        assert dagster_violations(path)
        assert not store_violations(path)


def test_prose_is_not_a_query(tmp_path: Path) -> None:
    path = tmp_path / "prose.py"
    path.write_text(
        '"""Select heads from the models folder; for each file in the library, update the tags and\n'
        "return the report. One grouped query (COLLECT ... AGGREGATE) per label; SELECT the\n"
        'fastest path."""\n'
        'HELP = "Insert into the library only files you own; delete from disk nothing."\n'
    )
    assert store_violations(path) == []


def _loaded_after_importing(modules: list[str], watched: set[str]) -> list[str]:
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {watched!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", f"import json\n{code}"], capture_output=True, text=True, check=True, cwd=REPO
    )
    return json.loads(out.stdout)


def test_importing_the_domain_loads_neither_dagster_nor_matplotlib() -> None:
    """Transitive imports too: every domain module stays importable without Dagster, and the
    packages themselves without matplotlib (only drawing a plot needs it)."""
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for name in DOMAIN
        for path in (PACKAGE / name).rglob("*.py")
    )
    assert _loaded_after_importing(modules, {"dagster"}) == []
    packages = [f"nomarr_pipeline.{name}" for name in DOMAIN]
    assert _loaded_after_importing(packages, {"dagster", "matplotlib"}) == []

"""The package boundaries: bot/ and engine/ meet only in storage/; the CLI is the one composition root."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPOSITION_ROOT = REPO / "engine" / "cli.py"


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_bot_never_imports_engine():
    offenders = [p for p in modules("bot") if "engine" in imported_packages(p)]
    assert offenders == []


def test_engine_imports_bot_only_in_the_cli():
    offenders = [p for p in modules("engine") if "bot" in imported_packages(p) and p != COMPOSITION_ROOT]
    assert offenders == []
    assert "bot" in imported_packages(COMPOSITION_ROOT)


def test_storage_imports_neither():
    offenders = [p for p in modules("storage") if {"bot", "engine"} & imported_packages(p)]
    assert offenders == []


def test_sql_lives_only_in_storage():
    keywords = ("INSERT INTO", "UPDATE jobs", "DELETE FROM", "CREATE TABLE")
    offenders = [p for pkg in ("bot", "engine") for p in modules(pkg)
                 if any(k in p.read_text() for k in keywords)]
    assert offenders == []

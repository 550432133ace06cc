"""The package boundaries, read from the imports.

`bot` and `engine` are peers that meet only in `storage`; `svibot` (the app) is the one package that
imports both; SQL lives only in `storage`; runtime code never imports test helpers; no module imports
itself back through a circle of imports.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIME = ("svibot", "bot", "engine", "storage")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module this file imports, anywhere in it (function-level imports included), fully qualified."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            # `from . import texts` names a module, not an attribute
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def top_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imports_of(path)}


def test_bot_never_imports_engine():
    assert [p for p in modules("bot") if "engine" in top_packages(p)] == []


def test_engine_never_imports_bot_or_the_app():
    assert [p for p in modules("engine") if {"bot", "svibot"} & top_packages(p)] == []


def test_storage_imports_no_other_package():
    assert [p for p in modules("storage") if {"bot", "engine", "svibot"} & top_packages(p)] == []


def test_only_the_app_imports_both_bots_and_engine():
    both = [p for pkg in RUNTIME for p in modules(pkg) if {"bot", "engine"} <= top_packages(p)]
    assert both and all(module_name(p).startswith("svibot") for p in both)


def test_runtime_code_never_imports_tests_or_bench():
    assert [p for pkg in RUNTIME for p in modules(pkg) if {"tests", "bench"} & top_packages(p)] == []


def test_sql_lives_only_in_storage():
    keywords = ("INSERT INTO", "UPDATE jobs", "DELETE FROM", "CREATE TABLE", "SELECT ")
    offenders = [p for pkg in ("svibot", "bot", "engine") for p in modules(pkg)
                 if any(k in p.read_text() for k in keywords)]
    assert offenders == []


def test_engine_memory_knows_nothing_of_the_models():
    """The planner and streamer work on plain modules; `engine.models` uses them, never the reverse."""
    assert [p for p in modules("engine/memory")
            if any(n.startswith(("engine.models", "engine.svi", "engine.worker")) for n in imports_of(p))] == []


def test_no_import_circles():
    paths = [p for pkg in RUNTIME for p in modules(pkg)]
    known = {module_name(p) for p in paths}
    graph = {}
    for p in paths:
        deps = set()
        for name in imports_of(p):
            # an import of a.b.c depends on the deepest project module it names
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module_name(p) and not module_name(p).startswith(name + ".") \
                    and not name.count(".") == 0:
                deps.add(name)
        graph[module_name(p)] = {d for d in deps if not (REPO / d.replace(".", "/") / "__init__.py").exists()}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in graph.get(node, ()):
                if dep == start:
                    return path + [start]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, path + [dep]))
        return None

    circles = {tuple(c) for m in graph if (c := cycle_from(m))}
    assert circles == set()


def test_every_package_says_what_it_holds():
    for init in [REPO / pkg / "__init__.py" for pkg in RUNTIME] + [REPO / "engine/models/__init__.py",
                                                                 REPO / "engine/memory/__init__.py"]:
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and 1 <= len(doc.strip().splitlines()) <= 3, init

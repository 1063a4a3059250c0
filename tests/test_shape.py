"""The shape that keeps ferry livable, read from the source with ``ast``: layers, module size, the public API."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import ferry

LIB = Path(ferry.__file__).resolve().parent
MAX_LINES = 450  # past this a module holds two concepts and splits
PROVIDERS_MAY_NOT_IMPORT = ("ferry.lifecycle", "ferry.sync", "ferry.download", "ferry.jobs", "ferry.follow",
                            "ferry.tasks", "ferry.handle", "ferry.bootstrap", "ferry.watch", "ferry.api")


def module_name(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x` imports module x
    return found


SOURCES = sorted(LIB.rglob("*.py"))


def test_the_check_sees_the_code():
    """Guard against a walker that finds nothing: it must see lifecycle importing providers."""
    assert "ferry.providers" in imports_of(LIB / "lifecycle.py")
    assert "ferry.sync" in imports_of(LIB / "tasks" / "files.py") or "ferry.handle" in imports_of(LIB / "tasks" / "files.py")
    assert len(SOURCES) > 30


@pytest.mark.parametrize("path", [p for p in SOURCES if "providers" in p.parts], ids=lambda p: module_name(p))
def test_providers_never_call_up(path):
    bad = sorted(m for m in imports_of(path) if any(m == up or m.startswith(up + ".") for up in PROVIDERS_MAY_NOT_IMPORT))
    assert not bad, f"{module_name(path)} imports {bad}: a provider only translates; the layers above call it"


@pytest.mark.parametrize("path", [p for p in SOURCES if "tasks" not in p.parts and p.name != "program.py"],
                         ids=lambda p: module_name(p))
def test_library_code_never_imports_the_tasks(path):
    bad = sorted(m for m in imports_of(path) if m.startswith("ferry.tasks"))
    assert not bad, f"{module_name(path)} imports {bad}: tasks present the library, never the other way round"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{module_name(path)} has {lines} lines: it holds two concepts; split it"


def test_the_public_api_is_listed_and_documented():
    names = set(ferry.__all__)
    assert names == set(ferry._EXPORTS), "__all__ and the lazy exports list the same names"
    assert {"launch", "box", "Box", "JobResult", "JobFailed", "Job", "SyncResult", "FerryError"} <= names
    assert names <= set(dir(ferry)), "dir(ferry) shows the whole API before anything is imported"
    for name in sorted(names):
        value = getattr(ferry, name)
        doc = inspect.getdoc(value)
        assert doc and doc.strip(), f"ferry.{name} has no docstring"
    # help(ferry.launch) shows the real signature, every keyword explicit
    params = inspect.signature(ferry.launch).parameters
    assert {"name", "provider", "gpu", "gpu_count", "spot"} <= set(params)
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())
    run = inspect.signature(ferry.Box.run).parameters
    assert {"warn", "detach", "env", "timeout"} <= set(run) and not any(p.kind is p.VAR_KEYWORD for p in run.values())

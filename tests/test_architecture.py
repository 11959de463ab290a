"""The package's structure: no import cycles, no module reaching into another's private names, small modules.

The import graph is read from the source (``ast``), with imports inside functions included, so a cycle hidden
behind a function-level import or a private helper taken from another module fails here. Private *modules*
(``fnn._epoch``, ``fnn._types``) may be imported; underscore names inside any other module may not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fnn"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(module: str, name: str | None) -> str:
    """The fnn module an ``import module`` / ``from module import name`` statement depends on."""
    if name is not None and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"  # ``from fnn import losses``: the submodule
    return module


def imports_of(source: str, here: str) -> tuple[set[str], list[str]]:
    """``(fnn modules imported anywhere in the source, cross-module private-name violations)``."""
    tree = ast.parse(source)
    deps: set[str] = set()
    bad: list[str] = []
    aliases: dict[str, str] = {}  # local name -> fnn module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "fnn" or alias.name.startswith("fnn."):
                    deps.add(alias.name)
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "fnn"
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                (node.module == "fnn" or node.module.startswith("fnn.")):
            for alias in node.names:
                target = _resolve(node.module, alias.name)
                deps.add(target)
                if target != node.module:
                    aliases[alias.asname or alias.name] = target
                elif _is_private(alias.name) and node.module != here:
                    bad.append(f"{here}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            owner = aliases[node.value.id]
            if _is_private(node.attr) and f"{owner}.{node.attr}" not in MODULES and owner != here:
                bad.append(f"{here}: {node.value.id}.{node.attr} (a private name of {owner})")
    deps.discard(here)
    return {d for d in deps if d in MODULES}, bad


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    graph, violations = {}, []
    for name, path in MODULES.items():
        graph[name], bad = imports_of(path.read_text(), name)
        violations += bad
    return graph, violations


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first = last), or None. The package ``fnn`` itself is left out: its
    ``__init__`` imports every module to re-export it, and modules import siblings, never ``fnn`` itself."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep == "fnn":
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node != "fnn" and node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph()[0])
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_another_modules_private_names():
    violations = import_graph()[1]
    assert not violations, "private names used across modules:\n" + "\n".join(violations)


def test_no_library_module_imports_the_package_itself():
    """A module that ``fnn/__init__`` imports must not import ``fnn`` (the package): that is a cycle through
    ``__init__``. Applications on top of the library that ``__init__`` does not import (the CLI) may."""
    graph = import_graph()[0]
    library, todo = set(), ["fnn"]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in library and dep != "fnn":
                library.add(dep)
                todo.append(dep)
    offenders = sorted(m for m in library if "fnn" in graph[m])
    assert not offenders, f"library modules importing the fnn package itself: {offenders}"
    assert {"fnn.train", "fnn._epoch", "fnn.parallel"} <= library  # the walk reaches the core


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small_and_says_what_it_is(name):
    path = MODULES[name]
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES})"
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and doc.strip().splitlines()[0].strip(), f"{path.name} has no docstring saying what it is"


# --- the checker itself must be able to fail ------------------------------------------------------------

def test_the_checker_sees_function_level_cycles_and_private_imports():
    graph = {"fnn.a": {"fnn.b"}, "fnn.b": {"fnn.c"}, "fnn.c": {"fnn.a"}}
    assert find_cycle(graph) == ["fnn.a", "fnn.b", "fnn.c", "fnn.a"]
    assert find_cycle({"fnn.a": {"fnn.b"}, "fnn.b": set()}) is None
    source = (
        "from fnn import losses as L\n"
        "def f():\n"
        "    from fnn.train import _step\n"
        "    import fnn.backprop as bp\n"
        "    return bp._prepare, L._n, _step\n"
    )
    deps, bad = imports_of(source, "fnn.example")
    assert {"fnn.losses", "fnn.train", "fnn.backprop"} <= deps
    assert any("from fnn.train import _step" in b for b in bad)
    assert any("bp._prepare" in b for b in bad)
    assert any("L._n" in b for b in bad)
    # private modules are fine
    assert imports_of("from fnn import _epoch\nfrom fnn._types import Array\n", "fnn.train")[1] == []

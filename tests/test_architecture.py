"""The rules ARCHITECTURE.md states, checked on the source text (nothing is imported or run).

* **No import cycles between files** of ``src/forwardonly``, read statically from the syntax tree.
  Imports inside functions count too (a lazy import hides a cycle from start-up but not from the
  reader), and so do ``TYPE_CHECKING`` blocks. An edge goes from a file to the file it names:
  ``from . import native`` names ``perturb/native.py``; ``from ..tasks import get_task`` names
  ``tasks/__init__.py`` (the package's facade). A module's own enclosing packages are not edges:
  Python runs them before the module, whatever it imports.
* **Sizes**: no file over :data:`MAX_FILE_LINES` lines, no function (or method) over
  :data:`MAX_FUNCTION_LINES` lines from its ``def`` to its last line, outside :data:`ALLOWED`, where
  every entry says why; an entry that no longer exceeds the limit fails too, so the list only shrinks.
* **Private optimizer internals stay private**: outside ``forwardonly.optim``, in ``src`` and in
  ``benchmarks/``, no import of a private module or name below ``forwardonly.optim`` (``_fused``,
  ``_check``), and no ``_name`` attribute read through a module or object imported from it. The tests
  of the optimizer package itself may reach inside it and are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "forwardonly"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80

# Explicit exceptions: "path" (a file), "path::function" (a function of it) or "dir/" (everything below it).
ALLOWED: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` reads from, relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if module not in MODULES or MODULES[module].name != "__init__.py":
        package = package[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _imports(module: str, tree: ast.AST):
    """``(node, target, names)`` for every import in ``tree``: the module named and the names taken from it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            yield node, _absolute(module, node), [a.name for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over ``src/forwardonly`` (see the module docstring for what is an edge)."""
    graph = {}
    for module, path in MODULES.items():
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        edges = set()
        for _, target, names in _imports(module, ast.parse(path.read_text())):
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            edges.update(submodules)
            if target in MODULES and target not in ancestors and (not names or len(submodules) < len(names)):
                edges.add(target)
        graph[module] = edges - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root, edges in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(edges)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _allowed(rel: str, function: str | None = None) -> bool:
    keys = [rel] if function is None else [rel, f"{rel}::{function}"]
    return any(k in ALLOWED for k in keys) or any(k.endswith("/") and rel.startswith(k) for k in ALLOWED)


def oversized() -> tuple[list[str], list[str]]:
    """Files and functions over the limits: ``(violations, allowed ones)``, each ``path[::function] (N lines)``."""
    bad, allowed = [], []
    for path in MODULES.values():
        rel = path.relative_to(SRC).as_posix()
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_FILE_LINES:
            (allowed if _allowed(rel) else bad).append(f"{rel} ({n} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    entry = f"{rel}::{node.name} ({n} lines, line {node.lineno})"
                    (allowed if _allowed(rel, node.name) else bad).append(entry)
    return bad, allowed


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path, module: str) -> list[str]:
    """Where ``path`` reaches a private name below ``forwardonly.optim`` (line and what it names)."""
    tree = ast.parse(path.read_text())
    found, aliases = [], set()
    for node, target, names in _imports(module, tree):
        if target != "forwardonly.optim" and not target.startswith("forwardonly.optim."):
            continue
        parts = target.split(".")[2:]
        if isinstance(node, ast.Import):
            named = parts
            aliases.update(a.asname for a in node.names if a.name == target and a.asname)
        else:
            named = parts + names
            aliases.update(a.asname or a.name for a in node.names)
        found += [f"line {node.lineno}: {target} ({n})" for n in named if _private(n)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in aliases:
                found.append(f"line {node.lineno}: {base.id}.{node.attr}")
            elif ast.unparse(base).startswith("forwardonly.optim"):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles between files (break each, e.g. by moving the shared piece into a module " \
                      "both import):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_cycle_finder_finds_a_cycle():
    """The checker itself finds a three-module cycle and only that."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_import_graph_reads_lazy_and_relative_imports():
    graph = import_graph()
    # a function-level import is an edge (objectives imports current_slices inside a function)
    assert "forwardonly.optim.perturb" in graph["forwardonly.tasks.objectives"]
    # "from . import native" names the submodule, not the enclosing package
    assert "forwardonly.optim.perturb.native" in graph["forwardonly.optim.perturb.seeds"]
    assert "forwardonly.optim.perturb" not in graph["forwardonly.optim.perturb.seeds"]


def test_sizes():
    bad, _ = oversized()
    assert not bad, f"over {MAX_FILE_LINES} lines per file or {MAX_FUNCTION_LINES} per function (split it, or " \
                    f"add it to ALLOWED with the reason):\n" + "\n".join(bad)


def test_size_exceptions_are_still_needed():
    _, allowed = oversized()
    needed = {e.split(" (")[0] for e in allowed}
    for key in ALLOWED:
        if key.endswith("/"):
            assert (SRC / key).is_dir(), f"ALLOWED names a folder that is gone: {key}"
            continue
        assert key in needed or any(n.startswith(key + "::") for n in needed), \
            f"ALLOWED lists {key}, which is within the limits now: remove the entry"


OUTSIDE_OPTIM = [p for m, p in MODULES.items() if not (m + ".").startswith("forwardonly.optim.")]
BENCHMARKS = sorted((ROOT / "benchmarks").rglob("*.py"))


@pytest.mark.parametrize("path", OUTSIDE_OPTIM + BENCHMARKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_private_optimizer_imports(path):
    module = _module_name(path) if path.is_relative_to(SRC) else path.stem
    found = private_uses(path, module)
    assert not found, f"{path.relative_to(ROOT)} uses private names of forwardonly.optim (make them public, or " \
                      f"ask the optimizer for what you need):\n" + "\n".join(found)


def test_private_use_checker(tmp_path):
    path = tmp_path / "user.py"
    path.write_text("from forwardonly.optim.perturb import fused as f, Directions\n"
                    "from forwardonly.optim.base import _check\n"
                    "import forwardonly.optim._old as old\n"
                    "def g():\n    return f._private, Directions._arena, f.public, forwardonly.optim.base._x\n")
    found = private_uses(path, "user")
    assert [line.split(":")[0] for line in found] == ["line 2", "line 3", "line 5", "line 5", "line 5"], found

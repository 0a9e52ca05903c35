"""dplib's two layers: the method never imports the experiments, and no module imports in a
circle (imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import dplib

PACKAGE = Path(dplib.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The dplib modules ``name`` imports anywhere in its source (functions included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    # a submodule always loads its packages first: those edges are no cycle
    return {m for m in found if m in MODULES and not name.startswith(m + ".") and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def test_the_method_never_imports_the_experiments():
    method = [m for m in MODULES if not m.startswith("dplib.experiments")]
    offenders = {
        m: sorted(i for i in GRAPH[m] if i.startswith("dplib.experiments")) for m in method
    }
    assert not {m: i for m, i in offenders.items() if i}, offenders
    assert len(method) >= 15 and any(m.startswith("dplib.experiments.") for m in MODULES)


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for imported in sorted(GRAPH[module]):
            if state.get(imported) == 1:
                return [*path[path.index(imported) :], imported]
            if imported not in state and (found := visit(imported, [*path, imported])):
                return found
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def test_no_import_circle_in_dplib():
    assert _cycle() is None, " -> ".join(_cycle())


def test_the_cycle_check_finds_a_circle():
    GRAPH["dplib.gates"].add("dplib.vi")  # vi imports attach, which imports gates
    try:
        assert _cycle() is not None
    finally:
        GRAPH["dplib.gates"].discard("dplib.vi")
    assert "dplib.experiments.cache" in GRAPH["dplib.experiments.stages"]

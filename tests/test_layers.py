"""The package's layers (DESIGN.md): each imports only those below it, and nothing loops.

Every ``import`` / ``from ... import`` of a ``worldmodels`` module counts, function-level
ones included (a lazy import that closes a loop is still a loop).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "worldmodels"

#: bottom to top; a module may import its own layer and the ones before it
LAYERS = [
    {"errors", "seeds", "utils", "config", "cli", "pretrained"},
    {"generative", "memory"},
    {"envs"},
    {"control"},
    {"data"},
    {"metrics"},
    {"run"},
    {"parallel"},
    {"stages"},
    {"benchmark"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name and target != "worldmodels":
                    found.add(target)
        edges[name] = found
    return edges


def _layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else name
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{name}: not in any layer of this test (add it)")


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(edges):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_loop():
    edges = _imports(_modules())
    # packages import their own submodules (re-exports); a submodule importing its
    # package's __init__ would close a loop and is caught here too
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_each_module_imports_only_its_layer_and_below():
    edges = _imports(_modules())
    wrong = [f"{a} -> {b}" for a, targets in sorted(edges.items()) for b in sorted(targets)
             if a != "worldmodels" and _layer(b) > _layer(a)]
    assert not wrong, "imports of a higher layer: " + "; ".join(wrong)


def test_the_checker_sees_a_loop():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None

"""The product's packages form layers: imports point down, never up, never round in a cycle.

The graph is read from the source (every ``import`` statement, also those inside functions,
leaving out ``if TYPE_CHECKING:`` blocks, which never run), so a lazy import that closes a cycle
counts too. docs/design.md, "Layers", explains what each layer owns.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Bottom to top: each product package and the packages it may import.
LAYERS: dict[str, frozenset[str]] = {
    "common": frozenset(),
    "schemas": frozenset({"common"}),
    "handshake": frozenset({"common", "schemas"}),
    "codec": frozenset({"common", "schemas"}),
    "fl": frozenset({"common", "schemas", "codec"}),
    "media": frozenset({"common", "schemas", "codec"}),
    "daemon": frozenset({"common", "schemas", "handshake", "codec", "fl", "media"}),
}
#: Beside the product: they may import it; the product never imports them.
LAB = ("simulations", "tests")
OURS = (*LAYERS, *LAB)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skipped


def _imported_names(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (``from a.b import c`` is a.b.c if that is a
    module, else a.b)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for imported in _imported_names(path):
            name = imported
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges[module].add(name)
    return edges


def _package(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def _cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _layering(edges: Mapping[str, set[str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {package: set() for package in OURS}
    for module, targets in edges.items():
        for target in targets:
            if _package(target) != _package(module):
                found[_package(module)].add(_package(target))
    return found


def test_product_packages_import_only_the_layers_below_them() -> None:
    edges = _graph(_modules())
    found = _layering(edges)
    print("layering found (package -> what it imports):")
    for package in OURS:
        print(f"  {package:11} -> {', '.join(sorted(found[package])) or '(nothing of ours)'}")
    upward = [
        f"{module} imports {target}"
        for module, targets in sorted(edges.items())
        if _package(module) in LAYERS
        for target in sorted(targets)
        if _package(target) != _package(module) and _package(target) not in LAYERS[_package(module)]
    ]
    assert upward == [], "imports against the layering:\n" + "\n".join(upward)


def test_the_product_never_imports_the_lab() -> None:
    edges = _graph(_modules())
    into_lab = [
        f"{module} imports {target}"
        for module, targets in sorted(edges.items())
        if _package(module) in LAYERS
        for target in sorted(targets)
        if _package(target) in LAB
    ]
    into_tests = [
        f"{module} imports {target}"
        for module, targets in sorted(edges.items())
        if _package(module) == "simulations"
        for target in sorted(targets)
        if _package(target) == "tests"
    ]
    assert into_lab + into_tests == []


def test_no_import_cycles_between_packages_or_product_modules() -> None:
    edges = _graph(_modules())
    packages = {package: targets for package, targets in _layering(edges).items()}
    package_cycles = _cycles(packages)
    product_edges = {
        module: {target for target in targets if _package(target) in LAYERS}
        for module, targets in edges.items()
        if _package(module) in LAYERS
    }
    module_cycles = _cycles(product_edges)
    assert package_cycles == [], f"package cycles: {package_cycles}"
    assert module_cycles == [], f"module cycles: {module_cycles}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The oracle for the checks above: a hand-made graph with one known cycle."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []

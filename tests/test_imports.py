"""The package's layers: each sub-package imports only from itself and the packages below it, no circle,
and module-level import chains stay short (lazy imports inside functions count for the layer rule)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "eager_cpp"
# Bottom to top (docs/architecture.md): what a package may import is below it in this list.
LAYERS = ("files", "answers", "core", "method", "engine", "runner", "evaluation", "cli", "lm_eval")
PRIVATE_TOP = {"_core", "_library"}  # the extension and its loader: beside the layers, any package uses them
MAX_CHAIN = 6  # imports in a row at module level (a module importing one that imports another: 2)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, lazy: bool) -> set[str]:
    """The package modules `path` imports (relative imports, resolved), at module level or also in functions."""
    here = module_name(path).split(".") if module_name(path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.ImportFrom) and node.level >= 1 and (top or lazy):
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if node.module:
                found.add(".".join(target))
            else:
                found.update(".".join(target + [a.name]) for a in node.names)
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text()), True)
    return {m for m in found if m and m != module_name(path)}


def import_graph(lazy: bool = True) -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"}
    return {m: {n for n in imports_of(p, lazy) if n in files} for m, p in files.items()}


def layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a package above the importer's (the rule this file guards)."""
    bad = []
    for m, targets in graph.items():
        mine = layer_of(m)
        for n in targets:
            theirs = layer_of(n)
            if n.split(".")[0] in PRIVATE_TOP or theirs is None:
                continue
            if mine is not None and theirs > mine:
                bad.append(f"{m} imports {n}")
    return sorted(bad)


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    memo: dict[str, list[str]] = {}

    def longest_from(m: str) -> list[str]:
        if m not in memo:
            tails = [longest_from(n) for n in graph[m]]
            memo[m] = [m] + max(tails, key=len, default=[])
        return memo[m]

    return max((longest_from(m) for m in graph), key=len)


def test_every_module_sits_in_a_layer():
    loose = [m for m in import_graph() if m and layer_of(m) is None and m not in PRIVATE_TOP]
    assert loose == []


def test_a_package_imports_only_from_the_packages_below_it():
    assert upward_imports(import_graph()) == []


def test_the_rule_catches_an_upward_import():
    graph = import_graph()
    graph["core.options"] = graph["core.options"] | {"method.budget"}  # what options once did for one name
    assert upward_imports(graph) == ["core.options imports method.budget"]


def test_no_module_imports_in_a_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            assert state.get(n) != 1, "import circle: " + " -> ".join(path[path.index(n):] + [n])
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_module_level_import_chains_are_short():
    chain = longest_chain(import_graph(lazy=False))
    assert len(chain) - 1 <= MAX_CHAIN, " -> ".join(chain)


def test_the_pure_layers_reach_neither_the_extension_nor_ray():
    """files, answers, core and method never lead, through any import, to _core, the engine or Ray."""
    graph = import_graph()
    for start in [m for m in graph if layer_of(m) is not None and layer_of(m) <= LAYERS.index("method")]:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        native = {m for m in seen if m in PRIVATE_TOP or m.split(".")[0] in ("engine", "runner")}
        assert not native, f"{start} reaches {sorted(native)}"

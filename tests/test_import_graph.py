"""The project's import graph, read from the source: no cycles, and stages depend downward only.

Every `import` and `from ... import` counts, at module level or inside a function (a lazy import
is still a dependency a reader has to follow), so a helper shared by two stages has to live in a
module below both rather than in one of them.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("curation", "generators", "exports", "personalization")
CORE = ("curation.core.workspace", "curation.core.records", "curation.core.config", "curation.core.dataset", "curation.core.errors")
STAGES = ("generators", "exports", "personalization", "curation.index.run", "curation.review.push", "curation.scores")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported_names(module: str, path: Path) -> set[str]:
    """Dotted names `module` imports anywhere in its file; `from a import b` gives `a.b` and `a`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (a name resolves to its longest module prefix)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        targets = {resolve(name) for name in _imported_names(module, path)}
        graph[module] = {t for t in targets if t is not None and t != module and t not in PACKAGES}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _is_under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") or module.startswith(p + "_") for p in prefixes)


def test_the_graph_is_read_from_real_imports():
    graph = import_graph()
    # a module-level import and a function-level one, as the code has them today
    assert "curation.core.records" in graph["curation.core.workspace"]
    assert "generators.msp" in graph["generators.run"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_core_modules_import_no_stage():
    graph = import_graph()
    for module in CORE:
        stages = sorted(t for t in graph[module] if _is_under(t, STAGES))
        assert stages == [], f"{module} imports stage modules {stages}"


def test_generators_do_not_import_scores():
    graph = import_graph()
    for module, targets in graph.items():
        if _is_under(module, ("generators",)):
            scores = sorted(t for t in targets if _is_under(t, ("curation.scores",)))
            assert scores == [], f"{module} imports {scores}"

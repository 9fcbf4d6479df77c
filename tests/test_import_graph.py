"""The project's import graph, read from the source: no cycles, and stages depend downward only.

Every `import` and `from ... import` counts, at module level or inside a function (a lazy import
is still a dependency a reader has to follow), so a helper shared by two stages has to live in a
module below both rather than in one of them.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("curation", "generators", "exports", "personalization")

CORE = ("curation.core",)
"""Floor 1: records, config, workspace, errors, ... Everything stands on it; it imports nothing above."""
SHARED = {"curation.models": CORE, "curation.scores": (*CORE, "curation.models")}
"""Floor 2: model code several stages load (M_SAL, the model registry) and the machine scores (index, review, evaluator)."""
STAGES = (
    "generators",
    "exports",
    "personalization",
    "curation.concepts",
    "curation.index",
    "curation.review",
    "curation.study",
    "curation.loop",
)
"""Floor 3: one package per stage; each imports the floors below and only the stages declared here."""
DECLARED = {
    "curation.concepts": ("generators",),  # photos are cut out by generators/segment.py
    "curation.index": ("curation.concepts",),  # the concepts' cut-outs as their own dataset
    "curation.review": ("curation.concepts",),  # the review page's reference cut-outs
    "curation.study": ("curation.review",),  # study tasks live in the review server's projects
    "curation.loop": ("generators",),  # top-up plans more of what generators make
    "exports": ("curation.loop",),  # the card reports the exported shape against the targets
    "personalization": ("generators",),  # the evaluator's MSP rows and held-out layouts
}
FACE = ("curation.cli", "curation.demo")
"""Floor 4: the command line and the demo, the only modules that may import every stage."""
NO_SCORES = ("generators",)
"""Generators never read machine scores: scores judge what generators made."""
ONLY_CLI_IMPORTS = {"personalization": ("curation.cli",)}


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
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> str | None:
    """The package (core, a shared one, a stage, or a face module) a module belongs to."""
    for name in (*CORE, *SHARED, *STAGES, *FACE):
        if _is_under(module, (name,)):
            return name
    return None


def allowed_targets(layer: str) -> tuple[str, ...]:
    if layer in CORE:
        return CORE
    if layer in SHARED:
        return (layer, *SHARED[layer])
    if layer in STAGES:
        return (layer, *CORE, *SHARED, *DECLARED.get(layer, ()))
    return (*CORE, *SHARED, *STAGES, *FACE)


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the layers, as 'a -> b: why'."""
    found = []
    for module, targets in sorted(graph.items()):
        layer = layer_of(module)
        if layer is None:
            if module not in PACKAGES:
                found.append(f"{module}: in no layer (add its package to tests/test_import_graph.py)")
            continue
        for target in sorted(targets):
            if not _is_under(target, allowed_targets(layer)):
                found.append(f"{module} -> {target}: {layer} may not import {layer_of(target)}")
            if _is_under(layer, NO_SCORES) and _is_under(target, ("curation.scores",)):
                found.append(f"{module} -> {target}: generators never import scores")
            for package, importers in ONLY_CLI_IMPORTS.items():
                if _is_under(target, (package,)) and layer != package and layer not in importers:
                    found.append(f"{module} -> {target}: only {', '.join(importers)} imports {package}")
    return sorted(set(found))


def test_the_graph_is_read_from_real_imports():
    graph = import_graph()
    # a module-level import and a function-level one, as the code has them today
    assert "curation.core.records" in graph["curation.core.workspace"]
    assert any(t.startswith("generators.msp") for t in graph["generators.candidates"])
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_the_packages_keep_their_layers():
    assert violations(import_graph()) == []


def test_a_wrong_way_import_is_caught():
    """The arrows the house had before it had floors, planted one at a time into today's graph."""
    planted = {
        "curation.core.workspace": "curation.index.run",  # core reaching up into a stage
        "curation.scores.clip": "generators.compose",  # a score importing a stage
        "curation.study.report": "personalization.evaluate",  # a stage importing the evaluator
        "curation.index.run": "personalization.segmenter_training",
        "generators.run": "personalization.metrics",
        "generators.repaint": "curation.scores.artifacts",  # a generator reading scores
        "curation.review.push": "curation.index.run",  # a stage importing an undeclared stage
        "exports.select": "curation.review.pull",
        "curation.models.subject_segmenter": "curation.scores.sas",  # floor 2 reaching sideways up
    }
    clean = import_graph()
    for source, target in planted.items():
        graph = {m: set(t) for m, t in clean.items()}
        graph.setdefault(source, set()).add(target)
        assert any(v.startswith(f"{source} -> {target}") for v in violations(graph)), (source, target)
    unplaced = {**clean, "curation.newstage.thing": {"curation.core.records"}}
    assert any(v.startswith("curation.newstage.thing: in no layer") for v in violations(unplaced))

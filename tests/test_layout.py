"""The rule-based layout planner: geometric invariants over many plans, balance, determinism,
and an import graph in which the layout stage and the LLM planner depend downward only."""

from __future__ import annotations

import ast
import itertools
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from curation.core.config import dump_config
from curation.core.errors import CurateError
from curation.core.records import Box, LayoutPlan
from curation.core.workspace import Workspace, atomic_write_text
from generators.geometry import check_layout, iou
from generators.layout import BACKGROUNDS, plan_layouts, size_prior

GENERATORS = Path(__file__).resolve().parents[1] / "generators"


def test_plans_respect_geometry_and_balance(concept_ws: Workspace) -> None:
    config = concept_ws.config.layout
    plans = plan_layouts(concept_ws, 120)
    assert len({p.plan_id for p in plans}) == 120
    counts = Counter(len(p.concepts) for p in plans)
    assert set(counts) == {2, 3, 4, 5} and max(counts.values()) - min(counts.values()) <= 1
    known = set(concept_ws.concepts())
    for plan in plans:
        assert check_layout(plan, config) is None
        assert len(set(plan.concepts)) == len(plan.concepts) and set(plan.concepts) <= known
        assert [b.concept_id for b in plan.boxes] == plan.concepts
        assert plan.background in BACKGROUNDS and plan.planner == "rules"
        for box in plan.boxes:
            assert 0 <= box.x and 0 <= box.y and box.x + box.w <= 128 and box.y + box.h <= 128
            assert box.w * box.h >= config.min_area * 128 * 128
            assert box.y + box.h >= 0.7 * 128, "objects stand on the floor band, not in the air"
        for a, b in itertools.combinations(plan.boxes, 2):
            assert iou(a, b) <= config.max_overlap
    usage = Counter(c for p in plans for c in p.concepts)
    assert set(usage) == known


def test_relative_sizes_follow_class_priors(concept_ws: Workspace) -> None:
    assert size_prior("person") > size_prior("mug") and size_prior("unheard-of thing") > 0
    together = [p for p in plan_layouts(concept_ws, 80) if {"astro", "mug"} <= set(p.concepts)]
    assert together, "some plans should hold both the person and the mug"
    for plan in together:
        boxes = {b.concept_id: b for b in plan.boxes}
        assert boxes["astro"].h > boxes["mug"].h


def test_plans_are_deterministic_and_prefix_stable(concept_ws: Workspace) -> None:
    first = plan_layouts(concept_ws, 40)
    text_40 = concept_ws.plans_path.read_text()
    more = plan_layouts(concept_ws, 60)
    assert more[:40] == first
    assert concept_ws.plans_path.read_text().startswith(text_40)
    assert len(concept_ws.plans()) == 60
    plan_layouts(concept_ws, 40)
    assert concept_ws.plans_path.read_text() == text_40


def test_counts_are_capped_by_available_concepts(concept_ws: Workspace) -> None:
    for concept_id in ("rocket", "clock"):
        shutil.rmtree(concept_ws.concepts_dir / concept_id)
    plans = plan_layouts(concept_ws, 30)
    assert Counter(len(p.concepts) for p in plans) == {2: 15, 3: 15}


def test_too_few_concepts_or_plans_is_an_error(concept_ws: Workspace) -> None:
    with pytest.raises(CurateError, match="at least 1"):
        plan_layouts(concept_ws, 0)
    for concept_id in ("rocket", "clock", "mug", "astro"):
        shutil.rmtree(concept_ws.concepts_dir / concept_id)
    with pytest.raises(CurateError, match="at least 2 concepts"):
        plan_layouts(concept_ws, 5)
    assert not concept_ws.plans_path.exists()


def test_impossible_geometry_is_an_error_not_a_bad_plan(concept_ws: Workspace) -> None:
    config = concept_ws.config
    config.layout = config.layout.model_copy(update={"min_area": 0.3})
    atomic_write_text(concept_ws.config_path, dump_config(config))
    with pytest.raises(CurateError, match=r"cannot fit \d concepts on the canvas"):
        plan_layouts(concept_ws, 4)


def test_check_layout_names_each_violation(concept_ws: Workspace) -> None:
    config = concept_ws.config.layout

    def plan(*boxes: Box, concepts: tuple[str, ...] = ("cat", "mug")) -> LayoutPlan:
        return LayoutPlan(
            concepts=list(concepts), background="x", boxes=list(boxes), width=128, height=128, planner="t"
        )

    ok = plan(Box(concept_id="cat", x=0, y=60, w=40, h=40), Box(concept_id="mug", x=60, y=60, w=40, h=40))
    assert check_layout(ok, config) is None
    outside = plan(
        Box(concept_id="cat", x=100, y=60, w=40, h=40), Box(concept_id="mug", x=0, y=0, w=40, h=40)
    )
    assert "leaves the canvas" in check_layout(outside, config)
    overlap = plan(Box(concept_id="cat", x=0, y=60, w=40, h=40), Box(concept_id="mug", x=5, y=60, w=40, h=40))
    assert "overlap" in check_layout(overlap, config)
    tiny = plan(Box(concept_id="cat", x=0, y=60, w=40, h=40), Box(concept_id="mug", x=60, y=60, w=5, h=5))
    assert "min_area" in check_layout(tiny, config)
    missing = plan(Box(concept_id="cat", x=0, y=60, w=40, h=40), concepts=("cat", "mug"))
    assert "exactly one box" in check_layout(missing, config)


def _imported_generators(path: Path) -> set[str]:
    """Every generators module a file imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("generators.")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("generators."):
                found.add(node.module)
            elif node.module == "generators":
                found |= {f"generators.{a.name}" for a in node.names}
    return found


def test_layout_and_llm_layout_import_without_a_cycle() -> None:
    graph = {f"generators.{p.stem}": _imported_generators(p) for p in GENERATORS.glob("*.py")}
    assert "generators.llm_layout" in graph["generators.layout"], "the graph is read from the real files"

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph.get(start, ()))
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
        return seen

    for module in ("generators.layout", "generators.llm_layout", "generators.geometry"):
        assert module not in reachable(module), f"{module} imports itself through a cycle"
    assert "generators.layout" not in reachable("generators.llm_layout")

    for module in sorted(graph):  # each alone, in a fresh interpreter: no import-order luck
        code = f"import {module}, sys; print('generators.layout' in sys.modules)"
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"{module}: {result.stderr}"
        if module in ("generators.llm_layout", "generators.geometry"):
            assert result.stdout.strip() == "False", f"{module} pulls in the layout stage"

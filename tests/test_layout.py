"""The rule-based layout planner: geometric invariants over many plans, balance, determinism."""

from __future__ import annotations

import itertools
import shutil
from collections import Counter

import pytest

from curation.config import dump_config
from curation.errors import CurateError
from curation.records import Box, LayoutPlan
from curation.workspace import Workspace, atomic_write_text
from generators.layout import BACKGROUNDS, check_layout, iou, plan_layouts, size_prior


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

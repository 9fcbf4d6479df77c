"""The geometric rules every layout plan meets, whoever planned it.

The rule-based planner (`generators.layout`) and the LLM planner (`generators.llm_layout`) both
check their plans here, so the rules live below both stages and neither imports the other for them.
"""

from __future__ import annotations

import itertools

from curation.core.config import LayoutConfig
from curation.core.records import Box, LayoutPlan


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two pixel boxes."""
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union else 0.0


def check_layout(plan: LayoutPlan, config: LayoutConfig) -> str | None:
    """Why a plan breaks the geometric rules, or None; the message is also fed back to the LLM."""
    if sorted(plan.concepts) != sorted({b.concept_id for b in plan.boxes}) or len(plan.boxes) != len(
        plan.concepts
    ):
        return "every concept needs exactly one box"
    min_area = config.min_area * plan.width * plan.height
    for box in plan.boxes:
        if box.w <= 0 or box.h <= 0:
            return f"box of {box.concept_id} needs a positive width and height"
        if box.x < 0 or box.y < 0 or box.x + box.w > plan.width or box.y + box.h > plan.height:
            return f"box of {box.concept_id} leaves the canvas"
        if box.w * box.h < min_area:
            return f"box of {box.concept_id} is smaller than min_area"
    for a, b in itertools.combinations(plan.boxes, 2):
        if iou(a, b) > config.max_overlap:
            return f"boxes of {a.concept_id} and {b.concept_id} overlap more than max_overlap"
    return None

"""Layout plans: which concepts go together, on what background, in which boxes.

The rule-based planner (offline default) follows the paper's recipe without an LLM: objects
stand on a ground line, their heights follow per-class size priors (the paper's relative-size
correction: a mug is not as tall as a person), boxes stay inside the canvas and overlap at most
`max_overlap` IoU. Plan k is drawn from its own random stream seeded by (seed, k, the concepts),
so asking for 60 plans after 40 keeps the first 40 byte-identical. Which concepts go together
and on which scene comes from `generators.compositions`; with `layout.planner = "llm"` the boxes
come from `generators.llm_layout`, and this planner is its per-plan fallback (handed down as a
function, so the LLM planner never imports this module). Both check plans with
`generators.geometry`.
"""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image

from curation.core.config import LayoutConfig
from curation.core.errors import CurateError
from curation.core.lock import writes
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Box, Concept, LayoutPlan
from curation.core.workspace import Workspace
from generators.compositions import BACKGROUNDS, CompositionPick, load_allowed_sets, pick_composition
from generators.geometry import check_layout
from generators.llm_layout import FALLBACK, plan_picks, plan_with_llm

__all__ = ["BACKGROUNDS", "plan_for_compositions", "plan_layouts", "plan_one", "size_prior"]

PLANNER = "rules"

SIZE_PRIORS: dict[str, float] = {
    "person": 1.0,
    "man": 1.0,
    "woman": 1.0,
    "child": 0.7,
    "astronaut": 1.0,
    "dog": 0.55,
    "cat": 0.45,
    "horse": 1.0,
    "bird": 0.25,
    "rabbit": 0.3,
    "rocket": 0.9,
    "plant": 0.5,
    "flower": 0.35,
    "vase": 0.4,
    "lamp": 0.6,
    "chair": 0.75,
    "backpack": 0.45,
    "bag": 0.4,
    "teddybear": 0.35,
    "toy": 0.3,
    "robot": 0.45,
    "shoe": 0.2,
    "mug": 0.22,
    "cup": 0.22,
    "bottle": 0.3,
    "bowl": 0.2,
    "teapot": 0.28,
    "clock": 0.3,
    "book": 0.25,
    "car": 0.6,
    "bicycle": 0.7,
    "ball": 0.2,
    "candle": 0.2,
    "sunglasses": 0.12,
    "hat": 0.2,
    "coin": 0.12,
    "shuttle": 0.45,
}
"""Relative real-world height by class noun; unknown nouns get DEFAULT_SIZE."""
DEFAULT_SIZE = 0.4

_GROUND = (0.78, 0.95)
"""The ground line (bottom of the front-most objects) lies in this band of the canvas height."""


def size_prior(class_noun: str) -> float:
    """Relative height for a class noun: exact match, then its last word, then the default."""
    noun = class_noun.lower().strip()
    return SIZE_PRIORS.get(noun, SIZE_PRIORS.get(noun.split(" ")[-1] if noun else "", DEFAULT_SIZE))


def concept_aspect(ws: Workspace, concept: Concept) -> float:
    """Median width/height of the concept's usable mask bounding boxes (1.0 when none)."""
    aspects = []
    for mask, flags in itertools.zip_longest(concept.masks, concept.mask_flags, fillvalue=[]):
        if flags or not mask:
            continue
        alpha = np.asarray(Image.open(ws.resolve(mask))) >= 128
        ys, xs = np.nonzero(alpha)
        if len(xs):
            aspects.append((xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1))
    return float(np.clip(np.median(aspects), 0.25, 4.0)) if aspects else 1.0


def _place(
    rng: np.random.Generator, sizes: list[float], aspects: list[float], config: LayoutConfig, shrink: float
) -> list[tuple[int, int, int, int]]:
    """One attempt: heights from priors, left-to-right order with random gaps, bottoms on the ground."""
    width, height = config.width, config.height
    tallest = height * rng.uniform(0.55, 0.8) * shrink
    heights = [tallest * s / max(sizes) for s in sizes]
    min_area = config.min_area * width * height
    for i, a in enumerate(aspects):  # small objects grow to min_area rather than vanish (scale correction)
        heights[i] = max(heights[i], float(np.sqrt(min_area / a)) * 1.05)
    heights = [min(h, width * 0.9 / a, height * 0.9) for h, a in zip(heights, aspects)]
    widths = [h * a for h, a in zip(heights, aspects)]
    free = width - sum(widths)
    if free < 0:
        overlap = -free / max(1, len(widths) - 1)
        gaps = [0.0] + [-overlap] * (len(widths) - 1) + [0.0]
    else:
        gaps = list(rng.dirichlet(np.ones(len(widths) + 1)) * free)
    ground = height * rng.uniform(*_GROUND)
    boxes, x = [], gaps[0]
    for w, h, gap in zip(widths, heights, gaps[1:]):
        bottom = min(height, ground - rng.uniform(0, 0.06) * height)
        boxes.append((round(x), round(bottom - h), round(w), round(h)))
        x += w + gap
    return boxes


def _fallback(n: int, aspects: list[float], config: LayoutConfig) -> list[tuple[int, int, int, int]]:
    """Equal cells side by side on the ground: always valid when the canvas can hold n boxes."""
    cell = config.width / n
    boxes = []
    for i, a in enumerate(aspects):
        w = cell * 0.9
        h = min(w / a, config.height * 0.8)
        w = min(w, h * a)
        h = max(h, config.min_area * config.width * config.height / w * 1.02)
        bottom = config.height * _GROUND[0]
        boxes.append((round(i * cell + (cell - w) / 2), round(max(0.0, bottom - h)), round(w), round(h)))
    return boxes


def plan_one(
    k: int,
    composition: CompositionPick,
    concepts: dict[str, Concept],
    aspects: dict[str, float],
    config: LayoutConfig,
    planner: str = PLANNER,
) -> LayoutPlan:
    """Boxes for plan k's composition; depends only on (config, k, the composition), never on other plans.

    Args:
        planner: Recorded in the plan; the LLM planner passes "rules-fallback" when it falls back.
    """
    rng = np.random.default_rng([config.seed, k, int(composition.key, 16) % 2**32, 1])
    chosen = list(composition.concepts)
    sizes = [size_prior(concepts[c].class_noun) for c in chosen]
    chosen_aspects = [aspects[c] for c in chosen]
    base = {
        "concepts": chosen,
        "background": composition.background,
        "width": config.width,
        "height": config.height,
        "planner": planner,
        "seed": k,
    }
    for attempt in range(40):
        raw = _place(rng, sizes, chosen_aspects, config, shrink=0.93**attempt)
        boxes = [Box(concept_id=c, x=x, y=y, w=w, h=h) for c, (x, y, w, h) in zip(chosen, raw)]
        plan = LayoutPlan(**base, boxes=boxes)
        if check_layout(plan, config) is None:
            return plan.with_id()
    raw = _fallback(len(chosen), chosen_aspects, config)
    boxes = [Box(concept_id=c, x=x, y=y, w=w, h=h) for c, (x, y, w, h) in zip(chosen, raw)]
    plan = LayoutPlan(**base, boxes=boxes)
    problem = check_layout(plan, config)
    if problem:
        raise CurateError(f"layout config cannot fit {len(chosen)} concepts on the canvas: {problem}")
    return plan.with_id()


@writes("plans")
def plan_layouts(ws: Workspace, n: int, progress: ProgressFn = no_progress) -> list[LayoutPlan]:
    """Write `n` layout plans to plans/plans.jsonl (replacing it atomically) and return them.

    Compositions come from `generators.compositions`; boxes from the planner that
    `layout.planner` names ("rules", or "llm" with the rules as per-plan fallback).

    Args:
        ws: The workspace; needs at least two ingested concepts.
        n: How many plans; plan k is the same whatever n is.
        progress: Called as progress("plan", done, n).

    Returns:
        The plans, each with its content-derived plan_id.
    """
    config = ws.config.layout
    if n < 1:
        raise CurateError(f"--n must be at least 1 (got {n})")
    if not 1 <= config.min_concepts <= config.max_concepts:
        raise CurateError("layout.min_concepts must be >= 1 and <= layout.max_concepts")
    concepts = ws.concepts()
    if len(concepts) < 2:
        raise CurateError(f"planning needs at least 2 concepts, the workspace has {len(concepts)}; add more")
    aspects = {c.concept_id: concept_aspect(ws, c) for c in concepts.values()}
    allowed = load_allowed_sets(ws, config, set(concepts))
    if config.planner == "llm":

        def fallback(k: int, composition: CompositionPick) -> LayoutPlan:
            return plan_one(k, composition, concepts, aspects, config, planner=FALLBACK)

        plans = plan_with_llm(ws, n, concepts, allowed, fallback, progress)
    else:
        plans = []
        for k in range(n):
            composition = pick_composition(k, list(concepts.values()), config, allowed)
            plans.append(plan_one(k, composition, concepts, aspects, config))
            progress("plan", k + 1, n)
    ws.write_plans(plans)
    return plans


def plan_for_compositions(
    ws: Workspace,
    picks: list[tuple[int, CompositionPick]],
    avoid: dict[tuple[str, ...], list[str]] | None = None,
    progress: ProgressFn = no_progress,
) -> list[LayoutPlan]:
    """Plans for compositions the caller chose (`curate topup`); plans.jsonl is left to the caller.

    Args:
        ws: The workspace; `layout.planner` picks the planner as in `plan_layouts`.
        picks: (plan number, composition) per plan; a new number gives a new layout.
        avoid: Review reasons per composition (sorted concept ids); the LLM planner puts them in
            its prompt, the rules planner has no use for them.
        progress: Called as progress("plan", done, total).
    """
    config = ws.config.layout
    concepts = ws.concepts()
    aspects = {c.concept_id: concept_aspect(ws, c) for c in concepts.values()}
    if config.planner == "llm":

        def fallback(k: int, composition: CompositionPick) -> LayoutPlan:
            return plan_one(k, composition, concepts, aspects, config, planner=FALLBACK)

        return plan_picks(ws, picks, concepts, fallback, avoid or {}, progress)
    plans = []
    for done, (k, composition) in enumerate(picks, start=1):
        plans.append(plan_one(k, composition, concepts, aspects, config))
        progress("plan", done, len(picks))
    return plans

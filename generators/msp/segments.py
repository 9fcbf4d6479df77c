"""The segments of an MSP image: a plan's one-hot segment map at latent resolution, and each segment's prompt.

One segment per concept (its box, or its pasted alpha mask when the paste composition supplies one;
later boxes lie on top) plus a background segment that takes every pixel left over. Each segment
gets its own local prompt for the composition phase, and the plan one global prompt naming every
subject and the background for the harmonization phase. The pipeline composites by these maps and
SAL scores the subject segments, so both read them from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from curation.core.errors import CurateError
from curation.core.records import Concept, LayoutPlan
from generators.phrases import join_phrases

BACKGROUND = "<background>"
"""Name of the background segment; angle brackets keep it apart from any concept id."""


def render_segment_map(
    plan: LayoutPlan,
    latent_hw: tuple[int, int],
    masks: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Rasterize a plan into a one-hot segment map at latent resolution.

    Boxes are scaled from the plan's canvas to the latent grid with floor/ceil so even a small box
    keeps at least one latent pixel; later boxes lie on top. A concept with a pasted alpha mask
    (full-canvas, 0..1 float or 0..255 uint8) uses the mask instead of its box, area-averaged down
    and thresholded at 0.5, so its segment is the object's silhouette and the rest of its box goes
    to the background prompt. Masked concepts are drawn after the boxes, in the dict's order (back
    to front), which is the paste composition's drawing order when the dict comes from
    `masks_from_layers`; the segment names keep the plan's box order either way.

    Args:
        plan: the layout plan (canvas size plan.width x plan.height).
        latent_hw: (h, w) of the latent grid.
        masks: optional concept_id -> alpha mask at canvas (or any) resolution, back to front.

    Returns:
        (one-hot float32 array [S, h, w] with S = len(plan.boxes) + 1, segment names ending in BACKGROUND).
    """
    h, w = latent_hw
    masks = masks or {}
    names = [box.concept_id for box in plan.boxes] + [BACKGROUND]
    unknown = [concept_id for concept_id in masks if concept_id not in names[:-1]]
    if unknown:
        raise CurateError(f"plan {plan.plan_id or '?'}: masks for concepts it has no box for: {unknown}")
    owner = np.full((h, w), len(plan.boxes), dtype=np.int64)
    for index, box in enumerate(plan.boxes):
        if box.concept_id not in masks:
            x0, x1 = math.floor(box.x * w / plan.width), math.ceil((box.x + box.w) * w / plan.width)
            y0, y1 = math.floor(box.y * h / plan.height), math.ceil((box.y + box.h) * h / plan.height)
            owner[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)] = index
    for concept_id, mask in masks.items():
        owner[_mask_at(mask, (h, w))] = names.index(concept_id)
    one_hot = (owner[None] == np.arange(len(names))[:, None, None]).astype(np.float32)
    return one_hot, names


def masks_from_layers(layers: Sequence[Any], width: int, height: int) -> dict[str, np.ndarray]:
    """Full-canvas alpha masks from pasted layers (`generators.compose.Layer`), back to front.

    Each layer has `concept_id`, `x`, `y` (its top-left corner on the canvas, may lie outside)
    and `alpha` (float 0..1, the layer's own size); the dict keeps the layers' drawing order.
    """
    masks: dict[str, np.ndarray] = {}
    for layer in layers:
        canvas = np.zeros((height, width), dtype=np.float32)
        lh, lw = layer.alpha.shape
        x0, y0 = max(layer.x, 0), max(layer.y, 0)
        x1, y1 = min(layer.x + lw, width), min(layer.y + lh, height)
        if x1 > x0 and y1 > y0:
            canvas[y0:y1, x0:x1] = layer.alpha[y0 - layer.y : y1 - layer.y, x0 - layer.x : x1 - layer.x]
        masks[layer.concept_id] = canvas
    return masks


def _mask_at(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A soft alpha mask as a boolean region on the latent grid."""
    import cv2

    alpha = np.asarray(mask, dtype=np.float32)
    if alpha.ndim == 3:
        alpha = alpha[..., -1]
    if alpha.max(initial=0.0) > 1.0:
        alpha = alpha / 255.0
    small = cv2.resize(alpha, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    return small >= 0.5


def segment_prompts(plan: LayoutPlan, concepts: dict[str, Concept]) -> tuple[list[str], str]:
    """Local prompt per segment (same order as `render_segment_map`) and the global prompt.

    A concept's segment names it by token and class noun, so personalized weights from
    `curate train` bind the token; the background segment describes the background; the global
    prompt names everything, because harmonization must keep every subject alive.
    """
    missing = [box.concept_id for box in plan.boxes if box.concept_id not in concepts]
    if missing:
        raise CurateError(f"plan {plan.plan_id or '?'}: unknown concept(s) {', '.join(missing)}")
    phrases = [concepts[box.concept_id].phrase for box in plan.boxes]
    local = [f"a photo of {phrase}" for phrase in phrases] + [f"a photo of {plan.background}"]
    return local, f"a photo of {join_phrases(phrases)}, {plan.background}"

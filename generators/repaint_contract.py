"""What every repaint backend shares: the job, the Gen4Gen mask, the canvas a pipeline is fed, the paste-back.

Kept apart from the backends so the SDXL inpainting path (`generators/repaint.py`) and FLUX.1 Fill
(`generators/flux_fill.py`) hold one contract without importing each other: the same composite and
mask go in, and the concepts' own pixels come back on top of whatever the model painted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from generators.compose import Composition, paste

_SNAPSHOT = re.compile(r"snapshots/([0-9a-f]{40})")


@dataclass(frozen=True)
class RepaintJob:
    """One candidate's repaint input; `seed` alone fixes the diffusion noise for it."""

    composition: Composition
    prompt: str
    seed: int


class Repainter(Protocol):
    """Turns compositions into final images; `name` and `config()` go into provenance."""

    name: str
    batch_size: int

    def config(self) -> dict[str, object]: ...

    def __call__(self, jobs: Sequence[RepaintJob]) -> list[np.ndarray]: ...


def object_alpha(composition: Composition) -> np.ndarray:
    """Coverage of all layers on the canvas, float 0..1 (1 - product of each layer's 1 - alpha)."""
    height, width = composition.background.shape[:2]
    clear = np.ones((height, width), np.float32)
    for layer in composition.layers:
        h, w = layer.alpha.shape
        clear[layer.y : layer.y + h, layer.x : layer.x + w] *= 1 - layer.alpha
    return 1 - clear


def repaint_mask(composition: Composition, blur: int) -> np.ndarray:
    """Gen4Gen's inpainting mask, uint8, 255 = repaint: the object alpha box-blurred by `blur` px,
    stretched from [127.5, 255] to [0, 255] (so the repaint reaches a little under each object's
    edge and blends it in), then inverted so the background is repainted and the objects kept."""
    alpha = object_alpha(composition) * 255
    if blur >= 1:
        alpha = cv2.blur(alpha, (2 * blur + 1, 2 * blur + 1))
        alpha = (alpha - 127.5) * 2
    return (255 - np.clip(alpha, 0, 255) + 0.5).astype(np.uint8)


def by_canvas_size(
    jobs: Sequence[RepaintJob], run: Callable[[Sequence[RepaintJob]], list[np.ndarray]]
) -> list[np.ndarray]:
    """`run` on the jobs of each canvas size in turn (one pipeline call takes one size), in job order."""
    if not jobs:
        return []
    shapes = list(dict.fromkeys(job.composition.background.shape for job in jobs))
    if len(shapes) == 1:
        return run(jobs)
    groups = [[job for job in jobs if job.composition.background.shape == shape] for shape in shapes]
    done = {id(job): image for group in groups for job, image in zip(group, run(group), strict=True)}
    return [done[id(job)] for job in jobs]


def work_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """The canvas a pipeline is fed: each side floored to `multiple` (8 for SDXL's VAE, 16 for FLUX's
    packed 2x2 latents), never below one multiple."""
    return max(multiple, height // multiple * multiple), max(multiple, width // multiple * multiple)


def pipeline_inputs(
    jobs: Sequence[RepaintJob], size: tuple[int, int], blur: int
) -> tuple[list[Any], list[Any]]:
    """Each job's composite and repaint mask as PIL images of `size` (height, width), resized when the
    canvas is not a size the pipeline accepts."""
    from PIL import Image

    images, masks = [], []
    for job in jobs:
        image, mask = job.composition.image, repaint_mask(job.composition, blur)
        if image.shape[:2] != size:
            image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, size[::-1], interpolation=cv2.INTER_AREA)
        images.append(Image.fromarray(image))
        masks.append(Image.fromarray(mask))
    return images, masks


def paste_back(jobs: Sequence[RepaintJob], repainted: Sequence[Any]) -> list[np.ndarray]:
    """The pipeline's float images (0..1, any size) back at each canvas's size, with the concepts
    blended on top by their soft alpha: the VAE round trip and the mask's soft edge otherwise alter
    the very pixels that carry each concept's identity."""
    results = []
    for job, image in zip(jobs, repainted, strict=True):
        height, width = job.composition.background.shape[:2]
        pixels = (np.clip(np.asarray(image, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
        if pixels.shape[:2] != (height, width):
            pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_CUBIC)
        results.append(paste(pixels, job.composition.layers))
    return results


def pipeline_revision(pipe: Any) -> str | None:
    """The hub commit a pipeline was loaded from, read off its cached snapshot path (None for folders)."""
    for component in pipe.components.values():
        path = str(getattr(getattr(component, "config", None), "_name_or_path", "") or "")
        if match := _SNAPSHOT.search(path.replace("\\", "/")):
            return match.group(1)
    return None

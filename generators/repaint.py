"""Repaint: make pasted objects belong to their scene.

Backends are chosen by the `generate.repaint` config string and share one contract
(`Repainter`: a batch of `RepaintJob`s -> final RGB images, one per job; `generators/repaint_contract.py`):

- ``classical`` (offline default): per-object colour-statistics transfer in Lab toward the
  background around the object (the Reinhard recipe, applied partially so identity survives),
  then a re-blend with a slightly feathered alpha to hide cut-out seams. Poisson blending
  (cv2.seamlessClone) was not used: it drags a whole object's colours toward its surroundings
  (identity drift), and one call per object took 150 ms against 45 ms for this whole repaint
  (512 px canvas, one 200x160 object, busy 2-core machine).
- ``flux-fill[:ID]``: FLUX.1 Fill (`generators/flux_fill.py`), same mask and paste-back.
- anything else is a diffusers inpainting pipeline id or a local folder saved with
  `save_pretrained` (`diffusers/stable-diffusion-xl-1.0-inpainting-0.1` as in Gen4Gen, or an
  SD 1.x/2.x inpainting model), loaded with `AutoPipelineForInpainting`. As in Gen4Gen's script
  the background is repainted around the kept objects (mask = box-blurred, contrast-stretched,
  inverted object alpha); unlike it, the objects are blended back with their soft alpha after
  repainting, because the VAE round trip and the blurred mask edge otherwise alter the very
  pixels that carry each concept's identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from curation.core.config import GenerateConfig
from curation.core.devices import resolve_device
from curation.core.errors import CurateError
from curation.core.records import Concept, LayoutPlan
from curation.models.registry import flux_fill_model, gated_error, require_local
from generators.compose import Layer, paste
from generators.flux_fill import load_flux_fill_repainter
from generators.generate_settings import CLASSICAL, repaint_settings
from generators.phrases import join_phrases, left_to_right
from generators.repaint_contract import (
    Repainter,
    RepaintJob,
    by_canvas_size,
    paste_back,
    pipeline_inputs,
    pipeline_revision,
    work_size,
)


def repaint_prompt(plan: LayoutPlan, concepts: dict[str, Concept]) -> str:
    """Gen4Gen's 'a realistic photo of ...' with class nouns, never personal tokens.

    The inpainting model has not learnt '<c-cat>'; its tokenizer would split it into punctuation
    noise, so the prompt names what each object is ("a cat and a mug on a wooden table").
    """
    nouns = join_phrases([f"a {concepts[c].class_noun}" for c in left_to_right(plan)])
    return f"a realistic photo of {nouns} {plan.background}".strip()


def _lab_stats(lab: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    mean, std = cv2.meanStdDev(lab, mask=mask)
    return mean.ravel().astype(np.float32), std.ravel().astype(np.float32) + 1e-3


@dataclass
class ClassicalRepainter:
    """Partial Lab colour transfer per object + feathered re-blend; deterministic, no weights."""

    name: str = CLASSICAL
    strength: float = 0.3
    feather: float = 0.8
    batch_size: int = 1

    def config(self) -> dict[str, object]:
        return {"name": self.name, "strength": self.strength, "feather": self.feather}

    def _harmonize(self, layer: Layer, background: np.ndarray) -> Layer:
        h, w = layer.alpha.shape
        height, width = background.shape[:2]
        x0, y0 = max(0, layer.x - w // 2), max(0, layer.y - h // 2)
        x1, y1 = min(width, layer.x + w + w // 2), min(height, layer.y + h + h // 2)
        bg_mean, bg_std = _lab_stats(cv2.cvtColor(background[y0:y1, x0:x1], cv2.COLOR_RGB2LAB))
        lab = cv2.cvtColor(layer.rgb, cv2.COLOR_RGB2LAB)
        obj_mean, obj_std = _lab_stats(lab, (layer.alpha >= 0.5).astype(np.uint8))
        target_mean = obj_mean + self.strength * (bg_mean - obj_mean)
        target_std = obj_std * (1 + self.strength * (bg_std / obj_std - 1)).clip(0.7, 1.3)
        moved = (lab.astype(np.float32) - obj_mean) * (target_std / obj_std) + target_mean
        rgb = cv2.cvtColor(np.clip(moved, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
        alpha = cv2.GaussianBlur(layer.alpha, (0, 0), self.feather) if self.feather > 0 else layer.alpha
        return Layer(layer.concept_id, layer.x, layer.y, rgb, np.minimum(alpha, layer.alpha + 0.5))

    def __call__(self, jobs: Sequence[RepaintJob]) -> list[np.ndarray]:
        out = []
        for job in jobs:
            background = job.composition.background
            layers = [self._harmonize(layer, background) for layer in job.composition.layers]
            out.append(paste(background, layers))
        return out


@dataclass
class DiffusionRepainter:
    """Batched diffusers inpainting of the background, then the objects blended back in.

    Each job gets its own `torch.Generator` (on the CPU, so the noise is the same on any device),
    so an image depends on its candidate's seed only, not on which batch it landed in.
    """

    name: str
    settings: GenerateConfig
    pipe: Any
    refiner: Any = None
    provenance: dict[str, object] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def config(self) -> dict[str, object]:
        return {"name": self.name, **repaint_settings(self.settings), **self.provenance}

    def __call__(self, jobs: Sequence[RepaintJob]) -> list[np.ndarray]:
        return by_canvas_size(jobs, self._repaint)

    def _repaint(self, jobs: Sequence[RepaintJob]) -> list[np.ndarray]:
        """One pipeline call for jobs of one canvas size."""
        import torch

        height, width = jobs[0].composition.background.shape[:2]
        size = work_size(height, width, max(8, int(self.pipe.vae_scale_factor)))
        images, masks = pipeline_inputs(jobs, size, self.settings.mask_blur)
        common = {
            "prompt": [job.prompt for job in jobs],
            "negative_prompt": [self.settings.negative_prompt] * len(jobs),
            "mask_image": masks,
            "height": size[0],
            "width": size[1],
            "guidance_scale": self.settings.guidance_scale,
            "num_inference_steps": self.settings.steps,
            "strength": self.settings.strength,
        }
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
        with torch.inference_mode():
            if self.refiner is None:
                out = self.pipe(image=images, generator=generators, output_type="np", **common).images
            else:  # ensemble of experts: the base stops at refiner_start, the refiner finishes
                latents = self.pipe(
                    image=images,
                    generator=generators,
                    output_type="latent",
                    denoising_end=self.settings.refiner_start,
                    **common,
                ).images
                out = self.refiner(
                    image=latents,
                    generator=generators,
                    output_type="np",
                    denoising_start=self.settings.refiner_start,
                    **common,
                ).images
        return paste_back(jobs, out)


def load_diffusion_repainter(name: str, settings: GenerateConfig) -> DiffusionRepainter:
    """Load an inpainting pipeline (hub id or `save_pretrained` folder) once, on GPU when present."""
    require_local("generate.repaint", name, pipeline=True)
    if settings.refiner:
        require_local("generate.refiner", settings.refiner, pipeline=True)
    import diffusers
    from diffusers import AutoPipelineForInpainting

    device, dtype = resolve_device(settings.device, settings.dtype)
    try:
        pipe = AutoPipelineForInpainting.from_pretrained(name, dtype=dtype)
        refiner = None
        if settings.refiner:  # Gen4Gen shares the base's second text encoder and VAE with the refiner
            shared = {k: pipe.components[k] for k in ("text_encoder_2", "vae") if k in pipe.components}
            refiner = AutoPipelineForInpainting.from_pretrained(settings.refiner, dtype=dtype, **shared)
    except (OSError, ValueError) as exc:
        if gated := gated_error(exc, "generate.repaint", name):
            raise gated from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CurateError(
            f"repaint backend {name!r} needs the diffusion repaint pipeline, which could not be loaded: "
            + first
        ) from exc
    for model in (pipe, refiner):
        if model is not None:
            model.to(device)
            model.set_progress_bar_config(disable=True)
    provenance: dict[str, object] = {
        "pipeline": type(pipe).__name__,
        "scheduler": type(pipe.scheduler).__name__,
        "name_or_path": str(pipe.name_or_path),
        "revision": pipeline_revision(pipe),
        "diffusers_version": diffusers.__version__,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": settings.batch_size,
    }
    if refiner is not None:
        provenance |= {
            "refiner_pipeline": type(refiner).__name__,
            "refiner_revision": pipeline_revision(refiner),
        }
    return DiffusionRepainter(name=name, settings=settings, pipe=pipe, refiner=refiner, provenance=provenance)


def load_repainter(name: str, settings: GenerateConfig | None = None) -> Repainter:
    """The repaint backend named by `config.generate.repaint`; loaded once per worker.

    Args:
        name: 'classical', 'flux-fill[:ID]' (FLUX.1 Fill), or a diffusers inpainting pipeline id /
            local folder.
        settings: The generate config (guidance, steps, strength, mask blur, refiner, batch size,
            device, dtype, `flux_fill`); defaults when None.
    """
    if name == CLASSICAL:
        return ClassicalRepainter()
    settings = settings or GenerateConfig(repaint=name)
    if model := flux_fill_model(name):
        return load_flux_fill_repainter(model, settings)
    return load_diffusion_repainter(name, settings)

"""The `[generate]` settings as a run reads them, for the driver, the executors and every worker alike.

Which generator runs (the configured one, or one named for this run), the settings that define a
candidate's pixels and caption (hashed into its id, so a change re-makes it), and what the settings
imply before anything loads: whether a worker loads a torch model (and so wants a GPU), how many
candidates go to one repaint or MSP call, and the settings errors found without loading anything.
"""

from __future__ import annotations

from curation.core.config import GenerateConfig
from curation.core.errors import CurateError
from curation.core.workspace import Workspace
from curation.models.registry import flux_fill_model

GENERATOR_VERSION = 1
"""Bump when the offline pipeline's pixels change, so new images get new ids."""
GENERATORS = ("gen4gen", "msp")
CLASSICAL = "classical"
"""The repaint that loads no model (colour transfer and feathering)."""
TEMPLATE = "template"
"""The caption that loads no model (the plan's own phrases)."""
OPENAI_PREFIX = "openai:"


def generate_config(ws: Workspace, generator: str | None = None) -> GenerateConfig:
    """The workspace's [generate] section, with the generator overridden when one is named."""
    config = ws.config.generate
    if generator is None or generator == config.generator:
        return config
    if generator not in GENERATORS:
        raise CurateError(f"unknown generator {generator!r}; use one of {', '.join(GENERATORS)}")
    return config.model_copy(update={"generator": generator})


def generator_config(config: GenerateConfig) -> dict[str, object]:
    """Everything besides plan and seed that determines a candidate's pixels and caption.

    MSP leaves the repaint settings out (it does not repaint) and `max_unet_batch` (it only moves
    pixels by rounding, like the batch size), so neither re-ids finished MSP candidates; the SAL
    settings count only when SAL is on, so workspaces made before it existed keep their ids.
    """
    if config.generator == "msp":
        sal_off = {"sal_model", "sal_scale", "sal_steps"} if not config.msp.sal_model else set()
        return {
            "generator": config.generator,
            "version": GENERATOR_VERSION,
            "recaption": config.recaption,
            "msp": config.msp.model_dump(exclude={"max_unet_batch", *sal_off}),
            **caption_settings(config),
        }
    return {
        "generator": config.generator,
        "version": GENERATOR_VERSION,
        "repaint": config.repaint,
        "recaption": config.recaption,
        **repaint_settings(config),
        **caption_settings(config),
    }


def repaint_settings(config: GenerateConfig) -> dict[str, object]:
    """The settings that change a repainted image's pixels: part of every candidate id.

    Device, dtype and batch size are left out on purpose (they only move pixels by rounding), so
    the same candidate keeps its id on a laptop and on a GPU node; they are recorded in provenance.
    """
    if config.repaint == CLASSICAL:
        return {}
    if flux_fill_model(config.repaint):
        return flux_fill_settings(config)
    settings: dict[str, object] = {
        "guidance_scale": config.guidance_scale,
        "steps": config.steps,
        "strength": config.strength,
        "mask_blur": config.mask_blur,
        "negative_prompt": config.negative_prompt,
    }
    if config.refiner:
        settings |= {"refiner": config.refiner, "refiner_start": config.refiner_start}
    return settings


def flux_fill_settings(config: GenerateConfig) -> dict[str, object]:
    """The `[generate]` settings that change a FLUX.1 Fill image's pixels (part of every candidate id);
    the offload, like device and batch size, only moves pixels by rounding and is left out."""
    flux = config.flux_fill
    return {
        "guidance_scale": flux.guidance_scale,
        "steps": flux.steps,
        "strength": flux.strength,
        "max_sequence_length": flux.max_sequence_length,
        "mask_blur": config.mask_blur,
    }


def caption_settings(config: GenerateConfig) -> dict[str, object]:
    """The settings that change a VLM caption: part of every candidate id (none for the template)."""
    if config.recaption == TEMPLATE:
        return {}
    return {"recaption_prompt": config.recaption_prompt, "recaption_max_tokens": config.recaption_max_tokens}


def loads_model(config: GenerateConfig) -> bool:
    """Whether a worker loads a torch model (diffusion repaint, MSP, a local VLM) and so wants a GPU."""
    local_vlm = config.recaption != TEMPLATE and not config.recaption.startswith(OPENAI_PREFIX)
    return config.generator == "msp" or config.repaint != CLASSICAL or local_vlm


def batch_size(config: GenerateConfig) -> int:
    """Candidates per repaint or MSP call; the classical repaint takes one at a time."""
    return config.batch_size if config.generator == "msp" or config.repaint != CLASSICAL else 1


def check_settings(config: GenerateConfig) -> None:
    """Settings errors found without loading anything, in the driver, before any worker starts."""
    if config.generator == "msp" and config.msp.controlnet:
        raise CurateError(
            "generate.msp.controlnet needs one control image per plan, which `curate generate` "
            "does not make; leave it empty here and call generators.msp.pipeline.MSPGenerator directly"
        )

"""The evaluator's MSP rows: held-out images made by the MSP loop instead of a plain text-to-image call.

An MSP row (`MSPConfiguration`) runs `generators.msp`'s `MSPGenerator` on a pipeline: each held-out
prompt gets a rules-planner layout on the pipeline's canvas, and the export's references pasted by it
on a procedural background are the scaffold and the segments (`personalization.heldout_layouts`),
exactly as `curate generate --generator msp` makes a candidate. The rows (`MSP_VARIANTS`, the MSP
paper's ablation) differ only by scaffold on/off and SAL on/off; they share layouts and seeds, and SAL
uses the same M_SAL as SAS (`EvalSettings.subject_segmenter`), as the paper does. Their prompts are
MSP's own (a local prompt per segment, a global one), not the training strategy's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.core.config import MSPSettings
from curation.core.errors import CurateError
from curation.core.progress import ProgressFn
from personalization.data import Export
from personalization.eval_settings import EvalSettings
from personalization.heldout_images import image_path, image_row, image_seed, release_memory, save_png
from personalization.prompts import PromptStrategy, heldout_prompts
from personalization.train_folder import pipeline_source


@dataclass(frozen=True)
class MSPConfiguration:
    """A row made by the MSP loop on `model` (a `curate train` folder, pipeline folder or hub id)."""

    model: str
    scaffold: bool = True
    sal: bool = False

    def __str__(self) -> str:
        return f"msp (scaffold {'on' if self.scaffold else 'off'}, SAL {'on' if self.sal else 'off'}): {self.model}"


MSP_VARIANTS: dict[str, tuple[str, bool, bool]] = {
    "msp": ("MSP", True, False),
    "msp-noscaffold": ("MSP without scaffold", False, False),
    "msp-sal": ("MSP + SAL", True, True),
    "msp-noscaffold-sal": ("MSP without scaffold + SAL", False, True),
}
"""Name -> (row label, scaffold, SAL): the MSP paper's ablation rows."""


def msp_configurations(model: str, names: list[str]) -> dict[str, MSPConfiguration]:
    """Row label -> MSP configuration on `model` for each named variant of MSP_VARIANTS."""
    unknown = [name for name in names if name not in MSP_VARIANTS]
    if unknown:
        raise CurateError(f"unknown MSP configuration {unknown[0]!r}: use {', '.join(MSP_VARIANTS)}")
    return {
        MSP_VARIANTS[name][0]: MSPConfiguration(model, MSP_VARIANTS[name][1], MSP_VARIANTS[name][2])
        for name in dict.fromkeys(names)
    }


def check_msp_rows(msp_rows: list[MSPConfiguration], settings: EvalSettings) -> None:
    """Refuse MSP rows the settings cannot run: SAL without a segmenter, a scaffold phase of no step."""
    if any(c.sal for c in msp_rows) and not settings.subject_segmenter:
        raise CurateError("MSP rows with SAL need a subject segmenter (M_SAL): pass --subject-segmenter")
    steps = settings.generation("sd").steps
    if any(c.scaffold for c in msp_rows) and int(steps * settings.scaffold_strength) < 1:
        raise CurateError(
            f"MSP rows with a scaffold run steps x scaffold_strength = {steps} x "
            f"{settings.scaffold_strength} steps, less than one: raise --steps"
        )


def generate_msp_images(
    label: str,
    config: MSPConfiguration,
    export: Export,
    settings: EvalSettings,
    out_dir: Path,
    device: str | None,
    progress: ProgressFn,
    msal: Any = None,
) -> list[dict]:
    """Generate every held-out image of one MSP row: one MSP call per prompt, its images batched.

    The model loads as `curate generate` loads it (SD 1.x/2.x or SDXL; fp16 on a GPU).
    """
    from PIL import Image

    from generators.msp.pipeline import MSPGenerator
    from generators.msp.segments import masks_from_layers
    from personalization.heldout_layouts import concept_records, heldout_plans, paste_composition

    generator = MSPGenerator.from_pretrained(pipeline_source(config.model), device=device)
    pipe = generator.pipe
    sampling = settings.generation("sd")
    size = sampling.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    concepts = concept_records(export)
    prompts = heldout_prompts(
        export, PromptStrategy(), settings.backgrounds, settings.prompts_per_set, settings.single_subjects
    )
    plans = heldout_plans(export, prompts, concepts, size, settings.seed)
    if config.sal:
        msal.model.to(pipe.device)
        generator.sal = msal
    msp = MSPSettings(
        model=config.model,
        scaffold=config.scaffold,
        kappa=settings.kappa,
        steps=sampling.steps,
        guidance_scale=sampling.guidance,
        scaffold_strength=settings.scaffold_strength,
        sal_model=msal.source if config.sal else "",
        sal_scale=settings.sal_scale,
        sal_steps=settings.sal_steps,
    )
    rows = []
    total = len(prompts) * settings.images_per_prompt
    for prompt_index, (prompt, plan) in enumerate(zip(prompts, plans, strict=True)):
        images = range(settings.images_per_prompt)
        pasted = [paste_composition(export, plan, k, concepts) for k in images]
        results = generator(
            [plan] * len(pasted),
            concepts,
            [image_seed(settings, prompt_index, k) for k in images],
            settings=msp,
            scaffolds=[Image.fromarray(c.image) for c in pasted] if config.scaffold else None,
            masks=[masks_from_layers(c.layers, plan.width, plan.height) for c in pasted],
        )
        for k, result in zip(images, results, strict=True):
            path = image_path(out_dir, label, prompt_index, k)
            save_png(result.image, path)
            rows.append(
                image_row(label, path, out_dir, prompt, result.provenance["global_prompt"])
                | {"plan": plan.model_dump(mode="json"), "msp": result.provenance}
            )
            progress(f"generate {label}", len(rows), total)
    del generator, pipe
    release_memory()
    return rows

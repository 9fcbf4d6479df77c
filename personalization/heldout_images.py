"""Generate the held-out images of one plain configuration, and the row every evaluated image starts as.

A plain configuration is a `curate train` folder (its prompts written with the strategy it was trained
with, read from run.json), or any diffusers pipeline folder or hub id (a baseline row, plain prompts):
one text-to-image call per image. The MSP rows (`personalization.msp_rows`) use the same rows, seeds
and files, so rows differ by the model only.
"""

from __future__ import annotations

import gc
from pathlib import Path

from curation.core.buckets import bucket, msp_bucket
from curation.core.errors import CurateError
from curation.core.progress import ProgressFn
from curation.core.workspace import atomic_write_bytes
from personalization.data import Export
from personalization.eval_settings import EvalSettings
from personalization.prompts import EvalPrompt, heldout_prompts
from personalization.train_folder import pipeline_source, trained_strategy


def _load_pipeline(source: str | Path, device: str | None):
    """A `curate train` folder, a pipeline folder, or a hub id; plus the strategy it was trained with."""
    from diffusers import StableDiffusionPipeline

    strategy = trained_strategy(source)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(pipeline_source(source), safety_checker=None)
    except (OSError, ValueError) as exc:
        raise CurateError(f"cannot load pipeline {source!s}: {str(exc).splitlines()[0]}") from exc
    pipe.set_progress_bar_config(disable=True)
    if device:
        pipe.to(device)
    elif _cuda():
        pipe.to("cuda")
    return pipe, strategy


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def image_row(label: str, path: Path, out_dir: Path, prompt: EvalPrompt, text: str) -> dict:
    """An image's row before scoring: what made it and its concept-count buckets."""
    return {
        "configuration": label,
        "image": path.relative_to(out_dir).as_posix(),
        "prompt": text,
        "plain_text": prompt.plain_text,
        "background": prompt.background,
        "concepts": list(prompt.concepts),
        "n_concepts": len(prompt.concepts),
        "bucket": bucket(len(prompt.concepts)),
        "msp_bucket": msp_bucket(len(prompt.concepts)),
    }


def image_seed(settings: EvalSettings, prompt_index: int, k: int) -> int:
    """Image k of prompt p: the same seed in every configuration, so rows differ by the model only."""
    return settings.seed + 1000 * prompt_index + k


def image_path(out_dir: Path, label: str, prompt_index: int, k: int) -> Path:
    """Where image k of prompt p of a configuration is saved."""
    return out_dir / "images" / label / f"{prompt_index:04d}_{k}.png"


def save_png(image, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def release_memory() -> None:
    """Return a dropped pipeline's memory before the next configuration loads its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate_images(
    label: str,
    source: str | Path,
    export: Export,
    settings: EvalSettings,
    out_dir: Path,
    device: str | None,
    progress: ProgressFn,
) -> list[dict]:
    """Generate and save every held-out image of one configuration; rows without scores yet."""
    import torch

    pipe, strategy = _load_pipeline(source, device)
    prompts: list[EvalPrompt] = heldout_prompts(
        export, strategy, settings.backgrounds, settings.prompts_per_set, settings.single_subjects
    )
    size = {"height": settings.resolution, "width": settings.resolution} if settings.resolution else {}
    rows = []
    total = len(prompts) * settings.images_per_prompt
    for prompt_index, prompt in enumerate(prompts):
        for k in range(settings.images_per_prompt):
            generator = torch.Generator().manual_seed(image_seed(settings, prompt_index, k))
            image = pipe(
                prompt.prompt,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                generator=generator,
                **size,
            ).images[0]
            path = image_path(out_dir, label, prompt_index, k)
            save_png(image, path)
            rows.append(image_row(label, path, out_dir, prompt, prompt.prompt))
            progress(f"generate {label}", len(rows), total)
    del pipe
    release_memory()
    return rows

"""Generate the held-out images of one plain configuration, and the row every evaluated image starts as.

A plain configuration is any text-to-image model `personalization.eval_pipelines` resolves (SD 1.x/2.x,
SDXL, FLUX.1, a `curate train` folder, a base + LoRA folder): one text-to-image call per image, with
its family's steps, guidance and size (`EvalSettings.generation`). Every family gets the same held-out
prompts and the same seeds, and the MSP rows (`personalization.msp_rows`) the same rows, seeds and
files, so rows differ by the model only.
"""

from __future__ import annotations

import gc
from dataclasses import asdict
from pathlib import Path

from curation.core.buckets import bucket, msp_bucket
from curation.core.devices import torch_device
from curation.core.progress import ProgressFn
from curation.core.workspace import atomic_write_bytes
from personalization.data import Export
from personalization.eval_pipelines import ModelSource, load_model
from personalization.eval_settings import EvalSettings
from personalization.prompts import EvalPrompt, heldout_prompts


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
    model: ModelSource,
    export: Export,
    settings: EvalSettings,
    out_dir: Path,
    device: str | None,
    progress: ProgressFn,
) -> list[dict]:
    """Generate and save every held-out image of one configuration; rows without scores yet.

    Each row records the seed, steps, guidance and size it was made with, and the model's family.
    """
    import torch

    sampling = settings.generation(model.family)
    pipe = load_model(model, settings, torch_device(device))
    prompts: list[EvalPrompt] = heldout_prompts(
        export, model.strategy, settings.backgrounds, settings.prompts_per_set, settings.single_subjects
    )
    size = {"height": sampling.resolution, "width": sampling.resolution} if sampling.resolution else {}
    rows = []
    total = len(prompts) * settings.images_per_prompt
    for prompt_index, prompt in enumerate(prompts):
        text = model.prompt(prompt.prompt)
        for k in range(settings.images_per_prompt):
            seed = image_seed(settings, prompt_index, k)
            image = pipe(
                text,
                num_inference_steps=sampling.steps,
                guidance_scale=sampling.guidance,
                generator=torch.Generator().manual_seed(seed),
                **size,
            ).images[0]
            path = image_path(out_dir, label, prompt_index, k)
            save_png(image, path)
            row = image_row(label, path, out_dir, prompt, text)
            row.update(
                seed=seed, family=model.family, sampling={**asdict(sampling), "size": list(image.size)}
            )
            rows.append(row)
            progress(f"generate {label}", len(rows), total)
    del pipe
    release_memory()
    return rows

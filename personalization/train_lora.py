"""`curate train --base sdxl|flux`: LoRA on the denoiser + pivotal-tuning tokens, on an export.

The recipe of diffusers' DreamBooth-LoRA scripts for SDXL (`train_dreambooth_lora_sdxl_advanced.py`)
and FLUX.1 (`train_dreambooth_lora_flux.py`), on a MyCanvas-style export:
- LoRA (PEFT, rank r, alpha r, Gaussian init) on the denoiser's attention projections; the frozen
  base weights sit in the training dtype (bf16 on a GPU), the LoRA tensors train in float32;
- every concept token added to the text encoder(s) as a new row, trained (pivotal tuning; see
  `personalization.pivotal_tokens`; which encoders: `lora_sdxl` / `lora_flux`);
- each image's own caption (or the Gen4Gen strategy's prompt, `personalization.prompts`);
- prior preservation: with `prior_loss_weight`, each step also denoises as many of the export's
  class images (prompted with the bare class noun) and adds their loss times the weight;
- masked loss (`masked_loss`): the loss counts only where the image's mask is: a reference photo's
  soft mask (concepts/<id>/masks/), or the union of a composition's concept boxes (metadata.jsonl);
  class images count everywhere. It is the mean of mask * squared error over the mask's weight.

The base-specific parts (text encoding, SDXL's size conditioning, FLUX's packed flow matching) are
`lora_sdxl.SDXLDenoising` and `lora_flux.FluxDenoising`; the run folder is `lora_folder`'s. Steps draw
their images, noise and timesteps from a generator seeded by (seed, step), so a run resumed from a
checkpoint continues as the uninterrupted run would.

Not done: aspect-ratio buckets (square centre crops only), latent caching, 8-bit optimizers, text
encoder LoRA (the encoders learn only the token rows), T5 tokens for FLUX.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from curation.core.errors import CurateError
from curation.core.progress import ProgressFn, no_progress
from personalization import lora_flux, lora_sdxl
from personalization.data import Export, read_export
from personalization.lora_folder import LORA_DIR, LORA_JSON, save_lora_folder
from personalization.prompts import PromptStrategy, training_examples
from personalization.train import class_examples
from personalization.train_folder import (
    TrainReport,
    finished_report,
    list_checkpoints,
    read_checkpoint,
    run_identity,
    start_run,
    write_checkpoint,
    write_report,
)
from personalization.train_images import (
    SquareCrop,
    boxes_square_mask,
    load_square,
    load_square_mask,
)

LoraBase = Literal["sdxl", "flux"]
BASES = {"sdxl": lora_sdxl, "flux": lora_flux}
"""Each base's module: DEFAULT_PRETRAINED, DEFAULT_RESOLUTION, RESOLUTION_MULTIPLE (and why), LORA_TARGETS
and its denoising class."""
_DENOISING = {"sdxl": lora_sdxl.SDXLDenoising, "flux": lora_flux.FluxDenoising}


@dataclass(frozen=True)
class LoraExample:
    """One training image, its prompt, and where its loss mask comes from (a file, boxes, or nowhere)."""

    image: Path
    prompt: str
    mask: Path | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()

    def load(self, resolution: int, masked: bool):
        """The square crop and its [1, H, W] loss mask (all ones unless `masked` and it has one)."""
        import torch

        crop = load_square(self.image, resolution)
        if masked and self.mask is not None:
            return crop, load_square_mask(self.mask, resolution)
        if masked and self.boxes:
            return crop, boxes_square_mask(crop.original_size, self.boxes, resolution)
        return crop, torch.ones(1, resolution, resolution)


def lora_examples(export: Export, strategy: PromptStrategy, masked: bool) -> list[LoraExample]:
    """The strategy's training images with their mask sources; with `masked`, every image must have one."""
    masks = {ref: mask for c in export.concepts.values() for ref, mask in c.reference_masks}
    boxes = {c.image: c.boxes for c in export.compositions}
    examples = [
        LoraExample(e.image, e.prompt, mask=masks.get(e.image), boxes=boxes.get(e.image, ()))
        for e in training_examples(export, strategy)
    ]
    unmasked = [e.image for e in examples if e.mask is None and not e.boxes]
    if masked and unmasked:
        raise CurateError(
            f"--masked-loss needs a mask or boxes for every training image; {unmasked[0]} has neither"
        )
    return examples


def masked_mse(prediction, target, mask):
    """Per-example mean squared error weighted by `mask` ([B, 1, h, w], resized to the latents).

    Latent pixels outside the mask add nothing to the loss and so get no gradient; an all-ones mask
    gives the plain mean squared error.
    """
    import torch.nn.functional as F

    weight = F.interpolate(mask, size=prediction.shape[-2:], mode="area").to(prediction.device)
    squared = (prediction.float() - target.float()) ** 2 * weight
    channels = prediction.shape[1]
    return squared.sum(dim=(1, 2, 3)) / (weight.sum(dim=(1, 2, 3)) * channels).clamp_min(1e-8)


def step_loss(
    model,
    chosen: list[LoraExample],
    resolution: int,
    masked: bool,
    batch_size: int,
    prior_loss_weight: float | None,
    generator,
):
    """One step's loss: the first `batch_size` examples are the concepts', any after them class images.

    Draws the VAE sample, noise and timesteps from `generator`, so the same seed gives the same loss
    (tests measure a fixed batch before and after training with it).
    """
    import torch

    loaded = [example.load(resolution, masked) for example in chosen]
    crops: list[SquareCrop] = [crop for crop, _ in loaded]
    masks = torch.stack([mask for _, mask in loaded])
    with torch.no_grad():
        latents = model.encode_images(torch.stack([c.pixels for c in crops]), generator)
    half = model.weight_dtype != torch.float32
    with torch.autocast(latents.device.type, dtype=model.weight_dtype, enabled=half):
        prediction, target = model.prediction_and_target(
            latents, [e.prompt for e in chosen], crops, generator
        )
    per_example = masked_mse(prediction, target, masks)
    loss = per_example[:batch_size].mean()
    if len(chosen) > batch_size:
        loss = loss + prior_loss_weight * per_example[batch_size:].mean()
    return loss


def check_resolution(base: LoraBase, resolution: int) -> None:
    """Refuse a training size the base cannot take before the base loads and run.json records it: found
    at the first step instead, it costs the model's load (minutes for FLUX.1) and leaves a run.json that
    the corrected command then refuses as "a run with other settings"."""
    multiple = BASES[base].RESOLUTION_MULTIPLE
    if resolution < 1 or resolution % multiple:
        raise CurateError(
            f"--resolution {resolution} does not suit --base {base}: use a positive multiple of {multiple} "
            f"({BASES[base].RESOLUTION_REASON})"
        )


def _add_lora(denoiser, rank: int, targets: list[str], gradient_checkpointing: bool, seed: int) -> list:
    """Freeze the denoiser, add the LoRA adapter, keep its tensors float32; returns them.

    The adapters' Gaussian init draws from torch's global generator: seeded here (without disturbing
    the caller's), so two runs with the same seed start from the same A matrices.
    """
    import torch
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        denoiser.add_adapter(
            LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets)
        )
    if gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    for param in trainable:
        param.data = param.data.float()
    return trainable


def train_lora(
    export_dir: Path,
    output_dir: Path,
    base: LoraBase,
    pretrained: str = "",
    steps: int = 500,
    *,
    strategy: PromptStrategy | None = None,
    learning_rate: float = 1e-4,
    batch_size: int = 1,
    resolution: int = 0,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 2,
    mixed_precision: Literal["no", "bf16"] = "bf16",
    lora_rank: int = 4,
    seed: int = 0,
    cpu: bool = False,
    resume: bool = True,
    prior_loss_weight: float | None = None,
    masked_loss: bool = False,
    gradient_checkpointing: bool = False,
    progress: ProgressFn = no_progress,
) -> TrainReport:
    """Train a LoRA (+ concept token embeddings) for an SDXL or FLUX.1 base on an export; save `lora/`.

    Re-running a finished run with the same `steps` returns its saved report without loading a model;
    a larger `steps` extends it from the newest checkpoint.

    Args:
        export_dir: a `curate export` folder.
        output_dir: the run folder (layout: `personalization.lora_folder`).
        base: "sdxl" or "flux".
        pretrained: hub id or local folder of the base; "" = the base's default
            (stabilityai/stable-diffusion-xl-base-1.0, black-forest-labs/FLUX.1-dev).
        steps: total optimisation steps of the run (not of this call).
        strategy: the Gen4Gen prompting options; default the export's captions.
        learning_rate: AdamW's, for the LoRA tensors and the token rows alike.
        resolution: training square in pixels; 0 = the base's default (SDXL 1024, FLUX 512).
        mixed_precision: "bf16" keeps the frozen base in bfloat16 (a GPU needs it for these sizes);
            "no" trains everything in float32 (CPU tests).
        lora_rank: rank (and alpha) of the LoRA adapters.
        cpu: force CPU even where an accelerator is present.
        resume: continue from the newest checkpoint; False starts over.
        prior_loss_weight: weight of the class images' loss (prior preservation); None = off.
        masked_loss: count the loss only inside each image's mask or boxes.
        gradient_checkpointing: recompute the denoiser's activations in the backward pass (less
            memory, ~20-30% slower).
    """
    import torch
    from accelerate import Accelerator

    if base not in BASES:
        raise CurateError(f"unknown base {base!r}: use sdxl or flux")
    if mixed_precision not in ("no", "bf16"):
        raise CurateError(f"mixed precision {mixed_precision!r} is not offered for {base}: use no or bf16")
    if steps < 1 or batch_size < 1 or checkpoint_every < 1 or lora_rank < 1:
        raise CurateError("steps, batch size, checkpoint interval and LoRA rank must be positive")
    if prior_loss_weight is not None and prior_loss_weight <= 0:
        raise CurateError(f"the prior loss weight must be positive (got {prior_loss_weight})")
    module = BASES[base]
    pretrained = pretrained or module.DEFAULT_PRETRAINED
    resolution = resolution or module.DEFAULT_RESOLUTION
    check_resolution(base, resolution)
    strategy = strategy or PromptStrategy()
    output_dir = Path(output_dir)
    export = read_export(Path(export_dir))
    examples = lora_examples(export, strategy, masked_loss)
    if not examples:
        raise CurateError(f"no training images in {export_dir} for data source {strategy.source!r}")
    prior_examples = (
        [LoraExample(e.image, e.prompt) for e in class_examples(export)] if prior_loss_weight else []
    )
    identity = {
        **run_identity(pretrained, "lora", export, strategy, resolution, lora_rank, prior_loss_weight),
        "base": base,
        **({"masked_loss": True} if masked_loss else {}),
    }
    start_run(output_dir, identity, resume)
    finished = finished_report(output_dir, steps, saved=f"{LORA_DIR}/{LORA_JSON}") if resume else None
    if finished is not None:
        return finished

    accelerator = Accelerator(cpu=cpu)
    weight_dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float32
    model = _DENOISING[base].load(pretrained)
    tables = model.add_tokens(export)
    for encoder in model.text_encoders():
        encoder.requires_grad_(False)
    model.pipe.vae.requires_grad_(False)
    model.place(accelerator.device, weight_dtype)
    lora_params = _add_lora(model.denoiser, lora_rank, module.LORA_TARGETS, gradient_checkpointing, seed)
    for table in tables.values():
        table.weight.requires_grad_(True)
    # Token tables get no weight decay: AdamW would otherwise shrink the frozen rows despite zero gradients.
    optimizer = torch.optim.AdamW(
        [
            {"params": lora_params, "weight_decay": 1e-2},
            {"params": [t.weight for t in tables.values()], "weight_decay": 0.0},
        ],
        lr=learning_rate,
    )

    start_step = 0
    checkpoints = list_checkpoints(output_dir) if resume else []
    if checkpoints:
        start_step, folder = checkpoints[-1]
        if start_step > steps:
            raise CurateError(
                f"{output_dir} already holds {start_step} steps; ask for at least that many or --no-resume"
            )
        state, optimizer_state = read_checkpoint(folder)
        _restore(model.denoiser, tables, state)
        optimizer.load_state_dict(optimizer_state)

    model.denoiser.train()
    losses: list[float] = []
    started = time.perf_counter()
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(start_step, steps):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        chosen = [examples[i] for i in torch.randint(len(examples), (batch_size,), generator=generator)]
        if prior_examples:
            picks = torch.randint(len(prior_examples), (batch_size,), generator=generator)
            chosen += [prior_examples[i] for i in picks]
        loss = step_loss(model, chosen, resolution, masked_loss, batch_size, prior_loss_weight, generator)
        loss.backward()
        for table in tables.values():
            table.zero_frozen_grads()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        done = step + 1
        if done % checkpoint_every == 0 or done == steps:
            write_checkpoint(
                output_dir, done, _trainable_state(model.denoiser, tables), optimizer, keep_checkpoints
            )
        progress("train", done, steps)
    seconds = time.perf_counter() - started

    peak = torch.cuda.max_memory_allocated() / 2**20 if accelerator.device.type == "cuda" else None
    lora_dir = output_dir / LORA_DIR
    if losses or not (lora_dir / LORA_JSON).exists():
        tokens = [c.token for c in export.concepts.values()]
        lora_dir = save_lora_folder(
            output_dir,
            model.save_lora_weights,
            {key: table.rows() for key, table in tables.items()},
            model.embedding_components,
            {"base": base, "pretrained": pretrained, "tokens": tokens},
        )
    width = sum(t.weight.shape[1] for t in tables.values())
    report = TrainReport(
        output_dir=str(output_dir),
        pipeline_dir=str(lora_dir),
        method=f"lora-{base}",
        steps=steps,
        start_step=start_step,
        losses=losses,
        trainable_params=sum(p.numel() for p in lora_params) + len(export.concepts) * width,
        tokens={cid: c.token for cid, c in export.concepts.items()},
        examples=len(examples),
        class_images=len(prior_examples),
        seconds=round(seconds, 3),
        steps_per_second=round(len(losses) / seconds, 3) if losses and seconds > 0 else 0.0,
        device=str(accelerator.device),
        peak_memory_mb=round(peak, 1) if peak is not None else None,
    )
    write_report(output_dir, report)
    return report


def _trainable_state(denoiser, tables) -> dict:
    """What a checkpoint keeps: the LoRA tensors by parameter name and each encoder's token rows."""
    lora = {name: p.detach().cpu().clone() for name, p in denoiser.named_parameters() if p.requires_grad}
    return {"lora": lora, "tokens": {key: table.rows() for key, table in tables.items()}}


def _restore(denoiser, tables, state: dict) -> None:
    import torch

    params = dict(denoiser.named_parameters())
    unknown = sorted(set(state["lora"]) - set(params))
    if unknown or set(state["tokens"]) != set(tables):
        raise CurateError(f"checkpoint does not fit this model ({unknown[0] if unknown else 'token tables'})")
    with torch.no_grad():
        for name, tensor in state["lora"].items():
            params[name].copy_(tensor)
    for key, table in tables.items():
        table.load_rows(state["tokens"][key])

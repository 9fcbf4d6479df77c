"""Multi-concept personalization of a Stable Diffusion pipeline on an export: Custom Diffusion or LoRA.

Custom Diffusion (Kumari et al.): every concept gets its own modifier token (the export's `<c-id>`),
whose embedding starts from its class noun; only the cross-attention key/value projections
(`attn2.to_k`, `attn2.to_v`) and the new token rows train. We train those projections in place
instead of swapping in diffusers' `CustomDiffusionAttnProcessor` (which holds copies of the same
weights), so the result is an ordinary UNet that any diffusers pipeline loads.
LoRA: PEFT adapters on the UNet attention projections (to_q/k/v/out), plus the same token rows,
fused into the UNet weights when saved.

The output folder (run.json, checkpoints, pipeline, report) is `personalization.train_folder`'s.

Prior preservation (Custom Diffusion's regularisation): with `prior_loss_weight`, every step also draws
`batch_size` class images of the export's `class_images/<class>/` (prompted with the bare class noun)
and adds their denoising loss times the weight, so the class itself is not overwritten by the concepts.
The export brings the images (`curate export --class-images-from`); generating them here is not done.

Not implemented (documented gaps): generating class images with the base pipeline, Custom Diffusion's
random-crop/zoom augmentation with masked loss. SDXL and FLUX.1 train LoRA in `personalization.train_lora`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from curation.core.errors import CurateError
from curation.core.progress import ProgressFn, no_progress
from personalization.data import Export, read_export
from personalization.pivotal_tokens import add_concept_tokens
from personalization.prompts import PromptStrategy, TrainExample, training_examples
from personalization.train_folder import (
    TrainReport,
    finished_report,
    list_checkpoints,
    restore_checkpoint,
    run_identity,
    save_pipeline,
    start_run,
    trainable_state,
    write_checkpoint,
    write_report,
)
from personalization.train_images import load_square

Method = Literal["custom_diffusion", "lora"]
MixedPrecision = Literal["no", "fp16", "bf16"]

_DEFAULT_LR = {"custom_diffusion": 1e-5, "lora": 1e-4}
_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def class_examples(export: Export) -> list[TrainExample]:
    """Every concept's class images, prompted with the bare class noun (Custom Diffusion's class_prompt)."""
    missing = [c.concept_id for c in export.concepts.values() if not c.class_images]
    if missing:
        raise CurateError(
            f"prior preservation needs class images; concept {missing[0]} has none in the export"
            " (fill class_images/ with `curate export --class-images-from DIR`)"
        )
    return [
        TrainExample(image=image, prompt=concept.class_noun)
        for concept in export.concepts.values()
        for image in concept.class_images
    ]


def _load_base(pretrained: str):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(pretrained, safety_checker=None)
    except (OSError, ValueError) as exc:
        raise CurateError(f"cannot load pipeline {pretrained!r}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(pipe, StableDiffusionPipeline):
        raise CurateError(
            f"{pretrained!r} is a {type(pipe).__name__}; only Stable Diffusion 1.x/2.x pipelines train here"
        )
    return pipe


def _select_trainable(unet, text_encoder, method: Method, lora_rank: int) -> None:
    """Freeze everything, then unfreeze what the method trains (the token rows are masked per step)."""
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if method == "custom_diffusion":
        for name, param in unet.named_parameters():
            if ".attn2.to_k." in name or ".attn2.to_v." in name:
                param.requires_grad_(True)
    elif method == "lora":
        from peft import LoraConfig

        unet.add_adapter(
            LoraConfig(
                r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian", target_modules=_LORA_TARGETS
            )
        )
    else:
        raise CurateError(f"unknown method {method!r}: use 'custom_diffusion' or 'lora'")
    text_encoder.get_input_embeddings().weight.requires_grad_(True)


def train(
    export_dir: Path,
    output_dir: Path,
    pretrained: str,
    method: Method = "custom_diffusion",
    steps: int = 500,
    *,
    strategy: PromptStrategy | None = None,
    learning_rate: float | None = None,
    batch_size: int = 1,
    resolution: int = 512,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 2,
    mixed_precision: MixedPrecision = "no",
    lora_rank: int = 4,
    seed: int = 0,
    cpu: bool = False,
    resume: bool = True,
    prior_loss_weight: float | None = None,
    progress: ProgressFn = no_progress,
) -> TrainReport:
    """Personalize `pretrained` on the concepts of an export and save the result under `output_dir`.

    Every step draws its examples, noise and timesteps from a generator seeded by (seed, step), so a
    run resumed from a checkpoint continues exactly as the uninterrupted run would have. Re-running
    a finished run with the same `steps` returns its saved report without loading a model; a larger
    `steps` extends it.

    Args:
        export_dir: a `curate export` folder (metadata.jsonl, concepts/, concepts_list.json).
        output_dir: where checkpoints, the pipeline and the report go.
        pretrained: a diffusers Stable Diffusion id or local folder.
        method: "custom_diffusion" (cross-attention K/V + tokens) or "lora" (PEFT UNet attention + tokens).
        steps: total optimisation steps of the run (not of this call).
        strategy: the Gen4Gen prompting options (see `personalization.prompts`); default plain captions.
        learning_rate: default 1e-5 (Custom Diffusion) or 1e-4 (LoRA).
        resolution: training square size in pixels (512 for SD 1.x, 768 for SD 2.x-v).
        checkpoint_every: write a checkpoint every K steps (and always at the last step).
        mixed_precision: accelerate's "no" | "fp16" | "bf16"; trainable weights stay float32.
        cpu: force CPU even where an accelerator is present.
        resume: continue from the newest checkpoint; False discards old checkpoints and starts over.
        prior_loss_weight: turn on prior preservation with this weight on the class images' loss
            (Custom Diffusion and DreamBooth use 1.0); None trains on the concepts alone.
    """
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator

    if steps < 1 or batch_size < 1 or checkpoint_every < 1:
        raise CurateError("steps, batch size and checkpoint interval must be positive")
    strategy = strategy or PromptStrategy()
    output_dir = Path(output_dir)
    export = read_export(Path(export_dir))
    examples: list[TrainExample] = training_examples(export, strategy)
    if not examples:
        raise CurateError(f"no training images in {export_dir} for data source {strategy.source!r}")
    if prior_loss_weight is not None and prior_loss_weight <= 0:
        raise CurateError(f"the prior loss weight must be positive (got {prior_loss_weight})")
    prior_examples = class_examples(export) if prior_loss_weight is not None else []
    identity = run_identity(pretrained, method, export, strategy, resolution, lora_rank, prior_loss_weight)
    start_run(output_dir, identity, resume)

    finished = finished_report(output_dir, steps) if resume else None
    if finished is not None:
        return finished

    try:
        accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    except ValueError as exc:  # e.g. fp16 asked for on a machine without a GPU
        raise CurateError(f"mixed precision {mixed_precision!r} unavailable here: {exc}") from exc
    pipe = _load_base(pretrained)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    tokens = add_concept_tokens(tokenizer, text_encoder, export)
    new_ids = tokens.token_ids
    vae.requires_grad_(False)
    _select_trainable(unet, text_encoder, method, lora_rank)

    embed_weight = text_encoder.get_input_embeddings().weight
    unet_params = [p for p in unet.parameters() if p.requires_grad]
    lr = learning_rate if learning_rate is not None else _DEFAULT_LR[method]
    # Token rows get no weight decay: AdamW would otherwise shrink the frozen rows despite zero gradients.
    optimizer = torch.optim.AdamW(
        [{"params": unet_params, "weight_decay": 1e-2}, {"params": [embed_weight], "weight_decay": 0.0}],
        lr=lr,
    )

    start_step = 0
    checkpoints = list_checkpoints(output_dir) if resume else []
    if checkpoints:
        start_step, folder = checkpoints[-1]
        if start_step > steps:
            raise CurateError(
                f"{output_dir} already holds {start_step} steps; ask for at least that many or --no-resume"
            )
        restore_checkpoint(folder, unet, text_encoder, new_ids, optimizer)

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    vae.to(accelerator.device, dtype=weight_dtype)
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    unet.train()
    text_encoder.train()

    losses: list[float] = []
    started = time.perf_counter()
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(start_step, steps):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        picks = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        chosen = [examples[i] for i in picks]
        if prior_examples:
            prior_picks = torch.randint(len(prior_examples), (batch_size,), generator=generator).tolist()
            chosen += [prior_examples[i] for i in prior_picks]
        pixels = torch.stack([load_square(example.image, resolution).pixels for example in chosen])
        prompts = [example.prompt for example in chosen]
        with torch.no_grad():
            latents = vae.encode(pixels.to(accelerator.device, dtype=weight_dtype)).latent_dist.sample(
                generator=generator
            )
            latents = latents.float() * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        timesteps = torch.randint(
            noise_scheduler.config.num_train_timesteps, (len(chosen),), generator=generator
        )
        timesteps = timesteps.to(latents.device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(accelerator.device)
        with accelerator.autocast():
            hidden = text_encoder(ids)[0]
            prediction = unet(noisy, timesteps, hidden).sample
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss = F.mse_loss(prediction[:batch_size].float(), target[:batch_size].float())
        if prior_examples:
            prior_loss = F.mse_loss(prediction[batch_size:].float(), target[batch_size:].float())
            loss = loss + prior_loss_weight * prior_loss
        accelerator.backward(loss)
        tokens.zero_frozen_grads()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        done = step + 1
        if done % checkpoint_every == 0 or done == steps:
            state = trainable_state(
                accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder), new_ids
            )
            write_checkpoint(output_dir, done, state, optimizer, keep_checkpoints)
        progress("train", done, steps)
    seconds = time.perf_counter() - started

    peak = torch.cuda.max_memory_allocated() / 2**20 if accelerator.device.type == "cuda" else None
    trainable = sum(p.numel() for p in unet_params) + len(new_ids) * embed_weight.shape[1]
    pipeline_dir = output_dir / "pipeline"
    if losses or not (pipeline_dir / "model_index.json").exists():
        pipeline_dir = save_pipeline(
            pipe, accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder), method, output_dir
        )
    report = TrainReport(
        output_dir=str(output_dir),
        pipeline_dir=str(pipeline_dir),
        method=method,
        steps=steps,
        start_step=start_step,
        losses=losses,
        trainable_params=trainable,
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

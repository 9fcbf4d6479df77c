"""The diffusers mechanics of one MSP batch, on a loaded pipeline: what runs between the loop's steps.

Which timesteps run (all, or the img2img tail a scaffold leaves), the starting latents (seeded noise,
or each scaffold VAE-encoded and noised to the first timestep that runs, chosen by
``scaffold_strength`` exactly as diffusers' img2img chooses it), the prompt embeddings, one UNet
forward over every row (with ControlNet residuals when a ControlNet is given), compositing the
rows into one noise prediction per plan, and the final decode.

The UNet sees the shared latent once per segment prompt, batched in one forward. Classifier-free
guidance needs the unconditional prediction only once per image, because every segment sees the
same latent; since the masks sum to one, ``u + g * (sum_i m_i c_i - u)`` equals compositing the
per-segment guided predictions ``sum_i m_i (u + g (c_i - u))``.

**SDXL** takes the same path: its `encode_prompt` gives each segment prompt's encoder states (both
text encoders) and pooled embedding, and every UNet (and ControlNet) call gets them with the added
time ids (original size = target size = the canvas, no crop), as its own pipeline passes them. The
unconditional row is zeros when the negative prompt is empty and the model sets
`force_zeros_for_empty_prompt` (SDXL base does), as in its pipeline.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image

from curation.core.config import MSPSettings
from curation.core.errors import CurateError

if TYPE_CHECKING:
    import torch

Embeds = tuple["torch.Tensor", "torch.Tensor | None"]
"""Per UNet row: encoder hidden states, and the pooled text embedding for SDXL (None for SD 1.x/2.x)."""


def timesteps_to_run(pipe: Any, settings: MSPSettings, scaffolded: bool) -> tuple[Any, int]:
    """The timesteps that run: all of them, or the img2img tail chosen by scaffold_strength."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(settings.steps, device=pipe.device)
    order = getattr(scheduler, "order", 1)
    if not scaffolded:
        return scheduler.timesteps, settings.steps
    steps_run = min(int(settings.steps * settings.scaffold_strength), settings.steps)
    if steps_run < 1:
        raise CurateError(
            f"MSP: scaffold_strength {settings.scaffold_strength} leaves no step of {settings.steps}"
        )
    start = settings.steps - steps_run
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * order)
    return scheduler.timesteps[start * order :], steps_run


def initial_latents(pipe: Any, generators, latent_hw, scaffolds, first_t, height, width) -> torch.Tensor:
    """Pure seeded noise, or each scaffold's VAE latent noised to the first timestep that runs.

    Noise is drawn on the CPU per plan, so a seed gives the same start on any device and in any batch.
    """
    import torch

    shape = (pipe.unet.config.in_channels, *latent_hw)
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(
        pipe.device, pipe.unet.dtype
    )
    if scaffolds is None:
        return noise * pipe.scheduler.init_noise_sigma
    pixels = pipe.image_processor.preprocess(list(scaffolds), height=height, width=width)
    pixels = pixels.to(device=pipe.device, dtype=pipe.vae.dtype)
    with torch.no_grad():
        clean = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
    return pipe.scheduler.add_noise(clean.to(noise.dtype), noise, first_t.repeat(len(generators)))


def prompt_embedder(pipe: Any, xl: bool, negative_prompt: str) -> Callable[[list[str]], Embeds]:
    """Encode prompts through the pipeline's own encode_prompt, each distinct text once.

    The empty text is the unconditional prompt: the negative prompt, or zeros for an SDXL model
    with `force_zeros_for_empty_prompt` and no negative prompt, as its pipeline does.
    """
    import torch

    zeros = xl and not negative_prompt and bool(pipe.config.get("force_zeros_for_empty_prompt"))

    def embed(prompts: list[str]) -> Embeds:
        unique = sorted(set(prompts))
        texts = [negative_prompt if p == "" else p for p in unique]
        pooled = None
        with torch.no_grad():
            if xl:
                hidden, _, pooled, _ = pipe.encode_prompt(
                    texts, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
            else:
                hidden, _ = pipe.encode_prompt(texts, pipe.device, 1, False)
        if zeros and "" in unique:
            hidden[unique.index("")] = 0
            pooled[unique.index("")] = 0
        order = torch.tensor([unique.index(p) for p in prompts], device=hidden.device)
        return hidden[order], None if pooled is None else pooled[order]

    return embed


def predict_noise(
    pipe: Any, controlnet: Any, rows, t, embeds: Embeds, control, settings: MSPSettings
) -> torch.Tensor:
    """One (chunked) UNet forward over all rows, with ControlNet residuals when given.

    SDXL rows also get their pooled embedding and the time ids (canvas size, no crop, canvas size).
    """
    import torch

    hidden, pooled = embeds
    size = settings.max_unet_batch or rows.shape[0]
    height, width = (side * pipe.vae_scale_factor for side in rows.shape[-2:])
    time_ids = hidden.new_tensor([[height, width, 0, 0, height, width]])
    outputs = []
    with torch.no_grad():
        for start in range(0, rows.shape[0], size):
            part = slice(start, start + size)
            cond: dict[str, Any] = {"encoder_hidden_states": hidden[part]}
            if pooled is not None:
                n = pooled[part].shape[0]
                cond["added_cond_kwargs"] = {
                    "text_embeds": pooled[part],
                    "time_ids": time_ids.expand(n, -1),
                }
            extra = {}
            if control is not None:
                down, mid = controlnet(
                    rows[part],
                    t,
                    controlnet_cond=control[part],
                    conditioning_scale=settings.controlnet_scale,
                    return_dict=False,
                    **cond,
                )
                extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            outputs.append(pipe.unet(rows[part], t, return_dict=False, **cond, **extra)[0])
    return torch.cat(outputs)


def combine_rows(out, owner, maps, cfg: bool, settings: MSPSettings) -> torch.Tensor:
    """Per plan: composite the segment predictions by their masks (composition) and apply CFG."""
    import torch

    combined = []
    for index in range(int(owner.max()) + 1):
        rows = out[owner == index]
        uncond, cond = (rows[0], rows[1:]) if cfg else (None, rows)
        cond = (maps[index][:, None] * cond).sum(dim=0) if maps is not None else cond[0]
        combined.append(uncond + settings.guidance_scale * (cond - uncond) if cfg else cond)
    return torch.stack(combined)


def step_kwargs(scheduler: Any, generators) -> dict[str, Any]:
    """Per-plan generators for stochastic schedulers (DDPM, ancestral), when the scheduler takes them."""
    accepted = inspect.signature(scheduler.step).parameters
    return {"generator": generators} if "generator" in accepted else {}


def decode(pipe: Any, latents) -> list[Image.Image]:
    """The final latents as images, through the pipeline's VAE and image processor."""
    import torch

    vae = pipe.vae
    with torch.no_grad():
        pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(pixels, output_type="pil")

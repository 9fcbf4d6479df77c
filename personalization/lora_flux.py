"""FLUX.1's side of LoRA training: flow matching on packed latents, guidance embedding, CLIP tokens.

What differs from the UNet models (as diffusers' `train_dreambooth_lora_flux.py` trains FLUX.1 [dev]):
- flow matching: a noisy latent is the straight line (1 - sigma) * x + sigma * noise, with sigma drawn
  uniformly from the scheduler's training sigmas; the transformer predicts the velocity noise - x,
  and is given the timestep as sigma (timestep / 1000).
- the transformer reads latents packed into 2x2 patches (a sequence of h/2 * w/2 tokens of 4C) with
  their (0, row, col) position ids, and the T5 sequence with zero ids; its output is unpacked back
  to [B, C, h, w] so the (masked) loss is taken per latent pixel, as for the UNets.
- FLUX.1 [dev] is guidance-distilled: its transformer embeds a guidance value, given as
  `TRAIN_GUIDANCE` (1.0, the value diffusers' FLUX README trains LoRA with).
- latents are (VAE latents - shift_factor) * scaling_factor.

Pivotal tuning: the concept tokens are added to the CLIP ViT-L encoder only (key "clip_l"), whose
pooled output conditions every block; T5 keeps its own vocabulary and reads `<c-cat>` as its word
pieces. Adding the tokens to T5 too (diffusers' advanced FLUX script's `--enable_t5_ti`) would keep a
4.7B-parameter encoder's embedding table trainable in float32; we leave it out.
"""

from __future__ import annotations

from typing import ClassVar

from curation.core.errors import CurateError
from personalization.data import Export
from personalization.pivotal_tokens import TokenTable, add_concept_tokens
from personalization.train_images import SquareCrop

DEFAULT_PRETRAINED = "black-forest-labs/FLUX.1-dev"
DEFAULT_RESOLUTION = 512
RESOLUTION_MULTIPLE = 16
RESOLUTION_REASON = "FLUX.1's 8x VAE, then latents packed in 2x2 patches"
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
"""The transformer's attention projections, diffusers' FLUX LoRA default."""
TRAIN_GUIDANCE = 1.0
MAX_SEQUENCE_LENGTH = 512
"""T5 tokens per prompt (FLUX.1 [dev]'s limit; captions are far shorter, padding fills the rest)."""


class FluxDenoising:
    """A loaded FluxPipeline, trained as one LoRA on its transformer and tokens in its CLIP encoder."""

    base = "flux"
    embedding_components: ClassVar[dict[str, str]] = {"clip_l": "text_encoder"}

    def __init__(self, pipe) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.pipe = pipe
        self.weight_dtype = pipe.dtype
        self.denoiser = pipe.transformer
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    @classmethod
    def load(cls, pretrained: str) -> FluxDenoising:
        from diffusers import DiffusionPipeline, FluxPipeline

        from curation.models.registry import gated_error

        try:
            pipe = DiffusionPipeline.from_pretrained(pretrained)
        except (OSError, ValueError) as exc:
            if gated := gated_error(exc, "--pretrained", pretrained):
                raise gated from exc
            raise CurateError(f"cannot load pipeline {pretrained!r}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(pipe, FluxPipeline):
            raise CurateError(
                f"{pretrained!r} is a {type(pipe).__name__}, not a FLUX.1 text-to-image pipeline"
            )
        return cls(pipe)

    def add_tokens(self, export: Export) -> dict[str, TokenTable]:
        """The concept tokens in the CLIP encoder, keyed as the saved embeddings are."""
        return {"clip_l": add_concept_tokens(self.pipe.tokenizer, self.pipe.text_encoder, export)}

    def place(self, device, weight_dtype) -> None:
        """Frozen VAE, T5 and transformer in the training dtype; CLIP stays float32 (its tokens train)."""
        import torch

        self.weight_dtype = weight_dtype
        self.pipe.vae.to(device, dtype=weight_dtype)
        self.pipe.text_encoder_2.to(device, dtype=weight_dtype)
        self.denoiser.to(device, dtype=weight_dtype)
        self.pipe.text_encoder.to(device, dtype=torch.float32)
        self.pipe.text_encoder_2.requires_grad_(False)

    def text_encoders(self) -> list:
        return [self.pipe.text_encoder]

    def encode_images(self, pixels, generator):
        """Pixels in [-1, 1] -> shifted, scaled latents, float32."""
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample(generator=generator)
        return (latents.float() - vae.config.shift_factor) * vae.config.scaling_factor

    def _encode_prompts(self, prompts: list[str], device):
        pipe = self.pipe
        clip_ids = pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        pooled = pipe.text_encoder(clip_ids).pooler_output
        t5_ids = pipe.tokenizer_2(
            prompts,
            padding="max_length",
            max_length=min(MAX_SEQUENCE_LENGTH, pipe.tokenizer_2.model_max_length),
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        sequence = pipe.text_encoder_2(t5_ids)[0]
        return sequence, pooled

    def prediction_and_target(self, latents, prompts: list[str], crops: list[SquareCrop], generator):
        """One flow-matching step's transformer output and the velocity it should be, both [B, C, h, w]."""
        import torch
        from diffusers import FluxPipeline

        device, dtype = latents.device, self.weight_dtype
        batch, channels, height, width = latents.shape
        if height % 2 or width % 2:
            raise CurateError(
                f"FLUX packs latents in 2x2 patches: the resolution must be a multiple of {2 * self.vae_scale}"
            )
        noise = torch.randn(latents.shape, generator=generator).to(device)
        count = self.scheduler.config.num_train_timesteps
        indices = (torch.rand(batch, generator=generator) * count).long()
        sigmas = self.scheduler.sigmas[indices].to(device, torch.float32).view(-1, 1, 1, 1)
        timesteps = self.scheduler.timesteps[indices].to(device)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, device, dtype)
        sequence, pooled = self._encode_prompts(prompts, device)
        text_ids = torch.zeros(sequence.shape[1], 3, device=device, dtype=dtype)
        guidance = (
            torch.full((batch,), TRAIN_GUIDANCE, device=device, dtype=torch.float32)
            if self.denoiser.config.guidance_embeds
            else None
        )
        output = self.denoiser(
            hidden_states=packed.to(dtype),
            timestep=timesteps / 1000,
            guidance=guidance,
            pooled_projections=pooled.to(dtype),
            encoder_hidden_states=sequence.to(dtype),
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        prediction = FluxPipeline._unpack_latents(
            output, height * self.vae_scale, width * self.vae_scale, self.vae_scale
        )
        return prediction, noise - latents

    def save_lora_weights(self, folder) -> None:
        """Write the transformer's LoRA as `pytorch_lora_weights.safetensors` (diffusers' FLUX layout)."""
        from diffusers import FluxPipeline
        from peft.utils import get_peft_model_state_dict

        FluxPipeline.save_lora_weights(
            folder, transformer_lora_layers=get_peft_model_state_dict(self.denoiser)
        )

"""SDXL's side of LoRA training: its two CLIP encoders, its size conditioning, its denoising target.

What differs from SD 1.x (as diffusers' `train_dreambooth_lora_sdxl_advanced.py` trains it):
- two text encoders: the prompt embedding is the penultimate hidden states of CLIP ViT-L and
  OpenCLIP ViT-bigG side by side (768 + 1280 = 2048 wide); the pooled, projected ViT-bigG output
  joins the UNet's added conditioning. The concept tokens are added to both (pivotal tuning), so
  the saved embeddings have a "clip_l" and a "clip_g" key, the names diffusers' script uses.
- micro-conditioning: each image's original size, crop corner and the target size go in as
  `time_ids`, so training on centre crops does not teach the model to crop its subjects.
- the UNet predicts the noise (epsilon) or the velocity, as the base's scheduler config says.
"""

from __future__ import annotations

from typing import ClassVar

from curation.core.errors import CurateError
from personalization.data import Export
from personalization.pivotal_tokens import TokenTable, add_concept_tokens
from personalization.train_images import SquareCrop

DEFAULT_PRETRAINED = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_RESOLUTION = 1024
RESOLUTION_MULTIPLE = 8
RESOLUTION_REASON = "SDXL's 8x VAE, which drops the pixels past the last multiple"
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
"""The UNet's attention projections, diffusers' SDXL LoRA default."""


class SDXLDenoising:
    """A loaded StableDiffusionXLPipeline, trained as one LoRA on its UNet and tokens in both encoders."""

    base = "sdxl"
    embedding_components: ClassVar[dict[str, str]] = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}

    def __init__(self, pipe) -> None:
        from diffusers import DDPMScheduler

        self.pipe = pipe
        self.weight_dtype = pipe.dtype
        self.denoiser = pipe.unet
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    @classmethod
    def load(cls, pretrained: str) -> SDXLDenoising:
        from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

        from curation.models.registry import gated_error

        try:
            pipe = DiffusionPipeline.from_pretrained(pretrained)
        except (OSError, ValueError) as exc:
            if gated := gated_error(exc, "--pretrained", pretrained):
                raise gated from exc
            raise CurateError(f"cannot load pipeline {pretrained!r}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(pipe, StableDiffusionXLPipeline):
            raise CurateError(
                f"{pretrained!r} is a {type(pipe).__name__}, not an SDXL text-to-image pipeline"
            )
        return cls(pipe)

    def add_tokens(self, export: Export) -> dict[str, TokenTable]:
        """The concept tokens in both CLIP encoders, keyed as the saved embeddings are."""
        return {
            "clip_l": add_concept_tokens(self.pipe.tokenizer, self.pipe.text_encoder, export),
            "clip_g": add_concept_tokens(self.pipe.tokenizer_2, self.pipe.text_encoder_2, export),
        }

    def place(self, device, weight_dtype) -> None:
        """Frozen VAE and UNet in the training dtype; the text encoders stay float32 (their tokens train)."""
        import torch

        self.weight_dtype = weight_dtype
        self.pipe.vae.to(device, dtype=weight_dtype)
        self.denoiser.to(device, dtype=weight_dtype)
        for encoder in (self.pipe.text_encoder, self.pipe.text_encoder_2):
            encoder.to(device, dtype=torch.float32)

    def text_encoders(self) -> list:
        return [self.pipe.text_encoder, self.pipe.text_encoder_2]

    def encode_images(self, pixels, generator):
        """Pixels in [-1, 1] -> scaled latents, float32."""
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample(generator=generator)
        return latents.float() * vae.config.scaling_factor

    def _encode_prompts(self, prompts: list[str], device):
        import torch

        hidden, pooled = [], None
        for tokenizer, encoder in (
            (self.pipe.tokenizer, self.pipe.text_encoder),
            (self.pipe.tokenizer_2, self.pipe.text_encoder_2),
        ):
            ids = tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            output = encoder(ids, output_hidden_states=True)
            pooled = output[0]  # the second encoder's projected pooled output is the one that counts
            hidden.append(output.hidden_states[-2])
        return torch.cat(hidden, dim=-1), pooled

    def prediction_and_target(self, latents, prompts: list[str], crops: list[SquareCrop], generator):
        """One denoising step's UNet output and what it should have been, both [B, C, h, w]."""
        import torch

        device = latents.device
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(
            self.scheduler.config.num_train_timesteps, (len(latents),), generator=generator
        ).to(device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        hidden, pooled = self._encode_prompts(prompts, device)
        resolution = crops[0].pixels.shape[-1]
        time_ids = torch.tensor(
            [[*c.original_size, *c.crop_top_left, resolution, resolution] for c in crops],
            dtype=torch.float32,
            device=device,
        )
        dtype = self.weight_dtype
        prediction = self.denoiser(
            noisy.to(dtype),
            timesteps,
            hidden.to(dtype),
            added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)},
        ).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            return prediction, self.scheduler.get_velocity(latents, noise, timesteps)
        return prediction, noise

    def save_lora_weights(self, folder) -> None:
        """Write the UNet's LoRA as `pytorch_lora_weights.safetensors` (diffusers' SDXL layout)."""
        from diffusers import StableDiffusionXLPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.denoiser))
        StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=layers)

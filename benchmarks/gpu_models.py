"""Today's checkpoints at full size, random weights, for the GPU suite: FLUX.1 Fill and SDXL base.

The published configs of `black-forest-labs/FLUX.1-Fill-dev` (transformer, CLIP-L, T5-XXL encoder,
16-channel VAE, FLUX's shifted flow-matching scheduler) and `stabilityai/stable-diffusion-xl-base-1.0`
(the 4-channel UNet, on the encoders and VAE of `benchmarks.bench_repaint`'s SDXL). Built inside a
`torch.device(...)` context they land on the GPU directly (seconds, not minutes of CPU init) or on the
meta device (no memory: the dry run counts their parameters against `PUBLISHED_PARAMS`). The tiny
versions of the same classes are the tests' (tests/fixtures/tiny_flux.py, tiny_pipelines.py), apart
from a tiny open_clip config registered here (`tiny_open_clip`).

No tokenizer files can be downloaded: CLIP's is the real BPE vocabulary (open_clip ships it), T5's the
tests' small Unigram vocabulary with T5's specials; prompts are padded to the same 512 T5 tokens, so
the T5 encoder does the real amount of work on ids inside its 32128-row vocabulary.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

PUBLISHED_PARAMS = {
    "FLUX.1 Fill transformer": 11_902_391_360,
    "FLUX.1 T5-XXL encoder": 4_762_310_656,
    "FLUX.1 CLIP-L text encoder": 123_060_480,
    "SDXL base UNet": 2_567_463_684,
}
"""Parameter counts of the real checkpoints, from their safetensors files:
- FLUX.1-Fill-dev's transformer: 11,902,391,360 BF16 tensors' elements; FLUX.1-dev's is 11,901,408,320
  (its bf16 file: 23,802,816,640 bytes); Fill's x_embedder takes 384 input channels instead of 64
  (packed latents + masked-image latents + the 8x8 mask), 320 x 3072 = 983,040 more;
- T5 v1.1 XXL's encoder (FLUX.1's text_encoder_2, also SD3's text_encoder_3): 4,762,310,656;
- CLIP ViT-L/14's text model (FLUX.1's text_encoder, SDXL's first encoder): 123,060,480;
- SDXL base 1.0's UNet: 2,567,463,684 (its fp32 file: 10.27 GB)."""


def full_flux_fill(tmp: Path) -> Any:
    """A FluxFillPipeline with FLUX.1-Fill-dev's configs; tokenizers are written under `tmp`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxFillPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from tests.fixtures.tiny_flux import build_t5_tokenizer
    from tests.fixtures.tiny_pipelines import load_clip_tokenizer, write_clip_tokenizer

    torch.manual_seed(0)
    clip_tokenizer = load_clip_tokenizer(write_clip_tokenizer(tmp / "flux-clip-tokenizer"))
    clip = CLIPTextConfig(  # openai/clip-vit-large-patch14's text model
        vocab_size=len(clip_tokenizer),
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        projection_dim=768,
        max_position_embeddings=77,
        bos_token_id=clip_tokenizer.bos_token_id,
        eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id,
    )
    t5 = T5Config(  # google/t5-v1_1-xxl's encoder
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=384,  # packed latents 64 + packed masked-image latents 64 + packed 8x8 mask 256
        out_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=1024,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
    )
    with torch.device("cpu"):  # the scheduler's tables stay on the CPU, whatever device builds the rest
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    return FluxFillPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=CLIPTextModel(clip),
        tokenizer=clip_tokenizer,
        text_encoder_2=T5EncoderModel(t5),
        tokenizer_2=build_t5_tokenizer(tmp / "flux-t5-tokenizer"),
        transformer=transformer,
    )


def sdxl_base(inpaint: Any) -> Any:
    """`stabilityai/stable-diffusion-xl-base-1.0`: the inpainting pipeline's encoders, VAE and scheduler
    around a 4-channel UNet of the same config (the base the inpainting model was fine-tuned from)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel.from_config({**inpaint.unet.config, "in_channels": 4})
    parts = {name: part for name, part in inpaint.components.items() if name != "unet"}
    return StableDiffusionXLPipeline(**parts, unet=unet, add_watermarker=False)


TINY_OPEN_CLIP = "gpu-suite-tiny-clip"
_TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_open_clip() -> str:
    """Register a width-32, 2-layer open_clip ViT (the real BPE tokenizer) and return its name.

    The shape of tests/fixtures/tiny_clip.py's; registered here because that module defines pytest
    fixtures, and the suite runs where pytest is not installed.
    """
    import json

    import open_clip

    if TINY_OPEN_CLIP not in open_clip.list_models():
        path = Path(tempfile.mkdtemp(prefix="tiny-clip-")) / f"{TINY_OPEN_CLIP}.json"
        path.write_text(json.dumps(_TINY_OPEN_CLIP_CONFIG))
        open_clip.add_model_config(path)
    return TINY_OPEN_CLIP

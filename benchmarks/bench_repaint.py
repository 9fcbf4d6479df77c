"""Batched diffusion repaint against a one-image-per-call loop like Gen4Gen's s3 script.

Both sides run the same `DiffusionRepainter` (same mask, per-image seeds, paste-back); the only
difference is how many candidates go into one pipeline call. Printed: images/s for each and the
ratio. On CPU the clock is the process's CPU time with one torch thread, so other work on a shared
machine does not distort the ratio; on a GPU it is wall time after `torch.cuda.synchronize()`.

`--full` builds the full-size SDXL inpainting architecture (`diffusers/stable-diffusion-xl-1.0-
inpainting-0.1`'s published config values: UNet 320/640/1280 with 1/2/10 transformer layers, CLIP
ViT-L + OpenCLIP bigG text encoders, 1024 px VAE) with random weights: speed does not depend on
the weights, and none can be downloaded here. `--full --check` builds it on the meta device only
and prints parameter counts, to verify the configs on a machine without a GPU.

Usage:
    .venv/bin/python benchmarks/bench_repaint.py                      # tiny random-init SDXL inpaint, CPU
    .venv/bin/python benchmarks/bench_repaint.py --full --check       # full-size configs, no compute
    .venv/bin/python benchmarks/bench_repaint.py --full --size 1024 --steps 60 --images 16 --batch 8  # GPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.core.config import GenerateConfig
from generators.compose import Composition, Layer
from generators.repaint import DiffusionRepainter, RepaintJob, load_repainter


def full_sdxl_inpaint() -> object:
    """The SDXL inpainting pipeline at full size, random weights (about 3.5B parameters)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tests.fixtures.tiny_pipelines import load_clip_tokenizer, write_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = load_clip_tokenizer(write_clip_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer"))
    common = {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    text_l = CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, **common
    )
    text_g = CLIPTextConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        projection_dim=1280,
        hidden_act="gelu",
        **common,
    )
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=9,
        out_channels=4,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    with torch.device("cpu"):  # a scheduler's tables stay on the CPU (numpy), whatever device builds the rest
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        )
    return StableDiffusionXLInpaintPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_l),
        text_encoder_2=CLIPTextModelWithProjection(text_g),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def full_sdxl_refiner(base: object) -> object:
    """The SDXL refiner at full size, random weights (`stabilityai/stable-diffusion-xl-refiner-1.0`'s
    published UNet config: 384/768/1536/1536, 4 transformer layers, conditioned on OpenCLIP bigG only),
    sharing the base's second text encoder and VAE as Gen4Gen's hand-off does."""
    import torch
    from diffusers import StableDiffusionXLInpaintPipeline, UNet2DConditionModel

    torch.manual_seed(1)
    with torch.device("cpu"):
        scheduler = type(base.scheduler).from_config(base.scheduler.config)
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        block_out_channels=(384, 768, 1536, 1536),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(6, 12, 24, 24),
        transformer_layers_per_block=4,
        cross_attention_dim=1280,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2560,
    )
    return StableDiffusionXLInpaintPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def check_full() -> None:
    """Build the full-size modules on the meta device and print their parameter counts."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        pipe = full_sdxl_inpaint()
        refiner = full_sdxl_refiner(pipe)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        count = sum(p.numel() for p in getattr(pipe, name).parameters())
        print(f"{name:15s} {count / 1e6:8.1f} M parameters")
    print(f"{'refiner unet':15s} {sum(p.numel() for p in refiner.unet.parameters()) / 1e6:8.1f} M parameters")


def repaint_jobs(n: int, size: int) -> list[RepaintJob]:
    """Noise backgrounds with two square objects each; seeds 0..n-1."""
    rng = np.random.default_rng(0)
    jobs = []
    for seed in range(n):
        background = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        side = size // 3
        alpha = np.ones((side, side), np.float32)
        layers = [
            Layer(f"c{i}", x, size // 3, rng.integers(0, 256, (side, side, 3), dtype=np.uint8), alpha)
            for i, x in enumerate((size // 12, size // 2))
        ]
        jobs.append(RepaintJob(Composition(background, layers), "a realistic photo of a cat and a mug", seed))
    return jobs


def clock(gpu: bool) -> float:
    if gpu:
        import torch

        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size SDXL inpaint architecture (GPU)")
    parser.add_argument("--check", action="store_true", help="with --full: build on meta, print sizes, exit")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="canvas side in pixels")
    args = parser.parse_args()
    if args.check:
        check_full()
        return

    import torch

    gpu = torch.cuda.is_available()
    if not gpu:
        torch.set_num_threads(1)
    settings = GenerateConfig(steps=args.steps, batch_size=args.batch)
    if args.full:
        device, dtype = ("cuda", torch.float16) if gpu else ("cpu", torch.float32)
        pipe = full_sdxl_inpaint().to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
        repainter = DiffusionRepainter(name="sdxl-inpaint-random", settings=settings, pipe=pipe)
    else:
        from tests.fixtures.tiny_pipelines import build_tiny_sdxl_inpaint

        folder = build_tiny_sdxl_inpaint(Path(tempfile.mkdtemp()))
        repainter = load_repainter(str(folder), settings.model_copy(update={"repaint": str(folder)}))
    jobs = repaint_jobs(args.images, args.size)
    repainter(jobs[: args.batch])  # warm-up: kernels, allocator, lazy inits

    start = clock(gpu)
    for job in jobs:
        repainter([job])
    single = args.images / (clock(gpu) - start)
    start = clock(gpu)
    for i in range(0, len(jobs), args.batch):
        repainter(jobs[i : i + args.batch])
    batched = args.images / (clock(gpu) - start)
    timing = "wall, GPU" if gpu else "CPU time, 1 thread"
    print(
        f"{'full' if args.full else 'tiny'} SDXL inpaint, {args.size}px, {args.steps} steps, "
        f"{args.images} images ({timing})"
    )
    print(f"one image per call : {single:8.3f} images/s")
    print(f"batch of {args.batch:<9d} : {batched:8.3f} images/s")
    print(f"ratio batched/single: {batched / single:.2f}x")


if __name__ == "__main__":
    main()

"""One GPU benchmark run: full-size architectures with random weights, every result a ratio and an absolute.

Weights are random (none can be downloaded; speed does not depend on them). Each section runs our own
code on models built in memory, under a time cap; an error or a timeout is reported and the next runs.
Sections run in this order, most valuable first, so a run cut short by `--budget` loses the least:

- flux-fill: FLUX.1 Fill (`black-forest-labs/FLUX.1-Fill-dev`'s configs: 11.9B transformer, T5-XXL and
  CLIP-L encoders, 16-channel VAE) at 1024x1024 in bf16: a batch per call vs one image per call,
  images/s and peak memory of each.
- lora-sdxl: SDXL LoRA training (`stabilityai/stable-diffusion-xl-base-1.0`'s UNet, rank 16, bf16
  frozen base, a concept token trained in both text encoders as `curate train --base sdxl` does)
  through `personalization.train_lora`'s step at 1024 px: gradient checkpointing vs plain, steps/s
  and peak memory of each.
- repaint: the SDXL inpainting architecture (`diffusers/stable-diffusion-xl-1.0-inpainting-0.1`'s config)
  through `DiffusionRepainter` at 1024x1024 in fp16: a batch per call vs one image per call; PyTorch SDPA
  vs the classic attention; the refiner hand-off (`stabilityai/stable-diffusion-xl-refiner-1.0`'s UNet,
  sharing the base's second text encoder and VAE) vs the base alone; a torch.compile'd UNet vs eager.
- index: the embedding path of `curate index` without its database: PNG decode, open_clip ViT-L-14
  (pretrained=None) image and caption embeddings, presence (CP-CLIP on the planned boxes) through
  `curation.scores` vs the bare CLIP forward, with each stage's share; the OWLv2 base detector
  through `OwlDetector.detect` vs its bare forward.
- msp: SD 1.5 through `MSPGenerator` (kappa 0.1, 50 steps, 3 subjects + background, 512 px) vs plain
  text-to-image of the same pipeline, time per image.
- caption: a LLaVA-1.5-7B-size VLM through `TransformersCaptioner` vs bare `generate`, each caption held
  to the full token budget; skipped when the GPU has too little free memory.

Every section prints its peak GPU memory; the whole run stays under `--budget` seconds (default 540, so
that installing the wheels and starting Python fit one 10-minute command beside it).
Published figures to compare against: SDXL 1024x1024, 30 steps, H100: 2.5 s/image plain diffusers;
SD 1.5 512x512, 50 steps, A100: 1.59 s plain, 1.07 s compiled; CLIP ViT-L/14 ~800 images/s (RTX 4090).

Nothing here needs FiftyOne. `--dry-run` runs the same code with tiny random-init models on the CPU, then
builds every full-size model on the meta device and checks the parameter counts of today's checkpoints
against their published sizes (`benchmarks.gpu_models.PUBLISHED_PARAMS`; tests/test_gpu_suite.py).

Usage (benchmarks/gpu_suite.sh installs what a bare GPU image lacks from a wheel folder first):
    bash benchmarks/gpu_suite.sh                 # on a CUDA machine
    bash benchmarks/gpu_suite.sh --dry-run       # anywhere
    bash benchmarks/gpu_suite.sh --sections flux-fill,lora-sdxl
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECTIONS = ("flux-fill", "lora-sdxl", "repaint", "index", "msp", "caption")
CAPS = {"flux-fill": 150, "lora-sdxl": 100, "repaint": 240, "index": 90, "msp": 90, "caption": 100}
"""Seconds each section may take at most (repaint, index, msp and caption took about 150, 50, 15 and 30
on an H200; flux-fill and lora-sdxl are estimates: 60-90 and 40)."""
BUDGET = 540
"""Seconds of the whole GPU run by default: gpu_suite.sh's wheel install and imports need the rest of 600."""
DRY_CAP_FACTOR = 4
"""The dry run's caps are looser: a busy small CPU, not the code, sets its pace."""
CAPTION_FREE_GIB = 45
"""Building the 7B VLM in fp32 on the GPU and halving it needs about 3 x 14 GB free."""


@dataclass(frozen=True)
class Scale:
    """Model sizes and work per section: the GPU run's, or the dry run's tiny ones."""

    tiny: bool
    flux_size: int
    flux_steps: int
    flux_images: int
    flux_batch: int
    lora_resolution: int
    lora_steps: int
    repaint_size: int
    repaint_steps: int
    repaint_images: int
    repaint_batch: int
    msp_size: int
    msp_steps: int
    msp_repeats: int
    index_candidates: int
    index_size: int
    index_batch: int
    detect_images: int
    caption_images: int
    caption_tokens: int
    compile_backend: str


GPU = Scale(False, 1024, 8, 4, 2, 1024, 6, 1024, 10, 8, 4, 512, 50, 3, 96, 1024, 32, 6, 4, 60, "inductor")
DRY = Scale(True, 64, 2, 2, 2, 64, 2, 64, 2, 2, 2, 64, 10, 1, 6, 64, 4, 2, 2, 4, "eager")
"""The dry run compiles with Dynamo's eager backend: the same wrapping, no C++ build on a small CPU."""


class SectionTimeout(Exception):
    """A section ran past its cap."""


@dataclass
class Context:
    """What every section gets: its scale, where models run, and a scratch folder."""

    scale: Scale
    device: str
    dtype: Any
    tmp: Path
    peak_seen: int = 0
    """Bytes: the highest GPU peak of this section before its last `reset_peak`."""

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def now(self) -> float:
        """Wall seconds, after the GPU has finished what was queued."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def build(self, dtype: Any = None) -> Iterator[None]:
        """Where full-size models are built: directly on the GPU (seconds, not minutes of CPU init), in
        `dtype` when given (FLUX.1's 11.9B transformer would need 48 GB in float32 before a cast)."""
        import torch

        previous = torch.get_default_dtype()
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            with torch.device(self.device):
                yield
        finally:
            torch.set_default_dtype(previous)

    def peak(self) -> str:
        """Peak GPU memory since the last `reset_peak` ("n/a" on the CPU)."""
        if not self.cuda:
            return "n/a"
        import torch

        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"

    def reset_peak(self) -> None:
        """Start measuring a new peak inside a section; the section's own peak keeps the highest."""
        if self.cuda:
            import torch

            self.peak_seen = max(self.peak_seen, torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()


def ratio(section: str, what: str, value: float, detail: str) -> None:
    """One result line: `[section] what: 1.84x (absolutes)`; the test reads these.

    Below 0.1 the ratio keeps two significant digits: a tiny model's bare forward is so fast that the
    dry run's index ratio can be 0.004x, which two decimals would print as 0.00x.
    """
    decimals = 2 if value >= 0.1 or value <= 0 else 1 - math.floor(math.log10(value))
    print(f"[{section}] {what}: {value:.{decimals}f}x ({detail})", flush=True)


def note(section: str, text: str) -> None:
    print(f"[{section}] {text}", flush=True)


@contextmanager
def time_cap(seconds: float) -> Iterator[None]:
    """Raise SectionTimeout in the main thread once `seconds` have passed."""

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"stopped at its {seconds:.0f} s cap")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def per_second(ctx: Context, run: Callable[[], None], count: int) -> float:
    start = ctx.now()
    run()
    return count / (ctx.now() - start)


# -- sections ----------------------------------------------------------------------------------


def flux_repainter(ctx: Context, settings: Any) -> Any:
    """`FluxFillRepainter` on FLUX.1 Fill built on the GPU in bf16 (fp16 overflows T5), or on a tiny
    FLUX.1 Fill loaded through `load_flux_fill_repainter`, as a hub id would load."""
    import torch

    from benchmarks.gpu_models import full_flux_fill
    from generators.flux_fill import FluxFillRepainter, load_flux_fill_repainter

    if ctx.scale.tiny:
        from tests.fixtures.tiny_flux import build_tiny_flux_fill

        return load_flux_fill_repainter(str(build_tiny_flux_fill(ctx.tmp)), settings)
    with ctx.build(torch.bfloat16):
        pipe = full_flux_fill(ctx.tmp)
    pipe.set_progress_bar_config(disable=True)
    return FluxFillRepainter("flux-fill (random weights)", settings, pipe)


def flux_fill_section(ctx: Context) -> None:
    from benchmarks.bench_repaint import repaint_jobs
    from curation.core.config import FluxFillSettings, GenerateConfig

    s = ctx.scale
    flux = FluxFillSettings(steps=s.flux_steps, offload="none")
    settings = GenerateConfig(batch_size=s.flux_batch, device=ctx.device, flux_fill=flux)
    repainter = flux_repainter(ctx, settings)
    jobs = repaint_jobs(s.flux_images, s.flux_size)
    batch = s.flux_batch

    def throughput(size: int) -> tuple[float, str]:
        ctx.reset_peak()
        rate = per_second(
            ctx, lambda: [repainter(jobs[i : i + size]) for i in range(0, len(jobs), size)], len(jobs)
        )
        return rate, ctx.peak()

    repainter(jobs[:batch])  # warm-up: kernels, allocator, lazy inits
    single, single_peak = throughput(1)
    batched, batched_peak = throughput(batch)
    ratio(
        "flux-fill",
        f"batch of {batch} vs one image per call",
        batched / single,
        f"{single:.3f} -> {batched:.3f} images/s, peak GPU memory {single_peak} -> {batched_peak}; "
        f"{s.flux_size}px, {s.flux_steps} steps, guidance {flux.guidance_scale:g}, "
        f"{str(repainter.pipe.transformer.dtype).removeprefix('torch.')}",
    )


def sdxl_denoising(ctx: Context) -> Any:
    """`SDXLDenoising` on SDXL base: full size built on the GPU, or a tiny one loaded from its folder."""
    from personalization.lora_sdxl import SDXLDenoising

    if ctx.scale.tiny:
        from tests.fixtures.tiny_pipelines import build_tiny_sdxl

        return SDXLDenoising.load(str(build_tiny_sdxl(ctx.tmp)))
    from benchmarks.bench_repaint import full_sdxl_inpaint
    from benchmarks.gpu_models import sdxl_base

    with ctx.build():
        pipe = sdxl_base(full_sdxl_inpaint())
    return SDXLDenoising(pipe)


def training_images(folder: Path, n: int, size: int) -> list[Path]:
    """`n` noise PNGs with a flat square each: what a LoRA step decodes, crops and encodes."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[size // 4 : size // 2, size // 4 : size // 2] = rng.integers(0, 256, 3)
        paths.append(folder / f"train-{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def lora_sdxl_section(ctx: Context) -> None:
    import torch

    from personalization.data import Export, ExportConcept
    from personalization.lora_sdxl import LORA_TARGETS
    from personalization.train_lora import LoraExample, _add_lora, step_loss

    s = ctx.scale
    rank, batch = 16, 1
    model = sdxl_denoising(ctx)
    # as `curate train --base sdxl`: the concept's token is a new row in both text encoders, trained
    # with the LoRA, so each step also runs the encoders' backward pass
    concept = ExportConcept("cat", "<c-cat>", "cat", refs=(), masks=(), mask_flags=())
    tables = model.add_tokens(Export(ctx.tmp, {"cat": concept}))
    weight_dtype = torch.bfloat16 if ctx.cuda else torch.float32
    for frozen in (*model.text_encoders(), model.pipe.vae):
        frozen.requires_grad_(False)
    model.place(ctx.device, weight_dtype)
    params = _add_lora(model.denoiser, rank, LORA_TARGETS, gradient_checkpointing=False, seed=0)
    for table in tables.values():
        table.weight.requires_grad_(True)
    optimizer = torch.optim.AdamW([*params, *(table.weight for table in tables.values())], lr=1e-4)
    examples = [
        LoraExample(path, "a photo of <c-cat> cat on a wooden table")
        for path in training_images(ctx.tmp / "lora", 4, s.lora_resolution)
    ]
    model.denoiser.train()

    def steps(count: int) -> None:
        for step in range(count):
            generator = torch.Generator().manual_seed(step)
            chosen = [examples[(step * batch + k) % len(examples)] for k in range(batch)]
            loss = step_loss(model, chosen, s.lora_resolution, False, batch, None, generator)
            loss.backward()
            for table in tables.values():
                table.zero_frozen_grads()
            optimizer.step()
            optimizer.zero_grad()

    def throughput() -> tuple[float, str]:
        steps(1)  # warm-up
        ctx.reset_peak()
        return per_second(ctx, lambda: steps(s.lora_steps), s.lora_steps), ctx.peak()

    plain, plain_peak = throughput()
    model.denoiser.enable_gradient_checkpointing()
    checkpointed, checkpointed_peak = throughput()
    trainable = sum(p.numel() for p in params)
    ratio(
        "lora-sdxl",
        "gradient checkpointing vs plain, steps/s",
        checkpointed / plain,
        f"{plain:.2f} -> {checkpointed:.2f} steps/s, peak GPU memory {plain_peak} -> {checkpointed_peak}; "
        f"{s.lora_resolution}px, batch {batch}, rank {rank} ({trainable / 1e6:.1f} M trainable) + a token "
        f"in both text encoders, {str(weight_dtype).removeprefix('torch.')} UNet",
    )


def sdxl(ctx: Context, settings: Any) -> tuple[Any, Any]:
    """SDXL inpainting base and refiner pipelines: full size built in memory, or tiny ones through
    `load_repainter`, as a hub id would load."""
    from benchmarks.bench_repaint import full_sdxl_inpaint, full_sdxl_refiner
    from generators.repaint import load_repainter

    if ctx.scale.tiny:
        from tests.fixtures.tiny_pipelines import build_tiny_sdxl_inpaint

        base, refiner = build_tiny_sdxl_inpaint(ctx.tmp), build_tiny_sdxl_inpaint(ctx.tmp, refiner=True)
        loaded = load_repainter(
            str(base), settings.model_copy(update={"repaint": str(base), "refiner": str(refiner)})
        )
        return loaded.pipe, loaded.refiner
    with ctx.build():
        pipe = full_sdxl_inpaint().to(dtype=ctx.dtype)
        refiner = full_sdxl_refiner(pipe).to(dtype=ctx.dtype)
    for model in (pipe, refiner):
        model.set_progress_bar_config(disable=True)
    return pipe, refiner


def repaint(ctx: Context) -> None:
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from benchmarks.bench_repaint import repaint_jobs
    from curation.core.config import GenerateConfig
    from generators.repaint import DiffusionRepainter

    s = ctx.scale
    settings = GenerateConfig(steps=s.repaint_steps, batch_size=s.repaint_batch, device=ctx.device)
    pipe, refiner_pipe = sdxl(ctx, settings)
    repainter = DiffusionRepainter("sdxl-inpaint (random weights)", settings, pipe)
    jobs = repaint_jobs(s.repaint_images, s.repaint_size)
    batch = s.repaint_batch

    def throughput(r: DiffusionRepainter, size: int) -> float:
        return per_second(ctx, lambda: [r(jobs[i : i + size]) for i in range(0, len(jobs), size)], len(jobs))

    denoising = int(s.repaint_steps * settings.strength)
    what = f"{s.repaint_size}px, {denoising} denoising steps, {str(ctx.dtype).removeprefix('torch.')}"
    repainter(jobs[:batch])  # warm-up: kernels, allocator, lazy inits
    single = throughput(repainter, 1)
    batched = throughput(repainter, batch)
    ratio(
        "repaint",
        f"batch of {batch} vs one image per call",
        batched / single,
        f"{single:.3f} -> {batched:.3f} images/s, {what}",
    )

    for model in (pipe.unet, pipe.vae):
        model.set_attn_processor(AttnProcessor())
    repainter(jobs[:batch])
    classic = throughput(repainter, batch)
    for model in (pipe.unet, pipe.vae):
        model.set_attn_processor(AttnProcessor2_0())
    ratio(
        "repaint",
        "PyTorch SDPA vs classic attention, batched",
        batched / classic,
        f"{classic:.3f} -> {batched:.3f} images/s",
    )

    handoff = settings.model_copy(update={"refiner": "sdxl-refiner (random weights)"})
    refined = DiffusionRepainter("sdxl-inpaint + refiner", handoff, pipe, refiner=refiner_pipe)
    refined(jobs[:batch])
    with_refiner = throughput(refined, batch)
    ratio(
        "repaint",
        f"refiner hand-off at {handoff.refiner_start} vs base alone, batched",
        with_refiner / batched,
        f"{batched:.3f} -> {with_refiner:.3f} images/s",
    )
    del refined, refiner_pipe

    pipe.unet = torch.compile(pipe.unet, backend=s.compile_backend)
    start = ctx.now()
    repainter(jobs[:batch])  # compiles
    compile_s = ctx.now() - start
    compiled = throughput(repainter, batch)
    ratio(
        "repaint",
        f"torch.compile ({s.compile_backend}) UNet vs eager, batched",
        compiled / batched,
        f"{batched:.3f} -> {compiled:.3f} images/s; compile + first call {compile_s:.0f} s",
    )


def sd15(ctx: Context) -> Any:
    """`MSPGenerator` on SD 1.5 built in memory, or on a tiny SD (8x VAE) through `from_pretrained`."""
    from benchmarks.bench_msp import sd15_pipeline
    from generators.msp.pipeline import MSPGenerator

    if ctx.scale.tiny:
        from tests.fixtures.tiny_pipelines import build_tiny_sd

        return MSPGenerator.from_pretrained(build_tiny_sd(ctx.tmp, vae_downsample=8), device=ctx.device)
    with ctx.build():
        pipe = sd15_pipeline(ctx.tmp).to(dtype=ctx.dtype)
    pipe.set_progress_bar_config(disable=True)
    return MSPGenerator(pipe, model_id="sd15 (random weights)")


def msp(ctx: Context) -> None:
    from benchmarks.bench_msp import make_concepts, make_plan, timed, txt2img
    from curation.core.config import MSPSettings

    s = ctx.scale
    generator = sd15(ctx)
    subjects = 3
    concepts, plan = make_concepts(subjects), make_plan(subjects, s.msp_size)
    settings = MSPSettings(kappa=0.1, steps=s.msp_steps, guidance_scale=7.5)
    plain = timed(lambda: txt2img(generator.pipe, s.msp_size, s.msp_steps), s.msp_repeats, ctx.now)
    cost = timed(lambda: generator([plan], concepts, [0], settings), s.msp_repeats, ctx.now)
    n_comp = settings.n_composition(s.msp_steps)
    rows = (n_comp * (subjects + 2) + (s.msp_steps - n_comp) * 2) / (2 * s.msp_steps)
    ratio(
        "msp",
        "time per image, MSP / plain text-to-image",
        cost / plain,
        f"{cost:.3f} vs {plain:.3f} s/image; kappa 0.1, {s.msp_steps} steps, {subjects} subjects + background, "
        f"{s.msp_size}px; UNet rows predict {rows:.2f}x",
    )


def owlv2(ctx: Context) -> Any:
    """The OWLv2 base detector (`google/owlv2-base-patch16-ensemble`'s shape: ViT-B/16 at 960 px), or a tiny one."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from curation.scores.presence import OwlDetector
    from tests.fixtures.tiny_pipelines import load_clip_tokenizer, write_clip_tokenizer

    tokenizer = load_clip_tokenizer(write_clip_tokenizer(ctx.tmp / "owlv2-tokenizer"))
    tokenizer.model_max_length = 16
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if ctx.scale.tiny:
        small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
        config = Owlv2Config(
            text_config={**small, "vocab_size": len(tokenizer), "max_position_embeddings": 16, **ids},
            vision_config={**small, "image_size": 64, "patch_size": 16},
            projection_dim=32,
        )
    else:
        config = Owlv2Config(
            text_config={"vocab_size": len(tokenizer), **ids}, vision_config={"image_size": 960}
        )
    side = config.vision_config.image_size
    with ctx.build():
        model = Owlv2ForObjectDetection(config)
    image_processor = Owlv2ImageProcessor(size={"height": side, "width": side})
    processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    return OwlDetector(model.eval(), processor, ctx.device, square_padded=True)


def index_candidates(folder: Path, n: int, size: int) -> tuple[list[Path], list[Any]]:
    """`n` candidate PNGs (noise with a flat box per concept) and their records, as generate leaves them."""
    import numpy as np
    from PIL import Image

    from curation.core.records import Box, Candidate

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths, candidates = [], []
    side = size // 4
    for i in range(n):
        concepts = ["cat", "mug", "teddy"][: 2 + i % 2]
        boxes = [
            Box(concept_id=c, x=k * side + side // 2, y=size // 3, w=side, h=side)
            for k, c in enumerate(concepts)
        ]
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for box in boxes:
            pixels[box.y : box.y + box.h, box.x : box.x + box.w] = rng.integers(0, 256, 3)
        paths.append(folder / f"cand{i:05d}.png")
        Image.fromarray(pixels).save(paths[-1])
        candidates.append(
            Candidate(
                candidate_id=f"cand{i:05d}",
                plan_id=f"plan{i:05d}",
                shard="shard-00000",
                image=f"candidates/shard-00000/cand{i:05d}.png",
                concepts=concepts,
                boxes=boxes,
                width=size,
                height=size,
                background="a sunny garden",
                caption=" and ".join(f"<c-{c}> {c}" for c in concepts) + " in a sunny garden",
                seed=i,
                generator="gpu-suite",
            )
        )
    return paths, candidates


def index(ctx: Context) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from benchmarks.gpu_models import tiny_open_clip
    from curation.index.samples import clip_text
    from curation.scores.clip import clip_t, load_clip
    from curation.scores.presence import PresenceScorer

    s = ctx.scale
    model = tiny_open_clip() if s.tiny else "ViT-L-14"
    scorer = load_clip(model, None, device=ctx.device, batch_size=s.index_batch)
    paths, candidates = index_candidates(ctx.tmp / "index", s.index_candidates, s.index_size)
    rng = np.random.default_rng(1)
    refs = {
        c: scorer.embed_images([Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))] * 3)
        for c in ("cat", "mug", "teddy")
    }
    presence = PresenceScorer(refs, {c: c for c in refs}, scorer.embed_images)
    texts = [clip_text(c) for c in candidates]
    stages = dict.fromkeys(("PNG decode", "preprocess", "CLIP image + caption", "presence"), 0.0)

    def embedding_path() -> None:
        for i in range(0, len(paths), s.index_batch):
            clock = ctx.now()
            images = []
            for path in paths[i : i + s.index_batch]:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            stages["PNG decode"] += (now := ctx.now()) - clock
            batch = torch.stack([scorer.image_tensor(image) for image in images])
            stages["preprocess"] += (clock := ctx.now()) - now
            clip_t(scorer.embed_tensors(batch), scorer.embed_texts(texts[i : i + s.index_batch]))
            stages["CLIP image + caption"] += (now := ctx.now()) - clock
            presence.score(list(zip(images, candidates[i : i + s.index_batch], strict=True)))
            stages["presence"] += ctx.now() - now

    tensors = [scorer.image_tensor(Image.open(path).convert("RGB")) for path in paths]

    def bare_forward() -> None:
        for i in range(0, len(tensors), s.index_batch):
            scorer.embed_tensors(torch.stack(tensors[i : i + s.index_batch]))
            scorer.embed_texts(texts[i : i + s.index_batch])

    n = s.index_candidates
    embedding_path()  # warm-up
    stages.update(dict.fromkeys(stages, 0.0))
    path_rate = per_second(ctx, embedding_path, n)
    bare = per_second(ctx, bare_forward, n)
    total = sum(stages.values())
    ratio(
        "index",
        "embedding path (decode, CLIP, presence) vs bare CLIP forward (image + caption)",
        path_rate / bare,
        f"{path_rate:.1f} vs {bare:.1f} candidates/s; {model} fp32, {n} PNGs of {s.index_size}px",
    )
    note("index", "time shares: " + ", ".join(f"{k} {v / total:.0%}" for k, v in stages.items()))

    detector = owlv2(ctx)
    images = [Image.open(path).convert("RGB") for path in paths[: s.detect_images]]
    queries = ["cat", "mug", "teddy bear"]
    detector.detect(images[0], queries, 0.1)  # warm-up
    detect = per_second(ctx, lambda: [detector.detect(im, queries, 0.1) for im in images], len(images))
    inputs = [
        detector.processor(text=[queries], images=im, return_tensors="pt").to(ctx.device) for im in images
    ]

    def bare_detect() -> None:
        with torch.no_grad():
            for one in inputs:
                detector.model(**one)

    bare_rate = per_second(ctx, bare_detect, len(images))
    ratio(
        "index",
        "OWLv2 detect() vs bare forward",
        detect / bare_rate,
        f"{detect:.2f} vs {bare_rate:.2f} images/s; {detector.processor.image_processor.size['height']}px input, fp32",
    )


def llava(ctx: Context) -> tuple[Any, Any]:
    """(processor, model): LLaVA-1.5-7B's shape (CLIP ViT-L/14 at 336 px, Llama-2-7B), or a tiny one."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from tests.fixtures.tiny_pipelines import LLAVA_CHAT_TEMPLATE, load_clip_tokenizer, write_clip_tokenizer

    tiny = ctx.scale.tiny
    side, patch = (32, 8) if tiny else (336, 14)
    tokenizer = load_clip_tokenizer(write_clip_tokenizer(ctx.tmp / "llava-tokenizer"))
    tokenizer.model_max_length = 512 if tiny else 4096
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        ),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    vision = {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
    }
    text = {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
    }
    if tiny:
        vision = text = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        }
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision, image_size=side, patch_size=patch),
        text_config=LlamaConfig(
            **text,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    with ctx.build():
        model = LlavaForConditionalGeneration(config).to(dtype=ctx.dtype)
    return processor, model


def caption(ctx: Context) -> None:
    import numpy as np
    import torch

    from benchmarks.bench_msp import make_concepts, make_plan
    from curation.core.config import GenerateConfig
    from generators.recaption import TransformersCaptioner

    s = ctx.scale
    if ctx.cuda:
        free = torch.cuda.mem_get_info()[0] / 2**30
        if free < CAPTION_FREE_GIB:
            raise MemoryError(f"skipped: {free:.0f} GiB free on the GPU, {CAPTION_FREE_GIB} needed")
    processor, model = llava(ctx)
    model.generation_config.min_new_tokens = s.caption_tokens  # random weights may stop at once
    settings = GenerateConfig(recaption_max_tokens=s.caption_tokens, device=ctx.device)
    captioner = TransformersCaptioner("llava-1.5-7b-size (random weights)", settings, processor, model)
    rng = np.random.default_rng(0)
    size = 512 if not s.tiny else 64
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(s.caption_images)]
    concepts, plan = make_concepts(2), make_plan(2, size)
    template = "a photo of <c0> dog and <c1> dog in a quiet park"
    captioner(images[0], plan, concepts, template)  # warm-up
    captioned = per_second(
        ctx, lambda: [captioner(im, plan, concepts, template) for im in images], len(images)
    )
    prompt = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": settings.recaption_prompt}],
            }
        ],
        add_generation_prompt=True,
    )
    inputs = [
        processor(images=im, text=prompt, return_tensors="pt").to(model.device, model.dtype) for im in images
    ]

    def bare_generate() -> None:
        with torch.inference_mode():
            for one in inputs:
                model.generate(**one, max_new_tokens=s.caption_tokens, do_sample=False)

    bare = per_second(ctx, bare_generate, len(images))
    ratio(
        "caption",
        "TransformersCaptioner vs bare generate",
        captioned / bare,
        f"{captioned:.2f} vs {bare:.2f} captions/s; {s.caption_tokens} new tokens each, "
        f"{str(ctx.dtype).removeprefix('torch.')}",
    )


RUNNERS: dict[str, Callable[[Context], None]] = {
    "flux-fill": flux_fill_section,
    "lora-sdxl": lora_sdxl_section,
    "repaint": repaint,
    "msp": msp,
    "index": index,
    "caption": caption,
}


# -- the run -----------------------------------------------------------------------------------


def check_full_size(tmp: Path) -> bool:
    """Build the GPU run's full-size models on the meta device (no memory, no compute), print their
    sizes and check today's checkpoints against their published parameter counts: a wrong config value
    shows up here, on any machine, not on the first GPU. False when a count differs."""
    import torch

    from benchmarks.gpu_models import PUBLISHED_PARAMS, full_flux_fill, sdxl_base
    from curation.core.config import GenerateConfig

    ctx = Context(GPU, "meta", torch.float16, tmp)

    def count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    def millions(module: Any) -> str:
        return f"{count(module) / 1e6:.1f} M"

    base, refiner = sdxl(ctx, GenerateConfig())
    note(
        "full-size",
        f"SDXL inpaint UNet {millions(base.unet)}, refiner UNet {millions(refiner.unet)}, "
        f"text encoders {millions(base.text_encoder)} + {millions(base.text_encoder_2)}, VAE {millions(base.vae)}",
    )
    note("full-size", f"SD 1.5 UNet {millions(sd15(ctx).pipe.unet)}")
    note("full-size", f"OWLv2 {millions(owlv2(ctx).model)}; LLaVA {millions(llava(ctx)[1])}")
    with ctx.build():
        flux = full_flux_fill(tmp)
        sdxl_unet = sdxl_base(base).unet
    built = {
        "FLUX.1 Fill transformer": flux.transformer,
        "FLUX.1 T5-XXL encoder": flux.text_encoder_2,
        "FLUX.1 CLIP-L text encoder": flux.text_encoder,
        "SDXL base UNet": sdxl_unet,
    }
    ok = True
    for name, module in built.items():
        found, published = count(module), PUBLISHED_PARAMS[name]
        ok &= found == published
        verdict = "ok" if found == published else f"MISMATCH: published {published:,}"
        note("full-size", f"{name} {found:,} parameters: {verdict}")
    return ok


def peak_memory(ctx: Context) -> str:
    if ctx.cuda:
        import torch

        peak = max(ctx.peak_seen, torch.cuda.max_memory_allocated())
        return f"{peak / 2**30:.1f} GiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB process RSS (CPU run)"


def free_memory(ctx: Context) -> None:
    gc.collect()
    ctx.peak_seen = 0
    if ctx.cuda:
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny random-init models on the CPU, in seconds"
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--budget", type=float, default=0, help=f"seconds for the whole run (default {BUDGET}; dry run 2400)"
    )
    args = parser.parse_args()
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    budget = args.budget or (2400 if args.dry_run else BUDGET)
    deadline = time.monotonic() + budget
    tmp = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[offline] = "1"  # random weights only: nothing is fetched

    import torch

    if args.dry_run:
        ctx = Context(DRY, "cpu", torch.float32, tmp)
    elif torch.cuda.is_available():
        ctx = Context(GPU, "cuda", torch.float16, tmp)
    else:
        print("error: no CUDA GPU visible; `--dry-run` runs the same code with tiny models on the CPU")
        return 1
    import diffusers
    import transformers

    where = torch.cuda.get_device_name() if ctx.cuda else "CPU (dry run, tiny models)"
    print(
        f"gpu_suite on {where}: torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}; budget {budget:.0f} s",
        flush=True,
    )
    results = []
    for name in sections:
        left = deadline - time.monotonic()
        if left < 10:
            results.append((name, "not run: budget spent", 0.0, "-"))
            continue
        free_memory(ctx)
        start = time.monotonic()
        try:
            with time_cap(min(CAPS[name] * (DRY_CAP_FACTOR if args.dry_run else 1), left)):
                RUNNERS[name](ctx)
            status = "ok"
        except MemoryError as exc:
            status = str(exc)
        except Exception as exc:  # noqa: BLE001 - one failing section must not cost the others
            status = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        results.append((name, status, time.monotonic() - start, peak_memory(ctx)))
        note(name, f"{status}, {results[-1][2]:.0f} s, peak memory {results[-1][3]}")
    sizes_ok = check_full_size(tmp) if args.dry_run else True
    print("\nsection    seconds  peak memory                      status")
    for name, status, seconds, peak in results:
        print(f"{name:10s} {seconds:7.0f}  {peak:32s} {status}")
    passed = all(status == "ok" or status.startswith("skipped") for _, status, _, _ in results)
    return 0 if passed and sizes_ok else 1


if __name__ == "__main__":
    sys.exit(main())

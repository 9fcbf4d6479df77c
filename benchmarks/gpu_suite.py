"""One GPU benchmark run: full-size architectures with random weights, every result a ratio and an absolute.

Weights are random (none can be downloaded; speed does not depend on them). Each section runs our own
code on models built in memory, under a time cap; an error or a timeout is reported and the next runs:

- repaint: the SDXL inpainting architecture (`diffusers/stable-diffusion-xl-1.0-inpainting-0.1`'s config)
  through `DiffusionRepainter` at 1024x1024 in fp16: a batch per call vs one image per call; PyTorch SDPA
  vs the classic attention; the refiner hand-off (`stabilityai/stable-diffusion-xl-refiner-1.0`'s UNet,
  sharing the base's second text encoder and VAE) vs the base alone; a torch.compile'd UNet vs eager.
- msp: SD 1.5 through `MSPGenerator` (kappa 0.1, 50 steps, 3 subjects + background, 512 px) vs plain
  text-to-image of the same pipeline, time per image.
- index: open_clip ViT-L-14 (pretrained=None) through `index_workspace` vs its bare forward, candidates/s
  (needs FiftyOne's database, as `curate index` does); the OWLv2 base detector through
  `OwlDetector.detect` vs its bare forward.
- caption: a LLaVA-1.5-7B-size VLM through `TransformersCaptioner` vs bare `generate`, each caption held
  to the full token budget; skipped when the GPU has too little free memory.

Every section prints its peak GPU memory; the whole run stays under `--budget` seconds (default 570).
Published figures to compare against: SDXL 1024x1024, 30 steps, H100: 2.5 s/image plain diffusers;
SD 1.5 512x512, 50 steps, A100: 1.59 s plain, 1.07 s compiled; CLIP ViT-L/14 ~800 images/s (RTX 4090).

`--dry-run` runs the same code with tiny random-init models on the CPU in seconds (tests/test_gpu_suite.py).

Usage:
    bash benchmarks/gpu_suite.sh                 # on a CUDA machine
    bash benchmarks/gpu_suite.sh --dry-run       # anywhere
    bash benchmarks/gpu_suite.sh --sections repaint,msp
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

SECTIONS = ("repaint", "msp", "index", "caption")
CAPS = {"repaint": 240, "msp": 90, "index": 120, "caption": 100}
"""Seconds each section may take at most (estimated on an H200: about 150, 15, 50 and 30)."""
DRY_CAP_FACTOR = 4
"""The dry run's caps are looser: a busy small CPU, not the code, sets its pace."""
CAPTION_FREE_GIB = 45
"""Building the 7B VLM in fp32 on the GPU and halving it needs about 3 x 14 GB free."""


@dataclass(frozen=True)
class Scale:
    """Model sizes and work per section: the GPU run's, or the dry run's tiny ones."""

    tiny: bool
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


GPU = Scale(False, 1024, 10, 8, 4, 512, 50, 3, 96, 1024, 32, 6, 4, 60, "inductor")
DRY = Scale(True, 64, 2, 2, 2, 64, 10, 1, 6, 64, 4, 2, 2, 4, "eager")
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

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def now(self) -> float:
        """Wall seconds, after the GPU has finished what was queued."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def build(self) -> Any:
        """Where full-size models are built: directly on the GPU (seconds, not minutes of CPU init)."""
        import torch

        return torch.device(self.device)


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


def index(ctx: Context) -> None:
    import fiftyone as fo
    import torch
    from PIL import Image

    from benchmarks.bench_index import measure_index
    from curation.scores.clip import load_clip
    from tests.fixtures.candidate_workspace import index_test_workspace, write_candidates
    from tests.fixtures.tiny_clip import register_tiny_clip

    s = ctx.scale
    model = register_tiny_clip() if s.tiny else "ViT-L-14"
    ws = index_test_workspace(ctx.tmp / "index-ws", model, batch_size=s.index_batch)
    candidates = write_candidates(ws, s.index_candidates, size=s.index_size, shard_size=200)
    scorer = load_clip(model, None, device=ctx.device, batch_size=s.index_batch)
    times = measure_index(ws, scorer, candidates, s.index_batch)
    fo.delete_dataset(times.report.dataset)
    n = s.index_candidates
    ratio(
        "index",
        "index_workspace vs bare CLIP forward (image + caption)",
        times.bare / times.indexed,
        f"{n / times.indexed:.1f} vs {n / times.bare:.1f} candidates/s; {model} fp32, {n} PNGs of {s.index_size}px",
    )

    detector = owlv2(ctx)
    images = [Image.open(ws.resolve(c.image)).convert("RGB") for c in candidates[: s.detect_images]]
    queries = ["cat", "mug", "teddy bear"]
    detector.detect(images[0], queries, 0.1)  # warm-up
    detect = per_second(ctx, lambda: [detector.detect(im, queries, 0.1) for im in images], len(images))
    inputs = [
        detector.processor(text=[queries], images=im, return_tensors="pt").to(ctx.device) for im in images
    ]

    def bare_forward() -> None:
        with torch.no_grad():
            for one in inputs:
                detector.model(**one)

    bare = per_second(ctx, bare_forward, len(images))
    ratio(
        "index",
        "OWLv2 detect() vs bare forward",
        detect / bare,
        f"{detect:.2f} vs {bare:.2f} images/s; {detector.processor.image_processor.size['height']}px input, fp32",
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
    "repaint": repaint,
    "msp": msp,
    "index": index,
    "caption": caption,
}


# -- the run -----------------------------------------------------------------------------------


def check_full_size(tmp: Path) -> None:
    """Build the GPU run's full-size models on the meta device (no memory, no compute) and print their
    sizes: a wrong config value shows up here, on any machine, not on the first GPU."""
    import torch

    from curation.core.config import GenerateConfig

    ctx = Context(GPU, "meta", torch.float16, tmp)

    def millions(module: Any) -> str:
        return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f} M"

    base, refiner = sdxl(ctx, GenerateConfig())
    note(
        "full-size",
        f"SDXL inpaint UNet {millions(base.unet)}, refiner UNet {millions(refiner.unet)}, "
        f"text encoders {millions(base.text_encoder)} + {millions(base.text_encoder_2)}, VAE {millions(base.vae)}",
    )
    note("full-size", f"SD 1.5 UNet {millions(sd15(ctx).pipe.unet)}")
    note("full-size", f"OWLv2 {millions(owlv2(ctx).model)}; LLaVA {millions(llava(ctx)[1])}")


def peak_memory(ctx: Context) -> str:
    if ctx.cuda:
        import torch

        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB process RSS (CPU run)"


def free_memory(ctx: Context) -> None:
    gc.collect()
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
        "--budget", type=float, default=0, help="seconds for the whole run (default 570; dry run 2400)"
    )
    args = parser.parse_args()
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    budget = args.budget or (2400 if args.dry_run else 570)
    deadline = time.monotonic() + budget
    tmp = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(tmp / "fiftyone-db"))
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
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
    if args.dry_run:
        check_full_size(tmp)
    print("\nsection  seconds  peak memory                      status")
    for name, status, seconds, peak in results:
        print(f"{name:8s} {seconds:7.0f}  {peak:32s} {status}")
    return 0 if all(status == "ok" or status.startswith("skipped") for _, status, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())

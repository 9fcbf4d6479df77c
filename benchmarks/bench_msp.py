"""Per-image cost of MSP-Diffusion against a plain text-to-image call of the same pipeline and steps.

MSP runs the UNet on S+1 rows per composition step (one unconditional row shared by the S segment
prompts) and on 2 rows per harmonization step, where plain classifier-free-guided text-to-image
runs 2 rows every step. So, counting UNet rows, the expected cost ratio is

    (n_comp * (S + 1) + (T - n_comp) * 2) / (2 * T),   n_comp = round(kappa * T).

Measured ratios sit a little below that, because fixed costs (text encoding, VAE decode, Python
overhead per step) do not grow with S. The UNet rows actually run are counted with a forward hook
and printed beside the formula. On CPU the clock is the process's CPU time with one thread, so
other work on a shared machine does not distort the ratio; on a GPU pass --wall.

Usage:
    .venv/bin/python benchmarks/bench_msp.py                 # tiny random-init SD on CPU
    .venv/bin/python benchmarks/bench_msp.py --arch sd15 --steps 50 --wall   # full SD 1.5, random weights, GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.core.config import MSPSettings
from curation.core.records import Box, Concept, LayoutPlan
from generators.msp.pipeline import MSPGenerator


def sd15_pipeline(folder: Path) -> object:
    """The Stable Diffusion 1.5 architecture from its published config values, random weights, in memory.

    Built on the current default device (`with torch.device("cuda"):` builds it on the GPU, in seconds);
    `folder` receives the tokenizer files.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.fixtures.tiny_pipelines import load_clip_tokenizer, write_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = load_clip_tokenizer(write_clip_tokenizer(folder / "_tokenizer_src"))
    with torch.device("cpu"):  # a scheduler's tables stay on the CPU (numpy), whatever device builds the rest
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
    return StableDiffusionPipeline(
        unet=UNet2DConditionModel(sample_size=64, cross_attention_dim=768),
        vae=AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        ),
        text_encoder=CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                projection_dim=768,
            )
        ),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sd15(folder: Path) -> Path:
    """`sd15_pipeline` saved under `folder`, for the `from_pretrained` path."""
    sd15_pipeline(folder).save_pretrained(folder / "sd15")
    return folder / "sd15"


def txt2img(pipe, size: int, steps: int) -> None:
    """One plain classifier-free-guided text-to-image call: what MSP's cost is compared with."""
    import torch

    pipe(
        "a photo of dogs in a quiet park",
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(0),
    )


def make_plan(n_concepts: int, size: int) -> LayoutPlan:
    """Side-by-side boxes, one per concept, on a size x size canvas."""
    step = size // n_concepts
    boxes = [Box(concept_id=f"c{i}", x=i * step, y=size // 4, w=step, h=size // 2) for i in range(n_concepts)]
    return LayoutPlan(
        concepts=[b.concept_id for b in boxes],
        background="a quiet park",
        boxes=boxes,
        width=size,
        height=size,
        planner="bench",
    ).with_id()


def make_concepts(n: int) -> dict[str, Concept]:
    """`n` dog concepts c0, c1, ... (one class noun: the segment prompts differ by token only)."""
    return {
        f"c{i}": Concept(concept_id=f"c{i}", name=f"c{i}", class_noun="dog", token=f"<c{i}>")
        for i in range(n)
    }


def timed(fn, repeats: int, clock) -> float:
    """Median CPU seconds of the process per call (after a warm-up).

    CPU time rather than wall time: on a shared machine other processes stretch wall time at random,
    while the work one image needs does not change. On a GPU, pass --wall.
    """
    fn()
    samples = []
    for _ in range(repeats):
        start = clock()
        fn()
        samples.append(clock() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--model", default="", help="a pipeline id or folder instead of a built architecture")
    parser.add_argument("--size", type=int, default=0, help="canvas pixels (default 64 tiny, 512 sd15)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--concepts", type=int, default=3)
    parser.add_argument("--kappas", default="0.1,0.5,1.0")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wall", action="store_true", help="time wall clock (GPU) instead of CPU time")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads; 1 keeps timings stable on a shared machine"
    )
    args = parser.parse_args()

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench-msp-"))
    if args.model:
        model = args.model
    elif args.arch == "sd15":
        model = build_sd15(tmp)
    else:
        from tests.fixtures.tiny_pipelines import build_tiny_sd

        model = build_tiny_sd(tmp)
    size = args.size or (512 if args.arch == "sd15" else 64)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.process_time
    gen = MSPGenerator.from_pretrained(model)
    pipe = gen.pipe
    concepts = make_concepts(args.concepts)
    plan = make_plan(args.concepts, size)
    segments = args.concepts + 1
    rows = [0]
    pipe.unet.register_forward_pre_hook(lambda m, a: rows.__setitem__(0, rows[0] + a[0].shape[0]))

    rows[0] = 0
    base = timed(lambda: txt2img(pipe, size, args.steps), args.repeats, clock)
    base_rows = rows[0] // (args.repeats + 1)
    print(
        f"clock={'wall' if args.wall else 'process CPU'} threads={args.threads} device={pipe.device} "
        f"arch={args.model or args.arch} canvas={size}px steps={args.steps} "
        f"segments S={segments} (concepts {args.concepts} + background)"
    )
    print(f"plain text-to-image: {base:.3f} s/image, {base_rows} UNet rows")
    print("kappa  n_comp  s/image  measured  expected(rows)  rows counted  naive (kT*S+(1-k)T)/T")
    for kappa in (float(k) for k in args.kappas.split(",")):
        settings = MSPSettings(kappa=kappa, steps=args.steps, guidance_scale=7.5)
        n_comp = settings.n_composition(args.steps)
        rows[0] = 0
        cost = timed(lambda settings=settings: gen([plan], concepts, [0], settings), args.repeats, clock)
        counted = rows[0] // (args.repeats + 1)
        expected = (n_comp * (segments + 1) + (args.steps - n_comp) * 2) / (2 * args.steps)
        naive = (n_comp * segments + (args.steps - n_comp)) / args.steps
        print(
            f"{kappa:5.2f}  {n_comp:6d}  {cost:7.3f}  {cost / base:8.2f}  {expected:14.2f}  "
            f"{counted / base_rows:12.2f}  {naive:8.2f}"
        )


if __name__ == "__main__":
    main()

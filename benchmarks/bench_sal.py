"""Per-image cost of MSP with SAL guidance against plain MSP, same pipeline, plan and steps.

A guided step adds, per image, one differentiable VAE decode of x0_hat, one M_SAL forward per subject
segment (batched) and the backward pass through both to the latents; the UNet work is unchanged. So
the ratio grows with `sal_steps / steps` and with the VAE's share of a step, which is large at the
tiny architecture (its UNet is almost free) and smaller at SD 1.5. M_SAL is the paper's ResNet-34
U-Net (random init; weights do not change the cost) at the canvas size.

Usage:
    .venv/bin/python benchmarks/bench_sal.py                 # tiny random-init SD on CPU, one thread
    .venv/bin/python benchmarks/bench_sal.py --arch sd15 --steps 50 --wall   # SD 1.5 shape, GPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_msp import build_sd15, make_concepts, make_plan, timed
from curation.core.config import MSPSettings
from curation.models.subject_segmenter import SegmenterSettings, build_unet, save_segmenter
from generators.msp.pipeline import MSPGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--size", type=int, default=0, help="canvas pixels (default 64 tiny, 512 sd15)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--concepts", type=int, default=3)
    parser.add_argument("--sal-steps", default="1,5,10", help="guided steps to compare, comma-separated")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wall", action="store_true", help="time wall clock (GPU) instead of CPU time")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench-sal-"))
    if args.arch == "sd15":
        model = build_sd15(tmp)
    else:
        from tests.fixtures.tiny_pipelines import build_tiny_sd

        model = build_tiny_sd(tmp, vae_downsample=8)
    size = args.size or (512 if args.arch == "sd15" else 64)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.process_time
    concepts = make_concepts(args.concepts)
    msal = tmp / "msal"
    seg_settings = SegmenterSettings(encoder=args.encoder, encoder_weights="", size=size)
    save_segmenter(msal, build_unet(seg_settings, args.concepts + 1), sorted(concepts), seg_settings)
    gen = MSPGenerator.from_pretrained(model)
    plan = make_plan(args.concepts, size)
    base_settings = MSPSettings(steps=args.steps, kappa=0.5, guidance_scale=7.5)
    base = timed(lambda: gen([plan], concepts, [0], base_settings), args.repeats, clock)
    print(
        f"clock={'wall' if args.wall else 'process CPU'} threads={args.threads} device={gen.pipe.device} "
        f"arch={args.arch} canvas={size}px steps={args.steps} subjects={args.concepts} M_SAL={args.encoder}"
    )
    print(f"plain MSP: {base:.3f} s/image")
    print("sal_steps  s/image  ratio  extra s per guided step")
    for sal_steps in (int(s) for s in args.sal_steps.split(",")):
        settings = base_settings.model_copy(
            update={"sal_model": str(msal), "sal_scale": 1.0, "sal_steps": sal_steps}
        )
        cost = timed(lambda settings=settings: gen([plan], concepts, [0], settings), args.repeats, clock)
        guided = min(sal_steps, args.steps)
        print(f"{sal_steps:9d}  {cost:7.3f}  {cost / base:5.2f}  {(cost - base) / guided:.3f}")


if __name__ == "__main__":
    main()

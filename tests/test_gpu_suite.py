"""benchmarks/gpu_suite.sh --dry-run: the GPU suite's own code, end to end, with tiny models on the CPU.

The GPU run cannot happen here; this proves every section runs, prints its ratios and reports ok, and
that the full-size architectures the GPU run builds are the published sizes (built on the meta device).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from benchmarks.gpu_suite import SECTIONS

REPO = Path(__file__).resolve().parents[1]
RATIOS = {"repaint": 4, "msp": 1, "index": 2, "caption": 1}
"""Result lines per section: batch/single, SDPA, refiner, compile; MSP/plain; index, OWLv2; captioner."""


def test_dry_run_prints_every_ratio_and_the_full_size_architectures() -> None:
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, out[-4000:] + run.stderr[-4000:]
    assert set(RATIOS) == set(SECTIONS)
    for section, count in RATIOS.items():
        ratios = re.findall(rf"^\[{section}\] [^\n]+: (\d+\.\d+)x \([^\n]+\)$", out, re.MULTILINE)
        assert len(ratios) == count and all(float(r) > 0 for r in ratios), (section, ratios)
        assert re.search(rf"^{section} +\d+ +\d+ MiB process RSS \(CPU run\) +ok$", out, re.MULTILINE), (
            section
        )
    # diffusers/stable-diffusion-xl-1.0-inpainting-0.1, stable-diffusion-v1-5, owlv2-base, llava-1.5-7b shapes
    assert "[full-size] SDXL inpaint UNet 2567.5 M, refiner UNet 2259.5 M" in out
    assert "[full-size] SD 1.5 UNet 859.5 M" in out
    assert re.search(r"\[full-size\] OWLv2 155\.0 M; LLaVA 7\d{3}\.\d M", out)

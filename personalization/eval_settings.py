"""The evaluator's settings: every choice that changes a number, saved beside the results.

Generation (plain and MSP rows), scoring and the table all read the same `EvalSettings`; the choices
the papers leave open are explained where they are made (`personalization.heldout_scores`,
`personalization.msp_rows`).

Steps, guidance and resolution default per base model family (`BASE_DEFAULTS`): each family is
sampled as its model card recommends (SD 1.x at its own 512 px, SDXL and FLUX.1 at 1024 px, FLUX.1-dev
with its distilled guidance 3.5 in 28 steps), so an "SD 1.5 vs SDXL vs FLUX.1" table compares each
model at its best. A value set here applies to every family alike; every row records what it ran with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curation.core.config import MSPSettings
from curation.scores.similarity import RefReduce
from personalization.metrics import ClipTConvention
from personalization.prompts import HELDOUT_BACKGROUNDS

Family = Literal["sd", "sdxl", "flux"]
"""The text-to-image model families the evaluator generates with."""


@dataclass(frozen=True)
class Generation:
    """How one configuration samples: steps, guidance, and image side (None = the pipeline's own)."""

    steps: int
    guidance: float
    resolution: int | None


BASE_DEFAULTS: dict[Family, Generation] = {
    "sd": Generation(steps=50, guidance=6.0, resolution=None),
    "sdxl": Generation(steps=50, guidance=6.0, resolution=1024),
    "flux": Generation(steps=28, guidance=3.5, resolution=1024),
}
"""Each family's defaults: SD 1.x/2.x at the pipeline's size, Gen4Gen's guidance 6 for SD and SDXL."""


@dataclass
class EvalSettings:
    """Everything that changes a number; saved beside the results."""

    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    detector: str = "google/owlv2-base-patch16-ensemble"
    dino: str = "facebook/dinov2-base"
    backgrounds: tuple[str, ...] = HELDOUT_BACKGROUNDS
    prompts_per_set: int = 2
    single_subjects: bool = False
    images_per_prompt: int = 2
    steps: int | None = None
    guidance: float | None = None
    resolution: int | None = None
    dtype: str = "auto"
    """Plain rows' torch dtype: auto = float32 on CPU; on a GPU float16, bfloat16 for FLUX.1."""
    cpu_offload: bool = False
    """Plain rows: diffusers' model CPU offload (FLUX.1 in bf16 on a 24 GB GPU)."""
    seed: int = 0
    detection_threshold: float = 0.1
    min_box_px: int = 4
    ref_reduce: RefReduce = "mean"
    clip_t_convention: ClipTConvention = "clipscore"
    subject_segmenter: str = ""
    # MSP rows only (steps and guidance above apply to them too, with SD defaults)
    kappa: float = MSPSettings().kappa
    scaffold_strength: float = MSPSettings().scaffold_strength
    sal_scale: float = MSPSettings().sal_scale
    sal_steps: int = MSPSettings().sal_steps

    def generation(self, family: Family) -> Generation:
        """What a configuration of `family` samples with: the values set here, else the family's defaults."""
        default = BASE_DEFAULTS[family]
        return Generation(
            steps=default.steps if self.steps is None else self.steps,
            guidance=default.guidance if self.guidance is None else self.guidance,
            resolution=self.resolution or default.resolution,
        )

"""The evaluator's settings: every choice that changes a number, saved beside the results.

Generation (plain and MSP rows), scoring and the table all read the same `EvalSettings`; the choices
the papers leave open are explained where they are made (`personalization.heldout_scores`,
`personalization.msp_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

from curation.core.config import MSPSettings
from curation.scores.similarity import RefReduce
from personalization.metrics import ClipTConvention
from personalization.prompts import HELDOUT_BACKGROUNDS


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
    steps: int = 50
    guidance: float = 6.0
    resolution: int | None = None
    seed: int = 0
    detection_threshold: float = 0.1
    min_box_px: int = 4
    ref_reduce: RefReduce = "mean"
    clip_t_convention: ClipTConvention = "clipscore"
    subject_segmenter: str = ""
    # MSP rows only (steps and guidance above apply to them too)
    kappa: float = MSPSettings().kappa
    scaffold_strength: float = MSPSettings().scaffold_strength
    sal_scale: float = MSPSettings().sal_scale
    sal_steps: int = MSPSettings().sal_steps

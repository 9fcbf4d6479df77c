"""Pure metric math on embeddings and detections: no models here, so every number has a hand check.

Embeddings are rows of a float array; they are L2-normalised here again (cheap, and it makes the
functions safe on raw features such as DINO's CLS). Definitions, as we read the papers:

- CLIP-I (DreamBooth / MSP): cosine of the generated image with each reference of each concept in the
  prompt; mean over a concept's references, then over the prompt's concepts.
- CLIP-T: image-text cosine with the token-free prompt, either raw ("cosine") or CLIPScore's
  `2.5 * max(cos, 0)` ("clipscore", the scale MSP's 0.5-0.8 values suggest).
- TI-CLIP (Gen4Gen): raw image-text cosine with the prompt whose personal tokens are replaced by their
  class nouns.
- CP-CLIP (Gen4Gen): per concept, the crop of its best detection compared with its references (mean
  cosine); a concept not detected scores 0; mean over the prompt's concepts.
- DINO: as CLIP-I on DINOv2 CLS embeddings.
- SAS (MSP): as CP-CLIP on the subject-aware segmenter's encoder features, each subject's region
  isolated (the image zeroed outside it) before embedding.
- Detect-and-Compare (MuDI): 0 unless the detector finds exactly as many subjects as the prompt names;
  otherwise the crop-vs-subject similarity matrix S (clipped to [0, 1]), rows matched to subjects by
  the assignment maximising the trace, scores `1 - mean((S - I)^2)`: high when every crop resembles its
  own subject and no other (no hybrids). MuDI's exact normalisation is not published in text we could
  read; this is our documented reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from curation.core.buckets import BUCKETS
from curation.scores.clip import CLIPSCORE_W
from curation.scores.presence import Detection
from curation.scores.similarity import RefReduce, cosine_matrix, reference_similarity

ClipTConvention = Literal["cosine", "clipscore"]


def clip_i(image: np.ndarray, concept_refs: Sequence[np.ndarray], reduce: RefReduce = "mean") -> float:
    """CLIP-I (or DINO with DINO embeddings): whole image vs each concept's references, mean over concepts."""
    return float(np.mean([reference_similarity(image, refs, reduce) for refs in concept_refs]))


def clip_t(image: np.ndarray, text: np.ndarray, convention: ClipTConvention = "clipscore") -> float:
    """Image-text alignment; "clipscore" is Hessel et al.'s 2.5 * max(cos, 0), "cosine" the raw value."""
    cos = float(cosine_matrix(image, text)[0, 0])
    return CLIPSCORE_W * max(cos, 0.0) if convention == "clipscore" else cos


def ti_clip(image: np.ndarray, plain_text: np.ndarray) -> float:
    """TI-CLIP: raw cosine between the image and the prompt with tokens replaced by class nouns."""
    return float(cosine_matrix(image, plain_text)[0, 0])


def cp_clip(
    crops: Sequence[np.ndarray | None], concept_refs: Sequence[np.ndarray], reduce: RefReduce = "mean"
) -> float:
    """CP-CLIP for one image: `crops[i]` is concept i's best-detection crop embedding, None when not found."""
    if len(crops) != len(concept_refs) or not crops:
        raise ValueError("need one crop slot per concept")
    scores = [
        0.0 if crop is None else reference_similarity(crop, refs, reduce)
        for crop, refs in zip(crops, concept_refs)
    ]
    return float(np.mean(scores))


def sas(
    regions: Sequence[np.ndarray | None], concept_refs: Sequence[np.ndarray], reduce: RefReduce = "mean"
) -> float:
    """SAS (MSP, A.6) for one image: `regions[i]` is the M_SAL encoder embedding of subject i's region
    (None when the subject is not there), `concept_refs[i]` those of its source images.

    The same reduction as CP-CLIP on other features: mean (or max) cosine over the references, 0 for
    a missing subject, mean over the image's subjects.
    """
    return cp_clip(regions, concept_refs, reduce)


def detect_and_compare(
    crops: np.ndarray, concept_refs: Sequence[np.ndarray], reduce: RefReduce = "mean"
) -> float:
    """MuDI's Detect-and-Compare, our reading (see module docstring); `crops` has one row per detection."""
    from scipy.optimize import linear_sum_assignment

    n = len(concept_refs)
    crops = np.asarray(crops)
    if n == 0 or crops.size == 0 or len(crops) != n:
        return 0.0
    sims = np.array([[reference_similarity(crop, refs, reduce) for refs in concept_refs] for crop in crops])
    sims = np.clip(sims, 0.0, 1.0)
    rows, cols = linear_sum_assignment(-sims)
    matched = np.empty_like(sims)
    matched[cols] = sims[rows]
    return float(1.0 - np.mean((matched - np.eye(n)) ** 2))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(detections: Iterable[Detection], iou_threshold: float = 0.5) -> list[Detection]:
    """Class-agnostic non-maximum suppression: one box per object whatever query found it."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: d.score, reverse=True):
        if all(iou(det.box, k.box) < iou_threshold for k in kept):
            kept.append(det)
    return kept


def aggregate(
    rows: Sequence[dict], metrics: Sequence[str], buckets: Sequence[str] = BUCKETS, field: str = "bucket"
) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Mean of each metric by bucket (row[field]) and overall: {metric: {bucket|"all": {mean, n}}}."""
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for metric in metrics:
        out[metric] = {}
        for key in (*buckets, "all"):
            values = [
                r[metric] for r in rows if r.get(metric) is not None and (key == "all" or r[field] == key)
            ]
            out[metric][key] = {"mean": float(np.mean(values)) if values else None, "n": len(values)}
    return out

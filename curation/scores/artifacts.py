"""Cheap, weight-free artifact scores on numpy images, each with one contract.

Every score is a pure function returning a float in [0, 1] where **higher is worse**, plus a
`ScoreSpec` (name, range, direction, default threshold) in `ARTIFACT_SCORES`; a sample is flagged
for a score when it exceeds the threshold. Work happens on a small grayscale copy (longest side
`WORK_SIDE`), as cleanvision does, so 10K candidates score in seconds and values do not depend on
the output resolution. Adding a score is one function, one registry line and one test.

What the generator kept of its paste (`curation.core.paste_record`) feeds two scores: identity drift
compares region thumbnails, and seam looks along the pasted silhouettes' edges, falling back to
the box borders for candidates that kept none (the `seam_source` field says which).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from curation.core.paste_record import (
    PASTE_SILHOUETTES,
    PASTE_THUMBS,
    decode_silhouettes,
    region_thumbnail,
)
from curation.core.records import Box

WORK_SIDE = 256
_BLUR_REF = 100.0
"""Variance of the Laplacian (0-255 gray) at which blur = 0.5; the usual "is it blurry" cut-off."""
_SEAM_BAND = 0.015
"""Half-width of the edge band, as a fraction of the longest side (about 4 px at 256 px)."""
SEAM_SOURCE = "seam_source"
"""Field saying where the seam was measured: `SEAM_SILHOUETTE`, or `SEAM_BOX` without a kept paste."""
SEAM_SILHOUETTE = "silhouette"
SEAM_BOX = "box"


@dataclass(frozen=True)
class ScoreSpec:
    """The contract every score shares.

    Attributes:
        name: the FiftyOne field it is stored in.
        low, high: its range.
        higher_is_worse: its direction.
        threshold: default cut-off for the `high_artifacts` view.
        meaning: one line for README and App users.
    """

    name: str
    low: float
    high: float
    higher_is_worse: bool
    threshold: float
    meaning: str

    def is_issue(self, value: float | None) -> bool:
        """Whether a value crosses the threshold in the bad direction (None never does)."""
        if value is None:
            return False
        return value > self.threshold if self.higher_is_worse else value < self.threshold


def to_gray_small(image: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """A float32 grayscale copy in 0..255 whose longest side is at most `side` pixels."""
    if image.ndim == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    height, width = image.shape
    scale = side / max(height, width)
    if scale < 1:
        image = cv2.resize(
            image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
    return image.astype(np.float32)


def blur(gray: np.ndarray) -> float:
    """Blurriness from the variance of the Laplacian: ref / (ref + var); 0 sharp, 1 flat or blurred.

    Args:
        gray: output of `to_gray_small` (so the value does not depend on resolution).
    """
    variance = float(cv2.Laplacian(gray, cv2.CV_32F).var())
    return _BLUR_REF / (_BLUR_REF + variance)


def exposure(gray: np.ndarray) -> float:
    """Badness of exposure: the larger of the clipped-pixel fraction and the mean's distance from mid-gray.

    0 for a well exposed image, 1 for an all-white or all-black one. Dark backdrops score somewhat
    high by design: a reviewer should look at them.
    """
    clipped = float(np.mean((gray >= 250) | (gray <= 5)))
    offset = abs(float(gray.mean()) / 255.0 - 0.5) * 2.0
    return max(clipped, offset)


def boxes_mask(boxes: Sequence[Box], width: int, height: int, shape: tuple[int, int]) -> np.ndarray:
    """A binary mask (uint8 0/1) of the boxes, scaled from canvas pixels to `shape`."""
    mask = np.zeros(shape, dtype=np.uint8)
    sy, sx = shape[0] / height, shape[1] / width
    for box in boxes:
        x0, y0 = round(box.x * sx), round(box.y * sy)
        x1, y1 = round((box.x + box.w) * sx), round((box.y + box.h) * sy)
        mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 1
    return mask


def seam(gray: np.ndarray, labels: np.ndarray) -> float:
    """Seam/halo strength along pasted edges: gradient on a thin band around them vs elsewhere.

    The band is every pixel within `_SEAM_BAND` of a border between two regions of `labels`
    (object and background, or two overlapping objects). The ratio r = mean Sobel gradient
    magnitude on the band / (mean magnitude off the band + 1) is mapped to r / (1 + r): 0.5 means
    the edges look like the rest of the image, values near 1 a hard cut-out edge. A feathered or
    harmonized paste spreads the step over more pixels than the band holds and scores lower than a
    hard one. A map with a single region (nothing pasted) scores 0.

    Args:
        gray: output of `to_gray_small`.
        labels: integer region map of the paste, any size (resized to `gray`, nearest neighbour):
            the kept silhouette map, or `boxes_mask` for candidates without one.
    """
    if labels.shape != gray.shape:
        labels = cv2.resize(labels, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_NEAREST)
    labels = labels.astype(np.uint8)
    if labels.min() == labels.max():
        return 0.0
    radius = max(1, round(_SEAM_BAND * max(gray.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    band = cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.hypot(gx, gy)
    on_band = float(magnitude[band].mean())
    off_band = float(magnitude[~band].mean()) if (~band).any() else 0.0
    ratio = on_band / (off_band + 1.0)
    return ratio / (1.0 + ratio)


def seam_regions(
    kept: Mapping[str, Any], boxes: Sequence[Box], width: int, height: int, shape: tuple[int, int]
) -> tuple[np.ndarray, str]:
    """The region map the seam is measured on, and which it is (`SEAM_SILHOUETTE` or `SEAM_BOX`).

    The pasted silhouettes when the generator kept them; otherwise (candidates made before they
    were kept, by another tool, or with an unreadable map) the placed boxes, whose border only
    touches a cut-out in a few points and so mostly measures the background around it.
    """
    text = kept.get(PASTE_SILHOUETTES)
    if isinstance(text, str):
        try:
            return decode_silhouettes(text), SEAM_SILHOUETTE
        except ValueError:
            pass
    return boxes_mask(boxes, width, height, shape), SEAM_BOX


def low_information(gray: np.ndarray) -> float:
    """1 minus the normalised entropy of the gray histogram: 1 for a flat image, near 0 for a rich one."""
    hist = np.bincount(np.clip(gray, 0, 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(1.0 - (-(p * np.log2(p)).sum()) / 8.0)


def box_overlap(boxes: Sequence[Box]) -> float:
    """The largest IoU between two concept boxes (0 when none overlap): occlusion hides concepts."""
    worst = 0.0
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
            iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
            inter = ix * iy
            union = a.w * a.h + b.w * b.h - inter
            worst = max(worst, inter / union if union else 0.0)
    return worst


def identity_drift(
    image: np.ndarray, boxes: Sequence[Box], width: int, height: int, pasted: dict[str, str]
) -> float | None:
    """How much the concepts' regions changed between paste and repaint: the worst concept's change.

    Per concept, the mean absolute difference of its region thumbnail (`THUMB` px, RGB) between the
    paste and the final image, in 0..1 of the 0-255 range; the candidate's score is the maximum
    over its concepts, so one repainted-away concept is enough to flag it. None when the
    candidate carries no paste thumbnails (made before they were recorded, or by another tool).
    """
    drifts = []
    for box in boxes:
        if box.concept_id not in pasted:
            continue
        before = np.frombuffer(bytes.fromhex(pasted[box.concept_id]), dtype=np.uint8)
        after = region_thumbnail(image, box, width, height).ravel()
        if before.shape != after.shape:
            continue
        drifts.append(float(np.abs(before.astype(np.float32) - after).mean()) / 255.0)
    return max(drifts) if drifts else None


SEAM = ScoreSpec(
    "seam",
    0.0,
    1.0,
    True,
    0.7,
    "r / (1 + r), r = gradient on the pasted silhouettes' edge band / (gradient elsewhere + 1); 0.5 = same",
)
BLUR = ScoreSpec("blur", 0.0, 1.0, True, 0.5, "100 / (100 + variance of Laplacian) on a 256 px gray copy")
EXPOSURE = ScoreSpec("exposure", 0.0, 1.0, True, 0.5, "max(clipped-pixel fraction, |mean - mid-gray| * 2)")
LOW_INFORMATION = ScoreSpec("low_information", 0.0, 1.0, True, 0.6, "1 - gray-histogram entropy / 8 bits")
OVERLAP = ScoreSpec("overlap", 0.0, 1.0, True, 0.3, "largest IoU between two placed concept boxes")
IDENTITY_DRIFT = ScoreSpec(
    "identity_drift",
    0.0,
    1.0,
    True,
    0.2,
    "worst concept's mean |paste - final| on an 8x8 RGB thumbnail of its box (None: no paste kept)",
)

ARTIFACT_SCORES: dict[str, ScoreSpec] = {
    s.name: s for s in (SEAM, BLUR, EXPOSURE, LOW_INFORMATION, OVERLAP, IDENTITY_DRIFT)
}


def artifact_scores(
    image: np.ndarray,
    boxes: Sequence[Box],
    width: int,
    height: int,
    kept: Mapping[str, Any] | None = None,
) -> dict[str, float | str | None]:
    """All artifact scores of one RGB image keyed by field name, plus `SEAM_SOURCE`.

    Args:
        image: HxWx3 uint8 RGB.
        boxes: the placed boxes, in canvas pixels.
        width, height: the canvas size the boxes refer to.
        kept: what the generator kept of its paste (`Candidate.extra`: `PASTE_THUMBS`,
            `PASTE_SILHOUETTES`), if anything.
    """
    kept = kept or {}
    gray = to_gray_small(image)
    regions, source = seam_regions(kept, boxes, width, height, gray.shape)
    return {
        SEAM.name: seam(gray, regions),
        SEAM_SOURCE: source,
        BLUR.name: blur(gray),
        EXPOSURE.name: exposure(gray),
        LOW_INFORMATION.name: low_information(gray),
        OVERLAP.name: box_overlap(boxes),
        IDENTITY_DRIFT.name: identity_drift(image, boxes, width, height, kept.get(PASTE_THUMBS) or {}),
    }

"""Foreground segmentation of concept photos into soft 8-bit alpha masks.

Every backend shares one contract (`Segmenter`: RGB uint8 HxWx3 + the concept's class noun ->
alpha uint8 HxW) and is chosen by `segment.backend` through `load_segmenter`:

- ``classical`` (offline default, no weights): key the background from the photo's border
  colours, refine with GrabCut seeded from that key, then soften the edge with a guided filter
  inside an eroded/dilated trimap band. pymatting's closed-form matting was measured and rejected
  as the default: 0.34 s per 450x300 photo is fine, but its numba import costs ~100 s on a fresh
  machine (4 s warm), which every worker and CI run would pay.
- ``isnet``, ``sam``, ``semantic:<id>``, ``birefnet``, ``rmbg``: model backends
  (`generators/segment_models.py`), each loaded by hub id, local folder or file through the
  library's own loading call.
- ``auto``: the first of `AUTO_ORDER` whose weights load, else classical; the concept records
  which one ran (`Concept.segmenter`).

Masks are checked, not trusted: `mask_flags` marks empty, whole-frame and fragmented masks so
composition can avoid them instead of silently pasting a bad cut-out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from curation.config import SegmentConfig
from curation.errors import CurateError

CLASSICAL = "classical"
AUTO = "auto"
AUTO_ORDER = ("birefnet", "isnet", "sam")
"""What `auto` tries, best first: BiRefNet (only with trust_remote_code) leads the salient-object
benchmarks, IS-Net is what Gen4Gen used, SAM needs two models and a detector hit."""
_WORK_SIDE = 256
"""GrabCut runs at this longest side (then the mask is upscaled): at full 450x300 it took 2.4 s
on a busy 2-core machine, at 256 px 0.1-0.6 s per photo."""


class Segmenter(Protocol):
    """Anything that turns an RGB photo into a soft foreground alpha of the same size.

    `class_noun` says what the foreground is; backends that find any salient subject ignore it.
    """

    name: str

    def __call__(self, rgb: np.ndarray, class_noun: str = "") -> np.ndarray: ...


# -- mask quality ------------------------------------------------------------------------------


UNUSABLE_FLAGS = frozenset({"empty", "whole_frame"})
"""Mask flags that leave nothing to paste (no foreground, or the photo's own background). A concept
whose every mask has one is refused at ingest; 'fragmented' masks still hold the subject and are
only avoided when the concept has clean ones (small photos of a tabby on a busy rug often have none)."""


def mask_flags(alpha: np.ndarray) -> list[str]:
    """Quality flags for one mask: 'empty', 'whole_frame', 'fragmented' (none means usable).

    Why these three: an empty cut-out pastes nothing, a whole-frame one pastes the photo's own
    background, and a fragmented one pastes confetti; each fails silently in a composite.
    """
    hard = alpha >= 128
    area = float(hard.mean())
    flags: list[str] = []
    if area < 0.01:
        return ["empty"]
    if area > 0.95:
        flags.append("whole_frame")
    count, _, stats, _ = cv2.connectedComponentsWithStats(hard.astype(np.uint8), connectivity=8)
    sizes = np.sort(stats[1:, cv2.CC_STAT_AREA])[::-1]
    total = float(sizes.sum())
    significant = int((sizes >= 0.05 * total).sum())
    if count > 1 and (sizes[0] < 0.8 * total or significant > 3):
        flags.append("fragmented")
    return flags


# -- classical backend -------------------------------------------------------------------------


def _border_key(lab: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the nearest of a few dominant border colours (0..1)."""
    h, w = lab.shape[:2]
    b = max(2, min(h, w) // 20)
    border = np.concatenate(
        [
            lab[:b].reshape(-1, 3),
            lab[-b:].reshape(-1, 3),
            lab[:, :b].reshape(-1, 3),
            lab[:, -b:].reshape(-1, 3),
        ]
    ).astype(np.float32)
    k = 4
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
    cv2.setRNGSeed(0)
    _, _, centres = cv2.kmeans(border, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    flat = lab.reshape(-1, 1, 3).astype(np.float32)
    dist = np.sqrt(((flat - centres[None]) ** 2).sum(-1)).min(1).reshape(h, w)
    return dist / max(float(dist.max()), 1e-6)


def _largest_parts(mask: np.ndarray) -> np.ndarray:
    """Keep components of at least 10% of the biggest one and fill their holes."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= 0.1 * areas.max()) + 1
    kept = np.isin(labels, keep).astype(np.uint8)
    contours, _ = cv2.findContours(kept, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(kept)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def _guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter (grey guide): edges of `src` snap to edges of the photo."""
    size = (2 * radius + 1, 2 * radius + 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = mean(guide), mean(src)
    cov = mean(guide * src) - mean_i * mean_p
    var = mean(guide * guide) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return mean(a) * guide + mean(b)


def _soft_alpha(rgb: np.ndarray, hard: np.ndarray) -> np.ndarray:
    """Soft alpha: hard inside the eroded mask and outside the dilated one, guided-filtered between."""
    h, w = hard.shape
    band = max(2, round(max(h, w) / 150))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    mask8 = hard.astype(np.uint8)
    sure_fg = cv2.erode(mask8, kernel).astype(bool)
    sure_bg = ~cv2.dilate(mask8, kernel).astype(bool)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    feathered = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), band / 2)
    soft = _guided_filter(grey, feathered, radius=band * 2, eps=1e-3)
    soft[sure_fg] = 1.0
    soft[sure_bg] = 0.0
    return np.clip(np.rint(soft * 255), 0, 255).astype(np.uint8)


@dataclass
class ClassicalSegmenter:
    """Border-colour keying + GrabCut + guided-filter edge; deterministic (OpenCV RNG reseeded)."""

    name: str = CLASSICAL
    iterations: int = 4

    def __call__(self, rgb: np.ndarray, class_noun: str = "") -> np.ndarray:
        h, w = rgb.shape[:2]
        scale = min(1.0, _WORK_SIDE / max(h, w))
        small = cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
        hard_small = self._grabcut(small)
        hard = cv2.resize(hard_small.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128
        return _soft_alpha(rgb, hard)

    def _grabcut(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        key = _border_key(cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB))
        threshold, _ = cv2.threshold(
            (key * 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU
        )
        likely_fg = key * 255 > threshold
        seeds = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        seeds[likely_fg] = cv2.GC_PR_FGD
        b = max(1, min(h, w) // 50)
        seeds[:b], seeds[-b:], seeds[:, :b], seeds[:, -b:] = (cv2.GC_BGD,) * 4
        if not likely_fg.any():
            seeds[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = cv2.GC_PR_FGD
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)
        try:
            cv2.grabCut(rgb, seeds, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            return likely_fg  # GrabCut refuses masks with one class only; the key is the best guess
        fg = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
        return _largest_parts(fg)


# -- choosing a backend ------------------------------------------------------------------------


def _load_model(kind: str, model: str, settings: SegmentConfig) -> Segmenter:
    from generators import segment_models as models

    model = model or models.DEFAULT_MODELS.get(kind, "")
    if kind == "semantic" and model:
        return models.load_semantic(model, settings)
    if kind == "sam":
        return models.load_sam(model, settings)
    if kind == "isnet":
        return models.load_isnet(model, settings)
    if kind in ("birefnet", "rmbg"):
        return models.load_remote_code(kind, model, settings)
    raise CurateError(
        f"unknown segment.backend {':'.join(filter(None, (kind, model)))!r}: use classical, auto, "
        "isnet[:FILE.onnx|NAME], sam[:ID], semantic:ID, birefnet[:ID] or rmbg[:ID] "
        "(ID: a hub id or a local folder)"
    )


def load_segmenter(backend: str, settings: SegmentConfig | None = None) -> Segmenter:
    """The segmenter `segment.backend` names, loaded once; `auto` falls back to classical offline."""
    settings = settings or SegmentConfig(backend=backend)
    if backend == CLASSICAL:
        return ClassicalSegmenter()
    if backend == AUTO:
        for kind in AUTO_ORDER:
            if kind == "birefnet" and not settings.trust_remote_code:
                continue
            try:
                return _load_model(kind, "", settings)
            except CurateError:
                continue
        return ClassicalSegmenter()
    kind, _, model = backend.partition(":")
    return _load_model(kind, model, settings)

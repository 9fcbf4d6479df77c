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
- ``auto`` (the default): what `curation/models/registry.py`'s `auto_choice` picks: the first model
  whose weights are on this machine, else IS-Net general-use fetched into rembg's folder, else (offline,
  or `segment.fetch = false`) classical, said once on stderr with the reason. The concept records
  which one ran (`Concept.segmenter`).

Masks are checked, not trusted: `mask_flags` marks empty, whole-frame, fragmented, frame-cut,
uncertain and holed masks so composition can avoid them instead of silently pasting a bad cut-out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import cv2
import numpy as np

from curation.core.config import SegmentConfig
from curation.core.errors import CurateError

_log = logging.getLogger(__name__)
CLASSICAL = "classical"
AUTO = "auto"
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
    """Quality flags for one mask (none means usable):

    - 'empty' / 'whole_frame': nothing to paste, or the photo's own background;
    - 'fragmented': confetti rather than one subject;
    - 'touches_frame': the subject runs out of the photo (a cat without its legs pastes as one);
    - 'low_confidence': much of the alpha sits in the uncertain band (a model that did not know);
    - 'holes': background enclosed by the subject (right for a mug's handle, wrong for a torso).

    Each fails silently in a composite, so composition prefers masks without flags.
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
    if max(hard[0].mean(), hard[-1].mean(), hard[:, 0].mean(), hard[:, -1].mean()) >= 0.05:
        flags.append("touches_frame")
    # a soft edge is uncertain too: count only mid alpha away from the cut-out's outline
    outline = hard ^ cv2.erode(hard.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    from_outline = cv2.distanceTransform((~outline).astype(np.uint8), cv2.DIST_L2, 3)
    uncertain = (alpha >= 64) & (alpha <= 191) & (from_outline > max(3, round(max(alpha.shape) / 50)))
    if uncertain.sum() > 0.25 * total:
        flags.append("low_confidence")
    background = (~hard).astype(np.uint8)
    _, labels, bg_stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    enclosed = bg_stats[1:, cv2.CC_STAT_AREA][~np.isin(np.arange(1, len(bg_stats)), edge_labels)]
    if enclosed.sum() >= 0.02 * total:
        flags.append("holes")
    return flags


# -- classical backend -------------------------------------------------------------------------


_PERIMETER_BINS = 24
_SEED_SHARE = 0.7
"""GrabCut starts as 'probably subject' every pixel keyed above this share of the Otsu threshold, not
only those above it: a subject part coloured near the background (the sample coffee's red saucer on
brown wood) then starts in the subject's colour model and stays unless GrabCut moves it out. At 1.0
the saucer and cup body were lost in two of three views of the sample (8-15% of the photo kept
instead of 46%); from 0.3 to 0.8 all three keep them. bench_segment.py (10 per case type) at 1.0 / 0.7:
mean IoU 0.967 / 0.956, thin parts 0.983 / 0.949, other case types within 0.01."""
_FOREIGN_GAP = 30.0
"""Lab distance (OpenCV 8-bit scale) a frame-touching colour must keep from every background colour.
On bench_segment.py's set 20 also caught low-contrast backgrounds' own shading; 45 missed subjects."""


def _border_strips(h: int, w: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and position along the frame (0..1, clockwise from the top-left corner) of the
    pixels in the `b`-deep strips top, bottom, left, right (corners appear twice, as they always have:
    the k-means below sees them in this order, which keeps earlier masks unchanged)."""
    rows, cols = np.arange(h), np.arange(w)
    top = np.meshgrid(rows[:b], cols, indexing="ij")
    bottom = np.meshgrid(rows[-b:], cols, indexing="ij")
    left = np.meshgrid(rows, cols[:b], indexing="ij")
    right = np.meshgrid(rows, cols[-b:], indexing="ij")
    ys = np.concatenate([g[0].ravel() for g in (top, bottom, left, right)])
    xs = np.concatenate([g[1].ravel() for g in (top, bottom, left, right)])
    side = np.argmin(np.stack([ys, w - 1 - xs, h - 1 - ys, xs]), 0)  # nearest edge: top, right, bottom, left
    along = np.choose(side, [xs, w + ys, w + h + (w - 1 - xs), 2 * w + h + (h - 1 - ys)])
    return ys, xs, along / (2 * (h + w))


def _border_key(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every pixel to the nearest background border colour (0..1), and the border pixels of a
    subject that runs out of the frame.

    The border's colours are clustered; a cluster is the subject's, not the background's, when it
    holds one stretch of the frame only (present in at most half of it, dominant somewhere) and
    stays `_FOREIGN_GAP` away from every other cluster: a background colour recurs around the frame
    or blends into its neighbours, a subject cut by the frame does neither. Without this, a subject
    touching the frame was keyed and seeded as background (IoU 0.19 on bench_segment's
    touching_frame cases; 0.89 with it, other case types unchanged).
    """
    h, w = lab.shape[:2]
    b = max(2, min(h, w) // 20)
    ys, xs, along = _border_strips(h, w, b)
    k = 4
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
    cv2.setRNGSeed(0)
    _, assign, centres = cv2.kmeans(lab[ys, xs].astype(np.float32), k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    assign = assign.ravel()
    bins = np.minimum((along * _PERIMETER_BINS).astype(int), _PERIMETER_BINS - 1)
    share = np.zeros((k, _PERIMETER_BINS))
    np.add.at(share, (assign, bins), 1)
    share /= np.maximum(share.sum(0, keepdims=True), 1)
    present = share >= 0.05
    runs = np.count_nonzero(present & ~np.roll(present, 1, axis=1), axis=1)
    local = (present.mean(1) <= 0.5) & (runs == 1) & (share >= 0.5).any(1)
    foreign = np.zeros(k, bool)
    if local.any() and not local.all():
        gap = np.linalg.norm(centres[local][:, None] - centres[~local][None], axis=2).min(1)
        foreign[local] = gap > _FOREIGN_GAP
    if np.bincount(assign, minlength=k)[foreign].sum() > 0.4 * len(assign):
        foreign[:] = False  # most of the frame is no subject's: trust the border as background
    flat = lab.reshape(-1, 1, 3).astype(np.float32)
    to_centres = np.sqrt(((flat - centres[None]) ** 2).sum(-1)).reshape(h, w, k)
    for c in np.flatnonzero(foreign):
        foreign[c] = _reaches_inward(to_centres.argmin(-1) == c, ys[assign == c], xs[assign == c])
    dist = to_centres[..., ~foreign].min(-1)
    subject_border = np.zeros((h, w), bool)
    subject_border[ys, xs] = foreign[assign]
    return dist / max(float(dist.max()), 1e-6), subject_border


def _reaches_inward(region: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> bool:
    """Does the part of `region` connected to these frame pixels reach 15% of the shorter side inward?

    A subject cut by the frame does; a strip of floor, sky or lit ground along one edge does not (the
    sample rocket's lit launch pad was taken for a subject without this check)."""
    h, w = region.shape
    _, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    touching = np.setdiff1d(np.unique(labels[ys, xs]), [0])
    yy, xx = np.mgrid[0:h, 0:w]
    inward = np.minimum(np.minimum(yy, h - 1 - yy), np.minimum(xx, w - 1 - xx))
    reached = inward[np.isin(labels, touching)]
    return bool(reached.size) and int(reached.max()) >= 0.15 * min(h, w)


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
    """Border-colour keying (a subject cut by the frame excepted) + GrabCut + guided-filter edge;
    deterministic (OpenCV RNG reseeded)."""

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
        key, subject_border = _border_key(cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB))
        threshold, _ = cv2.threshold(
            (key * 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU
        )
        likely_fg = key * 255 > threshold
        seeds = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        seeds[key * 255 > _SEED_SHARE * threshold] = cv2.GC_PR_FGD
        b = max(1, min(h, w) // 50)
        frame = np.zeros((h, w), bool)
        frame[:b], frame[-b:], frame[:, :b], frame[:, -b:] = True, True, True, True
        seeds[frame & ~subject_border] = cv2.GC_BGD
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


def _load_model(kind: str, model: str, settings: SegmentConfig, local_only: bool = False) -> Segmenter:
    from curation.models.registry import DEFAULT_SEGMENT_MODELS
    from generators import segment_models as models

    model = model or DEFAULT_SEGMENT_MODELS.get(kind, "")
    if kind == "semantic" and model:
        return models.load_semantic(model, settings)
    if kind == "sam":
        return models.load_sam(model, settings, local_only)
    if kind == "isnet":
        return models.load_isnet(model, settings, local_only)
    if kind in ("birefnet", "rmbg"):
        return models.load_remote_code(kind, model, settings, local_only)
    raise CurateError(
        f"unknown segment.backend {':'.join(filter(None, (kind, model)))!r}: use classical, auto, "
        "isnet[:FILE.onnx|NAME], sam[:ID], semantic:ID, birefnet[:ID] or rmbg[:ID] "
        "(ID: a hub id or a local folder)"
    )


@cache
def _fall_back(why: str) -> None:
    """Said once per reason and process: the classical backend loses subjects a model cuts out whole."""
    _log.warning(
        "segment.backend = 'auto' falls back to the classical backend because %s; classical often keeps only "
        "part of a subject that fills the frame or sits on a busy background: `curate models fetch` puts "
        "IS-Net general-use on this machine",
        why,
    )


def load_segmenter(backend: str, settings: SegmentConfig | None = None) -> Segmenter:
    """The segmenter `segment.backend` names, loaded once.

    `auto` loads what `auto_choice` picks: a model already here (never a hub download), or IS-Net
    general-use fetched from rembg's release. A fetch or load that fails falls back to classical,
    loudly; a device the user named and cannot have (CUDA without onnxruntime's CUDA provider) stays
    an error.
    """
    settings = settings or SegmentConfig(backend=backend)
    if backend == CLASSICAL:
        return ClassicalSegmenter()
    if backend == AUTO:
        from curation.core.devices import onnx_providers
        from curation.models.registry import auto_choice

        kind, why = auto_choice(settings)
        if kind == "isnet":
            onnx_providers(settings.device, "segment.device")
        if kind != CLASSICAL:
            try:
                return _load_model(kind, "", settings, local_only=kind != "isnet")
            except CurateError as exc:
                why = f"{kind} did not load ({exc})"
        _fall_back(why)
        return ClassicalSegmenter()
    kind, _, model = backend.partition(":")
    return _load_model(kind, model, settings)

"""What a generator keeps of its paste composition, for the scores computed after repaint.

Repaint (or MSP) rewrites the pixels the objects were pasted with, and two artifact scores need to
know what was pasted: identity drift compares each concept's region before and after, and seam
looks along the pasted silhouettes' edges. The generator writes both into `Candidate.extra` and
`curation.scores.artifacts` reads them back; this module is the format both sides share, so
neither stage imports the other.

Both are kept inside the candidate JSON rather than as extra files, so candidate folders and
shard bookkeeping stay as they are: an 8x8 RGB thumbnail is 192 bytes per concept, and the
silhouette map (a PNG of a few flat regions at most `SILHOUETTE_SIDE` px) averaged 1.3 KB of base64
over 16 offline candidates of 2-5 concepts on 512 px canvases.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import cv2
import numpy as np

from curation.core.records import Box, Candidate

THUMB = 8
"""Side of the per-concept region thumbnails identity drift compares (8x8 RGB = 192 bytes)."""
PASTE_THUMBS = "paste_thumbs"
"""Key in `Candidate.extra`: concept_id -> hex of its region thumbnail in the paste."""
PASTE_SILHOUETTES = "paste_silhouettes"
"""Key in `Candidate.extra`: the silhouette map of the paste (`encode_silhouettes`)."""
SILHOUETTE_SIDE = 256
"""Longest side the silhouette map is kept at: the artifact scores' working size."""


def region_thumbnail(image: np.ndarray, box: Box, width: int, height: int) -> np.ndarray:
    """A THUMB x THUMB RGB uint8 summary of one concept's box: cheap to store, enough to see it change.

    Args:
        image: HxWx3 uint8 RGB, any size (the box is scaled from the `width` x `height` canvas).
    """
    sy, sx = image.shape[0] / height, image.shape[1] / width
    x0, y0 = max(0, round(box.x * sx)), max(0, round(box.y * sy))
    x1 = min(image.shape[1], max(x0 + 1, round((box.x + box.w) * sx)))
    y1 = min(image.shape[0], max(y0 + 1, round((box.y + box.h) * sy)))
    region = np.ascontiguousarray(image[y0:y1, x0:x1, :3])
    return cv2.resize(region, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def paste_thumbnails(image: np.ndarray, boxes: Sequence[Box], width: int, height: int) -> dict[str, str]:
    """Each concept's region thumbnail as hex, what the generator keeps under `PASTE_THUMBS`."""
    return {b.concept_id: region_thumbnail(image, b, width, height).tobytes().hex() for b in boxes}


def encode_silhouettes(labels: np.ndarray) -> str:
    """A silhouette map as base64 PNG text, downscaled to at most `SILHOUETTE_SIDE` px.

    Args:
        labels: HxW uint8, 0 for background and k for the k-th pasted layer (back to front) where it
            is the visible one. Nearest-neighbour scaling keeps labels whole, and flat regions make
            the PNG small.
    """
    height, width = labels.shape
    scale = SILHOUETTE_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    ok, png = cv2.imencode(".png", labels, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError("cannot encode the silhouette map as PNG")
    return base64.b64encode(png.tobytes()).decode("ascii")


def decode_silhouettes(text: str) -> np.ndarray:
    """The HxW uint8 label map `encode_silhouettes` wrote."""
    labels = cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 2:
        raise ValueError("not a silhouette map")
    return labels


def layer_concepts(candidate: Candidate) -> list[str]:
    """Concept ids by silhouette label (label k -> entry k-1): the drawing order `paste_thumbs` keeps."""
    order = list(candidate.extra.get(PASTE_THUMBS, {}))
    if sorted(order) != sorted(candidate.concepts):
        raise ValueError(f"candidate {candidate.candidate_id}: paste_thumbs does not list its concepts")
    return order

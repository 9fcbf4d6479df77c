"""Small JPEG previews for Label Studio: the Data Manager lists many, each a few KB, never a full PNG.

`curate index` writes a candidate's preview while it has the image decoded anyway (decoding a
1024 px PNG costs ten times the preview), so `review push` of 100K candidates opens no image;
push makes only what is missing (candidates indexed before previews existed, concept cut-outs).
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

from curation.core.workspace import Workspace, atomic_write_bytes

THUMB_SIDE = 128  # px: a Data Manager cell or a 60 px reference, sharp on a 2x screen


def thumbs_dir(ws: Workspace) -> Path:
    return ws.review_dir / "thumbs"


def candidate_thumb(thumbs: Path, candidate_id: str) -> Path:
    """Where a candidate's preview lives in a workspace's `thumbs_dir`."""
    return thumbs / f"{candidate_id}.jpg"


def write_thumbnail(image: Image.Image, target: Path) -> Path:
    """The preview of a decoded image, shrunk before flattening; a cut-out's transparent surround shows white."""
    scale = min(1.0, THUMB_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0).convert("RGBA")
    flat = Image.new("RGB", size, "white")
    flat.paste(small, mask=small)
    buffer = io.BytesIO()
    flat.save(buffer, format="JPEG", quality=85)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def thumbnail(source: Path, target: Path) -> Path:
    """The preview of an image file, made only when it does not exist yet."""
    if not target.exists():
        with Image.open(source) as image:
            write_thumbnail(image, target)
    return target


def page_strip(previews: list[Path], target: Path, side: int, gap: int) -> Path:
    """A batch page's previews as one JPEG row of `side` px squares `gap` px apart, made only when missing.

    One image, not one per candidate: the labeling page requests each image from Label Studio as the
    next page is built, and eight previews made a page turn 0.15-0.3 s slower than one row
    (benchmarks/bench_review_ui.py at load 1-3).
    """
    if not target.exists():
        row = Image.new("RGB", (len(previews) * (side + gap) - gap, side), "white")
        for n, preview in enumerate(previews):
            with Image.open(preview) as image:
                row.paste(ImageOps.fit(image.convert("RGB"), (side, side)), (n * (side + gap), 0))
        buffer = io.BytesIO()
        row.save(buffer, format="JPEG", quality=85)
        atomic_write_bytes(target, buffer.getvalue())
    return target

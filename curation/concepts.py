"""`curate concepts add`: a concept's photos -> downscaled references, soft masks and a token.

The concept folder is built in `concepts/.staging/` and renamed into place only when every photo
was read and segmented, so a bad photo or a kill leaves the previous concept (if any) untouched
and no half-built folder that `Workspace.concepts()` would trust. File names are content hashes
of the downscaled pixels, so re-adding the same photos rewrites identical files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from curation.errors import CurateError
from curation.progress import ProgressFn, no_progress
from curation.records import Concept
from curation.workspace import Workspace, atomic_write_json, make_temp_dir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 40_000_000
"""Larger photos are refused before decoding (a 40 MP phone photo passes; a decompression bomb does not)."""


def _collect(photos: list[Path]) -> list[Path]:
    """Files as given plus image files directly inside given folders, in a stable order."""
    found: list[Path] = []
    for path in photos:
        if not path.exists():
            raise CurateError(f"photo path does not exist: {path}")
        if path.is_dir():
            found.extend(
                sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            )
        else:
            found.append(path)
    if not found:
        raise CurateError(f"no images found in {', '.join(str(p) for p in photos) or 'the arguments'}")
    return found


def _read_photo(path: Path, max_side: int) -> np.ndarray:
    """Decode, orient, bound and downscale one photo to RGB uint8; any failure names the file."""
    try:
        with Image.open(path) as image:
            w, h = image.size
            if w * h > MAX_PIXELS:
                raise CurateError(f"{path}: {w}x{h} pixels is over the {MAX_PIXELS:,} pixel limit")
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return np.asarray(image)
    except CurateError:
        raise
    except Image.DecompressionBombError as exc:
        raise CurateError(f"{path}: over the pixel limit, refused as a possible decompression bomb") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CurateError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def _pixel_hash(rgb: np.ndarray) -> str:
    digest = hashlib.sha256(str(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()[:16]


def _replace_dir(staged: Path, final: Path) -> None:
    """Swap the staged folder in; the old concept is removed only after the new one is in place."""
    old = None
    if final.exists():
        old = make_temp_dir(staged.parent, f"old.{final.name}.")
        os.replace(final, old / final.name)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def add_concept(
    ws: Workspace,
    concept_id: str,
    photos: list[Path],
    class_noun: str,
    name: str | None = None,
    progress: ProgressFn = no_progress,
) -> Concept:
    """Ingest (or replace) a concept from image files or folders of images.

    Args:
        ws: The workspace.
        concept_id: Folder name and token stem, e.g. 'cat1' gives the token <c-cat1>.
        photos: Image files and/or folders holding them (direct children only).
        class_noun: What captions and detectors call it ('cat', 'mug').
        name: Display name; defaults to the id.
        progress: Called once per segmented photo.

    Returns:
        The saved concept, with workspace-relative refs and masks in the same order.
    """
    from generators.segment import load_segmenter, mask_flags

    ws.check_concept_id(concept_id)
    class_noun = class_noun.strip()
    if not class_noun:
        raise CurateError(f"concept {concept_id!r} needs a class noun, e.g. --class cat")
    config = ws.config.segment
    paths = _collect(photos)
    images: dict[str, np.ndarray] = {}
    for path in paths:
        rgb = _read_photo(path, config.max_side)
        images.setdefault(_pixel_hash(rgb), rgb)  # the same photo twice is one reference

    segmenter = load_segmenter(config.backend)
    final = ws.concept_dir(concept_id)
    staging_root = ws.concepts_dir / ".staging"
    staging_root.mkdir(parents=True, exist_ok=True)
    # folders left by a killed ingest of this concept ('.' cannot occur in an id, so no other concept's match)
    for leftover in [*staging_root.glob(f"{concept_id}.*"), *staging_root.glob(f"old.{concept_id}.*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    staged = make_temp_dir(staging_root, f"{concept_id}.")
    try:
        (staged / "refs").mkdir()
        (staged / "masks").mkdir()
        refs, masks, flags = [], [], []
        for done, (key, rgb) in enumerate(sorted(images.items()), start=1):
            alpha = segmenter(rgb)
            Image.fromarray(rgb).save(staged / "refs" / f"{key}.png")
            Image.fromarray(alpha).save(staged / "masks" / f"{key}.png")
            refs.append(f"concepts/{concept_id}/refs/{key}.png")
            masks.append(f"concepts/{concept_id}/masks/{key}.png")
            flags.append(mask_flags(alpha))
            progress(f"segment {concept_id}", done, len(images))
        concept = Concept(
            concept_id=concept_id,
            name=name or concept_id,
            class_noun=class_noun,
            token=f"<c-{concept_id}>",
            refs=refs,
            masks=masks,
            mask_flags=flags,
            segmenter=segmenter.name,
        )
        atomic_write_json(staged / "concept.json", concept.model_dump())  # same file ws.save_concept writes
        _replace_dir(staged, final)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return concept

"""`curate concepts add`: a concept's photos -> downscaled references, soft masks, a token and a preview.

The concept folder is built in `concepts/.staging/` and renamed into place only when every photo
was read and segmented, so a bad photo or a kill leaves the previous concept (if any) untouched
and no half-built folder that `Workspace.concepts()` would trust. File names are content hashes
of the downscaled pixels, so re-adding the same photos rewrites identical files.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from curation.core.errors import CurateError
from curation.core.lock import writes
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import (
    CONCEPT_ID,
    MAX_CLASS_NOUN_CHARS,
    MAX_NAME_CHARS,
    Concept,
    printable_line,
)
from curation.core.workspace import Workspace, atomic_write_bytes, atomic_write_json, make_temp_dir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 40_000_000
"""Larger photos are refused before decoding (a 40 MP phone photo passes; a decompression bomb does not)."""
MIN_PHOTO_SIDE = 64
"""Photos whose shorter side (as read, and after the downscale to `segment.max_side`) is below this
are refused: a cut-out of a few pixels segments into nothing and fails every candidate it is pasted in."""
PHOTO_ALPHA = "photo alpha"
"""`Concept.mask_sources` entry of a mask that is the photo's own alpha channel."""
MIN_TRANSPARENT = 0.01
"""A photo's alpha is a cut-out when at least this share of it is transparent (alpha < 128): an opaque
alpha channel (many PNGs carry one) or a few transparent corner pixels are no subject's outline."""


def _name_key(name: str) -> str:
    """What makes two typed names the same name: Unicode form, case and spacing do not count."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def concept_id_for(name: str) -> str:
    """The id a typed name is stored under; the same name always gives the same id.

    A name that is already an id is its own id (so ids from before names existed stay). Others
    become an ASCII slug ('Hund Müller' -> 'hund-muller'); when letters had no ASCII form or the
    slug was cut, a hash of the name is appended so different names keep different ids, and a
    name with nothing ASCII in it ('猫') becomes 'c-' and that hash.
    """
    if CONCEPT_ID.fullmatch(name):
        return name
    key = _name_key(name)
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    decomposed = unicodedata.normalize("NFKD", key)
    full = re.sub(r"[^a-z0-9_]+", "-", decomposed.encode("ascii", "ignore").decode()).strip("-_")
    slug = full[:40].rstrip("-_")
    lost = slug != full or any(c.isalnum() and not c.isascii() for c in decomposed)
    if not slug:
        return f"c-{digest}"
    return f"{slug}-{digest}" if lost else slug


def _checked(what: str, text: str, max_chars: int) -> str:
    try:
        return printable_line(text, max_chars)
    except ValueError as exc:
        raise CurateError(f"{what} {exc}") from exc


def choose_concept_id(ws: Workspace, name: str, concept_id: str | None = None) -> str:
    """The id to store a concept typed as `name` under: `concept_id` if given, else derived from the name.

    A derived id already held by a concept of another name is refused rather than replaced, since
    the user never typed that id; re-adding the same name (or typing the id itself) replaces.
    """
    name = _checked("concept name", name, MAX_NAME_CHARS)
    if concept_id:
        return ws.check_concept_id(concept_id)
    derived = concept_id_for(name)
    previous = ws.concept(derived)
    if derived != name and previous is not None and _name_key(previous.name) != _name_key(name):
        raise CurateError(
            f"the name {name!r} gives the id {derived!r}, which concept {previous.name!r} already has: "
            "pass --id to choose another id"
        )
    return derived


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


def _own_alpha(image: Image.Image) -> np.ndarray | None:
    """The photo's alpha channel when it is a real cut-out (someone already cut the subject out: it is
    the mask, exactly, and segmenting the photo again can only lose it), else None."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return None
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    return alpha if (alpha < 128).mean() >= MIN_TRANSPARENT else None


def _read_photo(path: Path, max_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode, orient, bound and downscale one photo to RGB uint8 and its own alpha when that is a
    cut-out (see `_own_alpha`); any failure names the file."""
    try:
        with Image.open(path) as image:
            w, h = image.size
            if w * h > MAX_PIXELS:
                raise CurateError(f"{path}: {w}x{h} pixels is over the {MAX_PIXELS:,} pixel limit")
            if min(w, h) < MIN_PHOTO_SIDE:
                raise CurateError(
                    f"{path}: {w}x{h} pixels is too small: photos need at least {MIN_PHOTO_SIDE} px on the shorter side"
                )
            image = ImageOps.exif_transpose(image)
            image = image.convert("RGBA" if _own_alpha(image) is not None else "RGB")
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    except CurateError:
        raise
    except Image.DecompressionBombError as exc:
        raise CurateError(f"{path}: over the pixel limit, refused as a possible decompression bomb") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # what PIL raises on damaged files (tests/test_concepts.py)
        message = " ".join(str(exc).split())[:200]
        raise CurateError(f"{path}: not a readable image ({type(exc).__name__}: {message})") from exc
    if min(image.size) < MIN_PHOTO_SIDE:
        raise CurateError(
            f"{path}: {w}x{h} pixels shrinks to {image.width}x{image.height} at segment.max_side = {max_side}, "
            f"under the {MIN_PHOTO_SIDE} px minimum on the shorter side: crop it or raise segment.max_side"
        )
    pixels = np.asarray(image)
    return (pixels[..., :3], pixels[..., 3]) if image.mode == "RGBA" else (pixels, None)


PREVIEW_ROW_HEIGHT = 160
PREVIEW_NAME = "preview.png"


def preview_path(ws: Workspace, concept_id: str) -> Path:
    """Where `concepts add` leaves the concept's preview (one row per photo)."""
    return ws.concept_dir(concept_id) / PREVIEW_NAME


def write_preview(rows: list[tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """photo | mask | cut-out on a checkerboard, one row per photo: what will be pasted, seen before
    10K candidates are generated from it."""
    panels = []
    for rgb, alpha in rows:
        h, w = alpha.shape
        scale = PREVIEW_ROW_HEIGHT / h
        size = (max(1, round(w * scale)), PREVIEW_ROW_HEIGHT)
        photo = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR), np.float32)
        a = np.asarray(Image.fromarray(alpha).resize(size, Image.Resampling.BILINEAR), np.float32)[..., None] / 255
        yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
        checker = np.where(((yy // 12 + xx // 12) % 2 == 0)[..., None], 230.0, 170.0)
        cutout = a * photo + (1 - a) * checker
        gap = np.full((PREVIEW_ROW_HEIGHT, 4, 3), 255.0)
        panels.append(np.concatenate([photo, gap, np.repeat(a * 255, 3, axis=2), gap, cutout], axis=1))
    width = max(p.shape[1] for p in panels)
    padded = [np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels]
    Image.fromarray(np.rint(np.concatenate(padded)).astype(np.uint8)).save(path, compress_level=1)


def show_concept(ws: Workspace, name: str) -> tuple[Concept, Path]:
    """The concept a typed name or id stands for, and its preview (drawn from the stored refs and masks
    when the concept predates previews)."""
    concept = ws.concept(concept_id_for(_checked("concept name", name, MAX_NAME_CHARS)))
    if concept is None:
        known = ", ".join(sorted(ws.concepts())) or "none yet"
        raise CurateError(f"no concept named {name!r} (concepts: {known})")
    path = preview_path(ws, concept.concept_id)
    if not path.exists():
        rows = [
            (np.asarray(Image.open(ws.resolve(ref)).convert("RGB")), np.asarray(Image.open(ws.resolve(mask)).convert("L")))
            for ref, mask in zip(concept.refs, concept.masks)
        ]
        write_preview(rows, path)
    return concept, path


CUTOUTS_DIR = "cutouts"
CUTOUT_MIN_ALPHA = 16
"""The cut-out is cropped to where the mask reaches this alpha (as the paste crops it: generators/compose.py)."""


def masks_per_ref(concept: Concept) -> list[str | None]:
    """The mask of each reference, None where a record (hand-written or older) has fewer masks than
    photos: such a reference is shown whole rather than stopping the index or the review page."""
    return [*concept.masks[: len(concept.refs)], *[None] * (len(concept.refs) - len(concept.masks))]


def cutout_paths(ws: Workspace, concept: Concept) -> list[Path]:
    """One RGBA PNG per reference photo, cropped to its mask (written on first use): the cut-outs the
    review page's reference strip and the FiftyOne concepts dataset show, i.e. what will be pasted.

    They live in the concept's folder, named like their reference, so re-adding the concept (a new
    folder) or new photos (new names) never shows a stale cut-out.
    """
    folder = ws.concept_dir(concept.concept_id) / CUTOUTS_DIR
    paths = []
    for ref, mask in zip(concept.refs, masks_per_ref(concept), strict=True):
        path = folder / Path(ref).name
        if not path.exists():
            rgb = np.asarray(Image.open(ws.resolve(ref)).convert("RGB"))
            if mask is None:
                alpha = np.full(rgb.shape[:2], 255, np.uint8)
            else:
                alpha = np.asarray(Image.open(ws.resolve(mask)).convert("L").resize(rgb.shape[1::-1]))
            ys, xs = np.nonzero(alpha >= CUTOUT_MIN_ALPHA)
            crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)) if len(xs) else (slice(None),) * 2
            buffer = io.BytesIO()
            Image.fromarray(np.dstack([rgb, alpha])[crop], "RGBA").save(buffer, format="PNG", compress_level=6)
            folder.mkdir(exist_ok=True)
            atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def cover_cutout(ws: Workspace, concept: Concept) -> Path:
    """The cut-out that stands for the concept where one is shown: the first reference whose mask has
    no flag, else the first."""
    paths = cutout_paths(ws, concept)
    return next((p for p, flags in zip(paths, concept.mask_flags, strict=False) if not flags), paths[0])


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


@writes("concepts")
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
        name: Display name (one printable line, at most MAX_NAME_CHARS); defaults to the id.
        progress: Called once per segmented photo.

    Returns:
        The saved concept, with workspace-relative refs and masks in the same order.
    """
    from generators.segment import UNUSABLE_FLAGS, load_segmenter, mask_flags

    ws.check_concept_id(concept_id)
    class_noun = _checked("class noun (--class)", class_noun, MAX_CLASS_NOUN_CHARS)
    name = _checked("concept name", name or concept_id, MAX_NAME_CHARS)
    config = ws.config.segment
    paths = _collect(photos)
    images: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for path in paths:
        rgb, own = _read_photo(path, config.max_side)
        key = _pixel_hash(rgb if own is None else np.dstack([rgb, own]))
        images.setdefault(key, (rgb, own))  # the same photo twice is one reference

    # a photo that is already a cut-out is never segmented again; a concept of cut-outs loads no model
    needs_model = any(own is None for _, own in images.values())
    segmenter = load_segmenter(config.backend, config) if needs_model else None
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
        refs, masks, flags, rows, sources = [], [], [], [], []
        for done, (key, (rgb, own)) in enumerate(sorted(images.items(), key=lambda item: item[0]), start=1):
            alpha = own if own is not None else segmenter(rgb, class_noun)
            sources.append(PHOTO_ALPHA if own is not None else segmenter.name)
            Image.fromarray(rgb).save(staged / "refs" / f"{key}.png")
            Image.fromarray(alpha).save(staged / "masks" / f"{key}.png")
            refs.append(f"concepts/{concept_id}/refs/{key}.png")
            masks.append(f"concepts/{concept_id}/masks/{key}.png")
            flags.append(mask_flags(alpha))
            rows.append((rgb, alpha))
            progress(f"segment {concept_id}", done, len(images))
        if all(UNUSABLE_FLAGS.intersection(photo_flags) for photo_flags in flags):
            counts = Counter(flag for photo_flags in flags for flag in photo_flags)
            raise CurateError(
                f"concept {concept_id!r}: no usable mask in {len(flags)} photo(s) "
                f"({', '.join(f'{flag} x{n}' for flag, n in sorted(counts.items()))}): use photos where the "
                f"{class_noun} stands out whole against a plainer background, or a model as segment.backend"
            )
        concept = Concept(
            concept_id=concept_id,
            name=name,
            class_noun=class_noun,
            token=f"<c-{concept_id}>",
            refs=refs,
            masks=masks,
            mask_flags=flags,
            segmenter=segmenter.name if segmenter else PHOTO_ALPHA,
            mask_sources=sources,
        )
        write_preview(rows, staged / PREVIEW_NAME)
        atomic_write_json(staged / "concept.json", concept.model_dump())  # same file ws.save_concept writes
        _replace_dir(staged, final)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return concept

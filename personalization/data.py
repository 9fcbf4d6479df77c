"""Read a MyCanvas-style export folder: the compositions, their captions, and each concept's references.

The trainer and evaluator consume only the export (never the workspace), so a set exported on one
machine trains on another. This module is the only one that reads the folder's listings and JSON
files: it reads them once into an `Export` that the trainer, the held-out prompts and layouts, and the
evaluator are handed. Layout read here:

    train/metadata.jsonl          one JSON per composition image (file_name relative to train/, caption, ...)
    concepts/<id>/refs/*.png      the concept's reference photos (+ masks/*.png)
    concepts/<id>/concept.json    the concept record: class noun, refs paired with masks (and mask flags)
    concepts_list.json            diffusers/Custom Diffusion list (instance_prompt, class_prompt,
                                  instance_data_dir, class_data_dir: prior-preservation images, if any)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from curation.core.errors import CurateError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
DATA_DIR = "train"
"""Where an export keeps its compositions and metadata.jsonl (apart from concepts/, for `datasets`)."""


@dataclass(frozen=True)
class ExportConcept:
    """One personal concept as the export describes it."""

    concept_id: str
    token: str
    class_noun: str
    refs: tuple[Path, ...]
    masks: tuple[Path | None, ...]
    """Each ref's mask file, by position; None where the export has none."""
    mask_flags: tuple[tuple[str, ...], ...]
    """Each ref's mask quality flags (concept.json's mask_flags), by position; empty where it lists none."""
    class_images: tuple[Path, ...] = ()
    """Prior-preservation images of the class (concepts_list.json's class_data_dir), if the export has any."""

    @property
    def phrase(self) -> str:
        """How captions name it: "<c-cat> cat"."""
        return f"{self.token} {self.class_noun}"

    @property
    def reference_masks(self) -> list[tuple[Path, Path | None]]:
        """Each reference photo with its mask file, or None where the export has none."""
        return list(zip(self.refs, self.masks, strict=True))


@dataclass(frozen=True)
class Composition:
    """One accepted multi-concept image and its caption."""

    image: Path
    caption: str
    concepts: tuple[str, ...]
    background: str | None = None
    quality: float | None = None
    candidate_id: str = ""
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    """Each concept's box (x, y, w, h) in the image's pixels, from metadata.jsonl (masked training loss)."""

    @property
    def n_concepts(self) -> int:
        return len(self.concepts)


@dataclass
class Export:
    """Everything the trainer and evaluator need from an export folder."""

    root: Path
    concepts: dict[str, ExportConcept]
    compositions: list[Composition] = field(default_factory=list)

    def concept_sets(self) -> list[tuple[str, ...]]:
        """The distinct concept combinations, in first-seen order (held-out prompts reuse them)."""
        return list(dict.fromkeys(c.concepts for c in self.compositions))


def _images(folder: Path) -> tuple[Path, ...]:
    if not folder.is_dir():
        return ()
    return tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES))


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CurateError(f"{path}:{number} is not valid JSON ({exc.msg})") from exc
    return rows


def _concepts_list(root: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """Concept id -> class noun and -> class image folder, via concepts_list.json's instance_data_dir
    (…/concepts/<id>/refs); relative folders are read against the export."""
    path = root / "concepts_list.json"
    if not path.exists():
        return {}, {}
    nouns, class_dirs = {}, {}
    for entry in json.loads(path.read_text()):
        data_dir = Path(entry.get("instance_data_dir", ""))
        concept_id = data_dir.parent.name if data_dir.name == "refs" else data_dir.name
        if concept_id and entry.get("class_prompt"):
            nouns[concept_id] = entry["class_prompt"].strip()
        if concept_id and entry.get("class_data_dir"):
            class_dirs[concept_id] = root / entry["class_data_dir"]
    return nouns, class_dirs


def _concept_card(folder: Path) -> dict:
    """The exported concept.json (a concept record) of a concept folder, or {} when there is none."""
    path = folder / "concept.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _reference_masks(
    root: Path, folder: Path, refs: tuple[Path, ...], card: dict
) -> tuple[tuple[Path | None, ...], tuple[tuple[str, ...], ...]]:
    """Each ref's mask file (None where it is not there) and mask flags.

    concept.json pairs refs, masks (relative to the export) and mask flags by position; a ref it
    does not list has its mask at masks/<ref's file name> and no flags.
    """
    flags = card.get("mask_flags") or [[] for _ in card.get("refs", [])]
    listed = {
        Path(ref).name: (mask, list(flag))
        for ref, mask, flag in zip(card.get("refs", []), card.get("masks", []), flags)
    }
    masks, mask_flags = [], []
    for ref in refs:
        mask = root / listed[ref.name][0] if ref.name in listed else folder / "masks" / ref.name
        masks.append(mask if mask.is_file() else None)
        mask_flags.append(tuple(listed.get(ref.name, ("", []))[1]))
    return tuple(masks), tuple(mask_flags)


def _boxes(meta_path: Path, row: dict) -> tuple[tuple[float, float, float, float], ...]:
    """A row's boxes ({concept_id, x, y, w, h} in pixels, as `curate export` writes them) as tuples."""
    try:
        return tuple((b["x"], b["y"], b["w"], b["h"]) for b in row.get("boxes") or ())
    except (KeyError, TypeError) as exc:
        raise CurateError(
            f"{meta_path}: {row['file_name']} has boxes that are not {{x, y, w, h}} objects"
        ) from exc


def _noun_after_token(caption: str, token: str) -> str | None:
    """The word right after the token in a caption ("<c-cat> cat sits" -> "cat")."""
    _, found, rest = caption.partition(token)
    words = rest.split()
    return words[0].strip(",.;:") if found and words else None


def read_export(export_dir: Path) -> Export:
    """Parse an export folder, failing with one line naming the first problem.

    Class nouns come from `concepts/<id>/concept.json` when the export carries one, else from
    `concepts_list.json`'s `class_prompt`, else from the word after the token in a caption.
    """
    root = Path(export_dir)
    meta_path = root / DATA_DIR / "metadata.jsonl"
    if not meta_path.exists():
        raise CurateError(
            f"{root} is not an export folder (no metadata.jsonl in {DATA_DIR}/); run `curate export` first"
        )
    rows = _read_jsonl(meta_path)
    if not rows:
        raise CurateError(f"{meta_path} lists no images")
    listed_nouns, class_dirs = _concepts_list(root)
    tokens: dict[str, str] = {}
    nouns: dict[str, str] = {}
    compositions = []
    for row in rows:
        missing = [key for key in ("file_name", "caption", "concepts", "tokens") if key not in row]
        if missing:
            raise CurateError(f"{meta_path}: entry {row.get('file_name', '?')} lacks {', '.join(missing)}")
        if len(row["concepts"]) != len(row["tokens"]):
            raise CurateError(
                f"{meta_path}: {row['file_name']} has {len(row['concepts'])} concepts but {len(row['tokens'])} tokens"
            )
        image = meta_path.parent / row["file_name"]
        if not image.exists():
            raise CurateError(f"{meta_path} names {row['file_name']}, which is not in the export")
        for concept_id, token in zip(row["concepts"], row["tokens"], strict=True):
            if tokens.setdefault(concept_id, token) != token:
                raise CurateError(
                    f"concept {concept_id} has two tokens in {meta_path}: {tokens[concept_id]}, {token}"
                )
            if concept_id not in nouns:
                noun = listed_nouns.get(concept_id) or _noun_after_token(row["caption"], token)
                if noun:
                    nouns[concept_id] = noun
        compositions.append(
            Composition(
                image=image,
                caption=row["caption"],
                concepts=tuple(row["concepts"]),
                background=row.get("background"),
                quality=row.get("quality"),
                candidate_id=str(row.get("candidate_id", "")),
                boxes=_boxes(meta_path, row),
            )
        )
    concepts = {}
    for concept_id, token in tokens.items():
        folder = root / "concepts" / concept_id
        card = _concept_card(folder)
        noun = card.get("class_noun") or nouns.get(concept_id)
        if not noun:
            raise CurateError(
                f"no class noun for concept {concept_id} (not in concepts_list.json nor its captions)"
            )
        refs = _images(folder / "refs")
        if not refs:
            raise CurateError(f"concept {concept_id} has no reference images in {folder / 'refs'}")
        masks, mask_flags = _reference_masks(root, folder, refs, card)
        concepts[concept_id] = ExportConcept(
            concept_id=concept_id,
            token=token,
            class_noun=noun,
            refs=refs,
            masks=masks,
            mask_flags=mask_flags,
            class_images=_images(class_dirs[concept_id]) if concept_id in class_dirs else (),
        )
    return Export(root=root, concepts=concepts, compositions=compositions)

"""`class_images/<class>/`: the prior-preservation images of an export, which a re-export never deletes.

Custom Diffusion and DreamBooth regularise with images of each class ("cat", "cat and dog"). They
come from a folder the user gives (`curate export --class-images-from DIR`, one subfolder per class
named like the class folder or the class noun), or the diffusers scripts generate them into
`class_data_dir` on their first `--with_prior_preservation` run. Either way they live in the export,
which is rebuilt from scratch in a temp folder on every export, so the previous export's class
images are hard-linked into the new one before the swap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from curation.core.errors import CurateError
from exports.concepts_list import CLASS_IMAGES_DIR, class_folder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
PlaceFn = Callable[[Path, str, str], None]
"""(source file, path relative to the export being built, who asked) -> None; links or copies."""


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def keep_previous(previous: Path, place: PlaceFn) -> None:
    """Carry every file of the previous export's class_images/ over, whatever made it."""
    folder = previous / CLASS_IMAGES_DIR
    if not folder.is_dir():
        return
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        place(path, path.relative_to(previous).as_posix(), "class images of the previous export")


def add_from_folder(source: Path, class_nouns: list[str], count: int, place: PlaceFn) -> None:
    """Place `count` images per class noun (0 = all) from `source/<class folder or noun>/`.

    Raises:
        CurateError: the folder is missing, or holds too few images for a class.
    """
    if not source.is_dir():
        raise CurateError(f"--class-images-from {source}: no such folder")
    for noun in sorted(set(class_nouns)):
        target = class_folder(noun)
        candidates = [source / Path(target).name] + ([source / noun] if Path(noun).name == noun else [])
        found = next((images for images in map(_images, candidates) if images), [])
        if not found or len(found) < count:
            raise CurateError(
                f"class {noun!r}: {len(found)} images in {candidates[0]}"
                f"{'' if count == 0 else f', {count} asked'}; add images or lower --class-images"
            )
        for image in found[: count or None]:
            place(image, f"{target}/{image.name}", f"class images of {noun!r}")


def class_counts(root: Path) -> dict[str, int]:
    """Class folder (relative to the export) -> images it holds."""
    folder = root / CLASS_IMAGES_DIR
    if not folder.is_dir():
        return {}
    return {
        sub.relative_to(root).as_posix(): len(_images(sub))
        for sub in sorted(folder.iterdir())
        if sub.is_dir() and _images(sub)
    }

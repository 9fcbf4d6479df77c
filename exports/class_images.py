"""`class_images/<class>/`: the prior-preservation images of an export, which a re-export never deletes.

Custom Diffusion and DreamBooth regularise with images of each class ("cat", and for a composition
folder "cat and dog"). They come from a folder the user gives (`curate export --class-images-from DIR`,
one subfolder per class named like the class folder or the class noun; a composition's class takes
`DIR/cat_and_dog/` when there is one, else its members' images in turn), or the diffusers scripts
generate them into `class_data_dir` on their first `--with_prior_preservation` run. Either way they
live in the export, which is rebuilt from scratch in a temp folder on every export, so the previous
export's class images are hard-linked into the new one before the swap (the old export is deleted
right after, so the link shares nothing that lives on).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from curation.core.errors import CurateError
from exports.concepts_list import CLASS_IMAGES_DIR, class_folder
from exports.placing import link_or_copy

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
PlaceFn = Callable[[Path, str, str], None]
"""(source file, path relative to the export being built, who asked) -> None; links or copies."""


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def keep_previous(previous: Path, root: Path) -> None:
    """Carry every file of the previous export's class_images/ over into `root`, whatever made it."""
    folder = previous / CLASS_IMAGES_DIR
    if not folder.is_dir():
        return
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        target = root / path.relative_to(previous)
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(path, target)


def _own_images(source: Path, class_prompt: str) -> tuple[Path, list[Path]]:
    """The folder a class's own images are looked for in first, and the images found there or under
    the class prompt's own name."""
    folders = [source / Path(class_folder(class_prompt)).name]
    if Path(class_prompt).name == class_prompt:
        folders.append(source / class_prompt)
    return folders[0], next((images for images in map(_images, folders) if images), [])


def _picked(source: Path, class_prompt: str, members: list[str]) -> tuple[Path, list[tuple[Path, str]]]:
    """(folder named in errors, [(image, its file name in the export)]) for one class: its own images, or
    for a composition without any, its members' images in turn (cat 0, dog 0, cat 1, ...)."""
    folder, own = _own_images(source, class_prompt)
    if own or len(members) == 1:
        return folder, [(image, image.name) for image in own]
    pools = [
        [(image, f"{Path(class_folder(noun)).name}-{image.name}") for image in _own_images(source, noun)[1]]
        for noun in members
    ]
    return folder, [pool[k] for k in range(max(map(len, pools))) for pool in pools if k < len(pool)]


def add_from_folder(source: Path, classes: dict[str, list[str]], count: int, place: PlaceFn) -> None:
    """Place `count` images per class prompt (0 = all) from `source/<class folder or noun>/`.

    Args:
        source: The user's folder of class images.
        classes: Class prompt -> the class nouns it is made of (one for a concept, several for a
            composition's "cat and dog").
        count: Images per class; 0 takes all there are.
        place: Puts one image into the export being built.

    Raises:
        CurateError: the folder is missing, or holds too few images for a class.
    """
    if not source.is_dir():
        raise CurateError(f"--class-images-from {source}: no such folder")
    for class_prompt in sorted(classes):
        folder, found = _picked(source, class_prompt, classes[class_prompt])
        if not found or len(found) < count:
            raise CurateError(
                f"class {class_prompt!r}: {len(found)} images in {folder}"
                f"{'' if count == 0 else f', {count} asked'}; add images or lower --class-images"
            )
        for image, name in found[: count or None]:
            place(image, f"{class_folder(class_prompt)}/{name}", f"class images of {class_prompt!r}")


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

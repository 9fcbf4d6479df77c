"""`captioned/<composition>/`: each composition image with its caption beside it as `<stem>.txt`.

kohya-ss sd-scripts (DreamBooth-style subsets, `caption_extension = ".txt"`), OneTrainer (prompt
source "sample": `<stem>.txt`) and ai-toolkit (`caption_ext: txt`) all read a folder of images with a
text file of the same stem beside each; none reads `metadata.jsonl`. None of them adds tokens to the
tokenizer, so these captions name each concept by its one-token identifier (`sks mug`), not by `<c-x>`.
The folders stay apart from `train/`: diffusers' concepts-list scripts open every file of a folder
they are pointed at as an image. The images are hard links to the export's own copies under `train/`
(no second copy on disk; they share nothing with the workspace unless `--link` asked for that).
"""

from __future__ import annotations

from pathlib import Path

from curation.core.workspace import atomic_write_text
from exports.imagefolder import DATA_DIR
from exports.placing import link_or_copy
from exports.select import ExportItem

CAPTIONED_DIR = "captioned"
CAPTION_EXTENSION = ".txt"


def composition_folder(item: ExportItem) -> str:
    """`captioned/<concept ids joined by +>`, relative to the export."""
    return f"{CAPTIONED_DIR}/{Path(item.file_name).parent.name}"


def write_captioned(root: Path, items: list[ExportItem], captions: dict[str, str]) -> list[str]:
    """Place every composition image with its `.txt` caption; returns the folders, sorted.

    Args:
        root: The export being built (its train/ images already placed).
        items: The exported items.
        captions: Candidate id -> its caption with one-token identifiers.
    """
    folders = set()
    for item in items:
        folder = composition_folder(item)
        image = root / folder / Path(item.file_name).name
        image.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(root / DATA_DIR / item.file_name, image)
        atomic_write_text(image.with_suffix(CAPTION_EXTENSION), captions[item.candidate_id])
        folders.add(folder)
    return sorted(folders)

"""The folder layouts of the community trainers that read image + `.txt` caption folders (`--format kohya,onetrainer`).

Both read `captioned/` (written once when either is asked for), with captions that name each concept
by its one-token identifier, and regularise with the class folders of `class_images/` that hold
images; each adds its own config beside it (`exports.kohya`, `exports.onetrainer`).
"""

from __future__ import annotations

from pathlib import Path

from curation.core.records import Concept
from exports.captioned import write_captioned
from exports.commands import TrainCommand
from exports.kohya import kohya_command, write_dataset_config
from exports.onetrainer import write_concepts_file, write_references
from exports.select import ExportItem
from exports.tokens import rewrite

FORMATS = ("kohya", "onetrainer")


def identifier_captions(
    items: list[ExportItem], concepts: dict[str, Concept], identifiers: dict[str, str]
) -> dict[str, str]:
    """Candidate id -> its caption with each exported token replaced by the concept's identifier."""
    replacements = {concepts[c].token: identifiers[c] for c in concepts}
    return {item.candidate_id: rewrite(item.caption, replacements) for item in items}


def class_prompts(lists: dict[str, list[dict[str, str]]], class_counts: dict[str, int]) -> dict[str, str]:
    """Class folder -> its class prompt, for the folders the concepts lists name that hold images."""
    return {
        entry["class_data_dir"]: entry["class_prompt"]
        for entries in lists.values()
        for entry in entries
        if class_counts.get(entry["class_data_dir"])
    }


def write_trainer_formats(
    root: Path,
    formats: list[str],
    items: list[ExportItem],
    concepts: dict[str, Concept],
    identifiers: dict[str, str],
    classes: dict[str, str],
) -> list[TrainCommand]:
    """Write the layouts `formats` asks for into the export being built; returns their commands.

    Args:
        root: The export being built (train/ images, concepts/ refs and masks already placed).
        formats: The chosen export formats.
        items: The exported items (captions with exported tokens).
        concepts: The exported concepts by id, refs and masks relative to the export.
        identifiers: Concept id -> its one-token identifier.
        classes: Class folder holding images -> its class prompt (`class_prompts`).
    """
    if not set(FORMATS) & set(formats):
        return []
    folders = write_captioned(root, items, identifier_captions(items, concepts, identifiers))
    commands = []
    if "kohya" in formats:
        write_dataset_config(root, folders, classes)
        commands.append(kohya_command(bool(classes)))
    if "onetrainer" in formats:
        write_concepts_file(root, folders, write_references(root, concepts, identifiers), classes)
    return commands

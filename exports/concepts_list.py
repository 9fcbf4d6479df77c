"""The concepts lists of diffusers' Custom Diffusion and multi-subject DreamBooth scripts.

diffusers' `examples/custom_diffusion/train_custom_diffusion.py --concepts_list FILE` (and
`research_projects/multi_subject_dreambooth`) read a list of {instance_prompt, class_prompt,
instance_data_dir, class_data_dir}, open the paths as given (relative to the current directory, not
to the file) and treat every file in `instance_data_dir` as an image. The paths written here are
relative to the export folder and every printed command starts by changing into it, so the export
can be copied or rsynced anywhere (a training cluster) and still run as printed. Three lists:

- `concepts_list.json`: one entry per concept, its reference photos (the paper's "Source Images"
  baseline), prompted with the exported tokens (`<c-x>`), which Custom Diffusion adds to the tokenizer;
- `concepts_list_compositions.json`: one entry per composition folder, prompted with every concept
  phrase of the set. Both scripts take one prompt per folder, so the per-image captions and
  backgrounds (Gen4Gen's "CD + MyCanvas" prompting) reach only the consumers that read `metadata.jsonl`
  (DreamBooth-LoRA advanced, `curate train`) or the caption sidecars (kohya, OneTrainer);
- `concepts_list_dreambooth.json`: the per-concept list again, prompted with each concept's
  one-token identifier (`exports.identifiers`), for multi-subject DreamBooth, which adds no tokens.

`class_data_dir` is `class_images/<class prompt as a folder name>`: filled by `curate export
--class-images-from` (also for the compositions' "cat and dog"), or by the scripts themselves under
`--with_prior_preservation`; a re-export keeps it.
"""

from __future__ import annotations

import re
from pathlib import Path

from curation.core.records import Concept
from curation.core.workspace import atomic_write_json
from exports.imagefolder import DATA_DIR
from exports.select import ExportItem

CONCEPTS_LIST_FILE = "concepts_list.json"
COMPOSITIONS_LIST_FILE = "concepts_list_compositions.json"
DREAMBOOTH_LIST_FILE = "concepts_list_dreambooth.json"
CLASS_IMAGES_DIR = "class_images"


def class_folder(class_prompt: str) -> str:
    """`class_images/<folder>` for a class prompt: lowercase, runs of other characters as '_'."""
    name = re.sub(r"[^\w-]+", "_", class_prompt.strip().lower()).strip("_")
    return f"{CLASS_IMAGES_DIR}/{name or 'class'}"


def composition_class_prompt(members: list[Concept]) -> str:
    """The class prompt of a concept set: its class nouns joined by 'and', in id order ("cat and dog")."""
    return " and ".join(c.class_noun for c in sorted(members, key=lambda c: c.concept_id))


def concept_entries(concepts: list[Concept], words: dict[str, str]) -> list[dict[str, str]]:
    """One entry per concept, in the order given (the export sorts by id).

    Args:
        concepts: The exported concepts.
        words: Concept id -> the word that names it in the prompt (its token or its identifier).
    """
    return [
        {
            "instance_prompt": f"photo of a {words[c.concept_id]} {c.class_noun}",
            "class_prompt": c.class_noun,
            "instance_data_dir": f"concepts/{c.concept_id}/refs",
            "class_data_dir": class_folder(c.class_noun),
        }
        for c in concepts
    ]


def composition_folders(items: list[ExportItem]) -> dict[str, ExportItem]:
    """Composition key -> its first item, sorted by key: one image folder of train/ each."""
    folders: dict[str, ExportItem] = {}
    for item in items:
        folders.setdefault(item.composition, item)
    return dict(sorted(folders.items()))


def composition_entries(items: list[ExportItem], concepts: dict[str, Concept]) -> list[dict[str, str]]:
    """One entry per distinct concept set, pointing at its image folder in the export."""
    entries = []
    for item in composition_folders(items).values():
        members = [concepts[c] for c in sorted(item.concepts)]
        class_prompt = composition_class_prompt(members)
        entries.append(
            {
                "instance_prompt": "photo of " + " and ".join(f"a {c.phrase}" for c in members),
                "class_prompt": class_prompt,
                "instance_data_dir": f"{DATA_DIR}/{Path(item.file_name).parent.as_posix()}",
                "class_data_dir": class_folder(class_prompt),
            }
        )
    return entries


def write_concepts_lists(
    folder: Path, items: list[ExportItem], concepts: dict[str, Concept], identifiers: dict[str, str]
) -> dict[str, list[dict[str, str]]]:
    """Write the three lists into `folder` (the export being built), paths relative to it.

    Args:
        folder: The export being built.
        items: The exported items.
        concepts: The exported concepts by id, carrying the exported tokens.
        identifiers: Concept id -> its one-token identifier.

    Returns:
        File name -> its entries.
    """
    ordered = [concepts[c] for c in sorted(concepts)]
    lists = {
        CONCEPTS_LIST_FILE: concept_entries(ordered, {c.concept_id: c.token for c in ordered}),
        COMPOSITIONS_LIST_FILE: composition_entries(items, concepts),
        DREAMBOOTH_LIST_FILE: concept_entries(ordered, identifiers),
    }
    for file_name, entries in lists.items():
        atomic_write_json(folder / file_name, entries)
    return lists

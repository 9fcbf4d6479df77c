"""`concepts_list.json` for diffusers' Custom Diffusion and multi-subject DreamBooth scripts.

diffusers' `examples/custom_diffusion/train_custom_diffusion.py --concepts_list FILE` (and
`research_projects/multi_subject_dreambooth`) read a list of {instance_prompt, class_prompt,
instance_data_dir, class_data_dir}, open the paths as given (relative to the current directory, not
to the file) and treat every file in `instance_data_dir` as an image. So the paths written here are
absolute: the printed commands run from any directory, and the export must be re-exported (not
moved) to live elsewhere. Two lists are written:

- `concepts_list.json`: one entry per concept, its reference photos (the paper's "Source Images" baseline);
- `concepts_list_compositions.json`: one entry per composition folder of the export, prompted with every
  concept phrase of the set. Both scripts take one prompt per folder, so the per-image captions and
  backgrounds (Gen4Gen's "CD + MyCanvas" prompting) reach only the consumers that read `metadata.jsonl`:
  DreamBooth-LoRA advanced (`--caption_column caption`) and `curate train`.

`class_data_dir` is `class_images/<class prompt as a folder name>`: filled by `curate export
--class-images-from`, or by the scripts themselves under `--with_prior_preservation`; a re-export keeps it.
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
CLASS_IMAGES_DIR = "class_images"


def class_folder(class_prompt: str) -> str:
    """`class_images/<folder>` for a class prompt: lowercase, runs of other characters as '_'."""
    name = re.sub(r"[^\w-]+", "_", class_prompt.strip().lower()).strip("_")
    return f"{CLASS_IMAGES_DIR}/{name or 'class'}"


def concept_entries(concepts: list[Concept], root: Path) -> list[dict[str, str]]:
    """One entry per concept, in the order given (the export sorts by id); `root`: the export's final path."""
    return [
        {
            "instance_prompt": f"photo of a {c.phrase}",
            "class_prompt": c.class_noun,
            "instance_data_dir": str(root / "concepts" / c.concept_id / "refs"),
            "class_data_dir": str(root / class_folder(c.class_noun)),
        }
        for c in concepts
    ]


def composition_entries(
    items: list[ExportItem], concepts: dict[str, Concept], root: Path
) -> list[dict[str, str]]:
    """One entry per distinct concept set, pointing at its image folder in the export."""
    folders: dict[str, ExportItem] = {}
    for item in items:
        folders.setdefault(item.composition, item)
    entries = []
    for key in sorted(folders):
        members = [concepts[c] for c in sorted(folders[key].concepts)]
        class_prompt = " and ".join(c.class_noun for c in members)
        entries.append(
            {
                "instance_prompt": "photo of " + " and ".join(f"a {c.phrase}" for c in members),
                "class_prompt": class_prompt,
                "instance_data_dir": str(root / DATA_DIR / Path(folders[key].file_name).parent),
                "class_data_dir": str(root / class_folder(class_prompt)),
            }
        )
    return entries


def write_concepts_lists(
    folder: Path, items: list[ExportItem], concepts: dict[str, Concept], root: Path
) -> dict[str, list[dict[str, str]]]:
    """Write both lists into `folder` (the export being built) with paths under `root` (where it will live).

    Returns:
        File name -> its entries.
    """
    lists = {
        CONCEPTS_LIST_FILE: concept_entries([concepts[c] for c in sorted(concepts)], root),
        COMPOSITIONS_LIST_FILE: composition_entries(items, concepts, root),
    }
    for file_name, entries in lists.items():
        atomic_write_json(folder / file_name, entries)
    return lists

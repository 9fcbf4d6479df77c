"""`concepts_list.json` for diffusers' Custom Diffusion (and DreamBooth-style) training scripts.

diffusers' `examples/custom_diffusion/train_custom_diffusion.py --concepts_list FILE` reads a list of
{instance_prompt, class_prompt, instance_data_dir, class_data_dir} and treats every file in
`instance_data_dir` as an image. Two lists are written:

- `concepts_list.json`: one entry per concept, its reference photos (the paper's "Source Images" baseline);
- `concepts_list_compositions.json`: one entry per composition folder of the export, prompted with every
  concept phrase of the set (the paper's "CD + MyCanvas" setting, within what one prompt per folder allows).

Paths are relative to the export folder, so the set can be moved: run the script from inside it.
`class_data_dir` names a folder the script fills with prior-preservation images when asked to.
"""

from __future__ import annotations

from pathlib import Path

from curation.records import Concept
from curation.workspace import atomic_write_json
from exports.select import ExportItem

CONCEPTS_LIST_FILE = "concepts_list.json"
COMPOSITIONS_LIST_FILE = "concepts_list_compositions.json"


def concept_entries(concepts: list[Concept]) -> list[dict[str, str]]:
    """One entry per concept, in the order given (the export sorts by id)."""
    return [
        {
            "instance_prompt": f"photo of a {c.phrase}",
            "class_prompt": c.class_noun,
            "instance_data_dir": f"concepts/{c.concept_id}/refs",
            "class_data_dir": f"class_images/{c.concept_id}",
        }
        for c in concepts
    ]


def composition_entries(items: list[ExportItem], concepts: dict[str, Concept]) -> list[dict[str, str]]:
    """One entry per distinct concept set, pointing at its image folder in the export."""
    folders: dict[str, ExportItem] = {}
    for item in items:
        folders.setdefault(item.composition, item)
    entries = []
    for key in sorted(folders):
        members = [concepts[c] for c in sorted(folders[key].concepts)]
        entries.append(
            {
                "instance_prompt": "photo of " + " and ".join(f"a {c.phrase}" for c in members),
                "class_prompt": " and ".join(c.class_noun for c in members),
                "instance_data_dir": Path(folders[key].file_name).parent.as_posix(),
                "class_data_dir": f"class_images/{key}",
            }
        )
    return entries


def write_concepts_lists(folder: Path, items: list[ExportItem], concepts: dict[str, Concept]) -> None:
    """Write both lists for the concepts the export uses."""
    atomic_write_json(folder / CONCEPTS_LIST_FILE, concept_entries([concepts[c] for c in sorted(concepts)]))
    atomic_write_json(folder / COMPOSITIONS_LIST_FILE, composition_entries(items, concepts))

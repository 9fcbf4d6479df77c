"""`--format onetrainer`: OneTrainer's concept file, and the concepts' references with masks as it reads them.

OneTrainer (modules/dataLoader/mixin/DataLoaderText2ImageMixin.py) collects the images of each
concept's `path` (skipping `*-masklabel` and `*-condlabel` files), takes the prompt from `<stem>.txt`
when the concept's `text.prompt_source` is "sample" or from the lines of `text.prompt_path` when it
is "concept", and, with masked training on, reads a single-channel `<stem>-masklabel.png` beside each
image. Its concept file (a training config's `concept_file_name`, or the Concepts tab) is a JSON list
of concept configs (modules/util/config/ConceptConfig.py); missing keys take their defaults. So:
one concept per composition folder of `captioned/`; one per concept's references, laid out under
`onetrainer/references/<id>/` with the soft mask beside each photo; one `PRIOR_PREDICTION` concept per
class folder that holds images (OneTrainer's regularization: the base model's own prediction is the
target), prompted with its class prompt. Paths are relative to the export: start OneTrainer from inside it
(`cd "${EXPORT:-.}"`). OneTrainer adds no tokens: every prompt names a concept by its identifier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curation.core.records import Concept
from curation.core.workspace import atomic_write_text
from exports.captioned import CAPTION_EXTENSION
from exports.placing import link_or_copy

ONETRAINER_DIR = "onetrainer"
CONCEPTS_FILE = f"{ONETRAINER_DIR}/concepts.json"
MASK_POSTFIX = "-masklabel"


def _concept(name: str, path: str, **extra: Any) -> dict[str, Any]:
    text = extra.pop("text", {"prompt_source": "sample"})
    return {
        "name": name,
        "path": path,
        "enabled": True,
        "include_subdirectories": False,
        "text": text,
        **extra,
    }


def write_references(root: Path, concepts: dict[str, Concept], identifiers: dict[str, str]) -> list[str]:
    """Each reference photo with its `.txt` prompt and `-masklabel.png` mask; returns the folders.

    Args:
        root: The export being built (concepts/<id>/refs and masks already placed, paths in `concepts`).
        concepts: The exported concepts by id, refs and masks relative to the export.
        identifiers: Concept id -> its one-token identifier.
    """
    folders = []
    for concept_id in sorted(concepts):
        concept = concepts[concept_id]
        folder = f"{ONETRAINER_DIR}/references/{concept_id}"
        for ref, mask in zip(concept.refs, concept.masks, strict=False):
            image = root / folder / Path(ref).name
            image.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(root / ref, image)
            link_or_copy(root / mask, image.with_name(f"{image.stem}{MASK_POSTFIX}.png"))
            prompt = f"photo of a {identifiers[concept_id]} {concept.class_noun}"
            atomic_write_text(image.with_suffix(CAPTION_EXTENSION), prompt)
        folders.append(folder)
    return folders


def write_concepts_file(
    root: Path, composition_dirs: list[str], reference_dirs: list[str], class_prompts: dict[str, str]
) -> Path:
    """Write `onetrainer/concepts.json` (and one prompt file per class folder) into the export being built.

    Args:
        root: The export being built.
        composition_dirs: The caption-sidecar folders of the compositions.
        reference_dirs: The reference folders `write_references` made.
        class_prompts: Class folder holding images -> its class prompt.
    """
    concepts = [_concept(Path(d).name, d) for d in composition_dirs]
    concepts += [_concept(f"{Path(d).name} references", d) for d in reference_dirs]
    for folder in sorted(class_prompts):
        prompt_path = f"{ONETRAINER_DIR}/prompts/{Path(folder).name}.txt"
        atomic_write_text(root / prompt_path, class_prompts[folder])
        text = {"prompt_source": "concept", "prompt_path": prompt_path}
        concepts.append(_concept(f"{Path(folder).name} (prior)", folder, type="PRIOR_PREDICTION", text=text))
    path = root / CONCEPTS_FILE
    atomic_write_text(path, json.dumps(concepts, indent=2) + "\n")
    return path

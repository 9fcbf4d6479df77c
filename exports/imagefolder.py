"""`train/metadata.jsonl`: one row per image, which Hugging Face's `imagefolder` loader joins to the images.

Rows hold only what `datasets` can type consistently across rows (quality is always a float, boxes
always a list of {concept_id, x, y, w, h}). The composition images and this file sit in `train/`,
apart from the concepts' references and masks: `datasets` 2.x-3.4 refuses an imagefolder in which
an image has no metadata row ("doesn't have metadata"), and when a folder is named after a split,
every `datasets` version (checked: 2.21, 3.6, 4.0, 5.2) scans only that folder. So both
`load_dataset("imagefolder", data_dir=export)` and `load_dataset(export)` (which also reads the
card's `configs`) load exactly the compositions. File names in the rows are relative to `train/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curation.core.records import Concept
from curation.core.workspace import atomic_write_text
from exports.select import ExportItem

DATA_DIR = "train"
METADATA_FILE = "metadata.jsonl"


def metadata_row(item: ExportItem, concepts: dict[str, Concept]) -> dict[str, Any]:
    """The row for one image; boxes as in the candidate record: {concept_id, x, y, w, h} in pixels,
    top-left origin, one per concept.

    Args:
        item: The exported candidate.
        concepts: The exported concepts by id (carrying the exported tokens, as the caption does).
    """
    return {
        "file_name": item.file_name,
        "caption": item.caption,
        "concepts": list(item.concepts),
        "tokens": [concepts[c].token for c in item.concepts],
        "boxes": [box.model_dump() for box in item.boxes],
        "width": item.width,
        "height": item.height,
        "quality": item.quality,
        "n_concepts": len(item.concepts),
        "composition": item.composition,
        "background": item.background,
        "candidate_id": item.candidate_id,
        "plan_id": item.plan_id,
    }


def write_metadata(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """Write the rows as JSON lines into `folder/train/` (sorted keys: same selection, same bytes)."""
    path = folder / DATA_DIR / METADATA_FILE
    atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return path

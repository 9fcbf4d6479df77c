"""`metadata.jsonl`: one row per image, the file Hugging Face's `imagefolder` loader joins to the images.

Rows hold only what `datasets` can type consistently across rows (quality is always a float, boxes
always a list of {concept_id, x, y, w, h}), so `load_dataset("imagefolder", data_dir=export)` works
on the export folder as is; images not named in it (concept references) are ignored by that loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curation.records import Concept
from curation.workspace import atomic_write_text
from exports.select import ExportItem

METADATA_FILE = "metadata.jsonl"


def metadata_row(item: ExportItem, concepts: dict[str, Concept]) -> dict[str, Any]:
    """The row for one image; boxes as in the candidate record: {concept_id, x, y, w, h} in pixels,
    top-left origin, one per concept.

    Args:
        item: The exported candidate.
        concepts: The workspace's concepts by id (for the personal tokens).
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
    """Write the rows as JSON lines (keys sorted, so identical selections give identical bytes)."""
    path = folder / METADATA_FILE
    atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return path

"""WebDataset shards: the compositions and the concepts' references and masks as plain tar files.

`webdataset/compositions-NNNNNN.tar`: one sample per exported image, keyed by candidate id: the image
bytes as exported (`png`), the caption (`txt`) and the metadata row (`json`).
`webdataset/concepts-NNNNNN.tar`: one sample per reference photo, keyed `<concept id>-<k>`: the photo
(`ref.png`), its soft mask (`mask.png`) and the concept card (`json`: concept_id, name, class_noun,
token, phrase), so a trainer streaming the shards needs nothing else from the folder. Every sample of
a kind has the same keys, which `datasets`' webdataset builder needs to infer one schema.

Tar headers get a fixed mtime and owner so that the same selection always produces byte-identical shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from curation.core.errors import CurateError
from curation.core.records import Concept
from exports.imagefolder import DATA_DIR
from exports.select import ExportItem

WEBDATASET_DIR = "webdataset"
COMPOSITIONS_PATTERN = "compositions-%06d.tar"
CONCEPTS_PATTERN = "concepts-%06d.tar"


def _write(pattern: str, samples: Iterable[dict[str, Any]], shard_size: int) -> list[Path]:
    import webdataset as wds

    written: list[Path] = []
    with wds.ShardWriter(
        pattern, maxcount=shard_size, verbose=0, mtime=0.0, post=lambda f: written.append(Path(f))
    ) as sink:
        for sample in samples:
            sink.write(sample)
    return written


def _suffix(path: str) -> str:
    return Path(path).suffix.lower().lstrip(".")


def concept_samples(folder: Path, concepts: dict[str, Concept]) -> Iterator[dict[str, Any]]:
    """One sample per reference photo, read from the export being built (its refs/masks already placed)."""
    for concept_id in sorted(concepts):
        concept = concepts[concept_id]
        kinds = {_suffix(p) for p in concept.refs + concept.masks}
        if len(concept.refs) != len(concept.masks) or kinds != {"png"}:
            raise CurateError(
                f"concept {concept_id}: WebDataset needs one PNG mask per PNG reference"
                f" ({len(concept.refs)} refs, {len(concept.masks)} masks); re-run `curate concepts add`"
            )
        card = {
            "concept_id": concept_id,
            "name": concept.name,
            "class_noun": concept.class_noun,
            "token": concept.token,
            "phrase": concept.phrase,
        }
        for k, (ref, mask) in enumerate(zip(concept.refs, concept.masks, strict=True)):
            yield {
                "__key__": f"{concept_id}-{k:03d}",
                "ref.png": (folder / ref).read_bytes(),
                "mask.png": (folder / mask).read_bytes(),
                "json": json.dumps({**card, "ref": ref, "mask": mask}, sort_keys=True),
            }


def write_shards(
    folder: Path,
    items: list[ExportItem],
    rows: list[dict[str, Any]],
    concepts: dict[str, Concept],
    shard_size: int,
) -> list[Path]:
    """Write the composition shards (at most `shard_size` samples each), then the concept shards.

    Args:
        folder: The export folder being built; bytes are read from it (already linked there).
        items: The exported items, in export order.
        rows: Their metadata rows, same order.
        concepts: The exported concepts, whose refs and masks point into `folder`.
        shard_size: Samples per shard.
    """
    out = folder / WEBDATASET_DIR
    out.mkdir(parents=True, exist_ok=True)
    compositions = (
        {
            "__key__": item.candidate_id,
            item.image.suffix.lower().lstrip("."): (folder / DATA_DIR / item.file_name).read_bytes(),
            "txt": item.caption,
            "json": json.dumps(row, sort_keys=True),
        }
        for item, row in zip(items, rows, strict=True)
    )
    written = _write(str(out / COMPOSITIONS_PATTERN), compositions, shard_size)
    return written + _write(str(out / CONCEPTS_PATTERN), concept_samples(folder, concepts), shard_size)

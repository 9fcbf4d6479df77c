"""WebDataset shards: the exported images and their metadata rows as plain tar files, for large sets.

Each sample is keyed by candidate id and holds the image bytes as exported (`png`), the caption
(`txt`) and the metadata row (`json`). Tar headers get a fixed mtime and owner so that the same
selection always produces byte-identical shards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exports.select import ExportItem

WEBDATASET_DIR = "webdataset"


def write_shards(
    folder: Path, items: list[ExportItem], rows: list[dict[str, Any]], shard_size: int
) -> list[Path]:
    """Write `webdataset/shard-NNNNNN.tar` shards of at most `shard_size` samples.

    Args:
        folder: The export folder being built; image bytes are read from it (already linked there).
        items: The exported items, in export order.
        rows: Their metadata rows, same order.
        shard_size: Samples per shard.
    """
    import webdataset as wds

    out = folder / WEBDATASET_DIR
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pattern = str(out / "shard-%06d.tar")
    with wds.ShardWriter(
        pattern, maxcount=shard_size, verbose=0, mtime=0.0, post=lambda f: written.append(Path(f))
    ) as sink:
        for item, row in zip(items, rows, strict=True):
            sink.write(
                {
                    "__key__": item.candidate_id,
                    item.image.suffix.lower().lstrip("."): (folder / item.file_name).read_bytes(),
                    "txt": item.caption,
                    "json": json.dumps(row, sort_keys=True),
                }
            )
    return written

"""The near-duplicate store (curation/index/near_duplicates.py) when the CLIP model changes under it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from curation.core import dataset as ds
from curation.core.config import dump_config
from curation.index.run import INDEX_COMPLETE, index_workspace
from tests.fixtures.candidate_workspace import index_test_workspace, write_candidates
from tests.fixtures.tiny_clip import _CONFIG


def _register_clip(name: str, embed_dim: int) -> str:
    """The tiny open_clip architecture under another name, with embeddings `embed_dim` wide."""
    import open_clip

    if name not in open_clip.list_models():
        path = Path(tempfile.mkdtemp(prefix="tiny-clip-")) / f"{name}.json"
        path.write_text(json.dumps({**_CONFIG, "embed_dim": embed_dim}))
        open_clip.add_model_config(path)
    return name


def _use_clip(ws, name: str, checkpoint: Path) -> None:
    """Configure `name` with weights saved to `checkpoint`: a checkpoint counts as pretrained, so
    near-duplicates run (they are skipped with random weights)."""
    import open_clip
    import torch

    torch.save(open_clip.create_model(name).state_dict(), checkpoint)
    config = ws.config
    config.index.clip_model, config.index.clip_pretrained = name, str(checkpoint)
    ws.config_path.write_text(dump_config(config))


def test_a_wider_clip_model_starts_the_store_over(tmp_path, tiny_clip_name):
    """512-d to 768-d in miniature (32 to 48): every sample is re-embedded, the store of 32-d rows
    must not be multiplied with 48-d queries, and a sample that could not be re-embedded (its image
    broke) keeps its old embedding without taking part."""
    ws = index_test_workspace(tmp_path / "ws", tiny_clip_name)
    _use_clip(ws, tiny_clip_name, tmp_path / "narrow.pt")
    candidates = write_candidates(ws, 5)
    a, copy, broken = candidates[0], candidates[3], candidates[4]
    ws.resolve(copy.image).write_bytes(ws.resolve(a.image).read_bytes())
    first = index_workspace(ws)
    assert first.near_duplicates >= 1
    meta = ws.index_dir / "near_duplicates" / "meta.json"
    assert json.loads(meta.read_text())["dim"] == 32

    _use_clip(ws, _register_clip("curate-tiny-clip-wide", 48), tmp_path / "wide.pt")
    ws.resolve(broken.image).write_bytes(b"not a png any more")
    report = index_workspace(ws)
    assert (report.updated, [cid for cid, _ in report.failed]) == (4, [broken.candidate_id])
    dataset = ds.open_dataset(ws)
    assert dataset.info[INDEX_COMPLETE] is True
    marks = dict(zip(dataset.values(ds.CANDIDATE_ID), dataset.values(ds.NEAR_DUP_OF)))
    assert report.near_duplicate_queries == 4 and (marks[a.candidate_id] or marks[copy.candidate_id])
    stored = json.loads(meta.read_text())
    assert (stored["dim"], stored["rows"]) == (48, 4), "the broken sample's 32-d row is not in the new store"

    again = index_workspace(ws)  # settled: nothing re-embedded, nothing queried again
    assert (again.updated, again.near_duplicates) == (0, None)

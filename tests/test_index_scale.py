"""`curate index` at scale: work per run limited to new files and samples, the embedding map for the
App on demand, and CLIP embeddings on Ray actors."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from fiftyone import ViewField as F
from typer.testing import CliRunner

from curation.cli import app
from curation.core import dataset as ds
from curation.core.config import dump_config
from curation.core.errors import CurateError
from curation.core.workspace import (
    SUCCESS_MARKER,
    Workspace,
    atomic_write_json,
    atomic_write_text,
    new_workspace_id,
)
from curation.index.diversity import DIVERSITY, VISUALIZATION_KEY
from curation.index.run import index_workspace
from tests.fixtures.candidate_workspace import (
    candidate_image,
    index_test_workspace,
    write_candidates,
    write_image,
)


def test_index_computes_the_embedding_map_once(candidate_ws):
    ws, _ = candidate_ws
    report = index_workspace(ws)
    dataset = ds.open_dataset(ws)
    assert VISUALIZATION_KEY in dataset.list_brain_runs()
    # UMAP where umap-learn is installed, the dependency-free PCA elsewhere; either is recorded
    method = "umap" if importlib.util.find_spec("umap") else "pca"
    assert report.visualization == method
    assert dataset.info["visualization"] == {"brain_key": VISUALIZATION_KEY, "method": method}
    info = dataset.get_brain_info(VISUALIZATION_KEY)
    assert info.config.method == method and info.config.embeddings_field == ds.CLIP_EMBEDDING
    points = dataset.load_brain_results(VISUALIZATION_KEY).points
    assert points.shape == (6, 2) and np.isfinite(points).all()
    dataset.reload()
    first = dataset.get_brain_info(VISUALIZATION_KEY).timestamp  # as stored (ms precision)

    again = index_workspace(ws)  # unchanged workspace: no model work, so no new map either
    assert again.visualization is None and not again.clip_loaded
    dataset.reload()
    assert dataset.list_brain_runs() == [VISUALIZATION_KEY]
    assert dataset.get_brain_info(VISUALIZATION_KEY).timestamp == first


def test_embedding_map_is_skipped_for_tiny_datasets(tmp_path, tiny_clip_name):
    ws = index_test_workspace(tmp_path / "tiny", tiny_clip_name)
    write_candidates(ws, 3)
    report = index_workspace(ws)
    assert report.added == 3 and report.visualization is None
    assert VISUALIZATION_KEY not in ds.open_dataset(ws).list_brain_runs()


def test_unknown_executor_is_a_clear_error(candidate_ws):
    ws, _ = candidate_ws
    with pytest.raises(CurateError, match="unknown executor 'spark'"):
        index_workspace(ws, executor="spark")
    result = CliRunner().invoke(app, ["index", "--executor", "spark", "-w", str(ws.root)])
    assert isinstance(result.exception, CurateError)  # `main` turns it into one line and exit code 1
    assert "unknown executor 'spark'" in str(result.exception)
    import fiftyone as fo

    assert not fo.dataset_exists(ds.dataset_name(ws))  # refused before anything was written


@pytest.mark.timeout(180)
def test_ray_executor_writes_the_same_dataset_as_local(candidate_ws, tmp_path, ray_session):
    ws, _ = candidate_ws
    other = Workspace.open(Path(shutil.copytree(ws.root, tmp_path / "ray-copy")))
    config = other.config
    config.index.executor, config.index.ray_actors = "ray", 1
    config.workspace.id = new_workspace_id(other.name)  # a copy would share its original's dataset
    atomic_write_text(other.config_path, dump_config(config))
    index_workspace(ws)

    report = index_workspace(other)  # curate.toml says executor = "ray", ray_actors = 1
    assert (report.added, report.updated, report.failed) == (6, 0, [])

    fields = [ds.CANDIDATE_ID, ds.CLIP_EMBEDDING, ds.CLIP_T, ds.CLIP_T_COS, ds.CAPTION, "seam", "blur"]
    local = ds.open_dataset(ws).sort_by(ds.CANDIDATE_ID).values(fields)
    remote = ds.open_dataset(other).sort_by(ds.CANDIDATE_ID).values(fields)
    assert local[0] == remote[0]
    np.testing.assert_array_equal(np.stack(local[1]), np.stack(remote[1]))
    assert local[2:] == remote[2:]


def test_unchanged_files_are_not_read_again_and_changed_ones_are(candidate_ws):
    ws, candidates = candidate_ws
    first = index_workspace(ws)
    assert (first.hashed, first.parsed) == (6, 6)
    again = index_workspace(ws)  # size, mtime and inode known: no file opened
    assert (again.hashed, again.parsed, again.unchanged) == (0, 0, 6)

    target = candidates[4]
    write_image(ws, target, candidate_image(target.boxes, 96, seed=12345))
    edited = candidates[1].model_copy(update={"caption": "<c-cat> cat in the snow"})
    atomic_write_json(ws.shard_dir(edited.shard) / f"{edited.candidate_id}.json", edited.model_dump())
    report = index_workspace(ws)
    # the edited record, and the changed image's record (re-indexing needs it whole); nothing else
    assert (report.hashed, report.parsed, report.updated, report.unchanged) == (1, 2, 2, 4)


def _copy_of(ws, old, candidate_id):
    """A new candidate (own shard) whose image and caption are byte copies of `old`'s."""
    shard = f"copy-{candidate_id}"
    copy = old.model_copy(
        update={
            "candidate_id": candidate_id,
            "shard": shard,
            "image": f"candidates/{shard}/{candidate_id}.png",
        }
    )
    ws.resolve(copy.image).parent.mkdir(parents=True)
    ws.resolve(copy.image).write_bytes(ws.resolve(old.image).read_bytes())
    atomic_write_json(ws.shard_dir(shard) / f"{candidate_id}.json", copy.model_dump())
    (ws.shard_dir(shard) / SUCCESS_MARKER).touch()
    return copy


def test_new_candidates_are_compared_with_the_dataset_and_the_old_samples_left_alone(
    tmp_path, tiny_clip_name
):
    """Adding candidates reads, embeds and compares only them, yet a copy of an OLD sample is found and
    both sides of the pair are marked; uniqueness and the map wait for --diversity (or growth)."""
    import torch

    from curation.scores.clip import load_clip

    checkpoint = tmp_path / "tiny.pt"  # a saved checkpoint counts as real weights: near-duplicates run
    torch.save(load_clip(tiny_clip_name, None).model.state_dict(), checkpoint)
    ws = index_test_workspace(tmp_path / "ws", tiny_clip_name)
    config = ws.config
    config.index.clip_pretrained, config.index.diversity_growth = str(checkpoint), 1.0
    config.index.batch_size = 1  # copies embedded alone give bit-identical CLIP-T
    atomic_write_text(ws.config_path, dump_config(config))
    old = write_candidates(ws, 6)
    assert index_workspace(ws).near_duplicate_queries == 6
    dataset = ds.open_dataset(ws)
    assert ds.CANDIDATE_ID in dataset.list_indexes()
    assert dataset.info[DIVERSITY]["samples"] == 6 and dataset.info[DIVERSITY]["uniqueness"]
    before = dict(zip(dataset.values(ds.CANDIDATE_ID), dataset.values("last_modified_at")))
    marked = len(dataset.load_saved_view(ds.VIEW_NEAR_DUPLICATES))
    # the tiny model finds several old samples alike; copy the best of them (its group's keeper)
    scores = dict(zip(dataset.values(ds.CANDIDATE_ID), dataset.values(ds.CLIP_T)))
    best = next(c for c in old if c.candidate_id == min(scores, key=lambda c: (-round(scores[c], 6), c)))
    assert dataset.one(F(ds.CANDIDATE_ID) == best.candidate_id)[ds.NEAR_DUP_OF] is None

    # identical image and caption: CLIP-T ties, so the smaller candidate_id is the better copy
    better, worse = _copy_of(ws, best, "aaa-copy"), _copy_of(ws, best, "zzz-copy")
    report = index_workspace(ws)
    assert (report.added, report.unchanged, report.hashed, report.parsed) == (2, 6, 2, 2)
    assert report.near_duplicate_queries == 2 and report.near_duplicates == marked + 2
    dataset.reload()
    marks = dict(zip(dataset.values(ds.CANDIDATE_ID), dataset.values(ds.NEAR_DUP_OF)))
    assert marks[best.candidate_id] == better.candidate_id  # the old side of the new pair
    assert marks[worse.candidate_id] == better.candidate_id and marks[better.candidate_id] is None
    after = dict(zip(dataset.values(ds.CANDIDATE_ID), dataset.values("last_modified_at")))
    assert {c for c in before if after[c] != before[c]} == {best.candidate_id}  # no other old sample written
    assert not report.uniqueness and report.visualization is None  # 8 < 6 x (1 + 1.0): not due
    assert dataset.info[DIVERSITY]["samples"] == 6
    assert [u is None for u in dataset.sort_by(ds.CANDIDATE_ID).values(ds.UNIQUENESS)[:2]] == [True, False]

    shutil.rmtree(ws.index_dir)  # lost workspace-side state: the store is rebuilt from the dataset
    late = _copy_of(ws, best, "mmm-copy")
    report = index_workspace(ws)
    assert (report.added, report.hashed, report.parsed, report.near_duplicate_queries) == (1, 9, 9, 1)
    assert dict(zip(*ds.open_dataset(ws).values([ds.CANDIDATE_ID, ds.NEAR_DUP_OF])))[late.candidate_id] == (
        better.candidate_id
    )

    result = CliRunner().invoke(app, ["index", "--diversity", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    dataset = ds.open_dataset(ws)
    assert dataset.info[DIVERSITY]["samples"] == 9 and None not in dataset.values(ds.UNIQUENESS)
    assert VISUALIZATION_KEY in dataset.list_brain_runs()

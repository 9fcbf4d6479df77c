"""`curate index` at scale: the embedding map for the App, and CLIP embeddings on Ray actors."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from curation import dataset as ds
from curation.cli import app
from curation.config import dump_config
from curation.errors import CurateError
from curation.index import VISUALIZATION_KEY, index_workspace
from curation.workspace import Workspace, atomic_write_text, new_workspace_id


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
    from tests.fixtures.candidate_workspace import index_test_workspace, write_candidates

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

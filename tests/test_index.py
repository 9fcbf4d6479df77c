"""`curate index` on real FiftyOne + embedded mongod with a tiny random-init open_clip model."""

import json
import socket
import time
import urllib.request

import numpy as np
import pytest
from fiftyone import ViewField as F
from PIL import Image
from typer.testing import CliRunner

from curation import dataset as ds
from curation.cli import app
from curation.errors import CurateError
from curation.index import index_workspace, launch_app
from curation.ports import choose_port, free_port, moved_note, port_free
from curation.scores.artifacts import ARTIFACT_SCORES
from curation.workspace import SUCCESS_MARKER, atomic_write_json
from tests.fixtures.candidate_workspace import candidate_image, write_candidates, write_image

REQUIRED_VIEWS = {
    ds.VIEW_UNREVIEWED,
    ds.VIEW_ACCEPTED,
    ds.VIEW_REJECTED,
    ds.VIEW_ACCEPTED_Q3,
    ds.VIEW_HIGH_ARTIFACTS,
    ds.VIEW_TOP_CANDIDATES,
}


def test_index_writes_every_field_and_saved_view(candidate_ws):
    ws, candidates = candidate_ws
    report = index_workspace(ws)
    assert (report.added, report.updated, report.unchanged) == (6, 0, 0)
    assert report.clip_loaded and report.clip_weights == "random"
    assert "RANDOM" in report.summary()

    dataset = ds.open_dataset(ws)
    assert len(dataset) == 6
    assert dataset.info["clip_weights"] == "random"
    c = candidates[1]
    sample = dataset.one(F(ds.CANDIDATE_ID) == c.candidate_id)
    assert sample.filepath == str(ws.resolve(c.image))
    assert (sample[ds.PLAN_ID], sample[ds.SHARD], sample[ds.SEED]) == (c.plan_id, c.shard, c.seed)
    assert sample[ds.CONCEPTS] == c.concepts and sample[ds.N_CONCEPTS] == 3
    assert sample[ds.CAPTION] == c.caption
    boxes = sample[ds.BOXES].detections
    assert [d.label for d in boxes] == c.concepts
    assert boxes[0].bounding_box == pytest.approx(c.boxes[0].relative(c.width, c.height))
    embedding = np.asarray(sample[ds.CLIP_EMBEDDING])
    assert embedding.shape == (32,) and np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    assert sample[ds.CLIP_T] == pytest.approx(2.5 * max(sample[ds.CLIP_T_COS], 0.0))
    for spec in ARTIFACT_SCORES.values():
        assert spec.low <= sample[spec.name] <= spec.high
    # test images are hard-pasted flat boxes on a noisy ramp: their seams are strong
    assert min(dataset.values("seam")) > 0.5

    assert REQUIRED_VIEWS <= set(dataset.list_saved_views())
    assert len(dataset.load_saved_view(ds.VIEW_UNREVIEWED)) == 6
    assert len(dataset.load_saved_view(ds.VIEW_ACCEPTED)) == 0


def test_rerun_on_unchanged_workspace_loads_no_model_and_writes_nothing(candidate_ws):
    ws, _ = candidate_ws
    index_workspace(ws)
    dataset = ds.open_dataset(ws)
    before = dict(zip(dataset.values("id"), dataset.values("last_modified_at")))

    report = index_workspace(ws)
    assert (report.added, report.updated, report.unchanged) == (0, 0, 6)
    assert not report.clip_loaded and report.clip_weights is None
    dataset.reload()
    assert len(dataset) == 6
    assert dict(zip(dataset.values("id"), dataset.values("last_modified_at"))) == before


def test_changed_image_is_the_only_one_reindexed_and_keeps_its_review(candidate_ws):
    ws, candidates = candidate_ws
    index_workspace(ws)
    dataset = ds.open_dataset(ws)
    target = candidates[2]
    dataset.set_values(ds.REVIEW_DECISION, {target.candidate_id: ds.ACCEPT}, key_field=ds.CANDIDATE_ID)
    old_hash, old_embedding = _field(dataset, target.candidate_id, ds.IMAGE_HASH, ds.CLIP_EMBEDDING)

    write_image(ws, target, Image.fromarray(255 - np.asarray(candidate_image(target.boxes, 96, 999))))
    report = index_workspace(ws)
    assert (report.added, report.updated, report.unchanged) == (0, 1, 5)
    dataset.reload()
    assert len(dataset) == 6
    new_hash, new_embedding, decision = _field(
        dataset, target.candidate_id, ds.IMAGE_HASH, ds.CLIP_EMBEDDING, ds.REVIEW_DECISION
    )
    assert new_hash != old_hash
    assert not np.allclose(new_embedding, old_embedding)
    assert decision == ds.ACCEPT
    assert len(dataset.load_saved_view(ds.VIEW_ACCEPTED)) == 1


def test_changed_caption_or_model_triggers_reindex(candidate_ws):
    ws, candidates = candidate_ws
    index_workspace(ws)
    edited = candidates[0].model_copy(update={"caption": "<c-cat> cat on the moon"})
    atomic_write_json(ws.shard_dir(edited.shard) / f"{edited.candidate_id}.json", edited.model_dump())
    report = index_workspace(ws)
    assert (report.updated, report.unchanged) == (1, 5)
    assert _field(ds.open_dataset(ws), edited.candidate_id, ds.CAPTION)[0] == edited.caption

    config = ws.config_path.read_text().replace('clip_pretrained = ""', 'clip_pretrained = "missing.pt"')
    ws.config_path.write_text(config)
    with pytest.raises(CurateError, match="missing.pt does not exist"):
        index_workspace(ws)


def test_new_shards_are_added_unfinished_and_corrupt_ones_are_not(candidate_ws):
    ws, _ = candidate_ws
    index_workspace(ws)
    extra = write_candidates(ws, 3, shard_size=3, shard_prefix="late", seed=1)
    unfinished = write_candidates(ws, 2, shard_size=2, shard_prefix="wip", seed=2)
    (ws.shard_dir(unfinished[0].shard) / SUCCESS_MARKER).unlink()
    ws.resolve(extra[1].image).write_bytes(b"not a png")

    report = index_workspace(ws)
    assert (report.added, report.unchanged) == (2, 6)
    assert [cid for cid, _ in report.failed] == [extra[1].candidate_id]
    assert "cannot decode" in report.failed[0][1]
    assert len(ds.open_dataset(ws)) == 8


def test_cli_index_prints_summary(candidate_ws):
    ws, _ = candidate_ws
    result = CliRunner().invoke(app, ["index", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "6 added" in result.output and "RANDOM" in result.output


def test_launch_app_serves_the_dataset_next_to_a_busy_port_without_tracking(candidate_ws):
    """The wanted port is taken (a colleague's App): the App serves on the next free port at once
    instead of timing out, and tells the browser not to track usage even if the user's config would."""
    import fiftyone as fo

    ws, _ = candidate_ws
    with pytest.raises(CurateError, match="curate index"):
        launch_app(ws)
    index_workspace(ws)
    tracking = fo.config.do_not_track
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        expected = choose_port(taken)
        assert expected != taken and port_free(expected)
        fo.config.do_not_track = False  # as for a user who never set FIFTYONE_DO_NOT_TRACK
        try:
            url = launch_app(ws, port=taken)
            assert url == f"http://127.0.0.1:{expected}/datasets/{ds.dataset_name(ws)}"
            assert moved_note(taken, url) == f"port {taken} was busy; serving on {expected}"
            deadline, status = time.monotonic() + 90, None
            while time.monotonic() < deadline and status != 200:
                try:
                    status = urllib.request.urlopen(url, timeout=5).status
                except OSError:
                    time.sleep(2)
            assert status == 200
            query = urllib.request.Request(
                f"http://127.0.0.1:{expected}/graphql",
                data=json.dumps({"query": "{ doNotTrack }"}).encode(),
                headers={"Content-Type": "application/json"},
            )
            assert json.loads(urllib.request.urlopen(query, timeout=30).read())["data"] == {"doNotTrack": True}
        finally:
            fo.close_app()
            fo.config.do_not_track = tracking

def _field(dataset, candidate_id, *names):
    sample = dataset.one(F(ds.CANDIDATE_ID) == candidate_id)
    return [sample[name] for name in names]


def test_near_duplicates_mark_the_lower_clip_t_copy(tmp_path, tiny_clip_name):
    import torch

    from curation.scores.clip import load_clip
    from tests.fixtures.candidate_workspace import index_test_workspace

    checkpoint = tmp_path / "tiny.pt"  # a saved checkpoint counts as real weights, so Brain runs
    torch.save(load_clip(tiny_clip_name, None).model.state_dict(), checkpoint)
    ws = index_test_workspace(tmp_path / "dups", tiny_clip_name)
    ws.config_path.write_text(
        ws.config_path.read_text().replace('clip_pretrained = ""', f'clip_pretrained = "{checkpoint}"')
    )
    candidates = write_candidates(ws, 6)
    a, b = candidates[0], candidates[3]
    ws.resolve(b.image).write_bytes(ws.resolve(a.image).read_bytes())

    report = index_workspace(ws)
    dataset = ds.open_dataset(ws)
    assert dataset.info["clip_weights"] == "pretrained"
    score_a, score_b = (_field(dataset, c.candidate_id, ds.CLIP_T)[0] for c in (a, b))
    worse, better = (a, b) if score_a < score_b else (b, a)
    assert _field(dataset, worse.candidate_id, ds.NEAR_DUP_OF)[0] == better.candidate_id
    assert _field(dataset, better.candidate_id, ds.NEAR_DUP_OF)[0] is None
    assert report.near_duplicates == len(dataset.load_saved_view(ds.VIEW_NEAR_DUPLICATES)) >= 1
    assert worse.candidate_id not in dataset.load_saved_view(ds.VIEW_TOP_CANDIDATES).values(ds.CANDIDATE_ID)
    assert all(0 <= u <= 1 for u in dataset.values(ds.UNIQUENESS))

"""`curate index` on real FiftyOne + embedded mongod with a tiny random-init open_clip model."""

import json
import socket
import urllib.request

import numpy as np
import pytest
from fiftyone import ViewField as F
from PIL import Image
from typer.testing import CliRunner

from curation.cli import app
from curation.core import dataset as ds
from curation.core.config import dump_config
from curation.core.errors import CurateError
from curation.core.ports import choose_port, free_port, moved_note, port_free
from curation.core.thumbnails import THUMB_SIDE, candidate_thumb, thumbs_dir
from curation.core.workspace import SUCCESS_MARKER, atomic_write_json
from curation.index.app import launch_app
from curation.index.diversity import VISUALIZATION_KEY
from curation.index.run import DATASET_STAGE, INDEX_COMPLETE, index_workspace
from curation.scores.artifacts import ARTIFACT_SCORES, SEAM_BOX, SEAM_SOURCE
from tests.fixtures.candidate_workspace import (
    candidate_image,
    index_test_workspace,
    write_candidates,
    write_image,
)

REQUIRED_VIEWS = {
    ds.VIEW_UNREVIEWED,
    ds.VIEW_ACCEPTED,
    ds.VIEW_REJECTED,
    ds.VIEW_ACCEPTED_FOR_EXPORT,
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
    # they keep no paste silhouettes (old candidates): the seam was measured on the box borders, and says so
    assert dataset.distinct(SEAM_SOURCE) == [SEAM_BOX]

    assert REQUIRED_VIEWS <= set(dataset.list_saved_views())
    assert len(dataset.load_saved_view(ds.VIEW_UNREVIEWED)) == 6
    assert len(dataset.load_saved_view(ds.VIEW_ACCEPTED)) == 0


def test_app_sidebar_groups_readable_views_and_no_rejected_top_candidate(candidate_ws):
    from curation.index.views import save_views

    ws, _ = candidate_ws
    index_workspace(ws)
    dataset = ds.open_dataset(ws)
    groups = {g.name: g.paths for g in dataset.app_config.sidebar_groups}
    assert {"scores", "presence", "review", "provenance"} <= set(groups)
    assert ds.CLIP_T in groups["scores"] and "blur" in groups["scores"] and ds.PLAN_ID in groups["provenance"]
    assert ds.CLIP_T not in groups["primitives"]
    assert "RANDOM" in dataset.get_field(ds.CLIP_T).description
    assert "seam > 0.7" in dataset.get_saved_view_info(ds.VIEW_HIGH_ARTIFACTS)["description"]
    assert "not rejected" in dataset.get_saved_view_info(ds.VIEW_TOP_CANDIDATES)["description"]
    # a clean candidate is a top candidate until a human rejects it
    best = dataset.first()
    for spec in ARTIFACT_SCORES.values():
        best[spec.name] = spec.low if spec.higher_is_worse else spec.high
    best.save()
    assert best[ds.CANDIDATE_ID] in dataset.load_saved_view(ds.VIEW_TOP_CANDIDATES).values(ds.CANDIDATE_ID)
    best[ds.REVIEW_DECISION] = ds.REJECT
    best.save()
    save_views(dataset, ws.config.export.min_quality)
    assert best[ds.CANDIDATE_ID] not in dataset.load_saved_view(ds.VIEW_TOP_CANDIDATES).values(ds.CANDIDATE_ID)


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
    thumbs = {c.candidate_id: candidate_thumb(thumbs_dir(ws), c.candidate_id) for c in candidates}
    before = {cid: path.read_bytes() for cid, path in thumbs.items()}  # review previews, made while decoded
    assert all(max(Image.open(path).size) <= THUMB_SIDE for path in thumbs.values())  # never enlarged

    new_image = Image.fromarray(255 - np.asarray(candidate_image(target.boxes, 96, 999)))
    write_image(ws, target, new_image)
    report = index_workspace(ws)
    assert (report.added, report.updated, report.unchanged) == (0, 1, 5)
    changed = {cid for cid, path in thumbs.items() if path.read_bytes() != before[cid]}
    assert changed == {target.candidate_id}  # the changed image's preview follows it, no other is rewritten
    preview = np.asarray(Image.open(thumbs[target.candidate_id]).resize((96, 96)), dtype=float)
    assert np.abs(preview - np.asarray(new_image, dtype=float)).mean() < 20
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
    instead of timing out, and tells the browser not to track usage even if the user's config would.
    The start is waited for while the server lives (said on `echo`), and its own output goes to a log."""
    ws, _ = candidate_ws
    with pytest.raises(CurateError, match="curate index"):
        launch_app(ws)
    index_workspace(ws)
    said: list[str] = []
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        expected = choose_port(taken)
        assert expected != taken and port_free(expected)
        server = launch_app(ws, port=taken, echo=said.append)  # FIFTYONE_DO_NOT_TRACK unset in its env
        try:
            url = server.url
            assert url == f"http://127.0.0.1:{expected}/datasets/{ds.dataset_name(ws)}"
            assert moved_note(taken, url) == f"port {taken} was busy; serving on {expected}"
            assert said[0].startswith(f"starting the FiftyOne App on port {expected}")
            assert urllib.request.urlopen(url, timeout=30).status == 200  # answered before launch_app returned
            query = urllib.request.Request(
                f"http://127.0.0.1:{expected}/graphql",
                data=json.dumps({"query": "{ doNotTrack }"}).encode(),
                headers={"Content-Type": "application/json"},
            )
            assert json.loads(urllib.request.urlopen(query, timeout=30).read())["data"] == {"doNotTrack": True}
        finally:
            server.stop()
    assert server.process.poll() is not None and server.log.exists()


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


def _checkpoint(path, tiny_clip_name, seed):
    """A tiny open_clip checkpoint (state_dict) with weights of its own, unlike the seed-0 random init."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    torch.save(open_clip.create_model(tiny_clip_name).state_dict(), path)
    return path


def _set_pretrained(ws, value):
    config = ws.config
    config.index.clip_pretrained = str(value)
    ws.config_path.write_text(dump_config(config))


def _embeddings(ws):
    dataset = ds.open_dataset(ws)
    return dict(zip(dataset.values(ds.CANDIDATE_ID), (np.asarray(e) for e in dataset.values(ds.CLIP_EMBEDDING))))


def test_tag_weights_that_become_loadable_later_reembed_every_sample(tmp_path, tiny_clip_name):
    """The configured tag is unavailable at first (random fallback), then its weights appear: the
    same configuration now loads other weights, so every sample is re-embedded and flagged again."""
    import open_clip

    weights = tmp_path / "appears-later.pt"
    tag = "appears_later"  # open_clip keys tags in lower case with underscores
    open_clip.pretrained._PRETRAINED.setdefault(tiny_clip_name, {})[tag] = {"file": str(weights)}
    ws = index_test_workspace(tmp_path / "ws", tiny_clip_name)
    _set_pretrained(ws, tag)
    write_candidates(ws, 6)

    first = index_workspace(ws)
    assert (first.added, first.clip_weights) == (6, "random")
    again = index_workspace(ws)  # still unavailable: the model is tried, nothing is re-embedded
    assert (again.updated, again.unchanged, again.clip_weights) == (0, 6, "random")
    random_embeddings = _embeddings(ws)

    _checkpoint(weights, tiny_clip_name, seed=1)
    report = index_workspace(ws)
    assert (report.added, report.updated, report.unchanged) == (0, 6, 0)
    dataset = ds.open_dataset(ws)
    assert dataset.info["clip_weights"] == "pretrained" and dataset.info["clip_fingerprint"] == f"tag:{tag}"
    assert report.near_duplicates is not None  # pretrained weights: near-duplicates now computed
    now = _embeddings(ws)
    assert all(not np.allclose(now[c], random_embeddings[c]) for c in now)

    same = index_workspace(ws)
    assert (same.updated, same.unchanged) == (0, 6) and not same.clip_loaded

    weights.unlink()  # the weights vanish; new candidates must not be embedded with random ones beside them
    write_candidates(ws, 2, shard_prefix="late", seed=5)
    with pytest.raises(CurateError, match="cannot be loaded here now"):
        index_workspace(ws)
    assert len(ds.open_dataset(ws)) == 6 and ds.open_dataset(ws).info["clip_weights"] == "pretrained"


def test_a_checkpoint_file_is_keyed_by_its_bytes(tmp_path, tiny_clip_name):
    ws = index_test_workspace(tmp_path / "ws", tiny_clip_name)
    write_candidates(ws, 6)
    assert index_workspace(ws).clip_weights == "random"

    checkpoint = _checkpoint(tmp_path / "clip.pt", tiny_clip_name, seed=1)
    _set_pretrained(ws, checkpoint)
    report = index_workspace(ws)
    assert (report.updated, report.unchanged) == (6, 0)
    dataset = ds.open_dataset(ws)
    assert dataset.info["clip_weights"] == "pretrained" and dataset.info["clip_fingerprint"].startswith("sha256:")
    first = _embeddings(ws)
    again = index_workspace(ws)
    assert (again.updated, again.unchanged) == (0, 6) and not again.clip_loaded

    _checkpoint(checkpoint, tiny_clip_name, seed=2)  # retrained into the same file name
    retrained = index_workspace(ws)
    assert (retrained.updated, retrained.unchanged) == (6, 0)
    assert all(not np.allclose(v, first[c]) for c, v in _embeddings(ws).items())


class _Killed(Exception):
    """Stands for the process dying at the point the progress callback raises it."""


@pytest.mark.parametrize("killed_at", [0, 1], ids=["before-near-duplicates", "before-embedding-map"])
def test_a_run_killed_before_the_dataset_wide_steps_is_finished_by_the_next(tmp_path, tiny_clip_name, killed_at):
    ws = index_test_workspace(tmp_path / "ws", tiny_clip_name)
    _set_pretrained(ws, _checkpoint(tmp_path / "clip.pt", tiny_clip_name, seed=1))
    candidates = write_candidates(ws, 6)
    ws.resolve(candidates[3].image).write_bytes(ws.resolve(candidates[0].image).read_bytes())

    def die(stage, done, total):
        if stage == DATASET_STAGE and done == killed_at:
            raise _Killed

    with pytest.raises(_Killed):
        index_workspace(ws, progress=die)
    dataset = ds.open_dataset(ws)
    assert len(dataset) == 6 and dataset.info[INDEX_COMPLETE] is False  # every sample written
    assert VISUALIZATION_KEY not in dataset.list_brain_runs()
    if killed_at == 0:
        assert not dataset.has_field(ds.NEAR_DUP_OF) or set(dataset.values(ds.NEAR_DUP_OF)) == {None}

    report = index_workspace(ws)  # no candidate changed, but the last run never finished
    assert (report.added, report.updated, report.unchanged) == (0, 0, 6) and not report.clip_loaded
    assert report.near_duplicates >= 1 and report.visualization in ("pca", "umap")
    dataset.reload()
    assert dataset.info[INDEX_COMPLETE] is True and VISUALIZATION_KEY in dataset.list_brain_runs()
    assert all(u is not None for u in dataset.values(ds.UNIQUENESS))

    done = index_workspace(ws)  # finished: nothing dataset-wide is redone
    assert done.near_duplicates is None and done.visualization is None

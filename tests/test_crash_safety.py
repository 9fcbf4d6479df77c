"""Every command killed at every write point, then re-run, ends as if it had never been killed.

Each test prepares a small workspace once, records the write points of an uninterrupted run, and
then, for every N that `kill_points` keeps (every kind of write; of a run of like writes, its first
and last), kills a fresh copy right after its Nth write and runs the command again
(`tests/fixtures/fault_injection.py`); files, FiftyOne documents and Label Studio tasks must equal
the uninterrupted copy's. The `prepare_*` functions run inside the fork server's children.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.fault_injection import ForkServer, crash_trials, shared_server

HERE = "tests.test_crash_safety"
CONCEPTS = {"cat": (200, 120, 60), "mug": (40, 90, 200), "teddy": (150, 100, 50)}
"""The concepts the candidate fixture's boxes name: one drawn reference each (no photo to segment)."""


@pytest.fixture(scope="module")
def fork_server() -> ForkServer:
    return shared_server()


def _configure(ws, **index: object) -> None:
    from curation.core.config import dump_config
    from curation.core.workspace import atomic_write_text

    config = ws.config
    config.index = config.index.model_copy(update=index)
    atomic_write_text(ws.config_path, dump_config(config))


def _pretrained_tiny_clip(ws) -> None:
    """A saved tiny CLIP checkpoint counts as real weights, so near-duplicates and uniqueness run too."""
    import torch

    from curation.scores.clip import load_clip

    checkpoint = ws.root.parent / f"{ws.root.name}-clip.pt"
    torch.save(load_clip(ws.config.index.clip_model, None).model.state_dict(), checkpoint)
    _configure(ws, clip_pretrained=str(checkpoint))


def _add_concepts(ws) -> None:
    """Each concept of CONCEPTS as one 48 px reference: a coloured disc, its mask the disc (a usable
    mask, as a segmenter would find it)."""
    import numpy as np
    from PIL import Image

    from curation.core.records import Concept

    yy, xx = np.mgrid[:48, :48]
    disc = ((yy - 24) ** 2 + (xx - 24) ** 2 < 18**2).astype(np.uint8) * 255
    for cid, colour in CONCEPTS.items():
        ref, mask = ws.concept_dir(cid) / "refs" / "0.png", ws.concept_dir(cid) / "masks" / "0.png"
        for path in (ref, mask):
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(disc[..., None] > 0, np.array(colour, np.uint8), 230).astype(np.uint8)).save(ref)
        Image.fromarray(disc).save(mask)
        ws.save_concept(Concept(concept_id=cid, name=cid, class_noun=cid, token=f"<c-{cid}>",
                                refs=[ws.relative(ref)], masks=[ws.relative(mask)], mask_flags=[[]]))  # fmt: skip


def _candidates_ws(root: str, n: int, **index: object):
    """A workspace of `n` fixture candidates (shards of 3) scored by the tiny CLIP, the concepts they name."""
    from tests.fixtures.candidate_workspace import index_test_workspace, write_candidates
    from tests.fixtures.tiny_clip import register_tiny_clip

    ws = index_test_workspace(Path(root), register_tiny_clip(), batch_size=2)
    _configure(ws, **index)
    _add_concepts(ws)
    return ws, write_candidates(ws, n, shard_size=3)


def prepare_first_index(root: str) -> None:
    """Three candidates, never indexed: the run creates the dataset."""
    _candidates_ws(root, 3)


def prepare_reindex(root: str) -> None:
    """Five candidates indexed with weights that count as pretrained (two are one image: a near-duplicate
    pair), then one image changed and a shard of two more added: the run re-scores one sample, adds
    two, queries near-duplicates and recomputes uniqueness and the map."""
    from curation.index.run import index_workspace
    from tests.fixtures.candidate_workspace import candidate_image, write_candidates, write_image

    ws, candidates = _candidates_ws(root, 5, diversity_growth=0.2)
    _pretrained_tiny_clip(ws)
    ws.resolve(candidates[4].image).write_bytes(ws.resolve(candidates[0].image).read_bytes())
    index_workspace(ws)
    changed = candidates[1]
    write_image(ws, changed, candidate_image(changed.boxes, changed.width, seed=999))
    write_candidates(ws, 2, shard_prefix="late", seed=7)


@pytest.mark.parametrize("prepare", ["prepare_first_index", "prepare_reindex"])
def test_index_killed_at_any_write_then_rerun_equals_one_run(fork_server, tmp_path, prepare):
    template = tmp_path / "template"
    fork_server.call(f"{HERE}:{prepare}", str(template))
    report = crash_trials(fork_server, template, lambda ws: ["index", "-w", str(ws)], tmp_path)
    print(report.line())


def write_reviews(ws, verdicts: dict[str, tuple[str, float | None]]) -> None:
    """Review fields set on the dataset as a pull writes them: candidate id -> (decision, quality)."""
    from curation.core import dataset as ds
    from curation.core import dataset_summary

    dataset = ds.open_dataset(ws)
    for field, k in ((ds.REVIEW_DECISION, 0), (ds.REVIEW_QUALITY, 1)):
        dataset.set_values(field, {cid: v[k] for cid, v in verdicts.items()}, key_field=ds.CANDIDATE_ID)
    dataset.set_values(ds.REVIEW_ANNOTATORS, dict.fromkeys(verdicts, 1), key_field=ds.CANDIDATE_ID)
    dataset_summary.record(ws)  # as a pull ends: what status and topup read


def prepare_export(root: str) -> None:
    """Three indexed candidates exported once with two accepted; then the third is accepted too, so
    the run builds a new export and swaps it for the old one."""
    from curation.index.run import index_workspace
    from exports.mycanvas import export_mycanvas

    ws, candidates = _candidates_ws(root, 3)
    index_workspace(ws)
    a, b, c = (x.candidate_id for x in candidates)
    write_reviews(ws, {a: ("accept", 4.0), b: ("accept", 5.0), c: ("reject", None)})
    export_mycanvas(ws)
    write_reviews(ws, {c: ("accept", 3.0)})


def test_export_killed_at_any_write_then_rerun_equals_one_run(fork_server, tmp_path):
    template = tmp_path / "template"
    fork_server.call(f"{HERE}:prepare_export", str(template))
    report = crash_trials(fork_server, template, lambda ws: ["export", "-w", str(ws)], tmp_path)
    print(report.line())


def prepare_topup(root: str) -> None:
    """Two compositions planned twice each, generated, indexed and reviewed so that both fall short
    of a target of two accepted: the run appends plans and records the round."""
    from curation.core import dataset as ds
    from curation.index.run import index_workspace
    from generators.layout import plan_layouts
    from generators.run import generate

    ws = _planned_ws(root, per_composition=2, prior_reviews=2)
    plan_layouts(ws, 4)
    generate(ws)
    index_workspace(ws)
    verdicts = {}
    for k, candidate in enumerate(sorted(ws.candidates(), key=lambda c: c.candidate_id)):
        verdicts[candidate.candidate_id] = ("accept", 4.0) if k % 2 else ("reject", None)
    write_reviews(ws, verdicts)
    assert ds.open_dataset(ws).count() == 4


def test_topup_killed_at_any_write_then_rerun_equals_one_run(fork_server, tmp_path):
    template = tmp_path / "template"
    fork_server.call(f"{HERE}:prepare_topup", str(template))
    report = crash_trials(fork_server, template, lambda ws: ["topup", "-w", str(ws)], tmp_path)
    print(report.line())


def _planned_ws(root: str, **curation: object):
    """Small offline settings, the concepts, two compositions (`sets.txt`), targets under [curation]."""
    from curation.core.workspace import Workspace, atomic_write_text
    from tests.fixtures.sample_concepts import small_config
    from tests.fixtures.tiny_clip import register_tiny_clip

    config = small_config()
    config.index = config.index.model_copy(update={"clip_model": register_tiny_clip(), "clip_pretrained": ""})
    config.layout = config.layout.model_copy(
        update={"compositions_file": "sets.txt", "backgrounds_per_composition": 2}
    )
    config.generate = config.generate.model_copy(update={"shard_size": 2})
    config.curation = config.curation.model_copy(update=curation)
    ws = Workspace.create(Path(root), config)
    atomic_write_text(ws.root / "sets.txt", "cat mug\nmug teddy\n")
    _add_concepts(ws)
    return ws


def prepare_generate(root: str) -> None:
    """Three plans generated (shards 00000 and 00001), then the third plan replaced by another and a
    fourth added: the run sets the stale candidate aside and makes two in the re-opened shard."""
    from generators.layout import plan_layouts
    from generators.run import generate

    ws = _planned_ws(root)
    plans = plan_layouts(ws, 3)
    generate(ws)
    other = [
        plan.model_copy(update={"background": background, "plan_id": f"{k}{plan.plan_id[1:]}"})
        for k, (plan, background) in enumerate([(plans[2], "in a green garden"), (plans[0], "on a sandy beach")])
    ]
    ws.write_plans([*plans[:2], *other])


def test_generate_killed_at_any_write_then_rerun_equals_one_run(fork_server, tmp_path):
    template = tmp_path / "template"
    fork_server.call(f"{HERE}:prepare_generate", str(template))
    report = crash_trials(fork_server, template, lambda ws: ["generate", "--workers", "1", "-w", str(ws)], tmp_path)
    print(report.line())


def prepare_review(root: str) -> None:
    """Three indexed candidates in a workspace wired to the session's Label Studio (made by the test)."""
    from curation.core.workspace import Workspace
    from curation.index.run import index_workspace
    from tests.fixtures.candidate_workspace import write_candidates
    from tests.fixtures.tiny_clip import register_tiny_clip

    ws = Workspace.open(Path(root))
    _configure(ws, clip_model=register_tiny_clip(), clip_pretrained="", batch_size=2)
    _add_concepts(ws)
    write_candidates(ws, 3, shard_size=3)
    index_workspace(ws)


def push_and_annotate(template: str, dest: str) -> None:
    """A copy of `template` pushed to a project of its own, one task accepted (4 stars, a fixed
    caption), one rejected with reasons, one left open: what `review pull` then reads."""
    from curation.core.workspace import Workspace
    from curation.review.client import connect
    from curation.review.project import ensure_project
    from curation.review.pull import annotation_result
    from curation.review.push import push
    from tests.fixtures.fault_injection import copy_workspace

    copy_workspace(template, dest)
    ws = Workspace.open(Path(dest))
    push(ws)
    conn = connect(ws)
    tasks = sorted((t.data["candidate_id"], t.id) for t in conn.client.tasks.list(project=ensure_project(ws, conn)))
    answers = [annotation_result("accept", 4, caption="a cat and a mug"), annotation_result("reject", reasons=("bad layout",))]
    for (_, task_id), result in zip(tasks, answers):
        conn.client.annotations.create(id=task_id, result=result)


@pytest.mark.parametrize("command", ["push", "pull"])
def test_review_killed_at_any_write_then_rerun_equals_one_run(fork_server, labelstudio_workspace, command):
    ws = labelstudio_workspace()
    fork_server.call(f"{HERE}:prepare_review", str(ws.root))
    scratch = ws.root.parent / f"{ws.root.name}-trials"
    setup = {"push": "tests.fixtures.fault_injection:copy_workspace", "pull": f"{HERE}:push_and_annotate"}[command]
    report = crash_trials(fork_server, ws.root, lambda w: ["review", command, "-w", str(w)], scratch, setup)
    print(report.line())


def test_kill_points_keep_every_kind_of_write_and_both_ends_of_each_run() -> None:
    from tests.fixtures.fault_injection import kill_points

    ws = "/ws/candidates/00001"
    trace = [
        "mongo datasets.update_one", "mongo datasets.update_one", "mongo datasets.update_one",
        f"os.replace {ws}/.a.png.0123456789ab.tmp", f"os.replace {ws}/.a.json.0123456789ab.tmp",
        f"os.replace {ws}/.b.png.0123456789ab.tmp", "http POST http://h/api/dm/views/?project=1",
        "http POST http://h/api/dm/views/?project=1", "mongo views.insert_one",
    ]  # fmt: skip
    # 2 is inside a run of three like writes; 9 is the last write (a finished run, not a trial)
    assert kill_points(trace) == [1, 3, 4, 5, 6, 7, 8]

"""The whole chain on real parts: generate -> index (FiftyOne, embedded mongod) -> push (real Label Studio)
-> annotate through the SDK -> pull -> export, then every step again to prove nothing changes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from curation.concepts.references import add_concept
from curation.core import dataset as ds
from curation.core.acceptance import accepted_view
from curation.core.config import dump_config
from curation.core.records import Candidate
from curation.core.workspace import Workspace, atomic_write_text
from curation.demo import DEMO_CONCEPTS, run_demo, write_sample_photos
from curation.index.run import index_workspace
from curation.review.client import connect
from curation.review.project import ensure_project
from curation.review.pull import annotation_result, pull
from curation.review.push import push
from exports.mycanvas import export_mycanvas
from generators.layout import plan_layouts
from generators.run import generate

N_PLANS = 12


def shrink(ws: Workspace) -> Workspace:
    """Small photos and canvas so the chain runs in seconds on 2 cores; same code paths."""
    config = ws.config
    config.segment.max_side = 192
    config.layout.width = config.layout.height = 256
    config.generate.shard_size = 5
    config.index.batch_size = 8
    atomic_write_text(ws.config_path, dump_config(config))
    return ws


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path -> sha256 of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def task_candidate_ids(ws: Workspace) -> list[str]:
    conn = connect(ws)
    project_id = ensure_project(ws, conn)
    return [t.data[ds.CANDIDATE_ID] for t in conn.client.tasks.list(project=project_id, fields="task_only")]


def read_metadata(export: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (export / "train" / "metadata.jsonl").read_text().splitlines()]
    return {row["candidate_id"]: row for row in rows}


@pytest.fixture
def workspace(labelstudio_workspace: Callable[..., Workspace]) -> Workspace:
    return shrink(labelstudio_workspace())


def test_chain_exports_exactly_the_accepted_candidates(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    photos = write_sample_photos(tmp_path / "photos")

    def run_steps() -> None:
        for concept_id, paths in photos.items():
            add_concept(ws, concept_id, paths, class_noun=DEMO_CONCEPTS[concept_id][0])
        plan_layouts(ws, N_PLANS)
        generate(ws)
        index_workspace(ws)
        push(ws)

    run_steps()
    candidates = {c.candidate_id: c for c in ws.candidates()}
    assert len(candidates) == N_PLANS
    assert sorted(task_candidate_ids(ws)) == sorted(candidates)

    # Play the annotator: accept with 5 (and a corrected caption), accept with 3, accept with 2, reject.
    conn = connect(ws)
    project_id = ensure_project(ws, conn)
    tasks = sorted(conn.client.tasks.list(project=project_id, fields="task_only"), key=lambda t: t.data["candidate_id"])
    fixed = {}
    for i, task in enumerate(tasks):
        candidate_id = task.data[ds.CANDIDATE_ID]
        decision, quality = [("accept", 5), ("accept", 3), ("accept", 2), ("reject", 4)][i % 4]
        caption = None
        if i % 4 == 0:
            caption = fixed[candidate_id] = f"a corrected caption for {candidate_id}"
        conn.client.annotations.create(id=task.id, result=annotation_result(decision, quality, caption=caption))
    expected = {t.data[ds.CANDIDATE_ID] for i, t in enumerate(tasks) if i % 4 in (0, 1)}

    pull(ws)
    dataset = ds.open_dataset(ws)
    assert set(accepted_view(dataset, 3).values(ds.CANDIDATE_ID)) == expected
    export = export_mycanvas(ws, min_quality=3).path
    metadata = read_metadata(export)
    assert set(metadata) == expected
    for candidate_id, row in metadata.items():
        candidate: Candidate = candidates[candidate_id]
        assert row["caption"] == fixed.get(candidate_id, candidate.caption)
        assert (export / "train" / row["file_name"]).read_bytes() == ws.resolve(candidate.image).read_bytes()
        assert [b["concept_id"] for b in row["boxes"]] == [b.concept_id for b in candidate.boxes]
        assert [[b["x"], b["y"], b["w"], b["h"]] for b in row["boxes"]] == [
            [b.x, b.y, b.w, b.h] for b in candidate.boxes
        ]

    # Every step again: same ids, no new sample, task or file.
    before = (tree_digest(ws.candidates_dir), tree_digest(ws.concepts_dir), ws.plans_path.read_bytes(), tree_digest(export))
    run_steps()
    pull(ws)
    export_mycanvas(ws, min_quality=3)
    after = (tree_digest(ws.candidates_dir), tree_digest(ws.concepts_dir), ws.plans_path.read_bytes(), tree_digest(export))
    assert after == before
    assert len(ds.open_dataset(ws)) == N_PLANS
    assert sorted(task_candidate_ids(ws)) == sorted(candidates)


def test_demo_runs_the_whole_chain_and_reruns_unchanged(workspace: Workspace) -> None:
    lines: list[str] = []
    run_demo(workspace.root, n_plans=8, review=True, echo=lines.append)
    text = "\n".join(lines)
    assert "curate app -w" in text and "http://127.0.0.1:" in text and "exports" in text

    dataset = ds.open_dataset(workspace)
    n = len(dataset)
    assert n == len(list(workspace.candidates())) >= 8
    assert len(task_candidate_ids(workspace)) == n
    assert dataset.count(ds.REVIEW_DECISION) == n  # every task answered and pulled
    export = workspace.exports_dir / "mycanvas"
    accepted = set(accepted_view(dataset, workspace.config.export.min_quality).values(ds.CANDIDATE_ID))
    assert accepted and set(read_metadata(export)) == accepted

    before = tree_digest(workspace.root / "exports"), tree_digest(workspace.candidates_dir)
    run_demo(workspace.root, n_plans=8, review=True, echo=lines.append)
    assert (tree_digest(workspace.root / "exports"), tree_digest(workspace.candidates_dir)) == before
    assert len(ds.open_dataset(workspace)) == n
    assert len(task_candidate_ids(workspace)) == n

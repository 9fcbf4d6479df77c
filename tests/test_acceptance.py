"""One meaning of "accepted": `curate status`, `review status`, the App's saved views and the export
count one workspace alike.

The workspace is real (concepts, plans, generated and indexed candidates) and its reviews come
through Label Studio from three annotators: single votes, a disputed tie and a disputed 2-1 vote,
an agreed pair, a 1-star accept, a reject carrying hidden stars, an annotation the page cannot
produce alone and beside a valid vote, and candidates nobody reviewed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curation.cli import app
from curation.core import dataset as ds
from curation.core.acceptance import ReviewCounts
from curation.core.config import dump_config
from curation.core.workspace import Workspace, atomic_write_text
from curation.loop.targets import Counts, read_shape
from curation.review.client import connect
from curation.review.pull import annotation_result, pull
from curation.review.push import push
from curation.review.server import ServerInfo
from curation.review.status import status
from exports.mycanvas import export_mycanvas
from tests.fixtures.labelstudio import annotator_client
from tests.test_topup import configure, planned

# per candidate (in id order), each annotator's (decision, stars)
VOTES: list[list[tuple[str, int | None]]] = [
    [("accept", 4)],
    [("accept", 5)],
    [("reject", None)],
    [("reject", 5)],  # stars left from before switching to reject: hidden on the page, no vote
    [("accept", 1)],  # accepted, below export.min_quality 3
    [("accept", 4), ("reject", None)],  # disputed, a tie: rejected
    [("accept", 3), ("accept", 5), ("reject", None)],  # disputed, accepted at 4.0
    [("accept", 7)],  # invalid alone: unreviewed
    [("accept", 4), ("maybe", None)],  # one valid vote beside an invalid one: not disputed
    [("accept", 4), ("accept", 2)],  # agreed pair at 3.0: accepted for export
]
EXPECTED = ReviewCounts(
    reviewed=9, accepted=6, for_export=5, rejected=3, disputed=2, invalid=2, min_quality=3
)


@pytest.mark.timeout(900)
def test_status_review_status_views_and_export_count_alike(
    labelstudio_workspace: Callable[..., Workspace],
    labelstudio: ServerInfo,
    ingested_root: Path,
    tiny_clip_name: str,
) -> None:
    ws = configure(labelstudio_workspace(), tiny_clip_name)
    config = ws.config
    config.generate = config.generate.model_copy(update={"seeds_per_plan": 2})
    atomic_write_text(ws.config_path, dump_config(config))
    planned(ws, ingested_root)
    ids = sorted(c.candidate_id for c in ws.candidates())
    assert len(ids) == 12
    dataset = ds.open_dataset(ws)
    if dataset.has_field(ds.NEAR_DUP_OF):  # the random tiny CLIP decides nothing here
        dataset.set_values(ds.NEAR_DUP_OF, [None] * len(dataset))

    push(ws, overlap=3)
    conn = connect(ws)
    client = conn.client
    users = [annotator_client(labelstudio, f"rater{i}-{ws.name}@example.com")[1] for i in range(3)]
    project_id = json.loads((ws.review_dir / "project.json").read_text())["project_id"]
    tasks = {t.data[ds.CANDIDATE_ID]: t.id for t in client.tasks.list(project=project_id, fields="task_only")}
    for cid, votes in zip(ids, VOTES, strict=False):
        for user, (decision, stars) in zip(users, votes, strict=False):
            user.annotations.create(id=tasks[cid], result=annotation_result(decision, stars))

    pulled = pull(ws)
    assert pulled.counts == EXPECTED and pulled.invalid_count == 2
    reviewed = status(ws)
    assert reviewed.counts == EXPECTED and reviewed.notes == []  # from the summary the pull recorded
    recounted = status(ws, recount=True)  # from the dataset itself
    assert recounted.summary() == reviewed.summary()
    assert reviewed.mean_agreement == pytest.approx(
        (0.5 + 2 / 3 + 1.0) / 3, abs=1e-3
    )  # single votes left out
    dataset = ds.open_dataset(ws)
    views = {
        name: len(dataset.load_saved_view(name))
        for name in (
            ds.VIEW_UNREVIEWED, ds.VIEW_ACCEPTED, ds.VIEW_ACCEPTED_FOR_EXPORT, ds.VIEW_REJECTED, ds.VIEW_DISPUTED,
            ds.VIEW_INVALID,
        )
    }  # fmt: skip
    assert views == {
        ds.VIEW_UNREVIEWED: 12 - EXPECTED.reviewed,
        ds.VIEW_ACCEPTED: EXPECTED.accepted,
        ds.VIEW_ACCEPTED_FOR_EXPORT: EXPECTED.for_export,
        ds.VIEW_REJECTED: EXPECTED.rejected,
        ds.VIEW_DISPUTED: EXPECTED.disputed,  # not the unreviewed ones: their agreement is null
        ds.VIEW_INVALID: EXPECTED.invalid,
    }
    assert sorted(dataset.load_saved_view(ds.VIEW_DISPUTED).values(ds.CANDIDATE_ID)) == [ids[5], ids[6]]
    hidden = dataset.match({ds.CANDIDATE_ID: ids[3]}).first()
    assert (hidden[ds.REVIEW_DECISION], hidden[ds.REVIEW_QUALITY]) == ("reject", None)

    totals = Counts()
    shape = read_shape(ws)
    assert shape.table() == read_shape(ws, recount=True).table() and shape.notes == []
    for state in shape.compositions:
        totals.add(state)
    # `curate status`: a 1-star accept is left out, not rejected
    assert (totals.accepted, totals.left_out, totals.rejected) == (
        EXPECTED.for_export,
        EXPECTED.accepted - EXPECTED.for_export,
        EXPECTED.rejected,
    )
    assert totals.pending == 12 - EXPECTED.reviewed

    export = export_mycanvas(ws, name="all")
    assert export.n_images == EXPECTED.for_export
    rows = [json.loads(line) for line in (export.path / "train" / "metadata.jsonl").read_text().splitlines()]
    assert {r["candidate_id"] for r in rows} == set(
        dataset.load_saved_view(ds.VIEW_ACCEPTED_FOR_EXPORT).values(ds.CANDIDATE_ID)
    )
    assert all(3 <= r["quality"] <= 5 for r in rows)

    words = "9 reviewed: 6 accepted (5 for export, quality >= 3), 3 rejected, 2 disputed (votes differ)"
    assert words in pulled.summary() and words in reviewed.summary()
    shown = CliRunner().invoke(app, ["status", "-w", str(ws.root)])
    assert shown.exit_code == 0, shown.output
    assert "left out = accepted in review but not taken" in shown.output
    assert CliRunner().invoke(app, ["status", "--recount", "-w", str(ws.root)]).output == shown.output

"""The review loop against a real Label Studio: push, annotate through the SDK, pull into FiftyOne."""

from __future__ import annotations

import gzip
import json
import socket
import sqlite3
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from typer.testing import CliRunner

from curation.cli import app
from curation.concepts.references import cover_cutout
from curation.core import dataset as ds
from curation.core.acceptance import accepted_view
from curation.core.config import CurateConfig, ReviewConfig, dump_config
from curation.core.errors import CurateError
from curation.core.labeling_config import CONFIG_DIR, parse_labeling_config
from curation.core.ports import free_port
from curation.core.workspace import Workspace
from curation.review.agreement import krippendorff_alpha
from curation.review.client import Connection, connect
from curation.review.pull import REVIEW_FIELDS, aggregate, annotation_result, pull
from curation.review.pull_chunks import PULL_TITLE
from curation.review.push import push
from curation.review.server import (
    ServerInfo,
    data_dir_of,
    read_server,
    serve,
    server_file,
    stop,
    use_server,
    write_server,
)
from curation.review.status import status
from tests.fixtures.labelstudio import annotator_client, seeded_home
from tests.fixtures.sample_concepts import flat_concept


def build_candidates(ws: Workspace, n: int) -> list[str]:
    """Concept refs, n candidate PNGs and a FiftyOne dataset with the `unreviewed` saved view."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    rng = np.random.default_rng(0)
    for cid, colour in (("cat", (200, 80, 20)), ("mug", (20, 80, 200))):
        flat_concept(ws, cid, colour, 48)
    dataset = fo.Dataset(ds.dataset_name(ws))
    samples, ids = [], []
    for i in range(n):
        cid = f"cand{i:03d}"
        path = ws.candidates_dir / "s000" / f"{cid}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        ids.append(cid)
        samples.append(
            fo.Sample(
                filepath=str(path),
                **{
                    ds.CANDIDATE_ID: cid,
                    ds.CAPTION: f"<c-cat> cat and <c-mug> mug, scene {i}",
                    ds.CONCEPTS: ["cat", "mug"],
                    "clip_t": 0.2 + 0.01 * i,
                },
            )
        )
    dataset.add_samples(samples)
    dataset.persistent = True
    dataset.save_view("unreviewed", dataset.match(F(ds.REVIEW_DECISION) == None))
    return ids


def tasks_by_candidate(ws: Workspace) -> dict[str, dict]:
    conn = connect(ws)
    project_id = json.loads((ws.review_dir / "project.json").read_text())["project_id"]
    tasks = list(conn.client.tasks.list(project=project_id, fields="all"))
    return {t.data[ds.CANDIDATE_ID]: t for t in tasks}


def reviews(ws: Workspace) -> dict[str, dict]:
    dataset = ds.open_dataset(ws)
    fields = [ds.CANDIDATE_ID, *REVIEW_FIELDS]
    ids, *columns = dataset.values(fields)
    return {cid: dict(zip(fields[1:], vals, strict=True)) for cid, *vals in zip(ids, *columns, strict=True)}


def test_serve_is_idempotent_and_keeps_credentials_private(
    labelstudio_home: Workspace, labelstudio: ServerInfo
) -> None:
    again = serve(labelstudio_home)
    assert (again.url, again.pid, again.token) == (labelstudio.url, labelstudio.pid, labelstudio.token)
    assert oct(labelstudio.path.stat().st_mode & 0o777) == "0o600"
    login = requests.Session()
    page = login.get(f"{labelstudio.url}/user/login/", timeout=30)
    assert page.status_code == 200
    answer = login.post(
        f"{labelstudio.url}/user/login/",
        data={
            "email": labelstudio.email,
            "password": labelstudio.password,
            "csrfmiddlewaretoken": login.cookies["csrftoken"],
        },
        headers={"Referer": f"{labelstudio.url}/user/login/"},
        timeout=30,
    )
    assert answer.ok and "/user/login" not in answer.url  # the recorded admin password works


def test_server_keeps_its_sqlite_database_in_wal_mode(
    labelstudio_home: Workspace, labelstudio: ServerInfo
) -> None:
    """WAL lets an annotator's save and the next-task query (and pulls) run without waiting on each other."""
    headers = {"Authorization": f"Token {labelstudio.token}"}
    assert requests.get(
        f"{labelstudio.url}/api/projects", headers=headers, timeout=30
    ).ok  # opens the database
    database = labelstudio_home.review_dir / "labelstudio-data" / "label_studio.sqlite3"
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_push_serves_images_and_does_not_duplicate(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = labelstudio_workspace(batch_size=2)  # 5 tasks -> 3 bulk batches
    ids = build_candidates(ws, 5)
    report = push(ws, order="score")
    assert report.pushed == 5 and report.already == 0
    tasks = tasks_by_candidate(ws)
    assert sorted(tasks) == ids
    # best machine score first: annotators get tasks in import order
    assert sorted(tasks, key=lambda cid: tasks[cid].id) == ids[::-1]
    task = tasks["cand003"]
    assert task.data["images"][0].startswith("/data/local-files/?d=") and "base64" not in json.dumps(
        task.data
    )
    headers = {"Authorization": f"Token {labelstudio.token}"}
    served = requests.get(labelstudio.url + task.data["images"][0], headers=headers, timeout=30)
    assert served.status_code == 200
    assert served.content == (ws.candidates_dir / "s000" / "cand003.png").read_bytes()
    ref = requests.get(labelstudio.url + task.data["refs"][0]["url"], headers=headers, timeout=30)
    assert ref.status_code == 200 and ref.content == cover_cutout(ws, ws.concepts()["cat"]).read_bytes()
    published = Path(labelstudio.document_root) / ws.workspace_id / "candidates" / "s000" / "cand003.png"
    assert published.samefile(ws.candidates_dir / "s000" / "cand003.png")  # a hard link in the media tree
    assert [r["name"] for r in task.data["refs"]] == ["Cat", "Mug"] and "<img" in task.data["refs_html"]
    # no decision is pre-filled (a pre-selected choice turns the annotator's hotkey into "clear");
    # scores are shown labelled with their direction
    assert not tasks["cand004"].predictions
    assert "<td>clip_t</td><td>0.24</td><td>higher is better</td>" in tasks["cand004"].data["scores"]

    listings: list[int] = []
    real_task_keys = Connection.task_keys

    def counted(self: Connection, project_id: int, key: str) -> set[str]:
        listings.append(project_id)
        return real_task_keys(self, project_id, key)

    monkeypatch.setattr(Connection, "task_keys", counted)
    again = push(ws)
    assert (again.pushed, again.already) == (0, 5)
    assert listings == []  # the server's task count agrees with what was pushed: no listing of the project
    assert len(tasks_by_candidate(ws)) == 5

    connect(ws).client.tasks.delete(id=tasks["cand001"].id)  # deleted in Label Studio: the counts differ
    third = push(ws)
    assert (third.pushed, third.already) == (1, 4) and listings == [report.project_id]
    assert sorted(tasks_by_candidate(ws)) == ids

    record = ws.review_dir / "pushed.txt"  # a kill mid-append cuts the last id: the count still agrees
    for damaged in (record.read_bytes()[:-7], record.read_bytes()[:-8] + b"cand\xff\xfe1\n"):  # or bytes
        record.write_bytes(damaged)
        again = push(ws)
        assert (again.pushed, again.already) == (0, 5)  # listed, not trusted: nothing pushed twice
    assert listings == [report.project_id] * 3 and len(tasks_by_candidate(ws)) == 5


def test_pull_writes_reviews_idempotently_and_follows_edits(
    labelstudio_workspace: Callable[..., Workspace],
) -> None:
    ws = labelstudio_workspace()
    build_candidates(ws, 4)
    push(ws)
    tasks = tasks_by_candidate(ws)
    client = connect(ws).client
    client.annotations.create(id=tasks["cand000"].id, result=annotation_result("accept", 4))
    client.annotations.create(
        id=tasks["cand001"].id,
        result=annotation_result(
            "reject", 2, reasons=("artifacts", "bad layout"), caption="a cat beside a mug"
        ),
    )
    edited = client.annotations.create(id=tasks["cand002"].id, result=annotation_result("accept", 5))

    first = pull(ws)
    assert (first.annotated, first.accepted, first.rejected, first.changed) == (3, 2, 1, 3)
    got = reviews(ws)
    assert got["cand000"][ds.REVIEW_DECISION] == "accept" and got["cand000"][ds.REVIEW_QUALITY] == 4.0
    assert got["cand001"][ds.REVIEW_DECISION] == "reject"
    assert got["cand001"][ds.REVIEW_REASONS] == ["artifacts", "bad layout"]
    assert got["cand001"][ds.CAPTION_FIXED] == "a cat beside a mug"
    assert got["cand003"][ds.REVIEW_DECISION] is None
    assert len(accepted_view(ds.open_dataset(ws), min_quality=4)) == 2

    assert delta_ids(first.raw_path) == ["cand000", "cand001", "cand002", "cand003"]

    second = pull(ws)  # re-reads the same tasks (they changed within SETTLE of its start)
    assert second.changed == 0 and reviews(ws) == got
    assert second.raw_path is None  # ... and keeps nothing twice

    client.annotations.delete(id=_annotation_ids(client, tasks["cand000"].id)[0])
    client.annotations.update(id=edited.id, result=annotation_result("reject", 1))
    third = pull(ws)
    assert third.changed == 2
    assert delta_ids(third.raw_path) == ["cand000", "cand002"]  # only what changed since the last pull
    assert sorted((ws.review_dir / "pulls").glob("*.jsonl.gz")) == [first.raw_path, third.raw_path]
    got = reviews(ws)
    assert got["cand000"][ds.REVIEW_DECISION] is None and got["cand000"][ds.REVIEW_QUALITY] is None
    assert (
        got["cand002"][ds.REVIEW_DECISION] == "reject" and got["cand002"][ds.REVIEW_QUALITY] is None
    )  # a reject's stars


def test_pull_chunks_survive_a_server_stop_and_then_read_only_what_changed(
    labelstudio_workspace: Callable[..., Workspace], labelstudio_home: Workspace, labelstudio: ServerInfo
) -> None:
    """Chunks of 2 tasks; the server stops after the first chunk: a clear error, no delta, no recorded
    start, no temporary view or snapshot left behind once it is back, and the re-run finishes. Later
    pulls read only the tasks touched since the last one."""
    ws = labelstudio_workspace()
    config = ws.config
    config.review.pull_page_size = 2
    ws.config_path.write_text(dump_config(config))
    build_candidates(ws, 5)
    push(ws)
    tasks = tasks_by_candidate(ws)
    conn = connect(ws)
    client = conn.client
    for i, cid in enumerate(sorted(tasks)):
        client.annotations.create(id=tasks[cid].id, result=annotation_result(("accept", "reject")[i % 2], 3))
    chunks: list[int] = []

    def stop_after_first_chunk(stage: str, done: int, total: int) -> None:
        chunks.append(done)
        if len(chunks) == 1:
            assert stop(labelstudio_home)

    try:
        with pytest.raises(CurateError, match=f"{labelstudio.url} stopped answering during"):
            pull(ws, progress=stop_after_first_chunk)
    finally:
        serve(labelstudio_home, port=int(labelstudio.url.rsplit(":", 1)[1]))
    folder = ws.review_dir / "pulls"
    assert chunks[0] in (1, 2) and not list(folder.glob("*.gz*")) and not (folder / "state.json").exists()
    written = sum(r[ds.REVIEW_DECISION] is not None for r in reviews(ws).values())
    assert written >= chunks[0]  # the first chunk's reviews were written before the stop

    project_id = json.loads((ws.review_dir / "project.json").read_text())["project_id"]
    report = pull(ws, progress=lambda stage, done, total: chunks.append(done))
    assert chunks[-1] == 5 and len(chunks) - 1 == 3 and report.read == 5  # 5 tasks in 3 chunks of ids
    assert report.changed == 5 - written
    assert {cid: r[ds.REVIEW_DECISION] for cid, r in reviews(ws).items()} == {
        "cand000": "accept", "cand001": "reject", "cand002": "accept", "cand003": "reject", "cand004": "accept"
    }  # fmt: skip
    assert delta_ids(report.raw_path) == sorted(tasks)
    views = conn.get_json("/api/dm/views/", "views", project=project_id)
    assert not [v for v in views if v["data"].get("title") == PULL_TITLE]  # the killed pull's are gone too
    assert not [
        e
        for e in conn.get_json(f"/api/projects/{project_id}/exports/", "exports")
        if e["title"] == PULL_TITLE
    ]

    state = json.loads((folder / "state.json").read_text())  # as if the last pull started a day later
    state.update(after=connect(ws).server_time().isoformat(), recent={})
    (folder / "state.json").write_text(json.dumps(state))
    annotation = _annotation_ids(client, tasks["cand004"].id)[0]
    client.annotations.update(id=annotation, result=annotation_result("reject", 1))
    later = pull(ws)
    assert (later.read, later.changed) == (1, 1) and delta_ids(later.raw_path) == ["cand004"]
    assert reviews(ws)["cand004"][ds.REVIEW_DECISION] == "reject"
    again = pull(ws, full=True)
    assert (again.read, again.changed) == (5, 0) and delta_ids(again.raw_path) == sorted(tasks)  # a snapshot


def delta_ids(path: Path | None) -> list[str]:
    """The candidates a pull's raw delta holds, sorted."""
    assert path is not None
    with gzip.open(path, "rt") as lines:
        return sorted(json.loads(line)["data"][ds.CANDIDATE_ID] for line in lines)


def _annotation_ids(client, task_id: int) -> list[int]:
    return [a.id for a in client.annotations.list(id=task_id)]


def test_several_annotators_with_disagreement(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo
) -> None:
    ws = labelstudio_workspace()
    build_candidates(ws, 2)
    push(ws, overlap=3)
    emails = [f"ann{i}-{ws.name}@example.com" for i in range(3)]
    users = [annotator_client(labelstudio, email)[1] for email in emails]
    tasks = tasks_by_candidate(ws)
    for user, (decision, quality) in zip(users, [("accept", 5), ("accept", 3), ("reject", 1)], strict=True):
        user.annotations.create(id=tasks["cand000"].id, result=annotation_result(decision, quality))
    for user, decision in zip(users[:2], ["accept", "reject"], strict=True):
        user.annotations.create(id=tasks["cand001"].id, result=annotation_result(decision, 3))
    pull(ws)
    got = reviews(ws)
    assert got["cand000"][ds.REVIEW_DECISION] == "accept"
    assert got["cand000"][ds.REVIEW_ANNOTATORS] == 3
    assert got["cand000"][ds.REVIEW_AGREEMENT] == pytest.approx(2 / 3, abs=1e-3)
    assert got["cand000"][ds.REVIEW_QUALITY] == pytest.approx(
        4.0
    )  # the accepts' stars; the reject's 1 is no vote
    assert got["cand001"][ds.REVIEW_DECISION] == "reject"  # a tie is not an accept
    assert got["cand001"][ds.REVIEW_AGREEMENT] == 0.5
    project_id = json.loads((ws.review_dir / "project.json").read_text())["project_id"]
    listed = connect(ws).get_json("/api/tasks/", "tasks", project=project_id, fields="task_only")["tasks"]
    column = {t["data"][ds.CANDIDATE_ID]: t["data"].get(ds.REVIEW_AGREEMENT) for t in listed}
    assert column == {"cand000": pytest.approx(0.6667), "cand001": 0.5}  # the Data Manager's column
    summary = status(ws)
    assert (summary.tasks, summary.annotated, summary.accepted, summary.rejected) == (2, 2, 1, 1)
    assert summary.per_concept == {"cat": (2, 1, 1), "mug": (2, 1, 1)}  # reviewed, accepted, for export
    # by hand: decisions [a a r], [a r] -> alpha = 1 - 4 * 4/12 = -1/3; accepts' stars [5 3], [3] -> 1 - 1 * 8/8
    agreement = summary.agreement
    assert agreement is not None and agreement.overlapped == 2
    assert agreement.decision_alpha == pytest.approx(-1 / 3) and agreement.quality_alpha == pytest.approx(0.0)
    assert sorted(agreement.per_annotator.values()) == [(1, 0, 0), (2, 1, 0), (2, 2, 0)]
    assert sorted(agreement.per_annotator) == sorted(emails)  # emails, not "user <id>"
    assert "Krippendorff's alpha on 2 tasks" in summary.summary()
    disputed = ds.open_dataset(ws).load_saved_view(ds.VIEW_DISPUTED)
    assert sorted(disputed.values(ds.CANDIDATE_ID)) == ["cand000", "cand001"]
    project = connect(ws).get_json(f"/api/projects/{summary.project_id}", "test")
    assert project["maximum_annotations"] == 3  # --overlap


def test_a_workspace_mixes_single_and_batch_pages_and_counts_each_candidate(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo
) -> None:
    """Tasks of one candidate and a page of four in one project: re-pushes with other page sizes (and
    without the push record) never put a candidate on a second page; two annotators' page answers
    become per-candidate reviews, agreement and alpha."""
    from fiftyone import ViewField as F

    ws = labelstudio_workspace()
    ids = build_candidates(ws, 6)
    dataset = ds.open_dataset(ws)
    dataset.save_view("first", dataset.match(F(ds.CANDIDATE_ID).is_in(ids[:2])))
    assert push(ws, view="first", order="view", per_page=1).pushed == 2
    report = push(ws, order="view", per_page=4)
    assert (report.pushed, report.already, report.pages) == (4, 2, 1)
    assert "4 new candidates on 1 pages" in report.summary()
    for per_page in (2, 3):
        again = push(ws, per_page=per_page)
        assert (again.pushed, again.already) == (0, 6)
        (ws.review_dir / "pushed.txt").unlink()  # the next push lists the project's tasks instead
    client = connect(ws).client
    tasks = sorted(client.tasks.list(project=report.project_id, fields="task_only"), key=lambda t: t.id)
    assert [t.data["candidate_ids"] for t in tasks] == [[ids[0]], [ids[1]], ids[2:]]
    users = [annotator_client(labelstudio, f"page{i}-{ws.name}@example.com")[1] for i in range(2)]
    answers = [  # per annotator, per slot: (decision, stars)
        [("accept", 5), ("reject", None), ("accept", 4), ("accept", 2)],
        [("accept", 3), ("reject", None), ("reject", None), ("accept", None)],  # an accept without stars
    ]
    for user, slots in zip(users, answers, strict=True):
        result = [
            {**answer, "item_index": slot}
            for slot, (decision, stars) in enumerate(slots)
            for answer in annotation_result(decision, stars)
        ]
        user.annotations.create(id=tasks[2].id, result=result)
    users[0].annotations.create(id=tasks[0].id, result=annotation_result("reject"))
    pulled = pull(ws)
    assert (pulled.accepted, pulled.rejected, pulled.invalid_count) == (2, 3, 0), pulled.summary()
    got = reviews(ws)
    decided = {
        c: (r[ds.REVIEW_DECISION], r[ds.REVIEW_QUALITY], r[ds.REVIEW_AGREEMENT]) for c, r in got.items()
    }
    assert decided == {
        ids[0]: ("reject", None, 1.0),
        ids[1]: (None, None, None),
        ids[2]: ("accept", 4.0, 1.0),
        ids[3]: ("reject", None, 1.0),
        ids[4]: ("reject", None, 0.5),  # a tie is not an accept
        ids[5]: ("accept", 2.0, 1.0),  # the starless accept counts, and adds no quality
    }
    summary = status(ws)
    assert (summary.tasks, summary.annotated) == (3, 2)  # Label Studio's tasks: pages
    assert summary.agreement is not None and summary.agreement.overlapped == 4  # candidates with two votes


def test_the_demo_annotator_answers_every_candidate_of_a_page(
    labelstudio_workspace: Callable[..., Workspace],
) -> None:
    """With `review.candidates_per_page` > 1 the demo's pages hold several candidates: its scripted
    annotator answers each in its slot, so the pull counts them all and reports nothing."""
    from curation.demo import annotate_for_demo

    ws = labelstudio_workspace()
    ids = build_candidates(ws, 5)
    assert push(ws, order="view", per_page=2).pages == 3
    assert annotate_for_demo(ws) == 3
    pulled = pull(ws)
    assert (pulled.invalid_count, pulled.stray_count) == (0, 0), pulled.summary()
    assert all(review[ds.REVIEW_DECISION] for review in reviews(ws).values()) and len(reviews(ws)) == len(ids)


BEFORE_PAGES = """<View>
  <Image name="image" value="$image"/><Text name="caption" value="$caption"/>
  <HyperText name="refs" value="$refs_html"/><HyperText name="scores" value="$scores"/>
  <View style="display: none;"><Image name="thumb" value="$thumb"/></View>
  <Choices name="decision" toName="image" choice="single-radio" required="true">
    <Choice value="accept" hotkey="a"/><Choice value="reject" hotkey="r"/>
  </Choices>
  <View visibleWhen="choice-selected" whenTagName="decision" whenChoiceValue="accept">
    <Rating name="quality" toName="image" maxRating="5" hotkey="q" required="true"/>
  </View>
  <TextArea name="caption_fixed" toName="image" rows="1" maxSubmissions="1" editable="true"/>
</View>"""
"""The data keys and controls of review.xml before batch pages: one candidate a task, stars as a Rating."""


def test_a_project_made_before_pages_takes_pages_of_one_and_refuses_more(
    labelstudio_workspace: Callable[..., Workspace],
) -> None:
    """A project keeps the page it was made with (Label Studio refuses a config its annotations do not
    fit, and the old page's stars are a Rating): pushes of pages of one still go there and are pulled as
    before; pages of several are refused with one error line, nothing imported."""
    from curation.review.project import project_file, project_marker

    ws = labelstudio_workspace()
    ids = build_candidates(ws, 3)
    conn = connect(ws)
    old = conn.client.projects.create(
        title="before pages", description=project_marker(ws), label_config=BEFORE_PAGES
    )
    data = {"image": "/data/local-files/?d=x.png", "caption": "c", "refs_html": "", "scores": "", "thumb": ""}
    conn.client.projects.import_tasks(id=old.id, request=[{"data": {**data, ds.CANDIDATE_ID: ids[0]}}])
    project_file(ws).parent.mkdir(parents=True, exist_ok=True)
    project_file(ws).write_text(json.dumps({"url": conn.url, "project_id": old.id}))
    with pytest.raises(CurateError, match="push with --batch 1"):
        push(ws, per_page=2)
    assert conn.project(old.id)["task_number"] == 1
    report = push(ws, order="view", per_page=1)
    assert (report.project_id, report.pushed, report.already) == (old.id, 2, 1)
    tasks = tasks_by_candidate(ws)
    for cid, decision in ((ids[0], "reject"), (ids[1], "accept")):  # as the old page submits: no item_index
        conn.client.annotations.create(id=tasks[cid].id, result=annotation_result(decision, 4))
    pulled = pull(ws)
    assert (pulled.accepted, pulled.rejected, pulled.invalid_count, pulled.stray_count) == (1, 1, 0, 0)


def test_the_likely_reject_hint_quotes_the_held_out_check() -> None:
    """The hint says what `curate calibrate`'s cross-validation found for the rule's concept count, never
    the in-sample fit its cut was chosen on; no rule of that count, or one from random weights, no hint."""
    from curation.review.calibration import ScoreCalibration
    from curation.review.crossval import HeldOut
    from curation.review.task_page import triage_hint

    rule = ScoreCalibration("clip_t", "2", 300, 100, 0.9, "<", 0.2, 60, 3, False)
    heldout = HeldOut(folds=5, accepted=300, accepted_kept=294, rejected=100, rejected_held=54)
    earned = {"2": (rule, heldout)}
    row = {ds.CONCEPTS: ["cat", "mug"], "clip_t": 0.1}
    assert triage_hint(row, earned, set()) == (
        "likely reject (clip_t < 0.2; held out: 54 of 60 reviews such a rule held back were rejected,"
        " it kept 98.0% of accepts, 95% lower bound 96.1%)"
    )
    assert triage_hint({**row, "clip_t": 0.3}, earned, set()) is None  # the rule would send it
    assert triage_hint({**row, ds.CONCEPTS: ["cat"]}, earned, set()) is None  # never another count's rule
    assert triage_hint(row, earned, {"clip_t"}) is None


def test_a_nan_or_infinite_score_is_left_off_the_page(tmp_path: Path) -> None:
    """Any numeric field is a machine score on the page, one added by hand too, and Label Studio's SDK
    sends task data as strict JSON: a NaN or infinite value is not shown, and the push goes on."""
    from curation.review.task_page import candidate_task, page_task

    ws = Workspace.create(tmp_path / "ws")
    path = ws.candidates_dir / "s000" / "cand000.png"
    path.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), (120, 60, 30)).save(path)
    media = ws.root / "media"
    conn = Connection("http://127.0.0.1:9", "token", media, media, ws.root)
    row = {ds.CANDIDATE_ID: "cand000", "filepath": str(path), ds.CAPTION: "a cat", ds.CONCEPTS: [],
           "clip_t": float("nan"), "blur": float("inf"), "seam": 0.25}  # fmt: skip
    task = candidate_task(ws, conn, row, {}, ["clip_t", "blur", "seam"], set(), {})
    assert task["data"]["score_values"] == {"seam": 0.25}
    json.dumps(page_task(ws, conn, [task, task]), allow_nan=False)  # as the SDK encodes it


def test_krippendorff_alpha_by_hand() -> None:
    # 3 units, 2 coders: o_aa = 2, o_ar = o_ra = 1, o_rr = 2; n_a = n_r = 3 -> 1 - 5 * 2 / 18
    assert krippendorff_alpha([["a", "a"], ["a", "r"], ["r", "r"]]) == pytest.approx(1 - 10 / 18)
    assert krippendorff_alpha([["a", "a"], ["r", "r"]]) == 1.0
    assert krippendorff_alpha([["a", "a"], ["a"]]) is None  # no variation: undefined, not perfect
    assert krippendorff_alpha([[1.0, 2.0], [4.0, 5.0]], interval=True) == pytest.approx(1 - 3 * 4 / 80)


def test_aggregate_ignores_skips_and_keeps_latest_caption() -> None:
    def ann(
        who: int, decision: str, quality: int, when: str, caption: str | None = None, cancelled: bool = False
    ) -> dict:
        return {
            "result": annotation_result(decision, quality, caption=caption),
            "completed_by": who,
            "updated_at": when,
            "was_cancelled": cancelled,
        }

    config = parse_labeling_config((CONFIG_DIR / "review.xml").read_text(), "review.xml")
    review = aggregate(
        [
            ann(1, "reject", 1, "3", cancelled=True),
            ann(2, "accept", 4, "2", "new"),
            ann(3, "accept", 2, "1", "old"),
        ],
        config,
    )
    assert review[ds.REVIEW_DECISION] == "accept" and review[ds.REVIEW_ANNOTATORS] == 2
    assert (
        review[ds.REVIEW_QUALITY] == 3.0
        and review[ds.CAPTION_FIXED] == "new"
        and review[ds.REVIEW_AGREEMENT] == 1.0
    )
    assert aggregate([], config)[ds.REVIEW_DECISION] is None


def test_server_not_running_names_the_url(labelstudio_workspace: Callable[..., Workspace], tmp_path) -> None:
    ws = labelstudio_workspace()
    build_candidates(ws, 1)
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CurateError, match=f"not reachable at {dead}"):
        push(ws, url=dead, token="x")
    with pytest.raises(
        CurateError, match="not reachable at http://127.0.0.1:8080: start it with `curate review serve"
    ):
        push(Workspace.create(tmp_path / "fresh"))
    with pytest.raises(CurateError, match=f"not reachable at {dead}"):
        use_server(ws, dead, "x")


def test_server_stopped_mid_push_then_rerun_finishes_without_duplicates(
    labelstudio_workspace: Callable[..., Workspace], labelstudio_home: Workspace, labelstudio: ServerInfo
) -> None:
    ws = labelstudio_workspace(batch_size=2)
    build_candidates(ws, 6)

    def stop_after_first_batch(stage: str, done: int, total: int) -> None:
        if done == 2:
            assert stop(labelstudio_home)

    try:
        with pytest.raises(CurateError, match=f"{labelstudio.url} stopped answering during task"):
            push(ws, progress=stop_after_first_batch)
    finally:
        restarted = serve(labelstudio_home, port=int(labelstudio.url.rsplit(":", 1)[1]))
    assert restarted.url == labelstudio.url
    report = push(ws)
    assert (report.already, report.pushed) == (2, 4)
    assert sorted(tasks_by_candidate(ws)) == [f"cand{i:03d}" for i in range(6)]


def test_push_after_losing_project_record_reuses_the_project(
    labelstudio_workspace: Callable[..., Workspace],
) -> None:
    """A push killed between creating the project and recording it must not make a second project."""
    ws = labelstudio_workspace()
    ids = build_candidates(ws, 3)
    push(ws)
    record = ws.review_dir / "project.json"
    project_id = json.loads(record.read_text())["project_id"]
    record.unlink()
    push(ws)
    assert json.loads(record.read_text())["project_id"] == project_id
    assert sorted(tasks_by_candidate(ws)) == ids


def test_project_is_found_by_workspace_id_after_a_rename_never_by_folder_name(
    labelstudio_workspace: Callable[..., Workspace], labelstudio_home: Workspace, labelstudio: ServerInfo
) -> None:
    """The project marker is the workspace id: a renamed workspace whose record was lost finds its own
    project, and a workspace that only shares its folder name gets a project of its own."""
    ws = labelstudio_workspace()
    build_candidates(ws, 2)
    push(ws)
    project_id = json.loads((ws.review_dir / "project.json").read_text())["project_id"]

    renamed = Workspace.open(ws.root.rename(ws.root.with_name(f"{ws.root.name}-renamed")))
    (renamed.review_dir / "project.json").unlink()
    push(renamed)
    assert json.loads((renamed.review_dir / "project.json").read_text())["project_id"] == project_id

    config = CurateConfig()
    config.index.dataset_name = f"review-test-twin-{uuid.uuid4().hex[:10]}"
    twin_root = labelstudio_home.root / "workspaces" / uuid.uuid4().hex[:10] / renamed.name
    twin = Workspace.create(twin_root, config)
    use_server(twin, labelstudio.url, labelstudio.token, document_root=Path(labelstudio.document_root))
    build_candidates(twin, 2)
    push(twin)
    assert json.loads((twin.review_dir / "project.json").read_text())["project_id"] != project_id


def _process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat_file.parent.name)] = int(fields[1])
    tree = [pid]
    for candidate in tree:
        tree.extend(child for child, parent in parents.items() if parent == candidate)
    return tree


def test_credentials_are_not_on_the_command_line_and_the_data_dir_is_private(
    labelstudio_home: Workspace, labelstudio: ServerInfo
) -> None:
    current = serve(labelstudio_home)  # a test before may have restarted it: `labelstudio.pid` is stale then
    command_lines = []
    for pid in _process_tree(current.pid):
        try:
            command_lines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except FileNotFoundError:  # a short-lived child that has already exited
            continue
    assert any(b"label-studio" in line for line in command_lines)  # the tree really is the server
    for line in command_lines:  # readable by every account on the machine (`ps`)
        assert labelstudio.password.encode() not in line and labelstudio.token.encode() not in line
    data_dir = labelstudio_home.review_dir / "labelstudio-data"
    assert oct(data_dir.stat().st_mode & 0o777) == "0o700"  # its database holds the token in clear


def test_sign_up_is_closed_but_invites_work(labelstudio: ServerInfo) -> None:
    headers = {"Authorization": f"Token {labelstudio.token}"}

    def sign_up(email: str, query: str = "") -> int:
        visitor = requests.Session()
        assert visitor.get(f"{labelstudio.url}/user/signup/{query}", timeout=30).ok
        return visitor.post(
            f"{labelstudio.url}/user/signup/{query}",
            data={
                "email": email,
                "password": "Long-enough-pass-9",
                "csrfmiddlewaretoken": visitor.cookies["csrftoken"],
            },
            headers={"Referer": f"{labelstudio.url}/user/signup/"},
            timeout=30,
            allow_redirects=False,
        ).status_code

    intruder, invited = (f"{who}-{uuid.uuid4().hex[:8]}@example.com" for who in ("intruder", "invited"))
    assert sign_up(intruder) == 403
    invite = requests.get(f"{labelstudio.url}/api/invite", headers=headers, timeout=30).json()["token"]
    assert sign_up(invited, f"?token={invite}") == 302  # the admin's invite link still lets annotators in
    emails = [
        u["email"] for u in requests.get(f"{labelstudio.url}/api/users/", headers=headers, timeout=30).json()
    ]
    assert labelstudio.email in emails and invited in emails and intruder not in emails


def test_stop_leaves_a_process_that_is_not_the_server_alone(tmp_path: Path) -> None:
    """server.json names a pid that is now an unrelated process (the server died, the pid was reused)."""
    ws = Workspace.create(tmp_path / "ws")
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)  # a group leader, as a server is
    try:
        write_server(
            ws,
            ServerInfo(
                url="http://127.0.0.1:1",
                email="a@b.c",
                password="p",
                token="t",
                path=server_file(ws),
                pid=other.pid,
            ),
        )
        result = CliRunner().invoke(app, ["review", "stop", "-w", str(ws.root)])
        assert result.exit_code == 0 and "no server was running" in result.output
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=2)
        assert read_server(ws).pid is None  # forgotten, so the next serve starts a server of its own
    finally:
        other.kill()
        other.wait()


def test_push_follows_a_capped_page_size_and_serve_says_the_port_moved(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that caps page_size (here 4) must not make a re-push duplicate tasks; the configured
    port is taken by someone else, and `review serve` says where it went instead, and where the
    password is, never the password. A pull from the workspace's own server removes the export
    snapshot files Label Studio keeps in its data dir."""
    monkeypatch.setenv("LABEL_STUDIO_TASK_API_PAGE_SIZE_MAX", "4")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        config = CurateConfig(review=ReviewConfig(port=taken, batch_size=5, pull_page_size=4))
        config.index.dataset_name = f"review-capped-{uuid.uuid4().hex[:8]}"
        home = seeded_home(tmp_path_factory.mktemp("capped-home"), config)
        try:
            result = CliRunner().invoke(app, ["review", "serve", "-w", str(home.root)])
            assert result.exit_code == 0, result.output
            info = read_server(home)
            assert f"port {taken} was busy; serving on {info.url.rsplit(':', 1)[1]}" in result.output
            assert info.password not in result.output and f"password in {info.path}" in result.output
            ids = build_candidates(home, 10)
            first = push(home)
            assert first.pushed == 10
            assert connect(home).task_keys(first.project_id, ds.CANDIDATE_ID) == set(ids)
            again = push(home)
            assert (again.pushed, again.already) == (0, 10)
            project_tasks = connect(home).client.tasks.list(project=first.project_id, fields="task_only")
            assert sorted(t.data[ds.CANDIDATE_ID] for t in project_tasks) == ids  # no task twice
            assert pull(home).read == 10  # in 3 snapshots
            # Label Studio keeps a deleted export's file: the pull removed theirs from the server's data dir
            exported = data_dir_of(home.root) / "media" / "export"
            assert exported.is_dir() and not list(exported.glob(f"{first.project_id}/*.json"))
        finally:
            stop(home)

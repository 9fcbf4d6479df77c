"""The dataset summary that `curate status` and `curate review status` read instead of FiftyOne.

On a real indexed workspace (the candidate fixture, the real `curate index`), its figures must equal
the dataset's own after each writer, after a re-run, after a writer killed between its dataset
writes and its summary, and while a writer runs; the acceptance rules it counts by must equal the
MongoDB expressions on every kind of review; status, top-up and review status must leave out the
near-duplicate copies and stale candidates the export leaves out; and the CLI must answer `--help` and `status` without
importing FiftyOne or any other heavy library. Label Studio's part (a real push and pull) is
checked in tests/test_acceptance.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from curation.core import dataset as ds
from curation.core import dataset_summary
from curation.core.acceptance import count_reviews, count_written
from curation.core.workspace import STALE_DIR, Workspace
from curation.index.run import index_workspace
from curation.loop.targets import ACCEPTED, LEFT_OUT, REJECTED, read_reviews
from exports.select import select_candidates

HEAVY = ("fiftyone", "torch", "label_studio_sdk", "diffusers", "ray")
REVIEWS = {  # candidate -> the review fields a pull writes: every kind the acceptance rules tell apart
    0: ("accept", 4.0, 1, 1.0, ["off-model"], None),
    1: ("accept", None, 1, 1.0, None, None),  # accepted unrated: never for export
    2: ("reject", None, 2, 0.5, ["blurry"], None),  # a tie: disputed
    3: ("accept", 2.0, 3, 2 / 3, None, ["user 9: rating 7 is not 1-5"]),  # below 3, disputed, one invalid
    4: (None, None, None, None, None, ["user 9: no decision"]),  # invalid alone: not reviewed
}


def write_reviews(ws: Workspace, reviews: dict[int, tuple], die: bool = False) -> None:
    """Review fields onto the samples exactly as `curate review pull` writes them (set_values by sample);
    `die`: SIGKILL this process right after, before the summary is recorded."""
    from curation.review.pull import REVIEW_FIELDS, ensure_review_fields

    dataset = ds.open_dataset(ws)
    ensure_review_fields(dataset)
    ids = sorted(dataset.values(ds.CANDIDATE_ID))
    by_cid = dict(zip(*dataset.values([ds.CANDIDATE_ID, "id"]), strict=True))
    columns = [ds.REVIEW_DECISION, ds.REVIEW_QUALITY, ds.REVIEW_ANNOTATORS, ds.REVIEW_AGREEMENT]
    columns += [ds.REVIEW_REASONS, ds.REVIEW_INVALID]
    assert set(columns) <= set(REVIEW_FIELDS)
    for k, name in enumerate(columns):
        values = {by_cid[ids[i]]: fields[k] for i, fields in reviews.items()}
        dataset.set_values(name, values, key_field="id")
    if die:
        os.kill(os.getpid(), signal.SIGKILL)


review_writer = dataset_summary.keeps_summary("review")(write_reviews)
"""A review writer as `curate review pull` is one: marked, then the dataset, then the summary."""


def dataset_figures(ws: Workspace) -> tuple:
    """What the dataset itself says, by the MongoDB expressions (the path every command took before)."""
    dataset = ds.open_dataset(ws)
    return count_reviews(dataset, ws.config.export.min_quality), dataset_summary.take(dataset).columns


def summary_figures(ws: Workspace) -> tuple[tuple, list[str]]:
    reading = dataset_summary.read(ws)
    assert reading.summary is not None
    rows = [dataset_summary.written_review(row) for row in reading.summary.rows()]
    return (count_written(rows, ws.config.export.min_quality), reading.summary.columns), reading.notes


def status_reviews(ws: Workspace, recount: bool) -> dict:
    """What `curate status` counts per candidate (outcome, composition, reasons), and that it counted some."""
    reviews = read_reviews(ws, dataset_summary.read(ws, recount).summary)
    assert reviews
    return reviews


@pytest.fixture
def indexed(candidate_ws) -> Workspace:
    ws, _ = candidate_ws
    assert not dataset_summary.summary_path(ws).exists() and dataset_summary.read(ws).summary is None
    index_workspace(ws)
    return ws


def consumers_leave_out_what_the_export_leaves_out(ws: Workspace) -> None:
    """A near-duplicate copy of an accepted candidate and a stale candidate are left out by the export:
    `export_take` (what `review status` reports) and `read_reviews` (what `curate status` and `topup`
    count) leave out the same ones, from the summary. A copy whose original was rejected stays.
    The marks are written by other means than the index: a process with FiftyOne connected sees it."""
    accept = ("accept", 4.0, 1, 1.0, None, None)
    review_writer(
        ws, {0: accept, 1: accept, 2: ("reject", None, 1, 1.0, ["blurry"], None), 3: accept, 5: accept}
    )
    dataset = ds.open_dataset(ws)
    c = sorted(dataset.values(ds.CANDIDATE_ID))
    copies = {c[5]: c[0], c[3]: c[2]}  # a copy of an accepted candidate, a copy of a rejected one
    dataset.set_values(ds.NEAR_DUP_OF, {cid: copies.get(cid) for cid in c}, key_field=ds.CANDIDATE_ID)
    [record] = ws.candidates_dir.glob(f"*/{c[1]}.json")
    (ws.candidates_dir / STALE_DIR / record.parent.name).mkdir(parents=True)
    for path in record.parent.glob(f"{c[1]}.*"):  # where `curate generate` sets a changed plan's candidates
        path.rename(ws.candidates_dir / STALE_DIR / record.parent.name / path.name)
    assert "the dataset changed since" in dataset_summary.read(ws).notes[0]

    dataset_summary.record(ws)  # as `curate index` ends after marking near-duplicates
    reading = dataset_summary.read(ws)
    assert reading.summary is not None and reading.notes == []
    take = dataset_summary.export_take(ws, reading.summary)
    selection = select_candidates(ws, ws.config.export.min_quality)
    assert {item.candidate_id for item in selection.items} == take.taken == {c[0], c[3]}
    assert set(selection.dropped_near_duplicates) == take.copies == {c[5]}
    assert set(selection.skipped_stale) == take.stale == {c[1]}
    outcomes = {cid: review.outcome for cid, review in read_reviews(ws, reading.summary).items()}
    assert outcomes == {c[0]: ACCEPTED, c[2]: REJECTED, c[3]: ACCEPTED, c[5]: LEFT_OUT}  # stale: no review


def test_summary_equals_the_dataset_after_each_writer_and_a_rerun(indexed: Workspace) -> None:
    ws = indexed
    figures, notes = summary_figures(ws)
    assert notes == [] and figures[0].reviewed == 0  # the index recorded it: nothing reviewed yet
    review_writer(ws, REVIEWS)
    figures, notes = summary_figures(ws)
    assert notes == [] and figures == dataset_figures(ws)
    assert (figures[0].reviewed, figures[0].accepted, figures[0].for_export, figures[0].rejected) == (
        4,
        3,
        1,
        1,
    )
    assert (figures[0].disputed, figures[0].invalid) == (2, 2)
    assert status_reviews(ws, recount=False) == status_reviews(ws, recount=True)
    index_workspace(ws)  # an unchanged re-run records the same summary
    assert summary_figures(ws) == (dataset_figures(ws), [])
    assert not list(dataset_summary.summary_dir(ws).glob("changing-*"))
    consumers_leave_out_what_the_export_leaves_out(ws)


def test_a_writer_killed_before_its_summary_makes_readers_count_the_dataset(indexed: Workspace) -> None:
    ws = indexed
    before = summary_figures(ws)[0]
    code = (
        "import sys; from pathlib import Path; from curation.core.workspace import Workspace; "
        "from tests.test_dataset_summary import REVIEWS, review_writer; "
        "review_writer(Workspace.open(Path(sys.argv[1])), REVIEWS, die=True)"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(ws.root)], timeout=600, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads(dataset_summary.summary_path(ws).read_text())["columns"] == before[1]  # not recorded
    figures, notes = summary_figures(ws)
    assert figures == dataset_figures(ws) and figures != before  # the dataset's, not the stale summary's
    assert notes and "stopped before recording" in notes[0]
    assert status_reviews(ws, recount=False) == status_reviews(ws, recount=True)

    review_writer(ws, {0: ("reject", None, 1, 1.0, None, None)})  # the next run records everything
    assert summary_figures(ws) == (dataset_figures(ws), [])
    assert not list(dataset_summary.summary_dir(ws).glob("changing-*"))


def test_a_running_writer_is_named_and_another_database_is_not_trusted(
    indexed: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = indexed
    seen = []

    @dataset_summary.keeps_summary("review")
    def looking(ws: Workspace) -> None:
        seen.append(dataset_summary.read(ws).notes)

    looking(ws)
    assert "is changing the dataset now" in seen[0][0]
    assert dataset_summary.read(ws).notes == []
    monkeypatch.setenv("FIFTYONE_DATABASE_NAME", "some-other-database")
    assert "another FiftyOne database" in dataset_summary.read(ws).notes[0]


def test_cli_answers_help_and_status_without_heavy_libraries(indexed: Workspace) -> None:
    """A correctness test of what the CLI imports, not a timing test."""
    review_writer(indexed, REVIEWS)
    probe = (
        "import sys\n"
        "from curation.cli import main\n"
        "sys.argv = ['curate', *sys.argv[1:]]\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        f"    print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    for args in (["--help"], ["status", "--help"], ["status", "-w", str(indexed.root)]):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, done.stderr
        assert "HEAVY []" in done.stdout, (args, done.stdout[-300:])
        assert "note:" not in done.stderr
    assert "accepted = accepted in review with quality >= 3" in done.stdout


def test_a_team_database_password_never_reaches_the_summary(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A team's FIFTYONE_DATABASE_URI carries its MongoDB password (deploy/mongodb.sh), and the summary is
    as readable as the workspace: it names the database by a digest, which still tells databases apart."""
    from tests.fixtures.sample_concepts import small_config

    ws = Workspace.create(tmp_path / "ws", small_config())
    monkeypatch.setattr(dataset_summary, "_from_dataset", lambda ws: None)  # no database at that URI here
    monkeypatch.setattr(dataset_summary, "_connected", lambda: False)
    uri = "mongodb://curate:s3cret-pass@db.example:27017/?authSource=admin"
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", uri)
    dataset_summary.record(ws)
    assert "s3cret-pass" not in dataset_summary.summary_path(ws).read_text()
    assert dataset_summary.read(ws).notes == []
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", "mongodb://curate:other@db.example:27017/?authSource=admin")
    assert "another FiftyOne database" in dataset_summary.read(ws).notes[0]

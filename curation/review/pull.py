"""Bring reviews back: pull Label Studio's annotations, check them, aggregate annotators, write them onto FiftyOne.

A pull reads only the tasks Label Studio touched since the previous pull, a chunk at a time, and
writes only the samples whose aggregated review changed, so pulling twice changes nothing the
second time and a 100K-task project never sits in memory whole. Every annotation is checked against
the labeling config first (curation/review/annotation_rules.py): one the page could not have
produced is not counted, is named in the summary and in the sample's `review_invalid`, and stays in
the delta. What each pull read is kept, gzipped, under review/pulls/ (curation/review/deltas.py).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from curation.core import dataset as ds
from curation.core.acceptance import ReviewCounts, count_reviews, save_review_views, verdict
from curation.core.dataset_summary import keeps_summary
from curation.core.errors import CurateError
from curation.core.labeling_config import (
    CAPTION_BOX,
    DECISION,
    IMAGE,
    QUALITY,
    REASONS,
    LabelingConfig,
    labeling_config,
)
from curation.core.lock import writes
from curation.core.progress import ProgressFn, no_progress
from curation.core.workspace import Workspace, atomic_write_json
from curation.review.annotation_rules import annotator, ballots, split_page
from curation.review.client import connect
from curation.review.deltas import new_delta_name, pulls_dir, slim_task
from curation.review.project import project_id_of
from curation.review.pull_chunks import task_chunks
from curation.review.task_page import CANDIDATE_IDS

REVIEW_FIELDS = (
    ds.REVIEW_DECISION,
    ds.REVIEW_QUALITY,
    ds.REVIEW_ANNOTATORS,
    ds.REVIEW_AGREEMENT,
    ds.REVIEW_REASONS,
    ds.CAPTION_FIXED,
    ds.REVIEW_INVALID,
)
"""Every field a pull writes, in one order: a sample's review is this tuple's values."""
SHOWN_PROBLEMS = 20
"""Invalid annotations and stray tasks a summary names; the rest are counted (and in FiftyOne)."""


def annotation_result(
    decision: str, quality: int | None = None, reasons: tuple[str, ...] = (), caption: str | None = None
) -> list[dict[str, Any]]:
    """An annotation `result` for review.xml, as the labeling page submits it (tests and demo use it)."""
    result: list[dict[str, Any]] = [
        {"from_name": DECISION, "to_name": IMAGE, "type": "choices", "value": {"choices": [decision]}}
    ]
    if quality is not None:
        result.append(
            {"from_name": QUALITY, "to_name": IMAGE, "type": "rating", "value": {"rating": quality}}
        )
    if reasons:
        result.append(
            {"from_name": REASONS, "to_name": IMAGE, "type": "choices", "value": {"choices": list(reasons)}}
        )
    if caption:
        result.append(
            {"from_name": CAPTION_BOX, "to_name": IMAGE, "type": "textarea", "value": {"text": [caption]}}
        )
    return result


def aggregate(annotations: list[dict[str, Any]], config: LabelingConfig) -> dict[str, Any]:
    """Several annotators -> one review: the valid votes by the acceptance rule, reasons, caption, what was invalid.

    Skipped (cancelled) annotations do not vote, and an annotator votes once (`ballots`: their latest
    valid annotation; earlier ones are listed as invalid). An annotation the labeling page could not have
    produced does not vote either, and adds nothing else (no reason, no caption): it is listed in
    `review_invalid` as "<annotator>: <what is wrong>". The most recently updated corrected caption
    wins. No valid vote gives no review (decision, quality, ... None), so deleting annotations in
    Label Studio un-reviews the candidate on the next pull.
    """
    counted = ballots(annotations, config)
    votes = [b.vote for b in counted if b.vote is not None]
    invalid = [f"{b.who}: {'; '.join(b.problems)}" for b in counted if b.vote is None]
    found = verdict([(v.decision, v.stars) for v in votes])
    captions = [v.caption for v in votes if v.caption]  # in update order: the latest wins
    return {
        ds.REVIEW_DECISION: found.decision,
        ds.REVIEW_QUALITY: found.quality,
        ds.REVIEW_ANNOTATORS: found.annotators,
        ds.REVIEW_AGREEMENT: found.agreement,
        ds.REVIEW_REASONS: sorted({r for v in votes for r in v.reasons}) if votes else None,
        ds.CAPTION_FIXED: captions[-1] if captions else None,
        ds.REVIEW_INVALID: invalid or None,
    }


@dataclass
class PullReport:
    tasks: int  # in the project
    annotated: int  # tasks with an annotation, as the server counts them
    read: int  # tasks this pull read: those touched since the previous pull (all on the first)
    counts: ReviewCounts  # across the dataset after the pull
    changed: int  # samples whose review this pull rewrote
    raw_path: Path | None  # this pull's delta of raw tasks; None when nothing was new
    invalid: list[str] = field(default_factory=list)  # "task <id> (<candidate>) <annotator>: <problems>"
    invalid_count: int = 0
    strays: list[str] = field(default_factory=list)  # "task <id>: <why it matches no sample>"
    stray_count: int = 0
    cleared: int = 0  # samples whose task is gone from the project (a full pull un-reviews them)

    @property
    def accepted(self) -> int:
        return self.counts.accepted

    @property
    def rejected(self) -> int:
        return self.counts.rejected

    def summary(self) -> str:
        raw = f"raw delta {self.raw_path}" if self.raw_path else "nothing new to keep"
        head = (
            f"review pull: {self.annotated}/{self.tasks} tasks annotated, {self.read} read (changed since the "
            f"last pull), {self.changed} samples updated ({raw})"
        )
        lines = [head, f"  {self.counts.words()}"]
        if self.cleared:
            lines.append(f"  {self.cleared} reviews cleared: their tasks are gone from the project")
        for what, shown, count in (
            ("invalid annotations, not counted (the labeling page cannot produce them)", self.invalid,
             self.invalid_count),
            ("tasks that match no candidate of the dataset, ignored", self.strays, self.stray_count),
        ):  # fmt: skip
            if count:
                lines.append(f"  {count} {what}:")
                lines += [f"    {line}" for line in shown]
                lines += [f"    ... and {count - len(shown)} more"] if count > len(shown) else []
        if self.invalid_count:
            lines.append(f"  candidates holding invalid annotations: view `{ds.VIEW_INVALID}`")
        return "\n".join(lines)


def ensure_review_fields(dataset: Any) -> None:
    """Declare the review fields with their types, so an all-None pull still has a schema."""
    import fiftyone as fo

    kinds = {
        ds.REVIEW_DECISION: fo.StringField,
        ds.REVIEW_QUALITY: fo.FloatField,
        ds.REVIEW_ANNOTATORS: fo.IntField,
        ds.REVIEW_AGREEMENT: fo.FloatField,
        ds.CAPTION_FIXED: fo.StringField,
    }
    for name, kind in kinds.items():
        if not dataset.has_sample_field(name):
            dataset.add_sample_field(name, kind)
    for name in (ds.REVIEW_REASONS, ds.REVIEW_INVALID):
        if not dataset.has_sample_field(name):
            dataset.add_sample_field(name, fo.ListField, subfield=fo.StringField)


SETTLE = timedelta(minutes=2)
"""How far before a pull's start the next pull looks back: an annotation saved just before the
start may commit after the chunk holding its task was read. Tasks read twice this way are not kept twice."""


def _state_file(ws: Workspace) -> Path:
    return pulls_dir(ws) / "state.json"


def _write_reviews(dataset: Any, reviews: dict[str, dict[str, Any]]) -> tuple[int, set[str]]:
    """Write the reviews that differ from what the samples hold; how many did, and which candidates exist."""
    from fiftyone import ViewField as F

    view = dataset.match(F(ds.CANDIDATE_ID).is_in(list(reviews)))
    sample_ids, cids, *current = view.values(["id", ds.CANDIDATE_ID, *REVIEW_FIELDS])
    changed = {  # sample id -> review; written by sample id, so no field needs a lookup by candidate
        sid: reviews[cid]
        for sid, cid, *old in zip(sample_ids, cids, *current, strict=True)
        if dict(zip(REVIEW_FIELDS, old, strict=True)) != reviews[cid]
    }
    if changed:
        for name in REVIEW_FIELDS:
            dataset.set_values(name, {sid: r[name] for sid, r in changed.items()}, key_field="id")
    return len(changed), set(cids)


class _Tally:
    """What a pull met besides reviews: invalid annotations and stray tasks, the first few named."""

    def __init__(self) -> None:
        self.invalid: list[str] = []
        self.invalid_count = 0
        self.strays: list[str] = []
        self.stray_count = 0

    def add_invalid(self, task: dict[str, Any], candidate: str, entries: list[str]) -> None:
        for entry in entries:
            self.invalid_count += 1
            if len(self.invalid) < SHOWN_PROBLEMS:
                self.invalid.append(f"task {task['id']} ({candidate}) {entry}")

    def add_stray(self, task_id: Any, why: str) -> None:
        self.stray_count += 1
        if len(self.strays) < SHOWN_PROBLEMS:
            self.strays.append(f"task {task_id}: {why}")


def _candidates_of(task: dict[str, Any]) -> list[str] | None:
    """The candidate ids a task's page shows, in slot order; None for a task imported by hand.

    Every task curate pushes names its (first) candidate in `candidate_id`; a page of several lists
    them all in `candidate_ids`, starting with that one. A task without a `candidate_id` string was
    not pushed by curate; a list that does not start with it (or repeats an id) is not believed: the
    task counts as the single candidate it names, and answers for other slots are reported.
    """
    data = task.get("data")
    found = data.get(ds.CANDIDATE_ID) if isinstance(data, dict) else None
    if not isinstance(found, str):
        return None
    many = data.get(CANDIDATE_IDS)
    believed = isinstance(many, list) and all(isinstance(c, str) for c in many) and many[:1] == [found]
    return many if believed and len(set(many)) == len(many) else [found]


def _per_candidate(task: dict[str, Any], candidates: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """A task as one task per candidate of its page, each holding that candidate's share of every
    annotation (curation/review/annotation_rules.py `split_page`), and the answers that fit no slot.

    Everything after this (checks, votes, the kept delta, status, agreement) sees candidates, never
    pages: a task from before pages (no `candidate_ids`) comes back as it is.
    """
    if CANDIDATE_IDS not in task["data"]:
        return [task], []
    shares: list[list[dict[str, Any]]] = [[] for _ in candidates]
    strays: list[str] = []
    for annotation in task.get("annotations") or []:
        slots, lost = split_page(annotation, len(candidates))
        strays += [f"{annotator(annotation)}: {entry}" for entry in lost]
        for slot, share in slots.items():
            shares[slot].append(share)
    return [
        {
            **task,
            # a page of one keeps its data: the Data Manager columns written there are compared with it
            **({"slot": slot, "data": {ds.CANDIDATE_ID: cid}} if len(candidates) > 1 else {}),
            "annotations": shares[slot],
        }
        for slot, cid in enumerate(candidates)
    ], strays


@writes("review")
@keeps_summary("review")  # status reads what it wrote without starting FiftyOne
def pull(
    ws: Workspace,
    url: str | None = None,
    token: str | None = None,
    full: bool = False,
    progress: ProgressFn = no_progress,
) -> PullReport:
    """Read the tasks changed since the last pull, a chunk at a time, and write their reviews onto the samples.

    Memory holds at most `review.pull_in_flight` + 1 chunks of ~`review.pull_page_size` tasks (the
    one written and those Label Studio is exporting meanwhile), whatever the project's size. Each
    chunk's reviews are written before the next chunk is taken, and only those that differ from the samples, so
    pulling twice changes nothing the second time. The tasks read go, slimmed to ids, update time
    and annotations, into a delta renamed into place only when the pull ends; the pull's start is
    recorded last. A pull that dies therefore leaves no delta and no new start: the next one reads
    the same tasks again, and nothing is lost.

    Args:
        full: Read every task, not only those touched since the last pull. Saving or deleting an
            annotation stamps its task; a bulk action in the Data Manager (e.g. "Delete annotations")
            or deleting a task does not, so pull with `full` after one. Samples whose task is gone
            lose their review, and the delta (always written) supersedes what came before.
    """
    conn = connect(ws, url, token)
    config = labeling_config(ws)
    project_id = project_id_of(ws)
    project = conn.project(project_id)
    if project is None:
        raise CurateError(f"project {project_id} no longer exists at {conn.url}; push again to recreate it")
    state_path = _state_file(ws)
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    same_project = state.get("url") == conn.url and state.get("project_id") == project_id
    after = datetime.fromisoformat(state["after"]) if same_project and not full else None
    recent: dict[str, str] = state.get("recent", {}) if after else {}
    started = conn.server_time()
    next_after = started - SETTLE

    dataset = ds.open_dataset(ws)
    ensure_review_fields(dataset)
    dataset.create_index(ds.CANDIDATE_ID)  # idempotent; each chunk looks its samples up by it
    folder = pulls_dir(ws)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.partial"):  # left by a pull that was killed
        stale.unlink()
    raw_path = new_delta_name(folder, full)
    partial = raw_path.with_name(raw_path.name + ".partial")
    read = changed = kept = 0
    tally = _Tally()
    seen: set[str] = set()
    next_recent: dict[str, str] = {}
    try:
        with gzip.open(partial, "wt", encoding="utf-8") as raw:
            settings = ws.config.review
            for tasks, remaining in task_chunks(
                conn, project_id, settings.pull_page_size, after, settings.pull_in_flight
            ):
                reviews: dict[str, dict[str, Any]] = {}
                named = []
                for page in tasks:
                    candidates = _candidates_of(page)
                    if candidates is None:
                        tally.add_stray(page.get("id"), "names no candidate (imported by hand?)")
                        continue
                    slots, strays = _per_candidate(page, candidates)
                    named += slots
                    for entry in strays:
                        tally.add_invalid(page, "page", [entry])
                for task in named:
                    candidate = task["data"][ds.CANDIDATE_ID]
                    reviews[candidate] = aggregate(task.get("annotations") or [], config)
                    tally.add_invalid(task, candidate, reviews[candidate][ds.REVIEW_INVALID] or [])
                    task_id, stamp = str(task["id"]), task.get("updated_at") or ""
                    if stamp and datetime.fromisoformat(stamp) > next_after:
                        next_recent[task_id] = stamp  # the next pull reads it again
                    if recent.get(task_id) != stamp:  # not a re-read of what the last pull kept
                        raw.write(json.dumps(slim_task(task)) + "\n")
                        kept += 1
                written, found = _write_reviews(dataset, reviews) if reviews else (0, set())
                changed += written
                seen |= found
                for task in named:
                    if task["data"][ds.CANDIDATE_ID] not in found:
                        tally.add_stray(
                            task["id"],
                            f"names candidate {task['data'][ds.CANDIDATE_ID]!a}, not in the dataset",
                        )
                # a page of several candidates has no one value for a column
                conn.show_reviews(project_id, [t for t in named if "slot" not in t], reviews)
                read += len(tasks)
                progress("pull reviews", read, read - len(tasks) + remaining)
        cleared = _clear_gone(dataset, seen) if full else 0
        if kept or full:  # a full pull's delta says which tasks exist, even when none does
            partial.rename(raw_path)
        else:
            partial.unlink()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    atomic_write_json(
        state_path,
        {"url": conn.url, "project_id": project_id, "after": next_after.isoformat(), "recent": next_recent},
    )
    save_review_views(dataset, ws.config.export.min_quality)
    return PullReport(
        tasks=project["task_number"],
        annotated=project["num_tasks_with_annotations"],
        read=read,
        counts=count_reviews(dataset, ws.config.export.min_quality),
        changed=changed + cleared,
        raw_path=raw_path if kept or full else None,
        invalid=tally.invalid,
        invalid_count=tally.invalid_count,
        strays=tally.strays,
        stray_count=tally.stray_count,
        cleared=cleared,
    )


def _clear_gone(dataset: Any, seen: set[str]) -> int:
    """Remove the reviews of samples no task of the project names any more (after a full read)."""
    from fiftyone import ViewField as F

    reviewed = dataset.match(F(ds.REVIEW_DECISION).exists() | F(ds.REVIEW_INVALID).exists())
    gone = set(reviewed.values(ds.CANDIDATE_ID)) - seen
    return _write_reviews(dataset, {c: dict.fromkeys(REVIEW_FIELDS) for c in gone})[0] if gone else 0

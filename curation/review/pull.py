"""Bring reviews back: pull Label Studio's annotations, aggregate annotators, write them onto FiftyOne.

A pull reads only the tasks Label Studio touched since the previous pull, a chunk at a time, and
writes only the samples whose aggregated review changed, so pulling twice changes nothing the
second time and a 100K-task project never sits in memory whole. What each pull read is kept, gzipped,
under review/pulls/<timestamp>.jsonl.gz (never overwritten): replayed in order, the deltas say what
the server said about any task at any pull, and `status` computes agreement from them.
"""

from __future__ import annotations

import gzip
import json
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.progress import ProgressFn, no_progress
from curation.core.workspace import Workspace, atomic_write_json
from curation.review.agreement import krippendorff_alpha
from curation.review.client import Connection, connect
from curation.review.project import CAPTION_BOX, DECISION, IMAGE, QUALITY, REASONS, project_file

REVIEW_FIELDS = (
    ds.REVIEW_DECISION,
    ds.REVIEW_QUALITY,
    ds.REVIEW_ANNOTATORS,
    ds.REVIEW_AGREEMENT,
    ds.REVIEW_REASONS,
    ds.CAPTION_FIXED,
)
"""Every field a pull writes, in one order: a sample's review is this tuple's values."""


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


def _values(annotation: dict[str, Any]) -> dict[str, Any]:
    """One annotation's answers by control name."""
    out: dict[str, Any] = {}
    for item in annotation.get("result") or []:
        value = item.get("value", {})
        name = item.get("from_name")
        if name in (DECISION, REASONS):
            out[name] = value.get("choices") or []
        elif name == QUALITY and value.get("rating"):
            out[name] = float(value["rating"])
        elif name == CAPTION_BOX:
            text = " ".join(t.strip() for t in value.get("text") or [] if t and t.strip())
            if text:
                out[name] = text
    return out


def aggregate(annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """Several annotators -> one review: majority decision, mean quality, agreement, reasons, caption.

    Skipped (cancelled) annotations do not vote. A tie is a reject: export keeps only candidates a
    clear majority accepted. Agreement is the fraction of votes for the winning decision. The most
    recently updated non-empty corrected caption wins. No votes at all gives all-None fields, so
    deleting annotations in Label Studio un-reviews the candidate on the next pull.
    """
    answers = [(a.get("updated_at") or "", _values(a)) for a in annotations if not a.get("was_cancelled")]
    votes = [v[DECISION][0] for _, v in answers if v.get(DECISION)]
    if not votes:
        return dict.fromkeys(REVIEW_FIELDS)
    counts = Counter(votes)
    top = max(counts.values())
    decision = ds.ACCEPT if counts[ds.ACCEPT] == top and counts[ds.REJECT] < top else ds.REJECT
    ratings = [v[QUALITY] for _, v in answers if QUALITY in v]
    captions = [v[CAPTION_BOX] for _, v in sorted(answers, key=lambda x: x[0]) if CAPTION_BOX in v]
    return {
        ds.REVIEW_DECISION: decision,
        ds.REVIEW_QUALITY: round(statistics.fmean(ratings), 4) if ratings else None,
        ds.REVIEW_ANNOTATORS: len(votes),
        ds.REVIEW_AGREEMENT: round(counts[decision] / len(votes), 4),
        ds.REVIEW_REASONS: sorted({r for _, v in answers for r in v.get(REASONS, [])}),
        ds.CAPTION_FIXED: captions[-1] if captions else None,
    }


@dataclass
class Agreement:
    """Agreement beyond the majority vote, from one raw export: alpha per question, who did what."""

    decision_alpha: float | None
    quality_alpha: float | None
    overlapped: int  # tasks with two or more votes
    per_annotator: dict[str, tuple[int, int]]  # annotator -> (annotations, accepts)

    def lines(self) -> list[str]:
        def fmt(alpha: float | None) -> str:
            return "n/a" if alpha is None else f"{alpha:.3f}"

        if not self.overlapped:
            return ["agreement: no task has two votes yet (push with --overlap K to measure it)"]
        lines = [
            (
                f"Krippendorff's alpha on {self.overlapped} tasks with >= 2 votes: decision "
                f"{fmt(self.decision_alpha)} (nominal), quality {fmt(self.quality_alpha)} (interval); "
                f"disputed ones: view `{ds.VIEW_DISPUTED}`"
            )
        ]
        lines += [
            f"  {who}: {n} annotations, {acc} accepts" for who, (n, acc) in sorted(self.per_annotator.items())
        ]
        return lines


Vote = tuple[str, str | None, float | None]
"""One annotator's (name, decision, quality) on a task: what agreement needs of an annotation."""


def task_votes(task: dict[str, Any]) -> list[Vote]:
    """A task's non-cancelled annotations as votes."""
    votes: list[Vote] = []
    for annotation in task.get("annotations") or []:
        if annotation.get("was_cancelled"):
            continue
        v = _values(annotation)
        who = annotation.get("completed_by")
        name = str(who.get("email") or who.get("id")) if isinstance(who, dict) else f"user {who}"
        votes.append((name, (v.get(DECISION) or [None])[0], v.get(QUALITY)))
    return votes


def agreement(tasks: Iterable[list[Vote]]) -> Agreement:
    """Alpha for decision and quality, and per-annotator counts, over each task's votes."""
    decisions: list[list[str]] = []
    ratings: list[list[float]] = []
    per: dict[str, list[int]] = {}
    for votes in tasks:
        decisions.append([d for _, d, _ in votes if d])
        ratings.append([q for _, _, q in votes if q is not None])
        for name, decision, _ in votes:
            counts = per.setdefault(name, [0, 0])
            counts[0] += 1
            counts[1] += decision == ds.ACCEPT
    return Agreement(
        krippendorff_alpha(decisions),
        krippendorff_alpha(ratings, interval=True),
        sum(len(d) >= 2 for d in decisions),
        {k: (n, acc) for k, (n, acc) in per.items()},
    )


@dataclass
class PullReport:
    tasks: int  # in the project
    annotated: int  # tasks with an annotation, as the server counts them
    read: int  # tasks this pull read: those touched since the previous pull (all on the first)
    accepted: int  # across the dataset after the pull
    rejected: int
    changed: int  # samples whose review this pull rewrote
    raw_path: Path | None  # this pull's delta of raw tasks; None when nothing was new
    unrated_accepts: int = 0

    def summary(self) -> str:
        unrated = (
            f"; {self.unrated_accepts} accepted without a quality rating: no --min-quality export includes them"
            if self.unrated_accepts
            else ""
        )
        raw = f"raw delta {self.raw_path}" if self.raw_path else "nothing new to keep"
        return (
            f"review pull: {self.annotated}/{self.tasks} tasks annotated, {self.read} read (changed since the "
            f"last pull), {self.accepted} accepted, {self.rejected} rejected, {self.changed} samples updated "
            f"({raw}){unrated}"
        )


def _ensure_review_fields(dataset: Any) -> None:
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
    if not dataset.has_sample_field(ds.REVIEW_REASONS):
        dataset.add_sample_field(ds.REVIEW_REASONS, fo.ListField, subfield=fo.StringField)


SETTLE = timedelta(minutes=2)
"""How far before a pull's start the next pull looks back: an annotation saved just before the
start may commit after the chunk holding its task was read. Tasks read twice this way are not kept twice."""


def pulls_dir(ws: Workspace) -> Path:
    return ws.review_dir / "pulls"


def _state_file(ws: Workspace) -> Path:
    return pulls_dir(ws) / "state.json"


def _raw_name(ws: Workspace) -> Path:
    """A UTC timestamp name that sorts in pull order and is never reused."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = pulls_dir(ws) / f"{stamp}.jsonl.gz"
    n = 1
    while path.exists():
        path = path.with_name(f"{stamp}-{n}.jsonl.gz")
        n += 1
    return path


def _raw_task(task: dict[str, Any]) -> dict[str, Any]:
    """What a delta keeps of a task: its ids, update time and annotations exactly as received."""
    return {
        "id": task["id"],
        "updated_at": task.get("updated_at"),
        "data": {ds.CANDIDATE_ID: task["data"][ds.CANDIDATE_ID]},
        "annotations": task.get("annotations") or [],
    }


def _write_reviews(dataset: Any, reviews: dict[str, dict[str, Any]]) -> int:
    """Write the reviews that differ from what the samples hold; returns how many did."""
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
    return len(changed)


def _project_id(ws: Workspace) -> int:
    path = project_file(ws)
    if not path.exists():
        raise CurateError(f"nothing pushed yet from {ws.root}: run `curate review push` first")
    return int(json.loads(path.read_text())["project_id"])


def pull(
    ws: Workspace,
    url: str | None = None,
    token: str | None = None,
    full: bool = False,
    progress: ProgressFn = no_progress,
) -> PullReport:
    """Read the tasks changed since the last pull, a chunk at a time, and write their reviews onto the samples.

    Memory holds two chunks (`review.pull_page_size` tasks each: the one written and the one Label
    Studio is exporting meanwhile), whatever the project's size. Each chunk's reviews are written
    before the next chunk is taken, and only those that differ from the samples, so
    pulling twice changes nothing the second time. The tasks read go, slimmed to ids, update time
    and annotations, into review/pulls/<timestamp>.jsonl.gz, renamed into place only when the pull
    ends; the pull's start is recorded last. A pull that dies therefore leaves no delta and no new
    start: the next one reads the same tasks again, and nothing is lost.

    Args:
        full: Read every task, not only those touched since the last pull. Saving or deleting an
            annotation stamps its task; a bulk action in the Data Manager (e.g. "Delete annotations")
            does not, so pull with `full` after one. Its delta holds every task: replayed, it
            supersedes what came before.
    """
    conn = connect(ws, url, token)
    project_id = _project_id(ws)
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
    _ensure_review_fields(dataset)
    dataset.create_index(ds.CANDIDATE_ID)  # idempotent; each chunk looks its samples up by it
    folder = pulls_dir(ws)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.partial"):  # left by a pull that was killed
        stale.unlink()
    raw_path = _raw_name(ws)
    partial = raw_path.with_name(raw_path.name + ".partial")
    read = changed = kept = 0
    next_recent: dict[str, str] = {}
    try:
        with gzip.open(partial, "wt", encoding="utf-8") as raw:
            for tasks, remaining in conn.task_chunks(project_id, ws.config.review.pull_page_size, after):
                reviews: dict[str, dict[str, Any]] = {}
                for task in tasks:
                    if ds.CANDIDATE_ID not in task.get("data", {}):
                        continue
                    reviews[task["data"][ds.CANDIDATE_ID]] = aggregate(task.get("annotations") or [])
                    task_id, stamp = str(task["id"]), task.get("updated_at") or ""
                    if stamp and datetime.fromisoformat(stamp) > next_after:
                        next_recent[task_id] = stamp  # the next pull reads it again
                    if recent.get(task_id) != stamp:  # not a re-read of what the last pull kept
                        raw.write(json.dumps(_raw_task(task)) + "\n")
                        kept += 1
                changed += _write_reviews(dataset, reviews) if reviews else 0
                conn.show_reviews(project_id, tasks, reviews)
                read += len(tasks)
                progress("pull reviews", read, read - len(tasks) + remaining)
        if kept:
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
    from fiftyone import ViewField as F

    dataset.save_view(
        ds.VIEW_DISPUTED,
        dataset.match(F(ds.REVIEW_AGREEMENT) < 1),
        description="annotators disagreed on the decision (review_agreement < 1): the majority decided",
        overwrite=True,
    )
    decisions = dataset.count_values(ds.REVIEW_DECISION)
    unrated = dataset.match(
        (F(ds.REVIEW_DECISION) == ds.ACCEPT) & (F(ds.REVIEW_QUALITY) == None)
    )  # a MongoDB expression
    return PullReport(
        project["task_number"],
        project["num_tasks_with_annotations"],
        read,
        decisions.get(ds.ACCEPT, 0),
        decisions.get(ds.REJECT, 0),
        changed,
        raw_path if kept else None,
        len(unrated),
    )


def latest_votes(ws: Workspace) -> dict[str, list[Vote]]:
    """Each candidate's votes as the newest delta holding its task says: the deltas replayed in order.

    Tasks without votes are dropped as they are met, so this holds the annotated tasks only.
    """
    votes: dict[str, list[Vote]] = {}
    for path in sorted(pulls_dir(ws).glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                task = json.loads(line)
                cid = task["data"][ds.CANDIDATE_ID]
                found = task_votes(task)
                if found:
                    votes[cid] = found
                else:
                    votes.pop(cid, None)
    return votes


# -- status ------------------------------------------------------------------------------------
@dataclass
class StatusReport:
    url: str
    project_id: int
    tasks: int
    annotated: int
    accepted: int
    rejected: int
    mean_agreement: float | None
    per_concept: dict[str, tuple[int, int]]  # concept -> (accepted, reviewed), as of the last pull
    agreement: Agreement | None = None  # from the pulled deltas; None before any annotation was pulled

    def summary(self) -> str:
        agreement = "n/a" if self.mean_agreement is None else f"{self.mean_agreement:.2f}"
        lines = [
            f"project {self.project_id} at {self.url}: {self.tasks} tasks, {self.annotated} annotated",
            f"last pull: {self.accepted} accepted, {self.rejected} rejected, mean annotator agreement {agreement}",
        ]
        lines += [f"  {c}: {a}/{r} accepted" for c, (a, r) in sorted(self.per_concept.items())]
        lines += self.agreement.lines() if self.agreement else []
        return "\n".join(lines)


def status(ws: Workspace, url: str | None = None, token: str | None = None) -> StatusReport:
    """Task counts from the server, decisions and agreement from FiftyOne (what the last pull wrote)."""
    conn = connect(ws, url, token)
    project_id = _project_id(ws)
    project = conn.get_json(f"/api/projects/{project_id}", "project lookup")
    dataset = ds.open_dataset(ws)
    _ensure_review_fields(dataset)
    decisions, agreements, concepts = dataset.values([ds.REVIEW_DECISION, ds.REVIEW_AGREEMENT, ds.CONCEPTS])
    per_concept: dict[str, list[int]] = {}
    for decision, names in zip(decisions, concepts, strict=True):
        if decision is None:
            continue
        for name in names or []:
            counts = per_concept.setdefault(name, [0, 0])
            counts[0] += decision == ds.ACCEPT
            counts[1] += 1
    given = [a for a in agreements if a is not None]
    votes = latest_votes(ws)
    return StatusReport(
        url=conn.url,
        project_id=project_id,
        tasks=project["task_number"],
        annotated=project["num_tasks_with_annotations"],
        accepted=decisions.count(ds.ACCEPT),
        rejected=decisions.count(ds.REJECT),
        mean_agreement=statistics.fmean(given) if given else None,
        per_concept={k: (a, r) for k, (a, r) in per_concept.items()},
        agreement=_named(agreement(votes.values()), conn) if votes else None,
    )


def _named(found: Agreement, conn: Connection) -> Agreement:
    """Annotators by email: the task API names them by user id only, which nobody recognises."""
    users = conn.get_json("/api/users/", "user list")
    emails = {f"user {u['id']}": u["email"] for u in users if u.get("email")}
    found.per_annotator = {emails.get(who, who): counts for who, counts in found.per_annotator.items()}
    return found

"""`curate review status`: tasks on the server, reviews in FiftyOne, agreement from the pulled deltas.

Counts use the one acceptance rule (curation/core/acceptance.py), so they equal the App's saved
views, `curate status` and the export. The reviews are read from the summary the dataset's writers
record (curation/core/dataset_summary.py): FiftyOne is neither imported nor started unless that
summary cannot be trusted or `--recount` asks for the dataset itself. Agreement is measured where it means something: the mean
share of votes for the decision over candidates with two or more votes (one vote agrees with
itself), and Krippendorff's alpha over the votes the deltas hold, valid annotations only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from curation.core import dataset as ds
from curation.core import dataset_summary
from curation.core.acceptance import ReviewCounts, count_written
from curation.core.dataset_summary import ExportTake
from curation.core.errors import CurateError
from curation.core.labeling_config import LabelingConfig, labeling_config
from curation.core.workspace import Workspace
from curation.review.agreement import krippendorff_alpha
from curation.review.annotation_rules import Vote, ballots
from curation.review.client import Connection, connect
from curation.review.deltas import replay
from curation.review.project import project_id_of

AnnotatorVote = tuple[str, Vote | None]
"""One annotator's vote on a task, None when their annotation was invalid."""


def task_votes(task: dict[str, Any], config: LabelingConfig) -> list[AnnotatorVote]:
    """A task's non-cancelled annotations as the pull counts them (`ballots`), each a vote or None when
    it is not one: the page could not have made it, or its annotator annotated the task again later."""
    return [(b.who, b.vote) for b in ballots(task.get("annotations") or [], config)]


@dataclass
class Agreement:
    """Agreement beyond the majority vote: alpha per question, who did what."""

    decision_alpha: float | None
    quality_alpha: float | None
    overlapped: int  # tasks with two or more valid votes
    per_annotator: dict[str, tuple[int, int, int]]  # annotator -> (valid annotations, accepts, invalid)

    def lines(self) -> list[str]:
        def fmt(alpha: float | None) -> str:
            return "n/a" if alpha is None else f"{alpha:.3f}"

        alpha = (
            f"Krippendorff's alpha on {self.overlapped} tasks with >= 2 valid votes: decision "
            f"{fmt(self.decision_alpha)} (nominal), quality {fmt(self.quality_alpha)} (interval, "
            f"accepts' stars); disputed ones: view `{ds.VIEW_DISPUTED}`"
        )
        lines = [
            alpha if self.overlapped else "agreement: no task has two valid votes yet (push with --overlap K)"
        ]
        return lines + [
            f"  {who}: {n} annotations, {acc} accepts" + (f", {bad} invalid (not counted)" if bad else "")
            for who, (n, acc, bad) in sorted(self.per_annotator.items())
        ]


def agreement(tasks: list[list[AnnotatorVote]]) -> Agreement:
    """Alpha for decision and quality, and per-annotator counts, over each task's votes."""
    decisions: list[list[str]] = []
    ratings: list[list[float]] = []
    per: dict[str, list[int]] = {}
    for votes in tasks:
        valid = [v for _, v in votes if v is not None]
        decisions.append([v.decision for v in valid])
        ratings.append([float(v.stars) for v in valid if v.stars is not None])
        for name, vote in votes:
            counts = per.setdefault(name, [0, 0, 0])
            counts[0] += vote is not None
            counts[1] += vote is not None and vote.decision == ds.ACCEPT
            counts[2] += vote is None
    return Agreement(
        krippendorff_alpha(decisions),
        krippendorff_alpha(ratings, interval=True),
        sum(len(d) >= 2 for d in decisions),
        {k: (n, acc, bad) for k, (n, acc, bad) in per.items()},
    )


@dataclass
class StatusReport:
    url: str
    project_id: int
    tasks: int
    annotated: int
    counts: ReviewCounts
    invalid_annotations: int
    mean_agreement: float | None  # over candidates with two or more valid votes
    per_concept: dict[str, tuple[int, int, int]]  # concept -> (reviewed, accepted, a default export takes)
    agreement: Agreement | None = None  # from the pulled deltas; None before any annotation was pulled
    notes: list[str] = field(default_factory=list)  # where the review counts came from, when it matters
    exported: ExportTake | None = None  # what a default export takes of the accepted for export

    @property
    def accepted(self) -> int:
        return self.counts.accepted

    @property
    def rejected(self) -> int:
        return self.counts.rejected

    def summary(self) -> str:
        agreement = "n/a" if self.mean_agreement is None else f"{self.mean_agreement:.2f}"
        lines = [
            f"project {self.project_id} at {self.url}: {self.tasks} tasks, {self.annotated} annotated",
            f"last pull: {self.counts.words()}",
            f"mean share of votes for the decision where >= 2 voted: {agreement}",
        ]
        if self.exported and (self.exported.copies or self.exported.stale):
            lines.append(
                f"a default `curate export` takes {len(self.exported.taken)} of the {self.counts.for_export} "
                f"for export: {len(self.exported.copies)} near-duplicate copies of one taken and "
                f"{len(self.exported.stale)} stale candidates are left out (`curate status` counts the same)"
            )
        if self.invalid_annotations:
            lines.append(
                f"{self.invalid_annotations} invalid annotations on {self.counts.invalid} candidates, not "
                f"counted: view `{ds.VIEW_INVALID}`"
            )
        lines += [
            f"  {c}: {r} reviewed, {a} accepted, {e} for export"
            for c, (r, a, e) in sorted(self.per_concept.items())
        ]
        lines += self.agreement.lines() if self.agreement else []
        return "\n".join(lines)


def status(
    ws: Workspace, url: str | None = None, token: str | None = None, recount: bool = False
) -> StatusReport:
    """Task counts from the server, reviews as the last pull wrote them, alpha from the deltas.

    Args:
        recount: Count the reviews in the FiftyOne dataset itself, not in the summary its writers recorded.
    """
    conn = connect(ws, url, token)
    project_id = project_id_of(ws)
    project = conn.get_json(f"/api/projects/{project_id}", "project lookup")
    reading = dataset_summary.read(ws, recount)
    if reading.summary is None:
        raise CurateError(
            f"no FiftyOne dataset {ds.dataset_name(ws)!r} yet: run `curate index -w {ws.root}` first"
        )
    min_quality = ws.config.export.min_quality
    exported = dataset_summary.export_take(ws, reading.summary)
    written = []
    per_concept: dict[str, Counter[str]] = {}
    invalid_annotations = 0
    agreements = []
    for row in reading.summary.rows():
        review = dataset_summary.written_review(row)
        written.append(review)
        invalid_annotations += len(review.invalid or [])
        if review.several_votes and review.agreement is not None:
            agreements.append(review.agreement)
        for concept in row[ds.CONCEPTS] or []:
            counts = per_concept.setdefault(concept, Counter())
            counts["reviewed"] += review.reviewed
            counts["accepted"] += review.accepted
            counts["for export"] += row[ds.CANDIDATE_ID] in exported.taken
    config = labeling_config(ws)
    votes = replay(ws, lambda task: task_votes(task, config) or None)
    return StatusReport(
        url=conn.url,
        project_id=project_id,
        tasks=project["task_number"],
        annotated=project["num_tasks_with_annotations"],
        counts=count_written(written, min_quality),
        invalid_annotations=invalid_annotations,
        mean_agreement=sum(agreements) / len(agreements) if agreements else None,
        per_concept={
            c: (n["reviewed"], n["accepted"], n["for export"])
            for c, n in per_concept.items()
            if n["reviewed"]
        },
        agreement=_named(agreement(list(votes.values())), conn) if votes else None,
        notes=reading.notes,
        exported=exported,
    )


def _named(found: Agreement, conn: Connection) -> Agreement:
    """Annotators by email: the task API names them by user id only, which nobody recognises."""
    users = conn.get_json("/api/users/", "user list")
    emails = {f"user {u['id']}": u["email"] for u in users if u.get("email")}
    found.per_annotator = {emails.get(who, who): counts for who, counts in found.per_annotator.items()}
    return found

"""Bring reviews back: pull Label Studio's annotations, aggregate annotators, write them onto FiftyOne.

Each pull keeps Label Studio's raw export under review/pulls/<timestamp>.json (never overwritten),
so any decision can be traced to what the server said at the time, and writes only the samples
whose aggregated review changed, so pulling twice changes nothing the second time.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from curation import dataset as ds
from curation.errors import CurateError
from curation.progress import ProgressFn, no_progress
from curation.review import CAPTION_BOX, DECISION, IMAGE, QUALITY, REASONS, connect, project_file
from curation.workspace import Workspace, atomic_write_bytes

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


def krippendorff_alpha(units: list[list[Any]], interval: bool = False) -> float | None:
    """Krippendorff's alpha over units (tasks) holding each annotator's value; nominal or interval.

    Units with fewer than two values cannot be paired and are left out, as the coefficient defines.
    None when nothing is pairable or every value is the same (agreement is then undefined, not 1).
    """
    def delta(c: Any, k: Any) -> float:
        return float(c - k) ** 2 if interval else float(c != k)

    pairable = [u for u in units if len(u) >= 2]
    coincidences: Counter[tuple[Any, Any]] = Counter()
    for unit in pairable:
        for i, c in enumerate(unit):
            for j, k in enumerate(unit):
                if i != j:
                    coincidences[c, k] += 1 / (len(unit) - 1)
    totals: Counter[Any] = Counter()
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    expected = sum(totals[c] * totals[k] * delta(c, k) for c in totals for k in totals)
    if n < 2 or expected == 0:
        return None
    observed = sum(weight * delta(c, k) for (c, k), weight in coincidences.items())
    return 1 - (n - 1) * observed / expected


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
        lines += [f"  {who}: {n} annotations, {acc} accepts" for who, (n, acc) in sorted(self.per_annotator.items())]
        return lines


def agreement(tasks: list[dict[str, Any]]) -> Agreement:
    """Alpha for decision and quality, and per-annotator counts, over a raw export's tasks."""
    decisions: list[list[str]] = []
    ratings: list[list[float]] = []
    per: dict[str, list[int]] = {}
    for task in tasks:
        votes = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        answers = [(a, _values(a)) for a in votes]
        decisions.append([v[DECISION][0] for _, v in answers if v.get(DECISION)])
        ratings.append([v[QUALITY] for _, v in answers if QUALITY in v])
        for annotation, v in answers:
            who = annotation.get("completed_by")
            name = str(who.get("email") or who.get("id")) if isinstance(who, dict) else f"user {who}"
            counts = per.setdefault(name, [0, 0])
            counts[0] += 1
            counts[1] += (v.get(DECISION) or [None])[0] == ds.ACCEPT
    return Agreement(
        krippendorff_alpha(decisions),
        krippendorff_alpha(ratings, interval=True),
        sum(len(d) >= 2 for d in decisions),
        {k: (n, acc) for k, (n, acc) in per.items()},
    )


@dataclass
class PullReport:
    tasks: int
    annotated: int
    accepted: int
    rejected: int
    changed: int
    export_path: Path
    unrated_accepts: int = 0

    def summary(self) -> str:
        unrated = (
            f"; {self.unrated_accepts} accepted without a quality rating: no --min-quality export includes them"
            if self.unrated_accepts
            else ""
        )
        return (
            f"review pull: {self.annotated}/{self.tasks} tasks annotated, {self.accepted} accepted, "
            f"{self.rejected} rejected, {self.changed} samples updated (raw export {self.export_path}){unrated}"
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


def _save_raw(ws: Workspace, raw: bytes) -> Path:
    """Keep the export exactly as received, under a UTC timestamp name that is never reused."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = ws.review_dir / "pulls" / f"{stamp}.json"
    n = 1
    while path.exists():
        path = path.with_name(f"{stamp}-{n}.json")
        n += 1
    atomic_write_bytes(path, raw)
    return path


def pull(
    ws: Workspace, url: str | None = None, token: str | None = None, progress: ProgressFn = no_progress
) -> PullReport:
    """Export every task with its annotations and write the aggregated reviews onto the samples.

    Only samples whose review changed are written, so pulling twice changes nothing the second time.
    """
    conn = connect(ws, url, token)
    path = project_file(ws)
    if not path.exists():
        raise CurateError(f"nothing pushed yet from {ws.root}: run `curate review push` first")
    project_id = json.loads(path.read_text())["project_id"]

    raw = conn.export_tasks(project_id, f"project {project_id} no longer exists at {conn.url}; push again to recreate it")
    export_path = _save_raw(ws, raw)
    reviews = {
        t["data"][ds.CANDIDATE_ID]: aggregate(t.get("annotations") or [])
        for t in json.loads(raw)
        if ds.CANDIDATE_ID in t.get("data", {})
    }
    dataset = ds.open_dataset(ws)
    _ensure_review_fields(dataset)
    from fiftyone import ViewField as F

    view = dataset.match(F(ds.CANDIDATE_ID).is_in(list(reviews)))
    ids, *current = view.values([ds.CANDIDATE_ID, *REVIEW_FIELDS])
    stored = {
        cid: dict(zip(REVIEW_FIELDS, vals, strict=True)) for cid, *vals in zip(ids, *current, strict=True)
    }
    changed = {cid: reviews[cid] for cid, old in stored.items() if old != reviews[cid]}
    if changed:
        for name in REVIEW_FIELDS:
            dataset.set_values(name, {cid: r[name] for cid, r in changed.items()}, key_field=ds.CANDIDATE_ID)
    dataset.save_view(
        ds.VIEW_DISPUTED,
        dataset.match(F(ds.REVIEW_AGREEMENT) < 1),
        description="annotators disagreed on the decision (review_agreement < 1): the majority decided",
        overwrite=True,
    )
    progress("pull reviews", len(reviews), len(reviews))
    decisions = Counter(r[ds.REVIEW_DECISION] for r in reviews.values())
    return PullReport(
        len(reviews),
        len(reviews) - decisions[None],
        decisions[ds.ACCEPT],
        decisions[ds.REJECT],
        len(changed),
        export_path,
        sum(r[ds.REVIEW_DECISION] == ds.ACCEPT and r[ds.REVIEW_QUALITY] is None for r in reviews.values()),
    )


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
    agreement: Agreement | None = None  # from the last pull's raw export; None before any pull

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
    path = project_file(ws)
    if not path.exists():
        raise CurateError(f"nothing pushed yet from {ws.root}: run `curate review push` first")
    project_id = json.loads(path.read_text())["project_id"]
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
    pulls = sorted((ws.review_dir / "pulls").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return StatusReport(
        url=conn.url,
        project_id=project_id,
        tasks=project["task_number"],
        annotated=project["num_tasks_with_annotations"],
        accepted=decisions.count(ds.ACCEPT),
        rejected=decisions.count(ds.REJECT),
        mean_agreement=statistics.fmean(given) if given else None,
        per_concept={k: (a, r) for k, (a, r) in per_concept.items()},
        agreement=agreement(json.loads(pulls[-1].read_text())) if pulls else None,
    )

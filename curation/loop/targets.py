"""The shape of the accepted set against the `[curation]` targets: what `curate status` prints.

Every composition (concept set) the plans or `layout.compositions_file` name gets one target, the
largest of three lower bounds: `per_composition`; `per_concept` spread over the compositions that
hold the concept; and its bucket's share (`buckets`, by concept count) of the total that
`per_composition` implies, spread over the bucket's compositions. Meeting every composition's
target therefore meets the concept and bucket targets too, and `curate topup` only ever has to
plan per composition.

Counts come from two places: reviews from the FiftyOne dataset (what `curate review pull` wrote, read
from the summary its writers record, curation/core/dataset_summary.py, without starting FiftyOne),
and pending work from the current plans (every candidate `curate generate` would make for them
that has no review yet: not generated, not indexed, not pushed or not annotated). The words are
those of the one acceptance rule (curation/core/acceptance.py): "accepted" is what a default export
takes (accepted for export: quality >= export.min_quality, and not a near-duplicate copy of another
accepted candidate); "left out" is accepted in review but not taken (lower quality, unrated, a
copy); "rejected" is rejected in review. Only the labeling config's reason names are counted: the
reasons reach the top-up's LLM prompt, and a review field may hold text from before pulls were checked.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from curation.core import dataset as ds
from curation.core import dataset_summary
from curation.core.config import CurationConfig
from curation.core.dataset_summary import DatasetSummary, export_take, written_review
from curation.core.labeling_config import labeling_config
from curation.core.records import LayoutPlan
from curation.core.workspace import Workspace

Composition = tuple[str, ...]
"""A concept set: sorted concept ids."""


def composition_key(concepts: Composition) -> str:
    """The set as exports name it: sorted ids joined by '+'."""
    return "+".join(sorted(concepts))


@dataclass(frozen=True)
class Targets:
    """Accepted images wanted: per composition (the one that is planned for), per bucket, per concept."""

    per_composition: dict[Composition, int]
    per_bucket: dict[int, int]
    per_concept: dict[str, int]

    @property
    def any(self) -> bool:
        return any(self.per_composition.values())


def compute_targets(compositions: list[Composition], config: CurationConfig) -> Targets:
    """Each composition's target, the largest of its three lower bounds (see the module docstring)."""
    by_bucket = Counter(len(c) for c in compositions)
    by_concept = Counter(concept for c in compositions for concept in c)
    total = config.per_composition * len(compositions)
    shares = {int(k): v for k, v in config.buckets.items()}
    share_sum = sum(shares.values())
    per_bucket = {
        n: math.ceil(round(total * shares.get(n, 0.0) / share_sum, 9)) if share_sum else 0
        for n in sorted(by_bucket)
    }
    per_composition = {}
    for c in compositions:
        bounds = [config.per_composition, math.ceil(per_bucket[len(c)] / by_bucket[len(c)])]
        bounds += [math.ceil(config.per_concept / by_concept[concept]) for concept in c]
        per_composition[c] = max(bounds)
    if not share_sum:  # no proportions chosen: a bucket wants what its compositions want
        per_bucket = {n: sum(t for c, t in per_composition.items() if len(c) == n) for n in per_bucket}
    per_concept = {concept: config.per_concept for concept in sorted(by_concept)}
    return Targets(per_composition, per_bucket, per_concept)


def planned_compositions(ws: Workspace, plans: list[LayoutPlan] | None = None) -> list[Composition]:
    """The concept sets the plans hold (`ws.plans()` unless given), then those of `layout.compositions_file`
    not planned yet."""
    from generators.compositions import load_allowed_sets

    planned = ws.plans() if plans is None else plans
    found: dict[Composition, None] = {tuple(sorted(p.concepts)): None for p in planned}
    allowed = load_allowed_sets(ws, ws.config.layout, set(ws.concepts())) or []
    found.update((tuple(sorted(s)), None) for s in allowed)
    return list(found)


@dataclass
class Counts:
    """Accepted (for export), left out, pending and rejected candidates against a target."""

    accepted: int = 0
    left_out: int = 0
    pending: int = 0
    rejected: int = 0
    target: int = 0

    @property
    def shortfall(self) -> int:
        """Accepted images still missing (pending ones may or may not close it)."""
        return max(0, self.target - self.accepted)

    def add(self, other: Counts) -> None:
        self.accepted += other.accepted
        self.left_out += other.left_out
        self.pending += other.pending
        self.rejected += other.rejected


@dataclass
class CompositionState(Counts):
    """One composition's counts, its observed acceptance rate and what its rejections said."""

    concepts: Composition = ()
    rate: float = 1.0
    reasons: Counter[str] = field(default_factory=Counter)
    """Review reasons of its rejected candidates, counted."""

    @property
    def key(self) -> str:
        return composition_key(self.concepts)

    @property
    def to_make(self) -> int:
        """New candidates needed: the shortfall divided by the acceptance rate, less those pending."""
        if not self.shortfall:
            return 0
        return max(0, math.ceil(round(self.shortfall / self.rate, 9)) - self.pending)


@dataclass
class PlanOutcome:
    """What review made of one plan's candidates (all seeds)."""

    items: int = 0
    reviewed: int = 0
    accepted: int = 0


@dataclass
class Shape:
    """The whole picture: per composition, per bucket (concept count), per concept, per plan."""

    compositions: list[CompositionState]
    buckets: dict[int, Counts]
    concepts: dict[str, Counts]
    plans: dict[str, PlanOutcome]
    plan_compositions: dict[str, Composition]
    """plan_id -> its composition, for every plan in plans.jsonl (file order)."""
    min_quality: float
    targets: Targets
    notes: list[str] = field(default_factory=list)
    """What to know about where the review counts came from (curation/core/dataset_summary.py)."""

    def table(self) -> str:
        """The status table; `to make` is what `curate topup` would ask for before its budget."""
        lines = [
            f"accepted = accepted in review with quality >= {self.min_quality:g}: what `curate export` takes",
            "left out = accepted in review but not taken (lower quality, unrated, a near-duplicate copy)",
            "",
        ]
        lines += [f"{'composition':<34} {_COLUMNS} {'rate':>5} {'to make':>8}"]
        for c in self.compositions:
            lines.append(f"{_row(c.key, c)} {c.rate:>5.2f} {c.to_make:>8}")
        lines += ["", f"{'bucket (concepts)':<34} {_COLUMNS}"]
        lines += [_row(f"{n} concepts", counts) for n, counts in sorted(self.buckets.items())]
        lines += ["", f"{'concept':<34} {_COLUMNS}"]
        lines += [_row(name, counts) for name, counts in sorted(self.concepts.items())]
        if orphans := [
            n for n, c in sorted(self.concepts.items()) if c.target and n not in self.targets.per_concept
        ]:
            lines += ["", f"in no composition, so no top-up can reach them: {', '.join(orphans)}"]
        return "\n".join(lines)


_COLUMNS = f"{'accepted':>8} {'left out':>8} {'pending':>8} {'rejected':>8} {'target':>7} {'short':>6}"


def _row(name: str, c: Counts) -> str:
    label = name if len(name) <= 34 else name[:31] + "..."
    return (
        f"{label:<34} {c.accepted:>8} {c.left_out:>8} {c.pending:>8} {c.rejected:>8} {c.target:>7} "
        f"{c.shortfall:>6}"
    )


ACCEPTED, LEFT_OUT, REJECTED = "accepted", "left out", "rejected"
"""What a reviewed candidate counts as here (see the module docstring)."""


@dataclass(frozen=True)
class Review:
    """A reviewed candidate as status counts it."""

    composition: Composition
    outcome: str  # ACCEPTED, LEFT_OUT or REJECTED
    reasons: tuple[str, ...]  # the labeling config's reason names only


def read_reviews(ws: Workspace, summary: DatasetSummary | None) -> dict[str, Review]:
    """candidate_id -> its review, for reviewed samples that are still part of the set.

    "Accepted" is what a default export takes (`export_take`, the export's own rule): an accepted
    candidate marked as a near-duplicate of another accepted one is left out, as the export leaves
    it out, so it fills no target.
    """
    if summary is None:
        return {}
    stale = ws.stale_candidates()
    taken = export_take(ws, summary, stale).taken
    known = set(labeling_config(ws).reasons)
    reviews = {}
    for row in summary.rows():
        cid = row[ds.CANDIDATE_ID]
        written = written_review(row)
        if not written.reviewed or cid is None or cid in stale:
            continue  # a stale candidate's review outlives it, but export skips it: it fills no target
        outcome = ACCEPTED if cid in taken else LEFT_OUT if written.accepted else REJECTED
        reasons = tuple(r for r in row[ds.REVIEW_REASONS] or [] if r in known)
        reviews[cid] = Review(tuple(sorted(row[ds.CONCEPTS] or [])), outcome, reasons)
    return reviews


def read_shape(ws: Workspace, recount: bool = False) -> Shape:
    """Counts per composition, bucket and concept, against the targets; no dataset yet means no reviews.

    Args:
        recount: Count the dataset's reviews in FiftyOne itself, not the summary its writers recorded.
    """
    from generators.work import plan_work

    config = ws.config.curation
    plans = ws.plans()
    compositions = planned_compositions(ws, plans)
    targets = compute_targets(compositions, config)
    reading = dataset_summary.read(ws, recount)
    reviews = read_reviews(ws, reading.summary)
    states = {c: CompositionState(concepts=c, target=targets.per_composition[c]) for c in compositions}
    for review in reviews.values():
        if (state := states.get(review.composition)) is None:
            continue
        if review.outcome == ACCEPTED:
            state.accepted += 1
        elif review.outcome == LEFT_OUT:
            state.left_out += 1
        else:
            state.rejected += 1
            state.reasons.update(review.reasons)
    plan_compositions = {p.plan_id: tuple(sorted(p.concepts)) for p in plans}
    outcomes = {plan_id: PlanOutcome() for plan_id in plan_compositions}
    for item in plan_work(ws, plans=plans):
        outcome = outcomes[item.plan.plan_id]
        outcome.items += 1
        if (review := reviews.get(item.candidate_id)) is None:
            states[plan_compositions[item.plan.plan_id]].pending += 1
        else:
            outcome.reviewed += 1
            outcome.accepted += review.outcome == ACCEPTED
    for state in states.values():
        prior = config.prior_reviews
        state.rate = (state.accepted + config.prior_acceptance * prior) / (
            state.accepted + state.left_out + state.rejected + prior
        )
    buckets = {n: Counts(target=t) for n, t in targets.per_bucket.items()}
    concepts = {name: Counts(target=config.per_concept) for name in ws.concepts()}  # in no composition too
    concepts.update((name, Counts(target=t)) for name, t in targets.per_concept.items())
    for state in states.values():
        buckets[len(state.concepts)].add(state)
        for name in state.concepts:
            concepts[name].add(state)
    return Shape(
        compositions=list(states.values()),
        buckets=buckets,
        concepts=concepts,
        plans=outcomes,
        plan_compositions=plan_compositions,
        min_quality=ws.config.export.min_quality,
        targets=targets,
        notes=reading.notes,
    )


def export_targets(ws: Workspace) -> dict[str, dict[str, int]] | None:
    """The targets keyed as the export card and manifest show them, or None when none is set."""
    targets = compute_targets(planned_compositions(ws), ws.config.curation)
    if not targets.any:
        return None
    return {
        "composition": {composition_key(c): n for c, n in targets.per_composition.items()},
        "bucket": {f"{n} concepts": want for n, want in targets.per_bucket.items()},
        "concept": dict(targets.per_concept),
    }

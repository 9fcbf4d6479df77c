"""What "reviewed", "accepted", "accepted for export", "rejected" and "disputed" mean, in one place.

Every command and view counts reviews by these definitions: `review pull` (which aggregates the
votes), `review status`, `curate status` and `topup`, the App's saved views and `curate export`.

- one annotator's vote is a decision (accept or reject) and, on an accept, a 1-5 star rating; the
  stars a reject carries (rated, then switched to reject: the page hides them) are not a vote;
- reviewed: at least one valid vote; the decision is the majority's, a tie is a reject (export takes
  only what a clear majority accepted);
- quality: the mean rating of the accepting votes of an accepted candidate, None otherwise;
- accepted for export: accepted with quality >= `export.min_quality` (an unrated accept never is);
- disputed: two or more votes that differ, whichever way the majority went;
- agreement: the share of votes for the decision; it says something only where two or more voted.

The vote rules are pure functions (`verdict`); the field rules are FiftyOne view expressions, so
counts, saved views and the export are the same query.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curation.core.dataset import (
    ACCEPT,
    REJECT,
    REVIEW_AGREEMENT,
    REVIEW_ANNOTATORS,
    REVIEW_DECISION,
    REVIEW_INVALID,
    REVIEW_QUALITY,
    VIEW_ACCEPTED,
    VIEW_ACCEPTED_FOR_EXPORT,
    VIEW_DISPUTED,
    VIEW_INVALID,
    VIEW_REJECTED,
    VIEW_UNREVIEWED,
    save_view,
)

if TYPE_CHECKING:
    import fiftyone as fo
    from fiftyone.core.expressions import ViewExpression


@dataclass(frozen=True)
class Verdict:
    """A candidate's review from its valid votes: the fields a pull writes about the decision."""

    decision: str | None
    quality: float | None
    annotators: int | None
    agreement: float | None

    @property
    def disputed(self) -> bool:
        """Two or more votes that differ (`is_disputed` says the same of the written fields)."""
        return (self.annotators or 0) >= 2 and (self.agreement or 0.0) < 1


def verdict(votes: Sequence[tuple[str, int | None]]) -> Verdict:
    """Valid votes, (decision, stars or None), as one review; no votes is no review (all None).

    Stars count only on an accept: a reject's are left out of the quality.
    """
    if not votes:
        return Verdict(None, None, None, None)
    accepts = sum(decision == ACCEPT for decision, _ in votes)
    decision = ACCEPT if accepts * 2 > len(votes) else REJECT
    ratings = [stars for d, stars in votes if d == ACCEPT and stars is not None]
    quality = round(statistics.fmean(ratings), 4) if decision == ACCEPT and ratings else None
    agreeing = accepts if decision == ACCEPT else len(votes) - accepts
    return Verdict(decision, quality, len(votes), round(agreeing / len(votes), 4))


# -- the same rules over the written fields, as FiftyOne view expressions (MongoDB queries) -------
def is_reviewed() -> ViewExpression:
    from fiftyone import ViewField as F

    return F(REVIEW_DECISION) != None  # a MongoDB expression: `is not None` would not work


def is_accepted() -> ViewExpression:
    from fiftyone import ViewField as F

    return F(REVIEW_DECISION) == ACCEPT


def is_accepted_for_export(min_quality: float) -> ViewExpression:
    """Accepted with quality >= min_quality; a missing quality (null) is below every number in MongoDB."""
    from fiftyone import ViewField as F

    return is_accepted() & (F(REVIEW_QUALITY) >= min_quality)


def is_rejected() -> ViewExpression:
    from fiftyone import ViewField as F

    return F(REVIEW_DECISION) == REJECT


def has_several_votes() -> ViewExpression:
    """Two or more valid votes: where agreement says something (one vote agrees with itself)."""
    from fiftyone import ViewField as F

    return F(REVIEW_ANNOTATORS) >= 2


def is_disputed() -> ViewExpression:
    """Two or more votes that differ; a null agreement (no review) is below 1 in MongoDB, hence the count."""
    from fiftyone import ViewField as F

    return has_several_votes() & (F(REVIEW_AGREEMENT) < 1)


def has_invalid_annotations() -> ViewExpression:
    """Annotations the labeling page could not have produced: kept out of every count, listed here."""
    from fiftyone import ViewField as F

    return F(REVIEW_INVALID).length() > 0


def accepted_view(
    collection: fo.Dataset | fo.DatasetView, min_quality: float | None = None
) -> fo.DatasetView:
    """Accepted candidates; given `min_quality`, only those accepted for export at that quality."""
    return collection.match(is_accepted() if min_quality is None else is_accepted_for_export(min_quality))


def review_views(collection: fo.Dataset | fo.DatasetView, min_quality: float) -> dict[str, tuple[Any, str]]:
    """The App's review views, name -> (view, description), by the rules above."""
    return {
        VIEW_UNREVIEWED: (collection.match(~is_reviewed()), "no valid human vote pulled yet"),
        VIEW_ACCEPTED: (
            collection.match(is_accepted()),
            "accepted: most valid votes accept (a tie is a reject), any quality",
        ),
        VIEW_ACCEPTED_FOR_EXPORT: (
            collection.match(is_accepted_for_export(min_quality)),
            (
                f"accepted with mean quality >= {min_quality:g} (export.min_quality): what `curate export` "
                "takes, less near-duplicate copies of another one (near_dup_of) and stale candidates"
            ),
        ),
        VIEW_REJECTED: (collection.match(is_rejected()), "rejected: most valid votes reject, or a tie"),
        VIEW_DISPUTED: (
            collection.match(is_disputed()),
            "two or more valid votes that differ (the majority decided; a tie is a reject)",
        ),
        VIEW_INVALID: (
            collection.match(has_invalid_annotations()),
            "annotations the labeling page cannot produce (review_invalid says what): never counted",
        ),
    }


def save_review_views(dataset: fo.Dataset, min_quality: float) -> list[str]:
    """Save the review views where they changed (e.g. `export.min_quality`); returns their names."""
    views = review_views(dataset, min_quality)
    for name, (view, description) in views.items():
        save_view(dataset, name, view, description)
    return list(views)


@dataclass(frozen=True)
class ReviewCounts:
    """Samples per review category, counted by the view expressions."""

    reviewed: int
    accepted: int
    for_export: int
    rejected: int
    disputed: int
    invalid: int
    """Samples holding at least one invalid annotation (counted or not otherwise)."""
    min_quality: float

    def words(self) -> str:
        """What each number counts, in the words every command uses."""
        return (
            f"{self.reviewed} reviewed: {self.accepted} accepted ({self.for_export} for export, quality >= "
            f"{self.min_quality:g}), {self.rejected} rejected, {self.disputed} disputed (votes differ)"
        )


def count_reviews(collection: fo.Dataset | fo.DatasetView, min_quality: float) -> ReviewCounts:
    """Every category's count, by the same expressions the saved views hold."""
    return ReviewCounts(
        reviewed=collection.match(is_reviewed()).count(),
        accepted=collection.match(is_accepted()).count(),
        for_export=collection.match(is_accepted_for_export(min_quality)).count(),
        rejected=collection.match(is_rejected()).count(),
        disputed=collection.match(is_disputed()).count(),
        invalid=collection.match(has_invalid_annotations()).count(),
        min_quality=min_quality,
    )


# -- the same rules over one sample's written fields, for figures counted without MongoDB ----------
@dataclass(frozen=True)
class WrittenReview:
    """A sample's review fields as a pull wrote them, judged by the expressions above as MongoDB judges
    them: a null quality is below every number and a null agreement below 1. `curate status` and
    `review status` count the dataset summary (curation/core/dataset_summary.py) with these."""

    decision: str | None
    quality: float | None
    annotators: int | None
    agreement: float | None
    invalid: list[str] | None

    @property
    def reviewed(self) -> bool:
        return self.decision is not None

    @property
    def accepted(self) -> bool:
        return self.decision == ACCEPT

    def accepted_for_export(self, min_quality: float) -> bool:
        return self.accepted and self.quality is not None and self.quality >= min_quality

    @property
    def rejected(self) -> bool:
        return self.decision == REJECT

    @property
    def several_votes(self) -> bool:
        return self.annotators is not None and self.annotators >= 2

    @property
    def disputed(self) -> bool:
        return self.several_votes and (self.agreement is None or self.agreement < 1)

    @property
    def has_invalid(self) -> bool:
        return bool(self.invalid)


def count_written(reviews: Sequence[WrittenReview], min_quality: float) -> ReviewCounts:
    """`count_reviews` over written reviews held in memory: the same categories by the same rules."""
    return ReviewCounts(
        reviewed=sum(r.reviewed for r in reviews),
        accepted=sum(r.accepted for r in reviews),
        for_export=sum(r.accepted_for_export(min_quality) for r in reviews),
        rejected=sum(r.rejected for r in reviews),
        disputed=sum(r.disputed for r in reviews),
        invalid=sum(r.has_invalid for r in reviews),
        min_quality=min_quality,
    )

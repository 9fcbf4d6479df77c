"""How the index dataset is browsed in the FiftyOne App: its saved views and its sidebar groups.

Written by every `curate index` run. Views are saved queries, so they stay current as review and
score fields change; the sidebar groups the fields curate writes (scores, presence, review,
provenance) and says on the CLIP score fields whether the weights behind them were random.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curation.core import dataset as ds
from curation.core.acceptance import is_rejected, review_views
from curation.scores.artifacts import ARTIFACT_SCORES
from curation.scores.presence import (
    CP_CLIP,
    DETECTIONS,
    MISSING_CONCEPTS,
    PRESENCE,
    PRESENCE_SOURCE,
    VIEW_MISSING_CONCEPT,
)

if TYPE_CHECKING:
    import fiftyone as fo


def save_views(dataset: fo.Dataset, min_quality: float) -> list[str]:
    """(Re)save the browsing views; they are queries, so they stay current as fields change.

    Args:
        dataset: The index dataset.
        min_quality: `export.min_quality`, for the `accepted_for_export` view.

    Returns:
        The names of the saved views.
    """
    from fiftyone import ViewField as F

    high = None
    for spec in ARTIFACT_SCORES.values():
        term = F(spec.name) > spec.threshold if spec.higher_is_worse else F(spec.name) < spec.threshold
        high = term if high is None else high | term
    rule = " or ".join(
        f"{s.name} {'>' if s.higher_is_worse else '<'} {s.threshold:g}" for s in ARTIFACT_SCORES.values()
    )
    views = {
        **review_views(dataset, min_quality),
        ds.VIEW_HIGH_ARTIFACTS: (dataset.match(high), f"any artifact score past its threshold: {rule}"),
        ds.VIEW_NEAR_DUPLICATES: (
            dataset.match(F(ds.NEAR_DUP_OF) != None),
            "near_dup_of set: a better-scored near-copy exists (CLIP embeddings)",
        ),
        VIEW_MISSING_CONCEPT: (
            dataset.match(F(MISSING_CONCEPTS).length() > 0),
            "presence found at least one planned concept missing",
        ),
        ds.VIEW_TOP_CANDIDATES: (
            dataset.match(~high & (F(ds.NEAR_DUP_OF) == None) & ~is_rejected()).sort_by(
                ds.CLIP_T, reverse=True
            ),
            f"not rejected by a human, no near-duplicate, no artifact score past ({rule}); best clip_t first",
        ),
    }
    for name, (view, description) in views.items():
        ds.save_view(dataset, name, view, description)
    _sidebar(dataset)
    return list(views)


def _sidebar(dataset: fo.Dataset) -> None:
    """App sidebar groups (scores, presence, review, provenance) instead of one flat list, and score
    fields that say so when the CLIP weights behind them were random."""
    import fiftyone as fo

    random = dataset.info.get("clip_weights") != "pretrained"
    for name in (ds.CLIP_T, ds.CLIP_T_COS, ds.UNIQUENESS, CP_CLIP):
        if dataset.has_field(name):
            field = dataset.get_field(name)
            description = "RANDOM CLIP weights: meaningless" if random else "pretrained CLIP weights"
            if field.description != description:
                field.description = description
                field.save()
    ours = {
        "scores": [ds.CLIP_T, ds.CLIP_T_COS, ds.UNIQUENESS, *ARTIFACT_SCORES, ds.NEAR_DUP_OF],
        "presence": [CP_CLIP, PRESENCE, MISSING_CONCEPTS, DETECTIONS, PRESENCE_SOURCE],
        "review": [
            ds.REVIEW_DECISION, ds.REVIEW_QUALITY, ds.REVIEW_AGREEMENT, ds.REVIEW_ANNOTATORS,
            ds.REVIEW_REASONS, ds.CAPTION_FIXED, ds.REVIEW_INVALID, ds.TRIAGE,
        ],
        "provenance": [
            ds.CANDIDATE_ID, ds.CONCEPTS, ds.N_CONCEPTS, ds.CAPTION, ds.PROMPT, ds.GENERATOR, ds.PLAN_ID,
            ds.SHARD, ds.SEED, ds.BOXES, ds.IMAGE_HASH, ds.RECORD_HASH, ds.MODELS_KEY,
        ],
    }  # fmt: skip
    placed = {path for paths in ours.values() for path in paths}
    groups = []
    for group in fo.DatasetAppConfig.default_sidebar_groups(dataset):
        group.paths = [p for p in group.paths if p not in placed]
        groups.append(group)
        if group.name == "metadata":
            groups += [fo.SidebarGroupDocument(name=n, paths=[p for p in paths if dataset.has_field(p)])
                       for n, paths in ours.items()]  # fmt: skip
    if [g.to_dict() for g in dataset.app_config.sidebar_groups or []] != [g.to_dict() for g in groups]:
        dataset.app_config.sidebar_groups = groups
        dataset.save()

"""The FiftyOne dataset of a workspace: its name, how to open it, its field names and saved views' names.

Indexing, review and export all meet here, so field names are constants in one place and a typo
is an import error instead of a silently empty field.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from curation.core.errors import CurateError

if TYPE_CHECKING:
    import fiftyone as fo

    from curation.core.workspace import Workspace

# identity and provenance
CANDIDATE_ID = "candidate_id"
PLAN_ID = "plan_id"
SHARD = "shard"
CONCEPTS = "concepts"
N_CONCEPTS = "n_concepts"
GENERATOR = "generator"
CAPTION = "caption"
PROMPT = "prompt"
SEED = "seed"
BOXES = "boxes"
IMAGE_HASH = "image_hash"

# scores (written by `curate index`; artifact score names live in curation.scores.artifacts)
RECORD_HASH = "record_hash"  # hash of the candidate JSON: a caption or box change re-indexes too
MODELS_KEY = "models_key"  # hash of the CLIP weights and presence settings that scored the sample
CLIP_EMBEDDING = "clip_embedding"
CLIP_T = "clip_t"  # CLIPScore convention: 2.5 * max(cos, 0)
CLIP_T_COS = "clip_t_cos"  # raw image-caption cosine
UNIQUENESS = "uniqueness"
NEAR_DUP_OF = "near_dup_of"  # candidate_id of the better-scored copy, on the lower-scored one
NEAR_DUP_CHECKED = "near_dup_checked"  # False until this sample was compared with every other one

# saved views
VIEW_UNREVIEWED = "unreviewed"
VIEW_ACCEPTED = "accepted"
VIEW_REJECTED = "rejected"
VIEW_ACCEPTED_FOR_EXPORT = "accepted_for_export"  # accepted with quality >= export.min_quality
VIEW_HIGH_ARTIFACTS = "high_artifacts"
VIEW_NEAR_DUPLICATES = "near_duplicates"
VIEW_TOP_CANDIDATES = "top_candidates"
VIEW_DISPUTED = "disputed"  # two or more votes that differ
VIEW_INVALID = "invalid_annotations"  # annotations the labeling page cannot produce (never counted)
VIEW_TRIAGED_OUT = "triaged_out"  # held back from review by a calibrated rule (`review push --triage`)

# review (written by `curate review pull`; what they mean: curation/core/acceptance.py)
REVIEW_DECISION = "review_decision"  # "accept" | "reject" | None
REVIEW_QUALITY = "review_quality"  # mean of the accepting annotators' 1-5 stars on an accept, else None
REVIEW_ANNOTATORS = "review_annotators"  # valid votes
REVIEW_AGREEMENT = "review_agreement"  # share of the votes for the decision
REVIEW_REASONS = "review_reasons"  # names from the labeling config's reasons only
CAPTION_FIXED = "caption_fixed"  # annotator-corrected caption; export prefers it to CAPTION
REVIEW_INVALID = "review_invalid"  # "<annotator>: <what is wrong>" per annotation that was not counted
TRIAGE = "triage"  # the calibrated rule that held a candidate back from review, or None

ACCEPT = "accept"
REJECT = "reject"


def dataset_name(ws: Workspace) -> str:
    """The configured name, else `curate-<workspace id>`.

    Not the folder name: two users' `runs/pets` on one shared MongoDB would write into one dataset,
    and a renamed workspace would lose its own.
    """
    return ws.config.index.dataset_name or f"curate-{ws.workspace_id}"


def find_dataset(ws: Workspace) -> fo.Dataset | None:
    """The workspace's dataset, or None before the first `curate index`; checks which database first."""
    import fiftyone as fo

    from curation.core.database import check_database

    check_database()
    name = dataset_name(ws)
    return fo.load_dataset(name) if fo.dataset_exists(name) else None


def open_dataset(ws: Workspace, require_samples: bool = False) -> fo.Dataset:
    """The workspace's dataset; a clear error if `curate index` has not run yet.

    Args:
        ws: The workspace.
        require_samples: Also refuse a dataset without samples (an index of a workspace with no
            candidates yet), for the steps that read sample fields.
    """
    name = dataset_name(ws)
    dataset = find_dataset(ws)
    if dataset is None:
        raise CurateError(f"no FiftyOne dataset {name!r} yet: run `curate index -w {ws.root}` first")
    dataset.persistent = True
    if require_samples and not len(dataset):
        raise CurateError(
            f"dataset {name!r} has no candidates yet: run `curate generate -w {ws.root}` and `curate index` first"
        )
    return dataset


def field_values(collection: fo.Dataset | fo.DatasetView, name: str) -> list[Any]:
    """A field's values, or Nones when no sample ever got the field (e.g. no dedup or review has run)."""
    if collection.has_field(name):
        return collection.values(name)
    return [None] * len(collection)


def save_view(dataset: fo.Dataset, name: str, view: fo.DatasetView, description: str) -> None:
    """Save `view` as `name` unless it is saved so already: an unchanged run rewrites nothing (each
    save is four database writes, and a write a kill could interrupt)."""
    from bson import json_util

    if dataset.has_saved_view(name):
        saved = dataset._get_saved_view_doc(name)
        stages = [json_util.dumps(stage) for stage in view._serialize(include_uuids=False)]
        if saved.description == description and list(saved.view_stages) == stages:
            return
    dataset.save_view(name, view, description=description, overwrite=True)


def near_duplicate_copies(near_dup_of: Mapping[str, str | None], accepted: Collection[str]) -> set[str]:
    """Accepted candidates whose near-duplicate original is accepted too: the copies a default export drops.

    One image of each near-duplicate group trains the model, not several; a copy whose original was
    rejected (or left out as stale) stays. `curate export` drops these and `curate status` counts them
    as filling no target, by this one rule.
    """
    return {
        c
        for c, original in near_dup_of.items()
        if c in accepted and original is not None and original in accepted
    }

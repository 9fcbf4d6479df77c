"""Which candidates an export holds: the reviewed verdicts in FiftyOne joined to the records on disk.

FiftyOne owns the human side (decision, quality, fixed caption, near-duplicate links); the candidate
JSON owns the geometry. Pixel boxes are read from `candidates/<shard>/<id>.json` rather than from the
FiftyOne detections because the detections are relative floats: converting back would round, and the
export promises the exact boxes the generator drew. Every writer in `exports/` consumes the
`ExportItem`s built here, so they all agree on order, captions and file names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from curation.core.acceptance import accepted_view
from curation.core.dataset import (
    CANDIDATE_ID,
    CAPTION,
    CAPTION_FIXED,
    CLIP_T,
    N_CONCEPTS,
    NEAR_DUP_OF,
    REVIEW_QUALITY,
    field_values,
    near_duplicate_copies,
    open_dataset,
)
from curation.core.errors import CurateError
from curation.core.records import Box, Candidate

if TYPE_CHECKING:
    import fiftyone as fo

    from curation.core.workspace import Workspace


@dataclass(frozen=True)
class ExportItem:
    """One exported composition: where its image comes from and everything its metadata row says."""

    candidate_id: str
    image: Path
    concepts: tuple[str, ...]
    boxes: tuple[Box, ...]
    width: int
    height: int
    caption: str
    quality: float | None
    background: str
    plan_id: str

    @property
    def composition(self) -> str:
        """The concept set as a folder name: sorted ids joined by '+' (ids never contain '+')."""
        return "+".join(sorted(self.concepts))

    @property
    def file_name(self) -> str:
        """Path inside the export; under images/ so a composition can never clash with concepts/."""
        return f"images/{self.composition}/{self.candidate_id}{self.image.suffix.lower()}"


@dataclass
class Selection:
    """The items to export plus what the dataset card reports about everything reviewed."""

    items: list[ExportItem]
    min_quality: float | None
    view: str | None
    dropped_near_duplicates: list[str] = field(default_factory=list)
    skipped_stale: list[str] = field(default_factory=list)
    """Accepted candidates `curate generate` set aside (plans or generator settings changed)."""
    skipped_missing: list[str] = field(default_factory=list)
    """Accepted candidates whose record or image is gone from the workspace (`curate generate` remakes them)."""
    reviewed: list[tuple[int, float]] = field(default_factory=list)
    """(n_concepts, quality) of every reviewed candidate in the base collection, kept or not."""
    capped: list[str] = field(default_factory=list)
    """Accepted candidates left out by `max_per_composition` (their concept set already had enough)."""


def _candidate(ws: Workspace, candidate_id: str, filepath: str) -> Candidate | None:
    """The candidate record from its shard (the image's folder name); None when it or its image is gone.

    A record deleted, damaged or left without its image since indexing cannot be exported, but it is
    no reason to refuse every other accepted image: the selection counts it instead.
    """
    relative = Path("candidates") / Path(filepath).parent.name / f"{candidate_id}.json"
    try:
        record = Candidate.model_validate_json(ws.resolve(relative).read_bytes())
    except (OSError, ValueError):  # missing, unreadable or damaged (pydantic's ValidationError is a ValueError)
        return None
    return record if ws.resolve(record.image).is_file() else None


def _base(ws: Workspace, view: str | None) -> fo.Dataset | fo.DatasetView:
    dataset = open_dataset(ws, require_samples=True)
    if view is None:
        return dataset
    if not dataset.has_saved_view(view):
        known = ", ".join(dataset.list_saved_views()) or "none"
        raise CurateError(f"no saved view {view!r} in dataset {dataset.name} (saved views: {known})")
    return dataset.load_saved_view(view)


def select_candidates(
    ws: Workspace,
    min_quality: float | None,
    view: str | None = None,
    include_near_duplicates: bool = False,
    max_per_composition: int | None = None,
) -> Selection:
    """Accepted candidates (quality >= min_quality) of the dataset or a saved view, by candidate id.

    Args:
        ws: The workspace whose FiftyOne dataset and candidate files are read.
        min_quality: Lowest mean review rank kept; None keeps every accepted candidate.
        view: Name of a saved FiftyOne view to start from instead of the whole dataset.
        include_near_duplicates: Keep candidates whose `near_dup_of` names another selected
            candidate. By default they are dropped, so one image of each near-duplicate group trains
            the model, not several; a copy whose better-scored original was rejected is kept.
        max_per_composition: Keep at most this many per concept set, so one set does not outweigh
            the others: highest review quality first, ties broken by CLIP-T, then by candidate id.
    """
    base = _base(ws, view)
    chosen = accepted_view(base, min_quality).sort_by(CANDIDATE_ID)
    ids = chosen.values(CANDIDATE_ID)
    paths = chosen.values("filepath")
    captions = field_values(chosen, CAPTION)
    fixed = field_values(chosen, CAPTION_FIXED)
    qualities = field_values(chosen, REVIEW_QUALITY)
    near_dups = field_values(chosen, NEAR_DUP_OF)
    clip_t = dict(zip(ids, field_values(chosen, CLIP_T), strict=True))

    stale = [c for c, path in zip(ids, paths, strict=True) if ws.is_stale(c, path)]
    selected = set(ids) - set(stale)  # a copy of a stale original is kept, as one of a rejected original
    copies = (
        set()
        if include_near_duplicates
        else near_duplicate_copies(dict(zip(ids, near_dups, strict=True)), selected)
    )
    items: list[ExportItem] = []
    dropped: list[str] = []
    missing: list[str] = []
    for candidate_id, filepath, caption, caption_fixed, quality in zip(
        ids, paths, captions, fixed, qualities, strict=True
    ):
        if candidate_id not in selected:
            continue
        if candidate_id in copies:
            dropped.append(candidate_id)
            continue
        record = _candidate(ws, candidate_id, filepath)
        if record is None:
            missing.append(candidate_id)
            continue
        items.append(
            ExportItem(
                candidate_id=candidate_id,
                image=ws.resolve(record.image),
                concepts=tuple(record.concepts),
                boxes=tuple(record.boxes),
                width=record.width,
                height=record.height,
                caption=(caption_fixed or caption or record.caption).strip(),
                quality=None if quality is None else float(quality),
                background=record.background,
                plan_id=record.plan_id,
            )
        )

    capped: list[str] = []
    if max_per_composition is not None:
        if max_per_composition < 1:
            raise CurateError(f"--max-per-composition must be at least 1 (got {max_per_composition})")
        items, capped = cap_per_composition(items, clip_t, max_per_composition)
    reviewed = [
        (int(n), float(q))
        for n, q in zip(field_values(base, N_CONCEPTS), field_values(base, REVIEW_QUALITY), strict=True)
        if q is not None and n is not None
    ]
    return Selection(
        items=items,
        min_quality=min_quality,
        view=view,
        dropped_near_duplicates=dropped,
        skipped_stale=stale,
        skipped_missing=missing,
        reviewed=reviewed,
        capped=capped,
    )


def cap_per_composition(
    items: list[ExportItem], clip_t: dict[str, float | None], limit: int
) -> tuple[list[ExportItem], list[str]]:
    """The best `limit` items of each concept set (order kept) and the ids of the rest.

    Best means highest review quality, then highest CLIP-T (a missing score ranks last), then the
    smaller candidate id, so the choice is the same on every export.
    """

    def rank(item: ExportItem) -> tuple[float, float, str]:
        score = clip_t.get(item.candidate_id)
        return (-(item.quality or 0.0), -(score if score is not None else float("-inf")), item.candidate_id)

    by_composition: dict[str, list[ExportItem]] = {}
    for item in items:
        by_composition.setdefault(item.composition, []).append(item)
    kept = {i.candidate_id for group in by_composition.values() for i in sorted(group, key=rank)[:limit]}
    left_out = [i.candidate_id for i in items if i.candidate_id not in kept]
    return [i for i in items if i.candidate_id in kept], left_out

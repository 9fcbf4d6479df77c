"""What one `curate index` run did: the counts every step of the run adds to, and the CLI's one line.

Its own module because every part of the run writes into it (planning, writing samples, the
dataset-wide steps) and the orchestration in `curation.index.run` returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from curation.scores.presence import SOURCE_PLAN


@dataclass
class IndexReport:
    """What one `index_workspace` run did.

    Attributes:
        dataset: the FiftyOne dataset name.
        added: candidates new to the dataset.
        updated: candidates re-indexed because their image, record, CLIP model or detector changed.
        unchanged: candidates skipped.
        moved: unchanged candidates whose file path changed (only the path was rewritten).
        orphaned: samples whose candidate is no longer in the workspace (kept: they may carry reviews).
        failed: (candidate_id, reason) for images that could not be read.
        hashed: images whose bytes this run read and hashed (the others' size, mtime and inode were known).
        parsed: candidate records this run parsed (likewise).
        clip_loaded: whether a CLIP model was loaded (False on a run with nothing to do).
        clip_weights: "pretrained" | "random" when loaded.
        presence_source: "detector" | "plan" when models were loaded.
        near_duplicates: samples marked `near_dup_of` (None when not computed).
        near_duplicate_queries: samples compared with the dataset by this run (new, re-embedded,
            or pointing at a re-embedded one); the others were not touched.
        uniqueness: whether this run recomputed uniqueness over the whole dataset.
        visualization: the method of the embedding map computed by this run ("umap" | "pca"), or None.
        judge: the VLM judge's summary when `index.judge` is set (replies cached per image).
    """

    dataset: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    orphaned: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    hashed: int = 0
    parsed: int = 0
    clip_loaded: bool = False
    clip_weights: str | None = None
    presence_source: str | None = None
    near_duplicates: int | None = None
    near_duplicate_queries: int = 0
    uniqueness: bool = False
    visualization: str | None = None
    judge: str | None = None

    def summary(self) -> str:
        """One line for the CLI."""
        parts = [f"{self.added} added", f"{self.updated} updated", f"{self.unchanged} unchanged"]
        if self.moved:
            parts.append(f"{self.moved} moved")
        if self.orphaned:
            parts.append(f"{self.orphaned} no longer in the workspace")
        if self.near_duplicates:
            parts.append(f"{self.near_duplicates} near-duplicates")
        if self.uniqueness or self.visualization:
            parts.append("uniqueness and embedding map recomputed")
        if self.failed:
            parts.append(f"{len(self.failed)} failed (first: {self.failed[0][0]}: {self.failed[0][1]})")
        text = f"dataset {self.dataset}: " + ", ".join(parts)
        if self.clip_weights == "random":
            text += "; CLIP weights are RANDOM: clip_t and embeddings are not meaningful"
        if self.presence_source == SOURCE_PLAN:
            text += "; presence from the planned boxes (no index.detector configured)"
        if self.judge:
            text += f"; {self.judge}"
        return text

"""Which candidates an index run has to (re)score, decided by comparing files with what the dataset holds.

A candidate is processed only when it is new, its image bytes changed, its JSON record changed,
or it was scored with other models: each sample keeps `models_key`, a hash of the CLIP weights
actually loaded (random, an open_clip tag, or a checkpoint file's sha256) and the presence settings,
so weights that become loadable later re-embed everything instead of mixing with random-weight
embeddings, and a run killed half-way through such a change finishes it next time.

The cost of planning does not grow with the dataset beyond listing and stat-ing files and one read
of five short fields per sample: files whose size, mtime and inode are unchanged are neither hashed
nor parsed again (`curation.core.file_memo`), and samples are matched through a database index on
`candidate_id`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.file_memo import FileMemo, file_stat
from curation.core.progress import ProgressFn
from curation.core.records import Candidate, content_id
from curation.core.workspace import read_record

if TYPE_CHECKING:
    import fiftyone as fo

    from curation.core.config import IndexConfig
    from curation.core.workspace import Workspace
    from curation.index.run_report import IndexReport


@dataclass
class CandidateToIndex:
    """A candidate whose sample has to be written: its image's path and hash, its record's digest."""

    candidate: Candidate
    path: Path
    image_hash: str
    record_hash: str
    is_new: bool


def image_hash(path: Path) -> str:
    """sha256 of the file bytes (first 16 hex digits): what change detection compares."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def models_key(config: IndexConfig, fingerprint: str) -> str:
    """What a sample's scores depend on besides its files: CLIP architecture and weights, presence."""
    return content_id(
        {
            "clip_model": config.clip_model,
            "clip_weights": fingerprint,
            "presence_detector": config.detector,
            "detection_threshold": config.detection_threshold,
            **({"subject_segmenter": config.subject_segmenter} if config.subject_segmenter else {}),
        }
    )


def stored_models_keys(dataset: fo.Dataset) -> set[str | None]:
    """The models keys in the dataset (None for samples indexed before keys existed)."""
    if not len(dataset):
        return set()
    if not dataset.has_field(ds.MODELS_KEY):
        return {None}
    return set(dataset.distinct(ds.MODELS_KEY))  # samples without a key are re-indexed anyway


def plan_candidates(
    ws: Workspace, dataset: fo.Dataset, key: str, report: IndexReport, progress: ProgressFn
) -> tuple[list[CandidateToIndex], dict[str, str]]:
    """Decide what to (re)index by comparing hashes and models keys with what the dataset holds.

    Records and images whose stat the file memo recognises are neither parsed nor hashed again, nor
    is their path resolved (the guard against paths leaving the workspace runs before any read).
    """
    existing = _indexed(dataset)
    records = list(ws.candidate_record_paths())
    root = str(ws.root)
    todo: list[CandidateToIndex] = []
    moved: dict[str, str] = {}
    seen: set[str] = set()
    memo = FileMemo(ws.index_dir / "files.sqlite")
    try:
        for done, record_path in enumerate(records, start=1):
            progress("checking candidates", done, len(records))
            relative = record_path[len(root) + 1 :]
            unreadable = f"unreadable record {relative} (`curate generate` redoes it)"
            candidate = None
            try:
                stat = file_stat(record_path)
                info = memo.get(relative, stat)  # "id \t image \t ok \t record digest"
                if info is None:
                    candidate = _read_candidate(record_path)
                    report.parsed += 1
                    image = ws.resolve(candidate.image).relative_to(ws.root).as_posix()  # checked, no symlinks
                    ok = "ok" if candidate.status == "ok" else ""
                    info = "\t".join((candidate.candidate_id, image, ok, content_id(candidate.model_dump())))
                    memo.put(relative, stat, info)
            except (OSError, CurateError):
                report.failed.append((Path(record_path).stem, unreadable))
                continue
            cid, image, ok, record = info.split("\t")
            if not ok:
                continue
            seen.add(cid)
            path = os.path.join(root, image)
            try:
                image_stat = file_stat(path)
                digest = memo.get(image, image_stat)
                if digest is None:
                    path = str(ws.resolve(image))
                    digest = image_hash(Path(path))
                    report.hashed += 1
                    memo.put(image, image_stat, digest)
            except OSError as exc:
                report.failed.append((cid, f"cannot read {image}: {exc.strerror}"))
                continue
            old = existing.get(cid)
            if old is None or old[1:] != (digest, record, key):
                try:
                    if candidate is None:
                        candidate = _read_candidate(record_path)
                        report.parsed += 1
                except CurateError:
                    report.failed.append((cid, unreadable))
                    continue
                todo.append(CandidateToIndex(candidate, Path(path), digest, record, is_new=old is None))
            else:
                report.unchanged += 1
                if old[0] != path:
                    moved[cid] = path
    finally:
        memo.save()
    report.orphaned = sum(1 for c in existing if c not in seen)
    report.moved = len(moved)
    return todo, moved


def _indexed(dataset: fo.Dataset) -> dict[str, tuple[str, str, str, str | None]]:
    """candidate_id -> (filepath, image hash, record hash, models key) of every sample.

    Read straight from the sample collection: FiftyOne's `values` builds Python objects field by
    field and costs ~10x as much at 100K samples, for five short strings each.
    """
    fields = (ds.CANDIDATE_ID, "filepath", ds.IMAGE_HASH, ds.RECORD_HASH, ds.MODELS_KEY)
    cursor = dataset._sample_collection.find({}, dict.fromkeys(fields, 1) | {"_id": 0})
    return {d.get(ds.CANDIDATE_ID): tuple(d.get(f) for f in fields[1:]) for d in cursor}


def _read_candidate(path: str) -> Candidate:
    return read_record(Candidate, Path(path), path, "`curate generate` redoes it")

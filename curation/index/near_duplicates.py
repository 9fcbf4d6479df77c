"""Near-duplicates of the samples an index run wrote, against every sample already indexed.

FiftyOne Brain's `compute_near_duplicates` compares all pairs (its sklearn backend builds an N x N
float64 matrix up to 15K samples: 0.8 GB at 10K) and so does every run, however few samples are
new. Here only the pending samples (new or re-embedded, `near_dup_checked` not True) are queried,
against an append-only store of the checked samples' CLIP embeddings kept in the workspace
(`index/near_duplicates/`): a blocked matrix product, O(N x d) time per query and O(block x
queries) memory, never N x N. The store is read through a memory map, so the page cache, not
MongoDB, serves it; it is rebuilt from the dataset when it does not match it (another dataset of
the same name, a copied workspace, a run killed between its two writes). The store and every query
are keyed on the samples' `models_key`: embeddings of another CLIP (another width, say 512 against
768) are never compared, and a model change starts the store over instead of multiplying mismatched
matrices; samples a run could not re-embed keep their old key and sit out until it can.

Marking rule (cosine distance <= threshold, FiftyOne's metric): of two near-copies, the one with
the lower CLIP-T (ties to 6 decimals, which batch composition can move: the larger candidate_id) gets `near_dup_of` = the better one's id. A
queried sample points at its best better neighbour (or None); an old neighbour worse than it that
had no mark gets one pointing at it, so both sides of a new pair are written (an old sample already
marked keeps its mark: it already has a better copy, and is not rewritten).
Samples that pointed at a re-embedded sample are queried again, since that copy may have changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.core import dataset as ds
from curation.core.workspace import atomic_write_json

if TYPE_CHECKING:
    import fiftyone as fo

BLOCK_ROWS = 8192
"""Stored rows compared per matrix product: queries x 8192 float32 = 32 MB per 1K queries."""
QUERY_ROWS = 1024
"""Queries per pass over the store, so an upgrade that queries every sample stays memory-bounded."""


@dataclass
class _Pending:
    ids: list[str]
    vectors: np.ndarray
    clip_t: list[float]


class EmbeddingStore:
    """Append-only rows of (candidate_id, CLIP-T, L2-normalised embedding); the latest row per id counts.

    Files: `vectors.f32` (rows x dim), `clip_t.f32`, `ids.txt` (one id per line), and `meta.json`
    written last with the dataset id, the models key, the width and the row count, so rows a killed
    append left behind are ignored and cut off by the next append, and a store of another dataset or
    model reads as empty.
    """

    def __init__(self, folder: Path, dataset_id: str, key: str):
        self.folder = folder
        self.dataset_id = dataset_id
        self.key = key
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if meta.get("dataset") != dataset_id or meta.get("key") != key:
            meta = {}
        self.rows: int = meta.get("rows", 0)
        self.dim: int = meta.get("dim", 0)
        self.ids: list[str] = []
        if self.rows:
            with (folder / "ids.txt").open() as handle:
                self.ids = [line.rstrip("\n") for _, line in zip(range(self.rows), handle)]
        self.latest = {cid: row for row, cid in enumerate(self.ids)}

    def live_ids(self) -> set[str]:
        return set(self.latest)

    def vectors(self) -> np.ndarray:
        """The stored embeddings as a read-only memory map (rows x dim)."""
        if not self.rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.memmap(self.folder / "vectors.f32", dtype=np.float32, mode="r", shape=(self.rows, self.dim))

    def clip_t(self) -> np.ndarray:
        if not self.rows:
            return np.zeros(0, dtype=np.float32)
        return np.fromfile(self.folder / "clip_t.f32", dtype=np.float32, count=self.rows)

    def append(self, ids: list[str], vectors: np.ndarray, clip_t: list[float], reset: bool = False) -> None:
        """Add rows (superseding earlier rows of the same ids); `reset` starts the store over."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if reset or (self.dim and vectors.shape[1] != self.dim):
            self.rows, self.ids, self.latest = 0, [], {}
        self.dim = int(vectors.shape[1]) if len(vectors) else self.dim
        for name, data in (
            ("vectors.f32", np.ascontiguousarray(vectors, dtype=np.float32).tobytes()),
            ("clip_t.f32", np.asarray(clip_t, dtype=np.float32).tobytes()),
            ("ids.txt", "".join(f"{cid}\n" for cid in ids).encode()),
        ):
            with (self.folder / name).open("r+b" if (self.folder / name).exists() else "wb") as handle:
                handle.truncate(self._valid_bytes(name))  # drop what a killed append left
                handle.seek(0, 2)
                handle.write(data)
        for offset, cid in enumerate(ids):
            self.latest[cid] = self.rows + offset
        self.ids += ids
        self.rows += len(ids)
        meta = {"dataset": self.dataset_id, "key": self.key, "rows": self.rows, "dim": self.dim}
        atomic_write_json(self.folder / "meta.json", meta)

    def _valid_bytes(self, name: str) -> int:
        if name == "vectors.f32":
            return self.rows * self.dim * 4
        if name == "clip_t.f32":
            return self.rows * 4
        return sum(len(cid) + 1 for cid in self.ids)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def neighbours(
    queries: np.ndarray, rows: np.ndarray, usable: np.ndarray, threshold: float
) -> list[list[int]]:
    """For each query, the indices of `rows` (where `usable`) within cosine distance `threshold`.

    Both sides are L2-normalised. Memory is QUERY_ROWS x BLOCK_ROWS floats whatever the sizes.
    """
    found: list[list[int]] = [[] for _ in range(len(queries))]
    for q0 in range(0, len(queries), QUERY_ROWS):
        block_queries = queries[q0 : q0 + QUERY_ROWS]
        for r0 in range(0, len(rows), BLOCK_ROWS):
            similarity = block_queries @ np.asarray(rows[r0 : r0 + BLOCK_ROWS]).T
            hit_q, hit_r = np.nonzero((1.0 - similarity <= threshold) & usable[r0 : r0 + BLOCK_ROWS])
            for q, r in zip(hit_q.tolist(), hit_r.tolist()):
                found[q0 + q].append(r0 + r)
    return found


def mark_new_near_duplicates(
    dataset: fo.Dataset, folder: Path, threshold: float, key: str
) -> tuple[int, int]:
    """Query the pending samples against the store, write `near_dup_of` on both sides, mark them checked.

    Only samples scored with the models `key` take part (the others' embeddings are another model's).

    Returns:
        (samples queried, samples marked near_dup_of in the whole dataset afterwards).
    """
    import fiftyone as fo

    for name, kind in ((ds.NEAR_DUP_OF, fo.StringField), (ds.NEAR_DUP_CHECKED, fo.BooleanField)):
        if not dataset.has_field(name):  # all None when nothing is duplicated: no type to infer
            dataset.add_sample_field(name, kind)
    same_model = {ds.MODELS_KEY: key}
    ids, embeddings, scores = _read(dataset, {ds.NEAR_DUP_CHECKED: {"$ne": True}, **same_model})  # False, unset
    store = EmbeddingStore(folder, str(dataset._doc.id), key)
    pending_ids = set(ids)
    checked = dataset._sample_collection.count_documents({ds.NEAR_DUP_CHECKED: True, **same_model})
    if len(store.live_ids() - pending_ids) != checked:  # not this dataset's store, or behind it
        _rebuild(store, dataset)
    # samples pointing at a re-embedded one are asked again: that copy may no longer be a copy
    updated = [cid for cid in ids if cid in store.latest]
    if updated:
        again = {ds.NEAR_DUP_OF: {"$in": updated}, ds.CANDIDATE_ID: {"$nin": ids}, **same_model}
        more_ids, more_embeddings, more_scores = _read(dataset, again)
        ids, embeddings, scores = ids + more_ids, embeddings + more_embeddings, scores + more_scores
    if not ids:
        return 0, _marked(dataset)
    query = _Pending(ids, _unit(np.stack(embeddings)), _scores(scores))
    marks = _marks(store, query, pending_ids, threshold, dataset)
    if marks:
        dataset.set_values(ds.NEAR_DUP_OF, marks, key_field=ds.CANDIDATE_ID)
    fresh = [k for k, cid in enumerate(query.ids) if cid in pending_ids]
    dataset.set_values(ds.NEAR_DUP_CHECKED, dict.fromkeys(pending_ids, True), key_field=ds.CANDIDATE_ID)
    store.append([query.ids[k] for k in fresh], query.vectors[fresh], [query.clip_t[k] for k in fresh])
    return len(query.ids), _marked(dataset)


def _marks(
    store: EmbeddingStore, query: _Pending, pending_ids: set[str], threshold: float, dataset: fo.Dataset
) -> dict[str, str | None]:
    """`near_dup_of` for every queried sample, and for old neighbours that a queried one now beats."""
    from fiftyone import ViewField as F

    stored_t = store.clip_t()
    queried = set(query.ids)
    usable = np.zeros(store.rows, dtype=bool)
    usable[np.fromiter(store.latest.values(), dtype=np.int64, count=len(store.latest))] = True
    usable[[store.latest[cid] for cid in pending_ids | queried if cid in store.latest]] = False
    score = dict(zip(query.ids, query.clip_t))

    def rank(cid: str) -> tuple[float, str]:  # smaller is better; CLIP-T within float noise ties
        if cid in score:
            return -round(score[cid], 6), cid
        row = store.latest.get(cid)
        return -round(float(stored_t[row]) if row is not None else float("-inf"), 6), cid

    old_hits = neighbours(query.vectors, store.vectors(), usable, threshold)
    new_hits = neighbours(query.vectors, query.vectors, np.ones(len(query.ids), dtype=bool), threshold)
    marks: dict[str, str | None] = {}
    beaten: dict[str, str] = {}  # old sample -> the best queried sample that beats it
    for k, cid in enumerate(query.ids):
        near = [store.ids[r] for r in old_hits[k]] + [query.ids[j] for j in new_hits[k] if j != k]
        better = [n for n in near if rank(n) < rank(cid)]
        marks[cid] = min(better, key=rank) if better else None
        for n in near:
            old = n not in queried
            if old and rank(cid) < rank(n) and (n not in beaten or rank(cid) < rank(beaten[n])):
                beaten[n] = cid
    if beaten:
        view = dataset.match(F(ds.CANDIDATE_ID).is_in(list(beaten)))
        current = dict(zip(*view.values([ds.CANDIDATE_ID, ds.NEAR_DUP_OF])))
        marks |= {n: keeper for n, keeper in beaten.items() if current.get(n) is None}
    return marks


def _rebuild(store: EmbeddingStore, dataset: fo.Dataset) -> None:
    """Start the store over from the dataset's checked samples (a one-off O(N) read)."""
    ids, embeddings, scores = _read(dataset, {ds.NEAR_DUP_CHECKED: True, ds.MODELS_KEY: store.key})
    vectors = _unit(np.stack(embeddings)) if ids else np.zeros((0, store.dim or 1), dtype=np.float32)
    store.append(ids, vectors, _scores(scores), reset=True)


def _read(
    dataset: fo.Dataset, query: dict[str, Any]
) -> tuple[list[str], list[np.ndarray], list[float | None]]:
    """candidate ids, CLIP embeddings and CLIP-T of the samples matching a Mongo `query`.

    Read straight from the sample collection: FiftyOne's `values` costs several times as much per
    vector, which matters when the store is rebuilt from 100K samples.
    """
    if not dataset.has_field(ds.CLIP_EMBEDDING):
        return [], [], []
    field = dataset.get_field(ds.CLIP_EMBEDDING)
    projection = {ds.CANDIDATE_ID: 1, ds.CLIP_EMBEDDING: 1, ds.CLIP_T: 1, "_id": 0}
    ids, embeddings, scores = [], [], []
    for doc in dataset._sample_collection.find(query, projection):
        ids.append(doc[ds.CANDIDATE_ID])
        embeddings.append(field.to_python(doc[ds.CLIP_EMBEDDING]))
        scores.append(doc.get(ds.CLIP_T))
    return ids, embeddings, scores


def _scores(clip_t: list[float | None]) -> list[float]:
    return [s if s is not None else float("-inf") for s in clip_t]


def _marked(dataset: fo.Dataset) -> int:
    from fiftyone import ViewField as F

    return dataset.match(F(ds.NEAR_DUP_OF) != None).count()

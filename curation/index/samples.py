"""The planned candidates -> scored FiftyOne samples: decode, embed, score, write in bulk.

Images are streamed in batches (`index.batch_size`): a loader thread decodes each image once,
scores its artifacts and writes its review preview for the next batch while the model embeds the
current one, and samples are written in bulk every `_WRITE_CHUNK` candidates (new ones added,
changed ones updated by `candidate_id`, each in one write). Only the fields `curate index` owns are
written: review fields written by `curate review pull` are never touched. With
`index.executor = "ray"` the CLIP embeddings come from Ray actors (`curation.index.embed_ray`) in
the same batches; everything else, and every write, stays in this process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.progress import ProgressFn
from curation.core.records import Candidate
from curation.core.thumbnails import candidate_thumb, write_thumbnail
from curation.index.plan import CandidateToIndex
from curation.scores.artifacts import artifact_scores
from curation.scores.presence import presence_fields

if TYPE_CHECKING:
    import fiftyone as fo
    from PIL import Image

    from curation.core.config import IndexConfig
    from curation.index.embed_ray import Embedded
    from curation.index.run_report import IndexReport
    from curation.scores.clip import ClipScorer
    from curation.scores.presence import PresenceScorer
    from curation.scores.sas import SASScorer

_WRITE_CHUNK = 256
_TOKEN = re.compile(r"<[^<>\s]+>\s*")
"""Personal tokens such as `<c-cat>` mean nothing to CLIP; CLIP-T scores the caption without them."""


@dataclass
class _Decoded:
    todo: CandidateToIndex
    image: Image.Image
    tensor: Any  # None when the embeddings are computed elsewhere (Ray)
    scores: dict[str, float | None]


def clip_text(candidate: Candidate) -> str:
    """The caption CLIP-T compares with the image: personal tokens removed, class nouns kept."""
    caption = candidate.caption or candidate.template_caption or candidate.prompt
    return _TOKEN.sub("", caption).strip()


def ray_embedding_batches(
    todo: list[CandidateToIndex], config: IndexConfig, weights: str
) -> Iterator[Embedded]:
    """Ray actors embedding `todo` in the exact batches `write_samples` will consume them in."""
    from curation.index.embed_ray import ray_embeddings

    chunks = [
        [(str(t.path), clip_text(t.candidate)) for t in chunk] for chunk in _chunks(todo, config.batch_size)
    ]
    return ray_embeddings(
        chunks,
        config.clip_model,
        config.clip_pretrained or None,
        config.batch_size,
        config.ray_actors,
        weights,
    )


def _decode(todo: CandidateToIndex, scorer: ClipScorer | None, thumbs: Path) -> _Decoded | str:
    """Decode one image, preprocess it for CLIP unless `scorer` is None, score artifacts and write its
    review preview (loader thread): the only time the image is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(todo.path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        return f"cannot decode {todo.candidate.image}: {exc} (delete it and `curate generate` makes it again)"
    c = todo.candidate
    write_thumbnail(rgb, candidate_thumb(thumbs, c.candidate_id))  # a changed image gets a new one
    scores = artifact_scores(np.asarray(rgb), c.boxes, c.width, c.height, c.extra)
    return _Decoded(todo, rgb, scorer.image_tensor(rgb) if scorer else None, scores)


def _chunks(todo: list[CandidateToIndex], batch_size: int) -> list[list[CandidateToIndex]]:
    """The batches candidates are embedded in, the same for both executors (so are the floats)."""
    return [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]


def _decoded_batches(
    todo: list[CandidateToIndex], scorer: ClipScorer | None, batch_size: int, thumbs: Path
) -> Iterator[list[_Decoded | str]]:
    """Yield decoded batches, decoding the next one in a thread while the caller embeds this one."""
    chunks = _chunks(todo, batch_size)

    def load(chunk: list[CandidateToIndex]) -> list[_Decoded | str]:
        return [_decode(t, scorer, thumbs) for t in chunk]

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for index in range(len(chunks)):
            batch = pending.result()
            if index + 1 < len(chunks):
                pending = pool.submit(load, chunks[index + 1])
            yield batch


def write_samples(
    dataset: fo.Dataset,
    todo: list[CandidateToIndex],
    scorer: ClipScorer,
    presence: PresenceScorer,
    key: str,
    batch_size: int,
    report: IndexReport,
    progress: ProgressFn,
    thumbs: Path,
    remote: Iterator[Embedded] | None = None,
    sas: SASScorer | None = None,
) -> None:
    """Score and write every candidate of `todo` (and its review preview into `thumbs`); `remote`
    yields its embeddings per batch (Ray)."""
    import torch

    from curation.scores.clip import clip_t

    pending: list[dict[str, Any]] = []
    done = 0
    for batch in _decoded_batches(todo, None if remote else scorer, batch_size, thumbs):
        sources = todo[done : done + len(batch)]
        report.failed.extend(
            (t.candidate.candidate_id, item) for t, item in zip(sources, batch) if isinstance(item, str)
        )
        loaded = [item for item in batch if isinstance(item, _Decoded)]
        embedded = next(remote) if remote else None
        if embedded and embedded.ok != [isinstance(item, _Decoded) for item in batch]:
            raise CurateError("candidate images changed while indexing; run `curate index` again")
        if loaded:
            if embedded:
                images, texts = embedded.images, embedded.texts
            else:
                images = scorer.embed_tensors(torch.stack([item.tensor for item in loaded]))
                texts = scorer.embed_texts([clip_text(item.todo.candidate) for item in loaded])
            cosine, score = clip_t(images, texts)
            found = presence.score([(item.image, item.todo.candidate) for item in loaded])
            for k, item in enumerate(loaded):
                row = _fields(item, images[k], float(score[k]), float(cosine[k])) | {ds.MODELS_KEY: key}
                pending.append(row | presence_fields(found[k], item.image.size))
                if sas is not None:
                    pending[-1] |= sas.score(item.image, item.todo.candidate)
        done += len(batch)
        if len(pending) >= _WRITE_CHUNK:
            _write_rows(dataset, pending, report)
            pending = []
        progress("indexing (CLIP, presence, artifact scores)", done, len(todo))
    _write_rows(dataset, pending, report)


def _fields(item: _Decoded, embedding: np.ndarray, score: float, cosine: float) -> dict[str, Any]:
    """Every field `curate index` owns for one candidate (review fields are not among them)."""
    import fiftyone as fo

    c = item.todo.candidate
    return {
        "filepath": str(item.todo.path),
        "metadata": fo.ImageMetadata(width=c.width, height=c.height, num_channels=3),
        ds.CANDIDATE_ID: c.candidate_id,
        ds.PLAN_ID: c.plan_id,
        ds.SHARD: c.shard,
        ds.CONCEPTS: list(c.concepts),
        ds.N_CONCEPTS: c.n_concepts,
        ds.GENERATOR: c.generator,
        ds.CAPTION: c.caption,
        ds.PROMPT: c.prompt,
        ds.SEED: c.seed,
        ds.BOXES: fo.Detections(
            detections=[
                fo.Detection(label=box.concept_id, bounding_box=box.relative(c.width, c.height))
                for box in c.boxes
            ]
        ),
        ds.IMAGE_HASH: item.todo.image_hash,
        ds.RECORD_HASH: item.todo.record_hash,
        ds.CLIP_EMBEDDING: embedding,
        ds.NEAR_DUP_CHECKED: False,
        ds.CLIP_T: score,
        ds.CLIP_T_COS: cosine,
        **item.scores,
        "_is_new": item.todo.is_new,
    }


def _write_rows(dataset: fo.Dataset, rows: list[dict[str, Any]], report: IndexReport) -> None:
    """Bulk-write: add_samples for new candidates, one whole-document update per changed one.

    A changed sample gets all its fields in one update, which MongoDB applies to a document all or
    nothing: written field by field, a run killed after the hashes but before the embedding left a
    sample that matched its files and kept its old scores for good.
    """
    import fiftyone as fo
    from pymongo import UpdateOne

    new, changed = [], []
    for row in rows:
        (new if row.pop("_is_new") else changed).append(row)
    if new:
        dataset.add_samples([fo.Sample(**row) for row in new], progress=False)
        report.added += len(new)
    if changed:
        updates = []
        for row in changed:
            # serialised as FiftyOne inserts a sample (schema expanded, fields validated); only the
            # fields index owns are set, so tags and review fields stay, and None overwrites old values
            _, doc = dataset._transform_sample(fo.Sample(**row))
            fields = {name: doc.get(name) for name in row} | {"last_modified_at": doc["last_modified_at"]}
            updates.append(UpdateOne({ds.CANDIDATE_ID: row[ds.CANDIDATE_ID]}, {"$set": fields}))
        dataset._sample_collection.bulk_write(updates, ordered=False)
        report.updated += len(changed)

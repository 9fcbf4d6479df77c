"""`curate index`: candidates -> the workspace's FiftyOne dataset, with CLIP, presence and artifact scores.

One sample per candidate, keyed by `candidate_id` and upserted, so re-running never duplicates.
A candidate is processed only when it is new, its image bytes changed, its JSON record changed,
or it was scored with other models: each sample keeps `models_key`, a hash of the CLIP weights
actually loaded (random, an open_clip tag, or a checkpoint file's sha256) and the presence settings,
so weights that become loadable later re-embed everything instead of mixing with random-weight
embeddings, and a run killed half-way through such a change finishes it next time. An unchanged
workspace costs one hash per file and loads no model, except that while the dataset holds other
weights than a configured open_clip tag (random ones, say), every run loads the model to see whether
the tag's weights are available now. Images are streamed in batches (`index.batch_size`): a loader
thread decodes and scores the next batch while the model embeds the current one, and samples are
written in bulk every `_WRITE_CHUNK` candidates. Review fields written by `curate review pull` are never touched.
With `index.executor = "ray"` the CLIP embeddings are computed by Ray actors (`curation.index.embed_ray`);
everything else, and every write, stays in this process. After (re)indexing, a 2-D map of the CLIP
embeddings is computed for the App's Embeddings panel (UMAP when umap-learn is installed, else PCA).

The cost of a run that adds K candidates to N does not grow with N beyond listing and stat-ing files
and one read of five short fields per sample: files whose size, mtime and inode are unchanged are
neither hashed nor parsed again (`curation.core.file_memo`); samples are matched through a database
index on `candidate_id`; near-duplicates compare only new or re-embedded samples with the others
(`curation.index.near_duplicates`, O(N x d) per new sample, never N x N). Uniqueness and the embedding map
are dataset-wide by nature: they are recomputed on demand (`curate index --diversity`) or when the
dataset has grown by `index.diversity_growth` since they last ran (`dataset.info["diversity"]`
says when and at which size), so new samples have no uniqueness until then.
The run is marked complete (`dataset.info["index_complete"]`) only after near-duplicates and, when
due, uniqueness and the map: a run killed before them leaves the mark off, and the next run finishes
them even when no candidate changed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.file_memo import FileMemo, file_stat
from curation.core.ports import choose_port
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Candidate, content_id
from curation.core.thumbnails import candidate_thumb, thumbs_dir, write_thumbnail
from curation.core.workspace import read_record
from curation.index.concepts_dataset import index_concepts
from curation.index.near_duplicates import mark_new_near_duplicates
from curation.scores import presence as P
from curation.scores.artifacts import ARTIFACT_SCORES, artifact_scores

if TYPE_CHECKING:
    import fiftyone as fo
    from PIL import Image

    from curation.core.config import IndexConfig
    from curation.core.workspace import Workspace
    from curation.index.embed_ray import Embedded
    from curation.scores.clip import ClipScorer
    from curation.scores.sas import SASScorer

_WRITE_CHUNK = 256
NEAR_DUP_THRESHOLD = 0.05
"""Cosine distance under which two candidates count as near-duplicates (FiftyOne Brain's metric)."""
VISUALIZATION_KEY = "clip_viz"
"""Brain key of the embedding map; one stable key, overwritten on each re-index."""
_MIN_VISUALIZED = 5
"""Fewer samples than this make no meaningful 2-D map (and t-SNE/UMAP need neighbours)."""
EXECUTORS = ("local", "ray")
INDEX_COMPLETE = "index_complete"
"""dataset.info key: False from a run's first write, True after its last step."""
DATASET_STAGE = "near-duplicates, uniqueness, embedding map"
"""The progress stage of the dataset-wide steps (0, 1, 2 of 2)."""
DIVERSITY = "diversity"
"""dataset.info key: when uniqueness and the map last ran ({"samples", "clip_fingerprint", "uniqueness", "map"})."""
_TOKEN = re.compile(r"<[^<>\s]+>\s*")
"""Personal tokens such as `<c-cat>` mean nothing to CLIP; CLIP-T scores the caption without them."""


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
        if self.presence_source == P.SOURCE_PLAN:
            text += "; presence from the planned boxes (no index.detector configured)"
        if self.judge:
            text += f"; {self.judge}"
        return text


@dataclass
class _Todo:
    candidate: Candidate
    path: Path
    image_hash: str
    record_hash: str
    is_new: bool


@dataclass
class _Loaded:
    todo: _Todo
    image: Image.Image
    tensor: Any  # None when the embeddings are computed elsewhere (Ray)
    scores: dict[str, float | None]


def image_hash(path: Path) -> str:
    """sha256 of the file bytes (first 16 hex digits): what change detection compares."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def clip_text(candidate: Candidate) -> str:
    """The caption CLIP-T compares with the image: personal tokens removed, class nouns kept."""
    caption = candidate.caption or candidate.template_caption or candidate.prompt
    return _TOKEN.sub("", caption).strip()


def index_workspace(
    ws: Workspace,
    progress: ProgressFn = no_progress,
    scorer: ClipScorer | None = None,
    executor: str | None = None,
    diversity: bool = False,
) -> IndexReport:
    """Create or update the workspace's FiftyOne dataset from its finished candidates.

    Args:
        ws: the workspace.
        progress: called as progress(stage, done, total).
        scorer: an already loaded CLIP model to use (benchmarks, long-lived processes); by default
            the configured one is loaded, and only if some candidate needs it.
        executor: where the CLIP embeddings run, "local" or "ray"; None means `index.executor`.
        diversity: recompute uniqueness and the embedding map now, however little the dataset grew.

    Returns:
        Counts of added / updated / unchanged candidates and whether a model was loaded.

    Raises:
        CurateError: an unknown executor, or Ray actors that cannot load the driver's CLIP weights.
    """
    import fiftyone as fo

    config = ws.config.index
    executor = executor or config.executor
    if executor not in EXECUTORS:
        raise CurateError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    name = ds.dataset_name(ws)
    dataset = ds.find_dataset(ws)
    if dataset is None:  # not `or`: an empty Dataset is falsy
        dataset = fo.Dataset(name, persistent=True)
    dataset.persistent = True
    if not dataset.has_field(ds.CANDIDATE_ID):
        dataset.add_sample_field(ds.CANDIDATE_ID, fo.StringField)
    dataset.create_index(ds.CANDIDATE_ID)  # idempotent; every upsert and lookup is keyed on it
    report = IndexReport(dataset=name)

    complete = dataset.info.get(INDEX_COMPLETE) is True
    fingerprint = scorer.fingerprint if scorer else _known_fingerprint(config)
    if fingerprint is None:  # an open_clip tag: whether its weights load here, only loading tells
        assumed = f"tag:{config.clip_pretrained}"
        if _stored_keys(dataset) - {models_key(config, assumed)}:
            scorer = _load_clip(config)
            fingerprint = scorer.fingerprint
        else:
            fingerprint = assumed
    key = models_key(config, fingerprint)
    todo, moved = _plan(ws, dataset, key, report, progress)
    if moved:
        dataset.set_values("filepath", moved, key_field=ds.CANDIDATE_ID)

    if scorer is not None:
        report.clip_loaded, report.clip_weights = True, scorer.weights
    if todo:
        if scorer is None:
            scorer = _load_clip(config)
            report.clip_loaded, report.clip_weights = True, scorer.weights
        if scorer.fingerprint != fingerprint:  # the tag's weights no longer load on this machine
            if report.unchanged:
                raise CurateError(
                    f"dataset {name!r} holds embeddings from the {config.clip_pretrained!r} CLIP weights, "
                    f"which cannot be loaded here now ({scorer.weights} weights): make them available "
                    "(Hugging Face cache or a checkpoint file in index.clip_pretrained), or set "
                    'index.clip_pretrained = "" to re-embed everything with random weights'
                )
            key = models_key(config, scorer.fingerprint)
        # started before anything is written, so actors that cannot load the model fail first
        remote = _ray_embeddings(todo, config, scorer.weights) if executor == "ray" else None
        presence = P.load_presence(
            ws,
            (c for t in todo for c in t.candidate.concepts),
            scorer.embed_images,
            config.detector,
            config.detection_threshold,
            scorer.device,
        )
        report.presence_source = presence.source
        sas = _load_sas(ws, config, todo, scorer.device)
        # recorded first: a run killed half-way leaves the dataset marked incomplete
        dataset.info.update(
            {INDEX_COMPLETE: False},
            clip_model=scorer.model_name,
            clip_pretrained=scorer.pretrained or "",
            clip_weights=scorer.weights,
            clip_fingerprint=scorer.fingerprint,
            presence_detector=config.detector,
            detection_threshold=config.detection_threshold,
            presence_source=presence.source,
        )
        dataset.save()
        P.declare_fields(dataset)
        for spec in ARTIFACT_SCORES.values():  # identity_drift may be None everywhere
            if not dataset.has_field(spec.name):
                dataset.add_sample_field(spec.name, fo.FloatField)
        if sas is not None:
            from curation.scores.sas import SAS_FIELD, SAS_MEAN_FIELD

            for name, kind in ((SAS_FIELD, fo.DictField), (SAS_MEAN_FIELD, fo.FloatField)):
                if not dataset.has_field(name):
                    dataset.add_sample_field(name, kind)
        thumbs = thumbs_dir(ws)
        _index(dataset, todo, scorer, presence, key, config.batch_size, report, progress, thumbs, remote, sas)
    if len(dataset) and (report.added or report.updated or not complete or diversity):
        progress(DATASET_STAGE, 0, 2)
        _near_duplicates(ws, dataset, report)
        progress(DATASET_STAGE, 1, 2)
        if diversity or diversity_due(dataset, config.diversity_growth):
            _diversity(dataset, report)
        progress(DATASET_STAGE, 2, 2)
    save_views(dataset)
    index_concepts(ws)  # the cut-outs, as the dataset `<name>-concepts`
    if dataset.info.get(INDEX_COMPLETE) is not True:  # last: every step above has finished
        dataset.info[INDEX_COMPLETE] = True
        dataset.save()
    if config.judge and len(dataset):  # after the index is complete: a judge that fails leaves it so
        from curation.scores.judge import judge

        report.judge = judge(ws, config.judge, progress).summary()
    return report


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


def _load_sas(ws: Workspace, config: IndexConfig, todo: list[_Todo], device: Any) -> SASScorer | None:
    """MSP's SAS scorer when `index.subject_segmenter` names an M_SAL; one error if it lacks a concept."""
    if not config.subject_segmenter:
        return None
    from curation.scores.sas import SASScorer

    concepts = {c for t in todo for c in t.candidate.concepts}
    path = Path(config.subject_segmenter)
    return SASScorer.for_workspace(path if path.is_absolute() else ws.root / path, ws, sorted(concepts), str(device))


def _known_fingerprint(config: IndexConfig) -> str | None:
    from curation.scores.clip import weights_fingerprint

    return weights_fingerprint(config.clip_pretrained or None)


def _load_clip(config: IndexConfig) -> ClipScorer:
    from curation.scores.clip import load_clip

    return load_clip(config.clip_model, config.clip_pretrained or None, batch_size=config.batch_size)


def _stored_keys(dataset: fo.Dataset) -> set[str | None]:
    """The models keys in the dataset (None for samples indexed before keys existed)."""
    if not len(dataset):
        return set()
    if not dataset.has_field(ds.MODELS_KEY):
        return {None}
    return set(dataset.distinct(ds.MODELS_KEY))  # samples without a key are re-indexed anyway


def _ray_embeddings(todo: list[_Todo], config: IndexConfig, weights: str) -> Iterator[Embedded]:
    """Ray actors embedding `todo` in the exact batches `_index` will consume them in."""
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


def _near_duplicates(ws: Workspace, dataset: fo.Dataset, report: IndexReport) -> None:
    """Near-duplicates of the samples not yet compared with the others, from the stored CLIP embeddings.

    Skipped with random weights: their distances say nothing about what images show, and every
    candidate would end up someone's duplicate.
    """
    if dataset.info.get("clip_weights") != "pretrained":
        dataset.info["near_duplicates"] = "skipped: random CLIP weights"
        dataset.save()
        return
    report.near_duplicate_queries, report.near_duplicates = mark_new_near_duplicates(
        dataset, ws.index_dir / "near_duplicates", NEAR_DUP_THRESHOLD
    )
    dataset.info["near_duplicates"] = f"cosine distance <= {NEAR_DUP_THRESHOLD}"
    dataset.save()


def diversity_due(dataset: fo.Dataset, growth: float) -> bool:
    """Whether uniqueness and the map are missing, from other weights, or the dataset grew by `growth`."""
    last = dataset.info.get(DIVERSITY)
    if not isinstance(last, dict) or last.get("clip_fingerprint") != dataset.info.get("clip_fingerprint"):
        return True
    return len(dataset) > last.get("samples", 0) * (1 + growth)


def _diversity(dataset: fo.Dataset, report: IndexReport) -> None:
    """Uniqueness (pretrained weights only, as near-duplicates) and the embedding map, over every sample."""
    import fiftyone.brain as fob

    n = len(dataset)
    if dataset.info.get("clip_weights") == "pretrained" and n > 1:
        fob.compute_uniqueness(
            dataset, uniqueness_field=ds.UNIQUENESS, embeddings=ds.CLIP_EMBEDDING, progress=False
        )
        report.uniqueness = True
    report.visualization = visualize(dataset)
    dataset.info[DIVERSITY] = {
        "samples": n,
        "clip_fingerprint": dataset.info.get("clip_fingerprint"),
        "uniqueness": report.uniqueness,
        "map": report.visualization,
    }
    dataset.save()


def visualize(dataset: fo.Dataset) -> str | None:
    """(Re)compute the 2-D map of the CLIP embeddings that the App's Embeddings panel shows.

    UMAP keeps local neighbourhoods (clusters of similar compositions) and is used when umap-learn
    is installed; PCA needs nothing extra and still shows the main axes of variation. The method
    is recorded in `dataset.info["visualization"]`, since the two maps are read differently.

    Returns:
        The method used, or None when the dataset is too small to map.
    """
    import fiftyone.brain as fob

    n = len(dataset)
    if n < _MIN_VISUALIZED:
        return None
    try:
        import umap  # noqa: F401  (only probing that umap-learn is installed)

        method, options = "umap", {"num_neighbors": min(15, n - 1)}
    except ImportError:
        method, options = "pca", {}
    fob.compute_visualization(
        dataset,
        embeddings=ds.CLIP_EMBEDDING,
        brain_key=VISUALIZATION_KEY,
        method=method,
        progress=False,
        **options,
    )
    dataset.info["visualization"] = {"brain_key": VISUALIZATION_KEY, "method": method}
    dataset.save()
    return method


def _plan(
    ws: Workspace, dataset: fo.Dataset, key: str, report: IndexReport, progress: ProgressFn
) -> tuple[list[_Todo], dict[str, str]]:
    """Decide what to (re)index by comparing hashes and models keys with what the dataset holds.

    Records and images whose stat the file memo recognises are neither parsed nor hashed again, nor
    is their path resolved (the guard against paths leaving the workspace runs before any read).
    """
    existing = _indexed(dataset)
    records = list(ws.candidate_record_paths())
    root = str(ws.root)
    todo: list[_Todo] = []
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
                    candidate = _read(record_path)
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
                        candidate = _read(record_path)
                        report.parsed += 1
                except CurateError:
                    report.failed.append((cid, unreadable))
                    continue
                todo.append(_Todo(candidate, Path(path), digest, record, is_new=old is None))
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


def _read(path: str) -> Candidate:
    return read_record(Candidate, Path(path), path, "`curate generate` redoes it")


def _load(todo: _Todo, scorer: ClipScorer | None, thumbs: Path) -> _Loaded | str:
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
    return _Loaded(todo, rgb, scorer.image_tensor(rgb) if scorer else None, scores)


def _chunks(todo: list[_Todo], batch_size: int) -> list[list[_Todo]]:
    """The batches candidates are embedded in, the same for both executors (so are the floats)."""
    return [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]


def _batches(
    todo: list[_Todo], scorer: ClipScorer | None, batch_size: int, thumbs: Path
) -> Iterator[list[_Loaded | str]]:
    """Yield decoded batches, decoding the next one in a thread while the caller embeds this one."""
    chunks = _chunks(todo, batch_size)

    def load(chunk: list[_Todo]) -> list[_Loaded | str]:
        return [_load(t, scorer, thumbs) for t in chunk]

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for index in range(len(chunks)):
            batch = pending.result()
            if index + 1 < len(chunks):
                pending = pool.submit(load, chunks[index + 1])
            yield batch


def _index(
    dataset: fo.Dataset,
    todo: list[_Todo],
    scorer: ClipScorer,
    presence: P.PresenceScorer,
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
    for batch in _batches(todo, None if remote else scorer, batch_size, thumbs):
        sources = todo[done : done + len(batch)]
        report.failed.extend(
            (t.candidate.candidate_id, item) for t, item in zip(sources, batch) if isinstance(item, str)
        )
        loaded = [item for item in batch if isinstance(item, _Loaded)]
        embedded = next(remote) if remote else None
        if embedded and embedded.ok != [isinstance(item, _Loaded) for item in batch]:
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
                pending.append(row | P.presence_fields(found[k], item.image.size))
                if sas is not None:
                    pending[-1] |= sas.score(item.image, item.todo.candidate)
        done += len(batch)
        if len(pending) >= _WRITE_CHUNK:
            _write(dataset, pending, report)
            pending = []
        progress("indexing (CLIP, presence, artifact scores)", done, len(todo))
    _write(dataset, pending, report)


def _fields(item: _Loaded, embedding: np.ndarray, score: float, cosine: float) -> dict[str, Any]:
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


def _write(dataset: fo.Dataset, rows: list[dict[str, Any]], report: IndexReport) -> None:
    """Bulk-write: add_samples for new candidates, set_values keyed by candidate_id for changed ones."""
    import fiftyone as fo

    new, changed = [], []
    for row in rows:
        (new if row.pop("_is_new") else changed).append(row)
    if new:
        dataset.add_samples([fo.Sample(**row) for row in new], progress=False)
        report.added += len(new)
    if changed:
        for key in changed[0]:
            if key != ds.CANDIDATE_ID:
                values = {row[ds.CANDIDATE_ID]: row[key] for row in changed}
                dataset.set_values(key, values, key_field=ds.CANDIDATE_ID)
        report.updated += len(changed)


def save_views(dataset: fo.Dataset) -> list[str]:
    """(Re)save the browsing views; they are queries, so they stay current as fields change.

    Returns:
        The names of the saved views.
    """
    from fiftyone import ViewField as F

    high = None
    for spec in ARTIFACT_SCORES.values():
        term = F(spec.name) > spec.threshold if spec.higher_is_worse else F(spec.name) < spec.threshold
        high = term if high is None else high | term
    rule = " or ".join(f"{s.name} {'>' if s.higher_is_worse else '<'} {s.threshold:g}" for s in ARTIFACT_SCORES.values())
    views = {
        ds.VIEW_UNREVIEWED: (
            dataset.match(F(ds.REVIEW_DECISION) == None),  # Mongo query: `is None` would not work
            "no human decision pulled yet",
        ),
        ds.VIEW_ACCEPTED: (ds.accepted_view(dataset), "review_decision == accept (majority of annotators)"),
        ds.VIEW_REJECTED: (dataset.match(F(ds.REVIEW_DECISION) == ds.REJECT), "review_decision == reject"),
        ds.VIEW_ACCEPTED_Q3: (ds.accepted_view(dataset, min_quality=3), "accepted and review_quality >= 3"),
        ds.VIEW_HIGH_ARTIFACTS: (dataset.match(high), f"any artifact score past its threshold: {rule}"),
        ds.VIEW_NEAR_DUPLICATES: (
            dataset.match(F(ds.NEAR_DUP_OF) != None),
            "near_dup_of set: a better-scored near-copy exists (CLIP embeddings)",
        ),
        P.VIEW_MISSING_CONCEPT: (
            dataset.match(F(P.MISSING_CONCEPTS).length() > 0),
            "presence found at least one planned concept missing",
        ),
        ds.VIEW_TOP_CANDIDATES: (
            dataset.match(~high & (F(ds.NEAR_DUP_OF) == None) & (F(ds.REVIEW_DECISION) != ds.REJECT)).sort_by(
                ds.CLIP_T, reverse=True
            ),
            f"not rejected by a human, no near-duplicate, no artifact score past ({rule}); best clip_t first",
        ),
    }
    for name, (view, description) in views.items():
        dataset.save_view(name, view, description=description, overwrite=True)
    _sidebar(dataset)
    return list(views)


def _sidebar(dataset: fo.Dataset) -> None:
    """App sidebar groups (scores, presence, review, provenance) instead of one flat list, and score
    fields that say so when the CLIP weights behind them were random."""
    import fiftyone as fo

    random = dataset.info.get("clip_weights") != "pretrained"
    for name in (ds.CLIP_T, ds.CLIP_T_COS, ds.UNIQUENESS, P.CP_CLIP):
        if dataset.has_field(name):
            field = dataset.get_field(name)
            field.description = "RANDOM CLIP weights: meaningless" if random else "pretrained CLIP weights"
            field.save()
    ours = {
        "scores": [ds.CLIP_T, ds.CLIP_T_COS, ds.UNIQUENESS, *ARTIFACT_SCORES, ds.NEAR_DUP_OF],
        "presence": [P.CP_CLIP, P.PRESENCE, P.MISSING_CONCEPTS, P.DETECTIONS, P.PRESENCE_SOURCE],
        "review": [
            ds.REVIEW_DECISION, ds.REVIEW_QUALITY, ds.REVIEW_AGREEMENT, ds.REVIEW_ANNOTATORS,
            ds.REVIEW_REASONS, ds.CAPTION_FIXED, ds.TRIAGE,
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
    dataset.app_config.sidebar_groups = groups
    dataset.save()


def launch_app(ws: Workspace, address: str = "127.0.0.1", port: int = 5151) -> str:
    """Serve the FiftyOne App on the workspace's dataset and return its URL.

    A busy `port` is not waited on (FiftyOne would wait 60 s and then time out): the nearest free
    port above it is used, and the returned URL says which. FiftyOne's usage tracking is turned
    off for the App, which would otherwise report researchers' sessions to a third party.
    The session stays open in this process (FiftyOne keeps it); `fiftyone.close_app()` ends it.
    FiftyOne gives its server 60 s to bind; a heavily loaded 2-core machine can miss that on a
    cold start, which becomes a CurateError (retrying in-process is not safe: FiftyOne's cleanup of
    the failed session can take the database connection down with it).

    Raises:
        CurateError: when `curate index` has not run yet, or the server does not start.
    """
    import fiftyone as fo
    from fiftyone.core.service import ServiceListenTimeout

    dataset = ds.open_dataset(ws, require_samples=True)
    port = choose_port(port, address)
    fo.config.do_not_track = True
    try:
        fo.launch_app(dataset, remote=True, address=address, port=port)
    except ServiceListenTimeout as exc:
        raise CurateError(
            f"the FiftyOne App did not start on {address}:{port} within 60 s; run it again"
        ) from exc
    return f"http://{address}:{port}/datasets/{dataset.name}"

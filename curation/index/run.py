"""`curate index`: candidates -> the workspace's FiftyOne dataset, with CLIP, presence and artifact scores.

One sample per candidate, keyed by `candidate_id` and upserted, so re-running never duplicates.
This module runs the steps in order and decides which models they use; each step has its module:
which candidates need work (`curation.index.plan`), scoring and writing their samples
(`curation.index.samples`), near-duplicates, uniqueness and the embedding map
(`curation.index.diversity`), the App's saved views and sidebar (`curation.index.views`), and the
concepts' own dataset (`curation.index.concepts_dataset`).

An unchanged workspace costs one hash per file and loads no model, except that while the dataset
holds other weights than a configured open_clip tag (random ones, say), every run loads the model to
see whether the tag's weights are available now.
The run is marked complete (`dataset.info["index_complete"]`) only after near-duplicates and, when
due, uniqueness and the map: a run killed before them leaves the mark off, and the next run finishes
them even when no candidate changed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.core import dataset as ds
from curation.core.dataset_summary import keeps_summary
from curation.core.errors import CurateError
from curation.core.lock import writes
from curation.core.progress import ProgressFn, no_progress
from curation.core.thumbnails import thumbs_dir
from curation.index.concepts_dataset import index_concepts
from curation.index.diversity import compute_diversity, diversity_due, mark_near_duplicates
from curation.index.plan import CandidateToIndex, models_key, plan_candidates, stored_models_keys
from curation.index.run_report import IndexReport
from curation.index.samples import ray_embedding_batches, write_samples
from curation.index.views import save_views
from curation.scores import presence
from curation.scores.artifacts import ARTIFACT_SCORES

if TYPE_CHECKING:
    import fiftyone as fo

    from curation.core.config import IndexConfig
    from curation.core.workspace import Workspace
    from curation.scores.clip import ClipScorer
    from curation.scores.sas import SASScorer

EXECUTORS = ("local", "ray")
INDEX_COMPLETE = "index_complete"
"""dataset.info key: False from a run's first write, True after its last step."""
DATASET_STAGE = "near-duplicates, uniqueness, embedding map"
"""The progress stage of the dataset-wide steps (0, 1, 2 of 2)."""
log = logging.getLogger(__name__)


@writes("index")
@keeps_summary("index")  # status reads what it wrote without starting FiftyOne
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
    dataset = _open_or_create(ws)
    report = IndexReport(dataset=name)

    complete = dataset.info.get(INDEX_COMPLETE) is True
    fingerprint = scorer.fingerprint if scorer else _known_fingerprint(config)
    if fingerprint is None:  # an open_clip tag: whether its weights load here, only loading tells
        assumed = f"tag:{config.clip_pretrained}"
        if stored_models_keys(dataset) - {models_key(config, assumed)}:
            scorer = _load_clip(config)
            fingerprint = scorer.fingerprint
        else:
            fingerprint = assumed
    key = models_key(config, fingerprint)
    todo, moved = plan_candidates(ws, dataset, key, report, progress)
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
        remote = ray_embedding_batches(todo, config, scorer.weights) if executor == "ray" else None
        presence_scorer = presence.load_presence(
            ws,
            (c for t in todo for c in t.candidate.concepts),
            scorer.embed_images,
            config.detector,
            config.detection_threshold,
            scorer.device,
        )
        report.presence_source = presence_scorer.source
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
            presence_source=presence_scorer.source,
        )
        dataset.save()
        presence.declare_fields(dataset)
        for spec in ARTIFACT_SCORES.values():  # identity_drift may be None everywhere
            if not dataset.has_field(spec.name):
                dataset.add_sample_field(spec.name, fo.FloatField)
        if sas is not None:
            from curation.scores.sas import SAS_FIELD, SAS_MEAN_FIELD

            for name, kind in ((SAS_FIELD, fo.DictField), (SAS_MEAN_FIELD, fo.FloatField)):
                if not dataset.has_field(name):
                    dataset.add_sample_field(name, kind)
        thumbs = thumbs_dir(ws)
        write_samples(
            dataset,
            todo,
            scorer,
            presence_scorer,
            key,
            config.batch_size,
            report,
            progress,
            thumbs,
            remote,
            sas,
        )
    if len(dataset) and (report.added or report.updated or not complete or diversity):
        progress(DATASET_STAGE, 0, 2)
        mark_near_duplicates(ws, dataset, report, key)
        progress(DATASET_STAGE, 1, 2)
        if diversity or diversity_due(dataset, config.diversity_growth):
            compute_diversity(dataset, report, key)
        progress(DATASET_STAGE, 2, 2)
    save_views(dataset, ws.config.export.min_quality)
    index_concepts(ws)  # the cut-outs, as the dataset `<name>-concepts`
    if dataset.info.get(INDEX_COMPLETE) is not True:  # last: every step above has finished
        dataset.info[INDEX_COMPLETE] = True
        dataset.save()
    if config.judge and len(dataset):  # after the index is complete: a judge that fails leaves it so
        from curation.scores.judge import judge

        report.judge = judge(ws, config.judge, progress).summary()
    return report


def _open_or_create(ws: Workspace) -> fo.Dataset:
    """The workspace's dataset, created on first use, with a unique index on `candidate_id`.

    Every upsert and lookup is keyed on `candidate_id`, and the unique index makes a second sample of
    one candidate impossible whatever runs at once. Duplicates that an older curate let two
    concurrent runs add are removed first (the oldest sample of each candidate stays). A dataset a
    kill left half-created gets its missing default indexes.
    """
    import fiftyone as fo

    dataset = ds.find_dataset(ws)
    if dataset is None:  # not `or`: an empty Dataset is falsy
        dataset = fo.Dataset(ds.dataset_name(ws), persistent=True)
    if set(dataset._get_default_indexes()) - set(dataset.list_indexes()):
        # killed while FiftyOne created the dataset: it makes the default indexes after the dataset's
        # record, and never again
        from fiftyone.core.dataset import _create_indexes

        _create_indexes(dataset._sample_collection_name, None)
    dataset.persistent = True
    if not dataset.has_field(ds.CANDIDATE_ID):
        dataset.add_sample_field(ds.CANDIDATE_ID, fo.StringField)
    if not dataset.get_index_information().get(ds.CANDIDATE_ID, {}).get("unique"):
        groups = [
            {"$group": {"_id": f"${ds.CANDIDATE_ID}", "ids": {"$push": "$_id"}}},
            {"$match": {"ids.1": {"$exists": True}}},
        ]
        found = dataset._sample_collection.aggregate(groups)
        extra = [str(i) for group in found for i in sorted(group["ids"])[1:]]
        if extra:
            log.warning("removing %d duplicate samples of one candidate from %s", len(extra), dataset.name)
            dataset.delete_samples(extra)
        dataset.create_index(ds.CANDIDATE_ID, unique=True)
    return dataset


def _load_sas(
    ws: Workspace, config: IndexConfig, todo: list[CandidateToIndex], device: Any
) -> SASScorer | None:
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

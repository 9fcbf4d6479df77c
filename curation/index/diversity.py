"""How alike the indexed candidates are: near-duplicates of the new samples, uniqueness and the embedding map.

All three read the stored CLIP embeddings after an index run has written its samples.
Near-duplicates compare only new or re-embedded samples with the others
(`curation.index.near_duplicates`, O(N x d) per new sample, never N x N). Uniqueness and the
2-D map for the App's Embeddings panel (UMAP when umap-learn is installed, else PCA) are
dataset-wide by nature: they are recomputed on demand (`curate index --diversity`) or when the
dataset has grown by `index.diversity_growth` since they last ran (`dataset.info["diversity"]`
says when and at which size), so new samples have no uniqueness until then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curation.core import dataset as ds
from curation.index.near_duplicates import mark_new_near_duplicates

if TYPE_CHECKING:
    import fiftyone as fo

    from curation.core.workspace import Workspace
    from curation.index.run_report import IndexReport

NEAR_DUP_THRESHOLD = 0.05
"""Cosine distance under which two candidates count as near-duplicates (FiftyOne Brain's metric)."""
VISUALIZATION_KEY = "clip_viz"
"""Brain key of the embedding map; one stable key, overwritten on each re-index."""
_MIN_VISUALIZED = 5
"""Fewer samples than this make no meaningful 2-D map (and t-SNE/UMAP need neighbours)."""
DIVERSITY = "diversity"
"""dataset.info key: when uniqueness and the map last ran ({"samples", "clip_fingerprint", "uniqueness", "map"})."""


def mark_near_duplicates(ws: Workspace, dataset: fo.Dataset, report: IndexReport, key: str) -> None:
    """Near-duplicates of the samples not yet compared with the others, from the stored CLIP embeddings
    of the models `key` (`curation.index.plan.models_key`).

    Skipped with random weights: their distances say nothing about what images show, and every
    candidate would end up someone's duplicate.
    """
    if dataset.info.get("clip_weights") != "pretrained":
        dataset.info["near_duplicates"] = "skipped: random CLIP weights"
        dataset.save()
        return
    report.near_duplicate_queries, report.near_duplicates = mark_new_near_duplicates(
        dataset, ws.index_dir / "near_duplicates", NEAR_DUP_THRESHOLD, key
    )
    dataset.info["near_duplicates"] = f"cosine distance <= {NEAR_DUP_THRESHOLD}"
    dataset.save()


def diversity_due(dataset: fo.Dataset, growth: float) -> bool:
    """Whether uniqueness and the map are missing, from other weights, or the dataset grew by `growth`."""
    last = dataset.info.get(DIVERSITY)
    if not isinstance(last, dict) or last.get("clip_fingerprint") != dataset.info.get("clip_fingerprint"):
        return True
    return len(dataset) > last.get("samples", 0) * (1 + growth)


def compute_diversity(dataset: fo.Dataset, report: IndexReport, key: str) -> None:
    """Uniqueness (pretrained weights only, as near-duplicates) and the embedding map, over every sample
    scored with the models `key`: one a run could not re-embed holds another model's embedding, whose
    width may differ."""
    import fiftyone.brain as fob
    from fiftyone import ViewField as F

    scored = dataset.match(F(ds.MODELS_KEY) == key)
    collection = dataset if len(scored) == len(dataset) else scored
    n = len(collection)
    if dataset.info.get("clip_weights") == "pretrained" and n > 1:
        fob.compute_uniqueness(
            collection, uniqueness_field=ds.UNIQUENESS, embeddings=ds.CLIP_EMBEDDING, progress=False
        )
        report.uniqueness = True
    report.visualization = visualize(dataset, collection)
    dataset.info[DIVERSITY] = {
        "samples": n,
        "clip_fingerprint": dataset.info.get("clip_fingerprint"),
        "uniqueness": report.uniqueness,
        "map": report.visualization,
    }
    dataset.save()


def visualize(dataset: fo.Dataset, collection: fo.Dataset | fo.DatasetView) -> str | None:
    """(Re)compute the 2-D map of `collection`'s CLIP embeddings that the App's Embeddings panel shows.

    UMAP keeps local neighbourhoods (clusters of similar compositions) and is used when umap-learn
    is installed; PCA needs nothing extra and still shows the main axes of variation. The method
    is recorded in `dataset.info["visualization"]`, since the two maps are read differently.

    Returns:
        The method used, or None when the dataset is too small to map.
    """
    import fiftyone.brain as fob

    n = len(collection)
    if n < _MIN_VISUALIZED:
        return None
    try:
        import umap  # noqa: F401  (only probing that umap-learn is installed)

        method, options = "umap", {"num_neighbors": min(15, n - 1)}
    except ImportError:
        method, options = "pca", {}
    fob.compute_visualization(
        collection,
        embeddings=ds.CLIP_EMBEDDING,
        brain_key=VISUALIZATION_KEY,
        method=method,
        progress=False,
        **options,
    )
    dataset.info["visualization"] = {"brain_key": VISUALIZATION_KEY, "method": method}
    dataset.save()
    return method

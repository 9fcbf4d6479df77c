"""The concepts' cut-outs as a FiftyOne dataset beside the candidates': `<dataset name>-concepts`.

One sample per reference photo whose media is its RGBA cut-out (what the paste uses), so the App shows
every mask a candidate can be built from next to the candidates themselves; the mask's flags are its
tags (filter on `touches_frame`, `holes`...) and the concept's id, name, class noun, token and
segmenter are fields. It is rebuilt from the concept records by every `curate index`: a few samples
per concept, so rebuilding is cheaper than diffing, and a re-added concept never leaves stale ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curation.concepts.references import cutout_paths, masks_per_ref
from curation.core import dataset as ds
from curation.core.workspace import Workspace

if TYPE_CHECKING:
    import fiftyone as fo

CONCEPTS_SUFFIX = "-concepts"
CONCEPT_FIELDS = ("concept_id", "concept_name", "class_noun", "token", "segmenter", "reference", "mask")


def concepts_dataset_name(ws: Workspace) -> str:
    return ds.dataset_name(ws) + CONCEPTS_SUFFIX


def index_concepts(ws: Workspace) -> fo.Dataset:
    """Write the workspace's concepts dataset (persistent) from its concept records; returns it."""
    import fiftyone as fo

    name = concepts_dataset_name(ws)
    dataset = fo.load_dataset(name) if fo.dataset_exists(name) else fo.Dataset(name, persistent=True)
    samples = []
    for concept in ws.concepts().values():
        flags_per_ref = [*concept.mask_flags, *[[]] * (len(concept.refs) - len(concept.mask_flags))]  # older records
        masks = masks_per_ref(concept)
        for cutout, ref, mask, flags in zip(cutout_paths(ws, concept), concept.refs, masks, flags_per_ref):
            values = (concept.concept_id, concept.name, concept.class_noun, concept.token, concept.segmenter,
                      str(ws.resolve(ref)), str(ws.resolve(mask)) if mask else None)  # fmt: skip
            samples.append(fo.Sample(filepath=str(cutout), tags=list(flags), **dict(zip(CONCEPT_FIELDS, values))))
    dataset.clear()
    dataset.add_samples(samples, progress=False)
    return dataset

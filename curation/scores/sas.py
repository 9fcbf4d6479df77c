"""SAS (MSP's subject-aware similarity): M_SAL encoder features of a subject's region vs its photos.

`curate index` scores candidates with `SASScorer` (`[index] subject_segmenter`); the evaluator embeds
generated images and references with the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from curation.core.paste_record import PASTE_SILHOUETTES, decode_silhouettes, layer_concepts
from curation.core.records import Candidate
from curation.core.workspace import Workspace
from curation.models.subject_segmenter import SubjectSegmenter, masked, read_rgb, to_tensor
from curation.scores.similarity import reference_similarity


def region_embeddings(
    segmenter: SubjectSegmenter, rgb: np.ndarray, regions: Sequence[np.ndarray]
) -> np.ndarray:
    """SAS embeddings [len(regions), C] of one image's regions (bool HxW each; the image outside is zeroed)."""
    import torch

    if not regions:
        return np.zeros((0, 0), np.float32)
    pixels = to_tensor(rgb).repeat(len(regions), 1, 1, 1)
    mask = torch.from_numpy(np.stack(regions)[:, None].astype(np.float32))
    with torch.no_grad():
        return segmenter.features(masked(pixels, mask).to(segmenter.device)).cpu().numpy()



def reference_embeddings(
    segmenter: SubjectSegmenter, sources: Sequence[tuple[Path, Path | None]]
) -> np.ndarray:
    """SAS embeddings of a concept's source images, each isolated by its mask when one is given."""
    rows = []
    for image_path, mask_path in sources:
        rgb = read_rgb(image_path)
        if mask_path is not None:
            with Image.open(mask_path) as m:
                region = np.asarray(m.convert("L").resize(rgb.shape[1::-1])) >= 128
        else:
            region = np.ones(rgb.shape[:2], bool)
        rows.append(region_embeddings(segmenter, rgb, [region])[0])
    return np.stack(rows)



def concept_regions(candidate: Candidate, height: int, width: int) -> dict[str, np.ndarray]:
    """Where each concept is in a candidate image: its kept silhouette, or its box without one."""
    import cv2

    text = candidate.extra.get(PASTE_SILHOUETTES)
    if text:
        layers = cv2.resize(decode_silhouettes(text), (width, height), interpolation=cv2.INTER_NEAREST)
        return {c: layers == k for k, c in enumerate(layer_concepts(candidate), start=1)}
    sy, sx = height / candidate.height, width / candidate.width
    regions = {}
    for box in candidate.boxes:
        region = np.zeros((height, width), bool)
        y0, x0 = math.floor(box.y * sy), math.floor(box.x * sx)
        region[max(y0, 0) : math.ceil((box.y + box.h) * sy), max(x0, 0) : math.ceil((box.x + box.w) * sx)] = (
            True
        )
        regions[box.concept_id] = region
    return regions



SAS_FIELD = "sas"
"""Index field: concept_id -> SAS of that concept's region in the candidate (a dict)."""



SAS_MEAN_FIELD = "sas_mean"
"""Index field: the candidate's SAS, mean over its concepts."""



class SASScorer:
    """SAS for workspace candidates: each concept's region (kept silhouette, else box) vs its references.

    The references are the concept's photos isolated by their soft masks, embedded once.

    Args:
        segmenter: a loaded M_SAL.
        refs: concept_id -> SAS embeddings of its references [R, C].
    """

    def __init__(self, segmenter: SubjectSegmenter, refs: dict[str, np.ndarray]):
        self.segmenter = segmenter
        self.refs = refs

    @classmethod
    def for_workspace(
        cls, path: str | Path, ws: Workspace, concepts: Sequence[str], device: str | None = None
    ) -> SASScorer:
        """Load M_SAL from `path`; one CurateError when it lacks a class for any of `concepts`."""
        segmenter = SubjectSegmenter.load(path, device)
        needed = sorted(set(concepts))
        segmenter.check_concepts(needed, source=str(path))
        known = ws.concepts()
        refs = {
            c: reference_embeddings(
                segmenter, [(ws.resolve(r), ws.resolve(m)) for r, m in zip(known[c].refs, known[c].masks)]
            )
            for c in needed
            if c in known
        }
        return cls(segmenter, refs)

    def score(self, image: Image.Image, candidate: Candidate) -> dict[str, Any]:
        """{SAS_FIELD: {concept: SAS}, SAS_MEAN_FIELD: mean}; an empty region scores 0, as in CP-CLIP."""
        rgb = np.asarray(image.convert("RGB"))
        regions = concept_regions(candidate, *rgb.shape[:2])
        concepts = [c for c in candidate.concepts if c in self.refs]
        present = [c for c in concepts if regions.get(c) is not None and regions[c].any()]
        embs = dict(zip(present, region_embeddings(self.segmenter, rgb, [regions[c] for c in present])))
        per = {c: reference_similarity(embs[c], self.refs[c]) if c in embs else 0.0 for c in concepts}
        return {SAS_FIELD: per, SAS_MEAN_FIELD: float(np.mean(list(per.values()))) if per else None}

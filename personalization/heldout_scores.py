"""Score the evaluator's generated images: CP-CLIP, TI-CLIP, CLIP-I, CLIP-T, DINO, Detect-and-Compare, SAS.

Definitions are in `personalization.metrics`; the choices the papers leave open, all fields of
`EvalSettings`:
- The detector is queried with the prompt's class nouns ("cat", "dog"), all in one pass, so each
  box answers the noun it matches best; a concept's crop is its noun's highest-scoring box at or above
  `detection_threshold` (0.1, OWL-ViT's usual value). Boxes are clipped to the image; one thinner
  than `min_box_px` counts as no detection. Two concepts sharing a noun share their best box.
- References are the export's `concepts/<id>/refs` images as they are (not masked);
  a concept's similarity is the mean (`ref_reduce="mean"`) or max cosine over them.
- CLIP-T uses the token-free prompt (tokens -> class nouns, the same text as TI-CLIP) and defaults
  to CLIPScore's `2.5 * max(cos, 0)` (`clip_t_convention`); TI-CLIP is always the raw cosine.
- CLIP-I and DINO compare the whole generated image (not crops) with the references.
- Detect-and-Compare counts class-agnostic NMS survivors (IoU 0.5) over all queried nouns and
  compares their crops with the references in DINO space (MuDI used DreamSim/DINOv2).
- SAS (MSP) runs when `subject_segmenter` names a `curate train-segmenter` folder whose classes cover
  the export's concepts: a subject's region is where M_SAL's argmax is its class (the images carry no
  paste record); an empty region scores 0. References are the export's refs isolated by their masks.
  Without a segmenter the SAS cells read "–".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curation.core.progress import ProgressFn
from curation.scores.similarity import RefReduce
from personalization import metrics
from personalization.data import Export
from personalization.eval_settings import EvalSettings


def score_rows(
    rows: list[dict],
    export: Export,
    settings: EvalSettings,
    out_dir: Path,
    device: str | None,
    progress: ProgressFn,
    msal: Any = None,
    sas_refs: dict[str, np.ndarray] | None = None,
) -> dict[str, str]:
    """Fill every row's metrics in place (SAS when `msal` is given); return which weights they came from."""
    from PIL import Image

    from curation.scores.clip import load_clip
    from curation.scores.presence import best_per_label, crop, load_detector
    from personalization.vision import load_dino

    clip = load_clip(settings.clip_model, settings.clip_pretrained, device=device)
    detector = load_detector(settings.detector, device)
    dino = load_dino(settings.dino, device)

    def open_rgb(path: Path):
        with Image.open(path) as image:
            return image.convert("RGB")

    clip_refs, dino_refs = {}, {}
    for cid, concept in export.concepts.items():
        refs = [open_rgb(p) for p in concept.refs]
        clip_refs[cid] = clip.embed_images(refs)
        dino_refs[cid] = dino.embed(refs)

    for index, row in enumerate(rows):
        image = open_rgb(out_dir / row["image"])
        concepts = [export.concepts[c] for c in row["concepts"]]
        nouns = [c.class_noun for c in concepts]
        concept_clip_refs = [clip_refs[c.concept_id] for c in concepts]
        concept_dino_refs = [dino_refs[c.concept_id] for c in concepts]
        image_emb = clip.embed_images([image])[0]
        text_emb = clip.embed_texts([row["plain_text"]])[0]
        detections = [
            d
            for d in detector.detect(image, list(dict.fromkeys(nouns)), settings.detection_threshold)
            if crop(image, d, settings.min_box_px) is not None
        ]
        best = best_per_label(detections, nouns)
        crops = [None if d is None else crop(image, d, settings.min_box_px) for d in best]
        found = [c for c in crops if c is not None]
        found_embs = iter(clip.embed_images(found)) if found else iter(())
        crop_embs = [None if c is None else next(found_embs) for c in crops]
        kept = metrics.nms(detections)
        kept_crops = [crop(image, d, settings.min_box_px) for d in kept]
        dnc_embs = dino.embed(kept_crops) if kept_crops else np.zeros((0, 1))
        row.update(
            cp_clip=metrics.cp_clip(crop_embs, concept_clip_refs, settings.ref_reduce),
            ti_clip=metrics.ti_clip(image_emb, text_emb),
            clip_i=metrics.clip_i(image_emb, concept_clip_refs, settings.ref_reduce),
            clip_t=metrics.clip_t(image_emb, text_emb, settings.clip_t_convention),
            dino=metrics.clip_i(dino.embed([image])[0], concept_dino_refs, settings.ref_reduce),
            dnc=metrics.detect_and_compare(dnc_embs, concept_dino_refs, settings.ref_reduce),
            detected=[None if d is None else {"box": list(d.box), "score": d.score} for d in best],
            n_detected=len(kept),
            sas=_sas(msal, sas_refs or {}, image, row["concepts"], settings.ref_reduce) if msal else None,
        )
        progress("score", index + 1, len(rows))
    return {
        "clip": getattr(clip, "weights", "unknown"),
        "clip_model": f"{settings.clip_model}/{settings.clip_pretrained}",
        "detector": settings.detector,
        "dino": settings.dino,
        "subject_segmenter": settings.subject_segmenter,
    }


def load_sas(export: Export, settings: EvalSettings, device: str | None):
    """M_SAL and each concept's reference SAS embeddings (refs isolated by the export's masks)."""
    if not settings.subject_segmenter:
        return None, {}
    from curation.models.subject_segmenter import SubjectSegmenter
    from curation.scores.sas import reference_embeddings

    msal = SubjectSegmenter.load(settings.subject_segmenter, device)
    msal.check_concepts(list(export.concepts), source=settings.subject_segmenter)
    refs = {
        cid: reference_embeddings(msal, concept.reference_masks) for cid, concept in export.concepts.items()
    }
    return msal, refs


def _sas(msal, refs: dict[str, np.ndarray], image, concepts: list[str], reduce: RefReduce) -> float:
    """SAS of one generated image: each subject where M_SAL finds it, vs its references."""
    from curation.scores.sas import region_embeddings

    rgb = np.asarray(image)
    found = msal.regions(rgb, concepts)
    present = [c for c in concepts if found[c].any()]
    embs = dict(zip(present, region_embeddings(msal, rgb, [found[c] for c in present])))
    return metrics.sas([embs.get(c) for c in concepts], [refs[c] for c in concepts], reduce)

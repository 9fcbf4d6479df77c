"""Concept presence and CP-CLIP per candidate: is each concept there, and does it still look like itself?

Gen4Gen's CP-CLIP, as `curate index` computes it: for each concept of a candidate, an open-vocabulary
detector (OWL-ViT or OWLv2 through transformers) is queried with the concept's class noun; the
concept's best detection is cropped and compared with the concept's reference images by CLIP image
embeddings (mean cosine over references); a concept not found scores 0; CP-CLIP is the mean over
the candidate's concepts. With no detector configured (the offline default) the planned boxes stand
in for detections and every result says `presence_source = "plan"`: the score then measures
resemblance inside the plan's boxes, not whether the concept was found.

The detector loader lives here once; the personalization evaluator imports it from this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.core.devices import torch_device
from curation.core.errors import CurateError

if TYPE_CHECKING:
    import fiftyone as fo
    from PIL import Image

    from curation.core.records import Box, Candidate
    from curation.core.workspace import Workspace

PRESENCE = "presence"
"""dict concept_id -> similarity of its crop to its references (0 when not found)."""
CP_CLIP = "cp_clip"
MISSING_CONCEPTS = "missing_concepts"
DETECTIONS = "detections"
"""fo.Detections of the detector's best box per concept (None when the plan stood in)."""
PRESENCE_SOURCE = "presence_source"
SOURCE_DETECTOR = "detector"
SOURCE_PLAN = "plan"
VIEW_MISSING_CONCEPT = "missing_concept"
MIN_BOX_PX = 4
"""A crop thinner than this many pixels counts as no detection: it cannot show a concept."""

EmbedFn = Callable[[list["Image.Image"]], np.ndarray]
"""Images -> L2-normalised embeddings (N, D); `ClipScorer.embed_images` in production."""


@dataclass(frozen=True)
class Detection:
    """One detector box in pixels (x0, y0, x1, y1), its score and the query (class noun) it answers."""

    box: tuple[float, float, float, float]
    score: float
    label: str


@dataclass
class Presence:
    """What presence scoring says about one candidate.

    Attributes:
        presence: concept_id -> mean cosine of its crop with its references; 0 when not found.
        cp_clip: mean of `presence` over the concepts scored (None when no concept has references).
        missing: concepts not found (for the plan source: only boxes too small to crop).
        found: concept_id -> the detection used (pixels), for every concept found.
        source: "detector" or "plan".
    """

    presence: dict[str, float]
    cp_clip: float | None
    missing: list[str]
    found: dict[str, Detection]
    source: str


def best_per_label(detections: Iterable[Detection], labels: Sequence[str]) -> list[Detection | None]:
    """The highest-scoring detection for each label, None where the label has none."""
    best: dict[str, Detection] = {}
    for det in detections:
        if det.label not in best or det.score > best[det.label].score:
            best[det.label] = det
    return [best.get(label) for label in labels]


def crop(image: Image.Image, det: Detection, min_px: int = MIN_BOX_PX) -> Image.Image | None:
    """The detection's crop, clipped to the image; None when what is left is too thin to mean anything."""
    x0, y0, x1, y1 = det.box
    x0, y0 = max(0, round(x0)), max(0, round(y0))
    x1, y1 = min(image.width, round(x1)), min(image.height, round(y1))
    if x1 - x0 < min_px or y1 - y0 < min_px:
        return None
    return image.crop((x0, y0, x1, y1))


def plan_detections(
    boxes: Sequence[Box], width: int, height: int, image_size: tuple[int, int]
) -> dict[str, Detection]:
    """The planned boxes as detections (score 1) in the pixels of an image of `image_size` (w, h)."""
    sx, sy = image_size[0] / width, image_size[1] / height
    return {
        b.concept_id: Detection((b.x * sx, b.y * sy, (b.x + b.w) * sx, (b.y + b.h) * sy), 1.0, b.concept_id)
        for b in boxes
    }


def score_presence(
    items: Sequence[tuple[Image.Image, dict[str, Detection | None]]],
    refs: dict[str, np.ndarray],
    embed: EmbedFn,
    source: str,
) -> list[Presence]:
    """Crop every concept's detection in a batch of images, embed all crops at once, compare with refs.

    Args:
        items: per image, concept_id -> its detection in that image's pixels (None: not found).
            Concepts absent from `refs` (no reference images) are left out of every score.
        refs: concept_id -> its references' L2-normalised embeddings (R, D).
        embed: embeds a list of crops in one call.
        source: "detector" or "plan", recorded on every result.
    """
    crops: list[Image.Image] = []
    slots: list[tuple[int, str]] = []
    results = []
    for index, (image, detections) in enumerate(items):
        result = Presence({}, None, [], {}, source)
        for concept_id, det in detections.items():
            if concept_id not in refs:
                continue
            piece = None if det is None else crop(image, det)
            if piece is None:
                result.presence[concept_id] = 0.0
                result.missing.append(concept_id)
            else:
                result.found[concept_id] = det
                crops.append(piece)
                slots.append((index, concept_id))
        results.append(result)
    embeddings = embed(crops) if crops else np.zeros((0, 1), dtype=np.float32)
    for (index, concept_id), embedding in zip(slots, embeddings):
        results[index].presence[concept_id] = float(np.mean(refs[concept_id] @ embedding))
    for result, (_, detections) in zip(results, items):
        if result.presence:  # back into the candidate's concept order
            result.presence = {c: result.presence[c] for c in detections if c in result.presence}
            result.cp_clip = float(np.mean(list(result.presence.values())))
    return results


def load_pretrained(kind: str, model_id: str, loader: Callable[[], Any]) -> Any:
    """Run a transformers `from_pretrained` call, turning a missing or unfit model into a CurateError."""
    try:
        return loader()
    except (OSError, ValueError) as exc:
        raise CurateError(f"cannot load {kind} model {model_id!r}: {str(exc).splitlines()[0]}") from exc


@dataclass
class OwlDetector:
    """OWL-ViT or OWLv2: finds boxes for free-text queries (class nouns)."""

    model: Any
    processor: Any
    device: str
    square_padded: bool

    def detect(self, image: Image.Image, queries: list[str], threshold: float) -> list[Detection]:
        """Boxes (pixels of `image`) whose best query scores at least `threshold`."""
        import torch

        inputs = self.processor(text=[queries], images=image, return_tensors="pt").to(self.device)
        with torch.no_grad():
            outputs = self.model(**inputs)
        # OWLv2 pads to a square before predicting, so its boxes are relative to the padded side.
        side = max(image.size)
        target = (side, side) if self.square_padded else (image.height, image.width)
        result = self.processor.post_process_grounded_object_detection(
            outputs=outputs, threshold=threshold, target_sizes=[target], text_labels=[queries]
        )[0]
        return [
            Detection(box=tuple(float(v) for v in box), score=float(score), label=label)
            for box, score, label in zip(
                result["boxes"].tolist(), result["scores"].tolist(), result["text_labels"]
            )
        ]


def load_detector(model_id: str, device: str | None = None) -> OwlDetector:
    """An OWL-ViT / OWLv2 detector from a hub id or a local `save_pretrained` folder.

    Raises:
        CurateError: the model cannot be found or is not a zero-shot detector.
    """
    from curation.models.registry import require_local

    require_local("index.detector", model_id)
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    device = torch_device(device)
    model = load_pretrained(
        "detector", model_id, lambda: AutoModelForZeroShotObjectDetection.from_pretrained(model_id)
    )
    processor = load_pretrained("detector", model_id, lambda: AutoProcessor.from_pretrained(model_id))
    return OwlDetector(model.to(device).eval(), processor, device, model.config.model_type == "owlv2")


def detect_concepts(
    detector: OwlDetector, image: Image.Image, nouns: dict[str, str], threshold: float
) -> dict[str, Detection | None]:
    """Each concept's best detection by its class noun, all nouns queried in one pass.

    Args:
        nouns: concept_id -> class noun. Two concepts sharing a noun share their best box.
    """
    queries = list(dict.fromkeys(nouns.values()))
    found = [d for d in detector.detect(image, queries, threshold) if crop(image, d) is not None]
    best = dict(zip(queries, best_per_label(found, queries)))
    return {concept_id: best[noun] for concept_id, noun in nouns.items()}


@dataclass
class PresenceScorer:
    """Everything presence scoring needs, loaded once per `curate index` run.

    Attributes:
        refs: concept_id -> its references' L2-normalised CLIP embeddings; concepts without
            references are not scored.
        nouns: concept_id -> class noun, the detector's query.
        embed: the CLIP image embedder crops go through (the index's own model).
        detector: None means the planned boxes stand in for detections (`presence_source = "plan"`).
        threshold: minimum detector score for a box to count.
    """

    refs: dict[str, np.ndarray]
    nouns: dict[str, str]
    embed: EmbedFn
    detector: OwlDetector | None = None
    threshold: float = 0.1

    @property
    def source(self) -> str:
        return SOURCE_PLAN if self.detector is None else SOURCE_DETECTOR

    def score(self, batch: Sequence[tuple[Image.Image, Candidate]]) -> list[Presence]:
        """Presence of every candidate of a batch; all crops of the batch go through CLIP together."""
        items = []
        for image, candidate in batch:
            if self.detector is None:
                planned = plan_detections(candidate.boxes, candidate.width, candidate.height, image.size)
                detections = {c: planned.get(c) for c in candidate.concepts}
            else:
                nouns = {c: self.nouns[c] for c in candidate.concepts if c in self.refs}
                detections = detect_concepts(self.detector, image, nouns, self.threshold) if nouns else {}
            items.append((image, detections))
        return score_presence(items, self.refs, self.embed, self.source)


def load_presence(
    ws: Workspace,
    concept_ids: Iterable[str],
    embed: EmbedFn,
    detector: str = "",
    threshold: float = 0.1,
    device: str | None = None,
) -> PresenceScorer:
    """Embed the references of the concepts a run needs and load the detector, if one is configured.

    Concepts unknown to the workspace or without references are skipped (their candidates get no
    presence for them) rather than failing a whole index run.
    """
    from PIL import Image

    concepts = ws.concepts()
    refs, nouns = {}, {}
    for concept_id in sorted(set(concept_ids)):
        concept = concepts.get(concept_id)
        if concept is None or not concept.refs:
            continue
        images = []
        for ref in concept.refs:
            with Image.open(ws.resolve(ref)) as image:
                images.append(image.convert("RGB"))
        refs[concept_id] = embed(images)
        nouns[concept_id] = concept.class_noun
    return PresenceScorer(
        refs, nouns, embed, load_detector(detector, device) if detector else None, threshold
    )


def _clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, ...]:
    x0, y0, x1, y1 = box
    return (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))


def presence_fields(result: Presence, image_size: tuple[int, int]) -> dict[str, Any]:
    """The FiftyOne fields of one result; detections as relative [x, y, w, h] boxes labelled by concept."""
    import fiftyone as fo

    width, height = image_size
    detections = None
    if result.source == SOURCE_DETECTOR:
        detections = fo.Detections(
            detections=[
                fo.Detection(
                    label=concept_id,
                    bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
                    confidence=det.score,
                )
                for concept_id, det in result.found.items()
                for x0, y0, x1, y1 in [_clip_box(det.box, width, height)]
            ]
        )
    return {
        PRESENCE: result.presence,
        CP_CLIP: result.cp_clip,
        MISSING_CONCEPTS: result.missing,
        DETECTIONS: detections,
        PRESENCE_SOURCE: result.source,
    }


def declare_fields(dataset: fo.Dataset) -> None:
    """Declare the presence fields up front: FiftyOne cannot infer a type from all-None values."""
    import fiftyone as fo

    kinds: dict[str, tuple[Any, dict[str, Any]]] = {
        PRESENCE: (fo.DictField, {"subfield": fo.FloatField}),
        CP_CLIP: (fo.FloatField, {}),
        MISSING_CONCEPTS: (fo.ListField, {"subfield": fo.StringField}),
        DETECTIONS: (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Detections}),
        PRESENCE_SOURCE: (fo.StringField, {}),
    }
    for name, (kind, options) in kinds.items():
        if not dataset.has_field(name):
            dataset.add_sample_field(name, kind, **options)

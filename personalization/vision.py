"""The two non-CLIP models the evaluator needs: an open-vocabulary detector and a DINOv2 embedder.

Both load by hub id or local folder through transformers' Auto classes, once per evaluation, so a
tiny random-init model saved in a test folder goes through the same code as the real weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.errors import CurateError
from personalization.metrics import Detection


def _device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _load(kind: str, model_id: str, loader):
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

    def detect(self, image, queries: list[str], threshold: float) -> list[Detection]:
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
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    device = _device(device)
    model = _load("detector", model_id, lambda: AutoModelForZeroShotObjectDetection.from_pretrained(model_id))
    processor = _load("detector", model_id, lambda: AutoProcessor.from_pretrained(model_id))
    return OwlDetector(model.to(device).eval(), processor, device, model.config.model_type == "owlv2")


@dataclass
class DinoEmbedder:
    """DINOv2 image embeddings: the CLS token after the final layer norm (`pooler_output`)."""

    model: Any
    processor: Any
    device: str

    def embed(self, images: list, batch_size: int = 16) -> np.ndarray:
        import torch

        chunks = []
        for start in range(0, len(images), batch_size):
            inputs = self.processor(images=images[start : start + batch_size], return_tensors="pt").to(
                self.device
            )
            with torch.no_grad():
                chunks.append(self.model(**inputs).pooler_output.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.model.config.hidden_size))


def load_dino(model_id: str, device: str | None = None) -> DinoEmbedder:
    from transformers import AutoImageProcessor, AutoModel

    device = _device(device)
    model = _load("DINO", model_id, lambda: AutoModel.from_pretrained(model_id))
    processor = _load("DINO", model_id, lambda: AutoImageProcessor.from_pretrained(model_id))
    return DinoEmbedder(model.to(device).eval(), processor, device)

"""The DINOv2 embedder the evaluator needs beside CLIP; the detector is `curation.scores.presence`'s.

It loads by hub id or local folder through transformers' Auto classes, once per evaluation, so a
tiny random-init model saved in a test folder goes through the same code as the real weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.core.devices import torch_device
from curation.scores.presence import load_pretrained


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

    device = torch_device(device)
    model = load_pretrained("DINO", model_id, lambda: AutoModel.from_pretrained(model_id))
    processor = load_pretrained("DINO", model_id, lambda: AutoImageProcessor.from_pretrained(model_id))
    return DinoEmbedder(model.to(device).eval(), processor, device)

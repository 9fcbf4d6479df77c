"""Cosine similarity of embeddings to a concept's references: the rule every similarity score shares.

CP-CLIP, CLIP-I, DINO (personalization/metrics.py) and SAS (curation/scores/sas.py) all ask how much one
embedding resembles a concept's reference embeddings, so they share this one definition.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

RefReduce = Literal["mean", "max"]


def normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise cosines, shape (len(a), len(b))."""
    return normalise(a) @ normalise(b).T


def reference_similarity(query: np.ndarray, refs: np.ndarray, reduce: RefReduce = "mean") -> float:
    """How much one embedding resembles a concept: mean (or max) cosine over its references."""
    sims = cosine_matrix(query, refs)[0]
    return float(sims.max() if reduce == "max" else sims.mean())

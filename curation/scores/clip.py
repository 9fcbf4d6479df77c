"""open_clip image and text embeddings, loaded once per process and shared by index and evaluator.

Real weights are the default (`ViT-B-32` / `openai`). Where they cannot be had (no internet, no
cache) the same architecture is built with seeded random weights and flagged `weights="random"`,
so the whole chain still runs but nobody mistakes its similarities for meaningful ones. Seeding
keeps random embeddings identical across runs, which incremental indexing relies on.
`pretrained` may also be a local checkpoint file, so real weights copied onto a machine need no
code change.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import numpy as np

from curation.core.devices import torch_device
from curation.core.errors import CurateError

if TYPE_CHECKING:
    import torch
    from PIL import Image

Weights = Literal["pretrained", "random"]
CLIPSCORE_W = 2.5
"""CLIPScore (Hessel et al. 2021) rescales the cosine: w * max(cos, 0)."""

_RANDOM_SEED = 0
_log = logging.getLogger(__name__)


@dataclass
class ClipScorer:
    """A loaded open_clip model with its preprocessing and tokenizer.

    Attributes:
        model_name: open_clip architecture name.
        pretrained: the tag or checkpoint path asked for (None for deliberate random weights).
        weights: "pretrained" when real weights were loaded, "random" otherwise.
        fingerprint: which weights exactly (see `weights_fingerprint`): what `curate index` keys
            re-embedding on, so embeddings from two different weights never mix in one dataset.
        device: torch device string the model runs on.
        dim: embedding width.
        batch_size: images or texts per forward pass.
    """

    model_name: str
    pretrained: str | None
    weights: Weights
    fingerprint: str
    device: str
    dim: int
    model: Any = field(repr=False)
    preprocess: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    batch_size: int = 32

    def image_tensor(self, image: Image.Image) -> torch.Tensor:
        """The model's preprocessing of one image (resize, crop, normalise), on the CPU.

        Exposed so callers can preprocess in a loader thread while the model runs.
        """
        return self.preprocess(image.convert("RGB"))

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """L2-normalised embeddings of an already preprocessed image batch (N, 3, H, W)."""
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(batch.to(self.device))
            return _normalise(features)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """L2-normalised float32 image embeddings, shape (N, D), in batches of `batch_size`."""
        import torch

        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.image_tensor(im) for im in images[start : start + self.batch_size]])
            chunks.append(self.embed_tensors(batch))
        return np.concatenate(chunks)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 text embeddings, shape (N, D); texts longer than the context are cut."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(texts[start : start + self.batch_size]).to(self.device)
                chunks.append(_normalise(self.model.encode_text(tokens)))
        return np.concatenate(chunks)


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32)


def clip_t(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise image-text similarity of L2-normalised pairs.

    Returns:
        (cosine, clipscore): the raw cosine in [-1, 1] and CLIPScore = 2.5 * max(cosine, 0) in [0, 2.5].
    """
    cosine = np.sum(image_embeddings * text_embeddings, axis=1).astype(np.float64)
    return cosine, CLIPSCORE_W * np.clip(cosine, 0.0, None)


RANDOM_FINGERPRINT = "random"
"""Seeded random init: the same weights for the same architecture in every process."""


def weights_fingerprint(pretrained: str | None) -> str | None:
    """Which weights `load_clip` loads for `pretrained`, where that is known without loading.

    "random" for none; "sha256:<digest>" of a checkpoint file (its bytes, so a retrained file
    with the same name counts as new weights); None for an open_clip tag, whose weights are
    "tag:<tag>" when they can be loaded and random otherwise, which only loading tells.
    """
    if not pretrained:
        return RANDOM_FINGERPRINT
    path = Path(pretrained)
    if path.is_file():
        stat = path.stat()
        return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return None


@functools.cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a checkpoint, once per (path, size, mtime): a 600 MB file takes seconds to hash."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


def _looks_like_path(pretrained: str) -> bool:
    return (
        "/" in pretrained
        or "\\" in pretrained
        or Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"}
    )


@contextmanager
def _offline_unless_hub_reachable(timeout: float = 2.0) -> Iterator[None]:
    """Put huggingface_hub in offline mode while it cannot reach its endpoint.

    Without this a machine with no internet spends ~50 s in download retries before the random
    fallback; offline mode still finds weights already in the local cache.
    """
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    saved = constants.HF_HUB_OFFLINE
    if not saved:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
        except OSError:
            constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip logs a failed download and random init on the root logger; our one warning says both."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def load_clip(
    model_name: str, pretrained: str | None, device: str | None = None, batch_size: int = 32
) -> ClipScorer:
    """Build an open_clip model, falling back to seeded random weights when real ones are unavailable.

    Args:
        model_name: open_clip architecture, e.g. "ViT-B-32".
        pretrained: an open_clip tag ("openai"), a local checkpoint file, or None/"" for random weights.
        device: "cuda", "cpu", ...; None picks the GPU when present.
        batch_size: forward-pass batch size.

    Raises:
        CurateError: unknown architecture, or a checkpoint path that does not exist or does not fit.
    """
    import open_clip
    import torch

    if model_name not in open_clip.list_models():
        raise CurateError(f"unknown open_clip model {model_name!r} (see open_clip.list_models())")
    device = torch_device(device)
    if pretrained and not Path(pretrained).is_file():
        if _looks_like_path(pretrained):
            raise CurateError(f"CLIP checkpoint {pretrained} does not exist")
        if pretrained not in open_clip.list_pretrained_tags_by_model(model_name):
            known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
            raise CurateError(f"unknown pretrained tag {pretrained!r} for {model_name} (known: {known})")

    model, preprocess, weights = None, None, "random"
    if pretrained:
        try:
            with _offline_unless_hub_reachable(), _quiet_open_clip():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained
                )
            weights = "pretrained"
        except Exception as exc:  # any download/cache failure means: no real weights on this machine
            if Path(pretrained).is_file():
                # the first sentence only: torch's next ones suggest weights_only=False, unsafe for a stray file
                first = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CurateError(
                    f"CLIP checkpoint {pretrained} does not load as {model_name} weights ({first})"
                ) from exc
            _log.warning(
                "CLIP weights %s/%s unavailable (%s); using random weights", model_name, pretrained, exc
            )
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_SEED)
            with _quiet_open_clip():
                model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    model = model.to(device).eval()
    if weights == "random":
        fingerprint = RANDOM_FINGERPRINT
    else:
        fingerprint = weights_fingerprint(pretrained) or f"tag:{pretrained}"
    return ClipScorer(
        model_name=model_name,
        pretrained=pretrained or None,
        weights=weights,
        fingerprint=fingerprint,
        device=device,
        model=model,
        preprocess=preprocess,
        dim=int(open_clip.get_model_config(model_name)["embed_dim"]),
        tokenizer=open_clip.get_tokenizer(model_name),
        batch_size=batch_size,
    )

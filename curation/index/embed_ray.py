"""CLIP image and caption embeddings on Ray actors, for `curate index` with `index.executor = "ray"`.

Embedding is the one stage of indexing whose cost grows with the model: on a GPU cluster it is
spread over actors that each load the model once (one GPU each when the cluster has one per actor).
Actors read the images from their paths, so the workspace must be on a filesystem every node sees
(as for `curate generate --executor ray`). Results come back in submission order and the driver
writes them to FiftyOne itself, so the dataset ends up exactly as with the local path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from curation.core.errors import CurateError
from curation.core.ray_cluster import connect_ray

Item = tuple[str, str]
"""(image path, CLIP-T text) of one candidate."""


@dataclass
class Embedded:
    """The embeddings of one chunk of candidates.

    Attributes:
        ok: per candidate of the chunk, whether its image could be decoded.
        images: L2-normalised image embeddings of the decoded candidates, in chunk order.
        texts: L2-normalised text embeddings of the same candidates.
    """

    ok: list[bool]
    images: np.ndarray
    texts: np.ndarray


class _ClipActor:
    """One loaded open_clip model; the batch composition matches the local path, so outputs do too."""

    def __init__(self, model_name: str, pretrained: str | None, batch_size: int):
        from curation.scores.clip import load_clip

        self.scorer = load_clip(model_name, pretrained, batch_size=batch_size)

    def weights(self) -> str:
        return self.scorer.weights

    def embed(self, items: list[Item]) -> Embedded:
        import torch
        from PIL import Image, UnidentifiedImageError

        tensors, texts = [], []
        for path, text in items:
            try:
                with Image.open(path) as image:
                    tensors.append(self.scorer.image_tensor(image))
                texts.append(text)
            except (OSError, UnidentifiedImageError):
                tensors.append(None)
        ok = [t is not None for t in tensors]
        if not texts:
            empty = np.zeros((0, self.scorer.dim), dtype=np.float32)
            return Embedded(ok, empty, empty)
        images = self.scorer.embed_tensors(torch.stack([t for t in tensors if t is not None]))
        return Embedded(ok, images, self.scorer.embed_texts(texts))


def ray_embeddings(
    chunks: list[list[Item]],
    model_name: str,
    pretrained: str | None,
    batch_size: int,
    actors: int,
    weights: str,
) -> Iterator[Embedded]:
    """Start a pool of Ray actors that embed every chunk; iterate the result for them in chunk order.

    The actors are started and their weights checked before this returns, so a cluster that cannot
    load the model fails before the caller writes anything.

    Args:
        chunks: the candidates to embed, already cut into the batches the local path would use.
        model_name: open_clip architecture.
        pretrained: open_clip tag or checkpoint path (None: seeded random weights).
        batch_size: forward-pass batch size.
        actors: how many actors; 0 means one per cluster GPU, or 1 on a cluster without GPUs.
        weights: "pretrained" | "random", what the driver's own model got; actors must match it.

    Raises:
        CurateError: when the actors fail to load the model, or load other weights than the driver
            (e.g. a node without the checkpoint): their embeddings would silently mean something else.
    """
    import ray
    from ray.util import ActorPool

    connect_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = min(actors or gpus or 1, len(chunks)) or 1
    actor = ray.remote(num_cpus=1, num_gpus=1 if gpus >= actors else 0)(_ClipActor)
    pool = [actor.remote(model_name, pretrained, batch_size) for _ in range(actors)]
    try:
        loaded = ray.get([a.weights.remote() for a in pool])
    except ray.exceptions.RayError as exc:  # the driver loaded the same model: the nodes' setup differs
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CurateError(f"Ray actors could not load CLIP {model_name}: {first}") from exc
    if any(w != weights for w in loaded):
        raise CurateError(
            f"Ray actors loaded {model_name} with {'/'.join(sorted(set(loaded)))} weights but this process "
            f"has {weights} weights: make the CLIP checkpoint available on every node"
        )
    return ActorPool(pool).map(lambda a, chunk: a.embed.remote(chunk), chunks)

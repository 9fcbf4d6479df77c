"""Training M_SAL (MSP-Diffusion's subject-aware segmentation model) on a workspace: data, training.

The MSP paper (Jain et al., appendix A.4-A.6) trains a ResNet-34-encoder U-Net on its target subjects
(zoom 0.4-0.5, crops of 0.65-0.95 with p=0.1, random translations on a 512x512 canvas, 100 background
scenes; batch 4, lr 1e-4, 14 epochs) and uses it twice: its class scores steer generation (SAL
guidance, `generators/msp/sal.py`) and its encoder features compare a generated subject with the
subject's photos (SAS, `personalization.metrics.sas`).

Our generator already makes the paper's hand-built data: every composite keeps which pasted layer
is visible at each pixel (`curation.core.paste_record`), so the training set is

- the workspace's composites, labelled from the kept silhouette map: pixel of layer k -> the class of
  the k-th pasted concept, the rest background. Layer k's concept is the k-th key of the candidate's
  `paste_thumbs`, which the generator writes in drawing order. MSP candidates are skipped (their
  pixels are regenerated, so the paste alpha no longer describes them); a deterministic share of
  the composites (by candidate id) is held out for the per-concept validation IoU;
- augmented reference cut-outs: each concept photo's soft mask cuts the subject out, which is zoomed
  so its longer side is 0.4-0.5 of the canvas, cropped to 0.65-0.95 of its size with p=0.1, and
  pasted at a random position onto a training composite (its own labels kept under it), so the
  backgrounds are the workspace's own scenes. Fresh cut-outs are drawn every epoch.

One class per concept (sorted concept ids, class k+1) plus background (class 0). The output folder
holds `segmenter.json` (concepts, architecture, which encoder weights it started from, validation
IoU) and `model.pt` (the state dict); `checkpoint.pt` (model, optimiser, epoch) lets a killed run
resume. ImageNet encoder weights are tried first (`encoder_weights="imagenet"`); where they cannot be
downloaded the encoder starts from random init, and `segmenter.json` says so.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from curation.core.errors import CurateError
from curation.core.paste_record import PASTE_SILHOUETTES, decode_silhouettes, layer_concepts
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Candidate
from curation.core.workspace import Workspace, atomic_write_bytes
from curation.models.subject_segmenter import (
    CHECKPOINT_FILE,
    SegmenterSettings,
    SubjectSegmenter,
    build_unet,
    read_rgb,
    save_segmenter,
    to_tensor,
    torch_bytes,
)


@dataclass
class Sample:
    """One training or validation image: RGB uint8 [S, S, 3] and class labels int64 [S, S]."""

    rgb: np.ndarray
    labels: np.ndarray


@dataclass
class Composite:
    """A labelled composite on disk, decoded only when a batch needs it (memory stays flat at 10K)."""

    path: Path
    candidate: Candidate
    classes: dict[str, int]
    size: int

    def load(self) -> Sample:
        labels = composite_labels(self.candidate, self.classes, self.size)
        assert labels is not None  # read_composites keeps only candidates with a silhouette map
        return Sample(read_rgb(self.path, self.size), labels)


@dataclass
class TrainReport:
    out_dir: str
    epochs_run: int
    train_composites: int
    val_composites: int
    cutouts_per_epoch: int
    val_iou: dict[str, float | None] = field(default_factory=dict)
    images_per_s: float = 0.0
    encoder_weights: str = ""


def _fresh_unet(settings: SegmenterSettings, classes: int) -> tuple[Any, str]:
    """The U-Net with ImageNet encoder weights where they load, random init otherwise; and which it got."""
    if settings.encoder_weights:
        try:
            return build_unet(settings, classes, settings.encoder_weights), settings.encoder_weights
        except Exception as exc:  # noqa: BLE001 - any download/hub failure means: no weights here
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            return build_unet(
                settings, classes
            ), f"random (could not load {settings.encoder_weights}: {reason})"
    return build_unet(settings, classes), "random"


def _id_fraction(candidate_id: str) -> float:
    """A stable number in [0, 1) per candidate, so the held-out set does not move between runs."""
    return int(hashlib.sha256(candidate_id.encode()).hexdigest()[:8], 16) / 16**8


def composite_labels(candidate: Candidate, classes: dict[str, int], size: int) -> np.ndarray | None:
    """Class labels [size, size] from the candidate's kept silhouette map; None without one."""
    import cv2

    text = candidate.extra.get(PASTE_SILHOUETTES)
    if not text or candidate.generator == "msp":
        return None
    layers = decode_silhouettes(text)
    lookup = np.zeros(256, np.int64)
    for k, concept_id in enumerate(layer_concepts(candidate), start=1):
        lookup[k] = classes.get(concept_id, 0)
    return lookup[cv2.resize(layers, (size, size), interpolation=cv2.INTER_NEAREST)]


def read_composites(
    ws: Workspace, classes: dict[str, int], size: int, val_fraction: float
) -> tuple[list[Composite], list[Composite]]:
    """(training, held-out) composites of the workspace with their paste labels.

    The held-out ones are the ceil(val_fraction * n) with the lowest id hash (at least one when
    val_fraction > 0 and there are two or more), so the split is stable and never empty by chance.
    """
    labelled = [
        Composite(ws.resolve(c.image), c, classes, size)
        for c in ws.candidates()
        if c.extra.get(PASTE_SILHOUETTES) and c.generator != "msp"
    ]
    labelled.sort(key=lambda composite: _id_fraction(composite.candidate.candidate_id))
    n_val = math.ceil(val_fraction * len(labelled)) if len(labelled) > 1 else 0
    return labelled[n_val:], labelled[:n_val]


def read_cutouts(ws: Workspace, concepts: Sequence[str]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(class, RGB uint8, alpha float 0..1) per reference photo, cropped to the mask's bounding box."""
    out = []
    for cls, concept_id in enumerate(concepts, start=1):
        concept = ws.concept(concept_id)
        if concept is None:
            raise CurateError(f"concept {concept_id!r} is not in the workspace")
        for ref, mask in zip(concept.refs, concept.masks):
            rgb = read_rgb(ws.resolve(ref))
            with Image.open(ws.resolve(mask)) as m:
                alpha = np.asarray(m.convert("L").resize(rgb.shape[1::-1]), np.float32) / 255.0
            ys, xs = np.nonzero(alpha >= 0.5)
            if len(ys) == 0:
                continue
            box = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
            out.append((cls, rgb[box], alpha[box]))
    return out


def augment_cutout(
    rgb: np.ndarray,
    alpha: np.ndarray,
    cls: int,
    canvas: Sample,
    rng: np.random.Generator,
    settings: SegmenterSettings,
) -> Sample:
    """The paper's augmentation: zoom 0.4-0.5 of the canvas, crop 0.65-0.95 with p, random position."""
    import cv2

    size = canvas.rgb.shape[0]
    if rng.random() < settings.crop_p:
        frac = rng.uniform(*settings.crop)
        h, w = alpha.shape
        ch, cw = max(1, round(h * frac)), max(1, round(w * frac))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        rgb, alpha = rgb[y0 : y0 + ch, x0 : x0 + cw], alpha[y0 : y0 + ch, x0 : x0 + cw]
    scale = rng.uniform(*settings.zoom) * size / max(alpha.shape)
    w, h = max(1, round(alpha.shape[1] * scale)), max(1, round(alpha.shape[0] * scale))
    rgb = cv2.resize(np.ascontiguousarray(rgb), (w, h), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(np.ascontiguousarray(alpha), (w, h), interpolation=cv2.INTER_LINEAR)
    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    out_rgb, out_labels = canvas.rgb.copy(), canvas.labels.copy()
    region = out_rgb[y : y + h, x : x + w].astype(np.float32)
    a = alpha[..., None]
    out_rgb[y : y + h, x : x + w] = (a * rgb + (1 - a) * region).round().clip(0, 255).astype(np.uint8)
    out_labels[y : y + h, x : x + w][alpha >= 0.5] = cls
    return Sample(out_rgb, out_labels)


def _plain_canvas(size: int, rng: np.random.Generator) -> Sample:
    """A smooth random two-colour gradient, the backdrop when the workspace has no composites yet."""
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    rgb = (a * (1 - t) + b * t).repeat(size, axis=1).astype(np.uint8)
    return Sample(rgb, np.zeros((size, size), np.int64))


def iou_per_class(pred: np.ndarray, target: np.ndarray, classes: int) -> list[float | None]:
    """IoU of each class over all pixels given; None for a class in neither prediction nor target."""
    out: list[float | None] = []
    for k in range(classes):
        p, t = pred == k, target == k
        union = int((p | t).sum())
        out.append(None if union == 0 else int((p & t).sum()) / union)
    return out


def _validate(segmenter: SubjectSegmenter, val: list[Composite], batch_size: int) -> dict[str, float | None]:
    import torch

    if not val:
        return {c: None for c in segmenter.concepts}
    preds, targets = [], []
    with torch.no_grad():
        for start in range(0, len(val), batch_size):
            part = [composite.load() for composite in val[start : start + batch_size]]
            preds.append(segmenter.logits(to_tensor([s.rgb for s in part])).argmax(1).cpu().numpy())
            targets += [s.labels for s in part]
    ious = iou_per_class(np.concatenate(preds), np.stack(targets), len(segmenter.concepts) + 1)
    return dict(zip(segmenter.concepts, ious[1:]))


def train_segmenter(
    ws: Workspace,
    out_dir: Path,
    settings: SegmenterSettings | None = None,
    concepts: Sequence[str] | None = None,
    resume: bool = True,
    device: str | None = None,
    progress: ProgressFn = no_progress,
) -> TrainReport:
    """Train M_SAL on the workspace's composites and augmented cut-outs; write a loadable folder.

    Args:
        ws: the workspace (its concepts, and the candidates `curate generate` wrote).
        out_dir: receives segmenter.json, model.pt, checkpoint.pt (after every epoch).
        settings: architecture and training knobs (defaults: the paper's).
        concepts: the concepts to learn; None means all of the workspace's.
        resume: continue from `checkpoint.pt` when it was written with the same concepts and settings.
        device: torch device; None picks CUDA when present.
    """
    import time

    import torch
    import torch.nn.functional as F

    from curation.core.devices import resolve_device

    settings = settings or SegmenterSettings()
    concepts = sorted(concepts or ws.concepts())
    if not concepts:
        raise CurateError("no concepts in the workspace: run `curate add` first")
    device, _ = resolve_device(device or "auto", "auto")
    classes = {c: k for k, c in enumerate(concepts, start=1)}
    train, val = read_composites(ws, classes, settings.size, settings.val_fraction)
    cutouts = read_cutouts(ws, concepts)
    if not train and not cutouts:
        raise CurateError("nothing to train the subject segmenter on: no composites and no masked references")
    signature = {"concepts": concepts, "settings": asdict(settings)}
    # more epochs continue a run; any other change starts afresh
    resumable = json.loads(json.dumps({**signature, "settings": {**asdict(settings), "epochs": None}}))
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_FILE

    torch.manual_seed(settings.seed)
    model, weights = _fresh_unet(settings, len(concepts) + 1)
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    start_epoch = 0
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["signature"] == resumable:
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            start_epoch, weights = state["epoch"], state["encoder_weights"]

    segmenter = SubjectSegmenter(model, concepts, settings.size)
    n_cutouts = len(cutouts) * settings.cutouts_per_ref
    seen, busy = 0, 0.0
    for epoch in range(start_epoch, settings.epochs):
        rng = np.random.default_rng([settings.seed, epoch])
        samples: list[Composite | Sample] = list(train)
        for _ in range(n_cutouts):
            cls, rgb, alpha = cutouts[int(rng.integers(len(cutouts)))]
            canvas = (
                train[int(rng.integers(len(train)))].load() if train else _plain_canvas(settings.size, rng)
            )
            samples.append(augment_cutout(rgb, alpha, cls, canvas, rng, settings))
        order = rng.permutation(len(samples))
        model.train()
        began = time.perf_counter()
        for start in range(0, len(order), settings.batch_size):
            part = [
                s if isinstance(s, Sample) else s.load()
                for s in (samples[i] for i in order[start : start + settings.batch_size])
            ]
            logits = segmenter.logits(to_tensor([s.rgb for s in part]))
            target = torch.from_numpy(np.stack([s.labels for s in part])).to(logits.device)
            loss = F.cross_entropy(logits, target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            seen += len(part)
        busy += time.perf_counter() - began
        model.eval()
        buffer = torch_bytes(
            {
                "signature": resumable,
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "epoch": epoch + 1,
                "encoder_weights": weights,
            }
        )
        atomic_write_bytes(checkpoint_path, buffer)
        progress("segmenter epochs", epoch + 1, settings.epochs)

    val_iou = _validate(segmenter, val, settings.batch_size)
    report = TrainReport(
        out_dir=str(out_dir),
        epochs_run=settings.epochs - start_epoch,
        train_composites=len(train),
        val_composites=len(val),
        cutouts_per_epoch=n_cutouts,
        val_iou=val_iou,
        images_per_s=seen / busy if busy else 0.0,
        encoder_weights=weights,
    )
    known = [v for v in val_iou.values() if v is not None]
    save_segmenter(
        out_dir,
        model,
        concepts,
        settings,
        encoder_weights=weights,
        workspace_id=ws.workspace_id,
        val_iou=val_iou,
        val_miou=float(np.mean(known)) if known else None,
        train_composites=len(train),
        val_composites=len(val),
    )
    return report

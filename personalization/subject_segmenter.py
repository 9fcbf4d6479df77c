"""M_SAL, MSP-Diffusion's subject-aware segmentation model: training data, training, loading, features.

The MSP paper (Jain et al., appendix A.4-A.6) trains a ResNet-34-encoder U-Net on its target subjects
(zoom 0.4-0.5, crops of 0.65-0.95 with p=0.1, random translations on a 512x512 canvas, 100 background
scenes; batch 4, lr 1e-4, 14 epochs) and uses it twice: its class scores steer generation (SAL
guidance, `generators/msp.py`) and its encoder features compare a generated subject with the
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
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from curation.core.errors import CurateError
from curation.core.paste_record import PASTE_SILHOUETTES, PASTE_THUMBS, decode_silhouettes
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Candidate
from curation.core.workspace import Workspace, atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "segmenter.json"
WEIGHTS_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
"""ImageNet statistics: the encoder's input normalisation whether or not it starts from ImageNet weights."""


@dataclass
class SegmenterSettings:
    """Architecture and training knobs; the defaults are the paper's (512 px, batch 4, lr 1e-4, 14 epochs)."""

    encoder: str = "resnet34"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    encoder_weights: str = "imagenet"
    size: int = 512
    epochs: int = 14
    batch_size: int = 4
    lr: float = 1e-4
    cutouts_per_ref: int = 4
    val_fraction: float = 0.15
    zoom: tuple[float, float] = (0.4, 0.5)
    crop: tuple[float, float] = (0.65, 0.95)
    crop_p: float = 0.1
    seed: int = 0


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
        return Sample(_rgb(self.path, self.size), labels)


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


def build_unet(settings: SegmenterSettings, classes: int, weights: str | None = None) -> Any:
    """The smp U-Net; `weights` is the encoder init to load (None = random)."""
    import segmentation_models_pytorch as smp

    return smp.Unet(
        settings.encoder,
        encoder_weights=weights,
        encoder_depth=settings.encoder_depth,
        decoder_channels=tuple(settings.decoder_channels),
        classes=classes,
    )


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


def layer_concepts(candidate: Candidate) -> list[str]:
    """Concept ids by silhouette label (label k -> entry k-1): the drawing order `paste_thumbs` keeps."""
    order = list(candidate.extra.get(PASTE_THUMBS, {}))
    if sorted(order) != sorted(candidate.concepts):
        raise ValueError(f"candidate {candidate.candidate_id}: paste_thumbs does not list its concepts")
    return order


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


def _rgb(path: Path, size: int | None = None) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
        if size:
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image)


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
            rgb = _rgb(ws.resolve(ref))
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


def to_tensor(rgb: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 (or a list of them) -> float [B, 3, H, W] in 0..1."""
    import torch

    batch = np.stack(list(rgb)) if not isinstance(rgb, np.ndarray) or rgb.ndim == 4 else np.array(rgb[None])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0


class SubjectSegmenter:
    """A trained M_SAL: class logits and encoder features on 0..1 RGB tensors, both differentiable.

    Args:
        model: the smp U-Net.
        concepts: concept ids; concept k is class k + 1, class 0 is background.
        size: the side the model was trained at; inputs are resized to it.
        config: what `segmenter.json` holds.
        source: the folder it was loaded from, as given.
    """

    def __init__(
        self,
        model: Any,
        concepts: Sequence[str],
        size: int,
        config: dict[str, Any] | None = None,
        source: str = "",
    ):
        self.model = model.eval()
        self.concepts = list(concepts)
        self.size = size
        self.config = config or {}
        self.source = source

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def class_of(self, concept_id: str) -> int:
        return self.concepts.index(concept_id) + 1

    def check_concepts(self, needed: Sequence[str], source: str = "") -> None:
        """Refuse to guide or score concepts the segmenter has no class for (one error naming them)."""
        missing = sorted(set(needed) - set(self.concepts))
        if missing:
            where = f" at {source}" if source else ""
            raise CurateError(
                f"subject segmenter{where} was trained on {', '.join(self.concepts)}; "
                f"it has no class for {', '.join(missing)}: train it on this workspace "
                "(`curate train-segmenter`)"
            )

    def _prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        pixels = pixels.to(self.device, next(self.model.parameters()).dtype)
        if pixels.shape[-2:] != (self.size, self.size):
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", align_corners=False)
        mean = pixels.new_tensor(MEAN)[None, :, None, None]
        std = pixels.new_tensor(STD)[None, :, None, None]
        return (pixels - mean) / std

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class logits [B, K+1, size, size] of 0..1 RGB [B, 3, H, W]."""
        return self.model(self._prepare(pixels))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """SAS embedding: the deepest encoder feature map, averaged over space, [B, C]."""
        return self.model.encoder(self._prepare(pixels))[-1].mean(dim=(2, 3))

    def regions(self, rgb: np.ndarray, concepts: Sequence[str]) -> dict[str, np.ndarray]:
        """Where M_SAL sees each concept in an HxWx3 uint8 image (its argmax class), bool HxW each.

        What SAS isolates in images that carry no paste record (the evaluator's generations).
        """
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            logits = self.logits(to_tensor(rgb))
            labels = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False).argmax(1)
        labels = labels[0].cpu().numpy()
        return {c: labels == self.class_of(c) for c in concepts}

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> SubjectSegmenter:
        """Load a `curate train-segmenter` folder; a missing or mismatched one is one CurateError."""
        import torch

        folder = Path(path)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise CurateError(
                f"no trained subject segmenter at {folder}: expected {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(`curate train-segmenter` writes them)"
            )
        try:
            config = json.loads(config_path.read_text())
            settings = SegmenterSettings(**config["settings"])
            concepts = list(config["concepts"])
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except (ValueError, KeyError, TypeError, RuntimeError, OSError, pickle.UnpicklingError) as exc:
            raise CurateError(f"subject segmenter at {folder} is unreadable: {exc}") from exc
        head = state.get("segmentation_head.0.weight")
        if head is None or head.shape[0] != len(concepts) + 1:
            got = "no segmentation head" if head is None else f"{head.shape[0]} classes"
            raise CurateError(
                f"subject segmenter at {folder}: {CONFIG_FILE} lists {len(concepts)} concepts + background "
                f"but {WEIGHTS_FILE} has {got}"
            )
        model = build_unet(settings, len(concepts) + 1)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CurateError(f"subject segmenter at {folder}: weights do not fit its config: {exc}") from exc
        model.requires_grad_(False)
        return cls(model.to(device or "cpu"), concepts, settings.size, config, source=str(path))


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
        buffer = _torch_bytes(
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


def save_segmenter(
    out_dir: Path, model: Any, concepts: Sequence[str], settings: SegmenterSettings, **record: Any
) -> None:
    """Write the folder `SubjectSegmenter.load` reads: weights first, then the config that names them."""
    atomic_write_bytes(Path(out_dir) / WEIGHTS_FILE, _torch_bytes(model.state_dict()))
    atomic_write_json(
        Path(out_dir) / CONFIG_FILE, {"concepts": list(concepts), "settings": asdict(settings), **record}
    )


def _torch_bytes(obj: Any) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def masked(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The paper's `x ⊙ m`: pixels [B, 3, H, W] kept inside mask [B, 1, h, w] (resized nearest), zero elsewhere."""
    import torch.nn.functional as F

    if mask.shape[-2:] != pixels.shape[-2:]:
        mask = F.interpolate(mask.float(), size=pixels.shape[-2:], mode="nearest")
    return pixels * mask.to(pixels.dtype)


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
        rgb = _rgb(image_path)
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
        from personalization.metrics import reference_similarity

        rgb = np.asarray(image.convert("RGB"))
        regions = concept_regions(candidate, *rgb.shape[:2])
        concepts = [c for c in candidate.concepts if c in self.refs]
        present = [c for c in concepts if regions.get(c) is not None and regions[c].any()]
        embs = dict(zip(present, region_embeddings(self.segmenter, rgb, [regions[c] for c in present])))
        per = {c: reference_similarity(embs[c], self.refs[c]) if c in embs else 0.0 for c in concepts}
        return {SAS_FIELD: per, SAS_MEAN_FIELD: float(np.mean(list(per.values()))) if per else None}

"""Model backends for `generators/segment.py`: one small class per backend, each loaded by hub id or path.

Every loader takes the same string a user writes after the backend's name in `segment.backend`
(and `local_only`: `auto` uses only weights already on the machine, never starting a download) and
hands it to the library's own loading call (`from_pretrained`, `onnxruntime.InferenceSession`), so a
real checkpoint and a tiny model saved to a folder in the tests run exactly the same code:

- `SemanticSegmenter` (`semantic:<id>`): a SegFormer-style semantic head or a Mask2Former-style
  universal head (e.g. nvidia/segformer-b0-finetuned-ade-512-512,
  facebook/mask2former-swin-tiny-coco-panoptic). The concept's class noun picks the label(s) by name
  (`SYNONYMS` bridges 'cat' to ADE20K's 'animal'); the foreground is their summed probability.
- `DetectSamSegmenter` (`sam[:<id>]`): an open-vocabulary detector (OWL-ViT/OWLv2) finds the class
  noun, SAM turns the best box into a mask; for cluttered photos and several objects.
- `OnnxMatteSegmenter` (`isnet[:<file.onnx or rembg model name>]`): IS-Net general-use, Gen4Gen's
  model, through onnxruntime with rembg's pre- and post-processing.
- `RemoteCodeSegmenter` (`birefnet[:<id>]`, `rmbg[:<id>]`): BiRefNet / RMBG-2.0 through
  `AutoModelForImageSegmentation`, which runs Python shipped with the checkpoint: only with
  `segment.trust_remote_code = true`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from curation.core.config import SegmentConfig
from curation.core.devices import CUDA_PROVIDER, onnx_providers, torch_device
from curation.core.errors import CurateError
from curation.models import rembg
from curation.models.registry import FETCH_COMMAND, offline, require_local

_log = logging.getLogger(__name__)

SYNONYMS: dict[str, tuple[str, ...]] = {
    "cat": ("kitten", "animal"),
    "dog": ("puppy", "animal"),
    "horse": ("animal",),
    "bird": ("animal",),
    "teddy": ("teddy bear", "plaything", "toy"),
    "toy": ("plaything", "teddy bear"),
    "mug": ("cup", "glass"),
    "cup": ("mug", "glass"),
    "person": ("people", "human"),
    "man": ("person",),
    "woman": ("person",),
    "child": ("person",),
    "astronaut": ("person",),
    "sofa": ("couch",),
    "couch": ("sofa",),
    "plant": ("potted plant", "flower"),
    "bike": ("bicycle",),
    "tv": ("television receiver", "television"),
    "rocket": ("airplane",),
}
"""Class noun -> label names tried after the noun itself, in order (ADE20K has 'animal', not 'cat')."""


def _from_pretrained(kind: str, model_id: str, loader: Callable[[], Any]) -> Any:
    """Run a library's loading call, turning a missing or unfit model into a CurateError."""
    try:
        return loader()
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CurateError(f"cannot load {kind} segmentation model {model_id!r}: {first}") from exc


def _alpha(prob: np.ndarray, h: int, w: int) -> np.ndarray:
    """A probability map of any size -> uint8 alpha of the photo's size."""
    prob = cv2.resize(np.asarray(prob, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8)


# -- semantic:<id> -----------------------------------------------------------------------------


def _label_names(label: str) -> set[str]:
    """'person;individual' and COCO's 'wall-other-merged' name several things; compare each part."""
    parts = re.split(r"[;,]", label.lower())
    return {p.strip() for p in parts if p.strip()} | {label.lower().strip()}


def matching_labels(labels: dict[int, str], class_noun: str) -> list[int]:
    """Label ids named like the class noun, else like its first synonym that a label has; [] if none."""
    noun = " ".join(class_noun.lower().split())
    head = noun.split()[-1] if noun else ""  # 'tabby cat' -> 'cat'
    for wanted in (noun, head, *SYNONYMS.get(noun, ()), *SYNONYMS.get(head, ())):
        ids = [i for i, label in sorted(labels.items()) if wanted in _label_names(label)]
        if ids:
            return ids
    return []


@dataclass
class SemanticSegmenter:
    """A semantic/panoptic model; the labels matching the class noun are the foreground."""

    name: str
    model: Any
    processor: Any
    labels: dict[int, str]
    device: str

    def __call__(self, rgb: np.ndarray, class_noun: str = "") -> np.ndarray:
        import torch

        ids = matching_labels(self.labels, class_noun)
        if not ids:
            raise CurateError(
                f"segmentation model {self.name!r} has no label for {class_noun!r} "
                f"(synonyms tried: {', '.join(SYNONYMS.get(class_noun.lower().strip(), ())) or 'none'}); "
                f"its labels: {', '.join(self.labels[i] for i in sorted(self.labels))}"
            )
        inputs = self.processor(images=rgb, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs)
        if hasattr(out, "class_queries_logits"):  # Mask2Former / OneFormer: per-query class x mask
            classes = out.class_queries_logits[0].softmax(-1)[:, :-1]  # last class is 'no object'
            probs = torch.einsum("qc,qhw->chw", classes, out.masks_queries_logits[0].sigmoid())
        else:
            probs = out.logits[0].softmax(0)
        fg = probs[ids].sum(0).clamp(0, 1).float().cpu().numpy()
        return _alpha(fg, *rgb.shape[:2])


def load_semantic(model_id: str, settings: SegmentConfig) -> SemanticSegmenter:
    from transformers import (
        AutoImageProcessor,
        AutoModelForSemanticSegmentation,
        AutoModelForUniversalSegmentation,
    )

    device = torch_device(settings.device)
    require_local("segment.backend", model_id)
    processor = _from_pretrained("semantic", model_id, lambda: AutoImageProcessor.from_pretrained(model_id))
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(model_id)
    except ValueError:  # not a semantic head: maybe a universal (panoptic) one
        model = _from_pretrained(
            "semantic", model_id, lambda: AutoModelForUniversalSegmentation.from_pretrained(model_id)
        )
    except OSError as exc:
        raise CurateError(f"cannot load semantic segmentation model {model_id!r}: {exc}") from exc
    labels = {int(i): str(name) for i, name in model.config.id2label.items()}
    return SemanticSegmenter(f"semantic:{model_id}", model.to(device).eval(), processor, labels, device)


# -- sam[:<id>] --------------------------------------------------------------------------------


@dataclass
class DetectSamSegmenter:
    """Detector box for the class noun -> SAM mask, kept inside the box (padded by `pad`)."""

    name: str
    detector: Any
    detector_processor: Any
    sam: Any
    sam_processor: Any
    device: str
    pad: float = 0.05

    def best_box(self, rgb: np.ndarray, class_noun: str) -> tuple[float, float, float, float]:
        """The detector's highest-scoring box for the noun, in photo pixels (there always is one)."""
        import torch

        h, w = rgb.shape[:2]
        inputs = self.detector_processor(text=[[class_noun]], images=rgb, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.detector(**inputs)
        side = max(h, w)  # OWLv2 pads to a square before predicting
        target = (side, side) if self.detector.config.model_type == "owlv2" else (h, w)
        result = self.detector_processor.post_process_grounded_object_detection(
            outputs=out, threshold=0.0, target_sizes=[target], text_labels=[[class_noun]]
        )[0]
        if len(result["scores"]) == 0:
            return (0.0, 0.0, float(w), float(h))
        x0, y0, x1, y1 = result["boxes"][int(result["scores"].argmax())].tolist()
        return (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))

    def __call__(self, rgb: np.ndarray, class_noun: str = "") -> np.ndarray:
        import torch

        h, w = rgb.shape[:2]
        box = self.best_box(rgb, class_noun or "object")
        inputs = self.sam_processor(images=rgb, input_boxes=[[list(box)]], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.sam(**inputs, multimask_output=True)
        best = int(out.iou_scores[0, 0].argmax())
        logits = self.sam_processor.image_processor.post_process_masks(
            out.pred_masks[:, :, best : best + 1].cpu(),
            inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu(),
            binarize=False,
        )[0][0, 0]
        prob = logits.float().sigmoid().numpy()
        px, py = self.pad * (box[2] - box[0]), self.pad * (box[3] - box[1])
        keep = np.zeros((h, w), bool)
        keep[
            max(0, int(box[1] - py)) : min(h, int(np.ceil(box[3] + py))),
            max(0, int(box[0] - px)) : min(w, int(np.ceil(box[2] + px))),
        ] = True
        return _alpha(np.where(keep, prob, 0.0), h, w)


def load_sam(model_id: str, settings: SegmentConfig, local_only: bool = False) -> DetectSamSegmenter:
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel, SamProcessor

    device = torch_device(settings.device)
    detector_id = settings.detector
    require_local("segment.backend", model_id)
    require_local("segment.detector", detector_id)
    detector = _from_pretrained(
        "detector", detector_id, lambda: AutoModelForZeroShotObjectDetection.from_pretrained(detector_id, local_files_only=local_only)
    )
    detector_processor = _from_pretrained("detector", detector_id, lambda: AutoProcessor.from_pretrained(detector_id, local_files_only=local_only)
    )
    sam = _from_pretrained("SAM", model_id, lambda: SamModel.from_pretrained(model_id, local_files_only=local_only))
    sam_processor = _from_pretrained("SAM", model_id, lambda: SamProcessor.from_pretrained(model_id, local_files_only=local_only))
    return DetectSamSegmenter(
        f"sam:{model_id}+{detector_id}",
        detector.to(device).eval(),
        detector_processor,
        sam.to(device).eval(),
        sam_processor,
        device,
    )


# -- isnet[:<path or name>] --------------------------------------------------------------------


@dataclass
class OnnxMatteSegmenter:
    """A 1x3xSxS -> 1x1xSxS salient-object ONNX model (IS-Net), pre/post-processed as rembg does.

    rembg (what Gen4Gen ran) scales pixels by the photo's maximum, subtracts 0.5 (std 1), resizes to
    the model's side, and min-max stretches the prediction; we do the same so masks match theirs.
    """

    name: str
    session: Any
    side: int

    def __call__(self, rgb: np.ndarray, class_noun: str = "") -> np.ndarray:
        h, w = rgb.shape[:2]
        x = cv2.resize(rgb, (self.side, self.side), interpolation=cv2.INTER_LANCZOS4).astype(np.float32)
        x = x / max(float(x.max()), 1e-6) - 0.5
        feed = {self.session.get_inputs()[0].name: x.transpose(2, 0, 1)[None]}
        pred = self.session.run(None, feed)[0][0, 0]
        pred = (pred - pred.min()) / max(float(pred.max() - pred.min()), 1e-6)
        return _alpha(pred, h, w)


def _onnx_file(model: str, download: bool) -> Path:
    """A path as given; a bare name or file name is rembg's IS-Net of that name, fetched once into
    rembg's folder (md5 checked) unless `download` is off or HF_HUB_OFFLINE is set."""
    if rembg.is_path(model):
        path = Path(model).expanduser()
        if not path.is_file():
            raise CurateError(f"isnet model file not found: {path}")
        return path
    name = rembg.isnet_name(model)
    if path := rembg.cached_file(name):
        return path
    if download and not offline():
        _log.warning("fetching IS-Net %s from %s into %s, once", name, rembg.url_for(name), rembg.cache_dir())
        return rembg.fetch(name)
    why = f"run `{FETCH_COMMAND}` where there is internet" if offline() else "it is fetched when named"
    raise CurateError(
        f"segment.backend 'isnet:{model}': {name}.onnx is not in {rembg.cache_dir()} (rembg's folder: "
        f"$U2NET_HOME, else $XDG_DATA_HOME/.u2net, else ~/.u2net){' and HF_HUB_OFFLINE is set' if offline() else ''}: "
        f"{why}, or name the file as isnet:/path/{name}.onnx"
    )


def load_isnet(model: str, settings: SegmentConfig, local_only: bool = False) -> OnnxMatteSegmenter:
    """IS-Net through onnxruntime on `segment.device`: a CUDA device needs the CUDA provider (the
    `curate[gpu]` extra), and a session that did not start on it is refused, never run on the CPU."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise CurateError("the isnet backend needs onnxruntime: pip install onnxruntime") from exc
    providers = onnx_providers(settings.device, "segment.device")
    path = _onnx_file(model or rembg.DEFAULT_ISNET, download=not local_only)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for a damaged model
        raise CurateError(f"cannot load isnet model {str(path)!r}: {str(exc).splitlines()[0]}") from exc
    if providers[0] != "CPUExecutionProvider" and CUDA_PROVIDER not in session.get_providers():
        raise CurateError(
            f"segment.device = {settings.device!r}: onnxruntime could not start CUDA for IS-Net (its CUDA and "
            "cuDNN libraries are missing or do not match this onnxruntime-gpu); set segment.device = 'cpu'"
        )
    side = session.get_inputs()[0].shape[-1]
    return OnnxMatteSegmenter(f"isnet:{model}", session, side if isinstance(side, int) else 1024)


# -- birefnet / rmbg (remote code) -------------------------------------------------------------


@dataclass
class RemoteCodeSegmenter:
    """BiRefNet / RMBG-2.0: 1024x1024 ImageNet-normalised input, the last output's sigmoid is the matte."""

    name: str
    model: Any
    device: str
    side: int = 1024

    def __call__(self, rgb: np.ndarray, class_noun: str = "") -> np.ndarray:
        import torch

        x = cv2.resize(rgb, (self.side, self.side), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        tensor = torch.from_numpy(x.transpose(2, 0, 1)[None]).to(self.device)
        with torch.inference_mode():
            out = self.model(tensor)
        pred = out[-1] if isinstance(out, (list, tuple)) else out
        return _alpha(pred.sigmoid()[0, 0].float().cpu().numpy(), *rgb.shape[:2])


def load_remote_code(
    kind: str, model_id: str, settings: SegmentConfig, local_only: bool = False
) -> RemoteCodeSegmenter:
    if not settings.trust_remote_code:
        raise CurateError(
            f"segment.backend {kind!r} runs Python code shipped with {model_id!r}: set "
            "segment.trust_remote_code = true in curate.toml only if you trust that repository"
        )
    from transformers import AutoModelForImageSegmentation

    device = torch_device(settings.device)
    require_local("segment.backend", model_id)
    model = _from_pretrained(
        kind,
        model_id,
        lambda: AutoModelForImageSegmentation.from_pretrained(
            model_id, trust_remote_code=True, local_files_only=local_only
        ),
    )
    return RemoteCodeSegmenter(f"{kind}:{model_id}", model.to(device).eval(), device)

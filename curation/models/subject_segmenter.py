"""M_SAL, MSP-Diffusion's subject-aware segmentation model: the network, its folder format, loading.

The MSP paper (Jain et al., appendix A.4-A.6) trains a ResNet-34-encoder U-Net on its target subjects
and uses it twice: its class scores steer generation (SAL guidance, `generators/msp/`) and its encoder
features compare a generated subject with the subject's photos (SAS, `curation/scores/sas.py`). Both,
and the trainer (`personalization/segmenter_training.py`), load the folder this module reads and writes,
so it lives below all three.

One class per concept (sorted concept ids, class k+1) plus background (class 0). The folder holds
`segmenter.json` (concepts, architecture, which encoder weights it started from, validation IoU) and
`model.pt` (the state dict); `checkpoint.pt` (model, optimiser, epoch) lets a killed training resume.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from curation.core.errors import CurateError
from curation.core.workspace import atomic_write_bytes, atomic_write_json

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



def read_rgb(path: Path, size: int | None = None) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
        if size:
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image)



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



def save_segmenter(
    out_dir: Path, model: Any, concepts: Sequence[str], settings: SegmenterSettings, **record: Any
) -> None:
    """Write the folder `SubjectSegmenter.load` reads: weights first, then the config that names them."""
    atomic_write_bytes(Path(out_dir) / WEIGHTS_FILE, torch_bytes(model.state_dict()))
    atomic_write_json(
        Path(out_dir) / CONFIG_FILE, {"concepts": list(concepts), "settings": asdict(settings), **record}
    )



def torch_bytes(obj: Any) -> bytes:
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

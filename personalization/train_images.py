"""Training images as tensors: a square centre crop, where it came from, and its loss mask.

Every trainer resizes an image's short side to the training resolution and centre-crops it. SDXL
is conditioned on that geometry (its "micro-conditioning" time ids: original size, crop corner,
target size), so the crop reports it. A mask (a soft reference mask, or the boxes of a composition)
goes through the same resize and crop, so it covers the same pixels as the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class SquareCrop:
    """One training image: pixels in [-1, 1] CHW, and the geometry SDXL's time ids describe."""

    pixels: object
    original_size: tuple[int, int]
    """(height, width) of the file before resizing."""
    crop_top_left: tuple[int, int]
    """(top, left) of the crop in the resized image."""


def _resize_and_crop(image, resolution: int):
    """Short side to `resolution` (PIL's default filter), then the centre square; (image, (top, left))."""
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution)), (top, left)


def load_square(path: Path, resolution: int) -> SquareCrop:
    """The image at `path`, resized and centre-cropped to `resolution`, scaled to [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        original = (image.height, image.width)
        image, corner = _resize_and_crop(image, resolution)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return SquareCrop(torch.from_numpy(array).permute(2, 0, 1), original, corner)


def load_square_mask(path: Path, resolution: int):
    """A soft mask file (white = the subject), cropped like its image, as a [1, H, W] tensor in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as mask:
        mask, _ = _resize_and_crop(mask.convert("L"), resolution)
        array = np.asarray(mask, dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]


def boxes_square_mask(
    image_size: tuple[int, int], boxes: tuple[tuple[float, float, float, float], ...], resolution: int
):
    """The union of (x, y, w, h) pixel boxes on an image of (height, width), cropped like the image."""
    import numpy as np
    import torch
    from PIL import Image

    height, width = image_size
    canvas = np.zeros((height, width), dtype=np.uint8)
    for x, y, w, h in boxes:
        canvas[max(0, round(y)) : max(0, round(y + h)), max(0, round(x)) : max(0, round(x + w))] = 255
    mask, _ = _resize_and_crop(Image.fromarray(canvas), resolution)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]

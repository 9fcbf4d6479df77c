"""Paste concept cut-outs into their layout boxes with soft alpha, onto a background.

Offline, the background is built from scikit-image's sample photos: a floor in perspective and a
wall or sky behind it, each a real photographed surface (table wood, grass, gravel, brick) picked
and coloured by the words of the plan's background text ("wooden table" -> the coffee photo's table
in brown, "garden" -> sky over a treeline), so the same text always gives the same picture. Objects are drawn back to front (higher
box bottom = farther away), each with a soft contact shadow, and the result keeps every layer so
a repaint backend can re-blend or inpaint around them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from curation.core.records import Box, Concept
from curation.core.workspace import Workspace
from generators.segment import UNUSABLE_FLAGS

SURFACES: dict[str, tuple[tuple[int, int, int], str]] = {
    "wooden": ((150, 105, 65), "wood"),
    "marble": ((226, 224, 218), "plaster"),
    "concrete": ((140, 140, 138), "plaster"),
    "lawn": ((82, 140, 62), "grass"),
    "grass": ((86, 146, 64), "grass"),
    "sandy": ((214, 194, 150), "sand"),
    "brick": ((160, 78, 58), "brick"),
    "carpet": ((200, 182, 152), "carpet"),
    "stone": ((150, 146, 136), "gravel"),
    "desk": ((236, 236, 232), "plaster"),
    "snowy": ((240, 244, 250), "sand"),
    "tiled": ((200, 210, 222), "brick"),
    "blanket": ((182, 62, 62), "carpet"),
    "deck": ((132, 96, 62), "wood"),
    "gravel": ((166, 152, 126), "gravel"),
    "shelf": ((86, 60, 40), "wood"),
}
"""Surface word -> (colour, photo texture): the first such word of the text's surface part (`_scene_words`)."""
SETTINGS: dict[str, tuple[tuple[int, int, int], str]] = {
    "kitchen": ((238, 228, 208), "plaster"),
    "loft": ((172, 166, 160), "brick"),
    "garden": ((150, 196, 236), "sky"),
    "sky": ((140, 190, 236), "sky"),
    "wall": ((190, 120, 96), "brick"),
    "living": ((222, 202, 172), "plaster"),
    "bedroom": ((212, 202, 218), "plaster"),
    "park": ((160, 200, 236), "sky"),
    "office": ((232, 234, 236), "plaster"),
    "winter": ((204, 218, 232), "sky"),
    "library": ((92, 72, 54), "wood"),
    "bathroom": ((122, 162, 204), "brick"),
    "sunset": ((242, 164, 112), "sky"),
    "desert": ((232, 196, 146), "sky"),
}
"""Setting word -> (colour, texture) of what stands behind the floor: a sky over a far treeline outdoors,
a wall indoors. Text naming no known word gets a seeded colour and `FALLBACK_TEXTURES`."""
TEXTURES: dict[str, tuple[str, slice, slice, float, float]] = {
    "wood": ("coffee", slice(None), slice(490, None), 0.0, 0.7),
    "grass": ("grass", slice(None), slice(None), 0.0, 0.8),
    "gravel": ("gravel", slice(None), slice(None), 0.0, 0.7),
    "sand": ("gravel", slice(None), slice(None), 2.0, 0.5),
    "carpet": ("grass", slice(None), slice(None), 1.5, 0.4),
    "brick": ("brick", slice(None), slice(None), 0.0, 0.6),
    "plaster": ("gravel", slice(None), slice(None), 3.0, 0.15),
    "sky": ("grass", slice(None), slice(None), 24.0, 0.6),
}
"""Texture -> (scikit-image photo, rows, columns, blur sigma, contrast): the brightness detail of a real
surface photographed (the coffee photo's table, grass, gravel, brick; blurred: gravel as sand and plaster,
grass as carpet and, far more, as clouds); the colour comes from the words. The photos ship with scikit-image:
no download."""


@dataclass
class Layer:
    """One pasted object: its scaled cut-out and where its top-left corner sits on the canvas."""

    concept_id: str
    x: int
    y: int
    rgb: np.ndarray
    alpha: np.ndarray  # float32 0..1, same height/width as rgb

    @property
    def box(self) -> Box:
        h, w = self.alpha.shape
        return Box(concept_id=self.concept_id, x=self.x, y=self.y, w=w, h=h)


class Composition:
    """What a repaint backend needs: the background (with shadows) and every layer, back to front.

    The pasted image is computed on first use only: the classical repaint re-pastes harmonized
    layers itself, while a diffusion repaint starts from the pasted image.
    """

    def __init__(self, background: np.ndarray, layers: list[Layer]):
        self.background = background
        self.layers = layers

    @cached_property
    def image(self) -> np.ndarray:
        return paste(self.background, self.layers)

    def silhouettes(self) -> np.ndarray:
        """Which layer is seen at each canvas pixel: HxW uint8, 0 background, k the k-th layer drawn.

        A pixel belongs to a layer where its alpha is at least 0.5 and no later layer covers it, so
        the map's region borders are exactly where pasted edges lie: object against background and
        nearer object against farther one. The seam score looks along them.
        """
        labels = np.zeros(self.background.shape[:2], np.uint8)
        for number, layer in enumerate(self.layers, start=1):
            h, w = layer.alpha.shape
            region = labels[layer.y : layer.y + h, layer.x : layer.x + w]
            region[layer.alpha[: region.shape[0], : region.shape[1]] >= 0.5] = min(number, 255)
        return labels


def _hash_rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


FALLBACK_TEXTURES = ("sand", "plaster")
"""(floor, backdrop) textures for text that names no known surface or setting (the colour is then seeded)."""


_SETTING_PREPOSITIONS = frozenset({"in", "under", "beside", "by", "on", "at"})


def _scene_words(text: str) -> tuple[list[str], list[str]]:
    """The words naming the surface (up to the second preposition: 'on a rug *in* a room', 'on snow *on* a
    winter day') and those naming the setting."""
    words = [w.strip(",.") for w in text.lower().split()]
    split = next((i for i, w in enumerate(words) if i and w in _SETTING_PREPOSITIONS), len(words))
    return words[:split], words[split:]


def _lookup(
    words: list[str], table: dict[str, tuple[tuple[int, int, int], str]]
) -> tuple[tuple[int, int, int], str] | None:
    return next((table[word] for word in words if word in table), None)


def scene_textures(text: str) -> tuple[str, str]:
    """The (floor, backdrop) textures a background text picks: its first known surface and setting word,
    else `FALLBACK_TEXTURES`. A part that names none is looked up in the other, because LLM plans also
    put the setting first ('a cosy kitchen on a wooden table', 'in a garden on a lawn')."""
    surface, setting = _scene_words(text)
    floor = _lookup(surface, SURFACES) or _lookup(setting, SURFACES)
    backdrop = _lookup(setting, SETTINGS) or _lookup(surface, SETTINGS)
    return (floor[1] if floor else FALLBACK_TEXTURES[0], backdrop[1] if backdrop else FALLBACK_TEXTURES[1])


@lru_cache(maxsize=16)
def _texture_source(name: str) -> np.ndarray:
    """A texture's photo as brightness relative to its mean (float32, mean 1), mirrored 2x2 so tiling
    has no jumps (a window that fits in one quarter has no mirror line either: `_texture`)."""
    import skimage.data

    sample, rows, cols, sigma, _ = TEXTURES[name]
    photo = np.asarray(getattr(skimage.data, sample)())[rows, cols]
    grey = (cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY) if photo.ndim == 3 else photo).astype(np.float32)
    if sigma:
        grey = cv2.GaussianBlur(grey, (0, 0), sigma)
    grey /= max(float(grey.mean()), 1.0)
    if grey.shape[0] > 2 * grey.shape[1]:  # a narrow strip (the table beside the cup): grain along the floor,
        # 4x so a 512 px canvas's floor fits in one quarter (mirrored wood grain drew diamonds)
        grey = cv2.resize(grey.T, (4 * grey.shape[0], 4 * grey.shape[1]), interpolation=cv2.INTER_LINEAR)
    tile = np.concatenate([grey, grey[:, ::-1]], axis=1)
    return np.concatenate([tile, tile[::-1]], axis=0)


def _texture(name: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """`height` x `width` of the texture's photo from a seeded offset, as 1 + contrast * detail; within
    the unmirrored photo where it fits, else tiled."""
    source = _texture_source(name)
    sh, sw = source.shape
    y0 = int(rng.integers(sh // 2 - height + 1)) if height <= sh // 2 else int(rng.integers(sh))
    x0 = int(rng.integers(sw // 2 - width + 1)) if width <= sw // 2 else int(rng.integers(sw))
    rows, cols = (np.arange(height) + y0) % sh, (np.arange(width) + x0) % sw
    return 1.0 + TEXTURES[name][4] * (source[np.ix_(rows, cols)] - 1.0)


def _floor(name: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """The floor texture in perspective: the far edge (at the horizon) squeezes three widths of it into
    the canvas, the near edge shows it at its own scale, so its grain shrinks towards the horizon as a
    real floor's does."""
    depth = 3 * height // 2
    flat = _texture(name, depth, 3 * width, rng)
    src = np.float32([[0, 0], [3 * width, 0], [3 * width, depth], [0, depth]])
    dst = np.float32([[0, 0], [width, 0], [2 * width, height], [-width, height]])
    warp = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(flat, warp, (width, height), borderMode=cv2.BORDER_REFLECT)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


@lru_cache(maxsize=64)
def procedural_background(text: str, width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic picture of the place a background text names (read-only, cached).

    The floor and what stands behind it are real surfaces photographed (scikit-image's sample photos,
    `TEXTURES`) coloured by the words ("wooden table" -> the coffee photo's table grain in brown, "blue
    sky" -> clouds over a treeline), lit from above, with a lens vignette; the same text and seed always
    give the same picture, other seeds other crops of the same surfaces.
    """
    rng = _hash_rng(text, width, height, seed)
    surface, setting = _scene_words(text)
    floor_texture, wall_texture = scene_textures(text)
    floor_colour, wall_colour = (
        np.array(found[0], np.float32) if found else rng.uniform(90, 230, size=3).astype(np.float32)
        for found in (_lookup(surface, SURFACES), _lookup(setting, SETTINGS))
    )
    horizon = int(height * rng.uniform(0.5, 0.6))
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    light = rng.uniform(0.85, 1.1)
    image = np.empty((height, width, 3), np.float32)
    image[horizon:] = floor_colour * _floor(floor_texture, height - horizon, width, rng)[..., None]
    floor_depth = (ys[horizon:] - ys[horizon]) / max(1.0 - float(ys[horizon, 0, 0]), 1e-6)
    image[horizon:] *= 0.8 + 0.25 * floor_depth
    wall = wall_colour * _texture(wall_texture, horizon, width, rng)[..., None]
    if wall_texture == "sky":  # paler towards the horizon, over a far treeline of grass
        wall = wall + (255 - wall) * (0.45 * ys[:horizon] / max(ys[horizon], 1e-6))
        ridge = horizon - (0.08 + 0.04 * _smooth_noise(rng, 1, width, 5)[0]) * height
        trees = np.arange(horizon)[:, None] >= ridge[None, :]
        green = np.array((52, 78, 48), np.float32) * _texture("grass", horizon, width, rng)[..., None]
        wall[trees] = green[trees]
    image[:horizon] = wall * (light - 0.18 * ys[:horizon] / max(ys[horizon], 1e-6))
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :, None]
    image *= 1.0 - 0.12 * xs**2  # soft vignette, as a lens gives
    image = cv2.GaussianBlur(image, (0, 0), 0.7)
    out = np.clip(image, 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=256)
def _cutout(root: str, ref: str, mask: str, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """A reference photo and its alpha cropped to the mask's bounding box (cached per process).

    Cut-outs are kept at most `max_side` (the canvas side; no box is larger), which bounds the
    cache at ~1 MB per entry at 512 px even for 1024 px references.
    """
    ws = Workspace(Path(root))
    rgb = np.asarray(Image.open(ws.resolve(ref)).convert("RGB"))
    alpha = np.asarray(Image.open(ws.resolve(mask)).convert("L"))
    ys, xs = np.nonzero(alpha >= 16)
    if len(xs) == 0:
        raise ValueError(f"mask {mask} is empty")
    crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    rgb, alpha = rgb[crop], alpha[crop]
    scale = max_side / max(alpha.shape)
    if scale < 1:
        size = (max(1, round(alpha.shape[1] * scale)), max(1, round(alpha.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(alpha)


def pick_reference(concept: Concept, rng: np.random.Generator) -> int:
    """Index of the reference photo to use: a random one among those whose mask has no flag, else
    among those whose flags still leave a subject to paste (never an empty or whole-frame mask)."""
    usable = [i for i, flags in enumerate(concept.mask_flags) if not flags] or [
        i for i, flags in enumerate(concept.mask_flags) if not UNUSABLE_FLAGS.intersection(flags)
    ]
    if not usable:
        raise ValueError(f"concept {concept.concept_id} has no reference photo with a usable mask")
    return usable[int(rng.integers(len(usable)))]


def fit_layer(concept_id: str, rgb: np.ndarray, alpha: np.ndarray, box: Box) -> Layer:
    """Scale a cut-out to fit its box (aspect kept), standing on the box's bottom edge, centred."""
    h, w = alpha.shape
    scale = min(box.w / w, box.h / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    rgb_s = cv2.resize(rgb, (nw, nh), interpolation=interp)
    alpha_s = cv2.resize(alpha, (nw, nh), interpolation=interp).astype(np.float32) / 255.0
    return Layer(concept_id, box.x + (box.w - nw) // 2, box.y + box.h - nh, rgb_s, alpha_s)


def paste(background: np.ndarray, layers: list[Layer]) -> np.ndarray:
    """Alpha-blend layers in order (first is farthest) onto a copy of the background."""
    canvas = background.copy()
    for layer in layers:
        h, w = layer.alpha.shape
        region = canvas[layer.y : layer.y + h, layer.x : layer.x + w]
        a = layer.alpha[..., None]
        blended = region.astype(np.float32) * (1 - a) + layer.rgb.astype(np.float32) * a
        region[:] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return canvas


def _shadows(background: np.ndarray, layers: list[Layer]) -> np.ndarray:
    """Darken the floor under each object with a blurred ellipse so it rests on the ground."""
    height, width = background.shape[:2]
    out = background.copy()
    sigma = max(2.0, width / 120)
    pad = int(3 * sigma)
    for layer in layers:
        h, w = layer.alpha.shape
        rx, ry = max(1, int(w * 0.45)), max(1, int(h * 0.05))
        cx, cy = layer.x + w // 2, min(height - 1, layer.y + h)
        x0, y0 = max(0, cx - rx - pad), max(0, cy - ry - pad)
        x1, y1 = min(width, cx + rx + pad + 1), min(height, cy + ry + pad + 1)
        shade = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.ellipse(shade, (cx - x0, cy - y0), (rx, ry), 0, 0, 360, 1.0, -1)
        shade = cv2.GaussianBlur(shade, (0, 0), sigma)
        region = out[y0:y1, x0:x1]
        region[:] = np.clip(region.astype(np.float32) * (1 - 0.4 * shade[..., None]) + 0.5, 0, 255).astype(
            np.uint8
        )
    return out


def compose(ws: Workspace, background: np.ndarray, picks: list[tuple[Concept, int, Box]]) -> Composition:
    """Paste each (concept, reference index, box) onto the background, farthest box first.

    Args:
        ws: Workspace holding the concepts' refs and masks.
        background: HxWx3 uint8 canvas (not modified).
        picks: One entry per concept: which reference photo to use and the box it must fill.

    Returns:
        The shadowed background and the layers in drawing order (the composite on demand).
    """
    layers = []
    for concept, index, box in sorted(picks, key=lambda p: (p[2].y + p[2].h, p[2].x)):
        side = max(background.shape[:2])
        rgb, alpha = _cutout(str(ws.root), concept.refs[index], concept.masks[index], side)
        layers.append(fit_layer(concept.concept_id, rgb, alpha, box))
    return Composition(background=_shadows(background, layers), layers=layers)

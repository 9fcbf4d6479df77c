"""Segmentation quality on ground truth: mean IoU and boundary F-score per backend and case type.

The set is constructed, so its true alpha is known: textured objects (a colour shaded and patterned
by a scikit-image texture) with soft edges (a blurred shape, alpha-composited) on scikit-image's
photographic backgrounds. Case types, `per_type` images each:

- ``plain``: an out-of-focus background (a blurred photo crop), as most object photos have;
- ``busy``: a sharp, textured background (gravel, grass, brick, a wooden table, a launch site);
- ``low_contrast``: the object's colour within a small distance of the background's mean;
- ``touching_frame``: the object runs out of the frame on one or two sides;
- ``thin_parts``: the object has limbs 2-4 px wide (legs, a handle, antennae).

IoU is taken at alpha >= 0.5; the boundary F-score (DAVIS-style) matches the boundary pixels of the
two hard masks within 0.8% of the image diagonal. Backends are any `segment.backend` value; a backend
that needs a class noun gets 'object' (semantic models have no such label and report n/a). By default
IS-Net (rembg's file, fetched when missing and online; `isnet:FILE.onnx` for another) runs beside
classical; a backend that cannot load (not here offline, a device without its provider) prints n/a
and why.

    .venv/bin/python benchmarks/bench_segment.py --backends classical isnet sam --device cuda
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import cv2
import numpy as np

CASE_TYPES = ("plain", "busy", "low_contrast", "touching_frame", "thin_parts")


@dataclass(frozen=True)
class Case:
    """One constructed photo and its true alpha (float 0..1)."""

    kind: str
    rgb: np.ndarray
    alpha: np.ndarray


def _photos() -> dict[str, np.ndarray]:
    """scikit-image's photos as RGB uint8 backgrounds; grey textures are tinted like real surfaces."""
    from skimage import data

    def tint(grey: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
        return (grey[..., None].astype(np.float32) / 255 * np.array(rgb, np.float32) * 1.4).clip(0, 255).astype(
            np.uint8
        )

    return {  # regions with no subject of their own (the cup, the rocket, the cat's face would compete)
        "wood": data.coffee()[:, 490:],
        "launch_site": data.rocket()[:, 400:],
        "hubble": data.hubble_deep_field(),
        "brick": tint(data.brick(), (190, 110, 90)),
        "grass": tint(data.grass(), (90, 160, 70)),
        "gravel": tint(data.gravel(), (170, 160, 150)),
    }


def _crop(photo: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    scale = max(h / photo.shape[0], w / photo.shape[1], 1.0)
    if scale > 1:
        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    y = int(rng.integers(0, photo.shape[0] - h + 1))
    x = int(rng.integers(0, photo.shape[1] - w + 1))
    return photo[y : y + h, x : x + w].copy()


def _blob(h: int, w: int, cx: float, cy: float, radius: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random closed shape: a circle whose radius varies by a few low harmonics."""
    t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3, 4):
        r += rng.uniform(0.03, 0.16) * np.sin(k * t + rng.uniform(0, 2 * np.pi))
    sx, sy = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
    points = np.stack([cx + radius * sx * r * np.cos(t), cy + radius * sy * r * np.sin(t)], 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(points * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
    return mask


def _texture(h: int, w: int, photos: dict[str, np.ndarray], colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An object's surface: one colour, shaded top-left to bottom-right, patterned by a grey photo crop."""
    grey = cv2.cvtColor(_crop(photos[str(rng.choice(["brick", "gravel", "grass"]))], h, w, rng), cv2.COLOR_RGB2GRAY)
    pattern = (grey.astype(np.float32) / 255 - 0.5) * rng.uniform(0.15, 0.35)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1.1 - 0.25 * (yy / h + xx / w) / 2
    return (colour[None, None] * (shade + pattern)[..., None]).clip(0, 255)


def _object_colour(background: np.ndarray, rng: np.random.Generator, low_contrast: bool) -> np.ndarray:
    """A colour far from the background's mean in Lab, or (low contrast) 12-20 Lab units from it."""
    mean = background.reshape(-1, 3).mean(0).astype(np.uint8)[None, None]
    lab = cv2.cvtColor(mean, cv2.COLOR_RGB2LAB).astype(np.float32)[0, 0]
    for _ in range(200):
        if low_contrast:
            direction = rng.normal(size=3)
            candidate = lab + direction / np.linalg.norm(direction) * rng.uniform(12, 20)
        else:
            candidate = np.array([rng.uniform(40, 230), rng.uniform(60, 200), rng.uniform(60, 200)])
        distance = float(np.linalg.norm(candidate - lab))
        if low_contrast or distance > 60:
            break
    pixel = np.clip(candidate, 0, 255).astype(np.uint8)[None, None]
    return cv2.cvtColor(pixel, cv2.COLOR_LAB2RGB)[0, 0].astype(np.float32)


def make_case(kind: str, index: int, size: tuple[int, int] = (240, 320)) -> Case:
    """The `index`-th case of a type; the same arguments always give the same pixels."""
    rng = np.random.default_rng([CASE_TYPES.index(kind), index])
    photos = _photos()
    h, w = size
    names = ["gravel", "grass", "brick", "wood", "launch_site"] if kind == "busy" else list(photos)
    background = _crop(photos[str(rng.choice(names))], h, w, rng)
    if kind != "busy":
        background = cv2.GaussianBlur(background, (0, 0), 6 if kind == "plain" else 3)
    radius = min(h, w) * rng.uniform(0.22, 0.32)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    if kind == "touching_frame":  # pushed out through the bottom, sometimes a side too
        cy = h - radius * rng.uniform(0.4, 0.8)
        if rng.random() < 0.5:
            cx = radius * rng.uniform(0.5, 0.9) if rng.random() < 0.5 else w - radius * rng.uniform(0.5, 0.9)
    hard = _blob(h, w, cx, cy, radius, rng)
    if kind == "thin_parts":
        for _ in range(int(rng.integers(2, 5))):
            angle = rng.uniform(0, 2 * np.pi)
            start = (int(cx + radius * 0.8 * np.cos(angle)), int(cy + radius * 0.8 * np.sin(angle)))
            length = radius * rng.uniform(0.6, 1.0)
            end = (int(start[0] + length * np.cos(angle)), int(start[1] + length * np.sin(angle)))
            cv2.line(hard, start, end, 1, int(rng.integers(2, 5)))
    alpha = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), 1.0)
    colour = _object_colour(background, rng, low_contrast=kind == "low_contrast")
    fg = _texture(h, w, photos, colour, rng)
    rgb = alpha[..., None] * fg + (1 - alpha[..., None]) * background.astype(np.float32)
    return Case(kind, np.rint(rgb).clip(0, 255).astype(np.uint8), alpha)


def make_cases(per_type: int, kinds: tuple[str, ...] = CASE_TYPES) -> list[Case]:
    return [make_case(kind, i) for kind in kinds for i in range(per_type)]


def _boundary(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)).astype(bool)


def scores(alpha: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(IoU, boundary F-score) of a uint8 alpha against a float true alpha."""
    pred, true = alpha >= 128, truth >= 0.5
    union = (pred | true).sum()
    iou = float((pred & true).sum() / union) if union else 1.0
    tolerance = max(1.0, 0.008 * float(np.hypot(*truth.shape)))
    bp, bt = _boundary(pred), _boundary(true)
    if not bp.any() or not bt.any():
        return iou, float(bp.any() == bt.any())
    dist_to_true = cv2.distanceTransform((~bt).astype(np.uint8), cv2.DIST_L2, 3)
    dist_to_pred = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, 3)
    precision = float((dist_to_true[bp] <= tolerance).mean())
    recall = float((dist_to_pred[bt] <= tolerance).mean())
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return iou, f


def evaluate(segmenter, cases: list[Case]) -> dict[str, tuple[float, float]]:
    """Per case type (and 'all'): mean IoU and mean boundary F."""
    per: dict[str, list[tuple[float, float]]] = {}
    for case in cases:
        result = scores(segmenter(case.rgb, "object"), case.alpha)
        per.setdefault(case.kind, []).append(result)
        per.setdefault("all", []).append(result)
    return {kind: (float(np.mean([r[0] for r in rs])), float(np.mean([r[1] for r in rs]))) for kind, rs in per.items()}


def main(argv: list[str] | None = None) -> None:
    from curation.core.config import SegmentConfig
    from curation.core.errors import CurateError
    from generators.segment import load_segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["classical", "isnet"], help="segment.backend values")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--per-type", type=int, default=10, help="images per case type")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)

    cases = make_cases(args.per_type)
    columns = [*CASE_TYPES, "all"]
    print(f"{len(cases)} constructed photos (240x320), {args.per_type} per case type; cells: IoU / boundary F")
    print("| backend | " + " | ".join(columns) + " | s/photo |")
    print("|---" * (len(columns) + 2) + "|")
    for backend in args.backends:
        settings = SegmentConfig(backend=backend, device=args.device, trust_remote_code=args.trust_remote_code)
        try:
            segmenter = load_segmenter(backend, settings)
            start = time.perf_counter()
            table = evaluate(segmenter, cases)
            per_photo = (time.perf_counter() - start) / len(cases)
        except CurateError as exc:
            print(f"| {backend} | n/a: {exc} |")
            continue
        cells = " | ".join(f"{table[c][0]:.3f} / {table[c][1]:.3f}" for c in columns)
        print(f"| {segmenter.name} | {cells} | {per_photo:.2f} |")


if __name__ == "__main__":
    main()

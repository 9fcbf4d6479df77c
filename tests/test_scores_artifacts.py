"""Artifact scores on constructed images whose answer is known."""

import cv2
import numpy as np
import pytest
from skimage import data

from curation.records import Box
from curation.scores.artifacts import (
    ARTIFACT_SCORES,
    BLUR,
    EXPOSURE,
    artifact_scores,
    blur,
    box_overlap,
    boxes_mask,
    exposure,
    low_information,
    seam,
    to_gray_small,
)

BOX = Box(concept_id="obj", x=64, y=64, w=128, h=128)


def _photo(size: int = 256) -> np.ndarray:
    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def _paste(background: np.ndarray, patch_value: int, feather: int) -> np.ndarray:
    """Paste a flat square over the box with a hard (feather=0) or a blurred alpha edge."""
    alpha = boxes_mask([BOX], 256, 256, background.shape[:2]).astype(np.float32)
    if feather:
        alpha = cv2.GaussianBlur(alpha, (0, 0), feather)
    patch = np.full_like(background, patch_value, dtype=np.float32)
    out = alpha[..., None] * patch + (1 - alpha[..., None]) * background.astype(np.float32)
    return out.clip(0, 255).astype(np.uint8)


def test_hard_seam_scores_higher_than_feathered():
    background = cv2.GaussianBlur(_photo(), (0, 0), 2)
    hard = artifact_scores(_paste(background, 230, 0), [BOX], 256, 256)["seam"]
    soft = artifact_scores(_paste(background, 230, 8), [BOX], 256, 256)["seam"]
    assert hard > soft + 0.1
    assert hard > ARTIFACT_SCORES["seam"].threshold


def test_seam_without_pasted_region_is_zero_and_flat_border_is_low():
    gray = to_gray_small(_photo())
    assert seam(gray, np.zeros_like(gray)) == 0.0
    flat = np.full((256, 256), 120, np.float32)
    flat[:, :128] += np.random.default_rng(0).normal(0, 20, (256, 128)).astype(np.float32)
    # the box border lies in a flat area while texture is elsewhere: no seam
    assert seam(flat, boxes_mask([Box(concept_id="a", x=150, y=60, w=80, h=80)], 256, 256, flat.shape)) < 0.2


def test_blurred_copy_scores_blurrier():
    sharp = to_gray_small(_photo())
    blurred = to_gray_small(cv2.GaussianBlur(_photo(), (0, 0), 3))
    assert blur(blurred) > blur(sharp)
    assert BLUR.is_issue(blur(blurred)) and not BLUR.is_issue(blur(sharp))


def test_blur_does_not_depend_on_resolution_much():
    small = blur(to_gray_small(_photo(256)))
    large = blur(to_gray_small(_photo(512)))
    assert abs(small - large) < 0.1


def test_overexposed_and_black_images_score_worse_exposure():
    photo = _photo().astype(np.float32)
    normal = exposure(to_gray_small(photo.astype(np.uint8)))
    over = exposure(to_gray_small((photo * 2.2).clip(0, 255).astype(np.uint8)))
    black = exposure(np.zeros((64, 64), np.float32))
    assert over > normal and EXPOSURE.is_issue(over) and not EXPOSURE.is_issue(normal)
    assert black == pytest.approx(1.0)


def test_low_information_and_overlap():
    assert low_information(np.full((64, 64), 90, np.float32)) == pytest.approx(1.0)
    assert low_information(to_gray_small(_photo())) < 0.3
    a = Box(concept_id="a", x=0, y=0, w=10, h=10)
    assert box_overlap([a, Box(concept_id="b", x=20, y=0, w=10, h=10)]) == 0.0
    assert box_overlap([a, Box(concept_id="b", x=5, y=0, w=10, h=10)]) == pytest.approx(50 / 150)


def test_every_score_stays_in_its_declared_range():
    rng = np.random.default_rng(1)
    images = [_photo(), np.zeros((100, 60, 3), np.uint8), rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)]
    for image in images:
        h, w = image.shape[:2]
        scores = artifact_scores(image, [Box(concept_id="a", x=5, y=5, w=w // 2, h=h // 2)], w, h)
        assert set(scores) == set(ARTIFACT_SCORES)
        for name, value in scores.items():
            spec = ARTIFACT_SCORES[name]
            assert spec.low <= value <= spec.high, (name, value)

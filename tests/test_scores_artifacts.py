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
    IDENTITY_DRIFT,
    artifact_scores,
    blur,
    box_overlap,
    boxes_mask,
    exposure,
    identity_drift,
    low_information,
    paste_thumbnails,
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
        box = Box(concept_id="a", x=5, y=5, w=w // 2, h=h // 2)
        pasted = paste_thumbnails(255 - image, [box], w, h)
        scores = artifact_scores(image, [box], w, h, pasted)
        assert set(scores) == set(ARTIFACT_SCORES)
        for name, value in scores.items():
            spec = ARTIFACT_SCORES[name]
            assert spec.low <= value <= spec.high, (name, value)


def test_identity_drift_sees_a_repainted_away_concept_and_not_an_untouched_one():
    photo = _photo()
    other = Box(concept_id="other", x=0, y=192, w=64, h=64)
    pasted = paste_thumbnails(photo, [BOX, other], 256, 256)
    assert identity_drift(photo, [BOX, other], 256, 256, pasted) == pytest.approx(0.0, abs=1e-6)
    # a harmonisation-like global tint moves the regions a little
    tinted = (photo.astype(np.int16) + 6).clip(0, 255).astype(np.uint8)
    slight = identity_drift(tinted, [BOX, other], 256, 256, pasted)
    assert 0.0 < slight < IDENTITY_DRIFT.threshold
    # the repaint replaced BOX's concept by flat background: that concept drifted, the score is its drift
    repainted = photo.copy()
    repainted[BOX.y : BOX.y + BOX.h, BOX.x : BOX.x + BOX.w] = 128
    drift = identity_drift(repainted, [BOX, other], 256, 256, pasted)
    before = np.frombuffer(bytes.fromhex(pasted["obj"]), np.uint8).astype(np.float64)
    expected = np.abs(before - 128).mean() / 255
    assert drift == pytest.approx(expected, abs=1e-6)
    assert IDENTITY_DRIFT.is_issue(drift)


def test_identity_drift_follows_the_boxes_at_another_resolution_and_is_none_without_a_paste():
    photo = _photo()
    pasted = paste_thumbnails(photo, [BOX], 256, 256)
    half = cv2.resize(photo, (128, 128), interpolation=cv2.INTER_AREA)
    assert identity_drift(half, [BOX], 256, 256, pasted) < 0.02
    assert identity_drift(photo, [BOX], 256, 256, {}) is None
    assert artifact_scores(photo, [BOX], 256, 256)["identity_drift"] is None
    assert not IDENTITY_DRIFT.is_issue(None)


def test_generated_candidates_keep_their_paste_and_classical_repaint_drifts_little(concept_ws):
    from PIL import Image

    from curation.scores.artifacts import PASTE_THUMBS
    from generators.layout import plan_layouts
    from generators.run import generate

    plan_layouts(concept_ws, 3)
    generate(concept_ws)
    candidates = list(concept_ws.candidates())
    assert len(candidates) == 3
    for c in candidates:
        assert set(c.extra[PASTE_THUMBS]) == set(c.concepts)
        image = np.asarray(Image.open(concept_ws.resolve(c.image)).convert("RGB"))
        drift = artifact_scores(image, c.boxes, c.width, c.height, c.extra[PASTE_THUMBS])["identity_drift"]
        # the classical repaint only nudges colours (strength 0.3): a change, but not a lost identity
        assert 0.0 < drift < IDENTITY_DRIFT.threshold

"""Artifact scores on constructed images whose answer is known."""

import cv2
import numpy as np
import pytest
from skimage import data

from curation.core.paste_record import (
    PASTE_SILHOUETTES,
    PASTE_THUMBS,
    decode_silhouettes,
    encode_silhouettes,
    paste_thumbnails,
)
from curation.core.records import Box
from curation.scores.artifacts import (
    ARTIFACT_SCORES,
    BLUR,
    EXPOSURE,
    IDENTITY_DRIFT,
    SEAM,
    SEAM_BOX,
    SEAM_SILHOUETTE,
    SEAM_SOURCE,
    artifact_scores,
    blur,
    box_overlap,
    boxes_mask,
    exposure,
    identity_drift,
    low_information,
    seam,
    to_gray_small,
)
from generators.compose import Composition, Layer

BOX = Box(concept_id="obj", x=64, y=64, w=128, h=128)


def _photo(size: int = 256) -> np.ndarray:
    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def _disc_alpha() -> np.ndarray:
    """A disc filling BOX edge to edge: it touches its box in four points only, as cut-outs do."""
    alpha = np.zeros((256, 256), np.float32)
    cv2.circle(alpha, (128, 128), 64, 1.0, -1, lineType=cv2.LINE_AA)
    return alpha


def _kept_disc() -> dict[str, str]:
    """What the generator keeps of a disc paste: its silhouette map."""
    return {PASTE_SILHOUETTES: encode_silhouettes((_disc_alpha() >= 0.5).astype(np.uint8))}


def _paste(background: np.ndarray, thing: np.ndarray | int, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    blended = a * np.asarray(thing, np.float32) + (1 - a) * background.astype(np.float32)
    return blended.clip(0, 255).astype(np.uint8)


def test_hard_pasted_disc_scores_worse_than_a_feathered_one_and_only_its_silhouette_sees_it():
    background = cv2.GaussianBlur(_photo(), (0, 0), 2)
    hard = _paste(background, 230, _disc_alpha())
    soft = _paste(background, 230, cv2.GaussianBlur(_disc_alpha(), (0, 0), 8))
    hard_scores = artifact_scores(hard, [BOX], 256, 256, _kept_disc())
    soft_scores = artifact_scores(soft, [BOX], 256, 256, _kept_disc())
    assert hard_scores[SEAM_SOURCE] == soft_scores[SEAM_SOURCE] == SEAM_SILHOUETTE
    assert hard_scores["seam"] > soft_scores["seam"] + 0.1
    assert SEAM.is_issue(hard_scores["seam"]) and not SEAM.is_issue(soft_scores["seam"])
    # the box border crosses the hard edge in four points only: measured there, the same paste passes
    on_box = artifact_scores(hard, [BOX], 256, 256)
    assert on_box[SEAM_SOURCE] == SEAM_BOX
    assert not SEAM.is_issue(on_box["seam"])


def test_clean_silhouette_edge_scores_low_even_when_the_box_border_is_busy():
    rng = np.random.default_rng(0)
    silhouette = (_disc_alpha() >= 0.5).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11))
    box = boxes_mask([BOX], 256, 256, (256, 256))
    near_disc = cv2.dilate(silhouette, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (21, 21))) > 0
    busy = (cv2.dilate(box, kernel) != cv2.erode(box, kernel)) & ~near_disc  # a patterned frame behind it
    wall = np.full((256, 256), 120, np.float32) + rng.normal(0, 4, (256, 256)).astype(np.float32)
    wall[busy] += rng.normal(0, 50, int(busy.sum())).astype(np.float32)
    thing = 120 + rng.normal(0, 4, (256, 256, 1)).astype(np.float32)  # the wall's colour: no edge
    image = _paste(np.repeat(wall[..., None], 3, axis=2).clip(0, 255), thing, _disc_alpha())

    on_silhouette = artifact_scores(image, [BOX], 256, 256, _kept_disc())["seam"]
    on_box = artifact_scores(image, [BOX], 256, 256)["seam"]
    assert on_silhouette < 0.5 < SEAM.threshold < on_box


def test_seam_without_pasted_region_is_zero_and_an_unreadable_map_falls_back_to_the_box():
    gray = to_gray_small(_photo())
    assert seam(gray, np.zeros(gray.shape, np.uint8)) == 0.0
    scores = artifact_scores(_photo(), [BOX], 256, 256, {PASTE_SILHOUETTES: "not a png"})
    assert scores[SEAM_SOURCE] == SEAM_BOX
    assert scores["seam"] == artifact_scores(_photo(), [BOX], 256, 256)["seam"]


def test_silhouette_map_keeps_the_visible_layer_and_survives_encoding():
    disc = _disc_alpha()[64:192, 64:192]
    square = np.ones((64, 64), np.float32)
    back, front = Layer("a", 64, 64, np.zeros((128, 128, 3), np.uint8), disc), Layer(
        "b", 160, 160, np.zeros((64, 64, 3), np.uint8), square
    )
    labels = Composition(np.zeros((512, 512, 3), np.uint8), [back, front]).silhouettes()
    assert labels.shape == (512, 512)
    assert labels[128, 128] == 1 and labels[70, 70] == 0  # disc centre; the box corner outside the disc
    assert labels[170, 170] == 2 and labels[0, 0] == 0  # the front layer wins where both are
    decoded = decode_silhouettes(encode_silhouettes(labels))  # kept at the scores' 256 px
    assert decoded.shape == (256, 256) and set(np.unique(decoded)) == {0, 1, 2}
    assert np.array_equal(decoded, labels[::2, ::2])


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
        labels = boxes_mask([box], w, h, (h, w))
        kept = {
            PASTE_THUMBS: paste_thumbnails(255 - image, [box], w, h),
            PASTE_SILHOUETTES: encode_silhouettes(labels),
        }
        scores = artifact_scores(image, [box], w, h, kept)
        assert scores.pop(SEAM_SOURCE) == SEAM_SILHOUETTE
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

    from generators.layout import plan_layouts
    from generators.run import generate

    plan_layouts(concept_ws, 3)
    generate(concept_ws)
    candidates = list(concept_ws.candidates())
    assert len(candidates) == 3
    for c in candidates:
        assert set(c.extra[PASTE_THUMBS]) == set(c.concepts)
        labels = decode_silhouettes(c.extra[PASTE_SILHOUETTES])
        assert max(labels.shape) == min(256, max(c.width, c.height))
        assert labels.shape[1] * c.height == labels.shape[0] * c.width
        assert set(np.unique(labels)) == set(range(len(c.concepts) + 1))  # background and every layer
        # cut-outs, not boxes: each silhouette covers less than its box
        assert (labels > 0).mean() < boxes_mask(c.boxes, c.width, c.height, labels.shape).mean()
        image = np.asarray(Image.open(concept_ws.resolve(c.image)).convert("RGB"))
        scores = artifact_scores(image, c.boxes, c.width, c.height, c.extra)
        assert scores[SEAM_SOURCE] == SEAM_SILHOUETTE
        # the classical repaint only nudges colours (strength 0.3): a change, but not a lost identity
        assert 0.0 < scores["identity_drift"] < IDENTITY_DRIFT.threshold

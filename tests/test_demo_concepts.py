"""The demo's concepts cut out whole with the offline backend: the first cut-outs a new user sees.

Each demo photo's mask is compared with a reference mask (96 px on the long side, in
tests/fixtures/demo_masks/) that was checked by eye to hold the whole subject: the whole cup on its
saucer, the rocket without sky, the shuttle model with its tank, the coin. Before, the mug kept only
its rim in two of three views and the demo cat and astronaut were a face patch and a headless suit.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from curation.demo import DEMO_CONCEPTS, write_sample_photos
from generators.segment import ClassicalSegmenter, mask_flags

REFERENCES = Path(__file__).parent / "fixtures" / "demo_masks"


@pytest.fixture(scope="module")
def demo_photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return write_sample_photos(tmp_path_factory.mktemp("photos"))


def test_every_demo_photo_cuts_out_its_whole_subject(demo_photos: dict[str, list[Path]]) -> None:
    segmenter = ClassicalSegmenter()
    assert set(demo_photos) == set(DEMO_CONCEPTS)
    for concept_id, paths in demo_photos.items():
        for path in paths:
            rgb = np.asarray(Image.open(path))
            alpha = segmenter(rgb)
            reference = np.asarray(Image.open(REFERENCES / f"{concept_id}_{path.stem}.png")) > 0
            small = cv2.resize(alpha, reference.shape[::-1], interpolation=cv2.INTER_AREA) >= 128
            iou = (small & reference).sum() / max(1, (small | reference).sum())
            assert iou >= 0.9, f"{path.name}: IoU {iou:.2f} with the whole {concept_id}"
            assert not {"empty", "whole_frame", "fragmented", "holes"} & set(mask_flags(alpha)), path.name
            _, _, stats, _ = cv2.connectedComponentsWithStats((alpha >= 128).astype(np.uint8))
            areas = stats[1:, cv2.CC_STAT_AREA]
            assert areas.max() >= 0.95 * areas.sum(), f"{path.name}: one piece, not {len(areas)} of like size"

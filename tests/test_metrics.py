"""Every metric against a value worked out by hand on constructed vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curation.core.buckets import bucket
from curation.scores.presence import Detection, best_per_label
from curation.scores.similarity import cosine_matrix
from personalization.metrics import (
    aggregate,
    clip_i,
    clip_t,
    cp_clip,
    detect_and_compare,
    iou,
    nms,
    ti_clip,
)

E1, E2, E3 = np.eye(3)
DIAG = np.array([1.0, 1.0, 0.0]) / math.sqrt(2)  # cos 0.7071 with E1 and with E2


def test_cosine_normalises_raw_features():
    assert cosine_matrix(np.array([[3.0, 0, 0]]), np.array([[2.0, 2.0, 0]]))[0, 0] == pytest.approx(
        1 / math.sqrt(2)
    )


def test_clip_i_means_over_references_then_concepts():
    refs_a = np.stack([E1, E2])  # cos(DIAG, .) = 0.7071 each -> 0.7071
    refs_b = np.stack([E3, -E1])  # cos = 0 and -0.7071 -> mean -0.35355
    assert clip_i(DIAG, [refs_a, refs_b]) == pytest.approx((0.70711 - 0.35355) / 2, abs=1e-5)
    assert clip_i(DIAG, [refs_b], reduce="max") == pytest.approx(0.0)


def test_clip_t_conventions_and_ti_clip():
    text = np.array([0.6, 0.8, 0.0])  # cos with E1 = 0.6
    assert clip_t(E1, text, "cosine") == pytest.approx(0.6)
    assert clip_t(E1, text, "clipscore") == pytest.approx(1.5)
    assert clip_t(-E1, text, "clipscore") == 0.0  # negative cosine clipped
    assert ti_clip(E1, text) == pytest.approx(0.6)


def test_cp_clip_scores_missing_concepts_as_zero():
    refs = [np.stack([E1, E1]), np.stack([E2])]
    assert cp_clip([E1, E2], refs) == pytest.approx(1.0)
    assert cp_clip([E1, None], refs) == pytest.approx(0.5)
    assert cp_clip([DIAG, None], refs) == pytest.approx(0.70711 / 2, abs=1e-5)
    with pytest.raises(ValueError):
        cp_clip([E1], refs)


def test_detect_and_compare_hand_values():
    refs = [np.stack([E1]), np.stack([E2])]
    # perfect, in either detection order
    assert detect_and_compare(np.stack([E1, E2]), refs) == pytest.approx(1.0)
    assert detect_and_compare(np.stack([E2, E1]), refs) == pytest.approx(1.0)
    # a hybrid crop that looks like both subjects: S = [[.7071,.7071],[0,1]] -> errors .0858, .5, 0, 0
    hybrid = detect_and_compare(np.stack([DIAG, E2]), refs)
    assert hybrid == pytest.approx(1 - ((1 - 0.70711) ** 2 + 0.70711**2) / 4, abs=1e-5)
    # wrong count -> 0
    assert detect_and_compare(np.stack([E1]), refs) == 0.0
    assert detect_and_compare(np.stack([E1, E2, E3]), refs) == 0.0
    assert detect_and_compare(np.zeros((0, 3)), refs) == 0.0


def test_boxes_nms_and_best_detection():
    a = Detection((0, 0, 10, 10), 0.9, "cat")
    b = Detection((1, 1, 11, 11), 0.5, "dog")  # IoU with a = 81 / 119
    c = Detection((20, 20, 30, 30), 0.4, "dog")
    assert iou(a.box, b.box) == pytest.approx(81 / 119)
    assert nms([b, c, a]) == [a, c]
    assert best_per_label([b, c, a], ["dog", "cat", "mug"]) == [b, a, None]


def test_buckets_and_aggregate():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 6)] == ["<=3", "<=3", "<=3", "4", "5", "5"]
    rows = [
        {"bucket": "<=3", "cp": 0.2},
        {"bucket": "<=3", "cp": 0.4},
        {"bucket": "5", "cp": 1.0},
        {"bucket": "5", "cp": None},
    ]
    agg = aggregate(rows, ["cp"])["cp"]
    assert agg["<=3"] == {"mean": pytest.approx(0.3), "n": 2}
    assert agg["4"] == {"mean": None, "n": 0}
    assert agg["5"]["mean"] == 1.0 and agg["all"]["mean"] == pytest.approx(1.6 / 3)

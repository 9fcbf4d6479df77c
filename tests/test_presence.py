"""Concept presence and CP-CLIP: known answers with an injected embedder, the real OWL-ViT path, and `curate index`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fiftyone import ViewField as F
from PIL import Image

from curation.core import dataset as ds
from curation.core.config import dump_config
from curation.core.errors import CurateError
from curation.core.records import Box, Candidate, Concept
from curation.core.workspace import atomic_write_text
from curation.index.run import index_workspace
from curation.scores import presence as P
from tests.fixtures.tiny_pipelines import build_tiny_owlvit

RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)
E = np.eye(3, dtype=np.float32)
DIAG = (E[0] + E[1]) / math.sqrt(2)  # cosine 0.7071 with red and with green


def colour_embed(images: list[Image.Image]) -> np.ndarray:
    """A stand-in for CLIP whose similarities are known: one axis per dominant channel."""
    return np.stack([E[int(np.argmax(np.asarray(im, np.float32).reshape(-1, 3).mean(0)))] for im in images])


def _candidate(boxes: list[Box], concepts: list[str], size: int = 96) -> Candidate:
    return Candidate(
        candidate_id="c0",
        plan_id="p0",
        shard="s0",
        image="candidates/s0/c0.png",
        concepts=concepts,
        boxes=boxes,
        width=size,
        height=size,
        background="grey",
        seed=0,
        generator="test",
    )


def _image(fills: list[tuple[Box, tuple[int, int, int]]], size: int = 96) -> Image.Image:
    canvas = np.full((size, size, 3), (90, 90, 110), np.uint8)  # bluish grey: dominant channel blue
    for box, colour in fills:
        canvas[box.y : box.y + box.h, box.x : box.x + box.w] = colour
    return Image.fromarray(canvas)


CAT = Box(concept_id="cat", x=4, y=30, w=30, h=30)
DOG = Box(concept_id="dog", x=50, y=30, w=30, h=30)
REFS = {"cat": np.stack([E[0], E[0]]), "dog": np.stack([E[1], DIAG]), "mug": np.stack([E[0]])}


def test_cp_clip_from_plan_boxes_matches_the_hand_computed_value():
    scorer = P.PresenceScorer(REFS, {"cat": "cat", "dog": "dog", "mug": "mug"}, colour_embed)
    image = _image([(CAT, RED), (DOG, GREEN)])
    [result] = scorer.score([(image, _candidate([CAT, DOG], ["cat", "dog"]))])
    dog = (1.0 + math.sqrt(0.5)) / 2  # green crop vs refs (green, diagonal)
    assert result.presence == pytest.approx({"cat": 1.0, "dog": dog})
    assert result.cp_clip == pytest.approx((1.0 + dog) / 2)
    assert result.missing == [] and result.source == P.SOURCE_PLAN
    assert result.found["cat"].box == (4, 30, 34, 60)

    # the dog repainted into something blue: it resembles neither of its references
    [changed] = scorer.score([(_image([(CAT, RED), (DOG, BLUE)]), _candidate([CAT, DOG], ["cat", "dog"]))])
    assert changed.presence["dog"] == pytest.approx(0.0) and changed.cp_clip == pytest.approx(0.5)


def test_a_concept_not_found_scores_zero_and_is_listed_missing():
    image = _image([(CAT, RED), (DOG, GREEN)])
    items = [
        (image, {"cat": P.Detection((4, 30, 34, 60), 0.9, "cat"), "dog": None}),
        # a sliver thinner than MIN_BOX_PX cannot show a concept: not found either
        (
            image,
            {
                "cat": P.Detection((4, 30, 6, 60), 0.9, "cat"),
                "dog": P.Detection((50, 30, 80, 60), 0.5, "dog"),
            },
        ),
        (image, {"unknown": P.Detection((0, 0, 10, 10), 0.9, "x")}),  # no references: not scored
    ]
    first, second, third = P.score_presence(items, REFS, colour_embed, P.SOURCE_DETECTOR)
    assert first.presence == {"cat": 1.0, "dog": 0.0} and first.missing == ["dog"]
    assert first.cp_clip == pytest.approx(0.5)
    assert list(second.presence) == ["cat", "dog"] and second.missing == ["cat"]
    assert second.cp_clip == pytest.approx((0.0 + (1 + math.sqrt(0.5)) / 2) / 2)
    assert third.presence == {} and third.cp_clip is None


def test_best_detection_per_noun_and_shared_nouns():
    dets = [
        P.Detection((0, 0, 20, 20), 0.3, "cat"),
        P.Detection((40, 40, 80, 80), 0.8, "cat"),
        P.Detection((10, 10, 30, 30), 0.6, "dog"),
    ]
    assert P.best_per_label(dets, ["cat", "dog", "mug"]) == [dets[1], dets[2], None]


@pytest.fixture(scope="module")
def tiny_owlvit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-init OWL-ViT, made confident: every patch proposes its own grid cell.

    Random heads propose degenerate, near-zero-score boxes. Zeroing the box head's last layer
    leaves OWL-ViT's position prior (one box per patch cell), and a large logit shift makes every
    box score ~1 for the query it matches best, so detections are predictable while the forward
    pass and post-processing stay the real ones.
    """
    import torch
    from transformers import OwlViTForObjectDetection

    torch.manual_seed(0)
    folder = build_tiny_owlvit(tmp_path_factory.mktemp("owlvit"))
    model = OwlViTForObjectDetection.from_pretrained(folder)
    with torch.no_grad():
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
        for layer, bias in ((model.class_head.logit_shift, 5.0), (model.class_head.logit_scale, 1.0)):
            layer.weight.zero_()
            layer.bias.fill_(bias)
    model.save_pretrained(folder)
    return folder


def test_tiny_owlvit_runs_the_real_detection_path(tiny_owlvit: Path):
    detector = P.load_detector(str(tiny_owlvit), "cpu")
    assert not detector.square_padded
    image = _image([(CAT, RED), (DOG, GREEN)])
    boxes = detector.detect(image, ["cat", "dog"], threshold=0.5)
    assert len(boxes) == 16  # one per 16 px patch of the 64 px input
    assert {d.label for d in boxes} == {"cat", "dog"} and min(d.score for d in boxes) > 0.99
    for d in boxes:  # grid cells in the pixels of the 96 px image: 24 px each
        width, height = d.box[2] - d.box[0], d.box[3] - d.box[1]
        assert width == pytest.approx(24, abs=1) and height == pytest.approx(24, abs=1)
    nouns = {"cat": "cat", "dog": "dog"}
    best = P.detect_concepts(detector, image, nouns, threshold=0.5)
    assert [best[c].label for c in ("cat", "dog")] == ["cat", "dog"]
    # nothing reaches a threshold above 1: both concepts missing, CP-CLIP 0
    scorer = P.PresenceScorer(REFS, nouns, colour_embed, detector, threshold=1.01)
    [result] = scorer.score([(image, _candidate([CAT, DOG], ["cat", "dog"]))])
    assert result.missing == ["cat", "dog"] and result.cp_clip == 0.0 and result.source == P.SOURCE_DETECTOR


def test_a_missing_detector_is_a_clear_error(tmp_path: Path):
    with pytest.raises(CurateError, match="cannot load detector model"):
        P.load_detector(str(tmp_path / "nowhere"))


def _add_concepts(ws, colours: dict[str, tuple[int, int, int]]) -> None:
    for concept_id, colour in colours.items():
        ref = ws.concept_dir(concept_id) / "refs" / "0.png"
        ref.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(ref)
        ws.save_concept(
            Concept(
                concept_id=concept_id,
                name=concept_id,
                class_noun=concept_id,
                token=f"<c-{concept_id}>",
                refs=[ws.relative(ref)],
            )
        )


def _configure(ws, **index) -> None:
    config = ws.config
    config.index = config.index.model_copy(update=index)
    atomic_write_text(ws.config_path, dump_config(config))


def test_index_stores_presence_and_redoes_it_when_the_detector_changes(candidate_ws, tiny_owlvit):
    ws, candidates = candidate_ws
    _add_concepts(ws, {"cat": RED, "mug": GREEN})  # "teddy" has no references: never scored

    report = index_workspace(ws)
    assert report.added == 6 and "presence from the planned boxes" in report.summary()
    dataset = ds.open_dataset(ws)
    assert dataset.info["presence_source"] == P.SOURCE_PLAN
    three = dataset.one(F(ds.CANDIDATE_ID) == candidates[1].candidate_id)
    assert set(three[P.PRESENCE]) == {"cat", "mug"}
    assert three[P.CP_CLIP] == pytest.approx(np.mean(list(three[P.PRESENCE].values())))
    assert -1.0 <= three[P.CP_CLIP] <= 1.0
    assert three[P.MISSING_CONCEPTS] == [] and three[P.PRESENCE_SOURCE] == P.SOURCE_PLAN
    assert three[P.DETECTIONS] is None
    assert len(dataset.load_saved_view(P.VIEW_MISSING_CONCEPT)) == 0

    # an unchanged workspace loads nothing
    assert not index_workspace(ws).clip_loaded

    # switching to the detector re-indexes everything; at threshold > 1 nothing is found
    _configure(ws, detector=str(tiny_owlvit), detection_threshold=1.0)
    report = index_workspace(ws)
    assert report.updated == 6 and "planned boxes" not in report.summary()
    assert dataset.info["presence_source"] == P.SOURCE_DETECTOR
    dataset.reload()
    assert dataset.values(P.CP_CLIP) == [0.0] * 6
    assert len(dataset.load_saved_view(P.VIEW_MISSING_CONCEPT)) == 6
    three = dataset.one(F(ds.CANDIDATE_ID) == candidates[1].candidate_id)
    assert three[P.MISSING_CONCEPTS] == ["cat", "mug"] and three[P.DETECTIONS].detections == []

    # at 0.5 every concept with references is found and its box stored beside the plan's
    _configure(ws, detection_threshold=0.5)
    assert index_workspace(ws).updated == 6
    dataset.reload()  # index writes each changed sample whole, outside this process's sample objects
    three = dataset.one(F(ds.CANDIDATE_ID) == candidates[1].candidate_id)
    assert three[P.MISSING_CONCEPTS] == []
    boxes = three[P.DETECTIONS].detections
    assert sorted(d.label for d in boxes) == ["cat", "mug"]
    for d in boxes:
        x, y, w, h = d.bounding_box
        assert 0 <= x <= x + w <= 1 + 1e-6 and 0 <= y <= y + h <= 1 + 1e-6 and d.confidence > 0.99
    assert three[P.CP_CLIP] == pytest.approx(np.mean(list(three[P.PRESENCE].values())))
    assert len(three[ds.BOXES].detections) == 3

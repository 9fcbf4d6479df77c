"""M_SAL: labels from the paste, the paper's cut-out augmentation, `curate train-segmenter`, loading errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curation.core.errors import CurateError
from curation.core.workspace import Workspace
from curation.models.subject_segmenter import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    SegmenterSettings,
    SubjectSegmenter,
)
from curation.scores.sas import concept_regions
from generators.layout import plan_layouts
from generators.run import generate
from personalization.segmenter_training import (
    Sample,
    augment_cutout,
    composite_labels,
    iou_per_class,
    read_composites,
    train_segmenter,
)

CURATE = str(Path(sys.executable).with_name("curate"))
TINY = SegmenterSettings(
    encoder="resnet18",
    encoder_depth=3,
    decoder_channels=(16, 8, 4),
    encoder_weights="",
    size=64,
    epochs=2,
    batch_size=4,
    cutouts_per_ref=1,
    val_fraction=0.3,
)


@pytest.fixture
def generated_ws(concept_ws: Workspace) -> Workspace:
    plan_layouts(concept_ws, 8)
    report = generate(concept_ws)
    assert report.generated == 8
    return concept_ws


def test_composite_labels_follow_the_paste_silhouettes(generated_ws: Workspace) -> None:
    concepts = sorted(generated_ws.concepts())
    classes = {c: k for k, c in enumerate(concepts, start=1)}
    for candidate in generated_ws.candidates():
        labels = composite_labels(candidate, classes, 64)
        assert labels is not None and labels.shape == (64, 64)
        present = set(np.unique(labels)) - {0}
        assert present == {classes[c] for c in candidate.concepts}
        # each class lies inside its concept's placed box (scaled to 64 px, one pixel of slack)
        regions = concept_regions(candidate, 64, 64)
        for concept_id in candidate.concepts:
            region = labels == classes[concept_id]
            assert (region & regions[concept_id]).sum() == region.sum()
            box = next(b for b in candidate.boxes if b.concept_id == concept_id)
            _, xs = np.nonzero(region)
            s = 64 / candidate.width
            assert xs.min() >= box.x * s - 1 and xs.max() <= (box.x + box.w) * s + 1
    train, val = read_composites(generated_ws, classes, 64, 0.3)
    assert (len(train), len(val)) == (5, 3), "ceil(0.3 * 8) composites held out"


def test_augment_cutout_zooms_crops_and_translates() -> None:
    rng = np.random.default_rng(0)
    canvas = Sample(np.zeros((100, 100, 3), np.uint8), np.zeros((100, 100), np.int64))
    rgb = np.full((40, 20, 3), 200, np.uint8)
    alpha = np.ones((40, 20), np.float32)
    tops, lefts = set(), set()
    for _ in range(20):
        out = augment_cutout(rgb, alpha, 3, canvas, rng, SegmenterSettings(crop_p=0.0))
        ys, xs = np.nonzero(out.labels == 3)
        height = ys.max() - ys.min() + 1
        assert 40 <= height <= 50, "zoom: the longer side is 0.4-0.5 of the canvas"
        assert (out.rgb[out.labels == 3] == 200).all() and (out.labels[out.labels != 3] == 0).all()
        tops.add(ys.min())
        lefts.add(xs.min())
    assert len(tops) > 5 and len(lefts) > 5, "random translations"
    # always cropping: the cut-out keeps 0.65-0.95 of its height and width, then is zoomed
    cropped = augment_cutout(
        np.arange(40 * 20 * 3, dtype=np.uint8).reshape(40, 20, 3) % 250,
        alpha,
        1,
        canvas,
        np.random.default_rng(1),
        SegmenterSettings(crop_p=1.0),
    )
    ys, xs = np.nonzero(cropped.labels == 1)
    assert 40 <= ys.max() - ys.min() + 1 <= 50
    ratio = (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)
    assert 0.4 <= ratio <= 0.6, "the crop keeps the aspect roughly"


def test_iou_per_class_by_hand() -> None:
    pred = np.array([[0, 1], [1, 2]])
    target = np.array([[0, 1], [2, 2]])
    assert iou_per_class(pred, target, 4) == [1.0, 0.5, 0.5, None]


def test_train_resume_and_load(generated_ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "msal"
    report = train_segmenter(generated_ws, out, TINY, device="cpu")
    assert report.epochs_run == 2 and report.encoder_weights == "random"
    assert report.train_composites + report.val_composites == 8
    assert report.cutouts_per_epoch == sum(len(c.refs) for c in generated_ws.concepts().values())
    config = json.loads((out / CONFIG_FILE).read_text())
    concepts = sorted(generated_ws.concepts())
    assert config["concepts"] == concepts and config["encoder_weights"] == "random"
    assert set(config["val_iou"]) == set(concepts)
    assert all(v is None or 0.0 <= v <= 1.0 for v in config["val_iou"].values())

    seg = SubjectSegmenter.load(out)
    assert seg.concepts == concepts and seg.size == 64
    import torch

    logits = seg.logits(torch.rand(2, 3, 48, 80))
    assert logits.shape == (2, len(concepts) + 1, 64, 64)
    assert seg.features(torch.rand(2, 3, 64, 64)).shape == (2, 128)

    # resume: two more epochs run only the new ones, starting from the checkpoint's weights
    before = torch.load(out / CHECKPOINT_FILE, weights_only=False)
    assert before["epoch"] == 2
    more = train_segmenter(
        generated_ws, out, SegmenterSettings(**{**TINY.__dict__, "epochs": 3}), device="cpu"
    )
    assert more.epochs_run == 1
    # a changed setting does not resume from an incompatible checkpoint
    again = train_segmenter(
        generated_ws, out, SegmenterSettings(**{**TINY.__dict__, "lr": 1e-3}), device="cpu"
    )
    assert again.epochs_run == 2


def test_bad_segmenter_folders_are_one_error(generated_ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="no trained subject segmenter"):
        SubjectSegmenter.load(tmp_path / "nowhere")
    out = tmp_path / "msal"
    train_segmenter(generated_ws, out, SegmenterSettings(**{**TINY.__dict__, "epochs": 1}), device="cpu")
    seg = SubjectSegmenter.load(out)
    with pytest.raises(CurateError, match="no class for zebra"):
        seg.check_concepts([seg.concepts[0], "zebra"], source=str(out))
    config = json.loads((out / CONFIG_FILE).read_text())
    config["concepts"] = config["concepts"][:-1]
    (out / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CurateError, match="concepts \\+ background but model.pt has"):
        SubjectSegmenter.load(out)
    (out / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CurateError, match="unreadable"):
        SubjectSegmenter.load(out)


def test_cli_train_segmenter_records_random_init_offline(generated_ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "cli-msal"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["train-segmenter", "-w", str(generated_ws.root), "-o", str(out), "--encoder", "resnet18"]
    args += ["--size", "64", "--epochs", "1", "--cutouts-per-ref", "1", "--device", "cpu"]
    result = subprocess.run(
        [CURATE, *args], check=False, capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "validation IoU" in result.stdout and "random (could not load imagenet" in result.stdout
    assert json.loads((out / CONFIG_FILE).read_text())["encoder_weights"].startswith("random (could not load")
    bad = subprocess.run(
        [CURATE, "train-segmenter", "-w", str(generated_ws.root), "-o", str(out), "--size", "50"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("error: --size must be a multiple of 32")

"""`curate concepts add` and the segmentation behind it, on real photos and constructed images."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from curation.concepts import add_concept
from curation.errors import CurateError
from curation.workspace import Workspace
from generators.segment import load_segmenter, mask_flags
from tests.fixtures.sample_concepts import sample_photo, small_config


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws", small_config())


def _tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _disc_image() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((120, 160, 3), (40, 120, 200), np.uint8)
    cv2.circle(image, (70, 60), 32, (230, 60, 30), -1)
    truth = np.zeros(image.shape[:2], np.uint8)
    cv2.circle(truth, (70, 60), 32, 1, -1)
    return image, truth.astype(bool)


def _bomb_png(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims a huge size, as a decompression bomb does."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(data))


def test_add_concept_from_file_and_folder(ws: Workspace, concept_photos: dict[str, list[Path]]) -> None:
    first, second = concept_photos["cat"]
    concept = add_concept(ws, "cat", [first, second.parent], class_noun="cat")

    assert concept.token == "<c-cat>" and concept.phrase == "<c-cat> cat"
    assert len(concept.refs) == 2  # the folder's copy of `first` is the same photo: one reference
    assert ws.concepts()["cat"] == concept
    assert concept.segmenter == "classical" and len(concept.mask_flags) == 2
    for ref, mask in zip(concept.refs, concept.masks):
        rgb = np.asarray(Image.open(ws.resolve(ref)))
        alpha = np.asarray(Image.open(ws.resolve(mask)))
        assert max(rgb.shape[:2]) <= 128 and alpha.shape == rgb.shape[:2] and alpha.dtype == np.uint8
        assert ((alpha > 0) & (alpha < 255)).any(), "mask edges should be soft"
        assert 0.02 < (alpha >= 128).mean() < 0.98


def test_readding_same_photos_rewrites_identical_files(
    ws: Workspace, concept_photos: dict[str, list[Path]]
) -> None:
    add_concept(ws, "mug", concept_photos["mug"], class_noun="mug")
    before = _tree(ws.concepts_dir / "mug")
    add_concept(ws, "mug", list(reversed(concept_photos["mug"])), class_noun="mug")
    assert _tree(ws.concepts_dir / "mug") == before
    assert not any((ws.concepts_dir / ".staging").iterdir()), "no staging folder left behind"


def test_classical_segmenter_finds_a_disc() -> None:
    image, truth = _disc_image()
    alpha = load_segmenter("classical")(image)
    hard = alpha >= 128
    assert (hard & truth).sum() / (hard | truth).sum() > 0.8
    assert ((alpha > 0) & (alpha < 255)).any()
    assert mask_flags(alpha) == []
    assert np.array_equal(alpha, load_segmenter("classical")(image)), "segmentation must be deterministic"


def test_mask_flags_catch_bad_masks() -> None:
    empty = np.zeros((64, 64), np.uint8)
    whole = np.full((64, 64), 255, np.uint8)
    confetti = np.zeros((64, 64), np.uint8)
    for y in range(4, 64, 16):
        for x in range(4, 64, 16):
            confetti[y : y + 8, x : x + 8] = 255
    assert mask_flags(empty) == ["empty"]
    assert "whole_frame" in mask_flags(whole)
    assert mask_flags(confetti) == ["fragmented"]


@pytest.mark.parametrize("case", ["missing", "empty_folder", "corrupt", "bomb", "too_big", "bad_id"])
def test_bad_input_is_one_line_and_leaves_nothing(ws: Workspace, tmp_path: Path, case: str) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(sample_photo("coffee", 96)).save(good)
    concept_id, photos, expected = "mug", [good], ""
    if case == "missing":
        photos, expected = [tmp_path / "nope.png"], "does not exist"
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        photos, expected = [tmp_path / "empty"], "no images found"
    elif case == "corrupt":
        (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        photos, expected = [good, tmp_path / "broken.png"], "broken.png"
    elif case == "bomb":
        _bomb_png(tmp_path / "bomb.png", 20000, 20000)
        photos, expected = [good, tmp_path / "bomb.png"], "bomb.png: over the pixel limit"
    elif case == "too_big":  # under PIL's own limit, over ours
        _bomb_png(tmp_path / "huge.png", 8000, 8000)
        photos, expected = [good, tmp_path / "huge.png"], "huge.png: 8000x8000 pixels is over"
    elif case == "bad_id":
        concept_id, expected = "Bad Id!", "invalid concept id"
    with pytest.raises(CurateError, match=expected) as info:
        add_concept(ws, concept_id, photos, class_noun="mug")
    assert "\n" not in str(info.value)
    assert ws.concepts() == {}
    assert not (ws.concepts_dir / "mug").exists()


def test_failed_readd_keeps_the_previous_concept(
    ws: Workspace, concept_photos: dict[str, list[Path]], tmp_path: Path
) -> None:
    add_concept(ws, "clock", concept_photos["clock"], class_noun="clock")
    before = _tree(ws.concepts_dir / "clock")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(CurateError, match="bad.jpg"):
        add_concept(ws, "clock", [concept_photos["clock"][0], tmp_path / "bad.jpg"], class_noun="clock")
    assert _tree(ws.concepts_dir / "clock") == before


def test_model_backend_loads_a_saved_model_by_path(
    ws: Workspace, concept_photos: dict[str, list[Path]], tmp_path: Path
) -> None:
    """A folder written by save_pretrained goes through the same from_pretrained code as a hub id."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    folder = tmp_path / "tiny-segformer"
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        num_attention_heads=[1, 1],
        decoder_hidden_size=16,
        num_labels=2,
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
    )
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)

    segmenter = load_segmenter(str(folder))
    alpha = segmenter(sample_photo("chelsea", 96))
    assert alpha.shape == sample_photo("chelsea", 96).shape[:2] and alpha.dtype == np.uint8

    config_text = ws.config_path.read_text().replace('backend = "classical"', f'backend = "{folder}"')
    ws.config_path.write_text(config_text)
    concept = add_concept(ws, "cat", concept_photos["cat"][:1], class_noun="cat")
    assert concept.segmenter == str(folder)
    with pytest.raises(CurateError, match="could not be loaded"):
        load_segmenter(str(tmp_path / "no-such-model"))

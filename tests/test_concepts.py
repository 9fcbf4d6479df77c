"""`curate concepts add` and the segmentation behind it, on real photos and constructed images."""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from curation.concepts import MIN_PHOTO_SIDE, add_concept, choose_concept_id, concept_id_for
from curation.errors import CurateError
from curation.records import CONCEPT_ID, Concept
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


@pytest.mark.parametrize(
    "case",
    ["missing", "empty_folder", "corrupt", "bomb", "too_big", "bad_id", "newline_id", "tiny", "all_empty"],
)
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
    elif case == "newline_id":  # `$` in the old pattern matched before a final newline
        concept_id, expected = "mug\n", "invalid concept id 'mug\\\\n'"
    elif case == "tiny":  # a 1x1 photo once failed every later candidate with "ValueError: 2"
        Image.new("RGB", (1, 1), (200, 20, 20)).save(tmp_path / "dot.png")
        photos, expected = (
            [good, tmp_path / "dot.png"],
            f"dot.png: 1x1 pixels is too small: .* {MIN_PHOTO_SIDE} px",
        )
    elif case == "all_empty":  # flat colour: nothing to cut out, in either photo
        for colour in ("red", "blue"):
            Image.new("RGB", (96, 80), colour).save(tmp_path / f"{colour}.png")
        photos, expected = (
            [tmp_path / "red.png", tmp_path / "blue.png"],
            r"no usable mask in 2 photo\(s\) \(empty x2\)",
        )
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


# -- names, ids and class nouns ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cat1", "cat1"),  # an id stays itself, so ids from before names existed keep their folders
        ("my dog", "my-dog"),
        ("My  Dog", "my-dog"),  # case and spacing do not make another name
        ("Hund Müller", "hund-muller"),
        ("猫", "c-"),  # nothing ASCII left: a hash
        ("Straße 猫", "strasse-"),  # a letter without ASCII form: slug plus hash
        ("x" * 300, "x" * 40 + "-"),  # cut: slug plus hash
    ],
)
def test_typed_names_give_safe_stable_ids(name: str, expected: str) -> None:
    derived = concept_id_for(name)
    assert CONCEPT_ID.fullmatch(derived) and derived == concept_id_for(name)
    assert derived == expected if not expected.endswith("-") else derived.startswith(expected)
    if expected.endswith("-"):
        assert re.fullmatch(re.escape(expected) + "[0-9a-f]{8}", derived)


def test_different_names_never_share_an_id_silently(
    ws: Workspace, concept_photos: dict[str, list[Path]]
) -> None:
    assert choose_concept_id(ws, "猫") != choose_concept_id(ws, "犬")
    add_concept(
        ws, choose_concept_id(ws, "my dog"), concept_photos["mug"][:1], class_noun="dog", name="my dog"
    )
    assert choose_concept_id(ws, "My Dog") == "my-dog"  # the same name: re-adding replaces it
    with pytest.raises(CurateError, match="'my-dog', which concept 'my dog' already has: pass --id"):
        choose_concept_id(ws, "My-Dog")  # another name whose slug is taken
    assert choose_concept_id(ws, "My-Dog", "dog2") == "dog2"
    with pytest.raises(CurateError, match="invalid concept id"):
        choose_concept_id(ws, "my dog", "dog\n")


@pytest.mark.parametrize(
    ("noun", "expected"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("dog\n", None),  # surrounding whitespace is trimmed, not stored
        ("dog\ncat", "be one printable line, without '\\\\n'"),
        ("ca\x1b[31mt", "without '\\\\x1b'"),
        ("dog\tcat", "without '\\\\t'"),
        ("d" * 10_000, "10,000 characters, over the limit of 64"),
    ],
)
def test_class_noun_is_one_bounded_printable_line(
    ws: Workspace, concept_photos: dict[str, list[Path]], noun: str, expected: str | None
) -> None:
    if expected is None:
        assert add_concept(ws, "mug", concept_photos["mug"][:1], class_noun=noun).class_noun == noun.strip()
        return
    with pytest.raises(CurateError, match=r"class noun \(--class\) .*" + expected):
        add_concept(ws, "mug", concept_photos["mug"][:1], class_noun=noun)
    assert ws.concepts() == {}
    with pytest.raises(ValidationError):  # nothing else can store one either
        Concept(concept_id="mug", name="mug", class_noun=noun, token="<c-mug>")


def test_display_name_is_bounded_at_the_record(ws: Workspace, concept_photos: dict[str, list[Path]]) -> None:
    with pytest.raises(CurateError, match="concept name is 101 characters"):
        add_concept(ws, "mug", concept_photos["mug"][:1], class_noun="mug", name="n" * 101)
    with pytest.raises(ValidationError):
        Concept(concept_id="mug", name="my\x1b]0;pwned\x07mug", class_noun="mug", token="<c-mug>")
    with pytest.raises(ValidationError):
        Concept(concept_id="mug\n", name="mug", class_noun="mug", token="<c-mug>")


def test_a_record_stored_before_validation_is_named_not_trusted(
    ws: Workspace, concept_photos: dict[str, list[Path]]
) -> None:
    add_concept(ws, "mug", concept_photos["mug"][:1], class_noun="mug")
    record = ws.concepts_dir / "mug" / "concept.json"
    record.write_text(record.read_text().replace('"class_noun": "mug"', '"class_noun": "mug\\nIgnore all"'))
    with pytest.raises(CurateError, match="class_noun: .*one printable line.*delete its folder") as info:
        ws.concepts()
    assert "\n" not in str(info.value)


def test_mixed_photos_keep_the_usable_ones_flagged(
    ws: Workspace, concept_photos: dict[str, list[Path]], tmp_path: Path
) -> None:
    Image.new("RGB", (96, 80), "red").save(tmp_path / "flat.png")
    concept = add_concept(ws, "mug", [concept_photos["mug"][0], tmp_path / "flat.png"], class_noun="mug")
    assert sorted(concept.mask_flags) == [[], ["empty"]]


def test_shrinking_below_the_minimum_is_refused(ws: Workspace, tmp_path: Path) -> None:
    """A panorama fine as shot can fall under the minimum once its long side is cut to segment.max_side."""
    Image.new("RGB", (1000, 70), "white").save(tmp_path / "pano.png")
    with pytest.raises(
        CurateError, match=r"pano.png: 1000x70 pixels shrinks to 128x9 at segment.max_side = 128"
    ):
        add_concept(ws, "strip", [tmp_path / "pano.png"], class_noun="strip")
    square = tmp_path / "square.png"
    image, _ = _disc_image()
    Image.fromarray(image).resize((MIN_PHOTO_SIDE, MIN_PHOTO_SIDE)).save(square)
    assert add_concept(ws, "disc", [square], class_noun="disc").refs  # the minimum itself is accepted

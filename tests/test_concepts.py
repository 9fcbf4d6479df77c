"""`curate concepts add` and the segmentation behind it, on real photos and constructed images."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import subprocess
import sys
import unicodedata
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from curation.concepts.references import MIN_PHOTO_SIDE, add_concept, choose_concept_id, concept_id_for
from curation.core.errors import CurateError
from curation.core.records import CONCEPT_ID, MAX_CLASS_NOUN_CHARS, Concept
from curation.core.workspace import Workspace, atomic_write_bytes
from generators.segment import UNUSABLE_FLAGS, load_segmenter, mask_flags
from tests.fixtures.sample_concepts import sample_photo, small_config

CURATE = str(Path(sys.executable).with_name("curate"))


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
    import torch

    from tests.fixtures.tiny_pipelines import save_segformer, tiny_segformer

    torch.manual_seed(1)  # random weights; this seed's mask of the cat is usable (ingest refuses empty/whole-frame)
    folder = save_segformer(tiny_segformer(["background", "cat"]), tmp_path / "tiny-segformer")

    segmenter = load_segmenter(f"semantic:{folder}")
    alpha = segmenter(sample_photo("chelsea", 96), "cat")
    assert alpha.shape == sample_photo("chelsea", 96).shape[:2] and alpha.dtype == np.uint8

    config_text = ws.config_path.read_text().replace('backend = "auto"', f'backend = "semantic:{folder}"')
    ws.config_path.write_text(config_text)
    concept = add_concept(ws, "cat", concept_photos["cat"][:1], class_noun="cat")
    assert concept.segmenter == f"semantic:{folder}"
    with pytest.raises(CurateError, match="cannot load semantic segmentation model"):
        load_segmenter(f"semantic:{tmp_path / 'no-such-model'}")


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


# -- through the installed `curate` script -------------------------------------------------------


def _curate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CURATE, *args], check=False, capture_output=True, text=True, timeout=300)


def test_cli_names_in_any_script_and_readding_says_what_it_replaces(
    tmp_path: Path, concept_photos: dict[str, list[Path]]
) -> None:
    w = ["-w", str(tmp_path / "ws")]
    assert _curate("init", str(tmp_path / "ws")).returncode == 0
    first, mirrored = map(str, concept_photos["mug"])
    added = _curate("concepts", "add", "猫", first, "--class", "cat", *w)
    assert added.returncode == 0, added.stderr
    concept_id = concept_id_for("猫")
    assert f"'猫' -> {concept_id}: 1 photos, token <c-{concept_id}>" in added.stdout
    readded = _curate("concepts", "add", "猫", first, mirrored, "--class", "cat", *w)
    assert f"replaced concept {concept_id} ('猫', 1 photos, class 'cat')" in readded.stdout
    assert _curate("concepts", "add", "my dog", mirrored, "--class", "dog", "--id", "rex", *w).returncode == 0

    listed = _curate("concepts", "list", *w).stdout.splitlines()
    assert listed == [
        f"{concept_id}\t<c-{concept_id}>\tcat\t2 photos\t猫",
        "rex\t<c-rex>\tdog\t1 photos\tmy dog",
    ]
    refs = sorted(p.name for p in (tmp_path / "ws" / "concepts" / concept_id / "refs").iterdir())
    assert refs == sorted(
        Path(ref).name for ref in Workspace.open(tmp_path / "ws").concepts()[concept_id].refs
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["dog1", "{photo}", "--class", "dog\ncat"], "class noun (--class) must be one printable line"),
        (["dog1", "{photo}", "--class", "ca\x1b[31mt"], "without '\\x1b'"),
        (["dog1", "{photo}", "--class", "d" * 10_000], "10,000 characters, over the limit of 64"),
        (["n" * 101, "{photo}", "--class", "dog"], "concept name is 101 characters"),
        (["dog1", "{photo}", "--class", "dog", "--id", "dog\n"], "invalid concept id 'dog\\n'"),
        (
            ["dog1", "{dot}", "--class", "dog"],
            f"dot.png: 1x1 pixels is too small: photos need at least {MIN_PHOTO_SIDE} px",
        ),
        (["dog1", "{flat}", "--class", "dog"], "no usable mask in 1 photo(s) (empty x1)"),
    ],
    ids=["newline_noun", "ansi_noun", "huge_noun", "long_name", "newline_id", "tiny_photo", "nothing_to_cut"],
)
def test_cli_refuses_bad_input_with_one_error_line(
    tmp_path: Path, concept_photos: dict[str, list[Path]], args: list[str], expected: str
) -> None:
    assert _curate("init", str(tmp_path / "ws")).returncode == 0
    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    Image.new("RGB", (96, 80), "red").save(tmp_path / "flat.png")
    files = {
        "photo": str(concept_photos["mug"][0]),
        "dot": str(tmp_path / "dot.png"),
        "flat": str(tmp_path / "flat.png"),
    }
    args = [files[a[1:-1]] if a.startswith("{") else a for a in args]
    result = _curate("concepts", "add", *args, "-w", str(tmp_path / "ws"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert not list((tmp_path / "ws" / "concepts").glob("*/concept.json"))


# -- properties ----------------------------------------------------------------------------------

PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def property_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path]:
    """One workspace and one photo that segments cleanly, shared by every generated example."""
    root = tmp_path_factory.mktemp("property")
    photo = root / "disc.png"
    Image.fromarray(_disc_image()[0]).save(photo)
    return Workspace.create(root / "ws", small_config()), photo


def _ingest(ws: Workspace, photos: list[Path], class_noun: str = "thing") -> Concept | CurateError:
    """add_concept's outcome: a concept, or the CurateError it raised (any other exception fails the test)."""
    try:
        return add_concept(ws, "prop", photos, class_noun=class_noun)
    except CurateError as exc:
        assert "\n" not in str(exc), str(exc)
        return exc


@PROPERTY
@given(st.text(st.characters(exclude_categories=()), max_size=120))
def test_any_name_gives_a_valid_id_the_same_every_time(name: str) -> None:
    derived = concept_id_for(name)
    assert CONCEPT_ID.fullmatch(derived), derived
    assert concept_id_for(name) == derived == concept_id_for(unicodedata.normalize("NFD", name))
    if CONCEPT_ID.fullmatch(name):
        assert derived == name


@PROPERTY
@given(st.text(max_size=80) | st.text(st.sampled_from("ab \n\t\x1b[m\u200b\u202e猫"), max_size=80))
def test_any_class_noun_is_stored_as_one_bounded_line_or_refused(
    property_ws: tuple[Workspace, Path], noun: str
) -> None:
    ws, photo = property_ws
    outcome = _ingest(ws, [photo], class_noun=noun)
    if isinstance(outcome, Concept):
        stored = ws.concept("prop")
        assert stored is not None and stored.class_noun == noun.strip() == outcome.class_noun
        assert stored.class_noun.isprintable() and 0 < len(stored.class_noun) <= MAX_CLASS_NOUN_CHARS


@PROPERTY
@given(
    size=st.tuples(st.integers(1, 160), st.integers(1, 160)),
    mode=st.sampled_from(["RGB", "L", "RGBA", "P", "1", "I;16", "CMYK"]),
    suffix=st.sampled_from([".png", ".jpg", ".bmp", ".tiff", ".webp", ".gif"]),
    content=st.sampled_from(["disc", "noise", "flat"]),
    seed=st.integers(0, 2**16),
)
def test_any_image_ingests_or_is_one_error_line(
    property_ws: tuple[Workspace, Path],
    size: tuple[int, int],
    mode: str,
    suffix: str,
    content: str,
    seed: int,
) -> None:
    ws, _ = property_ws
    w, h = size
    rng = np.random.default_rng(seed)
    if content == "disc":
        rgb = np.full((h, w, 3), (40, 120, 200), np.uint8)
        cv2.circle(rgb, (w // 2, h // 2), max(1, min(w, h) // 3), (230, 60, 30), -1)
    elif content == "noise":
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        rgb = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    path = ws.root.parent / f"photo{suffix}"
    try:
        Image.fromarray(rgb).convert(mode).save(path)
    except (OSError, KeyError, ValueError):
        assume(False)  # a mode this format cannot hold: not a file a user could have
    outcome = _ingest(ws, [path])
    if isinstance(outcome, Concept):
        assert any(not UNUSABLE_FLAGS.intersection(flags) for flags in outcome.mask_flags)
        for ref in outcome.refs:
            assert min(Image.open(ws.resolve(ref)).size) >= MIN_PHOTO_SIDE
    else:
        assert min(w, h) >= MIN_PHOTO_SIDE or "too small" in str(outcome)


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_disc_image()[0]).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png_bytes()


@st.composite
def damaged_png(draw: st.DrawFn) -> bytes:
    """A real PNG cut short and with a few bytes changed: what a failed copy or a bad disk leaves."""
    data = bytearray(PNG[: draw(st.integers(0, len(PNG)))])
    for _ in range(draw(st.integers(0, 6))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@PROPERTY
@given(
    data=st.binary(max_size=600) | damaged_png(),
    suffix=st.sampled_from([".png", ".jpg", ".gif", ".tiff", ".webp", ".bmp", ".ico"]),
)
def test_any_bytes_as_a_photo_ingest_or_are_one_error_line(
    property_ws: tuple[Workspace, Path], data: bytes, suffix: str
) -> None:
    ws, _ = property_ws
    path = ws.root.parent / f"bytes{suffix}"
    path.write_bytes(data)
    _ingest(ws, [path])


def test_paste_never_picks_an_empty_or_whole_frame_mask() -> None:
    """With no clean mask, the pick falls back to masks that still hold a subject, never to unusable ones."""
    from generators.compose import pick_reference

    refs = [f"concepts/cat/refs/{i}.png" for i in range(3)]
    concept = Concept(concept_id="cat", name="cat", class_noun="cat", token="<c-cat>", refs=refs, masks=refs,
                      mask_flags=[["empty"], ["fragmented"], ["whole_frame", "fragmented"]])  # fmt: skip
    rng = np.random.default_rng(0)
    assert {pick_reference(concept, rng) for _ in range(50)} == {1}
    hopeless = concept.model_copy(update={"mask_flags": [["empty"], ["whole_frame"], ["empty"]]})
    with pytest.raises(ValueError, match="no reference photo with a usable mask"):
        pick_reference(hopeless, rng)


# -- previews --------------------------------------------------------------------------------------


def test_concepts_add_writes_a_preview_and_show_prints_where(
    tmp_path: Path, concept_photos: dict[str, list[Path]]
) -> None:
    """photo | mask | cut-out per photo, written with the concept; `concepts show` names it and
    draws it again for a concept that has none (made before previews existed)."""
    from curation.concepts.references import PREVIEW_ROW_HEIGHT

    root = tmp_path / "ws"
    assert _curate("init", str(root)).returncode == 0
    assert _curate("concepts", "add", "cat", *map(str, concept_photos["cat"]), "--class", "cat", "-w", str(root)).returncode == 0
    shown = _curate("concepts", "show", "cat", "-w", str(root))
    assert shown.returncode == 0, shown.stderr
    preview = root / "concepts" / "cat" / "preview.png"
    assert f"preview: {preview}" in shown.stdout and "segmenter classical" in shown.stdout
    concept = Workspace.open(root).concept("cat")
    assert concept is not None and len(concept.refs) == 2
    for ref, flags in zip(concept.refs, concept.mask_flags):
        assert f"  {ref}: {', '.join(flags) or 'ok'}" in shown.stdout
    image = np.asarray(Image.open(preview))
    assert image.shape[0] == 2 * (PREVIEW_ROW_HEIGHT + 4)  # one row per photo
    rgb = np.asarray(Image.open(root / concept.refs[0]))
    width = round(rgb.shape[1] * PREVIEW_ROW_HEIGHT / rgb.shape[0])
    mask_panel = image[:PREVIEW_ROW_HEIGHT, width + 4 : 2 * width + 4, 0].astype(float) / 255
    alpha = np.asarray(Image.open(root / concept.masks[0])).astype(float) / 255
    assert abs(mask_panel.mean() - alpha.mean()) < 0.02, "the middle panel is the mask"
    cutout = image[:PREVIEW_ROW_HEIGHT, 2 * width + 8 : 3 * width + 8]
    assert len(np.unique(cutout[mask_panel == 0].reshape(-1, 3), axis=0)) == 2, "background is a checkerboard"

    before = preview.read_bytes()
    preview.unlink()
    again = _curate("concepts", "show", "cat", "-w", str(root))
    assert again.returncode == 0 and preview.read_bytes() == before
    missing = _curate("concepts", "show", "dog", "-w", str(root))
    assert missing.returncode == 1 and missing.stderr.strip() == "error: no concept named 'dog' (concepts: cat)"


# -- cut-outs: review strip and FiftyOne ---------------------------------------------------------


def test_cutouts_are_the_masked_references_and_the_review_strip_shows_them(
    ws: Workspace, concept_photos: dict[str, list[Path]]
) -> None:
    """The review page's reference strip shows what is pasted (the cut-out on white), not the photo
    around it; before, its thumbnail was the first reference photo, background and all."""
    from curation.concepts.references import cover_cutout, cutout_paths
    from curation.review.client import Connection
    from curation.review.task_page import candidate_task

    concept = add_concept(ws, "mug", concept_photos["mug"], class_noun="mug")
    paths = cutout_paths(ws, concept)
    assert [p.name for p in paths] == [Path(r).name for r in concept.refs]
    for path, ref, mask in zip(paths, concept.refs, concept.masks, strict=True):
        rgba = np.asarray(Image.open(path))
        alpha = np.asarray(Image.open(ws.resolve(mask)))
        ys, xs = np.nonzero(alpha >= 16)
        crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        assert rgba.shape == (*alpha[crop].shape, 4)  # cropped to the mask
        assert np.array_equal(rgba[..., 3], alpha[crop])
        assert np.array_equal(rgba[..., :3], np.asarray(Image.open(ws.resolve(ref)))[crop])
    flagged = concept.model_copy(update={"mask_flags": [["holes"], []]})
    assert cover_cutout(ws, flagged) == paths[1]  # the first clean mask stands for the concept

    media = ws.root / "media"  # what a server `curate review serve` started serves, and nothing else
    conn = Connection("http://127.0.0.1:9", "token", media, media, ws.root)
    row = {"candidate_id": "c1", "filepath": str(ws.resolve(concept.refs[0])), "caption": "", "concepts": ["mug"]}
    ref = candidate_task(ws, conn, row, {"mug": concept}, [], set(), {})["data"]["refs"][0]
    thumb = np.asarray(Image.open(media / ref["thumb"].split("?d=")[1]).convert("RGB")).astype(int)
    cut = Image.open(cover_cutout(ws, concept))
    assert abs(thumb.shape[1] / thumb.shape[0] - cut.width / cut.height) < 0.05  # the cut-out's frame
    outside = np.asarray(cut.resize(thumb.shape[1::-1]))[..., 3] == 0
    assert outside.any() and (thumb[outside].min(1) >= 235).mean() > 0.95, "white where the cut-out is transparent"

    # re-segmenting the same photos rewrites the cut-out under the same name: the strip shows the new one
    rewritten = cover_cutout(ws, concept)
    atomic_write_bytes(rewritten, _png_bytes(Image.new("RGBA", (20, 10), (255, 0, 0, 255))))
    again = candidate_task(ws, conn, row, {"mug": concept}, [], set(), {})["data"]["refs"][0]
    assert again["thumb"] != ref["thumb"]
    fresh = np.asarray(Image.open(media / again["thumb"].split("?d=")[1]).convert("RGB")).astype(int)
    assert fresh.shape[:2] == (10, 20) and (fresh[..., 0] > 200).all() and (fresh[..., 1] < 60).all()


def test_index_writes_the_concepts_cutouts_as_a_fiftyone_dataset(
    ws: Workspace, concept_photos: dict[str, list[Path]]
) -> None:
    import fiftyone as fo

    from curation.concepts.references import cutout_paths
    from curation.index.concepts_dataset import concepts_dataset_name, index_concepts

    cat = add_concept(ws, "cat", concept_photos["cat"], class_noun="cat", name="Tabby")
    mug = add_concept(ws, "mug", concept_photos["mug"], class_noun="mug")
    dataset = index_concepts(ws)
    try:
        assert dataset.name == concepts_dataset_name(ws) and dataset.persistent
        expected = [str(p) for c in (cat, mug) for p in cutout_paths(ws, c)]
        assert sorted(dataset.values("filepath")) == sorted(expected)
        sample = dataset.match(fo.ViewField("filepath") == expected[0]).first()
        assert (sample.concept_id, sample.concept_name, sample.class_noun, sample.token) == ("cat", "Tabby", "cat", "<c-cat>")
        assert sample.tags == cat.mask_flags[0] and sample.reference == str(ws.resolve(cat.refs[0]))
        ws.concept_dir("mug").joinpath("concept.json").unlink()  # a concept gone: its cut-outs go too
        assert sorted(index_concepts(ws).distinct("concept_id")) == ["cat"]
    finally:
        dataset.delete()


def test_a_record_with_fewer_masks_than_photos_shows_them_whole(
    ws: Workspace, concept_photos: dict[str, list[Path]]
) -> None:
    """A hand-written or older concept.json may list photos without masks: the index and the review
    page show those photos whole instead of stopping (index_concepts raised on the zip before)."""
    from curation.concepts.references import cutout_paths
    from curation.index.concepts_dataset import index_concepts

    full = add_concept(ws, "mug", concept_photos["mug"], class_noun="mug")
    concept = full.model_copy(update={"masks": full.masks[:1], "mask_flags": full.mask_flags[:1]})
    ws.save_concept(concept)
    paths = cutout_paths(ws, concept)
    assert len(paths) == len(concept.refs) == 2
    whole = np.asarray(Image.open(paths[1]))
    assert whole.shape[:2] == np.asarray(Image.open(ws.resolve(concept.refs[1]))).shape[:2]
    assert (whole[..., 3] == 255).all()
    dataset = index_concepts(ws)
    try:
        assert dataset.count() == 2 and sorted(dataset.values("mask"), key=str) == [str(ws.resolve(full.masks[0])), None]
    finally:
        dataset.delete()


# -- photos that come cut out ----------------------------------------------------------------------


def _cut_out(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    """`rgb` with an alpha disc, soft-edged as a matting tool leaves it: a photo someone already cut out."""
    h, w = rgb.shape[:2]
    alpha = np.zeros((h, w), np.uint8)
    cv2.circle(alpha, (w // 2, h // 2), min(h, w) // 3, 255, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 1.5)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return path, alpha


def test_a_photo_that_comes_cut_out_is_its_own_mask(ws: Workspace, tmp_path: Path) -> None:
    """Before, the alpha was dropped and the photo segmented again: IoU 0.60 with the alpha disc over
    a photo, and the same disc over a flat colour refused as 'empty'. Now the alpha is the mask, exactly,
    and a concept of cut-outs loads no segmentation model (here one that could not load)."""
    from curation.concepts.references import PHOTO_ALPHA
    from curation.core.config import dump_config

    photo = sample_photo("chelsea", 120)
    over_photo, alpha = _cut_out(photo, tmp_path / "disc-over-photo.png")
    over_flat, _ = _cut_out(np.full_like(photo, (90, 140, 60)), tmp_path / "disc-over-flat.png")
    config = ws.config
    config.segment.backend = f"isnet:{tmp_path / 'no-such-model.onnx'}"
    ws.config_path.write_text(dump_config(config))
    for concept_id, path in (("disc", over_photo), ("flat", over_flat)):
        concept = add_concept(ws, concept_id, [path], class_noun="disc")
        mask = np.asarray(Image.open(ws.resolve(concept.masks[0])))
        assert np.array_equal(mask, alpha), concept_id  # IoU 1.0, soft edge and all
        assert concept.mask_sources == [PHOTO_ALPHA] and concept.segmenter == PHOTO_ALPHA
        assert concept.mask_flags == [[]]
        assert np.array_equal(np.asarray(Image.open(ws.resolve(concept.refs[0]))), np.asarray(Image.open(path))[..., :3])
    opaque = tmp_path / "opaque.png"
    Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)]), "RGBA").save(opaque)
    with pytest.raises(CurateError, match="isnet model file not found"):  # an opaque alpha is no cut-out
        add_concept(ws, "opaque", [opaque], class_noun="cat")


def test_concepts_show_flags_masks_from_the_photos_alpha(tmp_path: Path, concept_photos: dict[str, list[Path]]) -> None:
    """A cut-out beside an ordinary photo: only the ordinary one is segmented (auto, offline here, says
    once that it falls back to classical), and `concepts show` tells which mask came with its photo."""
    root = tmp_path / "ws"
    assert _curate("init", str(root)).returncode == 0
    cut, _ = _cut_out(sample_photo("chelsea", 200), tmp_path / "cat-cut-out.png")
    added = _curate("concepts", "add", "cat", str(cut), str(concept_photos["cat"][0]), "--class", "cat", "-w", str(root))
    assert added.returncode == 0, added.stderr
    assert "segmenter classical; photos that came cut out (their own alpha is the mask): 1" in added.stdout
    assert added.stderr.count("falls back to the classical backend because IS-Net general-use is not in") == 1
    concept = Workspace.open(root).concept("cat")
    assert concept is not None and sorted(concept.mask_sources) == ["classical", "photo alpha"]
    shown = _curate("concepts", "show", "cat", "-w", str(root)).stdout
    for ref, flags, source in zip(concept.refs, concept.mask_flags, concept.mask_sources, strict=True):
        own = " (mask: the photo's own alpha, not segmented)" if source == "photo alpha" else ""
        assert f"  {ref}: {', '.join(flags) or 'ok'}{own}\n" in shown


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

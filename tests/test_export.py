"""`curate export` against a real FiftyOne dataset (embedded mongod) and real candidate files on disk.

Each test builds its own small workspace: five concepts, eight candidates covering every selection
rule (accepted/rejected/unreviewed, quality above/below the threshold, a fixed caption, a near-duplicate),
and a FiftyOne dataset named after the test so tests never see each other's samples.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.core.config import CurateConfig, IndexConfig
from curation.core.dataset import (
    BOXES,
    CANDIDATE_ID,
    CAPTION,
    CAPTION_FIXED,
    CONCEPTS,
    N_CONCEPTS,
    NEAR_DUP_OF,
    REVIEW_DECISION,
    REVIEW_QUALITY,
    SHARD,
)
from curation.core.errors import CurateError
from curation.core.records import Box, Candidate, Concept
from curation.core.workspace import SUCCESS_MARKER, Workspace, atomic_write_bytes, atomic_write_json
from exports.card import rank_of, rank_table
from exports.mycanvas import export_mycanvas

NOUNS = {"cat": "cat", "dog": "dog", "mug": "mug", "teapot": "teapot", "plant": "plant"}
SIZE = 64


@dataclass(frozen=True)
class Spec:
    """One candidate of the test workspace and the review it got."""

    key: str
    concepts: tuple[str, ...]
    decision: str | None
    quality: float | None
    caption_fixed: str | None = None
    near_dup_of: str | None = None


SPECS = (
    Spec(
        "two", ("dog", "cat"), "accept", 4.0, caption_fixed="a fixed caption of <c-cat> cat and <c-dog> dog"
    ),
    Spec("four", ("cat", "dog", "mug", "teapot"), "accept", 3.0),
    Spec("five", ("cat", "dog", "mug", "teapot", "plant"), "accept", 5.0),
    Spec("halfway", ("cat", "mug"), "accept", 3.5),
    Spec("low", ("cat", "plant"), "accept", 2.0),
    Spec("rejected", ("dog", "mug"), "reject", 4.0),
    Spec("unreviewed", ("mug", "teapot"), None, None),
    Spec("neardup", ("dog", "cat"), "accept", 4.0, near_dup_of="two"),
    Spec("orphan", ("mug", "plant"), "accept", 4.0, near_dup_of="rejected"),  # its original is not exported
)
EXPORTED = ("two", "four", "five", "halfway", "orphan")


def _png(seed: int, size: int = SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Built:
    ws: Workspace
    candidates: dict[str, Candidate]  # by spec key
    dataset_name: str


def build_workspace(root: Path) -> Built:
    """Concepts, a finished shard of candidates, and the FiftyOne dataset that index + review would leave."""
    import fiftyone as fo

    name = f"test-export-{uuid.uuid4().hex[:10]}"
    ws = Workspace.create(root, CurateConfig(index=IndexConfig(dataset_name=name)))
    for n, (cid, noun) in enumerate(NOUNS.items()):
        refs, masks = [], []
        for k in range(2):
            ref, mask = f"concepts/{cid}/refs/{k}.png", f"concepts/{cid}/masks/{k}.png"
            atomic_write_bytes(ws.root / ref, _png(10 * n + k, 32))
            atomic_write_bytes(ws.root / mask, _png(500 + 10 * n + k, 32))
            refs.append(ref)
            masks.append(mask)
        ws.save_concept(
            Concept(concept_id=cid, name=cid, class_noun=noun, token=f"<c-{cid}>", refs=refs, masks=masks)
        )

    shard = "000000"
    candidates: dict[str, Candidate] = {}
    samples = []
    for n, spec in enumerate(SPECS):
        candidate_id = f"{n:02d}{spec.key}"
        boxes = [
            Box(concept_id=c, x=2 + 11 * i, y=3 + i, w=10, h=12 + i) for i, c in enumerate(spec.concepts)
        ]
        caption = " and ".join(f"<c-{c}> {NOUNS[c]}" for c in spec.concepts) + " in a garden"
        candidate = Candidate(
            candidate_id=candidate_id,
            plan_id=f"plan{n}",
            shard=shard,
            image=f"candidates/{shard}/{candidate_id}.png",
            concepts=list(spec.concepts),
            boxes=boxes,
            width=SIZE,
            height=SIZE,
            background="a garden",
            caption=caption,
            seed=n,
            generator="test",
        )
        atomic_write_bytes(ws.root / candidate.image, _png(1000 + n))
        atomic_write_json(ws.root / f"candidates/{shard}/{candidate_id}.json", candidate.model_dump())
        candidates[spec.key] = candidate
        sample = fo.Sample(filepath=str(ws.root / candidate.image))
        sample[CANDIDATE_ID] = candidate_id
        sample[SHARD] = shard
        sample[CONCEPTS] = list(spec.concepts)
        sample[N_CONCEPTS] = len(spec.concepts)
        sample[CAPTION] = caption
        sample[BOXES] = fo.Detections(
            detections=[fo.Detection(label=b.concept_id, bounding_box=b.relative(SIZE, SIZE)) for b in boxes]
        )
        sample[REVIEW_DECISION] = spec.decision
        sample[REVIEW_QUALITY] = spec.quality
        sample[CAPTION_FIXED] = spec.caption_fixed
        samples.append(sample)
    atomic_write_bytes(ws.root / "candidates" / shard / SUCCESS_MARKER, b"")
    ids = {spec.key: candidates[spec.key].candidate_id for spec in SPECS}
    for sample, spec in zip(samples, SPECS, strict=True):
        sample[NEAR_DUP_OF] = ids[spec.near_dup_of] if spec.near_dup_of else None
    dataset = fo.Dataset(name)
    dataset.add_samples(samples)
    return Built(ws=ws, candidates=candidates, dataset_name=name)


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder`."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_rows(folder: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (folder / "train" / "metadata.jsonl").read_text().splitlines()]
    return {row["candidate_id"]: row for row in rows}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    return build_workspace(tmp_path_factory.mktemp("export-ws") / "ws")


@pytest.fixture(scope="module")
def exported(built) -> Path:
    """One export with every format, shared by the read-only tests."""
    report = export_mycanvas(built.ws, formats="mycanvas,webdataset", shard_size=3)
    assert report.path == built.ws.exports_dir / "mycanvas"
    assert str(report.path) in report.summary() and "5 accepted images" in report.summary()
    return report.path


def test_exports_exactly_the_accepted_candidates_with_enough_quality(built, exported):
    rows = read_rows(exported)
    expected = {built.candidates[k].candidate_id: built.candidates[k] for k in EXPORTED}
    assert set(rows) == set(expected)
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["candidate_ids"] == sorted(expected)
    assert manifest["dropped_near_duplicates"] == [built.candidates["neardup"].candidate_id]
    assert manifest["selection"]["min_quality"] == 3 and len(manifest["config_hash"]) == 16

    for candidate_id, candidate in expected.items():
        row = rows[candidate_id]
        key = "+".join(sorted(candidate.concepts))
        assert row["file_name"] == f"images/{key}/{candidate_id}.png"
        image = exported / "train" / row["file_name"]
        source = built.ws.root / candidate.image
        assert image.read_bytes() == source.read_bytes()
        assert row["concepts"] == candidate.concepts
        assert row["tokens"] == [f"<c-{c}>" for c in candidate.concepts]
        assert row["boxes"] == [
            {"concept_id": b.concept_id, "x": b.x, "y": b.y, "w": b.w, "h": b.h} for b in candidate.boxes
        ]
        assert row["n_concepts"] == len(candidate.concepts)
    two = built.candidates["two"].candidate_id
    assert rows[two]["caption"] == SPECS[0].caption_fixed  # the annotator's fix wins
    four = built.candidates["four"].candidate_id
    assert rows[four]["caption"] == built.candidates["four"].caption
    assert rows[built.candidates["halfway"].candidate_id]["quality"] == 3.5

    # only the concepts the exported images use, with their refs and masks and a card pointing at the copies
    assert sorted(p.name for p in (exported / "concepts").iterdir()) == sorted(NOUNS)
    cat = json.loads((exported / "concepts/cat/concept.json").read_text())
    assert cat["refs"] == ["concepts/cat/refs/0.png", "concepts/cat/refs/1.png"]
    assert all(
        (exported / p).read_bytes() == (built.ws.root / p).read_bytes() for p in cat["refs"] + cat["masks"]
    )


def test_concepts_lists_follow_the_diffusers_custom_diffusion_format(exported):
    entries = json.loads((exported / "concepts_list.json").read_text())
    assert [e["class_prompt"] for e in entries] == sorted(NOUNS)
    for entry in entries:
        assert set(entry) == {"instance_prompt", "class_prompt", "instance_data_dir", "class_data_dir"}
        noun = entry["class_prompt"]
        assert entry["instance_prompt"] == f"photo of a <c-{noun}> {noun}"
        # relative to the export, which every printed command changes into first
        assert entry["instance_data_dir"] == f"concepts/{noun}/refs"
        assert entry["class_data_dir"] == f"class_images/{noun}"
        folder = exported / entry["instance_data_dir"]
        assert sorted(p.name for p in folder.iterdir()) == ["0.png", "1.png"]  # every file an image
    compositions = json.loads((exported / "concepts_list_compositions.json").read_text())
    assert len(compositions) == 5
    two = next(e for e in compositions if e["instance_data_dir"] == "train/images/cat+dog")
    assert two["instance_prompt"] == "photo of a <c-cat> cat and a <c-dog> dog"
    assert two["class_data_dir"] == "class_images/cat_and_dog"
    assert all(
        p.suffix == ".png" for e in compositions for p in (exported / e["instance_data_dir"]).iterdir()
    )
    identifiers = json.loads((exported / "manifest.json").read_text())["identifiers"]
    dreambooth = json.loads((exported / "concepts_list_dreambooth.json").read_text())
    assert [e["instance_prompt"] for e in dreambooth] == [
        f"photo of a {identifiers[c]} {NOUNS[c]}" for c in sorted(NOUNS)
    ]
    assert [e["instance_data_dir"] for e in dreambooth] == [e["instance_data_dir"] for e in entries]


def _inodes(folder: Path, skip: Path | None = None) -> dict[tuple[int, int], Path]:
    return {
        (p.stat().st_dev, p.stat().st_ino): p
        for p in folder.rglob("*")
        if p.is_file() and (skip is None or skip not in p.parents)
    }


def test_no_exported_file_shares_an_inode_with_the_workspace_unless_linked(tmp_path):
    """A trainer that resizes in place, or a user's mogrify, must not edit the workspace's candidates."""
    built = build_workspace(tmp_path / "ws")
    report = export_mycanvas(built.ws, formats="mycanvas,webdataset,kohya,onetrainer")
    workspace = _inodes(built.ws.root, skip=built.ws.exports_dir)
    exported = _inodes(report.path)
    assert len(exported) > 40 and not set(exported) & set(workspace)
    assert "files: 25 " in report.summary() and "hard-linked" not in report.summary()  # 5 images, 20 refs+masks

    linked = export_mycanvas(built.ws, name="linked", link=True)
    assert "25 hard-linked (read-only, shared with the workspace)" in linked.summary()
    for candidate in (built.candidates[k] for k in EXPORTED):
        source = built.ws.root / candidate.image
        image = linked.path / "train/images" / "+".join(sorted(candidate.concepts)) / source.name
        assert image.stat().st_ino == source.stat().st_ino and image.stat().st_mode & 0o222 == 0


def test_card_counts_and_rank_table(exported):
    card = (exported / "README.md").read_text()
    assert "| `cat` | 4 |" in card and "| `mug` | 4 |" in card and "| `plant` | 2 |" in card
    assert "| `cat+dog` | 1 |" in card and "| `cat+dog+mug+plant+teapot` | 1 |" in card
    exported_table = card.split("## Quality of the exported images")[1].split("##")[0]
    # two (4.0), halfway (3.5 -> 4) and orphan (4.0) have <= 3 concepts; four (3.0) has 4; five (5.0) has 5
    assert (
        "| <= 3 Concepts | 0 (0.0 %) | 0 (0.0 %) | 0 (0.0 %) | 3 (100.0 %) | 0 (0.0 %) | 3 |"
        in exported_table
    )
    assert (
        "| 4 Concepts | 0 (0.0 %) | 0 (0.0 %) | 1 (100.0 %) | 0 (0.0 %) | 0 (0.0 %) | 1 |" in exported_table
    )
    reviewed_table = card.split("## Quality of every reviewed candidate")[1]
    # adds low (2.0), rejected (4.0) and the dropped near-duplicate (4.0), all with 2 concepts
    assert (
        "| <= 3 Concepts | 0 (0.0 %) | 1 (16.7 %) | 0 (0.0 %) | 5 (83.3 %) | 0 (0.0 %) | 6 |"
        in reviewed_table
    )


def test_rank_table_layout_matches_the_gen4gen_poster():
    reviewed = [(2, 1.0)] * 9 + [(3, 2.2)] * 43 + [(4, 3.0)] * 112 + [(5, 4.6)] * 18 + [(6, 5.0)]
    lines = rank_table(reviewed).splitlines()
    assert lines[0] == "| | Rank: 1 | Rank: 2 | Rank: 3 | Rank: 4 | Rank: 5 | Total Images |"
    assert lines[2] == "| <= 3 Concepts | 9 (17.3 %) | 43 (82.7 %) | 0 (0.0 %) | 0 (0.0 %) | 0 (0.0 %) | 52 |"
    assert lines[3].startswith("| 4 Concepts | 0 (0.0 %) | 0 (0.0 %) | 112 (100.0 %)")
    assert lines[4].endswith("| 18 (100.0 %) | 18 |") and lines[5].startswith("| 6 Concepts")
    assert [rank_of(q) for q in (0.2, 1.49, 1.5, 3.5, 4.49, 5.0, 7.0)] == [1, 1, 2, 4, 4, 5, 5]


def test_hugging_face_imagefolder_loads_the_export_with_captions(built, exported, tmp_path):
    import datasets

    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(exported), split="train", cache_dir=str(tmp_path)
    )
    assert len(loaded) == len(EXPORTED)
    rows = read_rows(exported)
    for example in loaded:
        row = rows[example["candidate_id"]]
        assert example["caption"] == row["caption"]
        assert example["image"].size == (SIZE, SIZE)
        assert example["boxes"] == row["boxes"]


def test_webdataset_shards_read_back(built, exported):
    import webdataset as wds

    shards = sorted(str(p) for p in (exported / "webdataset").glob("compositions-*.tar"))
    assert len(shards) == 2  # 5 samples, 3 per shard
    rows = read_rows(exported)
    seen = {}
    for sample in wds.WebDataset(shards, shardshuffle=False).decode("pil"):
        seen[sample["__key__"]] = sample
        assert sample["txt"] == rows[sample["__key__"]]["caption"]
        assert sample["json"] == rows[sample["__key__"]]
        assert sample["png"].size == (SIZE, SIZE)
    assert set(seen) == set(rows)


def test_the_bundled_trainer_reads_the_export(built, exported):
    from personalization.data import read_export

    export = read_export(exported)
    assert sorted(c.candidate_id for c in export.compositions) == sorted(
        built.candidates[k].candidate_id for k in EXPORTED
    )
    assert {c: e.class_noun for c, e in export.concepts.items()} == NOUNS
    assert all(len(e.refs) == 2 for e in export.concepts.values())


def test_rerun_writes_an_identical_folder(built, exported):
    before = tree_digest(exported)
    stale = built.ws.exports_dir / ".mycanvas.tmp-killed"  # what a killed export leaves behind
    (stale / "images").mkdir(parents=True)
    export_mycanvas(built.ws, formats=["webdataset"], shard_size=3)
    assert tree_digest(exported) == before
    assert [p.name for p in built.ws.exports_dir.iterdir()] == ["mycanvas"]  # no temp or old folders left


@pytest.mark.parametrize("name", ["../x", "/abs", "", ".hidden", "a/b", ".."])
def test_bad_export_names_are_refused(built, name):
    with pytest.raises(CurateError, match="export name"):
        export_mycanvas(built.ws, name=name)
    assert not (built.ws.root / "x").exists() and not Path("/abs").exists()


def test_unknown_format_and_view_are_one_line_errors(built):
    with pytest.raises(CurateError, match="unknown export format 'parquet'"):
        export_mycanvas(built.ws, name="other", formats="mycanvas,parquet")
    with pytest.raises(CurateError, match="no saved view 'nope'"):
        export_mycanvas(built.ws, name="other", view="nope")
    assert not (built.ws.exports_dir / "other").exists()


def test_failed_export_leaves_the_previous_one_intact(tmp_path):
    built = build_workspace(tmp_path / "ws")
    first = export_mycanvas(built.ws)
    before = tree_digest(first.path)
    concept = next(iter(built.ws.concepts().values()))
    (built.ws.root / concept.refs[0]).unlink()  # a concept's reference photo gone: the export cannot finish
    with pytest.raises(CurateError, match=f"concept {concept.concept_id}: file .* is missing"):
        export_mycanvas(built.ws)
    assert tree_digest(first.path) == before
    assert [p.name for p in built.ws.exports_dir.iterdir()] == ["mycanvas"]


def test_candidates_set_aside_as_stale_are_skipped_and_counted(tmp_path):
    from generators.run import GenerateReport, _set_aside

    built = build_workspace(tmp_path / "ws")
    stale = sorted(built.candidates[k].candidate_id for k in ("two", "four"))
    moved = GenerateReport()
    for candidate_id in stale:  # what `curate generate` does once plans or its settings changed
        for suffix in (".png", ".json"):
            _set_aside(built.ws, built.ws.shard_dir("000000") / f"{candidate_id}{suffix}", moved)
    assert moved.set_aside == 4

    report = export_mycanvas(built.ws)
    assert report.skipped_stale == 2 and "2 accepted candidates skipped: set aside as stale" in report.summary()
    # "neardup" copies "two": with its original gone stale it is the one exported
    kept = ("five", "halfway", "orphan", "neardup")
    assert set(read_rows(report.path)) == {built.candidates[k].candidate_id for k in kept}
    assert report.n_images == 4 and report.dropped_near_duplicates == 0
    manifest = json.loads((report.path / "manifest.json").read_text())
    assert manifest["skipped_stale"] == stale and manifest["counts"]["skipped_stale"] == 2



def test_candidates_gone_from_disk_are_skipped_and_counted(tmp_path):
    """One deleted candidate refused the whole export; now each is left out, counted and named."""
    built = build_workspace(tmp_path / "ws")
    shard = built.ws.shard_dir("000000")
    deleted, damaged, imageless = (built.candidates[k] for k in ("five", "halfway", "orphan"))
    for suffix in (".png", ".json"):
        (shard / f"{deleted.candidate_id}{suffix}").unlink()
    (shard / f"{damaged.candidate_id}.json").write_text('{"candidate_id": "')  # cut short by a crash
    (built.ws.root / imageless.image).unlink()
    gone = sorted(c.candidate_id for c in (deleted, damaged, imageless))

    report = export_mycanvas(built.ws)
    assert report.skipped_missing == 3 and report.n_images == 2
    assert set(read_rows(report.path)) == {built.candidates[k].candidate_id for k in ("two", "four")}
    assert "3 accepted candidates skipped: their image or record is missing" in report.summary()
    assert "`curate generate` makes them again" in report.summary()
    manifest = json.loads((report.path / "manifest.json").read_text())
    assert sorted(manifest["skipped_missing"]) == gone and manifest["counts"]["skipped_missing"] == 3


def test_view_threshold_and_near_duplicate_options(tmp_path):
    import fiftyone as fo
    from fiftyone import ViewField as F

    built = build_workspace(tmp_path / "ws")
    dataset = fo.load_dataset(built.dataset_name)
    dataset.save_view("pairs", dataset.match(F(N_CONCEPTS) == 2))
    ids = {k: c.candidate_id for k, c in built.candidates.items()}

    report = export_mycanvas(built.ws, name="pairs", view="pairs", include_near_duplicates=True)
    assert set(read_rows(report.path)) == {ids["two"], ids["halfway"], ids["neardup"], ids["orphan"]}
    report = export_mycanvas(built.ws, name="strict", min_quality=4)
    assert set(read_rows(report.path)) == {ids["two"], ids["five"], ids["orphan"]}


def test_cli_export_with_formats(tmp_path):
    from typer.testing import CliRunner

    from curation.cli import app

    built = build_workspace(tmp_path / "ws")
    result = CliRunner().invoke(
        app,
        ["export", "-w", str(built.ws.root), "--name", "cli", "--format", "webdataset", "--min-quality", "5"],
    )
    assert result.exit_code == 0, result.output
    assert "exported 1 accepted images" in result.output
    assert len(read_rows(built.ws.exports_dir / "cli")) == 1
    assert list((built.ws.exports_dir / "cli" / "webdataset").glob("*.tar"))

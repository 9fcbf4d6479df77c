"""File modes on a shared machine: what a workspace run writes is readable by other accounts (a
training job, a colleague), except the Label Studio credentials.

The workspace lives in a folder made here rather than under pytest's tmp_path, whose base folder
is owner-only and would hide everything from the other account regardless of the files' modes.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from curation.concepts.references import add_concept
from curation.core import dataset as ds
from curation.core.workspace import Workspace
from curation.index.run import index_workspace
from curation.review.server import ServerInfo, server_file, write_server
from exports.mycanvas import export_mycanvas
from generators.layout import plan_layouts
from generators.run import generate
from tests.fixtures.sample_concepts import SAMPLE_CONCEPTS, small_config

NOBODY = 65534


@pytest.fixture
def umask_022() -> Iterator[Path]:
    """Umask 022 for the test, and a world-traversable folder to work in (removed afterwards)."""
    previous = os.umask(0o022)
    folder = Path(tempfile.gettempdir()) / f"curate-modes-{uuid.uuid4().hex[:10]}"
    folder.mkdir()
    try:
        yield folder
    finally:
        os.umask(previous)
        shutil.rmtree(folder, ignore_errors=True)


def run_workspace(root: Path, photos: dict[str, list[Path]], clip_model: str) -> Workspace:
    """concepts add, plan, generate, index, a review decision on every sample, export, and a
    recorded Label Studio login: every kind of file a workspace run writes."""
    config = small_config()
    config.index.clip_model, config.index.clip_pretrained = clip_model, ""
    config.index.dataset_name = f"modes-{root.parent.name}"
    ws = Workspace.create(root, config)
    for concept_id in ("cat", "mug"):
        add_concept(ws, concept_id, photos[concept_id], class_noun=SAMPLE_CONCEPTS[concept_id][0])
    plan_layouts(ws, 3)
    generate(ws, workers=1)
    index_workspace(ws)
    dataset = ds.open_dataset(ws)
    dataset.set_values(ds.REVIEW_DECISION, ["accept"] * len(dataset))
    dataset.set_values(ds.REVIEW_QUALITY, [4.0] * len(dataset))
    export_mycanvas(ws, formats="mycanvas,webdataset")
    write_server(
        ws,
        ServerInfo(url="http://127.0.0.1:1", email="a@b.c", password="pw", token="tok", path=server_file(ws)),
    )
    return ws


def test_run_writes_files_others_can_read_and_keeps_credentials_private(
    umask_022: Path, concept_photos: dict[str, list[Path]], tiny_clip_name: str
) -> None:
    ws = run_workspace(umask_022 / "ws", concept_photos, tiny_clip_name)
    secret = server_file(ws)
    files = sorted(p for p in ws.root.rglob("*") if p.is_file())
    folders = sorted(p for p in ws.root.rglob("*") if p.is_dir())
    modes = {p.relative_to(ws.root).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    kinds = {Path(name).suffix for name in modes}
    assert {".png", ".json", ".jsonl", ".md", ".toml", ".tar"} <= kinds, kinds  # the run wrote every kind
    assert any(name.startswith("exports/mycanvas/") for name in modes)
    assert modes.pop("review/server.json") == "0o600"
    assert {name: mode for name, mode in modes.items() if mode != "0o644"} == {}
    assert {p.relative_to(ws.root).as_posix() for p in folders if stat.S_IMODE(p.stat().st_mode) != 0o755} == set()

    if os.geteuid() != 0:
        pytest.skip("reading as another account needs root")
    readable = [str(p) for p in files if p != secret]
    as_nobody = subprocess.run(["cat", *readable], user=NOBODY, capture_output=True, timeout=60)
    assert as_nobody.returncode == 0, as_nobody.stderr.decode()[:2000]
    denied = subprocess.run(["cat", str(secret)], user=NOBODY, capture_output=True, timeout=60)
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr

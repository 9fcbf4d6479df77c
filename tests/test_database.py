"""Which database a command writes to: never silently another folder's (curation/core/database.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.core.database import attached_database_dir
from curation.core.workspace import Workspace

CURATE = str(Path(sys.executable).with_name("curate"))


def test_a_command_configured_for_another_database_folder_stops_before_writing(tmp_path: Path) -> None:
    import fiftyone as fo

    fo.list_datasets()  # a database service runs (this session's, or one another session of ours started)
    running = attached_database_dir()
    assert running is not None and os.path.isdir(running)
    ws = Workspace.create(tmp_path / "pets")
    elsewhere = tmp_path / "elsewhere"
    env = {**os.environ, "FIFTYONE_DATABASE_DIR": str(elsewhere)}

    refused = subprocess.run([CURATE, "index", "-w", str(ws.root)], capture_output=True, text=True, env=env,
                             timeout=600, check=False)  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error: FiftyOne's database is already running from ")
    assert str(elsewhere) in refused.stderr and f"FIFTYONE_DATABASE_DIR={running}" in refused.stderr
    assert refused.stderr.count("\n") == 1 and not fo.dataset_exists(f"curate-{ws.workspace_id}")

    accepted = subprocess.run([CURATE, "index", "-w", str(ws.root)], capture_output=True, text=True,
                              env={**env, "FIFTYONE_DATABASE_DIR": running}, timeout=600, check=False)  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert fo.dataset_exists(f"curate-{ws.workspace_id}")


STARTER = """
import os, sys, time
from pathlib import Path

from curation.cli import main
import fiftyone  # noqa: F401  (imported before the start line, so both processes start together)

Path(sys.argv[2]).touch()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.005)
sys.argv = ["curate", "status", "-w", sys.argv[1]]
main()
"""
"""`curate status` in a process that imports everything first, then waits for the start line."""


NAMESPACES = ["unshare", "--pid", "--fork", "--mount-proc", "--net", "--kill-child"]
"""Processes and a network of their own: this session's database service is hidden from the two
commands, and the service they start answers no process outside (none of ours attaches to it)."""


def _private_namespaces() -> bool:
    """Whether `unshare` can give commands their own PID and network namespaces (root, or user namespaces)."""
    try:
        probe = subprocess.run([*NAMESPACES, "ip", "link", "set", "lo", "up"], timeout=60, check=False)
        return probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_two_commands_that_both_find_no_database_running_both_connect(tmp_path: Path) -> None:
    """Two commands started at the same moment where no FiftyOne database runs: both used to start
    one, and the second died after 60 s with `ServiceListenTimeout`. In namespaces of their own they
    see none of this account's services, as on a machine where nothing runs yet."""
    if not _private_namespaces():
        pytest.skip("needs `unshare --pid --net` to hide this session's database service")
    workspaces = [Workspace.create(tmp_path / f"ws{k}").root for k in (1, 2)]
    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_PRIVATE_DATABASE_PORT"}
    env |= {"FIFTYONE_DATABASE_DIR": str(tmp_path / "db"), "STARTER": STARTER}
    runs = " ".join(  # each command and its exit code in a background subshell: the two run side by side
        f'( "{sys.executable}" -c "$STARTER" {ws} {tmp_path / f"ready{k}"} {go} > {tmp_path / f"out{k}"} 2>&1; '
        f"echo $? > {tmp_path / f'code{k}'} ) &"
        for k, ws in enumerate(workspaces)
    )
    namespace = subprocess.Popen(
        [*NAMESPACES, "sh", "-c", f"ip link set lo up && {{ {runs} wait; }}"],
        env=env,
    )
    try:
        deadline = time.monotonic() + 600
        while not all((tmp_path / f"ready{k}").exists() for k in range(2)):
            assert namespace.poll() is None, "a command died before the start line"
            assert time.monotonic() < deadline, "the two commands never both reached the start line"
            time.sleep(0.1)
        go.touch()
        namespace.wait(timeout=600)
    finally:
        namespace.kill()
    for k in range(2):
        output = (tmp_path / f"out{k}").read_text()
        assert (tmp_path / f"code{k}").read_text().strip() in ("0", "1"), output
        assert "Traceback" not in output and "ServiceListenTimeout" not in output, output
        assert "would not start" not in output, output

"""Two commands on one workspace: the second waits (`--wait`) or stops with one line, never interleaves.

Two copies of each writing command are started at the same moment on one workspace, in children of
the fork server (`tests/fixtures/fault_injection.py`), and must leave what two runs one after the
other leave; the templates are the crash-safety tests' (`tests/test_crash_safety.py`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.fixtures.fault_injection import Call, ForkServer, concurrent_trial, shared_server

HERE = "tests.test_concurrency"
CRASH = "tests.test_crash_safety"
INJECT = "tests.fixtures.fault_injection"


@pytest.fixture(scope="module")
def fork_server() -> ForkServer:
    return shared_server()


def hold_lock(root: str, stage: str, seconds: float) -> int:
    """Hold a workspace's stage lock for a while, as a long command would; returns this pid."""
    from curation.core.workspace import Workspace

    with Workspace.open(Path(root)).lock(stage):
        time.sleep(seconds)
    return os.getpid()


COMMANDS = {
    "index": ("prepare_first_index", ["index"]),
    "export": ("prepare_export", ["export"]),
    "topup": ("prepare_topup", ["topup"]),
    "generate": ("prepare_generate", ["generate", "--workers", "1"]),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_two_runs_at_once_leave_what_two_in_a_row_leave(fork_server, tmp_path, command):
    prepare, argv = COMMANDS[command]
    template = tmp_path / "template"
    fork_server.call(f"{CRASH}:{prepare}", str(template))
    concurrent_trial(fork_server, template, lambda ws: [*argv, "--wait", "-w", str(ws)], tmp_path)


@pytest.mark.parametrize("command", ["push", "pull"])
def test_two_review_runs_at_once_leave_what_two_in_a_row_leave(fork_server, labelstudio_workspace, command):
    ws = labelstudio_workspace()
    fork_server.call(f"{CRASH}:prepare_review", str(ws.root))
    setup = {"push": f"{INJECT}:copy_workspace", "pull": f"{CRASH}:push_and_annotate"}[command]
    scratch = ws.root.parent / f"{ws.root.name}-together"
    concurrent_trial(fork_server, ws.root, lambda w: ["review", command, "--wait", "-w", str(w)], scratch, setup)


def test_a_second_writer_stops_with_one_line_or_waits_with_wait(fork_server, tmp_path):
    ws = tmp_path / "ws"
    fork_server.call(f"{CRASH}:prepare_first_index", str(ws))
    holder, refused = fork_server.run(
        Call(f"{HERE}:hold_lock", [str(ws), "index", 3.0]),
        Call(f"{INJECT}:run_cli", [["index", "-w", str(ws)]]),
    )
    assert refused.result == 1, refused.output
    error = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"(pid {holder.result}" in error[0] and "--wait" in error[0], refused.output
    assert "Traceback" not in refused.output

    holder, waited = fork_server.run(
        Call(f"{HERE}:hold_lock", [str(ws), "index", 3.0]),
        Call(f"{INJECT}:run_cli", [["index", "--wait", "-w", str(ws)]]),
    )
    assert waited.result == 0 and "waiting for" in waited.output, waited.output
    assert "3 added" in waited.output, waited.output


def add_duplicate(root: str) -> None:
    """A second sample of one candidate and a non-unique candidate_id index, as two concurrent runs
    of an older curate left a dataset."""
    from curation.core import dataset as ds
    from curation.core.workspace import Workspace

    dataset = ds.open_dataset(Workspace.open(Path(root)))
    dataset.drop_index(ds.CANDIDATE_ID)
    dataset.create_index(ds.CANDIDATE_ID)
    first = dataset.first()
    dataset.add_sample(first.copy())


def unique_state(root: str) -> dict[str, object]:
    from curation.core import dataset as ds
    from curation.core.workspace import Workspace

    dataset = ds.open_dataset(Workspace.open(Path(root)))
    return {
        "samples": len(dataset),
        "candidates": len(set(dataset.values(ds.CANDIDATE_ID))),
        "unique": dataset.get_index_information()[ds.CANDIDATE_ID].get("unique", False),
    }


def test_index_removes_duplicate_samples_and_makes_candidate_id_unique(fork_server, tmp_path):
    ws = tmp_path / "ws"
    fork_server.call(f"{CRASH}:prepare_first_index", str(ws))
    assert fork_server.call(f"{INJECT}:run_cli", ["index", "-w", str(ws)]).result == 0
    fork_server.call(f"{HERE}:add_duplicate", str(ws))
    assert fork_server.call(f"{HERE}:unique_state", str(ws)).result == {"samples": 4, "candidates": 3, "unique": False}
    assert fork_server.call(f"{INJECT}:run_cli", ["index", "-w", str(ws)]).result == 0
    assert fork_server.call(f"{HERE}:unique_state", str(ws)).result == {"samples": 3, "candidates": 3, "unique": True}

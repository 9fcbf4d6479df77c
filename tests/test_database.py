"""Which database a command writes to: never silently another folder's (curation/core/database.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
                             timeout=600)  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error: FiftyOne's database is already running from ")
    assert str(elsewhere) in refused.stderr and f"FIFTYONE_DATABASE_DIR={running}" in refused.stderr
    assert refused.stderr.count("\n") == 1 and not fo.dataset_exists(f"curate-{ws.workspace_id}")

    accepted = subprocess.run([CURATE, "index", "-w", str(ws.root)], capture_output=True, text=True,
                              env={**env, "FIFTYONE_DATABASE_DIR": running}, timeout=600)  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert fo.dataset_exists(f"curate-{ws.workspace_id}")

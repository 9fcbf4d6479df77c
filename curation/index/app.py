"""`curate app`: serve the FiftyOne App on the workspace's index dataset.

Kept apart from indexing: it only reads the dataset `curate index` wrote, and owns what serving
needs (a free port, usage tracking off, a start that is waited for as long as it makes progress).

The App's server is FiftyOne's own (`fiftyone.server.main`), run as a child process of this
command rather than through `fo.launch_app`: a URL ending in `/datasets/<name>` opens the dataset
without a session, while a remote session printed a port-forwarding banner, logged "Could not
connect session, trying again" every few seconds until its server came up, and gave that server a
fixed 60 s to bind, which a loaded 2-core machine missed twice at load ~9. Here the wait follows
the server: it ends when the server answers, says so every 15 s meanwhile, stops at once with the
server's own last log lines if the child dies, and gives up only after `START_CAP_S`. What the
server prints goes to `index/app.log`, not to the terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.ports import choose_port

if TYPE_CHECKING:
    from curation.core.workspace import Workspace

START_CAP_S = 600.0
"""The longest a start is waited for while the server process lives (a cold start at load ~9 took > 60 s)."""
NOTICE_EVERY_S = 15.0
LOG_LINES = 5
"""Lines of the server's log an error quotes."""


@dataclass
class AppServer:
    """A running App server: its URL, its process, its log."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """End the server (politely, then for good)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch_app(
    ws: Workspace,
    address: str = "127.0.0.1",
    port: int = 5151,
    echo: Callable[[str], None] = lambda line: None,
    cap_s: float = START_CAP_S,
) -> AppServer:
    """Start the FiftyOne App's server on the workspace's dataset and return once it answers.

    A busy `port` is not waited on: the nearest free port above it is used, and the URL says which.
    Usage tracking is off in the server, which would otherwise report researchers' sessions to a
    third party. `stop()` ends it.

    Args:
        echo: Told what is happening while the server starts (the CLI prints it on stderr).
        cap_s: Give up after this many seconds even if the server still runs.

    Raises:
        CurateError: when `curate index` has not run yet, the server exits, or it never answers.
    """
    dataset = ds.open_dataset(ws, require_samples=True)
    port = choose_port(port, address)
    log = ws.index_dir / "app.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "fiftyone.server.main", "--port", str(port), "--address", address]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"},
        )
    server = AppServer(f"http://{address}:{port}/datasets/{dataset.name}", process, log)
    try:
        _wait_until_serving(server, "127.0.0.1" if address in ("0.0.0.0", "") else address, port, echo, cap_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_serving(
    server: AppServer, host: str, port: int, echo: Callable[[str], None], cap_s: float
) -> None:
    """Poll the server's version endpoint while its process lives, saying how long it has been."""
    echo(f"starting the FiftyOne App on port {port} (a cold start can take a minute; its log: {server.log})")
    started = time.monotonic()
    next_notice = started + NOTICE_EVERY_S
    while True:
        if _answers(host, port):
            return
        if (code := server.process.poll()) is not None:
            raise CurateError(
                f"the FiftyOne App server exited with code {code} before serving: {_tail(server.log)} "
                f"(whole log: {server.log})"
            )
        now = time.monotonic()
        if now - started > cap_s:
            raise CurateError(
                f"the FiftyOne App server did not answer on port {port} within {cap_s:.0f} s: {_tail(server.log)} "
                f"(whole log: {server.log})"
            )
        if now >= next_notice:
            echo(f"  still starting ({now - started:.0f} s)...")
            next_notice = now + NOTICE_EVERY_S
        time.sleep(0.5)


def _answers(host: str, port: int) -> bool:
    """Whether a FiftyOne server answers its version query on host:port."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/fiftyone", timeout=2) as reply:
            return "version" in json.loads(reply.read())
    except (OSError, ValueError):
        return False


def _tail(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-LOG_LINES:]) or "(its log is empty)"

"""`curate app`: serve the FiftyOne App on the workspace's index dataset.

Kept apart from indexing: it only reads the dataset `curate index` wrote, and owns what serving
needs (a free port, usage tracking off, a start that is waited for as long as it makes progress).

The App's server is FiftyOne's own (`fiftyone.server.main`), run as a child process of this
command rather than through `fo.launch_app`: a URL ending in `/datasets/<name>` opens the dataset
without a session, while a remote session printed a port-forwarding banner, logged "Could not
connect session, trying again" every few seconds until its server came up, and gave that server a
fixed 60 s to bind, which a loaded 2-core machine missed twice at load ~9. Here the wait follows
the server's progress: it ends when the server answers, says every 15 s how long it has been and
the server's last log line, stops at once with the server's own last log lines if the child dies,
and gives up only when the server (with its children, e.g. the database it starts) has neither used
CPU nor written to its log for `STALL_S`: a slow start on a busy machine keeps going, a hung one
ends. What the server prints goes to `index/app.log`, not to the terminal.
"""

from __future__ import annotations

import json
import os
import signal
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

STALL_S = 120.0
"""Give up on a start after this long without progress (no CPU used by the server, no log written)."""
NOTICE_EVERY_S = 15.0
LOG_LINES = 5
"""Lines of the server's log an error quotes."""


@dataclass
class AppServer:
    """A running App server: its URL, its process, its log."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def wait(self) -> int | None:
        """Serve until the server exits (its exit code) or this process is told to stop (Ctrl-C or
        SIGTERM: None); the server never outlives the wait."""
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return self.process.wait()
        except KeyboardInterrupt:
            return None
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.stop()

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
    stall_s: float = STALL_S,
) -> AppServer:
    """Start the FiftyOne App's server on the workspace's dataset and return once it answers.

    A busy `port` is not waited on: the nearest free port above it is used, and the URL says which.
    Usage tracking is off in the server, which would otherwise report researchers' sessions to a
    third party. `stop()` ends it.

    Args:
        echo: Told what is happening while the server starts (the CLI prints it on stderr).
        stall_s: Give up when the server made no progress (CPU, log) for this many seconds.

    Raises:
        CurateError: when `curate index` has not run yet, the server exits, or it stalls before answering.
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
        host = "127.0.0.1" if address in ("0.0.0.0", "") else address
        wait_until_serving(server, host, port, echo, stall_s)
    except BaseException:
        server.stop()
        raise
    return server


def wait_until_serving(
    server: AppServer, host: str, port: int, echo: Callable[[str], None], stall_s: float = STALL_S
) -> None:
    """Poll the server's version endpoint while its process lives and makes progress, saying how it goes."""
    echo(f"starting the FiftyOne App on port {port} (a cold start can take a minute; its log: {server.log})")
    started = last_progress = time.monotonic()
    next_notice = started + NOTICE_EVERY_S
    progress = _progress(server)
    while True:
        if _answers(host, port):
            return
        if (code := server.process.poll()) is not None:
            raise CurateError(
                f"the FiftyOne App server exited with code {code} before serving: {_tail(server.log)} "
                f"(whole log: {server.log})"
            )
        now = time.monotonic()
        if (seen := _progress(server)) != progress:
            progress, last_progress = seen, now
        elif now - last_progress > stall_s:
            raise CurateError(
                f"the FiftyOne App server made no progress for {stall_s:.0f} s (no CPU used, nothing logged) "
                f"and does not answer on port {port}: {_tail(server.log)} (whole log: {server.log})"
            )
        if now >= next_notice:
            echo(f"  still starting ({now - started:.0f} s): {_tail(server.log, 1)}")
            next_notice = now + NOTICE_EVERY_S
        time.sleep(0.5)


def _progress(server: AppServer) -> tuple[float, int]:
    """CPU seconds the server and its children have used, and its log's size: what moves while it starts."""
    import psutil

    cpu = 0.0
    try:
        process = psutil.Process(server.process.pid)
        for each in [process, *process.children(recursive=True)]:
            times = each.cpu_times()
            cpu += times.user + times.system + times.children_user + times.children_system
    except psutil.Error:
        pass  # it just exited: the caller sees that from its exit code
    try:
        size = server.log.stat().st_size
    except OSError:
        size = 0
    return round(cpu, 2), size


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _answers(host: str, port: int) -> bool:
    """Whether a FiftyOne server answers its version query on host:port."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/fiftyone", timeout=2) as reply:
            return "version" in json.loads(reply.read())
    except (OSError, ValueError):
        return False


def _tail(log: Path, count: int = LOG_LINES) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "(its log is empty)"

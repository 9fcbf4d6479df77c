"""The Label Studio process: start it detached, learn the port it really bound, recognise it, stop it.

Label Studio moves to the next port by itself when the one it is given is taken by the time it
binds (its `_get_free_port`, after the database checks: seconds to minutes after `serve` found the
port free). Another server may then answer on the asked port, so where a server is comes from the
socket its process listens on, never from the port it was asked for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from curation.core.errors import CurateError

LISTEN = "0A"  # a socket's state in /proc/net/tcp


def is_healthy(url: str, timeout: float = 3.0) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child (started by this process, exited, not reaped) still answers kill(0)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def data_dir_arg(data_dir: Path) -> str:
    """The server's `--data-dir` argument: also how `stop` recognises the server it started."""
    return f"--data-dir={data_dir.resolve()}"


def is_our_server(pid: int | None, data_dir: Path) -> bool:
    """Whether `pid` is a live Label Studio started on this data dir (a recorded pid may since have
    been reused by an unrelated process, which `stop` must never kill)."""
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return data_dir_arg(data_dir).encode() in argv


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on, from /proc (Label Studio's server runs in that process)."""
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone
        return set()
    sockets = set()
    for fd in descriptors:
        try:
            link = os.readlink(fd)
        except OSError:  # closed while listed
            continue
        if link.startswith("socket:["):
            sockets.add(link.removeprefix("socket:[").removesuffix("]"))
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == LISTEN and fields[9] in sockets:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _log_tail(log: Path, lines: int = 15) -> str:
    if not log.exists():
        return "(no log)"
    return " | ".join(line.strip() for line in log.read_text(errors="replace").splitlines()[-lines:])


def start_server(
    data_dir: Path, port: int, log: Path, env: Mapping[str, str], timeout: float
) -> tuple[int, int]:
    """Start `label-studio` detached and wait until it answers; its process id and the port it bound.

    Detached (own session, output to `log`) so it survives the command that started it and a
    Ctrl-C in the user's terminal. `port` is only asked for: the process's own listening socket
    says where it is, and only that port's /health counts. Fails with the log's tail if the process
    dies or never answers.
    """
    executable = Path(sys.executable).parent / "label-studio"
    if not executable.exists():
        raise CurateError(f"label-studio is not installed next to {sys.executable}")
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(executable),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        data_dir_arg(data_dir),
        "--enable-legacy-api-token",
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CurateError(
                f"Label Studio exited with code {process.returncode} while starting: {_log_tail(log)}"
            )
        for bound in sorted(listening_ports(process.pid)):
            if is_healthy(f"http://127.0.0.1:{bound}"):
                return process.pid, bound
        time.sleep(1.0)
    terminate(process.pid)
    raise CurateError(
        f"Label Studio (asked for port {port}) did not answer within {timeout:.0f} s: {_log_tail(log)}"
    )


def terminate(pid: int, grace: float = 15.0) -> None:
    """Stop the server's whole process group (label-studio forks workers), SIGKILL after `grace`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # not our child: poll instead
            if not pid_alive(pid):
                return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

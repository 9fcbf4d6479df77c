"""The Label Studio process: start it detached, learn the port it really bound, recognise it, stop it.

One worker runs `label-studio start`: Django's development server, one process, the single-user
default. More workers run Label Studio as its Docker image does: the migrations (and the admin)
once, by `curation.review.labelstudio_wsgi`, then uWSGI (`deploy/uwsgi.ini` in Label Studio's
repository: a master, `processes` workers loading the app lazily, one thread each) with that many
workers. The image puts nginx in front to serve the built front-end (`/static/`, `/react-app/`,
`/label-studio-frontend/`, `/dm/`) from disk; here uWSGI's `static-map` does that job, so a page's
assets never take a Django worker. uWSGI comes as the `pyuwsgi` wheel (no compiler needed).

Label Studio moves to the next port by itself when the one it is given is taken by the time it
binds (its `_get_free_port`, after the database checks: seconds to minutes after `serve` found the
port free); uWSGI fails instead. Another server may then answer on the asked port, so where a server
is comes from the socket its process listens on, never from the port it was asked for. Either kind
runs in a process group of its own, which `terminate` empties.
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


DATA_DIR_VAR = "LABEL_STUDIO_BASE_DATA_DIR"


def data_dir_setting(data_dir: Path) -> str:
    """The server's data dir as its environment names it: also how `stop` recognises the server it started."""
    return f"{DATA_DIR_VAR}={data_dir.resolve()}"


def is_our_server(pid: int | None, data_dir: Path) -> bool:
    """Whether `pid` is a live Label Studio started on this data dir (a recorded pid may since have
    been reused by an unrelated process, which `stop` must never kill).

    Read from the process's environment, which both kinds of server are started with and neither
    rewrites (uWSGI takes no `--data-dir` argument)."""
    if not pid_alive(pid):
        return False
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return data_dir_setting(data_dir).encode() in environment


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


def _static_maps() -> list[str]:
    """uWSGI `static-map` arguments for Label Studio's built front-end, as its nginx config maps them.

    The folders are those of Label Studio's settings (STATIC_ROOT, REACT_APP_ROOT, EDITOR_ROOT,
    DM_ROOT), found from the installed package without importing Django here.
    """
    import label_studio

    package = Path(label_studio.__file__).parent
    dist = package.parent / "web" / "dist"
    folders = {
        "/static": package / "core" / "static_build",
        "/react-app": dist / "apps" / "labelstudio",
        "/label-studio-frontend": dist / "libs" / "editor",
        "/dm": dist / "libs" / "datamanager",
    }
    return [f"--static-map={url}={folder}" for url, folder in folders.items()]


def _command(port: int, workers: int, data_dir: Path) -> list[str]:
    """The server's command line: `label-studio start` for one worker, uWSGI for several."""
    bin_dir = Path(sys.executable).parent
    if workers == 1:
        executable = bin_dir / "label-studio"
        if not executable.exists():
            raise CurateError(f"label-studio is not installed next to {sys.executable}")
        return [
            str(executable),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            f"--data-dir={data_dir.resolve()}",
            "--enable-legacy-api-token",
        ]
    executable = bin_dir / "uwsgi"
    if not executable.exists():
        raise CurateError(f"uWSGI is not installed next to {sys.executable}: pip install pyuwsgi")
    return [
        str(executable),
        "--master",
        f"--http-socket=127.0.0.1:{port}",
        f"--processes={workers}",
        "--threads=1",
        "--module=curation.review.labelstudio_wsgi:application",
        "--lazy-apps",  # each worker loads the app itself: nothing (database connections) shared by fork
        "--need-app",
        "--die-on-term",
        "--enable-threads",
        "--thunder-lock",
        "--buffer-size=65535",
        "--post-buffering=4096",
        "--http-timeout=600",  # an export snapshot of a large chunk on a busy machine
        # HTTP/1.1 servers send Date (Django's development server does); a pull reads the server's clock there
        "--route-run=addheader:Date: ${httptime[]}",
        # uWSGI closes an HTTP socket after each answer but says nothing: clients (the SDK, browsers)
        # then reuse the closed connection and get "connection reset". Saying so makes them open anew.
        "--add-header=Connection: close",
        *_static_maps(),
        "--disable-logging",
        "--log-5xx",
        "--ignore-sigpipe",
        "--ignore-write-errors",
        "--disable-write-exception",
    ]


def _prepare(env: Mapping[str, str], log: Path, timeout: float) -> None:
    """Migrate and create the admin once, before any uWSGI worker starts (`label-studio start` does
    it in its own process); fails with the log's tail."""
    with log.open("ab") as out:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "curation.review.labelstudio_wsgi"],
                check=False,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise CurateError(
                f"Label Studio's migrations did not finish within {timeout:.0f} s: {_log_tail(log)}"
            ) from None
    if done.returncode:
        raise CurateError(f"Label Studio's migrations failed (code {done.returncode}): {_log_tail(log)}")


def start_server(
    data_dir: Path, port: int, log: Path, env: Mapping[str, str], timeout: float, workers: int = 1
) -> tuple[int, int]:
    """Start Label Studio detached with `workers` processes and wait until it answers; its process id
    (uWSGI's master for several workers) and the port it bound.

    Detached (own session, output to `log`) so it survives the command that started it and a
    Ctrl-C in the user's terminal. `port` is only asked for: the process's own listening socket
    says where it is, and only that port's /health counts. Fails with the log's tail if the process
    dies or never answers.
    """
    command = _command(port, workers, data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, DATA_DIR_VAR: str(data_dir.resolve())}
    deadline = time.monotonic() + timeout
    if workers > 1:
        _prepare(full_env, log, timeout)
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
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


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`: a server and every worker it forked."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone while listed
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def terminate(pid: int, grace: float = 15.0) -> None:
    """Stop the server's whole process group (its workers too) and wait until none of it is left;
    SIGKILL whatever still runs after `grace`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for deadline, sig in ((time.monotonic() + grace, signal.SIGKILL), (time.monotonic() + grace + 10, None)):
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
            except ChildProcessError:
                pass
            if not group_members(pid):
                return
            time.sleep(0.2)
        if sig is not None:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return

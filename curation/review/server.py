"""A local Label Studio server owned by a workspace: start it detached, find it again, stop it.

The server outlives the `curate review serve` command (annotators keep working after it returns),
so its URL, process id and credentials live in `review/server.json` (mode 0600). A generated admin
password and legacy API token are fixed at first start and reused on every restart, because Label
Studio keeps its users in the data dir and would otherwise refuse the new ones. On a shared machine
the credentials travel in the server's environment (a command line is readable by every account),
the data dir (its database holds the token) is owner-only, and sign-up is closed: the recorded
admin is the only login; annotators join through the organization's invite link (`invite_url`).

A team keeps Label Studio's data in PostgreSQL (`deploy/postgres.sh` prints the `DJANGO_DB` /
`POSTGRE_*` variables its settings read); the server inherits them from `serve`'s environment.
Which database a server used is recorded too: restarted without those variables, Label Studio
would quietly start over on an empty SQLite file in the data dir, so `serve` refuses instead.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from curation.core.errors import CurateError
from curation.core.ports import choose_port
from curation.core.workspace import Workspace, atomic_write_text

ADMIN_EMAIL = "curate@example.com"
START_TIMEOUT_S = 180.0
"""First start runs ~100 migrations: 40-60 s alone, several minutes on a busy 2-core machine."""


@dataclass
class ServerInfo:
    """Where a Label Studio server is and how to log in.

    `managed` servers were started by `serve` (pid set while running); others were recorded by
    `use_server` and are never started or stopped by us.
    """

    url: str
    email: str
    password: str
    token: str
    path: Path
    pid: int | None = None
    document_root: str = ""
    managed: bool = True
    database: str = ""  # "" = SQLite in the data dir, else `database_in`'s address of a managed server

    def to_json(self) -> str:
        payload = asdict(self)
        payload.pop("path")
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def data_dir_of(root: Path) -> Path:
    """Where `serve` keeps the Label Studio data of the workspace at `root` (its document root too)."""
    return root / "review" / "labelstudio-data"


def server_file(ws: Workspace) -> Path:
    return ws.review_dir / "server.json"


def read_server(ws: Workspace) -> ServerInfo | None:
    """The recorded server (running or not), or None if this workspace never had one."""
    path = server_file(ws)
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    return ServerInfo(path=path, **payload)


def write_server(ws: Workspace, info: ServerInfo) -> ServerInfo:
    """Record a server with owner-only permissions (it holds the admin password and token)."""
    info.path = server_file(ws)
    atomic_write_text(info.path, info.to_json(), secret=True)
    return info


def _settings_env(env: Mapping[str, str], name: str, default: str) -> str:
    """A setting as Label Studio's `get_env` reads it (LABEL_STUDIO_ and HEARTEX_ prefixes first)."""
    for key in (f"LABEL_STUDIO_{name}", f"HEARTEX_{name}", name):
        if key in env:
            return env[key]
    return default


def database_in(env: Mapping[str, str]) -> str:
    """Where a Label Studio started with `env` keeps its data, without the password.

    "" for its default, SQLite in the data dir; else e.g. `postgresql://labelstudio@127.0.0.1:5433/labelstudio`
    (`DJANGO_DB=default` means PostgreSQL in Label Studio's settings).
    """
    kind = _settings_env(env, "DJANGO_DB", "sqlite")
    if kind == "sqlite":
        return ""
    if kind not in ("default", "postgresql"):
        raise CurateError(f"DJANGO_DB={kind}: curate runs Label Studio on SQLite or PostgreSQL only")
    user, host, port, name = (
        _settings_env(env, f"POSTGRE_{key}", default)
        for key, default in (
            ("USER", "postgres"),
            ("HOST", "localhost"),
            ("PORT", "5432"),
            ("NAME", "postgres"),
        )
    )
    return f"postgresql://{user}@{host}:{port}/{name}"


def is_healthy(url: str, timeout: float = 3.0) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def _pid_alive(pid: int | None) -> bool:
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


def _data_dir_arg(data_dir: Path) -> str:
    """The server's `--data-dir` argument: also how `stop` recognises the server it started."""
    return f"--data-dir={data_dir.resolve()}"


def _is_our_server(pid: int | None, data_dir: Path) -> bool:
    """Whether `pid` is a live Label Studio started on this data dir (a recorded pid may since have
    been reused by an unrelated process, which `stop` must never kill)."""
    if not _pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _data_dir_arg(data_dir).encode() in argv


def _log_tail(log: Path, lines: int = 15) -> str:
    if not log.exists():
        return "(no log)"
    return " | ".join(line.strip() for line in log.read_text(errors="replace").splitlines()[-lines:])


def start_server(
    data_dir: Path,
    document_root: Path,
    port: int,
    log: Path,
    email: str,
    password: str,
    token: str,
    timeout: float = START_TIMEOUT_S,
) -> int:
    """Start `label-studio` detached and wait until /health answers; returns its process id.

    Detached (own session, output to `log`) so it survives the command that started it and a
    Ctrl-C in the user's terminal. Fails with the log's tail if the process dies or never answers.
    """
    executable = Path(sys.executable).parent / "label-studio"
    if not executable.exists():
        raise CurateError(f"label-studio is not installed next to {sys.executable}")
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LATEST_VERSION_CHECK": "false",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": email,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        # Label Studio's own switch for SQLite's write-ahead log: saving an annotation and picking
        # the next task stop waiting on each other (330 -> 190 ms per save measured), and readers
        # (pulls, the Data Manager) no longer block annotators. PostgreSQL ignores it.
        "AZURE_MOUNT_FIX": "true",
    }
    command = [
        str(executable),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        _data_dir_arg(data_dir),
        "--enable-legacy-api-token",
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CurateError(
                f"Label Studio exited with code {process.returncode} while starting: {_log_tail(log)}"
            )
        if is_healthy(url):
            return process.pid
        time.sleep(1.0)
    terminate(process.pid)
    raise CurateError(f"Label Studio did not answer on {url} within {timeout:.0f} s: {_log_tail(log)}")


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
            if not _pid_alive(pid):
                return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def serve(ws: Workspace, port: int | None = None, timeout: float = START_TIMEOUT_S) -> ServerInfo:
    """Start (or find) the workspace's Label Studio, serving the workspace's files to the labeling page.

    Idempotent: a recorded server that is alive and healthy is returned as is. Credentials of an
    earlier start are reused, since they are already stored in the data dir.

    Args:
        ws: the workspace; data dir under review/labelstudio-data, log in review/labelstudio.log.
        port: port on 127.0.0.1; default from config.review.port, the nearest free one above if
            that is taken (the CLI says so).
        timeout: seconds to wait for /health.
    """
    known = read_server(ws)
    if known and not known.managed:
        if not is_healthy(known.url):
            raise CurateError(f"Label Studio is not reachable at {known.url} (recorded in {known.path})")
        return known
    data_dir = data_dir_of(ws.root)
    if known and _is_our_server(known.pid, data_dir) and is_healthy(known.url):
        return known
    database = database_in(os.environ)
    if known and known.database != database:
        raise CurateError(
            f"this workspace's Label Studio keeps its data in {known.database or 'SQLite, in ' + str(data_dir)}, "
            f"but this environment points it at {database or 'SQLite'}: set the same DJANGO_DB/POSTGRE_* "
            "variables as at its first start (deploy/postgres.sh start DIR prints them)"
        )
    chosen = choose_port(port or ws.config.review.port)
    email = known.email if known else ADMIN_EMAIL
    password = known.password if known else secrets.token_urlsafe(12)
    token = known.token if known else secrets.token_hex(20)
    pid = start_server(
        data_dir,
        ws.root,
        chosen,
        ws.review_dir / "labelstudio.log",
        email,
        password,
        token,
        timeout=timeout,
    )
    url = f"http://127.0.0.1:{chosen}"
    info = ServerInfo(
        url=url,
        email=email,
        password=password,
        token=token,
        path=server_file(ws),
        pid=pid,
        document_root=str(ws.root),
        database=database,
    )
    return write_server(ws, info)


def use_server(ws: Workspace, url: str, token: str, document_root: Path | None = None) -> ServerInfo:
    """Record an existing server (a team's, or a test's) for this workspace, after checking it answers.

    Args:
        url: the server's base URL.
        token: an API token (legacy token auth must be enabled on the server).
        document_root: the server's LOCAL_FILES_DOCUMENT_ROOT; it must contain the workspace.
            Default: the workspace root.
    """
    url = url.rstrip("/")
    if not is_healthy(url):
        raise CurateError(f"Label Studio is not reachable at {url}")
    root = (document_root or ws.root).resolve()
    if root != ws.root and root not in ws.root.parents:
        raise CurateError(f"the workspace {ws.root} is not inside the server's document root {root}")
    info = ServerInfo(
        url=url,
        email="",
        password="",
        token=token,
        path=server_file(ws),
        document_root=str(root),
        managed=False,
    )
    return write_server(ws, info)


def invite_url(info: ServerInfo) -> str:
    """The sign-up link for annotators: each gets an account (and an API token) of their own.

    Sign-up without it is closed on servers `serve` starts; anyone holding the link can join, so
    share it like a password (Label Studio's `/api/invite/reset-token` changes it).
    """
    try:
        reply = requests.get(
            f"{info.url}/api/invite", headers={"Authorization": f"Token {info.token}"}, timeout=30
        )
    except requests.RequestException as exc:
        raise CurateError(f"Label Studio is not reachable at {info.url}: {exc}") from exc
    if reply.status_code != 200:
        raise CurateError(f"Label Studio refused the invite link ({reply.status_code}): {reply.text[:200]}")
    return info.url + reply.json()["invite_url"]


def stop(ws: Workspace) -> bool:
    """Stop the server `serve` started; keeps the credentials for the next start. False if none ran.

    A recorded pid that is no longer that server (it exited and the pid was reused) is left alone.
    """
    known = read_server(ws)
    if not known or not known.managed or not known.pid:
        return False
    ours = _is_our_server(known.pid, data_dir_of(ws.root))
    if ours:
        terminate(known.pid)
    known.pid = None
    write_server(ws, known)
    return ours

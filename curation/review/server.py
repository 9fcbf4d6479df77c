"""A workspace's Label Studio server: its own (started detached, found again, stopped) or a team's.

The server outlives the `curate review serve` command (annotators keep working after it returns),
so its URL, process id and credentials live in `review/server.json` (mode 0600). A generated admin
password and legacy API token are fixed at first start and reused on every restart, because Label
Studio keeps its users in the data dir and would otherwise refuse the new ones. On a shared machine
the credentials travel in the server's environment (a command line is readable by every account),
the data dir (its database holds every user's token) is owner-only, and sign-up is closed: the
recorded admin is the only login; annotators join through the organization's invite link (`invite_url`).

Any user of a Label Studio can read every file below its document root (`curation/review/media.py`),
so a server `serve` starts serves `<workspace>/media` alone, and a team's server recorded by
`use_server` must have a document root that holds none of this workspace's secrets. A workspace
only ever writes to its own server: `serve` records the port Label Studio really bound (it moves by
itself when the asked one is taken meanwhile) and names the server's organization after the
workspace (`workspace_marker`), which `check_identity` reads back before any write.

A team keeps Label Studio's data in PostgreSQL (`deploy/postgres.sh` prints the `DJANGO_DB` /
`POSTGRE_*` variables its settings read); the server inherits them from `serve`'s environment.
Which database a server used is recorded too: restarted without those variables, Label Studio
would quietly start over on an empty SQLite file in the data dir, so `serve` refuses instead.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from curation.core.errors import CurateError
from curation.core.ports import choose_port
from curation.core.workspace import Workspace, atomic_write_text
from curation.review.media import check_document_root, own_media, publish_existing
from curation.review.server_process import is_healthy, is_our_server, listening_ports, start_server, terminate

ADMIN_EMAIL = "curate@example.com"
START_TIMEOUT_S = 300.0
"""First start runs ~100 migrations: 40-60 s alone, several minutes on a busy 2-core machine; uWSGI's
workers then each load Label Studio (~30 s idle, 3 min at load 15 on 2 cores)."""


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
    media: str = ""  # this workspace's folder below document_root; "" = recorded before the media tree
    workers: int = 1  # processes of a managed server: 1 = `label-studio start`, more = uWSGI

    def to_json(self) -> str:
        payload = asdict(self)
        payload.pop("path")
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def data_dir_of(root: Path) -> Path:
    """Where `serve` keeps the Label Studio data of the workspace at `root`."""
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


def workspace_marker(ws: Workspace) -> str:
    """The title `serve` gives its server's organization: whose server it is, checked before any write.

    Keyed on the workspace id: a copy of the workspace given a new id (`cp -r`, then a fork) still
    holds the original's server.json, URL and token, and must not write into the original's server.
    """
    return f"curate workspace {ws.workspace_id}"


def _organization(info: ServerInfo) -> dict | None:
    """The organization the recorded token's user belongs to; None when the server refuses the token."""
    try:
        reply = requests.get(
            f"{info.url}/api/organizations/", headers={"Authorization": f"Token {info.token}"}, timeout=30
        )
    except requests.RequestException as exc:
        raise CurateError(f"Label Studio is not reachable at {info.url}: {exc}") from exc
    if reply.status_code in (401, 403):
        return None
    reply.raise_for_status()
    return reply.json()[0]


def check_identity(ws: Workspace, info: ServerInfo) -> None:
    """Refuse a recorded server of this workspace that is not the one `serve` started for it.

    Another workspace's server may answer on the recorded port (it took the port while this one
    was stopped), or a copied workspace may hold its original's record: writing there would put
    tasks into someone else's projects.
    """
    organization = _organization(info)
    marker = workspace_marker(ws)
    if organization is None or organization["title"] != marker:
        whose = "refuses this workspace's token" if organization is None else f"is {organization['title']!r}"
        raise CurateError(
            f"the Label Studio at {info.url} is not this workspace's (its organization {whose}, this "
            f"workspace's is {marker!r}): nothing was written; start its own with `curate review serve -w {ws.root}`"
        )


def _claim(ws: Workspace, info: ServerInfo) -> None:
    """Name a server this workspace started (checked by its process) after the workspace."""
    organization = _organization(info)
    if organization is None:
        raise CurateError(
            f"the Label Studio this workspace started at {info.url} refuses its token ({info.path})"
        )
    if organization["title"] != workspace_marker(ws):
        reply = requests.patch(
            f"{info.url}/api/organizations/{organization['id']}",
            json={"title": workspace_marker(ws)},
            headers={"Authorization": f"Token {info.token}"},
            timeout=30,
        )
        reply.raise_for_status()


def _quiet(line: str) -> None:
    """The default for `serve`'s messages: none."""


def serve(
    ws: Workspace,
    port: int | None = None,
    timeout: float = START_TIMEOUT_S,
    echo: Callable[[str], None] = _quiet,
) -> ServerInfo:
    """Start (or find) the workspace's Label Studio, serving the workspace's media folder alone.

    Idempotent: a recorded server that still runs is returned, with the port its process really
    listens on, unless it runs another number of workers than `[review] workers` asks for (1:
    `label-studio start`, Django's development server, for one user; more: Label Studio's production
    server, uWSGI, for a team; curation/review/server_process.py): it is then restarted. Credentials of an earlier start are reused, since they are already stored in the
    data dir. A server recorded before the media tree (its document root the workspace itself, so
    it served review/server.json and its own database to any user) is restarted on the media
    folder, with everything annotators may see published there, so the tasks pushed before find
    their images again (`echo` says so, and that push gives the projects storages there).

    Args:
        ws: the workspace; data dir under review/labelstudio-data, log in review/labelstudio.log.
        port: port on 127.0.0.1; default from config.review.port, the nearest free one above if
            that is taken (the CLI says so).
        timeout: seconds to wait for /health.
        echo: where a migration says what it did.
    """
    known = read_server(ws)
    if known and not known.managed:
        if not is_healthy(known.url):
            raise CurateError(f"Label Studio is not reachable at {known.url} (recorded in {known.path})")
        return known
    data_dir = data_dir_of(ws.root)
    media = own_media(ws.root)
    workers = ws.config.review.workers
    running = known is not None and is_our_server(known.pid, data_dir)
    if known and running and known.media == str(media) and known.workers == workers:
        bound = listening_ports(known.pid or 0)
        url = f"http://127.0.0.1:{min(bound)}" if bound else ""
        if url and is_healthy(url):
            known.url = url  # where it listens, whatever was recorded
            _claim(ws, known)
            return write_server(ws, known)
    database = database_in(os.environ)
    if known and known.database != database:
        raise CurateError(
            f"this workspace's Label Studio keeps its data in {known.database or 'SQLite, in ' + str(data_dir)}, "
            f"but this environment points it at {database or 'SQLite'}: set the same DJANGO_DB/POSTGRE_* "
            "variables as at its first start (deploy/postgres.sh start DIR prints them)"
        )
    if known and running:  # it serves the whole workspace (recorded before the media tree), runs another
        terminate(known.pid or 0)  # number of workers than the config asks for, or hangs
    media.mkdir(exist_ok=True)
    published = publish_existing(ws.root, media) if known and known.media != str(media) else None
    email = known.email if known else ADMIN_EMAIL
    password = known.password if known else secrets.token_urlsafe(12)
    token = known.token if known else secrets.token_hex(20)
    env = {
        "LATEST_VERSION_CHECK": "false",
        # prefixed: Label Studio reads LABEL_STUDIO_<name> before <name>, so nothing inherited overrides them
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(media),
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
    chosen = choose_port(port or ws.config.review.port)
    pid, bound = start_server(data_dir, chosen, ws.review_dir / "labelstudio.log", env, timeout, workers)
    info = ServerInfo(
        url=f"http://127.0.0.1:{bound}",
        email=email,
        password=password,
        token=token,
        path=server_file(ws),
        pid=pid,
        document_root=str(media),
        database=database,
        media=str(media),
        workers=workers,
    )
    _claim(ws, info)
    write_server(ws, info)
    if published is not None:
        echo(
            f"review: Label Studio now serves {media} alone (it served the whole workspace, credentials "
            f"included); {published} images published there. Run `curate review push` (and `curate study "
            "create` again for each study) to move the projects' storages there: until then tasks pushed "
            "before show no image"
        )
    return info


def use_server(ws: Workspace, url: str, token: str, document_root: Path | None = None) -> ServerInfo:
    """Record an existing server (a team's, or a test's) for this workspace, after checking it answers.

    Args:
        url: the server's base URL.
        token: an API token (legacy token auth must be enabled on the server).
        document_root: the server's LOCAL_FILES_DOCUMENT_ROOT: a folder holding only media, never
            this workspace's root or a folder above it. The workspace publishes into
            `<document_root>/<workspace id>/`, its own subtree.
    """
    url = url.rstrip("/")
    if not is_healthy(url):
        raise CurateError(f"Label Studio is not reachable at {url}")
    if document_root is None:
        raise CurateError(
            f"pass --document-root: the LOCAL_FILES_DOCUMENT_ROOT of {url}, a folder holding only media"
        )
    root = document_root.resolve()
    if not root.is_dir():
        raise CurateError(f"the document root {root} is not a folder on this machine")
    check_document_root(ws.root, root)
    media = root / ws.workspace_id
    media.mkdir(exist_ok=True)
    info = ServerInfo(
        url=url,
        email="",
        password="",
        token=token,
        path=server_file(ws),
        document_root=str(root),
        managed=False,
        media=str(media),
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
    ours = is_our_server(known.pid, data_dir_of(ws.root))
    if ours:
        terminate(known.pid)
    known.pid = None
    write_server(ws, known)
    return ours

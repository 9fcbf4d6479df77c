"""Label Studio over HTTP: connect to a server, make its requests, read tasks back as export snapshots.

Every request goes through `Connection.call`, which retries a dropped connection and then fails
naming the server and the step, so push and pull (both idempotent) can simply be re-run. Tasks are
read back as Label Studio's export snapshots, an id range at a time, by `pull_chunks` (pull reads
annotations so, push the keys of what a project holds); images are never base64-encoded: tasks point at
`/data/local-files/?d=...` (`media_url`) in the workspace's folder of the media tree, below the
server's document root, and a workspace connects only to a server recorded for it and, when it is
its own, only after the server has shown it is (`check_identity`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import requests

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.workspace import Workspace
from curation.review.media import publish
from curation.review.pull_chunks import task_chunks
from curation.review.server import check_identity, data_dir_of, read_server

DM_COLUMNS = (ds.REVIEW_DECISION, ds.REVIEW_QUALITY, ds.REVIEW_AGREEMENT)  # task data written by pull
RETRIES = 3
KEY_CHUNK = 20_000  # tasks per snapshot when only their keys are wanted
T = TypeVar("T")


@dataclass
class Connection:
    """A reachable Label Studio: its URL, token, document root, the workspace's media folder below it,
    and an SDK client."""

    url: str
    token: str
    document_root: Path
    media_root: Path
    workspace_root: Path
    data_dir: Path | None = None  # the server's data dir, for a server this workspace started

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    @cached_property
    def client(self) -> Any:
        from label_studio_sdk.client import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token, timeout=120)

    def call(self, what: str, fn: Callable[[], T], before_retry: Callable[[], None] | None = None) -> T:
        """Run one request, retrying a dropped connection, then fail naming the server and the step.

        A server restarting mid-push answers again within seconds; beyond that the user re-runs the
        command, which is safe because push and pull are idempotent. `before_retry` runs after the
        back-off, for requests whose effect may have landed although the answer was lost.
        """
        import httpx

        for attempt in range(RETRIES + 1):
            try:
                return fn()
            except (requests.ConnectionError, requests.Timeout, httpx.TransportError) as exc:
                if attempt == RETRIES:
                    raise CurateError(
                        f"Label Studio at {self.url} stopped answering during {what} ({type(exc).__name__}); "
                        "check it with `curate review serve` and re-run (nothing is duplicated)"
                    ) from exc
                time.sleep(2.0 * 2**attempt)
                if before_retry is not None:
                    before_retry()
        raise AssertionError("unreachable")

    def check_token(self, status_code: int) -> None:
        """A refused token is the user's to fix, not a retry's."""
        if status_code in (401, 403):
            raise CurateError(f"Label Studio at {self.url} refused the API token ({status_code})")

    def get_json(self, path: str, what: str, **params: Any) -> Any:
        def fetch() -> Any:
            response = requests.get(f"{self.url}{path}", params=params, headers=self.headers, timeout=300)
            self.check_token(response.status_code)
            response.raise_for_status()
            return response.content

        return json.loads(self.call(what, fetch))

    def project_exists(self, project_id: int) -> bool:
        """Whether a recorded project is still on the server (one deleted there is made again by the caller)."""
        return self.project(project_id) is not None

    def project(self, project_id: int) -> dict[str, Any] | None:
        """The project's record (task counts included), or None when it is gone from the server."""

        def fetch() -> requests.Response:
            return requests.get(f"{self.url}/api/projects/{project_id}", headers=self.headers, timeout=30)

        response = self.call("project lookup", fetch)
        self.check_token(response.status_code)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def server_time(self) -> datetime:
        """The server's clock (its HTTP Date header): task `updated_at` times are on it, not on ours."""
        response = self.call("clock", lambda: requests.get(f"{self.url}/health", timeout=30))
        return parsedate_to_datetime(response.headers["Date"])

    def send_json(self, method: str, path: str, what: str, body: dict[str, Any] | None = None) -> Any:
        """One POST/PATCH/DELETE with a JSON body; the decoded answer (None when it has none)."""

        def send() -> bytes:
            response = requests.request(
                method, f"{self.url}{path}", json=body, headers=self.headers, timeout=600
            )
            self.check_token(response.status_code)
            if not (method == "delete" and response.status_code == 404):  # already gone
                response.raise_for_status()
            return response.content

        content = self.call(what, send)
        return json.loads(content) if content else None

    def export_tasks(self, project_id: int, gone: str) -> bytes:
        """Every task of a project with its annotations, as Label Studio's JSON export.

        Args:
            project_id: The project.
            gone: The error to show when the project no longer exists on the server.
        """

        def fetch() -> bytes:
            response = requests.get(
                f"{self.url}/api/projects/{project_id}/export",
                headers=self.headers,
                timeout=600,
                params={"exportType": "JSON", "download_all_tasks": "true"},
            )
            if response.status_code == 404:
                raise CurateError(gone)
            self.check_token(response.status_code)
            response.raise_for_status()
            return response.content

        return self.call("export", fetch)

    def task_keys(self, project_id: int, key: str) -> set[str]:
        """The `key` values of the project's tasks: the server is the truth, so an interrupted push is seen.

        Read as export snapshots, like a pull: 100K tasks take ~2.8 min on SQLite, as the task API
        does, but the task API took 7.7 min on PostgreSQL (it queries per task). A push reads this
        only when its record of what it imported disagrees with the server.
        """
        chunks = task_chunks(self, project_id, KEY_CHUNK)
        return {t["data"][key] for tasks, _ in chunks for t in tasks if key in t["data"]}

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]], key: str) -> list[str]:
        """Import one batch and return its `key`s; after a dropped connection, re-import only what the
        server does not hold.

        The import may have been committed even though its answer was lost, so a blind retry could
        duplicate tasks: the server's tasks, identified by their `key` field, decide what is still missing.
        """
        pending = tasks

        def send() -> None:
            if pending:
                self.client.projects.import_tasks(id=project_id, request=pending)

        def drop_imported() -> None:
            nonlocal pending
            present = self.task_keys(project_id, key)
            pending = [t for t in pending if t["data"][key] not in present]

        self.call("task import", send, before_retry=drop_imported)
        return [t["data"][key] for t in tasks]

    def show_reviews(
        self, project_id: int, tasks: list[dict[str, Any]], reviews: dict[str, dict[str, Any]]
    ) -> None:
        """Copy each task's decision, quality and agreement into its data: Data Manager columns.

        The community edition has no column for an annotation's choice or rating. Its "Add Or
        Modify Data Field" action sets one value on many tasks in one request without touching their
        update time (the next pull does not read them again), so tasks are grouped by value: a chunk
        costs a handful of requests. Only values that differ from the task's data are sent: on
        SQLite the server rewrites each task's data in Python (~0.3 ms a task and column), so
        agreement is written only where two or more annotators voted (one vote agrees with itself).
        """
        groups: dict[tuple[str, Any], list[int]] = {}
        for task in tasks:
            review = reviews.get(task["data"].get(ds.CANDIDATE_ID, ""))
            for name in DM_COLUMNS if review is not None else ():
                value = review[name]
                if name == ds.REVIEW_AGREEMENT and (review[ds.REVIEW_ANNOTATORS] or 0) < 2:
                    value = None
                value = "" if value is None else value
                if task["data"].get(name, "") != value:
                    groups.setdefault((name, value), []).append(task["id"])
        for (name, value), ids in groups.items():
            body = {
                "selectedItems": {"all": False, "included": ids},
                "value_name": name,
                "value_type": "String" if isinstance(value, str) else "Number",
                "value": value,
            }

            self.send_json(
                "post",
                f"/api/dm/actions?id=add_data_field&project={project_id}",
                "data manager columns",
                body,
            )


def connect(ws: Workspace, url: str | None = None, token: str | None = None) -> Connection:
    """The server recorded in review/server.json (an explicit `url`, else review.url in curate.toml,
    must be that one), checked to answer and, when `serve` started it, to be this workspace's own.

    A server is recorded before use (`curate review serve`, or `serve --url --token --document-root`)
    because its document root decides where the workspace publishes what annotators see.
    """
    known = read_server(ws)
    wanted = (url or ws.config.review.url or "").rstrip("/")
    if wanted and (known is None or known.url != wanted):
        if not token:
            raise CurateError(f"a token is needed for {wanted}: pass --token or set LABEL_STUDIO_TOKEN")
        _check_reachable(wanted, ws)
        raise CurateError(
            f"{wanted} is not recorded for {ws.root}: record it with `curate review serve --url {wanted} --token "
            f"TOKEN --document-root DIR -w {ws.root}` (DIR: its LOCAL_FILES_DOCUMENT_ROOT, a folder holding only media)"
        )
    if known is None:
        url = f"http://127.0.0.1:{ws.config.review.port}"
        raise CurateError(
            f"Label Studio is not reachable at {url}: start it with `curate review serve -w {ws.root}`"
        )
    _check_reachable(known.url, ws)
    if not known.media:
        raise CurateError(
            f"{known.url} was recorded with the document root {known.document_root or ws.root}, which serves this "
            "workspace's credentials to every user of the server: "
            + (
                f"run `curate review serve -w {ws.root}` once to restart it on the media folder alone"
                if known.managed
                else "restart it with LOCAL_FILES_DOCUMENT_ROOT on a folder holding only media and record it "
                "again with `curate review serve --url URL --token TOKEN --document-root DIR`"
            )
        )
    if known.managed:
        check_identity(ws, known)
    return Connection(
        known.url,
        token or known.token,
        Path(known.document_root),
        Path(known.media),
        ws.root,
        data_dir_of(ws.root) if known.managed else None,
    )


def _check_reachable(url: str, ws: Workspace) -> None:
    try:
        requests.get(f"{url}/health", timeout=5).raise_for_status()
    except requests.RequestException:
        raise CurateError(
            f"Label Studio is not reachable at {url}: start it with `curate review serve -w {ws.root}` "
            "or pass --url/--token of a running server"
        ) from None


def media_folder(conn: Connection, folder: Path) -> Path:
    """A workspace folder's place in the media tree, made if missing: what a project's storage names."""
    place = conn.media_root / folder.relative_to(conn.workspace_root)
    place.mkdir(parents=True, exist_ok=True)
    return place


def media_url(conn: Connection, path: Path) -> str:
    """Publish a file annotators review into the media tree; the URL Label Studio serves it at."""
    target = publish(conn.workspace_root, conn.media_root, path)
    return f"/data/local-files/?d={quote(target.relative_to(conn.document_root).as_posix())}"

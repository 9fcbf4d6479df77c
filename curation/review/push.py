"""Human review in Label Studio: push candidates as tasks, pull annotations back into FiftyOne.

Every store joins on `candidate_id`: a task carries it in its data, so pushing again skips what the
project already holds (also after a push that died mid-way) and pulling writes onto the samples
with that id. Images are never copied or base64-encoded: tasks point at `/data/local-files/?d=...`
through local-files storages on the candidates/ and concepts/ folders. Raw exports are kept under
review/pulls/ (gzipped, only what changed since the previous pull) so a decision can always be traced back
to what Label Studio said at the time.
"""

from __future__ import annotations

import html
import json
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import requests

from curation.concepts.references import cover_cutout
from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.progress import ProgressFn, no_progress
from curation.core.thumbnails import candidate_thumb, thumbnail, thumbs_dir
from curation.core.workspace import Workspace, atomic_write_json, atomic_write_text
from curation.review.calibration import ScoreCalibration, load_rules, random_weights, rule_for
from curation.review.server import ServerInfo, data_dir_of, read_server, serve, stop, use_server

__all__ = [
    "ServerInfo",
    "connect",
    "push",
    "serve",
    "stop",
    "use_server",
]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "review_ui_config"
# control names in review_ui_config/review.xml: the export's `from_name`s
DECISION, QUALITY, REASONS, CAPTION_BOX, IMAGE = "decision", "quality", "reasons", "caption_fixed", "image"
THUMB = "thumb"  # the Data Manager's image column
DM_COLUMNS = (ds.REVIEW_DECISION, ds.REVIEW_QUALITY, ds.REVIEW_AGREEMENT)  # task data written by pull
Order = Literal["uncertain", "score", "random", "view"]
ORDERS: tuple[str, ...] = get_args(Order)
RETRIES = 3
PULL_TITLE = "curate pull (temporary)"  # the views and export snapshots a pull makes and deletes
KEY_CHUNK = 20_000  # tasks per snapshot when only their keys are wanted
SNAPSHOT_WAIT_S = 600.0  # one chunk's export; a server whose export workers are down never finishes it
T = TypeVar("T")


@dataclass
class Connection:
    """A reachable Label Studio: its URL, token, document root and an SDK client."""

    url: str
    token: str
    document_root: Path
    workspace_root: Path

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

    def task_chunks(
        self, project_id: int, chunk: int, updated_after: datetime | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], int]]:
        """The project's tasks with their annotations, a chunk of ids at a time, each with how many remain.

        Each chunk is one of Label Studio's export snapshots, restricted by a temporary Data Manager
        view to an id range (and, given `updated_after`, to the tasks touched since: saving or deleting
        an annotation stamps its task). Snapshots serialize a task for about a third of what the task
        API costs, and the next one is made while the caller works on this one, so server and client
        run side by side. Id ranges, not page numbers, split the work: a task deleted meanwhile cannot
        push another out of sight. The view and the snapshot are deleted as soon as the chunk is read;
        ones left by a killed pull are deleted by the next.
        """
        self._drop_pull_leftovers(project_id)
        changed: list[dict[str, Any]] = []
        if updated_after is not None:
            stamp = updated_after.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            changed.append(
                {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": stamp}
            )
        first, total = self._first_task(project_id, changed, "tasks:id")
        if not total:
            return
        last, _ = self._first_task(project_id, changed, "-tasks:id")
        parts = -(-total // chunk)
        bounds = [first + (last + 1 - first) * k // parts for k in range(parts)] + [last + 1]
        done = 0
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._snapshot, project_id, changed, bounds[0], bounds[1])
            for k in range(parts):
                tasks = pending.result()
                if k + 1 < parts:
                    pending = pool.submit(self._snapshot, project_id, changed, bounds[k + 1], bounds[k + 2])
                if tasks:
                    yield tasks, max(total - done, len(tasks))
                done += len(tasks)

    def _first_task(self, project_id: int, filters: list[dict[str, Any]], ordering: str) -> tuple[int, int]:
        """The first task id in `ordering` among those matching `filters`, and how many match."""
        payload = self.get_json(
            "/api/tasks/",
            "task pull",
            project=project_id,
            fields="task_only",
            page=1,
            page_size=1,
            query=json.dumps({"filters": {"conjunction": "and", "items": filters}, "ordering": [ordering]}),
        )
        return (payload["tasks"][0]["id"] if payload["tasks"] else 0), payload["total"]

    def _snapshot(self, project_id: int, filters: list[dict[str, Any]], low: int, high: int) -> list[dict[str, Any]]:
        """The tasks with ids in [low, high) matching `filters`, through a temporary view and export snapshot."""
        in_range = [
            {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": low - 1},
            {"filter": "filter:tasks:id", "operator": "less", "type": "Number", "value": high},
        ]
        view = self.send_json(
            "post",
            "/api/dm/views/",
            "task pull",
            {
                "project": project_id,
                "data": {"title": PULL_TITLE, "filters": {"conjunction": "and", "items": in_range + filters}},
            },
        )
        try:
            export = self.send_json(
                "post",
                f"/api/projects/{project_id}/exports/",
                "task pull",
                {
                    "title": PULL_TITLE,
                    "task_filter_options": {"view": view["id"]},
                    "serialization_options": {
                        "drafts": {"only_id": True},
                        "predictions": {"only_id": True},
                        "annotations__completed_by": {"only_id": True},
                        "include_annotation_history": False,
                    },
                },
            )
            try:
                export = self._finished(project_id, export, f"tasks {low}-{high - 1}")
                return self.get_json(
                    f"/api/projects/{project_id}/exports/{export['id']}/download", "task pull", exportType="JSON"
                )
            finally:
                self.send_json("delete", f"/api/projects/{project_id}/exports/{export['id']}", "task pull")
                self._drop_snapshot_file(project_id, export.get("md5") or "")
        finally:
            self.send_json("delete", f"/api/dm/views/{view['id']}/", "task pull")

    def _finished(self, project_id: int, export: dict[str, Any], what: str) -> dict[str, Any]:
        """The snapshot once Label Studio has written it: at once without background workers, else polled."""
        deadline = time.monotonic() + SNAPSHOT_WAIT_S
        while export["status"] not in ("completed", "failed"):
            if time.monotonic() > deadline:
                raise CurateError(
                    f"Label Studio at {self.url} has not exported {what} after {SNAPSHOT_WAIT_S:.0f} s: "
                    "are its background workers running? Re-run the pull"
                )
            time.sleep(0.5)
            export = self.get_json(f"/api/projects/{project_id}/exports/{export['id']}", "task pull")
        if export["status"] == "failed":
            raise CurateError(f"Label Studio at {self.url} failed to export {what}; re-run the pull")
        return export

    def _drop_snapshot_file(self, project_id: int, md5: str) -> None:
        """Delete a deleted snapshot's file, where this machine can: Label Studio 1.23 keeps it.

        Deleting an export removes its record but never its file (the feature flag that would is
        fixed off), so every pull would leave a copy of what it read in the server's media/export.
        A server `curate review serve` runs from the document root keeps them in its data dir,
        named project-<id>-at-<minute>-<md5[:8]>.json; on a server elsewhere they stay.
        """
        folder = data_dir_of(self.document_root) / "media" / "export" / str(project_id)
        if md5 and os.access(folder, os.W_OK):
            for path in folder.glob(f"project-{project_id}-at-*-{md5[:8]}*.json"):
                path.unlink(missing_ok=True)

    def _drop_pull_leftovers(self, project_id: int) -> None:
        """Delete the temporary views and snapshots of a pull that was killed before it could."""
        for view in self.get_json("/api/dm/views/", "task pull", project=project_id):
            if view.get("data", {}).get("title") == PULL_TITLE:
                self.send_json("delete", f"/api/dm/views/{view['id']}/", "task pull")
        for export in self.get_json(f"/api/projects/{project_id}/exports/", "task pull"):
            if export.get("title") == PULL_TITLE:
                self.send_json("delete", f"/api/projects/{project_id}/exports/{export['id']}", "task pull")
                self._drop_snapshot_file(project_id, export.get("md5") or "")

    def send_json(self, method: str, path: str, what: str, body: dict[str, Any] | None = None) -> Any:
        """One POST/PATCH/DELETE with a JSON body; the decoded answer (None when it has none)."""

        def send() -> bytes:
            response = requests.request(method, f"{self.url}{path}", json=body, headers=self.headers, timeout=600)
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
        chunks = self.task_chunks(project_id, KEY_CHUNK)
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
                "post", f"/api/dm/actions?id=add_data_field&project={project_id}", "data manager columns", body
            )


def connect(ws: Workspace, url: str | None = None, token: str | None = None) -> Connection:
    """The explicit server if given (argument, else review.url in curate.toml), else the one recorded
    in review/server.json; checked to answer."""
    known = read_server(ws)
    url = url or ws.config.review.url or None
    if url:
        if not token and known and known.url == url.rstrip("/"):
            token = known.token
        if not token:
            raise CurateError(f"a token is needed for {url}: pass --token or set LABEL_STUDIO_TOKEN")
        root = Path(known.document_root) if known and known.url == url.rstrip("/") else ws.root
        conn = Connection(url.rstrip("/"), token, root, ws.root)
    elif known:
        conn = Connection(known.url, token or known.token, Path(known.document_root or ws.root), ws.root)
    else:
        url = f"http://127.0.0.1:{ws.config.review.port}"
        raise CurateError(
            f"Label Studio is not reachable at {url}: start it with `curate review serve -w {ws.root}`"
        )
    try:
        requests.get(f"{conn.url}/health", timeout=5).raise_for_status()
    except requests.RequestException:
        raise CurateError(
            f"Label Studio is not reachable at {conn.url}: start it with `curate review serve -w {ws.root}` "
            "or pass --url/--token of a running server"
        ) from None
    return conn


# -- project -----------------------------------------------------------------------------------
def project_file(ws: Workspace) -> Path:
    return ws.review_dir / "project.json"


def project_marker(ws: Workspace) -> str:
    """The project description that finds the workspace's project when project.json was lost.

    Keyed on the workspace id, not the folder: same-named workspaces never adopt each other's
    project, and a renamed one still finds its own.
    """
    return f"curate workspace: {ws.workspace_id}"


@lru_cache(maxsize=4096)
def _real_folder(folder: Path) -> Path:
    """A folder with its links resolved, once: a push names 100K images in a handful of folders."""
    return folder.resolve()


def _local_url(conn: Connection, path: Path) -> str:
    try:
        relative = (_real_folder(Path(path).absolute().parent) / Path(path).name).relative_to(conn.document_root)
    except ValueError:
        raise CurateError(f"{path} is outside Label Studio's document root {conn.document_root}") from None
    return f"/data/local-files/?d={relative.as_posix()}"


def ensure_project(ws: Workspace, conn: Connection, overlap: int | None = None) -> int:
    """The workspace's project on this server, created once (with its storages) and reused after."""
    from label_studio_sdk.core.api_error import ApiError

    path = project_file(ws)
    recorded = json.loads(path.read_text()) if path.exists() else {}
    project_id = recorded.get("project_id") if recorded.get("url") == conn.url else None
    if project_id is not None and not conn.project_exists(project_id):
        project_id = None  # deleted on the server: create it again
    config = ws.config.review
    client = conn.client
    marker = project_marker(ws)
    if project_id is None:  # a push killed before project.json was written left its project behind
        found = conn.call("project listing", lambda: [p.id for p in client.projects.list() if p.description == marker])
        project_id = min(found) if found else None
        if project_id is not None:
            atomic_write_json(path, {"url": conn.url, "project_id": project_id})
    if project_id is None:
        xml_path = CONFIG_DIR / config.label_config
        if not xml_path.exists():
            raise CurateError(f"no labeling config {xml_path} (review.label_config in curate.toml)")
        try:
            project = conn.call(
                "project creation",
                lambda: client.projects.create(
                    title=config.project_title or f"curate {ws.name}",
                    description=marker,
                    label_config=xml_path.read_text(),
                    maximum_annotations=overlap or 1,
                    show_collab_predictions=False,
                ),
            )
        except ApiError as exc:
            raise CurateError(f"Label Studio rejected the project ({xml_path.name}): {exc.body}") from exc
        project_id = project.id
        _data_manager_tab(conn, project_id)
        atomic_write_json(path, {"url": conn.url, "project_id": project_id})
    elif overlap:
        conn.call(
            "project update", lambda: client.projects.update(id=project_id, maximum_annotations=overlap)
        )
    storages = conn.call("storage listing", lambda: client.import_storage.local.list(project=project_id))
    have = {Path(s.path) for s in storages}
    thumbs_dir(ws).mkdir(parents=True, exist_ok=True)
    for folder in (ws.candidates_dir, ws.concepts_dir, thumbs_dir(ws)):
        if folder.exists() and folder.resolve() not in have:
            conn.call(
                "storage creation",
                lambda f=folder: client.import_storage.local.create(
                    project=project_id, path=str(f.resolve()), use_blob_urls=True, title=f.name
                ),
            )
    return project_id


def _data_manager_tab(conn: Connection, project_id: int) -> None:
    """The project's first Data Manager tab: thumbnails and caption, without full images or raw HTML.

    Without it the task list loads every full-size candidate as a 50 px cell and prints the
    reference strip and score table as HTML source; the raw annotation JSON column is hidden too,
    since pull writes the decision, quality and agreement as columns of their own (`show_reviews`).
    """
    hidden = [f"tasks:data.{key}" for key in (IMAGE, "refs", "refs_html", "scores", ds.CONCEPTS)] + [
        f"tasks:{column}"
        for column in (
            "inner_id", "cancelled_annotations", "total_predictions", "annotations_ids", "predictions_score",
            "predictions_model_versions", "predictions_results", "annotations_results", "file_upload", "storage_filename",
            "created_at", "updated_at", "updated_by", "avg_lead_time", "draft_exists", "comment_count",
            "unresolved_comment_count", "last_comment_updated_at", "total_annotations",
        )
    ]  # fmt: skip
    body = {
        "project": project_id,
        "data": {
            "title": "review",
            "type": "list",
            "target": "tasks",
            "hiddenColumns": {"explore": hidden, "labeling": hidden},
            "filters": {"conjunction": "and", "items": []},
        },
    }

    def create() -> None:
        response = requests.post(f"{conn.url}/api/dm/views/", json=body, headers=conn.headers, timeout=30)
        response.raise_for_status()

    conn.call("data manager tab", create)


# -- push --------------------------------------------------------------------------------------
@dataclass
class PushReport:
    project_id: int
    url: str
    in_view: int
    already: int
    pushed: int
    held: int = 0

    def summary(self) -> str:
        held = f", {self.held} held back by triage (view `{ds.VIEW_TRIAGED_OUT}`)" if self.held else ""
        return (
            f"review push: {self.pushed} new tasks ({self.already} already in project {self.project_id}, "
            f"{self.in_view} in view{held}) at {self.url}/projects/{self.project_id}"
        )


def _score_fields(view: Any) -> list[str]:
    """Numeric machine scores to show and order by (clip_t first); review fields excluded."""
    from curation.review.calibration import numeric_scores

    return numeric_scores(view)


def _refs_html(refs: list[dict[str, str]]) -> str:
    """One row of fixed-size reference photos: five concepts fit the left column without wrapping."""
    cells = "".join(
        f'<figure style="margin:0;width:60px;text-align:center"><img src="{html.escape(r["thumb"])}" '
        f'style="width:60px;height:60px;object-fit:contain"/><figcaption style="font-size:11px;'
        f'overflow:hidden;white-space:nowrap;text-overflow:ellipsis">{html.escape(r["name"])}</figcaption></figure>'
        for r in refs
    )
    return f'<div class="refs" style="display:flex;flex-wrap:nowrap;gap:6px">{cells}</div>'


def _scores_html(shown: dict[str, float], random: set[str], suggestion: str | None) -> str:
    """Each score labelled with its name, its direction and whether its weights were random."""
    from curation.review.calibration import higher_is_worse

    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{value:.3g}</td>"
        f"<td>{'lower is better' if higher_is_worse(name) else 'higher is better'}</td>"
        f"<td>{'random weights: meaningless' if name in random else ''}</td></tr>"
        for name, value in shown.items()
    )
    table = f'<table class="scores" style="font-size:11px;line-height:1.2">{rows}</table>' if rows else "(no machine scores)"
    hint = f'<div style="font-size:11px">machine hint: {html.escape(suggestion)}</div>' if suggestion else ""
    return f"{hint}{table}"


def _order(rows: list[dict[str, Any]], order: Order, key: str | None) -> list[dict[str, Any]]:
    """Most informative first: Label Studio hands out tasks in import order."""
    if order == "random":
        return random.Random(0).sample(rows, len(rows))
    if order == "view" or key is None:
        return rows
    scored = [r for r in rows if r.get(key) is not None]
    rest = [r for r in rows if r.get(key) is None]
    if order == "score":
        return sorted(scored, key=lambda r: -r[key]) + rest
    middle = statistics.median(r[key] for r in scored) if scored else 0.0
    return sorted(scored, key=lambda r: abs(r[key] - middle)) + rest


def push(
    ws: Workspace,
    view: str = "unreviewed",
    url: str | None = None,
    token: str | None = None,
    order: Order = "uncertain",
    overlap: int | None = None,
    triage: bool = False,
    progress: ProgressFn = no_progress,
) -> PushReport:
    """Push the candidates of a saved FiftyOne view as tasks; only those not yet in the project.

    Args:
        view: saved view name (the index step saves `unreviewed`).
        url, token: an existing server; default the one `curate review serve` recorded.
        order: task order: `uncertain` (machine score nearest the median first), `score` (best
            first), `random` (seeded), `view` (as stored).
        overlap: annotators per task (the project's maximum_annotations).
        triage: hold back the candidates `curate calibrate`'s rule is confident people would reject;
            they get a `triage` field and the `triaged_out` view, nothing is deleted, and a push
            without triage sends them (clearing the field).
    """
    conn = connect(ws, url, token)
    dataset = ds.open_dataset(ws)
    if not dataset.has_saved_view(view):
        raise CurateError(
            f"no saved view {view!r} in dataset {dataset.name} (have: {dataset.list_saved_views()})"
        )
    samples = dataset.load_saved_view(view)
    project_id = ensure_project(ws, conn, overlap)
    scores = _score_fields(samples)
    fields = [ds.CANDIDATE_ID, "filepath", ds.CAPTION, ds.CONCEPTS, *scores]
    columns = samples.values(fields)
    rows = [dict(zip(fields, values, strict=True)) for values in zip(*columns, strict=True)]
    already = _project_tasks(ws, conn, project_id)
    new = [r for r in rows if r[ds.CANDIDATE_ID] not in already]
    concepts = ws.concepts()
    key = scores[0] if scores else None
    random = {name for name in scores if random_weights(dataset, name)}
    rules = load_rules(ws)
    held: dict[str, str] = {}
    if triage:
        if not rules:
            raise CurateError("no calibrated triage rule yet: run `curate calibrate` after pulling reviews")
        for r in new:
            rule = rule_for(rules, len(r[ds.CONCEPTS] or []))
            if rule and rule.score not in random and rule.holds(r.get(rule.score)):
                held[r[ds.CANDIDATE_ID]] = f"{rule.rule_text()} (calibrated on {rule.accepted + rule.rejected} reviews)"
        new = [r for r in new if r[ds.CANDIDATE_ID] not in held]
    ordered = _order(new, order, key)
    batch = ws.config.review.batch_size
    with ThreadPoolExecutor(max_workers=1) as pool:  # Label Studio imports a batch while the next is built
        sending = None
        for start in range(0, len(ordered), batch):
            tasks = [_task(ws, conn, r, concepts, scores, random, rules) for r in ordered[start : start + batch]]
            if sending is not None:
                _record_pushed(ws, sending.result())
                progress("push tasks", start, len(ordered))
            sending = pool.submit(conn.import_tasks, project_id, tasks, ds.CANDIDATE_ID)
        if sending is not None:
            _record_pushed(ws, sending.result())
            progress("push tasks", len(ordered), len(ordered))
    _record_triage(dataset, held, [r[ds.CANDIDATE_ID] for r in new])
    return PushReport(project_id, conn.url, len(rows), len(rows) - len(new) - len(held), len(new), len(held))


def pushed_file(ws: Workspace) -> Path:
    """The candidate ids this workspace imported into its project, after a header naming the project."""
    return ws.review_dir / "pushed.txt"


def _project_tasks(ws: Workspace, conn: Connection, project_id: int) -> set[str]:
    """The candidate ids the project holds, from the workspace's record when the server agrees.

    Listing a 100K-task project costs Label Studio minutes, and a push must know what is there. The
    record is trusted only when it names this project and its size is the server's task count: a task
    deleted in Label Studio, or an import whose answer was lost (so the record missed it), makes
    them differ, and then the server's own listing is read and becomes the record; so does a record
    that is damaged (a line cut by a kill mid-append, bytes that are not UTF-8), whose count alone
    could still agree.
    """
    header = json.dumps({"url": conn.url, "project_id": project_id})
    path = pushed_file(ws)
    try:
        text = path.read_bytes().decode("utf-8") if path.exists() else ""
    except UnicodeDecodeError:
        text = ""
    lines = text.splitlines() if text.endswith("\n") else []  # a cut last line could still match the count
    recorded = set(lines[1:]) if lines[:1] == [header] else None
    project = conn.project(project_id)
    if recorded is not None and project is not None and project["task_number"] == len(recorded):
        return recorded
    found = conn.task_keys(project_id, ds.CANDIDATE_ID)
    atomic_write_text(path, "\n".join([header, *sorted(found)]) + "\n")
    return found


def _record_pushed(ws: Workspace, imported: list[str]) -> None:
    """Append a batch the server confirmed; a line lost to a kill only makes the next push list the project."""
    with pushed_file(ws).open("a", encoding="utf-8") as record:
        record.write("".join(f"{cid}\n" for cid in imported))


def _record_triage(dataset: Any, held: dict[str, str], pushed: list[str]) -> None:
    """Write who triage held back (and clear it on what was pushed), and keep the view of them."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    if not held and not dataset.has_field(ds.TRIAGE):
        return
    if not dataset.has_field(ds.TRIAGE):
        dataset.add_sample_field(ds.TRIAGE, fo.StringField)
    values: dict[str, str | None] = {**dict.fromkeys(pushed), **held}
    if values:
        dataset.set_values(ds.TRIAGE, values, key_field=ds.CANDIDATE_ID)
    dataset.save_view(
        ds.VIEW_TRIAGED_OUT,
        dataset.match(F(ds.TRIAGE) != None),  # a MongoDB expression, not a Python test
        description="held back from review by a calibrated rule (`curate review push --triage`); "
        "the `triage` field says which; push without --triage to review them",
        overwrite=True,
    )


def _task(
    ws: Workspace,
    conn: Connection,
    row: dict[str, Any],
    concepts: dict[str, Any],
    scores: list[str],
    random: set[str],
    rules: dict[str, ScoreCalibration],
) -> dict[str, Any]:
    """One task: image and references as local-files URLs, caption, labelled scores.

    No decision is ever pre-selected: a pre-filled choice turns the annotator's own hotkey into
    "clear", so a calibrated rule shows up as a hint line in the scores panel instead.
    """
    refs = []
    for cid in row[ds.CONCEPTS] or []:
        if cid in concepts and concepts[cid].refs:
            cutout = cover_cutout(ws, concepts[cid])  # what is pasted, not the photo around it
            thumb = thumbnail(cutout, thumbs_dir(ws) / "refs" / f"{cid}-{cutout.stem}.jpg")
            refs.append(
                {
                    "concept": cid,
                    "name": concepts[cid].name,
                    "url": _local_url(conn, conn.workspace_root / concepts[cid].refs[0]),
                    "thumb": _local_url(conn, thumb),
                }
            )
    shown = {name: round(row[name], 4) for name in scores if row[name] is not None}
    rule = rule_for(rules, len(row[ds.CONCEPTS] or []))
    suggestion = (
        f"likely reject ({rule.rule_text()}, calibrated: {rule.accepted_lost} of {rule.accepted} accepted fell there)"
        if rule and rule.score not in random and rule.holds(row.get(rule.score))
        else None
    )
    return {
        "data": {
            ds.CANDIDATE_ID: row[ds.CANDIDATE_ID],
            IMAGE: _local_url(conn, Path(row["filepath"])),
            THUMB: _local_url(conn, thumbnail(Path(row["filepath"]), candidate_thumb(thumbs_dir(ws), row[ds.CANDIDATE_ID]))),
            ds.CAPTION: row[ds.CAPTION] or "",
            ds.CONCEPTS: list(row[ds.CONCEPTS] or []),
            "refs": refs,
            "refs_html": _refs_html(refs),
            "scores": _scores_html(shown, random, suggestion),
        }
    }

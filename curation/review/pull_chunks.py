"""A project's tasks in chunks of at most `chunk` tasks, each one Label Studio export snapshot, several in flight.

Each chunk is read through a temporary Data Manager view restricted to an id range (and, for a
pull after the first, to the tasks touched since), exported as a snapshot, downloaded, and both
deleted at once; ones a killed pull left are deleted by the next. Snapshots serialize a task for
about a third of what the task API costs.

Chunks are id ranges, so a task deleted meanwhile cannot push another out of sight (page numbers
would), but their bounds are counted, not spread evenly: task ids are numbered across every project
of a server, and on a shared server another project's imports between two of this workspace's
pushes leave a gap of ids that equal-width ranges would fold into neighbouring chunks (one chunk
held ~10x `pull_page_size` tasks so). Each bound is the id of the task at position k x chunk among
the project's tasks, read as a one-task page of the task list.

Label Studio writes a snapshot inside the request that asks for it (~1.6 ms a task on one core),
so a server with several workers (`[review] workers`) writes several at once: `in_flight` chunks are
asked for together and handed on in the order they finish. Nothing downstream depends on that order
(each task is in one chunk, and a pull writes each chunk's reviews by candidate), and memory holds
at most `in_flight` + 1 chunks: one more is asked for only when a finished one is taken.

The requests go through a `Server`, which `client.Connection` is: this module sits below the
client (whose `task_keys` reads chunks), so it names only what it needs of one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol, TypeVar

import requests

from curation.core.errors import CurateError

PULL_TITLE = "curate pull (temporary)"  # the views and export snapshots a pull makes and deletes
SNAPSHOT_WAIT_S = 600.0  # one chunk's export; a server whose export workers are down never finishes it
T = TypeVar("T")


class Server(Protocol):
    """A Label Studio connection as the chunk reader uses it (`client.Connection` is one)."""

    url: str
    data_dir: Path | None  # the server's data dir, for a server this workspace started

    @property
    def headers(self) -> dict[str, str]: ...

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request, retrying a dropped connection, then fail naming the server and `what`."""
        ...

    def check_token(self, status_code: int) -> None: ...

    def get_json(self, path: str, what: str, **params: Any) -> Any: ...

    def send_json(self, method: str, path: str, what: str, body: dict[str, Any] | None = None) -> Any: ...


def _task_at(
    conn: Server,
    project_id: int,
    filters: list[dict[str, Any]],
    position: int,
    ordering: str = "tasks:id",
) -> tuple[int | None, int]:
    """The id of the task at 0-based `position` in `ordering` among those matching `filters` (None past
    the end), and how many match."""
    query = json.dumps({"filters": {"conjunction": "and", "items": filters}, "ordering": [ordering]})
    params = {
        "project": project_id,
        "fields": "task_only",
        "page": position + 1,
        "page_size": 1,
        "query": query,
    }

    def fetch() -> requests.Response:
        return requests.get(f"{conn.url}/api/tasks/", params=params, headers=conn.headers, timeout=300)

    response = conn.call("task pull", fetch)
    conn.check_token(response.status_code)
    if response.status_code == 404:  # a page past the end: tasks were deleted meanwhile
        return None, 0
    response.raise_for_status()
    payload = response.json()
    return (payload["tasks"][0]["id"] if payload["tasks"] else None), payload["total"]


def chunk_bounds(
    conn: Server, project_id: int, filters: list[dict[str, Any]], chunk: int
) -> tuple[list[int], int]:
    """Ids where each chunk starts, then one past the last task; and how many tasks match `filters`.

    Tasks touched while the bounds are read (a pull that filters on update time) can make a chunk
    a little larger; deletions only make it smaller.
    """
    first, total = _task_at(conn, project_id, filters, 0)
    last, _ = _task_at(conn, project_id, filters, 0, "-tasks:id")
    if first is None or last is None:
        return [], 0
    bounds = [first]
    for position in range(chunk, total, chunk):
        found, _ = _task_at(conn, project_id, filters, position)
        if found is None or found > last:
            break
        bounds.append(max(found, bounds[-1] + 1))
    return [*bounds, last + 1], total


def task_chunks(
    conn: Server,
    project_id: int,
    chunk: int,
    updated_after: datetime | None = None,
    in_flight: int = 1,
) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """The project's tasks with their annotations, at most ~`chunk` at a time, each with how many remain.

    Given `updated_after`, only the tasks touched since (saving or deleting an annotation stamps its
    task). `in_flight` snapshots are made at once while the caller works on a finished one, so
    server and client run side by side and memory holds at most `in_flight` + 1 chunks. Chunks come
    in the order they finish. A chunk that fails raises once the snapshots still running have ended
    (each deletes its own view and snapshot); views and snapshots a killed pull left are deleted first.
    """
    drop_pull_leftovers(conn, project_id)
    filters: list[dict[str, Any]] = []
    if updated_after is not None:
        stamp = updated_after.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        filters.append(
            {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": stamp}
        )
    bounds, total = chunk_bounds(conn, project_id, filters, chunk)
    ranges = pairwise(bounds)
    done = 0
    with ThreadPoolExecutor(max_workers=in_flight) as pool:

        def ask() -> list[Future[list[dict[str, Any]]]]:
            low_high = next(ranges, None)
            return [] if low_high is None else [pool.submit(snapshot, conn, project_id, filters, *low_high)]

        outstanding = [future for _ in range(in_flight) for future in ask()]
        while outstanding:
            finished = next(iter(wait(outstanding, return_when=FIRST_COMPLETED).done))
            outstanding.remove(finished)
            tasks = finished.result()
            outstanding += ask()
            if tasks:
                yield tasks, max(total - done, len(tasks))
            done += len(tasks)


def snapshot(
    conn: Server, project_id: int, filters: list[dict[str, Any]], low: int, high: int
) -> list[dict[str, Any]]:
    """The tasks with ids in [low, high) matching `filters`, through a temporary view and export snapshot."""
    in_range = [
        {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": low - 1},
        {"filter": "filter:tasks:id", "operator": "less", "type": "Number", "value": high},
    ]
    view = conn.send_json(
        "post",
        "/api/dm/views/",
        "task pull",
        {
            "project": project_id,
            "data": {"title": PULL_TITLE, "filters": {"conjunction": "and", "items": in_range + filters}},
        },
    )
    try:
        export = conn.send_json(
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
            export = _finished(conn, project_id, export, f"tasks {low}-{high - 1}")
            return conn.get_json(
                f"/api/projects/{project_id}/exports/{export['id']}/download", "task pull", exportType="JSON"
            )
        finally:
            conn.send_json("delete", f"/api/projects/{project_id}/exports/{export['id']}", "task pull")
            _drop_snapshot_file(conn, project_id, export.get("md5") or "")
    finally:
        conn.send_json("delete", f"/api/dm/views/{view['id']}/", "task pull")


def _finished(conn: Server, project_id: int, export: dict[str, Any], what: str) -> dict[str, Any]:
    """The snapshot once Label Studio has written it: at once without background workers, else polled."""
    deadline = time.monotonic() + SNAPSHOT_WAIT_S
    while export["status"] not in ("completed", "failed"):
        if time.monotonic() > deadline:
            raise CurateError(
                f"Label Studio at {conn.url} has not exported {what} after {SNAPSHOT_WAIT_S:.0f} s: "
                "are its background workers running? Re-run the pull"
            )
        time.sleep(0.5)
        export = conn.get_json(f"/api/projects/{project_id}/exports/{export['id']}", "task pull")
    if export["status"] == "failed":
        raise CurateError(f"Label Studio at {conn.url} failed to export {what}; re-run the pull")
    return export


def _drop_snapshot_file(conn: Server, project_id: int, md5: str) -> None:
    """Delete a deleted snapshot's file, where this machine can: Label Studio 1.23 keeps it.

    Deleting an export removes its record but never its file (the feature flag that would is
    fixed off), so every pull would leave a copy of what it read in the server's media/export.
    A server this workspace's `curate review serve` started keeps them in its data dir, named
    project-<id>-at-<minute>-<md5[:8]>.json; on any other server they stay.
    """
    if conn.data_dir is None:
        return
    folder = conn.data_dir / "media" / "export" / str(project_id)
    if md5 and os.access(folder, os.W_OK):
        for path in folder.glob(f"project-{project_id}-at-*-{md5[:8]}*.json"):
            path.unlink(missing_ok=True)


def drop_pull_leftovers(conn: Server, project_id: int) -> None:
    """Delete the temporary views and snapshots of a pull that was killed before it could."""
    for view in conn.get_json("/api/dm/views/", "task pull", project=project_id):
        if view.get("data", {}).get("title") == PULL_TITLE:
            conn.send_json("delete", f"/api/dm/views/{view['id']}/", "task pull")
    for export in conn.get_json(f"/api/projects/{project_id}/exports/", "task pull"):
        if export.get("title") == PULL_TITLE:
            conn.send_json("delete", f"/api/projects/{project_id}/exports/{export['id']}", "task pull")
            _drop_snapshot_file(conn, project_id, export.get("md5") or "")

"""A project's tasks in chunks of at most `chunk` tasks, each one Label Studio export snapshot.

Chunks are id ranges, so a task deleted meanwhile cannot push another out of sight (page numbers
would), but their bounds are counted, not spread evenly: task ids are numbered across every project
of a server, and on a shared server another project's imports between two of this workspace's
pushes leave a gap of ids that equal-width ranges would fold into neighbouring chunks (one chunk
held ~10x `pull_page_size` tasks so). Each bound is the id of the task at position k x chunk among
the project's tasks, read as a one-task page of the task list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import requests

from curation.review.client import Connection


def _task_at(
    conn: Connection,
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
    conn: Connection, project_id: int, filters: list[dict[str, Any]], chunk: int
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
    conn: Connection, project_id: int, chunk: int, updated_after: datetime | None = None
) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """The project's tasks with their annotations, at most ~`chunk` at a time, each with how many remain.

    Given `updated_after`, only the tasks touched since (saving or deleting an annotation stamps its
    task). The next snapshot is made while the caller works on this one, so server and client run
    side by side and memory holds two chunks. Views and snapshots a killed pull left are deleted first.
    """
    conn._drop_pull_leftovers(project_id)
    filters: list[dict[str, Any]] = []
    if updated_after is not None:
        stamp = updated_after.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        filters.append(
            {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": stamp}
        )
    bounds, total = chunk_bounds(conn, project_id, filters, chunk)
    if not bounds:
        return
    done = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(conn._snapshot, project_id, filters, bounds[0], bounds[1])
        for k in range(len(bounds) - 1):
            tasks = pending.result()
            if k + 2 < len(bounds):
                pending = pool.submit(conn._snapshot, project_id, filters, bounds[k + 1], bounds[k + 2])
            if tasks:
                yield tasks, max(total - done, len(tasks))
            done += len(tasks)

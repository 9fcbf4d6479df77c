"""A project's tasks in chunks of at most `chunk` tasks, each one Label Studio export snapshot, several in flight.

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
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:  # client.py reads a project's keys through task_chunks
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
    conn: Connection,
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
    conn._drop_pull_leftovers(project_id)
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
            return [] if low_high is None else [pool.submit(conn._snapshot, project_id, filters, *low_high)]

        outstanding = [future for _ in range(in_flight) for future in ask()]
        while outstanding:
            finished = next(iter(wait(outstanding, return_when=FIRST_COMPLETED).done))
            outstanding.remove(finished)
            tasks = finished.result()
            outstanding += ask()
            if tasks:
                yield tasks, max(total - done, len(tasks))
            done += len(tasks)

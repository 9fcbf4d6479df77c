"""What each pull read, kept as review/pulls/<name>.jsonl.gz: named in write order, replayed in that order.

A delta holds the tasks one pull read (ids, update time, candidate id, annotations exactly as
received), so the deltas replayed oldest first say what the server said about any task at any pull.
Names are `<UTC time>-<NNNN>[.full].jsonl.gz`: the counter separates pulls within one microsecond
and, with its fixed width, keeps the names' own order the write order (`ls`, `sorted`). `.full`
marks a pull that read every task: replaying it forgets every task before it, so a task deleted
in Label Studio is gone from the replay too. Names of older pulls (`<time>.jsonl.gz`, then
`<time>-1.jsonl.gz`, which sorts before it by name) are ordered by their time and counter as well.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from curation.core import dataset as ds
from curation.core.workspace import Workspace

T = TypeVar("T")
_NAME = re.compile(r"(?P<stamp>\d{8}T\d{6}\.\d{6}Z)(?:-(?P<n>\d+))?(?P<full>\.full)?\.jsonl\.gz")
FULL = ".full"


def pulls_dir(ws: Workspace) -> Path:
    return ws.review_dir / "pulls"


def new_delta_name(folder: Path, full: bool, now: datetime | None = None) -> Path:
    """A name after every delta in `folder`, never one in use: the time, then a counter within it."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    taken = [_order(path)[1] for path in folder.glob(f"{stamp}*")]
    n = max(taken) + 1 if taken else 0
    return folder / f"{stamp}-{n:04d}{FULL if full else ''}.jsonl.gz"


def _order(path: Path) -> tuple[str, int, str]:
    """Write order: time, then counter (an old name without one came first); unknown names by name."""
    found = _NAME.fullmatch(path.name)
    if found is None:
        return (path.name, 0, path.name)
    return (found["stamp"], int(found["n"] or 0), path.name)


def delta_paths(ws: Workspace) -> list[Path]:
    """The deltas, oldest first."""
    return sorted(pulls_dir(ws).glob("*.jsonl.gz"), key=_order)


def slim_task(task: dict[str, Any]) -> dict[str, Any]:
    """What a delta keeps of a task: its ids, update time and annotations exactly as received."""
    return {
        "id": task["id"],
        "updated_at": task.get("updated_at"),
        "data": {ds.CANDIDATE_ID: task["data"][ds.CANDIDATE_ID]},
        "annotations": task.get("annotations") or [],
    }


def replay(ws: Workspace, read: Callable[[dict[str, Any]], T | None]) -> dict[str, T]:
    """Per candidate, `read` of its task as the newest delta holding it says (None drops the candidate).

    A full pull's delta starts over: what it does not hold, its pull found no task for.
    """
    latest: dict[str, T] = {}
    for path in delta_paths(ws):
        if path.name.endswith(FULL + ".jsonl.gz"):
            latest = {}
        for task in _tasks(path):
            found = read(task)
            if found is None:
                latest.pop(task["data"][ds.CANDIDATE_ID], None)
            else:
                latest[task["data"][ds.CANDIDATE_ID]] = found
    return latest


def _tasks(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)

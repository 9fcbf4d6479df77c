"""One writer per workspace stage: an advisory lock a command holds for as long as it changes the workspace.

Without it, two `curate index` runs started together added 40 of 80 candidates twice, their appends to
the near-duplicate store interleaved, and one `review pull` deleted the partial delta another was
writing. Every stage entry point that writes takes `stage_lock(ws, stage)` for its whole run, so a
second command on the same stage either waits (`--wait`) or stops with one line naming the holder.
Entry points declare it in one line, `@writes("index")`; read-only commands take no lock and never block.

`fcntl.flock` is released by the kernel when its process dies, `kill -9` included, so a crashed
command never leaves a lock behind for the next one to trip over. The lock file holds who took it
(pid, command line, since when) only so the second command can say so. Within one process the lock is
re-entrant: the demo, or a stage that runs another stage's entry point, takes the same lock again.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from curation.core.errors import CurateError

LOCK_DIR = "locks"
"""<workspace>/locks/<stage>.lock: one file per stage that may run beside the others."""

log = logging.getLogger(__name__)
_held: dict[Path, tuple[int, int]] = {}
"""Lock file -> (open descriptor, depth) for the locks this process holds."""
_guard = threading.Lock()


def holder_of(path: Path) -> str:
    """Who holds the lock at `path`, in words, from what it wrote into the file."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another curate command"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
    return f"`{info.get('command', 'curate')}` (pid {info['pid']}, since {since})"


@contextmanager
def stage_lock(root: Path, stage: str, wait: bool = False) -> Iterator[None]:
    """Hold the workspace's `stage` lock for the block.

    Args:
        root: the workspace folder.
        stage: which writer this is (`index`, `review`, ...); stages with different names run side by side.
        wait: block until the holder finishes instead of stopping with a CurateError.
    """
    path = Path(root) / LOCK_DIR / f"{stage}.lock"
    with _guard:
        if path in _held:
            fd, depth = _held[path]
            _held[path] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            _release(path)
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_of(path)
            if not wait:
                raise CurateError(
                    f"{holder} is already changing this workspace's {stage} ({path.parent.parent}): "
                    "wait for it to finish, or pass --wait to queue behind it"
                ) from None
            log.warning("waiting for %s to finish this workspace's %s ...", holder, stage)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        command = " ".join(["curate", *sys.argv[1:]]) if sys.argv else "curate"
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command[:200], "since": time.time()}).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    with _guard:
        _held[path] = (fd, 1)
    try:
        yield
    finally:
        _release(path)


P = ParamSpec("P")
R = TypeVar("R")


def writes(stage: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a stage entry point whose first argument is the workspace: it runs holding `ws.lock(stage)`.

    The workspace says whether to wait (`Workspace.open(path, wait_for_locks=...)`, the CLI's `--wait`).
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def locked(*args: P.args, **kwargs: P.kwargs) -> R:
            ws: Any = args[0] if args else kwargs["ws"]
            with ws.lock(stage):
                return function(*args, **kwargs)

        return locked

    return decorate


def _release(path: Path) -> None:
    with _guard:
        fd, depth = _held[path]
        if depth > 1:
            _held[path] = (fd, depth - 1)
            return
        del _held[path]
    os.ftruncate(fd, 0)
    os.close(fd)  # closing the last descriptor releases the flock

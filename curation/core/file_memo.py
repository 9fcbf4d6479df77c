"""What `curate index` learnt from each candidate file, keyed by the file's size, mtime and inode.

At 100K candidates, hashing every image (~30 GB) and parsing every record on each run costs
minutes while almost nothing changed. A file whose (size, mtime_ns, inode) is what it was when it
was last read is taken to hold the same bytes: its hash (image) or its digest (record) is reused
without opening it. The inode catches `atomic_write_*` replacements (a rename, so a new inode)
even within one mtime tick; an in-place rewrite changes the mtime. A copied workspace gets new
inodes, so its first run reads everything once.

The memo is a SQLite file beside the workspace's other index state: one read of every row per run
(a few hundred milliseconds at 100K files) and writes of the changed rows only. It only remembers
what files contain, never what the dataset holds, so a deleted or shared dataset cannot fool it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

Stat = tuple[int, int, int]
"""(size, mtime_ns, inode)."""


def file_stat(path: str | Path) -> Stat:
    """The stat triple the memo compares; raises OSError like `open` would."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


class FileMemo:
    """Workspace-relative path -> (stat, value) for the value last computed from those bytes.

    Values are strings (callers join fields with tabs): parsing JSON per file costs ~1 s at 100K.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
            " inode INTEGER, value TEXT)"
        )
        self._known = {
            row[0]: ((row[1], row[2], row[3]), row[4])
            for row in self._db.execute("SELECT path, size, mtime_ns, inode, value FROM files")
        }
        self._changed: dict[str, tuple[Stat, str]] = {}

    def get(self, path: str, stat: Stat) -> str | None:
        """The value remembered for `path` if the file still has `stat`, else None."""
        known = self._known.get(path)
        return known[1] if known is not None and known[0] == stat else None

    def put(self, path: str, stat: Stat, value: str) -> None:
        """Remember `value` for these bytes (written by `save`)."""
        self._changed[path] = (stat, value)

    def save(self) -> None:
        """Write the changed rows in one transaction and close."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                [(path, *stat, value) for path, (stat, value) in self._changed.items()],
            )
        self._db.close()

"""The team server's Label Studio app (curation/review/labelstudio_wsgi.py), loaded as a uWSGI worker loads it.

Several workers share one SQLite file, where a write waits for another's to end: a worker must wait
longer than Python's 5 s before failing the request, since one Data Manager action of a pull holds
the write lock for tens of seconds on a busy machine (a 20K-task pull on 2 workers got a 500 so).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELD_S = 6.0  # longer than Python's default wait of 5 s

WORKER = """
import time
import curation.review.labelstudio_wsgi
from django.db import connection
print("loaded", flush=True)
started = time.monotonic()
with connection.cursor() as cursor:
    cursor.execute("INSERT INTO probe VALUES (2)")
print(f"waited {time.monotonic() - started:.1f}", flush=True)
"""


def test_a_worker_waits_for_another_workers_write_on_sqlite(tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / "label_studio.sqlite3", isolation_level=None)
    holder.execute("PRAGMA journal_mode=wal")
    holder.execute("CREATE TABLE probe (x)")
    holder.execute("BEGIN IMMEDIATE")  # another worker's long write transaction
    holder.execute("INSERT INTO probe VALUES (1)")
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path),  # its SQLite file is label_studio.sqlite3 there
        "DJANGO_DB": "sqlite",
        "PYTHONPATH": str(ROOT),
    }
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "loaded", worker.stderr.read() if worker.stderr else ""
        time.sleep(HELD_S)
        holder.execute("COMMIT")
        out, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        holder.close()
    assert worker.returncode == 0, err[-2000:]  # not "database is locked"
    assert float(out.split()[-1]) >= HELD_S - 0.5  # it waited for the other write, then wrote
    rows = sqlite3.connect(tmp_path / "label_studio.sqlite3").execute("SELECT x FROM probe ORDER BY x")
    assert [x for (x,) in rows] == [1, 2]

"""Which MongoDB FiftyOne will write to: refuse a silent switch to another folder's database.

With no `FIFTYONE_DATABASE_URI`, FiftyOne attaches to a database service this account already runs,
whatever `FIFTYONE_DATABASE_DIR` says (it finds the service by its command line, not by its folder).
A second process with another database folder (a test session, a shell with other settings) would
then write a workspace's dataset into that other folder, where it disappears from view once the
service stops. Other accounts' services are never attached to, so users do not mix.
A team's MongoDB named by `FIFTYONE_DATABASE_URI` (e.g. `deploy/mongodb.sh`) is used as it is:
FiftyOne then starts and attaches to no service, whatever runs on the machine.

Starting the embedded service is a race FiftyOne does not guard: two processes that find none
running both start one, the second mongod cannot lock the database folder, and its process waits
60 s and dies with `ServiceListenTimeout`. So curate checks and connects holding a per-account
file lock (the second command then finds the first one's service and attaches), and a start that
still fails (a service of another program shutting down as we looked) is tried once more, then
ends in one line.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from curation.core.errors import CurateError

START_ATTEMPTS = 2


def attached_database_dir() -> str | None:
    """The `--dbpath` of the database service FiftyOne would attach to, None when none runs.

    The same search FiftyOne makes: this account's processes running its `db` service, first found
    first; the folder is on the service's mongod child.
    """
    import psutil
    from fiftyone.core.service import DatabaseService
    from fiftyone.service.util import find_processes_by_args

    for service in find_processes_by_args(["--51-service", DatabaseService.service_name, "--multi"]):
        try:
            children = service.children(recursive=True)
        except psutil.Error:
            continue
        for child in children:
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if "--dbpath" in cmdline[:-1]:
                return os.path.realpath(cmdline[cmdline.index("--dbpath") + 1])
    return None


def check_database() -> None:
    """Connect FiftyOne, refusing first an embedded database that runs from another folder than configured.

    Raises:
        CurateError: naming both folders and the two ways out; or a database service that would not start.
    """
    import fiftyone as fo
    import fiftyone.core.odm.database as fodb

    if fo.config.database_uri or not fodb._is_client_closed(fodb._client):
        return  # a real MongoDB named by the user (FiftyOne connects exactly there), or connected already
    wanted = os.path.realpath(fo.config.database_dir)
    with _start_lock():
        running = attached_database_dir()
        if running is not None and running != wanted:
            raise CurateError(
                f"FiftyOne's database is already running from {running} (another process of yours started it),"
                f" not from FIFTYONE_DATABASE_DIR {wanted}, and FiftyOne would write there: stop that process,"
                f" or set FIFTYONE_DATABASE_DIR={running}"
            )
        _connect(wanted)


@contextmanager
def _start_lock() -> Iterator[None]:
    """The per-account lock held while finding or starting the service (FiftyOne attaches to any of ours);
    the kernel releases it if the process dies."""
    path = Path(tempfile.gettempdir()) / f"curate-fiftyone-start-{os.getuid()}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _connect(database_dir: str) -> None:
    """Start or attach to the database service and connect; a failed start is tried once more."""
    import fiftyone.core.odm.database as fodb
    from fiftyone.core.service import ServiceListenTimeout

    for attempt in range(START_ATTEMPTS):
        try:
            fodb.get_db_conn()
            return
        except ServiceListenTimeout:
            fodb._db_service = None  # else FiftyOne's next try skips the service and dials a default port
            if attempt + 1 == START_ATTEMPTS:
                log = Path(database_dir) / "log" / "mongo.log"
                raise CurateError(
                    f"FiftyOne's database service would not start from {database_dir} (its log: {log}): "
                    "run the command again, or set FIFTYONE_DATABASE_URI to a MongoDB that runs"
                ) from None

"""Which MongoDB FiftyOne will write to: refuse a silent switch to another folder's database.

With no `FIFTYONE_DATABASE_URI`, FiftyOne attaches to a database service this account already runs,
whatever `FIFTYONE_DATABASE_DIR` says (it finds the service by its command line, not by its folder).
A second process with another database folder (a test session, a shell with other settings) would
then write a workspace's dataset into that other folder, where it disappears from view once the
service stops. Other accounts' services are never attached to, so users do not mix.
A team's MongoDB named by `FIFTYONE_DATABASE_URI` (e.g. `deploy/mongodb.sh`) is used as it is:
FiftyOne then starts and attaches to no service, whatever runs on the machine.
"""

from __future__ import annotations

import os

from curation.core.errors import CurateError


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
    """Raise before FiftyOne connects when its embedded database runs from another folder than configured.

    Raises:
        CurateError: naming both folders and the two ways out.
    """
    import fiftyone as fo

    if fo.config.database_uri:
        return  # a real MongoDB named by the user: FiftyOne connects exactly there
    wanted = os.path.realpath(fo.config.database_dir)
    running = attached_database_dir()
    if running is not None and running != wanted:
        raise CurateError(
            f"FiftyOne's database is already running from {running} (another process of yours started it),"
            f" not from FIFTYONE_DATABASE_DIR {wanted}, and FiftyOne would write there: stop that process,"
            f" or set FIFTYONE_DATABASE_DIR={running}"
        )

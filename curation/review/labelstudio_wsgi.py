"""Label Studio's Django application as its production server loads it, and the setup run once before.

`label-studio start` migrates the database, creates the admin, then serves with Django's
development server in that same process. Label Studio's Docker image splits this: one step runs the
migrations, then uWSGI starts several worker processes that each load `core.wsgi`. `serve` with
`[review] workers` > 1 does the same: `python -m curation.review.labelstudio_wsgi` migrates and
creates the admin exactly as `start` does (Label Studio's own functions, credentials read from the
`LABEL_STUDIO_*` environment, nothing printed), then uWSGI imports this module in each worker
for `application`. Importing it sets Django up with the settings `start` uses (SQLite's write-ahead
log, switched on by the setup step, is a property of the database file and holds for every worker),
except that on SQLite a worker waits longer for another worker's write (`SQLITE_WAIT_S`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import label_studio

LS_PATH = str(Path(label_studio.__file__).parent)
if LS_PATH not in sys.path:
    sys.path.insert(0, LS_PATH)  # Label Studio's apps import each other as top-level packages
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "label_studio.core.settings.label_studio")

from django.conf import settings  # after the path and settings above
from django.core.wsgi import get_wsgi_application

SQLITE_WAIT_S = 120.0
"""How long a worker waits for another worker's write on SQLite before failing the request.

SQLite lets one writer in at a time, and Python's default wait, 5 s, is shorter than some of Label
Studio's write transactions on a busy machine (the Data Manager action a pull uses to write review
columns rewrites a chunk of tasks in one): past it the request fails with a 500 ("database is
locked"), as an export snapshot did in a 20K-task pull with two in flight on two workers, where it
should wait its turn, as an annotator's save should. PostgreSQL waits for row locks without a limit.
"""


def _wait_for_other_writers() -> None:
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("OPTIONS", {})["timeout"] = SQLITE_WAIT_S


_wait_for_other_writers()  # before Django opens a connection
application = get_wsgi_application()


def prepare() -> None:
    """Migrate the database and create the admin with its token, as `label-studio start` would."""
    from label_studio.core.argparser import parse_input_args
    from label_studio.server import _apply_database_migrations, _create_user

    _apply_database_migrations()
    _create_user(parse_input_args(["init", "--quiet", "--enable-legacy-api-token"]), {})


if __name__ == "__main__":
    prepare()

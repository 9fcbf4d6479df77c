"""Label Studio's Django application as its production server loads it, and the setup run once before.

`label-studio start` migrates the database, creates the admin, then serves with Django's
development server in that same process. Label Studio's Docker image splits this: one step runs the
migrations, then uWSGI starts several worker processes that each load `core.wsgi`. `serve` with
`[review] workers` > 1 does the same: `python -m curation.review.labelstudio_wsgi` migrates and
creates the admin exactly as `start` does (Label Studio's own functions, credentials read from the
`LABEL_STUDIO_*` environment, nothing printed), then uWSGI imports this module in each worker
for `application`. Importing it sets Django up with the settings `start` uses (SQLite's write-ahead
log, switched on by the setup step, is a property of the database file and holds for every worker).
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

from django.core.wsgi import get_wsgi_application  # after the path and settings above

application = get_wsgi_application()


def prepare() -> None:
    """Migrate the database and create the admin with its token, as `label-studio start` would."""
    from label_studio.core.argparser import parse_input_args
    from label_studio.server import _apply_database_migrations, _create_user

    _apply_database_migrations()
    _create_user(parse_input_args(["init", "--quiet", "--enable-legacy-api-token"]), {})


if __name__ == "__main__":
    prepare()

"""Session-wide environment: every test run gets its own FiftyOne database folder and HOME-free state.

The variables are set at import time, before any test module imports fiftyone, because FiftyOne
reads its config once on import. Fixtures that start real services live in tests/fixtures/ and
are loaded as plugins, one module per service.
"""

import os
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="curate-tests-"))
# FiftyOne attaches to the database service this account already runs, whatever the folder says, and
# `curate` refuses a service running from another folder than configured (curation/core/database.py). So
# every session of this account shares one database folder and isolates itself by database name,
# dropped when the session ends.
os.environ.setdefault(
    "FIFTYONE_DATABASE_DIR", str(Path(tempfile.gettempdir()) / f"curate-tests-fiftyone-db-{os.getuid()}")
)
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ.setdefault("FIFTYONE_DATABASE_NAME", f"curate-tests-{_SESSION_DIR.name}")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# rembg's model folder: empty, so `segment.backend = "auto"` takes classical unless a test puts IS-Net there
os.environ["U2NET_HOME"] = str(_SESSION_DIR / "u2net")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.labelstudio", "tests.fixtures.sample_concepts", "tests.fixtures.tiny_clip", "tests.fixtures.candidate_workspace", "tests.fixtures.fake_llm", "tests.fixtures.ray_session", "tests.fixtures.fake_hub"]


def pytest_sessionfinish(session, exitstatus) -> None:
    """Drop this session's database, so the shared test database folder does not grow run after run."""
    import sys

    if "fiftyone" in sys.modules:
        from fiftyone.core.odm.database import drop_database

        drop_database()

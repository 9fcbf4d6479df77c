"""Session-wide environment: every test run gets its own FiftyOne database folder and HOME-free state.

The variables are set at import time, before any test module imports fiftyone, because FiftyOne
reads its config once on import. Fixtures that start real services live in tests/fixtures/ and
are loaded as plugins, one module per service.
"""

import os
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="curate-tests-"))
os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(_SESSION_DIR / "fiftyone-db"))
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
# FiftyOne reuses a database service already running on the machine whatever the folder says, so
# a session also needs its own database name to never see another session's datasets.
os.environ.setdefault("FIFTYONE_DATABASE_NAME", f"curate-tests-{_SESSION_DIR.name}")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.labelstudio", "tests.fixtures.sample_concepts", "tests.fixtures.tiny_clip", "tests.fixtures.candidate_workspace", "tests.fixtures.fake_llm", "tests.fixtures.ray_session"]

"""The workspace's review project in Label Studio: its labeling config, its marker, found again or made once.

A project is found again by what was recorded of it, else by a marker in its description (a run
killed before it recorded the id leaves its project behind), else made; the review project and
each user study's project (`curation/study/create.py`) are found or made by `find_or_create_project`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.labeling_config import CONFIG_DIR, IMAGE
from curation.core.thumbnails import thumbs_dir
from curation.core.workspace import Workspace, atomic_write_json
from curation.review.client import Connection, media_folder


def project_file(ws: Workspace) -> Path:
    return ws.review_dir / "project.json"


def project_id_of(ws: Workspace) -> int:
    """The id of the project `curate review push` made for the workspace, as it recorded it."""
    path = project_file(ws)
    if not path.exists():
        raise CurateError(f"nothing pushed yet from {ws.root}: run `curate review push` first")
    return int(json.loads(path.read_text())["project_id"])


def project_marker(ws: Workspace) -> str:
    """The project description that finds the workspace's project when project.json was lost.

    Keyed on the workspace id, not the folder: same-named workspaces never adopt each other's
    project, and a renamed one still finds its own.
    """
    return f"curate workspace: {ws.workspace_id}"


def find_or_create_project(
    conn: Connection,
    recorded: int | None,
    marker: str,
    settings: Callable[[], dict[str, Any]],
    annotators: int | None,
    storages: dict[Path, str],
    what: str,
) -> tuple[int, bool]:
    """A project on this server with its local-files storages; its id, and whether it was made now.

    Args:
        recorded: the project id recorded for this server, if any: reused while it still exists.
        marker: the project's description, which finds it again when no id was recorded.
        settings: the SDK's settings of a new project (title, label_config, ...), asked only to make one.
        annotators: annotators per task (maximum_annotations); a found project keeps its own when None.
        storages: folder -> storage title; each existing folder not yet a storage of the project becomes
            one, and a storage outside the server's document root (from before the media tree) is removed.
        what: the project as an error names it when Label Studio rejects it.
    """
    from label_studio_sdk.core.api_error import ApiError

    client = conn.client
    project_id = recorded
    if project_id is not None and not conn.project_exists(project_id):
        project_id = None  # deleted on the server: create it again
    if project_id is None:  # a run killed before the id was recorded left its project behind
        found = conn.call("project listing", lambda: [p.id for p in client.projects.list() if p.description == marker])
        project_id = min(found) if found else None
    created = project_id is None
    if project_id is None:
        try:
            project = conn.call(
                "project creation",
                lambda: client.projects.create(
                    description=marker, maximum_annotations=annotators or 1, **settings()
                ),
            )
        except ApiError as exc:
            raise CurateError(f"Label Studio rejected {what}: {exc.body}") from exc
        project_id = project.id
    elif annotators:
        conn.call(
            "project update", lambda: client.projects.update(id=project_id, maximum_annotations=annotators)
        )
    listed = conn.call("storage listing", lambda: client.import_storage.local.list(project=project_id))
    for gone in [s for s in listed if conn.document_root not in Path(s.path).parents]:
        # made when the document root was the workspace: it serves nothing now, and names the workspace
        conn.call("storage removal", lambda s=gone: client.import_storage.local.delete(id=s.id))
    have = {Path(s.path) for s in listed}
    for folder, title in storages.items():
        if folder.exists() and folder.resolve() not in have:
            conn.call(
                "storage creation",
                lambda f=folder, t=title: client.import_storage.local.create(
                    project=project_id, path=str(f.resolve()), use_blob_urls=True, title=t
                ),
            )
    return project_id, created


def ensure_project(ws: Workspace, conn: Connection, overlap: int | None = None) -> int:
    """The workspace's project on this server, created once and reused after; its storages are the
    workspace's candidates, concepts and previews in the media tree."""
    path = project_file(ws)
    recorded = json.loads(path.read_text()) if path.exists() else {}
    recorded_id = recorded.get("project_id") if recorded.get("url") == conn.url else None
    config = ws.config.review
    xml_path = CONFIG_DIR / config.label_config

    def settings() -> dict[str, Any]:
        if not xml_path.exists():
            raise CurateError(f"no labeling config {xml_path} (review.label_config in curate.toml)")
        return {
            "title": config.project_title or f"curate {ws.name}",
            "label_config": xml_path.read_text(),
            "show_collab_predictions": False,
        }

    folders = (ws.candidates_dir, ws.concepts_dir, thumbs_dir(ws))
    project_id, created = find_or_create_project(
        conn,
        recorded_id,
        project_marker(ws),
        settings,
        overlap,
        {media_folder(conn, folder): folder.name for folder in folders},
        f"the project ({xml_path.name})",
    )
    if project_id != recorded_id:
        # made now, or by a run killed before it recorded the id (and maybe before the tab): the id last
        if created or not conn.get_json("/api/dm/views/", "data manager tabs", project=project_id):
            _data_manager_tab(conn, project_id)
        atomic_write_json(path, {"url": conn.url, "project_id": project_id})
    return project_id


def _data_manager_tab(conn: Connection, project_id: int) -> None:
    """The project's first Data Manager tab: thumbnails and caption, without full images or raw HTML.

    Without it the task list loads every full-size candidate as a 50 px cell and prints the
    reference strip and score table as HTML source; the raw annotation JSON column is hidden too,
    since pull writes the decision, quality and agreement as columns of their own (`show_reviews`).
    """
    page_data = (IMAGE, "images", "strip", "captions", "refs", "refs_html", "scores", ds.CONCEPTS)
    hidden = [f"tasks:data.{key}" for key in (*page_data, "candidate_ids", "page")] + [
        f"tasks:{column}"
        for column in (
            "inner_id", "cancelled_annotations", "total_predictions", "annotations_ids", "predictions_score",
            "predictions_model_versions", "predictions_results", "annotations_results", "file_upload", "storage_filename",
            "created_at", "updated_at", "updated_by", "avg_lead_time", "draft_exists", "comment_count",
            "unresolved_comment_count", "last_comment_updated_at", "total_annotations",
        )
    ]  # fmt: skip
    body = {
        "project": project_id,
        "data": {
            "title": "review",
            "type": "list",
            "target": "tasks",
            "hiddenColumns": {"explore": hidden, "labeling": hidden},
            "filters": {"conjunction": "and", "items": []},
        },
    }

    def create() -> None:
        response = requests.post(f"{conn.url}/api/dm/views/", json=body, headers=conn.headers, timeout=30)
        response.raise_for_status()

    conn.call("data manager tab", create)

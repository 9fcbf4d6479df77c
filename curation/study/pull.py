"""Pull a user study's ratings: every task's annotations into study/<name>/ratings.json.

A pull replaces the ratings with what the server holds now (edits and deletions followed), writing
nothing when nothing changed; an annotation counts whole or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from curation.core.lock import writes
from curation.core.workspace import Workspace, atomic_write_bytes, atomic_write_json
from curation.review.annotation_rules import writer
from curation.review.client import connect
from curation.study.rating_page import SCORE_MAX, SCORE_MIN, TASK_KEY, control_name
from curation.study.studies import resolve_name, study_dir


@dataclass
class PullReport:
    name: str
    tasks: int
    annotations: int
    incomplete: list[str]
    changed: bool
    path: Path

    def summary(self) -> str:
        lines = [
            f"study {self.name}: {self.annotations} complete annotations on {self.tasks} tasks; "
            + (f"ratings written to {self.path}" if self.changed else "nothing changed since the last pull")
        ]
        lines += [f"not counted: {line}" for line in self.incomplete]
        return "\n".join(lines)


def read_annotation(
    annotation: dict[str, Any], slots: list[str], criteria: list[str]
) -> tuple[dict[str, dict[str, int]] | None, list[str]]:
    """criterion -> configuration -> score, or None with what is wrong (an empty or out-of-range field).

    An annotation counts whole or not at all: a rater who skipped one field is left out of that
    task, so every comparison in the report pairs scores the same person gave side by side.
    """
    given = {
        item.get("from_name"): (item.get("value") or {}).get("number")
        for item in annotation.get("result") or []
        if item.get("type") == "number"
    }
    scores: dict[str, dict[str, int]] = {c: {} for c in criteria}
    problems = []
    for criterion in criteria:
        for slot, config in enumerate(slots, start=1):
            value = given.get(control_name(criterion, slot))
            if value is None:
                problems.append(f"{criterion} of image {slot} is empty")
            elif not (float(value).is_integer() and SCORE_MIN <= value <= SCORE_MAX):
                problems.append(
                    f"{criterion} of image {slot} is {value}, not a whole number {SCORE_MIN}-{SCORE_MAX}"
                )
            else:
                scores[criterion][config] = int(value)
    return (None, problems) if problems else (scores, [])


@writes("study")
def pull(
    ws: Workspace, name: str | None = None, url: str | None = None, token: str | None = None
) -> PullReport:
    """Read every task's annotations into study/<name>/ratings.json; the raw export kept beside it.

    The file is rewritten (and the raw export saved under pulls/) only when the ratings changed, so
    pulling again changes nothing; skipped annotations do not count and deleted ones disappear.
    """
    name = resolve_name(ws, name)
    folder = study_dir(ws, name)
    state = json.loads((folder / "study.json").read_text())
    mapping = json.loads((folder / "mapping.json").read_text())
    conn = connect(ws, url, token)
    project_id = state["project_id"]

    raw = conn.export_tasks(
        project_id, f"study project {project_id} no longer exists at {conn.url}: run `curate study create` again"
    )
    ratings, incomplete, tasks = [], [], 0
    for task in json.loads(raw):
        key = task.get("data", {}).get(TASK_KEY)
        if key not in mapping:
            continue
        tasks += 1
        entry = mapping[key]
        latest: dict[str, dict[str, Any]] = {}  # one rating per rater, as one vote per annotator in review
        annotations = sorted(task.get("annotations") or [], key=lambda a: str(a.get("updated_at") or ""))
        for annotation in annotations:
            if annotation.get("was_cancelled"):
                continue
            rater = writer(annotation)  # who wrote it: Label Studio takes completed_by from the request
            scores, problems = read_annotation(annotation, entry["slots"], state["criteria"])
            if scores is None:
                incomplete.append(
                    f"task {task['id']} ({entry['prompt']!r}) by rater {rater}: {'; '.join(problems)}"
                )
                continue
            if rater in latest:
                incomplete.append(f"task {task['id']} ({entry['prompt']!r}) by rater {rater}: rated it again;"
                                  " only their latest rating counts")  # fmt: skip
            latest[rater] = {"task": key, "rater": rater, "annotation": annotation["id"], "scores": scores}
        ratings += latest.values()
    ratings.sort(key=lambda r: (r["task"], str(r["rater"]), r["annotation"]))
    payload = {"ratings": ratings, "incomplete": sorted(incomplete)}
    path = folder / "ratings.json"
    changed = not path.exists() or json.loads(path.read_text()) != payload
    if changed:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        atomic_write_bytes(folder / "pulls" / f"{stamp}.json", raw)
        atomic_write_json(path, payload)
    return PullReport(name, tasks, len(ratings), payload["incomplete"], changed, path)

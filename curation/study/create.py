"""Create the Gen4Gen user preference study in Label Studio from `curate evaluate`'s images.

One task per held-out prompt: the prompt's token-free text, each concept's reference photo, and
one image per configuration side by side, each scored 1-10 per criterion. The study is blind: the
images are copied under study/<name>/images/ with opaque names (the evaluator's paths,
images/<configuration>/..., would name the configuration in the task's URL), their order is
shuffled per task with a seed, and which configuration sits in which slot is kept only in the
workspace (study/<name>/mapping.json). Label Studio serves the study's images and references from
the media tree alone (its storage is the study's folder there), so no rater can fetch the mapping,
the ratings or a pull by editing an image URL.

Like review, the project is found again by a marker in its description, and tasks are keyed by a
content id (`study_task`), so re-creating adds only what is new.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.core.buckets import BUCKET_TITLES
from curation.core.errors import CurateError
from curation.core.lock import writes
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Concept, content_id
from curation.core.workspace import Workspace, atomic_write_bytes, atomic_write_json
from curation.review.client import Connection, connect, media_folder, media_url
from curation.review.project import find_or_create_project
from curation.study.evaluation_folder import Item, read_evaluation
from curation.study.rating_page import DEFAULT_CRITERIA, STUDY_XML, TASK_KEY, check_criteria, label_config
from curation.study.studies import study_dir

DEFAULT_RATERS = 2
BATCH = 200
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def sample(items: list[Item], per_bucket: int | None, seed: int) -> list[Item]:
    """The same number of prompts from every concept-count bucket (the smallest bucket's, by default).

    Each bucket's prompts are ranked by a seeded hash of their key and the first N taken, so a larger
    N later keeps every prompt of the smaller study (re-creating only adds tasks).
    """
    by_bucket: dict[str, list[Item]] = {}
    for item in items:
        by_bucket.setdefault(item.bucket, []).append(item)
    if not by_bucket:
        return []
    n = per_bucket if per_bucket else min(len(v) for v in by_bucket.values())
    chosen = []
    for bucket in BUCKET_TITLES:
        ranked = sorted(by_bucket.get(bucket, []), key=lambda i: content_id([seed, i.key]))
        chosen += ranked[:n]
    return chosen


def slot_order(configurations: list[str], key: str, seed: int) -> list[str]:
    """The configurations in this task's shuffled order: seeded per task, so it never changes on re-create."""
    order = sorted(configurations)
    random.Random(f"{seed}:{key}").shuffle(order)
    return order


@dataclass
class CreateReport:
    name: str
    project_id: int
    url: str
    per_bucket: dict[str, int]
    already: int
    pushed: int
    dropped: list[str]

    def summary(self) -> str:
        buckets = ", ".join(f"{BUCKET_TITLES[b]}: {n}" for b, n in self.per_bucket.items())
        lines = [
            f"study {self.name}: {self.pushed} new tasks ({self.already} already there; "
            + f"prompts per bucket {buckets}) at {self.url}/projects/{self.project_id}"
        ]
        lines += [f"left out: {problem}" for problem in self.dropped]
        return "\n".join(lines)


def _references(
    ws: Workspace, conn: Connection, folder: Path, known: dict[str, Concept], concepts: tuple[str, ...]
) -> str:
    """A row of the concepts' first reference photos (copied into the study) with their names."""
    import html

    cells = []
    for cid in concepts:
        concept = known.get(cid)
        if concept is None or not concept.refs:
            raise CurateError(
                f"concept {cid!r} of the evaluator's prompts has no reference photo in {ws.root}: "
                "create the study in the workspace the export came from"
            )
        source = ws.resolve(concept.refs[0])
        target = folder / "refs" / f"{cid}{source.suffix}"
        if not target.exists():
            atomic_write_bytes(target, source.read_bytes())
        cells.append(
            f'<figure style="margin:0;text-align:center"><img src="{html.escape(media_url(conn, target))}" '
            f'style="height:96px;max-width:120px;object-fit:contain"/><figcaption>'
            f"{html.escape(concept.name)} ({html.escape(concept.class_noun)})</figcaption></figure>"
        )
    return f'<div style="display:flex;gap:8px;flex-wrap:wrap">{"".join(cells)}</div>'


@writes("study")
def create(
    ws: Workspace,
    evaluation_dir: Path,
    name: str | None = None,
    criteria: list[str] | None = None,
    raters: int | None = None,
    per_bucket: int | None = None,
    seed: int = 0,
    skip_incomplete: bool = False,
    url: str | None = None,
    token: str | None = None,
    progress: ProgressFn = no_progress,
) -> CreateReport:
    """Create (or extend) the study's project and push one task per sampled prompt not yet there.

    Args:
        evaluation_dir: a `curate evaluate -o` folder (results.json, images/<configuration>/).
        name: the study's folder under study/ and its project title; default the folder's name.
        criteria: one 1-10 score per image for each (default alignment, fidelity).
        raters: annotators per task (the project's maximum_annotations); default the study's
            earlier setting, 2 for a new study.
        per_bucket: prompts per concept-count bucket; default the smallest bucket's size.
        seed: sampling and the per-task image order.
        skip_incomplete: leave out prompts a configuration has no image for, instead of refusing.
    """
    criteria = check_criteria(list(criteria or DEFAULT_CRITERIA))
    if raters is not None and raters < 1:
        raise CurateError(f"--raters must be at least 1, got {raters}")
    evaluation = read_evaluation(evaluation_dir, skip_incomplete)
    name = name or evaluation.root.name
    if not _NAME.fullmatch(name):
        raise CurateError(f"study name {name!r}: use letters, digits, '.', '_' or '-' (pass --name)")
    folder = study_dir(ws, name)
    state_path, mapping_path = folder / "study.json", folder / "mapping.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    configurations = sorted(evaluation.configurations)
    if state and (
        state["criteria"] != criteria or state["configurations"] != configurations or state["seed"] != seed
    ):
        raise CurateError(
            f"study {name!r} was created with criteria {','.join(state['criteria'])}, configurations "
            f"{', '.join(state['configurations'])} and seed {state['seed']}: pass another --name for a different study"
        )
    chosen = sample(evaluation.items, per_bucket, seed)
    conn = connect(ws, url, token)
    known = ws.concepts()
    references = {item.key: _references(ws, conn, folder, known, item.concepts) for item in chosen}
    mapping: dict[str, Any] = json.loads(mapping_path.read_text()) if mapping_path.exists() else {}
    for index, item in enumerate(chosen):
        if item.key in mapping:
            continue
        slots = slot_order(configurations, item.key, seed)
        files = []
        for slot, config in enumerate(slots, start=1):
            source = item.images[config]
            target = folder / "images" / f"{content_id([name, item.key, slot])}{source.suffix}"
            atomic_write_bytes(target, source.read_bytes())
            files.append(target.relative_to(folder).as_posix())
        mapping[item.key] = {
            "prompt": item.prompt,
            "concepts": list(item.concepts),
            "bucket": item.bucket,
            "slots": slots,
            "files": files,
            "sources": {c: item.images[c].relative_to(evaluation.root).as_posix() for c in configurations},
        }
        progress("copy images", index + 1, len(chosen))
    atomic_write_json(mapping_path, mapping)  # before any task exists: a pushed task always has its mapping
    state = {
        "name": name,
        "source": str(evaluation.root),
        "criteria": criteria,
        "configurations": configurations,
        "seed": seed,
        "raters": raters or state.get("raters") or DEFAULT_RATERS,
        "weights": evaluation.weights,
        "url": conn.url,
        "project_id": state.get("project_id") if state.get("url") == conn.url else None,
    }
    project_id, _ = find_or_create_project(
        conn,
        state["project_id"],
        f"curate study: {ws.workspace_id}/{name}",
        lambda: {"title": f"curate study {name}", "label_config": label_config(len(configurations), criteria)},
        state["raters"],
        {media_folder(conn, folder): f"study {name}"},
        f"the study project ({STUDY_XML.name})",
    )
    state["project_id"] = project_id
    atomic_write_json(state_path, state)
    already = conn.task_keys(project_id, TASK_KEY)
    tasks = []
    for item in chosen:
        if item.key in already:
            continue
        data = {TASK_KEY: item.key, "prompt": item.prompt, "references": references[item.key]}
        for slot, file in enumerate(mapping[item.key]["files"], start=1):
            data[f"image_{slot}"] = media_url(conn, folder / file)
        tasks.append({"data": data})
    for start in range(0, len(tasks), BATCH):
        conn.import_tasks(project_id, tasks[start : start + BATCH], TASK_KEY)
        progress("push tasks", min(start + BATCH, len(tasks)), len(tasks))
    counts = Counter(item.bucket for item in chosen)
    return CreateReport(
        name,
        project_id,
        conn.url,
        {b: counts[b] for b in BUCKET_TITLES if counts[b]},
        len(chosen) - len(tasks),
        len(tasks),
        evaluation.dropped,
    )

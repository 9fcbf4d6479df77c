"""The Gen4Gen user preference study in Label Studio, built from `curate evaluate`'s images.

One task per held-out prompt: the prompt's token-free text, each concept's reference photo, and
one image per configuration side by side, each scored 1-10 per criterion. The study is blind: the
images are copied under study/<name>/images/ with opaque names (the evaluator's paths,
images/<configuration>/..., would name the configuration in the task's URL), their order is
shuffled per task with a seed, and which configuration sits in which slot is kept only in the
workspace (study/<name>/mapping.json). Every configuration shows its first image of a prompt:
the evaluator seeds a prompt's k-th image alike across configurations, so the images differ by
the model alone.

A prompt is matched across configurations by its concepts, background and token-free text: the
prompting strategy changes the text a model sees, not the held-out item. The whole evaluator
folder is checked before anything is pushed, so a task never lacks one of its images.

Like review, the project is found again by a marker in its description, tasks are keyed by a
content id (`study_task`) so re-creating adds only what is new, and a pull replaces the ratings
with what the server holds now (edits and deletions followed), writing nothing when nothing changed.
"""

from __future__ import annotations

import json
import random
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from curation.core.buckets import BUCKET_TITLES
from curation.core.errors import CurateError
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Concept, content_id
from curation.core.workspace import Workspace, atomic_write_bytes, atomic_write_json
from curation.review.push import CONFIG_DIR, Connection, _local_url, connect

STUDY_XML = CONFIG_DIR / "study.xml"
TASK_KEY = "study_task"
"""The task data field that joins a Label Studio task to its entry in mapping.json."""
SCORE_MIN, SCORE_MAX = 1, 10
DEFAULT_CRITERIA = ("alignment", "fidelity")
DEFAULT_RATERS = 2
CRITERION_TITLES = {
    "alignment": "Alignment: does the image show what the prompt says?",
    "fidelity": "Fidelity: do the objects look like the reference photos?",
}
REPEAT = "curate-repeat"
BATCH = 200
_CRITERION = re.compile(r"[a-z][a-z0-9_]{0,31}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Item:
    """One held-out prompt with the image each configuration made of it."""

    key: str
    prompt: str
    concepts: tuple[str, ...]
    bucket: str
    images: dict[str, Path]


@dataclass
class Evaluation:
    """What the study reads from an evaluator folder."""

    root: Path
    configurations: list[str]
    items: list[Item]
    weights: dict[str, str]
    dropped: list[str] = field(default_factory=list)
    """Problems of the prompts left out with skip_incomplete (empty otherwise)."""


def study_dir(ws: Workspace, name: str) -> Path:
    return ws.root / "study" / name


def check_criteria(criteria: list[str]) -> list[str]:
    """Criteria become control names (`alignment_1`): short lowercase identifiers, no repeats."""
    if not criteria:
        raise CurateError("give at least one criterion, e.g. --criteria alignment,fidelity")
    bad = [c for c in criteria if not _CRITERION.fullmatch(c)]
    if bad:
        raise CurateError(
            f"criterion {bad[0]!r} must be lowercase letters, digits or '_' (starting with a letter)"
        )
    if len(set(criteria)) != len(criteria):
        raise CurateError(f"criteria repeat: {', '.join(criteria)}")
    return list(criteria)


def item_key(concepts: list[str], background: str, text: str) -> str:
    return content_id({"concepts": list(concepts), "background": background, "text": text})


def read_evaluation(folder: Path, skip_incomplete: bool = False) -> Evaluation:
    """The evaluator's prompts with one image per configuration, refusing (or dropping) incomplete ones.

    Refused, with every problem named: a configuration whose image file is missing or unreadable for
    a prompt, and a configuration evaluated on other prompts than the rest. With `skip_incomplete`
    those prompts are left out instead and listed in `dropped`.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder).resolve()
    results = folder / "results.json"
    if not results.is_file():
        raise CurateError(f"no results.json in {folder}: give a `curate evaluate -o` folder")
    try:
        payload = json.loads(results.read_text())
        rows = payload["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CurateError(f"{results} is not an evaluator results file ({exc})") from None
    configurations = list(payload.get("configurations") or dict.fromkeys(r["configuration"] for r in rows))
    if len(configurations) < 2:
        raise CurateError(
            f"{results} has {len(configurations)} configuration(s): a study compares at least two"
        )
    first: dict[str, dict[str, dict]] = {c: {} for c in configurations}
    for row in rows:
        if row["configuration"] in first:
            key = item_key(row["concepts"], row["background"], row["plain_text"])
            first[row["configuration"]].setdefault(key, row)
    every = {key: row for per in first.values() for key, row in per.items()}
    messages: list[str] = []
    bad_keys: set[str] = set()
    for config in configurations:
        missing = [k for k in every if k not in first[config]]
        if missing:
            messages.append(
                f"configuration {config!r} was evaluated on other prompts: it lacks {len(missing)} of "
                f"{len(every)} (e.g. {every[missing[0]]['plain_text']!r})"
            )
        broken = []
        for key, row in first[config].items():
            path = (folder / row["image"]).resolve()
            try:
                if folder not in path.parents:  # only the evaluator's own images are copied into the study
                    raise OSError(f"{path} is outside {folder}")
                with Image.open(path) as image:
                    image.verify()
            except (OSError, UnidentifiedImageError):
                broken.append(key)
        if broken:
            example = first[config][broken[0]]
            messages.append(
                f"configuration {config!r} has no readable image for {len(broken)} prompts "
                f"(e.g. {example['image']} for {example['plain_text']!r})"
            )
        bad_keys.update(missing + broken)
    if messages and not skip_incomplete:
        raise CurateError(
            "; ".join(messages) + f" in {folder}: re-run `curate evaluate`, or pass --skip-incomplete to "
            "leave those prompts out"
        )
    items = [
        Item(
            key=key,
            prompt=row["plain_text"],
            concepts=tuple(row["concepts"]),
            bucket=row["bucket"],
            images={c: folder / first[c][key]["image"] for c in configurations},
        )
        for key, row in every.items()
        if key not in bad_keys
    ]
    return Evaluation(folder, configurations, items, dict(payload.get("weights") or {}), messages)


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


def label_config(n_slots: int, criteria: list[str], template: Path = STUDY_XML) -> str:
    """study.xml with its slot block written once per image and its criterion block once per criterion."""

    def substitute(element: ET.Element, context: dict[str, str]) -> ET.Element:
        out = ET.Element(element.tag)
        for name, value in element.attrib.items():
            if name == REPEAT:
                continue
            for placeholder, text in context.items():
                value = value.replace("{" + placeholder + "}", text)
            out.set(name, value)
        out.text, out.tail = element.text, element.tail
        for child in element:
            kind = child.get(REPEAT)
            if kind == "slot":
                out.extend(substitute(child, {**context, "slot": str(s)}) for s in range(1, n_slots + 1))
            elif kind == "criterion":
                out.extend(
                    substitute(
                        child, {**context, "criterion": c, "criterion_title": CRITERION_TITLES.get(c, c)}
                    )
                    for c in criteria
                )
            else:
                out.append(substitute(child, context))
        return out

    root = ET.parse(template).getroot()
    return ET.tostring(substitute(root, {}), encoding="unicode")


def control_name(criterion: str, slot: int) -> str:
    """The `from_name` of a score in the labeling page (slots count from 1)."""
    return f"{criterion}_{slot}"


def score_result(scores: dict[str, list[int | None]]) -> list[dict[str, Any]]:
    """An annotation `result` as the labeling page submits it: criterion -> score per slot (None: left empty)."""
    return [
        {
            "from_name": control_name(criterion, slot),
            "to_name": f"image_{slot}",
            "type": "number",
            "value": {"number": value},
        }
        for criterion, values in scores.items()
        for slot, value in enumerate(values, start=1)
        if value is not None
    ]


# -- create ------------------------------------------------------------------------------------
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
            f'<figure style="margin:0;text-align:center"><img src="{html.escape(_local_url(conn, target))}" '
            f'style="height:96px;max-width:120px;object-fit:contain"/><figcaption>'
            f"{html.escape(concept.name)} ({html.escape(concept.class_noun)})</figcaption></figure>"
        )
    return f'<div style="display:flex;gap:8px;flex-wrap:wrap">{"".join(cells)}</div>'


def _project(
    ws: Workspace,
    conn: Connection,
    name: str,
    state: dict[str, Any],
    n_slots: int,
    criteria: list[str],
    raters: int,
) -> int:
    """The study's project: the recorded one if it still exists, else one found by its marker, else new."""
    from label_studio_sdk.core.api_error import ApiError

    client = conn.client
    marker = f"curate study: {ws.workspace_id}/{name}"
    project_id = state.get("project_id") if state.get("url") == conn.url else None
    if project_id is not None and not conn.project_exists(project_id):
        project_id = None
    if project_id is None:
        found = conn.call(
            "project listing", lambda: [p.id for p in client.projects.list() if p.description == marker]
        )
        project_id = min(found) if found else None
    if project_id is None:
        try:
            project = conn.call(
                "project creation",
                lambda: client.projects.create(
                    title=f"curate study {name}",
                    description=marker,
                    label_config=label_config(n_slots, criteria),
                    maximum_annotations=raters,
                ),
            )
        except ApiError as exc:
            raise CurateError(
                f"Label Studio rejected the study project ({STUDY_XML.name}): {exc.body}"
            ) from exc
        project_id = project.id
    else:
        conn.call("project update", lambda: client.projects.update(id=project_id, maximum_annotations=raters))
    folder = study_dir(ws, name).resolve()
    storages = conn.call("storage listing", lambda: client.import_storage.local.list(project=project_id))
    if folder not in {Path(s.path) for s in storages}:
        conn.call(
            "storage creation",
            lambda: client.import_storage.local.create(
                project=project_id, path=str(folder), use_blob_urls=True, title=f"study {name}"
            ),
        )
    return project_id


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
    project_id = _project(ws, conn, name, state, len(configurations), criteria, state["raters"])
    state["project_id"] = project_id
    atomic_write_json(state_path, state)
    already = conn.task_keys(project_id, TASK_KEY)
    tasks = []
    for item in chosen:
        if item.key in already:
            continue
        data = {TASK_KEY: item.key, "prompt": item.prompt, "references": references[item.key]}
        for slot, file in enumerate(mapping[item.key]["files"], start=1):
            data[f"image_{slot}"] = _local_url(conn, folder / file)
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


# -- pull --------------------------------------------------------------------------------------
def studies(ws: Workspace) -> list[str]:
    root = ws.root / "study"
    return sorted(p.parent.name for p in root.glob("*/study.json")) if root.exists() else []


def resolve_name(ws: Workspace, name: str | None) -> str:
    """The named study, or the workspace's only one."""
    have = studies(ws)
    if name:
        if name not in have:
            raise CurateError(f"no study {name!r} in {ws.root} (have: {', '.join(have) or 'none'})")
        return name
    if len(have) != 1:
        raise CurateError(
            f"{len(have)} studies in {ws.root}: pass --name ({', '.join(have)})"
            if have
            else f"no study in {ws.root}: run `curate study create` first"
        )
    return have[0]


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


def _rater(annotation: dict[str, Any]) -> int | str:
    who = annotation.get("completed_by")
    return who.get("id", who.get("email")) if isinstance(who, dict) else who


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
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            scores, problems = read_annotation(annotation, entry["slots"], state["criteria"])
            if scores is None:
                incomplete.append(
                    f"task {task['id']} ({entry['prompt']!r}) by rater {_rater(annotation)}: {'; '.join(problems)}"
                )
                continue
            ratings.append(
                {"task": key, "rater": _rater(annotation), "annotation": annotation["id"], "scores": scores}
            )
    ratings.sort(key=lambda r: (r["task"], str(r["rater"]), r["annotation"]))
    payload = {"ratings": ratings, "incomplete": sorted(incomplete)}
    path = folder / "ratings.json"
    changed = not path.exists() or json.loads(path.read_text()) != payload
    if changed:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        atomic_write_bytes(folder / "pulls" / f"{stamp}.json", raw)
        atomic_write_json(path, payload)
    return PullReport(name, tasks, len(ratings), payload["incomplete"], changed, path)

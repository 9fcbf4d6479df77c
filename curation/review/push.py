"""Push candidates to human review: a saved FiftyOne view's candidates as tasks of the workspace's project.

Every store joins on `candidate_id`: a task carries it in its data, so pushing again skips what the
project already holds (also after a push that died mid-way), and pull writes onto the samples with
that id. Tasks go in the order that tells most first (Label Studio hands them out in import order),
a batch imported while the next is built; `--triage` holds back what a calibrated rule says people
would reject, marked on the samples, never deleted.
"""

from __future__ import annotations

import json
import random
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.labeling_config import parse_labeling_config
from curation.core.lock import writes
from curation.core.progress import ProgressFn, no_progress
from curation.core.workspace import Workspace, atomic_write_text
from curation.review.calibration import hold_back, load_groups, load_rules, random_weights
from curation.review.client import Connection, connect
from curation.review.project import ensure_project
from curation.review.task_page import PAGE, candidate_task, page_task

Order = Literal["uncertain", "score", "random", "view"]
ORDERS: tuple[str, ...] = get_args(Order)


@dataclass
class PushReport:
    project_id: int
    url: str
    in_view: int
    already: int
    pushed: int
    held: int = 0
    triage: tuple[str, ...] = ()  # with --triage: what it did for each concept count, and why
    pages: int | None = None  # tasks the new candidates went into, when pages hold several

    def summary(self) -> str:
        held = f", {self.held} held back by triage (view `{ds.VIEW_TRIAGED_OUT}`)" if self.held else ""
        triage = "".join(f"\n  triage, {line}" for line in self.triage)
        return (
            f"review push: {self.pushed} new {'tasks' if self.pages is None else f'candidates on {self.pages} pages'}"
            f" ({self.already} already in project {self.project_id}, "
            f"{self.in_view} in view{held}) at {self.url}/projects/{self.project_id}{triage}"
        )


def _score_fields(view: Any) -> list[str]:
    """Numeric machine scores to show and order by (clip_t first); review fields excluded."""
    from curation.review.calibration import numeric_scores

    return numeric_scores(view)


def _order(rows: list[dict[str, Any]], order: Order, key: str | None) -> list[dict[str, Any]]:
    """Most informative first: Label Studio hands out tasks in import order."""
    if order == "random":
        return random.Random(0).sample(rows, len(rows))
    if order == "view" or key is None:
        return rows
    scored = [r for r in rows if r.get(key) is not None]
    rest = [r for r in rows if r.get(key) is None]
    if order == "score":
        return sorted(scored, key=lambda r: -r[key]) + rest
    middle = statistics.median(r[key] for r in scored) if scored else 0.0
    return sorted(scored, key=lambda r: abs(r[key] - middle)) + rest


@writes("review")
def push(
    ws: Workspace,
    view: str = "unreviewed",
    url: str | None = None,
    token: str | None = None,
    order: Order = "uncertain",
    overlap: int | None = None,
    triage: bool = False,
    per_page: int | None = None,
    progress: ProgressFn = no_progress,
) -> PushReport:
    """Push the candidates of a saved FiftyOne view as tasks; only those not yet in the project.

    Args:
        view: saved view name (the index step saves `unreviewed`).
        url, token: an existing server; default the one `curate review serve` recorded.
        order: task order: `uncertain` (machine score nearest the median first), `score` (best
            first), `random` (seeded), `view` (as stored).
        overlap: annotators per task (the project's maximum_annotations).
        per_page: candidates per review page (`--batch`; default `review.candidates_per_page`): a
            page holds candidates of one composition (same concepts, hence the same references),
            each with its own answers; 1 is a page per candidate.
        triage: hold back the candidates `curate calibrate`'s rule says people would reject, only
            for concept counts whose rule passed the held-out check (lower bound on the recall of
            accepts >= 95%); every other count is sent whole and the summary says why. Held ones
            get a `triage` field and the `triaged_out` view, nothing is deleted, and a push
            without triage sends them (clearing the field).
    """
    rules = load_rules(ws)
    groups = load_groups(ws) if triage or rules else {}  # refuse before touching the server
    conn = connect(ws, url, token)
    dataset = ds.open_dataset(ws)
    if not dataset.has_saved_view(view):
        raise CurateError(
            f"no saved view {view!r} in dataset {dataset.name} (have: {dataset.list_saved_views()})"
        )
    samples = dataset.load_saved_view(view)
    project_id = ensure_project(ws, conn, overlap)
    scores = _score_fields(samples)
    fields = [ds.CANDIDATE_ID, "filepath", ds.CAPTION, ds.CONCEPTS, *scores]
    columns = samples.values(fields)
    rows = [dict(zip(fields, values, strict=True)) for values in zip(*columns, strict=True)]
    already = _project_tasks(ws, conn, project_id)
    new = [r for r in rows if r[ds.CANDIDATE_ID] not in already]
    concepts = ws.concepts()
    key = scores[0] if scores else None
    random = {name for name in scores if random_weights(dataset, name)}
    held: dict[str, str] = {}
    notes: list[str] = []
    if triage:
        held, notes = hold_back(new, rules, groups, random)
        new = [r for r in new if r[ds.CANDIDATE_ID] not in held]
    # what a page's "likely reject" hint quotes: each concept count's own rule and its held-out check
    earned = {g: (rule, groups[g].heldout) for g, rule in rules.items() if g in groups and groups[g].heldout}
    per_page = per_page or ws.config.review.candidates_per_page
    if per_page > 1 and new:
        _check_shows_pages(conn, project_id)
    pages = compositions(_order(new, order, key), per_page)
    batch = max(1, ws.config.review.batch_size // max(len(p) for p in pages)) if pages else 1
    with ThreadPoolExecutor(max_workers=1) as pool:  # Label Studio imports a batch while the next is built
        sending = None
        for start in range(0, len(pages), batch):
            tasks = [
                page_task(
                    ws, conn, [candidate_task(ws, conn, r, concepts, scores, random, earned) for r in page]
                )
                for page in pages[start : start + batch]
            ]
            if sending is not None:
                _record_pushed(ws, sending.result())
                progress("push tasks", start, len(pages))
            sending = pool.submit(_import_pages, conn, project_id, tasks)
        if sending is not None:
            _record_pushed(ws, sending.result())
            progress("push tasks", len(pages), len(pages))
    _record_triage(dataset, held, [r[ds.CANDIDATE_ID] for r in new])
    return PushReport(
        project_id,
        conn.url,
        len(rows),
        len(rows) - len(new) - len(held),
        len(new),
        len(held),
        tuple(notes),
        pages=len(pages) if len(pages) != len(new) else None,
    )


def compositions(rows: list[dict[str, Any]], per_page: int) -> list[list[dict[str, Any]]]:
    """Rows as pages of at most `per_page` candidates of one composition (the same set of concepts),
    each page placed where its first candidate stood: the order that tells most first still holds."""
    if per_page < 1:
        raise CurateError(f"a review page holds at least one candidate, not {per_page}")
    open_pages: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    pages: list[list[dict[str, Any]]] = []
    for row in rows:
        composition = tuple(sorted(row[ds.CONCEPTS] or []))
        page = open_pages.get(composition)
        if page is None or len(page) == per_page:
            page = open_pages[composition] = []
            pages.append(page)
        page.append(row)
    return pages


def _check_shows_pages(conn: Connection, project_id: int) -> None:
    """Refuse pages of several candidates for a project whose labeling page shows one a task.

    A project made before pages keeps the page it was made with: Label Studio refuses a new config
    that the annotations made on the old page do not fit (its star `Rating`), so it cannot be
    changed. That page shows a task's first candidate alone; the others of a page would be submitted
    unseen. Pages of one still go there (a page's data carries that page's `image` and `caption`).
    """
    xml = (conn.project(project_id) or {}).get("label_config") or ""
    try:
        shows_pages = parse_labeling_config(xml, f"of project {project_id}").per_item
    except CurateError:
        shows_pages = False
    if not shows_pages:
        raise CurateError(
            f"project {project_id} at {conn.url} was made with a review page that shows one candidate a "
            "task (before pages): push with --batch 1 (or review.candidates_per_page = 1) there"
        )


def _import_pages(conn: Connection, project_id: int, tasks: list[dict[str, Any]]) -> list[str]:
    """Import pages; the record's line of each: its candidate ids, space-separated, in slot order."""
    conn.import_tasks(project_id, tasks, ds.CANDIDATE_ID)  # a page's first candidate names it
    return [t["data"][PAGE] for t in tasks]


def pushed_file(ws: Workspace) -> Path:
    """What this workspace imported into its project, after a header naming the project: a line per
    task, its page's candidate ids in slot order (a single candidate's task: its id alone)."""
    return ws.review_dir / "pushed.txt"


def _project_tasks(ws: Workspace, conn: Connection, project_id: int) -> set[str]:
    """The candidate ids the project holds, from the workspace's record when the server agrees.

    Listing a 100K-task project costs Label Studio minutes, and a push must know what is there. The
    record is trusted only when it names this project and its size is the server's task count: a task
    deleted in Label Studio, or an import whose answer was lost (so the record missed it), makes
    them differ, and then the server's own listing is read and becomes the record; so does a record
    that is damaged (a line cut by a kill mid-append, bytes that are not UTF-8), whose count alone
    could still agree.
    """
    header = json.dumps({"url": conn.url, "project_id": project_id})
    path = pushed_file(ws)
    try:
        text = path.read_bytes().decode("utf-8") if path.exists() else ""
    except UnicodeDecodeError:
        text = ""
    lines = text.splitlines() if text.endswith("\n") else []  # a cut last line could still match the count
    recorded = set(lines[1:]) if lines[:1] == [header] else None
    project = conn.project(project_id)
    if recorded is not None and project is not None and project["task_number"] == len(recorded):
        return {cid for line in recorded for cid in line.split(" ")}
    found = _listed_pages(conn, project_id)
    atomic_write_text(path, "\n".join([header, *sorted(found)]) + "\n")
    return {cid for line in found for cid in line.split(" ")}


def _listed_pages(conn: Connection, project_id: int) -> set[str]:
    """The project's tasks as record lines, read from the server (tasks from before pages name one candidate)."""
    pages = conn.task_keys(project_id, PAGE)
    project = conn.project(project_id) or {"task_number": 0}
    singles = conn.task_keys(project_id, ds.CANDIDATE_ID) if project["task_number"] > len(pages) else set()
    first = {line.split(" ")[0] for line in pages}
    return pages | {cid for cid in singles if cid not in first}


def _record_pushed(ws: Workspace, imported: list[str]) -> None:
    """Append a batch the server confirmed; a line lost to a kill only makes the next push list the project."""
    with pushed_file(ws).open("a", encoding="utf-8") as record:
        record.write("".join(f"{cid}\n" for cid in imported))


def _record_triage(dataset: Any, held: dict[str, str], pushed: list[str]) -> None:
    """Write who triage held back (and clear it on what was pushed), and keep the view of them."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    if not held and not dataset.has_field(ds.TRIAGE):
        return
    if not dataset.has_field(ds.TRIAGE):
        dataset.add_sample_field(ds.TRIAGE, fo.StringField)
    values: dict[str, str | None] = {**dict.fromkeys(pushed), **held}
    if values:
        dataset.set_values(ds.TRIAGE, values, key_field=ds.CANDIDATE_ID)
    dataset.save_view(
        ds.VIEW_TRIAGED_OUT,
        dataset.match(F(ds.TRIAGE) != None),  # a MongoDB expression, not a Python test
        description="held back from review by a calibrated rule (`curate review push --triage`); "
        "the `triage` field says which; push without --triage to review them",
        overwrite=True,
    )

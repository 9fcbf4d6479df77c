"""What `curate status` and `curate review status` read of the FiftyOne dataset, recorded by its writers in a file.

Counting a few thousand reviews through FiftyOne took 21-23 s on 2 cores (10 s to import it, 10 s to
start its database) for figures that need a handful of fields per reviewed sample. The writers of
those fields record them as the dataset holds them when they finish (`curate index`: samples,
concepts, near-duplicates; `curate review pull`: the review fields), in
`index/summary/dataset.json`, and the read-only commands read that file instead.

The file never stands in for the dataset when it may say something else:
- a writer marks first (`index/summary/changing-<stage>.json`: host, pid, process start time), then
  writes the dataset, then records the summary, and removes its mark last. A mark whose process is
  gone means a writer died between its dataset writes and its summary: readers count from the
  dataset itself (slow, and they say why) until a writer records again; every summary is a whole
  snapshot, taken after the dead writer's last write, so the next one covers it;
- a mark whose process is alive means a writer is changing the dataset now: readers show the last
  summary and say that it may lack that writer's newest writes (the dataset itself is half-way too);
- snapshot and file write happen under one file lock, so of two writers that finish together the
  later snapshot is the one kept;
- the file names the database and dataset it was taken from: another FiftyOne database (URI, folder
  or name) or dataset name than now means it is not about the dataset the command would read.
The summary also notes the dataset's sample count and newest sample change (FiftyOne stamps every
sample write with `last_modified_at`). A process that already has FiftyOne connected (a notebook, a
test, a command that wrote the dataset) checks them, which costs two indexed queries, and counts from
the dataset when they moved: a change by other means (a notebook, a script) is then seen. A fresh
`curate status` does not start the database to check (that is the 10 s it saves): `--recount` there.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar

from curation.core import dataset as ds
from curation.core.acceptance import WrittenReview
from curation.core.workspace import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    import fiftyone as fo

    from curation.core.workspace import Workspace

VERSION = 2  # 2: the database URI recorded as a digest, never in clear
FIELDS = (
    ds.CANDIDATE_ID,
    ds.CONCEPTS,
    ds.NEAR_DUP_OF,
    ds.REVIEW_DECISION,
    ds.REVIEW_QUALITY,
    ds.REVIEW_ANNOTATORS,
    ds.REVIEW_AGREEMENT,
    ds.REVIEW_REASONS,
    ds.REVIEW_INVALID,
)
"""The fields the status commands read, of every sample with a review or an invalid annotation."""
log = logging.getLogger(__name__)


def summary_dir(ws: Workspace) -> Path:
    return ws.index_dir / "summary"


def summary_path(ws: Workspace) -> Path:
    return summary_dir(ws) / "dataset.json"


@dataclass
class DatasetSummary:
    """The status fields of the reviewed samples (and those holding invalid annotations), as columns."""

    dataset: str
    samples: int
    columns: dict[str, list[Any]]
    modified: str | None = None
    """The newest `last_modified_at` of the dataset's samples when the summary was taken (ISO 8601)."""

    def rows(self) -> Iterator[dict[str, Any]]:
        """One dict per sample, field name -> value."""
        names = list(self.columns)
        for values in zip(*self.columns.values(), strict=True):
            yield dict(zip(names, values, strict=True))


def written_review(row: dict[str, Any]) -> WrittenReview:
    """A summary row's review fields, for the acceptance rules."""
    return WrittenReview(
        row[ds.REVIEW_DECISION],
        row[ds.REVIEW_QUALITY],
        row[ds.REVIEW_ANNOTATORS],
        row[ds.REVIEW_AGREEMENT],
        row[ds.REVIEW_INVALID],
    )


@dataclass
class Reading:
    """The summary a command may use, or None when there is no dataset; `notes` say what to know about it."""

    summary: DatasetSummary | None
    notes: list[str] = field(default_factory=list)


def take(dataset: fo.Dataset) -> DatasetSummary:
    """Read the status fields from the dataset itself (starts FiftyOne's database)."""
    from fiftyone import ViewField as F

    from curation.core.acceptance import is_reviewed

    if dataset.has_field(ds.REVIEW_DECISION):
        wanted = is_reviewed()
        if dataset.has_field(ds.REVIEW_INVALID):
            wanted = wanted | (F(ds.REVIEW_INVALID) != None)  # a MongoDB expression
        view = dataset.match(wanted).sort_by(ds.CANDIDATE_ID)  # one order whatever the write history
        columns = {name: ds.field_values(view, name) for name in FIELDS}
    else:  # never pulled: no sample has a review
        columns = {name: [] for name in FIELDS}
    return DatasetSummary(dataset.name, len(dataset), columns, last_modified(dataset))


def last_modified(dataset: fo.Dataset) -> str | None:
    """The newest sample change FiftyOne stamped (an indexed field: one lookup), None with no samples."""
    newest = (
        dataset._sample_collection.find({}, {"last_modified_at": 1}).sort("last_modified_at", -1).limit(1)
    )
    stamps = [doc.get("last_modified_at") for doc in newest]
    return stamps[0].isoformat() if stamps and stamps[0] is not None else None


class ExportTake(NamedTuple):
    """What a default `curate export` does with the accepted-for-export candidates a summary holds."""

    taken: set[str]
    copies: set[str]
    """Left out: near-duplicate copies of a candidate taken."""
    stale: set[str]
    """Left out: set aside by `curate generate` (their plans or settings changed)."""


def export_take(ws: Workspace, summary: DatasetSummary, stale: set[str] | None = None) -> ExportTake:
    """The export's own rule (exports/select.py) over the summary: accepted for export, not stale, and
    not a near-duplicate copy of another candidate taken (`near_duplicate_copies`). `curate status`,
    `topup` and `review status` count what the export takes by this, so none of them can promise more.

    Args:
        stale: `ws.stale_candidates()`, when the caller has it already.
    """
    min_quality = ws.config.export.min_quality
    aside = ws.stale_candidates() if stale is None else stale
    chosen: dict[str, str | None] = {}
    stale: set[str] = set()
    for row in summary.rows():
        cid = row[ds.CANDIDATE_ID]
        if cid is None or not written_review(row).accepted_for_export(min_quality):
            continue
        if cid in aside:
            stale.add(cid)
        else:
            chosen[cid] = row[ds.NEAR_DUP_OF]
    copies = ds.near_duplicate_copies(chosen, chosen.keys())
    return ExportTake(set(chosen) - copies, copies, stale)


def database() -> dict[str, str | None]:
    """Which FiftyOne database a command of this environment uses, read as FiftyOne reads its settings
    (environment first, then its config file, then its defaults) without importing it.

    A URI is named by its SHA-256 only: a team's URI carries its MongoDB password (deploy/mongodb.sh),
    and the summary that records this is readable by every account that can read the workspace.
    """
    config_path = Path(os.environ.get("FIFTYONE_CONFIG_PATH") or Path.home() / ".fiftyone" / "config.json")
    try:
        settings = json.loads(config_path.read_text())
    except (OSError, ValueError):
        settings = {}

    def setting(key: str, default: str | None) -> str | None:
        return os.environ.get(f"FIFTYONE_{key.upper()}") or settings.get(key) or default

    uri = setting("database_uri", None)
    folder = setting("database_dir", str(Path.home() / ".fiftyone" / "var" / "lib" / "mongo"))
    return {
        "uri": hashlib.sha256(uri.encode()).hexdigest() if uri else None,
        "dir": None if uri else os.path.realpath(os.path.expanduser(folder or "")),
        "name": setting("database_name", "fiftyone"),
    }


# -- writers -----------------------------------------------------------------------------------
def _mark_path(ws: Workspace, stage: str) -> Path:
    return summary_dir(ws) / f"changing-{stage}.json"


def _this_process() -> dict[str, Any]:
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def _alive(mark: dict[str, Any]) -> bool | None:
    """Whether the marking process still runs; None when it ran on another host (it cannot be told)."""
    import psutil

    if mark.get("host") != socket.gethostname():
        return None
    try:
        return psutil.Process(int(mark["pid"])).create_time() == mark.get("started")
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _marks(ws: Workspace) -> dict[Path, dict[str, Any]]:
    found = {}
    for path in sorted(summary_dir(ws).glob("changing-*.json")):
        try:
            found[path] = json.loads(path.read_text())
        except (OSError, ValueError):
            found[path] = {}  # a mark being replaced, or one cut short: nobody can vouch for the summary
    return found


@contextmanager
def _file_lock(ws: Workspace) -> Iterator[None]:
    folder = summary_dir(ws)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def record(ws: Workspace) -> None:
    """Snapshot the dataset's status fields into the summary; clears the marks of writers that died.

    A writer that is gone wrote its last sample before this snapshot began, so the snapshot holds it.
    """
    with _file_lock(ws):
        dead = [path for path, mark in _marks(ws).items() if mark and _alive(mark) is False]
        summary = _from_dataset(ws) or DatasetSummary(ds.dataset_name(ws), 0, {name: [] for name in FIELDS})
        payload = {
            "version": VERSION,
            "database": database(),
            "dataset": summary.dataset,
            "samples": summary.samples,
            "modified": summary.modified,
            "columns": summary.columns,
        }
        atomic_write_bytes(summary_path(ws), json.dumps(payload, sort_keys=True).encode())
        for path in dead:
            path.unlink(missing_ok=True)


_depth: dict[tuple[Path, str], int] = {}
_guard = threading.Lock()
P = ParamSpec("P")
R = TypeVar("R")


def keeps_summary(stage: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a writer of the status fields (first argument: the workspace): it marks itself before
    it runs, records the summary after it ends (also after an error, if it reached the database), and
    unmarks last. A nested call (one stage running another's entry point) marks and records once."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def kept(*args: P.args, **kwargs: P.kwargs) -> R:
            ws: Any = args[0] if args else kwargs["ws"]
            key = (Path(ws.root), stage)
            with _guard:
                _depth[key] = _depth.get(key, 0) + 1
                outermost = _depth[key] == 1
            try:
                if not outermost:
                    return function(*args, **kwargs)
                mark = _mark_path(ws, stage)
                with _file_lock(ws):  # not between a recorder's finding a dead mark here and removing it
                    atomic_write_json(mark, _this_process())
                try:
                    result = function(*args, **kwargs)
                except BaseException:
                    _record_after_error(ws, mark)
                    raise
                record(ws)
                mark.unlink(missing_ok=True)
                return result
            finally:
                with _guard:
                    _depth[key] -= 1
                    if not _depth[key]:
                        del _depth[key]

        return kept

    return decorate


def _record_after_error(ws: Workspace, mark: Path) -> None:
    """After a writer failed: nothing to record if it never connected to the database; else record what
    the dataset now holds, and leave the mark (readers then count from the dataset) if that fails too."""
    if not _connected():
        mark.unlink(missing_ok=True)
        return
    try:
        record(ws)
    except Exception as exc:  # noqa: BLE001 (whatever failed, the writer's own error is the one to show)
        log.warning("could not record the dataset summary (readers will count from the dataset): %s", exc)
        return
    mark.unlink(missing_ok=True)


def _connected() -> bool:
    """Whether this process has FiftyOne connected to its database already (nothing is imported here)."""
    database_module = sys.modules.get("fiftyone.core.odm.database")
    return database_module is not None and not database_module._is_client_closed(database_module._client)


# -- readers -----------------------------------------------------------------------------------
def read(ws: Workspace, recount: bool = False) -> Reading:
    """The summary to count from: the recorded one when it can be trusted, else the dataset's own.

    Args:
        recount: Read the dataset itself whatever was recorded (e.g. after changing it by hand).

    Returns:
        No summary (None) when the workspace was never indexed; notes say why the dataset was read,
        or that a writer is changing it right now.
    """
    if recount:
        return Reading(_from_dataset(ws))
    path = summary_path(ws)
    if not path.exists():
        if not ws.index_dir.exists():
            return Reading(None)  # never indexed: no dataset, no reviews
        return _counted(
            ws, "no summary recorded yet (indexed by an older curate; the next index or pull records one)"
        )
    try:
        payload = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return _counted(ws, f"{path} is unreadable ({exc})")
    if payload.get("version") != VERSION:
        return _counted(ws, f"{path} is of another curate version")
    if payload.get("database") != database():
        return _counted(ws, "the summary was recorded from another FiftyOne database than this environment's")
    if payload.get("dataset") != ds.dataset_name(ws):
        return _counted(
            ws, f"the summary is of dataset {payload.get('dataset')!r}, not {ds.dataset_name(ws)!r}"
        )
    notes = []
    for mark_path, mark in _marks(ws).items():
        stage = mark_path.stem.removeprefix("changing-")
        alive = _alive(mark) if mark else None
        if alive is False or not mark:
            return _counted(
                ws, f"a `{stage}` run stopped before recording what it wrote (the next one records it)"
            )
        if alive is None:
            return _counted(ws, f"a `{stage}` run on {mark.get('host')} may be changing the dataset")
        notes.append(
            f"a `{stage}` run (pid {mark['pid']}) is changing the dataset now: these figures may lack its "
            "latest writes"
        )
    summary = DatasetSummary(
        payload["dataset"], payload["samples"], payload["columns"], payload.get("modified")
    )
    if not notes and _connected() and _moved(ws, summary):
        return _counted(
            ws, "the dataset changed since its summary was recorded (not by `curate index` or a pull)"
        )
    return Reading(summary, notes)


def _moved(ws: Workspace, summary: DatasetSummary) -> bool:
    """Whether the dataset's sample count or newest sample change differ from the summary's."""
    dataset = ds.find_dataset(ws)
    return dataset is not None and (len(dataset), last_modified(dataset)) != (
        summary.samples,
        summary.modified,
    )


def _counted(ws: Workspace, why: str) -> Reading:
    return Reading(_from_dataset(ws), [f"counting from the FiftyOne dataset (slow): {why}"])


def _from_dataset(ws: Workspace) -> DatasetSummary | None:
    dataset = ds.find_dataset(ws)
    if dataset is None:
        return None
    dataset.reload()  # a long-lived process holds one Dataset object: see fields another process added
    return take(dataset)

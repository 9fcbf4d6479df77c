"""The workspace folder: where every step reads and writes, and the guard that keeps paths inside it.

Layout (see DESIGN.md): curate.toml, concepts/<id>/, plans/plans.jsonl,
candidates/<shard>/<id>.{png,json} + _SUCCESS, review/, exports/<name>/.
All writes go through `atomic_write_*`, so a killed run never leaves a half-written file
that a later run would trust.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tomllib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import tomli_w
from pydantic import BaseModel, ValidationError

from curation.core.config import CurateConfig, dump_config, load_config
from curation.core.errors import CurateError
from curation.core.lock import stage_lock
from curation.core.records import Candidate, Concept, LayoutPlan
from curation.core.records import check_concept_id as _valid_concept_id

CONFIG_FILE = "curate.toml"
SUCCESS_MARKER = "_SUCCESS"
STALE_DIR = "_stale"
"""candidates/_stale/<shard>/: where `curate generate` moves candidates its plans or settings no longer make."""


def atomic_write_bytes(path: Path, data: bytes, secret: bool = False) -> None:
    """Write via a temp file in the same folder and rename, so readers see all or nothing.

    The file gets the mode any new file gets (0666 minus the umask): candidates and exports are
    read by training jobs and colleagues under other accounts, which mkstemp's 0600 would lock out.
    `secret=True` (credentials) makes it owner-only from the moment it exists, never readable in between.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, secret: bool = False) -> None:
    atomic_write_bytes(path, text.encode(), secret=secret)


def atomic_write_json(path: Path, payload: object, secret: bool = False) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", secret=secret)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new uniquely named folder with the umask's mode, to build a folder that is renamed into place.

    mkdtemp's 0700 would survive the rename and hide the finished folder from other accounts.
    """
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent / f"{prefix}{secrets.token_hex(6)}"
    folder.mkdir()
    return folder


def new_workspace_id(folder_name: str) -> str:
    """A readable prefix from the folder name plus 64 random bits: unique however folders are named."""
    prefix = re.sub(r"[^a-z0-9]+", "-", folder_name.lower()).strip("-")[:40] or "workspace"
    return f"{prefix}-{secrets.token_hex(8)}"


RecordT = TypeVar("RecordT", bound=BaseModel)


def read_record(model: type[RecordT], text_or_path: str | Path, where: str, remedy: str) -> RecordT:
    """A stored record, re-checked: a truncated, hand-edited or pre-validation record is named, not trusted.

    Args:
        model: The record type.
        text_or_path: The JSON itself, or the file holding it.
        where: How to name it to the user (a path, or a path and line number).
        remedy: What the user can do about it, appended to the message.

    Raises:
        CurateError: naming the record, its first problem and the remedy.
    """
    try:
        text = text_or_path.read_text() if isinstance(text_or_path, Path) else text_or_path
        return model.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        problem = f"{field}: {first['msg']}" if field else first["msg"]
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except OSError as exc:
        problem = exc.strerror or str(exc)
    kind = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", model.__name__).lower()
    raise CurateError(f"{where} is not a valid {kind} record ({problem}); {remedy}")


def _read_concept(path: Path) -> Concept:
    return read_record(Concept, path, str(path), "delete its folder and add the concept again")


class Workspace:
    """A dataset project folder. Construct with `Workspace.open` (existing) or `Workspace.create`."""

    def __init__(self, root: Path, wait_for_locks: bool = False):
        self.root = root.resolve()
        self.wait_for_locks = wait_for_locks

    @classmethod
    def create(cls, root: Path, config: CurateConfig | None = None) -> Workspace:
        """Create the folder and its config file; an existing config is kept, never overwritten.

        A new config gets a fresh `workspace.id` (unless `config` brings one), so two workspaces
        never share a FiftyOne dataset or a Label Studio project, whatever their folders are called.
        """
        ws = cls(root)
        try:
            ws.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise CurateError(f"cannot make a workspace at {ws.root}: {exc.filename} is a file, not a folder") from None
        except PermissionError:
            raise CurateError(f"cannot make a workspace at {ws.root}: permission denied") from None
        if ws.config_path.exists():
            ws._adopt_legacy_id()
        else:
            config = (config or CurateConfig()).model_copy(deep=True)
            config.workspace.id = config.workspace.id or new_workspace_id(ws.root.name)
            atomic_write_text(ws.config_path, dump_config(config))
        return ws

    @classmethod
    def open(cls, root: Path, wait_for_locks: bool = False) -> Workspace:
        """The workspace at `root`; `wait_for_locks` makes its writers queue behind a running command."""
        ws = cls(root, wait_for_locks)
        if not ws.config_path.exists():
            raise CurateError(f"{ws.root} is not a curate workspace (no {CONFIG_FILE}); run `curate init {root}`")
        ws._adopt_legacy_id()
        return ws

    def _adopt_legacy_id(self) -> None:
        """Write down an id for a curate.toml from before workspace ids: the folder's name.

        Such a workspace named its dataset `curate-<folder>`; taking the folder name as its id keeps
        that dataset, and writing it down keeps it across later renames. Every process derives the
        same value, so concurrent first opens agree without a lock. The section is appended, so the
        file's comments and layout stay (only an explicit `[workspace]` without an id is rewritten).
        """
        if self.config.workspace.id:
            return
        text = self.config_path.read_text()
        if "workspace" in tomllib.loads(text):
            config = self.config
            config.workspace.id = self.name
            updated = dump_config(config)
        else:
            updated = text.rstrip("\n") + "\n\n" + tomli_w.dumps({"workspace": {"id": self.name}})
        try:
            atomic_write_text(self.config_path, updated)
        except PermissionError:
            raise CurateError(
                f"{self.config_path} has no workspace id and cannot be written here; "
                f"add the line `id = {self.name!r}` under `[workspace]` (the folder name keeps its dataset)"
            ) from None

    # -- paths ---------------------------------------------------------------------------------
    def lock(self, stage: str) -> AbstractContextManager[None]:
        """Hold this workspace's `stage` writer lock (`curation.core.lock`): one writer per stage."""
        return stage_lock(self.root, stage, self.wait_for_locks)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def concepts_dir(self) -> Path:
        return self.root / "concepts"

    @property
    def plans_path(self) -> Path:
        return self.root / "plans" / "plans.jsonl"

    @property
    def candidates_dir(self) -> Path:
        return self.root / "candidates"

    @property
    def review_dir(self) -> Path:
        return self.root / "review"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def index_dir(self) -> Path:
        """What `curate index` keeps beside the dataset to skip unchanged files and old samples."""
        return self.root / "index"

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def workspace_id(self) -> str:
        """The identity in curate.toml that the dataset and the review project are named by.

        It travels with the folder: a renamed or copied workspace keeps its dataset (a copy shares
        it, as a backup would); separately created workspaces never share one.
        """
        return self.config.workspace.id

    def resolve(self, relative: str | Path) -> Path:
        """An absolute path for a workspace-relative one, refusing any that escapes the workspace."""
        path = (self.root / relative).resolve()
        if path != self.root and self.root not in path.parents:
            raise CurateError(f"path {relative!s} escapes the workspace {self.root}")
        return path

    def relative(self, path: Path) -> str:
        """The workspace-relative form stored in records (POSIX separators)."""
        return path.resolve().relative_to(self.root).as_posix()

    @property
    def config(self) -> CurateConfig:
        return load_config(self.config_path)

    # -- concepts ------------------------------------------------------------------------------
    @staticmethod
    def check_concept_id(concept_id: str) -> str:
        try:
            return _valid_concept_id(concept_id)
        except ValueError as exc:
            raise CurateError(str(exc)) from exc

    def concept_dir(self, concept_id: str) -> Path:
        return self.resolve(Path("concepts") / self.check_concept_id(concept_id))

    def save_concept(self, concept: Concept) -> None:
        atomic_write_json(self.concept_dir(concept.concept_id) / "concept.json", concept.model_dump())

    def concept(self, concept_id: str) -> Concept | None:
        """One ingested concept, or None when there is none under that id."""
        path = self.concept_dir(concept_id) / "concept.json"
        return _read_concept(path) if path.exists() else None

    def concepts(self) -> dict[str, Concept]:
        """Every ingested concept by id (a folder without concept.json is an unfinished ingest)."""
        found: dict[str, Concept] = {}
        if self.concepts_dir.exists():
            for path in sorted(self.concepts_dir.glob("*/concept.json")):
                concept = _read_concept(path)
                found[concept.concept_id] = concept
        return found

    # -- plans ---------------------------------------------------------------------------------
    def plans(self) -> list[LayoutPlan]:
        if not self.plans_path.exists():
            return []
        remedy = "fix or delete that line, or run `curate plan` again"
        return [
            read_record(LayoutPlan, line, f"{self.plans_path} line {number}", remedy)
            for number, line in enumerate(self.plans_path.read_text().splitlines(), start=1)
            if line.strip()
        ]

    def write_plans(self, plans: list[LayoutPlan]) -> None:
        atomic_write_text(self.plans_path, "".join(p.model_dump_json() + "\n" for p in plans))

    # -- candidates ----------------------------------------------------------------------------
    def shard_dir(self, shard: str) -> Path:
        return self.candidates_dir / shard

    def shard_done(self, shard: str) -> bool:
        return (self.shard_dir(shard) / SUCCESS_MARKER).exists()

    def is_stale(self, candidate_id: str, image: str) -> bool:
        """Whether `curate generate` set the candidate aside under candidates/_stale/ (plans or generator
        settings changed); its review outlives it in FiftyOne, but it is no longer part of the set."""
        shard = Path(image).parent.name
        record = f"{candidate_id}.json"
        return (
            not self.resolve(Path("candidates") / shard / record).exists()
            and self.resolve(Path("candidates") / STALE_DIR / shard / record).exists()
        )

    def stale_candidates(self) -> set[str]:
        """The ids `is_stale` holds true of, all at once: one walk of candidates/_stale/ instead of path
        checks per candidate (`curate status` asks about every reviewed one)."""
        aside = self.candidates_dir / STALE_DIR
        if not aside.is_dir():
            return set()
        return {
            path.stem
            for path in aside.glob("*/*.json")
            if not (self.candidates_dir / path.parent.name / path.name).exists()
        }

    def candidates(self, include_failed: bool = False) -> Iterator[Candidate]:
        """Candidates of finished shards, in shard then id order; an unreadable record is a CurateError.

        Args:
            include_failed: Also yield candidates whose generation failed.
        """
        for path in self.candidate_record_paths():
            candidate = read_record(Candidate, Path(path), path, "`curate generate` redoes it")
            if include_failed or candidate.status == "ok":
                yield candidate

    def candidate_record_paths(self) -> Iterator[str]:
        """The absolute paths of the candidate JSON files of finished shards, in shard then id order, unread.

        Listed with os.listdir and kept as strings: pathlib's glob and Path objects cost seconds at 100K files.
        """
        if not self.candidates_dir.exists():
            return
        for shard in sorted(os.listdir(self.candidates_dir)):
            folder = os.path.join(self.candidates_dir, shard)
            if not shard.startswith(".") and os.path.isfile(os.path.join(folder, SUCCESS_MARKER)):
                names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
                yield from (os.path.join(folder, name) for name in names)

"""`curate generate`: one candidate per (plan, seed), in resumable shards, on local worker processes or Ray.

Work is laid out deterministically: plans in file order, `seeds_per_plan` seeds each, cut into
shards of `shard_size` named 00000, 00001, ...; a candidate's id is the content hash of
(plan_id, seed, generator, generator config), so a re-run recomputes the same ids.

Files are written atomically, PNG before JSON, and a shard's `_SUCCESS` marker last; the marker
lists the shard's ids, so a shard is skipped only when it is complete for the current plans
(growing plans.jsonl re-opens the last shard instead of silently skipping new work). Inside an
unfinished shard, candidates whose PNG and JSON both exist are skipped, temp files left by a kill
are removed, and failed ones are retried. Stale candidates (of plans no longer in plans.jsonl, or
made under another generator config) are moved to candidates/_stale/, never deleted: with a
diffusion repaint they cost GPU hours.
A candidate that fails is written as a JSON record with status "failed" and counted by reason.

This module lays the work out and keeps the shards; `generators.candidates` makes the candidates
and `generators.executors` runs them in this process, in worker processes or on Ray actors.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from curation.core.errors import CurateError
from curation.core.lock import writes
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Candidate
from curation.core.workspace import (
    STALE_DIR,
    SUCCESS_MARKER,
    Workspace,
    atomic_write_json,
    read_record,
)
from generators.candidates import CandidateMaker
from generators.executors import EXECUTORS, run_chunk, run_in_processes, run_on_ray
from generators.generate_settings import batch_size, check_settings, generate_config
from generators.work import WorkItem, plan_work

_CHUNK = 8
"""Candidates per task sent to a worker: small enough to balance two workers inside one shard."""


@dataclass
class GenerateReport:
    """What a run did; failures are counted by reason, never dropped."""

    total: int = 0
    generated: int = 0
    skipped_candidates: int = 0
    skipped_shards: int = 0
    set_aside: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        failed = sum(self.failed.values())
        text = (
            f"{self.total} candidates: generated {self.generated}, skipped {self.skipped_candidates} already on disk "
            f"({self.skipped_shards} finished shards), failed {failed}"
        )
        if failed:
            text += " (" + ", ".join(f"{reason}: {n}" for reason, n in sorted(self.failed.items())) + ")"
        if self.set_aside:
            text += (
                f"; moved {self.set_aside} stale files (plans or config changed) to candidates/{STALE_DIR}/"
            )
        return text


def _read_marker(path: Path) -> dict[str, object] | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _open_shard(ws: Workspace, shard: str, items: list[WorkItem], report: GenerateReport) -> list[WorkItem]:
    """Decide what a shard still needs; clears its marker, temp files and stale candidates first."""
    folder = ws.shard_dir(shard)
    expected = {item.candidate_id for item in items}
    marker = folder / SUCCESS_MARKER
    done = _read_marker(marker) if marker.exists() else None
    finished = [_finished(folder, item.candidate_id) for item in items]
    if done is not None and sorted(expected) == done.get("ids") and not done.get("failed") and all(finished):
        report.skipped_shards += 1
        report.skipped_candidates += len(items)
        return []
    marker.unlink(missing_ok=True)
    if folder.exists():
        for leftover in folder.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        for path in folder.iterdir():
            if path.suffix in {".png", ".json"} and path.stem not in expected:
                _set_aside(ws, path, report)
    todo = []
    for item, ok in zip(items, finished, strict=True):
        if ok:
            report.skipped_candidates += 1
        else:
            todo.append(item)
    return todo


def _finished(folder: Path, candidate_id: str) -> bool:
    """Both files there and the record readable: a truncated or hand-broken record is made again."""
    if not (folder / f"{candidate_id}.png").exists():
        return False
    try:
        read_record(Candidate, folder / f"{candidate_id}.json", candidate_id, "")
    except CurateError:
        return False
    return True


def _set_aside(ws: Workspace, path: Path, report: GenerateReport) -> None:
    target = ws.candidates_dir / STALE_DIR / path.parent.name / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    report.set_aside += 1


def _drop_stale_shards(ws: Workspace, keep: set[str], report: GenerateReport) -> None:
    """Empty the shard folders the current plans no longer reach (plans.jsonl shrank)."""
    if not ws.candidates_dir.exists():
        return
    for folder in ws.candidates_dir.iterdir():
        if folder.is_dir() and folder.name.isdigit() and folder.name not in keep:
            (folder / SUCCESS_MARKER).unlink(missing_ok=True)  # first, so a kill here leaves it unfinished
            for path in folder.iterdir():
                if path.suffix in {".png", ".json"}:
                    _set_aside(ws, path, report)
            shutil.rmtree(folder)


def _close_shard(ws: Workspace, shard: str, items: list[WorkItem], failed: int) -> None:
    atomic_write_json(
        ws.shard_dir(shard) / SUCCESS_MARKER, {"ids": sorted(i.candidate_id for i in items), "failed": failed}
    )


@writes("generate")
def generate(
    ws: Workspace,
    workers: int | None = None,
    progress: ProgressFn = no_progress,
    executor: str = "local",
    generator: str | None = None,
) -> GenerateReport:
    """Generate every missing candidate of the current plans; safe to re-run after any kill.

    Args:
        ws: The workspace, with plans (run `curate plan` first).
        workers: Worker processes (or Ray actors); None means `generate.workers` from curate.toml.
        progress: Called as candidates finish (skipped ones count as done).
        executor: 'local' (processes on this machine) or 'ray'.
        generator: 'gen4gen' or 'msp'; None means `generate.generator` from curate.toml.

    Returns:
        Counts of generated, skipped and failed candidates (failures by reason).
    """
    config = generate_config(ws, generator)
    workers = workers or config.workers
    if workers < 1:
        raise CurateError(f"workers must be at least 1 (got {workers})")
    if executor not in EXECUTORS:
        raise CurateError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    items = plan_work(ws, generator)
    if not items:
        raise CurateError(f"no layout plans in {ws.plans_path}; run `curate plan` first")
    check_settings(config)
    # in-process runs load here, first, so a model that cannot load is one clear error before any file
    local = CandidateMaker(ws.root, generator) if workers == 1 and executor == "local" else None
    report = GenerateReport(total=len(items))
    shards: dict[str, list[WorkItem]] = {}
    for item in items:
        shards.setdefault(item.shard, []).append(item)
    _drop_stale_shards(ws, set(shards), report)
    todo = {shard: _open_shard(ws, shard, shard_items, report) for shard, shard_items in shards.items()}
    pending = {shard: len(work) for shard, work in todo.items()}
    failed_in: Counter[str] = Counter()
    done = report.skipped_candidates
    progress("generate", done, report.total)
    for shard, work in todo.items():
        if not work and not ws.shard_done(shard):  # everything was on disk, only the marker was missing
            _close_shard(ws, shard, shards[shard], 0)

    size = max(_CHUNK, batch_size(config))  # a chunk fills at least one repaint batch
    chunks = [work[i : i + size] for work in todo.values() for i in range(0, len(work), size)]
    if executor == "ray" and chunks:
        batches = run_on_ray(ws.root, chunks, config, workers, generator)
    elif workers == 1 or len(chunks) <= 1:
        if chunks and local is None:
            local = CandidateMaker(ws.root, generator)
        batches = (run_chunk(chunk, local) for chunk in chunks)
    else:
        batches = run_in_processes(ws.root, chunks, config, workers, generator)
    for results in batches:
        for shard, reason in results:
            pending[shard] -= 1
            if reason is None:
                report.generated += 1
            else:
                report.failed[reason] += 1
                failed_in[shard] += 1
            if pending[shard] == 0:  # the marker goes last, after every candidate of the shard
                _close_shard(ws, shard, shards[shard], failed_in[shard])
        done += len(results)
        progress("generate", done, report.total)
    return report

"""`curate generate`: one candidate per (plan, seed), in resumable shards, on local worker processes.

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
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from curation.config import GenerateConfig
from curation.devices import resolve_device
from curation.errors import CurateError
from curation.paste_record import PASTE_SILHOUETTES, PASTE_THUMBS, encode_silhouettes, paste_thumbnails
from curation.progress import ProgressFn, no_progress
from curation.records import Box, Candidate, Concept, LayoutPlan, content_id
from curation.workspace import (
    STALE_DIR,
    SUCCESS_MARKER,
    Workspace,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_record,
)
from generators.compose import compose, pick_reference, procedural_background
from generators.recaption import Captioner, caption_settings, load_captioner, template_caption
from generators.repaint import (
    Repainter,
    RepaintJob,
    load_repainter,
    repaint_prompt,
    repaint_settings,
)

if TYPE_CHECKING:
    from generators.msp import MSPGenerator

GENERATOR_VERSION = 1
"""Bump when the offline pipeline's pixels change, so new images get new ids."""
GENERATORS = ("gen4gen", "msp")
_CHUNK = 8
"""Candidates per task sent to a worker: small enough to balance two workers inside one shard."""
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
]
"""Huffman-only zlib after PNG filtering: measured 24 ms and 239 KB per 512x512 candidate against
35 ms and 281 KB for plain level 1 (PNG encoding is the largest single cost of the offline path)."""


@dataclass(frozen=True)
class WorkItem:
    """One candidate to make: where it goes and what defines it."""

    shard: str
    candidate_id: str
    plan: LayoutPlan
    seed: int


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


class CandidateFailure(Exception):
    """A candidate-level problem with a short reason used for counting ('unknown_concept')."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def generator_config(config: GenerateConfig) -> dict[str, object]:
    """Everything besides plan and seed that determines a candidate's pixels and caption.

    MSP leaves the repaint settings out (it does not repaint) and `max_unet_batch` (it only moves
    pixels by rounding, like the batch size), so neither re-ids finished MSP candidates; the SAL
    settings count only when SAL is on, so workspaces made before it existed keep their ids.
    """
    if config.generator == "msp":
        sal_off = {"sal_model", "sal_scale", "sal_steps"} if not config.msp.sal_model else set()
        return {
            "generator": config.generator,
            "version": GENERATOR_VERSION,
            "recaption": config.recaption,
            "msp": config.msp.model_dump(exclude={"max_unet_batch", *sal_off}),
            **caption_settings(config),
        }
    return {
        "generator": config.generator,
        "version": GENERATOR_VERSION,
        "repaint": config.repaint,
        "recaption": config.recaption,
        **repaint_settings(config),
        **caption_settings(config),
    }


def generate_config(ws: Workspace, generator: str | None = None) -> GenerateConfig:
    """The workspace's [generate] section, with the generator overridden when one is named."""
    config = ws.config.generate
    if generator is None or generator == config.generator:
        return config
    if generator not in GENERATORS:
        raise CurateError(f"unknown generator {generator!r}; use one of {', '.join(GENERATORS)}")
    return config.model_copy(update={"generator": generator})


def plan_work(ws: Workspace, generator: str | None = None) -> list[WorkItem]:
    """Every candidate the current plans and config call for, in shard order."""
    config = generate_config(ws, generator)
    if config.shard_size < 1 or config.seeds_per_plan < 1:
        raise CurateError("generate.shard_size and generate.seeds_per_plan must be at least 1")
    gen_config = generator_config(config)
    items = []
    pairs = itertools.product(ws.plans(), range(config.seeds_per_plan))
    for index, (plan, seed) in enumerate(pairs):
        cid = content_id(
            {"plan_id": plan.plan_id, "seed": seed, "generator": config.generator, "config": gen_config}
        )
        items.append(
            WorkItem(shard=f"{index // config.shard_size:05d}", candidate_id=cid, plan=plan, seed=seed)
        )
    return items


# -- making one candidate (runs in workers) ----------------------------------------------------


def pick_references(
    plan: LayoutPlan, seed: int, concepts: dict[str, Concept]
) -> list[tuple[Concept, int, Box]]:
    """(concept, reference photo index, box) for each box of the plan.

    Seeded by the plan and the seed index, not by the candidate id (which includes the generator):
    the Gen4Gen and the MSP candidate of one plan and seed paste the same photos, so comparing
    them compares the generators, not the photos they happened to start from.
    """
    rng = np.random.default_rng(int(content_id({"plan_id": plan.plan_id, "seed": seed}), 16))
    return [(concepts[b.concept_id], pick_reference(concepts[b.concept_id], rng), b) for b in plan.boxes]


Ready = tuple[WorkItem, Candidate, RepaintJob]
"""A prepared candidate: its work item, its record so far, and its paste composition."""


def _batches(ready: list[Ready], size: int) -> Iterator[list[Ready]]:
    """Batches of at most `size` sharing one canvas size: a diffusion call denoises one latent shape."""

    def canvas(entry: Ready) -> tuple[int, int]:
        return entry[0].plan.width, entry[0].plan.height

    for _, group in itertools.groupby(sorted(ready, key=canvas), key=canvas):
        same = list(group)
        yield from (same[i : i + size] for i in range(0, len(same), size))


class _Generator:
    """Per-process state: workspace, concepts and backends, loaded once.

    Both generators share the paste composition: Gen4Gen repaints it, MSP starts from it as a
    scaffold and segments by its pasted silhouettes, so one plan gives comparable candidates.
    """

    def __init__(self, root: Path, generator: str | None = None):
        self.ws = Workspace(root)
        self.config = generate_config(self.ws, generator)
        self.concepts: dict[str, Concept] = self.ws.concepts()
        self.repainter: Repainter | None = None
        self.msp: MSPGenerator | None = None
        if self.config.generator == "msp":
            from generators.msp import MSPGenerator

            if self.config.msp.controlnet:
                raise CurateError(
                    "generate.msp.controlnet needs one control image per plan, which `curate generate` "
                    "does not make; leave it empty here and call generators.msp.MSPGenerator directly"
                )
            device, _ = resolve_device(self.config.device, "auto")
            # every planned subject needs a class in M_SAL: checked once here, before any image
            subjects = sorted({c for plan in self.ws.plans() for c in plan.concepts})
            self.msp = MSPGenerator.from_settings(self.config.msp, device=device, subjects=subjects)
        else:
            self.repainter = load_repainter(self.config.repaint, self.config)
        self.captioner: Captioner = load_captioner(self.config.recaption, self.config)
        self.gen_config = generator_config(self.config)

    @property
    def batch_size(self) -> int:
        """Candidates per diffusion call."""
        return self.repainter.batch_size if self.repainter is not None else self.config.batch_size

    def _paths(self, item: WorkItem) -> tuple[Path, Path]:
        folder = self.ws.shard_dir(item.shard)
        return folder / f"{item.candidate_id}.png", folder / f"{item.candidate_id}.json"

    def run(self, items: list[WorkItem]) -> list[str | None]:
        """Make and write candidates, `batch_size` of one canvas size per repaint or MSP call.

        Returns one failure reason (or None when it succeeded) per item, in order. A failure while
        preparing or finishing one candidate fails only that one; a failed repaint call fails its batch.
        """
        reasons: dict[str, str | None] = {}
        ready: list[Ready] = []
        for item in items:
            record = self._record(item)
            try:
                ready.append((item, *self._prepare(item, record)))
            except Exception as exc:  # noqa: BLE001 - a failed candidate is data: recorded, counted, retried
                reasons[item.candidate_id] = self._fail(item, record, exc)
        for batch in _batches(ready, self.batch_size):
            try:
                painted = self._paint(batch)
            except Exception as exc:  # noqa: BLE001
                reasons |= {item.candidate_id: self._fail(item, record, exc) for item, record, _ in batch}
                continue
            for (item, _, _), (record, image) in zip(batch, painted, strict=True):
                try:
                    self._finish(item, record, image)
                    reasons[item.candidate_id] = None
                except Exception as exc:  # noqa: BLE001
                    reasons[item.candidate_id] = self._fail(item, record, exc)
        return [reasons[item.candidate_id] for item in items]

    def _record(self, item: WorkItem) -> Candidate:
        png, _ = self._paths(item)
        return Candidate(
            candidate_id=item.candidate_id,
            plan_id=item.plan.plan_id,
            shard=item.shard,
            image=self.ws.relative(png),
            concepts=item.plan.concepts,
            boxes=item.plan.boxes,
            width=item.plan.width,
            height=item.plan.height,
            background=item.plan.background,
            seed=item.seed,
            generator=self.config.generator,
            generator_config=self.gen_config,
        )

    def _fail(self, item: WorkItem, record: Candidate, exc: Exception) -> str:
        png, meta = self._paths(item)
        reason = exc.reason if isinstance(exc, CandidateFailure) else type(exc).__name__
        png.unlink(missing_ok=True)
        record = record.model_copy(update={"status": "failed", "error": f"{reason}: {exc}"})
        atomic_write_text(meta, record.model_dump_json(indent=2))
        return reason

    def _prepare(self, item: WorkItem, record: Candidate) -> tuple[Candidate, RepaintJob]:
        """Pick references and compose; the record gets everything known before repainting."""
        plan = item.plan
        missing = [c for c in plan.concepts if c not in self.concepts]
        if missing:
            raise CandidateFailure("unknown_concept", f"concepts not in the workspace: {', '.join(missing)}")
        picks = pick_references(plan, item.seed, self.concepts)
        background = procedural_background(plan.background, plan.width, plan.height, item.seed)
        composition = compose(self.ws, background, picks)
        job = RepaintJob(composition, repaint_prompt(plan, self.concepts), int(item.candidate_id, 16) % 2**63)
        placed = {layer.concept_id: layer.box for layer in composition.layers}
        record = record.model_copy(
            update={
                "boxes": [placed[c] for c in plan.concepts],
                "template_caption": template_caption(plan, self.concepts),
                "prompt": job.prompt,
                "refs_used": {concept.concept_id: concept.refs[i] for concept, i, _ in picks},
                "extra": {
                    "plan_boxes": [b.model_dump() for b in plan.boxes],
                    "masks_used": {concept.concept_id: concept.masks[i] for concept, i, _ in picks},
                    "planner": plan.planner,
                    # the diffusion seed (MSP records it as msp.seed): the id's hash, since plans share item.seed
                    **({"repaint_seed": job.seed} if self.msp is None else {}),
                    # what identity drift compares the repainted image with (192 bytes per concept)
                    PASTE_THUMBS: paste_thumbnails(
                        composition.image, list(placed.values()), plan.width, plan.height
                    ),
                    # where the pasted edges lie, for the seam score (about 1 KB)
                    PASTE_SILHOUETTES: encode_silhouettes(composition.silhouettes()),
                },
            }
        )
        return record, job

    def _paint(self, batch: list[Ready]) -> list[tuple[Candidate, np.ndarray]]:
        """Final images of one batch, each with its record completed by the backend's provenance.

        MSP records its run under `extra["msp"]` (model, seed, kappa, switch step, segment and
        global prompts) as Gen4Gen records its repaint under `extra["repaint"]`; the prompt it
        conditioned the harmonization phase on becomes the candidate's prompt.
        """
        jobs = [job for _, _, job in batch]
        if self.repainter is not None:
            images = self.repainter(jobs)
            return [
                (record.model_copy(update={"extra": record.extra | {"repaint": self.repainter.config()}}), image)
                for (_, record, _), image in zip(batch, images, strict=True)
            ]
        from PIL import Image

        from generators.msp import masks_from_layers

        assert self.msp is not None
        settings = self.config.msp
        plans = [item.plan for item, _, _ in batch]
        results = self.msp(
            plans,
            self.concepts,
            [job.seed for job in jobs],
            settings=settings,
            scaffolds=[Image.fromarray(job.composition.image) for job in jobs] if settings.scaffold else None,
            masks=[masks_from_layers(job.composition.layers, p.width, p.height) for job, p in zip(jobs, plans)],
        )
        return [
            (
                record.model_copy(
                    update={
                        "prompt": result.provenance["global_prompt"],
                        "extra": record.extra | {"msp": result.provenance},
                    }
                ),
                np.asarray(result.image.convert("RGB")),
            )
            for (_, record, _), result in zip(batch, results, strict=True)
        ]

    def _finish(self, item: WorkItem, record: Candidate, image: np.ndarray) -> None:
        """Caption the final image, then write PNG and JSON (atomically, PNG first)."""
        png, meta = self._paths(item)
        caption = self.captioner(image, item.plan, self.concepts, record.template_caption)
        ok, encoded = cv2.imencode(".png", image[..., ::-1], _PNG_PARAMS)
        if not ok:
            raise CandidateFailure("encode_failed", "PNG encoding failed")
        atomic_write_bytes(png, encoded.tobytes())
        extra = record.extra | {"recaption": self.captioner.config()}
        if caption.vlm_caption is not None:
            extra["vlm_caption"] = caption.vlm_caption
        record = record.model_copy(update={"caption": caption.text, "extra": extra})
        atomic_write_text(meta, record.model_dump_json(indent=2))


_WORKER: _Generator | None = None


def _init_worker(root: Path, generator: str | None = None) -> None:
    global _WORKER
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe
    _WORKER = _Generator(root, generator)


def _run_chunk(items: list[WorkItem], generator: _Generator | None = None) -> list[tuple[str, str | None]]:
    generator = generator or _WORKER
    assert generator is not None, "worker used before _init_worker"
    return list(zip([item.shard for item in items], generator.run(items), strict=True))


# -- shards and executors (main process) -------------------------------------------------------


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


Results = list[tuple[str, str | None]]
"""(shard, failure reason or None) for each candidate of a finished chunk."""


def _process_batches(
    root: Path, chunks: list[list[WorkItem]], workers: int, generator: str | None
) -> Iterator[Results]:
    """Local worker processes (spawned, so no state leaks from the caller); one model load each."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(root, generator)
    ) as pool:
        futures: set[Future] = {pool.submit(_run_chunk, chunk) for chunk in chunks}
        while futures:
            finished, futures = wait(futures, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()


class _RayWorker:
    """A Ray actor holding one loaded generator (the workspace must be on a filesystem it sees)."""

    def __init__(self, root: str, generator: str | None):
        _init_worker(Path(root), generator)

    def run_chunk(self, items: list[WorkItem]) -> Results:
        return _run_chunk(items)


def _ray_batches(
    root: Path, chunks: list[list[WorkItem]], workers: int, generator: str | None
) -> Iterator[Results]:
    """Ray actors, one per worker; `RAY_ADDRESS` (or `ray start`) picks a cluster, else a local one.

    A worker gets a GPU when the cluster has one for every worker, so diffusion repaint scales
    across GPUs without code changes; the classical path needs none.
    """
    import ray
    from ray.util import ActorPool

    from curation.ray_cluster import connect_ray

    connect_ray()
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= workers else 0
    actor = ray.remote(num_cpus=1, num_gpus=gpus)(_RayWorker)
    pool = ActorPool([actor.remote(str(root), generator) for _ in range(workers)])
    yield from pool.map_unordered(lambda a, chunk: a.run_chunk.remote(chunk), chunks)


EXECUTORS = ("local", "ray")


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
    local = _Generator(ws.root, generator)  # validates the config here, with a clear error, before any worker starts
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

    size = max(_CHUNK, local.batch_size)  # a chunk fills at least one repaint batch
    chunks = [work[i : i + size] for work in todo.values() for i in range(0, len(work), size)]
    if executor == "ray" and chunks:
        batches = _ray_batches(ws.root, chunks, workers, generator)
    elif workers == 1 or len(chunks) <= 1:
        batches = (_run_chunk(chunk, local) for chunk in chunks)
    else:
        batches = _process_batches(ws.root, chunks, workers, generator)
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

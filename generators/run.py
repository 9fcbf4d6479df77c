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

Models (diffusion repaint, MSP, a VLM captioner) are loaded once per worker and never by the driver
when workers do the work: a second copy of SDXL in the driver costs ~7 GB of GPU memory for nothing.
Local workers are spread round-robin over the visible GPUs (`curation.core.devices.worker_devices`); Ray
actors ask for a fraction of a GPU (`ray_gpus_per_worker`), so more workers than GPUs share them.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from curation.core.config import GenerateConfig
from curation.core.devices import resolve_device, visible_cuda_devices, worker_devices
from curation.core.errors import CurateError
from curation.core.paste_record import PASTE_SILHOUETTES, PASTE_THUMBS, encode_silhouettes, paste_thumbnails
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Box, Candidate, Concept, LayoutPlan, content_id
from curation.core.workspace import (
    STALE_DIR,
    SUCCESS_MARKER,
    Workspace,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_record,
)
from generators.compose import compose, pick_reference, procedural_background
from generators.recaption import (
    OPENAI_PREFIX,
    TEMPLATE,
    Captioner,
    caption_settings,
    load_captioner,
    template_caption,
)
from generators.repaint import (
    CLASSICAL,
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


def loads_model(config: GenerateConfig) -> bool:
    """Whether a worker loads a torch model (diffusion repaint, MSP, a local VLM) and so wants a GPU."""
    local_vlm = config.recaption != TEMPLATE and not config.recaption.startswith(OPENAI_PREFIX)
    return config.generator == "msp" or config.repaint != CLASSICAL or local_vlm


def batch_size(config: GenerateConfig) -> int:
    """Candidates per repaint or MSP call; the classical repaint takes one at a time."""
    return config.batch_size if config.generator == "msp" or config.repaint != CLASSICAL else 1


def check_settings(config: GenerateConfig) -> None:
    """Settings errors found without loading anything, in the driver, before any worker starts."""
    if config.generator == "msp" and config.msp.controlnet:
        raise CurateError(
            "generate.msp.controlnet needs one control image per plan, which `curate generate` "
            "does not make; leave it empty here and call generators.msp.MSPGenerator directly"
        )


def ray_gpus_per_worker(config: GenerateConfig, workers: int, cluster_gpus: float) -> float:
    """The GPUs each Ray actor asks for: none unless it loads a model.

    `gpu_per_worker` when set; else 1/k of a GPU with k = ceil(workers / GPUs), so every actor is placed
    and Ray packs k of them on each GPU (a fraction such as 2/3 would leave the third of three actors
    on two GPUs waiting forever: Ray places a fractional request on one GPU, never across two).

    Raises:
        CurateError: the requests cannot all be placed on the cluster's GPUs (the run would hang).
    """
    if not loads_model(config) or (config.gpu_per_worker is None and cluster_gpus < 1):
        return 0.0
    share = config.gpu_per_worker or 1 / math.ceil(workers / math.floor(cluster_gpus))
    fits = math.floor(1 / share + 1e-9) * math.floor(cluster_gpus)
    if workers > fits:
        raise CurateError(
            f"{workers} Ray workers asking for {share:g} GPU each do not fit on the cluster's "
            f"{cluster_gpus:g} GPUs; lower --workers or generate.gpu_per_worker"
        )
    return share


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

    def __init__(self, root: Path, generator: str | None = None, device: str | None = None):
        self.ws = Workspace(root)
        self.config = generate_config(self.ws, generator)
        if device is not None:  # this worker's GPU, in place of the configured 'auto' or 'cuda'
            self.config = self.config.model_copy(update={"device": device})
        check_settings(self.config)
        self.concepts: dict[str, Concept] = self.ws.concepts()
        self.repainter: Repainter | None = None
        self.msp: MSPGenerator | None = None
        if self.config.generator == "msp":
            from generators.msp import MSPGenerator

            device, _ = resolve_device(self.config.device, "auto")
            # every planned subject needs a class in M_SAL: checked once here, before any image
            subjects = sorted({c for plan in self.ws.plans() for c in plan.concepts})
            self.msp = MSPGenerator.from_settings(self.config.msp, device=device, subjects=subjects)
        else:
            self.repainter = load_repainter(self.config.repaint, self.config)
        self.captioner: Captioner = load_captioner(self.config.recaption, self.config)
        self.gen_config = generator_config(self.config)

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
        for batch in _batches(ready, batch_size(self.config)):
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


_WORKER: _Generator | Exception | None = None
"""This worker process's generator, or why it could not be loaded (raised with every chunk)."""


def _init_worker(root: Path, generator: str | None = None, devices: Any = None) -> None:
    """Load this worker's models once; `devices` (a queue) hands each pool worker its own device."""
    global _WORKER
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe
    try:
        _WORKER = _Generator(root, generator, devices.get() if devices is not None else None)
    except Exception as exc:  # noqa: BLE001 - a failing pool initializer only reports a broken pool
        _WORKER = exc


def _run_chunk(items: list[WorkItem], generator: _Generator | None = None) -> list[tuple[str, str | None]]:
    generator = generator or _WORKER
    if isinstance(generator, Exception):
        raise generator
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
    root: Path, chunks: list[list[WorkItem]], config: GenerateConfig, workers: int, generator: str | None
) -> Iterator[Results]:
    """Local worker processes (spawned, so no state leaks from the caller); one model load each.

    A worker that loads a model takes its own device from a queue (round-robin over the visible GPUs).
    """
    context = multiprocessing.get_context("spawn")
    devices = None
    if loads_model(config):
        devices = context.Queue()
        for device in worker_devices(config.device, workers, visible_cuda_devices()):
            devices.put(device)
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(root, generator, devices)
    ) as pool:
        futures: set[Future] = {pool.submit(_run_chunk, chunk) for chunk in chunks}
        try:
            while futures:
                finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:  # after an error, chunks not yet started are dropped instead of run for nothing
            for future in futures:
                future.cancel()


class _RayWorker:
    """A Ray actor holding one loaded generator (the workspace must be on a filesystem it sees)."""

    def __init__(self, root: str, generator: str | None):
        _init_worker(Path(root), generator)

    def run_chunk(self, items: list[WorkItem]) -> Results:
        return _run_chunk(items)


def ray_actor_class(config: GenerateConfig, workers: int, cluster_gpus: float) -> Any:
    """The Ray actor class of a generate worker, with its CPU and (fractional) GPU request."""
    import ray

    return ray.remote(num_cpus=1, num_gpus=ray_gpus_per_worker(config, workers, cluster_gpus))(_RayWorker)


def _ray_batches(
    root: Path, chunks: list[list[WorkItem]], config: GenerateConfig, workers: int, generator: str | None
) -> Iterator[Results]:
    """Ray actors, one per worker; `RAY_ADDRESS` (or `ray start`) picks a cluster, else a local one.

    Ray pins each GPU-requesting actor to its GPU (`CUDA_VISIBLE_DEVICES`), so 'auto' finds it.
    """
    import ray
    from ray.util import ActorPool

    from curation.core.ray_cluster import connect_ray

    connect_ray()
    actor = ray_actor_class(config, workers, ray.cluster_resources().get("GPU", 0))
    pool = ActorPool([actor.remote(str(root), generator) for _ in range(workers)])
    try:
        yield from pool.map_unordered(lambda a, chunk: a.run_chunk.remote(chunk), chunks)
    except ray.exceptions.RayTaskError as exc:  # a worker that could not load its model says why
        if isinstance(exc.cause, CurateError):
            raise CurateError(str(exc.cause)) from None
        raise


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
    check_settings(config)
    # in-process runs load here, first, so a model that cannot load is one clear error before any file
    local = _Generator(ws.root, generator) if workers == 1 and executor == "local" else None
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
        batches = _ray_batches(ws.root, chunks, config, workers, generator)
    elif workers == 1 or len(chunks) <= 1:
        if chunks and local is None:
            local = _Generator(ws.root, generator)
        batches = (_run_chunk(chunk, local) for chunk in chunks)
    else:
        batches = _process_batches(ws.root, chunks, config, workers, generator)
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

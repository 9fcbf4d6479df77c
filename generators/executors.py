"""Where `curate generate` runs its chunks of work: in this process, in local worker processes, or on Ray actors.

Models (diffusion repaint, MSP, a VLM captioner) are loaded once per worker and never by the driver
when workers do the work: a second copy of SDXL in the driver costs ~7 GB of GPU memory for nothing.
Local workers are spread round-robin over the visible GPUs (`curation.core.devices.worker_devices`);
Ray actors ask for a fraction of a GPU (`ray_gpus_per_worker`), so more workers than GPUs share them.
Every executor yields, per finished chunk, each candidate's shard and failure reason (None when made).
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import cv2

from curation.core.config import GenerateConfig
from curation.core.devices import visible_cuda_devices, worker_devices
from curation.core.errors import CurateError
from generators.candidates import CandidateMaker
from generators.generate_settings import loads_model
from generators.work import WorkItem

EXECUTORS = ("local", "ray")

ChunkResults = list[tuple[str, str | None]]
"""(shard, failure reason or None) for each candidate of a finished chunk."""


_WORKER: CandidateMaker | Exception | None = None
"""This worker process's candidate maker, or why it could not be loaded (raised with every chunk)."""


def _init_worker(root: Path, generator: str | None = None, devices: Any = None) -> None:
    """Load this worker's models once; `devices` (a queue) hands each pool worker its own device."""
    global _WORKER
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe
    try:
        _WORKER = CandidateMaker(root, generator, devices.get() if devices is not None else None)
    except Exception as exc:  # noqa: BLE001 - a failing pool initializer only reports a broken pool
        _WORKER = exc


def run_chunk(items: list[WorkItem], maker: CandidateMaker | None = None) -> ChunkResults:
    """Make one chunk with `maker`, or with this worker process's own; raises why it could not load."""
    maker = maker or _WORKER
    if isinstance(maker, Exception):
        raise maker
    assert maker is not None, "worker used before _init_worker"
    return list(zip([item.shard for item in items], maker.run(items), strict=True))


def run_in_processes(
    root: Path, chunks: list[list[WorkItem]], config: GenerateConfig, workers: int, generator: str | None
) -> Iterator[ChunkResults]:
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
        futures: set[Future] = {pool.submit(run_chunk, chunk) for chunk in chunks}
        try:
            while futures:
                finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:  # after an error, chunks not yet started are dropped instead of run for nothing
            for future in futures:
                future.cancel()


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


class _RayWorker:
    """A Ray actor holding one loaded generator (the workspace must be on a filesystem it sees)."""

    def __init__(self, root: str, generator: str | None):
        _init_worker(Path(root), generator)

    def run_chunk(self, items: list[WorkItem]) -> ChunkResults:
        return run_chunk(items)


def ray_actor_class(config: GenerateConfig, workers: int, cluster_gpus: float) -> Any:
    """The Ray actor class of a generate worker, with its CPU and (fractional) GPU request."""
    import ray

    return ray.remote(num_cpus=1, num_gpus=ray_gpus_per_worker(config, workers, cluster_gpus))(_RayWorker)


def run_on_ray(
    root: Path, chunks: list[list[WorkItem]], config: GenerateConfig, workers: int, generator: str | None
) -> Iterator[ChunkResults]:
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

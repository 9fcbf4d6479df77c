"""Benchmark `curate index`: CLIP throughput of the pipeline vs a bare batched forward, artifact scores/s.

Writes N synthetic candidates (PNG + Candidate JSON + _SUCCESS) into a temporary workspace, loads the
CLIP model once, then times in one run:
  * bare:  encode_image + encode_text of the same model on already preprocessed batches (the model
           work indexing needs per candidate: one image, one caption), nothing else; timed before
           and after the index run and averaged, since a shared machine's load drifts;
  * index: `index_workspace` end to end on a fresh dataset (hashing, decoding, preprocessing,
           artifact scores, MongoDB writes, saved views) with the same loaded model;
  * artifact scores alone on decoded images.
Random weights are used (same cost as real ones). FiftyOne uses a throw-away database folder.

    .venv/bin/python benchmarks/bench_index.py --n 64 --size 256
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class IndexTimes:
    """Seconds (wall and this process's CPU) for the bare forward and for `index_workspace`, same candidates."""

    bare: float
    bare_cpu: float
    indexed: float
    indexed_cpu: float
    report: Any


def measure_index(ws: Any, scorer: Any, candidates: list[Any], batch_size: int) -> IndexTimes:
    """Bare CLIP forward (before and after, averaged: a shared machine's load drifts) vs indexing end to end.

    The bare side embeds the same candidates' already preprocessed images and captions, nothing else:
    the model work indexing needs. The dataset `index_workspace` makes is left for the caller to delete.
    """
    import torch
    from PIL import Image

    from curation.index.run import index_workspace
    from curation.index.samples import clip_text

    tensors = [scorer.image_tensor(Image.open(ws.resolve(c.image)).convert("RGB")) for c in candidates]
    texts = [clip_text(c) for c in candidates]
    scorer.embed_tensors(torch.stack(tensors[:2]))  # warm-up

    def timed(fn) -> tuple[float, float, object]:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        return time.perf_counter() - wall, time.process_time() - cpu, result

    def bare_forward() -> None:
        for i in range(0, len(tensors), batch_size):
            scorer.embed_tensors(torch.stack(tensors[i : i + batch_size]))
            scorer.embed_texts(texts[i : i + batch_size])

    bare_1, bare_cpu_1, _ = timed(bare_forward)
    indexed, indexed_cpu, report = timed(lambda: index_workspace(ws, scorer=scorer))
    bare_2, bare_cpu_2, _ = timed(bare_forward)
    return IndexTimes((bare_1 + bare_2) / 2, (bare_cpu_1 + bare_cpu_2) / 2, indexed, indexed_cpu, report)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=64, help="candidates")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-index-"))
    os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(tmp / "fiftyone-db"))
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"

    import numpy as np
    import torch
    from PIL import Image

    from curation.scores.artifacts import artifact_scores
    from curation.scores.clip import load_clip
    from tests.fixtures.candidate_workspace import index_test_workspace, write_candidates

    ws = index_test_workspace(tmp / "ws", args.model, batch_size=args.batch_size)
    candidates = write_candidates(ws, args.n, size=args.size, shard_size=200)
    scorer = load_clip(args.model, None, batch_size=args.batch_size)
    import fiftyone as fo

    fo.list_datasets()  # start the embedded MongoDB outside the timings
    load_before = os.getloadavg()[0]
    times = measure_index(ws, scorer, candidates, args.batch_size)
    bare, bare_cpu, indexed, indexed_cpu, report = (
        times.bare,
        times.bare_cpu,
        times.indexed,
        times.indexed_cpu,
        times.report,
    )
    assert report.added == args.n, report.summary()
    images = [Image.open(ws.resolve(c.image)).convert("RGB") for c in candidates]

    arrays = [np.asarray(im) for im in images]
    start = time.perf_counter()
    for array, c in zip(arrays, candidates):
        artifact_scores(array, c.boxes, c.width, c.height)
    artifacts = time.perf_counter() - start

    fo.delete_dataset(report.dataset)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"model {args.model} ({scorer.weights} weights) on {scorer.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"N={args.n} images {args.size}x{args.size}, batch {args.batch_size}, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'':32s} {'wall':>20s} {'process CPU':>22s}")
    print(
        f"{'bare forward (image+text)':32s} {args.n / bare:8.2f} cand/s ({bare:6.1f} s)"
        f" {args.n / bare_cpu:8.2f} cand/cpu-s ({bare_cpu:6.1f} s)"
    )
    print(
        f"{'index_workspace end to end':32s} {args.n / indexed:8.2f} cand/s ({indexed:6.1f} s)"
        f" {args.n / indexed_cpu:8.2f} cand/cpu-s ({indexed_cpu:6.1f} s)"
    )
    print(
        f"{'pipeline overhead (goal <= 15%)':32s} {100 * (indexed / bare - 1):+14.1f} %"
        f" {100 * (indexed_cpu / bare_cpu - 1):+20.1f} %"
    )
    print(f"{'artifact scores alone':32s} {args.n / artifacts:8.1f} images/s")
    print(f"{'peak RSS of this process':32s} {peak_mib:8.0f} MiB")


if __name__ == "__main__":
    main()

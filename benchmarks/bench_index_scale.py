"""Benchmark incremental `curate index`: time and peak RSS to add 1K candidates to 0, 10K, 50K, 100K samples.

Goal (issue 15): adding 1K to 100K costs <= 1.5x adding 1K to an empty dataset, peak RSS <= 4 GB.

A cheap stand-in embedding (8x8 pooled pixels and caption bytes through fixed random projections
to 512 dims, inside the real `ClipScorer`, flagged as pretrained so near-duplicates run) keeps model
time from hiding the pipeline. The empty case has its own workspace; the others grow one workspace
from base size to base size. For each, in separate processes (so peak RSS is the add's):
  * build: grow the workspace to BASE tiny base candidates (32x32 PNG + record + _SUCCESS). The first
    shard goes through `index_workspace`; the other samples are bulk-inserted as copies of that
    shard's stored documents with their own ids, hashes and embeddings (what earlier runs would have
    written; uniqueness and the map are recorded as last run at this size: they are periodic O(N^2)
    work, `curate index --diversity`). Then one `index_workspace` run, as after a killed run, reads
    the new files into the file memo and rebuilds the near-duplicate store from the dataset;
  * add: 1K new candidates (1% of them byte copies of old images, 1% copies of each other) through
    the real `index_workspace`, timed per stage, with the process's peak RSS.
Ratios are to the empty base, whole run and without the uniqueness + map step (which the empty
base runs because the dataset grew from nothing). FiftyOne uses its own database name, dropped at
the end.

    .venv/bin/python benchmarks/bench_index_scale.py --bases 0,10000,50000,100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = 32
DIM = 512
SHARD = 500


def stand_in_scorer():
    """The real ClipScorer around a model that costs microseconds per image."""
    import numpy as np
    import torch

    from curation.scores.clip import ClipScorer

    generator = torch.Generator().manual_seed(0)
    image_projection = torch.randn(3 * 8 * 8, DIM, generator=generator)
    text_projection = torch.randn(256, DIM, generator=generator)

    class StandIn(torch.nn.Module):
        def encode_image(self, batch: torch.Tensor) -> torch.Tensor:
            return batch.flatten(1) @ image_projection

        def encode_text(self, counts: torch.Tensor) -> torch.Tensor:
            return counts @ text_projection

    def preprocess(image):
        pooled = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255 - 0.5
        return torch.from_numpy(pooled).permute(2, 0, 1).contiguous()

    def tokenizer(texts: list[str]) -> torch.Tensor:
        return torch.stack(
            [
                torch.bincount(torch.tensor(list(t.encode()) or [0]), minlength=256)[:256].float()
                for t in texts
            ]
        )

    return ClipScorer(
        model_name="stand-in",
        pretrained="stand-in",
        weights="pretrained",
        fingerprint="stand-in:pooled-pixels",
        device="cpu",
        dim=DIM,
        model=StandIn(),
        preprocess=preprocess,
        tokenizer=tokenizer,
        batch_size=64,
    )


def write_candidates(ws, start: int, stop: int, prefix: str, seed: int) -> list[dict]:
    """Candidates `start`..`stop` (noise images) in finished shards of SHARD, as Candidate dicts.

    Records are `Candidate.model_dump()` of one validated template with per-candidate values
    swapped in (validating 100K records one by one would dominate building the base).
    """
    import io

    import numpy as np
    from PIL import Image

    from curation.core.records import Box, Candidate
    from curation.core.workspace import SUCCESS_MARKER

    template = Candidate(
        candidate_id="x",
        plan_id="x",
        shard="x",
        image="x",
        concepts=["cat", "mug"],
        boxes=[Box(concept_id="cat", x=2, y=8, w=12, h=12), Box(concept_id="mug", x=18, y=8, w=12, h=12)],
        width=SIZE,
        height=SIZE,
        background="a sunny garden",
        caption="<c-cat> cat and <c-mug> mug in a sunny garden",
        prompt="a sunny garden",
        seed=0,
        generator="bench",
    ).model_dump()
    written = []
    for i in range(start, stop):
        shard = f"{prefix}-{i // SHARD:05d}"
        cid = f"{prefix}{i:06d}"
        record = template | {
            "candidate_id": cid,
            "plan_id": f"plan{i:06d}",
            "shard": shard,
            "image": f"candidates/{shard}/{cid}.png",
            "seed": i,
        }
        pixels = np.random.default_rng([seed, i]).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        folder = ws.shard_dir(shard)
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        record["_png"] = buffer.getvalue()
        (folder / f"{cid}.png").write_bytes(record["_png"])
        (folder / f"{cid}.json").write_text(json.dumps({k: v for k, v in record.items() if k != "_png"}))
        written.append(record)
    for shard in {c["shard"] for c in written}:
        (ws.shard_dir(shard) / SUCCESS_MARKER).touch()
    return written


def build(base: int, folder: Path) -> None:
    """Grow the workspace in `folder` to `base` base samples, as earlier index runs would have left it."""
    import hashlib
    import io
    from datetime import UTC, datetime

    import numpy as np
    from bson import ObjectId
    from PIL import Image

    from curation.core import dataset as ds
    from curation.core.records import content_id
    from curation.core.workspace import Workspace
    from curation.index.diversity import DIVERSITY
    from curation.index.run import INDEX_COMPLETE, index_workspace
    from tests.fixtures.candidate_workspace import index_test_workspace

    marker = folder / "workspace"
    if marker.exists():
        ws = Workspace.open(Path(marker.read_text()))
    else:
        ws = index_test_workspace(folder / "ws", "ViT-B-32", batch_size=64)
        marker.write_text(str(ws.root))
    have = sum(1 for shard in ws.candidates_dir.glob("base-*") for _ in shard.glob("*.json"))
    if base <= have:
        return
    scorer = stand_in_scorer()
    if not have:  # the first shard through the real path: the template of every stored document
        write_candidates(ws, 0, SHARD, "base", seed=0)
        index_workspace(ws, scorer=scorer)
        have = SHARD
    dataset = ds.open_dataset(ws)
    collection = dataset._sample_collection
    template = collection.find_one({ds.SHARD: "base-00000"})
    embedding_field = dataset.get_field(ds.CLIP_EMBEDDING)
    for start in range(have, base, 5000):
        chunk = write_candidates(ws, start, min(base, start + 5000), "base", seed=0)
        vectors = scorer.embed_images([Image.open(io.BytesIO(c["_png"])) for c in chunk])
        now = datetime.now(UTC)
        docs = []
        for record, vector in zip(chunk, vectors):
            png = record.pop("_png")
            docs.append(
                template
                | {
                    "_id": ObjectId(),
                    "filepath": str(ws.root / record["image"]),
                    "created_at": now,
                    "last_modified_at": now,
                    "_rand": float(np.random.random()),
                    ds.CANDIDATE_ID: record["candidate_id"],
                    ds.PLAN_ID: record["plan_id"],
                    ds.SHARD: record["shard"],
                    ds.SEED: record["seed"],
                    ds.IMAGE_HASH: hashlib.sha256(png).hexdigest()[:16],  # what image_hash() reads
                    ds.RECORD_HASH: content_id(record),
                    ds.CLIP_EMBEDDING: embedding_field.to_mongo(vector),
                    ds.NEAR_DUP_CHECKED: True,
                    ds.NEAR_DUP_OF: None,
                }
            )
        collection.insert_many(docs)
    dataset.info[DIVERSITY] = dataset.info[DIVERSITY] | {"samples": len(dataset)}
    dataset.info[INDEX_COMPLETE] = False  # the next run syncs the near-duplicate store, as after a kill
    dataset.save()
    report = index_workspace(ws, scorer=scorer)
    assert not report.added and not report.updated, report.summary()


def add(folder: Path, n: int) -> dict:
    """Add `n` candidates through `index_workspace` and measure it."""
    from curation.core import dataset as ds
    from curation.core.workspace import Workspace
    from curation.index.run import DATASET_STAGE, index_workspace

    ws = Workspace.open(Path((folder / "workspace").read_text()))
    scorer = stand_in_scorer()
    old = [Path(path[: -len(".json")] + ".png") for path in ws.candidate_record_paths()]
    new = [ws.root / c["image"] for c in write_candidates(ws, 0, n, f"add{len(old)}-", seed=1 + len(old))]
    # 1% copies of old images (of other new ones when there are none), so pairs are found either way
    sources = old[:: max(1, len(old) // (n // 100))] if old else new[n // 100 :]
    for source, target in zip(sources[: n // 100], new):
        target.write_bytes(source.read_bytes())
    dataset = ds.find_dataset(ws)  # also opens the database connection, outside the timing
    samples = len(dataset) if dataset is not None else 0
    marks: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        key = f"{stage} {done}/{total}" if stage == DATASET_STAGE else stage
        marks.setdefault(key, time.perf_counter())

    start = time.perf_counter()
    cpu = time.process_time()
    report = index_workspace(ws, scorer=scorer, progress=progress)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    end = time.perf_counter()
    assert report.added == n, report.summary()
    diversity = marks.get(f"{DATASET_STAGE} 2/2", end) - marks.get(f"{DATASET_STAGE} 1/2", end)
    near_dups = marks.get(f"{DATASET_STAGE} 1/2", end) - marks.get(f"{DATASET_STAGE} 0/2", end)
    result = {
        "samples": samples,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "plan": marks.get("indexing (CLIP, presence, artifact scores)", end)
        - marks.get("checking candidates", start),
        "near_duplicates": near_dups,
        "diversity": diversity,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hashed": report.hashed,
        "parsed": report.parsed,
        "queried": report.near_duplicate_queries,
        "marked": report.near_duplicates,
        "uniqueness": report.uniqueness,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bases", default="0,10000,50000,100000", help="comma-separated base sizes")
    parser.add_argument("--add", type=int, default=1000, help="candidates added to each base")
    parser.add_argument("--build", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    if args.build is not None:
        build(args.build, args.dir)
        return
    if args.measure:
        print(json.dumps(add(args.dir, args.add)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-index-scale-"))
    os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(tmp / "fiftyone-db"))
    os.environ.setdefault("FIFTYONE_DATABASE_NAME", f"bench-index-scale-{os.getpid()}")
    import fiftyone as fo

    fo.list_datasets()  # held open: FiftyOne stops its database service when the last client leaves
    results = {}
    try:
        for base in sorted(int(b) for b in args.bases.split(",")):
            folder = tmp / ("empty" if base == 0 else "grown")  # one workspace grows from base to base
            folder.mkdir(exist_ok=True)
            me = [sys.executable, __file__, "--dir", str(folder), "--add", str(args.add)]
            started = time.perf_counter()
            subprocess.run([*me, "--build", str(base)], check=True)
            built = time.perf_counter() - started
            measured = subprocess.run([*me, "--measure"], check=False, capture_output=True, text=True)
            if measured.returncode:
                sys.exit(f"measuring base {base} failed:\n{measured.stderr[-3000:]}")
            results[base] = json.loads(measured.stdout.strip().splitlines()[-1])
            r = results[base]
            print(
                f"{r['samples']:>6} samples: add {args.add} in {r['seconds']:6.1f} s (CPU {r['cpu_seconds']:6.1f} s;"
                f" checking files {r['plan']:5.1f} s, near-dups {r['near_duplicates']:5.1f} s,"
                f" uniqueness+map {r['diversity']:5.1f} s), peak RSS {r['peak_rss_mib']:6.0f} MiB;"
                f" hashed {r['hashed']}, parsed {r['parsed']}, near-dup queries {r['queried']},"
                f" marked {r['marked']}  [base built in {built:.0f} s]",
                flush=True,
            )
    finally:
        from fiftyone.core.odm.database import drop_database

        drop_database()
        shutil.rmtree(tmp)
    print(f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    empty = results.get(0)
    smallest = results[min(b for b in results if b)] if any(results) else None
    for r in results.values():
        line = f"{r['samples']:>6} samples: peak RSS {r['peak_rss_mib'] / 1024:4.2f} GiB"
        if empty:  # wall time, then this process's CPU time (fairer on a shared machine; mongod not counted)
            steady = (r["seconds"] - r["diversity"]) / (empty["seconds"] - empty["diversity"])
            line += f", {r['seconds'] / empty['seconds']:4.2f}x the empty case ({steady:4.2f}x without uniqueness+map"
            line += f", CPU {r['cpu_seconds'] / empty['cpu_seconds']:4.2f}x)"
        if smallest:
            line += f", {r['seconds'] / smallest['seconds']:4.2f}x the {smallest['samples']}-sample case"
            line += f" (CPU {r['cpu_seconds'] / smallest['cpu_seconds']:4.2f}x)"
        print(line)


if __name__ == "__main__":
    main()

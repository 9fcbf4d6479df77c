"""Offline generation throughput: candidates/s for 1 and 2 local workers, and their ratio.

Builds a throw-away workspace from scikit-image sample photos (ingest time is not measured),
plans N layouts at 512x512 and times `generators.run.generate` from scratch once per worker
count. Also prints the per-candidate cost and what a 12K-candidate run would take at that rate.

    .venv/bin/python benchmarks/bench_generate_offline.py --n 200
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from curation.concepts.references import add_concept
from curation.core.config import CurateConfig, GenerateConfig, LayoutConfig
from curation.core.workspace import Workspace
from curation.demo import DEMO_CONCEPTS, write_sample_photos
from generators.layout import plan_layouts
from generators.run import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="candidates per measured run")
    parser.add_argument("--size", type=int, default=512, help="canvas side in pixels")
    parser.add_argument("--shard-size", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        config = CurateConfig(
            layout=LayoutConfig(width=args.size, height=args.size),
            generate=GenerateConfig(shard_size=args.shard_size),
        )
        ws = Workspace.create(Path(tmp) / "ws", config)
        for concept_id, paths in write_sample_photos(Path(tmp) / "photos").items():
            add_concept(ws, concept_id, paths, class_noun=DEMO_CONCEPTS[concept_id][0])
        plan_layouts(ws, args.n)

        rates = {}
        for workers in (1, 2):
            shutil.rmtree(ws.candidates_dir, ignore_errors=True)
            start, cpu_start = time.perf_counter(), time.process_time()
            report = generate(ws, workers=workers)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            assert report.generated == args.n, report.summary()
            rates[workers] = args.n / seconds
            print(
                f"workers={workers}: {args.n} candidates at {args.size}x{args.size} in {seconds:.1f} s = "
                f"{rates[workers]:.2f} candidates/s ({1000 / rates[workers]:.0f} ms each, "
                f"12K would take {12000 / rates[workers] / 60:.0f} min)"
            )
            if workers == 1:  # CPU time does not grow when other jobs share the cores, wall time does
                print(f"  CPU time {1000 * cpu / args.n:.0f} ms per candidate in-process")
        size_mb = sum(p.stat().st_size for p in ws.candidates_dir.rglob("*")) / 1e6
        print(f"ratio 2 workers / 1 worker: {rates[2] / rates[1]:.2f}x")
        print(
            f"disk: {size_mb / args.n:.2f} MB per candidate (PNG + JSON), 12K = {size_mb / args.n * 12:.1f} GB"
        )


if __name__ == "__main__":
    main()

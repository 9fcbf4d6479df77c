"""Push and pull N review tasks: bulk (what `curate review push/pull` do) vs one request per task.

The per-task paths run on a sample and are extrapolated to N, so the ratio is printed without
waiting hours. The bulk path is the real `push()` / `pull()` on a real FiftyOne dataset and a real
Label Studio, so the numbers include reading the view, de-duplicating against the server's tasks
and writing reviews back to FiftyOne.

    .venv/bin/python benchmarks/bench_review.py            # N=2000
    .venv/bin/python benchmarks/bench_review.py --n 10000  # the issue's target (goal: push < 60 s)
    .venv/bin/python benchmarks/bench_review.py --url http://127.0.0.1:8080 --token ...  # existing server
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image


def build(ws, n: int) -> None:
    """n candidates sharing 16 tiny images (Label Studio only stores URLs) and the `unreviewed` view."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    from curation import dataset as ds

    folder = ws.candidates_dir / "s000"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(16):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    dataset = fo.Dataset(ds.dataset_name(ws), overwrite=True)
    dataset.add_samples(
        [
            fo.Sample(
                filepath=paths[i % 16],
                **{
                    ds.CANDIDATE_ID: f"bench{i:06d}",
                    ds.CAPTION: f"caption {i}",
                    ds.CONCEPTS: [],
                    "clip_t": float(rng.random()),
                },
            )
            for i in range(n)
        ],
        progress=False,
    )
    dataset.persistent = True
    dataset.save_view("unreviewed", dataset.match(F(ds.REVIEW_DECISION) == None))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="tasks to push and pull in bulk")
    parser.add_argument("--sample", type=int, default=50, help="tasks timed one request at a time")
    parser.add_argument("--url", default="", help="an existing Label Studio (else one is started)")
    parser.add_argument("--token", default="")
    args = parser.parse_args()

    from curation.config import CurateConfig
    from curation.review import connect, push, serve, stop, use_server
    from curation.review_pull import pull
    from curation.workspace import Workspace

    root = Path(tempfile.mkdtemp(prefix="bench-review-"))
    config = CurateConfig()
    config.index.dataset_name = f"bench-review-{os.getpid()}"
    ws = Workspace.create(root / "ws", config)
    started = not args.url
    if started:
        t0 = time.perf_counter()
        serve(ws, port=None)
        print(f"Label Studio started in {time.perf_counter() - t0:.1f} s (not counted)")
    else:
        use_server(ws, args.url, args.token)
    try:
        build(ws, args.n)
        t0 = time.perf_counter()
        report = push(ws)
        bulk_push = time.perf_counter() - t0
        assert report.pushed == args.n, report.summary()

        conn = connect(ws)
        client = conn.client
        t0 = time.perf_counter()
        for i in range(args.sample):
            data = {
                "candidate_id": f"single{i}",
                "image": "/data/local-files/?d=x.png",
                "thumb": "/data/local-files/?d=x.jpg",
                "caption": "c",
                "refs_html": "",
                "scores": "",
            }  # every key review.xml reads
            client.tasks.create(project=report.project_id, data=data)
        single_push = (time.perf_counter() - t0) / args.sample * args.n

        t0 = time.perf_counter()
        pulled = pull(ws)
        bulk_pull = time.perf_counter() - t0
        listed = conn.get_json(
            "/api/tasks/", "listing", project=report.project_id, fields="task_only", page_size=args.sample
        )
        ids = [t["id"] for t in listed["tasks"]]
        t0 = time.perf_counter()
        for task_id in ids:  # what a per-task pull does: fetch each task with its annotations
            requests.get(
                f"{conn.url}/api/tasks/{task_id}", headers=conn.headers, timeout=60
            ).raise_for_status()
        single_pull = (time.perf_counter() - t0) / args.sample * args.n

        print(f"N={args.n} tasks (per-task paths timed on {args.sample} and extrapolated)")
        print(
            f"push: bulk {bulk_push:7.1f} s   per-task ~{single_push:8.1f} s   ratio {single_push / bulk_push:5.1f}x"
        )
        print(
            f"pull: bulk {bulk_pull:7.1f} s   per-task ~{single_pull:8.1f} s   ratio {single_pull / bulk_pull:5.1f}x"
        )
        print(f"push rate {args.n / bulk_push:.0f} tasks/s; {pulled.tasks} tasks pulled")
    finally:
        import fiftyone as fo

        fo.delete_dataset(config.index.dataset_name)
        if started:
            stop(ws)


if __name__ == "__main__":
    main()

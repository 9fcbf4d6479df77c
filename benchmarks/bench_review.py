"""Push and pull N review tasks: time and peak RSS of each, against what they replaced.

Push is the real `push()` (bulk imports, the next batch built while one is imported) against one
request per task, timed on a sample and extrapolated; then a push with nothing new (the workspace's
record of imported candidates agrees with the server) and one whose record disagrees (the sample's
tasks are not in it), which lists the project. Pull is the real `pull()` on N annotated tasks:
export snapshots by id range, reviews written to FiftyOne chunk by chunk while the next is exported,
a gzipped delta kept. `--oneshot` compares it, at the same N and on the same project, with one
`/export` request holding every task in memory at once (client and server), parsed whole. Then a
re-pull and an incremental pull (1% of the annotations edited "a day later": the recorded pull start
is moved to now, as time would).

Peak RSS is this process's high-water mark per phase (reset through /proc/self/clear_refs) and the
largest in the Label Studio server's process tree. Annotations are imported with their tasks into a
second project of the same dataset (Label Studio has no bulk annotation API); that setup is not timed.

Measured 2026-12-03, 2 shared cores, Label Studio 1.23.2, N=100000 (machine otherwise idle):
  SQLite: push 64.1 s (132x one request per task), nothing new 3.2 s, record disagreeing 166 s;
  first pull 354.5 s (266.6 s in an earlier run of this code's first version), client peak 470 MB,
  server 605 MB; 1000 edited reviews pulled in 5.6 s.
  PostgreSQL (deploy/postgres.sh): push 106 s, first pull 317.5 s, server peak 532 MB.
The issue's goal (push and pull <= 3 min each) holds for push, not for a first full pull: Label
Studio serializes an export at ~1.6 ms a task on one core (py-spy: DRF serializers), and on SQLite
its add-data-field action (the Data Manager columns) costs ~0.3 ms a task and column; on PostgreSQL
the export queries each task's predictions. The paged task API this replaced cost ~4.7 ms a task
(first pull extrapolated to ~16 min), the one-shot export 2.5 ms with everything in memory.

    .venv/bin/python benchmarks/bench_review.py            # N=2000
    .venv/bin/python benchmarks/bench_review.py --n 100000 # the issue's target: push and pull <= 3 min each
    .venv/bin/python benchmarks/bench_review.py --url http://127.0.0.1:8080 --token ... --document-root DIR
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def build(ws, n: int) -> None:
    """n candidates sharing 16 tiny images (Label Studio only stores URLs), each with the review preview
    `curate index` writes while it decodes the image, and the `unreviewed` view."""
    import shutil

    import fiftyone as fo
    from fiftyone import ViewField as F

    from curation.core import dataset as ds
    from curation.core.thumbnails import candidate_thumb, thumbnail, thumbs_dir

    folder = ws.candidates_dir / "s000"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(16):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    previews = [thumbnail(Path(p), thumbs_dir(ws) / "bench" / f"{i}.jpg") for i, p in enumerate(paths)]
    for i in range(n):
        shutil.copyfile(previews[i % 16], candidate_thumb(thumbs_dir(ws), f"bench{i:06d}"))
    dataset = fo.Dataset(ds.dataset_name(ws), overwrite=True)
    for start in range(0, n, 10_000):
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
                for i in range(start, min(n, start + 10_000))
            ],
            progress=False,
        )
    dataset.persistent = True
    dataset.create_index(ds.CANDIDATE_ID)
    dataset.save_view("unreviewed", dataset.match(F(ds.REVIEW_DECISION) == None))


class Peak:
    """Peak RSS of this process (and of a server process tree) over one phase, from /proc."""

    def __init__(self, server_pid: int | None) -> None:
        self.pids = [os.getpid()] + ([server_pid] if server_pid else [])

    def _tree(self, pid: int) -> list[int]:
        tree = [pid]
        for p in tree:
            try:
                tree += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
            except OSError:
                continue
        return tree

    def reset(self) -> None:
        for root in self.pids:
            for pid in self._tree(root):
                try:
                    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                except OSError:
                    pass

    def read(self) -> list[float]:
        """MB: this process's peak, then the largest peak in the server's process tree.

        The client is this process alone: a server this script started is its child.
        """
        out = []
        for root in self.pids:
            peak = 0.0
            for pid in self._tree(root) if root != os.getpid() else [root]:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                hwm = [line for line in status.splitlines() if line.startswith("VmHWM:")]
                peak = max(peak, int(hwm[0].split()[1]) / 1024 if hwm else 0.0)
            out.append(peak)
        return out


def timed(peak: Peak, fn: Callable[[], Any]) -> tuple[Any, float, list[float]]:
    peak.reset()
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0, peak.read()


def fmt(name: str, seconds: float, mb: list[float], n: int, extra: str = "") -> str:
    server = f", server peak {mb[1]:6.0f} MB" if len(mb) > 1 else ""
    return (
        f"{name:<28} {seconds:7.1f} s  {n / seconds:6.0f} tasks/s  client peak {mb[0]:6.0f} MB{server}{extra}"
    )


def annotated_project(ws, conn, n: int) -> None:
    """A project whose n tasks carry one annotation each (accept 4 / reject 2 alternating), recorded as ws's."""
    from curation.core import dataset as ds
    from curation.core.labeling_config import CONFIG_DIR
    from curation.core.workspace import atomic_write_json
    from curation.review.project import project_file, project_marker
    from curation.review.pull import annotation_result

    project = conn.client.projects.create(
        title="bench pull",
        description=project_marker(ws),
        label_config=(CONFIG_DIR / "review.xml").read_text(),
    )
    for start in range(0, n, 1000):
        tasks = [
            {
                "data": {
                    ds.CANDIDATE_ID: f"bench{i:06d}",
                    "image": "/data/local-files/?d=x.png",
                    "thumb": "/data/local-files/?d=x.jpg",
                    ds.CAPTION: f"caption {i}",
                    ds.CONCEPTS: [],
                    "refs": [],
                    "refs_html": "<div class='refs'></div>",
                    "scores": "<table class='scores'><tr><td>clip_t</td><td>0.3</td></tr></table>",
                },
                "annotations": [{"result": annotation_result(*(("accept", 4), ("reject", 2))[i % 2])}],
            }
            for i in range(start, min(n, start + 1000))
        ]
        conn.client.projects.import_tasks(id=project.id, request=tasks)
    atomic_write_json(project_file(ws), {"url": conn.url, "project_id": project.id})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="tasks to push and pull")
    parser.add_argument("--sample", type=int, default=50, help="tasks pushed one request at a time")
    parser.add_argument("--url", default="", help="an existing Label Studio (else one is started)")
    parser.add_argument("--token", default="")
    parser.add_argument(
        "--document-root", default="", help="the existing server's document root (the bench publishes its images below it)"
    )
    parser.add_argument(
        "--server-pid", type=int, default=0, help="an existing server's pid, to read its peak RSS"
    )
    parser.add_argument(
        "--no-repull", action="store_true", help="skip the re-pull (it costs what the first pull did)"
    )
    parser.add_argument(
        "--oneshot", action="store_true", help="also time the one-shot export (minutes and GBs at 100K)"
    )
    args = parser.parse_args()

    from curation.core import dataset as ds
    from curation.core.config import CurateConfig
    from curation.core.labeling_config import labeling_config
    from curation.core.workspace import Workspace, atomic_write_json
    from curation.review.client import connect
    from curation.review.pull import aggregate, pull
    from curation.review.push import push
    from curation.review.server import read_server, serve, stop, use_server

    root = Path(tempfile.mkdtemp(prefix="bench-review-"))  # never inside a document root: it holds secrets
    config = CurateConfig()
    config.index.dataset_name = f"bench-review-{os.getpid()}"
    ws = Workspace.create(root / "ws", config)
    started = not args.url
    if started:
        t0 = time.perf_counter()
        serve(ws, port=None)
        print(f"Label Studio started in {time.perf_counter() - t0:.1f} s (not counted)")
    else:
        use_server(
            ws, args.url, args.token, document_root=Path(args.document_root) if args.document_root else None
        )
    server = read_server(ws)
    peak = Peak(server.pid if started and server else args.server_pid or None)
    try:
        t0 = time.perf_counter()
        build(ws, args.n)
        print(f"N={args.n}: FiftyOne dataset built in {time.perf_counter() - t0:.1f} s (not counted)")
        report, push_s, push_mb = timed(peak, lambda: push(ws))
        assert report.pushed == args.n, report.summary()
        again, repush_s, repush_mb = timed(peak, lambda: push(ws))
        assert again.pushed == 0 and again.already == args.n, again.summary()

        conn = connect(ws)
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
            conn.client.tasks.create(project=report.project_id, data=data)
        single_push = (time.perf_counter() - t0) / args.sample * args.n
        print(
            fmt(
                "push (bulk)",
                push_s,
                push_mb,
                args.n,
                f"   per-task ~{single_push:.0f} s: {single_push / push_s:.1f}x",
            )
        )
        print(fmt("re-push (nothing new)", repush_s, repush_mb, args.n, "   the record agrees with the server"))
        listed, listed_s, listed_mb = timed(peak, lambda: push(ws))  # the sample's tasks are not in the record
        assert listed.pushed == 0, listed.summary()
        print(fmt("re-push (record differs)", listed_s, listed_mb, args.n, "   lists the project's tasks"))

        reviewer = Workspace.create(ws.root / "reviewer", config)  # same dataset, a project of annotated tasks
        use_server(reviewer, conn.url, conn.token, document_root=conn.document_root)
        t0 = time.perf_counter()
        annotated_project(reviewer, conn, args.n)
        print(f"{args.n} annotated tasks imported in {time.perf_counter() - t0:.1f} s (not counted)")
        project_id = json.loads((reviewer.review_dir / "project.json").read_text())["project_id"]

        first, pull_s, pull_mb = timed(peak, lambda: pull(reviewer))
        assert (first.read, first.changed) == (args.n, args.n), first.summary()
        raw_mb = first.raw_path.stat().st_size / 2**20 if first.raw_path else 0.0
        print(fmt("pull (first)", pull_s, pull_mb, args.n, f"   delta {raw_mb:.1f} MB gz"))

        def one_shot() -> int:
            raw = conn.export_tasks(project_id, "gone")
            tasks = json.loads(raw)
            rules = labeling_config(ws)
            reviews = {t["data"][ds.CANDIDATE_ID]: aggregate(t.get("annotations") or [], rules) for t in tasks}
            return len(reviews)

        if args.oneshot:
            count, old_s, old_mb = timed(peak, one_shot)
            assert count == args.n
            print(fmt("old one-shot export+parse", old_s, old_mb, args.n, "   (no FiftyOne writes)"))
            print(
                f"pull / one-shot: time {pull_s / old_s:.2f}x, client peak {pull_mb[0] / old_mb[0]:.2f}x"
                + (f", server peak {pull_mb[1] / old_mb[1]:.2f}x" if len(pull_mb) > 1 else "")
            )

        if not args.no_repull:
            again, again_s, again_mb = timed(peak, lambda: pull(reviewer))
            assert again.changed == 0 and again.raw_path is None, again.summary()
            print(
                fmt(
                    "re-pull (nothing changed)",
                    again_s,
                    again_mb,
                    again.read,
                    "   re-reads what changed within SETTLE",
                )
            )

        state_path = reviewer.review_dir / "pulls" / "state.json"
        state = json.loads(state_path.read_text())
        state.update(after=conn.server_time().isoformat(), recent={})  # as if the last pull were a day ago
        atomic_write_json(state_path, state)
        from curation.review.pull import annotation_result

        edited = max(1, args.n // 100)
        listed = conn.get_json("/api/tasks/", "listing", project=project_id, fields="all", page_size=edited)
        for task in listed["tasks"]:
            conn.client.annotations.update(
                id=task["annotations"][0]["id"], result=annotation_result("reject", 1)
            )
        later, later_s, later_mb = timed(peak, lambda: pull(reviewer))
        assert later.read == edited, later.summary()
        print(fmt(f"incremental ({edited} edited)", later_s, later_mb, later.read))
    finally:
        import fiftyone as fo

        fo.delete_dataset(config.index.dataset_name)
        if started:
            stop(ws)


if __name__ == "__main__":
    main()

"""Our first pull against Label Studio's own export of the same tasks, side by side, on SQLite and PostgreSQL.

For each database, `curate review serve`'s code starts Label Studio with `--workers` uWSGI workers
(`[review] workers`), N tasks each carrying one annotation are imported into a project of a
workspace whose FiftyOne dataset holds the N candidates, and then, in one run on the same server:
  1. Label Studio's own export: one `GET /api/projects/<id>/export?exportType=JSON&download_all_tasks=true`,
     the whole body received (not parsed: the baseline is the server's work alone);
  2. our first pull (`pull(ws, full=True)`): export snapshots of `--page-size` tasks, `--in-flight`
     at once, every annotation checked, reviews written to FiftyOne, Data Manager columns written
     back, a gzipped delta kept;
  3. Label Studio's export again, so load that changed during the run shows as two baselines.
The ratio printed is the pull's time over the faster export. Peak RSS is this process's (the
client) and the largest of the server's process tree, per phase. Machine load (1-minute average)
is printed before and after each phase: on a shared machine every figure moves with it.

SQLite starts from the tests' cached migrated database and PostgreSQL from `deploy/postgres.sh`
with the tests' migrated dump (tests/fixtures/labelstudio.py, tests/test_labelstudio_postgres.py),
so no run pays Label Studio's migrations twice.

    .venv/bin/python benchmarks/bench_pull.py                      # N=20000, both databases, 2 workers
    .venv/bin/python benchmarks/bench_pull.py --n 2000 --db sqlite --in-flight 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the tests' database caches, bench_review's builders

from bench_review import Peak, build


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def timed(peak: Peak, name: str, fn: Callable[[], Any]) -> tuple[Any, float, list[float]]:
    before = load()
    peak.reset()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    mb = peak.read()
    print(
        f"  {name:<34} {seconds:7.1f} s  client peak {mb[0]:5.0f} MB  server peak {mb[1]:5.0f} MB"
        f"  ({before} -> {load()[5:]})",
        flush=True,
    )
    return result, seconds, mb


def watch_pull_steps() -> dict[str, float]:
    """Seconds the pull spends in its two kinds of server work, added up as they happen: the export
    snapshots (several at once, so their sum can exceed the pull's time) and the Data Manager columns."""
    from curation.review import pull_chunks
    from curation.review.client import Connection

    spent = {"snapshot": 0.0, "show_reviews": 0.0}

    def timing(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        setattr(owner, name, timed_call)

    timing(pull_chunks, "snapshot")
    timing(Connection, "show_reviews")
    return spent


def annotated_project(ws: Any, conn: Any, n: int) -> None:
    """A project of n tasks, one annotation each (accept 4 / reject 2 alternating), recorded as the workspace's.

    One candidate is pushed for real, so the task data has whatever shape `push` gives it today;
    its task is then copied for every candidate (ids substituted) with an annotation, into a second
    project: Label Studio has no bulk annotation API, but imports tasks with their annotations.
    """
    import json

    from curation.core import dataset as ds
    from curation.core.workspace import atomic_write_json
    from curation.review.project import project_file
    from curation.review.pull import annotation_result
    from curation.review.push import push

    dataset = ds.open_dataset(ws)
    dataset.save_view("bench_one", dataset.limit(1), overwrite=True)
    pushed = push(ws, view="bench_one")
    (template,) = json.loads(conn.export_tasks(pushed.project_id, "gone"))
    first = template["data"][ds.CANDIDATE_ID]
    text = json.dumps(template["data"])
    project = conn.client.projects.get(id=pushed.project_id)
    copy = conn.client.projects.create(
        title="bench pull", description=project.description, label_config=project.label_config
    )
    for start in range(0, n, 1000):
        batch = [
            {
                "data": json.loads(text.replace(first, f"bench{i:06d}")),
                "annotations": [{"result": annotation_result(*(("accept", 4), ("reject", 2))[i % 2])}],
            }
            for i in range(start, min(n, start + 1000))
        ]
        conn.client.projects.import_tasks(id=copy.id, request=batch)
    atomic_write_json(project_file(ws), {**json.loads(project_file(ws).read_text()), "project_id": copy.id})


def bench(db: str, args: argparse.Namespace, scratch: Path) -> None:
    from curation.core.config import CurateConfig, ReviewConfig
    from curation.core.ports import free_port
    from curation.core.workspace import Workspace
    from curation.review.client import connect
    from curation.review.project import project_id_of
    from curation.review.pull import pull
    from curation.review.server import serve, stop
    from tests.fixtures.labelstudio import seeded_home
    from tests.test_labelstudio_postgres import migrate, start_postgres

    config = CurateConfig(
        review=ReviewConfig(
            workers=args.workers, pull_in_flight=args.in_flight, pull_page_size=args.page_size
        )
    )
    config.index.dataset_name = f"bench-pull-{db}-{os.getpid()}"
    variables: dict[str, str] = {}
    if db == "postgres":
        pg = Path(tempfile.mkdtemp(prefix="bench-pull-pg-"))  # reachable by the `postgres` account when root
        pg.chmod(0o711)
        variables = start_postgres(pg / "cluster", free_port())
        migrate(variables, scratch / "migrate")
        ws = Workspace.create(scratch / db, config)
    else:
        ws = seeded_home(scratch / db, config)
    os.environ.update(variables)  # `serve` hands its environment's database to Label Studio
    try:
        t0 = time.perf_counter()
        info = serve(ws, port=free_port(), timeout=900)
        print(
            f"{db}: Label Studio with {info.workers} uWSGI workers up in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        peak = Peak(info.pid)
        t0 = time.perf_counter()
        build(ws, args.n)
        conn = connect(ws)
        annotated_project(ws, conn, args.n)
        project_id = project_id_of(ws)
        print(
            f"  {args.n} candidates and annotated tasks made in {time.perf_counter() - t0:.0f} s (not counted)"
        )

        def export() -> int:
            return len(conn.export_tasks(project_id, "gone"))

        size, first_export, _ = timed(peak, "Label Studio export (one request)", export)
        spent = watch_pull_steps()
        report, pulled, _ = timed(peak, f"our pull ({args.in_flight} in flight)", lambda: pull(ws, full=True))
        print(
            f"    of which, summed over threads: snapshots {spent['snapshot']:.1f} s,"
            f" Data Manager columns {spent['show_reviews']:.1f} s",
            flush=True,
        )
        assert report.read == args.n, report.summary()[:2000]
        _, second_export, _ = timed(peak, "Label Studio export, again", export)
        baseline = min(first_export, second_export)
        print(
            f"  {db}: pull / Label Studio export = {pulled / baseline:.2f}x at N={args.n} "
            f"({size / 2**20:.0f} MB exported; goal <= 1.2x)",
            flush=True,
        )
    except Exception:
        log = ws.review_dir / "labelstudio.log"  # the server's side of a failure, before its folder goes
        if log.exists():
            print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-60:]), flush=True)
        raise
    finally:
        import fiftyone as fo

        stop(ws)
        for name in variables:
            os.environ.pop(name, None)
        if config.index.dataset_name in fo.list_datasets():
            fo.delete_dataset(config.index.dataset_name)
        if db == "postgres":
            import subprocess

            subprocess.run(
                ["bash", str(ROOT / "deploy" / "postgres.sh"), "stop", str(pg / "cluster")], check=False
            )
            shutil.rmtree(pg, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000, help="annotated tasks")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--workers", type=int, default=2, help="uWSGI workers ([review] workers)")
    parser.add_argument(
        "--in-flight", type=int, default=2, help="export snapshots at once ([review] pull_in_flight)"
    )
    parser.add_argument(
        "--page-size", type=int, default=5000, help="tasks per snapshot ([review] pull_page_size)"
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, {load()} at the start", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    try:
        for db in ("sqlite", "postgres") if args.db == "both" else (args.db,):
            bench(db, args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

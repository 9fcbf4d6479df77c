"""`curate status`, `curate review status` and `curate --help` on a 10K-candidate workspace: the
summary the writers record against counting through FiftyOne, side by side in one run.

The dataset lives in a MongoDB of the run's own (deploy/mongodb.sh, FIFTYONE_DATABASE_URI): on a
shared machine FiftyOne's embedded service is often another session's, from another folder, which
`curate` rightly refuses to write through. The workspace is built with the project's own writers, in
a child process: concepts (`save_concept`, no photos), plans by the
rule-based planner (`plan_layouts`), every candidate record `curate generate` would write for them
(`plan_work` ids, finished shards; the PNGs are not drawn: neither status command opens one), one
FiftyOne sample per candidate with the fields `curate index` owns (bulk insert: indexing 10K images
with CLIP takes hours on 2 cores), then a real Label Studio (the tests' migrated database) holding
one task per candidate, annotated (accept with 1-5 stars or reject with a reason, one in ten tasks
by two annotators), pulled by the real `curate review pull`, which writes the reviews and the delta
and records the summary.

Each command then runs as a user runs it, `curate ...` in a fresh process, `--repeat` times:
  new: as shipped (reads index/summary/dataset.json, the plans and the candidate records);
  old: the same command with `--recount`: imports FiftyOne and reads the dataset, from the running
       MongoDB: a user's first command also waits for FiftyOne's embedded service to start (~10 s
       on 2 cores), which these figures leave out, so they favour the old path.
Both must print the same figures; the script checks that (the old path may print FiftyOne's own
database messages around them). Wall seconds (min, median) and the
command's own CPU seconds (median; the database service's are not in it) are printed with the
machine load (1-minute average): on a shared 2-core machine the wall figures move with the load.

    .venv/bin/python benchmarks/bench_status.py              # N=10000
    .venv/bin/python benchmarks/bench_status.py --n 2000 --repeat 2
    .venv/bin/python benchmarks/bench_status.py --keep       # then --reuse FOLDER times it again
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # the tests' Label Studio database cache
CURATE = str(Path(sys.executable).with_name("curate"))
CONCEPTS = ("cat", "mug", "teddy", "rocket", "coin", "shuttle")


def load() -> float:
    return os.getloadavg()[0]


def build(root: Path, n: int) -> None:
    """The workspace of the module docstring (runs in a child process: see `main`)."""
    import fiftyone as fo

    from curation.core import dataset as ds
    from curation.core.config import CurateConfig, ReviewConfig
    from curation.core.ports import free_port
    from curation.core.records import Candidate, Concept
    from curation.core.workspace import SUCCESS_MARKER, atomic_write_json, atomic_write_text
    from curation.review.client import connect
    from curation.review.project import ensure_project
    from curation.review.pull import annotation_result, pull
    from curation.review.server import serve
    from generators.layout import plan_layouts
    from generators.work import plan_work
    from tests.fixtures.labelstudio import seeded_home

    config = CurateConfig(review=ReviewConfig(batch_size=1000))
    config.index.dataset_name = f"bench-status-{root.parent.name}"
    config.generate.seeds_per_plan = 2
    config.curation.per_composition = 40
    ws = seeded_home(root, config)
    for cid in CONCEPTS:
        ws.save_concept(Concept(concept_id=cid, name=cid, class_noun=cid, token=f"<c-{cid}>"))
    t0 = time.perf_counter()
    plan_layouts(ws, n // 2)
    items = plan_work(ws)
    for item in items:
        plan = item.plan
        candidate = Candidate(
            candidate_id=item.candidate_id, plan_id=plan.plan_id, shard=item.shard,
            image=f"candidates/{item.shard}/{item.candidate_id}.png", concepts=plan.concepts, boxes=plan.boxes,
            width=plan.width, height=plan.height, background=plan.background, caption=f"a photo {item.seed}",
            seed=item.seed, generator="gen4gen",
        )  # fmt: skip
        atomic_write_json(ws.shard_dir(item.shard) / f"{item.candidate_id}.json", candidate.model_dump())
    for shard in {item.shard for item in items}:
        atomic_write_text(ws.shard_dir(shard) / SUCCESS_MARKER, "")
    print(
        f"  {len(items)} candidate records of {n // 2} plans in {time.perf_counter() - t0:.0f} s", flush=True
    )

    dataset = fo.Dataset(ds.dataset_name(ws), overwrite=True)
    samples = [
        fo.Sample(
            filepath=str(ws.root / "candidates" / item.shard / f"{item.candidate_id}.png"),
            **{ds.CANDIDATE_ID: item.candidate_id, ds.CONCEPTS: sorted(item.plan.concepts), ds.PLAN_ID: item.plan.plan_id,
               ds.SHARD: item.shard, ds.NEAR_DUP_OF: items[k - 1].candidate_id if k % 50 == 1 else None},
        )
        for k, item in enumerate(items)
    ]  # fmt: skip
    dataset.add_samples(samples, progress=False)
    dataset.persistent = True
    dataset.create_index(ds.CANDIDATE_ID, unique=True)
    ws.index_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    serve(ws, port=free_port(), timeout=900)
    conn = connect(ws)
    project_id = ensure_project(ws, conn)
    reasons = ("identity changed", "artifacts")  # names of review_ui_config/review.xml: valid votes
    second = conn.client.users.create(
        username=f"second-{root.name}", email=f"second-{root.name}@example.com", password="pass-9-word"
    )
    page_keys = set(re.findall(r"\$(\w+)", conn.client.projects.get(id=project_id).label_config))
    for start in range(0, len(items), 1000):
        tasks = []
        for k in range(start, min(len(items), start + 1000)):
            votes = [("accept", 1 + k % 5, ()) if k % 3 else ("reject", None, (reasons[k % 2],))]
            if k % 10 == 0:
                votes.append(("reject", None, (reasons[0],)))
            data = dict.fromkeys(page_keys, "") | {ds.CANDIDATE_ID: items[k].candidate_id}
            annotations = [{"result": annotation_result(d, q, reasons=r)} for d, q, r in votes]
            for annotation in annotations[1:]:
                annotation["completed_by"] = second.id
            tasks.append({"data": data, "annotations": annotations})
        conn.client.projects.import_tasks(id=project_id, request=tasks)
    print(
        f"  Label Studio project of {len(items)} annotated tasks in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    t0 = time.perf_counter()
    report = pull(ws, full=True)
    print(f"  real pull in {time.perf_counter() - t0:.0f} s: {report.counts.words()}", flush=True)


def run(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the command's process) and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([CURATE, *args], capture_output=True, text=True, timeout=900, check=False)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"`curate {' '.join(args)}` failed: {done.stderr.strip()}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="candidates")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command and path")
    parser.add_argument(
        "--keep", action="store_true", help="keep the workspace and its dataset (the folder is printed)"
    )
    parser.add_argument("--reuse", type=Path, help="time a workspace an earlier --keep run built, no build")
    parser.add_argument("--build", default="", help=argparse.SUPPRESS)  # the child process's part
    args = parser.parse_args()
    if args.build:
        build(Path(args.build), args.n)
        return

    from curation.core.ports import free_port
    from curation.core.workspace import Workspace
    from curation.review.server import serve, stop

    scratch = args.reuse.resolve() if args.reuse else Path(tempfile.mkdtemp(prefix="bench-status-"))
    mongo = scratch / "mongodb"
    port = json.loads((scratch / "mongo.json").read_text())["port"] if args.reuse else free_port()
    (scratch / "mongo.json").write_text(json.dumps({"port": port}))
    mongodb = [str(ROOT / "deploy" / "mongodb.sh")]
    started = subprocess.run(  # its output is the URI, password included: not printed
        [*mongodb, "start", str(mongo)],
        env={**os.environ, "MONGO_PORT": str(port)},
        capture_output=True,
        check=False,
    )
    if started.returncode:
        raise SystemExit(f"deploy/mongodb.sh start failed: {started.stderr.strip()}")
    uri = subprocess.run([*mongodb, "uri", str(mongo)], capture_output=True, text=True, check=True).stdout
    dataset_name = f"bench-status-{scratch.name}"
    os.environ.update(
        FIFTYONE_DATABASE_URI=uri.strip(), FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_DATABASE_VALIDATION="false"
    )
    ws = scratch / "ws"
    keep = args.keep or args.reuse
    try:
        if args.reuse:
            serve(Workspace.open(ws), timeout=900)  # review status asks Label Studio for its task counts
        else:
            print(f"building {args.n} candidates in {ws} (load {load():.1f})", flush=True)
            subprocess.run([sys.executable, __file__, "--n", str(args.n), "--build", str(ws)], check=True)
        print(f"MongoDB on port {port} (both paths read it as it runs)\n", flush=True)
        commands = {
            "curate --help": (["--help"], None),
            "curate status --help": (["status", "--help"], None),
            "curate status": (["status", "-w", str(ws)], ["status", "--recount", "-w", str(ws)]),
            "curate review status": (
                ["review", "status", "-w", str(ws)],
                ["review", "status", "--recount", "-w", str(ws)],
            ),
        }
        print(f"{'command':<22} {'path':<4} {'min':>6} {'median':>7} {'cpu':>6}   runs (s)          load")
        for name, (new, old) in commands.items():
            outputs = {}
            for path, argv in (("old", old), ("new", new)):
                if argv is None:
                    continue
                times, cpus = [], []
                before = load()
                for _ in range(args.repeat):
                    seconds, cpu, outputs[path] = run(argv)
                    times.append(seconds)
                    cpus.append(cpu)
                runs = " ".join(f"{t:.2f}" for t in times)
                print(
                    f"{name:<22} {path:<4} {min(times):6.2f} {statistics.median(times):7.2f} "
                    f"{statistics.median(cpus):6.2f}   {runs:<17} {before:.1f} -> {load():.1f}",
                    flush=True,
                )
            if old is not None:
                same = outputs["new"] in outputs["old"]  # FiftyOne may print its service's messages too
                print(f"{'':<22} same output: {same}", flush=True)
                if not same:
                    raise SystemExit(f"outputs differ:\n--- old\n{outputs['old']}\n--- new\n{outputs['new']}")
    finally:
        if (ws / "curate.toml").exists():
            stop(Workspace.open(ws))
        if not keep:
            drop = f"import fiftyone as fo; fo.dataset_exists({dataset_name!r}) and fo.delete_dataset({dataset_name!r})"
            subprocess.run([sys.executable, "-c", drop], check=False, timeout=600)
        subprocess.run([*mongodb, "stop", str(mongo)], check=False, timeout=120)
        if keep:
            print(f"kept {scratch} (time it again: --reuse {scratch})")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

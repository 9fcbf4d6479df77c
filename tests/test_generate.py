"""`curate generate`: candidates, provenance, resumable shards (including a real kill -9), failures as data."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.core.config import GenerateConfig, dump_config
from curation.core.devices import worker_devices
from curation.core.errors import CurateError
from curation.core.workspace import Workspace, atomic_write_text
from generators.executors import ray_actor_class, ray_gpus_per_worker
from generators.layout import plan_layouts
from generators.run import generate, plan_work
from tests.fixtures.tiny_pipelines import build_tiny_sdxl_inpaint

REPO = Path(__file__).resolve().parents[1]
LOAD_WATCH = """
import os, sys

def _record_unet_loads(event, args):
    # every from_pretrained of the pipeline reads its unet/config.json once, with Python's open()
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and os.fspath(args[0]) == os.environ["WATCH"]:
        with open(os.environ["LOAD_LOG"], "a") as log:
            log.write(f"{os.getpid()}\\n")

if os.environ.get("WATCH"):
    sys.addaudithook(_record_unet_loads)
"""
"""A `sitecustomize` for the processes of one test: each appends its pid when it loads the watched
pipeline, observed through Python's audit hooks while the real loading code runs."""


def _files(ws: Workspace) -> dict[str, str]:
    return {
        p.relative_to(ws.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ws.candidates_dir.rglob("*"))
        if p.is_file()
    }


def _set_generate(ws: Workspace, **values: object) -> None:
    config = ws.config
    config.generate = config.generate.model_copy(update=values)
    atomic_write_text(ws.config_path, dump_config(config))


def test_generate_writes_candidates_with_provenance_and_reruns_as_noop(concept_ws: Workspace) -> None:
    plans = plan_layouts(concept_ws, 10)
    report = generate(concept_ws)
    assert (report.generated, sum(report.failed.values())) == (10, 0), report.summary()

    expected = plan_work(concept_ws)
    assert [i.shard for i in expected] == ["00000"] * 4 + ["00001"] * 4 + ["00002"] * 2
    assert all(concept_ws.shard_done(s) for s in ("00000", "00001", "00002"))
    candidates = list(concept_ws.candidates())
    assert sorted(c.candidate_id for c in candidates) == sorted(i.candidate_id for i in expected)
    concepts = concept_ws.concepts()
    by_plan = {p.plan_id: p for p in plans}
    for candidate in candidates:
        plan = by_plan[candidate.plan_id]
        image = np.asarray(Image.open(concept_ws.resolve(candidate.image)))
        assert image.shape == (128, 128, 3) and candidate.status == "ok"
        assert candidate.caption.startswith("a photo of ") and candidate.caption.endswith(plan.background)
        assert all(concepts[c].phrase in candidate.caption for c in plan.concepts)
        assert candidate.caption == candidate.template_caption
        assert set(candidate.refs_used) == set(plan.concepts)
        assert all(ref in concepts[c].refs for c, ref in candidate.refs_used.items())
        assert (
            candidate.generator_config["repaint"] == "classical"
            and candidate.extra["repaint"]["name"] == "classical"
        )
        for box, planned in zip(candidate.boxes, plan.boxes):
            assert box.concept_id == planned.concept_id
            assert planned.x <= box.x and box.x + box.w <= planned.x + planned.w
            assert planned.y <= box.y and box.y + box.h <= planned.y + planned.h
            region = image[box.y : box.y + box.h, box.x : box.x + box.w].astype(float)
            assert region.std() > 1.0, "something was pasted in the box"

    before = _files(concept_ws)
    again = generate(concept_ws)
    assert again.generated == 0 and again.skipped_shards == 3 and again.skipped_candidates == 10
    assert _files(concept_ws) == before


def test_pool_and_in_process_runs_make_identical_files(concept_ws: Workspace, tmp_path: Path) -> None:
    plan_layouts(concept_ws, 9)
    _set_generate(concept_ws, seeds_per_plan=2)
    other = Workspace.open(Path(shutil.copytree(concept_ws.root, tmp_path / "other")))
    generate(concept_ws, workers=1)
    report = generate(other, workers=2)
    assert report.generated == 18
    ours = {k.split("/", 1)[1]: v for k, v in _files(concept_ws).items()}
    theirs = {k.split("/", 1)[1]: v for k, v in _files(other).items()}
    assert ours == theirs and len(ours) == 18 * 2 + 5
    seeds = {c.plan_id: set() for c in concept_ws.candidates()}
    for candidate in concept_ws.candidates():
        seeds[candidate.plan_id].add(candidate.seed)
    assert all(s == {0, 1} for s in seeds.values())


def test_failed_candidates_are_recorded_counted_and_retried(concept_ws: Workspace) -> None:
    plans = plan_layouts(concept_ws, 12)
    hit = sum("rocket" in p.concepts for p in plans)
    assert hit
    rocket_dir = concept_ws.concepts_dir / "rocket"
    kept = Path(shutil.copytree(rocket_dir, concept_ws.root.parent / "rocket-backup"))
    shutil.rmtree(rocket_dir)

    report = generate(concept_ws)
    assert report.failed == {"unknown_concept": hit} and report.generated == 12 - hit
    assert "unknown_concept: " in report.summary()
    failed = [c for c in concept_ws.candidates(include_failed=True) if c.status == "failed"]
    assert len(failed) == hit
    for candidate in failed:
        assert "rocket" in candidate.error and not concept_ws.resolve(candidate.image).exists()

    shutil.copytree(kept, rocket_dir)
    retry = generate(concept_ws)
    assert retry.generated == hit and not retry.failed
    assert all(c.status == "ok" for c in concept_ws.candidates(include_failed=True))


def test_growing_plans_reopens_the_last_shard(concept_ws: Workspace) -> None:
    plan_layouts(concept_ws, 6)
    generate(concept_ws)
    first = _files(concept_ws)
    plan_layouts(concept_ws, 10)
    report = generate(concept_ws)
    assert report.generated == 4 and report.skipped_shards == 1
    assert sorted(c.candidate_id for c in concept_ws.candidates()) == sorted(
        i.candidate_id for i in plan_work(concept_ws)
    )
    unchanged = {k: v for k, v in first.items() if not k.endswith("_SUCCESS")}
    assert all(_files(concept_ws)[k] == v for k, v in unchanged.items())

    plan_layouts(concept_ws, 3)  # fewer plans: candidates of dropped plans go, none is duplicated
    report = generate(concept_ws)
    assert report.set_aside > 0 and "stale files" in report.summary()
    assert len(list((concept_ws.candidates_dir / "_stale").glob("*/*.png"))) == 7, "set aside, not deleted"
    assert sorted(c.candidate_id for c in concept_ws.candidates()) == sorted(
        i.candidate_id for i in plan_work(concept_ws)
    )


def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(concept_ws: Workspace) -> None:
    config = concept_ws.config
    config.layout = config.layout.model_copy(update={"width": 256, "height": 256})
    config.generate = config.generate.model_copy(update={"shard_size": 30})
    atomic_write_text(concept_ws.config_path, dump_config(config))
    plan_layouts(concept_ws, 90)
    expected = sorted(i.candidate_id for i in plan_work(concept_ws))

    command = [
        sys.executable,
        "-c",
        "from curation.cli import main; main()",
        "generate",
        "--workers",
        "2",
        "-w",
        str(concept_ws.root),
    ]
    log = concept_ws.root / "generate.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(concept_ws.candidates_dir.glob("*/*.png"))) < 20:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "generate made no progress"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes, as `kill -9` of the job
    proc.wait()
    finished = len(list(concept_ws.candidates_dir.glob("*/*.json")))  # a PNG without its JSON is redone
    marked = [s for s in ("00000", "00001", "00002") if concept_ws.shard_done(s)]
    assert len(marked) < 3, "the kill came too late to test anything"

    report = generate(concept_ws, workers=2)
    assert report.generated + report.skipped_candidates == 90 and not report.failed
    assert report.skipped_candidates == finished > 0
    assert all(concept_ws.shard_done(s) for s in ("00000", "00001", "00002"))
    ids = [p.stem for p in concept_ws.candidates_dir.glob("*/*.json")]
    assert sorted(ids) == expected
    assert sorted(p.stem for p in concept_ws.candidates_dir.glob("*/*.png")) == expected
    assert not list(concept_ws.candidates_dir.rglob("*.tmp"))
    for candidate in concept_ws.candidates():
        with Image.open(concept_ws.resolve(candidate.image)) as image:
            image.load()


def test_ray_executor_makes_the_same_candidates(
    concept_ws: Workspace, tmp_path: Path, ray_session: None
) -> None:
    plan_layouts(concept_ws, 10)
    other = Workspace.open(Path(shutil.copytree(concept_ws.root, tmp_path / "other")))
    generate(concept_ws, workers=1)
    report = generate(other, workers=2, executor="ray")
    assert report.generated == 10 and not report.failed
    ours = {k.split("/", 1)[1]: v for k, v in _files(concept_ws).items()}
    theirs = {k.split("/", 1)[1]: v for k, v in _files(other).items()}
    assert ours == theirs

    _set_generate(other, repaint=str(tmp_path / "no-such-pipeline"))
    with pytest.raises(CurateError, match="needs the diffusion repaint pipeline"):  # not a Ray traceback
        generate(other, workers=2, executor="ray")


def test_unknown_backends_and_executors_are_clear_errors(concept_ws: Workspace) -> None:
    plan_layouts(concept_ws, 2)
    with pytest.raises(CurateError, match="unknown executor 'spark'"):
        generate(concept_ws, executor="spark")
    _set_generate(concept_ws, repaint="diffusers/stable-diffusion-xl-1.0-inpainting-0.1")
    with pytest.raises(CurateError, match="generate.repaint = .* is not on this machine .* `curate models fetch`"):
        generate(concept_ws)
    assert not concept_ws.candidates_dir.exists()


def test_workers_load_the_model_once_each_and_the_driver_never(concept_ws: Workspace, tmp_path: Path) -> None:
    # stands in for diffusers/stable-diffusion-xl-1.0-inpainting-0.1: same classes, random weights
    pipeline = build_tiny_sdxl_inpaint(tmp_path / "models")
    _set_generate(concept_ws, repaint=str(pipeline), steps=2, batch_size=4)
    plan_layouts(concept_ws, 10)  # chunks of 8: two, one per worker
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(LOAD_WATCH)
    log = tmp_path / "loads.log"
    env = os.environ | {
        "PYTHONPATH": f"{hook}:{REPO}",
        "WATCH": str(pipeline / "unet" / "config.json"),
        "LOAD_LOG": str(log),
    }
    command = [sys.executable, "-c", "from curation.cli import main; main()", "generate", "--workers", "2"]
    driver = subprocess.Popen(
        [*command, "-w", str(concept_ws.root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output
    assert "generated 10" in output, output
    pids = log.read_text().split()
    assert len(pids) == 2 and len(set(pids)) == 2, f"one load per worker, got {pids}"
    assert str(driver.pid) not in pids, "the driver loaded the pipeline it never runs"
    assert all(c.extra["repaint"]["device"] == "cpu" for c in concept_ws.candidates())


def test_local_workers_go_round_robin_over_the_visible_gpus() -> None:
    two = ["cuda:0", "cuda:1"]
    assert worker_devices("auto", 3, two) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices("cuda", 4, two) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_devices("cuda:1", 2, two) == ["cuda:1", "cuda:1"], "a named device is kept"
    assert worker_devices("auto", 2, []) == ["cpu", "cpu"]
    assert worker_devices("cpu", 2, two) == ["cpu", "cpu"]


def test_ray_actors_ask_for_a_share_of_a_gpu_when_workers_outnumber_gpus() -> None:
    diffusion = GenerateConfig(repaint="diffusers/stable-diffusion-xl-1.0-inpainting-0.1")
    assert ray_actor_class(diffusion, 4, 2.0)._default_options["num_gpus"] == 0.5
    assert ray_actor_class(diffusion, 2, 2.0)._default_options["num_gpus"] == 1
    assert ray_gpus_per_worker(diffusion, 3, 2.0) == 0.5, "2/3 of a GPU would leave the third actor unplaced"
    assert ray_gpus_per_worker(diffusion, 3, 0.0) == 0, "no GPU in the cluster: CPU actors"
    msp = GenerateConfig(generator="msp", gpu_per_worker=0.25)
    assert ray_actor_class(msp, 4, 1.0)._default_options["num_gpus"] == 0.25
    vlm = GenerateConfig(recaption="llava-hf/llava-1.5-7b-hf")
    assert ray_gpus_per_worker(vlm, 8, 8.0) == 1
    assert ray_gpus_per_worker(GenerateConfig(), 4, 2.0) == 0, "the classical path needs no GPU"
    assert ray_gpus_per_worker(GenerateConfig(recaption="openai:gpt-4o-mini"), 4, 2.0) == 0
    with pytest.raises(CurateError, match="do not fit on the cluster's 2 GPUs"):
        ray_gpus_per_worker(diffusion.model_copy(update={"gpu_per_worker": 1.0}), 3, 2.0)

"""The VLM judge: against a local OpenAI-compatible server (verdicts, cache, malformed replies,
calibration, `curate index` with `[index] judge`) and as a tiny random-init LLaVA loaded from a folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.cli import app
from curation.core import dataset as ds
from curation.core.config import dump_config
from curation.core.errors import CurateError
from curation.core.workspace import Workspace
from curation.index.run import index_workspace
from curation.review.calibration import calibrate
from curation.scores.judge import ARTIFACTS, OVERALL, PRESENT, REASON, judge, parse_verdict
from tests.fixtures.fake_llm import FakeLLM, ok
from tests.fixtures.tiny_pipelines import build_tiny_llava
from tests.test_calibration import reviewed_dataset


def verdict_for(body: dict) -> str:
    """Candidates 0-19 and 30-31 were accepted in `reviewed_dataset`: the fake judge agrees."""
    text = body["messages"][0]["content"][0]["text"]
    assert body["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    concepts = re.search(r"must appear: (.*?)\. Caption", text).group(1).split(", ")
    i = int(re.search(r"scene (\d+)", text).group(1))
    good = i < 20 or i in (30, 31)
    verdict = {
        "present": {c: True for c in concepts},
        "identity": 4,
        "artifacts": 5 if good else 2,
        "overall": 5 if good else 1,
        "reason": "fine" if good else "broken",
    }
    return "Here you go: " + json.dumps(verdict)[:-1] + ",}"  # almost JSON: repaired, not refused


def test_judge_scores_caches_skips_malformed_and_is_calibrated(tmp_path: Path, fake_llm: FakeLLM) -> None:
    ws = Workspace.create(tmp_path / "ws")
    reviewed_dataset(ws, "random")
    fake_llm.queue(ok("I cannot help with that."))  # the first candidate's reply is no verdict
    fake_llm.responder = verdict_for
    report = judge(ws, "openai:fake-vlm")
    assert (report.judged, report.cached, report.malformed) == (33, 0, 1)
    logged = [
        json.loads(line) for line in (ws.root / "index" / "judge_rejections.jsonl").read_text().splitlines()
    ]
    assert [r["candidate_id"] for r in logged] == ["cand000"]
    dataset = ds.open_dataset(ws)
    first, second = (dataset.match({ds.CANDIDATE_ID: c}).first() for c in ("cand000", "cand001"))
    assert first[OVERALL] is None and (second[OVERALL], second[PRESENT]) == (5, 1.0)

    asked = len(fake_llm.requests)
    again = CliRunner().invoke(app, ["judge", "--model", "openai:fake-vlm", "-w", str(ws.root)])
    assert again.exit_code == 0, again.output
    assert "33 candidates scored (34 replies from cache), 1 malformed" in again.output
    assert len(fake_llm.requests) == asked  # nothing sent twice

    rows = {(r.score, r.group): r for r in calibrate(ws, plot=False).rows}
    assert rows[(OVERALL, "all")].auc == 1.0 and not rows[(OVERALL, "all")].random_weights


def test_parse_verdict_refuses_wrong_concepts_and_ranks() -> None:
    good = '{"present": {"cat": true}, "identity": 3, "artifacts": 4, "overall": 2, "reason": "ok"}'
    assert parse_verdict(good, ["cat"]).overall == 2
    for bad, concepts in ((good, ["cat", "mug"]), (good.replace('"overall": 2', '"overall": 9'), ["cat"])):
        try:
            parse_verdict(bad, concepts)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


def test_index_computes_the_configured_judge_once(candidate_ws, fake_llm: FakeLLM) -> None:
    ws, candidates = candidate_ws
    config = ws.config
    config.index.judge = "openai:fake-vlm"
    ws.config_path.write_text(dump_config(config))

    def verdict(body: dict) -> str:
        concepts = re.search(
            r"must appear: (.*?)\. Caption", body["messages"][0]["content"][0]["text"]
        ).group(1)
        present = {c: c != "teddy" for c in concepts.split(", ")}  # the fake judge never sees the teddy
        return json.dumps({"present": present, "identity": 4, "artifacts": 3, "overall": 4, "reason": "ok"})

    fake_llm.responder = verdict
    report = index_workspace(ws)
    assert f"judge: {len(candidates)} candidates scored (0 replies from cache)" in report.summary()
    dataset = ds.open_dataset(ws)
    by_id = {s[ds.CANDIDATE_ID]: s for s in dataset}
    for candidate in candidates:
        sample = by_id[candidate.candidate_id]
        assert sample[PRESENT] == pytest.approx(1.0 if len(candidate.concepts) == 2 else 2 / 3)
        assert (sample[ARTIFACTS], sample[OVERALL], sample[REASON]) == (3, 4, "ok")
    asked = len(fake_llm.requests)
    assert asked == len(candidates)
    again = index_workspace(ws)
    assert f"({len(candidates)} replies from cache)" in again.summary()
    assert len(fake_llm.requests) == asked


def test_transformers_judge_from_a_folder_logs_random_replies_and_caches_them(tmp_path: Path) -> None:
    import fiftyone as fo

    ws = Workspace.create(tmp_path / "ws")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        path = ws.candidates_dir / "s000" / f"cand{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
        samples.append(
            fo.Sample(
                filepath=str(path),
                **{ds.CANDIDATE_ID: f"cand{i:03d}", ds.CAPTION: f"scene {i}", ds.CONCEPTS: ["cat", "mug"]},
            )
        )
    dataset = fo.Dataset(ds.dataset_name(ws), persistent=True)
    dataset.add_samples(samples)
    model = build_tiny_llava(tmp_path)  # llava-hf/llava-1.5-7b-hf's architecture, random weights

    report = judge(ws, str(model))  # random weights: the reply is never a verdict
    assert (report.judged, report.cached, report.malformed) == (0, 0, 3)
    logged = [
        json.loads(line) for line in (ws.root / "index" / "judge_rejections.jsonl").read_text().splitlines()
    ]
    assert [r["candidate_id"] for r in logged] == ["cand000", "cand001", "cand002"]
    assert all(r["reply"] and r["problem"] for r in logged)
    assert ds.open_dataset(ws).values(OVERALL) == [None, None, None]

    for item in model.iterdir():  # replies come from the cache by image hash: no model is loaded
        item.unlink()
    again = judge(ws, str(model))
    assert (again.judged, again.cached, again.malformed) == (0, 3, 3)

    Image.new("RGB", (48, 48)).save(ws.candidates_dir / "s000" / "cand000.png")  # a new image is asked again
    with pytest.raises(CurateError, match="cannot load the judge .* transformers vision-language model"):
        judge(ws, str(model))


def test_a_recaption_is_judged_again_and_cached_images_are_not_reread(tmp_path: Path, fake_llm: FakeLLM) -> None:
    """The cache key held the image and concepts but not the caption (a recaptioned candidate kept its old
    verdict), and every run read and hashed every image although the index had hashed them already."""
    ws = Workspace.create(tmp_path / "ws")
    reviewed_dataset(ws, "random")
    dataset = ds.open_dataset(ws)
    ids, paths = dataset.values(ds.CANDIDATE_ID), dataset.values("filepath")
    dataset.set_values(ds.IMAGE_HASH, [f"{i:016x}" for i in range(len(ids))])  # as `curate index` writes it
    fake_llm.responder = verdict_for
    assert judge(ws, "openai:fake-vlm").judged == len(ids)
    asked = len(fake_llm.requests)

    recaptioned = dataset.match({ds.CANDIDATE_ID: ids[1]}).first()
    recaptioned[ds.CAPTION] = "scene 1, a new caption from a recaption"
    recaptioned.save()
    Path(paths[2]).unlink()  # cached: its bytes are never needed again
    report = judge(ws, "openai:fake-vlm")
    assert (report.judged, report.cached) == (len(ids), len(ids) - 1)
    [request] = fake_llm.requests[asked:]
    assert "a new caption from a recaption" in json.dumps(request["messages"])

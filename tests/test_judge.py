"""The VLM judge against a local OpenAI-compatible server: verdicts, cache, malformed replies, calibration."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from curation import dataset as ds
from curation.calibration import calibrate
from curation.cli import app
from curation.scores.judge import OVERALL, PRESENT, judge, parse_verdict
from curation.workspace import Workspace
from tests.fixtures.fake_llm import FakeLLM, ok
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
    report = judge(ws, "fake-vlm")
    assert (report.judged, report.cached, report.malformed) == (33, 0, 1)
    logged = [
        json.loads(line) for line in (ws.root / "index" / "judge_rejections.jsonl").read_text().splitlines()
    ]
    assert [r["candidate_id"] for r in logged] == ["cand000"]
    dataset = ds.open_dataset(ws)
    first, second = (dataset.match({ds.CANDIDATE_ID: c}).first() for c in ("cand000", "cand001"))
    assert first[OVERALL] is None and (second[OVERALL], second[PRESENT]) == (5, 1.0)

    asked = len(fake_llm.requests)
    again = CliRunner().invoke(app, ["judge", "--model", "fake-vlm", "-w", str(ws.root)])
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

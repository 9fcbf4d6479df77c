"""The LLM planner against a real local OpenAI-compatible server, and composition sampling.

Each broken reply kind is served once and the test checks what it became: repaired, re-asked
with the error fed back, or replaced by a rules plan with the failure recorded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from curation.config import dump_config
from curation.errors import CurateError
from curation.records import Box
from curation.workspace import Workspace, atomic_write_text
from generators.compositions import BACKGROUNDS, pick_composition
from generators.geometry import check_layout
from generators.layout import plan_layouts
from generators.llm_layout import extract_json
from tests.fixtures.fake_llm import FakeLLM, http_error, ok

CURATE = str(Path(sys.executable).with_name("curate"))
CAT = {"concept": "cat", "x": 4, "y": 60, "w": 50, "h": 60, "relative_size": 1.0}
MUG = {"concept": "mug", "x": 70, "y": 60, "w": 40, "h": 60, "relative_size": 0.5}
VALID = json.dumps({"background": "on a kitchen table", "objects": [CAT, MUG]})


def configure(ws: Workspace, sets: str | None = "cat, mug\n", **layout: object) -> None:
    """Switch the workspace to the LLM planner (one request at a time, so the queue order holds)."""
    config = ws.config
    settings = {"planner": "llm", "llm_concurrency": 1, "llm_http_retries": 1, "llm_max_retries": 2}
    if sets is not None:
        atomic_write_text(ws.root / "compositions.txt", sets)
        settings["compositions_file"] = "compositions.txt"
    config.layout = config.layout.model_copy(update={**settings, **layout})
    atomic_write_text(ws.config_path, dump_config(config))


def failures(ws: Workspace) -> list[dict]:
    path = ws.root / "plans" / "llm_failures.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def side_by_side(body: dict) -> str:
    """A valid reply for whatever the request asks: boxes in a row, the background names the scene."""
    user = body["messages"][1]["content"]
    ids = re.findall(r'- "([^"]+)"', user)
    scene = re.search(r"scene (\d+)", user)
    cell = 128 // len(ids)
    objects = [
        {"concept": c, "x": i * cell + 2, "y": 80, "w": cell - 4, "h": 40, "relative_size": 1.0}
        for i, c in enumerate(ids)
    ]
    return json.dumps({"background": f"scene {scene.group(1) if scene else 1} in a park", "objects": objects})


def test_valid_reply_uses_structured_output_and_relative_sizes(
    concept_ws: Workspace, fake_llm: FakeLLM
) -> None:
    configure(concept_ws)
    fake_llm.queue(ok(VALID))
    [plan] = plan_layouts(concept_ws, 1)
    assert plan.planner == "llm:gpt-4o-mini" and plan.raw_reply == VALID
    assert plan.background == "on a kitchen table" and sorted(plan.concepts) == ["cat", "mug"]
    boxes = {b.concept_id: b for b in plan.boxes}
    assert boxes["cat"] == Box(concept_id="cat", x=4, y=60, w=50, h=60)
    # relative size 0.5 of the cat: half its height, bottom centre kept (the paper's scale correction)
    assert boxes["mug"] == Box(concept_id="mug", x=80, y=90, w=20, h=30)
    [request] = fake_llm.requests
    assert request["response_format"]["type"] == "json_schema" and request["model"] == "gpt-4o-mini"
    assert (
        '"cat": a cat' in request["messages"][1]["content"] and "128x128" in request["messages"][0]["content"]
    )
    assert failures(concept_ws) == []
    assert concept_ws.plans() == [plan]


def test_json_in_code_fences_is_repaired_without_asking_again(
    concept_ws: Workspace, fake_llm: FakeLLM
) -> None:
    configure(concept_ws)
    fenced = f"Here is the layout:\n```json\n{VALID}\n```\nHope it helps {{not json}}"
    fake_llm.queue(ok(fenced))
    [plan] = plan_layouts(concept_ws, 1)
    assert plan.planner.startswith("llm:") and plan.raw_reply == fenced
    assert len(fake_llm.requests) == 1 and failures(concept_ws) == []


@pytest.mark.parametrize(
    ("broken", "error"),
    [
        (
            '{"background": "a park", "objects": [{"concept": "cat", "x": 4,',
            "ends before the JSON object is complete",
        ),
        (
            json.dumps({"background": "a park", "objects": [{**CAT, "x": 100}, MUG]}),
            "box of cat leaves the canvas",
        ),
        (json.dumps({"background": "a park", "objects": [CAT]}), "missing concept(s) mug"),
        (
            json.dumps({"background": "a park", "objects": [CAT, MUG, {**MUG, "concept": "dog"}]}),
            "unknown concept(s) dog",
        ),
        (
            json.dumps({"background": "a park", "objects": [CAT, {**MUG, "relative_size": 3}]}),
            "relative_size",
        ),
        (
            json.dumps({"background": "a park", "objects": [CAT, {**MUG, "w": -40, "h": -60}]}),
            "box of mug needs a positive width and height",
        ),
    ],
    ids=["malformed", "out-of-canvas", "missing-concept", "unknown-concept", "bad-size", "negative-box"],
)
def test_broken_reply_is_retried_with_the_error_fed_back(
    concept_ws: Workspace, fake_llm: FakeLLM, broken: str, error: str
) -> None:
    configure(concept_ws)
    fake_llm.queue(ok(broken), ok(VALID))
    [plan] = plan_layouts(concept_ws, 1)
    assert plan.planner == "llm:gpt-4o-mini" and plan.raw_reply == VALID
    first, second = fake_llm.requests
    assert second["messages"][:2] == first["messages"]
    assert second["messages"][2] == {"role": "assistant", "content": broken}
    assert second["messages"][3]["role"] == "user" and error in second["messages"][3]["content"]
    [failure] = failures(concept_ws)
    assert failure["raw_reply"] == broken and error in failure["error"] and failure["attempt"] == 0
    assert "fell_back" not in failure


def test_rate_limit_is_retried_by_the_client(concept_ws: Workspace, fake_llm: FakeLLM) -> None:
    configure(concept_ws)
    fake_llm.queue(http_error(429), ok(VALID))
    [plan] = plan_layouts(concept_ws, 1)
    assert plan.planner.startswith("llm:") and len(fake_llm.requests) == 2
    assert failures(concept_ws) == []


def test_persistent_server_error_falls_back_to_rules_and_is_recorded(
    concept_ws: Workspace, fake_llm: FakeLLM
) -> None:
    configure(concept_ws, llm_max_retries=1)
    fake_llm.queue(*[http_error(500)] * 4)
    [plan] = plan_layouts(concept_ws, 1)
    assert len(fake_llm.requests) == 4, "2 attempts x (1 request + 1 client retry)"
    assert plan.planner == "rules-fallback" and plan.raw_reply is None
    assert sorted(plan.concepts) == ["cat", "mug"] and plan.background in BACKGROUNDS
    assert check_layout(plan, concept_ws.config.layout) is None
    records = failures(concept_ws)
    assert [r["attempt"] for r in records] == [0, 1]
    assert all(
        "InternalServerError" in r["error"] and r["raw_reply"] is None and r["fell_back"] for r in records
    )


def test_model_that_never_gets_it_right_falls_back_with_every_reply_kept(
    concept_ws: Workspace, fake_llm: FakeLLM
) -> None:
    configure(concept_ws)
    wrong = [json.dumps({"background": f"try {i}", "objects": [CAT]}) for i in range(3)]
    fake_llm.queue(*map(ok, wrong))
    [plan] = plan_layouts(concept_ws, 1)
    assert plan.planner == "rules-fallback" and plan.raw_reply == wrong[-1]
    assert check_layout(plan, concept_ws.config.layout) is None
    assert [r["raw_reply"] for r in failures(concept_ws)] == wrong
    assert [len(r["messages"]) for r in fake_llm.requests] == [2, 4, 6], "each retry carries the history"


def test_server_without_structured_output_gets_plain_json(concept_ws: Workspace, fake_llm: FakeLLM) -> None:
    configure(concept_ws)
    fake_llm.structured = False
    fake_llm.queue(ok(VALID), ok(VALID))
    plans = plan_layouts(concept_ws, 2)
    assert all(p.planner.startswith("llm:") for p in plans)
    assert ["response_format" in r for r in fake_llm.requests] == [True, False, False]


def test_cache_makes_a_rerun_free_and_identical(concept_ws: Workspace, fake_llm: FakeLLM) -> None:
    configure(concept_ws, sets=None, backgrounds_per_composition=2, llm_concurrency=3)
    fake_llm.queue(ok("not json at all"))  # whichever plan gets it is re-asked; failure replayed from cache
    fake_llm.responder = side_by_side
    plans = plan_layouts(concept_ws, 6)
    asked = len(fake_llm.requests)
    assert asked == 7 and all(p.planner.startswith("llm:") for p in plans)
    text, logged = concept_ws.plans_path.read_text(), failures(concept_ws)
    assert len(logged) == 1 and logged[0]["raw_reply"] == "not json at all"
    concepts = list(concept_ws.concepts().values())
    for k, plan in enumerate(plans):  # order and compositions as the rules planner would have them
        assert (
            plan.seed == k
            and tuple(plan.concepts) == pick_composition(k, concepts, concept_ws.config.layout).concepts
        )
    for a, b in zip(plans[::2], plans[1::2]):
        assert a.concepts == b.concepts and a.background != b.background, "one set, two scenes"

    again = plan_layouts(concept_ws, 6)
    assert len(fake_llm.requests) == asked, "the second run sends no request"
    assert again == plans and concept_ws.plans_path.read_text() == text and failures(concept_ws) == logged


def test_missing_api_key_is_a_one_line_error(
    concept_ws: Workspace, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(concept_ws)
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(CurateError, match="OPENAI_API_KEY"):
        plan_layouts(concept_ws, 1)
    assert not concept_ws.plans_path.exists() and fake_llm.requests == []


def test_curate_plan_cli_with_the_llm_planner(concept_ws: Workspace, fake_llm: FakeLLM) -> None:
    configure(concept_ws, sets="cat mug\nastro, mug, clock\n")
    fake_llm.responder = side_by_side
    result = subprocess.run(
        [CURATE, "plan", "--n", "4", "-w", str(concept_ws.root)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "4 plans" in result.stdout
    plans = concept_ws.plans()
    assert len(plans) == 4 and all(p.planner == "llm:gpt-4o-mini" for p in plans)
    assert Counter(len(p.concepts) for p in plans) == {2: 2, 3: 2}
    assert len(fake_llm.requests) == 4


def test_extract_json_never_evaluates() -> None:
    assert extract_json('x {"a": [1, {"b": 2}]} y {"c": 3}') == ({"a": [1, {"b": 2}]}, None)
    value, problem = extract_json("{'background': __import__('os').getcwd()}")
    assert problem is not None and "not valid JSON" in problem
    assert isinstance(value, dict) and all(isinstance(v, str) for v in value.values()), "text, never run"


def test_composition_file_restricts_sets_balances_counts_and_varies_backgrounds(
    concept_ws: Workspace,
) -> None:
    config = concept_ws.config
    atomic_write_text(
        concept_ws.root / "sets.txt",
        "cat mug\nastro, mug, clock  # a person with a mug\n\nrocket cat clock mug\n",
    )
    config.layout = config.layout.model_copy(
        update={"compositions_file": "sets.txt", "backgrounds_per_composition": 2}
    )
    atomic_write_text(concept_ws.config_path, dump_config(config))
    plans = plan_layouts(concept_ws, 12)
    allowed = {("cat", "mug"), ("astro", "clock", "mug"), ("cat", "clock", "mug", "rocket")}
    assert {tuple(sorted(p.concepts)) for p in plans} == allowed
    assert Counter(len(p.concepts) for p in plans) == {2: 4, 3: 4, 4: 4}
    for a, b in zip(plans[::2], plans[1::2]):
        assert sorted(a.concepts) == sorted(b.concepts) and a.background != b.background
    assert all(check_layout(p, config.layout) is None and p.planner == "rules" for p in plans)

    atomic_write_text(concept_ws.root / "sets.txt", "cat mug\ncat dog\n")
    with pytest.raises(CurateError, match=r"sets.txt set 2: unknown concept\(s\) dog"):
        plan_layouts(concept_ws, 2)
    atomic_write_text(concept_ws.root / "sets.txt", "cat\n")
    with pytest.raises(CurateError, match="1 concepts, layout allows 2..5"):
        plan_layouts(concept_ws, 2)


def test_composition_file_in_json(concept_ws: Workspace) -> None:
    config = concept_ws.config
    atomic_write_text(concept_ws.root / "sets.json", json.dumps([["astro", "cat"], ["mug", "clock"]]))
    config.layout = config.layout.model_copy(update={"compositions_file": "sets.json"})
    atomic_write_text(concept_ws.config_path, dump_config(config))
    plans = plan_layouts(concept_ws, 4)
    assert Counter(tuple(sorted(p.concepts)) for p in plans) == {("astro", "cat"): 2, ("clock", "mug"): 2}


def test_llm_suggests_which_concepts_go_together(concept_ws: Workspace, fake_llm: FakeLLM) -> None:
    configure(concept_ws, sets=None, llm_compositions=2)
    good = json.dumps({"sets": [["astro", "mug"], ["rocket", "cat", "clock"]]})
    fake_llm.queue(ok(json.dumps({"sets": [["astro", "dog"]]})), ok(good))
    fake_llm.responder = side_by_side
    plans = plan_layouts(concept_ws, 4)
    assert [sorted(p.concepts) for p in plans] == [["astro", "mug"], ["cat", "clock", "rocket"]] * 2
    first, second = fake_llm.requests[:2]
    assert "groups of 2 to 5 objects" in first["messages"][0]["content"]
    assert "set 1 ['astro', 'dog']: unknown concept(s) dog" in second["messages"][-1]["content"]
    [failure] = failures(concept_ws)
    assert failure["stage"] == "compositions" and "dog" in failure["raw_reply"]
    suggested = json.loads((concept_ws.root / "plans" / "llm_compositions.json").read_text())
    assert suggested == [["astro", "mug"], ["cat", "clock", "rocket"]]
    plan_layouts(concept_ws, 4)
    assert len(fake_llm.requests) == 6, "sets and layouts both come from the cache the second time"

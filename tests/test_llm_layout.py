"""The LLM planner against a real local OpenAI-compatible server, and composition sampling.

Each broken reply kind is served once and the test checks what it became: repaired, re-asked
with the error fed back, or replaced by a rules plan with the failure recorded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from curation.core.config import LayoutConfig, dump_config
from curation.core.errors import CurateError
from curation.core.records import Box, LayoutPlan
from curation.core.workspace import Workspace, atomic_write_text
from generators.compositions import BACKGROUNDS, CompositionPick, pick_composition
from generators.geometry import check_layout
from generators.layout import plan_layouts
from generators.llm_reply import ReplyRejected, extract_json, parse_reply, parse_sets
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


def layout_reply(background: object = "a park", objects: object = None, **extra: object) -> str:
    return json.dumps(
        {"background": background, "objects": [CAT, MUG] if objects is None else objects, **extra}
    )


DEEP = '{"background": "a park", "objects": ' + "[" * 5000 + "]" * 5000 + "}"


@pytest.mark.parametrize(
    ("broken", "mentions"),
    [
        (
            layout_reply(objects=[{**CAT, "x": 100}, MUG])[:-1] + ",}",
            ["not valid JSON", "box of cat leaves the canvas"],
        ),
        (VALID[:70], ["not valid JSON", "ends before the JSON object is complete", "objects.0"]),
        ("Sure! A cat and a mug on a sunny kitchen table.", ["no JSON object"]),
        (layout_reply(objects=[{**CAT, "x": "left"}, MUG]), ["objects.0.x", "valid integer"]),
        (layout_reply(background=["a", "park"]), ["background", "valid string"]),
        (layout_reply(background="a" * 1000), ["background", "at most 300 characters (got 1000)"]),
        (layout_reply(background="a park \x1b[31mred"), ["background", "printable text on one line"]),
        (layout_reply(background="a" * 1_000_000), ["1000", "characters long", "JSON object only"]),
        (DEEP, ["5001 '{' and '[' brackets", "do not nest"]),
        (layout_reply(objects=[{**CAT, "x": 10**400}, MUG]), ["objects.0.x"]),
        (layout_reply(objects=[CAT]).replace('"', "'"), ["not valid JSON", "missing concept(s) mug"]),
        (layout_reply(objects=[CAT, {**MUG, "concept": "m" * 5000}]), ["objects.1.concept", "at most 64"]),
    ],
    ids=[
        "trailing-comma",
        "truncated",
        "not-json",
        "wrong-type",
        "background-not-text",
        "long-background",
        "control-chars",
        "1MB-background",
        "deep-nesting",
        "huge-int",
        "single-quotes",
        "long-concept",
    ],
)
def test_fed_back_reason_names_the_real_problem(
    concept_ws: Workspace, fake_llm: FakeLLM, broken: str, mentions: list[str]
) -> None:
    configure(concept_ws)
    fake_llm.queue(ok(broken), ok(VALID))
    [plan] = plan_layouts(concept_ws, 1)
    assert plan.planner == "llm:gpt-4o-mini" and plan.raw_reply == VALID
    feedback = fake_llm.requests[1]["messages"][3]["content"]
    for words in mentions:
        assert words in feedback, feedback
    assert "Field required" not in feedback or "ends before" in feedback, "a repaired reply is read whole"
    assert len(feedback) < 600, "no reply-sized text is echoed back"
    [failure] = failures(concept_ws)
    assert failure["error"] in feedback and len(failure["raw_reply"]) <= 16_000
    assert plan.background == "on a kitchen table"


@pytest.mark.parametrize(
    "slip",
    [
        VALID[:-1] + ",}",
        VALID.replace('"', "'"),
        VALID[:-2],
        f"```json\n{VALID[:-1]}, // the layout\n}}\n```",
        layout_reply(background="on a kitchen\n\ttable"),
    ],
    ids=["trailing-comma", "single-quotes", "cut-off-end", "comment-in-fence", "multi-line-background"],
)
def test_common_json_slips_are_repaired_without_asking_again(
    concept_ws: Workspace, fake_llm: FakeLLM, slip: str
) -> None:
    configure(concept_ws)
    fake_llm.queue(ok(slip))
    [plan] = plan_layouts(concept_ws, 1)
    assert plan.planner == "llm:gpt-4o-mini" and plan.raw_reply == slip
    assert plan.background in ("on a kitchen table", "a park") and len(fake_llm.requests) == 1
    assert failures(concept_ws) == []


def test_invalid_unicode_is_refused_and_the_retry_still_sent(
    concept_ws: Workspace, fake_llm: FakeLLM
) -> None:
    configure(concept_ws)
    garbage = "no layout \ud800 here"
    fake_llm.queue(ok(garbage), ok(layout_reply(background="a park \ud800")), ok(VALID + " \udfff"))
    [plan] = plan_layouts(concept_ws, 1)  # the server's JSON escapes decode to unpaired surrogates
    assert plan.planner == "llm:gpt-4o-mini" and plan.raw_reply == VALID + " \ufffd"
    assert fake_llm.requests[1]["messages"][2]["content"] == "no layout \ufffd here"
    assert "printable" in fake_llm.requests[2]["messages"][5]["content"]
    assert [f["raw_reply"] for f in failures(concept_ws)] == [
        "no layout \ufffd here",
        layout_reply(background="a park \ud800"),  # the escape as text: refused once decoded
    ]
    assert concept_ws.plans() == [plan]
    concept_ws.plans_path.read_bytes().decode("utf-8")


def test_curate_plan_survives_hostile_replies_and_a_poisoned_cache(
    concept_ws: Workspace, fake_llm: FakeLLM
) -> None:
    configure(concept_ws)
    hostile = [DEEP, "{\ud800", layout_reply(background="x" * 1_000_000)]
    fake_llm.queue(*map(ok, hostile))
    fake_llm.responder = side_by_side
    command = [CURATE, "plan", "--n", "2", "-w", str(concept_ws.root)]
    first = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr
    assert "1 plans fell back to the rule-based planner" in first.stdout
    plans = concept_ws.plans()
    assert [p.planner for p in plans] == ["rules-fallback", "llm:gpt-4o-mini"]
    logged = failures(concept_ws)
    assert [r["attempt"] for r in logged] == [0, 1, 2] and all(r["fell_back"] for r in logged)
    assert "brackets" in logged[0]["error"] and "not valid JSON" in logged[1]["error"]
    assert "characters long" in logged[2]["error"] and len(logged[2]["raw_reply"]) == 16_000
    cached = [json.loads(p.read_text())["reply"] for p in (concept_ws.root / "plans" / "llm_cache").iterdir()]
    assert DEEP in cached, "the hostile reply is in the cache, as a crash would have left it"

    asked, text = len(fake_llm.requests), concept_ws.plans_path.read_text()
    again = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert len(fake_llm.requests) == asked, "every reply, hostile ones too, is replayed from the cache"
    assert concept_ws.plans_path.read_text() == text and failures(concept_ws) == logged


def test_unreadable_cache_file_is_asked_again(concept_ws: Workspace, fake_llm: FakeLLM) -> None:
    configure(concept_ws)
    fake_llm.responder = side_by_side
    plans = plan_layouts(concept_ws, 2)
    cache = sorted((concept_ws.root / "plans" / "llm_cache").iterdir())
    atomic_write_text(cache[0], "{torn")
    atomic_write_text(cache[1], json.dumps({"reply": ["not", "text"]}))
    assert plan_layouts(concept_ws, 2) == plans
    assert len(fake_llm.requests) == 4, "both unreadable entries are asked again, nothing else"


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


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        ("sets.json", b"[" * 100_000, "nested too deeply"),
        ("sets.json", b'{"cat": 1}', "expected a JSON list of lists"),
        ("sets.json", b"[['cat', 'mug'],]", "not valid JSON"),
        ("sets.txt", b"cat m\xfcg\n", "is not UTF-8 text"),
        ("sets.txt", b"# only a comment\n", "no concept sets listed"),
        ("../outside.txt", b"cat mug\n", "escapes the workspace"),
    ],
    ids=["deep", "not_a_list", "single_quotes", "latin1", "empty", "outside"],
)
def test_a_bad_composition_file_is_one_error_line(
    concept_ws: Workspace, name: str, content: bytes, complaint: str
) -> None:
    config = concept_ws.config
    (concept_ws.root / name).write_bytes(content)
    config.layout = config.layout.model_copy(update={"compositions_file": name})
    atomic_write_text(concept_ws.config_path, dump_config(config))
    with pytest.raises(CurateError, match=re.escape(complaint)) as raised:
        plan_layouts(concept_ws, 2)
    assert "\n" not in str(raised.value)


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


# Property tests: whatever the model says, parsing ends in a checked plan or a ReplyRejected.

CONFIG = LayoutConfig(width=128, height=128)
PICK = CompositionPick(concepts=("cat", "mug"), background="on a table", variant=0, key="0" * 16)
PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)


@st.composite
def near_layouts(draw: st.DrawFn) -> dict:
    """Plausible replies for cat and mug, most with one slip a model makes."""
    objects = [
        {
            "concept": concept,
            "x": draw(st.integers(*xs)),
            "y": draw(st.integers(0, 60)),
            "w": draw(st.integers(12, 60)),
            "h": draw(st.integers(20, 68)),
            "relative_size": draw(st.floats(0.3, 1.0)),
        }
        for concept, xs in (("cat", (0, 40)), ("mug", (60, 100)))
    ]
    layout = {"background": draw(st.sampled_from(["a park", "on a\n  kitchen table"])), "objects": objects}
    slip = draw(st.integers(0, 5))
    obj = draw(st.sampled_from(objects))
    if slip == 1:
        layout["background"] = draw(st.text(max_size=400))
    elif slip == 2:
        obj["concept"] = draw(st.sampled_from(["dog", " cat\n", "mug", ""]))
    elif slip == 3:
        obj[draw(st.sampled_from(sorted(obj)))] = draw(json_values)
    elif slip == 4:
        objects.append(dict(obj)) if draw(st.booleans()) else objects.remove(obj)
    return layout


def outcome(text: str) -> LayoutPlan | None:
    """The accepted plan, checked; None for a rejection whose message could be sent back."""
    try:
        plan = parse_reply(text, 0, PICK, CONFIG, "llm:test")
    except ReplyRejected as exc:
        str(exc).encode("utf-8")  # the fed-back message always encodes
        return None
    assert check_layout(plan, CONFIG) is None and plan.concepts == ["cat", "mug"]
    assert 0 < len(plan.background) <= 300 and plan.background.isprintable()
    plan.model_dump_json()
    return plan


@PROPERTY
@given(st.text(max_size=300) | st.text(alphabet="{}[]\",:'0123456789abcd \n", max_size=300))
def test_any_text_is_a_plan_or_a_rejection(text: str) -> None:
    outcome(text)


@PROPERTY
@given(json_values, st.sampled_from([json.dumps, str]))
def test_any_json_ish_value_is_a_plan_or_a_rejection(value: object, render: Callable[[object], str]) -> None:
    outcome(render(value))


@PROPERTY
@given(
    st.integers(1, 5000),
    st.sampled_from(["[", "{", '{"a": ', '{"objects": [', "[{"]),
    st.text(alphabet="]},", max_size=20),
)
def test_nested_structures_are_rejected_not_raised(depth: int, opener: str, tail: str) -> None:
    outcome('{"background": "a park", "objects": ' + opener * depth + tail)


@PROPERTY
@given(near_layouts(), st.integers(0, 3), st.data())
@example({"background": "a park", "objects": [CAT, MUG]}, 0, None).via("the reply VALID holds")
def test_accepted_plans_always_pass_the_geometric_checks(
    layout: dict, slip: int, data: st.DataObject | None
) -> None:
    text = json.dumps(layout)
    if slip == 1:  # trailing comma
        text = text[:-1] + ",}"
    elif slip == 2 and data is not None:  # cut off anywhere
        text = text[: data.draw(st.integers(0, len(text)))]
    elif slip == 3:
        text = str(layout)  # Python's single-quoted repr
    plan = outcome(text)
    if plan is None or slip in (2, 3):  # a cut-off or repr'd reply may read differently
        return
    assert plan.background == " ".join(layout["background"].split())
    proposed = {o["concept"].strip(): o for o in layout["objects"]}
    for box in plan.boxes:  # the scale correction only shrinks a box inside the one proposed
        o = proposed[box.concept_id]
        assert o["x"] <= box.x and box.x + box.w <= o["x"] + o["w"] + 1
        assert o["y"] <= box.y and box.y + box.h == o["y"] + o["h"]


@PROPERTY
@given(st.text(max_size=200) | json_values.map(json.dumps))
def test_any_sets_reply_is_sets_or_a_rejection(text: str) -> None:
    try:
        sets = parse_sets(text, {"cat", "mug", "astro"}, CONFIG)
    except ReplyRejected as exc:
        str(exc).encode("utf-8")
        return
    assert sets and all(set(s) <= {"cat", "mug", "astro"} and len(s) >= 2 for s in sets)


UNSTORABLE = st.lists(st.sampled_from(["\ud83d", "\ude00", "\x00", "a", "é", "😀", "\ud800", "{"]), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=UNSTORABLE, plain=st.text(max_size=20))
def test_a_cached_reply_reads_back_as_the_first_run_used_it(
    concept_ws: Workspace, pieces: list[str], plain: str
) -> None:
    """Whatever the endpoint sent (lone surrogates that pair up once stored as JSON escapes, NUL), the
    re-run reads from the cache exactly the text the first run parsed, and sends no request."""
    from types import SimpleNamespace

    from generators.llm_client import LLMClient
    from generators.llm_reply import LLMLayout

    sent = "".join(pieces) + plain
    calls = []

    def create(**kwargs: object) -> SimpleNamespace:
        calls.append(kwargs)
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=sent))])

    config = LayoutConfig(planner="llm")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", "test")
        client = LLMClient(concept_ws, config)
        client.client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
        messages = [{"role": "user", "content": f"layout {uuid.uuid4()}"}]  # a fresh cache key per example
        first = client.ask(messages, 7, LLMLayout)
        again = client.ask(messages, 7, LLMLayout)
    assert again == first and len(calls) == 1
    assert "\x00" not in first
    first.encode("utf-8")  # no lone surrogate left


def test_concept_ids_in_replies_are_case_folded(concept_ws: Workspace, fake_llm: FakeLLM) -> None:
    configure(concept_ws)
    fake_llm.queue(ok(layout_reply(objects=[{**CAT, "concept": "Cat"}, {**MUG, "concept": "MUG"}])))
    [plan] = plan_layouts(concept_ws, 1)
    assert plan.planner == "llm:gpt-4o-mini" and sorted(plan.concepts) == ["cat", "mug"]
    assert sorted(b.concept_id for b in plan.boxes) == ["cat", "mug"] and len(fake_llm.requests) == 1


def test_no_nul_reaches_plans_failures_or_the_cache(concept_ws: Workspace, fake_llm: FakeLLM) -> None:
    configure(concept_ws)
    fake_llm.queue(ok("no\x00layout"), ok(layout_reply(background="a park\x00")), ok(VALID + "\x00"))
    [plan] = plan_layouts(concept_ws, 1)
    assert plan.planner == "llm:gpt-4o-mini" and plan.raw_reply == VALID + "\ufffd"
    lines = [concept_ws.plans_path, concept_ws.root / "plans" / "llm_failures.jsonl"]
    records = [json.loads(line) for path in lines for line in path.read_text(encoding="utf-8").splitlines()]
    cache = sorted((concept_ws.root / "plans" / "llm_cache").iterdir())
    records += [json.loads(path.read_text(encoding="utf-8")) for path in cache]
    assert len(records) == 1 + 2 + 3  # the plan, two rejected replies, three cached replies
    assert all("\x00" not in json.dumps(record, ensure_ascii=False) for record in records)

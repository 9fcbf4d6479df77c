"""Recaption: a VLM's free caption rewritten to name each concept by its phrase, both captions kept.

The OpenAI-compatible path talks real HTTP to tests/fixtures/fake_llm.py's canned server; the
transformers path runs a tiny random-init LLaVA saved to a folder, through the same
`AutoProcessor` / `AutoModelForImageTextToText` calls a hub id would take.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.core.config import GenerateConfig, dump_config
from curation.core.errors import CurateError
from curation.core.records import Box, Concept, LayoutPlan
from curation.core.workspace import Workspace, atomic_write_text
from generators.layout import plan_layouts
from generators.recaption import load_captioner, personalize_caption
from generators.run import generate, plan_work
from tests.fixtures.fake_llm import FakeLLM, http_error, ok
from tests.fixtures.tiny_pipelines import build_tiny_llava


def _concept(concept_id: str, noun: str) -> Concept:
    return Concept(concept_id=concept_id, name=concept_id, class_noun=noun, token=f"<c-{concept_id}>")


CAT, MUG, ROCKET = _concept("cat", "cat"), _concept("mug", "mug"), _concept("rocket", "rocket")
DOG1, DOG2 = _concept("dog1", "dog"), _concept("dog2", "dog")


@pytest.mark.parametrize(
    ("vlm", "concepts", "expected"),
    [
        (
            "A cat sitting next to a coffee cup on a wooden table.",
            [CAT, MUG],
            "A <c-cat> cat sitting next to a coffee <c-mug> mug on a wooden table",
        ),
        ("Two dogs playing on the grass", [DOG1, DOG2], "<c-dog1> dog and <c-dog2> dog playing on the grass"),
        (
            "A dog sleeps while another dog watches",
            [DOG1, DOG2],
            "A <c-dog1> dog sleeps while another <c-dog2> dog watches",
        ),
        ("A kitten on a sofa.", [CAT, ROCKET], "A <c-cat> cat on a sofa, with <c-rocket> rocket"),
        ("a catalog beside a Cat", [CAT], "a catalog beside a <c-cat> cat"),
        ("a dog in the snow", [DOG1, DOG2], "a <c-dog1> dog in the snow, with <c-dog2> dog"),
        ("a photo of <c-cat> cat and a mug", [CAT, MUG], "a photo of <c-cat> cat and a <c-mug> mug"),
        ("<c-dog1> dog beside a dog", [DOG1, DOG2], "<c-dog1> dog beside a <c-dog2> dog"),
        ("<c-dog1> dog on a lawn", [DOG1, DOG2], "<c-dog1> dog on a lawn, with <c-dog2> dog"),
    ],
)
def test_free_captions_name_every_concept_once(vlm: str, concepts: list[Concept], expected: str) -> None:
    out = personalize_caption(vlm, concepts)
    assert out == expected
    assert all(out.count(c.phrase) == 1 for c in concepts)


def _openai_ws(ws: Workspace) -> Workspace:
    config = ws.config
    config.layout = config.layout.model_copy(update={"width": 64, "height": 64})
    config.generate = config.generate.model_copy(update={"recaption": "openai:fake-vlm"})
    atomic_write_text(ws.config_path, dump_config(config))
    return ws


def test_openai_vision_captions_are_personalized_and_both_kept(
    concept_ws: Workspace, fake_llm: FakeLLM
) -> None:
    ws = _openai_ws(concept_ws)
    plans = plan_layouts(ws, 3)
    fake_llm.responder = lambda body: "A photo of some objects standing on the floor."
    report = generate(ws)
    assert report.generated == 3 and not report.failed, report.summary()

    concepts = ws.concepts()
    by_plan = {p.plan_id: p for p in plans}
    sent = {}
    for request in fake_llm.requests:
        (text, image) = request["messages"][0]["content"]
        assert request["model"] == "fake-vlm" and text["text"] == GenerateConfig().recaption_prompt
        url = image["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
        sent[pixels.tobytes()] = True
    assert len(fake_llm.requests) == 3
    for candidate in ws.candidates():
        image = np.asarray(Image.open(ws.resolve(candidate.image)))
        assert image.tobytes() in sent, "the VLM saw exactly the final image"
        assert candidate.extra["vlm_caption"] == "A photo of some objects standing on the floor."
        assert candidate.template_caption.startswith("a photo of ")
        assert candidate.caption != candidate.template_caption
        assert candidate.caption.startswith("A photo of some objects standing on the floor, with ")
        phrases = [concepts[c].phrase for c in by_plan[candidate.plan_id].concepts]
        assert all(candidate.caption.count(phrase) == 1 for phrase in phrases)
        assert candidate.extra["recaption"] == {
            "name": "openai:fake-vlm",
            "recaption_prompt": GenerateConfig().recaption_prompt,
            "recaption_max_tokens": 60,
        }
        assert candidate.generator_config["recaption_prompt"] == GenerateConfig().recaption_prompt


def test_http_errors_fail_candidates_as_data_and_blank_replies_fall_back(
    concept_ws: Workspace, fake_llm: FakeLLM
) -> None:
    ws = _openai_ws(concept_ws)
    plan_layouts(ws, 2)
    fake_llm.queue(*[http_error(500)] * 3, ok("   "))  # the client retries twice: one candidate fails
    report = generate(ws, workers=1)
    assert report.generated == 1 and report.failed == {"InternalServerError": 1}, report.summary()
    failed = [c for c in ws.candidates(include_failed=True) if c.status == "failed"]
    assert len(failed) == 1 and "500" in failed[0].error
    (done,) = ws.candidates()
    assert done.caption == done.template_caption and done.extra["vlm_caption"] == ""

    fake_llm.responder = lambda body: "a rocket"
    retry = generate(ws)
    assert retry.generated == 1 and not retry.failed


def test_openai_captioner_needs_a_key_and_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(CurateError, match="api_key"):
        load_captioner("openai:gpt-4o-mini")
    with pytest.raises(CurateError, match="needs a model name"):
        load_captioner("openai:")


def test_llava_folder_captions_through_the_transformers_path(tmp_path: Path) -> None:
    folder = build_tiny_llava(tmp_path)
    settings = GenerateConfig(recaption=str(folder), recaption_max_tokens=6)
    captioner = load_captioner(str(folder), settings)
    assert type(captioner.model).__name__ == "LlavaForConditionalGeneration"
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    words = captioner.describe(image)
    assert words and words == captioner.describe(image), "greedy decoding is deterministic"
    plan = LayoutPlan(
        concepts=["cat", "mug"],
        background="on a desk",
        boxes=[Box(concept_id="mug", x=30, y=5, w=20, h=20), Box(concept_id="cat", x=2, y=5, w=20, h=20)],
        planner="rules",
    )
    template = "a photo of <c-cat> cat and <c-mug> mug on a desk"
    caption = captioner(image, plan, {"cat": CAT, "mug": MUG}, template)
    assert caption.vlm_caption == " ".join(words.split())
    assert caption.text.count("<c-cat> cat") == 1 and caption.text.count("<c-mug> mug") == 1
    assert caption.text.index("<c-cat>") < caption.text.index("<c-mug>"), "appended left to right"
    assert json.loads(json.dumps(captioner.config()))["name"] == str(folder)


def test_missing_vlm_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="cannot load captioning model"):
        load_captioner(str(tmp_path / "no-such-vlm"))


def test_template_ids_do_not_change_with_vlm_settings(concept_ws: Workspace) -> None:
    plan_layouts(concept_ws, 2)
    before = [i.candidate_id for i in plan_work(concept_ws)]
    config = concept_ws.config
    config.generate = config.generate.model_copy(update={"recaption_prompt": "something else"})
    atomic_write_text(concept_ws.config_path, dump_config(config))
    assert [i.candidate_id for i in plan_work(concept_ws)] == before

"""Captions for candidates, naming each concept by its phrase ("<c-cat> cat").

Backends are chosen by the `generate.recaption` config string and share one contract
(`Captioner`: final image + plan + concepts + template caption -> `Caption`):

- ``template`` (offline default): the caption built from the plan, concepts named left to right.
- ``openai:<model>``: an OpenAI-compatible vision endpoint (`OPENAI_BASE_URL`, `OPENAI_API_KEY`),
  the image sent as a base64 PNG data URL.
- anything else: a transformers image-text-to-text model by hub id or local folder (LLaVA-1.5,
  `llava-hf/llava-1.5-7b-hf`, or any model `AutoModelForImageTextToText` knows), prompted through
  its processor's chat template, greedy decoding.

A VLM does not know the personal tokens, so its free caption is personalized afterwards
(`personalize_caption`): the first mention of each concept's class noun (or a synonym) becomes the
concept's phrase, and concepts it never mentioned are appended. The template caption is kept in
provenance either way, and the VLM's own words in `extra["vlm_caption"]`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from curation.core.config import GenerateConfig
from curation.core.devices import resolve_device
from curation.core.errors import CurateError
from curation.core.records import Concept, LayoutPlan
from generators.generate_settings import OPENAI_PREFIX, TEMPLATE, caption_settings
from generators.phrases import join_phrases, left_to_right

SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "boy", "girl", "child", "kid", "astronaut", "people", "lady", "guy"),
    "dog": ("puppy",),
    "cat": ("kitten", "kitty"),
    "mug": ("cup",),
    "cup": ("mug",),
    "toy": ("figurine", "plush"),
    "teddy bear": ("teddy", "stuffed bear", "plush bear"),
    "plant": ("houseplant", "potted plant"),
    "houseplant": ("plant", "potted plant"),
    "car": ("vehicle",),
    "bag": ("backpack", "handbag"),
}
"""Words a VLM may use for a class noun; the class noun itself always counts, plurals too."""
_COUNT = r"(?P<count>(?:the|two|three|four|five|several|some|a pair of)\s+)?"


@dataclass(frozen=True)
class Caption:
    """The caption used for training, and the VLM's own words when a VLM wrote it."""

    text: str
    vlm_caption: str | None = None


class Captioner(Protocol):
    name: str

    def config(self) -> dict[str, object]: ...

    def __call__(
        self, image: np.ndarray, plan: LayoutPlan, concepts: dict[str, Concept], template: str
    ) -> Caption: ...


def template_caption(plan: LayoutPlan, concepts: dict[str, Concept]) -> str:
    """'a photo of <c-cat> cat and <c-mug> mug on a wooden table ...', concepts left to right."""
    phrases = join_phrases([concepts[c].phrase for c in left_to_right(plan)])
    return f"a photo of {phrases} {plan.background}".strip()


def _mention(noun: str) -> re.Pattern[str]:
    words = sorted({noun, *SYNONYMS.get(noun, ())}, key=len, reverse=True)
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"\b{_COUNT}(?P<word>{alternatives})(?P<plural>e?s)?\b", re.IGNORECASE)


def personalize_caption(caption: str, concepts: list[Concept]) -> str:
    """Rewrite a free caption so every concept appears once as its phrase ("<c-dog1> dog").

    Concepts sharing a class noun are taken in order: a plural mention ("two dogs") becomes all of
    them ("<c-dog1> dog and <c-dog2> dog"), a singular one the next concept. A concept whose phrase
    is already there is left alone; concepts never mentioned are appended ("..., with <c-mug> mug").
    Replaced text is fenced off, so a phrase just inserted is never matched again.
    """
    text = caption.strip().rstrip(".").strip()
    inserted: list[str] = []

    def fence(phrase: str) -> str:
        inserted.append(phrase)
        return f"\x00{len(inserted) - 1}\x00"

    groups: dict[str, list[Concept]] = {}
    for concept in concepts:
        if concept.phrase in text:  # already named (fenced, so its noun cannot serve another concept)
            text = text.replace(concept.phrase, fence(concept.phrase), 1)
        else:
            groups.setdefault(concept.class_noun, []).append(concept)
    missing: list[str] = []
    for noun, group in groups.items():
        pattern = _mention(noun)
        while group:
            match = pattern.search(text)
            if match is None:
                missing += [c.phrase for c in group]
                break
            if match["plural"] and len(group) > 1:  # "two dogs": all of them, count word included
                start, take = match.start(), group
            else:  # one concept per mention; "a"/"the" before it stays
                start, take = match.start("word"), group[:1]
            group = group[len(take) :]
            text = text[:start] + fence(join_phrases([c.phrase for c in take])) + text[match.end() :]
    if missing:
        text = f"{text}, with {join_phrases(missing)}" if text else join_phrases(missing)
    return re.sub(r"\x00(\d+)\x00", lambda m: inserted[int(m.group(1))], text)


@dataclass
class TemplateCaptioner:
    """Uses the template caption as is: the offline default, exact by construction."""

    name: str = TEMPLATE

    def config(self) -> dict[str, object]:
        return {"name": self.name}

    def __call__(
        self, image: np.ndarray, plan: LayoutPlan, concepts: dict[str, Concept], template: str
    ) -> Caption:
        return Caption(template)


class VLMCaptioner:
    """Shared by the VLM backends: describe the image, then personalize the description."""

    name: str
    settings: GenerateConfig

    def config(self) -> dict[str, object]:
        return {"name": self.name, **caption_settings(self.settings)}

    def describe(self, image: np.ndarray) -> str:
        raise NotImplementedError

    def __call__(
        self, image: np.ndarray, plan: LayoutPlan, concepts: dict[str, Concept], template: str
    ) -> Caption:
        """A blank description falls back to the template caption (kept visible in provenance)."""
        words = " ".join(self.describe(image).split())
        if not words:
            return Caption(template, vlm_caption="")
        return Caption(personalize_caption(words, [concepts[c] for c in left_to_right(plan)]), words)


class OpenAICaptioner(VLMCaptioner):
    """An OpenAI-compatible vision chat endpoint; HTTP errors propagate and fail the candidate."""

    def __init__(self, model: str, settings: GenerateConfig):
        from openai import OpenAI, OpenAIError

        self.name, self.model, self.settings = OPENAI_PREFIX + model, model, settings
        try:
            self.client = OpenAI()
        except OpenAIError as exc:
            raise CurateError(f"recaption {self.name!r}: {exc}".splitlines()[0]) from exc

    def describe(self, image: np.ndarray) -> str:
        ok, png = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
        if not ok:
            raise ValueError("PNG encoding failed")
        url = "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()
        reply = self.client.chat.completions.create(
            model=self.model,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.settings.recaption_prompt},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
            max_tokens=self.settings.recaption_max_tokens,
            temperature=0,
        )
        return reply.choices[0].message.content or ""


class TransformersCaptioner(VLMCaptioner):
    """A transformers VLM (LLaVA-1.5 and kin) with its processor, already loaded on its device.

    `from_pretrained` is what a worker calls, once; benchmarks hand in a model built in memory.
    """

    def __init__(self, name: str, settings: GenerateConfig, processor: Any, model: Any):
        if not getattr(processor, "chat_template", None):
            raise CurateError(f"captioning model {name!r} has no chat template in its processor")
        self.name, self.settings, self.processor = name, settings, processor
        self.model: Any = model.eval()
        self.device = str(model.device)

    @classmethod
    def from_pretrained(cls, name: str, settings: GenerateConfig) -> TransformersCaptioner:
        """Load by hub id or folder, on GPU in fp16 when present."""
        from curation.models.registry import require_local

        require_local("generate.recaption", name)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device, dtype = resolve_device(settings.device, settings.dtype)
        try:
            processor = AutoProcessor.from_pretrained(name)
            model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CurateError(f"cannot load captioning model {name!r}: {first}") from exc
        return cls(name, settings, processor, model.to(device))

    def describe(self, image: np.ndarray) -> str:
        import torch
        from PIL import Image

        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": self.settings.recaption_prompt}],
            }
        ]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=Image.fromarray(image), text=prompt, return_tensors="pt")
        inputs = inputs.to(self.device, self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=self.settings.recaption_max_tokens, do_sample=False
            )
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        return self.processor.decode(new_tokens, skip_special_tokens=True).strip()


def load_captioner(name: str, settings: GenerateConfig | None = None) -> Captioner:
    """The recaption backend named by `config.generate.recaption`; loaded once per worker.

    Args:
        name: 'template', 'openai:<model>', or a transformers VLM hub id / local folder.
        settings: The generate config (VLM prompt, token budget, device, dtype); defaults when None.
    """
    if name == TEMPLATE:
        return TemplateCaptioner()
    settings = settings or GenerateConfig(recaption=name)
    if name.startswith(OPENAI_PREFIX):
        model = name.removeprefix(OPENAI_PREFIX)
        if not model:
            raise CurateError("recaption 'openai:' needs a model name, e.g. 'openai:gpt-4o-mini'")
        return OpenAICaptioner(model, settings)
    return TransformersCaptioner.from_pretrained(name, settings)

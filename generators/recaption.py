"""Captions for candidates, naming each concept by its phrase ("<c-cat> cat").

Backends are chosen by the `generate.recaption` config string and share one contract
(`Captioner`: final image + plan + concepts + template caption -> caption):

- ``template`` (offline default): the caption built from the plan, concepts named left to right.
- anything else is a VLM (LLaVA through transformers or an OpenAI-compatible vision endpoint,
  issue 4): not wired yet, refused with a clear message. The template caption is kept in
  provenance either way, so a VLM caption can always be compared with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from curation.errors import CurateError
from curation.records import Concept, LayoutPlan

TEMPLATE = "template"


class Captioner(Protocol):
    name: str

    def __call__(
        self, image: np.ndarray, plan: LayoutPlan, concepts: dict[str, Concept], template: str
    ) -> str: ...


def join_phrases(phrases: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def template_caption(plan: LayoutPlan, concepts: dict[str, Concept]) -> str:
    """'a photo of <c-cat> cat and <c-mug> mug on a wooden table ...', concepts left to right."""
    order = [b.concept_id for b in sorted(plan.boxes, key=lambda b: (b.x, b.y))]
    return f"a photo of {join_phrases([concepts[c].phrase for c in order])} {plan.background}".strip()


@dataclass
class TemplateCaptioner:
    """Uses the template caption as is: the offline default, exact by construction."""

    name: str = TEMPLATE

    def __call__(
        self, image: np.ndarray, plan: LayoutPlan, concepts: dict[str, Concept], template: str
    ) -> str:
        return template


def load_captioner(name: str) -> Captioner:
    """The recaption backend named by `config.generate.recaption`; loaded once per worker."""
    if name == TEMPLATE:
        return TemplateCaptioner()
    raise CurateError(
        f"recaption backend {name!r} needs a VLM captioner (issue 4), which is not implemented yet; "
        "set generate.recaption = 'template'"
    )

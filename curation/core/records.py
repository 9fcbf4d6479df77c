"""The typed records that flow from generation to export, joined everywhere by content-derived ids.

A concept, a layout plan and a candidate are plain pydantic models serialised as JSON files or
JSON lines in the workspace. Ids are hashes of content, so re-running a step recreates the same
ids and every store (files, FiftyOne, Label Studio, exports) can upsert by id.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

CONCEPT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""A concept id, matched with `fullmatch`: it names a folder and sits inside a token, so no '.', '/', space or newline."""
MAX_NAME_CHARS = 100
MAX_CLASS_NOUN_CHARS = 64


def content_id(payload: Any, length: int = 16) -> str:
    """Hash a JSON-serialisable payload into a short stable id (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def check_concept_id(concept_id: str) -> str:
    """Refuse anything but a whole-string match: `$` would let 'dog\\n' through into a folder and a token."""
    if not CONCEPT_ID.fullmatch(concept_id):
        raise ValueError(f"invalid concept id {concept_id!r}: use 1-64 lowercase letters, digits, '-' or '_'")
    return concept_id


def printable_line(text: str, max_chars: int) -> str:
    """`text` without surrounding spaces, refused unless it is one printable line of 1..max_chars.

    Names and class nouns end up in captions, prompts, Label Studio and terminal output: a newline
    splits a caption, an ANSI escape repaints a terminal, and a 10,000-character noun fills a prompt.
    """
    text = text.strip()
    if not text:
        raise ValueError("must not be empty")
    if len(text) > max_chars:
        raise ValueError(f"is {len(text):,} characters, over the limit of {max_chars}")
    bad = next((c for c in text if not c.isprintable()), None)
    if bad is not None:
        raise ValueError(
            f"must be one printable line, without {bad!r} (newlines, tabs, control or escape codes)"
        )
    return text


ConceptId = Annotated[str, AfterValidator(check_concept_id)]
ConceptName = Annotated[str, AfterValidator(lambda text: printable_line(text, MAX_NAME_CHARS))]
ClassNoun = Annotated[str, AfterValidator(lambda text: printable_line(text, MAX_CLASS_NOUN_CHARS))]


class Concept(BaseModel):
    """A personal concept: its photos, their foreground masks, and the token that names it."""

    concept_id: ConceptId = Field(description="folder name under concepts/, lowercase [a-z0-9_-]")
    name: ConceptName = Field(description="what the user called it, for display: 'my dog', '猫'")
    class_noun: ClassNoun = Field(
        description="what an open-vocabulary detector or a caption calls it: 'cat', 'mug'"
    )
    token: str = Field(description="the personal token used in captions, e.g. <c-cat>")
    refs: list[str] = Field(default_factory=list, description="reference images, relative to the workspace")
    masks: list[str] = Field(default_factory=list, description="soft masks (8-bit alpha), same order as refs")
    mask_flags: list[list[str]] = Field(
        default_factory=list, description="quality flags per mask (see generators.segment.mask_flags)"
    )
    segmenter: str = ""
    mask_sources: list[str] = Field(
        default_factory=list,
        description="what made each mask, same order as refs: the segmenter's name, or 'photo alpha' for a "
        "photo that came as a cut-out (its own alpha channel, used as is); empty in older records",
    )

    @property
    def phrase(self) -> str:
        """How a caption names the concept: token followed by class noun ("<c-cat> cat")."""
        return f"{self.token} {self.class_noun}"


class Box(BaseModel):
    """One concept's place on the canvas, in pixels, top-left origin."""

    concept_id: str
    x: int
    y: int
    w: int
    h: int

    def relative(self, width: int, height: int) -> list[float]:
        """[x, y, w, h] in 0..1, the convention FiftyOne detections use."""
        return [self.x / width, self.y / height, self.w / width, self.h / height]


class LayoutPlan(BaseModel):
    """A composition: which concepts, where, on what background. One line of plans/plans.jsonl."""

    plan_id: str = ""
    concepts: list[str]
    background: str
    boxes: list[Box]
    width: int = 512
    height: int = 512
    planner: str
    seed: int = 0
    raw_reply: str | None = None

    def with_id(self) -> LayoutPlan:
        """Return the plan with its id derived from everything but the raw LLM text."""
        payload = self.model_dump(exclude={"plan_id", "raw_reply"})
        return self.model_copy(update={"plan_id": content_id(payload)})


CandidateStatus = Literal["ok", "failed"]


class Candidate(BaseModel):
    """One generated image and its full provenance; stored as candidates/<shard>/<id>.json."""

    candidate_id: str
    plan_id: str
    shard: str
    image: str = Field(description="path relative to the workspace")
    concepts: list[str]
    boxes: list[Box]
    width: int
    height: int
    background: str
    caption: str = ""
    template_caption: str = ""
    prompt: str = ""
    seed: int
    generator: str
    generator_config: dict[str, Any] = Field(default_factory=dict)
    refs_used: dict[str, str] = Field(default_factory=dict, description="concept_id -> reference image used")
    status: CandidateStatus = "ok"
    error: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="generator-specific provenance")

    @property
    def n_concepts(self) -> int:
        return len(self.concepts)

"""An LLM's reply as a checked value: JSON extracted and repaired, validated by a schema and the rules, or rejected.

The reply is parsed as JSON (fences stripped and the first JSON object taken, repaired with
`json_repair` when it is not strict JSON: trailing commas, single quotes, a cut-off end; never
`eval`), validated by a pydantic schema with bounded one-line text fields and, for a layout, by
`check_layout` after the paper's scale correction (boxes too big for their relative size are
shrunk). Every reply ends as a value or a `ReplyRejected` whose message names the problem, meant to
be fed back to the model; no reply can raise anything else, which the property tests check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import json_repair
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from curation.core.config import LayoutConfig
from curation.core.records import Box, LayoutPlan
from generators.compositions import CompositionPick, check_set
from generators.geometry import check_layout

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

MAX_REPLY_CHARS = 16_000
"""A layout of five boxes is about 500 characters; longer replies are refused, and clipped to this
where they are stored or sent back (json_repair slows down on long malformed text)."""
MAX_BRACKETS = 256
"""The schemas nest three levels; counting every '{' and '[' bounds the nesting for both parsers
(the stdlib's raises RecursionError and json_repair's time grows with depth x length)."""
MAX_BACKGROUND_CHARS = 300
MAX_ID_CHARS = 64
"""As long as a concept id may be (curation.core.workspace)."""
MAX_OBJECTS = 32
"""More boxes (or ids in a suggested set) than any composition holds."""
MAX_PIXELS = 100_000
"""Coordinates beyond this are no layout, and would overflow float arithmetic when scaled."""


class ReplyRejected(Exception):
    """A reply that cannot become a plan; the message names the problem and is fed back to the model."""


def _show(value: object, limit: int = 60) -> str:
    """Reply-derived text for a message: clipped, and escaped unless printable (so always encodable)."""
    text = str(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    return text if text.isprintable() else ascii(text)


def _one_line(limit: int) -> AfterValidator:
    """Text that lands in captions, candidate JSON and prompts: whitespace runs (newlines, tabs)
    become one space; more than `limit` characters, control characters or invalid unicode are refused.

    Bounds are validators rather than Field limits so that the JSON schema sent as structured
    output stays within what servers accept (OpenAI's strict mode has no maxLength).
    """

    def check(value: str) -> str:
        text = " ".join(value.split())
        if len(text) > limit:
            raise ValueError(f"must be at most {limit} characters (got {len(text)})")
        if not text.isprintable() or "\ufffd" in text:
            raise ValueError(
                "must be printable text on one line, without control characters or invalid unicode"
            )
        return text

    return AfterValidator(check)


def _at_most(limit: int) -> AfterValidator:
    """A list of at most `limit` items (a validator, for the reason `_one_line` gives)."""

    def check(value: list) -> list:
        if len(value) > limit:
            raise ValueError(f"must have at most {limit} items (got {len(value)})")
        return value

    return AfterValidator(check)


def _pixel(value: int) -> int:
    if abs(value) > MAX_PIXELS:
        raise ValueError(f"must be within -{MAX_PIXELS}..{MAX_PIXELS} pixels")
    return value


Pixel = Annotated[int, AfterValidator(_pixel)]
ConceptId = Annotated[str, _one_line(MAX_ID_CHARS), AfterValidator(str.lower)]
"""Concept ids are lowercase (curation.core.records): a model writing `Dog` for `dog` means the same concept."""


class LLMObject(BaseModel):
    """One concept's box as the model proposes it (pixels, top-left origin)."""

    model_config = ConfigDict(extra="forbid")
    concept: ConceptId
    x: Pixel
    y: Pixel
    w: Pixel
    h: Pixel
    relative_size: float

    @field_validator("relative_size")
    @classmethod
    def _size_in_range(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError("relative_size must be in (0, 1], the largest object 1.0")
        return value


class LLMLayout(BaseModel):
    """The whole reply: a background description and one object per concept."""

    model_config = ConfigDict(extra="forbid")
    background: Annotated[str, _one_line(MAX_BACKGROUND_CHARS)]
    objects: Annotated[list[LLMObject], _at_most(MAX_OBJECTS)]


def extract_json(text: str) -> tuple[Any, str | None]:
    """The JSON object a reply holds, and what was wrong with its JSON (None when it was strict).

    Code fences and prose around the object are tolerated. When the text from the first '{' is not
    strict JSON it is read with `json_repair` (trailing commas, single quotes, a cut-off end), never
    `eval`; the caller accepts the repaired value if it passes every check, and otherwise names
    the JSON problem beside the check that failed.

    Raises:
        ReplyRejected: the reply is too long, nests too deep, or holds no JSON object at all.
    """
    if len(text) > MAX_REPLY_CHARS:
        raise ReplyRejected(
            f"reply is {len(text)} characters long; reply with the JSON object only (at most {MAX_REPLY_CHARS})"
        )
    if (brackets := text.count("{") + text.count("[")) > MAX_BRACKETS:
        raise ReplyRejected(
            f"reply holds {brackets} '{{' and '[' brackets, far more than the JSON shape needs; do not nest"
        )
    cleaned = text.replace("```json", "```").replace("```JSON", "```").replace("```", "\n")
    start = cleaned.find("{")
    if start == -1:
        raise ReplyRejected("reply holds no JSON object; reply with one JSON object only, starting with {")
    try:
        return json.JSONDecoder().raw_decode(cleaned, start)[0], None
    except json.JSONDecodeError as exc:
        if exc.pos >= len(cleaned.rstrip()) or exc.msg.startswith("Unterminated string"):
            problem = "reply is not valid JSON: it ends before the JSON object is complete (cut off?)"
        else:
            near = _show(cleaned[max(start, exc.pos - 25) : exc.pos + 5])
            problem = f"reply is not valid JSON: {exc.msg} at char {exc.pos} (near {near!r})"
    except ValueError as exc:  # e.g. an integer with more digits than int() accepts
        problem = f"reply is not valid JSON: {_show(exc, 120)}"
    try:
        return json_repair.loads(cleaned[start:]), problem
    except ValueError as exc:
        raise ReplyRejected(f"{problem}; it cannot be repaired either") from exc


def _parse_leniently(text: str, build: Callable[[Any], T]) -> T:
    """`build` applied to the reply's JSON; a rejection of repaired JSON also names the JSON problem.

    Raises:
        ReplyRejected: with the message fed back to the model.
    """
    value, json_problem = extract_json(text)
    try:
        return build(value)
    except ReplyRejected as exc:
        if json_problem is None:
            raise
        raise ReplyRejected(f"{json_problem}; read leniently, {exc}") from exc


def _validate(schema: type[M], value: Any) -> M:
    """The value as a schema instance.

    Raises:
        ReplyRejected: naming the first field that is wrong and why.
    """
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _show(".".join(str(p) for p in first["loc"]) or "the reply")
        raise ReplyRejected(f"reply does not match the schema: {where}: {first['msg']}") from exc


def scale_by_relative_size(objects: list[LLMObject]) -> list[LLMObject]:
    """Shrink boxes too large for their relative size (bottom centre kept); the paper's scale correction.

    The object with the largest relative size sets the scale: an object of relative size s may be
    at most s / s_max times its height. Boxes are only shrunk, never grown, so a valid box stays inside.
    """
    ref = max(objects, key=lambda o: o.relative_size)
    scaled = []
    for obj in objects:
        limit = ref.h * obj.relative_size / ref.relative_size
        if obj.h <= limit or obj is ref:
            scaled.append(obj)
            continue
        f = limit / obj.h
        w, h = max(1, round(obj.w * f)), max(1, round(obj.h * f))
        x = round(obj.x + (obj.w - w) / 2)
        scaled.append(obj.model_copy(update={"x": x, "y": obj.y + obj.h - h, "w": w, "h": h}))
    return scaled


def parse_reply(
    text: str, k: int, composition: CompositionPick, config: LayoutConfig, planner: str
) -> LayoutPlan:
    """Turn a raw reply into a checked plan.

    Raises:
        ReplyRejected: with a message meant for the model: what is wrong and how to fix it.
    """
    return _parse_leniently(text, lambda value: _layout_plan(value, text, k, composition, config, planner))


def _layout_plan(
    value: Any, text: str, k: int, composition: CompositionPick, config: LayoutConfig, planner: str
) -> LayoutPlan:
    """The plan a parsed reply describes, once it passes the schema and every geometric check."""
    layout = _validate(LLMLayout, value)
    wanted = list(composition.concepts)
    given = [o.concept for o in layout.objects]
    if unknown := sorted(set(given) - set(wanted)):
        raise ReplyRejected(
            f"unknown concept(s) {', '.join(map(_show, unknown))}; use only: {', '.join(wanted)}"
        )
    if twice := sorted({c for c in given if given.count(c) > 1}):
        raise ReplyRejected(f"concept(s) {', '.join(twice)} appear more than once; give each exactly one box")
    if missing := [c for c in wanted if c not in given]:
        raise ReplyRejected(f"missing concept(s) {', '.join(missing)}; give every listed concept one box")
    if not layout.background:
        raise ReplyRejected("background is empty; describe the surface and the setting")
    for obj in layout.objects:  # before scaling, which divides by the height
        if obj.w <= 0 or obj.h <= 0:
            raise ReplyRejected(f"box of {obj.concept} needs a positive width and height")
    by_concept = {o.concept: o for o in scale_by_relative_size(layout.objects)}
    boxes = [Box(concept_id=c, **by_concept[c].model_dump(include={"x", "y", "w", "h"})) for c in wanted]
    plan = LayoutPlan(
        concepts=wanted,
        background=layout.background,
        boxes=boxes,
        width=config.width,
        height=config.height,
        planner=planner,
        seed=k,
        raw_reply=text,
    )
    if problem := check_layout(plan, config):
        raise ReplyRejected(f"{problem} (after scaling by relative_size)")
    return plan.with_id()


class LLMSets(BaseModel):
    """Suggested compositions: concept ids that plausibly appear together in one photo."""

    model_config = ConfigDict(extra="forbid")
    sets: Annotated[list[Annotated[list[ConceptId], _at_most(MAX_OBJECTS)]], _at_most(MAX_BRACKETS)]


def parse_sets(text: str, known: set[str], config: LayoutConfig) -> list[tuple[str, ...]]:
    """The suggested sets, sorted ids each, duplicates removed.

    Raises:
        ReplyRejected: with a message meant for the model.
    """
    return _parse_leniently(text, lambda value: _concept_sets(value, known, config))


def _concept_sets(value: Any, known: set[str], config: LayoutConfig) -> list[tuple[str, ...]]:
    """The sets a parsed reply suggests, once each passes `check_set`."""
    suggestion = _validate(LLMSets, value)
    sets: list[tuple[str, ...]] = []
    for number, ids in enumerate(suggestion.sets, start=1):
        if problem := check_set(ids, known, config):
            raise ReplyRejected(f"set {number} {_show(ids, 200)}: {_show(problem, 200)}")
        if tuple(sorted(ids)) not in sets:
            sets.append(tuple(sorted(ids)))
    if not sets:
        raise ReplyRejected("no sets given")
    return sets

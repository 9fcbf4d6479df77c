"""LLM-guided layouts: an OpenAI-compatible chat model proposes the background and the boxes.

Gen4Gen asked gpt-3.5 for boxes in an LMD-style prompt, asked again for relative object sizes,
parsed the text with `eval` and silently dropped what failed. Here one request asks for the
background, one box per concept and each object's relative size (largest 1.0; the paper's scale
correction, applied by shrinking boxes that are too big for their size); the reply is parsed as
JSON (structured output where the server supports it, otherwise fences stripped and the first
JSON object taken, repaired with `json_repair` when it is not strict JSON: trailing commas, single
quotes, a cut-off end), validated by a pydantic schema with bounded one-line text fields and by
`check_layout`, and re-asked with the problem fed back. Every reply ends as an accepted plan or a
`ReplyRejected` whose message names the problem; no reply can raise anything else, which the
property tests check. Every reply is cached under plans/llm_cache/ by a hash of (model, messages,
seed), so a re-run sends no request, and a cached reply is parsed again like a fresh one; every
rejected reply lands in plans/llm_failures.jsonl with its raw text, and a plan the model never gets
right comes from the fallback the caller hands in (the rule-based planner: "rules-fallback").
With `layout.llm_compositions` the model also proposes which concepts plausibly go together.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import json_repair
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from curation.core.config import LayoutConfig
from curation.core.errors import CurateError
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Box, Concept, LayoutPlan, content_id
from curation.core.workspace import Workspace, atomic_write_json, atomic_write_text
from generators.compositions import CompositionPick, check_set, pick_composition
from generators.geometry import check_layout

if TYPE_CHECKING:
    from openai import OpenAI

FALLBACK = "rules-fallback"
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
ConceptId = Annotated[str, _one_line(MAX_ID_CHARS)]


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


SYSTEM_PROMPT = """You are a layout planner for photo compositions. Given personal objects, \
propose a realistic background scene and one bounding box per object on a {width}x{height} pixel \
canvas (origin top-left, integer pixels, box = x, y, w, h). Objects stand on a common surface \
(a floor, table or ground near the bottom of the image) at plausible relative sizes. Rules: every \
listed object exactly once, using its id as "concept"; nothing else; each box fully inside the \
canvas; each box at least {min_px} square pixels; two boxes overlap at most IoU {max_overlap}. \
"relative_size" is the object's real-world size relative to the largest object (largest 1.0, e.g. \
a mug next to a person about 0.2). "background" is one phrase naming the surface and the setting, \
e.g. "on a wooden table in a sunlit kitchen". Reply with JSON only, exactly this shape: \
{{"background": str, "objects": [{{"concept": str, "x": int, "y": int, "w": int, "h": int, \
"relative_size": float}}]}}."""


def build_messages(
    composition: CompositionPick,
    concepts: dict[str, Concept],
    config: LayoutConfig,
    avoid: Sequence[str] = (),
) -> list[dict]:
    """The first request for one plan; the scene number makes each background of a set differ.

    Args:
        avoid: Why reviewers rejected earlier images of these objects (`curate topup`), most common first.
    """
    system = SYSTEM_PROMPT.format(
        width=config.width,
        height=config.height,
        min_px=int(config.min_area * config.width * config.height + 0.999),
        max_overlap=config.max_overlap,
    )
    lines = [f'- "{c}": a {concepts[c].class_noun}' for c in composition.concepts]
    per = max(1, config.backgrounds_per_composition)
    user = "Objects:\n" + "\n".join(lines)
    if per > 1:
        scene = composition.variant + 1
        user += f"\nThis is scene {scene} of {per} for these objects; each scene is a new setting."
    if avoid:
        user += f"\nReviewers rejected earlier images of these objects for: {', '.join(avoid)}. Avoid that."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> str:
    """Unpaired surrogates (what a lone JSON "\\ud800" escape decodes to) become U+FFFD, one each.

    Such text cannot be encoded as UTF-8, so neither the retry request nor plans.jsonl could carry it.
    """
    return _SURROGATE.sub("\ufffd", text)


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


SETS_PROMPT = """You group personal objects into photo compositions. From the objects below, \
propose {count} different groups of {lo} to {hi} objects that would plausibly appear together in \
one realistic photo, with about as many groups of each size. Use the ids exactly as given. \
Reply with JSON only, exactly this shape: {{"sets": [[str, ...], ...]}}.

Objects:
{objects}"""


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


class _Asker:
    """Sends chat requests through the cache; remembers whether the server takes structured output."""

    def __init__(self, ws: Workspace, config: LayoutConfig):
        from openai import OpenAI

        if not os.environ.get("OPENAI_API_KEY"):
            raise CurateError(
                "layout.planner = 'llm' needs OPENAI_API_KEY (any value for a local server) "
                "and OPENAI_BASE_URL for a non-OpenAI endpoint"
            )
        self.client: OpenAI = OpenAI(max_retries=config.llm_http_retries, timeout=config.llm_timeout)
        self.config = config
        self.cache_dir = ws.root / "plans" / "llm_cache"
        self.structured = True
        self._lock = threading.Lock()

    def ask(self, messages: list[dict], seed: int, schema: type[BaseModel]) -> str:
        """The reply text, from the cache when this exact (model, messages, seed) was asked before.

        Raises:
            CurateError: the endpoint is unreachable or refuses the request (configuration errors).
            openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError: still
                failing after the client's retries with backoff; the caller records them.
        """
        import openai

        model = self.config.llm_model
        key = hashlib.sha256(
            json.dumps({"model": model, "messages": messages, "seed": seed}, sort_keys=True).encode()
        ).hexdigest()
        path = self.cache_dir / f"{key}.json"
        if (cached := _cached_reply(path)) is not None:
            return valid_unicode(cached)
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "seed": seed,
            "temperature": self.config.llm_temperature,
        }
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": schema.__name__, "strict": True, "schema": schema.model_json_schema()},
        }
        try:
            try:
                response = self.client.chat.completions.create(
                    **kwargs, **({"response_format": response_format} if self.structured else {})
                )
            except openai.BadRequestError:
                if not self.structured:
                    raise
                with self._lock:  # the server has no structured output: plain JSON + repair from now on
                    self.structured = False
                response = self.client.chat.completions.create(**kwargs)
        except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError):
            raise  # transient and already retried with backoff: the caller records it and moves on
        except openai.APIConnectionError as exc:
            raise CurateError(f"cannot reach the LLM endpoint {self.client.base_url}: {exc}") from exc
        except openai.APIStatusError as exc:
            raise CurateError(
                f"the LLM endpoint refused the request: HTTP {exc.status_code}: {exc.message}"
            ) from exc
        reply = response.choices[0].message.content or ""
        atomic_write_json(path, {"model": model, "messages": messages, "seed": seed, "reply": reply})
        return valid_unicode(reply)


def _cached_reply(path: Path) -> str | None:
    """The reply cached at path, or None when there is none or the file is unreadable (asked again).

    Only the file's own JSON is read here; the reply it holds is parsed like a fresh one.
    """
    try:
        reply = json.loads(path.read_text(encoding="utf-8"))["reply"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return reply if isinstance(reply, str) else None


def _ask_until_valid(
    asker: _Asker,
    messages: list[dict],
    seed: int,
    schema: type[BaseModel],
    parse: Callable[[str], T],
    record: dict,
) -> tuple[T | None, str | None, list[dict]]:
    """Ask, parse, and re-ask with the error fed back, up to llm_max_retries times.

    Returns:
        (the parsed value or None, the last raw reply (clipped to MAX_REPLY_CHARS when rejected),
        one failure record per rejected attempt).
    """
    import openai

    failures: list[dict] = []
    raw: str | None = None
    for attempt in range(asker.config.llm_max_retries + 1):
        where = {**record, "attempt": attempt, "model": asker.config.llm_model}
        try:
            raw = asker.ask(messages, seed, schema)
        except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError) as exc:
            failures.append(
                {**where, "error": f"request failed: {type(exc).__name__}: {exc}", "raw_reply": None}
            )
            continue
        try:
            return parse(raw), raw, failures
        except ReplyRejected as exc:
            raw = raw[:MAX_REPLY_CHARS]
            failures.append({**where, "error": str(exc), "raw_reply": raw})
            feedback = f"That reply was rejected: {exc}. Reply again with corrected JSON only."
            messages = [
                *messages,
                {"role": "assistant", "content": raw},
                {"role": "user", "content": feedback},
            ]
    for failure in failures:
        failure["fell_back"] = True
    return None, raw, failures


def suggest_sets(
    asker: _Asker, concepts: dict[str, Concept]
) -> tuple[list[tuple[str, ...]] | None, list[dict]]:
    """Concept sets the LLM finds plausible together (None: fall back to any subset), and failures."""
    config = asker.config
    objects = "\n".join(f'- "{c.concept_id}": a {c.class_noun}' for c in concepts.values())
    prompt = SETS_PROMPT.format(
        count=config.llm_compositions,
        lo=config.min_concepts,
        hi=min(config.max_concepts, len(concepts)),
        objects=objects,
    )
    sets, _, failures = _ask_until_valid(
        asker,
        [{"role": "user", "content": prompt}],
        config.seed,
        LLMSets,
        lambda text: parse_sets(text, set(concepts), config),
        {"plan": None, "stage": "compositions"},
    )
    return sets, failures


def _plan_k(
    asker: _Asker,
    k: int,
    composition: CompositionPick,
    concepts: dict[str, Concept],
    fallback: Callable[[int, CompositionPick], LayoutPlan],
    avoid: Sequence[str] = (),
) -> tuple[LayoutPlan, list[dict]]:
    """Plan k and the failure records of its rejected attempts; the fallback plan when all fail."""
    config = asker.config
    planner = f"llm:{config.llm_model}"
    seed = int(content_id({"seed": config.seed, "k": k, "key": composition.key}, length=8), 16) % 2**31
    plan, raw, failures = _ask_until_valid(
        asker,
        build_messages(composition, concepts, config, avoid),
        seed,
        LLMLayout,
        lambda text: parse_reply(text, k, composition, config, planner),
        {"plan": k, "stage": "layout", "concepts": list(composition.concepts)},
    )
    if plan is None:
        plan = fallback(k, composition).model_copy(update={"raw_reply": raw})
    return plan, failures


def plan_with_llm(
    ws: Workspace,
    n: int,
    concepts: dict[str, Concept],
    allowed: list[tuple[str, ...]] | None,
    fallback: Callable[[int, CompositionPick], LayoutPlan],
    progress: ProgressFn = no_progress,
) -> list[LayoutPlan]:
    """Plans 0..n-1 in order, asked of the LLM in parallel; the fallback plan where it fails.

    Rejected replies are written to plans/llm_failures.jsonl (replaced each run, like plans.jsonl,
    so re-running adds no duplicates). With `llm_compositions` > 0 and no user file, the concept
    sets come from the LLM too and are written to plans/llm_compositions.json (copy it into a
    compositions_file to edit them).

    Args:
        ws: The workspace (cache and failure log live under plans/).
        n: How many plans.
        concepts: Every concept by id (class nouns for the prompt).
        allowed: Concept sets from the user's compositions_file, or None.
        fallback: Plan k for a composition when the model never gets it right; the caller passes
            the rule-based planner labelled FALLBACK, so this module needs no planner of its own.
        progress: Called as progress("plan (llm)", done, n).
    """
    config = ws.config.layout
    asker = _Asker(ws, config)
    failures: list[dict] = []
    if allowed is None and config.llm_compositions > 0:
        allowed, failures = suggest_sets(asker, concepts)
        atomic_write_json(ws.root / "plans" / "llm_compositions.json", allowed)
    picks = [(k, pick_composition(k, list(concepts.values()), config, allowed)) for k in range(n)]
    plans, more = _plan_all(asker, picks, concepts, fallback, {}, progress)
    atomic_write_text(
        ws.root / "plans" / "llm_failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures + more)
    )
    return plans


def _plan_all(
    asker: _Asker,
    picks: list[tuple[int, CompositionPick]],
    concepts: dict[str, Concept],
    fallback: Callable[[int, CompositionPick], LayoutPlan],
    avoid: dict[tuple[str, ...], list[str]],
    progress: ProgressFn,
) -> tuple[list[LayoutPlan], list[dict]]:
    """The plans of `picks` in order, asked in parallel, and the failure records of every plan."""
    done = 0
    lock = threading.Lock()

    def one(pick: tuple[int, CompositionPick]) -> tuple[LayoutPlan, list[dict]]:
        nonlocal done
        k, composition = pick
        reasons = avoid.get(tuple(sorted(composition.concepts)), ())
        result = _plan_k(asker, k, composition, concepts, fallback, reasons)
        with lock:
            done += 1
            progress("plan (llm)", done, len(picks))
        return result

    with ThreadPoolExecutor(max_workers=max(1, asker.config.llm_concurrency)) as pool:
        results = list(pool.map(one, picks))
    return [plan for plan, _ in results], [f for _, fs in results for f in fs]


def plan_picks(
    ws: Workspace,
    picks: list[tuple[int, CompositionPick]],
    concepts: dict[str, Concept],
    fallback: Callable[[int, CompositionPick], LayoutPlan],
    avoid: dict[tuple[str, ...], list[str]],
    progress: ProgressFn = no_progress,
) -> list[LayoutPlan]:
    """Plans for compositions chosen by the caller (`curate topup`), with review reasons in the prompt.

    Rejected replies are appended to plans/llm_failures.jsonl, as the plans are appended to plans.jsonl.

    Args:
        picks: (plan number, composition) per plan; the number seeds the request like plan k's.
        avoid: Review reasons per composition (sorted concept ids), told to the model to avoid.
    """
    plans, failures = _plan_all(_Asker(ws, ws.config.layout), picks, concepts, fallback, avoid, progress)
    path = ws.root / "plans" / "llm_failures.jsonl"
    previous = path.read_text() if path.exists() else ""
    atomic_write_text(path, previous + "".join(json.dumps(f) + "\n" for f in failures))
    return plans

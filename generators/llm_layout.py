"""LLM-guided layouts: an OpenAI-compatible chat model proposes the background and the boxes.

Gen4Gen asked gpt-3.5 for boxes in an LMD-style prompt, asked again for relative object sizes,
parsed the text with `eval` and silently dropped what failed. Here one request asks for the
background, one box per concept and each object's relative size (largest 1.0; the paper's scale
correction, applied by shrinking boxes that are too big for their size); the reply is parsed as
JSON (structured output where the server supports it, otherwise fences stripped and the first
JSON object taken), validated by a pydantic schema and by `check_layout`, and re-asked with the
error fed back. Every reply is cached under plans/llm_cache/ by a hash of (model, messages, seed),
so a re-run sends no request; every rejected reply lands in plans/llm_failures.jsonl with its raw
text, and a plan the model never gets right comes from the rule-based planner ("rules-fallback").
With `layout.llm_compositions` the model also proposes which concepts plausibly go together.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from curation.config import LayoutConfig
from curation.errors import CurateError
from curation.progress import ProgressFn, no_progress
from curation.records import Box, Concept, LayoutPlan, content_id
from curation.workspace import Workspace, atomic_write_json, atomic_write_text
from generators.compositions import CompositionPick, check_set, pick_composition
from generators.layout import check_layout, plan_one

if TYPE_CHECKING:
    from openai import OpenAI

FALLBACK = "rules-fallback"
T = TypeVar("T")


class LLMObject(BaseModel):
    """One concept's box as the model proposes it (pixels, top-left origin)."""

    model_config = ConfigDict(extra="forbid")
    concept: str
    x: int
    y: int
    w: int
    h: int
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
    background: str
    objects: list[LLMObject]


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
    composition: CompositionPick, concepts: dict[str, Concept], config: LayoutConfig
) -> list[dict]:
    """The first request for one plan; the scene number makes each background of a set differ."""
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
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def extract_json(text: str) -> Any:
    """The first JSON object in a reply, tolerating prose and code fences; never `eval`.

    Raises:
        ValueError: no JSON object can be decoded.
    """
    decoder = json.JSONDecoder()
    cleaned = text.replace("```json", "```").replace("```JSON", "```").replace("```", "\n")
    start = cleaned.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(cleaned, start)
            return value
        except json.JSONDecodeError:
            start = cleaned.find("{", start + 1)
    raise ValueError("reply holds no valid JSON object")


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
        ValueError: with a message meant for the model: what is wrong and how to fix it.
    """
    try:
        layout = LLMLayout.model_validate(extract_json(text))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"reply does not match the schema: {where}: {first['msg']}") from exc
    wanted = list(composition.concepts)
    given = [o.concept for o in layout.objects]
    if unknown := sorted(set(given) - set(wanted)):
        raise ValueError(f"unknown concept(s) {', '.join(unknown)}; use only: {', '.join(wanted)}")
    if twice := sorted({c for c in given if given.count(c) > 1}):
        raise ValueError(f"concept(s) {', '.join(twice)} appear more than once; give each exactly one box")
    if missing := [c for c in wanted if c not in given]:
        raise ValueError(f"missing concept(s) {', '.join(missing)}; give every listed concept one box")
    if not layout.background.strip():
        raise ValueError("background is empty; describe the surface and the setting")
    by_concept = {o.concept: o for o in scale_by_relative_size(layout.objects)}
    boxes = [Box(concept_id=c, **by_concept[c].model_dump(include={"x", "y", "w", "h"})) for c in wanted]
    plan = LayoutPlan(
        concepts=wanted,
        background=layout.background.strip(),
        boxes=boxes,
        width=config.width,
        height=config.height,
        planner=planner,
        seed=k,
        raw_reply=text,
    )
    if problem := check_layout(plan, config):
        raise ValueError(f"{problem} (after scaling by relative_size)")
    return plan.with_id()


class LLMSets(BaseModel):
    """Suggested compositions: concept ids that plausibly appear together in one photo."""

    model_config = ConfigDict(extra="forbid")
    sets: list[list[str]]


SETS_PROMPT = """You group personal objects into photo compositions. From the objects below, \
propose {count} different groups of {lo} to {hi} objects that would plausibly appear together in \
one realistic photo, with about as many groups of each size. Use the ids exactly as given. \
Reply with JSON only, exactly this shape: {{"sets": [[str, ...], ...]}}.

Objects:
{objects}"""


def parse_sets(text: str, known: set[str], config: LayoutConfig) -> list[tuple[str, ...]]:
    """The suggested sets, sorted ids each, duplicates removed.

    Raises:
        ValueError: with a message meant for the model.
    """
    try:
        suggestion = LLMSets.model_validate(extract_json(text))
    except ValidationError as exc:
        raise ValueError(f"reply does not match the schema: {exc.errors()[0]['msg']}") from exc
    sets: list[tuple[str, ...]] = []
    for number, ids in enumerate(suggestion.sets, start=1):
        if problem := check_set(ids, known, config):
            raise ValueError(f"set {number} {ids}: {problem}")
        if tuple(sorted(ids)) not in sets:
            sets.append(tuple(sorted(ids)))
    if not sets:
        raise ValueError("no sets given")
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
        if path.exists():
            return json.loads(path.read_text())["reply"]
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
        return reply


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
        (the parsed value or None, the last raw reply, one failure record per rejected attempt).
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
        except ValueError as exc:
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
    aspects: dict[str, float],
) -> tuple[LayoutPlan, list[dict]]:
    """Plan k and the failure records of its rejected attempts; the rules plan when all fail."""
    config = asker.config
    planner = f"llm:{config.llm_model}"
    seed = int(content_id({"seed": config.seed, "k": k, "key": composition.key}, length=8), 16) % 2**31
    plan, raw, failures = _ask_until_valid(
        asker,
        build_messages(composition, concepts, config),
        seed,
        LLMLayout,
        lambda text: parse_reply(text, k, composition, config, planner),
        {"plan": k, "stage": "layout", "concepts": list(composition.concepts)},
    )
    if plan is None:
        plan = plan_one(k, composition, concepts, aspects, config, planner=FALLBACK)
        plan = plan.model_copy(update={"raw_reply": raw})
    return plan, failures


def plan_with_llm(
    ws: Workspace,
    n: int,
    concepts: dict[str, Concept],
    aspects: dict[str, float],
    allowed: list[tuple[str, ...]] | None,
    progress: ProgressFn = no_progress,
) -> list[LayoutPlan]:
    """Plans 0..n-1 in order, asked of the LLM in parallel; the rules plan where it fails.

    Rejected replies are written to plans/llm_failures.jsonl (replaced each run, like plans.jsonl,
    so re-running adds no duplicates); plans the model never got right say "rules-fallback".
    With `llm_compositions` > 0 and no user file, the concept sets come from the LLM too and are
    written to plans/llm_compositions.json (copy it into a compositions_file to edit them).

    Args:
        ws: The workspace (cache and failure log live under plans/).
        n: How many plans.
        concepts: Every concept by id (class nouns for the prompt, sizes for the fallback).
        aspects: Width/height per concept for the fallback planner.
        allowed: Concept sets from the user's compositions_file, or None.
        progress: Called as progress("plan (llm)", done, n).
    """
    config = ws.config.layout
    asker = _Asker(ws, config)
    failures: list[dict] = []
    if allowed is None and config.llm_compositions > 0:
        allowed, failures = suggest_sets(asker, concepts)
        atomic_write_json(ws.root / "plans" / "llm_compositions.json", allowed)
    compositions = [pick_composition(k, list(concepts.values()), config, allowed) for k in range(n)]
    done = 0
    lock = threading.Lock()

    def one(k: int) -> tuple[LayoutPlan, list[dict]]:
        nonlocal done
        result = _plan_k(asker, k, compositions[k], concepts, aspects)
        with lock:
            done += 1
            progress("plan (llm)", done, n)
        return result

    with ThreadPoolExecutor(max_workers=max(1, config.llm_concurrency)) as pool:
        results = list(pool.map(one, range(n)))
    failures += [f for _, fs in results for f in fs]
    atomic_write_text(
        ws.root / "plans" / "llm_failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures)
    )
    return [plan for plan, _ in results]

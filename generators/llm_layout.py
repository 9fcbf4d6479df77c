"""LLM-guided layouts: an OpenAI-compatible chat model proposes the background and the boxes.

Gen4Gen asked gpt-3.5 for boxes in an LMD-style prompt, asked again for relative object sizes,
parsed the text with `eval` and silently dropped what failed. Here one request asks for the
background, one box per concept and each object's relative size (largest 1.0; the paper's scale
correction, applied by shrinking boxes that are too big for their size); the reply is checked by
`generators.llm_reply` and asked again with the problem fed back by `generators.llm_client`,
which also caches every reply. Every reply ends as an accepted plan or a logged rejection: every
rejected reply lands in plans/llm_failures.jsonl with its raw text, and a plan the model never gets
right comes from the fallback the caller hands in (the rule-based planner: "rules-fallback").
With `layout.llm_compositions` the model also proposes which concepts plausibly go together.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from curation.core.config import LayoutConfig
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Concept, LayoutPlan, content_id
from curation.core.workspace import Workspace, atomic_write_json, atomic_write_text
from generators.compositions import CompositionPick, pick_composition
from generators.llm_client import LLMClient, ask_until_valid
from generators.llm_reply import LLMLayout, LLMSets, parse_reply, parse_sets

FALLBACK = "rules-fallback"

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


SETS_PROMPT = """You group personal objects into photo compositions. From the objects below, \
propose {count} different groups of {lo} to {hi} objects that would plausibly appear together in \
one realistic photo, with about as many groups of each size. Use the ids exactly as given. \
Reply with JSON only, exactly this shape: {{"sets": [[str, ...], ...]}}.

Objects:
{objects}"""


def suggest_sets(
    llm: LLMClient, concepts: dict[str, Concept]
) -> tuple[list[tuple[str, ...]] | None, list[dict]]:
    """Concept sets the LLM finds plausible together (None: fall back to any subset), and failures."""
    config = llm.config
    objects = "\n".join(f'- "{c.concept_id}": a {c.class_noun}' for c in concepts.values())
    prompt = SETS_PROMPT.format(
        count=config.llm_compositions,
        lo=config.min_concepts,
        hi=min(config.max_concepts, len(concepts)),
        objects=objects,
    )
    sets, _, failures = ask_until_valid(
        llm,
        [{"role": "user", "content": prompt}],
        config.seed,
        LLMSets,
        lambda text: parse_sets(text, set(concepts), config),
        {"plan": None, "stage": "compositions"},
    )
    return sets, failures


def _plan_k(
    llm: LLMClient,
    k: int,
    composition: CompositionPick,
    concepts: dict[str, Concept],
    fallback: Callable[[int, CompositionPick], LayoutPlan],
    avoid: Sequence[str] = (),
) -> tuple[LayoutPlan, list[dict]]:
    """Plan k and the failure records of its rejected attempts; the fallback plan when all fail."""
    config = llm.config
    planner = f"llm:{config.llm_model}"
    seed = int(content_id({"seed": config.seed, "k": k, "key": composition.key}, length=8), 16) % 2**31
    plan, raw, failures = ask_until_valid(
        llm,
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
    llm = LLMClient(ws, config)
    failures: list[dict] = []
    if allowed is None and config.llm_compositions > 0:
        allowed, failures = suggest_sets(llm, concepts)
        atomic_write_json(ws.root / "plans" / "llm_compositions.json", allowed)
    picks = [(k, pick_composition(k, list(concepts.values()), config, allowed)) for k in range(n)]
    plans, more = _plan_all(llm, picks, concepts, fallback, {}, progress)
    atomic_write_text(
        ws.root / "plans" / "llm_failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures + more)
    )
    return plans


def _plan_all(
    llm: LLMClient,
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
        result = _plan_k(llm, k, composition, concepts, fallback, reasons)
        with lock:
            done += 1
            progress("plan (llm)", done, len(picks))
        return result

    with ThreadPoolExecutor(max_workers=max(1, llm.config.llm_concurrency)) as pool:
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
    plans, failures = _plan_all(LLMClient(ws, ws.config.layout), picks, concepts, fallback, avoid, progress)
    path = ws.root / "plans" / "llm_failures.jsonl"
    previous = path.read_text() if path.exists() else ""
    atomic_write_text(path, previous + "".join(json.dumps(f) + "\n" for f in failures))
    return plans

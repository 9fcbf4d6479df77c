"""Composition sampling: which concept sets appear together, and on which backgrounds.

One place decides this for every planner, so the rule-based and the LLM planner draw the same
compositions for the same plan number. Counts of 2..5 concepts take turns (balanced, like the
paper's MyCanvas), each composition is shown on `backgrounds_per_composition` distinct scenes
(consecutive plans), and a user file can restrict which sets make sense together (a mug and a
person yes, a rocket on a kitchen table maybe not). Composition c is drawn from its own random
stream seeded by (seed, c, the concepts), so adding plans never changes earlier ones.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from curation.core.config import LayoutConfig
from curation.core.errors import CurateError
from curation.core.records import Concept, content_id
from curation.core.workspace import Workspace

BACKGROUNDS: tuple[str, ...] = (
    "on a wooden table in a sunlit kitchen",
    "on a white marble counter in a bright modern kitchen",
    "on a grey concrete floor in an industrial loft",
    "on a green lawn in a sunny backyard garden",
    "on a sandy beach under a clear blue sky",
    "on a red brick patio beside a garden wall",
    "on a wooden floor in a cozy living room",
    "on a beige carpet in a quiet bedroom",
    "on a stone path in an autumn park",
    "on a white desk in a minimalist office",
    "on a snowy field on a bright winter day",
    "on a dark wooden shelf in a dim library",
    "on a tiled floor in a blue bathroom",
    "on a picnic blanket on green grass in a park",
    "on a wooden deck by a calm lake at sunset",
    "on a gravel road in a dry desert landscape",
)
"""Realistic scenes; each names a surface (the floor band objects rest on) and a setting."""


@dataclass(frozen=True)
class CompositionPick:
    """What plan k shows: its concept set, a rule-based scene, and which of the set's scenes it is."""

    concepts: tuple[str, ...]
    background: str
    variant: int
    key: str
    """Stable hash of (seed, concept pool); planners mix it into their own random streams."""


def _parse_sets(text: str, name: str) -> list[tuple[int, list[str]]]:
    """(line number, concept ids) per set; JSON (list of lists) or one set per line, '#' comments."""
    if name.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CurateError(f"{name}: not valid JSON: {exc}") from exc
        except RecursionError:
            raise CurateError(f"{name}: nested too deeply; expected a JSON list of lists of concept ids") from None
        if not isinstance(data, list) or not all(
            isinstance(s, list) and all(isinstance(c, str) for c in s) for s in data
        ):
            raise CurateError(f"{name}: expected a JSON list of lists of concept ids")
        return [(i + 1, s) for i, s in enumerate(data)]
    sets = []
    for number, line in enumerate(text.splitlines(), start=1):
        ids = [c for c in re.split(r"[\s,]+", line.split("#", 1)[0]) if c]
        if ids:
            sets.append((number, ids))
    return sets


def check_set(ids: list[str], known: set[str], config: LayoutConfig) -> str | None:
    """Why a concept set cannot be a composition, or None; shared by user files and LLM suggestions."""
    if unknown := sorted(set(ids) - known):
        return f"unknown concept(s) {', '.join(unknown)}"
    if len(set(ids)) != len(ids):
        return "a concept is listed twice"
    if not config.min_concepts <= len(ids) <= config.max_concepts:
        return f"{len(ids)} concepts, layout allows {config.min_concepts}..{config.max_concepts}"
    return None


def load_allowed_sets(ws: Workspace, config: LayoutConfig, known: set[str]) -> list[tuple[str, ...]] | None:
    """The user's allowed concept sets (sorted ids, file order), or None when any set is allowed.

    Raises:
        CurateError: the file is missing, empty, or a set names an unknown concept, repeats one,
            or has a size outside min_concepts..max_concepts.
    """
    if not config.compositions_file:
        return None
    path = ws.resolve(config.compositions_file)
    if not path.is_file():
        raise CurateError(f"layout.compositions_file {config.compositions_file!r} does not exist")
    allowed: list[tuple[str, ...]] = []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise CurateError(f"layout.compositions_file {config.compositions_file!r} is not UTF-8 text") from None
    except OSError as exc:
        raise CurateError(f"cannot read layout.compositions_file {config.compositions_file!r}: {exc.strerror}") from None
    for number, ids in _parse_sets(text, path.name):
        if problem := check_set(ids, known, config):
            raise CurateError(f"{path.name} set {number}: {problem}")
        if tuple(sorted(ids)) not in allowed:
            allowed.append(tuple(sorted(ids)))
    if not allowed:
        raise CurateError(f"{path.name}: no concept sets listed")
    return allowed


def pool_key(concepts: list[Concept], config: LayoutConfig) -> str:
    """Hash of (seed, concept pool): adding a concept reshuffles compositions, renaming nothing else."""
    return content_id({"seed": config.seed, "concepts": [(c.concept_id, c.class_noun) for c in concepts]})


def pick_composition(
    k: int, concepts: list[Concept], config: LayoutConfig, allowed: list[tuple[str, ...]] | None = None
) -> CompositionPick:
    """The composition of plan k; depends only on (config, k, the concepts, the allowed sets).

    Args:
        k: Plan number; plans c*b .. c*b+b-1 share composition c (b = backgrounds_per_composition).
        concepts: Every concept of the workspace.
        config: The layout section (seed, count bounds, backgrounds per composition).
        allowed: Sets from `load_allowed_sets`, or None to draw any subset.
    """
    per = max(1, config.backgrounds_per_composition)
    c, variant = divmod(k, per)
    key = pool_key(concepts, config)
    rng = np.random.default_rng([config.seed, c, int(key, 16) % 2**32])
    if allowed is None:
        ids = sorted(x.concept_id for x in concepts)
        hi = min(config.max_concepts, len(ids))
        counts = list(range(min(config.min_concepts, hi), hi + 1))
        count = counts[c % len(counts)]  # balanced: the counts take turns
        chosen = tuple(ids[i] for i in rng.choice(len(ids), size=count, replace=False))
    else:
        counts = sorted({len(s) for s in allowed})
        count = counts[c % len(counts)]
        same = [s for s in allowed if len(s) == count]
        # walk a seed-shuffled list, so every allowed set is used before any repeats
        order = np.random.default_rng([config.seed, count]).permutation(len(same))
        chosen = tuple(str(x) for x in rng.permutation(same[order[(c // len(counts)) % len(same)]]))
    scenes = rng.permutation(len(BACKGROUNDS))
    return CompositionPick(
        concepts=chosen, background=BACKGROUNDS[scenes[variant % len(BACKGROUNDS)]], variant=variant, key=key
    )

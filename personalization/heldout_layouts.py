"""Held-out prompts as MSP inputs: a layout plan per prompt and the paste composition of its references.

The evaluator's MSP rows drive `generators.msp.MSPGenerator`, which needs what `curate generate`
gives it: a layout plan, the concepts' segments and, when scaffolding, the paste composition to start
from. The evaluator reads an export, not a workspace, so the export's concepts become records whose
refs and masks are relative to the export folder, and the generator's own functions do the rest
(the rules planner `plan_one`, `pick_references`, `procedural_background`, `compose`): an MSP image
of the evaluation is made exactly as a candidate of that plan would be. Plan k depends only on
(seed, k, its concept set, its background), so every MSP row of a run, and every rerun, sees the
same layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

from curation.core.config import LayoutConfig
from curation.core.errors import CurateError
from curation.core.records import Concept, LayoutPlan, content_id
from curation.core.workspace import Workspace
from generators.compose import Composition
from generators.compositions import CompositionPick
from personalization.data import Export
from personalization.prompts import EvalPrompt


def _card(export: Export, concept_id: str) -> dict[str, tuple[str, list[str]]]:
    """Ref file name -> (mask path relative to the export, mask flags), from the exported concept.json."""
    path = export.root / "concepts" / concept_id / "concept.json"
    card = json.loads(path.read_text()) if path.is_file() else {}
    flags = card.get("mask_flags") or [[] for _ in card.get("refs", [])]
    return {
        Path(ref).name: (mask, list(flag))
        for ref, mask, flag in zip(card.get("refs", []), card.get("masks", []), flags)
    }


def reference_masks(export: Export, concept_id: str) -> list[tuple[Path, Path | None]]:
    """Each reference photo of a concept with its mask file, or None where the export has none.

    concept.json pairs refs and masks by position; without it, masks/ holds the ref's file name.
    """
    card = _card(export, concept_id)
    folder = export.root / "concepts" / concept_id
    pairs = []
    for ref in export.concepts[concept_id].refs:
        mask = export.root / card[ref.name][0] if ref.name in card else folder / "masks" / ref.name
        pairs.append((ref, mask if mask.is_file() else None))
    return pairs


def concept_records(export: Export) -> dict[str, Concept]:
    """The export's concepts as records over their masked references, paths relative to the export."""
    root = export.root.resolve()
    records = {}
    for concept_id, concept in export.concepts.items():
        card = _card(export, concept_id)
        pairs = [(ref, mask) for ref, mask in reference_masks(export, concept_id) if mask is not None]
        if not pairs:
            raise CurateError(
                f"concept {concept_id} has no reference with a mask in {export.root / 'concepts' / concept_id}: "
                "MSP rows paste the references by their masks"
            )
        records[concept_id] = Concept(
            concept_id=concept_id,
            name=concept_id,
            class_noun=concept.class_noun,
            token=concept.token,
            refs=[ref.resolve().relative_to(root).as_posix() for ref, _ in pairs],
            masks=[mask.resolve().relative_to(root).as_posix() for _, mask in pairs],
            mask_flags=[card.get(ref.name, ("", []))[1] for ref, _ in pairs],
        )
    return records


def heldout_plans(
    export: Export, prompts: list[EvalPrompt], concepts: dict[str, Concept], size: int, seed: int
) -> list[LayoutPlan]:
    """One rules-planner layout per held-out prompt, on a size x size canvas, plan k seeded by (seed, k)."""
    from generators.layout import concept_aspect, plan_one

    ws = Workspace(export.root)
    try:
        aspects = {cid: concept_aspect(ws, concept) for cid, concept in concepts.items()}
    except (ValueError, OSError) as exc:
        raise CurateError(f"the export's masks must be 8-bit alpha images: {exc}") from exc
    config = LayoutConfig(width=size, height=size, seed=seed)
    plans = []
    for k, prompt in enumerate(prompts):
        key = content_id({"concepts": list(prompt.concepts), "background": prompt.background})
        pick = CompositionPick(concepts=prompt.concepts, background=prompt.background, variant=0, key=key)
        plans.append(plan_one(k, pick, concepts, aspects, config))
    return plans


def paste_composition(
    export: Export, plan: LayoutPlan, seed: int, concepts: dict[str, Concept]
) -> Composition:
    """The plan's references pasted on its procedural background, as `curate generate` pastes seed `seed`."""
    from generators.candidates import pick_references
    from generators.compose import compose, procedural_background

    try:
        picks = pick_references(plan, seed, concepts)
        background = procedural_background(plan.background, plan.width, plan.height, seed)
        return compose(Workspace(export.root), background, picks)
    except (ValueError, OSError) as exc:
        raise CurateError(f"cannot paste the references of {', '.join(plan.concepts)}: {exc}") from exc

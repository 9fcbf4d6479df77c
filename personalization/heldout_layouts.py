"""Held-out prompts as MSP inputs: a layout plan per prompt and the paste composition of its references.

The evaluator's MSP rows drive `generators.msp`'s `MSPGenerator`, which needs what `curate generate`
gives it: a layout plan, the concepts' segments and, when scaffolding, the paste composition to start
from. The evaluator reads an export, not a workspace, so the export's concepts become records whose
refs and masks are relative to the export folder, and the generator's own functions do the rest
(the rules planner `plan_one`, `pick_references`, `procedural_background`, `compose`): an MSP image
of the evaluation is made exactly as a candidate of that plan would be. Plan k depends only on
(seed, k, its concept set, its background), so every MSP row of a run, and every rerun, sees the
same layouts.
"""

from __future__ import annotations

from curation.core.config import LayoutConfig
from curation.core.errors import CurateError
from curation.core.records import Concept, LayoutPlan, content_id
from curation.core.workspace import Workspace
from generators.compose import Composition
from generators.compositions import CompositionPick
from personalization.data import Export
from personalization.prompts import EvalPrompt


def concept_records(export: Export) -> dict[str, Concept]:
    """The export's concepts as records over their masked references, paths relative to the export."""
    root = export.root.resolve()
    records = {}
    for concept_id, concept in export.concepts.items():
        masked = [
            (ref, mask, flags)
            for ref, mask, flags in zip(concept.refs, concept.masks, concept.mask_flags, strict=True)
            if mask is not None
        ]
        if not masked:
            raise CurateError(
                f"concept {concept_id} has no reference with a mask in {export.root / 'concepts' / concept_id}: "
                "MSP rows paste the references by their masks"
            )
        records[concept_id] = Concept(
            concept_id=concept_id,
            name=concept_id,
            class_noun=concept.class_noun,
            token=concept.token,
            refs=[ref.resolve().relative_to(root).as_posix() for ref, _, _ in masked],
            masks=[mask.resolve().relative_to(root).as_posix() for _, mask, _ in masked],
            mask_flags=[list(flags) for _, _, flags in masked],
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

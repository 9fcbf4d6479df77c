"""How the text of a candidate lists its concepts: shared by captions, repaint and MSP prompts.

Captions and prompts must name concepts in the same order and with the same joining, so that a
prompt and a caption of one plan read alike; one module owns that, below the stages using it.
"""

from __future__ import annotations

from curation.core.records import LayoutPlan


def join_phrases(phrases: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def left_to_right(plan: LayoutPlan) -> list[str]:
    """The plan's concept ids in reading order of their boxes (left edge, then top edge)."""
    return [b.concept_id for b in sorted(plan.boxes, key=lambda b: (b.x, b.y))]

"""The page a rater scores a study task on: study.xml written out per image slot and criterion.

A task shows one image per configuration, each in its numbered slot, and asks for a 1-10 score per
criterion on each; the score controls are named `<criterion>_<slot>`, which is how a pulled
annotation says which image each score was for.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from curation.core.errors import CurateError
from curation.core.labeling_config import CONFIG_DIR

STUDY_XML = CONFIG_DIR / "study.xml"
TASK_KEY = "study_task"
"""The task data field that joins a Label Studio task to its entry in mapping.json."""
SCORE_MIN, SCORE_MAX = 1, 10
DEFAULT_CRITERIA = ("alignment", "fidelity")
CRITERION_TITLES = {
    "alignment": "Alignment: does the image show what the prompt says?",
    "fidelity": "Fidelity: do the objects look like the reference photos?",
}
REPEAT = "curate-repeat"
_CRITERION = re.compile(r"[a-z][a-z0-9_]{0,31}")


def check_criteria(criteria: list[str]) -> list[str]:
    """Criteria become control names (`alignment_1`): short lowercase identifiers, no repeats."""
    if not criteria:
        raise CurateError("give at least one criterion, e.g. --criteria alignment,fidelity")
    bad = [c for c in criteria if not _CRITERION.fullmatch(c)]
    if bad:
        raise CurateError(
            f"criterion {bad[0]!r} must be lowercase letters, digits or '_' (starting with a letter)"
        )
    if len(set(criteria)) != len(criteria):
        raise CurateError(f"criteria repeat: {', '.join(criteria)}")
    return list(criteria)


def label_config(n_slots: int, criteria: list[str], template: Path = STUDY_XML) -> str:
    """study.xml with its slot block written once per image and its criterion block once per criterion."""

    def substitute(element: ET.Element, context: dict[str, str]) -> ET.Element:
        out = ET.Element(element.tag)
        for name, value in element.attrib.items():
            if name == REPEAT:
                continue
            for placeholder, text in context.items():
                value = value.replace("{" + placeholder + "}", text)
            out.set(name, value)
        out.text, out.tail = element.text, element.tail
        for child in element:
            kind = child.get(REPEAT)
            if kind == "slot":
                out.extend(substitute(child, {**context, "slot": str(s)}) for s in range(1, n_slots + 1))
            elif kind == "criterion":
                out.extend(
                    substitute(
                        child, {**context, "criterion": c, "criterion_title": CRITERION_TITLES.get(c, c)}
                    )
                    for c in criteria
                )
            else:
                out.append(substitute(child, context))
        return out

    root = ET.parse(template).getroot()
    return ET.tostring(substitute(root, {}), encoding="unicode")


def control_name(criterion: str, slot: int) -> str:
    """The `from_name` of a score in the labeling page (slots count from 1)."""
    return f"{criterion}_{slot}"


def score_result(scores: dict[str, list[int | None]]) -> list[dict[str, Any]]:
    """An annotation `result` as the labeling page submits it: criterion -> score per slot (None: left empty)."""
    return [
        {
            "from_name": control_name(criterion, slot),
            "to_name": f"image_{slot}",
            "type": "number",
            "value": {"number": value},
        }
        for criterion, values in scores.items()
        for slot, value in enumerate(values, start=1)
        if value is not None
    ]

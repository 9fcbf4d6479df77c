"""The review page's labeling config (review_ui_config/<review.label_config>) as the answers it allows.

Label Studio's API stores any annotation it is sent, so what a labeling page could have produced is
the only yardstick for trusting one: which decisions there are, whether and when a star rating is
asked for and on what scale, which reasons may be ticked, whether there is a caption box. These are
read from the XML file curate creates projects with, not written a second time in code, so a
changed config changes what a pull accepts. The file in the repository is the reference, not the
project's config on the server, which any member of a community-edition server may edit.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from curation.core.dataset import ACCEPT, REJECT
from curation.core.errors import CurateError

if TYPE_CHECKING:
    from curation.core.workspace import Workspace

CONFIG_DIR = Path(__file__).resolve().parents[2] / "review_ui_config"  # at the repository root
# control names in review_ui_config/review.xml: the `from_name`s of an annotation's answers
DECISION, QUALITY, REASONS, CAPTION_BOX, IMAGE = "decision", "quality", "reasons", "caption_fixed", "image"
REPEAT_KEY = "repeat key"  # the alias of a choice's hidden twin (see _choice_values)


@dataclass(frozen=True)
class LabelingConfig:
    """What the labeling page lets an annotator answer."""

    decisions: tuple[str, ...]
    """The decision control's choices: accept and reject, exactly one per annotation."""
    rating_max: int | None
    """Stars of the quality rating (1..rating_max), or None when the page has no rating."""
    rating_for: frozenset[str]
    """Decisions under which the rating is shown: stars left over under another decision are dropped."""
    rating_required: bool
    """Whether a decision that shows the rating cannot be submitted without one."""
    reasons: tuple[str, ...]
    """The reasons that can be ticked; the only reason texts that may reach a prompt."""
    caption_box: bool
    """Whether the page has a box for a corrected caption."""
    per_item: bool = False
    """Whether a task is a page of several candidates (its answers carry the candidate's `item_index`).

    Label Studio checks a per-item control's `required` on every candidate whatever the decision,
    so such a page cannot require stars on accepts only: `rating_required` is then False.
    """


def _choice_values(control: ET.Element) -> tuple[str, ...]:
    """What an answer holds for each choice: its alias when it has one, else its value.

    A hidden twin (alias `REPEAT_KEY`, bound to the same key just before its choice) is left out: it
    only makes a repeated key select again (Label Studio toggles a choice on its key), and never
    stays selected; an answer naming it is no choice of the page.
    """
    values = (c.get("alias") or c.get("value") or "" for c in control.iter("Choice"))
    return tuple(v for v in values if v != REPEAT_KEY)


def _stars_of(control: ET.Element, where: str) -> int | None:
    """The star scale of the quality control: a Rating's maxRating, or N for a single Choices of "1".."N".

    The page asks for stars with a key per star (twin Choices, so a repeated key keeps the value);
    a Rating (one key that adds a star and wraps to none) is still read, as older pages made them.
    """
    if control.tag == "Rating":
        return int(control.get("maxRating") or 5)
    if control.tag != "Choices":
        return None
    values = sorted(set(_choice_values(control)), key=lambda v: (len(v), v))
    if control.get("choice") == "multiple" or values != [str(n) for n in range(1, len(values) + 1)]:
        raise CurateError(
            f"labeling config {where}: <Choices name={QUALITY!r}> must offer the stars 1..N, one at a time"
        )
    return len(values) or None


def parse_labeling_config(text: str, where: str) -> LabelingConfig:
    """The answers a labeling config allows; `where` names the file in errors.

    Raises:
        CurateError: the XML does not parse, or has no single-choice decision between accept and reject.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise CurateError(f"labeling config {where} is not valid XML: {exc}") from exc
    controls: dict[str, tuple[ET.Element, frozenset[str] | None]] = {}

    def walk(element: ET.Element, shown_for: frozenset[str] | None) -> None:
        if element.get("visibleWhen") == "choice-selected" and element.get("whenTagName") == DECISION:
            shown = frozenset((element.get("whenChoiceValue") or "").split(","))
            shown_for = shown if shown_for is None else shown_for & shown
        elif element.get("visibleWhen"):  # shown on another condition: never required
            shown_for = frozenset()
        if element.get("name") is not None and element.get("toName") is not None:
            controls[element.get("name") or ""] = (element, shown_for)
        for child in element:
            walk(child, shown_for)

    walk(root, None)
    decision = controls.get(DECISION)
    decisions = _choice_values(decision[0]) if decision and decision[0].tag == "Choices" else ()
    if sorted(decisions) != sorted((ACCEPT, REJECT)) or decision[0].get("choice") == "multiple":
        raise CurateError(
            f"labeling config {where} needs a single-choice <Choices name={DECISION!r}> with exactly the "
            f"choices {ACCEPT!r} and {REJECT!r}: review counts those two"
        )
    rating = controls.get(QUALITY)
    rating_max = _stars_of(rating[0], where) if rating else None
    rating_for: frozenset[str] = frozenset()
    per_item = decision[0].get("perItem") == "true"
    if per_item and rating_max is not None:
        # Label Studio 1.23.2 keeps a visibleWhen view hidden under per-item choices: the page shows
        # the stars always and they count on accepts only, as the single page's hidden rating did
        rating_for = frozenset((ACCEPT,))
    elif rating_max is not None:
        rating_for = frozenset(decisions) if rating[1] is None else rating[1] & frozenset(decisions)
    reasons = controls.get(REASONS)
    caption = controls.get(CAPTION_BOX)
    return LabelingConfig(
        decisions=decisions,
        rating_max=rating_max,
        rating_for=rating_for,
        rating_required=rating_max is not None and rating[0].get("required") == "true" and not per_item,
        per_item=per_item,
        reasons=_choice_values(reasons[0]) if reasons and reasons[0].tag == "Choices" else (),
        caption_box=bool(caption) and caption[0].tag == "TextArea",
    )


@lru_cache(maxsize=8)
def _read(path: Path, mtime_ns: int) -> LabelingConfig:
    return parse_labeling_config(path.read_text(encoding="utf-8"), str(path))


def labeling_config(ws: Workspace) -> LabelingConfig:
    """The workspace's labeling config (`review.label_config` in review_ui_config/), parsed once per version."""
    path = CONFIG_DIR / ws.config.review.label_config
    if not path.is_file():
        raise CurateError(f"no labeling config {path} (review.label_config in curate.toml)")
    return _read(path, path.stat().st_mtime_ns)

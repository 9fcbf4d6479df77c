"""One annotation checked against the labeling config: a vote the page could have produced, or what is wrong.

Label Studio's API stores whatever it is sent (a rating of 7 or 2.5, a choice the page does not
offer, accept and reject at once, any text of any size), and any invited account can send it. An
annotation therefore counts only when the review page could have produced it: exactly one known
decision, whole stars on the config's scale where the page asks for them, reasons from the config's
list, a corrected caption that is one printable line. Anything else is reported, never counted in
part. Problems quote what was sent clipped and escaped: they are printed to terminals and kept in
FiftyOne, and the text is the sender's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curation.core.labeling_config import CAPTION_BOX, DECISION, QUALITY, REASONS, LabelingConfig
from curation.core.records import printable_line

MAX_CAPTION_CHARS = 1000
"""Longest corrected caption: far beyond what a text encoder reads (CLIP: 77 tokens), far below a flood."""
SHOWN_CHARS = 40
"""How much of a sent value a problem quotes."""


@dataclass(frozen=True)
class Vote:
    """One annotator's valid answer: what review counts."""

    decision: str
    stars: int | None
    """On a decision the page shows the rating for; a reject's leftover stars are dropped."""
    reasons: tuple[str, ...]
    caption: str | None


def shown(value: Any) -> str:
    """A sent value as a problem quotes it: clipped, and escaped to printable ASCII."""
    if isinstance(value, str):
        return ascii(value[:SHOWN_CHARS]) + ("..." if len(value) > SHOWN_CHARS else "")
    text = ascii(value)
    return text[:SHOWN_CHARS] + ("..." if len(text) > SHOWN_CHARS else "")


def annotator(annotation: Mapping[str, Any]) -> str:
    """Who made an annotation, as a snapshot names them: by user id (`review status` shows emails)."""
    who = annotation.get("completed_by")
    return shown(who.get("email") or who.get("id")) if isinstance(who, Mapping) else f"user {shown(who)}"


def writer(annotation: Mapping[str, Any]) -> str:
    """Whose vote an annotation is: the id of the account that last wrote it, as problems quote it.

    Label Studio 1.23 takes `completed_by` from the request when one is sent (tasks/api.py), so any
    account can file an annotation under another annotator's name, and an account can edit another's;
    the server itself sets `updated_by` to the account that wrote the result. The vote is the
    writer's, so one account never casts more than its own vote. An imported annotation has no
    `updated_by`: it is its `completed_by`'s.
    """
    wrote = annotation.get("updated_by")
    return _author(annotation) if wrote is None else shown(wrote)


def _author(annotation: Mapping[str, Any]) -> str:
    """The id in `completed_by` (a snapshot may expand it to the user's record), as problems quote it."""
    author = annotation.get("completed_by")
    return shown(author.get("id") if isinstance(author, Mapping) else author)


def _strings(value: Any) -> list[str] | None:
    """A list of strings as sent, or None when it is anything else."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _decision(value: Mapping[str, Any], config: LabelingConfig, problems: list[str]) -> str | None:
    choices = _strings(value.get("choices"))
    if choices is None or len(choices) != 1:
        problems.append(
            f"decision {shown(value.get('choices'))}: exactly one of {', '.join(config.decisions)}"
        )
        return None
    if choices[0] not in config.decisions:
        problems.append(f"decision {shown(choices[0])} is not one of {', '.join(config.decisions)}")
        return None
    return choices[0]


def _stars(value: Mapping[str, Any], config: LabelingConfig, problems: list[str]) -> int | None:
    stars = value.get("rating")
    if "choices" in value:  # a key per star: one of "1".."N", exactly as the page writes it
        picked = _strings(value.get("choices"))
        stars = int(picked[0]) if picked and len(picked) == 1 and picked[0].isdecimal() else picked
        if picked and str(stars) != picked[0]:  # int() also reads "05" and other scripts' digits
            stars = picked
    if type(stars) is not int or not 1 <= stars <= (config.rating_max or 0):  # bool and 2.5 are not stars
        problems.append(f"rating {shown(stars)} is not a whole number of stars from 1 to {config.rating_max}")
        return None
    return stars


def _reasons(value: Mapping[str, Any], config: LabelingConfig, problems: list[str]) -> tuple[str, ...]:
    reasons = _strings(value.get("choices"))
    if reasons is None:
        problems.append(f"reasons {shown(value.get('choices'))} are not a list of names")
        return ()
    unknown = [r for r in reasons if r not in config.reasons]
    if unknown:
        problems.append(f"reason {shown(unknown[0])} is not one of the config's reasons")
    elif len(set(reasons)) != len(reasons):
        problems.append("a reason is ticked twice")
    return tuple(reasons)


def _caption(value: Mapping[str, Any], problems: list[str]) -> str | None:
    lines = _strings(value.get("text"))
    if lines is None:
        problems.append(f"corrected caption {shown(value.get('text'))} is not a list of text")
        return None
    lines = [line for line in lines if line.strip()]
    if len(lines) > 1:
        problems.append(f"corrected caption has {len(lines)} entries: one line is expected")
        return None
    try:
        return printable_line(lines[0], MAX_CAPTION_CHARS) if lines else None
    except ValueError as exc:
        problems.append(f"corrected caption {exc}")
        return None


def check_annotation(annotation: Mapping[str, Any], config: LabelingConfig) -> Vote | list[str]:
    """The annotation as a vote, or every reason it is not one (an empty list never comes back)."""
    result = annotation.get("result")
    if not isinstance(result, list):
        return [f"result {shown(result)} is not a list of answers"]
    controls = {
        DECISION: ("choices",),
        QUALITY: ("rating", "choices"),
        REASONS: ("choices",),
        CAPTION_BOX: ("textarea",),
    }
    offered = {DECISION, *([QUALITY] if config.rating_max else []), *([REASONS] if config.reasons else [])}
    offered |= {CAPTION_BOX} if config.caption_box else set()
    problems: list[str] = []
    answers: dict[str, Mapping[str, Any]] = {}
    for item in result:
        name = item.get("from_name") if isinstance(item, Mapping) else None
        value = item.get("value") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or name not in offered or not isinstance(value, Mapping):
            problems.append(f"answer {shown(name)} is not a control of the page")
        elif item.get("type") not in controls[name]:
            problems.append(
                f"{name} answered as {shown(item.get('type'))}, not {' or '.join(controls[name])}"
            )
        elif name in answers:
            problems.append(f"{name} answered twice")
        else:
            answers[name] = value
    if DECISION not in answers:
        problems.append("no decision")
    decision = _decision(answers[DECISION], config, problems) if DECISION in answers else None
    stars = _stars(answers[QUALITY], config, problems) if QUALITY in answers else None
    if decision is not None and decision not in config.rating_for:
        stars = None  # rated, then switched to a decision that hides the rating: not a vote
    elif decision is not None and stars is None and config.rating_required and QUALITY not in answers:
        problems.append(f"{decision} without a rating: the page requires 1 to {config.rating_max} stars")
    reasons = _reasons(answers[REASONS], config, problems) if REASONS in answers else ()
    caption = _caption(answers[CAPTION_BOX], problems) if CAPTION_BOX in answers else None
    if problems or decision is None:
        return problems
    return Vote(decision, stars, reasons, caption)


@dataclass(frozen=True)
class Ballot:
    """One non-cancelled annotation as review counts it: whose, when last updated, its vote or why none."""

    who: str
    when: str
    vote: Vote | None
    problems: tuple[str, ...]  # empty exactly when `vote` is set


AGAIN = "annotated this candidate again; only their latest annotation counts"


def ballots(annotations: list[Mapping[str, Any]], config: LabelingConfig) -> list[Ballot]:
    """A candidate's annotations in update order, each checked, one vote per annotator (`writer`).

    Label Studio's API lets an account add a second annotation to a task, or file one in another's
    name; counting them would let one person outvote another, so only a writer's most recently
    updated valid annotation votes and their earlier ones come back as problems (`AGAIN`). Skipped
    (cancelled) annotations are left out. The pull's verdict and `review status`'s agreement both
    count from this.
    """
    kept = [a for a in annotations if not a.get("was_cancelled")]
    # a writer is shown as their own annotations name them (an email where the snapshot expands it)
    names = {writer(a): annotator(a) for a in kept if writer(a) == _author(a)}
    found = []
    for annotation in kept:
        checked = check_annotation(annotation, config)
        valid = isinstance(checked, Vote)
        who = names.get(writer(annotation)) or f"user {writer(annotation)}"
        found.append(Ballot(who, str(annotation.get("updated_at") or ""),
                            checked if valid else None, () if valid else tuple(checked)))  # fmt: skip
    found.sort(key=lambda b: b.when)  # stable: ties keep the export's order
    latest = {b.who: n for n, b in enumerate(found) if b.vote is not None}
    return [
        b if b.vote is None or latest[b.who] == n else Ballot(b.who, b.when, None, (AGAIN,))
        for n, b in enumerate(found)
    ]


def split_page(annotation: Mapping[str, Any], slots: int) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """A page's annotation as one annotation per candidate slot, and what belongs to no slot.

    A page's answers carry the `item_index` of the candidate they were given for (a page of one
    may leave it out: slot 0). Each slot's annotation keeps the page annotation's other keys (who,
    when, skipped), so it is checked and counted exactly like a single candidate's: a slot left
    without answers has "no decision", as a single task would. An answer naming a slot the page does
    not have, or on a page of several none, is reported, never given to a neighbour.
    """
    result = annotation.get("result")
    if not isinstance(result, list):
        return {slot: dict(annotation) for slot in range(slots)}, []  # each slot reports the broken result
    by_slot: dict[int, list[Any]] = {slot: [] for slot in range(slots)}
    strays: list[str] = []
    for item in result:
        # the page gives every answer its slot; only a page of one (or one from before pages) omits it
        index = item.get("item_index", 0 if slots == 1 else None) if isinstance(item, Mapping) else 0
        if index is None:
            strays.append(f"answer {shown(item.get('from_name'))} names no candidate of a page of {slots}")
            continue
        if type(index) is not int or not 0 <= index < slots:
            strays.append(f"answer for candidate {shown(index)} of a page of {slots}")
            continue
        by_slot[index].append(item)
    return {slot: {**annotation, "result": items} for slot, items in by_slot.items()}, strays

"""The Gen4Gen prompting strategy as switchable options, so the paper's comparison can be rerun.

Gen4Gen reports three rows (poster table): Custom Diffusion on the concepts' source photos only,
Custom Diffusion on MyCanvas compositions, and "Ours" = MyCanvas + a training-prompt strategy. Our
reading of that strategy, each part a separate option:

- `repeat`: each concept phrase is written `repeat` times ("<c-cat> cat, <c-cat> cat"), which
  strengthens the binding of the token to the identity in multi-concept captions.
- `separate_background`: the identity part (the concept phrases) and the background description
  are written as two clauses, "<identity>; background: <background>", instead of one free caption,
  so the tokens do not absorb the training backgrounds.
- `source`: "compositions" trains on the export's multi-concept images with their captions;
  "sources" trains on each concept's reference photos alone with "a photo of <phrase>" (the
  paper's "Source Images" baseline).

Evaluation prompts put the same concept sets on backgrounds never seen in training, written with the
same strategy the model was trained with.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from curation.core.errors import CurateError
from personalization.data import Composition, Export, ExportConcept

DataSource = Literal["compositions", "sources"]

HELDOUT_BACKGROUNDS = (
    "on a snowy mountain trail",
    "in a sunlit library with wooden shelves",
    "on a sandy beach at sunset",
    "in a busy city street at night",
    "on a kitchen counter next to a window",
    "in a field of lavender",
)
"""Backgrounds for held-out prompts; any that a training caption already mentions is skipped."""


@dataclass(frozen=True)
class PromptStrategy:
    """How training (and matching evaluation) prompts are written; see the module docstring."""

    repeat: int = 1
    separate_background: bool = False
    source: DataSource = "compositions"

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise CurateError(f"repeat must be at least 1, got {self.repeat}")
        if self.source not in ("compositions", "sources"):
            raise CurateError(f"unknown data source {self.source!r}: use 'compositions' or 'sources'")

    def as_dict(self) -> dict:
        return asdict(self)


GEN4GEN_STRATEGY = PromptStrategy(repeat=2, separate_background=True, source="compositions")
"""The poster's "Ours + MyCanvas" row, as we read it."""


@dataclass(frozen=True)
class TrainExample:
    image: Path
    prompt: str


@dataclass(frozen=True)
class EvalPrompt:
    """A held-out prompt: what the generator sees and the token-free text CLIP compares with."""

    prompt: str
    plain_text: str
    concepts: tuple[str, ...]
    background: str


def identity_part(phrases: list[str], repeat: int) -> str:
    """Each phrase `repeat` times, in order: "<c-cat> cat, <c-cat> cat, <c-dog> dog, <c-dog> dog"."""
    return ", ".join(phrase for phrase in phrases for _ in range(repeat))


def plain_text(text: str, concepts: list[ExportConcept]) -> str:
    """Replace every personal token by its class noun ("<c-cat> cat" -> "cat"): CLIP cannot read tokens."""
    for concept in concepts:
        text = text.replace(concept.phrase, concept.class_noun).replace(concept.token, concept.class_noun)
    return re.sub(r"\s+", " ", text).strip()


def background_of(composition: Composition, concepts: list[ExportConcept]) -> str:
    """The export's background field, or the caption with the concept phrases cut out."""
    if composition.background:
        return composition.background.strip()
    text = composition.caption
    for concept in concepts:
        text = text.replace(concept.phrase, " ").replace(concept.token, " ")
    text = re.sub(r"^(?:[\s,;]|\band\b|\bwith\b|\ba\b|\ban\b)+", "", text)
    text = re.sub(r"(?:\s*,\s*|\s+and\s+)+(?=\s)", " ", text)
    return re.sub(r"\s+", " ", text).strip(" ,;.")


def compose(phrases: list[str], background: str, strategy: PromptStrategy) -> str:
    """One prompt for a concept set on a background, written the way `strategy` trains."""
    if strategy.separate_background:
        return f"{identity_part(phrases, strategy.repeat)}; background: {background}"
    return f"{identity_part(phrases, strategy.repeat)} {background}".strip()


def training_examples(export: Export, strategy: PromptStrategy) -> list[TrainExample]:
    """Images and prompts to train on, per `strategy.source`."""
    if strategy.source == "sources":
        return [
            TrainExample(ref, f"a photo of {identity_part([concept.phrase], strategy.repeat)}")
            for concept in export.concepts.values()
            for ref in concept.refs
        ]
    examples = []
    for composition in export.compositions:
        concepts = [export.concepts[c] for c in composition.concepts]
        if strategy.separate_background:
            prompt = compose([c.phrase for c in concepts], background_of(composition, concepts), strategy)
        elif strategy.repeat > 1:
            extra = identity_part([c.phrase for c in concepts], strategy.repeat - 1)
            prompt = f"{composition.caption}, {extra}"
        else:
            prompt = composition.caption
        examples.append(TrainExample(composition.image, prompt))
    return examples


def heldout_prompts(
    export: Export,
    strategy: PromptStrategy,
    backgrounds: tuple[str, ...] = HELDOUT_BACKGROUNDS,
    per_set: int = 2,
    single_subjects: bool = False,
) -> list[EvalPrompt]:
    """`per_set` new-background prompts for every concept set in the export.

    A background counts as seen (and is skipped) when any training caption contains it, so the
    prompts test generalisation rather than recall of training scenes. With `single_subjects`, each
    concept alone is a set too (after the export's sets): MSP's Table 1 has a one-subject column,
    which multi-concept exports never fill.
    """
    seen = " ".join(c.caption.lower() + " " + (c.background or "").lower() for c in export.compositions)
    fresh = [b for b in backgrounds if b.lower() not in seen]
    if not fresh:
        raise CurateError("every held-out background already appears in the training captions; pass others")
    sets = export.concept_sets()
    if single_subjects:
        sets += [(c,) for c in export.concepts if (c,) not in sets]
    prompts = []
    for index, concept_ids in enumerate(sets):
        concepts = [export.concepts[c] for c in concept_ids]
        for k in range(per_set):
            background = fresh[(index * per_set + k) % len(fresh)]
            prompt = compose([c.phrase for c in concepts], background, strategy)
            text = compose([c.phrase for c in concepts], background, PromptStrategy())
            prompts.append(EvalPrompt(prompt, plain_text(text, concepts), concept_ids, background))
    return prompts

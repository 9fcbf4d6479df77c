"""What a study reads of a `curate evaluate -o` folder: each held-out prompt with one image per configuration.

A prompt is matched across configurations by its concepts, background and token-free text: the
prompting strategy changes the text a model sees, not the held-out item. The whole folder is
checked before anything is pushed, so a task never lacks one of its images. Every configuration
shows its first image of a prompt: the evaluator seeds a prompt's k-th image alike across
configurations, so the images differ by the model alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.core.buckets import BUCKETS
from curation.core.errors import CurateError
from curation.core.records import content_id
from curation.core.workspace import read_record

NonEmpty = Field(min_length=1, max_length=1000)


class ResultRow(BaseModel):
    """What the study reads of one evaluator row; the metrics beside these fields are not its business."""

    model_config = ConfigDict(extra="ignore")
    configuration: str = NonEmpty
    concepts: list[str] = Field(min_length=1, max_length=64)
    background: str = Field(max_length=1000)
    plain_text: str = NonEmpty
    image: str = NonEmpty
    bucket: str

    @field_validator("bucket")
    @classmethod
    def _known_bucket(cls, value: str) -> str:
        """A study balances its prompts over the concept-count buckets: an unknown one has no column."""
        if value not in BUCKETS:
            raise ValueError(f"bucket {value!r} is none of {', '.join(BUCKETS)}")
        return value


class Results(BaseModel):
    """The evaluator's results.json as far as a study reads it, checked before anything is pushed."""

    model_config = ConfigDict(extra="ignore")
    rows: list[ResultRow] = Field(min_length=1)
    configurations: dict[str, str] | None = None
    """Configuration label -> the model folder it was evaluated from; its order is the columns' order."""
    weights: dict[str, Any] | None = None


@dataclass(frozen=True)
class Item:
    """One held-out prompt with the image each configuration made of it."""

    key: str
    prompt: str
    concepts: tuple[str, ...]
    bucket: str
    images: dict[str, Path]


@dataclass
class Evaluation:
    """What the study reads from an evaluator folder."""

    root: Path
    configurations: list[str]
    items: list[Item]
    weights: dict[str, str]
    dropped: list[str] = field(default_factory=list)
    """Problems of the prompts left out with skip_incomplete (empty otherwise)."""


def item_key(concepts: list[str], background: str, text: str) -> str:
    return content_id({"concepts": list(concepts), "background": background, "text": text})


def read_evaluation(folder: Path, skip_incomplete: bool = False) -> Evaluation:
    """The evaluator's prompts with one image per configuration, refusing (or dropping) incomplete ones.

    Refused, with every problem named: a configuration whose image file is missing or unreadable for
    a prompt, and a configuration evaluated on other prompts than the rest. With `skip_incomplete`
    those prompts are left out instead and listed in `dropped`.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder).resolve()
    results = folder / "results.json"
    if not results.is_file():
        raise CurateError(f"no results.json in {folder}: give a `curate evaluate -o` folder")
    payload = read_record(Results, results, str(results), "give the results.json `curate evaluate -o` wrote")
    rows = payload.rows
    configurations = list(payload.configurations or dict.fromkeys(r.configuration for r in rows))
    if len(configurations) < 2:
        raise CurateError(
            f"{results} has {len(configurations)} configuration(s): a study compares at least two"
        )
    first: dict[str, dict[str, ResultRow]] = {c: {} for c in configurations}
    for row in rows:
        if row.configuration in first:
            key = item_key(row.concepts, row.background, row.plain_text)
            first[row.configuration].setdefault(key, row)
    every = {key: row for per in first.values() for key, row in per.items()}
    messages: list[str] = []
    bad_keys: set[str] = set()
    for config in configurations:
        missing = [k for k in every if k not in first[config]]
        if missing:
            messages.append(
                f"configuration {config!r} was evaluated on other prompts: it lacks {len(missing)} of "
                f"{len(every)} (e.g. {every[missing[0]].plain_text!r})"
            )
        broken = []
        for key, row in first[config].items():
            path = (folder / row.image).resolve()
            try:
                if folder not in path.parents:  # only the evaluator's own images are copied into the study
                    raise OSError(f"{path} is outside {folder}")
                with Image.open(path) as image:
                    image.verify()
            except (OSError, UnidentifiedImageError):
                broken.append(key)
        if broken:
            example = first[config][broken[0]]
            messages.append(
                f"configuration {config!r} has no readable image for {len(broken)} prompts "
                f"(e.g. {example.image} for {example.plain_text!r})"
            )
        bad_keys.update(missing + broken)
    if messages and not skip_incomplete:
        raise CurateError(
            "; ".join(messages) + f" in {folder}: re-run `curate evaluate`, or pass --skip-incomplete to "
            "leave those prompts out"
        )
    items = [
        Item(
            key=key,
            prompt=row.plain_text,
            concepts=tuple(row.concepts),
            bucket=row.bucket,
            images={c: folder / first[c][key].image for c in configurations},
        )
        for key, row in every.items()
        if key not in bad_keys
    ]
    return Evaluation(folder, configurations, items, dict(payload.weights or {}), messages)

"""The dataset card (`README.md` of an export): counts, and the quality-rank table of the Gen4Gen poster.

The poster's "Quality Evaluation of MyCanvas (Rank: 1 to 5)" table has one row per concept count
(<= 3, 4, 5), one column per rank with "count (percent %)", and a total. Review stores the mean of
the annotators' ranks, so a mean is rounded half up to the nearest rank before counting.
Sets with more than five concepts get their own rows after the poster's three.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

RANKS = (1, 2, 3, 4, 5)
_LAYOUT = (
    "- `images/<concept ids joined by +>/<candidate id>.png`: the compositions, grouped by concept set.",
    (
        "- `metadata.jsonl`: file_name, caption, concepts, tokens, boxes ({concept_id, x, y, w, h}, pixels),"
        ' quality, candidate_id. Loads with `datasets.load_dataset("imagefolder", data_dir=<this folder>)`.'
    ),
    "- `concepts/<id>/`: concept.json, reference photos `refs/` and soft masks `masks/`.",
    (
        "- `concepts_list.json` (per concept) and `concepts_list_compositions.json` (per composition)"
        " for diffusers' Custom Diffusion script; paths are relative to this folder."
    ),
)
_WEBDATASET_LINE = "- `webdataset/*.tar`: the same images and rows as WebDataset shards (png, txt, json)."


def rank_of(quality: float) -> int:
    """Mean review quality -> the 1..5 rank it counts under (3.5 -> 4, 3.49 -> 3)."""
    return min(5, max(1, math.floor(quality + 0.5)))


def _bucket(n_concepts: int) -> str:
    return "<= 3 Concepts" if n_concepts <= 3 else f"{n_concepts} Concepts"


def rank_table(reviewed: Iterable[tuple[int, float]]) -> str:
    """A Markdown table of ranks by concept count, laid out like the Gen4Gen poster's.

    Args:
        reviewed: (number of concepts, mean quality) per image.
    """
    counts: dict[str, Counter[int]] = {_bucket(n): Counter() for n in (3, 4, 5)}
    order = {_bucket(n): max(n, 3) for n in (3, 4, 5)}
    for n_concepts, quality in reviewed:
        bucket = _bucket(n_concepts)
        counts.setdefault(bucket, Counter())[rank_of(quality)] += 1
        order.setdefault(bucket, n_concepts)
    lines = [
        "| | " + " | ".join(f"Rank: {r}" for r in RANKS) + " | Total Images |",
        "|---|" + "---:|" * (len(RANKS) + 1),
    ]
    for bucket in sorted(counts, key=order.__getitem__):
        total = sum(counts[bucket].values())
        cells = [
            f"{counts[bucket][r]} ({100 * counts[bucket][r] / total:.1f} %)" if total else "0" for r in RANKS
        ]
        lines.append(f"| {bucket} | " + " | ".join(cells) + f" | {total} |")
    return "\n".join(lines)


def _count_table(header: str, counts: dict[str, int]) -> str:
    rows = [f"| {header} | images |", "|---|---:|"]
    rows += [f"| `{key}` | {value} |" for key, value in sorted(counts.items())]
    return "\n".join(rows)


def target_table(header: str, exported: dict[str, int], targets: dict[str, int]) -> str:
    """Exported images against the `[curation]` targets, one row per key of either."""
    rows = [f"| {header} | images | target | short |", "|---|---:|---:|---:|"]
    for key in sorted(set(exported) | set(targets)):
        have, want = exported.get(key, 0), targets.get(key, 0)
        rows.append(f"| `{key}` | {have} | {want} | {max(0, want - have)} |")
    return "\n".join(rows)


def render_card(
    name: str,
    per_concept: dict[str, int],
    per_composition: dict[str, int],
    exported: list[tuple[int, float]],
    reviewed: list[tuple[int, float]],
    selection_rule: str,
    formats: list[str],
    targets: dict[str, dict[str, int]] | None = None,
) -> str:
    """The whole README.md; deterministic (no dates), so re-exports are byte-identical.

    Args:
        name: Export name, used as the title.
        per_concept: Images containing each concept.
        per_composition: Images per concept set ('+'-joined ids).
        exported: (n_concepts, quality) of every exported image.
        reviewed: (n_concepts, quality) of every reviewed candidate, exported or not.
        selection_rule: One line saying how images were chosen.
        formats: The formats written.
        targets: The `[curation]` targets by "composition", "bucket" and "concept" (each key ->
            images wanted); None when none is set. The card then shows the set's shape against them.
    """
    shape: list[str] = []
    if targets:
        by_bucket: Counter[str] = Counter()
        for key, count in per_composition.items():
            by_bucket[f"{len(key.split('+'))} concepts"] += count
        shape = [
            "## Shape against the targets (curate.toml [curation])",
            "",
            target_table("composition", per_composition, targets["composition"]),
            "",
            target_table("bucket", dict(by_bucket), targets["bucket"]),
            "",
            target_table("concept", per_concept, targets["concept"]),
            "",
        ]
    total = sum(per_composition.values())
    return "\n".join(
        [
            "---",
            "task_categories:",
            "- text-to-image",
            "tags:",
            "- multi-concept-personalization",
            "- mycanvas",
            "---",
            f"# {name}",
            "",
            (
                f"A MyCanvas-style multi-concept personalization set written by `curate export`:"
                f" {total} images, {len(per_concept)} concepts, {len(per_composition)} compositions."
            ),
            "",
            f"Selection: {selection_rule}.",
            "",
            "## Layout",
            "",
            *_LAYOUT,
            *([_WEBDATASET_LINE] if "webdataset" in formats else []),
            "- `manifest.json`: counts, config hash, code version and every candidate id.",
            "",
            "## Images per concept",
            "",
            _count_table("concept", per_concept),
            "",
            "## Images per composition",
            "",
            _count_table("composition", per_composition),
            "",
            *shape,
            "## Quality of the exported images (rank 1 to 5)",
            "",
            rank_table(exported),
            "",
            "## Quality of every reviewed candidate (rank 1 to 5)",
            "",
            rank_table(reviewed),
            "",
        ]
    )

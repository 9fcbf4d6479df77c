"""`curate report`: score histograms by concept count and a short Markdown summary of the index.

Answers at a glance what the App answers sample by sample: do scores degrade as compositions grow
from 2 to 5 concepts, and how many candidates each check flags. Everything is read from the
FiftyOne dataset in a few bulk `values()` calls; figures are drawn with matplotlib's Agg backend
(no display needed) and every file is replaced atomically under `<workspace>/reports/`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from curation.core import dataset as ds
from curation.core.progress import ProgressFn, no_progress
from curation.core.workspace import atomic_write_bytes, atomic_write_text
from curation.scores import presence
from curation.scores.artifacts import ARTIFACT_SCORES

if TYPE_CHECKING:
    from curation.core.workspace import Workspace

REPORTS_DIR = "reports"
SUMMARY = "summary.md"
_BINS = 20
_RANGES = {ds.CLIP_T: (0.0, 2.5), presence.CP_CLIP: (-1.0, 1.0)} | {
    s.name: (s.low, s.high) for s in ARTIFACT_SCORES.values()
}
"""Every score drawn, with its declared range so histograms of different runs line up."""


@dataclass
class ReportResult:
    """What `write_report` wrote.

    Attributes:
        summary: path of the Markdown summary.
        figures: paths of the histogram PNGs, one per score.
        candidates: samples summarised.
    """

    summary: str
    figures: list[str] = field(default_factory=list)
    candidates: int = 0


def write_report(ws: Workspace, progress: ProgressFn = no_progress) -> ReportResult:
    """Write `<workspace>/reports/hist_<score>.png` and `summary.md` from the indexed dataset.

    Raises:
        CurateError: when `curate index` has not run yet or indexed nothing.
    """
    dataset = ds.open_dataset(ws, require_samples=True)
    scores = [name for name in _RANGES if dataset.has_field(name)]
    wanted = [ds.N_CONCEPTS, presence.MISSING_CONCEPTS, ds.NEAR_DUP_OF, *scores]
    existing = [f for f in wanted if dataset.has_field(f)]
    present = dict(zip(existing, dataset.values(existing)))
    columns = [present.get(f, [None] * len(dataset)) for f in wanted]
    counts = np.asarray(columns[0], dtype=int)
    values = {name: _floats(column) for name, column in zip(scores, columns[3:])}
    out = ws.root / REPORTS_DIR
    result = ReportResult(summary=str(out / SUMMARY), candidates=len(counts))
    for done, name in enumerate(scores, start=1):
        path = out / f"hist_{name}.png"
        atomic_write_bytes(path, _histogram(name, values[name], counts))
        result.figures.append(str(path))
        progress("report figures", done, len(scores))
    missing = sum(1 for m in columns[1] if m)
    near_dups = sum(1 for d in columns[2] if d is not None)
    text = _summary(dataset.name, dict(dataset.info), counts, values, missing, near_dups)
    atomic_write_text(out / SUMMARY, text)
    return result


def _floats(column: list) -> np.ndarray:
    """Scores as floats with NaN where a sample has none (e.g. identity drift without a paste)."""
    return np.array([np.nan if v is None else float(v) for v in column], dtype=np.float64)


def _histogram(name: str, scores: np.ndarray, counts: np.ndarray) -> bytes:
    """One panel, one step histogram per concept count, normalised so group sizes do not matter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = _RANGES[name]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for n in sorted(set(counts.tolist())):
        group = scores[(counts == n) & ~np.isnan(scores)]
        if len(group):
            weights = np.full(len(group), 1 / len(group))
            label = f"{n} concepts (n={len(group)})"
            ax.hist(group, bins=_BINS, range=(low, high), histtype="step", weights=weights, label=label)
    ax.set_xlabel(name)
    ax.set_ylabel("fraction of candidates")
    ax.set_title(f"{name} by concept count")
    if ax.has_data():
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _mean(values: np.ndarray) -> str:
    values = values[~np.isnan(values)]
    return f"{values.mean():.3f}" if len(values) else "–"


def _summary(
    name: str,
    info: dict,
    counts: np.ndarray,
    values: dict[str, np.ndarray],
    missing: int,
    near_dups: int,
) -> str:
    groups = sorted(set(counts.tolist()))
    lines = [f"# Index report: {name}", ""]
    if info.get("clip_weights") != "pretrained":
        lines += [
            (
                f"> **CLIP weights: {info.get('clip_weights', 'unknown')}**: clip_t, cp_clip, presence "
                "and near-duplicates are not meaningful; index with real weights before trusting them."
            ),
            "",
        ]
    if info.get("presence_source") == presence.SOURCE_PLAN:
        lines += [
            (
                "> Presence came from the **planned boxes** (no detector configured): cp_clip measures "
                "resemblance inside the plan's boxes, and no concept can be missing."
            ),
            "",
        ]
    per_group = ", ".join(f"{n} concepts: {int((counts == n).sum())}" for n in groups)
    lines += [
        f"{len(counts)} candidates ({per_group}).",
        (
            f"CLIP: {info.get('clip_model', '?')} / {info.get('clip_pretrained') or 'no tag'} "
            f"({info.get('clip_weights', '?')}); presence: {info.get('presence_source', '?')}."
        ),
        "",
        "## Mean score by concept count",
        "",
        "| score | " + " | ".join(f"{n} concepts" for n in groups) + " | all |",
        "|---|" + "---|" * (len(groups) + 1),
    ]
    for score, column in values.items():
        cells = [_mean(column[counts == n]) for n in groups]
        lines.append(f"| {score} | " + " | ".join(cells) + f" | {_mean(column)} |")
    lines += ["", "## Flagged", "", "| check | threshold | flagged |", "|---|---|---|"]
    for spec in ARTIFACT_SCORES.values():
        if spec.name in values:
            flagged = sum(spec.is_issue(None if np.isnan(v) else v) for v in values[spec.name])
            direction = ">" if spec.higher_is_worse else "<"
            lines.append(f"| {spec.name} | {direction} {spec.threshold} | {flagged} |")
    lines += [
        f"| {presence.MISSING_CONCEPTS} | at least one | {missing} |",
        f"| {ds.NEAR_DUP_OF} | set | {near_dups} |",
        "",
        f"Histograms: `hist_<score>.png` beside this file ({len(values)} scores).",
        "",
    ]
    return "\n".join(lines)

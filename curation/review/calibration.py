"""How well each machine score predicts the human decisions pulled so far, and the triage rule it earns.

A score only earns the right to hold candidates back from review once people have shown what it is
worth: for every numeric score and every concept count this compares the score with the pulled
`review_decision`s (ROC AUC for "rejected") and finds the threshold that would have spared the most
review while still sending at least 95% of the accepted candidates to people. Scores computed with
random CLIP weights are reported but never become a rule: their AUCs are chance that happens to fit.
The result is written to review/calibration.json (read by `curate review push --triage` and by the
labeling page's suggestion line) and review/calibration.png (ROC curves).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.lock import writes
from curation.core.workspace import Workspace, atomic_write_json
from curation.scores.artifacts import ARTIFACT_SCORES

RECALL = 0.95
"""Share of the accepted candidates a rule must still send to review."""
MIN_REVIEWS = 20
"""Fewest reviewed candidates (of a concept count) before a threshold there becomes a rule."""
CLIP_SCORES = frozenset({ds.CLIP_T, ds.CLIP_T_COS, ds.UNIQUENESS, "cp_clip"})
"""Scores whose meaning comes from the CLIP weights: noise when those weights were random."""
HIGHER_IS_WORSE_EXTRA = frozenset({"missing_concepts"})
ALL = "all"


def higher_is_worse(name: str) -> bool:
    """A score's direction: artifact scores and missing-concept counts grow with badness."""
    spec = ARTIFACT_SCORES.get(name)
    return spec.higher_is_worse if spec else name in HIGHER_IS_WORSE_EXTRA


def random_weights(dataset: Any, name: str) -> bool:
    """Whether this score of this dataset came from random CLIP weights."""
    return name in CLIP_SCORES and dataset.info.get("clip_weights") != "pretrained"


def roc_auc(rejected: list[float], accepted: list[float]) -> float:
    """P(a rejected candidate looks worse than an accepted one), ties counting half (Mann-Whitney U).

    Inputs are badness values (bigger = worse). Quadratic in the worst case but on sorted lists
    it is one merge, so 10K reviews take milliseconds.
    """
    acc = sorted(accepted)
    wins = 0.0
    lo = hi = 0
    for r in sorted(rejected):
        while lo < len(acc) and acc[lo] < r:
            lo += 1
        hi = max(hi, lo)
        while hi < len(acc) and acc[hi] == r:
            hi += 1
        wins += lo + 0.5 * (hi - lo)
    return wins / (len(rejected) * len(accepted))


@dataclass
class ScoreCalibration:
    """One score on one group of reviewed candidates (a concept count, or `all`).

    `op`/`threshold` is the rule in the score's own units: hold back candidates with
    `score op threshold`. `spared` counts the reviewed candidates the rule would have held back,
    `accepted_lost` those of them people accepted (at most 5% of the accepted).
    """

    score: str
    group: str
    accepted: int
    rejected: int
    auc: float | None
    op: str | None
    threshold: float | None
    spared: int
    accepted_lost: int
    random_weights: bool

    @property
    def usable(self) -> bool:
        """Whether push --triage may act on it: enough reviews, real weights, something spared."""
        return (
            not self.random_weights
            and self.accepted + self.rejected >= MIN_REVIEWS
            and self.threshold is not None
            and self.spared > 0
        )

    def holds(self, value: float | None) -> bool:
        if value is None or self.threshold is None:
            return False
        return value > self.threshold if self.op == ">" else value < self.threshold

    def rule_text(self) -> str:
        return f"{self.score} {self.op} {self.threshold:.4g}"


def calibrate_one(score: str, group: str, values: list[tuple[float, bool]], random: bool) -> ScoreCalibration:
    """AUC and the 95%-recall rule of one score from (value, accepted) pairs."""
    sign = 1.0 if higher_is_worse(score) else -1.0
    acc = [sign * v for v, a in values if a]
    rej = [sign * v for v, a in values if not a]
    auc = roc_auc(rej, acc) if acc and rej else None
    op = threshold = None
    spared = lost = 0
    if acc and rej:
        # the lowest cut that still keeps RECALL of the accepted at or below it spares the most
        keep = math.ceil(RECALL * len(acc))
        cut = sorted(acc)[keep - 1]
        spared = sum(b > cut for b in acc + rej)
        lost = sum(b > cut for b in acc)
        op, threshold = (">" if sign > 0 else "<"), sign * cut
    return ScoreCalibration(score, group, len(acc), len(rej), auc, op, threshold, spared, lost, random)


@dataclass
class CalibrationReport:
    rows: list[ScoreCalibration]
    rules: dict[str, ScoreCalibration]  # group -> the usable rule sparing the most
    path: Path
    plot: Path | None

    def summary(self) -> str:
        lines = [f"calibration on pulled reviews (rule keeps >= {RECALL:.0%} of accepted; {self.path})"]
        groups = sorted({r.group for r in self.rows}, key=lambda g: (g != ALL, g))
        for group in groups:
            rows = [r for r in self.rows if r.group == group]
            head = rows[0]
            lines.append(f"{group} concepts: {head.accepted} accepted, {head.rejected} rejected")
            for r in sorted(rows, key=lambda r: -(r.auc or 0)):
                auc = "n/a" if r.auc is None else f"{r.auc:.3f}"
                rule = (
                    f"hold {r.rule_text()}: spares {r.spared} ({r.accepted_lost} accepted lost)"
                    if r.op
                    else ""
                )
                note = "  [random weights: never a rule]" if r.random_weights else ""
                lines.append(f"  {r.score:18s} AUC(rejected) {auc}  {rule}{note}")
            best = self.rules.get(group)
            lines.append(
                f"  -> triage rule: {best.rule_text()} spares {best.spared} reviews"
                if best
                else f"  -> no triage rule (needs >= {MIN_REVIEWS} reviews with both decisions and a pretrained score)"
            )
        if self.plot:
            lines.append(f"ROC curves: {self.plot}")
        return "\n".join(lines)


def calibration_file(ws: Workspace) -> Path:
    return ws.review_dir / "calibration.json"


def numeric_scores(dataset: Any) -> list[str]:
    """The machine scores: numeric fields that are neither review results nor identity."""
    import fiftyone as fo

    skip = {ds.REVIEW_QUALITY, ds.REVIEW_AGREEMENT, ds.REVIEW_ANNOTATORS, ds.SEED, ds.N_CONCEPTS, ds.SHARD}
    schema = dataset.get_field_schema()
    names = [n for n, f in schema.items() if isinstance(f, fo.FloatField | fo.IntField) and n not in skip]
    return sorted(names, key=lambda n: (n != ds.CLIP_T, n))


@writes("review")
def calibrate(ws: Workspace, plot: bool = True) -> CalibrationReport:
    """Compare every machine score with the pulled decisions; write calibration.json (and a plot)."""
    from fiftyone import ViewField as F

    dataset = ds.open_dataset(ws, require_samples=True)
    if not dataset.has_field(ds.REVIEW_DECISION):
        raise CurateError("no reviews pulled yet: run `curate review pull` first")
    reviewed = dataset.match(F(ds.REVIEW_DECISION).is_in([ds.ACCEPT, ds.REJECT]))
    if not len(reviewed):
        raise CurateError("no reviews pulled yet: run `curate review pull` first")
    scores = numeric_scores(dataset)
    columns = reviewed.values([ds.REVIEW_DECISION, ds.CONCEPTS, *scores])
    decisions, concepts, by_score = columns[0], columns[1], dict(zip(scores, columns[2:], strict=True))
    groups = [str(len(c or [])) for c in concepts]
    rows: list[ScoreCalibration] = []
    for group in [ALL, *sorted(set(groups), key=int)]:
        for score in scores:
            pairs = [
                (float(v), d == ds.ACCEPT)
                for v, d, g in zip(by_score[score], decisions, groups, strict=True)
                if v is not None and (group == ALL or g == group)
            ]
            if pairs:
                rows.append(calibrate_one(score, group, pairs, random_weights(dataset, score)))
    rules: dict[str, ScoreCalibration] = {}
    for row in rows:
        if row.usable and (row.group not in rules or row.spared > rules[row.group].spared):
            rules[row.group] = row
    path = calibration_file(ws)
    atomic_write_json(
        path,
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "recall": RECALL,
            "reviews": len(reviewed),
            "rows": [asdict(r) for r in rows],
            "rules": {g: asdict(r) for g, r in rules.items()},
        },
    )
    figure = _plot(ws, rows, by_score, decisions) if plot else None
    return CalibrationReport(rows, rules, path, figure)


def load_rules(ws: Workspace) -> dict[str, ScoreCalibration]:
    """The rules `calibrate` last wrote, by group; empty when it never ran."""
    import json

    path = calibration_file(ws)
    if not path.exists():
        return {}
    return {g: ScoreCalibration(**r) for g, r in json.loads(path.read_text())["rules"].items()}


def rule_for(rules: dict[str, ScoreCalibration], n_concepts: int) -> ScoreCalibration | None:
    """The rule of this concept count, else the rule over all concept counts."""
    return rules.get(str(n_concepts)) or rules.get(ALL)


def _plot(
    ws: Workspace, rows: list[ScoreCalibration], by_score: dict[str, list[Any]], decisions: list[str]
) -> Path:
    """ROC curves (all concept counts) of every score: false vs true rejects as the cut moves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    for row in (r for r in rows if r.group == ALL and r.auc is not None):
        sign = 1.0 if higher_is_worse(row.score) else -1.0
        pairs = sorted(
            (
                (sign * float(v), d == ds.REJECT)
                for v, d in zip(by_score[row.score], decisions, strict=True)
                if v is not None
            ),
            reverse=True,
        )
        n_rej = sum(r for _, r in pairs)
        n_acc = len(pairs) - n_rej
        tpr, fpr, tp, fp = [0.0], [0.0], 0, 0
        for _, is_rej in pairs:
            tp += is_rej
            fp += not is_rej
            tpr.append(tp / n_rej)
            fpr.append(fp / n_acc)
        label = f"{row.score} AUC {row.auc:.2f}" + (" (random weights)" if row.random_weights else "")
        ax.plot(fpr, tpr, label=label, linestyle="--" if row.random_weights else "-")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    ax.set_xlabel("accepted held back (false rejects)")
    ax.set_ylabel("rejected held back (true rejects)")
    ax.set_title("machine scores vs human decisions")
    ax.legend(fontsize=7, loc="lower right")
    path = ws.review_dir / "calibration.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

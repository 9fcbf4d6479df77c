"""How well each machine score predicts the human decisions pulled so far, and the triage rule it earns.

A score only earns the right to hold candidates back from review once people have shown what it is
worth: for every numeric score and every concept count this compares the score with the pulled
`review_decision`s (ROC AUC for "rejected"). A concept count then earns a triage rule only if a
cross-validated check (curation/review/crossval.py: score and cut chosen on other folds' reviews)
shows, with a one-sided 95% Clopper-Pearson lower bound, that the rule keeps at least 95% of the
accepted candidates; that needs at least 59 accepted and 20 rejected reviews of that count. A count
that falls short gets no triage at all, never another count's rule or the pooled one. Scores
computed with random CLIP weights are reported but never become a rule: their AUCs are chance that
happens to fit. The result is written to review/calibration.json (read by `curate review push
--triage` and by the labeling page's suggestion line) and review/calibration.png (ROC curves).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.lock import writes
from curation.core.workspace import Workspace, atomic_write_json
from curation.review.crossval import (
    CONFIDENCE,
    FOLDS,
    MIN_ACCEPTED,
    MIN_REJECTED,
    RECALL,
    HeldOut,
    aim,
    choose_cut,
    column,
    cross_validate,
    score_cut,
)
from curation.scores.artifacts import ARTIFACT_SCORES

METHOD = "heldout-clopper-pearson"
"""Marks calibration.json files whose rules passed the held-out check; older files earn no triage."""


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

    Inputs are badness values (bigger = worse). Each rejected value is placed among the sorted
    accepted ones by binary search, so 10K reviews take milliseconds.
    """
    acc = np.sort(np.asarray(accepted, dtype=np.float64))
    rej = np.asarray(rejected, dtype=np.float64)
    below = np.searchsorted(acc, rej, side="left")
    tied = np.searchsorted(acc, rej, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(rej) * len(acc)))


@dataclass
class ScoreCalibration:
    """One score on one group of reviewed candidates (a concept count, or `all`), in sample.

    `op`/`threshold` is the cut in the score's own units: hold back candidates with
    `score op threshold`; it keeps the group's `aim` share of the accepted (crossval.aim).
    `spared` counts the reviewed candidates it would have held back, `accepted_lost` those of
    them people accepted. These are the reviews the cut was chosen on: only a group's held-out
    figures (GroupTriage) say whether it may triage.
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

    def holds(self, value: float | None) -> bool:
        if value is None or self.threshold is None:
            return False
        return value > self.threshold if self.op == ">" else value < self.threshold

    def rule_text(self) -> str:
        return f"{self.score} {self.op} {self.threshold:.4g}"


def calibrate_one(
    score: str, group: str, values: np.ndarray, accepted: np.ndarray, random: bool, keep_share: float
) -> ScoreCalibration:
    """AUC and the in-sample cut (keeping `keep_share` of the accepted) of one score on one group."""
    worse = higher_is_worse(score)
    sign = 1.0 if worse else -1.0
    present = ~np.isnan(values)
    acc = (sign * values[present & accepted]).tolist()
    rej = (sign * values[present & ~accepted]).tolist()
    auc = roc_auc(rej, acc) if acc and rej else None
    cut, spared = score_cut(score, worse, values, accepted, keep_share)
    lost = int((cut.held(values) & accepted).sum()) if cut else 0
    return ScoreCalibration(
        score, group, len(acc), len(rej), auc, cut and cut.op, cut and cut.threshold, spared, lost, random
    )


@dataclass
class GroupTriage:
    """Whether one concept count may triage, and the held-out evidence for or against it.

    `rule` is the rule's text when it may (the rule itself is in the report's `rules`), else None
    and `reason` says why not.
    """

    group: str
    accepted: int
    rejected: int
    heldout: HeldOut | None
    rule: str | None
    reason: str

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> GroupTriage:
        heldout = saved["heldout"] and HeldOut(**saved["heldout"])
        return cls(**{**saved, "heldout": heldout})

    def evidence(self) -> str:
        """The held-out figures in one line, or an empty string when no check ran."""
        h = self.heldout
        if h is None:
            return ""
        chosen = ", ".join(f"{s} {n}" for s, n in sorted(h.chosen.items(), key=lambda x: -x[1])) or "none"
        return (
            f"held-out ({h.folds} folds; score chosen per fold: {chosen}): recall of accepted {h.recall:.3f} "
            f"({h.accepted_kept}/{h.accepted}), {CONFIDENCE:.0%} lower bound {h.recall_bound:.3f}; "
            f"spares {h.spared:.1%} of reviews ({h.rejected_held}/{h.rejected} rejected held back)"
        )


def judge_group(
    group: str,
    keys: Sequence[str],
    accepted: np.ndarray,
    by_score: Mapping[str, np.ndarray],
    random: set[str],
    rows: Sequence[ScoreCalibration],
) -> tuple[GroupTriage, ScoreCalibration | None]:
    """The held-out check of one concept count and, if it passes, its rule (one of `rows`)."""
    n_acc = int(accepted.sum())
    n_rej = len(accepted) - n_acc
    usable = {name: values for name, values in by_score.items() if name not in random}

    def verdict(reason: str, heldout: HeldOut | None = None) -> tuple[GroupTriage, None]:
        return GroupTriage(group, n_acc, n_rej, heldout, None, reason), None

    if n_acc < MIN_ACCEPTED:
        return verdict(
            f"{n_acc} accepted < {MIN_ACCEPTED}: with fewer, even keeping every held-out accept leaves "
            f"the {CONFIDENCE:.0%} lower bound below {RECALL:.0%}"
        )
    if n_rej < MIN_REJECTED:
        return verdict(f"{n_rej} rejected < {MIN_REJECTED}: too few to tell which score spares review")
    if not usable:
        return verdict("no score from pretrained weights")
    directions = {name: higher_is_worse(name) for name in usable}
    heldout = cross_validate(keys, accepted, usable, directions)
    if heldout.recall_bound < RECALL:
        return verdict(
            f"held-out recall {heldout.recall:.3f}, its {CONFIDENCE:.0%} lower bound "
            f"{heldout.recall_bound:.3f} < {RECALL:.2f}",
            heldout,
        )
    cut = choose_cut(usable, directions, accepted, aim(n_acc))
    if cut is None or heldout.spared == 0:
        return verdict("no cut holds anything back", heldout)
    rule = next(r for r in rows if r.score == cut.score)
    return GroupTriage(group, n_acc, n_rej, heldout, rule.rule_text(), ""), rule


def calibrate_reviews(
    keys: Sequence[str],
    accepted: Sequence[bool],
    groups: Sequence[str],
    by_score: Mapping[str, Sequence[float | None]],
    random: set[str],
) -> tuple[list[ScoreCalibration], dict[str, GroupTriage], dict[str, ScoreCalibration]]:
    """Rows per score and group (pooled `all` first), each concept count's verdict, and the rules earned.

    Args:
        keys: candidate ids (they seed the folds' assignment, so any order gives the same folds).
        accepted: the decision of each review.
        groups: each review's concept count, as text.
        by_score: each score's value per review (None where missing).
        random: scores from random weights (reported, never a rule).
    """
    rows: list[ScoreCalibration] = []
    verdicts: dict[str, GroupTriage] = {}
    rules: dict[str, ScoreCalibration] = {}
    columns = {name: column(values) for name, values in by_score.items()}
    decided, group_of = np.asarray(accepted, dtype=bool), np.asarray(groups)
    for group in [ALL, *sorted(set(groups), key=int)]:
        members = np.ones(len(keys), dtype=bool) if group == ALL else group_of == group
        acc = decided[members]
        values = {name: values[members] for name, values in columns.items()}
        share = aim(int(acc.sum())) if acc.any() else 1.0
        mine = [
            calibrate_one(name, group, values, acc, name in random, share)
            for name, values in values.items()
            if not np.isnan(values).all()
        ]
        rows += mine
        if group == ALL:
            continue  # the pooled figures are for reading: each concept count earns its own rule
        member_keys = [key for key, m in zip(keys, members, strict=True) if m]
        verdicts[group], rule = judge_group(group, member_keys, acc, values, random, mine)
        if rule is not None:
            rules[group] = rule
    return rows, verdicts, rules


@dataclass
class CalibrationReport:
    rows: list[ScoreCalibration]
    groups: dict[str, GroupTriage]  # concept count -> its verdict
    rules: dict[str, ScoreCalibration]  # concept count -> the rule it earned
    path: Path
    plot: Path | None

    def summary(self) -> str:
        rule = (
            f"a triage rule must keep >= {RECALL:.0%} of the accepted, checked on held-out reviews "
            f"({FOLDS}-fold, seeded; score and cut chosen inside each fold) by a one-sided "
            f"{CONFIDENCE:.0%} Clopper-Pearson lower bound; a concept count needs >= {MIN_ACCEPTED} "
            f"accepted and >= {MIN_REJECTED} rejected reviews, else it gets no triage"
        )
        lines = [f"calibration on pulled reviews ({self.path})", rule]
        shown = {r.group for r in self.rows} | set(self.groups)  # also a count no score has a value for
        for group in sorted(shown, key=lambda g: -1 if g == ALL else int(g)):
            rows = [r for r in self.rows if r.group == group]
            accepted, rejected = self._reviews(group)
            name = "all concept counts (pooled, never a rule)" if group == ALL else f"{group} concepts"
            lines.append(f"{name}: {accepted} accepted, {rejected} rejected")
            for r in sorted(rows, key=lambda r: -(r.auc or 0)):
                auc = "n/a" if r.auc is None else f"{r.auc:.3f}"
                cut = (
                    f"in sample: hold {r.rule_text()} spares {r.spared} ({r.accepted_lost} accepted lost)"
                    if r.op
                    else ""
                )
                note = "  [random weights: never a rule]" if r.random_weights else ""
                lines.append(f"  {r.score:18s} AUC(rejected) {auc}  {cut}{note}")
            verdict = self.groups.get(group)
            if verdict is None:
                continue
            if evidence := verdict.evidence():
                lines.append(f"  {evidence}")
            lines.append(
                f"  -> triage rule: {verdict.rule}" if verdict.rule else f"  -> no triage: {verdict.reason}"
            )
        if self.plot:
            lines.append(f"ROC curves: {self.plot}")
        return "\n".join(lines)

    def _reviews(self, group: str) -> tuple[int, int]:
        """Accepted and rejected reviews of a group: from the verdicts, which count every review; a
        score's row counts only the reviews that score has a value for (uniqueness, cp_clip may lack one)."""
        verdicts = [v for g, v in self.groups.items() if group in (ALL, g)]
        if verdicts:
            return sum(v.accepted for v in verdicts), sum(v.rejected for v in verdicts)
        head = next(r for r in self.rows if r.group == group)
        return head.accepted, head.rejected


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
    columns = reviewed.values([ds.CANDIDATE_ID, ds.REVIEW_DECISION, ds.CONCEPTS, *scores])
    keys, decisions, concepts = columns[:3]
    by_score = {
        name: [None if v is None else float(v) for v in column]
        for name, column in zip(scores, columns[3:], strict=True)
    }
    random = {name for name in scores if random_weights(dataset, name)}
    rows, groups, rules = calibrate_reviews(
        keys, [d == ds.ACCEPT for d in decisions], [str(len(c or [])) for c in concepts], by_score, random
    )
    path = calibration_file(ws)
    atomic_write_json(
        path,
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "method": METHOD,
            "recall": RECALL,
            "confidence": CONFIDENCE,
            "folds": FOLDS,
            "min_accepted": MIN_ACCEPTED,
            "min_rejected": MIN_REJECTED,
            "reviews": len(reviewed),
            "rows": [asdict(r) for r in rows],
            "groups": {g: asdict(t) for g, t in groups.items()},
            "rules": {g: asdict(r) for g, r in rules.items()},
        },
    )
    figure = _plot(ws, rows, by_score, decisions) if plot else None
    return CalibrationReport(rows, groups, rules, path, figure)


def _saved(ws: Workspace) -> dict[str, Any] | None:
    """calibration.json when it was written with held-out checks; None when absent or older."""
    path = calibration_file(ws)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved if saved.get("method") == METHOD else None


def load_rules(ws: Workspace) -> dict[str, ScoreCalibration]:
    """The rules `calibrate` last wrote, by concept count; empty when it never ran (or ran before held-out checks)."""
    saved = _saved(ws)
    return {g: ScoreCalibration(**r) for g, r in saved["rules"].items()} if saved else {}


def load_groups(ws: Workspace) -> dict[str, GroupTriage]:
    """Each concept count's verdict from the last `curate calibrate`; refuses when there is none to trust."""
    saved = _saved(ws)
    if saved is None:
        why = "was written before held-out checks" if calibration_file(ws).exists() else "does not exist yet"
        raise CurateError(
            f"{calibration_file(ws)} {why}: run `curate calibrate` after pulling reviews, then push with --triage"
        )
    return {g: GroupTriage.from_json(t) for g, t in saved["groups"].items()}


def rule_for(rules: dict[str, ScoreCalibration], n_concepts: int) -> ScoreCalibration | None:
    """The rule this concept count earned itself; None otherwise (never another count's or the pooled one)."""
    return rules.get(str(n_concepts))


def hold_back(
    candidates: Sequence[Mapping[str, Any]],
    rules: dict[str, ScoreCalibration],
    groups: dict[str, GroupTriage],
    random: set[str],
) -> tuple[dict[str, str], list[str]]:
    """Which candidates triage holds back (id -> the rule and its evidence), and a line per concept count.

    Only a concept count whose rule passed the held-out check holds anything; every other count's
    candidates all go to review, and its line says why.
    """
    held: dict[str, str] = {}
    notes: list[str] = []
    by_group: dict[str, list[Mapping[str, Any]]] = {}
    for c in candidates:
        by_group.setdefault(str(len(c[ds.CONCEPTS] or [])), []).append(c)
    for group, members in sorted(by_group.items(), key=lambda kv: int(kv[0])):
        verdict, rule = groups.get(group), rules.get(group)
        if verdict is None:
            why = "no reviews of this concept count were calibrated"
        elif rule is None:
            why = verdict.reason
        elif rule.score in random:
            why = f"{rule.score} now comes from random weights"
        else:
            h = verdict.heldout
            assert h is not None  # a rule exists only after its held-out check
            why = ""
            mine = [c[ds.CANDIDATE_ID] for c in members if rule.holds(c.get(rule.score))]
            evidence = f"held-out recall {h.recall:.3f}, {CONFIDENCE:.0%} lower bound {h.recall_bound:.3f}"
            held.update(
                dict.fromkeys(mine, f"{rule.rule_text()} ({evidence}; {h.accepted + h.rejected} reviews)")
            )
            notes.append(
                f"{group} concepts: {rule.rule_text()} ({evidence} >= {RECALL:.2f}) held back {len(mine)} of {len(members)}"
            )
        if why:
            notes.append(f"{group} concepts: no triage ({why}): all {len(members)} sent")
    return held, notes


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

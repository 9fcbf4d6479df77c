"""Choose a triage cut on some reviews and check it on others: seeded K-fold cross-validation, exact bound.

A cut chosen on the reviews it is then checked on looks better than it is, and choosing the best of
several scores on them makes it worse. Here the whole choice (which score, which cut) is made inside
each fold on the other folds' reviews, and only the held-out fold judges it; pooled over the folds,
every review is held out once. The recall of accepted candidates that the held-out reviews show is
reported with its one-sided exact (Clopper-Pearson) lower bound, so "keeps 95% of accepts" becomes
a statement with a confidence, and it needs enough accepts to be made at all (`MIN_ACCEPTED`).

The cut itself leaves room for chance: it keeps the share of accepts (`aim`) at which a record of
that share would still clear the target at `AIM_CONFIDENCE` (0.999), not just at 0.95; a cut at
exactly 95% in sample keeps fewer than 95% of new accepts (the order-statistic optimism), and the
check would then refuse almost every rule. Pure Python and numpy: no optimiser, milliseconds at 10K.
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

RECALL = 0.95
"""Share of the accepted candidates a triage rule must still send to review."""
CONFIDENCE = 0.95
"""One-sided confidence of the lower bound on held-out recall that must reach `RECALL`."""
AIM_CONFIDENCE = 0.999
"""Confidence at which the share a cut keeps in training would clear `RECALL`: room for chance."""
FOLDS = 5
SEED = 0


def recall_lower_bound(kept: int, total: int, confidence: float = CONFIDENCE) -> float:
    """One-sided exact (Clopper-Pearson) lower bound of a proportion seen as `kept` of `total`.

    The bound is the p at which `kept` or more of `total` would happen with probability
    1 - confidence; found by bisection on the binomial upper tail, summed in log space so it holds
    at 10K trials. It never exceeds kept / total and is 0 when nothing was kept.
    """
    if not 0 <= kept <= total or total == 0:
        raise ValueError(f"need 0 <= kept <= total and total > 0, got {kept} of {total}")
    if kept == 0:
        return 0.0
    if kept == total:
        return (1 - confidence) ** (1 / total)
    alpha = 1 - confidence
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, total + 1)))])
    j = np.arange(kept, total + 1)
    log_choose = log_factorial[total] - log_factorial[j] - log_factorial[total - j]

    def upper_tail(p: float) -> float:
        logs = log_choose + j * math.log(p) + (total - j) * math.log1p(-p)
        top = logs.max()
        return float(math.exp(top) * np.exp(logs - top).sum())

    lo, hi = 0.0, kept / total
    while hi - lo > 1e-12:  # far below any printed digit
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if upper_tail(mid) < alpha else (lo, mid)
    return lo


def fewest_trials(target: float, confidence: float) -> int:
    """Fewest trials whose best record (all of them kept) has its lower bound at `target` or above."""
    return math.ceil(math.log(1 - confidence) / math.log(target) - 1e-12)


MIN_ACCEPTED = fewest_trials(RECALL, CONFIDENCE)
"""59: with fewer held-out accepts even keeping every one leaves the bound below 95% (0.05^(1/58) < 0.95)."""


def _fewest_rejected(width: float = 0.2) -> int:
    """Fewest rejects at which the share a rule holds back is known to +-width when it is half.

    Rejects decide which score is chosen and how much review it spares; below this the one-sided
    bounds of a half-held share (at `CONFIDENCE` each side) are further than `width` from 0.5,
    so "spares the most" is mostly chance.
    """
    n = 2
    while recall_lower_bound(n // 2, n) < 0.5 - width:
        n += 2
    return n


MIN_REJECTED = _fewest_rejected()
"""20: at 10 of 20 held back the bounds are 0.30 and 0.70."""


@functools.cache
def aim(accepted: int) -> float:
    """Share of training accepts a cut keeps: the least whose record would clear RECALL at AIM_CONFIDENCE.

    Depends on the count only (never on the outcomes), so using it inside the folds leaks nothing.
    1.0 (keep every training accept) when even that would not clear it.
    """
    lo, hi = 0, accepted
    if recall_lower_bound(accepted, accepted, AIM_CONFIDENCE) < RECALL:
        return 1.0
    while lo < hi:  # the bound grows with what is kept: bisect on the count
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if recall_lower_bound(mid, accepted, AIM_CONFIDENCE) < RECALL else (lo, mid)
    return lo / accepted


@dataclass(frozen=True)
class Cut:
    """Hold back candidates whose `score` is worse than `threshold` (in the score's own units)."""

    score: str
    higher_is_worse: bool
    threshold: float

    @property
    def op(self) -> str:
        return ">" if self.higher_is_worse else "<"

    def holds(self, value: float | None) -> bool:
        """Whether a candidate with this score value is held back; a missing value never is."""
        if value is None:
            return False
        return value > self.threshold if self.higher_is_worse else value < self.threshold

    def held(self, values: np.ndarray) -> np.ndarray:
        """`holds` over an array of values (NaN for missing, never held)."""
        return values > self.threshold if self.higher_is_worse else values < self.threshold


def column(values: Sequence[float | None]) -> np.ndarray:
    """A score's values as float64, NaN where missing: what the functions below take."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def score_cut(
    score: str, higher_is_worse: bool, values: np.ndarray, accepted: np.ndarray, keep_share: float
) -> tuple[Cut | None, int]:
    """The cut of one score keeping `keep_share` of the accepts that have a value, and how many it holds back."""
    sign = 1.0 if higher_is_worse else -1.0
    acc = sign * values[accepted & ~np.isnan(values)]
    if not len(acc):
        return None, 0
    keep = min(len(acc), max(1, math.ceil(keep_share * len(acc) - 1e-9)))
    cut = Cut(score, higher_is_worse, float(sign * np.partition(acc, keep - 1)[keep - 1]))
    return cut, int(cut.held(values).sum())


def choose_cut(
    scores: Mapping[str, np.ndarray], directions: Mapping[str, bool], accepted: np.ndarray, keep_share: float
) -> Cut | None:
    """Of every score's cut, the one that holds back the most (ties: the first score); None if none holds any."""
    best: tuple[int, Cut] | None = None
    for name, values in scores.items():
        cut, held = score_cut(name, directions[name], values, accepted, keep_share)
        if cut is not None and held > 0 and (best is None or held > best[0]):
            best = (held, cut)
    return best[1] if best else None


def folds_of(keys: Sequence[str], accepted: np.ndarray, k: int = FOLDS) -> np.ndarray:
    """Fold of each review, stratified by decision and seeded: the same reviews always fall alike.

    Keys (candidate ids) are sorted before the seeded shuffle, so the order a database returns
    them in changes nothing.
    """
    fold = np.zeros(len(keys), dtype=np.int64)
    rng = random.Random(SEED)
    for decision in (True, False):
        members = sorted(np.flatnonzero(accepted == decision).tolist(), key=lambda i: keys[i])
        rng.shuffle(members)
        for rank, i in enumerate(members):
            fold[i] = rank % k
    return fold


@dataclass
class HeldOut:
    """What the rules chosen without them did to the held-out reviews, pooled over the folds."""

    folds: int
    accepted: int
    accepted_kept: int
    rejected: int
    rejected_held: int
    chosen: dict[str, int] = field(default_factory=dict)  # score -> folds that chose it

    @property
    def recall(self) -> float:
        """Held-out share of accepts the rules still sent to review."""
        return self.accepted_kept / self.accepted

    @property
    def recall_bound(self) -> float:
        """One-sided exact lower bound (at CONFIDENCE) of that share."""
        return recall_lower_bound(self.accepted_kept, self.accepted)

    @property
    def spared(self) -> float:
        """Held-out share of all reviews the rules held back."""
        return (self.accepted - self.accepted_kept + self.rejected_held) / (self.accepted + self.rejected)


def cross_validate(
    keys: Sequence[str],
    accepted: np.ndarray,
    scores: Mapping[str, np.ndarray],
    directions: Mapping[str, bool],
    k: int = FOLDS,
) -> HeldOut:
    """Choose score and cut on k-1 folds, apply it to the k-th, for every fold; pool the outcomes.

    Each fold's cut keeps `aim` of all the group's accepts, the share the rule fitted on every
    review keeps too: the folds judge that rule's recipe with a little less data, so if anything
    they err low. Needs at least one accept; a fold whose training part yields no cut holds nothing.
    """
    n_acc = int(accepted.sum())
    keep_share = aim(n_acc)
    fold = folds_of(keys, accepted, k)
    result = HeldOut(k, n_acc, n_acc, len(accepted) - n_acc, 0)
    chosen: Counter[str] = Counter()
    for f in range(k):
        train, test = fold != f, fold == f
        cut = choose_cut(
            {name: v[train] for name, v in scores.items()}, directions, accepted[train], keep_share
        )
        if cut is None:
            continue
        chosen[cut.score] += 1
        held = cut.held(scores[cut.score][test])
        result.accepted_kept -= int((held & accepted[test]).sum())
        result.rejected_held += int((held & ~accepted[test]).sum())
    result.chosen = dict(chosen)
    return result

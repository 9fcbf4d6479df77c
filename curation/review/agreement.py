"""Krippendorff's alpha, the one agreement coefficient of review (decision, quality) and the user study (scores).

Nominal for categories (a review's accept/reject), interval for numbers (a quality rating, a
study's 1-10 score), from the coincidences of the values each unit (a task, an image) received.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def krippendorff_alpha(units: list[list[Any]], interval: bool = False) -> float | None:
    """Krippendorff's alpha over units (tasks, images) holding each annotator's value; nominal or interval.

    Units with fewer than two values cannot be paired and are left out, as the coefficient defines.
    None when nothing is pairable or every value is the same (agreement is then undefined, not 1).
    """

    def delta(c: Any, k: Any) -> float:
        return float(c - k) ** 2 if interval else float(c != k)

    pairable = [u for u in units if len(u) >= 2]
    coincidences: Counter[tuple[Any, Any]] = Counter()
    for unit in pairable:
        for i, c in enumerate(unit):
            for j, k in enumerate(unit):
                if i != j:
                    coincidences[c, k] += 1 / (len(unit) - 1)
    totals: Counter[Any] = Counter()
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    expected = sum(totals[c] * totals[k] * delta(c, k) for c in totals for k in totals)
    if n < 2 or expected == 0:
        return None
    observed = sum(weight * delta(c, k) for (c, k), weight in coincidences.items())
    return 1 - (n - 1) * observed / expected

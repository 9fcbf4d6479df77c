"""Time `curate calibrate`'s statistics at review scale: in-sample rows only vs the held-out check.

The held-out check (5-fold cross-validation with the score and cut chosen inside each fold, plus the
exact bound) is what a triage rule now has to pass; this prints its cost beside the in-sample rows
it adds to, on synthetic reviews (no database: the FiftyOne read is the same for both).

    python benchmarks/bench_calibrate.py [--reviews 10000] [--scores 12]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from curation.review.calibration import calibrate_one, calibrate_reviews
from curation.review.crossval import aim, column


def reviews(n: int, scores: int) -> tuple[list[str], list[bool], list[str], dict[str, list[float | None]]]:
    """3 concept counts; accepts ~ N(0, 1), rejects ~ N(-1, 1) on each score; 2% missing values."""
    rng = np.random.default_rng(0)
    accepted = (rng.random(n) < 0.75).tolist()
    by_score: dict[str, list[float | None]] = {}
    for j in range(scores):
        values = rng.normal(0, 1, n) - 1.0 * ~np.array(accepted)
        by_score[f"s{j:02d}"] = [None if rng.random() < 0.02 else float(v) for v in values]
    return [f"c{i:06d}" for i in range(n)], accepted, [str(2 + i % 3) for i in range(n)], by_score


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=10_000)
    parser.add_argument("--scores", type=int, default=12)
    args = parser.parse_args()
    keys, accepted, groups, by_score = reviews(args.reviews, args.scores)
    decided = np.array(accepted)
    columns = {name: column(values) for name, values in by_score.items()}

    def in_sample() -> None:
        share = aim(int(decided.sum()))
        for name, values in columns.items():
            calibrate_one(name, "all", values, decided, False, share)

    rows_only = best_of(3, in_sample)
    full = best_of(3, lambda: calibrate_reviews(keys, accepted, groups, by_score, set()))
    print(
        f"{args.reviews} reviews x {args.scores} scores, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"  in-sample rows (pooled)                        {rows_only * 1000:8.1f} ms")
    print(
        f"  rows + per-count held-out check and bound      {full * 1000:8.1f} ms   ({full / rows_only:.1f}x)"
    )


if __name__ == "__main__":
    main()

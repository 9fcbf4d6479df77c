"""The user study's numbers, in the poster's layout: mean (± std) per configuration x bucket x criterion.

Choices, each stated in the report:
- A cell pools every complete rating (one per rater per task) of that configuration; std is the
  sample standard deviation (ddof=1).
- Confidence intervals resample tasks, not ratings (a task's ratings share its prompt): 2000
  bootstrap resamples of the cell's tasks with replacement, seeded, percentile 2.5 and 97.5.
- Win rates compare two configurations task by task on the task's mean over raters: wins over
  (wins + losses), ties left out, with a two-sided sign test (binomial, p = 0.5) on the same counts.
  Tasks are the independent units; two raters of one task are not.
- Agreement is Krippendorff's alpha with the interval metric per criterion: a unit is one image
  (task x configuration), its values the raters' scores; units rated once do not count.
- With images from an evaluator that ran on random weights, the report opens with the evaluator's
  banner: the numbers then only show that the study runs.
"""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curation.core.buckets import BUCKET_TITLES
from curation.core.errors import CurateError
from curation.core.workspace import Workspace, atomic_write_bytes, atomic_write_json, atomic_write_text
from curation.review.agreement import krippendorff_alpha
from curation.study.studies import resolve_name, study_dir

BOOTSTRAP = 2000
ALL = "all"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def bootstrap_ci(
    per_task: list[list[float]], seed: int = 0, resamples: int = BOOTSTRAP
) -> tuple[float, float] | None:
    """95% percentile interval of the pooled mean, resampling whole tasks (each a list of ratings)."""
    tasks = [t for t in per_task if t]
    if not tasks:
        return None
    sums = np.array([sum(t) for t in tasks], dtype=float)
    counts = np.array([len(t) for t in tasks], dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(tasks), size=(resamples, len(tasks)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def sign_test(a: list[float], b: list[float]) -> dict[str, Any]:
    """Paired comparison of per-task scores: wins, losses, ties, win rate and the sign test's p."""
    from scipy.stats import binomtest

    wins = sum(x > y for x, y in zip(a, b, strict=True))
    losses = sum(x < y for x, y in zip(a, b, strict=True))
    decided = wins + losses
    return {
        "wins": wins,
        "losses": losses,
        "ties": len(a) - decided,
        "win_rate": wins / decided if decided else None,
        "p_value": float(binomtest(wins, decided, 0.5).pvalue) if decided else None,
    }


@dataclass
class StudyReport:
    name: str
    table_path: Path
    json_path: Path
    plot_path: Path
    ratings: int
    results: dict[str, Any]

    def summary(self) -> str:
        return f"study {self.name}: {self.ratings} ratings; table {self.table_path}; numbers {self.json_path}; plot {self.plot_path}"


def compute(
    state: dict[str, Any], mapping: dict[str, Any], ratings: list[dict[str, Any]], seed: int = 0
) -> dict[str, Any]:
    """Every number of the report from the study's state, its blind mapping and the pulled ratings."""
    criteria, configurations = state["criteria"], state["configurations"]
    buckets = [*BUCKET_TITLES, ALL]
    # criterion -> configuration -> task -> the raters' scores
    scores: dict[str, dict[str, dict[str, list[float]]]] = {
        c: {k: {} for k in configurations} for c in criteria
    }
    by_rater: dict[str, dict[tuple[str, str], list[float]]] = {c: {} for c in criteria}
    for rating in ratings:
        for criterion in criteria:
            for config, value in rating["scores"][criterion].items():
                scores[criterion][config].setdefault(rating["task"], []).append(float(value))
                by_rater[criterion].setdefault((rating["task"], config), []).append(float(value))

    def in_bucket(task: str, bucket: str) -> bool:
        return bucket == ALL or mapping[task]["bucket"] == bucket

    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for config in configurations:
        cells[config] = {}
        for criterion in criteria:
            cells[config][criterion] = {}
            for bucket in buckets:
                per_task = [v for t, v in scores[criterion][config].items() if in_bucket(t, bucket)]
                mean, std = mean_std([x for t in per_task for x in t])
                ci = bootstrap_ci(per_task, seed)
                cells[config][criterion][bucket] = {
                    "mean": mean,
                    "std": std,
                    "n": sum(len(t) for t in per_task),
                    "tasks": len(per_task),
                    "ci95": list(ci) if ci else None,  # as results.json holds it
                }
    pairwise = []
    for criterion in criteria:
        for a, b in itertools.combinations(configurations, 2):
            both = sorted(set(scores[criterion][a]) & set(scores[criterion][b]))
            first = [float(np.mean(scores[criterion][a][t])) for t in both]
            second = [float(np.mean(scores[criterion][b][t])) for t in both]
            pairwise.append(
                {"criterion": criterion, "a": a, "b": b, "tasks": len(both), **sign_test(first, second)}
            )
    agreement: dict[str, dict[str, Any]] = {}
    for criterion, units in by_rater.items():
        pairable = sum(len(u) >= 2 for u in units.values())
        # one image rated twice is no agreement to measure (alpha of a single unit is 0 by construction)
        alpha = krippendorff_alpha(list(units.values()), interval=True) if pairable >= 2 else None
        agreement[criterion] = {"alpha": alpha, "units": pairable}
    return {
        "study": state["name"],
        "source": state["source"],
        "weights": state.get("weights") or {},
        "criteria": criteria,
        "configurations": configurations,
        "raters": len({str(r["rater"]) for r in ratings}),
        "ratings": len(ratings),
        "cells": cells,
        "pairwise": pairwise,
        "agreement": agreement,
    }


def _banner(weights: dict[str, str]) -> list[str]:
    """The evaluator's warning, when its numbers (and these images) came from random weights."""
    kind = weights.get("clip")
    if kind is None or kind == "pretrained":
        return []
    return [
        f"> **weights: {kind}** — the evaluator ran with {kind} weights; these images and scores only show that the study runs.",
        "",
    ]


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_table(results: dict[str, Any], incomplete: int) -> str:
    """Markdown: the poster's table (mean (± std), one column per bucket x criterion), then the rest."""
    criteria, buckets = results["criteria"], list(BUCKET_TITLES)
    cells = results["cells"]
    lines = [f"# User study: {results['study']}", "", *_banner(results["weights"])]
    head = ["Configuration"] + [f"{BUCKET_TITLES[b]} {c}" for b in buckets for c in criteria] + ["n (≤3/4/5)"]
    lines += ["## Scores 1-10: mean (± std)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, per in cells.items():
        row = []
        for bucket in buckets:
            for criterion in criteria:
                cell = per[criterion][bucket]
                row.append("–" if cell["mean"] is None else f"{cell['mean']:.2f} (± {_number(cell['std'])})")
        counts = "/".join(str(per[criteria[0]][b]["n"]) for b in buckets)
        lines.append("| " + " | ".join([config, *row, counts]) + " |")
    head = ["Configuration"] + [f"{BUCKET_TITLES.get(b, b)} {c}" for b in [*buckets, ALL] for c in criteria]
    lines += ["", "## Bootstrap 95% confidence intervals of the mean (tasks resampled)", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, per in cells.items():
        row = []
        for bucket in [*buckets, ALL]:
            for criterion in criteria:
                ci = per[criterion][bucket]["ci95"]
                row.append("–" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]")
        lines.append("| " + " | ".join([config, *row]) + " |")
    lines += ["", "## Pairwise win rates (per task, mean over raters; sign test)", ""]
    lines += [
        "| criterion | A | B | A wins | B wins | ties | A win rate | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair in results["pairwise"]:
        lines.append(
            f"| {pair['criterion']} | {pair['a']} | {pair['b']} | {pair['wins']} | {pair['losses']} | {pair['ties']} "
            f"| {_number(pair['win_rate'])} | {_number(pair['p_value'], 3)} |"
        )
    lines += ["", "## Inter-rater agreement (Krippendorff's alpha, interval)", ""]
    lines += ["| criterion | alpha | images rated twice or more |", "|---|---|---|"]
    for criterion, agreement in results["agreement"].items():
        lines.append(f"| {criterion} | {_number(agreement['alpha'], 3)} | {agreement['units']} |")
    lines += [
        "",
        f"{results['ratings']} complete annotations by {results['raters']} raters"
        + (
            f"; {incomplete} incomplete ones not counted (listed by `curate study pull`)."
            if incomplete
            else "."
        ),
        f"Images from {results['source']}; configuration names never reached the raters (order shuffled per task).",
        "",
    ]
    return "\n".join(lines)


def render_plot(results: dict[str, Any], path: Path) -> None:
    """One panel per criterion: bars per configuration grouped by bucket, bootstrap CIs as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    criteria, buckets = results["criteria"], list(BUCKET_TITLES)
    cells = results["cells"]
    fig, axes = plt.subplots(1, len(criteria), figsize=(5 * len(criteria), 4), squeeze=False)
    width = 0.8 / max(1, len(cells))
    for ax, criterion in zip(axes[0], criteria, strict=True):
        for i, (config, per) in enumerate(cells.items()):
            means = np.array([per[criterion][b]["mean"] or 0.0 for b in buckets])
            cis = [per[criterion][b]["ci95"] or (m, m) for b, m in zip(buckets, means, strict=True)]
            errors = np.array([[m - lo for m, (lo, _) in zip(means, cis, strict=True)],
                               [hi - m for m, (_, hi) in zip(means, cis, strict=True)]])  # fmt: skip
            ax.bar(np.arange(len(buckets)) + i * width, means, width, yerr=errors, capsize=3, label=config)
        ax.set_xticks(
            np.arange(len(buckets)) + width * (len(cells) - 1) / 2, [BUCKET_TITLES[b] for b in buckets]
        )
        ax.set_ylim(0, 10.5)
        ax.set_title(criterion)
        ax.set_xlabel("concepts")
    axes[0][0].set_ylabel("score 1-10")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_report(ws: Workspace, name: str | None = None) -> StudyReport:
    """table.md, results.json and plot.png under study/<name>/report/, from the last `curate study pull`."""
    name = resolve_name(ws, name)
    folder = study_dir(ws, name)
    ratings_path = folder / "ratings.json"
    if not ratings_path.exists():
        raise CurateError(f"no ratings yet for study {name!r}: run `curate study pull` first")
    state = json.loads((folder / "study.json").read_text())
    mapping = json.loads((folder / "mapping.json").read_text())
    pulled = json.loads(ratings_path.read_text())
    results = compute(state, mapping, pulled["ratings"], seed=state.get("seed", 0))
    results["incomplete"] = pulled["incomplete"]
    out = folder / "report"
    table, numbers, plot = out / "table.md", out / "results.json", out / "plot.png"
    atomic_write_json(numbers, results)
    atomic_write_text(table, render_table(results, len(pulled["incomplete"])))
    render_plot(results, plot)
    return StudyReport(name, table, numbers, plot, len(pulled["ratings"]), results)

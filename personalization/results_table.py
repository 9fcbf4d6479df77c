"""The evaluation's outputs for people: table.md (Gen4Gen's table, the other metrics, MSP's Table 1) and plot.png.

Columns follow the poster: <=3, 4 and 5 concepts (more than 5 counted as 5); the MSP paper's Table 1
has CLIP-I, CLIP-T and SAS for 1, 2, 3 and more than 3 subjects. Numbers computed with random CLIP
weights are labelled `weights: random` above the tables: they show the pipeline runs, not how good a
model is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curation.core.buckets import BUCKET_TITLES, MSP_BUCKET_TITLES
from curation.core.workspace import atomic_write_bytes
from personalization.eval_settings import EvalSettings

METRICS = ("cp_clip", "ti_clip", "clip_i", "clip_t", "dino", "dnc", "sas")
"""Every metric the evaluator scores, in table and plot order."""
LABELS = {
    "cp_clip": "CP-CLIP",
    "ti_clip": "TI-CLIP",
    "clip_i": "CLIP-I",
    "clip_t": "CLIP-T",
    "dino": "DINO",
    "dnc": "D&C",
    "sas": "SAS",
}
"""Each metric's column title."""
MSP_METRICS = ("clip_i", "clip_t", "sas")
"""The metrics of the MSP paper's Table 1."""


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def render_msp_table(msp_aggregates: dict[str, dict], weights: dict[str, str]) -> list[str]:
    """The MSP paper's Table 1: rows = configurations, columns = n subjects x (CLIP-I, CLIP-T, SAS)."""
    buckets = list(MSP_BUCKET_TITLES)
    head = (
        ["Configuration"]
        + [f"{MSP_BUCKET_TITLES[b]} {LABELS[m]}" for b in buckets for m in MSP_METRICS]
        + ["n (1/2/3/>3)"]
    )
    lines = ["### MSP Table 1 (CLIP-I / CLIP-T / SAS by number of subjects)", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, agg in msp_aggregates.items():
        cells = [_cell(agg[m][b]["mean"]) for b in buckets for m in MSP_METRICS]
        counts = "/".join(str(agg["clip_i"][b]["n"]) for b in buckets)
        lines.append("| " + " | ".join([config, *cells, counts]) + " |")
    segmenter = weights.get("subject_segmenter") or "none (SAS not computed)"
    return lines + ["", f"SAS: M_SAL {segmenter}.", ""]


def render_table(
    aggregates: dict[str, dict],
    weights: dict[str, str],
    settings: EvalSettings,
    msp_aggregates: dict[str, dict] | None = None,
) -> str:
    """Markdown: the poster's CP-CLIP / TI-CLIP table, then the other metrics in the same column layout."""
    buckets = list(BUCKET_TITLES)
    convention = "2.5·max(cos,0)" if settings.clip_t_convention == "clipscore" else "raw cosine"

    def table(title: str, names: list[str]) -> list[str]:
        head = (
            ["Configuration"]
            + [f"{BUCKET_TITLES[b]} {LABELS[m]}" for b in buckets for m in names]
            + ["n (≤3/4/5)", "weights"]
        )
        lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for config, agg in aggregates.items():
            cells = [_cell(agg[m][b]["mean"]) for b in buckets for m in names]
            counts = "/".join(str(agg[names[0]][b]["n"]) for b in buckets)
            lines.append("| " + " | ".join([config, *cells, counts, weights["clip"]]) + " |")
        return lines + [""]

    lines = ["# Personalization evaluation", ""]
    if weights["clip"] != "pretrained":
        lines += [
            f"> **weights: {weights['clip']}** — CLIP ran with {weights['clip']} weights; these numbers only show that the pipeline runs.",
            "",
        ]
    lines += table("Personalization alignment (Gen4Gen: CP-CLIP / TI-CLIP)", ["cp_clip", "ti_clip"])
    lines += table(
        "Subject fidelity and text alignment (CLIP-I, CLIP-T, DINO, Detect-and-Compare, SAS)",
        ["clip_i", "clip_t", "dino", "dnc", "sas"],
    )
    lines += render_msp_table(msp_aggregates or {}, weights)
    lines += [
        f"CLIP: {weights['clip_model']} ({weights['clip']}); detector: {weights['detector']}; DINO: {weights['dino']}.",
        (
            f"CLIP-T is {convention}; TI-CLIP is raw cosine with tokens replaced by class nouns; "
            f"detection threshold {settings.detection_threshold}; references reduced by {settings.ref_reduce}."
        ),
        "",
    ]
    return "\n".join(lines)


def render_plot(aggregates: dict[str, dict], path: Path) -> None:
    """One panel per metric, bars per configuration grouped by concept-count bucket."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(15, 6.5))
    buckets = list(BUCKET_TITLES)
    width = 0.8 / max(1, len(aggregates))
    for ax, metric in zip(axes.flat, METRICS):
        for i, (config, agg) in enumerate(aggregates.items()):
            values = [agg[metric][b]["mean"] or 0.0 for b in buckets]
            ax.bar(np.arange(len(buckets)) + i * width, values, width, label=config)
        ax.set_xticks(
            np.arange(len(buckets)) + width * (len(aggregates) - 1) / 2, [BUCKET_TITLES[b] for b in buckets]
        )
        ax.set_title(LABELS[metric])
        ax.set_xlabel("concepts")
    for ax in list(axes.flat)[len(METRICS) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())

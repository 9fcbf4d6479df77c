"""Generate held-out compositions with each personalized pipeline and score them, Gen4Gen-table style.

For every configuration (a `curate train` output folder, an SD 1.x/2.x, SDXL or FLUX.1 pipeline, a
base + LoRA folder, or any pipeline folder/id as a baseline row) the evaluator writes the export's concept sets on backgrounds no training caption
mentions (`personalization.prompts.heldout_prompts`), generates images, and scores each image with
CP-CLIP, TI-CLIP (Gen4Gen), CLIP-I, CLIP-T (DreamBooth/MSP), DINO, Detect-and-Compare (MuDI) and SAS
(MSP). This module runs the steps in order and writes results.json; each step has its own module:

- `personalization.eval_pipelines`: which model a plain configuration is (family, base, LoRA, tokens);
- `personalization.heldout_images`: a plain configuration's images (one text-to-image call each);
- `personalization.msp_rows`: the MSP rows (`MSPConfiguration`), made by the MSP loop on a pipeline;
- `personalization.heldout_scores`: every image's scores, and the choices the papers leave open;
- `personalization.results_table`: table.md (Gen4Gen's table, MSP's Table 1) and plot.png.

The export is read once (`personalization.data.read_export`) and handed to each of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curation.core.buckets import MSP_BUCKETS
from curation.core.errors import CurateError
from curation.core.progress import ProgressFn, no_progress
from curation.core.workspace import atomic_write_json, atomic_write_text
from personalization.data import read_export
from personalization.eval_pipelines import ModelSource, resolve_source
from personalization.eval_settings import EvalSettings
from personalization.heldout_images import generate_images
from personalization.heldout_scores import load_sas, score_rows
from personalization.metrics import aggregate
from personalization.msp_rows import MSPConfiguration, check_msp_rows, generate_msp_images
from personalization.results_table import METRICS, MSP_METRICS, render_plot, render_table


@dataclass
class EvalReport:
    out_dir: str
    table_path: str
    json_path: str
    plot_path: str
    weights: dict[str, str]
    aggregates: dict[str, Any] = field(default_factory=dict)
    images: int = 0


def evaluate(
    configurations: dict[str, str | Path | MSPConfiguration],
    export_dir: Path,
    out_dir: Path,
    settings: EvalSettings | None = None,
    device: str | None = None,
    progress: ProgressFn = no_progress,
    bases: dict[str, str] | None = None,
) -> EvalReport:
    """Generate and score held-out prompts for each configuration; write table.md, results.json, plot.png.

    Args:
        configurations: row label -> `curate train` output folder (its prompting strategy is read from
            run.json) or a plain pipeline folder / hub id (a baseline row, plain prompts), or an
            `MSPConfiguration` (a row made by the MSP loop; SAL needs `settings.subject_segmenter`).
        export_dir: the export the models were trained on (concept sets, tokens, references).
        out_dir: receives images/<label>/*.png, results.json (settings, weights, every row, aggregates),
            table.md and plot.png; files are replaced atomically, so a failed run keeps the old ones.
        settings: models and the ambiguous choices documented in `personalization.heldout_scores`.
        bases: row label -> the base pipeline of that row's LoRA folder, when its record names none
            (or to load a local copy of the recorded one).
    """
    settings = settings or EvalSettings()
    if not configurations:
        raise CurateError("nothing to evaluate: give at least one configuration")
    bad = [label for label in configurations if not label or "/" in label]
    if bad:
        raise CurateError(f"configuration labels must be non-empty and contain no '/': {bad[0]!r}")
    msp_rows = [c for c in configurations.values() if isinstance(c, MSPConfiguration)]
    check_msp_rows(msp_rows, settings)
    bases = bases or {}
    unknown = sorted(set(bases) - set(configurations))
    if unknown:
        raise CurateError(f"--base names no configuration: {unknown[0]!r}")
    export = read_export(Path(export_dir))
    models: dict[str, ModelSource | MSPConfiguration] = {
        label: source
        if isinstance(source, MSPConfiguration)
        else resolve_source(source, export, bases.get(label, ""))
        for label, source in configurations.items()
    }  # every model resolved (families read, bases found) before any image
    out_dir = Path(out_dir)
    msal, sas_refs = load_sas(export, settings, device)  # a bad segmenter fails before any image
    if msp_rows:
        from personalization.heldout_layouts import concept_records

        concept_records(export)  # an export MSP cannot paste fails before any image too
    rows: list[dict] = []
    for label, source in models.items():
        if isinstance(source, MSPConfiguration):
            rows += generate_msp_images(label, source, export, settings, out_dir, device, progress, msal)
        else:
            rows += generate_images(label, source, export, settings, out_dir, device, progress)
    weights = score_rows(rows, export, settings, out_dir, device, progress, msal, sas_refs)
    aggregates = {
        label: aggregate([r for r in rows if r["configuration"] == label], METRICS)
        for label in configurations
    }
    msp_aggregates = {
        label: aggregate(
            [r for r in rows if r["configuration"] == label], MSP_METRICS, MSP_BUCKETS, "msp_bucket"
        )
        for label in configurations
    }
    json_path, table_path, plot_path = out_dir / "results.json", out_dir / "table.md", out_dir / "plot.png"
    atomic_write_json(
        json_path,
        {
            "settings": asdict(settings),
            "weights": weights,
            "configurations": {
                k: str(v) if isinstance(v, MSPConfiguration) else v.describe() for k, v in models.items()
            },
            "aggregates": aggregates,
            "msp_aggregates": msp_aggregates,
            "rows": rows,
        },
    )
    atomic_write_text(table_path, render_table(aggregates, weights, settings, msp_aggregates))
    render_plot(aggregates, plot_path)
    return EvalReport(
        out_dir=str(out_dir),
        table_path=str(table_path),
        json_path=str(json_path),
        plot_path=str(plot_path),
        weights=weights,
        aggregates=aggregates,
        images=len(rows),
    )

"""Generate held-out compositions with each personalized pipeline and score them, Gen4Gen-table style.

For every configuration (a `curate train` output folder, or any diffusers pipeline folder/id as a
baseline row) the evaluator writes the export's concept sets on backgrounds no training caption
mentions (`personalization.prompts.heldout_prompts`), generates images, and scores each image:

- CP-CLIP, TI-CLIP (Gen4Gen), CLIP-I, CLIP-T (DreamBooth/MSP), DINO, Detect-and-Compare (MuDI);
  definitions in `personalization.metrics`.

Choices the papers leave open, all parameters of `evaluate`:
- The detector is queried with the prompt's class nouns ("cat", "dog"), all in one pass, so each
  box answers the noun it matches best; a concept's crop is its noun's highest-scoring box at or above
  `detection_threshold` (0.1, OWL-ViT's usual value). Boxes are clipped to the image; one thinner
  than `min_box_px` counts as no detection. Two concepts sharing a noun share their best box.
- References are the export's `concepts/<id>/refs` images as they are (not masked);
  a concept's similarity is the mean (`ref_reduce="mean"`) or max cosine over them.
- CLIP-T uses the token-free prompt (tokens -> class nouns, the same text as TI-CLIP) and defaults
  to CLIPScore's `2.5 * max(cos, 0)` (`clip_t_convention`); TI-CLIP is always the raw cosine.
- CLIP-I and DINO compare the whole generated image (not crops) with the references.
- Detect-and-Compare counts class-agnostic NMS survivors (IoU 0.5) over all queried nouns and
  compares their crops with the references in DINO space (MuDI used DreamSim/DINOv2).
- Columns follow the poster: <=3, 4 and 5 concepts (more than 5 counted as 5).
- SAS (MSP) runs when `subject_segmenter` names a `curate train-segmenter` folder whose classes cover
  the export's concepts: a subject's region is where M_SAL's argmax is its class (the images carry no
  paste record); an empty region scores 0. References are the export's refs isolated by their masks.
  Without a segmenter the SAS cells read "–".
- The MSP paper's Table 1 is printed too: CLIP-I, CLIP-T and SAS for 1, 2, 3 and more than 3 subjects.
- MSP rows (`MSPConfiguration`) run `generators.msp.MSPGenerator` on a pipeline instead of a plain
  text-to-image call: each held-out prompt gets a rules-planner layout on the pipeline's canvas, and
  the export's references pasted by it on a procedural background are the scaffold and the segments
  (`personalization.heldout_layouts`), exactly as `curate generate --generator msp` makes a
  candidate. The rows differ only by scaffold on/off and SAL on/off; they share layouts and seeds,
  and SAL uses the same M_SAL as SAS (`subject_segmenter`), as the paper does. Their prompts are
  MSP's own (a local prompt per segment, a global one), not the training strategy's.

Numbers computed with random CLIP weights are labelled `weights: random` in every output: they show
the pipeline runs, not how good a model is.
"""

from __future__ import annotations

import gc
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curation.core.buckets import BUCKET_TITLES, MSP_BUCKET_TITLES, MSP_BUCKETS, bucket, msp_bucket
from curation.core.config import MSPSettings
from curation.core.errors import CurateError
from curation.core.progress import ProgressFn, no_progress
from curation.core.workspace import atomic_write_bytes, atomic_write_json, atomic_write_text
from personalization import metrics as M
from personalization.data import Export, read_export
from personalization.prompts import HELDOUT_BACKGROUNDS, EvalPrompt, PromptStrategy, heldout_prompts

METRICS = ("cp_clip", "ti_clip", "clip_i", "clip_t", "dino", "dnc", "sas")
LABELS = {
    "cp_clip": "CP-CLIP",
    "ti_clip": "TI-CLIP",
    "clip_i": "CLIP-I",
    "clip_t": "CLIP-T",
    "dino": "DINO",
    "dnc": "D&C",
    "sas": "SAS",
}
MSP_METRICS = ("clip_i", "clip_t", "sas")


@dataclass(frozen=True)
class MSPConfiguration:
    """A row made by the MSP loop on `model` (a `curate train` folder, pipeline folder or hub id)."""

    model: str
    scaffold: bool = True
    sal: bool = False

    def __str__(self) -> str:
        return f"msp (scaffold {'on' if self.scaffold else 'off'}, SAL {'on' if self.sal else 'off'}): {self.model}"


MSP_VARIANTS: dict[str, tuple[str, bool, bool]] = {
    "msp": ("MSP", True, False),
    "msp-noscaffold": ("MSP without scaffold", False, False),
    "msp-sal": ("MSP + SAL", True, True),
    "msp-noscaffold-sal": ("MSP without scaffold + SAL", False, True),
}
"""Name -> (row label, scaffold, SAL): the MSP paper's ablation rows."""


def msp_configurations(model: str, names: list[str]) -> dict[str, MSPConfiguration]:
    """Row label -> MSP configuration on `model` for each named variant of MSP_VARIANTS."""
    unknown = [name for name in names if name not in MSP_VARIANTS]
    if unknown:
        raise CurateError(f"unknown MSP configuration {unknown[0]!r}: use {', '.join(MSP_VARIANTS)}")
    return {
        MSP_VARIANTS[name][0]: MSPConfiguration(model, MSP_VARIANTS[name][1], MSP_VARIANTS[name][2])
        for name in dict.fromkeys(names)
    }


@dataclass
class EvalSettings:
    """Everything that changes a number; saved beside the results."""

    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    detector: str = "google/owlv2-base-patch16-ensemble"
    dino: str = "facebook/dinov2-base"
    backgrounds: tuple[str, ...] = HELDOUT_BACKGROUNDS
    prompts_per_set: int = 2
    single_subjects: bool = False
    images_per_prompt: int = 2
    steps: int = 50
    guidance: float = 6.0
    resolution: int | None = None
    seed: int = 0
    detection_threshold: float = 0.1
    min_box_px: int = 4
    ref_reduce: M.RefReduce = "mean"
    clip_t_convention: M.ClipTConvention = "clipscore"
    subject_segmenter: str = ""
    # MSP rows only (steps and guidance above apply to them too)
    kappa: float = MSPSettings().kappa
    scaffold_strength: float = MSPSettings().scaffold_strength
    sal_scale: float = MSPSettings().sal_scale
    sal_steps: int = MSPSettings().sal_steps


@dataclass
class EvalReport:
    out_dir: str
    table_path: str
    json_path: str
    plot_path: str
    weights: dict[str, str]
    aggregates: dict[str, Any] = field(default_factory=dict)
    images: int = 0


def _load_pipeline(source: str | Path, device: str | None):
    """A `curate train` folder, a pipeline folder, or a hub id; plus the strategy it was trained with."""
    from diffusers import StableDiffusionPipeline

    path = Path(source)
    strategy = PromptStrategy()
    if (path / "run.json").exists():
        strategy = PromptStrategy(**json.loads((path / "run.json").read_text())["strategy"])
    try:
        pipe = StableDiffusionPipeline.from_pretrained(_pipeline_source(source), safety_checker=None)
    except (OSError, ValueError) as exc:
        raise CurateError(f"cannot load pipeline {source!s}: {str(exc).splitlines()[0]}") from exc
    pipe.set_progress_bar_config(disable=True)
    if device:
        pipe.to(device)
    elif _cuda():
        pipe.to("cuda")
    return pipe, strategy


def _pipeline_source(source: str | Path) -> str:
    """The pipeline folder of a `curate train` output (its pipeline/), else the folder or hub id as given."""
    path = Path(source)
    if (path / "pipeline" / "model_index.json").exists():
        return str(path / "pipeline")
    return str(path) if path.exists() else str(source)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _row(label: str, path: Path, out_dir: Path, prompt: EvalPrompt, text: str) -> dict:
    """An image's row before scoring: what made it and its concept-count buckets."""
    return {
        "configuration": label,
        "image": path.relative_to(out_dir).as_posix(),
        "prompt": text,
        "plain_text": prompt.plain_text,
        "background": prompt.background,
        "concepts": list(prompt.concepts),
        "n_concepts": len(prompt.concepts),
        "bucket": bucket(len(prompt.concepts)),
        "msp_bucket": msp_bucket(len(prompt.concepts)),
    }


def _seed(settings: EvalSettings, p_index: int, k: int) -> int:
    """Image k of prompt p: the same seed in every configuration, so rows differ by the model only."""
    return settings.seed + 1000 * p_index + k


def _release_memory() -> None:
    """Return a dropped pipeline's memory before the next configuration loads its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _generate(
    label: str,
    source: str | Path,
    export: Export,
    settings: EvalSettings,
    out_dir: Path,
    device: str | None,
    progress: ProgressFn,
) -> list[dict]:
    """Generate and save every held-out image of one configuration; rows without scores yet."""
    import torch

    pipe, strategy = _load_pipeline(source, device)
    prompts: list[EvalPrompt] = heldout_prompts(
        export, strategy, settings.backgrounds, settings.prompts_per_set, settings.single_subjects
    )
    size = {"height": settings.resolution, "width": settings.resolution} if settings.resolution else {}
    rows = []
    total = len(prompts) * settings.images_per_prompt
    for p_index, prompt in enumerate(prompts):
        for k in range(settings.images_per_prompt):
            generator = torch.Generator().manual_seed(_seed(settings, p_index, k))
            image = pipe(
                prompt.prompt,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                generator=generator,
                **size,
            ).images[0]
            path = out_dir / "images" / label / f"{p_index:04d}_{k}.png"
            _save_png(image, path)
            rows.append(_row(label, path, out_dir, prompt, prompt.prompt))
            progress(f"generate {label}", len(rows), total)
    del pipe
    _release_memory()
    return rows


def _generate_msp(
    label: str,
    config: MSPConfiguration,
    export: Export,
    settings: EvalSettings,
    out_dir: Path,
    device: str | None,
    progress: ProgressFn,
    msal: Any = None,
) -> list[dict]:
    """Generate every held-out image of one MSP row: one MSP call per prompt, its images batched.

    The model loads as `curate generate` loads it (SD 1.x/2.x or SDXL; fp16 on a GPU).
    """
    from PIL import Image

    from generators.msp.pipeline import MSPGenerator
    from generators.msp.segments import masks_from_layers
    from personalization.heldout_layouts import concept_records, heldout_plans, paste_composition

    generator = MSPGenerator.from_pretrained(_pipeline_source(config.model), device=device)
    pipe = generator.pipe
    size = settings.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    concepts = concept_records(export)
    prompts = heldout_prompts(
        export, PromptStrategy(), settings.backgrounds, settings.prompts_per_set, settings.single_subjects
    )
    plans = heldout_plans(export, prompts, concepts, size, settings.seed)
    if config.sal:
        msal.model.to(pipe.device)
        generator.sal = msal
    msp = MSPSettings(
        model=config.model,
        scaffold=config.scaffold,
        kappa=settings.kappa,
        steps=settings.steps,
        guidance_scale=settings.guidance,
        scaffold_strength=settings.scaffold_strength,
        sal_model=msal.source if config.sal else "",
        sal_scale=settings.sal_scale,
        sal_steps=settings.sal_steps,
    )
    rows = []
    total = len(prompts) * settings.images_per_prompt
    for p_index, (prompt, plan) in enumerate(zip(prompts, plans, strict=True)):
        images = range(settings.images_per_prompt)
        pasted = [paste_composition(export, plan, k, concepts) for k in images]
        results = generator(
            [plan] * len(pasted),
            concepts,
            [_seed(settings, p_index, k) for k in images],
            settings=msp,
            scaffolds=[Image.fromarray(c.image) for c in pasted] if config.scaffold else None,
            masks=[masks_from_layers(c.layers, plan.width, plan.height) for c in pasted],
        )
        for k, result in zip(images, results, strict=True):
            path = out_dir / "images" / label / f"{p_index:04d}_{k}.png"
            _save_png(result.image, path)
            rows.append(
                _row(label, path, out_dir, prompt, result.provenance["global_prompt"])
                | {"plan": plan.model_dump(mode="json"), "msp": result.provenance}
            )
            progress(f"generate {label}", len(rows), total)
    del generator, pipe
    _release_memory()
    return rows


def _save_png(image, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _score(
    rows: list[dict],
    export: Export,
    settings: EvalSettings,
    out_dir: Path,
    device: str | None,
    progress: ProgressFn,
    msal: Any = None,
    sas_refs: dict[str, np.ndarray] | None = None,
) -> dict[str, str]:
    """Fill every row's metrics in place (SAS when `msal` is given); return which weights they came from."""
    from PIL import Image

    from curation.scores.clip import load_clip
    from curation.scores.presence import best_per_label, crop, load_detector
    from personalization.vision import load_dino

    clip = load_clip(settings.clip_model, settings.clip_pretrained, device=device)
    detector = load_detector(settings.detector, device)
    dino = load_dino(settings.dino, device)

    def open_rgb(path: Path):
        with Image.open(path) as image:
            return image.convert("RGB")

    clip_refs, dino_refs = {}, {}
    for cid, concept in export.concepts.items():
        refs = [open_rgb(p) for p in concept.refs]
        clip_refs[cid] = clip.embed_images(refs)
        dino_refs[cid] = dino.embed(refs)

    for index, row in enumerate(rows):
        image = open_rgb(out_dir / row["image"])
        concepts = [export.concepts[c] for c in row["concepts"]]
        nouns = [c.class_noun for c in concepts]
        crefs = [clip_refs[c.concept_id] for c in concepts]
        drefs = [dino_refs[c.concept_id] for c in concepts]
        image_emb = clip.embed_images([image])[0]
        text_emb = clip.embed_texts([row["plain_text"]])[0]
        detections = [
            d
            for d in detector.detect(image, list(dict.fromkeys(nouns)), settings.detection_threshold)
            if crop(image, d, settings.min_box_px) is not None
        ]
        best = best_per_label(detections, nouns)
        crops = [None if d is None else crop(image, d, settings.min_box_px) for d in best]
        found = [c for c in crops if c is not None]
        found_embs = iter(clip.embed_images(found)) if found else iter(())
        crop_embs = [None if c is None else next(found_embs) for c in crops]
        kept = M.nms(detections)
        kept_crops = [crop(image, d, settings.min_box_px) for d in kept]
        dnc_embs = dino.embed(kept_crops) if kept_crops else np.zeros((0, 1))
        row.update(
            cp_clip=M.cp_clip(crop_embs, crefs, settings.ref_reduce),
            ti_clip=M.ti_clip(image_emb, text_emb),
            clip_i=M.clip_i(image_emb, crefs, settings.ref_reduce),
            clip_t=M.clip_t(image_emb, text_emb, settings.clip_t_convention),
            dino=M.clip_i(dino.embed([image])[0], drefs, settings.ref_reduce),
            dnc=M.detect_and_compare(dnc_embs, drefs, settings.ref_reduce),
            detected=[None if d is None else {"box": list(d.box), "score": d.score} for d in best],
            n_detected=len(kept),
            sas=_sas(msal, sas_refs or {}, image, row["concepts"], settings.ref_reduce) if msal else None,
        )
        progress("score", index + 1, len(rows))
    return {
        "clip": getattr(clip, "weights", "unknown"),
        "clip_model": f"{settings.clip_model}/{settings.clip_pretrained}",
        "detector": settings.detector,
        "dino": settings.dino,
        "subject_segmenter": settings.subject_segmenter,
    }


def _load_sas(export: Export, settings: EvalSettings, device: str | None):
    """M_SAL and each concept's reference SAS embeddings (refs isolated by the export's masks)."""
    if not settings.subject_segmenter:
        return None, {}
    from curation.models.subject_segmenter import SubjectSegmenter
    from curation.scores.sas import reference_embeddings
    from personalization.heldout_layouts import reference_masks

    msal = SubjectSegmenter.load(settings.subject_segmenter, device)
    msal.check_concepts(list(export.concepts), source=settings.subject_segmenter)
    refs = {cid: reference_embeddings(msal, reference_masks(export, cid)) for cid in export.concepts}
    return msal, refs


def _sas(msal, refs: dict[str, np.ndarray], image, concepts: list[str], reduce: M.RefReduce) -> float:
    """SAS of one generated image: each subject where M_SAL finds it, vs its references."""
    from curation.scores.sas import region_embeddings

    rgb = np.asarray(image)
    found = msal.regions(rgb, concepts)
    present = [c for c in concepts if found[c].any()]
    embs = dict(zip(present, region_embeddings(msal, rgb, [found[c] for c in present])))
    return M.sas([embs.get(c) for c in concepts], [refs[c] for c in concepts], reduce)


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


def evaluate(
    configurations: dict[str, str | Path | MSPConfiguration],
    export_dir: Path,
    out_dir: Path,
    settings: EvalSettings | None = None,
    device: str | None = None,
    progress: ProgressFn = no_progress,
) -> EvalReport:
    """Generate and score held-out prompts for each configuration; write table.md, results.json, plot.png.

    Args:
        configurations: row label -> `curate train` output folder (its prompting strategy is read from
            run.json) or a plain pipeline folder / hub id (a baseline row, plain prompts), or an
            `MSPConfiguration` (a row made by the MSP loop; SAL needs `settings.subject_segmenter`).
        export_dir: the export the models were trained on (concept sets, tokens, references).
        out_dir: receives images/<label>/*.png, results.json (settings, weights, every row, aggregates),
            table.md and plot.png; files are replaced atomically, so a failed run keeps the old ones.
        settings: models and the ambiguous choices documented in this module's docstring.
    """
    settings = settings or EvalSettings()
    if not configurations:
        raise CurateError("nothing to evaluate: give at least one configuration")
    bad = [label for label in configurations if not label or "/" in label]
    if bad:
        raise CurateError(f"configuration labels must be non-empty and contain no '/': {bad[0]!r}")
    msp_rows = {label: c for label, c in configurations.items() if isinstance(c, MSPConfiguration)}
    if any(c.sal for c in msp_rows.values()) and not settings.subject_segmenter:
        raise CurateError("MSP rows with SAL need a subject segmenter (M_SAL): pass --subject-segmenter")
    if any(c.scaffold for c in msp_rows.values()) and int(settings.steps * settings.scaffold_strength) < 1:
        raise CurateError(
            f"MSP rows with a scaffold run steps x scaffold_strength = {settings.steps} x "
            f"{settings.scaffold_strength} steps, less than one: raise --steps"
        )
    export = read_export(Path(export_dir))
    out_dir = Path(out_dir)
    msal, sas_refs = _load_sas(export, settings, device)  # a bad segmenter fails before any image
    if msp_rows:
        from personalization.heldout_layouts import concept_records

        concept_records(export)  # an export MSP cannot paste fails before any image too
    rows: list[dict] = []
    for label, source in configurations.items():
        if isinstance(source, MSPConfiguration):
            rows += _generate_msp(label, source, export, settings, out_dir, device, progress, msal)
        else:
            rows += _generate(label, source, export, settings, out_dir, device, progress)
    weights = _score(rows, export, settings, out_dir, device, progress, msal, sas_refs)
    aggregates = {
        label: M.aggregate([r for r in rows if r["configuration"] == label], METRICS)
        for label in configurations
    }
    msp_aggregates = {
        label: M.aggregate(
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
            "configurations": {k: str(v) for k, v in configurations.items()},
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

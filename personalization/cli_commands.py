"""`curate train` and `curate evaluate`: typer-annotated functions the main CLI registers with one line each.

    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)

They only parse options and call `personalization.train.train` / `personalization.evaluate.evaluate`;
torch and diffusers are imported inside, so `curate --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curation.core.errors import CurateError

DEFAULT_SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def train_command(
    export: Annotated[Path, typer.Argument(help="A `curate export` folder (metadata.jsonl, concepts/).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Run folder: checkpoints, pipeline/ or lora/, report.")
    ],
    base: Annotated[
        str, typer.Option(help="sd (SD 1.x/2.x: Custom Diffusion or LoRA), sdxl or flux (FLUX.1): LoRA.")
    ] = "sd",
    pretrained: Annotated[
        str,
        typer.Option(
            help="Hub id or local pipeline folder; '' = per base: sd " + DEFAULT_SD + ", sdxl "
            "stabilityai/stable-diffusion-xl-base-1.0, flux black-forest-labs/FLUX.1-dev."
        ),
    ] = "",
    method: Annotated[
        str, typer.Option(help="custom_diffusion (K/V + tokens) or lora (PEFT); sdxl and flux train lora.")
    ] = "",
    steps: Annotated[int, typer.Option(help="Total optimisation steps of the run.")] = 500,
    learning_rate: Annotated[float, typer.Option(help="0 = method default (1e-5 CD, 1e-4 LoRA).")] = 0.0,
    batch_size: Annotated[int, typer.Option()] = 1,
    resolution: Annotated[
        int,
        typer.Option(
            help="Training image size in pixels (sdxl: a multiple of 8, flux: of 16); 0 = per base: sd 512, "
            "sdxl 1024, flux 512."
        ),
    ] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every K steps.")] = 100,
    mixed_precision: Annotated[
        str, typer.Option(help="no | fp16 | bf16; '' = per base: sd no, sdxl/flux bf16 (no fp16 there).")
    ] = "",
    lora_rank: Annotated[int, typer.Option()] = 4,
    source: Annotated[
        str, typer.Option(help="compositions (the export's images) or sources (reference photos only).")
    ] = "compositions",
    repeat: Annotated[int, typer.Option(help="Write each concept phrase this many times.")] = 1,
    separate_background: Annotated[
        bool, typer.Option("--separate-background", help="Identity part and background as separate clauses.")
    ] = False,
    gen4gen: Annotated[
        bool, typer.Option("--gen4gen", help="Gen4Gen prompting preset: --repeat 2 --separate-background.")
    ] = False,
    seed: Annotated[int, typer.Option()] = 0,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on CPU even when a GPU is present.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from the newest checkpoint.")
    ] = True,
    prior_preservation: Annotated[
        bool,
        typer.Option(
            "--prior-preservation", help="Also denoise the export's class_images/ (CD's regularisation)."
        ),
    ] = False,
    prior_loss_weight: Annotated[float, typer.Option(help="Weight of the class images' loss.")] = 1.0,
    masked_loss: Annotated[
        bool,
        typer.Option(
            "--masked-loss",
            help="sdxl/flux: loss only inside each image's mask (refs) or boxes (compositions).",
        ),
    ] = False,
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="sdxl/flux: less GPU memory, ~25% slower.")
    ] = False,
) -> None:
    """Personalize a pipeline on an export's concepts: SD 1.x/2.x (Custom Diffusion or LoRA), SDXL or FLUX.1 LoRA.

    --base sdxl|flux: LoRA + each concept token as a trained embedding, saved as lora/ for
    `load_lora_weights` + `load_textual_inversion`; a bf16 GPU (VRAM, FLUX.1-dev's gated licence:
    README, "Train and evaluate").
    """
    from curation.core.progress import progress_bar
    from personalization.prompts import GEN4GEN_STRATEGY, PromptStrategy
    from personalization.train import train
    from personalization.train_lora import train_lora

    if base not in ("sd", "sdxl", "flux"):
        raise CurateError(f"unknown base {base!r}: use sd, sdxl or flux")
    method = method or ("custom_diffusion" if base == "sd" else "lora")
    if method not in ("custom_diffusion", "lora"):
        raise CurateError(f"unknown method {method!r}: use custom_diffusion or lora")
    if base != "sd" and method != "lora":
        raise CurateError(f"--base {base} trains LoRA only; drop --method {method}")
    mixed_precision = mixed_precision or ("no" if base == "sd" else "bf16")
    if mixed_precision not in ("no", "fp16", "bf16") or (base != "sd" and mixed_precision == "fp16"):
        offered = "no, fp16 or bf16" if base == "sd" else "no or bf16"
        raise CurateError(
            f"mixed precision {mixed_precision!r} is not offered for --base {base}: use {offered}"
        )
    if base == "sd" and (masked_loss or gradient_checkpointing):
        raise CurateError("--masked-loss and --gradient-checkpointing are offered for --base sdxl and flux")
    strategy = (
        PromptStrategy(repeat=GEN4GEN_STRATEGY.repeat, separate_background=True, source=source)
        if gen4gen
        else PromptStrategy(repeat=repeat, separate_background=separate_background, source=source)
    )
    common = {
        "strategy": strategy,
        "batch_size": batch_size,
        "checkpoint_every": checkpoint_every,
        "mixed_precision": mixed_precision,
        "lora_rank": lora_rank,
        "seed": seed,
        "cpu": cpu,
        "resume": resume,
        "prior_loss_weight": prior_loss_weight if prior_preservation else None,
    }
    with progress_bar() as progress:
        if base == "sd":
            report = train(
                export, output, pretrained or DEFAULT_SD, method, steps, learning_rate=learning_rate or None,
                resolution=resolution or 512, progress=progress, **common,
            )  # fmt: skip
        else:
            report = train_lora(
                export, output, base, pretrained, steps, learning_rate=learning_rate or 1e-4,
                resolution=resolution, masked_loss=masked_loss, gradient_checkpointing=gradient_checkpointing,
                progress=progress, **common,
            )  # fmt: skip
    last = f", last loss {report.losses[-1]:.4f}" if report.losses else ""
    prior = f" + {report.class_images} class images" if report.class_images else ""
    peak = f", peak {report.peak_memory_mb:.0f} MiB" if report.peak_memory_mb else ""
    saved = "pipeline" if base == "sd" else "LoRA + token embeddings"
    typer.echo(
        f"trained {report.method} steps {report.start_step}->{report.steps} on {report.examples} images{prior} "
        f"({report.steps_per_second} steps/s on {report.device}{peak}{last}); {saved}: {report.pipeline_dir}"
    )


def _configurations(
    runs: list[str], usage: str = "--run takes LABEL=PATH (e.g. 'CD + MyCanvas=runs/cd')"
) -> dict[str, str]:
    configurations = {}
    for item in runs:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise CurateError(f"{usage}, got {item!r}")
        if label in configurations:
            raise CurateError(f"configuration label {label!r} given twice")
        configurations[label] = path
    return configurations


def evaluate_command(
    export: Annotated[Path, typer.Argument(help="The export the runs were trained on.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for images, table.md, results.json, plot.png.")
    ],
    clip_model: Annotated[str, typer.Option(help="open_clip architecture.")] = "ViT-L-14",
    clip_pretrained: Annotated[
        str, typer.Option(help="open_clip tag or checkpoint file ('' = random weights).")
    ] = "openai",
    detector: Annotated[
        str, typer.Option(help="OWL-ViT / OWLv2 id or folder.")
    ] = "google/owlv2-base-patch16-ensemble",
    dino: Annotated[str, typer.Option(help="DINOv2 id or folder.")] = "facebook/dinov2-base",
    prompts_per_set: Annotated[int, typer.Option(help="New-background prompts per concept set.")] = 2,
    single_subjects: Annotated[
        bool,
        typer.Option("--single-subjects", help="Each concept alone is a set too (MSP Table 1's n=1 column)."),
    ] = False,
    images_per_prompt: Annotated[int, typer.Option()] = 2,
    steps: Annotated[
        int, typer.Option(help="Sampling steps; 0 = per base: SD/SDXL 50, FLUX.1 28 (MSP rows: 50).")
    ] = 0,
    guidance: Annotated[
        float, typer.Option(help="Guidance scale; -1 = per base: SD/SDXL 6.0, FLUX.1 3.5.")
    ] = -1.0,
    resolution: Annotated[
        int, typer.Option(help="Image side; 0 = per base: SD its pipeline's, SDXL/FLUX.1 1024.")
    ] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    detection_threshold: Annotated[float, typer.Option()] = 0.1,
    ref_reduce: Annotated[str, typer.Option(help="mean | max cosine over a concept's references.")] = "mean",
    clip_t: Annotated[
        str, typer.Option(help="CLIP-T convention: clipscore (2.5*max(cos,0)) | cosine.")
    ] = "clipscore",
    device: Annotated[str, typer.Option(help="cuda / cpu; empty = GPU when present.")] = "",
    subject_segmenter: Annotated[
        str,
        typer.Option(
            help="A `curate train-segmenter` folder: adds SAS, and guides the SAL rows; empty = no SAS."
        ),
    ] = "",
    run: Annotated[
        list[str] | None,
        typer.Option(
            help="LABEL=PATH: a `curate train` folder, an SD/SDXL/FLUX.1 pipeline folder or id, or a LoRA "
            "folder; repeat per row."
        ),
    ] = None,
    base: Annotated[
        list[str] | None,
        typer.Option(
            help="LABEL=BASE: the base pipeline of that row's LoRA folder when its record names none "
            "(or a local copy of it); repeat per row."
        ),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(help="auto (CPU float32; GPU float16, FLUX.1 bfloat16) | float32 | float16 | bfloat16."),
    ] = "auto",
    cpu_offload: Annotated[
        bool, typer.Option("--cpu-offload", help="Model CPU offload (FLUX.1 on a 24 GB GPU).")
    ] = False,
    msp: Annotated[
        str,
        typer.Option(help="`curate train` folder or pipeline id the MSP rows run on; empty = no MSP rows."),
    ] = "",
    msp_configs: Annotated[
        str,
        typer.Option(help="MSP rows, comma-separated: msp, msp-noscaffold, msp-sal, msp-noscaffold-sal."),
    ] = "msp,msp-noscaffold",
    kappa: Annotated[
        float, typer.Option(help="MSP rows: fraction of the steps run that are composition.")
    ] = 0.1,
    sal_scale: Annotated[float, typer.Option(help="MSP SAL rows: weight of the SAL gradient.")] = 1.0,
    sal_steps: Annotated[int, typer.Option(help="MSP SAL rows: guided steps, from the first one.")] = 10,
) -> None:
    """Generate held-out compositions per configuration and score CP-CLIP, TI-CLIP, CLIP-I/T, DINO, D&C, SAS."""
    from curation.core.progress import progress_bar
    from personalization.eval_settings import EvalSettings
    from personalization.evaluate import evaluate
    from personalization.msp_rows import MSPConfiguration, msp_configurations

    if ref_reduce not in ("mean", "max") or clip_t not in ("clipscore", "cosine"):
        raise CurateError("--ref-reduce takes mean|max and --clip-t takes clipscore|cosine")
    if not 0.0 <= kappa <= 1.0 or sal_scale < 0 or sal_steps < 0:
        raise CurateError("--kappa takes 0..1, --sal-scale and --sal-steps at least 0")
    if dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise CurateError(f"unknown --dtype {dtype!r}: use auto, float32, float16 or bfloat16")
    configurations: dict[str, str | Path | MSPConfiguration] = dict(_configurations(run or []))
    bases = _configurations(base or [], "--base takes LABEL=BASE (e.g. 'SDXL LoRA=stabilityai/...')")
    if msp:
        names = [name.strip() for name in msp_configs.split(",") if name.strip()]
        for label, config in msp_configurations(msp, names).items():
            if label in configurations:
                raise CurateError(f"configuration label {label!r} given twice")
            configurations[label] = config
    if not configurations:
        raise CurateError("nothing to evaluate: give --run LABEL=PATH and/or --msp PATH")
    settings = EvalSettings(
        clip_model=clip_model,
        clip_pretrained=clip_pretrained,
        detector=detector,
        dino=dino,
        prompts_per_set=prompts_per_set,
        single_subjects=single_subjects,
        images_per_prompt=images_per_prompt,
        steps=steps or None,
        guidance=None if guidance < 0 else guidance,
        resolution=resolution or None,
        dtype=dtype,
        cpu_offload=cpu_offload,
        seed=seed,
        detection_threshold=detection_threshold,
        ref_reduce=ref_reduce,
        clip_t_convention=clip_t,  # type: ignore[arg-type]
        subject_segmenter=subject_segmenter,
        kappa=kappa,
        sal_scale=sal_scale,
        sal_steps=sal_steps,
    )
    with progress_bar() as progress:
        report = evaluate(
            configurations,
            export,
            output,
            settings,
            device=device or None,
            progress=progress,
            bases=bases,
        )
    typer.echo(Path(report.table_path).read_text())
    typer.echo(
        f"{report.images} images; table {report.table_path}; numbers {report.json_path}; plot {report.plot_path}"
    )


def train_segmenter_command(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for segmenter.json, model.pt, checkpoint.pt.")
    ],
    workspace: Annotated[
        Path,
        typer.Option(
            "--workspace", "-w", envvar="CURATE_WORKSPACE", help="The workspace folder (holds curate.toml)."
        ),
    ] = Path("."),
    encoder: Annotated[str, typer.Option(help="smp encoder (the paper: resnet34).")] = "resnet34",
    encoder_weights: Annotated[
        str, typer.Option(help="Encoder init to try ('' = random); random when it cannot be loaded.")
    ] = "imagenet",
    size: Annotated[int, typer.Option(help="Training canvas side in pixels.")] = 512,
    epochs: Annotated[int, typer.Option()] = 14,
    batch_size: Annotated[int, typer.Option()] = 4,
    learning_rate: Annotated[float, typer.Option()] = 1e-4,
    cutouts_per_ref: Annotated[
        int, typer.Option(help="Augmented cut-outs per reference photo per epoch.")
    ] = 4,
    val_fraction: Annotated[
        float, typer.Option(help="Share of composites held out for validation IoU.")
    ] = 0.15,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="cuda / cpu; empty = GPU when present.")] = "",
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from checkpoint.pt.")] = True,
) -> None:
    """Train MSP's subject-aware segmenter (M_SAL) on the workspace's composites and reference cut-outs."""
    from curation.core.progress import progress_bar
    from curation.core.workspace import Workspace
    from curation.models.subject_segmenter import SegmenterSettings
    from personalization.segmenter_training import train_segmenter

    if size < 32 or size % 32 or epochs < 1 or batch_size < 1 or not 0 <= val_fraction < 1:
        raise CurateError(
            "--size must be a multiple of 32, --epochs/--batch-size >= 1, --val-fraction in [0, 1)"
        )
    settings = SegmenterSettings(
        encoder=encoder,
        encoder_weights=encoder_weights,
        size=size,
        epochs=epochs,
        batch_size=batch_size,
        lr=learning_rate,
        cutouts_per_ref=cutouts_per_ref,
        val_fraction=val_fraction,
        seed=seed,
    )
    with progress_bar() as progress:
        report = train_segmenter(
            Workspace.open(workspace),
            output,
            settings,
            resume=resume,
            device=device or None,
            progress=progress,
        )
    ious = ", ".join(f"{c} {'–' if v is None else f'{v:.2f}'}" for c, v in report.val_iou.items())
    typer.echo(
        f"trained {report.epochs_run} epochs on {report.train_composites} composites + "
        f"{report.cutouts_per_epoch} cut-outs/epoch ({report.images_per_s:.1f} images/s; encoder "
        f"{report.encoder_weights}); validation IoU on {report.val_composites} held-out composites: {ious}; "
        f"segmenter: {report.out_dir}"
    )

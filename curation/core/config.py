"""`curate.toml`: one pydantic model per stage, validated on load, with offline defaults.

Defaults are chosen so a fresh machine with no weights and no API key runs the whole chain;
real model ids are one line of the file away. Unknown keys are rejected so a typo is an error,
not a silently ignored setting.
"""

from __future__ import annotations

import math
import string
import tomllib
from pathlib import Path
from typing import Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from curation.core.errors import CurateError


class _Section(BaseModel):
    # a typo is an error, not an ignored setting; TOML's nan/inf are never a meaningful threshold
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SegmentConfig(_Section):
    backend: str = Field(
        "auto",
        description="auto (the best model on this machine, else IS-Net fetched, else classical) | classical | "
        "isnet[:FILE.onnx|NAME] | sam[:ID] | semantic:ID | birefnet[:ID] | rmbg[:ID] (ID: hub id or local folder)",
    )
    fetch: bool = Field(
        True,
        description="auto: fetch IS-Net general-use (176 MB) into rembg's folder when no model is here; "
        "false: use only what is on this machine",
    )
    max_side: int = Field(1024, description="photos are downscaled to this longest side on ingest")
    detector: str = Field(
        "google/owlv2-base-patch16-ensemble", description="sam backend: the detector that finds the class noun"
    )
    trust_remote_code: bool = Field(
        False, description="birefnet/rmbg run Python shipped with the checkpoint: true only if you trust it"
    )
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1 ...")


class LayoutConfig(_Section):
    planner: Literal["rules", "llm"] = "rules"
    llm_model: str = "gpt-4o-mini"
    width: int = 512
    height: int = 512
    min_concepts: int = 2
    max_concepts: int = 5
    max_overlap: float = Field(0.15, description="largest allowed IoU between two boxes")
    min_area: float = Field(0.02, description="smallest box area as a fraction of the canvas")
    seed: int = 0
    compositions_file: str = Field(
        "", description="allowed concept sets (txt: one set per line; or a JSON list of lists); empty = any"
    )
    backgrounds_per_composition: int = Field(1, ge=1, description="consecutive plans sharing one concept set")
    llm_compositions: int = Field(
        0, ge=0, description="planner 'llm' without compositions_file: ask the LLM for N plausible sets"
    )
    llm_max_retries: int = Field(3, ge=0, description="re-asks per plan, the error fed back")
    llm_http_retries: int = Field(2, ge=0, description="client retries with backoff (429, 5xx)")
    llm_timeout: float = Field(60.0, gt=0, description="seconds per LLM request")
    llm_temperature: float = 0.7
    llm_concurrency: int = Field(4, ge=1, description="plans asked of the LLM in parallel")


GEN4GEN_NEGATIVE_PROMPT = (
    "semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, anime, text, close up, cropped, out of frame, "
    "worst quality, low quality, jpeg artifacts, ugly, duplicate, morbid, mutilated, deformed, blurry, "
    "bad anatomy, bad proportions, disfigured, gross proportions, mixture"
)
"""Gen4Gen's repaint negative prompt without its hand/limb terms (our concepts are rarely people)."""


class MSPSettings(_Section):
    """The knobs of one MSP-Diffusion run (`generators/msp/`); saved verbatim into every candidate's provenance.

    Defined here, not beside the generator, so loading curate.toml never imports the generator's code.
    """

    model: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="SD 1.x/2.x or SDXL pipeline id or folder (e.g. `curate train` output)",
    )
    controlnet: str = Field("", description="ControlNet id or folder; empty means none")
    scaffold: bool = Field(True, description="runner: start from the paste composition of the plan")
    kappa: float = Field(0.1, ge=0.0, le=1.0, description="fraction of the steps run that are composition")
    composition_steps: int | None = Field(
        None, ge=0, description="exact composition step count; overrides kappa"
    )
    steps: int = Field(50, ge=1, description="denoising steps of the full schedule")
    guidance_scale: float = Field(7.5, ge=0.0, description="classifier-free guidance; <= 1 turns it off")
    scaffold_strength: float = Field(
        0.9, gt=0.0, le=1.0, description="img2img strength when a scaffold is given"
    )
    negative_prompt: str = ""
    controlnet_scale: float = Field(1.0, ge=0.0)
    max_unet_batch: int = Field(0, ge=0, description="rows per UNet forward; 0 means all at once")
    sal_model: str = Field(
        "", description="a `curate train-segmenter` folder: subject-aware segmentation loss guidance; empty = off"
    )
    sal_scale: float = Field(1.0, ge=0.0, description="weight of the SAL gradient added to the noise prediction")
    sal_steps: int = Field(10, ge=0, description="SAL guides the first sal_steps steps that run")

    def n_composition(self, steps_run: int) -> int:
        """How many of the steps that run are composition steps (half rounds up, capped at steps_run)."""
        if self.composition_steps is not None:
            return min(self.composition_steps, steps_run)
        return min(math.floor(self.kappa * steps_run + 0.5), steps_run)


class FluxFillSettings(_Section):
    """The knobs of the FLUX.1 Fill repaint (`repaint = "flux-fill[:ID]"`), apart from the SDXL path's.

    FLUX.1 Fill is guidance-distilled: `guidance_scale` is an input of the transformer, not
    classifier-free guidance, and Black Forest Labs' examples use 30 (SDXL's 6 would wash it out),
    so it cannot share the SDXL default. The mask blur, batch size, device and dtype are shared.
    """

    guidance_scale: float = Field(30.0, ge=0.0, description="distilled guidance (BFL's examples: 30)")
    steps: int = Field(50, ge=1, description="denoising steps (BFL's examples: 50; 28 is faster)")
    strength: float = Field(1.0, gt=0, le=1, description="1: the masked area starts from noise, as Fill is trained")
    max_sequence_length: int = Field(512, ge=1, le=512, description="T5 prompt tokens")
    offload: Literal["auto", "none", "model", "sequential"] = Field(
        "auto",
        description=(
            "GPU memory: none (all on the GPU, ~33 GB in bf16), model (one component at a time, ~24 GB), "
            "sequential (layer by layer, a few GB, slow); auto picks by the GPU's memory"
        ),
    )


class GenerateConfig(_Section):
    generator: Literal["gen4gen", "msp"] = "gen4gen"
    repaint: str = Field(
        "classical",
        description="'classical' (offline), a diffusers inpainting pipeline id, or 'flux-fill[:ID]' (FLUX.1 Fill)",
    )
    recaption: str = Field("template", description="'template' (offline) or a VLM id")
    shard_size: int = 200
    workers: int = 1
    gpu_per_worker: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Ray: GPUs per actor (0.5: two share one); empty: 1/ceil(workers/GPUs) if a model is used",
    )
    seeds_per_plan: int = 1
    # diffusion repaint (used when `repaint` names a pipeline); defaults are Gen4Gen's s3 script's
    guidance_scale: float = 6.0
    steps: int = 60
    strength: float = Field(0.9, gt=0, le=1)
    mask_blur: int = Field(5, ge=0, description="box-blur radius (px) of the object mask before inverting")
    negative_prompt: str = GEN4GEN_NEGATIVE_PROMPT
    refiner: str = Field("", description="optional, e.g. stabilityai/stable-diffusion-xl-refiner-1.0")
    refiner_start: float = Field(0.75, gt=0, lt=1, description="fraction of denoising before the refiner")
    batch_size: int = Field(4, ge=1, description="candidates per pipeline call")
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field("auto", description="auto: fp16 on GPU")
    # VLM recaption (used when `recaption` names a model)
    recaption_prompt: str = "Describe this photo in one sentence, naming every object and the setting."
    recaption_max_tokens: int = Field(60, ge=1)
    msp: MSPSettings = Field(MSPSettings(), description="generator 'msp': [generate.msp]")
    flux_fill: FluxFillSettings = Field(FluxFillSettings(), description="repaint 'flux-fill': [generate.flux_fill]")


class IndexConfig(_Section):
    dataset_name: str = Field("", description="FiftyOne dataset name; empty means 'curate-<workspace.id>'")
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = Field("openai", description="open_clip pretrained tag; random weights if unavailable")
    batch_size: int = 16
    detector: str = Field(
        "", description="OWL-ViT/OWLv2 hub id or folder for concept presence; empty means the planned boxes"
    )
    detection_threshold: float = Field(0.1, ge=0.0, le=1.0, description="minimum detector score")
    executor: Literal["local", "ray"] = Field(
        "local", description="where CLIP embeddings run: this process, or Ray actors (RAY_ADDRESS picks a cluster)"
    )
    ray_actors: int = Field(0, ge=0, description="Ray embedding actors; 0 means one per cluster GPU (1 without)")
    subject_segmenter: str = Field(
        "", description="a `curate train-segmenter` folder: scores SAS per concept (`sas`, `sas_mean`); empty = off"
    )
    judge: str = Field(
        "",
        description=(
            'VLM judge scored by `curate index`: "openai:<model>" (OPENAI_BASE_URL) or a transformers'
            " image-text-to-text hub id/folder; empty = off"
        ),
    )
    diversity_growth: float = Field(
        0.2,
        ge=0,
        description=(
            "recompute uniqueness and the embedding map when the dataset grew by this fraction since they"
            " last ran (0: on every run that adds samples); `curate index --diversity` forces it"
        ),
    )


MAX_CANDIDATES_PER_PAGE = 50  # a review page stays one screen of thumbnails and captions


class ReviewConfig(_Section):
    url: str = Field("", description="Label Studio URL; empty means the server `curate review serve` started")
    port: int = 8080
    label_config: str = "review.xml"
    project_title: str = ""
    batch_size: int = 500
    candidates_per_page: int = Field(
        1,
        ge=1,
        le=MAX_CANDIDATES_PER_PAGE,
        description=(
            "candidates of one composition on one review page (`review push --batch`): Label Studio's"
            " save / next task / rebuild chain is then paid once a page, not once a candidate"
        ),
    )
    pull_page_size: int = Field(
        5000,
        ge=1,
        description="tasks per export snapshot when pulling; fewer means more requests",
    )
    pull_in_flight: int = Field(
        2,
        ge=1,
        description=(
            "export snapshots a pull keeps in flight at once (memory holds one more chunk than this);"
            " more than the server's workers only queues"
        ),
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "worker processes of the Label Studio `curate review serve` starts: 1 runs `label-studio start`"
            " (Django's development server, one process, for one user); more runs Label Studio's production"
            " server, uWSGI with that many workers, for a team"
        ),
    )


class ExportConfig(_Section):
    min_quality: int = 3
    format: str = "mycanvas"
    token_format: str = Field(
        "<c-{id}>",
        description=(
            "the personal token in exported captions, lists and commands of the trainers that add it to the"
            " tokenizer: {id} is the concept id, {n} its 1-based index in id order; trainers that add no"
            " tokens get one-token identifiers instead (exports.identifiers)"
        ),
    )

    @field_validator("token_format")
    @classmethod
    def _token_format(cls, value: str) -> str:
        """Tokens must be distinct, one word, and unlike any caption word: consumers split on +, commas, spaces."""
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"token_format {value!r} is not a format string ({exc})") from exc
        if not {"id", "n"} & set(fields) or set(fields) - {"id", "n"}:
            raise ValueError(f"token_format {value!r} must use {{id}} or {{n}} (and no other field)")
        if not value.replace("{id}", "").replace("{n}", ""):
            raise ValueError(f"token_format {value!r} needs fixed text around the field, or tokens equal words")
        if any(c.isspace() or c in "+," for c in value):
            raise ValueError(f"token_format {value!r} must not contain spaces, '+' or ','")
        return value


MAX_TARGET = 1_000_000
"""Accepted images wanted per concept set or concept: far beyond any dataset reviewed by people."""
MAX_NEW_PER_ROUND = 10_000
"""New candidates one `curate topup` may plan: a round is sized like a whole first dataset (10K), so a
typo such as `--max-new 1000000` cannot plan until memory runs out; more is more rounds."""


class CurationConfig(_Section):
    """Targets for the accepted set: `curate status` measures against them, `curate topup` plans toward them.

    Accepted means what `curate export` takes: accepted in review with quality >= export.min_quality.
    Every target is a lower bound turned into one per composition (concept set), so meeting each
    composition's target meets them all; 0 (or no buckets) means no target.
    """

    per_composition: int = Field(
        0, ge=0, le=MAX_TARGET, description="accepted images wanted for every concept set"
    )
    per_concept: int = Field(0, ge=0, le=MAX_TARGET, description="accepted images wanted showing each concept")
    buckets: dict[str, float] = Field(
        default_factory=dict,
        description="share per concept count of the total per_composition implies, e.g. {2 = 0.4, 3 = 0.3}",
    )
    prior_acceptance: float = Field(0.5, gt=0, le=1, description="acceptance rate assumed before any review")
    prior_reviews: int = Field(4, ge=1, description="how many reviews the prior weighs, against observed ones")
    max_new: int = Field(
        200, ge=1, le=MAX_NEW_PER_ROUND, description="default budget of new candidates per `curate topup`"
    )
    give_up_rounds: int = Field(
        3, ge=1, description="stop when a composition's last N rounds of candidates were all rejected"
    )

    @field_validator("buckets")
    @classmethod
    def _bucket_keys(cls, value: dict[str, float]) -> dict[str, float]:
        for key, share in value.items():
            if not key.isdigit() or int(key) < 1:
                raise ValueError(f"bucket {key!r} is not a concept count (use 2, 3, 4, 5)")
            if share < 0:
                raise ValueError(f"bucket {key} has a negative share {share}")
        return value


class WorkspaceSection(_Section):
    """Who this workspace is, independent of where its folder lives (see `curation.core.workspace`)."""

    id: str = Field(
        "",
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="set by `curate init`; names the FiftyOne dataset and the Label Studio project; copies share it",
    )


class CurateConfig(_Section):
    workspace: WorkspaceSection = WorkspaceSection()
    segment: SegmentConfig = SegmentConfig()
    layout: LayoutConfig = LayoutConfig()
    generate: GenerateConfig = GenerateConfig()
    index: IndexConfig = IndexConfig()
    review: ReviewConfig = ReviewConfig()
    export: ExportConfig = ExportConfig()
    curation: CurationConfig = CurationConfig()


MAX_CONFIG_BYTES = 1_000_000
"""A curate.toml is a few kB; anything far larger is not one (and deep nesting in it exhausts the parser)."""


def _printable(text: str) -> str:
    """A key or message from the file as one printable line: TOML keys may hold newlines and escape codes."""
    return text if text.isprintable() else repr(text)


def load_config(path: Path) -> CurateConfig:
    """Read and validate `curate.toml`; a missing file means all defaults.

    Whatever the file holds, the outcome is a config or a one-line CurateError naming the problem.
    """
    if not path.exists():
        return CurateConfig()
    try:
        if (size := path.stat().st_size) > MAX_CONFIG_BYTES:
            raise CurateError(f"{path}: {size:,} bytes is too large for a curate.toml (at most {MAX_CONFIG_BYTES:,})")
        return CurateConfig.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except tomllib.TOMLDecodeError as exc:
        raise CurateError(f"{path}: not valid TOML: {_printable(str(exc))}") from exc
    except RecursionError as exc:
        raise CurateError(f"{path}: not valid TOML: nested too deeply") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise CurateError(f"{path}: line {line} is not UTF-8 text (TOML must be UTF-8)") from exc
    except OSError as exc:
        raise CurateError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(_printable(str(p)) for p in first["loc"])
        raise CurateError(f"{path}: {where}: {_printable(first['msg'])}") from exc


def dump_config(config: CurateConfig) -> str:
    """The config as TOML text, every setting spelled out so users see what they can change.

    TOML has no null: an optional setting left unset (e.g. `generate.msp.composition_steps`) is
    omitted and reads back as its default, None.
    """
    return tomli_w.dumps(config.model_dump(exclude_none=True))

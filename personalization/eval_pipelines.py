"""Which text-to-image model an evaluated configuration is (SD 1.x/2.x, SDXL, FLUX.1, a base + LoRA), and loading it.

A plain configuration names one of:
- a `curate train` folder (SD 1.x/2.x): its pipeline/ is a whole pipeline, its run.json the strategy;
- a `curate train --base sdxl|flux` run folder (`personalization.lora_folder`): lora/lora.json names
  the base, the token embeddings' rows and which text encoder each key belongs to;
- the output folder of diffusers' advanced DreamBooth-LoRA scripts, as the export card's commands
  write it: pytorch_lora_weights.safetensors, `<name>_emb.safetensors` (keys clip_l, clip_g, t5) and a
  README.md model card whose front matter names `base_model` and whose lines "to trigger concept
  `<c-cat>` → use `<s0>`" map the export's tokens to the tokens the script inserted;
- any pipeline folder or hub id (a baseline row, plain prompts).

The family (sd, sdxl, flux) is read from the pipeline's model_index.json (`_class_name`), never guessed
from a name, so a local copy of a checkpoint is evaluated like its hub id. A LoRA needs its base: the
one its record names, or the one given for its row (`--base LABEL=...`, which also replaces a recorded
base, e.g. by a local copy of it). Every configuration is resolved before any model loads, so a missing
base fails in one line before the first image is generated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from curation.core.errors import CurateError
from personalization.data import Export
from personalization.eval_settings import EvalSettings, Family
from personalization.lora_folder import EMBEDDINGS, LORA_DIR, LORA_JSON, LORA_WEIGHTS
from personalization.prompts import PromptStrategy
from personalization.train_folder import pipeline_source, trained_strategy

PIPELINE_FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "FluxPipeline": "flux",
}
"""The text-to-image pipeline classes the evaluator runs, by model_index.json's `_class_name`."""
DIFFUSERS_EMBEDDING_COMPONENTS = {
    "clip_l": "text_encoder",
    "clip_g": "text_encoder_2",
    "t5": "text_encoder_2",
}
"""The keys of diffusers' advanced scripts' `<name>_emb.safetensors` -> the pipeline's text encoder."""
_TRIGGER = re.compile(r"to trigger concept `([^`]+)` → use `((?:<s\d+>)+)`")


@dataclass(frozen=True)
class LoraWeights:
    """A LoRA and its token embeddings, as `load_lora_weights` and `load_textual_inversion` take them."""

    folder: Path
    embeddings: Path | None = None
    inserted: tuple[str, ...] = ()
    """The tokens the embedding rows are, in row order."""
    components: dict[str, str] = field(default_factory=dict)
    """Embedding key -> the pipeline's text encoder attribute ("clip_l" -> "text_encoder")."""
    prompt_tokens: dict[str, str] = field(default_factory=dict)
    """Export token -> what a prompt says instead ("<c-cat>" -> "<s0>"); empty when they are the same."""


@dataclass(frozen=True)
class ModelSource:
    """One plain configuration, resolved: what loads, of which family, with which prompting strategy."""

    source: str
    family: Family
    pipeline: str
    """The whole pipeline's folder or hub id; a LoRA's base."""
    strategy: PromptStrategy = field(default_factory=PromptStrategy)
    lora: LoraWeights | None = None

    def describe(self) -> str:
        """What results.json records for the row (the study shows it as the configuration's model)."""
        if self.lora is None:
            return self.pipeline if self.pipeline == self.source else f"{self.source} ({self.pipeline})"
        return f"{self.family} LoRA {self.source} on {self.pipeline}"

    def prompt(self, text: str) -> str:
        """A held-out prompt as this model was trained to read it (inserted tokens for the export's)."""
        for token, inserted in (self.lora.prompt_tokens if self.lora else {}).items():
            text = text.replace(token, inserted)
        return text


def resolve_source(source: str | Path, export: Export, base: str = "") -> ModelSource:
    """A configuration's folder or hub id -> what to load; raises CurateError before loading anything.

    Args:
        source: the folder or hub id given for the row.
        export: the evaluated export (its tokens, for LoRA embeddings saved without a token map).
        base: the base pipeline for a LoRA folder, replacing the one its record names.
    """
    path = Path(source)
    if (path / LORA_DIR / LORA_JSON).is_file() or (path / LORA_JSON).is_file():
        return _curate_lora(path, base)
    if (path / LORA_WEIGHTS).is_file():
        return _diffusers_lora(path, export, base)
    if base:
        raise CurateError(f"--base is for LoRA folders; {source} holds no {LORA_WEIGHTS}")
    pipeline = pipeline_source(source)
    return ModelSource(str(source), _family(pipeline), pipeline, trained_strategy(source))


def _family(pipeline: str) -> Family:
    """The family of a pipeline folder or hub id, from its model_index.json."""
    index = Path(pipeline) / "model_index.json"
    if index.is_file():
        class_name = json.loads(index.read_text()).get("_class_name", "")
    elif Path(pipeline).exists():
        raise CurateError(f"cannot load pipeline {pipeline}: no model_index.json in the folder")
    else:
        from diffusers import DiffusionPipeline

        from curation.models.registry import gated_error

        try:
            class_name = DiffusionPipeline.load_config(pipeline).get("_class_name", "")
        except (OSError, ValueError) as exc:
            # diffusers words a gated repo as "not a valid model identifier": say what it is instead
            if gated := gated_error(exc, "pipeline", pipeline):
                raise gated from exc
            raise CurateError(f"cannot load pipeline {pipeline}: {str(exc).splitlines()[0]}") from exc
    if class_name not in PIPELINE_FAMILIES:
        raise CurateError(
            f"cannot evaluate {pipeline}: a {class_name or 'unknown'} is none of the text-to-image pipelines "
            f"{', '.join(PIPELINE_FAMILIES)}"
        )
    return PIPELINE_FAMILIES[class_name]


def _curate_lora(path: Path, base: str) -> ModelSource:
    """A `curate train --base sdxl|flux` run (or its lora/ folder): lora.json names everything."""
    folder = path if (path / LORA_JSON).is_file() else path / LORA_DIR
    meta = json.loads((folder / LORA_JSON).read_text())
    pipeline = base or meta.get("pretrained", "")
    if not pipeline:
        raise CurateError(
            f"{folder / LORA_JSON} names no base pipeline: give --base LABEL=<base id or folder>"
        )
    run = folder.parent if folder.name == LORA_DIR else path
    lora = LoraWeights(
        folder=folder,
        embeddings=folder / EMBEDDINGS if (folder / EMBEDDINGS).is_file() else None,
        inserted=tuple(meta.get("tokens", ())),
        components=dict(meta.get("embeddings", {})),
    )
    family = _base_family(pipeline, path)
    _check_trained_family(path, meta.get("base", ""), pipeline, family)
    return ModelSource(str(path), family, pipeline, trained_strategy(run), lora)


def _check_trained_family(path: Path, trained: str, pipeline: str, family: Family) -> None:
    """A LoRA loads only into the family it was trained on; another base (a wrong --base) would not fail:
    `load_lora_weights` skips the keys it has no module for with a warning, and CLIP-L token rows fit
    SD 1.x, SDXL and FLUX.1 alike, so the row would be the plain base under the LoRA's label."""
    if trained and trained != family:
        raise CurateError(
            f"LoRA {path} was trained on {trained}, but its base {pipeline} is {family}: "
            f"give --base LABEL=<the {trained} base it was trained on>"
        )


def _diffusers_lora(path: Path, export: Export, base: str) -> ModelSource:
    """A folder of diffusers' DreamBooth-LoRA scripts: base and token map from its model card."""
    recorded, triggers = _model_card(path)
    pipeline = base or recorded
    if not pipeline:
        raise CurateError(
            f"LoRA folder {path} names no base model (no run record, no base_model in a README.md model "
            "card): give --base LABEL=<base pipeline id or folder>"
        )
    found = sorted(p for p in path.glob("*_emb.safetensors"))
    if len(found) > 1:
        raise CurateError(f"{path} holds {len(found)} token embedding files ({found[0].name}, ...): keep one")
    if not found:
        return ModelSource(str(path), _base_family(pipeline, path), pipeline, lora=LoraWeights(path))
    from safetensors import safe_open

    with safe_open(str(found[0]), framework="pt") as handle:
        keys = list(handle.keys())
        rows = handle.get_slice(keys[0]).get_shape()[0] if keys else 0
    unknown = sorted(set(keys) - set(DIFFUSERS_EMBEDDING_COMPONENTS))
    if unknown or not keys:
        raise CurateError(f"{found[0]}: unknown token embedding keys {unknown or keys}")
    if triggers:
        inserted = tuple(f"<s{i}>" for i in range(rows))
        prompt_tokens = triggers
    else:  # no card: the rows are the export's tokens by concept id, the order the card's commands list
        tokens = tuple(export.concepts[cid].token for cid in sorted(export.concepts))
        if rows != len(tokens):
            raise CurateError(
                f"{found[0]} holds {rows} token rows and no model card says which concept each is "
                f"(the export has {len(tokens)} concepts)"
            )
        inserted, prompt_tokens = tokens, {}
    lora = LoraWeights(
        folder=path,
        embeddings=found[0],
        inserted=inserted,
        components={k: DIFFUSERS_EMBEDDING_COMPONENTS[k] for k in keys},
        prompt_tokens=prompt_tokens,
    )
    return ModelSource(str(path), _base_family(pipeline, path), pipeline, lora=lora)


def _base_family(pipeline: str, lora: Path) -> Family:
    """The base's family, with an error that says whose base is missing."""
    try:
        return _family(pipeline)
    except CurateError as exc:
        raise CurateError(f"the base of LoRA {lora}: {exc}; give --base LABEL=<base id or folder>") from exc


def _model_card(folder: Path) -> tuple[str, dict[str, str]]:
    """A diffusers script's README.md: its front matter's base_model and its token triggers."""
    readme = folder / "README.md"
    if not readme.is_file():
        return "", {}
    from huggingface_hub import ModelCard

    card = ModelCard.load(readme)
    base = card.data.to_dict().get("base_model") or ""
    return (base if isinstance(base, str) else ""), dict(_TRIGGER.findall(card.text))


def torch_dtype(family: Family, device: str, setting: str):
    """float32 on CPU; on a GPU float16, bfloat16 for FLUX.1 (fp16 overflows in its transformer)."""
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if family == "flux" else torch.float16


def load_model(model: ModelSource, settings: EvalSettings, device: str):
    """The pipeline ready to sample: the base, its LoRA and token embeddings loaded, on `device`."""
    from diffusers import DiffusionPipeline

    dtype = torch_dtype(model.family, device, settings.dtype)
    extra = {"safety_checker": None} if model.family == "sd" else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(model.pipeline, dtype=dtype, **extra)
    except (OSError, ValueError) as exc:
        raise CurateError(f"cannot load pipeline {model.pipeline}: {str(exc).splitlines()[0]}") from exc
    if model.lora is not None:
        _load_lora(pipe, model.lora)
    pipe.set_progress_bar_config(disable=True)
    if settings.cpu_offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def _load_lora(pipe, lora: LoraWeights) -> None:
    """`load_lora_weights`, then each key's token rows into its text encoder (diffusers' documented way)."""
    pipe.load_lora_weights(str(lora.folder), weight_name=LORA_WEIGHTS)
    if lora.embeddings is None:
        return
    from safetensors.torch import load_file

    rows = load_file(str(lora.embeddings))
    for key, component in lora.components.items():
        encoder = getattr(pipe, component)
        pipe.load_textual_inversion(
            rows[key].to(encoder.dtype),
            token=list(lora.inserted),
            text_encoder=encoder,
            tokenizer=getattr(pipe, component.replace("text_encoder", "tokenizer")),
        )

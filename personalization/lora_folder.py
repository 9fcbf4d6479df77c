"""The run folder of `curate train --base sdxl|flux`: LoRA weights and token embeddings as diffusers loads them.

Run folder (the SD 1.x/2.x trainer's run.json / checkpoints / report, with lora/ in place of pipeline/):

    run.json                               the settings that define the run (base, pretrained, rank, ...)
    checkpoints/step-NNNNNN/               trainable.pt (LoRA tensors + token rows), optimizer.pt
    lora/pytorch_lora_weights.safetensors  the denoiser's LoRA in diffusers' format
    lora/embeddings.safetensors            the concept tokens' rows, one key per text encoder:
                                           SDXL {"clip_l", "clip_g"}, FLUX {"clip_l"}; [n_tokens, width]
    lora/lora.json                         {"base", "pretrained", "tokens" (row order), "embeddings"
                                           (key -> pipeline component: "clip_l" -> "text_encoder", ...)}
    train_report.json                      numbers of the last call (steps, losses, speed, device)

Loading it by hand, as `load_lora_pipeline` does (and as diffusers' advanced SDXL script documents):

    pipe = DiffusionPipeline.from_pretrained(lora_json["pretrained"])
    pipe.load_lora_weights("RUN/lora")
    rows = safetensors.torch.load_file("RUN/lora/embeddings.safetensors")
    pipe.load_textual_inversion(rows["clip_l"], token=tokens, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(rows["clip_g"], token=tokens, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)          # SDXL only

lora/ is written under a temporary name and renamed, so it is either the previous call's or this one's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from curation.core.errors import CurateError
from curation.core.workspace import atomic_write_json

LORA_DIR = "lora"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
EMBEDDINGS = "embeddings.safetensors"
LORA_JSON = "lora.json"


def save_lora_folder(
    output_dir: Path,
    save_lora_weights,
    embeddings: dict[str, object],
    components: dict[str, str],
    meta: dict,
) -> Path:
    """Write lora/ through a temporary folder and a rename.

    Args:
        output_dir: the run folder.
        save_lora_weights: writes the denoiser's LoRA into the folder it is given (the pipeline class's
            `save_lora_weights`, bound to the trained layers).
        embeddings: each encoder key's token rows, [n_tokens, width], float32.
        components: each key's pipeline component ("clip_l" -> "text_encoder").
        meta: base, pretrained, tokens (the rows' order).
    """
    from safetensors.torch import save_file

    final = output_dir / LORA_DIR
    tmp = output_dir / f".{LORA_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_lora_weights(tmp)
    save_file({key: rows.contiguous() for key, rows in embeddings.items()}, str(tmp / EMBEDDINGS))
    atomic_write_json(tmp / LORA_JSON, {**meta, "embeddings": components})
    old = output_dir / f".{LORA_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def is_lora_run(source: str | Path) -> bool:
    """Whether `source` is a run folder of `curate train --base sdxl|flux` (or its lora/ folder)."""
    path = Path(source)
    return (path / LORA_DIR / LORA_JSON).is_file() or (path / LORA_JSON).is_file()


def load_lora_pipeline(source: str | Path, device: str | None = None, torch_dtype=None, pretrained: str = ""):
    """The base pipeline with the run's LoRA and concept tokens loaded, ready to generate.

    Args:
        source: the run folder, or its lora/ folder.
        device: where to move the pipeline; None leaves it on the CPU.
        torch_dtype: the pipeline's dtype (bf16 on a GPU for SDXL/FLUX); None = float32.
        pretrained: the base pipeline to load instead of the one recorded (e.g. a local copy of it).
    """
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    folder = Path(source)
    folder = folder if (folder / LORA_JSON).is_file() else folder / LORA_DIR
    if not (folder / LORA_JSON).is_file():
        raise CurateError(
            f"{source} holds no LoRA run ({LORA_DIR}/{LORA_JSON}); run `curate train --base` first"
        )
    meta = json.loads((folder / LORA_JSON).read_text())
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    base = pretrained or meta["pretrained"]
    try:
        pipe = DiffusionPipeline.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise CurateError(f"cannot load the base pipeline {base!r}: {str(exc).splitlines()[0]}") from exc
    pipe.load_lora_weights(folder)
    rows = load_file(str(folder / EMBEDDINGS))
    for key, component in meta["embeddings"].items():
        tokenizer_name = component.replace("text_encoder", "tokenizer")
        pipe.load_textual_inversion(
            rows[key].to(getattr(pipe, component).dtype),
            token=meta["tokens"],
            text_encoder=getattr(pipe, component),
            tokenizer=getattr(pipe, tokenizer_name),
        )
    if device:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe

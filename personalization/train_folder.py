"""The `curate train` output folder: what a run is (run.json), its checkpoints, its pipeline, its report.

Output folder:
    run.json                  the settings that define the run (a resume must match them)
    checkpoints/step-NNNNNN/  trainable tensors + optimizer state; a folder appears only once complete
    pipeline/                 the personalized pipeline, `save_pretrained` layout (see `load_personalized`)
    train_report.json         numbers of the last call (steps, losses, speed)

Everything here is written through a temporary name and a rename, so a run killed at any point
leaves either the old file or folder or the new one; `personalization.train` resumes from what it
finds. The evaluator reads the same folder back (`pipeline_source`, `trained_strategy`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curation.core.errors import CurateError
from curation.core.workspace import atomic_write_json
from personalization.data import Export
from personalization.prompts import PromptStrategy

_TRAINABLE_FILE = "trainable.pt"
_OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class TrainReport:
    """What one `train` call did; also written to `train_report.json`."""

    output_dir: str
    pipeline_dir: str
    method: str
    steps: int
    start_step: int
    losses: list[float] = field(default_factory=list)
    trainable_params: int = 0
    tokens: dict[str, str] = field(default_factory=dict)
    examples: int = 0
    class_images: int = 0
    seconds: float = 0.0
    steps_per_second: float = 0.0
    device: str = ""
    peak_memory_mb: float | None = None


def run_identity(
    pretrained: str,
    method: str,
    export: Export,
    strategy: PromptStrategy,
    resolution: int,
    lora_rank: int,
    prior_loss_weight: float | None,
) -> dict[str, Any]:
    """The settings a checkpoint is only valid for; `steps` is deliberately not one (runs can be extended).

    The prior weight is named only when set, so runs without prior preservation keep their identity.
    """
    prior = {} if prior_loss_weight is None else {"prior_loss_weight": prior_loss_weight}
    return {
        **prior,
        "pretrained": pretrained,
        "method": method,
        "strategy": strategy.as_dict(),
        "resolution": resolution,
        "lora_rank": lora_rank if method == "lora" else None,
        "concepts": {
            cid: {"token": c.token, "class_noun": c.class_noun, "refs": [str(p) for p in c.refs]}
            for cid, c in sorted(export.concepts.items())
        },
        "export": str(export.root.resolve()),
    }


def start_run(output_dir: Path, identity: dict[str, Any], resume: bool) -> None:
    """Record the run's identity in run.json; a resumed run must match the one recorded there."""
    run_path = output_dir / "run.json"
    if run_path.exists() and resume and json.loads(run_path.read_text()) != json.loads(json.dumps(identity)):
        raise CurateError(
            f"{output_dir} holds a run with other settings; pick another folder or pass --no-resume"
        )
    if not resume:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_path, identity)


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints as (step, folder), oldest first."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.name.startswith("step-") and (path / _TRAINABLE_FILE).exists():
            found.append((int(path.name.removeprefix("step-")), path))
    return sorted(found)


def trainable_state(unet, text_encoder, new_ids: list[int]) -> dict[str, Any]:
    """What a checkpoint keeps of the models: the UNet's trainable tensors and the concept token rows."""
    unet_state = {name: p.detach().cpu().clone() for name, p in unet.named_parameters() if p.requires_grad}
    rows = text_encoder.get_input_embeddings().weight.detach()[new_ids].cpu().clone()
    return {"unet": unet_state, "token_rows": rows}


def restore_checkpoint(folder: Path, unet, text_encoder, new_ids: list[int], optimizer) -> None:
    """Load a checkpoint's trainable tensors into the models and its state into the optimizer."""
    state, optimizer_state = read_checkpoint(folder)
    _restore_trainable(state, unet, text_encoder, new_ids)
    optimizer.load_state_dict(optimizer_state)


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint's trainable tensors (as `write_checkpoint` was given them) and optimizer state."""
    import torch

    return (
        torch.load(folder / _TRAINABLE_FILE, weights_only=True),
        torch.load(folder / _OPTIMIZER_FILE, weights_only=True),
    )


def _restore_trainable(state: dict[str, Any], unet, text_encoder, new_ids: list[int]) -> None:
    import torch

    params = dict(unet.named_parameters())
    unknown = sorted(set(state["unet"]) - set(params))
    if unknown:
        raise CurateError(f"checkpoint does not fit this model (unknown parameter {unknown[0]})")
    with torch.no_grad():
        for name, tensor in state["unet"].items():
            params[name].copy_(tensor)
        text_encoder.get_input_embeddings().weight[new_ids] = state["token_rows"].to(
            text_encoder.get_input_embeddings().weight.dtype
        )


def write_checkpoint(output_dir: Path, step: int, state: dict[str, Any], optimizer, keep: int) -> None:
    """Write into a hidden folder, then rename: a checkpoint folder exists only when complete."""
    import torch

    folder = output_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:06d}"
    tmp = folder / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(optimizer.state_dict(), tmp / _OPTIMIZER_FILE)
    torch.save(state, tmp / _TRAINABLE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for _, old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def save_pipeline(pipe, unet, text_encoder, method: str, output_dir: Path) -> Path:
    """Save the whole pipeline via a temp folder + rename, LoRA fused, everything in float32."""
    import torch

    if method == "lora":
        unet.fuse_lora()
        unet.unload_lora()
    pipe.unet = unet.to("cpu", dtype=torch.float32)
    pipe.text_encoder = text_encoder.to("cpu", dtype=torch.float32)
    pipe.vae.to("cpu", dtype=torch.float32)
    final = output_dir / "pipeline"
    tmp = output_dir / ".pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    old = output_dir / ".pipeline.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def finished_report(
    output_dir: Path, steps: int, saved: str = "pipeline/model_index.json"
) -> TrainReport | None:
    """The report of a run already trained to `steps` and saved; None when anything is missing.

    The report is written after the pipeline (or the LoRA folder: `saved` names the file that proves
    it), so its presence with the same step count and a matching last checkpoint proves the saved
    weights are exactly those.
    """
    report_path = output_dir / "train_report.json"
    checkpoints = list_checkpoints(output_dir)
    if not (report_path.exists() and checkpoints and checkpoints[-1][0] == steps):
        return None
    report = json.loads(report_path.read_text())
    if report.get("steps") != steps or not (output_dir / saved).exists():
        return None
    return TrainReport(
        **{**report, "start_step": steps, "losses": [], "seconds": 0.0, "steps_per_second": 0.0}
    )


def load_personalized(output_dir: Path, device: str | None = None, torch_dtype=None):
    """The trained pipeline, ready to generate with the concept tokens in prompts.

    Equivalent to `StableDiffusionPipeline.from_pretrained(output_dir / "pipeline")`: the folder is
    a plain diffusers pipeline (tokenizer with the added tokens, text encoder, fused UNet).
    """
    from diffusers import StableDiffusionPipeline

    folder = Path(output_dir) / "pipeline"
    if not (folder / "model_index.json").exists():
        raise CurateError(f"{output_dir} holds no trained pipeline; run `curate train` first")
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, **kwargs)
    if device:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_report(output_dir: Path, report: TrainReport) -> None:
    """The report goes last: `finished_report` trusts the pipeline only when the report is there."""
    atomic_write_json(output_dir / "train_report.json", asdict(report))


def pipeline_source(source: str | Path) -> str:
    """The pipeline folder of a `curate train` output (its pipeline/), else the folder or hub id as given."""
    path = Path(source)
    if (path / "pipeline" / "model_index.json").exists():
        return str(path / "pipeline")
    return str(path) if path.exists() else str(source)


def trained_strategy(source: str | Path) -> PromptStrategy:
    """The prompting strategy a `curate train` folder was trained with (its run.json); plain prompts otherwise."""
    path = Path(source)
    strategy = PromptStrategy()
    if (path / "run.json").exists():
        strategy = PromptStrategy(**json.loads((path / "run.json").read_text())["strategy"])
    return strategy

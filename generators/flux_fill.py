"""FLUX.1 Fill as a repaint backend: `generate.repaint = "flux-fill[:ID]"`, beside SDXL inpainting.

Same contract as the SDXL path (`generators/repaint_contract.py`): Gen4Gen's composite and inverted
object mask go in (255 = repaint the background), the concepts are blended back by their soft alpha
afterwards, and each job's noise comes from its own CPU generator, so an image depends on its
candidate's seed only, not on its batch. What differs is the model's:

- `FluxFillPipeline` (black-forest-labs/FLUX.1-Fill-dev by default): a 12B rectified-flow
  transformer whose input is the packed noisy latents, the packed latents of the masked image and
  the packed mask (in_channels 384 = 64 + 64 + 256), with CLIP-L (pooled) and T5-XXL prompts.
  Loading anything else under this name (FLUX.1-dev's 64-channel transformer) is refused at load,
  not at the first batch.
- Guidance is distilled into the transformer (an input, not classifier-free guidance): one pass per
  step, no negative prompt, and BFL's examples use guidance 30 with 50 steps
  (`[generate.flux_fill]`).
- Canvas sides must be multiples of 16 (8x VAE, then 2x2 latent patches): other canvases are
  resized for the pipeline and back, as SDXL's are to multiples of 8.
- bf16 on a GPU (`dtype = "auto"`; FLUX is trained in bf16, and T5 overflows in fp16), fp32 on a CPU.
  In bf16 the pipeline needs ~33 GB with everything on the GPU, ~24 GB with model CPU offload (the
  transformer alone), a few GB with sequential offload (much slower): `offload = "auto"` takes the
  first that fits the GPU's memory with a quarter to spare for activations.
- FLUX.1 [dev] models are gated on the hub: an account that has not accepted the licence gets one
  `error:` line saying where to accept it and how to log in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.core.errors import CurateError
from generators.generate_settings import flux_fill_settings
from generators.repaint_contract import (
    RepaintJob,
    by_canvas_size,
    paste_back,
    pipeline_inputs,
    pipeline_revision,
    work_size,
)

if TYPE_CHECKING:
    from curation.core.config import GenerateConfig

OFFLOADS = ("none", "model", "sequential")
HEADROOM = 1.25
"""Memory a placement needs over its weights: activations of a 1024 px batch, the VAE decode, CUDA's own."""


def flux_dtype(device: str, dtype: str) -> Any:
    """'auto' is bf16 on a GPU (FLUX's own precision) and fp32 on a CPU; a named dtype is taken as is."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def choose_offload(total_bytes: int, transformer_bytes: int, gpu_bytes: int) -> str:
    """'none' when all components fit the GPU with `HEADROOM`, 'model' when the transformer (the
    largest, which model offload keeps alone on the GPU) does, else 'sequential'."""
    if total_bytes * HEADROOM <= gpu_bytes:
        return "none"
    if transformer_bytes * HEADROOM <= gpu_bytes:
        return "model"
    return "sequential"


def _bytes(module: Any) -> int:
    return (
        sum(p.numel() * p.element_size() for p in module.parameters()) if hasattr(module, "parameters") else 0
    )


def place(pipe: Any, device: str, offload: str) -> str:
    """Put a loaded pipeline on `device` as `offload` says ('auto' decides by the GPU's memory);
    returns the offload used. A CPU runs everything in place: offload is for a GPU's memory.

    Raises:
        CurateError: model or sequential offload asked for without a CUDA device.
    """
    import torch

    if not device.startswith("cuda"):
        if offload not in ("auto", "none"):
            raise CurateError(
                f"generate.flux_fill.offload = {offload!r} needs a CUDA device (generate.device)"
            )
        pipe.to(device)
        return "none"
    if offload == "auto":
        total = sum(_bytes(component) for component in pipe.components.values())
        offload = choose_offload(
            total, _bytes(pipe.transformer), torch.cuda.get_device_properties(device).total_memory
        )
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return offload


def check_fill_transformer(pipe: Any, name: str) -> None:
    """Refuse a FLUX checkpoint that is not a Fill one: its transformer must take the latents, the
    masked image's latents and the mask, packed in 2x2 patches (FLUX.1-Fill-dev: 64 + 64 + 256 = 384).

    A transformer whose output is as wide as its input has no `out_channels` in its config (FLUX.1-dev's
    is null), so the input width stands in for it there.
    """
    config = pipe.transformer.config
    latents = config.out_channels or config.in_channels
    mask = pipe.vae_scale_factor**2 * 4
    wanted = 2 * latents + mask
    if pipe.transformer.config.in_channels != wanted:
        raise CurateError(
            f"generate.repaint = 'flux-fill:{name}' is not a FLUX.1 Fill checkpoint: its transformer takes "
            f"{pipe.transformer.config.in_channels} input channels where Fill's take {wanted} (latents, "
            "masked image and mask); use black-forest-labs/FLUX.1-Fill-dev or a model trained from it"
        )


def load_flux_fill_pipeline(
    name: str, device: str = "auto", dtype: str = "auto", offload: str = "auto"
) -> tuple[Any, dict[str, object]]:
    """Load `FluxFillPipeline` from a hub id or a `save_pretrained` folder and place it.

    Args:
        name: hub id (e.g. black-forest-labs/FLUX.1-Fill-dev) or folder.
        device: 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...
        dtype: 'auto' (bf16 on a GPU, fp32 on a CPU), 'bfloat16', 'float16', 'float32'.
        offload: 'auto', 'none', 'model' or 'sequential' (see `place`).

    Returns:
        The pipeline and its provenance (pipeline, scheduler, name_or_path, revision, diffusers
        version, device, dtype, offload).

    Raises:
        CurateError: not on this machine while HF_HUB_OFFLINE is set; gated and not accepted by this
            account (or no login); not loadable; not a Fill checkpoint.
    """
    import diffusers
    from diffusers import FluxFillPipeline

    from curation.core.devices import torch_device
    from curation.models.registry import gated_error, require_local

    require_local("generate.repaint", name, pipeline=True)
    device = torch_device(device)
    torch_dtype = flux_dtype(device, dtype)
    try:
        pipe = FluxFillPipeline.from_pretrained(name, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        if gated := gated_error(exc, "generate.repaint", name):
            raise gated from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CurateError(
            f"generate.repaint = 'flux-fill:{name}': FLUX.1 Fill could not be loaded: {first}"
        ) from exc
    check_fill_transformer(pipe, name)
    used = place(pipe, device, offload)
    pipe.set_progress_bar_config(disable=True)
    provenance: dict[str, object] = {
        "pipeline": type(pipe).__name__,
        "scheduler": type(pipe.scheduler).__name__,
        "name_or_path": str(pipe.name_or_path),
        "revision": pipeline_revision(pipe),
        "diffusers_version": diffusers.__version__,
        "device": device,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "offload": used,
    }
    return pipe, provenance


@dataclass
class FluxFillRepainter:
    """Batched FLUX.1 Fill of the background around the kept objects, then the objects blended back."""

    name: str
    settings: GenerateConfig
    pipe: Any
    provenance: dict[str, object] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def config(self) -> dict[str, object]:
        return {"name": self.name, **flux_fill_settings(self.settings), **self.provenance}

    def __call__(self, jobs: Sequence[RepaintJob]) -> list[np.ndarray]:
        return by_canvas_size(jobs, self._fill)

    def _fill(self, jobs: Sequence[RepaintJob]) -> list[np.ndarray]:
        """One pipeline call for jobs of one canvas size."""
        import torch

        height, width = jobs[0].composition.background.shape[:2]
        size = work_size(height, width, 2 * int(self.pipe.vae_scale_factor))
        images, masks = pipeline_inputs(jobs, size, self.settings.mask_blur)
        flux = self.settings.flux_fill
        with torch.inference_mode():
            out = self.pipe(
                prompt=[job.prompt for job in jobs],
                image=images,
                mask_image=masks,
                height=size[0],
                width=size[1],
                guidance_scale=flux.guidance_scale,
                num_inference_steps=flux.steps,
                strength=flux.strength,
                max_sequence_length=flux.max_sequence_length,
                generator=[torch.Generator("cpu").manual_seed(job.seed) for job in jobs],
                output_type="np",
            ).images
        return paste_back(jobs, out)


def load_flux_fill_repainter(name: str, settings: GenerateConfig) -> FluxFillRepainter:
    """The FLUX.1 Fill repainter of `generate.repaint = "flux-fill[:ID]"` (`name` is the ID), loaded once
    per worker with the settings' device, dtype and `flux_fill.offload`."""
    if settings.refiner:
        raise CurateError(
            "generate.refiner is an SDXL refiner and FLUX.1 Fill has none: leave it empty with repaint = 'flux-fill'"
        )
    pipe, provenance = load_flux_fill_pipeline(
        name, settings.device, settings.dtype, settings.flux_fill.offload
    )
    provenance["batch_size"] = settings.batch_size
    return FluxFillRepainter(name=f"flux-fill:{name}", settings=settings, pipe=pipe, provenance=provenance)

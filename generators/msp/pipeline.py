"""`MSPGenerator`: a Stable Diffusion pipeline loaded and checked once, then driven by the MSP loop per batch.

The loop renders each plan's segment map and prompts, then runs the steps that run in two phases:
**composition** (the first ``round(kappa * n)`` of the ``n`` steps that run: every segment denoised
with its own local prompt, composited by the segment masks) and **harmonization** (the rest: the
global prompt over the whole latent). Each step's noise prediction passes through the ``guidance``
hook (SAL when ``sal_model`` is set) before the scheduler step, and each image's provenance records
how it was made.

**kappa is the composition fraction.** In Composite Diffusion the scaffolding factor kappa is the
share of steps spent building segments independently before harmonizing; MSP's appendix reports 8 of
80 steps (with a scaffold) and 2 of 50 (without, and with ControlNet) for that initial stage, i.e.
kappa = 0.1 and 0.04. It counts the steps that actually run, so with a scaffold at strength 0.5 of 80
steps, kappa 0.1 gives 4 composition steps out of 40.

**Scaffolding** starts from an image instead of pure noise, img2img style: the scaffold (typically
the Gen4Gen paste composition of the same plan) is VAE-encoded and noised to the first timestep
that runs.

**ControlNet** (e.g. OpenPose, as in the paper) adds a ControlNetModel's residuals to every UNet
call of both phases when a ControlNet and one control image per plan are given.

SD 1.x/2.x and SDXL base models load; the VAE runs in fp32 when its config says `force_upcast`
(SDXL's overflows in fp16). A refiner (one text encoder, aesthetic score) or an inpainting UNet is
refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from curation.core.config import MSPSettings
from curation.core.devices import resolve_device
from curation.core.errors import CurateError
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Concept, LayoutPlan
from generators.msp.denoise import (
    combine_rows,
    decode,
    initial_latents,
    predict_noise,
    prompt_embedder,
    step_kwargs,
    timesteps_to_run,
)
from generators.msp.sal import GuidanceHook, Phase, SALGuidance, StepState, load_sal
from generators.msp.segments import render_segment_map, segment_prompts

if TYPE_CHECKING:
    import torch

    from curation.models.subject_segmenter import SubjectSegmenter


@dataclass
class MSPResult:
    """One generated image and the provenance run.py writes into `Candidate.extra`."""

    image: Image.Image
    provenance: dict[str, Any] = field(default_factory=dict)


class MSPGenerator:
    """A Stable Diffusion 1.x/2.x or SDXL pipeline driven by the MSP loop; load once per worker, call per batch.

    Args:
        pipe: a loaded StableDiffusionPipeline (hub weights, a local folder, or `curate train` output)
            or StableDiffusionXLPipeline.
        model_id: what provenance records as the model.
        controlnet: an optional loaded ControlNetModel.
        controlnet_id: what provenance records as the ControlNet.
        sal: an optional loaded M_SAL for SAL guidance (else loaded by the first call whose settings
            name one; a call naming another folder loads that one).
    """

    def __init__(
        self,
        pipe: Any,
        model_id: str = "",
        controlnet: Any = None,
        controlnet_id: str = "",
        sal: SubjectSegmenter | None = None,
    ) -> None:
        self.pipe = pipe
        self.model_id = model_id or str(getattr(pipe, "name_or_path", "") or "")
        # an SDXL-style UNet: pooled text embeddings and time ids go with every call
        self.xl = getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"
        self._check_model()
        self.controlnet = controlnet
        self.controlnet_id = controlnet_id
        self.sal = sal
        self._control_processor = None

    @classmethod
    def from_pretrained(
        cls, model: str | Path, controlnet: str | Path | None = None, device: str | None = None
    ) -> MSPGenerator:
        """Load a pipeline (and ControlNet) by hub id or local folder; fp16 on CUDA, fp32 on CPU.

        The folder's model_index.json says which: an SDXL one loads as StableDiffusionXLPipeline,
        anything else as StableDiffusionPipeline.
        """
        from diffusers import (
            ControlNetModel,
            DiffusionPipeline,
            StableDiffusionPipeline,
            StableDiffusionXLPipeline,
        )

        device, dtype = resolve_device(device or "auto", "auto")
        try:
            kind = str(DiffusionPipeline.load_config(str(model)).get("_class_name", ""))
            if kind.startswith("StableDiffusionXL"):
                pipe = StableDiffusionXLPipeline.from_pretrained(str(model), dtype=dtype)
            else:
                pipe = StableDiffusionPipeline.from_pretrained(
                    str(model), dtype=dtype, safety_checker=None, requires_safety_checker=False
                )
            net = ControlNetModel.from_pretrained(str(controlnet), dtype=dtype) if controlnet else None
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CurateError(f"cannot load MSP model {model!s}: {first}") from exc
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        if net is not None:
            net.to(device)
        return cls(pipe, model_id=str(model), controlnet=net, controlnet_id=str(controlnet or ""))

    def _check_model(self) -> None:
        """Refuse what the loop cannot drive; run SDXL's VAE in fp32 where its config asks for it."""
        import torch

        pipe = self.pipe
        if pipe.unet.config.in_channels != pipe.vae.config.latent_channels:
            raise CurateError(
                f"MSP needs a text-to-image UNet; {self.model_id or 'the model'} takes "
                f"{pipe.unet.config.in_channels} input channels (an inpainting model?)"
            )
        if self.xl and getattr(pipe, "text_encoder", None) is None:
            raise CurateError(
                f"MSP needs an SDXL base model with both text encoders; {self.model_id or 'the model'} "
                "has one (a refiner?)"
            )
        if self.xl and getattr(pipe.vae.config, "force_upcast", False) and pipe.vae.dtype == torch.float16:
            pipe.vae.to(torch.float32)  # SDXL's VAE overflows in fp16; its own pipeline upcasts too

    @classmethod
    def from_settings(
        cls, settings: MSPSettings, device: str | None = None, subjects: Sequence[str] = ()
    ) -> MSPGenerator:
        """Load the model, ControlNet and M_SAL that the settings name (what a runner worker does once).

        M_SAL is loaded and checked against `subjects` first, so a missing or mismatched segmenter
        is one error before the diffusion model loads and before any image is made.
        """
        from curation.models.registry import require_local

        sal = load_sal(settings.sal_model, subjects, device) if settings.sal_model else None
        require_local("generate.msp.model", settings.model, pipeline=True)
        if settings.controlnet:
            require_local("generate.msp.controlnet", settings.controlnet)
        generator = cls.from_pretrained(settings.model, controlnet=settings.controlnet or None, device=device)
        if sal is not None:
            sal.model.to(generator.pipe.device)
        generator.sal = sal
        return generator

    def __call__(
        self,
        plans: Sequence[LayoutPlan],
        concepts: dict[str, Concept],
        seeds: Sequence[int],
        settings: MSPSettings | None = None,
        scaffolds: Sequence[Image.Image] | None = None,
        masks: Sequence[dict[str, np.ndarray] | None] | None = None,
        control_images: Sequence[Image.Image] | None = None,
        guidance: GuidanceHook | None = None,
        progress: ProgressFn = no_progress,
    ) -> list[MSPResult]:
        """Generate one image per plan, all plans in one batched denoising loop.

        Args:
            plans: layout plans of one canvas size.
            concepts: concept_id -> Concept for every concept the plans use.
            seeds: one seed per plan; the result of a plan depends only on its seed, not its batch.
            settings: kappa, steps, guidance...; defaults to MSPSettings().
            scaffolds: None, or one scaffold image per plan (then every plan starts img2img style).
            masks: None, or per plan an optional concept_id -> alpha mask replacing the boxes.
            control_images: one control image per plan; requires a ControlNet.
            guidance: hook called at every step (see StepState) returning the noise prediction.
            progress: called as progress("msp steps", done, total).

        Returns:
            One MSPResult per plan, in order.
        """
        import torch

        settings = settings or MSPSettings()
        self._check_batch(plans, seeds, scaffolds, masks, control_images)
        sal_on = bool(settings.sal_model) and guidance is None
        if sal_on:
            subjects = [box.concept_id for plan in plans for box in plan.boxes]
            if self.sal is None or self.sal.source != settings.sal_model:
                self.sal = load_sal(settings.sal_model, subjects, str(self.pipe.device))
            self.sal.check_concepts(subjects, source=settings.sal_model)
            guidance = SALGuidance(self.pipe, self.sal, settings.sal_scale, settings.sal_steps)
        pipe, device = self.pipe, self.pipe.device
        dtype = pipe.unet.dtype
        height, width = plans[0].height, plans[0].width
        latent_hw = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)

        maps, names, locals_, globals_ = [], [], [], []
        for index, plan in enumerate(plans):
            one_hot, seg_names = render_segment_map(plan, latent_hw, masks[index] if masks else None)
            maps.append(torch.from_numpy(one_hot).to(device=device, dtype=dtype))
            names.append(seg_names)
            local, global_prompt = segment_prompts(plan, concepts)
            locals_.append(local)
            globals_.append(global_prompt)

        timesteps, steps_run = timesteps_to_run(pipe, settings, scaffolds is not None)
        n_comp = settings.n_composition(steps_run)
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        latents = initial_latents(pipe, generators, latent_hw, scaffolds, timesteps[:1], height, width)

        cfg = settings.guidance_scale > 1.0
        embed = prompt_embedder(pipe, self.xl, settings.negative_prompt)
        comp_rows = [([""] if cfg else []) + local for local in locals_]
        harm_rows = [([""] if cfg else []) + [prompt] for prompt in globals_]
        comp_embeds = embed([p for rows in comp_rows for p in rows])
        harm_embeds = embed([p for rows in harm_rows for p in rows])
        comp_owner = torch.tensor([i for i, rows in enumerate(comp_rows) for _ in rows], device=device)
        harm_owner = torch.tensor([i for i, rows in enumerate(harm_rows) for _ in rows], device=device)
        control = self._control(control_images, height, width)

        stochastic = step_kwargs(pipe.scheduler, generators)
        order = getattr(pipe.scheduler, "order", 1)
        for i, t in enumerate(timesteps):
            phase: Phase = "composition" if i < n_comp * order else "harmonization"
            owner, embeds = (comp_owner, comp_embeds) if phase == "composition" else (harm_owner, harm_embeds)
            rows = pipe.scheduler.scale_model_input(latents[owner], t)
            out = predict_noise(
                pipe,
                self.controlnet,
                rows,
                t,
                embeds,
                control[owner] if control is not None else None,
                settings,
            )
            noise = combine_rows(out, owner, maps if phase == "composition" else None, cfg, settings)
            if guidance is not None:
                alpha = (
                    float(pipe.scheduler.alphas_cumprod[int(t)])
                    if hasattr(pipe.scheduler, "alphas_cumprod")
                    else 1.0
                )
                noise = guidance(StepState(i, t, phase, latents, noise, maps, names, alpha))
            latents = pipe.scheduler.step(noise, t, latents, **stochastic, return_dict=False)[0]
            progress("msp steps", i + 1, len(timesteps))

        images = decode(pipe, latents)
        return [
            MSPResult(
                image=image,
                provenance={
                    "generator": "msp",
                    "model": self.model_id,
                    "controlnet": self.controlnet_id if control is not None else None,
                    "scheduler": type(pipe.scheduler).__name__,
                    "seed": int(seeds[index]),
                    "kappa": settings.kappa,
                    "steps": settings.steps,
                    "steps_run": steps_run,
                    "composition_steps": n_comp,
                    "switch_step": n_comp,
                    "guidance_scale": settings.guidance_scale,
                    "scaffold": scaffolds is not None,
                    "scaffold_strength": settings.scaffold_strength if scaffolds is not None else None,
                    "segments": names[index],
                    "segment_source": "masks" if masks and masks[index] else "boxes",
                    "segment_prompts": locals_[index],
                    "global_prompt": globals_[index],
                    "segment_pixels": [int(v) for v in maps[index].sum(dim=(1, 2)).tolist()],
                    **(
                        {
                            "sal": {
                                "model": settings.sal_model,
                                "scale": settings.sal_scale,
                                "steps": settings.sal_steps,
                            }
                        }
                        if sal_on
                        else {}
                    ),
                },
            )
            for index, image in enumerate(images)
        ]

    def _check_batch(self, plans, seeds, scaffolds, masks, control_images) -> None:
        """Reject inconsistent batches before any compute, with a message naming the problem."""
        if not plans:
            raise CurateError("MSP: no plans to generate")
        for label, values in (
            ("seeds", seeds),
            ("scaffolds", scaffolds),
            ("masks", masks),
            ("control images", control_images),
        ):
            if values is not None and len(values) != len(plans):
                raise CurateError(f"MSP: {len(values)} {label} for {len(plans)} plans")
        sizes = {(plan.width, plan.height) for plan in plans}
        if len(sizes) > 1:
            raise CurateError(f"MSP: one batch needs one canvas size, got {sorted(sizes)}")
        width, height = sizes.pop()
        multiple = self.pipe.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)
        if width % multiple or height % multiple:
            raise CurateError(f"MSP: canvas {width}x{height} is not a multiple of {multiple}")
        if control_images is not None and self.controlnet is None:
            raise CurateError("MSP: control images given but no ControlNet loaded")

    def _control(self, control_images, height, width) -> torch.Tensor | None:
        """Control images as the ControlNet expects them: RGB in 0..1 at canvas size, one per plan."""
        if control_images is None:
            return None
        from diffusers.image_processor import VaeImageProcessor

        if self._control_processor is None:
            self._control_processor = VaeImageProcessor(
                vae_scale_factor=self.pipe.vae_scale_factor, do_convert_rgb=True, do_normalize=False
            )
        cond = self._control_processor.preprocess(list(control_images), height=height, width=width)
        return cond.to(device=self.pipe.device, dtype=self.controlnet.dtype)

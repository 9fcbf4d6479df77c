"""MSP-Diffusion: multi-subject composites from a segment layout, local prompts and a global prompt.

Follows Multi-Subject Personalization (Jain et al.), which builds on Composite Diffusion (Jamwal & S).
Composite Diffusion has no public code, so the loop below is our reading of it on diffusers parts:

1. **Segment map.** A layout plan becomes a one-hot map at latent resolution: one segment per concept
   (its box, or its pasted alpha mask when the paste composition supplies one; later boxes lie on
   top) plus a background segment that takes every pixel left over.
2. **Composition phase** (the first ``round(kappa * n)`` of the ``n`` denoising steps that run). Each
   segment is denoised with its own local prompt ("a photo of <c-cat> cat"): the UNet sees the
   shared latent once per segment prompt, batched in one forward, and the noise predictions are
   composited by the segment masks before one scheduler step. Classifier-free guidance needs the
   unconditional prediction only once per image, because every segment sees the same latent; since
   the masks sum to one, ``u + g * (sum_i m_i c_i - u)`` equals compositing the per-segment guided
   predictions ``sum_i m_i (u + g (c_i - u))``.
3. **Harmonization phase** (the remaining steps). The paper's "global diffuser": one global prompt
   naming every subject and the background over the whole latent, so segment borders blend and the
   subjects share one scene.

**kappa is the composition fraction.** In Composite Diffusion the scaffolding factor kappa is the
share of steps spent building segments independently before harmonizing; MSP's appendix reports 8 of
80 steps (with a scaffold) and 2 of 50 (without, and with ControlNet) for that initial stage, i.e.
kappa = 0.1 and 0.04. It counts the steps that actually run, so with a scaffold at strength 0.5 of 80
steps, kappa 0.1 gives 4 composition steps out of 40.

**Scaffolding** starts from an image instead of pure noise, img2img style: the scaffold (typically
the Gen4Gen paste composition of the same plan) is VAE-encoded and noised to the first timestep that
runs, chosen by ``scaffold_strength`` exactly as diffusers' img2img chooses it.

**ControlNet** (e.g. OpenPose, as in the paper) adds a ControlNetModel's residuals to every UNet
call of both phases when a ControlNet and one control image per plan are given.

**Subject-aware segmentation loss** (the paper's SAL, appendix A.4) runs through the ``guidance``
hook, which receives every step's state and returns a corrected noise prediction. `SALGuidance`, on
when ``[generate.msp] sal_model`` names a `curate train-segmenter` folder (M_SAL), does at each of
the first ``sal_steps`` steps: x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) with the guided,
composited eps; decode x0_hat with the VAE; for each subject segment j, M_SAL segments
``x0_hat * m_j`` and the loss is the binary cross-entropy of M_SAL's class-j probability against
"is subject j" on the segment's pixels (our reading of the paper's ``1 - BCE(M(x), M(x))``, which as
printed is constant); the loss's gradient g w.r.t. x_t (eps held fixed) enters as classifier
guidance, eps + sal_scale * sqrt(1 - a_t) * g, which moves x0_hat against g, i.e. lowers the loss.
Schedulers without ``alphas_cumprod`` (a_t = 1) get no SAL correction.

**SDXL** takes the same loop: its `encode_prompt` gives each segment prompt's encoder states (both
text encoders) and pooled embedding, and every UNet (and ControlNet) call gets them with the added
time ids (original size = target size = the canvas, no crop), as its own pipeline passes them. The
unconditional row is zeros when the negative prompt is empty and the model sets
`force_zeros_for_empty_prompt` (SDXL base does), as in its pipeline; the VAE runs in fp32 when its
config says `force_upcast` (SDXL's overflows in fp16). A refiner (one text encoder, aesthetic
score) or an inpainting UNet is refused. x0_hat for SAL is taken from the scheduler's scaled model
input, so sigma-scaled schedulers (Euler, SDXL's default) give the same x0_hat as DDPM-scaled ones.

Heavy libraries are imported inside functions so importing this module stays cheap. `MSPSettings`
lives in `curation.core.config` (it is the `[generate.msp]` section of curate.toml) and is re-exported here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from curation.core.config import MSPSettings
from curation.core.devices import resolve_device
from curation.core.errors import CurateError
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Concept, LayoutPlan
from generators.phrases import join_phrases

if TYPE_CHECKING:
    import torch

    from curation.models.subject_segmenter import SubjectSegmenter

BACKGROUND = "<background>"
"""Name of the background segment; angle brackets keep it apart from any concept id."""

Phase = Literal["composition", "harmonization"]


@dataclass
class StepState:
    """What the `guidance` hook sees at one scheduler step (tensors of the whole batch).

    Attributes:
        step_index: position in the steps that run (0-based).
        timestep: the scheduler timestep.
        phase: "composition" or "harmonization".
        latents: the latents before this step, [B, C, h, w].
        noise_pred: the guided, composited model output about to be passed to the scheduler.
        masks: per plan, the one-hot segment map [S_p, h, w] on the latents' device.
        segment_names: per plan, the names of its segments (concept ids, then BACKGROUND).
        alpha_cumprod: the scheduler's alpha-bar at this timestep, for predicting x0 from the noise.
    """

    step_index: int
    timestep: Any
    phase: Phase
    latents: torch.Tensor
    noise_pred: torch.Tensor
    masks: list[torch.Tensor]
    segment_names: list[list[str]]
    alpha_cumprod: float


GuidanceHook = Callable[[StepState], "torch.Tensor"]
Embeds = tuple["torch.Tensor", "torch.Tensor | None"]
"""Per UNet row: encoder hidden states, and the pooled text embedding for SDXL (None for SD 1.x/2.x)."""
"""Returns the (possibly corrected) noise prediction; the seam for subject-aware segmentation loss."""


def sal_loss(
    segmenter: SubjectSegmenter, pixels: torch.Tensor, masks: list[torch.Tensor], names: list[list[str]]
) -> torch.Tensor:
    """SAL summed over every subject segment of every image (background segments are not scored).

    Args:
        segmenter: M_SAL.
        pixels: decoded x0_hat in 0..1, [B, 3, H, W].
        masks: per image, its one-hot segment map [S, h, w] (latent size; upsampled nearest here).
        names: per image, its segment names (concept ids, BACKGROUND last).

    Returns:
        Scalar: per segment, mean over its pixels of -log p(class j), where p is M_SAL's softmax.
    """
    import torch
    import torch.nn.functional as F

    from curation.models.subject_segmenter import masked

    inputs, regions, classes = [], [], []
    for index, (seg_map, seg_names) in enumerate(zip(masks, names)):
        for j, name in enumerate(seg_names):
            if name == BACKGROUND or not bool(seg_map[j].any()):
                continue
            region = seg_map[j][None, None].float()
            inputs.append(masked(pixels[index : index + 1], region))
            regions.append(region)
            classes.append(segmenter.class_of(name))
    if not inputs:
        return pixels.sum() * 0.0
    logits = segmenter.logits(torch.cat(inputs))
    log_p = F.log_softmax(logits.float(), dim=1)
    total = log_p.new_zeros(())
    for k, (region, cls) in enumerate(zip(regions, classes)):
        weight = F.interpolate(region.to(log_p.device), size=log_p.shape[-2:], mode="nearest")[0, 0]
        total = total - (log_p[k, cls] * weight).sum() / weight.sum().clamp(min=1.0)
    return total


class SALGuidance:
    """The `guidance` hook that adds the SAL gradient (see the module docstring).

    Args:
        pipe: the pipeline whose VAE decodes x0_hat.
        segmenter: M_SAL, with a class for every subject it will see.
        scale: weight of the gradient; 0 returns the noise prediction untouched.
        steps: how many of the first steps that run are guided.
    """

    def __init__(self, pipe: Any, segmenter: SubjectSegmenter, scale: float, steps: int):
        self.pipe, self.segmenter, self.scale, self.steps = pipe, segmenter, scale, steps

    def x0_pixels(
        self, latents: torch.Tensor, noise_pred: torch.Tensor, alpha: float, timestep: Any
    ) -> torch.Tensor:
        """Decoded x0_hat in 0..1, differentiable w.r.t. `latents`.

        The scheduler's scaled model input is x_t in DDPM scale whatever the scheduler: the latents
        themselves for DDIM/DDPM/DPM-Solver, latents / sqrt(sigma^2 + 1) for Euler-type schedulers
        (which read sigma at their current step: call this within the step, as the hook is).
        """
        vae = self.pipe.vae
        x_t = self.pipe.scheduler.scale_model_input(latents, timestep)
        x0 = (x_t - math.sqrt(1.0 - alpha) * noise_pred) / math.sqrt(alpha)
        pixels = vae.decode(x0.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return (pixels.float() / 2 + 0.5).clamp(0, 1)

    def loss_and_grad(self, state: StepState) -> tuple[torch.Tensor, torch.Tensor]:
        """SAL at this step and its gradient w.r.t. the latents (the noise prediction held fixed)."""
        import torch

        with torch.enable_grad():
            latents = state.latents.detach().float().requires_grad_(True)
            pixels = self.x0_pixels(
                latents, state.noise_pred.detach().float(), state.alpha_cumprod, state.timestep
            )
            loss = sal_loss(self.segmenter, pixels, state.masks, state.segment_names)
            (grad,) = torch.autograd.grad(loss, latents, allow_unused=True)
        return loss.detach(), torch.zeros_like(latents) if grad is None else grad

    def __call__(self, state: StepState) -> torch.Tensor:
        if self.scale == 0 or state.step_index >= self.steps or state.alpha_cumprod >= 1.0:
            return state.noise_pred
        _, grad = self.loss_and_grad(state)
        step = self.scale * math.sqrt(1.0 - state.alpha_cumprod) * grad
        return state.noise_pred + step.to(state.noise_pred.dtype)


@dataclass
class MSPResult:
    """One generated image and the provenance run.py writes into `Candidate.extra`."""

    image: Image.Image
    provenance: dict[str, Any] = field(default_factory=dict)


def render_segment_map(
    plan: LayoutPlan,
    latent_hw: tuple[int, int],
    masks: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Rasterize a plan into a one-hot segment map at latent resolution.

    Boxes are scaled from the plan's canvas to the latent grid with floor/ceil so even a small box
    keeps at least one latent pixel; later boxes lie on top. A concept with a pasted alpha mask
    (full-canvas, 0..1 float or 0..255 uint8) uses the mask instead of its box, area-averaged down
    and thresholded at 0.5, so its segment is the object's silhouette and the rest of its box goes
    to the background prompt. Masked concepts are drawn after the boxes, in the dict's order (back
    to front), which is the paste composition's drawing order when the dict comes from
    `masks_from_layers`; the segment names keep the plan's box order either way.

    Args:
        plan: the layout plan (canvas size plan.width x plan.height).
        latent_hw: (h, w) of the latent grid.
        masks: optional concept_id -> alpha mask at canvas (or any) resolution, back to front.

    Returns:
        (one-hot float32 array [S, h, w] with S = len(plan.boxes) + 1, segment names ending in BACKGROUND).
    """
    h, w = latent_hw
    masks = masks or {}
    names = [box.concept_id for box in plan.boxes] + [BACKGROUND]
    unknown = [concept_id for concept_id in masks if concept_id not in names[:-1]]
    if unknown:
        raise CurateError(f"plan {plan.plan_id or '?'}: masks for concepts it has no box for: {unknown}")
    owner = np.full((h, w), len(plan.boxes), dtype=np.int64)
    for index, box in enumerate(plan.boxes):
        if box.concept_id not in masks:
            x0, x1 = math.floor(box.x * w / plan.width), math.ceil((box.x + box.w) * w / plan.width)
            y0, y1 = math.floor(box.y * h / plan.height), math.ceil((box.y + box.h) * h / plan.height)
            owner[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)] = index
    for concept_id, mask in masks.items():
        owner[_mask_at(mask, (h, w))] = names.index(concept_id)
    one_hot = (owner[None] == np.arange(len(names))[:, None, None]).astype(np.float32)
    return one_hot, names


def masks_from_layers(layers: Sequence[Any], width: int, height: int) -> dict[str, np.ndarray]:
    """Full-canvas alpha masks from pasted layers (`generators.compose.Layer`), back to front.

    Each layer has `concept_id`, `x`, `y` (its top-left corner on the canvas, may lie outside)
    and `alpha` (float 0..1, the layer's own size); the dict keeps the layers' drawing order.
    """
    masks: dict[str, np.ndarray] = {}
    for layer in layers:
        canvas = np.zeros((height, width), dtype=np.float32)
        lh, lw = layer.alpha.shape
        x0, y0 = max(layer.x, 0), max(layer.y, 0)
        x1, y1 = min(layer.x + lw, width), min(layer.y + lh, height)
        if x1 > x0 and y1 > y0:
            canvas[y0:y1, x0:x1] = layer.alpha[y0 - layer.y : y1 - layer.y, x0 - layer.x : x1 - layer.x]
        masks[layer.concept_id] = canvas
    return masks


def _mask_at(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A soft alpha mask as a boolean region on the latent grid."""
    import cv2

    alpha = np.asarray(mask, dtype=np.float32)
    if alpha.ndim == 3:
        alpha = alpha[..., -1]
    if alpha.max(initial=0.0) > 1.0:
        alpha = alpha / 255.0
    small = cv2.resize(alpha, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    return small >= 0.5


def _load_sal(path: str, subjects: Sequence[str], device: str | None) -> SubjectSegmenter:
    """M_SAL from a `curate train-segmenter` folder, with a class for every subject (else one CurateError)."""
    from curation.models.subject_segmenter import SubjectSegmenter

    segmenter = SubjectSegmenter.load(path, device)
    segmenter.check_concepts(subjects, source=path)
    return segmenter


def segment_prompts(plan: LayoutPlan, concepts: dict[str, Concept]) -> tuple[list[str], str]:
    """Local prompt per segment (same order as `render_segment_map`) and the global prompt.

    A concept's segment names it by token and class noun, so personalized weights from
    `curate train` bind the token; the background segment describes the background; the global
    prompt names everything, because harmonization must keep every subject alive.
    """
    missing = [box.concept_id for box in plan.boxes if box.concept_id not in concepts]
    if missing:
        raise CurateError(f"plan {plan.plan_id or '?'}: unknown concept(s) {', '.join(missing)}")
    phrases = [concepts[box.concept_id].phrase for box in plan.boxes]
    local = [f"a photo of {phrase}" for phrase in phrases] + [f"a photo of {plan.background}"]
    return local, f"a photo of {join_phrases(phrases)}, {plan.background}"


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
        sal = _load_sal(settings.sal_model, subjects, device) if settings.sal_model else None
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
                self.sal = _load_sal(settings.sal_model, subjects, str(self.pipe.device))
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

        timesteps, steps_run = self._timesteps(settings, scaffolds is not None)
        n_comp = settings.n_composition(steps_run)
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        latents = self._initial_latents(generators, latent_hw, scaffolds, timesteps[:1], height, width)

        cfg = settings.guidance_scale > 1.0
        embed = self._embedder(settings.negative_prompt)
        comp_rows = [([""] if cfg else []) + local for local in locals_]
        harm_rows = [([""] if cfg else []) + [prompt] for prompt in globals_]
        comp_embeds = embed([p for rows in comp_rows for p in rows])
        harm_embeds = embed([p for rows in harm_rows for p in rows])
        comp_owner = torch.tensor([i for i, rows in enumerate(comp_rows) for _ in rows], device=device)
        harm_owner = torch.tensor([i for i, rows in enumerate(harm_rows) for _ in rows], device=device)
        control = self._control(control_images, height, width)

        step_kwargs = self._step_kwargs(generators)
        order = getattr(pipe.scheduler, "order", 1)
        for i, t in enumerate(timesteps):
            phase: Phase = "composition" if i < n_comp * order else "harmonization"
            owner, embeds = (comp_owner, comp_embeds) if phase == "composition" else (harm_owner, harm_embeds)
            rows = pipe.scheduler.scale_model_input(latents[owner], t)
            out = self._predict(rows, t, embeds, control[owner] if control is not None else None, settings)
            noise = self._combine(out, owner, maps if phase == "composition" else None, cfg, settings)
            if guidance is not None:
                alpha = (
                    float(pipe.scheduler.alphas_cumprod[int(t)])
                    if hasattr(pipe.scheduler, "alphas_cumprod")
                    else 1.0
                )
                noise = guidance(StepState(i, t, phase, latents, noise, maps, names, alpha))
            latents = pipe.scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
            progress("msp steps", i + 1, len(timesteps))

        images = self._decode(latents)
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

    def _timesteps(self, settings: MSPSettings, scaffolded: bool) -> tuple[Any, int]:
        """The timesteps that run: all of them, or the img2img tail chosen by scaffold_strength."""
        scheduler = self.pipe.scheduler
        scheduler.set_timesteps(settings.steps, device=self.pipe.device)
        order = getattr(scheduler, "order", 1)
        if not scaffolded:
            return scheduler.timesteps, settings.steps
        steps_run = min(int(settings.steps * settings.scaffold_strength), settings.steps)
        if steps_run < 1:
            raise CurateError(
                f"MSP: scaffold_strength {settings.scaffold_strength} leaves no step of {settings.steps}"
            )
        start = settings.steps - steps_run
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start * order)
        return scheduler.timesteps[start * order :], steps_run

    def _initial_latents(self, generators, latent_hw, scaffolds, first_t, height, width) -> torch.Tensor:
        """Pure seeded noise, or each scaffold's VAE latent noised to the first timestep that runs.

        Noise is drawn on the CPU per plan, so a seed gives the same start on any device and in any batch.
        """
        import torch

        pipe = self.pipe
        shape = (pipe.unet.config.in_channels, *latent_hw)
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(
            pipe.device, pipe.unet.dtype
        )
        if scaffolds is None:
            return noise * pipe.scheduler.init_noise_sigma
        pixels = pipe.image_processor.preprocess(list(scaffolds), height=height, width=width)
        pixels = pixels.to(device=pipe.device, dtype=pipe.vae.dtype)
        with torch.no_grad():
            clean = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
        return pipe.scheduler.add_noise(clean.to(noise.dtype), noise, first_t.repeat(len(generators)))

    def _embedder(self, negative_prompt: str) -> Callable[[list[str]], Embeds]:
        """Encode prompts through the pipeline's own encode_prompt, each distinct text once.

        The empty text is the unconditional prompt: the negative prompt, or zeros for an SDXL model
        with `force_zeros_for_empty_prompt` and no negative prompt, as its pipeline does.
        """
        import torch

        pipe = self.pipe
        zeros = self.xl and not negative_prompt and bool(pipe.config.get("force_zeros_for_empty_prompt"))

        def embed(prompts: list[str]) -> Embeds:
            unique = sorted(set(prompts))
            texts = [negative_prompt if p == "" else p for p in unique]
            pooled = None
            with torch.no_grad():
                if self.xl:
                    hidden, _, pooled, _ = pipe.encode_prompt(
                        texts, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
                    )
                else:
                    hidden, _ = pipe.encode_prompt(texts, pipe.device, 1, False)
            if zeros and "" in unique:
                hidden[unique.index("")] = 0
                pooled[unique.index("")] = 0
            order = torch.tensor([unique.index(p) for p in prompts], device=hidden.device)
            return hidden[order], None if pooled is None else pooled[order]

        return embed

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

    def _predict(self, rows, t, embeds: Embeds, control, settings: MSPSettings) -> torch.Tensor:
        """One (chunked) UNet forward over all rows, with ControlNet residuals when given.

        SDXL rows also get their pooled embedding and the time ids (canvas size, no crop, canvas size).
        """
        import torch

        hidden, pooled = embeds
        size = settings.max_unet_batch or rows.shape[0]
        height, width = (side * self.pipe.vae_scale_factor for side in rows.shape[-2:])
        time_ids = hidden.new_tensor([[height, width, 0, 0, height, width]])
        outputs = []
        with torch.no_grad():
            for start in range(0, rows.shape[0], size):
                part = slice(start, start + size)
                cond: dict[str, Any] = {"encoder_hidden_states": hidden[part]}
                if pooled is not None:
                    n = pooled[part].shape[0]
                    cond["added_cond_kwargs"] = {
                        "text_embeds": pooled[part],
                        "time_ids": time_ids.expand(n, -1),
                    }
                extra = {}
                if control is not None:
                    down, mid = self.controlnet(
                        rows[part],
                        t,
                        controlnet_cond=control[part],
                        conditioning_scale=settings.controlnet_scale,
                        return_dict=False,
                        **cond,
                    )
                    extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
                outputs.append(self.pipe.unet(rows[part], t, return_dict=False, **cond, **extra)[0])
        return torch.cat(outputs)

    @staticmethod
    def _combine(out, owner, maps, cfg: bool, settings: MSPSettings) -> torch.Tensor:
        """Per plan: composite the segment predictions by their masks (composition) and apply CFG."""
        import torch

        combined = []
        for index in range(int(owner.max()) + 1):
            rows = out[owner == index]
            uncond, cond = (rows[0], rows[1:]) if cfg else (None, rows)
            cond = (maps[index][:, None] * cond).sum(dim=0) if maps is not None else cond[0]
            combined.append(uncond + settings.guidance_scale * (cond - uncond) if cfg else cond)
        return torch.stack(combined)

    def _step_kwargs(self, generators) -> dict[str, Any]:
        """Per-plan generators for stochastic schedulers (DDPM, ancestral), when the scheduler takes them."""
        accepted = inspect.signature(self.pipe.scheduler.step).parameters
        return {"generator": generators} if "generator" in accepted else {}

    def _decode(self, latents) -> list[Image.Image]:
        import torch

        vae = self.pipe.vae
        with torch.no_grad():
            pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(pixels, output_type="pil")

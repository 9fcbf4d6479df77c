"""Guidance of the MSP loop: what a guidance hook sees at each step, and SAL, the hook curate ships.

The loop calls its ``guidance`` hook at every step with a `StepState` and denoises with the noise
prediction the hook returns. **Subject-aware segmentation loss** (the paper's SAL, appendix A.4) is
that hook: `SALGuidance`, on when ``[generate.msp] sal_model`` names a `curate train-segmenter`
folder (M_SAL), does at each of the first ``sal_steps`` steps: x0_hat = (x_t - sqrt(1 - a_t) eps) /
sqrt(a_t) with the guided, composited eps; decode x0_hat with the VAE; for each subject segment j,
M_SAL segments ``x0_hat * m_j`` and the loss is the binary cross-entropy of M_SAL's class-j
probability against "is subject j" on the segment's pixels (our reading of the paper's
``1 - BCE(M(x), M(x))``, which as printed is constant); the loss's gradient g w.r.t. x_t (eps held
fixed) enters as classifier guidance, eps + sal_scale * sqrt(1 - a_t) * g, which moves x0_hat
against g, i.e. lowers the loss. Schedulers without ``alphas_cumprod`` (a_t = 1) get no SAL
correction. x0_hat is taken from the scheduler's scaled model input, so sigma-scaled schedulers
(Euler, SDXL's default) give the same x0_hat as DDPM-scaled ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from generators.msp.segments import BACKGROUND

if TYPE_CHECKING:
    import torch

    from curation.models.subject_segmenter import SubjectSegmenter

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


def load_sal(path: str, subjects: Sequence[str], device: str | None) -> SubjectSegmenter:
    """M_SAL from a `curate train-segmenter` folder, with a class for every subject (else one CurateError)."""
    from curation.models.subject_segmenter import SubjectSegmenter

    segmenter = SubjectSegmenter.load(path, device)
    segmenter.check_concepts(subjects, source=path)
    return segmenter

"""MSP-Diffusion: multi-subject composites from a segment layout, local prompts and a global prompt.

Follows Multi-Subject Personalization (Jain et al.), which builds on Composite Diffusion (Jamwal & S).
Composite Diffusion has no public code, so the loop is our reading of it on diffusers parts:

1. **Segment map.** A layout plan becomes a one-hot map at latent resolution: one segment per concept
   (its box, or its pasted alpha mask when the paste composition supplies one; later boxes lie on
   top) plus a background segment that takes every pixel left over.
2. **Composition phase** (the first ``round(kappa * n)`` of the ``n`` denoising steps that run). Each
   segment is denoised with its own local prompt ("a photo of <c-cat> cat"), and the noise
   predictions are composited by the segment masks before one scheduler step.
3. **Harmonization phase** (the remaining steps). The paper's "global diffuser": one global prompt
   naming every subject and the background over the whole latent, so segment borders blend and the
   subjects share one scene.

The package has one module per part, each importing only those listed before it:

- `segments`: the segment map of a plan and each segment's prompt;
- `sal`: the guidance hook's view of a step (`StepState`) and SAL, the subject-aware segmentation
  loss that steers the first steps through M_SAL;
- `denoise`: the diffusers mechanics of one batch (timesteps, start latents, prompt embeddings, the
  UNet and ControlNet forward, compositing with classifier-free guidance, decoding);
- `pipeline`: `MSPGenerator`, which loads and checks a model and runs the two phases.

Heavy libraries are imported inside functions so importing any of them stays cheap. `MSPSettings`
lives in `curation.core.config` (it is the `[generate.msp]` section of curate.toml).
"""

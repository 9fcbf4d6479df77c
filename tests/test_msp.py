"""MSP-Diffusion on a tiny random-init Stable Diffusion: regions, phases, scaffolding, determinism, ControlNet;
and on a tiny random-init SDXL (`stabilityai/stable-diffusion-xl-base-1.0`'s classes and config keys).

The UNet is instrumented with forward hooks (no mocks): the tests see exactly which prompt
embeddings reach it at each step and compare the composited prediction with separate
single-prompt UNet calls.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curation.core.config import MSPSettings
from curation.core.errors import CurateError
from curation.core.records import Box, Concept, LayoutPlan
from generators.msp.pipeline import MSPGenerator
from generators.msp.sal import SALGuidance, StepState
from generators.msp.segments import BACKGROUND, masks_from_layers, render_segment_map, segment_prompts
from tests.fixtures.tiny_pipelines import build_tiny_sd, build_tiny_sdxl, build_tiny_sdxl_inpaint

CANVAS = 32  # pixels; the tiny VAE halves it, so latents are 16x16


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("msp-sd"))


@pytest.fixture(scope="module")
def gen(sd_folder) -> MSPGenerator:
    return MSPGenerator.from_pretrained(sd_folder, device="cpu")


@pytest.fixture(scope="module")
def concepts() -> dict[str, Concept]:
    return {c: Concept(concept_id=c, name=c, class_noun=c, token=f"<c-{c}>") for c in ("cat", "mug", "clock")}


def _plan(boxes: list[tuple[str, int, int, int, int]], size: int = CANVAS) -> LayoutPlan:
    return LayoutPlan(
        concepts=[b[0] for b in boxes],
        background="a sunny beach",
        boxes=[Box(concept_id=c, x=x, y=y, w=w, h=h) for c, x, y, w, h in boxes],
        width=size,
        height=size,
        planner="rules",
    ).with_id()


@pytest.fixture(scope="module")
def plan() -> LayoutPlan:
    return _plan([("cat", 0, 0, 16, 32), ("mug", 16, 8, 16, 16)])


@contextmanager
def unet_calls(gen: MSPGenerator):
    """Record (timestep, encoder_hidden_states) of every real UNet forward."""
    calls: list[tuple[float, torch.Tensor]] = []

    def record(module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        calls.append((float(t), kwargs["encoder_hidden_states"].detach().clone()))

    handle = gen.pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _embed(gen: MSPGenerator, prompt: str) -> torch.Tensor:
    return gen.pipe.encode_prompt([prompt], gen.pipe.device, 1, False)[0][0]


def _recorder(states: list[StepState]):
    def hook(state: StepState) -> torch.Tensor:
        states.append(state)
        return state.noise_pred

    return hook


def test_segment_map_is_one_hot_with_boxes_on_top_and_background_rest():
    plan = _plan([("cat", 0, 0, 36, 64), ("mug", 32, 16, 32, 32), ("clock", 60, 60, 1, 1)], size=64)
    one_hot, names = render_segment_map(plan, (8, 8))
    assert names == ["cat", "mug", "clock", BACKGROUND]
    assert one_hot.shape == (4, 8, 8)
    assert set(np.unique(one_hot)) == {0.0, 1.0}
    np.testing.assert_array_equal(one_hot.sum(axis=0), np.ones((8, 8)))
    owner = one_hot.argmax(axis=0)
    assert (owner[:, :4] == 0).all() and (owner[:2, 4] == 0).all()  # cat's box, ceil keeps column 4
    assert (owner[2:6, 4:8] == 1).all()  # mug drawn after cat, so on top where they overlap
    assert owner[7, 7] == 2  # a 1-pixel box still owns one latent pixel
    assert (owner[6, 5:7] == 3).all() and owner[0, 7] == 3  # what no box covers is background


def test_pasted_mask_replaces_box_and_soft_alpha_is_thresholded():
    plan = _plan([("cat", 0, 0, 64, 64)], size=64)
    alpha = np.zeros((64, 64), dtype=np.uint8)
    alpha[:, :32] = 255
    alpha[:, 32:40] = 100  # faint fringe below one half
    one_hot, _ = render_segment_map(plan, (8, 8), masks={"cat": alpha})
    assert one_hot[0, :, :4].all() and not one_hot[0, :, 4:].any()
    assert one_hot[1, :, 4:].all()


def test_pasted_layers_give_silhouette_segments_in_drawing_order():
    """The paste composition's layers (back to front) decide who owns an overlap, not the plan order."""
    from generators.compose import Layer

    plan = _plan([("cat", 0, 0, 40, 40), ("mug", 24, 24, 40, 40)], size=64)
    square = np.ones((40, 40), dtype=np.float32)
    corner = square.copy()
    corner[:16, :16] = 0.0  # the cat photo's top-left corner is not cat
    layers = [
        Layer("mug", 24, 24, np.zeros((40, 40, 3), np.uint8), square),
        Layer("cat", 0, 0, np.zeros((40, 40, 3), np.uint8), corner),
    ]
    masks = masks_from_layers(layers, 64, 64)
    assert list(masks) == ["mug", "cat"] and masks["mug"].shape == (64, 64)
    owner = render_segment_map(plan, (8, 8), masks=masks)[0].argmax(axis=0)
    assert (owner[3:5, 3:5] == 0).all()  # overlap: the cat layer was pasted last
    assert (owner[5:8, 5:8] == 1).all()
    assert (owner[:2, :2] == 2).all()  # inside the cat's box but outside its silhouette
    with pytest.raises(CurateError, match="no box for"):
        render_segment_map(plan, (8, 8), masks={"clock": square})


def test_segment_prompts_name_token_and_class(plan, concepts):
    local, global_prompt = segment_prompts(plan, concepts)
    assert local == ["a photo of <c-cat> cat", "a photo of <c-mug> mug", "a photo of a sunny beach"]
    assert global_prompt == "a photo of <c-cat> cat and <c-mug> mug, a sunny beach"
    with pytest.raises(CurateError, match="unknown concept"):
        segment_prompts(plan, {"cat": concepts["cat"]})


def test_each_segment_prompt_conditions_only_its_region(gen, plan, concepts):
    states: list[StepState] = []
    settings = MSPSettings(steps=3, kappa=1.0, guidance_scale=5.0)
    with unet_calls(gen) as calls:
        results = gen([plan], concepts, [7], settings, guidance=_recorder(states))
    local, _ = segment_prompts(plan, concepts)

    # the first UNet call saw the unconditional row and then exactly one row per segment prompt
    _, rows = calls[0]
    expected = torch.stack([_embed(gen, "")] + [_embed(gen, p) for p in local])
    torch.testing.assert_close(rows, expected)

    state = states[0]
    x = gen.pipe.scheduler.scale_model_input(state.latents, state.timestep)
    with torch.no_grad():
        uncond = gen.pipe.unet(x, state.timestep, encoder_hidden_states=_embed(gen, "")[None]).sample
        guided = []
        for prompt in local:
            cond = gen.pipe.unet(x, state.timestep, encoder_hidden_states=_embed(gen, prompt)[None]).sample
            guided.append(uncond + settings.guidance_scale * (cond - uncond))
    masks = state.masks[0].bool()
    for i, eps in enumerate(guided):
        region = masks[i]
        assert region.any()
        torch.testing.assert_close(state.noise_pred[0][:, region], eps[0][:, region], atol=1e-4, rtol=1e-4)
        for j, other in enumerate(guided):
            if j != i:  # the other prompts would have predicted something else there
                assert (state.noise_pred[0][:, region] - other[0][:, region]).abs().max() > 1e-2
    assert results[0].provenance["segments"] == ["cat", "mug", BACKGROUND]


def _phase_of_call(gen, rows: torch.Tensor, global_prompt: str) -> str:
    is_global = torch.allclose(rows[-1], _embed(gen, global_prompt)) and rows.shape[0] == 2
    return "harmonization" if is_global else "composition"


@pytest.mark.parametrize(
    ("kappa", "steps", "strength", "expected_comp", "expected_run"),
    [
        (0.4, 5, None, 2, 5),
        (0.2, 10, None, 2, 10),
        (0.0, 3, None, 0, 3),
        (1.0, 3, None, 3, 3),
        (0.5, 8, 0.5, 2, 4),
    ],
)
def test_kappa_switches_from_composition_to_harmonization(
    gen, plan, concepts, kappa, steps, strength, expected_comp, expected_run
):
    settings = MSPSettings(steps=steps, kappa=kappa, scaffold_strength=strength or 0.9)
    scaffold = [Image.new("RGB", (CANVAS, CANVAS), (200, 40, 40))] if strength else None
    states: list[StepState] = []
    with unet_calls(gen) as calls:
        result = gen([plan], concepts, [3], settings, scaffolds=scaffold, guidance=_recorder(states))[0]
    _, global_prompt = segment_prompts(plan, concepts)
    seen = [_phase_of_call(gen, rows, global_prompt) for _, rows in calls]
    assert seen == ["composition"] * expected_comp + ["harmonization"] * (expected_run - expected_comp)
    assert [s.phase for s in states] == seen
    assert result.provenance["switch_step"] == expected_comp
    assert result.provenance["steps_run"] == expected_run


def test_all_harmonization_is_the_plain_pipeline_on_the_global_prompt(gen, plan, concepts):
    """kappa = 0 must reduce to StableDiffusionPipeline on the global prompt with the same noise."""
    settings = MSPSettings(steps=3, kappa=0.0, guidance_scale=4.0)
    ours = np.asarray(gen([plan], concepts, [11], settings)[0].image, dtype=np.int16)
    _, global_prompt = segment_prompts(plan, concepts)
    noise = torch.randn((4, 16, 16), generator=torch.Generator("cpu").manual_seed(11))[None]
    plain = gen.pipe(
        global_prompt, height=CANVAS, width=CANVAS, num_inference_steps=3, guidance_scale=4.0, latents=noise
    ).images[0]
    assert np.abs(ours - np.asarray(plain, dtype=np.int16)).max() <= 1


def test_scaffold_changes_the_starting_latents(gen, plan, concepts):
    settings = MSPSettings(steps=4, kappa=0.5, scaffold_strength=0.75)
    seed = 5
    noise = torch.randn((4, 16, 16), generator=torch.Generator("cpu").manual_seed(seed))

    plain_states: list[StepState] = []
    gen([plan], concepts, [seed], settings, guidance=_recorder(plain_states))
    torch.testing.assert_close(plain_states[0].latents[0], noise * gen.pipe.scheduler.init_noise_sigma)

    red = Image.new("RGB", (CANVAS, CANVAS), (220, 30, 30))
    blue = Image.new("RGB", (CANVAS, CANVAS), (30, 30, 220))
    starts = []
    for scaffold in (red, blue):
        states: list[StepState] = []
        gen([plan], concepts, [seed], settings, scaffolds=[scaffold], guidance=_recorder(states))
        starts.append(states[0])
    first_t = starts[0].timestep
    assert first_t < plain_states[0].timestep  # strength 0.75 skips the noisiest step
    pixels = gen.pipe.image_processor.preprocess(red, height=CANVAS, width=CANVAS)
    with torch.no_grad():
        clean = gen.pipe.vae.encode(pixels).latent_dist.mode() * gen.pipe.vae.config.scaling_factor
    expected = gen.pipe.scheduler.add_noise(clean, noise[None], torch.tensor([int(first_t)]))
    torch.testing.assert_close(starts[0].latents, expected)
    assert (starts[0].latents - starts[1].latents).abs().max() > 1e-2
    assert (starts[0].latents[0] - noise).abs().max() > 1e-2


def test_deterministic_per_seed_and_independent_of_the_batch(gen, plan, concepts):
    other = _plan([("clock", 4, 4, 24, 24)])
    settings = MSPSettings(steps=3, kappa=0.34)
    alone = np.asarray(gen([plan], concepts, [42], settings)[0].image, dtype=np.int16)
    again = np.asarray(gen([plan], concepts, [42], settings)[0].image, dtype=np.int16)
    batched = gen([other, plan], concepts, [1, 42], settings)
    reseeded = np.asarray(gen([plan], concepts, [43], settings)[0].image, dtype=np.int16)
    np.testing.assert_array_equal(alone, again)
    assert np.abs(alone - np.asarray(batched[1].image, dtype=np.int16)).max() <= 1
    assert np.abs(alone - reseeded).max() > 10
    assert batched[0].provenance["segments"] == ["clock", BACKGROUND]
    assert batched[1].provenance["seed"] == 42


def test_guidance_hook_is_applied_to_every_step(gen, plan, concepts):
    settings = MSPSettings(steps=3, kappa=0.34)
    base = np.asarray(gen([plan], concepts, [9], settings)[0].image, dtype=np.int16)
    hooked = gen([plan], concepts, [9], settings, guidance=lambda s: s.noise_pred * 0.5)[0]
    assert np.abs(base - np.asarray(hooked.image, dtype=np.int16)).max() > 10


def test_bad_batches_are_refused_before_any_compute(gen, plan, concepts):
    with pytest.raises(CurateError, match="2 seeds for 1 plans"):
        gen([plan], concepts, [1, 2])
    with pytest.raises(CurateError, match="one canvas size"):
        gen([plan, _plan([("cat", 0, 0, 8, 8)], size=64)], concepts, [1, 2])
    with pytest.raises(CurateError, match="not a multiple"):
        gen([_plan([("cat", 0, 0, 8, 8)], size=30)], concepts, [1])
    with pytest.raises(CurateError, match="no ControlNet"):
        gen([plan], concepts, [1], control_images=[Image.new("RGB", (CANVAS, CANVAS))])
    with pytest.raises(CurateError, match="cannot load MSP model"):
        MSPGenerator.from_pretrained(Path("/nonexistent/sd"), device="cpu")


@pytest.fixture(scope="module")
def controlnet_folder(sd_folder, tmp_path_factory) -> Path:
    """A random-init ControlNet shaped like the tiny UNet; its zero-initialised convs get random weights so it acts."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    torch.manual_seed(1)
    with torch.no_grad():
        for block in [
            *net.controlnet_down_blocks,
            net.controlnet_mid_block,
            net.controlnet_cond_embedding.conv_out,
        ]:
            block.weight.normal_(0, 2.0)
    folder = tmp_path_factory.mktemp("controlnet")
    net.save_pretrained(folder)
    return folder


def test_controlnet_residuals_reach_every_unet_call(sd_folder, controlnet_folder, plan, concepts):
    gen = MSPGenerator.from_pretrained(sd_folder, controlnet=controlnet_folder, device="cpu")
    conds: list[torch.Tensor] = []
    handle = gen.controlnet.register_forward_pre_hook(
        lambda m, a, kw: conds.append(kw["controlnet_cond"].clone()), with_kwargs=True
    )
    settings = MSPSettings(steps=3, kappa=0.34)
    pose_a = Image.new("RGB", (CANVAS, CANVAS), (0, 0, 0))
    pose_b = Image.fromarray(np.tile(np.linspace(0, 255, CANVAS, dtype=np.uint8), (CANVAS, 1))).convert("RGB")
    try:
        a = gen([plan], concepts, [4], settings, control_images=[pose_a])[0]
    finally:
        handle.remove()
    b = gen([plan], concepts, [4], settings, control_images=[pose_b])[0]
    free = gen([plan], concepts, [4], settings)[0]
    assert [c.shape[0] for c in conds] == [4, 2, 2]  # uncond + 3 segments, then uncond + global
    assert a.provenance["controlnet"] == str(controlnet_folder) and free.provenance["controlnet"] is None
    img = [np.asarray(r.image, dtype=np.int16) for r in (a, b, free)]
    assert np.abs(img[0] - img[1]).max() > 10 and np.abs(img[0] - img[2]).max() > 10


XL_CANVAS = 64  # the tiny SDXL VAE downsamples by 8: 8x8 latents


@pytest.fixture(scope="module")
def xl_gen(tmp_path_factory) -> MSPGenerator:
    return MSPGenerator.from_pretrained(build_tiny_sdxl(tmp_path_factory.mktemp("msp-sdxl")), device="cpu")


@pytest.fixture(scope="module")
def xl_plan() -> LayoutPlan:
    return _plan([("cat", 0, 0, 32, 64), ("mug", 32, 16, 32, 32)], size=XL_CANVAS)


def test_sdxl_all_harmonization_is_its_own_pipeline(xl_gen, xl_plan, concepts):
    """kappa = 0 on SDXL must equal StableDiffusionXLPipeline on the global prompt with the same noise:
    both text encoders, the pooled embedding, the time ids and the zero unconditional row as it builds them."""
    assert xl_gen.xl
    settings = MSPSettings(steps=3, kappa=0.0, guidance_scale=4.0)
    ours = xl_gen([xl_plan], concepts, [11], settings)[0].image
    assert ours.size == (XL_CANVAS, XL_CANVAS)
    _, global_prompt = segment_prompts(xl_plan, concepts)
    noise = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(11))[None]
    plain = xl_gen.pipe(
        global_prompt,
        height=XL_CANVAS,
        width=XL_CANVAS,
        num_inference_steps=3,
        guidance_scale=4.0,
        latents=noise,
    ).images[0]
    assert np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(plain, dtype=np.int16)).max() <= 1


def test_sdxl_segment_prompts_bring_their_pooled_embeddings_and_time_ids(xl_gen, xl_plan, concepts):
    added: list[dict[str, torch.Tensor]] = []
    handle = xl_gen.pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: added.append({k: v.clone() for k, v in kw["added_cond_kwargs"].items()}),
        with_kwargs=True,
    )
    try:
        result = xl_gen([xl_plan], concepts, [5], MSPSettings(steps=2, kappa=0.5))[0]
    finally:
        handle.remove()
    local, global_prompt = segment_prompts(xl_plan, concepts)
    with torch.no_grad():
        pooled = xl_gen.pipe.encode_prompt(
            local + [global_prompt], device="cpu", do_classifier_free_guidance=False
        )[2]
    composition, harmonization = added
    # the unconditional row is zeros (force_zeros_for_empty_prompt), then one row per segment prompt
    torch.testing.assert_close(
        composition["text_embeds"], torch.cat([torch.zeros_like(pooled[:1]), pooled[:3]])
    )
    torch.testing.assert_close(
        harmonization["text_embeds"], torch.cat([torch.zeros_like(pooled[:1]), pooled[3:]])
    )
    for call in added:
        assert call["time_ids"].tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * call["time_ids"].shape[0]
    assert result.provenance["segments"] == ["cat", "mug", BACKGROUND]
    assert result.provenance["scheduler"] == "EulerDiscreteScheduler"


def test_sdxl_sal_reads_x0_from_sigma_scaled_latents(xl_gen, xl_plan, concepts, tmp_path):
    """Euler's latents are x0 + sigma * eps: SAL must decode latents - sigma * eps (the DDPM formula would not)."""
    from curation.models.subject_segmenter import SegmenterSettings, build_unet, save_segmenter

    decoded: list[tuple[StepState, torch.Tensor]] = []
    sal = SALGuidance(xl_gen.pipe, None, 1.0, 1)

    def hook(state: StepState) -> torch.Tensor:
        decoded.append(
            (state, sal.x0_pixels(state.latents, state.noise_pred, state.alpha_cumprod, state.timestep))
        )
        return state.noise_pred

    xl_gen([xl_plan], concepts, [3], MSPSettings(steps=3, kappa=1.0), guidance=hook)
    state, pixels = decoded[0]
    a = state.alpha_cumprod
    vae = xl_gen.pipe.vae

    def decode(x0: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (vae.decode(x0 / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)

    expected = decode(state.latents - ((1 - a) / a) ** 0.5 * state.noise_pred)
    torch.testing.assert_close(pixels.detach(), expected, atol=1e-4, rtol=1e-4)
    ddpm = decode((state.latents - (1 - a) ** 0.5 * state.noise_pred) / a**0.5)
    assert (ddpm - expected).abs().max() > 1e-2, "the DDPM formula would decode another x0"

    tiny = SegmenterSettings(
        encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4), encoder_weights="", size=32
    )
    torch.manual_seed(0)
    save_segmenter(tmp_path, build_unet(tiny, 3), ["cat", "mug"], tiny, encoder_weights="random")
    base = MSPSettings(steps=3, kappa=0.5)
    plain = xl_gen([xl_plan], concepts, [7], settings=base)[0]
    guided = xl_gen(
        [xl_plan],
        concepts,
        [7],
        settings=base.model_copy(update={"sal_model": str(tmp_path), "sal_scale": 50.0}),
    )[0]
    assert guided.provenance["sal"]["scale"] == 50.0
    assert (
        np.abs(np.asarray(plain.image, dtype=np.int16) - np.asarray(guided.image, dtype=np.int16)).max() > 0
    )


def test_sdxl_inpainting_and_refiner_models_are_refused(tmp_path):
    with pytest.raises(CurateError, match="text-to-image UNet.*9 input channels"):
        MSPGenerator.from_pretrained(build_tiny_sdxl_inpaint(tmp_path), device="cpu")
    with pytest.raises(CurateError, match="both text encoders"):
        MSPGenerator.from_pretrained(build_tiny_sdxl_inpaint(tmp_path, refiner=True), device="cpu")

"""`curate train --base sdxl|flux` on tiny random-init models of the real classes.

SDXL: `StableDiffusionXLPipeline` shaped as stabilityai/stable-diffusion-xl-base-1.0 (two CLIP text
encoders, `text_time` added conditioning; `tests.fixtures.tiny_pipelines.build_tiny_sdxl`). FLUX:
`FluxPipeline` shaped as black-forest-labs/FLUX.1-dev (CLIP + T5, a 64-channel packed-latent
transformer with guidance embeddings; `tests.fixtures.tiny_flux.build_tiny_flux`). Each base: training
lowers the loss of the batches it saw, the saved lora/ loads into a fresh pipeline with
`load_lora_weights` + `load_textual_inversion` and changes what it generates, the masked loss
ignores what lies outside the mask, and a resumed run continues exactly. Losses come from random
weights at 64 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curation.cli import app
from curation.core.errors import CurateError
from personalization.prompts import PromptStrategy
from tests.fixtures.personalization_export import build_tiny_export

pytestmark = pytest.mark.timeout(400)

RESOLUTION = 64
STEPS = 4
SOURCES = PromptStrategy(source="sources")
"""The concepts' reference photos: every one has a mask, so masked and plain runs see the same images."""


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return build_tiny_export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module", params=["sdxl", "flux"])
def base(request, tmp_path_factory) -> tuple[str, str]:
    """(base name, tiny pipeline folder)."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "sdxl":
        from tests.fixtures.tiny_pipelines import build_tiny_sdxl

        return "sdxl", str(build_tiny_sdxl(folder))
    from tests.fixtures.tiny_flux import build_tiny_flux

    return "flux", str(build_tiny_flux(folder))


def _train(base, export_dir, run: Path, steps: int = STEPS, **options):
    from personalization.train_lora import train_lora

    name, pretrained = base
    options = {"learning_rate": 1e-2, "checkpoint_every": 2, "strategy": SOURCES, **options}
    return train_lora(
        export_dir, run, name, pretrained, steps, resolution=RESOLUTION, mixed_precision="no", **options
    )


@pytest.fixture(scope="module")
def trained(base, export_dir, tmp_path_factory):
    """One run of STEPS steps per base, shared by the tests that read it."""
    run = tmp_path_factory.mktemp(f"{base[0]}-run") / "run"
    return run, _train(base, export_dir, run)


@pytest.fixture(scope="module")
def loaded(trained):
    """A fresh base pipeline with the trained run's lora/ loaded (`load_lora_pipeline`)."""
    from personalization.lora_folder import load_lora_pipeline

    return load_lora_pipeline(trained[0])


def _seen_batches_loss(model, export_dir: Path) -> float:
    """Mean loss over the batches the STEPS training steps drew (same examples, noise and timesteps)."""
    import torch

    from personalization.data import read_export
    from personalization.train_lora import lora_examples, step_loss

    examples = lora_examples(read_export(export_dir), SOURCES, masked=False)
    losses = []
    with torch.no_grad():
        for step in range(STEPS):
            generator = torch.Generator().manual_seed(step)  # seed 0, as `train_lora` draws step `step`
            chosen = [examples[i] for i in torch.randint(len(examples), (1,), generator=generator)]
            losses.append(float(step_loss(model, chosen, RESOLUTION, False, 1, None, generator)))
    return sum(losses) / len(losses)


def _denoising(name: str):
    from personalization.lora_flux import FluxDenoising
    from personalization.lora_sdxl import SDXLDenoising

    return {"sdxl": SDXLDenoising, "flux": FluxDenoising}[name]


def test_lora_lowers_the_loss_and_loads_into_a_fresh_pipeline(base, export_dir, trained, loaded):
    from safetensors.torch import load_file

    from personalization.data import read_export

    name, pretrained = base
    run, report = trained
    assert report.method == f"lora-{name}" and len(report.losses) == STEPS and report.examples == 10
    lora = run / "lora"
    assert sorted(p.name for p in lora.iterdir()) == [
        "embeddings.safetensors",
        "lora.json",
        "pytorch_lora_weights.safetensors",
    ]
    meta = json.loads((lora / "lora.json").read_text())
    tokens = [f"<c-{c}>" for c in read_export(export_dir).concepts]
    assert meta == {
        "base": name,
        "pretrained": pretrained,
        "tokens": tokens,
        "embeddings": _denoising(name).embedding_components,
    }
    rows = load_file(str(lora / "embeddings.safetensors"))
    assert set(rows) == ({"clip_l", "clip_g"} if name == "sdxl" else {"clip_l"})
    assert all(r.shape == (len(tokens), 32) for r in rows.values())

    pipe = loaded  # a fresh base pipeline + load_lora_weights + load_textual_inversion
    after = _denoising(name)(pipe)
    # each batch's loss when training met it (step k: after k updates) against the trained weights' loss
    assert _seen_batches_loss(after, export_dir) < sum(report.losses) / STEPS - 0.01

    for key, component in meta["embeddings"].items():  # the loaded rows are the trained ones
        encoder = getattr(pipe, component)
        ids = getattr(pipe, component.replace("text_encoder", "tokenizer")).convert_tokens_to_ids(tokens)
        assert encoder.get_input_embeddings().weight[ids].detach().equal(rows[key])
    lora_names = [n for n, _ in after.denoiser.named_parameters() if "lora_" in n]
    assert lora_names, "load_lora_weights added no adapter"
    import numpy as np
    import torch

    def draw():  # same prompt and seed each time
        extra = {"max_sequence_length": 32} if name == "flux" else {}
        generator = torch.Generator().manual_seed(0)
        prompt = "<c-cat> cat and <c-dog> dog"
        image = pipe(prompt, num_inference_steps=2, height=64, width=64, generator=generator, **extra).images[
            0
        ]
        return np.asarray(image, dtype=np.int16)

    with_lora = draw()
    pipe.disable_lora()
    try:
        without = draw()
    finally:
        pipe.enable_lora()
    assert with_lora.shape == (64, 64, 3)
    change = np.abs(with_lora - without).mean()  # random weights: small, but only the LoRA differs
    assert change > 0.1, f"the trained LoRA changes the images (mean change {change:.3f} of 255)"


def test_masked_loss_ignores_the_error_outside_the_mask(base, loaded):
    """Perturbing the target outside the mask leaves the loss and every LoRA gradient as they were."""
    import torch

    from personalization.train_images import SquareCrop
    from personalization.train_lora import masked_mse

    model = _denoising(base[0])(loaded)
    lora = {n: p for n, p in model.denoiser.named_parameters() if "lora_" in n}
    for param in lora.values():
        param.requires_grad_(True)
    latents = torch.randn(
        1, model.pipe.vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0)
    )
    crops = [SquareCrop(torch.zeros(3, RESOLUTION, RESOLUTION), (RESOLUTION, RESOLUTION), (0, 0))]
    mask = torch.zeros(1, 1, RESOLUTION, RESOLUTION)
    mask[..., :, : RESOLUTION // 2] = 1.0  # the left half

    def grads(shift_outside: float, shift_inside: float = 0.0):
        prediction, target = model.prediction_and_target(
            latents, ["<c-cat> cat"], crops, torch.Generator().manual_seed(1)
        )
        target = target.detach().clone()
        target[..., 4:] += shift_outside  # latent columns 4-7 lie in the unmasked right half
        target[..., :4] += shift_inside
        loss = masked_mse(prediction, target, mask).mean()
        model.denoiser.zero_grad()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in lora.items() if p.grad is not None}

    loss, reference = grads(0.0)
    moved_loss, moved = grads(5.0)
    assert reference and moved_loss == pytest.approx(loss, rel=1e-6)
    assert all(torch.allclose(moved[n], g, atol=1e-7) for n, g in reference.items())
    inside_loss, inside = grads(0.0, shift_inside=5.0)
    assert inside_loss > loss + 1.0
    assert any(not torch.allclose(inside[n], g) for n, g in reference.items())


def test_masks_come_from_reference_masks_and_composition_boxes(export_dir, tmp_path):
    """No model: which caption and mask each training image gets, and the mask's geometry after the crop."""
    import torch

    from personalization.data import read_export
    from personalization.train_images import boxes_square_mask
    from personalization.train_lora import lora_examples

    export = read_export(export_dir)
    refs = lora_examples(export, SOURCES, masked=True)
    assert all(e.mask is not None and e.mask.parent.name == "masks" for e in refs)
    compositions = lora_examples(export, PromptStrategy(), masked=True)
    assert compositions[0].boxes == ((0, 8, 12, 24), (12, 8, 12, 24))
    assert [e.prompt for e in compositions] == [c.caption for c in export.compositions], "own captions"
    mask = boxes_square_mask((64, 128), ((32, 0, 64, 32),), 32)  # a wide image: crop keeps x 32..96
    assert mask.shape == (1, 32, 32)
    assert mask[0, 1:15].gt(0.9).all() and mask[0, 17:].lt(0.1).all()  # up to the resampling filter's edge
    plain = lora_examples(export, PromptStrategy(), masked=False)[0]
    _, ones = plain.load(32, masked=False)
    assert torch.equal(ones, torch.ones(1, 32, 32))
    bare = build_tiny_export(tmp_path / "bare")
    for mask_file in (bare / "concepts" / "cat" / "masks").iterdir():
        mask_file.unlink()
    with pytest.raises(CurateError, match="--masked-loss needs a mask or boxes for every training image"):
        lora_examples(read_export(bare), SOURCES, masked=True)


def test_resume_continues_exactly_and_masked_prior_runs_record_their_settings(
    base, export_dir, trained, tmp_path
):
    """Resuming (in process and through `curate train`) continues the run; settings are checked."""
    from tests.fixtures.personalization_export import CONCEPTS, _png

    whole = trained[1]
    first = _train(base, export_dir, tmp_path / "split", steps=2)
    rest = _train(base, export_dir, tmp_path / "split", steps=STEPS)
    assert rest.start_step == 2 and len(rest.losses) == 2
    assert first.losses + rest.losses == pytest.approx(whole.losses, rel=1e-4)
    again = _train(base, export_dir, tmp_path / "split", steps=STEPS)
    assert again.start_step == STEPS and again.losses == []
    # the same run through `curate train` flags alone: one more step, from the run's newest checkpoint
    cli = ["train", str(export_dir), "--base", base[0], "--pretrained", base[1], "--source", "sources"]
    more = ["-o", str(tmp_path / "split"), "--resolution", "64", "--mixed-precision", "no", "--steps", "5"]
    result = CliRunner().invoke(app, [*cli, *more, "--cpu"])
    assert result.exit_code == 0, result.output
    assert f"trained lora-{base[0]} steps 4->5 on 10 images" in result.output, "STEPS = 4"
    assert "LoRA + token embeddings" in result.output
    for wrong, message in (
        (["--method", "custom_diffusion"], f"--base {base[0]} trains LoRA only"),
        (["--mixed-precision", "fp16"], "mixed precision 'fp16' is not offered"),
    ):
        refused = CliRunner().invoke(app, [*cli, "-o", str(tmp_path / "refused"), *wrong])
        assert isinstance(refused.exception, CurateError) and message in str(refused.exception)
        assert not (tmp_path / "refused").exists()
    with pytest.raises(CurateError, match="other settings"):
        _train(base, export_dir, tmp_path / "split", steps=STEPS, lora_rank=8)

    masked_export = build_tiny_export(tmp_path / "export")
    for index, concept_id in enumerate(CONCEPTS):
        _png(masked_export / "class_images" / concept_id / "0.png", seed=5000 + index)
    masked = _train(
        base, masked_export, tmp_path / "masked", steps=1, masked_loss=True, prior_loss_weight=1.0
    )
    assert masked.class_images == 5 and len(masked.losses) == 1
    identity = json.loads((tmp_path / "masked" / "run.json").read_text())
    assert identity["masked_loss"] is True and identity["prior_loss_weight"] == 1.0
    assert identity["base"] == base[0]


@pytest.mark.parametrize(("name", "resolution"), [("flux", 520), ("flux", -512), ("sdxl", 1020)])
def test_a_resolution_the_base_cannot_take_is_refused_before_the_base_loads(
    export_dir, tmp_path, name, resolution
):
    """FLUX.1 packs its 8x VAE's latents in 2x2 patches: 520 px failed only at the first step, after the
    base had loaded and run.json had recorded 520, so the corrected command met "other settings"."""
    run = tmp_path / "run"
    never_loaded = str(tmp_path / "no-such-base")
    cli = ["train", str(export_dir), "-o", str(run), "--base", name, "--pretrained", never_loaded]
    result = CliRunner().invoke(app, [*cli, "--resolution", str(resolution), "--cpu"])
    assert isinstance(result.exception, CurateError), result.output
    assert f"--resolution {resolution} does not suit --base {name}" in str(result.exception)
    assert not run.exists()


def test_a_gated_base_is_one_error_line_saying_where_to_accept_its_licence(
    fake_hub, export_dir, tmp_path, monkeypatch
):
    """FLUX.1-dev, the default FLUX.1 base, is gated: an account that has not accepted its licence got
    the hub's HTTP error text; it gets the line `generate.repaint = "flux-fill"` gives for FLUX.1 Fill."""
    from personalization.lora_flux import DEFAULT_PRETRAINED
    from personalization.train_lora import train_lora
    from tests.fixtures.fake_hub import online_at

    fake_hub.gated.add(DEFAULT_PRETRAINED)
    online_at(fake_hub, monkeypatch, tmp_path / "hub")
    with pytest.raises(CurateError) as caught:
        train_lora(export_dir, tmp_path / "run", "flux", steps=1, resolution=RESOLUTION, cpu=True)
    assert str(caught.value).startswith(
        f"--pretrained = '{DEFAULT_PRETRAINED}' is gated on the Hugging Face Hub: accept its licence at "
        f"https://huggingface.co/{DEFAULT_PRETRAINED} with your account, then log in here"
    )
    assert any(DEFAULT_PRETRAINED in request for request in fake_hub.requests), "diffusers asked the hub"

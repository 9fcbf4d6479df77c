"""The trainer on a tiny random-init Stable Diffusion: what trains, what stays frozen, save/load, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.core.errors import CurateError
from personalization.data import Composition, read_export
from personalization.prompts import (
    GEN4GEN_STRATEGY,
    PromptStrategy,
    background_of,
    heldout_prompts,
    training_examples,
)
from tests.fixtures.personalization_export import build_tiny_export
from tests.fixtures.tiny_pipelines import build_tiny_sd

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("sd"), vae_downsample=8)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return build_tiny_export(tmp_path_factory.mktemp("export"))


def _params(pipeline_dir: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir, safety_checker=None)
    unet = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    return pipe, unet, pipe.text_encoder.get_input_embeddings().weight.detach().clone()


def test_prompt_strategy_writes_the_gen4gen_variants(export_dir):
    export = read_export(export_dir)
    assert export.concepts["cat"].class_noun == "cat"
    plain = training_examples(export, PromptStrategy())
    assert plain[0].prompt == "<c-cat> cat and <c-dog> dog on a wooden porch"
    ours = training_examples(export, GEN4GEN_STRATEGY)
    assert (
        ours[0].prompt == "<c-cat> cat, <c-cat> cat, <c-dog> dog, <c-dog> dog; background: on a wooden porch"
    )
    bare = Composition(
        image=export_dir, caption="<c-cat> cat and <c-dog> dog on a wooden porch", concepts=("cat", "dog")
    )
    assert background_of(bare, [export.concepts["cat"], export.concepts["dog"]]) == "on a wooden porch"
    sources = training_examples(export, PromptStrategy(source="sources"))
    assert len(sources) == 10 and sources[0].prompt == "a photo of <c-cat> cat"
    held = heldout_prompts(export, GEN4GEN_STRATEGY, per_set=1)
    assert [p.concepts for p in held] == export.concept_sets()
    assert held[0].plain_text == f"cat, dog {held[0].background}"
    assert held[0].prompt.startswith("<c-cat> cat, <c-cat> cat, <c-dog> dog")
    assert all("porch" not in p.background for p in held)
    with pytest.raises(CurateError):
        PromptStrategy(repeat=0)


def test_custom_diffusion_trains_kv_and_tokens_only_then_loads_and_generates(tiny_sd, export_dir, tmp_path):
    from personalization.train import train
    from personalization.train_folder import load_personalized

    _, base_unet, base_embed = _params(tiny_sd)
    report = train(
        export_dir,
        tmp_path / "cd",
        str(tiny_sd),
        steps=3,
        resolution=64,
        learning_rate=1e-3,
        checkpoint_every=2,
    )
    assert report.start_step == 0 and len(report.losses) == 3
    pipe = load_personalized(tmp_path / "cd")
    unet = pipe.unet.state_dict()
    changed = {k for k in base_unet if not base_unet[k].equal(unet[k])}
    assert changed, "no UNet weight changed"
    assert all(".attn2.to_k." in k or ".attn2.to_v." in k for k in changed)
    kv = [k for k in base_unet if ".attn2.to_k." in k or ".attn2.to_v." in k]
    assert set(kv) == changed
    embed = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert embed.shape[0] == base_embed.shape[0] + 5
    assert embed[: base_embed.shape[0]].equal(base_embed), "a frozen token row changed"
    new_ids = pipe.tokenizer.convert_tokens_to_ids(["<c-cat>", "<c-plant>"])
    assert pipe.tokenizer("<c-cat> cat").input_ids[1] == new_ids[0]
    cat_noun = pipe.tokenizer("cat", add_special_tokens=False).input_ids
    assert not embed[new_ids[0]].equal(base_embed[cat_noun].mean(0)), "token embedding did not train"
    image = pipe("<c-cat> cat and <c-dog> dog", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)
    assert sorted(p.name for p in (tmp_path / "cd" / "checkpoints").iterdir()) == [
        "step-000002",
        "step-000003",
    ]
    assert json.loads((tmp_path / "cd" / "train_report.json").read_text())["steps"] == 3


def test_lora_changes_only_adapters_and_fuses_into_a_plain_unet(tiny_sd, export_dir, tmp_path):
    from personalization.train import train

    _, base_unet, _ = _params(tiny_sd)
    report = train(
        export_dir,
        tmp_path / "lora",
        str(tiny_sd),
        method="lora",
        steps=2,
        resolution=64,
        learning_rate=1e-2,
        strategy=PromptStrategy(source="sources"),
    )
    assert report.examples == 10
    _, unet, _ = _params(tmp_path / "lora" / "pipeline")
    assert set(unet) == set(base_unet), "saved UNet is not a plain UNet"
    changed = {k for k in base_unet if not base_unet[k].equal(unet[k])}
    assert changed and all(
        k.split(".")[-2] in {"to_q", "to_k", "to_v", "0"} and ".attn" in k for k in changed
    )


def test_resume_continues_exactly_where_the_checkpoint_left_off(tiny_sd, export_dir, tmp_path):
    from personalization.train import train

    def run(folder: str, steps: int):
        return train(export_dir, tmp_path / folder, str(tiny_sd), steps=steps, resolution=64,
                     learning_rate=1e-3, checkpoint_every=2)  # fmt: skip

    whole = run("whole", 4)
    first = run("split", 2)
    rest = run("split", 4)
    assert rest.start_step == 2 and len(rest.losses) == 2
    assert first.losses + rest.losses == pytest.approx(whole.losses, rel=1e-5)
    again = run("split", 4)
    assert again.start_step == 4 and again.losses == []
    with pytest.raises(CurateError, match="other settings"):
        train(export_dir, tmp_path / "split", str(tiny_sd), method="lora", steps=4, resolution=64)


def test_prior_preservation_adds_the_weighted_class_image_loss(tiny_sd, tmp_path):
    """Custom Diffusion's regularisation: the export's class_images/<class>/ join every step, weighted."""
    from personalization.train import train
    from tests.fixtures.personalization_export import CONCEPTS, _png

    export_dir = build_tiny_export(tmp_path / "export")
    with pytest.raises(CurateError, match="prior preservation needs class images; concept cat has none"):
        train(export_dir, tmp_path / "none", str(tiny_sd), steps=1, resolution=64, prior_loss_weight=1.0)
    for index, concept_id in enumerate(CONCEPTS):  # where the fixture's concepts_list.json points
        for k in range(2):
            _png(export_dir / "class_images" / concept_id / f"{k}.png", seed=5000 + 10 * index + k)

    def run(folder: str, weight: float | None):
        return train(export_dir, tmp_path / folder, str(tiny_sd), steps=2, resolution=64,
                     learning_rate=1e-3, prior_loss_weight=weight)  # fmt: skip

    light, heavy, plain = run("w1", 1.0), run("w3", 3.0), run("plain", None)
    assert light.class_images == heavy.class_images == 10 and plain.class_images == 0
    # same seed, so the first step draws the same images, noise and timesteps: only the weight differs
    prior_loss = (heavy.losses[0] - light.losses[0]) / 2
    assert prior_loss > 0
    assert light.losses[0] - prior_loss > 0  # the concepts' own loss is still there
    assert json.loads((tmp_path / "w1" / "run.json").read_text())["prior_loss_weight"] == 1.0
    assert "prior_loss_weight" not in json.loads((tmp_path / "plain" / "run.json").read_text())

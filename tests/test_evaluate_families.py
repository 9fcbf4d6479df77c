"""`curate evaluate` on SDXL, FLUX.1 and LoRA rows beside an SD 1.x row: one table, the same prompts and seeds.

Tiny random-init models of the real classes: StableDiffusionPipeline (stable-diffusion-v1-5's shape),
StableDiffusionXLPipeline (stable-diffusion-xl-base-1.0's), FluxPipeline (FLUX.1-dev's: CLIP-L + T5,
FluxTransformer2DModel), and LoRA folders written the way `curate train --base sdxl` writes them
(`personalization.lora_folder`) and the way diffusers' advanced DreamBooth-LoRA script does
(pytorch_lora_weights.safetensors, `<name>_emb.safetensors`, a README.md model card). Scores come from
random weights: they show the rows line up, not which model is better.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from curation.core.errors import CurateError
from personalization.cli_commands import evaluate_command
from personalization.lora_folder import save_lora_folder
from tests.fixtures.personalization_export import CONCEPTS, build_tiny_export
from tests.fixtures.tiny_clip import register_tiny_clip
from tests.fixtures.tiny_flux import build_tiny_flux
from tests.fixtures.tiny_pipelines import build_tiny_dinov2, build_tiny_owlvit, build_tiny_sd, build_tiny_sdxl

pytestmark = pytest.mark.timeout(400)
TOKENS = [f"<c-{cid}>" for cid in sorted(CONCEPTS)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("models")
    sdxl, flux = build_tiny_sdxl(folder), build_tiny_flux(folder)
    return {
        "sd": str(build_tiny_sd(folder, vae_downsample=8)),
        "sdxl": str(sdxl),
        "sdxl_lora": str(curate_sdxl_lora(sdxl, folder / "sdxl-run")),
        "flux": str(flux),
        "flux_lora": str(curate_flux_lora(flux, folder / "flux-run")),
        "owl": str(build_tiny_owlvit(folder)),
        "dino": str(build_tiny_dinov2(folder)),
        "clip": register_tiny_clip(),
    }


def lora_layers(denoiser, rank: int = 4) -> dict:
    """A rank-`rank` LoRA on a denoiser's attention, B non-zero so it changes the image."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(3)
    targets = ["to_k", "to_q", "to_v", "to_out.0"]
    denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    with torch.no_grad():
        for name, param in denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    return get_peft_model_state_dict(denoiser)


def sdxl_lora_layers(base: Path) -> dict:
    from diffusers import UNet2DConditionModel

    return lora_layers(UNet2DConditionModel.from_pretrained(base, subfolder="unet"))


def token_rows(width: int = 32, seed: int = 4):
    import torch

    return torch.randn(len(TOKENS), width, generator=torch.Generator().manual_seed(seed))


def curate_sdxl_lora(base: Path, run: Path, recorded: Path | None = None) -> Path:
    """A run folder as `curate train --base sdxl` leaves it (its lora/ written by the trainer's own writer)."""
    from diffusers import StableDiffusionXLPipeline

    layers = sdxl_lora_layers(base)
    save_lora_folder(
        run,
        lambda folder: StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=layers),
        {"clip_l": token_rows(seed=4), "clip_g": token_rows(seed=5)},
        {"clip_l": "text_encoder", "clip_g": "text_encoder_2"},
        {"base": "sdxl", "pretrained": str(recorded or base), "tokens": TOKENS},
    )
    return run


def curate_flux_lora(base: Path, run: Path) -> Path:
    """A run folder as `curate train --base flux` leaves it: transformer LoRA, CLIP-L token rows."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    layers = lora_layers(FluxTransformer2DModel.from_pretrained(base, subfolder="transformer"))
    save_lora_folder(
        run,
        lambda folder: FluxPipeline.save_lora_weights(folder, transformer_lora_layers=layers),
        {"clip_l": token_rows(seed=8)},
        {"clip_l": "text_encoder"},
        {"base": "flux", "pretrained": str(base), "tokens": TOKENS},
    )
    return run


def diffusers_sdxl_lora(base: Path, folder: Path, card: bool = True) -> Path:
    """The advanced SDXL script's output: LoRA, `<name>_emb.safetensors` (<s0>.. rows), model card."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=sdxl_lora_layers(base))
    save_file(
        {"clip_l": token_rows(seed=6), "clip_g": token_rows(seed=7)},
        folder / f"{folder.name}_emb.safetensors",
    )
    if card:  # the script's model card: base_model in the front matter, the trigger lines
        triggers = "".join(
            f"\nto trigger concept `{t}` → use `<s{i}>` in your prompt \n" for i, t in enumerate(TOKENS)
        )
        (folder / "README.md").write_text(
            f"---\nbase_model: {base}\nlibrary_name: diffusers\n---\n\n# SDXL LoRA DreamBooth\n{triggers}"
        )
    return folder


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("evaluate")(evaluate_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps `evaluate` as a subcommand
    return app


def _evaluate(cli, export: Path, out: Path, runs: dict[str, str], models: dict[str, str], *extra: str):
    args = ["evaluate", str(export), "-o", str(out), "--clip-model", models["clip"], "--clip-pretrained", ""]
    args += ["--detector", models["owl"], "--dino", models["dino"], "--prompts-per-set", "1"]
    args += ["--images-per-prompt", "1", "--steps", "1", "--resolution", "64", "--device", "cpu"]
    for label, path in runs.items():
        args += ["--run", f"{label}={path}"]
    result = CliRunner().invoke(cli, args + list(extra))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def test_sdxl_flux_and_lora_rows_line_up_with_the_sd_row(cli, models, tmp_path):
    export = build_tiny_export(tmp_path / "export")
    out = tmp_path / "eval"
    runs = {
        "SD 1.5": models["sd"],
        "SDXL": models["sdxl"],
        "SDXL LoRA": models["sdxl_lora"],
        "FLUX.1": models["flux"],
        "FLUX.1 LoRA": models["flux_lora"],
    }
    _evaluate(cli, export, out, runs, models)

    results = json.loads((out / "results.json").read_text())
    rows = {label: [r for r in results["rows"] if r["configuration"] == label] for label in runs}
    assert [len(r) for r in rows.values()] == [3, 3, 3, 3, 3]
    assert results["configurations"]["SDXL LoRA"] == f"sdxl LoRA {models['sdxl_lora']} on {models['sdxl']}"
    assert results["configurations"]["FLUX.1"] == models["flux"]
    for index, base in enumerate(rows["SD 1.5"]):
        for label in list(runs)[1:]:
            row = rows[label][index]
            same = ("plain_text", "background", "concepts", "bucket", "msp_bucket", "seed")
            assert {k: row[k] for k in same} == {k: base[k] for k in same}
            assert row["prompt"] == base["prompt"]  # curate's LoRAs read the export's own tokens
            guidance = 3.5 if label.startswith("FLUX") else 6.0  # each family's default guidance
            assert row["sampling"] == {"steps": 1, "guidance": guidance, "resolution": 64, "size": [64, 64]}
        assert [rows[label][index]["family"] for label in runs] == ["sd", "sdxl", "sdxl", "flux", "flux"]
    for label in runs:  # same columns, same buckets, one row per table
        for metric in ("cp_clip", "ti_clip", "clip_i", "clip_t", "dino", "dnc"):
            assert [results["aggregates"][label][metric][b]["n"] for b in ("<=3", "4", "5")] == [1, 1, 1]
    table = (out / "table.md").read_text()
    assert all(table.count(f"| {label} |") == 3 for label in runs)

    from PIL import Image

    def pixels(row):
        return np.asarray(Image.open(out / row["image"]), dtype=np.int16)

    for plain, tuned in (("SDXL", "SDXL LoRA"), ("FLUX.1", "FLUX.1 LoRA")):
        moved = [np.abs(pixels(a) - pixels(b)).max() for a, b in zip(rows[plain], rows[tuned], strict=True)]
        assert min(moved) > 0, f"the LoRA and the token rows must change {plain}'s images"


def test_a_lora_run_loads_with_its_tokens_as_one_token_each(models):
    """The evaluator's loader: base + LoRA + both encoders' rows; each export token is one new token."""
    import torch
    from safetensors.torch import load_file

    from personalization.data import read_export
    from personalization.eval_pipelines import load_model, resolve_source
    from personalization.eval_settings import EvalSettings

    export = read_export(build_tiny_export(Path(models["sdxl_lora"]).parent / "export-tokens"))
    model = resolve_source(models["sdxl_lora"], export)
    assert (model.family, model.pipeline, model.lora.inserted) == ("sdxl", models["sdxl"], tuple(TOKENS))
    pipe = load_model(model, EvalSettings(), "cpu")
    rows = load_file(str(Path(models["sdxl_lora"]) / "lora" / "embeddings.safetensors"))
    for tokenizer, encoder, key in (
        (pipe.tokenizer, pipe.text_encoder, "clip_l"),
        (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g"),
    ):
        ids = tokenizer.convert_tokens_to_ids(TOKENS)
        assert tokenizer("<c-cat> cat").input_ids[1:3] == [ids[0], tokenizer.convert_tokens_to_ids("cat</w>")]
        assert torch.equal(encoder.get_input_embeddings().weight[ids], rows[key])
    assert any("lora" in name for name, _ in pipe.unet.named_parameters())


def test_a_diffusers_script_lora_folder_maps_tokens_from_its_model_card(tmp_path, models):
    from personalization.data import read_export
    from personalization.eval_pipelines import resolve_source

    export = read_export(build_tiny_export(tmp_path / "export"))
    folder = diffusers_sdxl_lora(Path(models["sdxl"]), tmp_path / "dreambooth_lora_sdxl_advanced")
    model = resolve_source(folder, export)
    assert (model.family, model.pipeline) == ("sdxl", models["sdxl"])
    assert model.lora.inserted == ("<s0>", "<s1>", "<s2>", "<s3>", "<s4>")
    assert model.prompt("<c-cat> cat and <c-teapot> teapot") == "<s0> cat and <s4> teapot"
    assert model.lora.components == {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}


def test_a_lora_folder_without_its_base_fails_in_one_line(cli, models, tmp_path):
    export = build_tiny_export(tmp_path / "export")
    out = tmp_path / "eval"
    bare = diffusers_sdxl_lora(
        Path(models["sdxl"]), tmp_path / "bare", card=False
    )  # no model card, no run record
    with pytest.raises(
        CurateError, match=r"LoRA folder .*bare names no base model .* give --base LABEL="
    ) as err:
        _evaluate(cli, export, out, {"SD": models["sd"], "LoRA": str(bare)}, models)
    assert "\n" not in str(err.value)
    moved = tmp_path / "moved-run"
    curate_sdxl_lora(
        Path(models["sdxl"]), moved, recorded=tmp_path / "gone-base"
    )  # its recorded base is not on this machine
    with pytest.raises(CurateError, match=r"the base of LoRA .*moved-run: .*gone-base.*give --base") as err:
        _evaluate(cli, export, out, {"SD": models["sd"], "LoRA": str(moved)}, models)
    assert "\n" not in str(err.value)
    assert not (out / "images").exists()  # refused before any image
    with pytest.raises(CurateError, match="--base names no configuration: 'Nope'"):
        _evaluate(cli, export, out, {"LoRA": str(bare)}, models, "--base", f"Nope={models['sdxl']}")

    # given the base, both resolve (the card-less rows are the export's tokens by concept id)
    from personalization.data import read_export
    from personalization.eval_pipelines import resolve_source

    exp = read_export(export)
    for folder in (bare, moved):
        model = resolve_source(folder, exp, base=models["sdxl"])
        assert (model.family, model.pipeline, model.lora.inserted) == ("sdxl", models["sdxl"], tuple(TOKENS))
    assert resolve_source(bare, exp, base=models["sdxl"]).prompt("<c-cat> cat") == "<c-cat> cat"
    with pytest.raises(CurateError, match="--base is for LoRA folders"):
        resolve_source(models["sd"], exp, base=models["sdxl"])


def test_generation_defaults_per_family():
    from personalization.eval_settings import EvalSettings

    defaults = EvalSettings()
    assert defaults.generation("sd").resolution is None  # the SD pipeline's own 512 / 768
    assert (defaults.generation("sdxl").resolution, defaults.generation("sdxl").guidance) == (1024, 6.0)
    flux = defaults.generation("flux")
    assert (flux.steps, flux.guidance, flux.resolution) == (28, 3.5, 1024)
    pinned = EvalSettings(steps=4, guidance=0.0, resolution=256)
    assert {pinned.generation(f) for f in ("sd", "sdxl", "flux")} == {pinned.generation("sd")}
    assert pinned.generation("flux").guidance == 0.0


def test_a_base_of_another_family_than_the_lora_was_trained_on_is_refused(tmp_path: Path) -> None:
    """A FLUX.1 LoRA given an SDXL base (a wrong --base) loaded with a warning only: diffusers skips the
    transformer keys an SDXL pipeline has no module for, and the CLIP-L rows fit its first encoder."""
    from personalization.data import read_export
    from personalization.eval_pipelines import resolve_source

    export = read_export(build_tiny_export(tmp_path / "export"))
    run = tmp_path / "flux-run"
    save_lora_folder(
        run,
        lambda folder: (folder / "pytorch_lora_weights.safetensors").write_bytes(b""),
        {"clip_l": token_rows()},
        {"clip_l": "text_encoder"},
        {"base": "flux", "pretrained": "black-forest-labs/FLUX.1-dev", "tokens": TOKENS},
    )
    sdxl = tmp_path / "sdxl-base"
    sdxl.mkdir()
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(CurateError, match=r"trained on flux, but its base .*sdxl-base is sdxl: give --base"):
        resolve_source(run, export, str(sdxl))
    flux = tmp_path / "flux-base"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert resolve_source(run, export, str(flux)).family == "flux"


def test_a_gated_base_is_named_as_gated_not_as_an_unknown_model(fake_hub, tmp_path, monkeypatch) -> None:
    """diffusers turns the hub's gated answer into "not a valid model identifier"; the row's one line says
    the licence is not accepted yet, before any model loads."""
    from personalization.data import read_export
    from personalization.eval_pipelines import resolve_source
    from tests.fixtures.fake_hub import online_at

    export = read_export(build_tiny_export(tmp_path / "export"))
    gated = "black-forest-labs/FLUX.1-dev"
    fake_hub.gated.add(gated)
    online_at(fake_hub, monkeypatch, tmp_path / "hub")
    with pytest.raises(CurateError, match=f"pipeline = '{gated}' is gated on the Hugging Face Hub: accept"):
        resolve_source(gated, export)

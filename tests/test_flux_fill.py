"""FLUX.1 Fill repaint through a tiny random-init `FluxFillPipeline` saved to a folder.

The folder (`tests/fixtures/tiny_flux.py`) has the classes and shape relations of
`black-forest-labs/FLUX.1-Fill-dev` (a 384-channel input transformer: packed latents, masked-image
latents and mask; a 16-channel VAE; CLIP and T5 text encoders) and is named in curate.toml as
`flux-fill:<folder>`, so `FluxFillPipeline.from_pretrained` and the pipeline's own call run; only the
weights are random. Random weights cannot keep the background's look, so what is checked is what
holds whatever the weights: the mask reaches the transformer as Gen4Gen's (white = repaint), the
concepts' pixels survive exactly (paste-back), a seed fixes an image whatever its batch, the
settings of curate.toml reach the transformer, and `curate generate` recaptions the final image.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Self

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.core.config import FluxFillSettings, GenerateConfig, dump_config, load_config
from curation.core.errors import CurateError
from curation.core.workspace import Workspace, atomic_write_text
from curation.models.registry import DEFAULT_FLUX_FILL, flux_fill_model, resolve
from generators.flux_fill import choose_offload, place
from generators.generate_settings import generator_config
from generators.layout import plan_layouts
from generators.repaint import load_repainter
from generators.repaint_contract import object_alpha, repaint_mask
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.fake_llm import FakeLLM
from tests.fixtures.tiny_flux import build_tiny_flux, build_tiny_flux_fill
from tests.test_repaint import _job

FAST = {"batch_size": 3, "mask_blur": 2, "flux_fill": FluxFillSettings(steps=2, max_sequence_length=32)}
GB = 2**30


@pytest.fixture(scope="session")
def tiny_flux_fill(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux_fill(tmp_path_factory.mktemp("tiny-flux"))


@pytest.fixture(scope="session")
def flux(tiny_flux_fill: Path):
    name = f"flux-fill:{tiny_flux_fill}"
    return load_repainter(name, GenerateConfig(repaint=name, device="cpu", **FAST))


class TransformerCalls:
    """What the pipeline hands its transformer at each step, read by a forward pre-hook."""

    def __init__(self, pipe) -> None:
        self.calls: list[dict] = []
        self._handle = pipe.transformer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        self.calls.append({k: v.detach().clone() for k, v in kwargs.items() if hasattr(v, "detach")})

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def test_flux_fill_names_its_model_and_its_settings_are_in_the_candidate_id(tiny_flux_fill: Path) -> None:
    assert flux_fill_model("flux-fill") == DEFAULT_FLUX_FILL == "black-forest-labs/FLUX.1-Fill-dev"
    assert flux_fill_model("flux-fill:org/my-fill") == "org/my-fill"
    assert flux_fill_model("classical") is None and flux_fill_model("diffusers/sdxl-inpaint") is None
    config = GenerateConfig(repaint="flux-fill")
    settings = generator_config(config)
    assert settings["guidance_scale"] == 30.0 and settings["steps"] == 50 and settings["strength"] == 1.0
    assert "negative_prompt" not in settings and "offload" not in settings
    offloaded = config.model_copy(update={"flux_fill": FluxFillSettings(offload="sequential")})
    assert generator_config(offloaded) == settings, "offload only places weights: same candidate ids"
    faster = config.model_copy(update={"flux_fill": FluxFillSettings(steps=28)})
    assert generator_config(faster) != settings

    from curation.core.config import CurateConfig

    models = {m.setting: m for m in resolve(CurateConfig(generate=config))}
    assert models["generate.repaint"].name == DEFAULT_FLUX_FILL and models["generate.repaint"].pipeline
    local = CurateConfig(generate=GenerateConfig(repaint=f"flux-fill:{tiny_flux_fill}"))
    found = {m.setting: m for m in resolve(local)}["generate.repaint"]
    assert found.source == "folder" and found.present and found.name == str(tiny_flux_fill)


def test_the_mask_reaches_the_transformer_and_the_objects_are_pasted_back(flux) -> None:
    job = _job(1)
    with TransformerCalls(flux.pipe) as seen:
        (out,) = flux([job])
    assert flux.config()["pipeline"] == "FluxFillPipeline" and flux.config()["dtype"] == "float32"
    assert len(seen.calls) == 2, (
        "steps = 2, strength 1: one transformer pass per step (guidance is distilled)"
    )
    hidden = seen.calls[0]["hidden_states"]
    assert hidden.shape == (1, 16, 384), "64 px: 4x4 tokens of latents (64) + masked image (64) + mask (256)"
    # each token's 256 mask channels are its 16x16 pixels of the binarized mask: white (255) = repaint
    blocks = (repaint_mask(job.composition, 2) >= 128).reshape(4, 16, 4, 16).mean(axis=(1, 3))
    assert np.allclose(hidden[0, :, 128:].mean(-1).reshape(4, 4).numpy(), blocks)
    assert blocks.min() < 0.5 < blocks.max(), "the objects are kept and the background repainted"

    pasted = job.composition.image
    solid = object_alpha(job.composition) == 1.0
    assert out.shape == pasted.shape and out.dtype == np.uint8
    assert solid.sum() > 500 and (out[solid] == pasted[solid]).all()
    background = object_alpha(job.composition) == 0
    assert np.abs(out[background].astype(int) - pasted[background]).mean() > 10


def test_a_seed_fixes_the_image_and_batches_match_single_calls(flux) -> None:
    jobs = [_job(seed) for seed in (2, 3, 4)]
    batched = flux(jobs)
    single = [flux([job])[0] for job in jobs]
    for one, many in zip(single, batched, strict=True):
        assert (
            np.abs(one.astype(int) - many).max() <= 1
        )  # fp32 CPU kernels differ by ~1e-5 between batch shapes
    assert np.abs(single[0].astype(int) - single[1]).mean() > 1


def test_canvases_that_are_not_multiples_of_16_keep_their_size(flux) -> None:
    odd, square = _job(5, height=60, width=68), _job(6)
    with TransformerCalls(flux.pipe) as seen:
        out = flux([odd, square])
    assert [o.shape for o in out] == [(60, 68, 3), (64, 64, 3)]
    assert sorted(c["hidden_states"].shape[1] for c in seen.calls) == [12, 12, 16, 16], "48x64 and 64x64"
    solid = object_alpha(odd.composition) == 1.0
    assert (out[0][solid] == odd.composition.image[solid]).all()


def test_curate_toml_settings_reach_the_pipeline(tiny_flux_fill: Path, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    text = ws.config_path.read_text().replace(
        'repaint = "classical"', f'repaint = "flux-fill:{tiny_flux_fill}"'
    )
    text = text.replace(
        "[generate.flux_fill]\nguidance_scale = 30.0\nsteps = 50",
        "[generate.flux_fill]\nguidance_scale = 12.5\nsteps = 3",
    )
    atomic_write_text(ws.config_path, text.replace("max_sequence_length = 512", "max_sequence_length = 24"))
    settings = load_config(ws.config_path).generate
    repainter = load_repainter(settings.repaint, settings)
    with TransformerCalls(repainter.pipe) as seen:
        repainter([_job(7)])
    assert len(seen.calls) == 3
    assert all(float(c["guidance"][0]) == 12.5 for c in seen.calls)
    assert seen.calls[0]["encoder_hidden_states"].shape[1] == 24, "T5 prompt padded to max_sequence_length"
    config = repainter.config()
    assert (config["guidance_scale"], config["steps"], config["max_sequence_length"]) == (12.5, 3, 24)
    assert config["offload"] == "none" and config["name"] == f"flux-fill:{tiny_flux_fill}"


def test_offload_fits_the_gpu_and_is_refused_without_one(flux) -> None:
    flux_dev = {"total": 33 * GB, "transformer": 24 * GB}  # bf16: 12B transformer + T5-XXL + CLIP + VAE
    assert choose_offload(flux_dev["total"], flux_dev["transformer"], 80 * GB) == "none"
    assert choose_offload(flux_dev["total"], flux_dev["transformer"], 40 * GB) == "model"
    assert choose_offload(flux_dev["total"], flux_dev["transformer"], 24 * GB) == "sequential"
    with pytest.raises(CurateError, match="offload = 'model' needs a CUDA device"):
        place(flux.pipe, "cpu", "model")
    assert place(flux.pipe, "cpu", "auto") == "none"


def test_a_flux_checkpoint_that_is_not_fill_is_refused(tmp_path: Path) -> None:
    """FLUX.1-dev's transformer config has no out_channels (null: as wide as its input): still refused."""
    folder = build_tiny_flux(tmp_path)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    assert config["in_channels"] == 64 and config["out_channels"] is None, "as FLUX.1-dev's"
    with pytest.raises(
        CurateError, match="is not a FLUX.1 Fill checkpoint: its transformer takes 64 input channels"
    ):
        load_repainter(f"flux-fill:{folder}", GenerateConfig(device="cpu", **FAST))
    with pytest.raises(CurateError, match="SDXL refiner"):
        load_repainter(f"flux-fill:{folder}", GenerateConfig(refiner="org/refiner"))


def test_a_gated_model_is_one_error_line_saying_where_to_accept_its_licence(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub answers a gated repo with 401/403 and its GatedRepo code (here the fake hub does, online
    for this test only): diffusers' own download raises it, and the loader turns it into one line
    naming the licence page and how to log in."""
    from huggingface_hub import constants, hf_api

    fake_hub.gated.add(DEFAULT_FLUX_FILL)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_api.api, "endpoint", fake_hub.url)
    with pytest.raises(CurateError) as caught:
        load_repainter("flux-fill", GenerateConfig(repaint="flux-fill", device="cpu"))
    assert str(caught.value) == (
        f"generate.repaint = '{DEFAULT_FLUX_FILL}' is gated on the Hugging Face Hub: accept its licence at "
        f"https://huggingface.co/{DEFAULT_FLUX_FILL} with your account, then log in here with `hf auth login` "
        "(or set HF_TOKEN to a token of that account), and run this again"
    )
    assert any(DEFAULT_FLUX_FILL in request for request in fake_hub.requests), "diffusers asked the hub"


def test_curate_generate_with_flux_fill_end_to_end(
    concept_ws: Workspace, tiny_flux_fill: Path, fake_llm: FakeLLM
) -> None:
    """`curate generate` with `repaint = "flux-fill:<folder>"`: the candidates record FLUX's settings,
    and the recaption (a VLM over OpenAI-compatible HTTP) sees exactly the final, pasted-back image."""
    from curation.cli import app

    fake_llm.responder = lambda body: "A photo of some objects standing on the floor."
    config = concept_ws.config
    config.layout = config.layout.model_copy(update={"width": 64, "height": 64})
    config.generate = config.generate.model_copy(
        update={"repaint": f"flux-fill:{tiny_flux_fill}", "recaption": "openai:fake-vlm", **FAST}
    )
    atomic_write_text(concept_ws.config_path, dump_config(config))
    plan_layouts(concept_ws, 2)
    result = CliRunner().invoke(app, ["generate", "--workspace", str(concept_ws.root)])
    assert result.exit_code == 0, result.output
    assert "generated 2" in result.output and "failed 0" in result.output
    seen = set()
    for request in fake_llm.requests:
        url = request["messages"][0]["content"][1]["image_url"]["url"]
        seen.add(np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))).tobytes())
    concepts = concept_ws.concepts()
    for candidate in concept_ws.candidates():
        provenance = candidate.extra["repaint"]
        assert provenance["pipeline"] == "FluxFillPipeline" and provenance["guidance_scale"] == 30.0
        assert candidate.generator_config["repaint"] == f"flux-fill:{tiny_flux_fill}"
        assert candidate.generator_config["steps"] == 2 and "<c-" not in candidate.prompt
        image = np.asarray(Image.open(concept_ws.resolve(candidate.image)))
        assert image.shape == (64, 64, 3) and image.tobytes() in seen, "the VLM saw the final image"
        assert candidate.caption.startswith("A photo of some objects standing on the floor, with ")
        assert all(concepts[c].phrase in candidate.caption for c in candidate.concepts)
    again = CliRunner().invoke(app, ["generate", "--workspace", str(concept_ws.root)])
    assert again.exit_code == 0 and "generated 0" in again.output

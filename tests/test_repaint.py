"""Diffusion repaint through a tiny random-init SDXL inpainting pipeline saved to a folder.

The folder is named in curate.toml exactly as a hub id would be, so `AutoPipelineForInpainting`
runs the real loading and inpainting code; only the weights are random. What must hold whatever
the weights: the objects' pixels survive (paste-back), a seed fixes an image, batching changes
nothing, and every parameter needed to regenerate an image is recorded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.core.config import GenerateConfig, dump_config
from curation.core.errors import CurateError
from curation.core.workspace import Workspace, atomic_write_text
from generators.compose import Composition, Layer
from generators.layout import plan_layouts
from generators.repaint import load_repainter
from generators.repaint_contract import RepaintJob, object_alpha, repaint_mask
from generators.run import plan_work
from tests.fixtures.tiny_pipelines import build_tiny_sd, build_tiny_sdxl_inpaint

FAST = {"steps": 2, "batch_size": 3, "mask_blur": 2}


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl_inpaint(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def repainter(tiny_sdxl: Path):
    return load_repainter(str(tiny_sdxl), GenerateConfig(repaint=str(tiny_sdxl), **FAST))


def _composition(seed: int, height: int = 64, width: int = 64) -> Composition:
    """Noise background and two overlapping objects whose alpha has a solid core and soft edges."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    layers = []
    for x, y, side in ((6, 10, 28), (24, 20, 30)):
        alpha = np.zeros((side, side), np.float32)
        alpha[2:-2, 2:-2] = 0.5
        alpha[5:-5, 5:-5] = 1.0
        rgb = np.full((side, side, 3), rng.integers(0, 256, 3), np.uint8)
        layers.append(Layer(f"c{x}", x, y, rgb, alpha))
    return Composition(background, layers)


def _job(seed: int, **size: int) -> RepaintJob:
    return RepaintJob(_composition(seed, **size), "a realistic photo of a cat and a mug on a lawn", seed)


def test_mask_repaints_the_background_and_keeps_object_cores() -> None:
    composition = _composition(0)
    cover = object_alpha(composition)
    mask = repaint_mask(composition, blur=2)
    assert mask.dtype == np.uint8 and mask.shape == cover.shape
    assert (mask[cover == 0] > 0).mean() > 0.95 and mask[0, 0] == 255
    core = np.zeros_like(cover, bool)
    core[18:30, 14:26] = True  # the first object's solid core (15:33, 11:29) less the blur radius + 1
    assert (mask[core] == 0).all()
    edge = (cover > 0) & (cover < 1)
    assert mask[edge].mean() > 0, "the repaint reaches under the soft object edge, as in Gen4Gen"
    assert (repaint_mask(composition, blur=0) == np.round(255 * (1 - cover))).all()


def test_objects_are_pasted_back_and_the_background_is_repainted(repainter) -> None:
    job = _job(1)
    (out,) = repainter([job])
    pasted = job.composition.image
    solid = object_alpha(job.composition) == 1.0
    assert out.shape == pasted.shape and out.dtype == np.uint8
    assert solid.sum() > 500 and (out[solid] == pasted[solid]).all()
    background = object_alpha(job.composition) == 0
    assert np.abs(out[background].astype(int) - pasted[background]).mean() > 10


def test_seed_fixes_the_image_and_batches_match_single_calls(repainter) -> None:
    jobs = [_job(seed) for seed in (2, 3, 4)]
    batched = repainter(jobs)
    single = [repainter([job])[0] for job in jobs]
    for one, many in zip(single, batched, strict=True):
        # fp32 CPU kernels differ by ~1e-5 between batch shapes: at most one level after rounding
        assert np.abs(one.astype(int) - many).max() <= 1
    assert (repainter([jobs[0]])[0] == single[0]).all()
    other_seed = dataclasses.replace(jobs[0], seed=99)
    assert np.abs(repainter([other_seed])[0].astype(int) - single[0]).mean() > 1


def test_odd_canvas_sizes_and_mixed_batches(repainter) -> None:
    odd, square = _job(5, height=60, width=68), _job(6)
    out = repainter([odd, square])
    assert [o.shape for o in out] == [(60, 68, 3), (64, 64, 3)]
    solid = object_alpha(odd.composition) == 1.0
    assert (out[0][solid] == odd.composition.image[solid]).all()


def test_refiner_runs_after_the_base_and_is_recorded(tiny_sdxl: Path, tmp_path: Path) -> None:
    refiner = str(build_tiny_sdxl_inpaint(tmp_path, refiner=True))
    settings = GenerateConfig(repaint=str(tiny_sdxl), refiner=refiner, **FAST | {"steps": 4})
    refined = load_repainter(str(tiny_sdxl), settings)
    job = _job(7)
    (out,) = refined([job])
    solid = object_alpha(job.composition) == 1.0
    assert (out[solid] == job.composition.image[solid]).all()
    config = refined.config()
    assert config["refiner"] == refiner and config["refiner_start"] == 0.75
    assert config["refiner_pipeline"] == "StableDiffusionXLInpaintPipeline"


def test_sd1_pipelines_load_through_the_same_code(tmp_path: Path) -> None:
    folder = str(build_tiny_sd(tmp_path, vae_downsample=8))
    sd = load_repainter(folder, GenerateConfig(repaint=folder, **FAST))
    assert sd.config()["pipeline"] == "StableDiffusionInpaintPipeline"
    job = _job(8)
    (out,) = sd([job])
    solid = object_alpha(job.composition) == 1.0
    assert out.shape == (64, 64, 3) and (out[solid] == job.composition.image[solid]).all()


def test_missing_pipeline_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="could not be loaded"):
        load_repainter(str(tmp_path / "no-such-model"))


def test_curate_generate_with_a_pipeline_folder_end_to_end(concept_ws: Workspace, tiny_sdxl: Path) -> None:
    from curation.cli import app

    config = concept_ws.config
    config.layout = config.layout.model_copy(update={"width": 64, "height": 64})
    config.generate = config.generate.model_copy(update={"repaint": str(tiny_sdxl), **FAST})
    atomic_write_text(concept_ws.config_path, dump_config(config))
    plan_layouts(concept_ws, 4)
    result = CliRunner().invoke(app, ["generate", "--workspace", str(concept_ws.root)])
    assert result.exit_code == 0, result.output
    assert "generated 4" in result.output and "failed 0" in result.output

    candidates = sorted(concept_ws.candidates(), key=lambda c: c.candidate_id)
    assert [c.candidate_id for c in candidates] == sorted(i.candidate_id for i in plan_work(concept_ws))
    concepts = concept_ws.concepts()
    for candidate in candidates:
        image = np.asarray(Image.open(concept_ws.resolve(candidate.image)))
        assert image.shape == (64, 64, 3)
        assert candidate.generator_config["repaint"] == str(tiny_sdxl)
        assert candidate.generator_config["steps"] == 2 and candidate.generator_config["strength"] == 0.9
        provenance = candidate.extra["repaint"]
        assert provenance["pipeline"] == "StableDiffusionXLInpaintPipeline"
        assert provenance["name_or_path"] == str(tiny_sdxl) and provenance["diffusers_version"]
        assert provenance["guidance_scale"] == 6.0 and provenance["mask_blur"] == 2
        assert provenance["batch_size"] == 3 and provenance["dtype"] == "float32"
        assert candidate.extra["repaint_seed"] == int(candidate.candidate_id, 16) % 2**63
        nouns = [concepts[c].class_noun for c in candidate.concepts]
        assert candidate.prompt.startswith("a realistic photo of ")
        assert all(n in candidate.prompt for n in nouns)
        assert "<c-" not in candidate.prompt, "the inpainting model never sees personal tokens"

    again = CliRunner().invoke(app, ["generate", "--workspace", str(concept_ws.root)])
    assert again.exit_code == 0 and "generated 0" in again.output and "skipped 4" in again.output
    classical = [i.candidate_id for i in plan_work(concept_ws)]
    config.generate = config.generate.model_copy(update={"steps": 3})
    atomic_write_text(concept_ws.config_path, dump_config(config))
    assert set(classical).isdisjoint(i.candidate_id for i in plan_work(concept_ws)), "steps are in the id"

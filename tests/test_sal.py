"""SAL guidance in the MSP loop and SAS scores, on a tiny random-init Stable Diffusion and M_SAL."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.core import dataset as ds
from curation.core.buckets import MSP_BUCKETS, msp_bucket
from curation.core.config import MSPSettings, dump_config
from curation.core.errors import CurateError
from curation.core.records import Box, Concept, LayoutPlan
from curation.core.workspace import Workspace, atomic_write_text
from curation.models.subject_segmenter import SegmenterSettings, SubjectSegmenter, build_unet, save_segmenter
from curation.scores.sas import SAS_FIELD, SAS_MEAN_FIELD
from generators.msp.pipeline import MSPGenerator
from generators.msp.sal import SALGuidance, StepState, sal_loss
from generators.msp.segments import BACKGROUND
from personalization import metrics as M
from tests.fixtures.tiny_pipelines import build_tiny_sd

CANVAS = 32  # the tiny VAE halves it: 16x16 latents
TINY = SegmenterSettings(
    encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4), encoder_weights="", size=32
)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("sal-sd"))


@pytest.fixture(scope="module")
def gen(sd_folder) -> MSPGenerator:
    return MSPGenerator.from_pretrained(sd_folder, device="cpu")


def _segmenter_folder(root: Path, concepts: list[str]) -> Path:
    torch.manual_seed(0)
    save_segmenter(root, build_unet(TINY, len(concepts) + 1), concepts, TINY, encoder_weights="random")
    return root


@pytest.fixture(scope="module")
def msal(tmp_path_factory) -> Path:
    return _segmenter_folder(tmp_path_factory.mktemp("msal"), ["cat", "clock", "mug"])


@pytest.fixture(scope="module")
def concepts() -> dict[str, Concept]:
    return {c: Concept(concept_id=c, name=c, class_noun=c, token=f"<c-{c}>") for c in ("cat", "mug", "clock")}


@pytest.fixture(scope="module")
def plan() -> LayoutPlan:
    boxes = [Box(concept_id="cat", x=0, y=0, w=16, h=32), Box(concept_id="mug", x=16, y=8, w=16, h=16)]
    return LayoutPlan(
        concepts=["cat", "mug"],
        background="a beach",
        boxes=boxes,
        width=CANVAS,
        height=CANVAS,
        planner="rules",
    ).with_id()


def _first_state(gen: MSPGenerator, plan: LayoutPlan, concepts: dict[str, Concept]) -> StepState:
    states: list[StepState] = []

    def record(state: StepState) -> torch.Tensor:
        states.append(state)
        return state.noise_pred

    gen([plan], concepts, [3], settings=MSPSettings(steps=3, kappa=1.0), guidance=record)
    return states[0]


def test_sal_gradient_flows_only_through_the_segments_pixels(msal) -> None:
    seg = SubjectSegmenter.load(msal)
    pixels = torch.rand(1, 3, CANVAS, CANVAS, requires_grad=True)
    masks = torch.zeros(3, 16, 16)
    masks[0, :, :6] = 1  # cat: left columns
    masks[2, :, 6:] = 1  # background elsewhere (mug has an empty segment)
    loss = sal_loss(seg, pixels, [masks], [["cat", "mug", BACKGROUND]])
    (grad,) = torch.autograd.grad(loss, pixels)
    inside = grad[..., :, :12].abs().sum()  # latent column 6 = pixel column 12
    assert float(inside) > 0
    assert float(grad[..., :, 12:].abs().max()) == 0.0

    # by hand: -mean over the cat's pixels of log softmax(M_SAL(x * m))[cat]
    m = torch.zeros(1, 1, CANVAS, CANVAS)
    m[..., :12] = 1
    log_p = torch.log_softmax(seg.logits(pixels.detach() * m), dim=1)[0, seg.class_of("cat")]
    expected = -(log_p * m[0, 0]).sum() / m.sum()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_scale_zero_is_exactly_no_guidance(gen, plan, concepts, msal) -> None:
    base = MSPSettings(steps=3, kappa=0.5)
    plain = gen([plan], concepts, [7], settings=base)[0]
    zero = gen(
        [plan], concepts, [7], settings=base.model_copy(update={"sal_model": str(msal), "sal_scale": 0.0})
    )[0]
    assert np.array_equal(np.asarray(plain.image), np.asarray(zero.image))
    assert zero.provenance["sal"] == {"model": str(msal), "scale": 0.0, "steps": 10}
    assert "sal" not in plain.provenance
    guided = gen(
        [plan], concepts, [7], settings=base.model_copy(update={"sal_model": str(msal), "sal_scale": 50.0})
    )[0]
    assert not np.array_equal(np.asarray(plain.image), np.asarray(guided.image))


def test_one_guided_step_lowers_the_loss(gen, plan, concepts, msal) -> None:
    state = _first_state(gen, plan, concepts)
    hook = SALGuidance(gen.pipe, SubjectSegmenter.load(msal), scale=1.0, steps=1)
    loss0, grad = hook.loss_and_grad(state)
    assert float(grad.abs().sum()) > 0
    a = state.alpha_cumprod

    def loss_with(noise: torch.Tensor) -> float:
        with torch.no_grad():
            pixels = hook.x0_pixels(state.latents.float(), noise.float(), a, state.timestep)
            return float(sal_loss(hook.segmenter, pixels, state.masks, state.segment_names))

    assert loss_with(state.noise_pred) == pytest.approx(float(loss0), rel=1e-5)
    # the correction is scale * sqrt(1 - a) * grad, moving x0_hat by -scale * (1 - a) / sqrt(a) * grad
    step = 1e-2 / float(grad.norm())
    hook.scale = step
    corrected = hook(state)
    assert torch.allclose(corrected - state.noise_pred, step * math.sqrt(1 - a) * grad, atol=1e-7)
    assert loss_with(corrected) < float(loss0)
    # beyond sal_steps the hook returns the prediction untouched
    later = StepState(**{**state.__dict__, "step_index": 1})
    assert hook(later) is later.noise_pred


def test_segmenter_without_the_plans_concepts_is_refused_before_any_unet_call(
    gen, plan, concepts, tmp_path
) -> None:
    other = _segmenter_folder(tmp_path / "other", ["cat", "clock"])
    calls: list[int] = []
    handle = gen.pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        settings = MSPSettings(steps=2, sal_model=str(other))
        with pytest.raises(CurateError, match="no class for mug"):
            gen([plan], concepts, [0], settings=settings)
        with pytest.raises(CurateError, match="no trained subject segmenter"):
            MSPGenerator.from_settings(MSPSettings(sal_model=str(tmp_path / "missing")), device="cpu")
    finally:
        handle.remove()
    assert calls == []
    gen.sal = None


def test_sas_metric_by_hand() -> None:
    refs_a = np.array([[1.0, 0.0], [0.0, 1.0]])
    refs_b = np.array([[3.0, 4.0]])
    # subject a: cos((1,1),(1,0)) = cos((1,1),(0,1)) = 1/sqrt2; b is missing: 0
    assert M.sas([np.array([1.0, 1.0]), None], [refs_a, refs_b]) == pytest.approx(0.5 / math.sqrt(2))
    # b found at (4,-3): cos with (3,4) = 0; max over a's refs = 1
    assert M.sas([np.array([2.0, 0.0]), np.array([4.0, -3.0])], [refs_a, refs_b], "max") == pytest.approx(0.5)
    # MSP Table 1 columns: 1, 2, 3 and more than 3 subjects
    assert [msp_bucket(n) for n in (1, 2, 3, 4, 7)] == ["1", "2", "3", ">3", ">3"]
    rows = [{"sas": v, "msp_bucket": msp_bucket(n)} for v, n in ((0.2, 1), (0.4, 1), (0.9, 5), (None, 2))]
    agg = M.aggregate(rows, ["sas"], MSP_BUCKETS, "msp_bucket")["sas"]
    assert agg["1"] == {"mean": pytest.approx(0.3), "n": 2} and agg[">3"]["n"] == 1
    assert agg["2"] == {"mean": None, "n": 0} and agg["all"]["n"] == 3


def test_train_generate_with_sal_index_with_sas(
    concept_ws: Workspace, tiny_clip_name: str, tmp_path: Path
) -> None:
    from curation.index.run import index_workspace
    from generators.layout import plan_layouts
    from generators.run import generate
    from personalization.segmenter_training import train_segmenter

    config = concept_ws.config
    config.layout = config.layout.model_copy(update={"width": 64, "height": 64})
    atomic_write_text(concept_ws.config_path, dump_config(config))
    plan_layouts(concept_ws, 4)
    assert generate(concept_ws).generated == 4  # gen4gen composites: M_SAL's training data
    msal_dir = tmp_path / "msal"
    settings = SegmenterSettings(**{**TINY.__dict__, "size": 64, "epochs": 1, "cutouts_per_ref": 1})
    train_segmenter(concept_ws, msal_dir, settings, device="cpu")

    sd = build_tiny_sd(tmp_path / "sd", vae_downsample=8)
    config = concept_ws.config
    config.generate = config.generate.model_copy(
        update={
            "batch_size": 2,
            "msp": MSPSettings(
                model=str(sd), steps=2, kappa=0.5, sal_model=str(msal_dir), sal_scale=5.0, sal_steps=1
            ),
        }
    )
    config.index = config.index.model_copy(
        update={
            "clip_model": tiny_clip_name,
            "clip_pretrained": "",
            "dataset_name": f"test-sal-{uuid.uuid4().hex[:10]}",
            "subject_segmenter": str(msal_dir),
        }
    )
    atomic_write_text(concept_ws.config_path, dump_config(config))
    report = generate(concept_ws, generator="msp")
    assert report.generated == 4 and not report.failed, report.summary()
    msp = [c for c in concept_ws.candidates() if c.generator == "msp"]
    assert len(msp) == 4 and all(c.extra["msp"]["sal"]["model"] == str(msal_dir) for c in msp)

    index_workspace(concept_ws)
    import fiftyone as fo

    dataset = fo.load_dataset(config.index.dataset_name)
    for sample in dataset.iter_samples(autosave=True):
        per = sample[SAS_FIELD]
        assert sorted(per) == sorted(sample[ds.CONCEPTS])
        assert all(-1.0 <= v <= 1.0 for v in per.values())
        assert sample[SAS_MEAN_FIELD] == pytest.approx(float(np.mean(list(per.values()))))
        accepted = sample[ds.GENERATOR] == "msp"
        sample[ds.REVIEW_DECISION] = ds.ACCEPT if accepted else ds.REJECT
        sample[ds.REVIEW_QUALITY] = 4.0

    # ... export the accepted SAL candidates, evaluate a baseline and MSP + SAL with SAS: the MSP table prints
    from exports.mycanvas import export_mycanvas
    from personalization.eval_settings import EvalSettings
    from personalization.evaluate import evaluate
    from personalization.msp_rows import MSPConfiguration
    from tests.fixtures.tiny_pipelines import build_tiny_dinov2, build_tiny_owlvit

    exported = export_mycanvas(concept_ws, min_quality=3, include_near_duplicates=True)
    assert exported.n_images == 4
    dataset.delete()
    eval_settings = EvalSettings(
        clip_model=tiny_clip_name,
        clip_pretrained="",
        detector=str(build_tiny_owlvit(tmp_path / "owl")),
        dino=str(build_tiny_dinov2(tmp_path / "dino")),
        prompts_per_set=1,
        images_per_prompt=1,
        steps=2,
        resolution=64,
        subject_segmenter=str(msal_dir),
        sal_scale=5.0,
    )
    configurations = {"SD": str(sd), "MSP + SAL": MSPConfiguration(str(sd), sal=True)}
    result = evaluate(configurations, exported.path, tmp_path / "eval", eval_settings, device="cpu")
    table = Path(result.table_path).read_text()
    assert "### MSP Table 1" in table and table.count("| SD |") == 3 and table.count("| MSP + SAL |") == 3
    assert f"SAS: M_SAL {msal_dir}." in table
    rows = json.loads(Path(result.json_path).read_text())["rows"]
    assert all(r["sas"] is not None for r in rows)
    guided = [r for r in rows if r["configuration"] == "MSP + SAL"]
    assert len(guided) == len(rows) // 2 and all(r["msp"]["sal"]["model"] == str(msal_dir) for r in guided)
    assert all(r["msp"]["scaffold"] and r["msp"]["segment_source"] == "masks" for r in guided)

    # a segmenter that lacks a planned concept stops generate before any image, with one error
    narrow = _segmenter_folder(tmp_path / "narrow", sorted(concept_ws.concepts())[:1])
    config.generate = config.generate.model_copy(
        update={"msp": config.generate.msp.model_copy(update={"sal_model": str(narrow)})}
    )
    atomic_write_text(concept_ws.config_path, dump_config(config))
    before = sorted(p.name for p in concept_ws.candidates_dir.rglob("*.png"))
    with pytest.raises(CurateError, match="no class for"):
        generate(concept_ws, generator="msp")
    assert sorted(p.name for p in concept_ws.candidates_dir.rglob("*.png")) == before

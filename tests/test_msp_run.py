"""`curate generate --generator msp` end to end: the sharded runner, then index and export unchanged.

A tiny random-init Stable Diffusion (VAE downsampling 8, so a 64 px canvas is 8x8 latents) is saved
to a folder and named in curate.toml exactly as a hub id or `curate train` output would be; the
workspace holds five really ingested concepts, the index runs on real FiftyOne with a tiny open_clip.
"""

from __future__ import annotations

import hashlib
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.cli import app
from curation.core import dataset as ds
from curation.core.config import MSPSettings, dump_config
from curation.core.errors import CurateError
from curation.core.workspace import Workspace, atomic_write_text
from curation.index.run import index_workspace
from exports.mycanvas import export_mycanvas
from generators.candidates import pick_references
from generators.layout import plan_layouts
from generators.run import generate, plan_work
from tests.fixtures.tiny_pipelines import build_tiny_sd

CANVAS = 64
N_PLANS = 3


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("msp-run-sd"), vae_downsample=8)


def _configure(ws: Workspace, sd_folder: Path, clip: str, generator: str = "msp", **msp: object) -> None:
    config = ws.config
    config.layout = config.layout.model_copy(update={"width": CANVAS, "height": CANVAS})
    config.generate = config.generate.model_copy(
        update={
            "generator": generator,
            "batch_size": 2,
            "msp": MSPSettings(**({"model": str(sd_folder), "steps": 2, "kappa": 0.5} | msp)),
        }
    )
    config.index = config.index.model_copy(
        update={"clip_model": clip, "clip_pretrained": "", "dataset_name": f"test-msp-{uuid.uuid4().hex[:10]}"}
    )
    atomic_write_text(ws.config_path, dump_config(config))


@contextmanager
def unet_batches():
    """How many plans (distinct latents) each real UNet forward of the process carried."""
    import torch
    from diffusers import UNet2DConditionModel

    seen: list[int] = []

    def record(module, args):
        if isinstance(module, UNet2DConditionModel):
            seen.append(len(torch.unique(args[0].flatten(1), dim=0)))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def _files(ws: Workspace) -> dict[str, str]:
    return {
        p.relative_to(ws.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ws.candidates_dir.rglob("*"))
        if p.is_file()
    }


def test_msp_candidates_flow_through_runner_index_and_export(concept_ws, sd_folder, tiny_clip_name):
    ws = concept_ws
    _configure(ws, sd_folder, tiny_clip_name)
    plans = {p.plan_id: p for p in plan_layouts(ws, N_PLANS)}
    gen4gen_items = {i.plan.plan_id: i for i in plan_work(ws, "gen4gen")}
    gen4gen_ids = {i.candidate_id for i in gen4gen_items.values()}

    with unet_batches() as batches:
        report = generate(ws)
    assert (report.generated, sum(report.failed.values())) == (N_PLANS, 0), report.summary()
    # batch_size 2 of 3 plans, one step each: a loop over plans 1+2, then one over plan 3
    assert batches == [2, 1]
    candidates = list(ws.candidates())
    assert len(candidates) == N_PLANS and not gen4gen_ids & {c.candidate_id for c in candidates}
    concepts = ws.concepts()
    for c in candidates:
        plan = plans[c.plan_id]
        assert (c.status, c.generator) == ("ok", "msp")
        assert c.generator_config["msp"]["model"] == str(sd_folder) and "repaint" not in c.generator_config
        image = np.asarray(Image.open(ws.resolve(c.image)))
        assert image.shape == (CANVAS, CANVAS, 3)
        msp = c.extra["msp"]
        # the seed comes from the candidate id, not from item.seed (0 for every plan)
        assert msp["seed"] == int(c.candidate_id, 16) % 2**63 and "repaint_seed" not in c.extra
        assert (msp["kappa"], msp["steps_run"], msp["switch_step"]) == (0.5, 1, 1)  # scaffold 0.9 of 2 steps
        assert msp["scaffold"] and msp["segment_source"] == "masks"
        assert msp["segments"][:-1] == [b.concept_id for b in plan.boxes]
        assert msp["segment_prompts"][:-1] == [f"a photo of {concepts[b.concept_id].phrase}" for b in plan.boxes]
        assert c.prompt == msp["global_prompt"] and all(concepts[k].phrase in c.prompt for k in plan.concepts)
        assert c.caption == c.template_caption and set(c.refs_used) == set(plan.concepts)
        # the photos the Gen4Gen candidate of this plan and seed pastes (README: same reference photos)
        twin = gen4gen_items[c.plan_id]
        picked = pick_references(twin.plan, twin.seed, concepts)
        assert c.refs_used == {k.concept_id: k.refs[i] for k, i, _ in picked}
        assert [b.concept_id for b in c.boxes] == plan.concepts
    assert len({c.extra["msp"]["seed"] for c in candidates}) == N_PLANS

    before = _files(ws)
    again = generate(ws)
    assert (again.generated, again.skipped_candidates) == (0, N_PLANS)
    assert _files(ws) == before

    index = index_workspace(ws)
    assert index.added == N_PLANS
    dataset = ds.open_dataset(ws)
    assert sorted(dataset.values(ds.CANDIDATE_ID)) == sorted(c.candidate_id for c in candidates)
    assert set(dataset.values(ds.GENERATOR)) == {"msp"}
    assert all(len(e) == 32 for e in dataset.values(ds.CLIP_EMBEDDING))

    chosen = sorted(c.candidate_id for c in candidates)[:2]
    for sample in dataset.iter_samples(autosave=True):
        accepted = sample[ds.CANDIDATE_ID] in chosen
        sample[ds.REVIEW_DECISION] = ds.ACCEPT if accepted else ds.REJECT
        sample[ds.REVIEW_QUALITY] = 4.0
    exported = export_mycanvas(ws, min_quality=3, include_near_duplicates=True)
    assert exported.n_images == 2
    rows = (exported.path / "train" / "metadata.jsonl").read_text()
    assert all(cid in rows for cid in chosen)


def test_gen4gen_candidates_paste_the_photos_picked_for_the_msp_twin(concept_ws, sd_folder, tiny_clip_name):
    """The other half of the flow test's check: real Gen4Gen records follow the plan-and-seed pick."""
    ws = concept_ws
    _configure(ws, sd_folder, tiny_clip_name, generator="gen4gen")
    config = ws.config
    config.generate.seeds_per_plan = 2
    atomic_write_text(ws.config_path, dump_config(config))
    plan_layouts(ws, 4)
    report = generate(ws)  # offline: classical repaint, no diffusion
    assert (report.generated, sum(report.failed.values())) == (8, 0), report.summary()

    concepts = ws.concepts()
    msp_items = {(i.plan.plan_id, i.seed): i for i in plan_work(ws, "msp")}
    used = set()
    for c in ws.candidates():
        twin = msp_items[(c.plan_id, c.seed)]
        assert twin.candidate_id != c.candidate_id
        picked = pick_references(twin.plan, twin.seed, concepts)
        assert c.refs_used == {k.concept_id: k.refs[i] for k, i, _ in picked}
        used.add(tuple(sorted(c.refs_used.items())))
    assert len(used) > 1, "the pick still varies with plan and seed"


def test_msp_settings_change_msp_ids_only(concept_ws, sd_folder, tiny_clip_name):
    ws = concept_ws
    _configure(ws, sd_folder, tiny_clip_name)
    plan_layouts(ws, 2)
    ids = [i.candidate_id for i in plan_work(ws)]
    gen4gen = [i.candidate_id for i in plan_work(ws, "gen4gen")]

    _configure(ws, sd_folder, tiny_clip_name, max_unet_batch=3)  # rounding only: same candidates
    assert [i.candidate_id for i in plan_work(ws)] == ids
    _configure(ws, sd_folder, tiny_clip_name, kappa=0.2)
    changed = [i.candidate_id for i in plan_work(ws)]
    assert not set(changed) & set(ids)
    assert [i.candidate_id for i in plan_work(ws, "gen4gen")] == gen4gen  # MSP settings never re-id gen4gen


def test_cli_generator_option_overrides_the_config(concept_ws, sd_folder, tiny_clip_name):
    ws = concept_ws
    _configure(ws, sd_folder, tiny_clip_name, generator="gen4gen", scaffold=False)
    plan_layouts(ws, 2)
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "--generator", "msp", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "generated 2" in result.output
    candidates = list(ws.candidates())
    assert [c.generator for c in candidates] == ["msp", "msp"]
    assert all(c.extra["msp"]["segment_source"] == "masks" for c in candidates)
    assert not any(c.extra["msp"]["scaffold"] for c in candidates)
    assert ws.config.generate.generator == "gen4gen"  # the option does not rewrite curate.toml

    with pytest.raises(CurateError, match="unknown generator 'dalle'"):
        generate(ws, generator="dalle")


def test_unloadable_msp_model_is_a_one_line_error(concept_ws, tmp_path, tiny_clip_name):
    _configure(concept_ws, tmp_path / "no-such-model", tiny_clip_name)
    plan_layouts(concept_ws, 1)
    with pytest.raises(CurateError, match="cannot load MSP model"):
        generate(concept_ws)
    assert not list(concept_ws.candidates())
    _configure(concept_ws, tmp_path, tiny_clip_name, controlnet="lllyasviel/sd-controlnet-openpose")
    with pytest.raises(CurateError, match="needs one control image per plan"):
        generate(concept_ws)

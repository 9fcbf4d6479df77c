"""The export travels: copied to another folder with the workspace deleted, every printed command runs.

What a user does with a cluster: rsync the export there and paste the card's commands. The test copies
an export of every format to a new folder, deletes the workspace (so a path into it fails instead of
quietly reading the original), and runs each command the card prints with `bash` from an unrelated
directory, `EXPORT` naming the copy, against diffusers' own scripts (tests/consumers/diffusers, as
`$DIFFUSERS`) and tiny random Stable Diffusion 1.x, SDXL and FLUX.1 pipelines (`$PRETRAINED`,
`$PRETRAINED_SDXL`, `$PRETRAINED_FLUX`), 1-2 steps at 64 px, with prior preservation on (class images
exported for concepts and compositions). The SDXL and FLUX.1 LoRA folders the scripts write are then
read back by `curate evaluate`'s loader (base, LoRA, token rows), as a user evaluates them. Caches and
HOME point into a sandbox; afterwards nothing outside the copy and the sandbox may have changed, the
workspace must not have come back, and each run's output must be under the copy's `runs/`. kohya's
command needs sd-scripts, which cannot be installed here: its paths are checked to resolve inside the
copy, and its dataset config is checked against kohya's reader in test_export_trainer_formats.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from exports.mycanvas import export_mycanvas
from tests.fixtures.tiny_flux import build_tiny_flux
from tests.fixtures.tiny_pipelines import build_tiny_sd, build_tiny_sdxl
from tests.test_export import EXPORTED, NOUNS, _png, build_workspace, read_rows

DIFFUSERS = Path(__file__).parent / "consumers" / "diffusers"
TINY_RUN = {
    "custom_diffusion_concepts": ["--resolution", "64", "--max_train_steps", "2"],
    "custom_diffusion_compositions": ["--resolution", "64", "--max_train_steps", "2"],
    "dreambooth_multi_subject": ["--resolution", "64", "--max_train_steps", "2"],
    "dreambooth_lora_advanced": ["--resolution", "64", "--max_train_steps", "2"],
    "dreambooth_lora_sdxl_advanced": [
        "--resolution",
        "64",
        "--max_train_steps",
        "1",
        "--mixed_precision",
        "no",
    ],
    "dreambooth_lora_flux_advanced": [
        "--resolution",
        "64",
        "--max_train_steps",
        "1",
        "--mixed_precision",
        "no",
    ],
    "curate_train": ["--steps", "2", "--resolution", "64", "--cpu"],
    "curate_train_sdxl": ["--steps", "1", "--resolution", "64", "--cpu", "--mixed-precision", "no"],
    "curate_train_flux": ["--steps", "1", "--resolution", "64", "--cpu", "--mixed-precision", "no"],
}
"""What each command gets appended for a tiny run (argparse and typer take the last value given)."""
OUTPUTS = {
    "custom_diffusion_concepts": "pytorch_custom_diffusion_weights.safetensors",
    "custom_diffusion_compositions": "pytorch_custom_diffusion_weights.safetensors",
    "dreambooth_multi_subject": "model_index.json",
    "dreambooth_lora_advanced": "dreambooth_lora_advanced_emb.safetensors",  # <output_dir>/<output_dir>_emb
    "dreambooth_lora_sdxl_advanced": "dreambooth_lora_sdxl_advanced_emb.safetensors",
    "dreambooth_lora_flux_advanced": "dreambooth_lora_flux_advanced_emb.safetensors",
    "curate_train": "run.json",
    "curate_train_sdxl": "lora/lora.json",
    "curate_train_flux": "lora/lora.json",
}
EVALUATED = {
    "dreambooth_lora_sdxl_advanced": "sdxl",
    "dreambooth_lora_flux_advanced": "flux",
    "curate_train_sdxl": "sdxl",
    "curate_train_flux": "flux",
}
"""The LoRA runs `curate evaluate` reads back, and the family it must find."""


@dataclass(frozen=True)
class Travelled:
    base: Path
    copy: Path
    original: Path
    workspace: Path
    sandbox: Path
    pipeline: Path
    bases: dict[str, Path]
    commands: dict[str, str]


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def travelled(tmp_path_factory) -> Travelled:
    base = tmp_path_factory.mktemp("travel")
    built = build_workspace(base / "ws")
    priors = base / "priors"
    for n, noun in enumerate(sorted(NOUNS)):  # multi-subject DreamBooth wants one per subject in each folder
        (priors / noun).mkdir(parents=True)
        for k in range(len(NOUNS)):
            (priors / noun / f"{k}.png").write_bytes(_png(7000 + 10 * n + k, 16))
    report = export_mycanvas(
        built.ws,
        formats="mycanvas,webdataset,kohya,onetrainer",
        class_images_from=priors,
        class_images=len(NOUNS),
    )
    copy = base / "cluster" / "data" / "mycanvas"
    shutil.copytree(report.path, copy, symlinks=True)
    original, workspace = report.path.resolve(), built.ws.root.resolve()
    shutil.rmtree(workspace)
    shutil.rmtree(priors)
    pipeline = build_tiny_sd(base / "models", vae_downsample=8)
    bases = {"sdxl": build_tiny_sdxl(base / "models"), "flux": build_tiny_flux(base / "models")}
    sandbox = base / "sandbox"
    (sandbox / "cwd").mkdir(parents=True)
    data = json.loads((copy / "train_commands.json").read_text())
    commands = {c["name"]: c["command"] for c in data["commands"]}
    return Travelled(base, copy, original, workspace, sandbox, pipeline, bases, commands)


def test_no_file_of_the_export_names_a_path_outside_it(travelled):
    for path in travelled.copy.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".jsonl", ".md", ".toml", ".txt"}:
            text = path.read_text()
            assert str(travelled.workspace) not in text and str(travelled.base) not in text, path
    assert "paths are relative to this folder" in (travelled.copy / "README.md").read_text()
    for command in travelled.commands.values():
        assert command.startswith('cd "${EXPORT:-.}" && ')
        assert not re.search(r"(^|\s)/", command.replace('"$DIFFUSERS/', "").replace('"$SD_SCRIPTS/', ""))
    assert set(travelled.commands) == {*TINY_RUN, "kohya_lora"}


@pytest.mark.parametrize("name", sorted(TINY_RUN))
def test_every_printed_command_runs_from_the_copy(travelled, name):
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "EXPORT": str(travelled.copy),
        "DIFFUSERS": str(DIFFUSERS.resolve()),
        "PRETRAINED": str(travelled.pipeline),
        "PRETRAINED_SDXL": str(travelled.bases["sdxl"]),
        "PRETRAINED_FLUX": str(travelled.bases["flux"]),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(travelled.sandbox / "home"),
        "HF_HOME": str(travelled.sandbox / "hf"),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "WANDB_MODE": "disabled",
    }
    before = {k: v for k, v in _files(travelled.base).items() if not _inside(k, travelled, ())}
    command = travelled.commands[name] + " " + shlex.join(TINY_RUN[name])
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=travelled.sandbox / "cwd",
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert (travelled.copy / "runs" / name / OUTPUTS[name]).is_file()
    assert not travelled.workspace.exists() and not travelled.original.exists()
    assert list((travelled.sandbox / "cwd").iterdir()) == []
    after = {k: v for k, v in _files(travelled.base).items() if not _inside(k, travelled, ())}
    assert after == before  # nothing written outside the copy (and the sandbox's caches)
    if name in EVALUATED:
        _evaluator_reads_back(travelled, name, EVALUATED[name])


def _evaluator_reads_back(travelled: Travelled, name: str, family: str) -> None:
    """`curate evaluate --run X=runs/<name>` loads what the command wrote: base, LoRA, token rows."""
    import torch
    from safetensors.torch import load_file

    from personalization.data import read_export
    from personalization.eval_pipelines import load_model, resolve_source
    from personalization.eval_settings import EvalSettings

    folder = travelled.copy / "runs" / name
    export = read_export(travelled.copy)
    # SDXL's script writes no model card: its row takes --base; FLUX's card and curate's lora.json name it
    base = str(travelled.bases[family]) if name == "dreambooth_lora_sdxl_advanced" else ""
    model = resolve_source(folder, export, base)
    assert (model.family, model.pipeline) == (family, str(travelled.bases[family]))
    pipe = load_model(model, EvalSettings(), "cpu")
    rows = load_file(str(model.lora.embeddings))["clip_l"]
    ids = pipe.tokenizer.convert_tokens_to_ids(list(model.lora.inserted))
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], rows.to(pipe.text_encoder.dtype))
    pieces = pipe.tokenizer.tokenize(model.prompt(f"{export.concepts['cat'].token} cat"))
    assert pieces[0] in model.lora.inserted and pieces[1] == "cat</w>"  # one trained token, then the noun
    denoiser = pipe.transformer if family == "flux" else pipe.unet
    assert any("lora" in n for n, _ in denoiser.named_parameters())


def _inside(path: str, travelled: Travelled, extra: tuple[Path, ...]) -> bool:
    return any(Path(path).is_relative_to(p) for p in (travelled.copy, travelled.sandbox, *extra))


def test_kohya_command_names_only_paths_inside_the_copy(travelled):
    import toml

    argv = shlex.split(travelled.commands["kohya_lora"])
    assert argv[:3] == ["cd", "${EXPORT:-.}", "&&"]
    config = toml.load(travelled.copy / argv[argv.index("--dataset_config") + 1])
    for subset in config["datasets"][0]["subsets"]:
        folder = (travelled.copy / subset["image_dir"]).resolve()
        assert folder.is_relative_to(travelled.copy) and any(folder.glob("*.png"))
    assert not Path(argv[argv.index("--output_dir") + 1]).is_absolute()


def test_the_copy_loads_with_datasets_webdataset_and_the_bundled_reader(travelled, tmp_path):
    import datasets
    import webdataset as wds

    rows = read_rows(travelled.copy)
    loaded = datasets.load_dataset(str(travelled.copy), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(loaded["candidate_id"]) == sorted(rows) and len(rows) == len(EXPORTED)

    def single_channel(data: bytes) -> Image.Image:  # as the card says
        return Image.open(io.BytesIO(data)).convert("L")

    shards = sorted(str(p) for p in (travelled.copy / "webdataset").glob("concepts-*.tar"))
    samples = list(
        wds.WebDataset(shards, shardshuffle=False).decode(
            wds.handle_extension("mask.png", single_channel), "pil"
        )
    )
    assert len(samples) == 2 * len(NOUNS)
    for sample in samples:
        card = sample["json"]  # decoded too
        assert sample["mask.png"].mode == "L" and sample["ref.png"].mode == "RGB"
        stored = Image.open(travelled.copy / card["mask"]).convert("L")
        assert sample["mask.png"].tobytes() == stored.tobytes()

    from personalization.data import read_export

    export = read_export(travelled.copy)
    assert all(len(c.class_images) == len(NOUNS) for c in export.concepts.values())
    assert all(p.is_relative_to(travelled.copy) for c in export.concepts.values() for p in c.class_images)

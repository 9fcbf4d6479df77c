"""`curate models fetch` (`curation/models/fetch.py`) against a local server standing in for the hub and
rembg's release: the files land in the caches the stages read, the stages then load them offline, and
what `from_pretrained` never reads (other formats, variants, a pipeline's single-file checkpoints) is
never downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curation.core.config import CurateConfig, GenerateConfig, IndexConfig, SegmentConfig
from curation.core.workspace import Workspace
from curation.models.fetch import hub_files
from curation.models.registry import resolve
from tests.fixtures.fake_hub import FakeHub

CURATE = str(Path(sys.executable).with_name("curate"))
CLIP_REPO = "timm/vit_base_patch32_clip_224.openai"


def test_hub_files_are_what_from_pretrained_reads() -> None:
    """An SDXL-style repo: diffusers folders beside root checkpoints, fp16 variants, pickled and other
    frameworks' copies of the same weights."""
    files = [
        "model_index.json", "README.md", "sd_xl_base_1.0.safetensors", "sd_xl_base_1.0_0.9vae.safetensors",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.onnx", "text_encoder/config.json",
        "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors", "text_encoder/flax_model.msgpack",
        "text_encoder_2/model.safetensors.index.json", "text_encoder_2/model-00001-of-00002.safetensors",
        "text_encoder_2/model-00002-of-00002.safetensors", "text_encoder_2/model.fp16-00001-of-00002.safetensors",
        "vae_decoder/model.onnx", "tokenizer/vocab.json", "scheduler/scheduler_config.json",
    ]
    assert hub_files(files, pipeline=True) == [
        "model_index.json", "README.md", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder_2/model.safetensors.index.json",
        "text_encoder_2/model-00001-of-00002.safetensors", "text_encoder_2/model-00002-of-00002.safetensors",
        "tokenizer/vocab.json", "scheduler/scheduler_config.json",
    ]
    single = ["config.json", "pytorch_model.bin", "model.safetensors", "tf_model.h5", "sd_xl_refiner_1.0.safetensors"]
    assert hub_files(single, pipeline=False) == ["config.json", "model.safetensors", "sd_xl_refiner_1.0.safetensors"]


def test_fetch_fills_the_caches_the_stages_load_from_offline(
    tmp_path: Path, fake_hub: FakeHub, tiny_repos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from curation.scores.presence import load_detector
    from generators.repaint import load_diffusion_repainter
    from tests.fixtures.tiny_pipelines import export_tiny_isnet

    inpaint = tmp_path / "repo-inpaint"
    shutil.copytree(tiny_repos["inpaint"], inpaint)
    extras = ["sd_xl_inpaint.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
              "text_encoder/pytorch_model.bin", "text_encoder/flax_model.msgpack", "onnx/model.onnx"]
    for extra in extras:
        (inpaint / extra).parent.mkdir(exist_ok=True)
        (inpaint / extra).write_bytes(b"never read" * 100)
    clip = tmp_path / "repo-clip"
    clip.mkdir()
    (clip / "open_clip_model.safetensors").write_bytes(b"\0" * 1000)
    fake_hub.add_repo("org/tiny-owlvit", tiny_repos["detector"])
    fake_hub.add_repo("org/tiny-sdxl-inpaint", inpaint)
    fake_hub.add_repo(CLIP_REPO, clip)
    fake_hub.files["/rembg/isnet-general-use.onnx"] = export_tiny_isnet(tmp_path / "tiny.onnx").read_bytes()

    config = CurateConfig(
        segment=SegmentConfig(device="cpu"),
        generate=GenerateConfig(repaint="org/tiny-sdxl-inpaint", device="cpu"),
        index=IndexConfig(detector="org/tiny-owlvit"),
    )
    root = tmp_path / "ws"
    Workspace.create(root, config)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env |= {"HF_ENDPOINT": fake_hub.url, "HF_HOME": str(tmp_path / "hf"), "U2NET_HOME": str(tmp_path / "u2net"),
            "CURATE_REMBG_URL": f"{fake_hub.url}/rembg/{{name}}.onnx", "HF_HUB_DISABLE_TELEMETRY": "1"}
    result = subprocess.run([CURATE, "models", "fetch", "-w", str(root)], check=False, capture_output=True,
                            text=True, env=env, timeout=600)

    # rembg's file is checked against its published md5: the server's bytes are not it, nothing is kept,
    # and the one error line (after huggingface_hub's progress bars) says so once the others were fetched
    said = result.stderr.strip().splitlines()
    assert result.returncode == 1 and [line for line in said if line.startswith("error:")] == said[-1:], said
    assert said[-1].startswith(
        f"error: the file fetched from {fake_hub.url}/rembg/isnet-general-use.onnx is not rembg's isnet-general-use"
    )
    assert not (tmp_path / "u2net").exists() or not list((tmp_path / "u2net").iterdir())
    cache = tmp_path / "hf" / "hub"
    for repo_id in ("org/tiny-owlvit", "org/tiny-sdxl-inpaint", CLIP_REPO):
        snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / FakeHub.commit(repo_id)
        assert f"fetched into {snapshot}" in result.stdout, result.stdout
    assert not [r for r in fake_hub.requests if any(r.endswith(extra) for extra in extras)]

    # what was fetched is what the stages read: they load it by hub id with the network off
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))
    assert [m.setting for m in resolve(config, root) if not m.present] == []  # auto offline: classical
    assert load_detector("org/tiny-owlvit", "cpu").device == "cpu"
    repainter = load_diffusion_repainter("org/tiny-sdxl-inpaint", config.generate)
    assert type(repainter).__name__ == "DiffusionRepainter"

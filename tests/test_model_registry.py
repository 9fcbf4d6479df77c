"""`curation/models/registry.py` and `curate models list`: every model the settings name, told truly.

Tiny real-architecture models are laid out in a huggingface_hub cache of the test's own (as a download
leaves them) or left out of it, the suite runs offline (HF_HUB_OFFLINE=1), and what the registry calls
'here' is then loaded by hub id through the stages' own loaders, while a missing one is one error
naming its setting.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curation.core.config import CurateConfig, GenerateConfig, IndexConfig, MSPSettings, SegmentConfig
from curation.core.errors import CurateError
from curation.core.workspace import Workspace
from curation.models.registry import resolve
from tests.fixtures.fake_hub import put_in_hub_cache

CURATE = str(Path(sys.executable).with_name("curate"))
CLIP_REPO = "timm/vit_base_patch32_clip_224.openai"
"""Where open_clip fetches ViT-B-32's `openai` weights from (its pretrained config's hf_hub)."""


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub's cache in tmp_path, for this process and (HF_HOME) for the CLI it starts."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))
    return cache


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_the_demo_workspace_lists_its_offline_defaults_and_whether_isnet_is_here(
    tmp_path: Path, hub_cache: Path
) -> None:
    from curation.demo import demo_config
    from tests.fixtures.tiny_pipelines import export_tiny_isnet

    ws = Workspace.create(tmp_path / "demo", demo_config())
    models = {m.setting: m for m in resolve(ws.config, ws.root)}
    assert list(models) == [
        "segment.backend", "generate.repaint", "generate.recaption", "index.clip_pretrained", "index.detector",
        "index.judge",
    ]
    segmentation = models["segment.backend"]
    assert segmentation.name == "classical" and segmentation.present
    assert f"IS-Net general-use is not in {tmp_path / 'u2net'} and segment.fetch = false" in segmentation.note
    clip = models["index.clip_pretrained"]
    assert clip.name == "ViT-B-32 / openai" and not clip.present and clip.note == "random weights until fetched"
    assert all(models[s].present and not models[s].source for s in ("generate.repaint", "index.detector"))

    isnet = export_tiny_isnet((tmp_path / "u2net").mkdir() or tmp_path / "u2net" / "isnet-general-use.onnx")
    segmentation = resolve(ws.config, ws.root)[0]
    assert (segmentation.name, segmentation.source, segmentation.present) == ("isnet-general-use", "rembg", True)
    assert segmentation.location == str(isnet) and segmentation.size == isnet.stat().st_size
    assert segmentation.device == "cpu (CPUExecutionProvider)"
    assert segmentation.checksum == "md5 fc16ebd8b0c10d971d3513d564d01e29 differs (curate models fetch replaces it)"


def _every_stage(tmp_path: Path, detector: str, inpaint: str) -> CurateConfig:
    return CurateConfig(
        segment=SegmentConfig(backend="sam:org/tiny-sam", detector=detector, device="cpu"),
        generate=GenerateConfig(repaint=inpaint, refiner="org/broken-refiner", recaption="org/tiny-llava", device="cpu"),
        index=IndexConfig(detector=detector, judge="openai:gpt-4o-mini", subject_segmenter="segmenter"),
    )


def test_every_stage_model_cached_or_missing_is_told_truly_and_loads_as_told(
    tmp_path: Path, hub_cache: Path, tiny_repos: dict[str, Path]
) -> None:
    from curation.scores.presence import load_detector
    from generators.recaption import load_captioner
    from generators.repaint import load_diffusion_repainter

    detector = put_in_hub_cache(tiny_repos["detector"], "org/tiny-owlvit", hub_cache)
    inpaint = put_in_hub_cache(tiny_repos["inpaint"], "org/tiny-sdxl-inpaint", hub_cache)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_repos["inpaint"], broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.unlink()  # an interrupted download: the UNet's weights never came
    put_in_hub_cache(broken, "org/broken-refiner", hub_cache)
    clip = hub_cache / "clip"
    clip.mkdir()
    (clip / "open_clip_model.safetensors").write_bytes(b"\0" * 1000)
    put_in_hub_cache(clip, CLIP_REPO, hub_cache)

    config = _every_stage(tmp_path, "org/tiny-owlvit", "org/tiny-sdxl-inpaint")
    found = {m.setting: m for m in resolve(config, tmp_path)}
    here = {s for s, m in found.items() if m.present}
    assert here == {"segment.detector", "generate.repaint", "index.clip_pretrained", "index.detector", "index.judge"}
    assert found["segment.backend"].note == "not in the hub cache" and found["segment.backend"].revision == "main"
    assert found["generate.refiner"].note == "unet/: no weights"
    assert found["index.subject_segmenter"].location == str(tmp_path / "segmenter")
    for setting, snapshot in (("index.detector", detector), ("generate.repaint", inpaint)):
        model = found[setting]
        assert (model.location, model.size, model.revision) == (str(snapshot), _size(snapshot), snapshot.name)
        assert model.source == "hub" and model.device == "cpu"
    assert found["generate.repaint"].pipeline and found["index.judge"].source == "endpoint"
    assert found["index.clip_pretrained"].location.endswith("open_clip_model.safetensors")

    msp = config.model_copy(update={"generate": GenerateConfig(generator="msp", msp=MSPSettings(
        model="org/tiny-sdxl-inpaint", controlnet="org/controlnet", sal_model=str(tmp_path / "sal")))})
    found = {m.setting: m for m in resolve(msp, tmp_path)}
    assert "generate.repaint" not in found and found["generate.msp.model"].present
    assert not found["generate.msp.controlnet"].present and not found["generate.msp.sal_model"].present

    # what is 'here' loads by hub id offline; what is not is one error naming its setting
    assert load_detector("org/tiny-owlvit", "cpu").device == "cpu"
    repainter = load_diffusion_repainter("org/tiny-sdxl-inpaint", GenerateConfig(device="cpu"))
    assert type(repainter).__name__ == "DiffusionRepainter"
    with pytest.raises(CurateError, match="generate.refiner = 'org/broken-refiner' is not on this machine"):
        load_diffusion_repainter("org/tiny-sdxl-inpaint", config.generate)
    with pytest.raises(CurateError, match="generate.recaption = 'org/tiny-llava' is not on this machine"):
        load_captioner("org/tiny-llava", config.generate)

    root = tmp_path / "ws"
    Workspace.create(root, config)
    listed = subprocess.run([CURATE, "models", "list", "-w", str(root)], check=False, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert f"presence: index.detector = 'org/tiny-owlvit' (hub) on cpu: here, {_size(detector) / 1e6:,.1f} MB" in listed.stdout
    assert any(line.startswith("repaint: generate.refiner = 'org/broken-refiner' (hub, pipeline) on cpu: NOT HERE "
                               "(unet/: no weights)") for line in lines), lines
    assert lines[-1] == (
        "4 not here (segment.backend, generate.refiner, generate.recaption, index.subject_segmenter): "
        f"`curate models fetch -w {root}` fetches them"
    )
    fetched = subprocess.run([CURATE, "models", "fetch", "-w", str(root)], check=False, capture_output=True, text=True, timeout=300)
    assert fetched.returncode == 1 and fetched.stderr.count("\n") == 1, fetched.stderr
    assert fetched.stderr.startswith(
        "error: HF_HUB_OFFLINE is set, so nothing can be fetched; not on this machine: segment.backend "
        "(org/tiny-sam), generate.refiner (org/broken-refiner), generate.recaption (org/tiny-llava): run "
        "`curate models fetch` on a machine with internet"
    )


@pytest.mark.parametrize(
    "setting",
    ["segment.backend", "segment.detector", "generate.repaint", "generate.recaption", "index.judge",
     "index.detector", "generate.msp.model", "generate.msp.controlnet"],
)
def test_a_stage_loading_a_missing_model_offline_names_the_setting_and_the_fetch(
    setting: str, hub_cache: Path, tiny_repos: dict[str, Path]
) -> None:
    """Before, each stage relayed its library's message about connections and cached files."""
    from curation.scores.judge import TransformersJudge
    from curation.scores.presence import load_detector
    from generators.msp.pipeline import MSPGenerator
    from generators.recaption import load_captioner
    from generators.repaint import load_diffusion_repainter
    from generators.segment import load_segmenter

    put_in_hub_cache(tiny_repos["detector"], "org/tiny-owlvit", hub_cache)
    put_in_hub_cache(tiny_repos["inpaint"], "org/tiny-sdxl", hub_cache)
    missing = "org/not-fetched"
    loads = {
        "segment.backend": lambda: load_segmenter(f"semantic:{missing}"),
        "segment.detector": lambda: load_segmenter(
            "sam:org/tiny-owlvit", SegmentConfig(backend="sam:org/tiny-owlvit", detector=missing)),
        "generate.repaint": lambda: load_diffusion_repainter(missing, GenerateConfig()),
        "generate.recaption": lambda: load_captioner(missing, GenerateConfig()),
        "index.judge": lambda: TransformersJudge(missing),
        "index.detector": lambda: load_detector(missing),
        "generate.msp.model": lambda: MSPGenerator.from_settings(MSPSettings(model=missing)),
        "generate.msp.controlnet": lambda: MSPGenerator.from_settings(
            MSPSettings(model="org/tiny-sdxl", controlnet=missing)),
    }
    with pytest.raises(CurateError) as raised:
        loads[setting]()
    assert str(raised.value).startswith(
        f"{setting} = '{missing}' is not on this machine and HF_HUB_OFFLINE is set: run `curate models fetch`"
    )

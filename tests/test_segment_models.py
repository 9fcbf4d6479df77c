"""IS-Net through onnxruntime (`generators/segment_models.py`, `curation/models/rembg.py`): rembg's folder
and names, what `auto` does with and without the file, the device it runs on, and the real weights.

The tiny ONNX model (foreground = redder than blue) runs the same loading and pre/post-processing a
real IS-Net does in milliseconds; the real published IS-Net (../shared/models, ~10 s to load and ~6 s a
photo on 2 cores) is loaded once for the module and run on four photos only.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from curation.core.config import SegmentConfig
from curation.core.errors import CurateError
from curation.models import rembg
from generators import segment
from generators.segment import ClassicalSegmenter, load_segmenter, mask_flags
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.tiny_pipelines import export_tiny_isnet

REAL_ISNET = Path(__file__).resolve().parents[2] / "shared" / "models" / "isnet-general-use-fp16.onnx"
CURATE = str(Path(sys.executable).with_name("curate"))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_isnet(tmp_path_factory.mktemp("isnet") / "tiny-isnet.onnx")


@pytest.fixture
def rembg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """rembg's folder rule starts from scratch: no U2NET_HOME, no XDG_DATA_HOME, HOME in tmp_path."""
    monkeypatch.delenv("U2NET_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    segment._fall_back.cache_clear()
    return tmp_path


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a machine with internet sees (the suite runs with HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A URL whose server accepts connections and never answers: an unreachable endpoint that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}/{{name}}.onnx"
    server.close()


def _disc(h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((h, w, 3), (40, 90, 220), np.uint8)
    cv2.circle(image, (w // 2, h // 2), h // 3, (230, 60, 30), -1)
    truth = np.zeros((h, w), np.uint8)
    cv2.circle(truth, (w // 2, h // 2), h // 3, 1, -1)
    return image, truth.astype(bool)


def _iou(alpha: np.ndarray, truth: np.ndarray) -> float:
    hard = alpha >= 128
    return float((hard & truth).sum() / max(1, (hard | truth).sum()))


# -- rembg's folder and names ------------------------------------------------------------------


def test_rembgs_folder_rule_and_auto_taking_isnet_from_it(
    rembg_home: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$U2NET_HOME, else $XDG_DATA_HOME/.u2net, else ~/.u2net, as rembg reads it. Before, a file in
    $XDG_DATA_HOME/.u2net was not seen and `auto` fell back to classical without a word."""
    assert rembg.cache_dir() == rembg_home / "home" / ".u2net"
    xdg = rembg_home / "xdg" / ".u2net"
    xdg.mkdir(parents=True)
    (xdg / "isnet-general-use.onnx").write_bytes(tiny_onnx.read_bytes())
    monkeypatch.setenv("XDG_DATA_HOME", str(rembg_home / "xdg"))
    chosen = load_segmenter("auto")
    assert chosen.name == "isnet:isnet-general-use"
    image, truth = _disc()
    assert _iou(chosen(image), truth) > 0.9
    monkeypatch.setenv("U2NET_HOME", str(rembg_home / "u2net"))
    assert rembg.cache_dir() == rembg_home / "u2net"
    assert isinstance(load_segmenter("auto", SegmentConfig(fetch=False)), ClassicalSegmenter)


def test_a_bare_file_name_is_looked_up_in_rembgs_folder_and_other_models_are_refused(
    rembg_home: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`isnet:isnet-general-use.onnx` was read as a path in the current folder and failed; `isnet:u2net`
    ran rembg's U^2-Net with IS-Net's pre-processing without a word."""
    folder = rembg_home / "home" / ".u2net"
    folder.mkdir(parents=True)
    (folder / "isnet-general-use.onnx").write_bytes(tiny_onnx.read_bytes())
    monkeypatch.chdir(rembg_home)
    assert load_segmenter("isnet:isnet-general-use.onnx").name == "isnet:isnet-general-use.onnx"
    for name in ("u2net", "silueta", "u2net_human_seg.onnx", "birefnet-general"):
        (folder / f"{name.removesuffix('.onnx')}.onnx").write_bytes(tiny_onnx.read_bytes())
        with pytest.raises(CurateError, match="is not an IS-Net model"):
            load_segmenter(f"isnet:{name}")
    assert load_segmenter(f"isnet:{tiny_onnx}").name == f"isnet:{tiny_onnx}"  # any file by its path


def test_fetch_checks_rembgs_md5_and_auto_fetches_isnet_when_it_can(
    rembg_home: Path, tiny_onnx: Path, online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that are not rembg's file are never kept; a matching file lands under rembg's name, and
    `auto` with internet and no file fetches IS-Net and runs it (before, it never fetched)."""
    data = tiny_onnx.read_bytes()
    with FakeHub() as hub:
        hub.files["/releases/isnet-general-use.onnx"] = data
        monkeypatch.setenv(rembg.URL_ENV, f"{hub.url}/releases/{{name}}.onnx")
        folder = rembg.cache_dir()
        with pytest.raises(CurateError, match="is not rembg's isnet-general-use .*nothing was kept"):
            rembg.fetch("isnet-general-use")
        assert not folder.exists() or not list(folder.iterdir())
        monkeypatch.setitem(rembg.PUBLISHED_MD5, "isnet-general-use", hashlib.md5(data).hexdigest())
        chosen = load_segmenter("auto")
        assert chosen.name == "isnet:isnet-general-use"
        assert [p.name for p in folder.iterdir()] == ["isnet-general-use.onnx"]
        assert hub.requests == ["GET /releases/isnet-general-use.onnx"] * 2


def test_auto_without_isnet_falls_back_in_seconds_and_says_why_once(
    rembg_home: Path, black_hole: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing here and an endpoint that would hang. Offline (HF_HUB_OFFLINE, as this suite runs) or with
    the demo's settings (segment.fetch = false) nothing is asked of the network; online, the fetch gives
    up after rembg.TIMEOUT_S. One warning (not one per load) says classical runs and why."""
    from huggingface_hub import constants

    from curation.core.devices import torch_device
    from curation.demo import demo_config

    torch_device("auto")  # torch's import (10-20 s on a busy 2-core machine) is not what is timed here
    monkeypatch.setenv(rembg.URL_ENV, black_hole)
    monkeypatch.setattr(rembg, "TIMEOUT_S", 1.0)
    cases = [("HF_HUB_OFFLINE is set", True, SegmentConfig()), ("segment.fetch = false", False, demo_config().segment),
             ("isnet did not load (could not fetch", False, SegmentConfig())]
    for why, offline, settings in cases:
        fetch_tried = not offline and settings.fetch
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
        caplog.clear()
        start = time.monotonic()
        for _ in range(2):
            assert isinstance(load_segmenter("auto", settings), ClassicalSegmenter)
        assert time.monotonic() - start < 8, why
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        fell_back = [message for message in said if "falls back to the classical backend" in message]
        assert len(fell_back) == 1 and why in fell_back[0], said
        assert len(said) == (3 if fetch_tried else 1), said  # each load that fetches says so first
    assert not rembg.cache_dir().exists() or not list(rembg.cache_dir().iterdir())  # no partial file left


# -- the device --------------------------------------------------------------------------------


def _has_cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(_has_cuda_provider(), reason="this onnxruntime has a CUDA provider")
def test_cuda_without_a_cuda_provider_is_one_error_line(
    tmp_path: Path, tiny_onnx: Path, concept_photos: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU onnxruntime wheel has no CUDA provider: `device = "cuda"` ran IS-Net on the CPU without a
    word. Now it is an error, from the loader, from `auto` (not a fall back) and from the CLI."""
    for backend in (f"isnet:{tiny_onnx}", "auto"):
        monkeypatch.setenv("U2NET_HOME", str(tiny_onnx.parent))
        (tiny_onnx.parent / "isnet-general-use.onnx").write_bytes(tiny_onnx.read_bytes())
        with pytest.raises(CurateError, match="segment.device = 'cuda', but this onnxruntime has no CUDA provider"):
            load_segmenter(backend, SegmentConfig(backend=backend, device="cuda"))
    root = tmp_path / "ws"
    subprocess.run([CURATE, "init", str(root)], check=True, capture_output=True, timeout=300)
    config = root / "curate.toml"
    config.write_text(config.read_text().replace('device = "auto"', 'device = "cuda"', 1))
    assert 'device = "cuda"' in config.read_text().split("[layout]")[0]
    result = subprocess.run(
        [CURATE, "concepts", "add", "cat", str(concept_photos["cat"][0]), "--class", "cat", "-w", str(root)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: segment.device = 'cuda', but this onnxruntime has no CUDA provider")
    assert "pip install 'curate[gpu]'" in result.stderr


def test_bench_segment_runs_isnet_beside_classical(
    rembg_home: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """By default the benchmark prints IS-Net's row under classical's; one that cannot load says why."""
    from benchmarks.bench_segment import CASE_TYPES, main

    main(["--per-type", "1"])  # no IS-Net here, offline
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and not line.startswith("| backend |")]
    assert rows[0].startswith("| classical | ") and rows[1].startswith("| isnet | n/a: segment.backend 'isnet:")
    assert "run `curate models fetch`" in rows[1]
    folder = rembg.cache_dir()
    folder.mkdir(parents=True)
    (folder / "isnet-general-use.onnx").write_bytes(tiny_onnx.read_bytes())
    main(["--per-type", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and not line.startswith("| backend |")]
    assert [row.split(" | ")[0] for row in rows] == ["| classical", "| isnet:isnet-general-use"]
    assert all(len(row.split(" | ")) == len(CASE_TYPES) + 3 for row in rows)  # name, types, all, s/photo


# -- the real IS-Net -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_isnet():
    if not REAL_ISNET.is_file():
        pytest.skip(f"{REAL_ISNET} is not here (see ../shared/models/README.md)")
    return load_segmenter(f"isnet:{REAL_ISNET}", SegmentConfig(device="cpu"))


def test_real_isnet_cuts_out_constructed_photos(real_isnet) -> None:
    """bench_segment.py's photos with known alpha, one per case type IS-Net is meant for."""
    from benchmarks.bench_segment import make_case, scores

    for kind in ("plain", "busy", "low_contrast"):
        case = make_case(kind, 0)
        iou, _ = scores(real_isnet(case.rgb, "object"), case.alpha)
        assert iou >= 0.95, (kind, iou)


def test_real_isnet_cuts_the_whole_cat_out_of_chelsea(real_isnet) -> None:
    """A cat's face filling the frame: the classical backend keeps a part; IS-Net the cat, in one piece."""
    from skimage import data

    rgb = data.chelsea()
    hard = real_isnet(rgb, "cat") >= 128
    classical = ClassicalSegmenter()(rgb) >= 128
    _, _, stats, _ = cv2.connectedComponentsWithStats(hard.astype(np.uint8), connectivity=8)
    areas = np.sort(stats[1:, cv2.CC_STAT_AREA])[::-1]
    assert areas[0] >= 0.98 * hard.sum(), areas[:5]  # one piece (a few stray pixels aside)
    assert "touches_frame" in mask_flags(hard.astype(np.uint8) * 255)
    assert hard.sum() >= 1.8 * classical.sum(), (hard.mean(), classical.mean())

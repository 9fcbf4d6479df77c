"""Every model a workspace's settings name, resolved in one place: what loads, from where, on which
device, and whether it is on this machine.

The stages load models by the strings their settings hold (a hub id, a folder, a file, rembg's model
name, an open_clip tag). This module reads those strings the way the loaders do and looks where the
loaders' libraries look (huggingface_hub's cache, open_clip's, rembg's folder), without loading
anything, so `curate models list` tells the truth before a GPU job starts, `curate models fetch`
fills exactly those caches on a machine with internet, and a stage that runs offline can name the
setting whose model is missing instead of a library's retry message. `segment.backend = "auto"`
decides here which backend it takes (`auto_choice`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from curation.core.config import CurateConfig, IndexConfig, SegmentConfig
from curation.core.errors import CurateError
from curation.models import rembg

HUB, FOLDER, FILE, REMBG, OPEN_CLIP, ENDPOINT, NONE = "hub", "folder", "file", "rembg", "open_clip", "endpoint", ""
FETCHED = (HUB, REMBG, OPEN_CLIP)
"""Sources `curate models fetch` can fill; folders, files and endpoints are the user's."""
FETCH_COMMAND = "curate models fetch"
DEFAULT_SEGMENT_MODELS = {
    "isnet": rembg.DEFAULT_ISNET,
    "birefnet": "ZhengPeng7/BiRefNet",
    "rmbg": "briaai/RMBG-2.0",
    "sam": "facebook/sam-vit-base",
}
"""What `segment.backend = KIND` loads when it names no model."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
FLUX_FILL = "flux-fill"
DEFAULT_FLUX_FILL = "black-forest-labs/FLUX.1-Fill-dev"
"""What `generate.repaint = "flux-fill"` loads when it names no model (gated: licence acceptance on the hub)."""
LOGIN_HINT = "log in here with `hf auth login` (or set HF_TOKEN to a token of that account)"


@dataclass(frozen=True)
class Model:
    """One model a setting names, as found on this machine.

    `name` is what loads (hub id, path, rembg name, 'ARCH / tag'); `location` is where it is, or
    where a fetch puts it; `revision` is the hub commit the cache holds; `checksum` the published one
    and whether the file matches it; `note` what happens when it is missing.
    """

    stage: str
    setting: str
    name: str
    source: str
    pipeline: bool = False
    device: str = ""
    location: str = ""
    present: bool = True
    size: int | None = None
    revision: str = ""
    checksum: str = ""
    note: str = ""

    def describe(self) -> str:
        """One line for `curate models list`: what loads, from where, on what, whether it is here."""
        if self.source in (NONE, ENDPOINT):
            where = f" at {self.location}" if self.location else ""
            return f"{self.stage}: {self.setting} = {self.name!r}: {self.note}{where}"
        kind = f"{self.source}{', pipeline' if self.pipeline else ''}"
        if self.present:
            size = f"{self.size / 1e6:,.1f} MB" if self.size is not None else "size unknown"
            state = f"here, {size}" + (f", revision {self.revision}" if self.revision else "")
        else:
            state = f"NOT HERE ({self.note or 'missing'})"
        extra = "; ".join(filter(None, (self.checksum, self.note if self.present else "")))
        return (
            f"{self.stage}: {self.setting} = {self.name!r} ({kind}) on {self.device or 'cpu'}: {state}; "
            f"{self.location}" + (f"; {extra}" if extra else "")
        )


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE): curate fetches nothing, from the hub or rembg's release."""
    from huggingface_hub import constants

    # huggingface_hub reads the variable once, at import; a later change (a test, a notebook) counts too
    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def is_local(value: str) -> bool:
    """A folder or file rather than a hub id: it exists, or reads as a path (hub ids never start so)."""
    return value.startswith((".", "/", "~")) or Path(value).expanduser().exists()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _missing_parts(folder: Path, pipeline: bool) -> str:
    """What a saved model folder lacks for `from_pretrained` ('' when nothing): its config, a
    component, weights, or a shard its index lists."""
    if pipeline:
        index = folder / "model_index.json"
        if not index.is_file():
            return "no model_index.json"
        components = [k for k, v in json.loads(index.read_text()).items() if isinstance(v, list) and v[0]]
        for component in components:
            sub = folder / component
            if not sub.is_dir():
                return f"no {component}/"
            if (sub / "config.json").is_file() and (missing := _missing_weights(sub)):
                return f"{component}/: {missing}"
        return ""
    if not (folder / "config.json").is_file():
        return "no config.json"
    return _missing_weights(folder)


def _missing_weights(folder: Path) -> str:
    for index in folder.glob("*.index.json"):
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        absent = sorted(s for s in shards if not (folder / s).is_file())
        if absent:
            return f"shard {absent[0]} missing"
    if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file()):
        return "no weights"
    return ""


def hub_snapshot(repo_id: str, pipeline: bool = False) -> Path | None:
    """The cached snapshot of a hub id's main revision, when its config file is there."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "model_index.json" if pipeline else "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def hub_complete(repo_id: str, pipeline: bool = False) -> bool:
    snapshot = hub_snapshot(repo_id, pipeline)
    return snapshot is not None and not _missing_parts(snapshot, pipeline)


def _pretrained(stage: str, setting: str, value: str, device: str, pipeline: bool = False, root: Path | None = None) -> Model:
    """A `from_pretrained` argument: a local folder (as the loaders read it: from the current folder)
    or a hub id, looked up in huggingface_hub's cache."""
    path = Path(value).expanduser()
    if root is not None and not path.is_absolute():
        path = root / path
    if path.exists() or is_local(value):
        missing = _missing_parts(path, pipeline) if path.is_dir() else "not found"
        return Model(stage, setting, value, FOLDER, pipeline, device, str(path), not missing,
                     _size(path) if path.exists() else None, note=missing)
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshot = hub_snapshot(value, pipeline)
    missing = _missing_parts(snapshot, pipeline) if snapshot else "not in the hub cache"
    where = snapshot or Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=value, repo_type="model")
    return Model(stage, setting, value, HUB, pipeline, device, str(where), not missing,
                 _size(snapshot) if snapshot else None, snapshot.name if snapshot else "main", note=missing)


def flux_fill_model(repaint: str) -> str | None:
    """The FLUX.1 Fill pipeline `generate.repaint = "flux-fill[:ID]"` loads; None for any other backend."""
    kind, colon, model = repaint.partition(":")
    if kind != FLUX_FILL:
        return None
    return model if colon and model else DEFAULT_FLUX_FILL


def gated_error(exc: BaseException, setting: str, model_id: str) -> CurateError | None:
    """The one-line error for a hub repo this account may not read yet (a gated licence, as the
    FLUX.1 [dev] family's, or no login), found anywhere in the exception's chain; None for others.

    huggingface_hub raises `GatedRepoError` (401/403 with the hub's GatedRepo code); the libraries
    that call it (diffusers, transformers) re-raise it as an OSError of their own, so the chain is
    walked rather than the outer type trusted.
    """
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(seen, GatedRepoError) or (isinstance(seen, HfHubHTTPError) and status in (401, 403)):
            return CurateError(
                f"{setting} = {model_id!r} is gated on the Hugging Face Hub: accept its licence at "
                f"https://huggingface.co/{model_id} with your account, then {LOGIN_HINT}, and run this again"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _subject_segmenter(stage: str, setting: str, value: str, device: str, root: Path | None) -> Model:
    from curation.models.subject_segmenter import CONFIG_FILE, WEIGHTS_FILE

    path = Path(value).expanduser()
    path = root / path if root is not None and not path.is_absolute() else path
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
    note = f"no {' or '.join(missing)} (make it with `curate train-segmenter`)" if missing else ""
    return Model(stage, setting, value, FOLDER, False, device, str(path), not missing,
                 _size(path) if path.is_dir() else None, note=note)


# -- segmentation ------------------------------------------------------------------------------


def auto_choice(settings: SegmentConfig) -> tuple[str, str]:
    """The backend `segment.backend = "auto"` runs, and why: the first of BiRefNet (only when trusted),
    IS-Net general-use, SAM whose weights are here; else IS-Net fetched into rembg's folder, unless
    `segment.fetch` is off or HF_HUB_OFFLINE is set; else classical."""
    here = rembg.cached_file(rembg.DEFAULT_ISNET)
    if settings.trust_remote_code and hub_complete(DEFAULT_SEGMENT_MODELS["birefnet"]):
        return "birefnet", "BiRefNet is on this machine"
    if here:
        return "isnet", f"IS-Net general-use is on this machine ({here})"
    if hub_complete(DEFAULT_SEGMENT_MODELS["sam"]) and hub_complete(settings.detector):
        return "sam", "SAM and its detector are on this machine"
    absent = f"IS-Net general-use is not in {rembg.cache_dir()}"
    if not settings.fetch:
        return "classical", f"{absent} and segment.fetch = false"
    if offline():
        return "classical", f"{absent} and HF_HUB_OFFLINE is set"
    return "isnet", f"{absent}: fetched from {rembg.url_for(rembg.DEFAULT_ISNET)} on first use"


def _onnx_device(settings: SegmentConfig) -> str:
    from curation.core.devices import onnx_providers

    try:
        providers = onnx_providers(settings.device, "segment.device")
    except CurateError as exc:
        return f"error: {exc}"
    first = providers[0]
    name, options = (first, {}) if isinstance(first, str) else first
    return f"cuda:{options['device_id']} ({name})" if options else f"cpu ({name})"


def _isnet(setting: str, model: str, settings: SegmentConfig, note: str = "") -> Model:
    device = _onnx_device(settings)
    if rembg.is_path(model):
        path = Path(model).expanduser()
        return Model("segmentation", setting, model, FILE, False, device, str(path), path.is_file(),
                     _size(path) if path.is_file() else None, note=note or ("" if path.is_file() else "not found"))
    name = rembg.isnet_name(model)
    path = rembg.cached_file(name)
    published = rembg.PUBLISHED_MD5.get(name, "")
    checksum = f"md5 {published}" if published else ""
    if path and published:
        checksum += " ok" if rembg.md5_of(path) == published else " differs (curate models fetch replaces it)"
    where = path or rembg.cache_dir() / f"{name}.onnx"
    return Model("segmentation", setting, name, REMBG, False, device, str(where), path is not None,
                 _size(path) if path else None, "rembg v0.0.0" if published else "", checksum,
                 note or ("" if path else f"fetched from {rembg.url_for(name)}" if published else "not found"))


def _noted(model: Model, note: str) -> Model:
    return replace(model, note="; ".join(filter(None, (model.note, note))))


def segment_models(settings: SegmentConfig, for_fetch: bool = False) -> list[Model]:
    """The models `segment.backend` loads (none for classical; SAM brings its detector). `for_fetch`:
    `auto` with no model here wants IS-Net general-use, whatever keeps it from fetching on its own."""
    from curation.core.devices import torch_device

    setting, backend, note = "segment.backend", settings.backend, ""
    if backend == "auto":
        backend, why = auto_choice(settings)
        if for_fetch and backend == "classical":
            backend, why = "isnet", f"no model here ({why})"
        note = f"auto: {why}"
    kind, _, model = backend.partition(":")
    model = model or DEFAULT_SEGMENT_MODELS.get(kind, "")
    if kind == "classical":
        return [Model("segmentation", setting, "classical", NONE, note=note or "no weights")]
    if kind == "isnet":
        return [_isnet(setting, model, settings, note)]
    device = torch_device(settings.device)
    if kind == "sam":
        return [
            _noted(_pretrained("segmentation", setting, model, device), note),
            _pretrained("segmentation", "segment.detector", settings.detector, device),
        ]
    if kind in ("semantic", "birefnet", "rmbg") and model:
        return [_noted(_pretrained("segmentation", setting, model, device), note)]
    raise CurateError(
        f"unknown segment.backend {settings.backend!r}: use classical, auto, isnet[:FILE.onnx|NAME], "
        "sam[:ID], semantic:ID, birefnet[:ID] or rmbg[:ID] (ID: a hub id or a local folder)"
    )


# -- the other stages --------------------------------------------------------------------------


def _clip(index: IndexConfig, device: str) -> Model:
    """open_clip: a checkpoint file, or a tag whose weights open_clip fetches from the hub or a URL."""
    import open_clip
    from open_clip import pretrained as registry

    setting, tag = "index.clip_pretrained", index.clip_pretrained
    name = f"{index.clip_model} / {tag or 'random weights'}"
    if not tag:
        return Model("CLIP", setting, name, NONE, note="random weights: scores mean nothing")
    if Path(tag).expanduser().is_file():
        path = Path(tag).expanduser()
        return Model("CLIP", setting, name, FILE, False, device, str(path), True, _size(path))
    cfg = registry.get_pretrained_cfg(index.clip_model, tag) if index.clip_model in open_clip.list_models() else {}
    if not cfg:
        return Model("CLIP", setting, name, FILE, False, device, tag, False, note="unknown tag or missing file")
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])  # as open_clip splits it: 'org/name/' -> its default file
        filename = filename or registry.HF_WEIGHTS_NAME
        found = [try_to_load_from_cache(repo, f) for f in (*registry._get_safe_alternatives(filename), filename)]
        path = next((Path(f) for f in found if isinstance(f, str)), None)
        where, revision = (path, path.parent.name) if path else (f"hub {repo}", "main")
    else:
        path = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        where, revision = path, ""
        path = path if path.is_file() else None
    return Model("CLIP", setting, name, OPEN_CLIP, False, device, str(where), path is not None,
                 _size(path) if path else None, revision, note="" if path else "random weights until fetched")


def _optional(
    stage: str, setting: str, value: str, device: str, default: str, without: str, pipeline: bool = False
) -> Model:
    """A setting whose offline default (`default`, or empty) loads no weights, an endpoint, or a model."""
    if value in ("", default):
        return Model(stage, setting, value or default or "off", NONE, note=without)
    if value.startswith("openai:"):
        url = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
        return Model(stage, setting, value, ENDPOINT, location=url, note="an endpoint: nothing to fetch")
    return _pretrained(stage, setting, value, device, pipeline)


def resolve(config: CurateConfig, root: Path | None = None, for_fetch: bool = False) -> list[Model]:
    """Every model the settings make the chain load, stage by stage in the order the chain runs them.

    Args:
        config: the workspace's settings.
        root: the workspace folder, which relative `index.subject_segmenter` paths are read against.
        for_fetch: what `curate models fetch` brings (see `segment_models`).
    """
    from curation.core.devices import torch_device

    models = segment_models(config.segment, for_fetch)
    generate, index = config.generate, config.index
    gen_device, index_device = torch_device(generate.device), torch_device("auto")
    if generate.generator == "msp":
        msp = generate.msp
        models.append(_pretrained("MSP", "generate.msp.model", msp.model, gen_device, pipeline=True))
        if msp.controlnet:
            models.append(_pretrained("MSP", "generate.msp.controlnet", msp.controlnet, gen_device))
        if msp.sal_model:
            models.append(_subject_segmenter("MSP", "generate.msp.sal_model", msp.sal_model, gen_device, None))
    elif flux := flux_fill_model(generate.repaint):
        models.append(_pretrained("repaint", "generate.repaint", flux, gen_device, pipeline=True))
    else:
        models.append(
            _optional("repaint", "generate.repaint", generate.repaint, gen_device, "classical", "no weights", True)
        )
        if generate.refiner and generate.repaint != "classical":
            models.append(_pretrained("repaint", "generate.refiner", generate.refiner, gen_device, pipeline=True))
    models.append(_optional("caption", "generate.recaption", generate.recaption, gen_device, "template", "no weights"))
    models.append(_clip(index, index_device))
    models.append(_optional("presence", "index.detector", index.detector, index_device, "", "the planned boxes"))
    models.append(_optional("judge", "index.judge", index.judge, index_device, "", "off"))
    if index.subject_segmenter:
        models.append(
            _subject_segmenter("subject segmenter", "index.subject_segmenter", index.subject_segmenter, index_device, root)
        )
    return models


def require_local(setting: str, model_id: str, pipeline: bool = False) -> None:
    """Before a stage loads a hub id offline: one error naming the setting and the fetch command,
    instead of the library's retries and its message about connections."""
    if not offline() or is_local(model_id) or hub_complete(model_id, pipeline):
        return
    raise CurateError(
        f"{setting} = {model_id!r} is not on this machine and HF_HUB_OFFLINE is set: run `{FETCH_COMMAND}` "
        "for this workspace on a machine with internet and the same HF_HOME, then run this again"
    )

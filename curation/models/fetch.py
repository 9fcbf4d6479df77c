"""`curate models fetch`: every model the settings name, downloaded ahead of time into the caches the
loaders read (huggingface_hub's, open_clip's, rembg's folder), so a login node with internet can fill
them for a GPU node that has none (run there with HF_HUB_OFFLINE=1 and the same HF_HOME / U2NET_HOME).

Each download goes through the library that owns the cache: `snapshot_download` for hub ids (the
repo's files `from_pretrained` reads, not every format a repo carries), open_clip's own
`download_pretrained` for CLIP tags, `rembg.fetch` (md5 checked) for IS-Net.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from curation.core.config import CurateConfig
from curation.core.errors import CurateError
from curation.models import rembg
from curation.models.registry import (
    FETCH_COMMAND,
    FETCHED,
    OPEN_CLIP,
    REMBG,
    WEIGHT_SUFFIXES,
    Model,
    gated_error,
    offline,
    resolve,
)

OTHER_FORMATS = (
    "*.msgpack", "*.h5", "*.ot", "*.onnx", "*.onnx_data", "*.gguf", "*.tflite", "*.mlmodel",
    "onnx/*", "openvino/*", "coreml/*", "*.mlpackage/*", "flax_model*", "tf_model*", "rust_model*",
)
"""Files of other frameworks that hub repos often carry beside the torch weights: never read here."""


def hub_files(files: list[str], pipeline: bool) -> list[str]:
    """The files of a hub repo that `from_pretrained` reads.

    Other frameworks' weights are left out; in each folder safetensors win over pickled weights and
    plain weights over variants (`*.fp16.safetensors`), as diffusers and transformers choose without a
    `variant`; a pipeline's root weights (single-file checkpoints beside the diffusers folders, 7 GB for
    SDXL) are left out too.
    """
    kept = [f for f in files if not any(fnmatch(f, pattern) for pattern in OTHER_FORMATS)]
    weights = [PurePosixPath(f) for f in kept if f.endswith(WEIGHT_SUFFIXES)]

    def stem(path: PurePosixPath) -> str:  # 'model' of model.safetensors, model-00001-of-00002..., model.fp16...
        return path.name.split(".")[0].split("-")[0]

    dropped = set()
    for path in weights:
        siblings = [w for w in weights if w.parent == path.parent and w != path]
        plain = [w for w in siblings if stem(w) == stem(path) and len(w.name.split(".")) == 2]
        if path.suffix != ".safetensors" and any(w.suffix == ".safetensors" for w in siblings):
            dropped.add(str(path))
        elif len(path.name.split(".")) > 2 and plain:
            dropped.add(str(path))  # a variant (model.fp16.safetensors) beside the plain weights
        elif pipeline and str(path.parent) == ".":
            dropped.add(str(path))
    return [f for f in kept if f not in dropped]


def _fetch(model: Model) -> str:
    """Download one model; returns where it now is."""
    if model.source == REMBG:
        return str(rembg.fetch(model.name))
    if model.source == OPEN_CLIP:
        from open_clip import pretrained

        arch, tag = model.name.split(" / ")
        try:
            return pretrained.download_pretrained(pretrained.get_pretrained_cfg(arch, tag))
        except Exception as exc:  # open_clip wraps hub and URL errors alike
            raise CurateError(f"could not fetch CLIP {model.name}: {str(exc).splitlines()[0]}") from exc
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        files = hub_files(HfApi().list_repo_files(model.name), model.pipeline)
        return snapshot_download(model.name, allow_patterns=files)
    except (HfHubHTTPError, OSError) as exc:
        if gated := gated_error(exc, model.setting, model.name):
            raise gated from exc
        raise CurateError(f"could not fetch {model.setting} = {model.name!r}: {str(exc).splitlines()[0]}") from exc


def fetch_models(config: CurateConfig, echo: Callable[[str], None], root: Path | None = None) -> list[Model]:
    """Fetch what the settings need and is not here (or differs from its published checksum).

    Returns:
        The models after fetching, as `resolve` sees them.

    Raises:
        CurateError: HF_HUB_OFFLINE is set and something is missing (naming each setting); or, after
            every other model was fetched, a download that failed or a model no fetch can bring (a
            folder or file of the user's) is missing, each named.
    """
    models = resolve(config, root, for_fetch=True)
    todo = [m for m in models if m.source in FETCHED and (not m.present or " differs" in m.checksum)]
    if todo and offline():
        missing = ", ".join(f"{m.setting} ({m.name})" for m in todo)
        raise CurateError(
            f"HF_HUB_OFFLINE is set, so nothing can be fetched; not on this machine: {missing}: run "
            f"`{FETCH_COMMAND}` on a machine with internet and the same HF_HOME and U2NET_HOME"
        )
    for model in models:
        if model.source in FETCHED and model not in todo:
            echo(f"{model.setting}: {model.name} is here ({model.location})")
    failed = []
    for model in todo:
        echo(f"{model.setting}: fetching {model.name} ...")
        try:
            echo(f"{model.setting}: {model.name} fetched into {_fetch(model)}")
        except CurateError as exc:  # one model's failure does not keep the others from this machine
            failed.append(str(exc))
    after = resolve(config, root, for_fetch=True)
    failed += [f"{m.setting} = {m.name!r} is not here ({m.note or 'missing'})" for m in after
               if not m.present and m.source not in FETCHED]
    if failed:
        raise CurateError("; ".join(failed))
    return after

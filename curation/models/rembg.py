"""rembg's ONNX segmentation files on this machine: where rembg keeps them, which are IS-Net, fetching one.

curate reads and writes the very files rembg does (same folder, same names, same published md5), so
a model fetched by either serves both and a user who ran rembg once already has IS-Net. rembg keeps
them in one folder: `$U2NET_HOME`, else `$XDG_DATA_HOME/.u2net`, else `~/.u2net`.

Only IS-Net files are ours to run: `generators/segment_models.py` feeds them IS-Net's pre- and
post-processing, which would quietly give a wrong mask from rembg's U^2-Net or SAM files.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import urllib.request
from pathlib import Path

from curation.core.errors import CurateError

URL_ENV = "CURATE_REMBG_URL"
"""Where rembg's files are fetched from, `{name}` standing for the model name: a mirror, or a test's server."""
DEFAULT_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/{name}.onnx"
"""rembg's own release (what rembg downloads from)."""
PUBLISHED_MD5 = {
    "isnet-general-use": "fc16ebd8b0c10d971d3513d564d01e29",
    "isnet-anime": "6f184e756bb3bd901c8849220a83e38e",
}
"""The IS-Net files rembg publishes, with the md5 rembg pins for each (rembg/sessions/dis_*.py)."""
DEFAULT_ISNET = "isnet-general-use"
"""IS-Net general-use: the model Gen4Gen segmented its concepts with."""
TIMEOUT_S = 10.0
"""Seconds to wait to connect or for the next bytes: an unreachable release fails in seconds, not minutes."""


def cache_dir() -> Path:
    """rembg's model folder, by rembg's own rule (read from the environment on every call)."""
    folder = os.environ.get("U2NET_HOME") or str(Path(os.environ.get("XDG_DATA_HOME") or "~") / ".u2net")
    return Path(folder).expanduser()


def url_for(name: str) -> str:
    return (os.environ.get(URL_ENV) or DEFAULT_URL).format(name=name)


def is_path(model: str) -> bool:
    """`isnet:` takes a path when the text has a folder in it; a bare name or file name means rembg's cache."""
    return os.sep in model or "/" in model or model.startswith("~")


def isnet_name(model: str) -> str:
    """The rembg model name a bare `isnet:` value means ('isnet-general-use.onnx' -> 'isnet-general-use').

    Raises:
        CurateError: the name is not an IS-Net model (rembg's u2net, silueta, sam, birefnet files take
            other pre-processing, and would give a wrong mask without a word).
    """
    name = model.removesuffix(".onnx") or DEFAULT_ISNET
    if not name.startswith("isnet"):
        raise CurateError(
            f"segment.backend 'isnet:{model}': {name!r} is not an IS-Net model (rembg's IS-Net files: "
            f"{', '.join(PUBLISHED_MD5)}); give an IS-Net .onnx file as isnet:/path/model.onnx"
        )
    return name


def cached_file(name: str) -> Path | None:
    path = cache_dir() / f"{name}.onnx"
    return path if path.is_file() else None


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str) -> Path:
    """Download rembg's `name`.onnx into rembg's folder, checked against its published md5.

    The file appears under its final name only when whole and matching, so a kill or a damaged
    download never leaves a file that a later run would trust.

    Raises:
        CurateError: no published file of that name, unreachable, or the bytes do not match the md5.
    """
    if name not in PUBLISHED_MD5:
        raise CurateError(
            f"rembg publishes no IS-Net file named {name!r} ({', '.join(PUBLISHED_MD5)} are): put your "
            f"{name}.onnx into {cache_dir()} or name its path as segment.backend = 'isnet:/path/{name}.onnx'"
        )
    folder, url = cache_dir(), url_for(name)
    partial = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    digest = hashlib.md5(usedforsecurity=False)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask's usual mode
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:  # URLError, timeouts and a read-only folder are all OSErrors
        partial.unlink(missing_ok=True)
        raise CurateError(f"could not fetch IS-Net {name!r} from {url} into {folder}: {exc}") from exc
    if digest.hexdigest() != PUBLISHED_MD5[name]:
        partial.unlink(missing_ok=True)
        raise CurateError(
            f"the file fetched from {url} is not rembg's {name} (md5 {digest.hexdigest()}, published "
            f"{PUBLISHED_MD5[name]}): nothing was kept; check {URL_ENV} or the mirror"
        )
    target = folder / f"{name}.onnx"
    os.replace(partial, target)
    return target

"""The media tree: the only files Label Studio serves, and how a workspace file gets into it.

Label Studio's local-files storage is a read door, not just an image source: any user of the
server (an invited annotator too) can create a storage on any folder under its
LOCAL_FILES_DOCUMENT_ROOT and then read every file below it, since "inside the root" is all it
checks (Label Studio 1.23.2, verified). So the document root holds nothing but what annotators
review: the pushed candidates, their previews, the concepts' cut-outs and a study's blinded images,
published there as hard links (copies across filesystems; never symlinks, which Label Studio would
follow wherever they point). Credentials, databases, study mappings, ratings and pulls stay in the
workspace, outside it.

A published file keeps its workspace-relative path below the workspace's media folder
(`candidates/s000/x.png` becomes `<media>/candidates/s000/x.png`). A server `curate review serve`
starts has `<workspace>/media` as its document root, so a task pushed when the document root was
the workspace itself names the same file again once the file is published.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from functools import lru_cache
from pathlib import Path

from curation.core.errors import CurateError

MEDIA = "media"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
_COPY_INSTEAD = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
"""Why a hard link can fail where a copy works: another filesystem, protected_hardlinks, no support."""


def own_media(ws_root: Path) -> Path:
    """The media folder of a workspace's own server: its document root, beside (not above) the secrets."""
    return ws_root / MEDIA


def shown(relative: str) -> bool:
    """Whether a workspace-relative POSIX path is something annotators may see.

    Candidates' images, the concepts' photos and cut-outs, review previews and a study's blinded
    images and references: each in its own folder and an image by its name, so no record, mapping,
    rating or credential ever qualifies, whatever a caller passes.
    """
    parts = relative.split("/")
    if os.path.splitext(parts[-1])[1].lower() not in IMAGE_SUFFIXES:
        return False
    return (
        (len(parts) == 3 and parts[0] == "candidates")
        or (len(parts) == 4 and parts[0] == "concepts" and parts[2] in ("refs", "cutouts"))
        or (len(parts) >= 3 and parts[:2] == ["review", "thumbs"])
        or (len(parts) == 4 and parts[0] == "study" and parts[2] in ("images", "refs"))
    )


@lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    """A folder with its links resolved, once: a push names 100K images in a handful of folders."""
    return os.path.realpath(folder)


def publish(ws_root: Path, media_root: Path, source: Path) -> Path:
    """Put a workspace file annotators review into the media tree; where it is there.

    The file itself is linked, never a symlink: a symlinked source (say a "candidate" pointing at
    review/server.json) is followed to its target, which must itself be something annotators may see.
    Publishing again costs a failed link and a stat (the link is there); a source replaced since (a
    new inode, or a copy whose size or time differ) is published anew. Strings, not Path objects,
    on the way: parsing paths cost more than the link itself, and a push publishes two files a task.
    """
    folder, name = os.path.split(os.path.abspath(source))
    real = os.path.join(_real_folder(folder), name)
    try:
        want = os.lstat(real)
        if stat.S_ISLNK(want.st_mode):
            real = os.path.realpath(real)
            want = os.stat(real)
    except FileNotFoundError:
        raise CurateError(f"{source} does not exist: re-run the step that makes it") from None
    root = _real_folder(os.fspath(ws_root))
    relative = real[len(root) + 1 :] if real.startswith(root + os.sep) else None
    if relative is None or not shown(relative):
        raise CurateError(
            f"{source} is not an image annotators may see (candidates, concept cut-outs, previews, study "
            f"images inside {root}): refusing to serve it through Label Studio"
        )
    target = os.path.join(media_root, relative)
    _link(real, want, target)
    return Path(target)


def _link(source: str, want: os.stat_result, target: str) -> None:
    """Make `target` the same file as `source`: a hard link, a copy where linking is impossible."""
    try:
        os.link(source, target, follow_symlinks=False)
        return
    except FileNotFoundError:  # its folder is new
        os.makedirs(os.path.dirname(target), exist_ok=True)
    except FileExistsError:
        have = os.stat(target)
        if (have.st_dev, have.st_ino) == (want.st_dev, want.st_ino):
            return
        if (have.st_size, have.st_mtime_ns) == (want.st_size, want.st_mtime_ns):
            return  # the copy made where a link was impossible
    except OSError as exc:
        if exc.errno not in _COPY_INSTEAD:
            raise
    temp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{secrets.token_hex(6)}.tmp")
    try:
        try:
            os.link(source, temp, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _COPY_INSTEAD:
                raise
            shutil.copy2(source, temp, follow_symlinks=False)
        os.replace(temp, target)  # atomic: a reader sees the old file or the new one
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def publish_existing(ws_root: Path, media_root: Path) -> int:
    """Publish every file of the workspace annotators may see; how many.

    For a workspace whose tasks were pushed while the document root was the workspace itself: their
    URLs name workspace-relative paths, which are the published files' paths below the media folder.
    """
    count = 0
    for pattern in ("candidates/*/*", "concepts/*/*/*", "review/thumbs/**/*", "study/*/*/*"):
        for path in ws_root.glob(pattern):
            if shown(path.relative_to(ws_root).as_posix()) and not path.is_symlink():
                publish(ws_root, media_root, path)
                count += 1
    return count


def check_document_root(ws_root: Path, document_root: Path) -> None:
    """Refuse a server document root that would hand this workspace's secrets to its users.

    The workspace root or a folder above it contains review/server.json (the admin password and
    token) and, for a server `serve` started, its database; a folder inside the workspace other
    than its media folder holds records, mappings or ratings.
    """
    media = own_media(ws_root)
    above = document_root == ws_root or document_root in ws_root.parents
    inside = ws_root in document_root.parents and not (
        document_root == media or media in document_root.parents
    )
    if above or inside:
        raise CurateError(
            f"Label Studio's document root {document_root} would serve this workspace's credentials and "
            f"records ({ws_root}/review): any user of the server can read every file below it; give the "
            "server a folder that holds only media (this workspace publishes into <root>/<workspace id>)"
        )

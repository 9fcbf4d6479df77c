"""How a file gets into an export: a copy of its own by default, a read-only hard link on request.

A trainer may edit what it reads in place (kohya's and OneTrainer's bucket crops and resizes, a user's
`mogrify`), and an export usually travels to another machine anyway, so by default every exported
file is a copy that shares nothing with the workspace: a reflink where the filesystem has them
(btrfs, XFS, bcachefs: the `FICLONE` ioctl that `cp --reflink=auto` uses; no extra disk until one
side is written), else a plain copy (`copy_file_range`/`sendfile` in the kernel). `curate export
--link` hard-links instead (no extra disk on any filesystem), and then makes each linked file
read-only: the inode is the workspace's, so an in-place edit through the export would change the
workspace's candidates and their hashes. The workspace itself only ever replaces files (atomic
rename), which a read-only mode does not hinder.

Inside one export, a second layout of the same image (kohya's folders beside `train/`) links to the
export's own file: it shares the inode with the export only, never with the workspace.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from curation.core.errors import CurateError

FICLONE = 0x40049409
"""linux/fs.h: _IOW(0x94, 9, int), the reflink ioctl (`cp --reflink`)."""
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.ENOSYS}
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


def reflink_or_copy(source: Path, target: Path) -> bool:
    """Write `target` as a reflink of `source` (True) or, where the filesystem cannot, as a copy (False)."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            return True
        except OSError as exc:
            if exc.errno not in _NO_REFLINK:
                raise
    shutil.copyfile(source, target)
    return False


def link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link `source` at `target` (True), or copy it where the filesystem cannot link (False)."""
    try:
        os.link(source, target)
        return True
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copyfile(source, target)
        return False


@dataclass
class Placer:
    """Places workspace files into the export being built at `root`, and counts how.

    Args:
        root: The export folder being built.
        link: Hard-link (read-only) instead of copying.
    """

    root: Path
    link: bool = False
    linked: int = 0
    reflinked: int = 0
    copied: int = 0

    def place(self, source: Path, relative: str, owner: str) -> None:
        """Put `source` at `root/relative`; `owner` names who needs it when the source is missing."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.link:
                linked = link_or_copy(source, target)
                if linked:
                    os.chmod(target, stat.S_IMODE(target.stat().st_mode) & READ_ONLY)
                self.linked += linked
                self.copied += not linked
            elif reflink_or_copy(source, target):
                self.reflinked += 1
            else:
                self.copied += 1
        except FileNotFoundError as exc:
            raise CurateError(f"{owner}: file {source} is missing; re-run the step that makes it") from exc

    def summary(self) -> str:
        """'files: N copied, N reflinked, N hard-linked (read-only)', naming only the kinds that occur."""
        parts = [
            f"{n} {kind}"
            for n, kind in (
                (self.copied, "copied"),
                (self.reflinked, "reflinked"),
                (self.linked, "hard-linked (read-only, shared with the workspace)"),
            )
            if n
        ]
        return "files: " + (", ".join(parts) or "none")

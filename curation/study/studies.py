"""The workspace's user studies: each one's folder, study/<name>/, and which study a command means."""

from __future__ import annotations

from pathlib import Path

from curation.core.errors import CurateError
from curation.core.workspace import Workspace


def study_dir(ws: Workspace, name: str) -> Path:
    return ws.root / "study" / name


def studies(ws: Workspace) -> list[str]:
    root = ws.root / "study"
    return sorted(p.parent.name for p in root.glob("*/study.json")) if root.exists() else []


def resolve_name(ws: Workspace, name: str | None) -> str:
    """The named study, or the workspace's only one."""
    have = studies(ws)
    if name:
        if name not in have:
            raise CurateError(f"no study {name!r} in {ws.root} (have: {', '.join(have) or 'none'})")
        return name
    if len(have) != 1:
        raise CurateError(
            f"{len(have)} studies in {ws.root}: pass --name ({', '.join(have)})"
            if have
            else f"no study in {ws.root}: run `curate study create` first"
        )
    return have[0]

"""The options every command shares, and how a command opens its workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

WorkspaceOpt = Annotated[
    Path,
    typer.Option(
        "--workspace", "-w", envvar="CURATE_WORKSPACE", help="The workspace folder (holds curate.toml)."
    ),
]
UrlOpt = Annotated[
    str,
    typer.Option(
        envvar="LABEL_STUDIO_URL", help="A running Label Studio (else the one `review serve` started)."
    ),
]
TokenOpt = Annotated[str, typer.Option(envvar="LABEL_STUDIO_TOKEN", help="API token for --url.")]
WaitOpt = Annotated[
    bool,
    typer.Option(
        "--wait", help="Queue behind a command already changing this workspace's stage instead of stopping."
    ),
]


def open_workspace(path: Path, wait: bool = False):
    """The workspace; `wait`: its writers queue behind a running command instead of stopping (`--wait`)."""
    from curation.core.workspace import Workspace

    return Workspace.open(path, wait_for_locks=wait)

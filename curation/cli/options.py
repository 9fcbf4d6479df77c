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

RecountOpt = Annotated[
    bool,
    typer.Option(
        "--recount",
        help="Count reviews in the FiftyOne dataset itself (starts its database: slow), not in the summary "
        "`curate index` and `review pull` record; for a dataset changed by hand.",
    ),
]


def command_group(help_text: str) -> typer.Typer:
    """A group of subcommands (`curate review ...`), with plain help like every command's.

    Plain, not rich: typer's rich help formatter imports rich's markdown and syntax modules, about
    0.3 s of the 0.5 s a `--help` may take on 2 cores.
    """
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)


def open_workspace(path: Path, wait: bool = False):
    """The workspace; `wait`: its writers queue behind a running command instead of stopping (`--wait`)."""
    from curation.core.workspace import Workspace

    return Workspace.open(path, wait_for_locks=wait)

"""`curate models ...`: the models the workspace's settings name (list, fetch ahead of time)."""

from __future__ import annotations

from pathlib import Path

import typer

from curation.cli.options import WorkspaceOpt, command_group, open_workspace

models_app = command_group("The models the settings name: list them, fetch them ahead of time.")


@models_app.command("list")
def models_list(workspace: WorkspaceOpt = Path(".")) -> None:
    """Every model the settings load, per stage: from where, on which device, here or not, size, checksum."""
    from curation.models.registry import FETCH_COMMAND, resolve

    ws = open_workspace(workspace)
    models = resolve(ws.config, ws.root)
    for model in models:
        typer.echo(model.describe())
    missing = [m.setting for m in models if not m.present]
    if missing:
        typer.echo(f"{len(missing)} not here ({', '.join(missing)}): `{FETCH_COMMAND} -w {ws.root}` fetches them")


@models_app.command("fetch")
def models_fetch(workspace: WorkspaceOpt = Path(".")) -> None:
    """Download every model the settings need into the caches the stages read (HF_HOME, rembg's folder)."""
    from curation.models.fetch import fetch_models

    ws = open_workspace(workspace)
    models = fetch_models(ws.config, typer.echo, ws.root)
    typer.echo(f"all {len(models)} models the settings name are on this machine")

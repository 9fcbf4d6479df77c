"""`curate study ...`: the user preference study in Label Studio (create, pull, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curation.cli.options import TokenOpt, UrlOpt, WaitOpt, WorkspaceOpt, command_group, open_workspace

study_app = command_group("The user preference study in Label Studio: create, pull, report.")


@study_app.command("create")
def study_create(
    evaluation: Annotated[Path, typer.Argument(help="A `curate evaluate -o` folder (results.json, images/).")],
    criteria: Annotated[str, typer.Option(help="Comma list; each image gets a 1-10 score per criterion.")] = (
        "alignment,fidelity"
    ),
    raters: Annotated[int, typer.Option(min=0, help="Annotators per task; 0 keeps the study's (new: 2).")] = 0,
    per_bucket: Annotated[int, typer.Option(min=0, help="Prompts per bucket (<=3, 4, 5); 0 = the smallest's.")] = 0,
    name: Annotated[str, typer.Option(help="Study name (folder under study/); default the folder's name.")] = "",
    seed: Annotated[int, typer.Option(help="Seed of the sampling and of each task's image order.")] = 0,
    skip_incomplete: Annotated[
        bool, typer.Option("--skip-incomplete", help="Leave out prompts a configuration has no image for.")
    ] = False,
    url: UrlOpt = "",
    token: TokenOpt = "",
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """One blind task per prompt: references, prompt, each configuration's image shuffled; adds only new tasks."""
    from curation.core.progress import progress_bar
    from curation.study.create import create

    with progress_bar() as progress:
        report = create(open_workspace(workspace, wait), evaluation, name=name or None,
                        criteria=[c.strip() for c in criteria.split(",") if c.strip()], raters=raters or None,
                        per_bucket=per_bucket or None, seed=seed, skip_incomplete=skip_incomplete,
                        url=url or None, token=token or None, progress=progress)  # fmt: skip
    typer.echo(report.summary())


@study_app.command("pull")
def study_pull(
    name: Annotated[str, typer.Option(help="Study name; default the workspace's only study.")] = "",
    url: UrlOpt = "",
    token: TokenOpt = "",
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Pull the ratings into study/<name>/ratings.json (writes nothing when nothing changed)."""
    from curation.study.pull import pull

    typer.echo(pull(open_workspace(workspace, wait), name or None, url=url or None, token=token or None).summary())


@study_app.command("report")
def study_report(
    name: Annotated[str, typer.Option(help="Study name; default the workspace's only study.")] = "",
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Mean (± std) per configuration x bucket x criterion, bootstrap CIs, win rates, agreement."""
    from curation.study.report import write_report

    report = write_report(open_workspace(workspace), name or None)
    typer.echo(report.table_path.read_text())
    typer.echo(report.summary())

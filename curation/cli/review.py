"""`curate review ...` (serve, stop, push, pull, status) and `curate calibrate`: human review in Label Studio."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curation.cli.options import (
    RecountOpt,
    TokenOpt,
    UrlOpt,
    WaitOpt,
    WorkspaceOpt,
    command_group,
    open_workspace,
)
from curation.core.config import MAX_CANDIDATES_PER_PAGE
from curation.core.errors import CurateError

review_app = command_group("Human review in Label Studio: serve, push tasks, pull decisions.")


def calibrate(wait: WaitOpt = False, workspace: WorkspaceOpt = Path(".")) -> None:
    """Each machine score against the pulled decisions: AUC, the triage rule each concept count earns, a ROC plot.

    A rule's recall of accepted candidates is checked on reviews it was not chosen on (5-fold
    cross-validation, seeded; score and cut chosen inside each fold) and must have a one-sided 95%
    Clopper-Pearson lower bound of at least 95%. A concept count needs >= 59 accepted and >= 20
    rejected reviews; one that falls short gets no triage (never another count's or the pooled
    rule). Writes review/calibration.json, read by `curate review push --triage`.
    """
    from curation.review.calibration import calibrate as run_calibration

    typer.echo(run_calibration(open_workspace(workspace, wait)).summary())


@review_app.command("serve")
def review_serve(
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: the config's); next free one if busy.")
    ] = 0,
    url: Annotated[str, typer.Option(envvar="LABEL_STUDIO_URL", help="Record this running server instead.")] = "",
    token: TokenOpt = "",
    document_root: Annotated[
        Path | None,
        typer.Option(help="With --url: the server's LOCAL_FILES_DOCUMENT_ROOT, a folder holding only media."),
    ] = None,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Start a local Label Studio serving the workspace's images (or record --url); prints URL and login.

    `[review] workers` in curate.toml: 1 (default) runs `label-studio start`, one process; more runs
    Label Studio's production server, uWSGI with that many workers, for a team (deploy/README.md).
    """
    from curation.core.ports import moved_note
    from curation.review.server import invite_url, serve, use_server

    ws = open_workspace(workspace)
    if url:
        if not token:
            raise CurateError(f"a token is needed for {url}: pass --token or set LABEL_STUDIO_TOKEN")
        info = use_server(ws, url, token, document_root=document_root)
        typer.echo(f"Label Studio: {info.url} recorded in {info.path}; what annotators see is published to {info.media}")
        return
    if document_root:
        raise CurateError("--document-root describes a running server: pass it with --url")
    typer.echo("starting Label Studio (the first start migrates its database: about a minute)...", err=True)
    info = serve(ws, port=port or None, echo=lambda line: typer.echo(line, err=True))
    if note := moved_note(port or ws.config.review.port, info.url):
        typer.echo(note, err=True)
    server = f"uWSGI, {info.workers} workers" if info.workers > 1 else "one process"
    typer.echo(
        f"Label Studio: {info.url} ({server})  login {info.email}, password in {info.path} (owner-only)"
    )
    typer.echo(f"annotators sign up at {invite_url(info)}  (one account each; share it like a password)")


@review_app.command("stop")
def review_stop(workspace: WorkspaceOpt = Path(".")) -> None:
    """Stop the Label Studio server that `curate review serve` started."""
    from curation.review.server import stop

    typer.echo("stopped" if stop(open_workspace(workspace)) else "no server was running")


@review_app.command("push")
def review_push(
    view: Annotated[str, typer.Option(help="FiftyOne saved view to push.")] = "unreviewed",
    order: Annotated[str, typer.Option(help="Task order: uncertain | score | random | view.")] = "uncertain",
    overlap: Annotated[int, typer.Option(min=0, help="Annotators per task; 0 keeps the project's setting.")] = 0,
    triage: Annotated[
        bool,
        typer.Option(
            "--triage",
            help="Hold back what a concept count's calibrated rule would reject (view triaged_out), only where"
            " `curate calibrate` showed a held-out 95% lower bound >= 95% recall of accepts; the summary says"
            " what each concept count did and why.",
        ),
    ] = False,
    batch: Annotated[
        int,
        typer.Option(
            min=0,
            max=MAX_CANDIDATES_PER_PAGE,
            help="Candidates of one composition per review page (keys move between them); 0 uses"
            " review.candidates_per_page (default 1).",
        ),
    ] = 0,
    url: UrlOpt = "",
    token: TokenOpt = "",
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Create the review project if needed and push new candidates as tasks (re-pushing adds only new ones)."""
    from curation.core.progress import progress_bar
    from curation.review.push import ORDERS, push

    if order not in ORDERS:
        raise CurateError(f"unknown --order {order!r}: use one of {', '.join(ORDERS)}")
    with progress_bar() as progress:
        report = push(open_workspace(workspace, wait), view=view, url=url or None, token=token or None, order=order,
                      overlap=overlap or None, triage=triage, per_page=batch or None, progress=progress)  # fmt: skip
    typer.echo(report.summary())


@review_app.command("pull")
def review_pull(
    url: UrlOpt = "",
    token: TokenOpt = "",
    full: Annotated[
        bool, typer.Option("--full", help="read every task, not only those changed since the last pull")
    ] = False,
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Pull annotations into FiftyOne (review_decision, review_quality, agreement...); keeps each delta, gzipped."""
    from curation.core.progress import progress_bar
    from curation.review.pull import pull

    with progress_bar() as progress:
        report = pull(open_workspace(workspace, wait), url=url or None, token=token or None, full=full, progress=progress)
    typer.echo(report.summary())


@review_app.command("status")
def review_status(
    url: UrlOpt = "",
    token: TokenOpt = "",
    recount: RecountOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Tasks, reviewed / accepted / for export / rejected / disputed, invalid annotations, agreement."""
    from curation.review.status import status

    report = status(open_workspace(workspace), url=url or None, token=token or None, recount=recount)
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(report.summary())

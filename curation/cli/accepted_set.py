"""Commands about the accepted set: `curate status`, `curate topup` (plan what is short), `curate export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curation.cli.options import RecountOpt, WaitOpt, WorkspaceOpt, open_workspace


def status(recount: RecountOpt = False, workspace: WorkspaceOpt = Path(".")) -> None:
    """Accepted / pending / rejected against the [curation] targets, per composition, bucket and concept."""
    from curation.loop.targets import read_shape

    ws = open_workspace(workspace)
    shape = read_shape(ws, recount=recount)
    for note in shape.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(shape.table())
    if not shape.targets.any:
        typer.echo(f"no targets set: put per_composition, per_concept or buckets under [curation] in {ws.config_path}")


def topup(
    max_new: Annotated[int, typer.Option(help="Most new candidates this round; 0 means curation.max_new.")] = 0,
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Append plans for the compositions short of their target (shortfall / acceptance rate, less pending)."""
    from curation.core.progress import progress_bar
    from curation.loop.topup import topup as run_topup

    with progress_bar() as progress:
        report = run_topup(open_workspace(workspace, wait), max_new=max_new or None, progress=progress)
    typer.echo(report.summary())


def export_command(
    name: Annotated[str, typer.Option(help="Folder name under exports/.")] = "mycanvas",
    min_quality: Annotated[
        int, typer.Option(min=0, max=5, help="Lowest review quality (1-5) to include; 0 = config.")
    ] = 0,
    formats: Annotated[
        str,
        typer.Option(
            "--format",
            help="mycanvas (is also imagefolder + concepts_list), webdataset, kohya, onetrainer; comma list.",
        ),
    ] = "",
    view: Annotated[str, typer.Option(help="Saved FiftyOne view to select from (default: whole dataset).")] = "",
    include_near_duplicates: Annotated[
        bool, typer.Option("--include-near-duplicates", help="Keep candidates marked near_dup_of.")
    ] = False,
    max_per_composition: Annotated[
        int, typer.Option(help="Keep at most N per concept set: best quality first, ties by CLIP-T; 0 = all.")
    ] = 0,
    class_images_from: Annotated[
        Path | None,
        typer.Option(help="Prior-preservation images: a subfolder per class noun, copied to class_images/."),
    ] = None,
    class_images: Annotated[int, typer.Option(help="Images per class from --class-images-from; 0 = all.")] = 0,
    link: Annotated[
        bool,
        typer.Option(
            "--link",
            help="Hard-link the workspace's images (made read-only) instead of copying them: no extra disk.",
        ),
    ] = False,
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Write accepted candidates with quality >= threshold as a MyCanvas folder (train/metadata.jsonl)."""
    from curation.core.progress import progress_bar
    from exports.mycanvas import export_mycanvas

    ws = open_workspace(workspace, wait)
    with progress_bar() as progress:
        report = export_mycanvas(
            ws,
            name=name,
            min_quality=min_quality or None,
            progress=progress,
            formats=formats or None,
            view=view or None,
            include_near_duplicates=include_near_duplicates,
            max_per_composition=max_per_composition or None,
            class_images_from=class_images_from,
            class_images=class_images,
            link=link,
        )
    typer.echo(report.summary())

"""The `curate` command line: parses options, calls library functions, draws progress, prints results.

This module is the root command and its entry point; the commands live by subject in this package
(`build`, `review`, `study`, `accepted_set`, `models`) and are registered here, one line each.

Heavy libraries (torch, fiftyone, diffusers, label_studio_sdk) are imported inside the commands,
so `curate --help` answers at once.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from curation.cli import accepted_set, build, models, review, study
from curation.cli.options import WorkspaceOpt
from curation.core.errors import CurateError

app = typer.Typer(
    help=(
        "Build a curated multi-concept personalization dataset, MyCanvas style.\n\n"
        "Steps: init -> concepts add -> plan -> generate -> index -> review serve/push/pull -> export.\n"
        "`curate status` / `curate topup` plan more where review left a composition short of its target.\n"
        "`curate demo` runs them all on sample photos with offline defaults."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: see `command_group`
)
app.add_typer(build.concepts_app, name="concepts")
app.add_typer(review.review_app, name="review")
app.add_typer(study.study_app, name="study")
app.add_typer(models.models_app, name="models")
app.command()(build.init)
app.command()(build.plan)
app.command()(build.generate)
app.command()(build.index)
app.command()(build.report)
app.command()(build.judge)
app.command()(review.calibrate)
app.command()(accepted_set.status)
app.command()(accepted_set.topup)
app.command("app")(build.app_command)
app.command("export")(accepted_set.export_command)


@app.command()
def demo(
    workspace: WorkspaceOpt = Path("runs/demo"),
    plans: Annotated[int, typer.Option(help="Number of layout plans (one candidate each).")] = 24,
    serve_review: Annotated[bool, typer.Option("--review/--no-review", help="Start Label Studio and push.")] = True,
) -> None:
    """Run the whole chain on scikit-image sample photos with offline defaults."""
    from curation.demo import run_demo

    run_demo(workspace, n_plans=plans, review=serve_review, echo=typer.echo)


def _register_personalization() -> None:
    """`curate train` / `curate evaluate` live with the trainer; their modules import torch lazily."""
    from personalization.cli_commands import evaluate_command, train_command, train_segmenter_command

    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("train-segmenter")(train_segmenter_command)


_register_personalization()


def main() -> None:
    """Console entry point: user-fixable errors become one line on stderr and exit code 1."""
    # ours first: label_studio_sdk's converter calls basicConfig(INFO) on import, which would echo every
    # library's INFO lines a second time under a "INFO:module:" prefix. The handler's own level matters
    # too: records propagating from a library logger set to INFO (FiftyOne prints its own) skip the
    # root logger's level and reach its handler.
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", handlers=[handler])
    if not os.environ.get("FIFTYONE_DATABASE_URI"):
        # the embedded mongod (6.0) is the oldest FiftyOne supports: its notice is noise for a local run
        os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    try:
        app()
    except CurateError as exc:
        # one line whatever a wrapped library message holds (torch, transformers and PIL errors span several)
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        typer.echo(f"error: {message}", err=True)
        sys.exit(1)

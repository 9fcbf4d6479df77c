"""Commands that build the candidate set: init, concepts, plan, generate, index, report, judge, app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curation.cli.options import WaitOpt, WorkspaceOpt, command_group, open_workspace
from curation.core.errors import CurateError

concepts_app = command_group("Add and list personal concepts (photos -> segmented references).")


def init(path: Annotated[Path, typer.Argument(help="Folder to create.")]) -> None:
    """Create a workspace folder with a default curate.toml (offline defaults, all settings listed)."""
    from curation.core.workspace import Workspace

    ws = Workspace.create(path)
    typer.echo(f"workspace ready: {ws.root} (edit {ws.config_path.name} to change models and settings)")


def plan(
    n: Annotated[int, typer.Option("--n", help="How many layout plans (compositions x backgrounds).")] = 24,
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Plan layouts: background + one box per concept for compositions of 2-5 concepts."""
    from curation.core.progress import progress_bar
    from generators.layout import plan_layouts
    from generators.llm_layout import FALLBACK

    ws = open_workspace(workspace, wait)
    with progress_bar() as progress:
        plans = plan_layouts(ws, n, progress=progress)
    fell_back = sum(p.planner == FALLBACK for p in plans)
    typer.echo(f"{len(plans)} plans in {ws.plans_path}")
    if fell_back:
        typer.echo(f"{fell_back} plans fell back to the rule-based planner: see {ws.plans_path.parent / 'llm_failures.jsonl'}")


def generate(
    workers: Annotated[int, typer.Option(help="Worker processes (or Ray actors); 0 means the config's value.")] = 0,
    executor: Annotated[str, typer.Option(help="'local' processes, or 'ray' (RAY_ADDRESS picks a cluster).")] = "local",
    generator: Annotated[
        str, typer.Option(help="'gen4gen' (paste + repaint) or 'msp' (MSP-Diffusion); empty means the config's.")
    ] = "",
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Generate one candidate per plan and seed, in resumable shards (finished shards are skipped)."""
    from curation.core.progress import progress_bar
    from generators.run import generate as run_generate

    ws = open_workspace(workspace, wait)
    with progress_bar() as progress:
        report = run_generate(
            ws, workers=workers or None, progress=progress, executor=executor, generator=generator or None
        )
    typer.echo(report.summary())


def index(
    executor: Annotated[
        str | None, typer.Option(help="Where CLIP embeddings run: 'local' or 'ray'; default index.executor.")
    ] = None,
    diversity: Annotated[
        bool,
        typer.Option(
            "--diversity",
            help="Recompute uniqueness and the embedding map now (else when index.diversity_growth is reached).",
        ),
    ] = False,
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Index candidates in FiftyOne: CLIP, CLIP-T, concept presence (CP-CLIP), artifact scores, views."""
    from curation.core.progress import progress_bar
    from curation.index.run import index_workspace

    ws = open_workspace(workspace, wait)
    with progress_bar() as progress:
        report = index_workspace(ws, progress=progress, executor=executor, diversity=diversity)
    typer.echo(report.summary())


def report(workspace: WorkspaceOpt = Path(".")) -> None:
    """Write score histograms by concept count and a Markdown summary to <workspace>/reports/."""
    from curation.core.progress import progress_bar
    from curation.index.report import write_report

    with progress_bar() as progress:
        result = write_report(open_workspace(workspace), progress=progress)
    typer.echo(f"{result.candidates} candidates: {result.summary} and {len(result.figures)} histograms")


def judge(
    model: Annotated[
        str,
        typer.Option(
            help='"openai:<model>" at OPENAI_BASE_URL, or a transformers VLM hub id/folder; default [index] judge.'
        ),
    ] = "",
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Score every candidate with a VLM judge (presence, identity, artifacts, overall); cached per image."""
    from curation.core.progress import progress_bar
    from curation.scores.judge import judge as run_judge

    ws = open_workspace(workspace, wait)
    with progress_bar() as progress:
        typer.echo(run_judge(ws, model or ws.config.index.judge, progress=progress).summary())


def app_command(
    address: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port to serve on; the nearest free one above if busy.")
    ] = 5151,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Open the FiftyOne App on the workspace's dataset and wait (Ctrl-C to stop)."""
    from curation.core.ports import moved_note
    from curation.index.app import launch_app

    server = launch_app(
        open_workspace(workspace), address=address, port=port, echo=lambda line: typer.echo(line, err=True)
    )
    if note := moved_note(port, server.url):
        typer.echo(note, err=True)
    typer.echo(f"FiftyOne App: {server.url}  (Ctrl-C to stop)")
    if (code := server.wait()) is not None:
        raise CurateError(f"the FiftyOne App server stopped (exit code {code}); its log: {server.log}")


@concepts_app.command("add")
def concepts_add(
    name: Annotated[str, typer.Argument(help="Its name, e.g. 'cat1', 'my dog', '猫' (an id is derived).")],
    photos: Annotated[list[Path], typer.Argument(help="Image files or folders of images of this concept.")],
    class_noun: Annotated[str, typer.Option("--class", "-c", help="Class noun, e.g. 'cat' (one line, <= 64).")],
    concept_id: Annotated[str, typer.Option("--id", help="Id instead of the derived one (a-z, 0-9, - or _).")] = "",
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Ingest a concept's photos: segment each foreground (soft mask), assign the token <c-ID>."""
    from curation.concepts.references import PHOTO_ALPHA, add_concept, choose_concept_id
    from curation.core.progress import progress_bar

    ws = open_workspace(workspace, wait)
    concept_id = choose_concept_id(ws, name, concept_id or None)
    previous = ws.concept(concept_id)
    with progress_bar() as progress:
        concept = add_concept(ws, concept_id, photos, class_noun=class_noun, name=name, progress=progress)
    if previous is not None:
        typer.echo(
            f"replaced concept {previous.concept_id} ({previous.name!r}, {len(previous.refs)} photos, "
            f"class {previous.class_noun!r})"
        )
    line = f"{concept.concept_id}: {len(concept.refs)} photos, token {concept.token}, segmenter {concept.segmenter}"
    if concept.name != concept.concept_id:
        line = f"{concept.name!r} -> {line}"
    if own := concept.mask_sources.count(PHOTO_ALPHA):
        line += f"; photos that came cut out (their own alpha is the mask): {own}"
    flagged = [photo_flags for photo_flags in concept.mask_flags if photo_flags]
    if flagged:
        kinds = ", ".join(sorted({flag for photo_flags in flagged for flag in photo_flags}))
        clean = len(concept.refs) - len(flagged)
        line += f"; {len(flagged)} masks flagged ({kinds}): " + (
            f"only the other {clean} are pasted" if clean else "cut-outs may paste in pieces"
        )
    typer.echo(line)


@concepts_app.command("list")
def concepts_list(workspace: WorkspaceOpt = Path(".")) -> None:
    """List ingested concepts with their tokens and photo counts."""
    ws = open_workspace(workspace)
    concepts = ws.concepts()
    if not concepts:
        typer.echo(f"no concepts yet: add one with `curate concepts add NAME PHOTOS... --class NOUN -w {ws.root}`")
    for concept in concepts.values():
        typer.echo(
            f"{concept.concept_id}\t{concept.token}\t{concept.class_noun}\t{len(concept.refs)} photos\t{concept.name}"
        )


@concepts_app.command("show")
def concepts_show(
    name: Annotated[str, typer.Argument(help="The concept's name or id.")],
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Where a concept's preview is (photo | mask | cut-out per photo), its segmenter and mask flags."""
    from curation.concepts.references import PHOTO_ALPHA, show_concept

    ws = open_workspace(workspace)
    concept, preview = show_concept(ws, name)
    typer.echo(f"{concept.concept_id}: {len(concept.refs)} photos, segmenter {concept.segmenter}")
    sources = [*concept.mask_sources, *[""] * len(concept.refs)]  # older records name no source
    for ref, flags, source in zip(concept.refs, concept.mask_flags, sources):
        own = " (mask: the photo's own alpha, not segmented)" if source == PHOTO_ALPHA else ""
        typer.echo(f"  {ref}: {', '.join(flags) or 'ok'}{own}")
    typer.echo(f"preview: {preview}")

"""The `curate` command line: parses options, calls library functions, draws progress, prints results.

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

from curation.core.errors import CurateError

WorkspaceOpt = Annotated[
    Path,
    typer.Option("--workspace", "-w", envvar="CURATE_WORKSPACE", help="The workspace folder (holds curate.toml)."),
]
UrlOpt = Annotated[
    str, typer.Option(envvar="LABEL_STUDIO_URL", help="A running Label Studio (else the one `review serve` started).")
]
TokenOpt = Annotated[str, typer.Option(envvar="LABEL_STUDIO_TOKEN", help="API token for --url.")]
WaitOpt = Annotated[
    bool,
    typer.Option("--wait", help="Queue behind a command already changing this workspace's stage instead of stopping."),
]

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
)
concepts_app = typer.Typer(help="Add and list personal concepts (photos -> segmented references).", no_args_is_help=True)
review_app = typer.Typer(help="Human review in Label Studio: serve, push tasks, pull decisions.", no_args_is_help=True)
app.add_typer(concepts_app, name="concepts")
app.add_typer(review_app, name="review")
study_app = typer.Typer(help="The user preference study in Label Studio: create, pull, report.", no_args_is_help=True)
app.add_typer(study_app, name="study")
models_app = typer.Typer(help="The models the settings name: list them, fetch them ahead of time.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _workspace(path: Path, wait: bool = False):
    """The workspace; `wait`: its writers queue behind a running command instead of stopping (`--wait`)."""
    from curation.core.workspace import Workspace

    return Workspace.open(path, wait_for_locks=wait)


@app.command()
def init(path: Annotated[Path, typer.Argument(help="Folder to create.")]) -> None:
    """Create a workspace folder with a default curate.toml (offline defaults, all settings listed)."""
    from curation.core.workspace import Workspace

    ws = Workspace.create(path)
    typer.echo(f"workspace ready: {ws.root} (edit {ws.config_path.name} to change models and settings)")


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

    ws = _workspace(workspace, wait)
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
    ws = _workspace(workspace)
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

    ws = _workspace(workspace)
    concept, preview = show_concept(ws, name)
    typer.echo(f"{concept.concept_id}: {len(concept.refs)} photos, segmenter {concept.segmenter}")
    sources = [*concept.mask_sources, *[""] * len(concept.refs)]  # older records name no source
    for ref, flags, source in zip(concept.refs, concept.mask_flags, sources):
        own = " (mask: the photo's own alpha, not segmented)" if source == PHOTO_ALPHA else ""
        typer.echo(f"  {ref}: {', '.join(flags) or 'ok'}{own}")
    typer.echo(f"preview: {preview}")


@app.command()
def plan(
    n: Annotated[int, typer.Option("--n", help="How many layout plans (compositions x backgrounds).")] = 24,
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Plan layouts: background + one box per concept for compositions of 2-5 concepts."""
    from curation.core.progress import progress_bar
    from generators.layout import plan_layouts
    from generators.llm_layout import FALLBACK

    ws = _workspace(workspace, wait)
    with progress_bar() as progress:
        plans = plan_layouts(ws, n, progress=progress)
    fell_back = sum(p.planner == FALLBACK for p in plans)
    typer.echo(f"{len(plans)} plans in {ws.plans_path}")
    if fell_back:
        typer.echo(f"{fell_back} plans fell back to the rule-based planner: see {ws.plans_path.parent / 'llm_failures.jsonl'}")


@app.command()
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

    ws = _workspace(workspace, wait)
    with progress_bar() as progress:
        report = run_generate(
            ws, workers=workers or None, progress=progress, executor=executor, generator=generator or None
        )
    typer.echo(report.summary())


@app.command()
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

    ws = _workspace(workspace, wait)
    with progress_bar() as progress:
        report = index_workspace(ws, progress=progress, executor=executor, diversity=diversity)
    typer.echo(report.summary())


@app.command()
def report(workspace: WorkspaceOpt = Path(".")) -> None:
    """Write score histograms by concept count and a Markdown summary to <workspace>/reports/."""
    from curation.core.progress import progress_bar
    from curation.index.report import write_report

    with progress_bar() as progress:
        result = write_report(_workspace(workspace), progress=progress)
    typer.echo(f"{result.candidates} candidates: {result.summary} and {len(result.figures)} histograms")


@app.command()
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

    ws = _workspace(workspace, wait)
    with progress_bar() as progress:
        typer.echo(run_judge(ws, model or ws.config.index.judge, progress=progress).summary())


@app.command()
def calibrate(wait: WaitOpt = False, workspace: WorkspaceOpt = Path(".")) -> None:
    """Each machine score against the pulled decisions: AUC, the 95%-recall triage rule, a ROC plot."""
    from curation.review.calibration import calibrate as run_calibration

    typer.echo(run_calibration(_workspace(workspace, wait)).summary())


@app.command()
def status(workspace: WorkspaceOpt = Path(".")) -> None:
    """Accepted / pending / rejected against the [curation] targets, per composition, bucket and concept."""
    from curation.loop.targets import read_shape

    ws = _workspace(workspace)
    shape = read_shape(ws)
    typer.echo(shape.table())
    if not shape.targets.any:
        typer.echo(f"no targets set: put per_composition, per_concept or buckets under [curation] in {ws.config_path}")


@app.command()
def topup(
    max_new: Annotated[int, typer.Option(help="Most new candidates this round; 0 means curation.max_new.")] = 0,
    wait: WaitOpt = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Append plans for the compositions short of their target (shortfall / acceptance rate, less pending)."""
    from curation.core.progress import progress_bar
    from curation.loop.topup import topup as run_topup

    with progress_bar() as progress:
        report = run_topup(_workspace(workspace, wait), max_new=max_new or None, progress=progress)
    typer.echo(report.summary())


@app.command("app")
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

    url = launch_app(_workspace(workspace), address=address, port=port)
    if note := moved_note(port, url):
        typer.echo(note, err=True)
    typer.echo(f"FiftyOne App: {url}  (Ctrl-C to stop)")
    try:
        import time

        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


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
    """Start a local Label Studio serving the workspace's images (or record --url); prints URL and login."""
    from curation.core.ports import moved_note
    from curation.review.server import invite_url, serve, use_server

    ws = _workspace(workspace)
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
    typer.echo(f"Label Studio: {info.url}  login {info.email}, password in {info.path} (owner-only)")
    typer.echo(f"annotators sign up at {invite_url(info)}  (one account each; share it like a password)")


@review_app.command("stop")
def review_stop(workspace: WorkspaceOpt = Path(".")) -> None:
    """Stop the Label Studio server that `curate review serve` started."""
    from curation.review.server import stop

    typer.echo("stopped" if stop(_workspace(workspace)) else "no server was running")


@review_app.command("push")
def review_push(
    view: Annotated[str, typer.Option(help="FiftyOne saved view to push.")] = "unreviewed",
    order: Annotated[str, typer.Option(help="Task order: uncertain | score | random | view.")] = "uncertain",
    overlap: Annotated[int, typer.Option(min=0, help="Annotators per task; 0 keeps the project's setting.")] = 0,
    triage: Annotated[
        bool, typer.Option("--triage", help="Hold back what `curate calibrate`'s rule would reject (view triaged_out).")
    ] = False,
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
        report = push(_workspace(workspace, wait), view=view, url=url or None, token=token or None, order=order,
                      overlap=overlap or None, triage=triage, progress=progress)  # fmt: skip
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
        report = pull(_workspace(workspace, wait), url=url or None, token=token or None, full=full, progress=progress)
    typer.echo(report.summary())


@review_app.command("status")
def review_status(
    url: UrlOpt = "",
    token: TokenOpt = "",
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Tasks, reviewed / accepted / for export / rejected / disputed, invalid annotations, agreement."""
    from curation.review.status import status

    typer.echo(status(_workspace(workspace), url=url or None, token=token or None).summary())


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
        report = create(_workspace(workspace, wait), evaluation, name=name or None,
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

    typer.echo(pull(_workspace(workspace, wait), name or None, url=url or None, token=token or None).summary())


@study_app.command("report")
def study_report(
    name: Annotated[str, typer.Option(help="Study name; default the workspace's only study.")] = "",
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Mean (± std) per configuration x bucket x criterion, bootstrap CIs, win rates, agreement."""
    from curation.study.report import write_report

    report = write_report(_workspace(workspace), name or None)
    typer.echo(report.table_path.read_text())
    typer.echo(report.summary())


@app.command("export")
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

    ws = _workspace(workspace, wait)
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


@models_app.command("list")
def models_list(workspace: WorkspaceOpt = Path(".")) -> None:
    """Every model the settings load, per stage: from where, on which device, here or not, size, checksum."""
    from curation.models.registry import FETCH_COMMAND, resolve

    ws = _workspace(workspace)
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

    ws = _workspace(workspace)
    models = fetch_models(ws.config, typer.echo, ws.root)
    typer.echo(f"all {len(models)} models the settings name are on this machine")


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

"""`curate export`: the accepted compositions as a MyCanvas-style folder, written all at once or not at all.

One folder serves every consumer: `train/` grouped images + `metadata.jsonl` (Hugging Face
imagefolder), `concepts/` references and masks, `concepts_list*.json` (diffusers Custom Diffusion and
multi-subject DreamBooth), `train_commands.json` (each consumer's command line), the dataset card and
a manifest; `webdataset/` shards and the kohya / OneTrainer layouts when asked for; `class_images/` for
prior preservation. No file names a path outside the export, so it travels. Everything is
built in a hidden temp folder beside the destination and swapped in at the end, so a failure leaves the
previous export as it was; the previous export's class images and training runs (`runs/`) are carried
over. The output is a pure
function of (selection, reviews, concepts, config, class images): no timestamps, sorted keys, fixed
tar headers, so re-exporting the same selection yields byte-identical files.

Images and references are copies (reflinks where the filesystem has them), so a trainer that edits
its input in place never touches the workspace; `link=True` hard-links them read-only instead
(`exports.placing`).
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata as importlib_metadata
from pathlib import Path

from curation.core.errors import CurateError
from curation.core.lock import writes
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import Concept, content_id
from curation.core.workspace import Workspace, atomic_write_json, atomic_write_text, make_temp_dir
from curation.loop.targets import export_targets
from exports.card import render_card
from exports.class_images import add_from_folder, class_counts, keep_previous
from exports.commands import COMMANDS_FILE, RUNS_DIR, VARIABLES, card_section, commands_json, train_commands
from exports.concepts_list import composition_class_prompt, composition_folders, write_concepts_lists
from exports.identifiers import assign_identifiers
from exports.imagefolder import DATA_DIR, metadata_row, write_metadata
from exports.kohya import VARIABLE as KOHYA_VARIABLE
from exports.placing import Placer
from exports.select import ExportItem, Selection, select_candidates
from exports.tokens import retoken, rewrite
from exports.trainer_formats import FORMATS as TRAINER_FORMATS
from exports.trainer_formats import class_prompts, write_trainer_formats
from exports.webdataset import write_shards

CORE_FORMATS = ("mycanvas", "imagefolder", "concepts_list")
"""Formats the core folder already is: the mycanvas layout doubles as imagefolder and concepts_list."""
EXTRA_FORMATS = ("webdataset", *TRAINER_FORMATS)
MANIFEST_FILE = "manifest.json"


@dataclass
class ExportReport:
    """What an export wrote, for the CLI line and for tests."""

    path: Path
    formats: list[str]
    n_images: int
    per_concept: dict[str, int]
    per_composition: dict[str, int]
    min_quality: float | None
    dropped_near_duplicates: int = 0
    skipped_stale: int = 0
    skipped_missing: int = 0
    capped: int = 0
    files: str = ""
    shards: list[Path] = field(default_factory=list)
    class_images: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        quality = f"quality >= {self.min_quality:g}" if self.min_quality is not None else "any quality"
        parts = [
            (
                f"exported {self.n_images} accepted images ({quality}) of {len(self.per_concept)} concepts"
                f" in {len(self.per_composition)} compositions to {self.path}"
            ),
            f"formats: {', '.join(self.formats)}",
            self.files,
        ]
        if self.dropped_near_duplicates:
            parts.append(f"{self.dropped_near_duplicates} near-duplicates left out")
        if self.skipped_stale:
            parts.append(
                f"{self.skipped_stale} accepted candidates skipped: set aside as stale by `curate generate`"
                " (plans or generator settings changed)"
            )
        if self.skipped_missing:
            parts.append(
                f"{self.skipped_missing} accepted candidates skipped: their image or record is missing from the"
                " workspace (`curate generate` makes them again, then `curate index`)"
            )
        if self.capped:
            parts.append(f"{self.capped} accepted images over --max-per-composition left out")
        if self.shards:
            parts.append(f"{len(self.shards)} WebDataset shards")
        if self.class_images:
            parts.append(
                f"{sum(self.class_images.values())} class images in {len(self.class_images)} class folders"
            )
        if not self.n_images:
            parts.append(
                "nothing accepted at this quality yet: review with `curate review push` and `curate review pull`,"
                " or lower --min-quality"
            )
        return "; ".join(parts)


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """Comma-separated or listed format names -> sorted unique list; unknown names are an error."""
    names = formats.split(",") if isinstance(formats, str) else [n for f in formats for n in f.split(",")]
    chosen = sorted({n.strip().lower() for n in names if n.strip()} | {"mycanvas"})
    unknown = [n for n in chosen if n not in CORE_FORMATS + EXTRA_FORMATS]
    if unknown:
        raise CurateError(
            f"unknown export format {unknown[0]!r} (known: {', '.join(CORE_FORMATS + EXTRA_FORMATS)})"
        )
    return chosen


def export_destination(ws: Workspace, name: str) -> Path:
    """exports/<name>, refusing names that are empty, hidden, nested or escape the workspace."""
    if not name or name != Path(name).name or name.startswith(".") or "\\" in name:
        raise CurateError(f"invalid export name {name!r}: use a plain folder name such as 'mycanvas'")
    destination = ws.resolve(Path("exports") / name)
    if destination.parent != ws.exports_dir:
        raise CurateError(f"export name {name!r} escapes {ws.exports_dir}")
    return destination


def _carry_runs(source: Path, target: Path) -> None:
    """Move `source/runs/` (what the printed commands trained) into `target` unless it has its own."""
    if (source / RUNS_DIR).is_dir() and not (target / RUNS_DIR).exists():
        (source / RUNS_DIR).rename(target / RUNS_DIR)


def _recover(destination: Path) -> None:
    """Undo what a killed export left: restore a displaced previous export, drop unfinished temp folders;
    training runs caught in either go back to the export."""
    for old in sorted(destination.parent.glob(f".{destination.name}.old-*")):
        if destination.exists():
            _carry_runs(old, destination)
            shutil.rmtree(old)
        else:
            old.rename(destination)
    for tmp in destination.parent.glob(f".{destination.name}.tmp-*"):
        if destination.exists():
            _carry_runs(tmp, destination)
        shutil.rmtree(tmp)


def _swap_into_place(tmp: Path, destination: Path) -> None:
    """Replace the destination by the finished temp folder, its runs/ moved over; the old one is removed
    only afterwards."""
    old = tmp.with_name(tmp.name.replace(".tmp-", ".old-", 1))
    if destination.exists():
        destination.rename(old)
        _carry_runs(old, tmp)
    tmp.rename(destination)
    if old.exists():
        shutil.rmtree(old)


def _code_version() -> str:
    """Package version, plus the git commit when the code runs from a checkout."""
    version = importlib_metadata.version("curate")
    source = Path(__file__).resolve().parent
    commit = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return (
        f"{version}+g{commit.stdout.strip()}" if commit.returncode == 0 and commit.stdout.strip() else version
    )


def _used_concepts(ws: Workspace, items: list[ExportItem]) -> dict[str, Concept]:
    known = ws.concepts()
    used = sorted({c for item in items for c in item.concepts})
    missing = [c for c in used if c not in known]
    if missing:
        raise CurateError(
            f"exported candidates use concept {missing[0]!r}, which is not in {ws.concepts_dir}"
        )
    return {c: known[c] for c in used}


class _Writer:
    """Fills one temp folder with the workspace's files through one Placer (copies, or read-only links)."""

    def __init__(self, ws: Workspace, root: Path, link: bool):
        self.ws = ws
        self.placer = Placer(root, link)
        self.place = self.placer.place

    def images(self, items: list[ExportItem], progress: ProgressFn) -> None:
        for done, item in enumerate(items, start=1):
            self.place(item.image, f"{DATA_DIR}/{item.file_name}", f"candidate {item.candidate_id}")
            progress("export images", done, len(items))

    def concepts(self, concepts: dict[str, Concept]) -> dict[str, Concept]:
        """Copy refs and masks under concepts/<id>/ with concept.json pointing at the copies (returned)."""
        placed = {}
        for concept in concepts.values():
            folder = f"concepts/{concept.concept_id}"
            moved: dict[str, list[str]] = {}
            for kind, paths in (("refs", concept.refs), ("masks", concept.masks)):
                moved[kind] = [f"{folder}/{kind}/{Path(p).name}" for p in paths]
                if len(set(moved[kind])) != len(paths):
                    raise CurateError(f"concept {concept.concept_id}: two {kind} share a file name")
                for source, target in zip(paths, moved[kind], strict=True):
                    self.place(self.ws.resolve(source), target, f"concept {concept.concept_id}")
            placed[concept.concept_id] = concept.model_copy(update=moved)
            atomic_write_json(
                self.placer.root / folder / "concept.json", placed[concept.concept_id].model_dump()
            )
        return placed


def _selection_rule(
    selection: Selection, include_near_duplicates: bool, max_per_composition: int | None
) -> str:
    rule = "accepted in review"
    if selection.min_quality is not None:
        rule += f", mean quality rank >= {selection.min_quality:g}"
    if selection.view:
        rule += f", from the saved FiftyOne view `{selection.view}`"
    if not include_near_duplicates:
        rule += f", near-duplicates left out ({len(selection.dropped_near_duplicates)})"
    if max_per_composition is not None:
        left_out = len(selection.capped)
        rule += f", the best {max_per_composition} per composition by quality, then CLIP-T ({left_out} cut)"
    return rule


@writes("export")
def export_mycanvas(
    ws: Workspace,
    name: str = "mycanvas",
    min_quality: int | None = None,
    progress: ProgressFn = no_progress,
    *,
    formats: str | Sequence[str] | None = None,
    view: str | None = None,
    include_near_duplicates: bool = False,
    shard_size: int = 1000,
    max_per_composition: int | None = None,
    class_images_from: Path | None = None,
    class_images: int = 0,
    link: bool = False,
) -> ExportReport:
    """Export the accepted candidates to `exports/<name>/`, replacing the previous export atomically.

    Args:
        ws: The workspace (its FiftyOne dataset holds the reviews).
        name: Folder name under exports/.
        min_quality: Lowest mean review rank (1-5); None means the config's `export.min_quality`.
        progress: Called as images are placed.
        formats: Names from CORE_FORMATS + EXTRA_FORMATS (comma-separated or a list); None means
            the config's `export.format`. The core folder is always written.
        view: A saved FiftyOne view to select from instead of the whole dataset.
        include_near_duplicates: Keep candidates the index marked as near-duplicates.
        shard_size: Samples per WebDataset shard.
        max_per_composition: At most this many images per concept set (best quality, then CLIP-T).
        class_images_from: A folder with one subfolder of prior-preservation images per class noun;
            they go to class_images/<class>/, beside the class images the previous export held, and
            each composition's class ("cat and dog") gets its own folder or its members' images.
        class_images: Images taken per class from `class_images_from`; 0 takes them all.
        link: Hard-link the workspace's files (read-only) instead of copying them.

    Raises:
        CurateError: bad name or format, no dataset, a missing candidate file or concept.
    """
    destination = export_destination(ws, name)
    chosen_formats = parse_formats(formats if formats is not None else ws.config.export.format)
    quality = min_quality if min_quality is not None else ws.config.export.min_quality
    selection = select_candidates(
        ws,
        quality,
        view=view,
        include_near_duplicates=include_near_duplicates,
        max_per_composition=max_per_composition,
    )
    targets = export_targets(ws)
    items = selection.items
    concepts, renamed = retoken(_used_concepts(ws, items), ws.config.export.token_format)
    items = [replace(item, caption=rewrite(item.caption, renamed)) for item in items]
    rows = [metadata_row(item, concepts) for item in items]
    identifiers = assign_identifiers(
        concepts,
        [text for item in items for text in (item.caption, item.background)]
        + [c.class_noun for c in concepts.values()],
    )
    per_concept = dict(sorted(Counter(c for item in items for c in item.concepts).items()))
    per_composition = dict(sorted(Counter(item.composition for item in items).items()))

    ws.exports_dir.mkdir(parents=True, exist_ok=True)
    _recover(destination)
    tmp = make_temp_dir(ws.exports_dir, f".{name}.tmp-")
    try:
        writer = _Writer(ws, tmp, link)
        writer.images(items, progress)
        placed = writer.concepts(concepts)
        keep_previous(destination, tmp)
        if class_images_from is not None:
            classes = {c.class_noun: [c.class_noun] for c in concepts.values()}
            for item in composition_folders(items).values():
                members = [concepts[c] for c in item.concepts]
                classes[composition_class_prompt(members)] = [c.class_noun for c in members]
            add_from_folder(Path(class_images_from), classes, class_images, writer.place)
        prior = class_counts(tmp)
        write_metadata(tmp, rows)
        lists = write_concepts_lists(tmp, items, concepts, identifiers)
        ordered = [concepts[c] for c in sorted(concepts)]
        commands = train_commands(ordered, identifiers, lists, prior)
        commands += write_trainer_formats(
            tmp, chosen_formats, items, placed, identifiers, class_prompts(lists, prior)
        )
        variables = {**VARIABLES, **(KOHYA_VARIABLE if "kohya" in chosen_formats else {})}
        atomic_write_text(tmp / COMMANDS_FILE, commands_json(commands, variables))
        shards = write_shards(tmp, items, rows, placed, shard_size) if "webdataset" in chosen_formats else []
        atomic_write_text(
            tmp / "README.md",
            render_card(
                name,
                per_concept,
                per_composition,
                exported=[(len(i.concepts), i.quality) for i in items if i.quality is not None],
                reviewed=selection.reviewed,
                selection_rule=_selection_rule(selection, include_near_duplicates, max_per_composition),
                formats=chosen_formats,
                targets=targets,
                consumers=card_section(commands, variables),
                tokens=[(c.concept_id, c.token, identifiers[c.concept_id]) for c in ordered],
                train_bytes=sum(p.stat().st_size for p in (tmp / "train").rglob("*") if p.is_file()),
            ),
        )
        atomic_write_json(
            tmp / MANIFEST_FILE,
            {
                "name": name,
                "formats": chosen_formats,
                "selection": {
                    "min_quality": quality,
                    "view": view,
                    "accepted_only": True,
                    "include_near_duplicates": include_near_duplicates,
                    "max_per_composition": max_per_composition,
                },
                "counts": {
                    "images": len(items),
                    "concepts": len(per_concept),
                    "compositions": len(per_composition),
                    "per_concept": per_concept,
                    "per_composition": per_composition,
                    "dropped_near_duplicates": len(selection.dropped_near_duplicates),
                    "skipped_stale": len(selection.skipped_stale),
                    "skipped_missing": len(selection.skipped_missing),
                    "capped": len(selection.capped),
                    "webdataset_shards": len(shards),
                    "class_images": prior,
                },
                "tokens": {cid: concepts[cid].token for cid in sorted(concepts)},
                "identifiers": identifiers,
                "token_format": ws.config.export.token_format,
                "config_hash": content_id(ws.config.model_dump()),
                "code_version": _code_version(),
                "candidate_ids": [item.candidate_id for item in items],
                "dropped_near_duplicates": selection.dropped_near_duplicates,
                "skipped_stale": selection.skipped_stale,
                "skipped_missing": selection.skipped_missing,
                "capped": selection.capped,
                "targets": targets,
            },
        )
        _swap_into_place(tmp, destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportReport(
        path=destination,
        formats=chosen_formats,
        n_images=len(items),
        per_concept=per_concept,
        per_composition=per_composition,
        min_quality=quality,
        dropped_near_duplicates=len(selection.dropped_near_duplicates),
        skipped_stale=len(selection.skipped_stale),
        skipped_missing=len(selection.skipped_missing),
        capped=len(selection.capped),
        files=writer.placer.summary(),
        shards=[destination / s.relative_to(tmp) for s in shards],
        class_images=prior,
    )

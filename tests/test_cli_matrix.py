"""Every command against every half-built workspace: never a traceback, always an answer a user can act on.

A new user runs commands in the wrong order, on the wrong folder, or on a workspace a killed run left
half-built. Each cell of this matrix runs one command in one state, in-process through the same Typer
app the `curate` script runs (so the suite pays the heavy imports once), and asserts what `main()` then
shows: exit code 0 with something printed, or a `CurateError` whose message is one line (the CLI prints
it as `error: ...` and exits 1). Any other exception is a traceback a user would have seen.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curation.core.config import IndexConfig, dump_config
from curation.core.errors import CurateError
from curation.core.records import Candidate
from curation.core.workspace import Workspace
from tests.fixtures.sample_concepts import small_config

CURATE = str(Path(sys.executable).with_name("curate"))


class Traceback(Exception):
    """What a user would have seen as a traceback: any exception other than CurateError."""


def invoke(*args: str) -> tuple[int, str]:
    """Run one command as `main()` would: (exit code, what the user saw); raises Traceback otherwise."""
    from curation.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=True)
    exc = result.exception
    if isinstance(exc, CurateError):
        return 1, f"error: {exc}"
    if exc is not None and not isinstance(exc, SystemExit):
        raise Traceback("".join(traceback.format_exception(exc)[-3:]))
    return result.exit_code, result.stdout + result.stderr


@pytest.fixture(scope="module", autouse=True)
def _libraries_log_to_the_real_streams() -> None:
    """FiftyOne binds a logging handler to sys.stdout on import; imported inside a CliRunner, it would
    write to that runner's closed buffer in later cells ("--- Logging error ---")."""
    import fiftyone  # noqa: F401


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    from tests.fixtures.sample_concepts import sample_photo

    path = tmp_path_factory.mktemp("matrix-photo") / "coffee.png"
    Image.fromarray(sample_photo("coffee", side=128)).save(path)
    return path


def _init(root: Path, tiny_clip: str) -> None:
    assert invoke("init", str(root))[0] == 0
    ws = Workspace.open(root)
    small = small_config()
    config = ws.config.model_copy(  # keeps what `init` wrote (e.g. the workspace's identity)
        update={
            "segment": small.segment,
            "layout": small.layout,
            "generate": small.generate,
            "index": IndexConfig(clip_model=tiny_clip, clip_pretrained="", batch_size=4),
        }
    )
    ws.config_path.write_text(dump_config(config))


def build_state(state: str, root: Path, concept_photos: dict[str, list[Path]], tiny_clip: str) -> Path:
    """The workspace (or non-workspace) a user could be holding at each step of the chain."""
    steps: list[Callable[[], object]] = []
    w = ["-w", str(root)]
    if state == "missing":
        return root
    if state == "file":
        root.write_text("not a folder\n")
        return root
    if state == "empty_dir":
        root.mkdir()
        return root
    if state == "broken_config":
        root.mkdir()
        (root / "curate.toml").write_text("[layout\nwidth = 'wide'\n\x00")
        return root
    _init(root, tiny_clip)
    order = ["fresh", "concepts", "planned", "generated", "indexed"]
    if state == "indexed_empty":
        steps = [lambda: invoke("index", *w)]
    else:
        reached = order[: order.index(state) + 1]
        if "concepts" in reached:
            steps += [
                lambda: invoke("concepts", "add", "cat", *map(str, concept_photos["cat"]), "--class", "cat", *w),
                lambda: invoke("concepts", "add", "mug", *map(str, concept_photos["mug"]), "--class", "mug", *w),
            ]
        if "planned" in reached:
            steps.append(lambda: invoke("plan", "--n", "3", *w))
        if "generated" in reached:
            steps.append(lambda: invoke("generate", "--workers", "1", *w))
        if "indexed" in reached:
            steps.append(lambda: invoke("index", *w))
    for step in steps:
        code, shown = step()
        assert code == 0, shown
    return root


def commands(root: Path, scratch: Path, photo: Path, state: str) -> list[list[str]]:
    """Read-only commands first, then the ones that change the workspace, as a user might try them."""
    w = ["-w", str(root)]
    export = root / "exports" / "mycanvas"
    cmds = [
        ["concepts", "list", *w],
        ["concepts", "show", "cat", *w],
        ["review", "status", *w],
        ["review", "pull", *w],
        ["review", "push", *w],
        ["review", "stop", *w],
        ["report", *w],
        ["status", *w],
        ["study", "pull", *w],
        ["study", "report", *w],
        ["models", "list", *w],
        ["models", "fetch", *w],
        ["study", "create", str(scratch / "no-evaluation"), *w],
        ["export", *w],
        ["export", "--name", "../../escape", *w],
        ["train", str(export), "-o", str(scratch / "train"), "--pretrained", str(scratch / "no-pipeline"),
         "--steps", "1"],
        ["evaluate", str(export), "--run", f"x={scratch / 'no-run'}", "-o", str(scratch / "eval")],
        ["concepts", "add", "mug2", str(photo), "--class", "mug", *w],
        ["concepts", "add", "ghost", str(scratch / "no-such-photo.png"), "--class", "mug", *w],
        ["plan", "--n", "2", *w],
        ["topup", "--max-new", "2", *w],
        ["generate", "--workers", "1", *w],
        ["index", *w],
        ["export", *w],
        ["init", str(root)],
    ]
    if state not in ("indexed", "indexed_empty"):
        cmds.insert(5, ["app", *w])  # with a dataset the App would start and wait for Ctrl-C
    return cmds


STATES = [
    "missing", "file", "empty_dir", "broken_config", "fresh", "concepts", "planned", "generated",
    "indexed_empty", "indexed",
]


@pytest.mark.parametrize("state", STATES)
def test_every_command_in_every_state(
    state: str,
    tmp_path: Path,
    concept_photos: dict[str, list[Path]],
    tiny_clip_name: str,
    photo: Path,
) -> None:
    root = build_state(state, tmp_path / "pets", concept_photos, tiny_clip_name)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    problems = []
    for args in commands(root, scratch, photo, state):
        cell = f"[{state}] curate {' '.join(args)}"
        try:
            code, shown = invoke(*args)
        except Traceback as exc:
            problems.append(f"{cell}: traceback\n{exc}")
            continue
        if code not in (0, 1):
            problems.append(f"{cell}: exit {code}\n{shown}")
        elif code == 0 and not shown.strip():
            problems.append(f"{cell}: exit 0 but nothing printed (say what was done or what to do next)")
        elif code == 1 and (shown.count("\n") or len(shown) > 400):
            problems.append(f"{cell}: the error is not one short line: {shown!r}")
        elif "Traceback" in shown:
            problems.append(f"{cell}: {shown}")
    assert not problems, "\n\n".join(problems)
    assert not (tmp_path / "escape").exists()


def test_half_built_errors_through_the_installed_script(tmp_path: Path) -> None:
    """The same answers from the real entry point: one `error:` line on stderr, exit 1."""
    env = {"COLUMNS": "100", "PATH": "/usr/bin:/bin", "FIFTYONE_DATABASE_VALIDATION": "false"}
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    result = subprocess.run([CURATE, "init", str(a_file)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    shutil.rmtree(tmp_path / "ws", ignore_errors=True)


def test_damaged_records_are_named_and_made_again(
    tmp_path: Path, concept_photos: dict[str, list[Path]], tiny_clip_name: str
) -> None:
    """Truncated or hand-broken files: each command names the file, and `generate` redoes what it owns."""
    root = build_state("generated", tmp_path / "pets", concept_photos, tiny_clip_name)
    w = ["-w", str(root)]
    records = sorted((root / "candidates").glob("*/*.json"))
    truncated, undecodable = records[0], records[1]
    truncated.write_text(truncated.read_text()[:40])
    undecodable.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    code, shown = invoke("index", *w)
    assert code == 0, shown
    assert "1 added" in shown and "2 failed" in shown and f"unreadable record candidates/{truncated.parent.name}" in shown

    code, shown = invoke("generate", "--workers", "1", *w)
    assert code == 0 and "generated 1" in shown, shown  # the truncated record; an existing PNG is not re-decoded
    assert Candidate.model_validate_json(truncated.read_text()).candidate_id == truncated.stem
    undecodable.with_suffix(".png").unlink()
    code, shown = invoke("generate", "--workers", "1", *w)
    assert code == 0 and "generated 1" in shown, shown
    code, shown = invoke("index", *w)
    assert code == 0 and "2 added" in shown and "failed" not in shown, shown
    code, shown = invoke("export", *w)
    assert code == 0 and "exported 0" in shown and "review with `curate review push`" in shown, shown

    plans = root / "plans" / "plans.jsonl"
    plans.write_text(plans.read_text() + "{not json\n")
    code, shown = invoke("generate", *w)
    assert code == 1 and f"{plans} line 4 is not a valid layout plan record" in shown, shown
    (root / "concepts" / "cat" / "concept.json").write_text("{}")
    code, shown = invoke("concepts", "list", *w)
    assert code == 1 and "concept.json is not a valid concept record (concept_id: Field required)" in shown, shown


def test_a_wrapped_multi_line_library_error_prints_as_one_line(tmp_path: Path) -> None:
    """torch's refusal of a broken checkpoint spans several lines; the user still sees one `error:` line."""
    root = tmp_path / "pets"
    assert subprocess.run([CURATE, "init", str(root)], capture_output=True, timeout=300).returncode == 0
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    config = root / "curate.toml"
    garbage = f'clip_pretrained = "{tmp_path / "garbage.pt"}"'
    config.write_text(config.read_text().replace('clip_pretrained = "openai"', garbage))
    from tests.fixtures.candidate_workspace import write_candidates

    write_candidates(Workspace.open(root), 2)
    result = subprocess.run([CURATE, "index", "-w", str(root)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: CLIP checkpoint"), result.stderr
    assert "weights_only" not in result.stderr and "Traceback" not in result.stderr


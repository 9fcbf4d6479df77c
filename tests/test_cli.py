"""The CLI as a user meets it: the installed `curate` script, its help screens and its one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CURATE = str(Path(sys.executable).with_name("curate"))
COMMANDS = [
    [],
    ["init"],
    ["concepts", "add"],
    ["concepts", "list"],
    ["concepts", "show"],
    ["plan"],
    ["generate"],
    ["index"],
    ["app"],
    ["review", "serve"],
    ["review", "push"],
    ["review", "pull"],
    ["export"],
    ["report"],
    ["train"],
    ["evaluate"],
    ["review", "status"],
    ["status"],
    ["topup"],
    ["study"],
    ["study", "create"],
    ["study", "pull"],
    ["study", "report"],
    ["demo"],
    ["models"],
    ["models", "list"],
    ["models", "fetch"],
]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CURATE, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "curate")
def test_help_fits_one_screen(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: curate" in result.stdout
    assert len(result.stdout.splitlines()) <= 60


def test_not_a_workspace_is_one_line_error(tmp_path: Path) -> None:
    result = run("plan", "-w", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and "not a curate workspace" in result.stderr


def test_config_typo_names_the_key(tmp_path: Path) -> None:
    assert run("init", str(tmp_path / "ws")).returncode == 0
    config = tmp_path / "ws" / "curate.toml"
    config.write_text(config.read_text().replace("[layout]", "[layout]\nmax_concept = 9", 1))
    result = run("plan", "-w", str(tmp_path / "ws"))
    assert result.returncode == 1
    assert "layout.max_concept" in result.stderr and result.stderr.count("\n") == 1


def test_init_keeps_an_edited_config(tmp_path: Path) -> None:
    run("init", str(tmp_path / "ws"))
    config = tmp_path / "ws" / "curate.toml"
    edited = config.read_text().replace("seed = 0", "seed = 7")
    config.write_text(edited)
    assert run("init", str(tmp_path / "ws")).returncode == 0
    assert config.read_text() == edited


def test_library_info_logs_are_not_echoed_twice(tmp_path: Path) -> None:
    """label_studio_sdk's converter calls logging.basicConfig(INFO) on import; the CLI's own config wins."""
    code = (
        "import logging, sys\n"
        "from curation import cli\n"
        f"sys.argv = ['curate', 'init', {str(tmp_path / 'ws')!r}]\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "import label_studio_sdk.converter.main\n"
        "import fiftyone\n"  # sets its logger to INFO with a handler of its own: one echo is enough
        "logging.getLogger('fiftyone.brain.visualization').info('hello-info')\n"
        "logging.getLogger('curation.scores.clip').warning('hello-warning')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "INFO: hello-info" not in result.stderr and "WARNING: hello-warning" in result.stderr
    assert (result.stdout + result.stderr).count("hello-info") <= 1



def test_a_page_larger_than_the_config_allows_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """`--batch` and `review.candidates_per_page` share one bound: a flag cannot push pages the config refuses."""
    from curation.core.config import MAX_CANDIDATES_PER_PAGE, ReviewConfig

    too_many = MAX_CANDIDATES_PER_PAGE + 1
    result = run("review", "push", "--batch", str(too_many), "-w", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "--batch" in result.stderr
    assert str(MAX_CANDIDATES_PER_PAGE) in result.stderr
    with pytest.raises(ValueError, match=str(MAX_CANDIDATES_PER_PAGE)):
        ReviewConfig(candidates_per_page=too_many)

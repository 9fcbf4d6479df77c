"""Progress reporting without printing: library code calls a callback, the CLI draws the bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

ProgressFn = Callable[[str, int, int], None]
"""Called as progress(stage, done, total) whenever a unit of work finishes."""


def no_progress(stage: str, done: int, total: int) -> None:
    """The default when nobody is watching."""


@contextmanager
def progress_bar() -> Iterator[ProgressFn]:
    """A rich progress bar with one line per stage, for the CLI (writes to stderr)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    tasks: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        if not tasks:  # drawn on first use, so a step with nothing to report leaves stderr empty
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    try:
        yield report
    finally:
        if tasks:
            bar.stop()

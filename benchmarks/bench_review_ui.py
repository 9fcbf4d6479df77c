"""Keyboard-only review of N tasks in the real labeling page (headless Chromium): UI latency per decision.

Each decision is the keys an annotator presses (accept: `a` and three `q` stars; reject: `r` and
one reason `x`), Ctrl+Enter, and the wait until the next task's caption is shown and all its images
have loaded. That is the floor the page puts under a human's one-decision-a-second pace, not human
time. Mouse events reaching the page are counted by a listener (goal: 0), and a pull afterwards
checks every decision arrived.

Where the time goes, from the page's network log per decision: the keys sent (Playwright's
round trips) -> the annotation POST answered (Label Studio saves it) -> the `next_task` action answered (the next task picked) -> the
caption shown (the page rendered it) -> every image loaded. `--journal` alternates SQLite's journal
mode of the server's database between blocks of two decisions (`delete`, Label Studio's default,
and `wal`), so both are measured side by side under the same machine load.

    .venv/bin/python benchmarks/bench_review_ui.py            # N=20, 2 concepts, 1280x800
    .venv/bin/python benchmarks/bench_review_ui.py --n 50 --concepts 5 --width 900 --height 700
    .venv/bin/python benchmarks/bench_review_ui.py --n 24 --journal
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COUNT_MOUSE = """() => {
  window.__mouse = 0;
  for (const kind of ['mousedown', 'click', 'wheel', 'contextmenu'])
    document.addEventListener(kind, e => { if (e.isTrusted) window.__mouse++; }, true);
}"""
SHOWN = "(caption) => document.body.innerText.includes(caption)"
NEXT_LOADED = """(caption) => document.body.innerText.includes(caption)
  && Array.from(document.images).filter(i => i.src).every(i => i.complete && i.naturalWidth > 0)"""
PHASES = ("keys sent", "saved", "next picked", "caption shown", "images loaded")


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def set_journal(database: Path, mode: str) -> None:
    """Switch the server's SQLite journal mode; it applies to the server's next connections."""
    for _ in range(100):
        connection = sqlite3.connect(database, timeout=10)
        try:
            if connection.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode:
                return
        except sqlite3.OperationalError:  # a request of the server holds the database
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"could not switch {database} to journal_mode={mode}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20, help="decisions to time")
    parser.add_argument("--concepts", type=int, default=2, choices=range(1, 6))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--journal", action="store_true", help="alternate SQLite journal modes delete/wal")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from curation.core import dataset as ds
    from curation.core.config import CurateConfig
    from curation.review.pull import pull
    from curation.review.push import push
    from curation.review.server import serve, stop
    from tests.fixtures.labelstudio import DB_FILE, seeded_home
    from tests.test_review_browser import CHROMIUM, FLAGS
    from tests.test_review_layout import build_scene, open_labeling

    config = CurateConfig()
    config.index.dataset_name = f"bench-review-ui-{time.time_ns()}"
    ws = seeded_home(Path(tempfile.mkdtemp(prefix="bench-review-ui-")) / "ws", config)
    database = ws.review_dir / "labelstudio-data" / DB_FILE
    t0 = time.perf_counter()
    server = serve(ws, port=None)
    print(f"Label Studio started in {time.perf_counter() - t0:.1f} s (not counted)")
    try:
        build_scene(ws, args.concepts, n_candidates=args.n + 1)  # the last one is where the clock stops
        project_id = push(ws, order="view").project_id
        runs: list[tuple[str, str, float, dict[str, float]]] = []  # (decision, journal, total, phases)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = open_labeling(browser, server, project_id, args.width, args.height)
            page.evaluate(COUNT_MOUSE)
            answered: dict[str, float] = {}

            def finished(request: object) -> None:
                url = request.url  # type: ignore[attr-defined]
                for name, part in (("saved", "/annotations"), ("next picked", "id=next_task")):
                    if part in url and request.method == "POST":  # type: ignore[attr-defined]
                        answered[name] = time.perf_counter()

            page.on("requestfinished", finished)
            for i in range(args.n):
                journal = ("delete", "wal")[(i // 2) % 2] if args.journal else "delete"
                if args.journal:
                    set_journal(database, journal)
                page.wait_for_function(NEXT_LOADED, arg=f"scene {i}", timeout=60_000)
                decision = ds.ACCEPT if i % 2 == 0 else ds.REJECT
                answered.clear()
                start = time.perf_counter()
                for key in ("a", "q", "q", "q") if decision == ds.ACCEPT else ("r", "x"):
                    page.keyboard.press(key)
                page.keyboard.press("Control+Enter")
                sent = time.perf_counter()
                page.wait_for_function(SHOWN, arg=f"scene {i + 1}", timeout=60_000, polling=10)
                shown = time.perf_counter()
                page.wait_for_function(NEXT_LOADED, arg=f"scene {i + 1}", timeout=60_000, polling=10)
                end = time.perf_counter()
                marks = {"keys sent": sent, **answered, "caption shown": shown, "images loaded": end}
                steps, previous = {}, start
                for name in PHASES:  # each phase from the end of the one before
                    steps[name] = max(marks.get(name, previous) - previous, 0.0)
                    previous = max(previous, marks.get(name, previous))
                runs.append((decision, journal, end - start, steps))
            mouse = page.evaluate("window.__mouse")
            browser.close()
        report = pull(ws)
        assert report.annotated == args.n, report.summary()
        assert (report.accepted, report.rejected) == (
            sum(r[0] == ds.ACCEPT for r in runs),
            sum(r[0] == ds.REJECT for r in runs),
        ), report.summary()
        print(f"{args.n} decisions, {args.concepts} concepts, {args.width}x{args.height}, keyboard only")
        groups = [(name, [r for r in runs if r[0] == name]) for name in (ds.ACCEPT, ds.REJECT)]
        groups.append(("all", runs))
        if args.journal:
            groups += [(f"journal={mode}", [r for r in runs if r[1] == mode]) for mode in ("delete", "wal")]
        for name, chosen in groups:
            totals = [r[2] for r in chosen]
            phases = "  ".join(
                f"{phase} {statistics.median(r[3][phase] for r in chosen):.3f}" for phase in PHASES
            )
            print(
                f"  {name:15s} median {statistics.median(totals):.3f} s  p90 {p90(totals):.3f} s  (n={len(totals)})"
                f"   median phases, s: {phases}"
            )
        if args.journal:
            delete, wal = ([r[2] for r in runs if r[1] == mode] for mode in ("delete", "wal"))
            print(f"  wal / delete median: {statistics.median(wal) / statistics.median(delete):.2f}")
        print(f"  mouse actions: {mouse}   (pulled: {report.summary()})")
    finally:
        stop(ws)  # first: the server outlives this process otherwise
        import fiftyone as fo

        if fo.dataset_exists(config.index.dataset_name):
            fo.delete_dataset(config.index.dataset_name)


if __name__ == "__main__":
    main()

"""Keyboard-only review of N tasks in the real labeling page (headless Chromium): UI latency per decision.

Each decision is the keys an annotator presses (accept: `a` and three `q` stars; reject: `r` and
one reason `x`), Ctrl+Enter, and the wait until the next task's caption is shown and all its images
have loaded. That is the floor the page puts under a human's one-decision-a-second pace, not human
time. Mouse events reaching the page are counted by a listener (goal: 0), and a pull afterwards
checks every decision arrived.

    .venv/bin/python benchmarks/bench_review_ui.py            # N=20, 2 concepts, 1280x800
    .venv/bin/python benchmarks/bench_review_ui.py --n 50 --concepts 5 --width 900 --height 700
"""

from __future__ import annotations

import argparse
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
NEXT_LOADED = """(caption) => document.body.innerText.includes(caption)
  && Array.from(document.images).filter(i => i.src).every(i => i.complete && i.naturalWidth > 0)"""


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20, help="decisions to time")
    parser.add_argument("--concepts", type=int, default=2, choices=range(1, 6))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from curation import dataset as ds
    from curation.config import CurateConfig
    from curation.review import push, serve, stop
    from curation.review_pull import pull
    from tests.fixtures.labelstudio import seeded_home
    from tests.test_review_browser import CHROMIUM, FLAGS
    from tests.test_review_layout import build_scene, open_labeling

    config = CurateConfig()
    config.index.dataset_name = f"bench-review-ui-{time.time_ns()}"
    ws = seeded_home(Path(tempfile.mkdtemp(prefix="bench-review-ui-")) / "ws", config)
    t0 = time.perf_counter()
    server = serve(ws, port=None)
    print(f"Label Studio started in {time.perf_counter() - t0:.1f} s (not counted)")
    try:
        build_scene(ws, args.concepts, n_candidates=args.n + 1)  # the last one is where the clock stops
        project_id = push(ws, order="view").project_id
        times: dict[str, list[float]] = {ds.ACCEPT: [], ds.REJECT: []}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = open_labeling(browser, server, project_id, args.width, args.height)
            page.evaluate(COUNT_MOUSE)
            for i in range(args.n):
                page.wait_for_function(NEXT_LOADED, arg=f"scene {i}", timeout=60_000)
                decision = ds.ACCEPT if i % 2 == 0 else ds.REJECT
                start = time.perf_counter()
                for key in ("a", "q", "q", "q") if decision == ds.ACCEPT else ("r", "x"):
                    page.keyboard.press(key)
                page.keyboard.press("Control+Enter")
                page.wait_for_function(NEXT_LOADED, arg=f"scene {i + 1}", timeout=60_000)
                times[decision].append(time.perf_counter() - start)
            mouse = page.evaluate("window.__mouse")
            browser.close()
        report = pull(ws)
        assert report.annotated == args.n, report.summary()
        assert (report.accepted, report.rejected) == (len(times[ds.ACCEPT]), len(times[ds.REJECT])), (
            report.summary()
        )
        every = times[ds.ACCEPT] + times[ds.REJECT]
        print(f"{args.n} decisions, {args.concepts} concepts, {args.width}x{args.height}, keyboard only")
        for name, values in ((ds.ACCEPT, times[ds.ACCEPT]), (ds.REJECT, times[ds.REJECT]), ("all", every)):
            print(
                f"  {name:7s} median {statistics.median(values):.3f} s  p90 {p90(values):.3f} s  (n={len(values)})"
            )
        print(f"  mouse actions: {mouse}   (pulled: {report.summary()})")
    finally:
        import fiftyone as fo

        if fo.dataset_exists(config.index.dataset_name):
            fo.delete_dataset(config.index.dataset_name)
        stop(ws)


if __name__ == "__main__":
    main()

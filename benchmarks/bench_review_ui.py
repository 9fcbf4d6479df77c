"""Keyboard-only review in the real labeling page (headless Chromium): UI latency per decision, pages of
1 candidate and pages of K side by side (same server, same browser, same kind of candidates).

A decision is the keys an annotator presses (accept: `a` and `4` stars; reject: `r` and one reason
`x`), then what makes the next candidate ready: on a page of one, Ctrl+Enter and the wait until the
next task's caption is shown and all its images loaded (Label Studio saves, picks the next task and
rebuilds its editor); on a page of K, Ctrl+Right and the wait until the pager shows the next candidate
and its image loaded, the page's last candidate paying Ctrl+Enter and the next page. "wait" is the
part after the last key was sent: what the annotator sees the page take. That is the floor the page
puts under a human's pace, not human time. For K > 1 the waits are also split into those within a
page and the page turns (one decision in K pays Label Studio's save / next task / editor chain). Mouse events reaching the page are counted by a listener
(goal: 0), and a pull afterwards checks every decision arrived.

    .venv/bin/python benchmarks/bench_review_ui.py            # 16 decisions each, K = 8, 2 concepts, 1280x800
    .venv/bin/python benchmarks/bench_review_ui.py --n 32 --k 8 --concepts 5 --width 900 --height 700
"""

from __future__ import annotations

import argparse
import os
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
LOADED = "Array.from(document.images).filter(i => i.src).every(i => i.complete && i.naturalWidth > 0)"
# the page showing `scene` (a caption) with `at` in its pager ("3 of 8"), every image loaded
READY = f"""([scene, at]) => new RegExp(scene + "\\\\b").test(document.body.innerText)
  && (!at || document.body.innerText.includes(at)) && {LOADED}"""


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def decide(page: object, accept: bool) -> None:
    for key in ("a", "4") if accept else ("r", "x"):
        page.keyboard.press(key)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, default=16, help="decisions to time for each page size (a multiple of --k)"
    )
    parser.add_argument("--k", type=int, default=8, help="candidates per batch page")
    parser.add_argument("--concepts", type=int, default=2, choices=range(1, 6))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()
    if args.n % args.k:
        parser.error("--n must be a multiple of --k")

    import fiftyone as fo
    from fiftyone import ViewField as F
    from playwright.sync_api import sync_playwright

    from curation.core import dataset as ds
    from curation.core.config import CurateConfig
    from curation.review.pull import pull
    from curation.review.push import push
    from curation.review.server import serve, stop
    from tests.fixtures.labelstudio import seeded_home
    from tests.test_review_browser import CHROMIUM, FLAGS
    from tests.test_review_layout import build_scene, open_labeling

    config = CurateConfig()
    config.index.dataset_name = f"bench-review-ui-{time.time_ns()}"
    ws = seeded_home(Path(tempfile.mkdtemp(prefix="bench-review-ui-")) / "ws", config)
    t0 = time.perf_counter()
    server = serve(ws, port=None)
    print(f"Label Studio started in {time.perf_counter() - t0:.1f} s (not counted); load {os.getloadavg()}")
    try:
        singles, batched = args.n + 1, args.n + args.k  # one more task / page: where the clock stops
        build_scene(ws, args.concepts, n_candidates=singles + batched)
        dataset = ds.open_dataset(ws)
        ids = [f"cand{i:03d}" for i in range(singles + batched)]
        dataset.save_view("single", dataset.match(F(ds.CANDIDATE_ID).is_in(ids[:singles])))
        dataset.save_view("batched", dataset.match(F(ds.CANDIDATE_ID).is_in(ids[singles:])))
        project_id = push(ws, view="single", order="view", per_page=1).project_id
        push(ws, view="batched", order="view", per_page=args.k)  # the same project: pages of both sizes
        runs: dict[int, list[tuple[bool, float, float, bool]]] = {
            1: [],
            args.k: [],
        }  # (accept, total, wait, turn)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = open_labeling(browser, server, project_id, args.width, args.height)
            page.evaluate(COUNT_MOUSE)
            for i in range(args.n):  # pages of one
                page.wait_for_function(READY, arg=[f"scene {i}", None], timeout=60_000)
                start = time.perf_counter()
                decide(page, i % 2 == 0)
                page.keyboard.press("Control+Enter")
                sent = time.perf_counter()
                page.wait_for_function(READY, arg=[f"scene {i + 1}", None], timeout=60_000, polling=10)
                end = time.perf_counter()
                runs[1].append((i % 2 == 0, end - start, end - sent, True))
            page.keyboard.press("Control+Space")  # skip the task where the clock stopped
            for first in range(singles, singles + args.n, args.k):  # pages of K
                for slot in range(args.k):
                    at = f"{slot + 1} of {args.k}"
                    page.wait_for_function(READY, arg=[f"scene {first}", at], timeout=60_000, polling=10)
                    start = time.perf_counter()
                    decide(page, slot % 2 == 0)
                    last = slot == args.k - 1
                    page.keyboard.press("Control+Enter" if last else "Control+ArrowRight")
                    sent = time.perf_counter()
                    ready = (
                        [f"scene {first + args.k}", f"1 of {args.k}"]
                        if last
                        else [f"scene {first}", f"{slot + 2} of {args.k}"]
                    )
                    page.wait_for_function(READY, arg=ready, timeout=60_000, polling=10)
                    end = time.perf_counter()
                    runs[args.k].append((slot % 2 == 0, end - start, end - sent, last))
            mouse = page.evaluate("window.__mouse")
            browser.close()
        report = pull(ws)
        accepted = sum(r[0] for chosen in runs.values() for r in chosen)
        assert (report.accepted, report.rejected) == (accepted, 2 * args.n - accepted), report.summary()
        print(
            f"{args.n} decisions per page size, {args.concepts} concepts, {args.width}x{args.height}, keyboard only;"
            f" load after: {os.getloadavg()}"
        )
        for k, chosen in runs.items():
            totals, waits = [r[1] for r in chosen], [r[2] for r in chosen]
            print(
                f"  K={k:<3d} per decision: median {statistics.median(totals):.3f} s  p90 {p90(totals):.3f} s"
                f"  mean {statistics.mean(totals):.3f} s   wait after the keys: median {statistics.median(waits):.3f}"
                f" p90 {p90(waits):.3f} mean {statistics.mean(waits):.3f} s"
            )
        (one, many) = (runs[1], runs[args.k])
        print(
            f"  K={args.k} / K=1: mean per decision {statistics.mean(r[1] for r in many) / statistics.mean(r[1] for r in one):.2f},"
            f" mean wait {statistics.mean(r[2] for r in many) / statistics.mean(r[2] for r in one):.2f},"
            f" p90 {p90([r[1] for r in many]) / p90([r[1] for r in one]):.2f}"
        )
        within = [r[2] for r in many if not r[3]]
        turns = [r[2] for r in many if r[3]]
        if within:  # --k 1 has no page turn to tell apart
            print(
                f"  K={args.k} wait, within a page ({len(within)}): median {statistics.median(within):.3f}"
                f" p90 {p90(within):.3f} s; page turn, the page's last decision ({len(turns)}: save, next task,"
                f" editor): median {statistics.median(turns):.3f} s, the same chain K=1 pays every decision"
            )
        print(f"  mouse actions: {mouse}   (pulled: {report.summary()})")
    finally:
        stop(ws)  # first: the server outlives this process otherwise
        if fo.dataset_exists(config.index.dataset_name):
            fo.delete_dataset(config.index.dataset_name)


if __name__ == "__main__":
    main()

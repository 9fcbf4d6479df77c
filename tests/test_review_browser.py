"""The real labeling page in headless Chromium: keyboard-only review, then `pull` sees it."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from curation.core import dataset as ds
from curation.core.workspace import Workspace
from curation.review.pull import pull
from curation.review.push import push
from curation.review.server import ServerInfo

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def logged_in_page(browser: Any, server: ServerInfo, width: int, height: int) -> Any:
    """A page of the given window size, logged in as the server's admin."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(f"{server.url}/user/login/")
    page.fill("input[name=email]", server.email)
    page.fill("input[name=password]", server.password)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: "/user/login" not in url, timeout=60_000)
    return page


IMAGE_STATE = """() => ({
    images: Array.from(document.images).map(
        i => [i.src.slice(-90), i.complete, i.naturalWidth, i.closest('.lsf-image') ? 'labeling' : 'other']),
    shown_errors: Array.from(document.querySelectorAll('[data-testid^="error:"]')).map(e => e.innerText.slice(0, 200)),
    failed: performance.getEntriesByType('resource').filter(r => r.responseStatus >= 400)
        .map(r => [r.name.slice(-90), r.responseStatus]),
})"""


def wait_for_images(
    page: Any, form: Any, condition: str, timeout_ms: int = 60_000, attempts: int = 3
) -> None:
    """Wait until `form` (a locator) shows and the page's images satisfy `condition` (a JavaScript function).

    Under CPU load Label Studio 1.23's editor now and then shows "There was an issue loading URL"
    in place of an image the server answered with 200 (every request's resource timing said 200;
    its editor downloads each image by XHR, then an <img> whose error handler shows the box, and a
    task opened from the URL builds the editor twice). With two busy loops on this machine's two
    cores it hit the three-image study page in about one load in three. A box that stays for 5 s,
    or an image whose request failed, gets the page opened again, as an annotator would reload it,
    and its form is waited for again. The last failure, or a slow load with nothing broken, fails
    with every image's state, the editor's error boxes and the failed requests.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    # "ok" once the condition has held for 2 s (the editor may still be rebuilt right after its
    # first build loaded), "error" once an error box has stayed for 5 s
    settled = f"""() => {{
        const now = Date.now();
        if (({condition})()) {{
            window.curateErrorSince = undefined;
            window.curateOkSince ??= now;
            return now - window.curateOkSince > 2000 && "ok";
        }}
        window.curateOkSince = undefined;
        if (!document.querySelector('[data-testid^="error:"]')) {{ window.curateErrorSince = undefined; return false; }}
        window.curateErrorSince ??= now;
        return now - window.curateErrorSince > 5000 && "error";
    }}"""
    for attempt in range(1, attempts + 1):
        expect(form).to_be_visible(timeout=90_000)
        try:
            if page.wait_for_function(settled, timeout=timeout_ms, polling=250).json_value() == "ok":
                return
        except PlaywrightTimeout:
            pass
        state = page.evaluate(IMAGE_STATE)
        broken = [src for src, complete, width, _ in state["images"] if src and complete and width == 0]
        if attempt == attempts or not (broken or state["shown_errors"]):
            raise AssertionError(f"the page's images never loaded (attempt {attempt}): {state}")
        page.reload()


def save_annotation(page: Any, submit: Callable[[], None]) -> None:
    """Submit and wait for the annotation's POST to be answered, successfully: a fixed pause is overrun
    on a loaded machine, and closing the page first would abort the request."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and re.search(r"/api/tasks/\d+/annotations", r.url) is not None,
        timeout=60_000,
    ) as saved:
        submit()
    assert saved.value.ok, f"saving the annotation answered {saved.value.status}"


COUNT_MOUSE = """() => {
  window.__mouse = 0;
  for (const kind of ['mousedown', 'click', 'wheel', 'contextmenu'])
    document.addEventListener(kind, e => { if (e.isTrusted) window.__mouse++; }, true);
}"""
PAGE_STATE = """() => ({
  at: (document.body.innerText.match(/(\\d+) of (\\d+)/) || [])[0],
  checked: [...new Set(Array.from(document.querySelectorAll('input:checked'))
    .map(i => i.closest('label') ? i.closest('label').innerText.replace(/\\[.*\\]/, '').trim() : '?'))],
})"""


def shows(page: Any, checked: list[str], timeout_ms: int = 10_000) -> None:
    """Wait until the page shows exactly these answers for the candidate in focus (the editor
    re-renders a moment after the keys under load); fail with what it shows instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            f"() => JSON.stringify(({PAGE_STATE})().checked) === {json.dumps(json.dumps(checked, separators=(',', ':')))}",
            timeout=timeout_ms,
        )
    except PlaywrightTimeout:
        raise AssertionError(f"the page shows {page.evaluate(PAGE_STATE)}, not {checked}") from None


@pytest.mark.timeout(420)
def test_batch_pages_keyboard_only_and_an_invalid_slot(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo
) -> None:
    """Two pages of 8 candidates of one composition: the first reviewed in the real page with keys
    only (repeated keys idempotent, an incomplete page refused with a warning Esc closes), the second
    answered through the API with one slot the page could not produce: the pull counts 15 of 16."""
    from playwright.sync_api import sync_playwright

    from curation.review.client import connect
    from curation.review.pull import annotation_result
    from tests.test_review_layout import build_scene, open_labeling

    ws = labelstudio_workspace()
    build_scene(ws, 2, n_candidates=16)
    report = push(ws, order="view", per_page=8)
    assert report.pushed == 16
    client = connect(ws).client
    pages = sorted(client.tasks.list(project=report.project_id), key=lambda t: t.id)
    assert [len(t.data["candidate_ids"]) for t in pages] == [8, 8]
    first, second = ([str(c) for c in t.data["candidate_ids"]] for t in pages)
    assert sorted(first + second) == [f"cand{i:03d}" for i in range(16)]
    # the second page through the API: slot 3 with 9 stars (no such key), the others valid
    result = []
    for slot in range(8):
        answers = annotation_result("accept" if slot % 2 == 0 else "reject", 9 if slot == 3 else 4)
        result += [{**a, "item_index": slot} for a in answers]
    client.annotations.create(id=pages[1].id, result=result)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = open_labeling(browser, labelstudio, report.project_id, 1280, 800)
        page.evaluate(COUNT_MOUSE)
        try:
            assert page.evaluate(PAGE_STATE)["at"] == "1 of 8"
            # the image takes the room of Label Studio's (hidden) side panels
            assert (
                page.locator(".lsf-sidepanels__wrapper").count() == 0
                or not page.locator(".lsf-sidepanels__wrapper").first.is_visible()
            )
            shown = page.locator('img[src^="blob:"]').first.bounding_box() or {}
            assert shown.get("height", 0) >= 550, shown
            # the strip is one image of the 8 previews (one request per page turn, not 8), drawn whole
            strip = page.locator('img[alt="candidates 1 to 8"]')
            assert strip.count() == 1 and strip.evaluate("i => i.complete && i.naturalWidth") == 8 * 96 - 8
            assert page.locator('img[src*="review/thumbs/cand"]').count() == 0
            for slot in range(8):
                if slot:
                    page.keyboard.press("Control+ArrowRight")
                    page.wait_for_function(f"() => document.body.innerText.includes('{slot + 1} of 8')")
                if slot == 7:
                    break  # left without a decision: the submit below is refused
                keys = ("a", "a", "5", "5", "4", "4") if slot % 2 == 0 else ("r", "r", "x")
                for key in keys:
                    page.keyboard.press(key)
                expected = ["accept", "4"] if slot % 2 == 0 else ["reject", "artifacts"]
                shows(page, expected)  # a repeated key never clears
            page.keyboard.press("Control+Enter")
            warning = page.get_by_text("has no decision")
            warning.wait_for(state="visible", timeout=10_000)
            page.keyboard.press("Escape")  # the warning closes from the keyboard, nothing stays over the page
            warning.wait_for(state="hidden", timeout=10_000)
            assert page.evaluate(PAGE_STATE)["at"] == "8 of 8"
            page.keyboard.press("r")
            page.keyboard.press("Control+ArrowLeft")  # back to a decided candidate: its own answers show
            page.wait_for_function("() => document.body.innerText.includes('7 of 8')")
            shows(page, ["accept", "4"])  # the answers shown again are selected once: the page submits
            page.screenshot(path=str(ws.review_dir / "batch-page.png"))
            save_annotation(page, partial(page.keyboard.press, "Control+Enter"))
            assert page.evaluate("window.__mouse") == 0
        finally:
            page.screenshot(path=str(ws.review_dir / "batch-page-end.png"))
            browser.close()

    pulled = pull(ws)
    assert (pulled.accepted, pulled.rejected) == (4 + 4, 4 + 3), pulled.summary()
    assert pulled.invalid_count == 1, pulled.summary()
    assert (
        pulled.invalid[0].startswith(f"task {pages[1].id} ({second[3]}) ") and "rating 9" in pulled.invalid[0]
    )
    dataset = ds.open_dataset(ws)
    reviews = dict(zip(*dataset.values([ds.CANDIDATE_ID, ds.REVIEW_DECISION]), strict=True))
    quality = dict(zip(*dataset.values([ds.CANDIDATE_ID, ds.REVIEW_QUALITY]), strict=True))
    assert [reviews[c] for c in first] == ["accept", "reject"] * 3 + ["accept", "reject"]
    assert [quality[c] for c in first[:7:2]] == [4.0] * 4
    assert reviews[second[3]] is None  # the invalid slot is not counted; its neighbours are
    assert [reviews[c] for c in second if c != second[3]] == [
        "accept",
        "reject",
        "accept",
        "accept",
        "reject",
        "accept",
        "reject",
    ]

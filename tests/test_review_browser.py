"""The real labeling page in headless Chromium: keyboard-only review, then `pull` sees it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from curation.core import dataset as ds
from curation.core.workspace import Workspace
from curation.review.pull import pull
from curation.review.push import push
from curation.review.server import ServerInfo
from tests.test_review import build_candidates

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


def wait_for_images(page: Any, form: Any, condition: str, timeout_ms: int = 60_000, attempts: int = 3) -> None:
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


@pytest.mark.timeout(300)
def test_keyboard_review_in_the_browser_reaches_fiftyone(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo
) -> None:
    from playwright.sync_api import sync_playwright

    ws = labelstudio_workspace()
    build_candidates(ws, 2)
    project_id = push(ws, order="view").project_id
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = logged_in_page(browser, labelstudio, 1280, 900)
        page.goto(f"{labelstudio.url}/projects/{project_id}/data?labeling=1")
        submit = page.get_by_test_id("bottombar-submit-button")
        # the candidate (64 px) and the reference strip (48 px) load through local-files storage
        wait_for_images(
            page,
            submit,
            "() => [64, 48].every(w => Array.from(document.images).some("
            "i => i.complete && i.naturalWidth === w))",
        )
        page.screenshot(path=str(ws.review_dir / "labeling-page.png"))
        # the decision controls fit in the 900 px window without scrolling
        reject = page.locator("label", has_text="reject").first
        box = reject.bounding_box()
        assert box is not None and box["y"] + box["height"] <= 900
        page.locator("body").click(position={"x": 5, "y": 5})  # focus the page, not a text box
        page.keyboard.press("a")
        for _ in range(4):
            page.keyboard.press("q")
        try:
            save_annotation(page, submit.click)
        finally:
            page.screenshot(path=str(ws.review_dir / "labeling-page-after.png"))
            browser.close()
    report = pull(ws)
    assert (report.annotated, report.accepted) == (1, 1)
    sample = ds.open_dataset(ws).match({ds.CANDIDATE_ID: "cand000"}).first()
    assert sample[ds.REVIEW_DECISION] == "accept"
    assert sample[ds.REVIEW_QUALITY] == 4.0

"""The real labeling page in headless Chromium: keyboard-only review, then `pull` sees it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest

from curation import dataset as ds
from curation.labelstudio_server import ServerInfo
from curation.review import push
from curation.review_pull import pull
from curation.workspace import Workspace
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


@pytest.mark.timeout(300)
def test_keyboard_review_in_the_browser_reaches_fiftyone(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo
) -> None:
    from playwright.sync_api import expect, sync_playwright

    ws = labelstudio_workspace()
    build_candidates(ws, 2)
    project_id = push(ws, order="view").project_id
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = logged_in_page(browser, labelstudio, 1280, 900)
        page.goto(f"{labelstudio.url}/projects/{project_id}/data?labeling=1")
        submit = page.get_by_test_id("bottombar-submit-button")
        expect(submit).to_be_visible(timeout=90_000)
        # the candidate (64 px) and the reference strip (48 px) load through local-files storage
        page.wait_for_function(
            "() => [64, 48].every(w => Array.from(document.images).some("
            "i => i.complete && i.naturalWidth === w))",
            timeout=60_000,
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
            submit.click()
            page.wait_for_timeout(2000)
        finally:
            page.screenshot(path=str(ws.review_dir / "labeling-page-after.png"))
            browser.close()
    report = pull(ws)
    assert (report.annotated, report.accepted) == (1, 1)
    sample = ds.open_dataset(ws).match({ds.CANDIDATE_ID: "cand000"}).first()
    assert sample[ds.REVIEW_DECISION] == "accept"
    assert sample[ds.REVIEW_QUALITY] == 4.0

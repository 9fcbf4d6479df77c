"""The study's labeling page in headless Chromium: blind shuffled images, scored with the keyboard, then pulled."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from curation.core.workspace import Workspace
from curation.review.client import connect
from curation.review.server import ServerInfo
from curation.study.create import create
from curation.study.pull import pull
from curation.study.rating_page import TASK_KEY
from curation.study.studies import study_dir
from tests.test_review_browser import CHROMIUM, FLAGS, logged_in_page, save_annotation, wait_for_images
from tests.test_study import CONFIGS, add_concepts, write_evaluation


@pytest.mark.timeout(300)
def test_study_page_is_blind_shuffled_and_keyboard_scored(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    ws = labelstudio_workspace()
    add_concepts(ws)
    report = create(ws, write_evaluation(tmp_path / "eval-out"), raters=1, per_bucket=1)
    mapping = json.loads((study_dir(ws, "eval-out") / "mapping.json").read_text())
    tasks = list(connect(ws).client.tasks.list(project=report.project_id, fields="all"))
    # a task whose images are not in the configurations' sorted order, so the page must show the shuffle
    task = next(t for t in tasks if mapping[t.data[TASK_KEY]]["slots"] != sorted(CONFIGS))
    slots = mapping[task.data[TASK_KEY]]["slots"]
    typed = {"alignment": [7, 3, 10], "fidelity": [2, 9, 5]}  # per slot, as the rater sees them
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = logged_in_page(browser, labelstudio, 1400, 1000)
        try:
            page.goto(f"{labelstudio.url}/projects/{report.project_id}/data?task={task.id}")
            first = page.locator("input[name=alignment_1]")
            # the three 24 px study images (the labeling area's, not the task table's thumbnails) and the
            # 20 px reference photos load through local-files storage
            wait_for_images(
                page,
                first,
                "() => Array.from(document.querySelectorAll('.lsf-image img'))"
                ".filter(i => i.complete && i.naturalWidth === 24).length === 3"
                " && Array.from(document.images).some(i => i.complete && i.naturalWidth === 20)",
            )
            page.screenshot(path=str(tmp_path / "study-page.png"))
            shown = page.evaluate(
                "() => Array.from(document.querySelectorAll('.lsf-image img')).map(i => i.src)"
            )
            assert [src.split("?d=")[1] for src in shown] == [
                task.data[f"image_{slot}"].split("?d=")[1] for slot in (1, 2, 3)
            ]
            text = page.locator("body").inner_text()
            assert not any(name in text for name in (*CONFIGS, "MyCanvas", "Source Images"))
            first.click()
            for slot in range(3):
                for criterion in ("alignment", "fidelity"):
                    page.keyboard.type(str(typed[criterion][slot]))
                    page.keyboard.press("Tab")
            save_annotation(page, partial(page.keyboard.press, "Control+Enter"))
        finally:
            page.screenshot(path=str(tmp_path / "study-page-after.png"))
            browser.close()
    pulled = pull(ws)
    assert pulled.annotations == 1 and pulled.incomplete == []
    rating = json.loads((study_dir(ws, "eval-out") / "ratings.json").read_text())["ratings"][0]
    assert rating["scores"] == {
        criterion: {config: values[slot] for slot, config in enumerate(slots)}
        for criterion, values in typed.items()
    }

"""The real labeling page at 1280x800 and 900x700, for 2 and 5 concepts: every control in view, the
image large and Label Studio's empty side panels hidden, keyboard-only, repeated keys idempotent, and
a page without a decision refused with a warning that Esc closes."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import pytest
from PIL import Image

from curation.core import dataset as ds
from curation.core.workspace import Workspace
from curation.review.client import DM_COLUMNS, connect
from curation.review.pull import pull
from curation.review.push import push
from curation.review.server import ServerInfo
from tests.fixtures.sample_concepts import flat_concept
from tests.test_review_browser import CHROMIUM, FLAGS, logged_in_page, save_annotation, wait_for_images

CONCEPTS = ("cat", "mug", "lamp", "plant", "shoe")
REASONS = ("missing concept", "identity changed", "artifacts", "bad layout", "wrong caption")


def build_scene(ws: Workspace, n_concepts: int, n_candidates: int = 2) -> None:
    """512 px candidates with n concepts each, 256 px references (whole-frame masks), CLIP scores from
    random weights."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    rng = np.random.default_rng(n_concepts)
    for k, cid in enumerate(CONCEPTS[:n_concepts]):
        flat_concept(ws, cid, (40 * k, 200 - 30 * k, 90), 256)
    dataset = fo.Dataset(ds.dataset_name(ws))
    samples = []
    for i in range(n_candidates):
        path = ws.candidates_dir / "s000" / f"cand{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(path)
        samples.append(
            fo.Sample(
                filepath=str(path),
                **{
                    ds.CANDIDATE_ID: f"cand{i:03d}",
                    ds.CAPTION: " and ".join(f"<c-{c}> {c}" for c in CONCEPTS[:n_concepts]) + f", scene {i}",
                    ds.CONCEPTS: list(CONCEPTS[:n_concepts]),
                    ds.CLIP_T: 0.0,
                    "blur": 0.2 + 0.1 * i,
                    "seam": 0.5,
                    "cp_clip": 0.1,
                },
            )
        )
    dataset.add_samples(samples)
    dataset.info["clip_weights"] = "random"
    dataset.persistent = True
    dataset.save()
    dataset.save_view("unreviewed", dataset.match(F(ds.REVIEW_DECISION) == None))


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


def open_labeling(browser: Any, server: ServerInfo, project_id: int, width: int, height: int) -> Any:
    """A logged-in page on the project's labeling stream, the candidate and references loaded."""
    page = logged_in_page(browser, server, width, height)
    page.goto(f"{server.url}/projects/{project_id}/data?labeling=1")
    wait_for_images(
        page,
        page.get_by_test_id("bottombar-submit-button"),
        "() => [512, 128].every(w => Array.from(document.images).some(i => i.complete && i.naturalWidth === w))",
    )
    page.evaluate("document.activeElement && document.activeElement.blur()")  # hotkeys go to the page
    return page


def visible(page: Any, label: str) -> Any:
    """The shown control of that label: each decision and star has a hidden twin bound to the same key."""
    named = re.compile(rf"^{re.escape(label)}(\[.*\])?$")  # "accept[a]": the hotkey is in the label
    return page.get_by_label(named).filter(visible=True)


def assert_in_view(page: Any, named: dict[str, Any], width: int, height: int) -> None:
    """Each control's box lies inside the window and above the bar that holds Submit."""
    bar = page.get_by_test_id("bottombar-submit-button").bounding_box()
    assert bar is not None
    for name, locator in named.items():
        box = locator.bounding_box()
        assert box is not None, f"{name} is not rendered"
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, f"{name} is cut off sideways: {box}"
        bottom = box["y"] + box["height"]
        limit = height if name == "submit" else bar["y"] + 1
        assert box["y"] >= 0 and bottom <= limit, (
            f"{name} is below the fold ({bottom:.0f} > {limit:.0f}): {box}"
        )


def assert_data_manager_lists_thumbnails(browser: Any, server: ServerInfo, project_id: int) -> None:
    """The task list shows 128 px thumbnails, never a full candidate, and no HTML source as text."""
    page = logged_in_page(browser, server, 1280, 800)
    page.goto(f"{server.url}/projects/{project_id}/data")
    page.wait_for_function(
        "() => Array.from(document.images).filter(i => i.src.includes('thumbs/')).length >= 2"
        " && Array.from(document.images).filter(i => i.src.includes('thumbs/')).every(i => i.complete)",
        timeout=60_000,
    )
    page.wait_for_timeout(1000)
    widths = page.evaluate("Array.from(document.images).filter(i => i.src).map(i => [i.src, i.naturalWidth])")
    assert not [src for src, w in widths if "candidates/" in src or w >= 256], widths
    text = page.locator("body").inner_text()
    assert "<figure" not in text and "<table" not in text and "<div" not in text
    # the pulled review in columns of its own, not the raw annotation JSON
    assert "from_name" not in text and "Annotation results" not in text
    for column in (ds.REVIEW_DECISION, ds.REVIEW_QUALITY):
        assert column in text, f"no Data Manager column {column}"
    assert ds.REVIEW_AGREEMENT not in text  # one vote per task: an agreement column would say nothing
    page.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("n_concepts", [2, 5])
def test_every_control_is_in_view_and_keyboard_only_submits(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo, browser: Any, n_concepts: int
) -> None:
    from playwright.sync_api import expect

    ws = labelstudio_workspace()
    build_scene(ws, n_concepts)
    project_id = push(ws, order="view").project_id
    for width, height in ((1280, 800), (900, 700)):
        page = open_labeling(browser, labelstudio, project_id, width, height)
        # no toggle trap: nothing is pre-selected, and a second press of "a" keeps accept
        assert page.locator("input[type=radio]:checked").count() == 0
        if width == 900:  # an undecided page is refused; its warning closes from the keyboard
            page.keyboard.press("Control+Enter")
            warning = page.get_by_text("has no decision")
            warning.wait_for(state="visible", timeout=10_000)
            page.keyboard.press("Escape")
            warning.wait_for(state="hidden", timeout=10_000)
        for key in ("a", "a", "3", "3"):
            page.keyboard.press(key)
        expect(visible(page, "accept")).to_be_checked()
        expect(visible(page, "3")).to_be_checked()
        decision_and_submit = {
            "accept": visible(page, "accept"),
            "reject": visible(page, "reject"),
            **{f"{n} stars": visible(page, str(n)) for n in range(1, 6)},
            "submit": page.get_by_test_id("bottombar-submit-button"),
        }
        if width == 1280:
            everything = {
                **decision_and_submit,
                "image": page.locator('img[src^="blob:"]').first,
                "caption": page.get_by_text("scene 0", exact=False).first,
                **{f"ref {c}": page.locator(f'img[src*="thumbs/refs/{c}-"]') for c in CONCEPTS[:n_concepts]},
                **{f"reason {r}": visible(page, r) for r in REASONS},
                "caption box": page.get_by_role("textbox").first,
                **{
                    f"score {s}": page.locator("table.scores td", has_text=s).first
                    for s in ("clip_t", "blur")
                },
                "random-weights label": page.locator("table.scores td", has_text="random weights").first,
            }
            page.screenshot(path=str(ws.review_dir / f"layout-{n_concepts}-{width}.png"))
            assert_in_view(page, everything, width, height)
            # the side panels are gone and the candidate takes their room
            assert not page.locator(".lsf-sidepanels__wrapper").filter(visible=True).count()
            image = everything["image"].bounding_box()
            assert image is not None and image["height"] >= 550, image
        else:
            page.screenshot(path=str(ws.review_dir / f"layout-{n_concepts}-{width}.png"))
            assert_in_view(page, decision_and_submit, width, height)
            assert pull(ws).annotated == 0  # the refused submit saved nothing
            save_annotation(page, partial(page.keyboard.press, "Control+Enter"))
        page.close()
    report = pull(ws)
    assert (report.annotated, report.accepted, report.invalid_count) == (1, 1, 0)
    tasks = connect(ws).get_json("/api/tasks/", "tasks", project=project_id, fields="task_only")["tasks"]
    columns = {t["data"][ds.CANDIDATE_ID]: {c: t["data"].get(c) for c in DM_COLUMNS} for t in tasks}
    assert columns == {
        "cand000": {
            ds.REVIEW_DECISION: "accept",
            ds.REVIEW_QUALITY: 3.0,
            ds.REVIEW_AGREEMENT: None,
        },  # one vote
        "cand001": dict.fromkeys(DM_COLUMNS),  # not reviewed: nothing written
    }
    assert_data_manager_lists_thumbnails(browser, labelstudio, project_id)
    sample = ds.open_dataset(ws).match({ds.CANDIDATE_ID: "cand000"}).first()
    assert (sample[ds.REVIEW_DECISION], sample[ds.REVIEW_QUALITY]) == ("accept", 3.0)


FOCUS_IS_CAPTION_BOX = (
    "() => { const e = document.activeElement;"
    " return !!e && ['INPUT', 'TEXTAREA'].includes(e.tagName) && !['radio', 'checkbox'].includes(e.type); }"
)


def press_access_key(page: Any, key: str) -> None:
    """Alt+key as Chromium on Linux receives it from the OS: a system char event is what fires an
    accesskey, and Playwright's `keyboard.press("Alt+c")` sends none."""
    cdp = page.context.new_cdp_session(page)
    code = {"key": key, "code": f"Key{key.upper()}", "modifiers": 1, "isSystemKey": True}  # 1: Alt
    cdp.send(
        "Input.dispatchKeyEvent", {"type": "rawKeyDown", "windowsVirtualKeyCode": ord(key.upper()), **code}
    )
    cdp.send("Input.dispatchKeyEvent", {"type": "char", "text": key, "unmodifiedText": key, **code})
    cdp.send("Input.dispatchKeyEvent", {"type": "keyUp", "windowsVirtualKeyCode": ord(key.upper()), **code})
    cdp.detach()


@pytest.mark.timeout(300)
def test_caption_fix_by_keyboard_only(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo, browser: Any
) -> None:
    """Alt+C then Tab enter the caption box (Label Studio's TextArea takes no hotkey; the label above it
    carries the access key); Escape and Ctrl+Enter inside it keep the text, Shift+Tab leaves it, and
    text typed but never added with Enter is submitted with the decision."""
    ws = labelstudio_workspace()
    build_scene(ws, 2)
    project_id = push(ws, order="view").project_id
    page = open_labeling(browser, labelstudio, project_id, 1280, 800)
    page.keyboard.press("r")
    page.keyboard.press("w")
    press_access_key(page, "c")
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUS_IS_CAPTION_BOX), "Alt+C, Tab did not reach the caption box"
    typed = "<c-cat> cat beside <c-mug> mug"
    page.keyboard.type(typed)
    for key in ("Escape", "Control+Enter"):  # neither submits nor drops what was typed
        page.keyboard.press(key)
        assert page.evaluate(FOCUS_IS_CAPTION_BOX)
        assert page.get_by_test_id("textarea-input").input_value() == typed
    page.keyboard.press("Shift+Tab")
    assert not page.evaluate(FOCUS_IS_CAPTION_BOX)
    page.keyboard.press("x")  # a hotkey again once out of the box
    save_annotation(page, partial(page.keyboard.press, "Control+Enter"))
    page.close()
    report = pull(ws)
    assert (report.annotated, report.rejected) == (1, 1)
    sample = ds.open_dataset(ws).match({ds.CANDIDATE_ID: "cand000"}).first()
    assert sample[ds.CAPTION_FIXED] == typed
    assert sample[ds.REVIEW_REASONS] == ["artifacts", "wrong caption"]

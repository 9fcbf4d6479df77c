"""A batch page's strip: one image holding every candidate's preview, in slot order."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from curation.core.thumbnails import page_strip, write_thumbnail

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def test_the_strip_holds_each_preview_in_its_slot_and_is_made_once(tmp_path: Path) -> None:
    previews = []
    for n, colour in enumerate(COLOURS):  # landscape and portrait candidates: each fills its square
        size = (512, 384) if n % 2 else (384, 512)
        previews.append(write_thumbnail(Image.new("RGB", size, colour), tmp_path / f"cand{n}.jpg"))
    target = tmp_path / "pages" / "page.jpg"
    page_strip(previews, target, side=88, gap=8)
    with Image.open(target) as row:
        assert row.size == (4 * 88 + 3 * 8, 88)
        for n, colour in enumerate(COLOURS):
            for x, y in ((n * 96 + 1, 1), (n * 96 + 44, 44), (n * 96 + 86, 86)):  # corners too: no letterbox
                assert all(abs(a - b) <= 12 for a, b in zip(row.getpixel((x, y)), colour, strict=True)), (
                    n,
                    x,
                    y,
                )
            if n:
                assert (
                    min(row.getpixel((n * 96 - 4, 44))) >= 240
                )  # the white gap before it (JPEG: near white)
    written = target.stat().st_mtime_ns
    page_strip(previews, target, side=88, gap=8)  # a re-push of the same page opens no preview
    assert target.stat().st_mtime_ns == written

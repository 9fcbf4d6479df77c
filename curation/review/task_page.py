"""What an annotator sees: a page of candidates of one composition as one Label Studio task's data.

A page shows each candidate in turn, a strip of them all, their captions and scores, and the
composition's reference cut-outs once; it points at the candidates, their previews and the cut-outs,
published into the media tree, through local-files URLs;
the machine scores are labelled with their direction and whether their weights were random, and a
calibrated triage rule shows as a hint, never as a pre-selected decision.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from curation.concepts.references import cover_cutout
from curation.core import dataset as ds
from curation.core.labeling_config import IMAGE
from curation.core.records import content_id
from curation.core.thumbnails import candidate_thumb, page_strip, thumbnail, thumbs_dir
from curation.core.workspace import Workspace
from curation.review.calibration import ScoreCalibration
from curation.review.client import Connection, media_url
from curation.review.crossval import CONFIDENCE, HeldOut

THUMB = "thumb"  # the Data Manager's image column
CANDIDATE_IDS = "candidate_ids"  # a page's candidates in slot order (the `item_index` of their answers)
PAGE = "page"  # a page's candidate ids joined by spaces: what the pushed record keeps per task
STRIP_PX = 44  # a candidate's square in a page's strip, and the gap between two (CSS px)
STRIP_GAP = 4


def page_task(ws: Workspace, conn: Connection, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """One review page of the candidates' tasks (same concepts, same references), in slot order.

    The page shows the candidate in focus large (`images`, perItem controls answer for it), all of
    them as a numbered strip, their captions and scores as numbered rows; the references once. Its
    `candidate_id` is the first candidate's (one key per task, for the import's retry and the Data
    Manager), `candidate_ids` says which candidate each slot is.
    """
    data = [t["data"] for t in tasks]
    ids = [d[ds.CANDIDATE_ID] for d in data]
    captions = "".join(f"<li>{html.escape(d[ds.CAPTION])}</li>" for d in data)
    scores = _page_scores_html(data)
    return {
        "data": {
            ds.CANDIDATE_ID: ids[0],
            CANDIDATE_IDS: ids,
            PAGE: " ".join(ids),
            "images": [d[IMAGE] for d in data],
            # a page of one also as a project made before pages reads it: push sends it nothing else
            **({IMAGE: data[0][IMAGE], ds.CAPTION: data[0][ds.CAPTION]} if len(data) == 1 else {}),
            THUMB: data[0][THUMB],
            ds.CONCEPTS: data[0][ds.CONCEPTS],
            "refs": data[0]["refs"],
            "refs_html": data[0]["refs_html"],
            "strip": _strip_html(ws, conn, ids) if len(ids) > 1 else "",  # a page of one has no other
            "captions": f'<ol style="margin:2px 0;padding-left:18px;font-size:12px">{captions}</ol>',
            "scores": scores if len(data) > 1 else data[0]["scores"],
        }
    }


def _strip_html(ws: Workspace, conn: Connection, ids: list[str]) -> str:
    """The page's candidates as one numbered row: one image (`page_strip`), drawn at twice its CSS size."""
    thumbs = thumbs_dir(ws)
    row = page_strip(
        [candidate_thumb(thumbs, cid) for cid in ids],
        thumbs / "pages" / f"{content_id(ids)}.jpg",
        2 * STRIP_PX,
        2 * STRIP_GAP,
    )
    width = len(ids) * (STRIP_PX + STRIP_GAP) - STRIP_GAP
    numbers = "".join(f'<span style="flex:1;text-align:center">{n}</span>' for n in range(1, len(ids) + 1))
    return (
        f'<div style="width:{width}px;max-width:100%;font-size:11px">'
        f'<img src="{html.escape(media_url(conn, row))}" alt="candidates 1 to {len(ids)}" '
        f'style="display:block;width:100%;aspect-ratio:{width}/{STRIP_PX}"/>'
        f'<div style="display:flex">{numbers}</div></div>'
    )


def candidate_task(
    ws: Workspace,
    conn: Connection,
    row: dict[str, Any],
    concepts: dict[str, Any],
    scores: list[str],
    random: set[str],
    earned: dict[str, tuple[ScoreCalibration, HeldOut]],
) -> dict[str, Any]:
    """One task: image, preview and reference cut-outs as local-files URLs, caption, labelled scores.

    No decision is ever pre-selected: a pre-filled choice turns the annotator's own hotkey into
    "clear", so a triage rule a concept count earned (`earned`: its rule and held-out check, by
    concept count) shows up as a hint line in the scores panel instead.
    """
    refs = []
    for cid in row[ds.CONCEPTS] or []:
        if cid in concepts and concepts[cid].refs:
            cutout = cover_cutout(ws, concepts[cid])  # what is pasted, not the photo around it
            thumb = thumbnail(cutout, thumbs_dir(ws) / "refs" / f"{cid}-{_version(cutout)}.jpg")
            refs.append(
                {
                    "concept": cid,
                    "name": concepts[cid].name,
                    "url": media_url(conn, cutout),
                    "thumb": media_url(conn, thumb),
                }
            )
    # a NaN or infinite score (a field added by hand, a degenerate embedding) is no figure to show,
    # and the task data must be JSON the SDK sends: it refuses NaN and infinity
    shown = {name: round(row[name], 4) for name in scores if _finite(row[name])}
    suggestion = triage_hint(row, earned, random)
    return {
        "data": {
            ds.CANDIDATE_ID: row[ds.CANDIDATE_ID],
            IMAGE: media_url(conn, Path(row["filepath"])),
            THUMB: media_url(
                conn, thumbnail(Path(row["filepath"]), candidate_thumb(thumbs_dir(ws), row[ds.CANDIDATE_ID]))
            ),
            ds.CAPTION: row[ds.CAPTION] or "",
            ds.CONCEPTS: list(row[ds.CONCEPTS] or []),
            "refs": refs,
            "refs_html": _refs_html(refs),
            "scores": _scores_html(shown, random, suggestion),
            "score_values": shown,
            "random_scores": sorted(name for name in shown if name in random),
            "hint": suggestion,
        }
    }


def triage_hint(
    row: dict[str, Any], earned: dict[str, tuple[ScoreCalibration, HeldOut]], random: set[str]
) -> str | None:
    """ "likely reject" with what the held-out check found, when the rule this candidate's concept count
    earned would hold it back; None otherwise.

    The figures are held-out ones (curate calibrate's cross-validation), never the in-sample fit the
    cut was chosen on: how many of the reviews the rules held back people rejected, and the recall of
    accepts with its lower bound.
    """
    rule, heldout = earned.get(str(len(row[ds.CONCEPTS] or [])), (None, None))
    if rule is None or heldout is None or rule.score in random or not rule.holds(row.get(rule.score)):
        return None
    held = heldout.rejected_held + heldout.accepted - heldout.accepted_kept
    return (
        f"likely reject ({rule.rule_text()}; held out: {heldout.rejected_held} of {held} reviews such a rule held"
        f" back were rejected, it kept {heldout.recall:.1%} of accepts, {CONFIDENCE:.0%} lower bound"
        f" {heldout.recall_bound:.1%})"
    )


def _page_scores_html(data: list[dict[str, Any]]) -> str:
    """A page's scores as one compact table, a numbered row per candidate; directions and random weights
    in the header (they are the same for every candidate of a push)."""
    from curation.review.calibration import higher_is_worse

    names = list(dict.fromkeys(name for d in data for name in d["score_values"]))
    if not names:
        return "(no machine scores)"
    random = set(data[0]["random_scores"])
    head = "".join(
        f"<th>{html.escape(name)} {'&#8595;' if higher_is_worse(name) else '&#8593;'}"
        f"{' (random weights: meaningless)' if name in random else ''}</th>"
        for name in names
    )
    rows = "".join(
        f"<tr><td>{n}</td>"
        + "".join(
            f"<td>{d['score_values'][name]:.3g}</td>" if name in d["score_values"] else "<td></td>"
            for name in names
        )
        + f"<td>{'hint: ' + html.escape(d['hint']) if d['hint'] else ''}</td></tr>"
        for n, d in enumerate(data, 1)
    )
    return (
        f'<table class="scores" style="font-size:11px;line-height:1.2"><tr><th>#</th>{head}<th></th></tr>{rows}</table>'
        '<div style="font-size:11px">&#8593; higher is better, &#8595; lower is better</div>'
    )


def _refs_html(refs: list[dict[str, str]]) -> str:
    """One row of fixed-size reference photos: five concepts fit the left column without wrapping."""
    cells = "".join(
        f'<figure style="margin:0;width:60px;text-align:center"><img src="{html.escape(r["thumb"])}" '
        f'style="width:60px;height:60px;object-fit:contain"/><figcaption style="font-size:11px;'
        f'overflow:hidden;white-space:nowrap;text-overflow:ellipsis">{html.escape(r["name"])}</figcaption></figure>'
        for r in refs
    )
    return f'<div class="refs" style="display:flex;flex-wrap:nowrap;gap:6px">{cells}</div>'


def _scores_html(shown: dict[str, float], random: set[str], suggestion: str | None) -> str:
    """Each score labelled with its name, its direction and whether its weights were random."""
    from curation.review.calibration import higher_is_worse

    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{value:.3g}</td>"
        f"<td>{'lower is better' if higher_is_worse(name) else 'higher is better'}</td>"
        f"<td>{'random weights: meaningless' if name in random else ''}</td></tr>"
        for name, value in shown.items()
    )
    table = (
        f'<table class="scores" style="font-size:11px;line-height:1.2">{rows}</table>'
        if rows
        else "(no machine scores)"
    )
    hint = f'<div style="font-size:11px">machine hint: {html.escape(suggestion)}</div>' if suggestion else ""
    return f"{hint}{table}"


def _finite(value: float | None) -> bool:
    """Whether a score value is a figure: not missing, NaN or infinite."""
    return value is not None and math.isfinite(value)


def _version(path: Path) -> str:
    """A name for this version of a file: its name, inode, size and mtime (what a rewrite changes).

    A cut-out is named by its photo's hash, so re-segmenting the same photos rewrites it under the same
    name; a preview named after the file alone would show the old cut-out for good.
    """
    stat = path.stat()
    return content_id([path.stem, stat.st_ino, stat.st_size, stat.st_mtime_ns], 12)

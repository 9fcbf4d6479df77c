"""What an annotator sees of a candidate: one Label Studio task's data, its reference strip and score table.

The task points at the candidate, its preview and its concepts' cut-outs, published into the media
tree, through local-files URLs;
the machine scores are labelled with their direction and whether their weights were random, and a
calibrated triage rule shows as a hint, never as a pre-selected decision.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from curation.concepts.references import cover_cutout
from curation.core import dataset as ds
from curation.core.labeling_config import IMAGE
from curation.core.records import content_id
from curation.core.thumbnails import candidate_thumb, thumbnail, thumbs_dir
from curation.core.workspace import Workspace
from curation.review.calibration import ScoreCalibration, rule_for
from curation.review.client import Connection, media_url

THUMB = "thumb"  # the Data Manager's image column


def candidate_task(
    ws: Workspace,
    conn: Connection,
    row: dict[str, Any],
    concepts: dict[str, Any],
    scores: list[str],
    random: set[str],
    rules: dict[str, ScoreCalibration],
) -> dict[str, Any]:
    """One task: image, preview and reference cut-outs as local-files URLs, caption, labelled scores.

    No decision is ever pre-selected: a pre-filled choice turns the annotator's own hotkey into
    "clear", so a calibrated rule shows up as a hint line in the scores panel instead.
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
    shown = {name: round(row[name], 4) for name in scores if row[name] is not None}
    rule = rule_for(rules, len(row[ds.CONCEPTS] or []))
    suggestion = (
        f"likely reject ({rule.rule_text()}, calibrated: {rule.accepted_lost} of {rule.accepted} accepted fell there)"
        if rule and rule.score not in random and rule.holds(row.get(rule.score))
        else None
    )
    return {
        "data": {
            ds.CANDIDATE_ID: row[ds.CANDIDATE_ID],
            IMAGE: media_url(conn, Path(row["filepath"])),
            THUMB: media_url(conn, thumbnail(Path(row["filepath"]), candidate_thumb(thumbs_dir(ws), row[ds.CANDIDATE_ID]))),
            ds.CAPTION: row[ds.CAPTION] or "",
            ds.CONCEPTS: list(row[ds.CONCEPTS] or []),
            "refs": refs,
            "refs_html": _refs_html(refs),
            "scores": _scores_html(shown, random, suggestion),
        }
    }


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
    table = f'<table class="scores" style="font-size:11px;line-height:1.2">{rows}</table>' if rows else "(no machine scores)"
    hint = f'<div style="font-size:11px">machine hint: {html.escape(suggestion)}</div>' if suggestion else ""
    return f"{hint}{table}"


def _version(path: Path) -> str:
    """A name for this version of a file: its name, inode, size and mtime (what a rewrite changes).

    A cut-out is named by its photo's hash, so re-segmenting the same photos rewrites it under the same
    name; a preview named after the file alone would show the old cut-out for good.
    """
    stat = path.stat()
    return content_id([path.stem, stat.st_ino, stat.st_size, stat.st_mtime_ns], 12)

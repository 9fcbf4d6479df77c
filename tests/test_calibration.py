"""Calibration of machine scores on reviews written onto the dataset, and `review push --triage`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.cli import app
from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.workspace import Workspace
from curation.review.calibration import ALL, calibrate, roc_auc
from curation.review.client import connect
from curation.review.pull import annotation_result, pull
from curation.review.push import push
from curation.review.server import ServerInfo

BLUR_ACCEPTED = [round(0.01 * k, 2) for k in range(1, 21)]  # 0.01 .. 0.20
BLUR_REJECTED = [round(0.5 + 0.01 * k, 2) for k in range(10)]  # 0.50 .. 0.59


def test_roc_auc_by_hand() -> None:
    # 0.35 beats 3 accepted, 0.5 and 0.6 beat all 4: 11 of 12 pairs
    assert roc_auc([0.35, 0.5, 0.6], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(11 / 12)
    # a tie counts half: (1 + 0.5) / 2
    assert roc_auc([0.3], [0.3, 0.1]) == pytest.approx(0.75)
    assert roc_auc([0.1], [0.2, 0.3]) == 0.0


def reviewed_dataset(ws: Workspace, weights: str, decided: bool = True) -> list[str]:
    """20 accepted + 10 rejected 2-concept candidates (blur separates them), 4 3-concept ones.

    clip_t separates them perfectly too, but with `weights="random"` it must never become a rule.
    """
    import fiftyone as fo

    rng = np.random.default_rng(0)
    rows = [(b, ds.ACCEPT, 2) for b in BLUR_ACCEPTED] + [(b, ds.REJECT, 2) for b in BLUR_REJECTED]
    rows += [(0.1, ds.ACCEPT, 3), (0.2, ds.ACCEPT, 3), (0.15, ds.REJECT, 3), (0.7, ds.REJECT, 3)]
    samples, ids = [], []
    for i, (blur, decision, n) in enumerate(rows):
        path = ws.candidates_dir / "s000" / f"cand{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        ids.append(f"cand{i:03d}")
        samples.append(
            fo.Sample(
                filepath=str(path),
                **{
                    ds.CANDIDATE_ID: ids[-1],
                    ds.CAPTION: f"scene {i}",
                    ds.CONCEPTS: ["cat", "mug", "lamp"][:n],
                    ds.CLIP_T: 0.9 if decision == ds.ACCEPT else 0.1,
                    "blur": blur,
                    ds.REVIEW_DECISION: decision if decided else None,
                },
            )
        )
    dataset = fo.Dataset(ds.dataset_name(ws))
    dataset.add_samples(samples)
    dataset.info["clip_weights"] = weights
    dataset.persistent = True
    dataset.save()
    return ids


def test_calibration_reports_aucs_and_the_rule_that_spares_most(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    reviewed_dataset(ws, "random")
    report = calibrate(ws)
    rows = {(r.score, r.group): r for r in report.rows}
    assert rows[("blur", "2")].auc == 1.0 and rows[("clip_t", "2")].auc == 1.0
    # 3 concepts, blur: rejected 0.15 beats 0.1 only, 0.7 beats both -> 3 of 4 pairs
    assert rows[("blur", "3")].auc == pytest.approx(0.75)
    # keeping 19 of 20 accepted (95%) the cut is 0.19: 0.20 and the 10 rejected are held back
    blur2 = rows[("blur", "2")]
    assert (blur2.op, blur2.threshold, blur2.spared, blur2.accepted_lost) == (">", 0.19, 11, 1)
    # clip_t from random weights is reported, never a rule; 3 concepts have too few reviews for one
    assert rows[("clip_t", "2")].random_weights
    assert report.rules["2"].score == "blur" and report.rules[ALL].score == "blur"
    assert "3" not in report.rules
    saved = json.loads((ws.review_dir / "calibration.json").read_text())
    assert saved["rules"]["2"]["threshold"] == 0.19
    assert report.plot is not None and report.plot.stat().st_size > 1000

    result = CliRunner().invoke(app, ["calibrate", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert (
        "AUC(rejected) 1.000" in result.output
        and "triage rule: blur > 0.19 spares 11 reviews" in result.output
    )
    assert "random weights: never a rule" in result.output


def test_pretrained_clip_t_can_become_the_rule(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    reviewed_dataset(ws, "pretrained")
    rule = calibrate(ws, plot=False).rules["2"]
    # clip_t holds back all 10 rejected and loses no accepted (all accepted share 0.9): it spares 10,
    # blur spares 11 (one accepted lost): the rule spares the most
    assert (rule.score, rule.spared) == ("blur", 11)
    clip = next(r for r in calibrate(ws, plot=False).rows if (r.score, r.group) == ("clip_t", "2"))
    assert (
        not clip.random_weights and clip.usable and (clip.op, clip.spared, clip.accepted_lost) == ("<", 10, 0)
    )


def test_calibrate_without_reviews_says_what_to_run(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    reviewed_dataset(ws, "pretrained", decided=False)
    with pytest.raises(CurateError, match="review pull"):
        calibrate(ws)


@pytest.mark.timeout(300)
def test_push_triage_holds_back_records_and_reverses(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo
) -> None:
    from fiftyone import ViewField as F

    ws = labelstudio_workspace()
    ids = reviewed_dataset(ws, "random")
    calibrate(ws, plot=False)  # rules: blur > 0.19 for 2 concepts and overall
    dataset = ds.open_dataset(ws)
    dataset.set_values(ds.REVIEW_DECISION, [None] * len(dataset))  # as if none had been reviewed yet
    dataset.save_view("unreviewed", dataset.match(F(ds.REVIEW_DECISION) == None))
    held = {"cand019", *ids[20:30], "cand033"}  # blur 0.20, 0.50..0.59, and 0.7 (3 concepts: overall rule)

    report = push(ws, order="view", triage=True)
    assert (report.pushed, report.held) == (len(ids) - len(held), len(held))
    assert "held back by triage" in report.summary()
    dataset = ds.open_dataset(ws)
    out = dataset.load_saved_view(ds.VIEW_TRIAGED_OUT)
    assert set(out.values(ds.CANDIDATE_ID)) == held and len(dataset) == len(ids)  # nothing deleted
    # 2 concepts: their own rule; 3 concepts have too few reviews and fall back to the overall one
    assert set(out.values(ds.TRIAGE)) == {
        "blur > 0.19 (calibrated on 30 reviews)",
        "blur > 0.2 (calibrated on 34 reviews)",
    }

    # reversible: a push without --triage sends them and clears the record
    again = push(ws, order="view")
    assert again.pushed == len(held)
    assert len(ds.open_dataset(ws).load_saved_view(ds.VIEW_TRIAGED_OUT)) == 0

    # an accept without a rating (the page requires one) is named as invalid, not counted
    conn = connect(ws)
    project_id = report.project_id
    task = next(iter(conn.client.tasks.list(project=project_id, fields="all")))
    conn.client.annotations.create(id=task.id, result=annotation_result(ds.ACCEPT))
    pulled = pull(ws)
    assert pulled.invalid_count == 1 and "accept without a rating" in pulled.summary()

"""Calibration of machine scores on reviews written onto the dataset, its held-out check, and `review push --triage`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from curation.cli import app
from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.workspace import Workspace
from curation.review.calibration import calibrate, calibrate_reviews, roc_auc, rule_for
from curation.review.crossval import (
    MIN_ACCEPTED,
    MIN_REJECTED,
    RECALL,
    column,
    cross_validate,
    recall_lower_bound,
)
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


def test_calibrate_without_reviews_says_what_to_run(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    reviewed_dataset(ws, "pretrained", decided=False)
    with pytest.raises(CurateError, match="review pull"):
        calibrate(ws)


def test_clopper_pearson_bound_and_the_minimums_it_sets() -> None:
    # the bound is the p at which `kept` or more of `total` has probability 0.05: check by the sum itself
    for kept, total in ((10, 20), (57, 60), (296, 300), (1, 7)):
        low = recall_lower_bound(kept, total)
        tail = sum(math.comb(total, j) * low**j * (1 - low) ** (total - j) for j in range(kept, total + 1))
        assert tail == pytest.approx(0.05, abs=1e-9) and low < kept / total
    assert recall_lower_bound(0, 5) == 0.0 and recall_lower_bound(5, 5) == pytest.approx(0.05 ** (1 / 5))
    # 58 accepts all kept cannot show 95%; 59 can: the fewest accepts a concept count needs
    assert (MIN_ACCEPTED, MIN_REJECTED) == (59, 20)
    assert recall_lower_bound(58, 58) < RECALL <= recall_lower_bound(59, 59)
    # 20 rejects: half held back is known to within 0.30 .. 0.70; 18 are not enough for that
    assert recall_lower_bound(10, 20) >= 0.3 > recall_lower_bound(9, 18)
    with pytest.raises(ValueError):
        recall_lower_bound(3, 2)


NOISY_SCORES = [f"s{j}" for j in range(6)]  # lower is worse (not artifact scores)


def noisy_reviews(seed: int) -> tuple[list[str], list[bool], dict[str, list[float]]]:
    """60 accepted ~ N(0, 1) and 60 rejected ~ N(-1, 1) on each of six scores: a known distribution."""
    rng = np.random.default_rng(seed)
    accepted = [True] * 60 + [False] * 60
    scores = {name: np.r_[rng.normal(0, 1, 60), rng.normal(-1, 1, 60)].tolist() for name in NOISY_SCORES}
    return [f"c{i:03d}" for i in range(120)], accepted, scores


def in_sample_rule(accepted: list[bool], scores: dict[str, list[float]]) -> tuple[str, float]:
    """What calibrate did before held-out checks: each score's cut keeps 95% of accepts, the most sparing wins."""
    best = (-1, "", 0.0)
    for name, values in scores.items():
        kept = sorted((v for v, a in zip(values, accepted, strict=True) if a), reverse=True)
        cut = kept[math.ceil(RECALL * len(kept)) - 1]  # hold back values below it
        best = max(best, (sum(v < cut for v in values), name, cut))
    return best[1], best[2]


def test_in_sample_recall_passes_where_the_held_out_bound_refuses() -> None:
    keys, accepted, scores = noisy_reviews(0)
    name, cut = in_sample_rule(accepted, scores)
    in_sample = sum(v >= cut for v, a in zip(scores[name], accepted, strict=True) if a) / 60
    true_recall = 1 - NormalDist().cdf(cut)  # accepts are N(0, 1): the recall on every future accept
    assert in_sample >= RECALL > true_recall  # the old check passed a rule that loses over 5%
    assert true_recall == pytest.approx(0.896, abs=0.001)

    rows, groups, rules = calibrate_reviews(keys, accepted, ["2"] * 120, scores, set())
    verdict = groups["2"]
    assert verdict.heldout is not None and verdict.rule is None and "2" not in rules
    assert verdict.heldout.recall < RECALL and verdict.heldout.recall_bound < RECALL
    assert (verdict.heldout.accepted, verdict.heldout.accepted_kept) == (60, 56)
    assert verdict.reason == "held-out recall 0.933, its 95% lower bound 0.854 < 0.95"
    assert sum(verdict.heldout.chosen.values()) == 5  # a score was chosen inside every fold
    # seeded folds over sorted ids: the order reviews come back from the database changes nothing
    backwards = calibrate_reviews(
        keys[::-1], accepted[::-1], ["2"] * 120, {n: v[::-1] for n, v in scores.items()}, set()
    )
    assert backwards[1]["2"] == verdict
    # the in-sample rows are still reported, with their AUCs
    assert {r.score for r in rows if r.group == "2"} == set(NOISY_SCORES)
    # another seed, same verdict: never a rule on 60 noisy accepts
    for seed in range(1, 4):
        k, a, s = noisy_reviews(seed)
        assert calibrate_reviews(k, a, ["2"] * 120, s, set())[2] == {}


def test_rules_that_pass_keep_the_promise_on_a_known_distribution() -> None:
    # 400 accepted ~ N(0, 1), 130 rejected ~ N(-3, 1) on one score, three pure-noise scores beside it
    for seed in range(6):
        rng = np.random.default_rng(seed)
        accepted = [True] * 400 + [False] * 130
        scores = {"good": np.r_[rng.normal(0, 1, 400), rng.normal(-3, 1, 130)].tolist()}
        scores |= {f"noise{j}": rng.normal(0, 1, 530).tolist() for j in range(3)}
        keys = [f"c{i:03d}" for i in range(530)]
        _, groups, rules = calibrate_reviews(keys, accepted, ["2"] * 530, scores, set())
        rule = rules["2"]  # earned every time: the data allow it
        assert rule.score == "good" and groups["2"].heldout.chosen == {"good": 5}
        assert 1 - NormalDist().cdf(rule.threshold) >= RECALL  # and it keeps 95% of all future accepts


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(), st.one_of(st.none(), st.floats(-5, 5)), st.one_of(st.none(), st.floats(0, 1))
        ),
        min_size=1,
        max_size=150,
    ),
    st.integers(0, 3),
)
def test_held_out_recall_and_bound_stay_in_range(
    reviews: list[tuple[bool, float | None, float | None]], extra: int
) -> None:
    accepted = [a for a, _, _ in reviews]
    assume(any(accepted))
    scores = {"clip_t": [v for _, v, _ in reviews], "blur": [b for _, _, b in reviews]}
    keys = [f"c{i:04d}" for i in range(len(reviews))]
    directions = {"clip_t": False, "blur": True}
    arrays = {name: column(values) for name, values in scores.items()}
    held = cross_validate(keys, np.array(accepted), arrays, directions, k=2 + extra)
    assert 0.0 <= held.recall_bound <= held.recall <= 1.0 and 0.0 <= held.spared <= 1.0
    assert held.accepted == sum(accepted) and held.accepted_kept <= held.accepted
    # the bound alone, for any record
    total = len(reviews)
    kept = sum(accepted)
    assert 0.0 <= recall_lower_bound(kept, total) <= kept / total


def triage_dataset(ws: Workspace, new: list[tuple[str, int, float | None]] = ()) -> None:
    """Reviews with a known answer per concept count, plus unreviewed `new` (id, concepts, blur) candidates.

    2 concepts: 300 accepted (blur 0..0.4) and 100 rejected (0.6..1): enough, separable.
    3 concepts: 1 accepted in 20 reviews: no rule, whatever blur says.
    4 concepts: 150 accepted (blur 0..0.2) and 60 rejected (0.3..1): enough, its own cut.
    clip_t (random weights) separates everything too, and must never become a rule.
    """
    import fiftyone as fo

    rng = np.random.default_rng(1)
    rows = [(b, ds.ACCEPT, 2) for b in rng.uniform(0, 0.4, 300)]
    rows += [(b, ds.REJECT, 2) for b in rng.uniform(0.6, 1.0, 100)]
    rows += [(0.05, ds.ACCEPT, 3)] + [(b, ds.REJECT, 3) for b in rng.uniform(0.5, 1.0, 19)]
    rows += [(b, ds.ACCEPT, 4) for b in rng.uniform(0, 0.2, 150)]
    rows += [(b, ds.REJECT, 4) for b in rng.uniform(0.3, 1.0, 60)]
    samples = [
        fo.Sample(
            filepath=str(ws.candidates_dir / "reviewed" / f"r{i:04d}.png"),  # never pushed: no file needed
            **{
                ds.CANDIDATE_ID: f"r{i:04d}",
                ds.CONCEPTS: ["cat", "mug", "lamp", "vase"][:n],
                ds.CLIP_T: 0.9 if decision == ds.ACCEPT else 0.1,
                "blur": float(blur),
                ds.REVIEW_DECISION: decision,
            },
        )
        for i, (blur, decision, n) in enumerate(rows)
    ]
    for cid, n, blur in new:
        path = ws.candidates_dir / "s000" / f"{cid}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        fields = {
            ds.CANDIDATE_ID: cid,
            ds.CAPTION: f"scene {cid}",
            ds.CONCEPTS: ["cat", "mug", "lamp", "vase", "hat"][:n],
        }
        samples.append(
            fo.Sample(filepath=str(path), **fields, **({"blur": blur} if blur is not None else {}))
        )
    dataset = fo.Dataset(ds.dataset_name(ws))
    dataset.add_samples(samples)
    dataset.info["clip_weights"] = "random"
    dataset.persistent = True
    dataset.save()


def test_each_concept_count_earns_its_own_rule_or_none(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    triage_dataset(ws)
    report = calibrate(ws, plot=False)
    assert set(report.rules) == {"2", "4"}  # never `all`, never 3
    two, four = report.rules["2"], report.rules["4"]
    assert (two.score, two.op, four.score, four.op) == ("blur", ">", "blur", ">")
    assert 0.38 < two.threshold < 0.4 and 0.19 < four.threshold < 0.2  # each count's own cut
    for group in ("2", "4"):
        held = report.groups[group].heldout
        assert held is not None and held.recall_bound >= RECALL and held.rejected_held == held.rejected
    assert report.groups["2"].heldout.accepted == 300
    # 1 accept in 20 reviews: no rule of its own, and none borrowed
    three = report.groups["3"]
    assert three.rule is None and three.heldout is None and three.reason.startswith("1 accepted < 59")
    assert rule_for(report.rules, 3) is None and rule_for(report.rules, 5) is None
    assert rule_for(report.rules, 4) is four

    saved = json.loads((ws.review_dir / "calibration.json").read_text())
    assert (saved["min_accepted"], saved["min_rejected"], saved["folds"]) == (59, 20, 5)
    assert set(saved["rules"]) == {"2", "4"} and saved["groups"]["3"]["rule"] is None
    assert saved["groups"]["3"]["reason"] == three.reason
    assert saved["groups"]["2"]["heldout"]["accepted_kept"] == report.groups["2"].heldout.accepted_kept

    result = CliRunner().invoke(app, ["calibrate", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert (ws.review_dir / "calibration.png").stat().st_size > 1000
    out = result.output
    assert ">= 59 accepted and >= 20 rejected reviews" in out and "Clopper-Pearson" in out
    assert "3 concepts: 1 accepted, 19 rejected" in out and "-> no triage: 1 accepted < 59" in out
    assert f"-> triage rule: {two.rule_text()}" in out and "held-out (5 folds" in out
    assert "all concept counts (pooled, never a rule)" in out and "random weights: never a rule" in out


NEW = [
    ("n0", 2, 0.1),  # sent: well inside the accepted
    ("n1", 2, 0.95),  # held: 2 concepts' own rule
    ("n2", 2, None),  # sent: no blur, no evidence
    ("n3", 4, 0.5),  # held: 4 concepts' own, lower cut (2 concepts' cut would send it)
    ("n4", 3, 0.99),  # sent: 3 concepts earned no rule
    ("n5", 5, 0.99),  # sent: 5 concepts were never calibrated
]


@pytest.mark.timeout(300)
def test_push_triage_holds_back_only_what_the_bound_allows(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo
) -> None:
    from fiftyone import ViewField as F

    ws = labelstudio_workspace()
    triage_dataset(ws, NEW)
    dataset = ds.open_dataset(ws)
    dataset.save_view("unreviewed", dataset.match(F(ds.REVIEW_DECISION) == None))
    with pytest.raises(CurateError, match="does not exist yet: run `curate calibrate`"):
        push(ws, triage=True)
    ws.review_dir.mkdir(parents=True, exist_ok=True)
    (ws.review_dir / "calibration.json").write_text(
        json.dumps({"rules": {}, "rows": []})
    )  # before held-out checks
    with pytest.raises(CurateError, match="written before held-out checks"):
        push(ws, triage=True)

    rules = calibrate(ws, plot=False).rules
    report = push(ws, order="view", triage=True)
    assert (report.pushed, report.held, report.in_view) == (4, 2, 6)
    summary = report.summary()
    assert f"triage, 2 concepts: {rules['2'].rule_text()} (held-out recall 0.9" in summary
    assert ">= 0.95) held back 1 of 3" in summary and ">= 0.95) held back 1 of 1" in summary
    assert "triage, 3 concepts: no triage (1 accepted < 59" in summary and "all 1 sent" in summary
    assert "triage, 5 concepts: no triage (no reviews of this concept count were calibrated)" in summary
    out = ds.open_dataset(ws).load_saved_view(ds.VIEW_TRIAGED_OUT)
    assert sorted(out.values(ds.CANDIDATE_ID)) == ["n1", "n3"]
    assert all("held-out recall" in why and "lower bound" in why for why in out.values(ds.TRIAGE))
    assert len(ds.open_dataset(ws)) == 630 + len(NEW)  # nothing deleted

    # reversible: a push without --triage sends them and clears the record
    again = push(ws, order="view")
    assert again.pushed == 2 and not again.triage
    assert len(ds.open_dataset(ws).load_saved_view(ds.VIEW_TRIAGED_OUT)) == 0


def test_the_summary_counts_every_review_and_names_every_concept_count() -> None:
    """A score that lacks values (uniqueness on samples added since, cp_clip without references) must not
    shrink a group's counts, and a concept count none of whose scores has a value still gets its verdict."""
    from curation.review.calibration import CalibrationReport

    keys = [f"c{i:03d}" for i in range(100)]
    accepted = [i % 3 != 0 for i in range(100)]  # 66 accepted, 34 rejected; 33 and 17 per concept count
    blur = [None] * 50 + [0.01 * i for i in range(50)]  # only 3 concepts' reviews have a blur
    rows, groups, rules = calibrate_reviews(keys, accepted, ["2"] * 50 + ["3"] * 50, {"blur": blur}, set())
    summary = CalibrationReport(rows, groups, rules, Path("calibration.json"), None).summary()
    assert "all concept counts (pooled, never a rule): 66 accepted, 34 rejected" in summary
    assert "2 concepts: 33 accepted, 17 rejected" in summary and "-> no triage: 33 accepted < 59" in summary
    assert "3 concepts: 33 accepted, 17 rejected" in summary

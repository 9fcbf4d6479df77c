"""`curate study` on a real Label Studio: a tiny evaluator folder, two raters with known scores, the
report's numbers against hand computation; and the bad inputs that must stop before anything is pushed."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from typer.testing import CliRunner

from curation.cli import app
from curation.core.buckets import bucket
from curation.core.errors import CurateError
from curation.core.records import Concept
from curation.core.workspace import Workspace
from curation.review.agreement import krippendorff_alpha
from curation.review.client import connect
from curation.review.server import ServerInfo
from curation.study.create import create
from curation.study.evaluation_folder import read_evaluation
from curation.study.pull import pull, read_annotation
from curation.study.rating_page import TASK_KEY, label_config, score_result
from curation.study.report import _banner, bootstrap_ci, write_report
from curation.study.studies import study_dir
from tests.fixtures.labelstudio import annotator_client

CONFIGS = ("CD + Source Images", "CD + MyCanvas", "Ours + MyCanvas")
A, B, C = CONFIGS
CONCEPTS = ("c1", "c2", "c3", "c4", "c5")
# (concepts, background): 3 prompts of <=3 concepts, 2 of 4, 2 of 5
PROMPTS = [
    (("c1", "c2"), "on a beach"),
    (("c2", "c3"), "in a library"),
    (("c1", "c2", "c3"), "in a field"),
    (("c1", "c2", "c3", "c4"), "on a beach"),
    (("c2", "c3", "c4", "c5"), "in a library"),
    (CONCEPTS, "on a beach"),
    (CONCEPTS, "in a field"),
]


def write_evaluation(root: Path, configs: tuple[str, ...] = CONFIGS, weights: str = "random") -> Path:
    """The layout `curate evaluate -o` writes: images/<configuration>/<prompt>_<k>.png and results.json."""
    rows = []
    for c_index, config in enumerate(configs):
        for p_index, (concepts, background) in enumerate(PROMPTS):
            text = " and ".join(concepts) + " " + background
            for k in range(2):
                image = f"images/{config}/{p_index:04d}_{k}.png"
                (root / image).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (24, 24), (40 * c_index, 30 * p_index, 100 * k)).save(root / image)
                rows.append(
                    {
                        "configuration": config,
                        "image": image,
                        "prompt": text,
                        "plain_text": text,
                        "background": background,
                        "concepts": list(concepts),
                        "n_concepts": len(concepts),
                        "bucket": bucket(len(concepts)),
                    }
                )
    results = {
        "settings": {"images_per_prompt": 2},
        "weights": {"clip": weights, "clip_model": "tiny", "detector": "tiny", "dino": "tiny"},
        "configurations": {c: f"/runs/{c}" for c in configs},
        "rows": rows,
    }
    (root / "results.json").write_text(json.dumps(results))
    return root


def add_concepts(ws: Workspace) -> None:
    for i, cid in enumerate(CONCEPTS):
        ref = ws.concept_dir(cid) / "refs" / "0.png"
        ref.parent.mkdir(parents=True)
        Image.new("RGB", (20, 20), (50 * i, 200, 10)).save(ref)
        ws.save_concept(
            Concept(
                concept_id=cid,
                name=cid.upper(),
                class_noun="toy",
                token=f"<c-{cid}>",
                refs=[ws.relative(ref)],
            )
        )


def tasks_by_key(ws: Workspace, project_id: int) -> dict[str, object]:
    client = connect(ws).client
    return {t.data[TASK_KEY]: t for t in client.tasks.list(project=project_id, fields="all")}


def test_label_config_repeats_slots_and_criteria() -> None:
    xml = label_config(3, ["alignment", "fidelity", "style"])
    for slot in (1, 2, 3):
        assert f'name="image_{slot}" value="$image_{slot}"' in xml
        for criterion in ("alignment", "fidelity", "style"):
            assert f'<Number name="{criterion}_{slot}" toName="image_{slot}" min="1" max="10"' in xml
    assert "image_4" not in xml and "curate-repeat" not in xml and "{slot}" not in xml


def test_krippendorff_and_bootstrap_by_hand() -> None:
    # two raters, three images: (1,2), (3,3), (5,6); n = 6 pooled values, sum 20, sum of squares 84
    # D_o = (2*1 + 0 + 2*1) / 6; D_e = (2*6*84 - 2*20^2) / (6*5) = 208 / 30
    assert krippendorff_alpha([[1, 2], [3, 3], [5, 6], [7]], interval=True) == pytest.approx(1 - (4 / 6) / (208 / 30))
    assert krippendorff_alpha([[4, 4], [4, 4]], interval=True) is None  # no variation: alpha undefined
    assert bootstrap_ci([[6.0, 6.0]]) == (6.0, 6.0)
    low, high = bootstrap_ci([[2.0, 4.0], [6.0, 6.0]])
    assert 3.0 <= low < high <= 6.0  # between the two task means
    assert bootstrap_ci([[2.0, 4.0], [6.0, 6.0]]) == (low, high)  # seeded


def test_an_annotation_counts_whole_or_not_at_all() -> None:
    result = score_result({"alignment": [7, 11], "fidelity": [None, 2]})
    result[1]["value"]["number"] = 11
    result.append(
        {"from_name": "fidelity_1", "to_name": "image_1", "type": "number", "value": {"number": 7.5}}
    )
    scores, problems = read_annotation({"result": result}, [A, B], ["alignment", "fidelity"])
    assert scores is None
    assert problems == [
        "alignment of image 2 is 11, not a whole number 1-10",
        "fidelity of image 1 is 7.5, not a whole number 1-10",
    ]
    whole = score_result({"alignment": [7, 10], "fidelity": [1, 2]})
    assert read_annotation({"result": whole}, [A, B], ["alignment", "fidelity"]) == (
        {"alignment": {A: 7, B: 10}, "fidelity": {A: 1, B: 2}},
        [],
    )
    assert _banner({"clip": "pretrained"}) == [] and "weights: random" in _banner({"clip": "random"})[0]


def test_bad_evaluator_folders_are_refused_before_anything_is_pushed(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")  # no Label Studio at all: the checks come first
    broken = write_evaluation(tmp_path / "broken")
    (broken / "images" / B / "0003_0.png").unlink()
    (broken / "images" / C / "0005_0.png").write_bytes(b"not a png")
    with pytest.raises(CurateError) as error:
        create(ws, broken)
    message = str(error.value)
    assert f"configuration {B!r} has no readable image for 1 prompts (e.g. images/{B}/0003_0.png" in message
    assert f"configuration {C!r} has no readable image for 1 prompts" in message
    assert "--skip-incomplete" in message
    assert not study_dir(ws, "broken").exists()
    kept = read_evaluation(broken, skip_incomplete=True)
    assert len(kept.items) == 5 and len(kept.dropped) == 2

    other = write_evaluation(tmp_path / "other")
    results = json.loads((other / "results.json").read_text())
    results["rows"] = [
        r for r in results["rows"] if not (r["configuration"] == A and r["background"] == "in a field")
    ]
    (other / "results.json").write_text(json.dumps(results))
    with pytest.raises(
        CurateError, match=re.escape(f"configuration {A!r} was evaluated on other prompts: it lacks 2 of 7")
    ):
        create(ws, other)
    escaping = write_evaluation(tmp_path / "escaping")
    results = json.loads((escaping / "results.json").read_text())
    results["rows"][0]["image"] = f"../broken/images/{B}/0000_0.png"  # a readable PNG, outside
    (escaping / "results.json").write_text(json.dumps(results))
    with pytest.raises(
        CurateError, match=re.escape(f"configuration {A!r} has no readable image for 1 prompts")
    ):
        create(ws, escaping)
    with pytest.raises(CurateError, match="no results.json"):
        create(ws, tmp_path)
    single = write_evaluation(tmp_path / "single", configs=(A,))
    with pytest.raises(CurateError, match="at least two"):
        create(ws, single)
    result = CliRunner().invoke(app, ["study", "create", str(other), "-w", str(ws.root)])
    assert result.exit_code == 1 and "was evaluated on other prompts" in str(result.exception)


MALFORMED_RESULTS = {
    "a row lacking its configuration": lambda r: r["rows"][0].pop("configuration"),
    "an image that is null": lambda r: r["rows"][1].update(image=None),
    "rows that are not a list": lambda r: r.update(rows={"0": r["rows"][0]}),
    "a row that is not an object": lambda r: r["rows"].append(["not", "a", "row"]),
    "concepts that are a string": lambda r: r["rows"][2].update(concepts="cat"),
    "every bucket label unknown": lambda r: [row.update(bucket="six") for row in r["rows"]],
    "no rows at all": lambda r: r.update(rows=[]),
    "not JSON": None,
}


@pytest.mark.parametrize("case", list(MALFORMED_RESULTS))
def test_a_malformed_results_file_is_one_error_naming_it(tmp_path: Path, case: str) -> None:
    """Each of these ended in a traceback (or, all buckets unknown, in an empty project with exit 0)."""
    ws = Workspace.create(tmp_path / "ws")
    folder = write_evaluation(tmp_path / "eval")
    results = json.loads((folder / "results.json").read_text())
    if (damage := MALFORMED_RESULTS[case]) is None:
        (folder / "results.json").write_text(json.dumps(results)[:-20])
    else:
        damage(results)
        (folder / "results.json").write_text(json.dumps(results))
    result = CliRunner().invoke(app, ["study", "create", str(folder), "-w", str(ws.root)])
    assert result.exit_code == 1 and isinstance(result.exception, CurateError), result.exception
    message = str(result.exception)
    assert "results.json is not a valid results record" in message and "\n" not in message
    assert not (ws.root / "study").exists()


def _annotate(rater, task, mapping_entry: dict, scores: dict[str, dict[str, int | None]], **extra: Any):
    """Scores given per configuration, written per slot as the blind page would, on the rater's own token."""
    slots = mapping_entry["slots"]
    per_slot = {criterion: [by_config[c] for c in slots] for criterion, by_config in scores.items()}
    return rater.annotations.create(id=task.id, result=score_result(per_slot), **extra)


def test_study_create_pull_report_against_hand_computation(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo, tmp_path: Path
) -> None:
    ws = labelstudio_workspace()
    add_concepts(ws)
    evaluation = write_evaluation(tmp_path / "eval-out")  # outside the document root: images are copied in
    report = create(ws, evaluation, raters=3)
    # balanced: each bucket gives as many prompts as the smallest has
    assert report.per_bucket == {"<=3": 2, "4": 2, "5": 2} and report.pushed == 6
    folder = study_dir(ws, "eval-out")
    mapping = json.loads((folder / "mapping.json").read_text())
    tasks = tasks_by_key(ws, report.project_id)
    assert sorted(tasks) == sorted(mapping) and len(tasks) == 6

    headers = {"Authorization": f"Token {labelstudio.token}"}
    orders = set()
    for key, task in tasks.items():
        entry = mapping[key]
        assert set(task.data) == {TASK_KEY, "prompt", "references", "image_1", "image_2", "image_3"}
        text = json.dumps(task.data)
        assert not any(name in text for name in (*CONFIGS, "CD", "MyCanvas", "Ours"))
        assert sorted(entry["slots"]) == sorted(CONFIGS)
        orders.add(tuple(entry["slots"]))
        for slot, config in enumerate(entry["slots"], start=1):
            served = requests.get(labelstudio.url + task.data[f"image_{slot}"], headers=headers, timeout=30)
            assert served.status_code == 200
            assert served.content == (evaluation / entry["sources"][config]).read_bytes()
            assert entry["sources"][config].endswith("_0.png")  # the first image of the prompt
        ref = task.data["references"].split('src="')[1].split('"')[0].replace("&amp;", "&")
        assert requests.get(labelstudio.url + ref, headers=headers, timeout=30).status_code == 200
    assert len(orders) > 1  # shuffled per task
    project = connect(ws).get_json(f"/api/projects/{report.project_id}", "test")
    assert project["maximum_annotations"] == 3  # --raters

    again = CliRunner().invoke(app, ["study", "create", str(evaluation), "-w", str(ws.root)])
    assert again.exit_code == 0, again.output
    assert "0 new tasks (6 already there" in again.output
    assert json.loads((folder / "mapping.json").read_text()) == mapping
    more = create(ws, evaluation, per_bucket=3)  # only <=3 has a third prompt
    assert (more.pushed, more.already) == (1, 6)
    assert set(mapping) < set(json.loads((folder / "mapping.json").read_text()))
    mapping = json.loads((folder / "mapping.json").read_text())
    tasks = tasks_by_key(ws, report.project_id)
    assert len(tasks) == 7
    assert (
        connect(ws).get_json(f"/api/projects/{report.project_id}", "test")["maximum_annotations"] == 3
    )  # kept

    emails = [f"rater{i}-{ws.name}@example.com" for i in range(2)]
    (id0, rater0), (id1, rater1) = (annotator_client(labelstudio, email) for email in emails)
    t1 = next(k for k in tasks if mapping[k]["bucket"] == "<=3")
    t2 = next(k for k in tasks if mapping[k]["bucket"] == "4")
    t3 = next(k for k in tasks if mapping[k]["bucket"] == "5")
    u1_t1 = _annotate(rater0, tasks[t1], mapping[t1],
                      {"alignment": {A: 2, B: 5, C: 8}, "fidelity": {A: 3, B: 6, C: 7}})  # fmt: skip
    _annotate(rater1, tasks[t1], mapping[t1],
              {"alignment": {A: 4, B: 5, C: 9}, "fidelity": {A: 3, B: 6, C: 7}})  # fmt: skip
    r0_t2 = {"alignment": {A: 6, B: 4, C: 10}, "fidelity": {A: 1, B: 2, C: 3}}
    _annotate(rater0, tasks[t2], mapping[t2], r0_t2)
    u2_t2 = _annotate(rater1, tasks[t2], mapping[t2],
                      {"alignment": {A: 6, B: 6, C: 8}, "fidelity": {A: 2, B: 3, C: 4}})  # fmt: skip
    empty_slot = mapping[t3]["slots"].index(B) + 1
    _annotate(rater0, tasks[t3], mapping[t3],
              {"alignment": {A: 5, B: 5, C: 5}, "fidelity": {A: 5, B: None, C: 5}})  # fmt: skip
    # rater 0 rates t2 again in rater 1's name (Label Studio takes completed_by from the request):
    # it is rater 0's second rating of t2, so it replaces their first and adds no rater
    _annotate(rater0, tasks[t2], mapping[t2], r0_t2, completed_by=id1)

    first = pull(ws)
    assert first.changed and first.annotations == 4 and first.tasks == 7
    again = "rated it again; only their latest rating counts"
    assert first.incomplete == sorted([
        f"task {tasks[t3].id} ({mapping[t3]['prompt']!r}) by rater {id0}: fidelity of image {empty_slot} is empty",
        f"task {tasks[t2].id} ({mapping[t2]['prompt']!r}) by rater {id0}: {again}",
    ])  # fmt: skip
    assert "not counted:" in first.summary()
    raw_pulls = sorted((folder / "pulls").glob("*.json"))
    second = CliRunner().invoke(app, ["study", "pull", "-w", str(ws.root)])
    assert second.exit_code == 0, second.output
    assert "nothing changed since the last pull" in second.output
    assert sorted((folder / "pulls").glob("*.json")) == raw_pulls

    result = CliRunner().invoke(app, ["study", "report", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    numbers = json.loads((folder / "report" / "results.json").read_text())
    cells = numbers["cells"]
    assert cells[A]["alignment"]["<=3"]["mean"] == 3.0
    assert cells[A]["alignment"]["<=3"]["std"] == pytest.approx(2**0.5)  # [2, 4]
    assert cells[A]["alignment"]["4"] == {"mean": 6.0, "std": 0.0, "n": 2, "tasks": 1, "ci95": [6.0, 6.0]}
    assert cells[A]["alignment"]["5"]["mean"] is None  # t3's only annotation was incomplete
    # [2, 4, 6, 6]: mean 4.5, squared deviations 6.25 + 0.25 + 2.25 + 2.25 = 11 over 3
    assert cells[A]["alignment"]["all"]["mean"] == 4.5
    assert cells[A]["alignment"]["all"]["std"] == pytest.approx((11 / 3) ** 0.5)
    assert cells[C]["alignment"]["all"]["mean"] == pytest.approx((8 + 9 + 10 + 8) / 4)
    low, high = cells[A]["alignment"]["all"]["ci95"]
    assert 3.0 <= low < high <= 6.0
    # configurations come sorted: B, A, C
    pairs = {(p["criterion"], p["a"], p["b"]): p for p in numbers["pairwise"]}
    # alignment task means: t1 B 5 vs A 3 (B wins), t2 B 5 vs A 6 (A wins); A loses both to C
    ba = pairs[("alignment", B, A)]
    assert (ba["wins"], ba["losses"], ba["ties"], ba["win_rate"], ba["p_value"]) == (1, 1, 0, 0.5, 1.0)
    ac = pairs[("alignment", A, C)]
    assert (ac["wins"], ac["losses"], ac["win_rate"]) == (0, 2, 0.0) and ac["p_value"] == pytest.approx(0.5)
    # fidelity units (t1: 3,3 6,6 7,7; t2: 1,2 2,3 3,4): D_o = 6 / 12; sum 47, sum of squares 231,
    # D_e = (2*12*231 - 2*47^2) / (12*11) = 1126 / 132
    assert numbers["agreement"]["fidelity"]["alpha"] == pytest.approx(1 - (6 / 12) / (1126 / 132))
    # alignment units (2,4 5,5 8,9 6,6 4,6 10,8): D_o = 26 / 12; sum 73, squares 503 -> D_e = 1414 / 132
    assert numbers["agreement"]["alignment"]["alpha"] == pytest.approx(1 - (26 / 12) / (1414 / 132))
    assert numbers["raters"] == 2 and numbers["ratings"] == 4
    table = (folder / "report" / "table.md").read_text()
    assert "> **weights: random**" in table
    assert f"| {A} | 3.00 (± 1.41) |" in table
    assert "2 incomplete ones not counted" in table
    assert (folder / "report" / "plot.png").read_bytes()[:4] == b"\x89PNG"

    rater0.annotations.delete(id=u1_t1.id)
    rater1.annotations.update(id=u2_t2.id, result=score_result(
        {"alignment": [1, 1, 1], "fidelity": [2, 2, 2]}))  # fmt: skip
    third = pull(ws)
    assert third.changed and third.annotations == 3
    cells = write_report(ws).results["cells"]
    assert cells[A]["alignment"]["<=3"] == {"mean": 4.0, "std": None, "n": 1, "tasks": 1, "ci95": [4.0, 4.0]}
    assert cells[A]["alignment"]["4"]["mean"] == pytest.approx((6 + 1) / 2)


def test_recreating_with_other_criteria_is_refused(
    labelstudio_workspace: Callable[..., Workspace], tmp_path: Path
) -> None:
    ws = labelstudio_workspace()
    add_concepts(ws)
    evaluation = write_evaluation(tmp_path / "run", weights="pretrained")
    create(ws, evaluation, criteria=["alignment"], raters=1, per_bucket=1)
    with pytest.raises(CurateError, match="created with criteria alignment"):
        create(ws, evaluation, criteria=["alignment", "fidelity"])
    with pytest.raises(CurateError, match="and seed 0: pass another --name"):
        create(ws, evaluation, criteria=["alignment"], seed=1)
    copy = tmp_path / "run-copy"
    shutil.copytree(evaluation, copy)
    with pytest.raises(CurateError, match="no ratings yet"):
        write_report(ws, "run")
    assert create(ws, copy, name="run", criteria=["alignment"], raters=1, per_bucket=1).pushed == 0

"""`curate train` then `curate evaluate` on tiny random-init models: the table, the JSON, the plot, the numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from curation.core.buckets import msp_bucket
from curation.core.errors import CurateError
from personalization.cli_commands import evaluate_command, train_command
from tests.fixtures.personalization_export import build_tiny_export
from tests.fixtures.tiny_clip import register_tiny_clip
from tests.fixtures.tiny_pipelines import build_tiny_dinov2, build_tiny_owlvit, build_tiny_sd

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "sd": str(build_tiny_sd(folder, vae_downsample=8)),
        "owl": str(build_tiny_owlvit(folder)),
        "dino": str(build_tiny_dinov2(folder)),
        "clip": register_tiny_clip(),
    }


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    """The two commands registered the way the main CLI registers them."""
    app = typer.Typer()
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    return app


def _invoke(cli, args: list[str]):
    result = CliRunner().invoke(cli, args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def test_train_then_evaluate_writes_the_gen4gen_table(cli, models, tmp_path):
    export = build_tiny_export(tmp_path / "export")
    msal = _tiny_segmenter(tmp_path / "msal", sorted(p.name for p in (export / "concepts").iterdir()))
    common = ["--pretrained", models["sd"], "--steps", "2", "--resolution", "64", "--cpu"]
    _invoke(cli, ["train", str(export), "-o", str(tmp_path / "src"), "--source", "sources", *common])
    _invoke(cli, ["train", str(export), "-o", str(tmp_path / "ours"), "--gen4gen", *common])
    out = tmp_path / "eval"
    result = _invoke(
        cli,
        [
            "evaluate",
            str(export),
            "-o",
            str(out),
            "--run",
            f"CD + Source Images={tmp_path / 'src'}",
            "--run",
            f"Ours + MyCanvas={tmp_path / 'ours'}",
            "--run",
            f"SD={models['sd']}",
            "--clip-model",
            models["clip"],
            "--clip-pretrained",
            "",
            "--detector",
            models["owl"],
            "--dino",
            models["dino"],
            "--prompts-per-set",
            "1",
            "--images-per-prompt",
            "1",
            "--steps",
            "1",
            "--resolution",
            "64",
            "--detection-threshold",
            "0.0",
            "--device",
            "cpu",
            "--subject-segmenter",
            str(msal),
        ],
    )
    assert "CP-CLIP" in result.output and "MSP Table 1" in result.output

    table = (out / "table.md").read_text()
    assert "weights: random" in table
    assert (
        "| Configuration | ≤3 CP-CLIP | ≤3 TI-CLIP | 4 CP-CLIP | 4 TI-CLIP | 5 CP-CLIP | 5 TI-CLIP |" in table
    )
    for label in ("CD + Source Images", "Ours + MyCanvas", "SD"):
        assert table.count(f"| {label} |") == 3  # one row in each of the three tables
    assert (
        "| Configuration | n=1 CLIP-I | n=1 CLIP-T | n=1 SAS | n=2 CLIP-I | n=2 CLIP-T | n=2 SAS | n=3 CLIP-I |"
        in table
    )
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = json.loads((out / "results.json").read_text())
    assert results["weights"]["clip"] == "random"
    rows = results["rows"]
    assert len(rows) == 9  # 3 configurations x 3 concept sets x 1 prompt x 1 image
    ours = [r for r in rows if r["configuration"] == "Ours + MyCanvas"]
    assert all("; background: " in r["prompt"] and r["prompt"].count("<c-cat> cat") == 2 for r in ours)
    assert all("<c-" not in r["plain_text"] for r in rows)
    for b in ("<=3", "4", "5"):
        assert results["aggregates"]["SD"]["cp_clip"][b]["n"] == 1
    for row in rows:
        assert (out / row["image"]).exists()
        assert 0.0 <= row["cp_clip"] <= 1.0 and 0.0 <= row["dnc"] <= 1.0
        assert row["clip_t"] == pytest.approx(2.5 * max(row["ti_clip"], 0.0))  # same text, CLIPScore scale
        assert all(d is None or d["score"] >= 0.0 for d in row["detected"])
        assert (row["cp_clip"] == 0.0) == all(d is None for d in row["detected"])
        assert row["dnc"] == 0.0 or row["n_detected"] == row["n_concepts"]
        assert -1.0 <= row["sas"] <= 1.0 and row["msp_bucket"] == (
            str(row["n_concepts"]) if row["n_concepts"] <= 3 else ">3"
        )
    msp = results["msp_aggregates"]["SD"]
    assert sum(msp["sas"][b]["n"] for b in ("1", "2", "3", ">3")) == 3
    assert msp["sas"]["all"]["mean"] == pytest.approx(
        np.mean([r["sas"] for r in rows if r["configuration"] == "SD"])
    )
    assert any(any(d is not None for d in r["detected"]) for r in rows), "no crop ever scored"

    # TI-CLIP recomputed independently from the saved image and text with the same CLIP
    from PIL import Image

    from curation.scores.clip import load_clip

    clip = load_clip(models["clip"], None, device="cpu")
    row = rows[0]
    image_emb = clip.embed_images([Image.open(out / row["image"]).convert("RGB")])[0]
    text_emb = clip.embed_texts([row["plain_text"]])[0]
    assert row["ti_clip"] == pytest.approx(float(np.dot(image_emb, text_emb)), abs=1e-5)
    agg = results["aggregates"]["SD"]["ti_clip"]["<=3"]["mean"]
    assert agg == pytest.approx(
        next(r["ti_clip"] for r in rows if r["configuration"] == "SD" and r["bucket"] == "<=3")
    )


def _msp_table(table: str) -> list[list[str]]:
    """The cells of the MSP Table 1 rows in table.md (header and rule left out)."""
    section = table.split("### MSP Table 1")[1].split("\n\n")[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()[2:]]


# 12 images through the MSP loop and three scorers: 4.5 min on a 2-core machine at load 10
@pytest.mark.timeout(600)
def test_msp_rows_fill_table_1(cli, models, tmp_path):
    """MSP with/without scaffold and with SAL as rows beside a baseline: same prompts, layouts, seeds."""
    from PIL import Image

    from personalization.data import read_export
    from personalization.heldout_layouts import concept_records, heldout_plans
    from personalization.prompts import PromptStrategy, heldout_prompts

    export = build_tiny_export(tmp_path / "export")
    for mask in export.glob("concepts/*/masks/*.png"):  # 8-bit alpha, as `curate export` writes them
        alpha = np.zeros((64, 64), np.uint8)
        alpha[8:56, 16:48] = 255
        Image.fromarray(alpha).save(mask)
    msal = _tiny_segmenter(tmp_path / "msal", sorted(p.name for p in (export / "concepts").iterdir()))
    out = tmp_path / "eval"
    result = _invoke(
        cli,
        ["evaluate", str(export), "-o", str(out), "--run", f"SD={models['sd']}", "--msp", models["sd"]]
        + ["--msp-configs", "msp,msp-noscaffold,msp-sal", "--sal-scale", "50", "--kappa", "0.5"]
        + ["--clip-model", models["clip"], "--clip-pretrained", "", "--detector", models["owl"]]
        + ["--dino", models["dino"], "--prompts-per-set", "1", "--images-per-prompt", "1", "--steps", "3"]
        + ["--resolution", "64", "--device", "cpu", "--subject-segmenter", str(msal)],
    )
    assert "MSP Table 1" in result.output
    table = _msp_table((out / "table.md").read_text())
    assert [r[0] for r in table] == ["SD", "MSP", "MSP without scaffold", "MSP + SAL"]
    for cells in table:
        # the export's sets have 2, 4 and 5 concepts: nothing in n=1 and n=3, two prompts in >3
        assert cells[-1] == "0/1/0/2"
        assert cells[1:4] == ["–", "–", "–"] and cells[7:10] == ["–", "–", "–"]
        assert all(c != "–" for c in cells[4:7] + cells[10:13])

    results = json.loads((out / "results.json").read_text())
    rows = {c: [r for r in results["rows"] if r["configuration"] == c] for c, *_ in table}
    assert [len(r) for r in rows.values()] == [3, 3, 3, 3]
    assert results["configurations"]["MSP + SAL"] == f"msp (scaffold on, SAL on): {models['sd']}"
    exp = read_export(export)
    prompts = heldout_prompts(exp, PromptStrategy(), per_set=1)
    plans = heldout_plans(exp, prompts, concept_records(exp), 64, 0)
    sas_moved = []
    for index, base in enumerate(rows["SD"]):
        msp_rows = [rows[c][index] for c in ("MSP", "MSP without scaffold", "MSP + SAL")]
        for row in msp_rows:  # the same held-out prompt as the baseline's, so the study can pair them
            assert (row["plain_text"], row["background"], row["concepts"]) == (
                base["plain_text"],
                base["background"],
                base["concepts"],
            )
            assert (
                row["msp_bucket"]
                == base["msp_bucket"]
                == (str(len(base["concepts"])) if len(base["concepts"]) <= 3 else ">3")
            )
            # the layout is the rules planner's for this prompt and seed, shared by every MSP row
            assert row["plan"]["plan_id"] == plans[index].plan_id
            assert row["msp"]["segments"] == [b.concept_id for b in plans[index].boxes] + ["<background>"]
            assert row["msp"]["segment_source"] == "masks" and row["prompt"] == row["msp"]["global_prompt"]
            assert row["image"].startswith(f"images/{row['configuration']}/")
        plain, unscaffolded, guided = msp_rows
        assert (plain["msp"]["scaffold"], unscaffolded["msp"]["scaffold"], guided["msp"]["scaffold"]) == (
            True,
            False,
            True,
        )
        assert "sal" not in plain["msp"] and guided["msp"]["sal"]["scale"] == 50.0
        assert plain["msp"]["seed"] == guided["msp"]["seed"] == unscaffolded["msp"]["seed"]
        pixels = [np.asarray(Image.open(out / r["image"]), dtype=np.int16) for r in msp_rows]
        assert np.abs(pixels[0] - pixels[2]).max() > 0, "SAL on vs off must change the image"
        assert np.abs(pixels[0] - pixels[1]).max() > 0, "the scaffold must change the image"
        assert plain["clip_i"] != guided["clip_i"]
        sas_moved.append(plain["sas"] != guided["sas"])
    assert any(sas_moved), "SAL never changed what M_SAL sees"
    assert [p.plan_id for p in heldout_plans(exp, prompts, concept_records(exp), 64, 1)] != [
        p.plan_id for p in plans
    ], "the layouts follow the seed"
    msp = results["msp_aggregates"]["MSP + SAL"]
    assert msp["clip_i"]["2"]["mean"] == pytest.approx(rows["MSP + SAL"][0]["clip_i"])
    assert msp["sas"][">3"]["n"] == 2 and msp["sas"]["1"]["n"] == 0


def _tiny_segmenter(folder, concepts: list[str]):
    """A random-init M_SAL folder for `concepts`, written the way `curate train-segmenter` writes one."""
    import torch

    from curation.models.subject_segmenter import SegmenterSettings, build_unet, save_segmenter

    settings = SegmenterSettings(
        encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4), encoder_weights="", size=32
    )
    torch.manual_seed(0)
    save_segmenter(
        folder, build_unet(settings, len(concepts) + 1), concepts, settings, encoder_weights="random"
    )
    return folder


def test_bad_inputs_fail_with_one_line(cli, models, tmp_path):
    export = build_tiny_export(tmp_path / "export")
    with pytest.raises(CurateError, match="LABEL=PATH"):
        _invoke(cli, ["evaluate", str(export), "-o", str(tmp_path / "e"), "--run", "no-equals-sign"])
    with pytest.raises(CurateError, match="no metadata.jsonl"):
        _invoke(cli, ["train", str(tmp_path), "-o", str(tmp_path / "t"), "--pretrained", models["sd"]])
    with pytest.raises(CurateError, match="unknown method"):
        _invoke(cli, ["train", str(export), "-o", str(tmp_path / "t"), "--method", "dreambooth"])
    narrow = _tiny_segmenter(tmp_path / "narrow", ["zebra"])
    with pytest.raises(CurateError, match="has no class for"):
        _invoke(
            cli,
            [
                "evaluate",
                str(export),
                "-o",
                str(tmp_path / "e"),
                "--run",
                f"SD={models['sd']}",
                "--subject-segmenter",
                str(narrow),
            ],
        )
    assert not (tmp_path / "e" / "images").exists()
    msp = ["evaluate", str(export), "-o", str(tmp_path / "e"), "--msp", models["sd"]]
    with pytest.raises(CurateError, match="need a subject segmenter"):
        _invoke(cli, [*msp, "--msp-configs", "msp,msp-sal"])
    with pytest.raises(CurateError, match="unknown MSP configuration 'msp-xl'"):
        _invoke(cli, [*msp, "--msp-configs", "msp-xl"])
    with pytest.raises(CurateError, match="'MSP' given twice"):
        _invoke(cli, [*msp, "--run", f"MSP={models['sd']}"])
    with pytest.raises(CurateError, match="less than one: raise --steps"):
        _invoke(cli, [*msp, "--steps", "1"])
    assert not (tmp_path / "e" / "images").exists()
    with pytest.raises(CurateError, match="cannot load pipeline"):
        _invoke(
            cli, ["train", str(export), "-o", str(tmp_path / "t"), "--pretrained", str(tmp_path / "nope")]
        )


def test_single_subjects_fill_the_one_subject_column(tmp_path):
    """An export holds multi-concept sets only; --single-subjects adds each concept alone, after them."""
    from personalization.data import read_export
    from personalization.prompts import PromptStrategy, heldout_prompts

    export = read_export(build_tiny_export(tmp_path / "export"))
    plain = heldout_prompts(export, PromptStrategy(), per_set=1)
    prompts = heldout_prompts(export, PromptStrategy(), per_set=1, single_subjects=True)
    assert prompts[:3] == plain
    assert [p.concepts for p in prompts[3:]] == [(c,) for c in export.concepts]
    assert [msp_bucket(len(p.concepts)) for p in prompts] == ["2", ">3", ">3", "1", "1", "1", "1", "1"]
    assert all(
        p.plain_text == f"{export.concepts[p.concepts[0]].class_noun} {p.background}" for p in prompts[3:]
    )

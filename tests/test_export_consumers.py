"""The export as the ecosystem's own loaders and trainers see it (issues 13 and 28).

Each route is exercised with the consumer's own code where it is installed here: `datasets`' imagefolder
and webdataset builders, the `webdataset` package, and `curate train`'s reader. Here the commands'
arguments are checked against what diffusers' scripts do with them (open the concepts-list paths
against the current directory, which the command's leading cd makes the export, split
`--modifier_token` on '+'); test_export_travels.py runs every command with the scripts themselves.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from curation.core.config import ExportConfig, dump_config, load_config
from curation.core.errors import CurateError
from exports.mycanvas import export_mycanvas
from personalization.lora_flux import TRAIN_GUIDANCE
from tests.fixtures.personalization_export import build_tiny_export
from tests.test_export import EXPORTED, NOUNS, Built, _png, build_workspace, read_rows, tree_digest


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    return build_workspace(tmp_path_factory.mktemp("consumers-ws") / "ws")


@pytest.fixture(scope="module")
def exported(built) -> Path:
    return export_mycanvas(built.ws, formats="mycanvas,webdataset", shard_size=3).path


def _commands(export: Path) -> dict[str, list[str]]:
    data = json.loads((export / "train_commands.json").read_text())
    assert set(data["variables"]) >= {"EXPORT", "DIFFUSERS", "PRETRAINED"}
    commands = {c["name"]: shlex.split(c["command"]) for c in data["commands"]}
    assert all(argv[:3] == ["cd", "${EXPORT:-.}", "&&"] for argv in commands.values())
    return {name: argv[3:] for name, argv in commands.items()}


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_card_and_json_carry_the_same_commands_with_tokens_filled_in(built, exported):
    data = json.loads((exported / "train_commands.json").read_text())
    card = (exported / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", card, flags=re.DOTALL)
    assert blocks == [c["command"] for c in data["commands"]]
    commands = _commands(exported)
    assert set(commands) == {
        "custom_diffusion_concepts",
        "custom_diffusion_compositions",
        "dreambooth_multi_subject",
        "dreambooth_lora_advanced",
        "dreambooth_lora_sdxl_advanced",
        "dreambooth_lora_flux_advanced",
        "curate_train",
        "curate_train_sdxl",
        "curate_train_flux",
    }
    ids = sorted(NOUNS)
    for name in ("custom_diffusion_concepts", "custom_diffusion_compositions"):
        argv = commands[name]
        assert argv[1] == "$DIFFUSERS/examples/custom_diffusion/train_custom_diffusion.py"
        # the script pairs the '+'-split lists and needs as many initializers as modifiers (its default has 3)
        assert _flag(argv, "--modifier_token").split("+") == [f"<c-{c}>" for c in ids]
        assert _flag(argv, "--initializer_token").split("+") == [NOUNS[c] for c in ids]
        assert "--with_prior_preservation" not in argv  # no class images were exported
    bases = {
        "dreambooth_lora_advanced": ("sd15", "$PRETRAINED", "512"),
        "dreambooth_lora_sdxl_advanced": ("sdxl", "$PRETRAINED_SDXL", "1024"),
        "dreambooth_lora_flux_advanced": ("flux", "$PRETRAINED_FLUX", "512"),
    }
    for name, (script, variable, resolution) in bases.items():
        lora = commands[name]
        assert (
            lora[8]
            == f"$DIFFUSERS/examples/advanced_diffusion_training/train_dreambooth_lora_{script}_advanced.py"
        )
        assert _flag(lora, "--pretrained_model_name_or_path").startswith("${" + variable[1:] + ":-")
        assert _flag(lora, "--dataset_name") == ".."  # the export, from its runs/
        assert _flag(lora, "--caption_column") == "caption"  # per-image captions
        abstractions = _flag(lora, "--token_abstraction").split(",")
        assert abstractions == [f"<c-{c}>" for c in ids]  # by concept id: the evaluator's row order
        assert all(
            set(re.findall(r"<c-[a-z]+>", row["caption"])) <= set(abstractions)
            for row in read_rows(exported).values()
        )
        assert _flag(lora, "--num_new_tokens_per_abstraction") == "1" and "--train_text_encoder_ti" in lora
        assert _flag(lora, "--resolution") == resolution
        if script == "flux":  # trains as `curate train --base flux` does (the script's default is 3.5)
            assert float(_flag(lora, "--guidance_scale")) == TRAIN_GUIDANCE
        # the SD 1.5 / SDXL scripts save to f"{output_dir}/{output_dir}_emb.safetensors": relative, after a cd
        assert lora[:6] == ["mkdir", "-p", "runs", "&&", "cd", "runs"]
        assert _flag(lora, "--output_dir") == name
    for name, base in (("curate_train", None), ("curate_train_sdxl", "sdxl"), ("curate_train_flux", "flux")):
        argv = commands[name]
        assert argv[:3] == ["curate", "train", "."] and "--gen4gen" in argv
        assert ("--base" in argv) == bool(base) and (not base or _flag(argv, "--base") == base)
    for name, argv in commands.items():
        if name not in bases:
            output = _flag(argv, "--output_dir" if "--output_dir" in argv else "--output")
            assert output == f"runs/{name}"


def test_concepts_lists_open_from_the_export(exported, monkeypatch):
    """What both diffusers scripts do with the list: Path(instance_data_dir).iterdir() from the cwd,
    which the command's `cd "${EXPORT:-.}"` makes the export."""
    monkeypatch.chdir(exported)
    commands = _commands(exported)
    for name in ("custom_diffusion_concepts", "custom_diffusion_compositions", "dreambooth_multi_subject"):
        entries = json.loads(Path(_flag(commands[name], "--concepts_list")).read_text())
        for entry in entries:
            files = [p for p in Path(entry["instance_data_dir"]).iterdir() if p.is_file()]
            assert files and all(p.suffix == ".png" for p in files)
            assert not Path(entry["class_data_dir"]).is_absolute()
            assert Path(entry["class_data_dir"]).resolve().is_relative_to(exported.resolve())


def test_datasets_loads_exactly_the_compositions_by_folder_and_by_imagefolder(exported, tmp_path):
    import datasets

    card = _front_matter((exported / "README.md").read_text())
    assert card["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "train/**"}]}
    ]
    rows = read_rows(exported)
    by_folder = datasets.load_dataset(str(exported), split="train", cache_dir=str(tmp_path / "a"))
    by_builder = datasets.load_dataset(
        "imagefolder", data_dir=str(exported), split="train", cache_dir=str(tmp_path / "b")
    )
    for loaded in (by_folder, by_builder):
        assert sorted(loaded["candidate_id"]) == sorted(rows)  # no reference photo, mask or class image
        assert {"image", "caption", "tokens", "boxes", "background"} <= set(loaded.column_names)
        for example in loaded:
            assert example["caption"] == rows[example["candidate_id"]]["caption"]
            assert example["image"].size == (64, 64)


def test_a_re_export_loads_fresh_rows_not_the_datasets_cache(tmp_path):
    """`load_dataset(<folder>)` caches by the card: the card's dataset_info changes with the rows."""
    import datasets

    built = build_workspace(tmp_path / "ws")
    cache = str(tmp_path / "cache")
    first = read_rows(export_mycanvas(built.ws, min_quality=5).path)
    folder = str(built.ws.exports_dir / "mycanvas")
    assert datasets.load_dataset(folder, split="train", cache_dir=cache).num_rows == len(first)
    second = read_rows(export_mycanvas(built.ws, min_quality=1).path)
    assert len(second) > len(first)
    again = datasets.load_dataset(folder, split="train", cache_dir=cache)
    assert sorted(again["candidate_id"]) == sorted(second)


def test_webdataset_concept_shards_carry_references_and_masks(built, exported, tmp_path):
    import datasets
    import webdataset as wds

    concepts = {cid: json.loads((exported / f"concepts/{cid}/concept.json").read_text()) for cid in NOUNS}
    shards = sorted(str(p) for p in (exported / "webdataset").glob("concepts-*.tar"))
    seen = {}
    for sample in wds.WebDataset(shards, shardshuffle=False):  # raw bytes, as streamed
        card = json.loads(sample["json"])
        concept = concepts[card["concept_id"]]
        k = int(sample["__key__"].rsplit("-", 1)[1])
        assert sample["ref.png"] == (exported / concept["refs"][k]).read_bytes()
        assert sample["mask.png"] == (exported / concept["masks"][k]).read_bytes()
        assert card["token"] == concept["token"] and card["class_noun"] == concept["class_noun"]
        seen[sample["__key__"]] = card
    assert sorted(seen) == sorted(f"{c}-{k:03d}" for c in NOUNS for k in range(2))

    loaded = datasets.load_dataset(
        "webdataset", data_files=shards, split="train", cache_dir=str(tmp_path / "wds")
    )
    assert len(loaded) == 2 * len(NOUNS)
    assert loaded[0]["ref.png"].size == (32, 32) and loaded[0]["mask.png"].size == (32, 32)
    card = (exported / "README.md").read_text()
    assert "webdataset/concepts-*.tar" in card and "webdataset.WebDataset(" in card


def test_token_format_rewrites_captions_lists_cards_and_commands(tmp_path):
    built = build_workspace(tmp_path / "ws")
    config = built.ws.config
    config.export.token_format = "sks{n}"
    built.ws.config_path.write_text(dump_config(config))
    export = export_mycanvas(built.ws, formats="mycanvas,webdataset").path
    tokens = {cid: f"sks{n}" for n, cid in enumerate(sorted(NOUNS), start=1)}

    rows = read_rows(export)
    assert len(rows) == len(EXPORTED)
    for row in rows.values():
        assert row["tokens"] == [tokens[c] for c in row["concepts"]]
        assert all(f"{tokens[c]} {NOUNS[c]}" in row["caption"] for c in row["concepts"])
    assert json.loads((export / "concepts/cat/concept.json").read_text())["token"] == "sks1"
    entries = json.loads((export / "concepts_list.json").read_text())
    assert [e["instance_prompt"] for e in entries] == [
        f"photo of a {tokens[c]} {NOUNS[c]}" for c in sorted(NOUNS)
    ]
    commands = _commands(export)
    assert _flag(commands["custom_diffusion_concepts"], "--modifier_token") == "sks1+sks2+sks3+sks4+sks5"
    for name in (
        "dreambooth_lora_advanced",
        "dreambooth_lora_sdxl_advanced",
        "dreambooth_lora_flux_advanced",
    ):
        assert _flag(commands[name], "--token_abstraction") == "sks1,sks2,sks3,sks4,sks5"
    assert json.loads((export / "manifest.json").read_text())["tokens"] == tokens
    leftovers = [
        p.relative_to(export).as_posix()
        for p in export.rglob("*")
        if p.suffix in {".json", ".jsonl", ".md"} and "<c-" in p.read_text()
    ]
    assert leftovers == []

    from personalization.data import read_export

    assert {c: e.token for c, e in read_export(export).concepts.items()} == tokens


@pytest.mark.parametrize(
    ("token_format", "complaint"),
    [
        ("sks", "must use {id} or {n}"),
        ("{id}", "fixed text"),
        ("<c {n}>", "spaces"),
        ("t{n}{x}", "no other field"),
    ],
)
def test_bad_token_formats_are_config_errors(tmp_path, token_format, complaint):
    path = tmp_path / "curate.toml"
    path.write_text(f'[export]\ntoken_format = "{token_format}"\n')
    with pytest.raises(CurateError, match=re.escape(complaint)):
        load_config(path)
    assert ExportConfig().token_format == "<c-{id}>"


def test_class_images_fill_the_lists_commands_and_survive_re_exports(tmp_path):
    built = build_workspace(tmp_path / "ws")
    priors = tmp_path / "priors"
    for n, noun in enumerate(sorted(NOUNS)):
        for k in range(3):
            (priors / noun).mkdir(parents=True, exist_ok=True)
            (priors / noun / f"{k}.png").write_bytes(_png(7000 + 10 * n + k, 16))
    with pytest.raises(CurateError, match="class 'cat': 3 images .*, 4 asked"):
        export_mycanvas(built.ws, class_images_from=priors, class_images=4)

    report = export_mycanvas(built.ws, class_images_from=priors, class_images=2)
    export = report.path
    compositions = {
        e["class_data_dir"]: e["class_prompt"]
        for e in json.loads((export / "concepts_list_compositions.json").read_text())
    }
    expected = {f"class_images/{noun}": 2 for noun in NOUNS} | {folder: 2 for folder in compositions}
    assert report.class_images == expected and len(compositions) == 5
    assert json.loads((export / "manifest.json").read_text())["counts"]["class_images"] == expected
    assert "20 class images in 10 class folders" in report.summary()
    # a composition's class without its own folder in priors/ takes its members' images in turn
    assert sorted(p.name for p in (export / "class_images/cat_and_dog").iterdir()) == [
        "cat-0.png",
        "dog-0.png",
    ]
    assert (export / "class_images/cat_and_dog/dog-0.png").read_bytes() == (priors / "dog/0.png").read_bytes()
    commands = _commands(export)
    for name in ("custom_diffusion_concepts", "custom_diffusion_compositions"):
        argv = commands[name]
        assert "--with_prior_preservation" in argv and _flag(argv, "--num_class_images") == "2"
        assert _flag(argv, "--prior_loss_weight") == "1"
    assert all(
        "--prior-preservation" in commands[n]
        for n in ("curate_train", "curate_train_sdxl", "curate_train_flux")
    )
    # multi-subject DreamBooth indexes class images modulo the subject's position: 2 < 5 subjects
    assert "--with_prior_preservation" not in commands["dreambooth_multi_subject"]

    # diffusers' script generates the composition classes into class_data_dir; the next export keeps all
    generated = export / "class_images" / "mug_and_plant" / "generated-0.png"
    generated.write_bytes(_png(9, 16))
    (export / "runs/custom_diffusion_concepts").mkdir(parents=True)  # what a command trained in place
    (export / "runs/custom_diffusion_concepts/weights.safetensors").write_bytes(b"trained")
    before = {k: v for k, v in tree_digest(export).items() if k.startswith(("class_images/", "runs/"))}
    again = export_mycanvas(built.ws)
    after = {k: v for k, v in tree_digest(again.path).items() if k.startswith(("class_images/", "runs/"))}
    assert after == before and len(after) == 22

    from personalization.data import read_export

    assert all(len(c.class_images) == 2 for c in read_export(export).concepts.values())


def test_cli_export_takes_class_images_and_train_takes_prior_preservation(tmp_path):
    from typer.testing import CliRunner

    from curation.cli import app

    built = build_workspace(tmp_path / "ws")
    priors = tmp_path / "priors"
    for n, noun in enumerate(sorted(NOUNS)):
        (priors / noun).mkdir(parents=True)
        (priors / noun / "0.png").write_bytes(_png(8000 + n, 16))
    args = ["export", "-w", str(built.ws.root), "--class-images-from", str(priors), "--class-images", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "10 class images in 10 class folders" in result.output
    no_priors = build_tiny_export(tmp_path / "plain")  # the flag reaches the trainer, which checks first
    args = ["train", str(no_priors), "-o", str(tmp_path / "run"), "--prior-preservation", "--cpu"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, CurateError)
    assert "prior preservation needs class images" in str(result.exception)

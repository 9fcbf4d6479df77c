"""One token per concept in every route, and the kohya / OneTrainer layouts as their own readers see them.

Captions are tokenized the way each consumer does it, with the real CLIP BPE that Stable Diffusion
1.x/2.x and SDXL use (transformers' CLIPTokenizer from open_clip's merges, tests/fixtures/tiny_pipelines):
Custom Diffusion and `curate train` call `tokenizer.add_tokens(<c-x>...)`; DreamBooth-LoRA advanced
replaces each `--token_abstraction` in a caption by its new `<s_i>` tokens (added as special tokens);
multi-subject DreamBooth, kohya and OneTrainer add nothing.

kohya-ss sd-scripts is not on PyPI and its `library/` cannot be imported alone, so its dataset config
is validated with the voluptuous schema of `library/config_util.py` (ConfigSanitizer, commit 48d368f,
2026-02) transcribed key by key below, read with the `toml` package it uses, and its folders are read
as `DreamBoothDataset` reads them (`glob_images` without subfolders, `read_caption`, `class_tokens`
for a reg image without a caption file).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

from exports.identifiers import bpe, rare_words
from exports.mycanvas import export_mycanvas
from tests.fixtures.tiny_pipelines import load_clip_tokenizer, write_clip_tokenizer
from tests.test_export import EXPORTED, NOUNS, _png, build_workspace, read_rows

KOHYA_IMAGE_EXTENSIONS = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    built = build_workspace(root / "ws")
    priors = root / "priors"
    for n, noun in enumerate(sorted(NOUNS)):
        (priors / noun).mkdir(parents=True)
        for k in range(2):
            (priors / noun / f"{k}.png").write_bytes(_png(7000 + 10 * n + k, 16))
    return export_mycanvas(
        built.ws, formats="mycanvas,kohya,onetrainer", class_images_from=priors, class_images=2
    ).path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_clip_tokenizer(write_clip_tokenizer(tmp_path_factory.mktemp("tok")))


def _commands(export: Path) -> dict[str, list[str]]:
    data = json.loads((export / "train_commands.json").read_text())
    return {c["name"]: shlex.split(c["command"]) for c in data["commands"]}


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _manifest(export: Path) -> dict:
    return json.loads((export / "manifest.json").read_text())


def test_identifiers_are_rare_one_token_words_that_the_data_does_not_use(export, tokenizer):
    identifiers = _manifest(export)["identifiers"]
    assert sorted(identifiers) == sorted(NOUNS) and len(set(identifiers.values())) == len(NOUNS)
    for word in identifiers.values():
        assert tokenizer.tokenize(word) == [f"{word}</w>"]  # transformers agrees with exports.identifiers
        assert re.fullmatch(r"[b-df-hj-np-tv-xz]{3}", word)
    words = rare_words()
    assert "sks" in words and len(words) > 500  # DreamBooth's own choice is among them
    # the vocabulary check is the tokenizer's: the first 300 rare words and some that split
    for word in [*words[:300], "coin", "sksx", "teapot"]:
        assert (len(tokenizer.tokenize(word)) == 1) == (len(bpe(word)) == 1), word


def _one_each(pieces: list[str], prompt: str, words: dict[str, str]) -> None:
    """Every concept word of `prompt` is one piece; nothing of the angle-bracket form leaks into pieces."""
    for word in words.values():
        assert pieces.count(word) == prompt.count(word.removesuffix("</w>")), (word, pieces)
    assert "<" not in pieces and "-</w>" not in pieces and "c</w>" not in pieces, pieces


def test_custom_diffusion_and_curate_train_add_each_token_as_one(export, tokenizer):
    tokens = _manifest(export)["tokens"]
    commands = _commands(export)
    for name, list_file in (
        ("custom_diffusion_concepts", "concepts_list.json"),
        ("custom_diffusion_compositions", "concepts_list_compositions.json"),
    ):
        assert _flag(commands[name], "--concepts_list") == list_file
        added = tokenizer.__class__.from_pretrained(tokenizer.name_or_path, model_max_length=77)
        added.add_tokens(_flag(commands[name], "--modifier_token").split("+"))  # the script's own call
        for entry in json.loads((export / list_file).read_text()):
            _one_each(added.tokenize(entry["instance_prompt"]), entry["instance_prompt"], tokens)
        for word in _flag(commands[name], "--initializer_token").split("+"):
            assert len(added.encode(word, add_special_tokens=False)) == 1  # the script refuses more
    added = tokenizer.__class__.from_pretrained(tokenizer.name_or_path, model_max_length=77)
    added.add_tokens(list(tokens.values()))  # personalization.pivotal_tokens.add_concept_tokens
    for row in read_rows(export).values():
        _one_each(added.tokenize(row["caption"]), row["caption"], tokens)


def test_dreambooth_lora_advanced_replaces_each_token_by_one_new_token(export, tokenizer):
    argv = _commands(export)["dreambooth_lora_advanced"]
    abstractions = "".join(_flag(argv, "--token_abstraction").split()).split(",")
    per_abstraction = int(_flag(argv, "--num_new_tokens_per_abstraction"))
    # train_dreambooth_lora_sd15_advanced.py, main(): the mapping and the tokenizer it builds
    mapping, token_idx = {}, 0
    for i, token in enumerate(abstractions):
        mapping[token] = [f"<s{token_idx + i + j}>" for j in range(per_abstraction)]
        token_idx += per_abstraction - 1
    added = tokenizer.__class__.from_pretrained(tokenizer.name_or_path, model_max_length=77)
    added.add_special_tokens({"additional_special_tokens": [t for ts in mapping.values() for t in ts]})
    new = {token: "".join(ts) for token, ts in mapping.items()}
    for row in read_rows(export).values():
        caption = row["caption"]
        for token_abs, replacement in mapping.items():  # DreamBoothDataset.__getitem__
            caption = caption.replace(token_abs, "".join(replacement))
        pieces = added.tokenize(caption)
        assert sorted(p for p in pieces if p in new.values()) == sorted(new[t] for t in row["tokens"])
        assert "<" not in pieces


def test_scripts_that_add_no_tokens_read_one_token_identifiers(export, tokenizer):
    identifiers = _manifest(export)["identifiers"]
    words = {c: f"{w}</w>" for c, w in identifiers.items()}
    argv = _commands(export)["dreambooth_multi_subject"]
    entries = json.loads((export / _flag(argv, "--concepts_list")).read_text())
    assert len(entries) == len(NOUNS)
    for entry in entries:
        _one_each(tokenizer.tokenize(entry["instance_prompt"]), entry["instance_prompt"], words)
    captions = sorted(export.glob("captioned/*/*.txt")) + sorted(export.glob("onetrainer/references/*/*.txt"))
    assert len(captions) == len(EXPORTED) + 2 * len(NOUNS)
    for path in captions:
        text = path.read_text()
        assert "<c-" not in text and any(w in text.split() for w in identifiers.values())
        _one_each(tokenizer.tokenize(text), text, words)


# library/config_util.py, ConfigSanitizer (support_dreambooth=True, support_finetuning=True, dropout on),
# the DreamBooth branch of validate_flex_dataset: key -> type, as kohya declares them
def _kohya_schema():
    from voluptuous import Any, ExactSequence, Required, Schema

    def twodim(klass):
        return lambda value: tuple(Schema(ExactSequence([klass, klass]))(value))

    def scalar_or_twodim(klass):
        def convert(value):
            Schema(Any(klass, ExactSequence([klass, klass])))(value)
            return (value, value) if isinstance(value, klass) else tuple(value)

        return convert

    subset_ascendable = {
        "color_aug": bool, "face_crop_aug_range": twodim(float), "flip_aug": bool, "num_repeats": int,
        "random_crop": bool, "shuffle_caption": bool, "keep_tokens": int, "keep_tokens_separator": str,
        "secondary_separator": str, "caption_separator": str, "enable_wildcard": bool,
        "token_warmup_min": int, "token_warmup_step": Any(float, int), "caption_prefix": str,
        "caption_suffix": str, "custom_attributes": dict, "resize_interpolation": str,
    }  # fmt: skip
    dropout = {
        "caption_dropout_every_n_epochs": int,
        "caption_dropout_rate": Any(float, int),
        "caption_tag_dropout_rate": Any(float, int),
    }
    db_ascendable = {"caption_extension": str, "class_tokens": str, "cache_info": bool}
    db_distinct = {Required("image_dir"): str, "is_reg": bool, "alpha_mask": bool}
    dataset_ascendable = {
        "batch_size": int, "bucket_no_upscale": bool, "bucket_reso_steps": int, "enable_bucket": bool,
        "max_bucket_reso": int, "min_bucket_reso": int, "validation_seed": int, "validation_split": float,
        "resolution": scalar_or_twodim(int), "network_multiplier": float, "resize_interpolation": str,
    }  # fmt: skip
    db_subset = {**subset_ascendable, **db_distinct, **db_ascendable, **dropout}
    db_dataset = {
        **dataset_ascendable,
        **subset_ascendable,
        **db_ascendable,
        **dropout,
        "subsets": [db_subset],
    }
    general = {**dataset_ascendable, **subset_ascendable, **db_ascendable, **dropout}
    return Schema({"general": general, "datasets": [db_dataset]})


def _kohya_caption(image: str, caption_extension: str) -> str | None:
    """train_util.DreamBoothDataset.read_caption: `<stem><ext>` (or its face-crop name), first line."""
    base = os.path.splitext(image)[0]
    path = base + caption_extension
    if not os.path.isfile(path):
        return None
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    assert lines, f"caption file is empty: {path}"
    return lines[0].strip()


def test_kohya_dataset_config_passes_its_schema_and_reads_every_caption(export, monkeypatch):
    import toml

    argv = _commands(export)["kohya_lora"]
    assert argv[:3] == ["cd", "${EXPORT:-.}", "&&"]  # shlex keeps the variable for the shell
    config_path = _flag(argv, "--dataset_config")
    assert not Path(config_path).is_absolute() and _flag(argv, "--output_dir") == "runs/kohya_lora"
    assert _flag(argv, "--prior_loss_weight") == "1"
    config = _kohya_schema()(toml.load(export / config_path))  # kohya: toml.load, then the sanitizer
    assert config["general"]["caption_extension"] == ".txt"
    [dataset] = config["datasets"]
    assert dataset["resolution"] == (512, 512) and dataset["batch_size"] == 1
    # kohya's own reader on this export (by hand) divided by zero with bucket_no_upscale: the
    # 16 px class images got a 0-wide bucket; without it kohya upscales them into a bucket
    assert dataset["enable_bucket"] is True and not dataset.get("bucket_no_upscale", False)
    monkeypatch.chdir(export)  # the command's cd
    rows = {row["candidate_id"]: row for row in read_rows(export).values()}
    identifiers = _manifest(export)["identifiers"]
    seen, regs = {}, {}
    for subset in dataset["subsets"]:
        assert not os.path.isabs(subset["image_dir"])
        ext = subset.get("caption_extension", config["general"]["caption_extension"])
        images = sorted(
            {p for e in KOHYA_IMAGE_EXTENSIONS for p in glob.glob(os.path.join(subset["image_dir"], "*" + e))}
        )
        assert images, subset
        for image in images:
            caption = _kohya_caption(image, ext)
            if subset.get("is_reg"):
                assert caption is None  # so kohya captions it with class_tokens
                regs[subset["image_dir"]] = subset["class_tokens"]
            else:
                seen[Path(image).stem] = caption
    assert set(seen) == set(rows)
    for candidate_id, caption in seen.items():
        expected = rows[candidate_id]["caption"]
        for concept in rows[candidate_id]["concepts"]:
            expected = expected.replace(f"<c-{concept}>", identifiers[concept])
        assert caption == expected
    assert regs["class_images/cat"] == "cat" and regs["class_images/cat_and_dog"] == "cat and dog"
    assert len(regs) == len(NOUNS) + len({r["composition"] for r in rows.values()})


def test_onetrainer_concepts_read_captions_and_single_channel_masks(export, monkeypatch):
    concepts = json.loads((export / "onetrainer/concepts.json").read_text())
    monkeypatch.chdir(export)  # OneTrainer resolves concept paths against where it starts
    by_type: dict[str, list[dict]] = {}
    for concept in concepts:
        by_type.setdefault(concept.get("type", "STANDARD"), []).append(concept)
        assert not os.path.isabs(concept["path"]) and concept["include_subdirectories"] is False
        # CollectPaths: supported images, skipping -masklabel / -condlabel; ModifyPath: <stem>.txt, <stem>-masklabel.png
        images = [
            p for p in Path(concept["path"]).iterdir()
            if p.suffix == ".png" and not p.stem.endswith(("-masklabel", "-condlabel"))
        ]  # fmt: skip
        assert images
        text = concept["text"]
        for image in images:
            if text["prompt_source"] == "sample":
                assert image.with_suffix(".txt").read_text().strip()
            else:
                assert text["prompt_source"] == "concept" and Path(text["prompt_path"]).read_text().strip()
            if concept["path"].startswith("onetrainer/references/"):
                mask = Image.open(image.with_name(f"{image.stem}-masklabel.png"))
                assert mask.size == Image.open(image).size
                assert len(mask.getbands()) in (1, 3)  # LoadImage(channels=1) reads either
    assert len(by_type["STANDARD"]) == 5 + len(NOUNS)  # five composition folders, five reference folders
    assert {c["path"] for c in by_type["PRIOR_PREDICTION"]} >= {f"class_images/{n}" for n in NOUNS}

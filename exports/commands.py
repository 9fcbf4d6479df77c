"""`train_commands.json` and the card's "Train on this set": one command per consumer, runnable as printed.

Every command starts with `cd "${EXPORT:-.}"`: it runs as printed from inside the export folder (where
this card is), or from anywhere once `EXPORT` names the folder, on whatever machine the folder was
copied to. After the `cd` every path is relative to the export (the scripts resolve paths against the
current directory), and every run writes under the export's `runs/<command>/`, which re-exports keep.
The commands fill in what the user would otherwise build by hand from every concept.json (Custom
Diffusion's `--modifier_token` and `--initializer_token`, the advanced LoRA script's
`--token_abstraction`), give each concept one token in every route (the scripts that add tokens get
`<c-x>` added, one new token each; the others read one-token identifiers, see `exports.identifiers`),
and turn on prior preservation when the export holds class images for every class it would
regularise. What stays the user's, as shell variables: `$DIFFUSERS`, the absolute path of a clone of
github.com/huggingface/diffusers (its `examples/` are not in the pip package), and the base pipelines:
`$PRETRAINED` (Stable Diffusion 1.5 unless set), `$PRETRAINED_SDXL` (SDXL base 1.0) and
`$PRETRAINED_FLUX` (FLUX.1-dev, whose licence must be accepted on the hub first). The card and the
JSON carry the same strings.

Today's bases get the same recipe as SD 1.5's advanced LoRA command, with per-image captions and each
concept's token as one new pivotal-tuning token: diffusers' train_dreambooth_lora_sdxl_advanced.py and
train_dreambooth_lora_flux_advanced.py (bf16; FLUX.1 with gradient checkpointing and guidance 1 at
512 px, as `curate train --base flux` trains: diffusers' FLUX.1 README trains at 1024 and names 512
as the way to save memory), and `curate train --base sdxl|flux`. `curate evaluate` reads every one of their
output folders back (SDXL's script writes no model card, so its row takes `--base`).

Checked against diffusers' scripts (2026-08, commit 58eb52c): train_custom_diffusion.py,
multi_subject_dreambooth, train_dreambooth_lora_sd15_advanced.py, train_dreambooth_lora_sdxl_advanced.py,
train_dreambooth_lora_flux_advanced.py (tests/consumers/ holds them and runs every command).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass

from curation.core.records import Concept
from exports.concepts_list import COMPOSITIONS_LIST_FILE, CONCEPTS_LIST_FILE, DREAMBOOTH_LIST_FILE

COMMANDS_FILE = "train_commands.json"
RUNS_DIR = "runs"
"""Where every command writes (`runs/<command name>/`), inside the export; re-exports keep it."""
DEFAULT_PRETRAINED = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PRETRAINED = f'"${{PRETRAINED:-{DEFAULT_PRETRAINED}}}"'
DEFAULT_PRETRAINED_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
PRETRAINED_SDXL = f'"${{PRETRAINED_SDXL:-{DEFAULT_PRETRAINED_SDXL}}}"'
DEFAULT_PRETRAINED_FLUX = "black-forest-labs/FLUX.1-dev"
PRETRAINED_FLUX = f'"${{PRETRAINED_FLUX:-{DEFAULT_PRETRAINED_FLUX}}}"'
CD_EXPORT = 'cd "${EXPORT:-.}"'
_SCRIPTS = {
    "custom_diffusion": "examples/custom_diffusion/train_custom_diffusion.py",
    "multi_subject_dreambooth": (
        "examples/research_projects/multi_subject_dreambooth/train_multi_subject_dreambooth.py"
    ),
    "dreambooth_lora_advanced": "examples/advanced_diffusion_training/train_dreambooth_lora_sd15_advanced.py",
    "dreambooth_lora_sdxl_advanced": (
        "examples/advanced_diffusion_training/train_dreambooth_lora_sdxl_advanced.py"
    ),
    "dreambooth_lora_flux_advanced": (
        "examples/advanced_diffusion_training/train_dreambooth_lora_flux_advanced.py"
    ),
}
PRIOR_LOSS_WEIGHT = 1.0
"""Custom Diffusion's and DreamBooth's default weight of the prior-preservation loss."""


@dataclass(frozen=True)
class TrainCommand:
    """One consumer's command line, with what it trains on and what it cannot do."""

    name: str
    consumer: str
    trains_on: str
    note: str
    command: str


class Raw(str):
    """An argument the shell must expand (a variable) or an operator, so it is written as is, not quoted."""


def command_line(program: list[str], args: list[str]) -> str:
    """`cd "${EXPORT:-.}" && <program> <args>`, every argument quoted unless it is Raw."""
    words = [Raw(CD_EXPORT), Raw("&&"), *program, *args]
    return " ".join(a if isinstance(a, Raw) else shlex.quote(a) for a in words)


def _script(key: str) -> list[str]:
    return ["python", Raw(f'"$DIFFUSERS/{_SCRIPTS[key]}"')]


def initializer_word(class_noun: str) -> str:
    """The last word of the class noun ("coffee mug" -> "mug"): Custom Diffusion needs one tokenizer token."""
    return class_noun.split()[-1].lower()


def prior_flags(
    class_dirs: list[str], class_counts: dict[str, int], flag: str, at_least: int = 1
) -> list[str]:
    """Prior-preservation flags when every class folder the list names holds `at_least` images, else none."""
    counts = [class_counts.get(d, 0) for d in class_dirs]
    if not counts or min(counts) < at_least:
        return []
    return [flag, "--prior_loss_weight", f"{PRIOR_LOSS_WEIGHT:g}", "--num_class_images", str(min(counts))]


def _custom_diffusion(
    concepts: list[Concept], lists: dict[str, list[dict[str, str]]], class_counts: dict[str, int]
) -> list[TrainCommand]:
    modifier = "+".join(c.token for c in concepts)
    initializer = "+".join(initializer_word(c.class_noun) for c in concepts)
    commands = []
    for name, list_file, trains_on in (
        ("custom_diffusion_concepts", CONCEPTS_LIST_FILE, "each concept's reference photos"),
        (
            "custom_diffusion_compositions",
            COMPOSITIONS_LIST_FILE,
            "the composition folders, one prompt per concept set",
        ),
    ):
        args = [
            "--pretrained_model_name_or_path", Raw(PRETRAINED),
            "--concepts_list", list_file,
            "--modifier_token", modifier,
            "--initializer_token", initializer,
            "--output_dir", f"{RUNS_DIR}/{name}",
            "--resolution", "512", "--train_batch_size", "1",
            "--learning_rate", "1e-5", "--max_train_steps", "500", "--scale_lr", "--hflip",
            *prior_flags([e["class_data_dir"] for e in lists[list_file]], class_counts, "--with_prior_preservation"),
        ]  # fmt: skip
        commands.append(
            TrainCommand(
                name=name,
                consumer="diffusers " + _SCRIPTS["custom_diffusion"],
                trains_on=trains_on,
                note=(
                    "adds each concept's token as one new token; one prompt per folder: the script reads no"
                    " per-image captions (use the LoRA command or curate train for those)"
                ),
                command=command_line(_script("custom_diffusion"), args),
            )
        )
    return commands


def _lora_advanced(
    name: str, concepts: list[Concept], pretrained: str, base_args: list[str], note: str
) -> TrainCommand:
    """diffusers' advanced DreamBooth-LoRA command for one base: per-image captions, one new token each.

    It cds into runs/ because the SD 1.5 and SDXL scripts save their embeddings under
    `<output_dir>/<output_dir>_emb.safetensors`, which only works for a relative --output_dir; the
    concepts are listed in the given order (by id), the order `curate evaluate` reads the rows of an
    embeddings file without a model card in.
    """
    args = [
        "--pretrained_model_name_or_path", Raw(pretrained),
        "--dataset_name", "..",
        "--caption_column", "caption",
        "--instance_prompt", "photo of " + " and ".join(c.phrase for c in concepts),
        "--token_abstraction", ",".join(c.token for c in concepts),
        "--num_new_tokens_per_abstraction", "1",
        "--train_text_encoder_ti",
        "--output_dir", name,
        *base_args,
        "--train_batch_size", "1",
        "--learning_rate", "1e-4", "--max_train_steps", "500",
    ]  # fmt: skip
    return TrainCommand(
        name=name,
        consumer="diffusers " + _SCRIPTS[name],
        trains_on="the compositions with their per-image captions (train/metadata.jsonl)",
        note=(
            "each concept's token becomes one new textual-inversion token" + note + "; the command cds into"
            " runs/ and names a relative --output_dir (the SD 1.5 and SDXL scripts save their embeddings under"
            " `<output_dir>/<output_dir>_emb.safetensors`)"
        ),
        command=command_line(
            ["mkdir", "-p", RUNS_DIR, Raw("&&"), "cd", RUNS_DIR, Raw("&&"), *_script(name)], args
        ),
    )


def train_commands(
    concepts: list[Concept],
    identifiers: dict[str, str],
    lists: dict[str, list[dict[str, str]]],
    class_counts: dict[str, int],
) -> list[TrainCommand]:
    """The diffusers and curate commands of an export; every path is relative to the export folder.

    Args:
        concepts: The exported concepts (with exported tokens), sorted by id.
        identifiers: Concept id -> its one-token identifier (for the scripts that add no tokens).
        lists: File name -> entries of each concepts list written.
        class_counts: Class folder (relative to the export) -> images it holds.
    """
    commands = _custom_diffusion(concepts, lists, class_counts)
    dreambooth_dirs = [e["class_data_dir"] for e in lists[DREAMBOOTH_LIST_FILE]]
    args = [
        "--pretrained_model_name_or_path", Raw(PRETRAINED),
        "--concepts_list", DREAMBOOTH_LIST_FILE,
        "--output_dir", f"{RUNS_DIR}/dreambooth_multi_subject",
        "--resolution", "512", "--train_batch_size", "1",
        "--learning_rate", "5e-6", "--max_train_steps", "800",
        # the script indexes subject i's class images modulo i + 1 (the folder count), so every
        # class folder needs an image per subject or its data loader runs out of range
        *prior_flags(dreambooth_dirs, class_counts, "--with_prior_preservation", at_least=len(dreambooth_dirs)),
    ]  # fmt: skip
    commands.append(
        TrainCommand(
            name="dreambooth_multi_subject",
            consumer="diffusers " + _SCRIPTS["multi_subject_dreambooth"],
            trains_on="each concept's reference photos, one subject per folder",
            note=(
                "adds no tokens, so its list names each concept by a one-token identifier ("
                + ", ".join(f"`{identifiers[c.concept_id]}` {c.class_noun}" for c in concepts)
                + "); prior preservation is on only when every class folder holds an image per subject"
                " (the script needs that many)"
            ),
            command=command_line(_script("multi_subject_dreambooth"), args),
        )
    )
    commands.append(
        _lora_advanced(
            "dreambooth_lora_advanced",
            concepts,
            PRETRAINED,
            ["--resolution", "512"],
            "; the SDXL and FLUX.1 commands below take the same flags",
        )
    )
    commands.append(
        _lora_advanced(
            "dreambooth_lora_sdxl_advanced",
            concepts,
            PRETRAINED_SDXL,
            ["--resolution", "1024", "--mixed_precision", "bf16"],
            "; the script writes no model card, so `curate evaluate` takes this row's base with --base",
        )
    )
    commands.append(
        _lora_advanced(
            "dreambooth_lora_flux_advanced",
            concepts,
            PRETRAINED_FLUX,
            # guidance 1, as `curate train --base flux` and diffusers' FLUX.1 README (the script's default: 3.5)
            ["--resolution", "512", "--mixed_precision", "bf16", "--gradient_checkpointing"]
            + ["--guidance_scale", "1"],
            " (the CLIP encoder's; FLUX.1-dev's licence must be accepted on the hub first)",
        )
    )
    concept_dirs = [e["class_data_dir"] for e in lists[CONCEPTS_LIST_FILE]]
    prior = ["--prior-preservation", "--prior-loss-weight", f"{PRIOR_LOSS_WEIGHT:g}"]
    with_prior = prior if prior_flags(concept_dirs, class_counts, "--prior-preservation") else []
    for name, base, pretrained, note in (
        ("curate_train", [], PRETRAINED, "Custom Diffusion by default, each concept's token one new token; --method lora for PEFT LoRA"),
        ("curate_train_sdxl", ["--base", "sdxl"], PRETRAINED_SDXL, "LoRA on SDXL, each concept's token one new pivotal-tuning token in both text encoders"),
        ("curate_train_flux", ["--base", "flux"], PRETRAINED_FLUX, "LoRA on FLUX.1, each concept's token one new pivotal-tuning token in its CLIP encoder"),
    ):  # fmt: skip
        args = [
            "train",
            ".",
            "--output",
            f"{RUNS_DIR}/{name}",
            *base,
            "--pretrained",
            Raw(pretrained),
            "--gen4gen",
        ]
        commands.append(
            TrainCommand(
                name=name,
                consumer="curate train" + (f" --base {base[1]}" if base else ""),
                trains_on="the compositions with per-image captions (Gen4Gen prompting), tokens added",
                note=note,
                command=command_line(["curate"], args + with_prior),
            )
        )
    return commands


VARIABLES = {
    "EXPORT": "the export folder (where this file is); unset, the commands run from inside it",
    "DIFFUSERS": "absolute path of a github.com/huggingface/diffusers clone (examples/ are not pip-installed)",
    "PRETRAINED": f"base pipeline id or folder; {DEFAULT_PRETRAINED} when unset",
    "PRETRAINED_SDXL": f"SDXL base pipeline id or folder; {DEFAULT_PRETRAINED_SDXL} when unset",
    "PRETRAINED_FLUX": f"FLUX.1 base pipeline id or folder; {DEFAULT_PRETRAINED_FLUX} when unset",
}


def commands_json(commands: list[TrainCommand], variables: dict[str, str]) -> str:
    """The machine-readable file: what the variables mean, and every command (no absolute path)."""
    return (
        json.dumps(
            {"variables": variables, "commands": [asdict(c) for c in commands]},
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )


def card_section(commands: list[TrainCommand], variables: dict[str, str]) -> list[str]:
    """Card lines: each command in a bash block, with what it trains on and its limit."""
    lines = [
        "## Train on this set",
        "",
        (
            "Copy or rsync this folder anywhere (it names no path outside itself) and run each command from"
            " inside it, or from anywhere with `EXPORT` set to it: every command first changes into the folder,"
            " reads only what is in it and writes under its `runs/` (the same strings are in"
            " `train_commands.json`)."
        ),
        "",
        *(f"- `{name}`: {meaning}" for name, meaning in variables.items()),
        "",
    ]
    for command in commands:
        lines += [
            f"### {command.name}: {command.consumer}",
            "",
            f"Trains on {command.trains_on}; {command.note}.",
            "",
            "```bash",
            command.command,
            "```",
            "",
        ]
    return lines

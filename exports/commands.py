"""`train_commands.json` and the card's "Train on this set": one command per consumer, runnable as printed.

Each command names the export by its absolute path (the scripts resolve paths against the current
directory), fills in what the user would otherwise build by hand from every concept.json
(Custom Diffusion's `--modifier_token` and `--initializer_token`, the advanced LoRA script's
`--token_abstraction`), and turns on prior preservation when the export holds class images for every
class it would regularise. Two things stay the user's, as shell variables with the command:
`$DIFFUSERS`, the absolute path of a clone of github.com/huggingface/diffusers (its `examples/` are
not in the pip package),
and `$PRETRAINED`, the base pipeline (Stable Diffusion 1.5 unless set). The card and the JSON carry
the same strings.

Checked against diffusers' scripts (2026-08): train_custom_diffusion.py, multi_subject_dreambooth,
train_dreambooth_lora_sd15_advanced.py.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from curation.core.records import Concept
from exports.concepts_list import COMPOSITIONS_LIST_FILE, CONCEPTS_LIST_FILE

COMMANDS_FILE = "train_commands.json"
DEFAULT_PRETRAINED = "stable-diffusion-v1-5/stable-diffusion-v1-5"
_PRETRAINED = f'"${{PRETRAINED:-{DEFAULT_PRETRAINED}}}"'
_SCRIPTS = {
    "custom_diffusion": "examples/custom_diffusion/train_custom_diffusion.py",
    "multi_subject_dreambooth": (
        "examples/research_projects/multi_subject_dreambooth/train_multi_subject_dreambooth.py"
    ),
    "dreambooth_lora_advanced": "examples/advanced_diffusion_training/train_dreambooth_lora_sd15_advanced.py",
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


class _Raw(str):
    """An argument the shell must expand (a variable), so it is written as is, not quoted."""


def _line(program: list[str], args: list[str]) -> str:
    return " ".join(a if isinstance(a, _Raw) else shlex.quote(a) for a in [*program, *args])


def _script(key: str) -> list[str]:
    return ["python", _Raw(f'"$DIFFUSERS/{_SCRIPTS[key]}"')]


def initializer_word(class_noun: str) -> str:
    """The last word of the class noun ("coffee mug" -> "mug"): Custom Diffusion needs one tokenizer token."""
    return class_noun.split()[-1].lower()


def _prior(class_dirs: list[str], class_counts: dict[str, int], flag: str, at_least: int = 1) -> list[str]:
    """Prior-preservation flags when every class folder the list names holds `at_least` images, else none."""
    counts = [class_counts.get(d, 0) for d in class_dirs]
    if not counts or min(counts) < at_least:
        return []
    return [flag, "--prior_loss_weight", f"{PRIOR_LOSS_WEIGHT:g}", "--num_class_images", str(min(counts))]


def train_commands(
    root: Path,
    runs: Path,
    concepts: list[Concept],
    lists: dict[str, list[dict[str, str]]],
    class_counts: dict[str, int],
) -> list[TrainCommand]:
    """The commands for an export that will live at `root`.

    Args:
        root: The export's absolute final path.
        runs: Absolute folder the runs write under (one subfolder per command).
        concepts: The exported concepts (with exported tokens), sorted by id.
        lists: File name -> entries of each concepts list written.
        class_counts: Absolute class folder -> images it holds.
    """
    modifier = "+".join(c.token for c in concepts)
    initializer = "+".join(initializer_word(c.class_noun) for c in concepts)
    common = ["--resolution", "512", "--train_batch_size", "1"]
    commands = []
    for name, list_file, trains_on in (
        ("custom_diffusion_concepts", CONCEPTS_LIST_FILE, "each concept's reference photos"),
        (
            "custom_diffusion_compositions",
            COMPOSITIONS_LIST_FILE,
            "the composition folders, one prompt per concept set",
        ),
    ):
        class_dirs = [e["class_data_dir"] for e in lists[list_file]]
        args = [
            "--pretrained_model_name_or_path", _Raw(_PRETRAINED),
            "--concepts_list", str(root / list_file),
            "--modifier_token", modifier,
            "--initializer_token", initializer,
            "--output_dir", str(runs / name),
            *common,
            "--learning_rate", "1e-5", "--max_train_steps", "500", "--scale_lr", "--hflip",
            *_prior(class_dirs, class_counts, "--with_prior_preservation"),
        ]  # fmt: skip
        commands.append(
            TrainCommand(
                name=name,
                consumer="diffusers " + _SCRIPTS["custom_diffusion"],
                trains_on=trains_on,
                note=(
                    "one prompt per folder: the script reads no per-image captions (use the LoRA"
                    " command or curate train for those)"
                ),
                command=_line(_script("custom_diffusion"), args),
            )
        )
    concept_dirs = [e["class_data_dir"] for e in lists[CONCEPTS_LIST_FILE]]
    args = [
        "--pretrained_model_name_or_path", _Raw(_PRETRAINED),
        "--concepts_list", str(root / CONCEPTS_LIST_FILE),
        "--output_dir", str(runs / "dreambooth_multi_subject"),
        *common,
        "--learning_rate", "5e-6", "--max_train_steps", "800",
        # the script indexes subject i's class images modulo i + 1 (the folder count), so every
        # class folder needs an image per subject or its data loader runs out of range
        *_prior(concept_dirs, class_counts, "--with_prior_preservation", at_least=len(concept_dirs)),
    ]  # fmt: skip
    commands.append(
        TrainCommand(
            name="dreambooth_multi_subject",
            consumer="diffusers " + _SCRIPTS["multi_subject_dreambooth"],
            trains_on="each concept's reference photos, one subject per folder",
            note=(
                "adds no tokens: export with a rare-token [export] token_format such as 'sks{n}' so the"
                " token is not split into pieces that contain the class word; prior preservation is on"
                " only when every class folder holds an image per subject (the script needs that many)"
            ),
            command=_line(_script("multi_subject_dreambooth"), args),
        )
    )
    phrases = " and ".join(c.phrase for c in concepts)
    args = [
        "--pretrained_model_name_or_path", _Raw(_PRETRAINED),
        "--dataset_name", str(root),
        "--caption_column", "caption",
        "--instance_prompt", f"photo of {phrases}",
        "--token_abstraction", ",".join(c.token for c in concepts),
        "--train_text_encoder_ti",
        "--output_dir", "dreambooth_lora_advanced",
        *common,
        "--learning_rate", "1e-4", "--max_train_steps", "500",
    ]  # fmt: skip
    commands.append(
        TrainCommand(
            name="dreambooth_lora_advanced",
            consumer="diffusers " + _SCRIPTS["dreambooth_lora_advanced"],
            trains_on="the compositions with their per-image captions (train/metadata.jsonl)",
            note=(
                "each token becomes new textual-inversion tokens; the command cds into the runs folder"
                " because the script saves its embeddings under `<output_dir>/<output_dir>_emb.safetensors`,"
                " which only works for a relative --output_dir; the SDXL script"
                " (train_dreambooth_lora_sdxl_advanced.py) takes the same flags with an SDXL base"
            ),
            command=_line(
                [
                    "mkdir",
                    "-p",
                    str(runs),
                    _Raw("&&"),
                    "cd",
                    str(runs),
                    _Raw("&&"),
                    *_script("dreambooth_lora_advanced"),
                ],
                args,
            ),
        )
    )
    args = [
        "train",
        str(root),
        "--output",
        str(runs / "curate_train"),
        "--pretrained",
        _Raw(_PRETRAINED),
        "--gen4gen",
    ]
    if _prior(concept_dirs, class_counts, "--prior-preservation"):
        args += ["--prior-preservation", "--prior-loss-weight", f"{PRIOR_LOSS_WEIGHT:g}"]
    commands.append(
        TrainCommand(
            name="curate_train",
            consumer="curate train",
            trains_on="the compositions with per-image captions (Gen4Gen prompting), tokens added",
            note="Custom Diffusion by default; --method lora for PEFT LoRA",
            command=_line(["curate"], args),
        )
    )
    return commands


def commands_json(root: Path, commands: list[TrainCommand]) -> str:
    """The machine-readable file: the export, what the variables mean, and every command."""
    return (
        json.dumps(
            {
                "export": str(root),
                "variables": {
                    "DIFFUSERS": "absolute path of a github.com/huggingface/diffusers clone (examples/ are not pip-installed)",
                    "PRETRAINED": f"base pipeline id or folder; {DEFAULT_PRETRAINED} when unset",
                },
                "commands": [asdict(c) for c in commands],
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )


def card_section(commands: list[TrainCommand]) -> list[str]:
    """Card lines: each command in a bash block, with what it trains on and its limit."""
    lines = [
        "## Train on this set",
        "",
        (
            "Each command runs as printed from any directory (paths are absolute, or it cds first; the same strings are in"
            " `train_commands.json`). Set `DIFFUSERS` to the absolute path of a clone of"
            " github.com/huggingface/diffusers;"
            f" `PRETRAINED` defaults to `{DEFAULT_PRETRAINED}`."
        ),
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

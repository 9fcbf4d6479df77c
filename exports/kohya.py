"""`--format kohya`: kohya-ss sd-scripts' dataset config and the `train_network.py` command that reads it.

sd-scripts reads a dataset TOML (`--dataset_config`, library/config_util.py): `[general]` options every
dataset inherits, then `[[datasets]]` (resolution, batch size, bucketing) each with
`[[datasets.subsets]]`. A DreamBooth-style subset is a folder (`image_dir`, read without
subfolders) whose images take their caption from `<stem><caption_extension>`; a subset with
`is_reg = true` holds regularization images, captioned by its `class_tokens` when they have no caption
file, and weighted by `--prior_loss_weight`. So: one subset per composition folder of `captioned/`
(identifier captions, see `exports.captioned`), and one `is_reg` subset per class folder of
`class_images/` that holds images, with the class prompt as its `class_tokens`. Paths are relative to
the export, which the command changes into first. sd-scripts is not on PyPI: `$SD_SCRIPTS` is the path
of a clone of github.com/kohya-ss/sd-scripts, whose `train_network.py` finds its `networks/` package
beside itself from any directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.core.workspace import atomic_write_text
from exports.captioned import CAPTION_EXTENSION
from exports.commands import PRETRAINED, PRIOR_LOSS_WEIGHT, RUNS_DIR, Raw, TrainCommand, command_line

KOHYA_DIR = "kohya"
DATASET_CONFIG = f"{KOHYA_DIR}/dataset.toml"
RESOLUTION = 512
VARIABLE = {"SD_SCRIPTS": "absolute path of a github.com/kohya-ss/sd-scripts clone (not on PyPI)"}


def dataset_config(composition_dirs: list[str], class_tokens: dict[str, str]) -> dict[str, Any]:
    """The TOML document as a dict.

    Args:
        composition_dirs: The caption-sidecar folders, relative to the export.
        class_tokens: Class folder holding images (relative to the export) -> its class prompt.
    """
    subsets: list[dict[str, Any]] = [{"image_dir": folder, "num_repeats": 1} for folder in composition_dirs]
    subsets += [
        {"image_dir": folder, "is_reg": True, "class_tokens": class_tokens[folder], "num_repeats": 1}
        for folder in sorted(class_tokens)
    ]
    return {
        "general": {"caption_extension": CAPTION_EXTENSION, "shuffle_caption": False, "keep_tokens": 0},
        "datasets": [
            {
                "resolution": RESOLUTION,
                "batch_size": 1,
                # no bucket_no_upscale: it sizes a bucket by the image, and an image under
                # bucket_reso_steps (64 px) gets a 0-wide bucket (ZeroDivisionError in select_bucket)
                "enable_bucket": True,
                "subsets": subsets,
            }
        ],
    }


def write_dataset_config(root: Path, composition_dirs: list[str], class_tokens: dict[str, str]) -> Path:
    """Write `kohya/dataset.toml` into the export being built."""
    import tomli_w

    path = root / DATASET_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tomli_w.dumps(dataset_config(composition_dirs, class_tokens)))
    return path


def kohya_command(has_reg: bool) -> TrainCommand:
    """sd-scripts' LoRA trainer on the dataset config, writing under runs/kohya_lora/."""
    args = [
        "--pretrained_model_name_or_path", Raw(PRETRAINED),
        "--dataset_config", DATASET_CONFIG,
        "--output_dir", f"{RUNS_DIR}/kohya_lora",
        "--output_name", "lora",
        "--save_model_as", "safetensors",
        "--network_module", "networks.lora",
        "--learning_rate", "1e-4", "--max_train_steps", "500",
        *(["--prior_loss_weight", f"{PRIOR_LOSS_WEIGHT:g}"] if has_reg else []),
    ]  # fmt: skip
    program = [
        "accelerate",
        "launch",
        "--num_cpu_threads_per_process",
        "1",
        Raw('"$SD_SCRIPTS/train_network.py"'),
    ]
    return TrainCommand(
        name="kohya_lora",
        consumer="kohya-ss sd-scripts train_network.py",
        trains_on=(
            f"the compositions with their `.txt` captions ({DATASET_CONFIG}"
            + (", class_images/ as is_reg subsets" if has_reg else "")
            + ")"
        ),
        note=(
            "adds no tokens, so the captions name each concept by its one-token identifier;"
            " OneTrainer reads the same captioned/ folders (--format onetrainer)"
        ),
        command=command_line(program, args),
    )

"""The wheels a bare GPU image needs for the GPU suite: download them into one folder, and check a folder.

A GPU machine with no network gets the suite's missing packages as a folder of wheels that travels with
the checkout; `benchmarks/gpu_suite.sh` installs from it and nothing else. The list is
`benchmarks/gpu_suite_wheels.txt` (pinned to the project's .venv; tests/test_gpu_suite.py checks it is
exactly what the suite needs beyond `BARE_IMAGE`). Run this where pip reaches PyPI:

    python3 benchmarks/gpu_suite_wheels.py                        # -> .gpu-suite-wheels/, Python 3.12
    python3 benchmarks/gpu_suite_wheels.py --python-version 3.11 --dest /tmp/wheels-311

It downloads with `pip download --no-deps --only-binary=:all:` for CPython on manylinux x86_64, then
checks the folder (`check_folder`): every listed wheel once and nothing else, under `MAX_BYTES`, and
every requirement of every wheel met by another wheel of the folder or left to the image
(`IMAGE_PROVIDES`). Any Python with pip and `packaging` runs it (the project's uv venv has no pip).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "benchmarks" / "gpu_suite_wheels.txt"
DEFAULT_DEST = ROOT / ".gpu-suite-wheels"
MAX_BYTES = 64 * 2**20
"""The folder travels with the checkout to a GPU machine whose transfer limit is 64 MiB."""
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")

BARE_IMAGE = (
    "torch",
    "torchvision",
    "transformers",
    "onnxruntime",
    "scikit-image",
    "typer",
    "opencv-python-headless",
)
"""What the bare GPU image has, with whatever these need. torchvision comes with PyTorch (a wheel of it
must match the image's torch build, so it cannot travel pinned); opencv-python-headless (cv2, which
generators and scores import) is a 50 MB wheel that would not fit `MAX_BYTES` beside the rest."""
ABSENT = ("diffusers", "open-clip-torch", "pydantic", "fiftyone")
"""What the bare image does not have; the suite needs the first three and never FiftyOne."""
SUITE_NEEDS = ("diffusers", "open-clip-torch", "pydantic", "tomli-w", "peft")
"""The distributions the suite imports beyond `BARE_IMAGE`: pipelines, CLIP, the project's config and
records (pydantic, tomli-w), LoRA (peft)."""
IMAGE_PROVIDES = frozenset(
    {
        *BARE_IMAGE,
        "numpy",  # torch, transformers, scikit-image
        "pillow",  # scikit-image, torchvision
        "filelock",  # torch, transformers
        "huggingface-hub",  # transformers
        "safetensors",  # transformers
        "regex",  # transformers
        "tqdm",  # transformers
        "pyyaml",  # transformers
        "packaging",  # transformers
        "idna",  # huggingface-hub's HTTP client
        "typing-extensions",  # torch (the list carries a newer one for pydantic)
    }
)
"""Requirements of the listed wheels that the image's packages bring; the test checks each against the
dependency closure of `BARE_IMAGE` in the project's venv."""


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_list(path: Path = LIST) -> dict[str, str]:
    """canonical name -> pinned version, from `name==version` lines (comments after '#')."""
    pins = {}
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            name, version = spec.split("==")
            pins[canonical(name)] = version.strip()
    return pins


def download(dest: Path, python_version: str) -> None:
    """pip download every listed wheel, no dependencies, for CPython `python_version` on manylinux x86_64."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    pins = [f"{name}=={version}" for name, version in read_list().items()]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(dest)]
    subprocess.run(command + pins, check=True)


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(canonical name, version, Requires-Dist lines) read from a wheel's METADATA."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode("utf-8"))
    return canonical(metadata["Name"]), metadata["Version"], metadata.get_all("Requires-Dist") or []


def check_folder(folder: Path, python_version: str) -> list[str]:
    """What is wrong with a wheel folder for CPython `python_version` on Linux x86_64; empty when fine."""
    from packaging.requirements import Requirement

    environment = {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    wheels = sorted(folder.glob("*.whl"))
    found: dict[str, tuple[str, list[str]]] = {}
    problems = []
    for wheel in wheels:
        name, version, requires = wheel_metadata(wheel)
        if name in found:
            problems.append(f"{name}: two wheels in {folder}")
        found[name] = (version, requires)
    pins = read_list()
    for name, version in pins.items():
        if found.get(name, ("",))[0] != version:
            problems.append(f"{name}=={version}: not in {folder}")
    problems += [f"{name}: in {folder} but not in {LIST.name}" for name in sorted(set(found) - set(pins))]
    size = sum(wheel.stat().st_size for wheel in wheels)
    if size > MAX_BYTES:
        problems.append(f"{size / 2**20:.1f} MiB of wheels, over {MAX_BYTES // 2**20} MiB")
    for name, (_, requires) in sorted(found.items()):
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            needed = canonical(requirement.name)
            if needed in found:
                if not requirement.specifier.contains(found[needed][0], prereleases=True):
                    problems.append(f"{name} needs {line}; the folder has {needed} {found[needed][0]}")
            elif needed not in IMAGE_PROVIDES:
                problems.append(f"{name} needs {needed}, which neither the folder nor the image has")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"folder (default {DEFAULT_DEST})")
    parser.add_argument("--python-version", default="3.12", help="the GPU image's Python (default 3.12)")
    parser.add_argument("--check-only", action="store_true", help="check the folder, download nothing")
    args = parser.parse_args()
    if not args.check_only:
        download(args.dest, args.python_version)
    problems = check_folder(args.dest, args.python_version)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        size = sum(w.stat().st_size for w in args.dest.glob("*.whl"))
        print(
            f"{len(read_list())} wheels, {size / 2**20:.1f} MiB in {args.dest}: complete for Python "
            f"{args.python_version} beside {', '.join(BARE_IMAGE)}"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/gpu_suite.sh --dry-run on a bare image: the wheel list installs, every section runs, sizes hold.

The GPU run cannot happen here. What can: a bare GPU image is rebuilt from this venv's own packages
(a venv whose site-packages links only the distributions of `BARE_IMAGE` and what they need, so
diffusers, open_clip, pydantic and FiftyOne are really absent), the suite's wheel list is packed from
this venv's installed copies of exactly those versions (no network: PyPI's are the same files for
Python 3.11), and gpu_suite.sh installs them from that folder with `--no-index` into its layered venv
and runs the dry run there. That proves, in one run: the list is complete, nothing the suite imports
needs FiftyOne, every section prints its ratios and reports ok, and the full-size architectures built on
the meta device have the published parameter counts (FLUX.1 Fill transformer 11,902,391,360; T5-XXL
encoder 4,762,310,656; CLIP-L 123,060,480; SDXL base UNet 2,567,463,684: see
`benchmarks.gpu_models.PUBLISHED_PARAMS` for where each comes from).

The same list for Python 3.12 (the GPU image's) was downloaded and checked by
`python3 benchmarks/gpu_suite_wheels.py`; downloading here would make the suite depend on PyPI's speed.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from collections import defaultdict
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement

from benchmarks.gpu_suite import SECTIONS
from benchmarks.gpu_suite_wheels import (
    ABSENT,
    BARE_IMAGE,
    IMAGE_PROVIDES,
    SUITE_NEEDS,
    canonical,
    check_folder,
    read_list,
)

REPO = Path(__file__).resolve().parents[1]
RATIOS = {"flux-fill": 1, "lora-sdxl": 1, "repaint": 4, "index": 2, "msp": 1, "caption": 1}
"""Result lines per section: batch/single; checkpointing/plain; batch/single, SDPA, refiner, compile;
embedding path, OWLv2; MSP/plain; captioner."""
_DIST_INFO_SKIP = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def _installed() -> dict[str, md.Distribution]:
    """The venv's own distributions: sys.path may also hold setuptools/_vendor once something imported
    setuptools, whose vendored importlib_metadata 8.7.1 would shadow the venv's 10.2.0."""
    return {
        canonical(d.metadata["Name"]): d for d in md.distributions(path=[sysconfig.get_paths()["purelib"]])
    }


def closure(names: tuple[str, ...], stop: tuple[str, ...] = ()) -> set[str]:
    """`names` and everything they require in this venv (this interpreter's markers, the extras asked
    for included: torch needs cuda-toolkit[cudart, ...]), not entering `stop`."""
    installed, seen = _installed(), set()
    todo: list[tuple[str, str]] = [(canonical(n), "") for n in names]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen or name in stop or name not in installed:
            continue
        seen.add((name, extra))
        for line in installed[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                dependency = canonical(requirement.name)
                todo += [(dependency, wanted) for wanted in ("", *requirement.extras)]
    return {name for name, _ in seen}


def bare_image_distributions() -> set[str]:
    """The issue's bare image: `BARE_IMAGE`'s closure without the packages it must not have (here typer
    asks for pydantic; the GPU image's typer does not)."""
    return closure(BARE_IMAGE, stop=ABSENT) | {"pip"}


def test_wheel_list_is_exactly_what_the_suite_needs_beyond_the_bare_image() -> None:
    bare, installed = bare_image_distributions(), _installed()
    pins = read_list()
    needed = closure(SUITE_NEEDS) - bare
    # typing-extensions rides along as a floor: pydantic needs a newer one than some images carry
    assert set(pins) == needed | {"typing-extensions"}, sorted(set(pins) ^ (needed | {"typing-extensions"}))
    assert {name: installed[name].version for name in pins} == pins
    assert IMAGE_PROVIDES - {"pip"} <= bare, sorted(IMAGE_PROVIDES - bare)
    assert not set(ABSENT) & bare


def pack_wheels(folder: Path) -> Path:
    """A wheel per listed distribution, packed from its files installed in this venv (same version)."""
    folder.mkdir()
    installed = _installed()
    for name in read_list():
        dist = installed[name]
        info = next(f for f in dist.files if f.name == "METADATA").parent
        tag = re.search(r"^Tag: (.+)$", dist.read_text("WHEEL"), re.MULTILINE).group(1)
        stem = f"{re.sub(r'[-_.]+', '_', dist.metadata['Name'])}-{dist.version}"
        record = []
        with zipfile.ZipFile(folder / f"{stem}-{tag}.whl", "w", zipfile.ZIP_STORED) as wheel:
            for file in dist.files:
                if file.parts[0] == ".." or "__pycache__" in file.parts:
                    continue
                if file.parent == info and file.name in _DIST_INFO_SKIP:
                    continue
                data = dist.locate_file(file).read_bytes()
                wheel.writestr(str(PurePosixPath(file)), data)
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                record.append(f"{PurePosixPath(file)},sha256={digest},{len(data)}")
            record.append(f"{PurePosixPath(info) / 'RECORD'},,")
            wheel.writestr(str(PurePosixPath(info) / "RECORD"), "\n".join(record) + "\n")
    return folder


def bare_python(folder: Path) -> Path:
    """A venv whose site-packages links only the bare image's distributions from this venv (and the base
    interpreter's pip): a bare GPU image's Python, with __pycache__ shared so imports stay fast."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next(folder.glob("lib/python3*/site-packages"))
    here = Path(md.distribution("torch").locate_file(""))
    owners: dict[tuple[str, ...], set[str]] = defaultdict(set)
    children: dict[tuple[str, ...], set[tuple[str, ...]]] = defaultdict(set)
    for name, dist in _installed().items():
        for file in dist.files or []:
            parts = file.parts[:3]
            if parts[0] == "..":
                continue
            for depth in range(1, len(parts) + 1):
                owners[parts[:depth]].add(name)
                children[parts[: depth - 1]].add(parts[:depth])
    bare = bare_image_distributions()

    def place(prefix: tuple[str, ...]) -> None:
        who = owners[prefix]
        if not who & bare or not (here.joinpath(*prefix)).exists():
            return
        if who <= bare or not children[prefix]:
            site.joinpath(*prefix).symlink_to(here.joinpath(*prefix))
        else:  # a namespace several distributions share: only the bare ones' parts
            site.joinpath(*prefix).mkdir()
            for child in children[prefix]:
                place(child)

    for top in children[()]:
        place(top)
    pip = subprocess.run(
        [sys._base_executable, "-c", "import pip, os; print(os.path.dirname(pip.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for entry in [Path(pip), *Path(pip).parent.glob("pip-*.dist-info")]:
        site.joinpath(entry.name).symlink_to(entry)
    return folder / "bin" / "python"


def test_dry_run_on_a_bare_image_installs_the_wheels_and_covers_every_section(tmp_path: Path) -> None:
    python = bare_python(tmp_path / "bare")
    probe = "import importlib.util as u; print([m for m in {!r} if u.find_spec(m)])"
    modules = ("diffusers", "open_clip", "pydantic", "fiftyone", "peft")
    present = subprocess.run(
        [str(python), "-c", probe.format(modules)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert present == "[]", present
    wheels = pack_wheels(tmp_path / "wheels")
    assert check_folder(wheels, f"{sys.version_info.major}.{sys.version_info.minor}") == []

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--wheels", str(wheels), "--dry-run"],
        cwd=REPO,
        env=env | {"PYTHON": str(python), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, out[-4000:] + run.stderr[-4000:]
    assert set(RATIOS) == set(SECTIONS)
    for section, count in RATIOS.items():
        ratios = re.findall(rf"^\[{section}\] [^\n]+: (\d+\.\d+)x \([^\n]+\)$", out, re.MULTILINE)
        assert len(ratios) == count and all(float(r) > 0 for r in ratios), (section, ratios)
        assert re.search(rf"^{section} +\d+ +\d+ MiB process RSS \(CPU run\) +ok$", out, re.MULTILINE), (
            section
        )
    assert re.search(r"^\[index\] time shares: PNG decode \d+%, preprocess \d+%, CLIP", out, re.MULTILINE)
    # diffusers/stable-diffusion-xl-1.0-inpainting-0.1, stable-diffusion-v1-5, owlv2-base, llava-1.5-7b shapes
    assert "[full-size] SDXL inpaint UNet 2567.5 M, refiner UNet 2259.5 M" in out
    assert "[full-size] SD 1.5 UNet 859.5 M" in out
    assert re.search(r"\[full-size\] OWLv2 155\.0 M; LLaVA 7\d{3}\.\d M", out)
    for line in (
        "FLUX.1 Fill transformer 11,902,391,360 parameters: ok",
        "FLUX.1 T5-XXL encoder 4,762,310,656 parameters: ok",
        "FLUX.1 CLIP-L text encoder 123,060,480 parameters: ok",
        "SDXL base UNet 2,567,463,684 parameters: ok",
    ):
        assert f"[full-size] {line}" in out

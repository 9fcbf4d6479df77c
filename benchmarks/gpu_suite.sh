#!/usr/bin/env bash
# One GPU benchmark run: full-size models with random weights, ratios and absolutes, under 10 minutes.
# What it measures and how: benchmarks/gpu_suite.py. `--dry-run`: the same code, tiny models, CPU.
#   bash benchmarks/gpu_suite.sh [--wheels DIR] [--dry-run] [--sections flux-fill,lora-sdxl,...] [--budget SECONDS]
# On a bare GPU image with no network (PyTorch, transformers, onnxruntime, scikit-image, typer, OpenCV;
# no diffusers, open_clip, pydantic, FiftyOne), what the interpreter lacks is installed from a folder of
# wheels and nothing else (`--no-index`): --wheels DIR, default .gpu-suite-wheels/ when it exists, made
# beforehand on a machine with network by `python3 benchmarks/gpu_suite_wheels.py`. The install goes into
# a throw-away venv layered over the interpreter's own packages, which it leaves untouched.
set -euo pipefail
caller="$PWD"  # a relative --wheels DIR is read from where the suite was called
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
wheels=""
args=()
while (($#)); do
    case "$1" in
        --wheels) wheels="${2:?--wheels needs a folder}"; shift 2 ;;
        --wheels=*) wheels="${1#--wheels=}"; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
[[ -n "$wheels" && "$wheels" != /* ]] && wheels="$caller/$wheels"
[[ -z "$wheels" && -d .gpu-suite-wheels ]] && wheels=.gpu-suite-wheels
needs="import diffusers, open_clip, peft, pydantic, tomli_w"
if ! "$python" -c "$needs" 2>/dev/null; then
    if [[ -z "$wheels" ]]; then
        echo "error: $python lacks diffusers, open_clip, peft, pydantic or tomli_w; make the wheel folder with" \
            "\`python3 benchmarks/gpu_suite_wheels.py\` where pip reaches PyPI and pass --wheels DIR" >&2
        exit 1
    fi
    venv="$(mktemp -d "${TMPDIR:-/tmp}/gpu-suite-venv.XXXXXX")"
    trap 'rm -rf "$venv"' EXIT
    "$python" -m venv --without-pip "$venv"
    # the interpreter's own site-packages (and the .pth files in them) after the venv's: its packages
    # count as installed for pip, and whatever the venv adds or upgrades comes first on sys.path
    "$python" -c 'import os, site
user = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
dirs = [d for d in site.getsitepackages() + user if os.path.isdir(d)]
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs))' \
        >"$(echo "$venv"/lib/python3*/site-packages)/_gpu_suite_parent.pth"
    # the folder and nothing else: no index, no find-links or constraints from pip's config or PIP_*
    for var in $(compgen -e | grep '^PIP_' || true); do unset "$var"; done
    PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
        --no-index --find-links "$wheels" -r benchmarks/gpu_suite_wheels.txt
    python="$venv/bin/python"
fi
if ! "$python" -c "$needs, cv2, torch, transformers"; then
    echo "error: $python still cannot import the suite's packages (above)" >&2
    exit 1
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$python" benchmarks/gpu_suite.py ${args[@]+"${args[@]}"}

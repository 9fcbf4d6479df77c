#!/usr/bin/env bash
# One GPU benchmark run: full-size models with random weights, ratios and absolutes, under 10 minutes.
# What it measures and how: benchmarks/gpu_suite.py. `--dry-run`: the same code, tiny models, CPU.
#   bash benchmarks/gpu_suite.sh [--dry-run] [--sections repaint,msp,index,caption] [--budget SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
if ! "$python" -c "import diffusers, open_clip, pydantic, transformers" 2>/dev/null; then
    echo "error: $python lacks the project's packages; install them first (uv pip install -e '.[test]')" >&2
    exit 1
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec "$python" benchmarks/gpu_suite.py "$@"

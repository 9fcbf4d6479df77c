#!/usr/bin/env bash
# Install everything curate needs into ./.venv: uv, a Python 3.11 venv, the pinned packages
# (constraints.txt) and curate itself in editable mode. Safe to re-run; a warm re-run takes seconds.
# No model weights, API keys or services are needed: every stage has an offline default.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then
    python3 -m pip install --quiet uv
fi
if [ ! -x .venv/bin/python ]; then
    uv venv --quiet -p 3.11 .venv
fi
uv pip install --quiet -p .venv/bin/python -c constraints.txt -e ".[test]"

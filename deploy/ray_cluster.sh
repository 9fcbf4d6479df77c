#!/usr/bin/env bash
# A Ray cluster for `curate generate|index --executor ray`: a head node and a worker node, each its
# own `ray start` process tree with its own CPUs, on this machine; more worker nodes join with `join`
# (on another machine, DIR must be on a filesystem both see, as the workspaces must be).
# Token authentication is on: the token is DIR/auth_token, and drivers need the variables `env` prints.
#
#   deploy/ray_cluster.sh start DIR   head + one worker node here; prints the driver's environment
#   deploy/ray_cluster.sh join DIR    one more worker node here, joining the head recorded in DIR
#   deploy/ray_cluster.sh env DIR     eval "$(deploy/ray_cluster.sh env DIR)" before `curate ... --executor ray`
#   deploy/ray_cluster.sh stop DIR    stop every node this script started from DIR on this machine
#
# Settings (environment): RAY_PORT (6389), RAY_CLIENT_PORT (10001), RAY_HEAD_IP (127.0.0.1; the head's
# address as other machines reach it), HEAD_CPUS (1), WORKER_CPUS (1), WORKER_GPUS (unset: what Ray
# detects), OBJECT_STORE_BYTES (unset: Ray's default), RAY (the venv's ray).
# Each node keeps its sessions and logs in DIR/<node>: Ray puts unix sockets there, so DIR must be
# short (at most 40 characters).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
RAY="${RAY:-$REPO/.venv/bin/ray}"
PORT="${RAY_PORT:-6389}"
HEAD_IP="${RAY_HEAD_IP:-127.0.0.1}"
HOST="$(hostname)"  # pid files name their machine: DIR may be shared, process ids are not

usage() { echo "usage: $0 start|join|env|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
DIR="$(mkdir -p "$2" && cd "$2" && pwd)"
if [ ${#DIR} -gt 40 ]; then
    echo "error: $DIR is too long for Ray's unix sockets (at most 40 characters): pick a shorter folder" >&2
    exit 1
fi
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DIR/auth_token" RAY_USAGE_STATS_ENABLED=0

alive() { [ -s "$DIR/$1.$HOST.pid" ] && kill -0 "$(cat "$DIR/$1.$HOST.pid")" 2>/dev/null; }

# Start one node as its own session (setsid) with `ray start --block`, so `stop` ends exactly its
# processes; return once it reports itself started.
node() {
    local name="$1"
    shift
    if alive "$name"; then
        echo "$name already runs (pid $(cat "$DIR/$name.$HOST.pid"))" >&2
        return
    fi
    mkdir -p "$DIR/$name"
    local extra=()
    [ -n "${OBJECT_STORE_BYTES:-}" ] && extra=(--object-store-memory "$OBJECT_STORE_BYTES")
    setsid "$RAY" start --block --temp-dir "$DIR/$name" --disable-usage-stats \
        "${extra[@]}" "$@" >"$DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$DIR/$name.$HOST.pid"
    for _ in $(seq 240); do
        if grep -qs "Ray runtime started" "$DIR/$name.log"; then
            echo "$name node started (pid $(cat "$DIR/$name.$HOST.pid"), logs in $DIR/$name)" >&2
            return
        fi
        if ! alive "$name"; then
            tail -n 20 "$DIR/$name.log" >&2
            echo "error: the $name node did not start; see $DIR/$name.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "error: the $name node did not start within 120 s; see $DIR/$name.log" >&2
    exit 1
}

print_env() {
    echo "export RAY_ADDRESS=$(cat "$DIR/address") RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$DIR/auth_token"
}

worker() {
    local n=1 gpus=()
    while compgen -G "$DIR/worker$n.*.pid" >/dev/null; do n=$((n + 1)); done  # on any machine
    [ -n "${WORKER_GPUS:-}" ] && gpus=(--num-gpus "$WORKER_GPUS")
    node "worker$n" --address "$(cat "$DIR/address")" --num-cpus "${WORKER_CPUS:-1}" "${gpus[@]}"
}

start() {
    if [ ! -s "$DIR/auth_token" ]; then
        (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$DIR/auth_token")
    fi
    echo "$HEAD_IP:$PORT" >"$DIR/address"
    node head --head --include-dashboard=false --port "$PORT" --ray-client-server-port "${RAY_CLIENT_PORT:-10001}" \
        --num-cpus "${HEAD_CPUS:-1}" --num-gpus 0
    worker
    print_env
}

# The sessions of this machine's nodes whose leader is still our `ray start` (never a reused pid).
sessions() {
    local pidfile sid
    for pidfile in "$DIR"/*."$HOST".pid; do
        [ -e "$pidfile" ] || continue
        sid="$(cat "$pidfile")"
        tr '\0' ' ' <"/proc/$sid/cmdline" 2>/dev/null | grep -qF -- "--temp-dir $DIR/" && echo "$sid"
    done
    return 0
}

# The live (not zombie) processes of the sessions given as " sid sid ", read from /proc (no procps needed).
members() {
    local proc stat fields
    for proc in /proc/[0-9]*; do
        read -r stat 2>/dev/null <"$proc/stat" || continue
        read -ra fields <<<"${stat##*) }"  # after the command name: state ppid pgrp session ...
        if [ "${fields[0]}" != Z ] && [[ "$1" == *" ${fields[3]} "* ]]; then echo "${proc#/proc/}"; fi
    done
}

# Stop every node's whole session (`ray start`, its GCS/raylet and the workers they spawned): SIGTERM,
# then SIGKILL what is left after a grace period, as `ray stop` does, but only for this cluster's nodes.
stop() {
    local sids pids
    sids=" $(sessions | tr '\n' ' ') "
    pids="$(members "$sids")"
    [ -z "$pids" ] || kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 20); do
        [ -n "$(members "$sids")" ] || break
        sleep 0.5
    done
    pids="$(members "$sids")"
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    rm -f "$DIR"/*."$HOST".pid
    echo "stopped the Ray nodes of $DIR on $HOST" >&2
}

case "$1" in
    start) start ;;
    join) worker; print_env ;;
    env) print_env ;;
    stop) stop ;;
    *) usage ;;
esac

#!/usr/bin/env bash
# A PostgreSQL cluster of its own in one folder, for a team's Label Studio.
#
#   deploy/postgres.sh start DIR [PORT]   create the cluster in DIR on first use, start it on
#                                         127.0.0.1:PORT (default 5433), make the `labelstudio` role
#                                         and database, and print the `export` lines Label Studio
#                                         reads (DJANGO_DB, POSTGRE_NAME/USER/PASSWORD/HOST/PORT)
#   deploy/postgres.sh stop DIR
#
# Typical use: eval "$(deploy/postgres.sh start /srv/curate-pg)" before `curate review serve`.
#
# Why a folder rather than the distribution's own cluster: it needs no administrator once PostgreSQL
# is installed, shares nothing with other services, and `rm -r DIR` undoes it. `initdb` refuses to
# run as root, so as root the cluster belongs to the `postgres` account (DIR must then be reachable
# by it: not under a root-only folder such as pytest's /tmp/pytest-of-root). The server listens on
# 127.0.0.1 only; its socket lives in DIR (mode 0700), so the password-less local superuser login is
# open to DIR's owner alone, while Label Studio logs in over TCP with a password generated once and
# kept, owner-only, in DIR/labelstudio.env (never on a command line).
set -euo pipefail

die() { echo "error: $*" >&2; exit 1; }

command_name=${1:-}
dir=${2:-}
port=${3:-5433}
[ -n "$command_name" ] && [ -n "$dir" ] || die "usage: $0 start DIR [PORT] | stop DIR"
dir=$(realpath -m -- "$dir")
data="$dir/data"
env_file="$dir/labelstudio.env"

bin=${PG_BIN:-}
if [ -z "$bin" ] && command -v initdb >/dev/null; then
    bin=$(dirname "$(readlink -f "$(command -v initdb)")")
fi
if [ -z "$bin" ]; then  # Debian keeps the server binaries off PATH
    bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
fi
[ -n "$bin" ] && [ -x "$bin/initdb" ] || die "PostgreSQL is not installed (Debian: apt-get install postgresql), or set PG_BIN"

if [ "$(id -u)" = 0 ]; then
    owner=postgres
    id "$owner" >/dev/null 2>&1 || die "running as root needs the 'postgres' account (Debian's postgresql package creates it)"
    as_owner() { runuser -u "$owner" -- "$@"; }
else
    owner=$(id -un)
    as_owner() { "$@"; }
fi

case "$command_name" in
stop)
    [ -f "$data/PG_VERSION" ] || die "no cluster in $dir"
    cd "$dir"
    if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
    exit 0
    ;;
start) ;;
*) die "unknown command '$command_name': use start or stop" ;;
esac

if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$dir"
    chmod 700 "$dir"
    chown "$owner" "$dir"
    as_owner test -w "$dir" || die "the '$owner' account cannot write $dir (a parent folder is closed to it)"
    cd "$dir"
    as_owner "$bin/initdb" -D "$data" -U postgres -E UTF8 --no-locale \
        --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log"
    printf "listen_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" "$dir" >>"$data/postgresql.conf"
fi
cd "$dir"

if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    port=$(sed -n 4p "$data/postmaster.pid")  # already running: keep its port
else
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -o "-p $port" -w -t 120 start >/dev/null \
        || die "PostgreSQL did not start: $(tail -n 5 "$dir/postgres.log" | tr '\n' ' ')"
fi

password=""
if [ -f "$env_file" ]; then
    password=$(sed -n 's/^export POSTGRE_PASSWORD=//p' "$env_file")
fi
if [ -z "$password" ]; then
    password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
fi
as_owner "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres >/dev/null <<SQL
SELECT 'CREATE ROLE labelstudio LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'labelstudio')\gexec
ALTER ROLE labelstudio PASSWORD '$password';
SELECT 'CREATE DATABASE labelstudio OWNER labelstudio' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'labelstudio')\gexec
SQL

umask 077
cat >"$env_file" <<ENV
export DJANGO_DB=default
export POSTGRE_NAME=labelstudio
export POSTGRE_USER=labelstudio
export POSTGRE_PASSWORD=$password
export POSTGRE_HOST=127.0.0.1
export POSTGRE_PORT=$port
ENV
chown "$owner" "$env_file"
cat "$env_file"

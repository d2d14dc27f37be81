#!/usr/bin/env bash
# Request-floor throughput of any homeserver: /versions (no auth) and
# /account/whoami (auth) with wrk on loopback. Registers one user through the
# m.login.dummy flow first.
#
#   bash tools/bench/wrk_floor.sh http://127.0.0.1:PORT [seconds] [connections]
set -euo pipefail
base="$1"; secs="${2:-10}"; conns="${3:-64}"
case "$base" in http://127.0.0.1:*|http://localhost:*) ;; *) echo "loopback only" >&2; exit 1 ;; esac
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }

user="wrk$(date +%s%N | tail -c 8)"
session=$(curl -s -X POST "$base/_matrix/client/v3/register" -d "{\"username\":\"$user\",\"password\":\"bench-pw\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["session"])')
token=$(curl -s -X POST "$base/_matrix/client/v3/register" \
    -d "{\"username\":\"$user\",\"password\":\"bench-pw\",\"auth\":{\"type\":\"m.login.dummy\",\"session\":\"$session\"}}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

for path in /_matrix/client/versions /_matrix/client/v3/account/whoami; do
    out=$(wrk -t2 -c"$conns" -d"${secs}s" -H "Authorization: Bearer $token" "$base$path")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    lat=$(echo "$out" | awk '/Latency/ {print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    echo "$path requests_per_s=$rps latency_avg=$lat non_2xx=${non2xx:-0}"
done

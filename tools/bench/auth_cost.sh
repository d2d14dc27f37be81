#!/usr/bin/env bash
# Cost of password login and of registration (the two-request m.login.dummy
# flow) on any homeserver, sequential, so the password hash dominates.
#
#   bash tools/bench/auth_cost.sh http://127.0.0.1:PORT [count]
set -euo pipefail
base="$1"; n="${2:-20}"
case "$base" in http://127.0.0.1:*|http://localhost:*) ;; *) echo "loopback only" >&2; exit 1 ;; esac
prefix="ac$(date +%s%N | tail -c 7)"

register() {
    local session
    session=$(curl -s -X POST "$base/_matrix/client/v3/register" -d "{\"username\":\"$1\",\"password\":\"bench-pw\"}" \
        | sed 's/.*"session":"\([^"]*\)".*/\1/')
    curl -s -o /dev/null -X POST "$base/_matrix/client/v3/register" \
        -d "{\"username\":\"$1\",\"password\":\"bench-pw\",\"auth\":{\"type\":\"m.login.dummy\",\"session\":\"$session\"}}"
}

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

start=$(date +%s%N)
for i in $(seq 1 "$n"); do register "${prefix}r$i"; done
echo "register_ms_per_account=$(( $(ms "$start") / n )) (two requests each, n=$n)"

start=$(date +%s%N)
for i in $(seq 1 "$n"); do
    curl -s -o /dev/null -X POST "$base/_matrix/client/v3/login" \
        -d "{\"type\":\"m.login.password\",\"identifier\":{\"type\":\"m.id.user\",\"user\":\"${prefix}r1\"},\"password\":\"bench-pw\"}"
done
echo "login_ms_per_request=$(( $(ms "$start") / n )) (n=$n)"

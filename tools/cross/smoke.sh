#!/usr/bin/env bash
# Runs a Conduit binary built for aarch64 under qemu-user on a temporary
# config on loopback: /versions answers, a user registers, creates a room,
# sends a message and reads it back; then it stops cleanly. Prints the
# binary's size and the idle RSS (under qemu, the emulator's memory
# included: a Pi itself shows less).
#
#   tools/cross/smoke.sh BINARY
#
# QEMU is the command line that runs the binary, by default
# "qemu-aarch64-static -L /usr/aarch64-linux-gnu"; QEMU= (empty) runs it
# directly, to check this script with a native binary.
set -euo pipefail

binary="${1:?usage: $0 BINARY}"
[ -x "$binary" ] || { echo "smoke: no executable at $binary" >&2; exit 1; }
qemu="${QEMU-qemu-aarch64-static -L /usr/aarch64-linux-gnu}"

fail() { echo "smoke: $*" >&2; [ -f "${log:-}" ] && tail -n 20 "$log" >&2; exit 1; }
json() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }

dir="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

cat > "$dir/conduit.toml" <<TOML
[global]
server_name = "localhost"
address = "127.0.0.1"
port = 0
database_path = "$dir/db"
allow_registration = true
log = "warn,conduit=info"
TOML

log="$dir/server.log"
# shellcheck disable=SC2086 # $qemu is a command line
$qemu "$binary" -c "$dir/conduit.toml" 2>"$log" &
pid=$!
started="$(date +%s%N)"
base=""
# Emulated start-up is slow: up to 3 minutes.
for _ in $(seq 1 360); do
    base="$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$log" | head -n 1)"
    [ -n "$base" ] && break
    kill -0 "$pid" 2>/dev/null || fail "the server exited at start"
    sleep 0.5
done
[ -n "$base" ] || fail "no address logged within 3 minutes"
echo "smoke: listening at $base after $(awk "BEGIN {printf \"%.1f\", ($(date +%s%N) - $started) / 1e9}") s"

call() { # METHOD PATH [BODY]: the JSON answer; fails on a non-2xx status
    curl -fsS --max-time 60 -X "$1" "$base$2" ${token:+-H "Authorization: Bearer $token"} \
        -H 'Content-Type: application/json' ${3:+-d "$3"} || fail "$1 $2 failed"
}

call GET /_matrix/client/versions | json '["versions"][-1]' >/dev/null
registered="$(call POST /_matrix/client/v3/register \
    '{"username": "pi", "password": "a long password", "auth": {"type": "m.login.dummy"}}')"
token="$(echo "$registered" | json '["access_token"]')"
room="$(call POST /_matrix/client/v3/createRoom '{"name": "smoke"}' | json '["room_id"]')"
call PUT "/_matrix/client/v3/rooms/$room/send/m.room.message/smoke1" \
    '{"msgtype": "m.text", "body": "hello from aarch64"}' >/dev/null
bodies="$(call GET "/_matrix/client/v3/rooms/$room/messages?dir=b&limit=10" |
    json '["chunk"]' | grep -o "hello from aarch64" || true)"
[ -n "$bodies" ] || fail "the message was not read back"
echo "smoke: registered @pi:localhost, created $room, sent and read back a message"

# Idle: what the process holds a few seconds after the last request.
sleep 5
rss_kib="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")"
size="$(stat -c %s "$binary")"
echo "smoke: binary $(awk "BEGIN {printf \"%.1f\", $size / 1048576}") MiB ($size bytes)"
echo "smoke: idle RSS $(awk "BEGIN {printf \"%.1f\", $rss_kib / 1024}") MiB${qemu:+ (under qemu, emulator included)}"

kill -TERM "$pid"
for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
done
kill -0 "$pid" 2>/dev/null && fail "did not stop within 60 s of SIGTERM"
wait "$pid" || fail "exited with status $? after SIGTERM"
pid=""
grep -q "database flushed" "$log" || fail "no clean shutdown"
echo "smoke: stopped cleanly"

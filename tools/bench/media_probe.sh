#!/usr/bin/env bash
# tools/bench/media_probe.py against a release Conduit on a fresh data
# directory: many 1 MiB uploads, then downloads, four at a time, with the
# server's CPU and page faults per operation. Not a test: it prints figures.
#
#   bash tools/bench/media_probe.sh [count]       (default 300)
#   BENCH_BINARY=path/to/conduit runs that binary instead (A/B of two builds)
set -euo pipefail
cd "$(dirname "$0")/../.."
count="${1:-300}"
target="${CARGO_TARGET_DIR:-$HOME/.cache/conduit-target}"
bin="${BENCH_BINARY:-$target/release/conduit}"
[ -x "$bin" ] || CARGO_TARGET_DIR="$target" cargo build --release --bin conduit

venv="${MXBENCH_VENV:-/tmp/bench-venv}"
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet -r ../shared/bench/requirements.txt; }

port=18169
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/conduit.toml" <<TOML
[global]
server_name = "localhost"
port = $port
database_path = "$dir/db"
log = "warn"
TOML
"$bin" -c "$dir/conduit.toml" & pid=$!
for _ in $(seq 1 500); do
    curl -sf "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1 && break
    sleep 0.01
done
token=$(curl -sf -X POST "http://127.0.0.1:$port/_matrix/client/v3/register" \
    -d '{"username":"probe","password":"probe-password","auth":{"type":"m.login.dummy"}}' \
    | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
"$venv/bin/python" tools/bench/media_probe.py "http://127.0.0.1:$port" "$token" "$pid" "$count"

#!/usr/bin/env bash
# The shared load harness (../shared/bench/mxbench.py) against a release
# Conduit on a fresh data directory. Not a test: it prints figures and writes
# the harness's JSON report. Loopback only; the harness bounds every loop.
#
#   bash tools/bench/mxbench.sh [scale] [out.json] [extra mxbench args...]
#   (defaults: medium, /tmp/conduit-<scale>.json)
#   BENCH_BINARY=path/to/conduit runs that binary instead (A/B of two builds;
#   not CONDUIT_*: the server reads those as config keys)
#
# Compare with Synapse on the same machine, back to back:
#   ../shared/bench/synapse.sh install && ../shared/bench/synapse.sh setup && ../shared/bench/synapse.sh start
#   python ../shared/bench/mxbench.py run --base-url http://127.0.0.1:18008 --scale medium \
#       --pid "$(../shared/bench/synapse.sh pid)" --label synapse --out /tmp/synapse-medium.json
#   python ../shared/bench/mxbench.py compare /tmp/synapse-medium.json /tmp/conduit-medium.json
set -euo pipefail
cd "$(dirname "$0")/../.."
scale="${1:-medium}"
out="${2:-/tmp/conduit-$scale.json}"
shift $(( $# > 2 ? 2 : $# ))
target="${CARGO_TARGET_DIR:-$HOME/.cache/conduit-target}"
bin="${BENCH_BINARY:-$target/release/conduit}"
[ -x "$bin" ] || CARGO_TARGET_DIR="$target" cargo build --release --bin conduit

venv="${MXBENCH_VENV:-/tmp/bench-venv}"
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet -r ../shared/bench/requirements.txt; }

port=18168
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
# The harness registers through the dummy flow; it logs in hundreds of
# times, so the password cost is Synapse's order (bcrypt 12 ≈ argon2id at its defaults).
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
"$venv/bin/python" ../shared/bench/mxbench.py run --base-url "http://127.0.0.1:$port" --scale "$scale" \
    --pid "$pid" --label "conduit-$scale" --out "$out" "$@"

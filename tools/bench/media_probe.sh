#!/usr/bin/env bash
# tools/bench/media_probe.py against a release Conduit on a fresh data
# directory: many 1 MiB uploads, then downloads, four at a time, with the
# server's CPU and page faults per operation. Not a test: it prints figures.
#
#   bash tools/bench/media_probe.sh [count]       (default 300)
#   BENCH_BINARY=path/to/conduit runs that binary instead (A/B of two builds)
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/bench/conduit.sh
count="${1:-300}"
bench_python
start_conduit 18169
idle_rss
token=$(curl -sf -X POST "$base/_matrix/client/v3/register" \
    -d '{"username":"probe","password":"probe-password","auth":{"type":"m.login.dummy"}}' \
    | "$python" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
"$python" tools/bench/media_probe.py "$base" "$token" "$pid" "$count"

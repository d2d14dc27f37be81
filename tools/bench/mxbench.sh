#!/usr/bin/env bash
# The shared load harness (../shared/bench/mxbench.py) against a release
# Conduit on a fresh data directory. Not a test: it prints figures and writes
# the harness's JSON report. Loopback only; the harness bounds every loop.
#
#   bash tools/bench/mxbench.sh [scale] [out.json] [extra mxbench args...]
#   (defaults: medium, /tmp/conduit-<scale>.json)
#   BENCH_BINARY=path/to/conduit runs that binary instead (A/B of two builds)
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
source tools/bench/conduit.sh
bench_python
start_conduit 18168
idle_rss
"$python" ../shared/bench/mxbench.py run --base-url "$base" --scale "$scale" \
    --pid "$pid" --label "conduit-$scale" --out "$out" "$@"

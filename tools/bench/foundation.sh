#!/usr/bin/env bash
# Foundation benchmarks (not tests): start-up time to the first 200 on
# /versions with an empty data directory, idle RSS, /versions and
# /account/whoami throughput with wrk, and login and registration cost at the
# default argon2 cost. Loopback only; every loop is bounded.
#
#   bash tools/bench/foundation.sh [path/to/conduit]   (default: a release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/bench/conduit.sh
BENCH_BINARY="${1:-${BENCH_BINARY:-}}" conduit_binary
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }

start=$(date +%s%N)
start_conduit 18167
end=$(date +%s%N)
echo "startup_to_first_200_ms: $(( (end - start) / 1000000 ))"
idle_rss

echo "--- wrk"
bash tools/bench/wrk_floor.sh "$base" 10 64
echo "--- password cost (argon2id defaults: 7 MiB, t=5, p=1)"
bash tools/bench/auth_cost.sh "$base" 20
echo "peak_rss_kib: $(awk '/VmHWM/ {print $2}' /proc/$pid/status)"
kill -TERM $pid; wait $pid || true

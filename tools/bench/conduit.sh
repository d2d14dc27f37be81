# Sourced by the benchmark scripts (run from the repo root): a Conduit on a
# fresh data directory and a loopback port, killed and removed on exit.
#
#   conduit_binary        builds the release binary of this tree (a no-op
#                         when it is up to date); sets $bin
#                         (BENCH_BINARY=path/to/conduit runs that binary
#                         instead, for an A/B of two builds; not CONDUIT_*:
#                         the server reads those as config keys)
#   start_conduit PORT    starts it with the default config and waits for
#                         /versions; sets $pid, $dir and $base
#   idle_rss              after 2 s of idle, prints the server's RSS
#                         (`idle_rss_kib`); every script calls it right
#                         after start-up, so each round records it
#   bench_python          the harness's Python (../shared/bench), its venv
#                         made on first use; sets $python
#
# BENCH_CONFIG (TOML lines, @DIR@ standing for the data directory) is
# appended to the config's [global] table;
# BENCH_RATE_LIMITS=on keeps rate limiting on, with limits no benchmark
# reaches, so its bookkeeping is measured and nothing is refused.

conduit_binary() {
    local target="${CARGO_TARGET_DIR:-$HOME/.cache/conduit-target}"
    if [ -n "${BENCH_BINARY:-}" ]; then
        bin="$BENCH_BINARY"
        return 0
    fi
    # Always through cargo, so a binary left from an older tree is never
    # what gets measured.
    bin="$target/release/conduit"
    CARGO_TARGET_DIR="$target" cargo build --locked --release -p conduit-release --bin conduit
}

start_conduit() {
    local port="$1"
    [ -n "${bin:-}" ] || conduit_binary
    base="http://127.0.0.1:$port"
    dir=$(mktemp -d)
    trap 'kill ${pid:-} 2>/dev/null || true; wait ${pid:-} 2>/dev/null || true; rm -rf "$dir"' EXIT
    local extra="${BENCH_CONFIG:-}"
    extra="${extra//@DIR@/$dir}"
    cat > "$dir/conduit.toml" <<TOML
[global]
server_name = "localhost"
port = $port
database_path = "$dir/db"
log = "warn"
# The harness registers 32 users at once; like synapse.sh lifting Synapse's
# rate limits, let them all wait for the hashing thread.
password_checks_waiting = 64
$(bench_rate_limits)
$extra
TOML
    "$bin" -c "$dir/conduit.toml" & pid=$!
    # At most 5 s, in 1 ms steps so start-up time can be read off it.
    for _ in $(seq 1 5000); do
        curl -sf "$base/_matrix/client/versions" >/dev/null 2>&1 && return 0
        sleep 0.001
    done
    echo "conduit did not answer on $base" >&2
    return 1
}

bench_rate_limits() {
    if [ "${BENCH_RATE_LIMITS:-off}" = on ]; then
        local high="{ per_second = 1000000.0, burst = 1000000 }"
        echo "rate_limits = { enabled = true, message = $high, join = $high, login = $high, register = $high, media_upload = $high }"
    else
        # A benchmark is a runaway script by design: measure the server, not
        # its rate limits (synapse.sh lifts Synapse's too).
        echo "rate_limits.enabled = false"
    fi
}

idle_rss() {
    sleep 2
    echo "idle_rss_kib: $(awk '/VmRSS/ {print $2}' /proc/$pid/status)"
}

bench_python() {
    local venv="${MXBENCH_VENV:-/tmp/bench-venv}"
    [ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet -r ../shared/bench/requirements.txt; }
    python="$venv/bin/python"
}

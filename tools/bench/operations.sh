#!/usr/bin/env bash
# What running a server for others costs (issue 25), on release Conduit with
# the shared harness at medium scale. Not a test: it prints figures.
#
#   bash tools/bench/operations.sh [rounds]     (default 2)
#
# 1. Rate limiting and metrics on the send and /sync figures: four
#    configurations (neither, rate limits, metrics, both), each a whole
#    medium run on a fresh server, interleaved round by round so the
#    machine's drift falls on all four alike. Rate limits run with limits
#    no benchmark reaches (BENCH_RATE_LIMITS=on), so the bookkeeping is
#    measured, not refusals; metrics are scraped once a second while the
#    run goes on, as Prometheus would (more often than its default 15 s).
# 2. An online backup of the medium database (the last round's "neither"
#    server, after its run): time, and sizes of the database and backup.
# 3. A medium run with memory_budget_mb = 128: its peak RSS (VmHWM).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-2}"
out=$(mktemp -d)
source tools/bench/conduit.sh
conduit_binary
bench_python

# A server with BENCH_CONFIG and BENCH_RATE_LIMITS as set by the caller,
# through one medium run; its report in $out/$label.json. With
# BACKUP_AFTER=yes it then takes an online backup as an admin.
one_run() {
    local label="$1" port="$2"
    (
        start_conduit "$port"
        idle_rss
        scraper=""
        if [ -n "${METRICS_PORT:-}" ]; then
            ( for _ in $(seq 1 900); do
                  curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" >/dev/null || true
                  sleep 1
              done ) & scraper=$!
        fi
        "$python" ../shared/bench/mxbench.py run --base-url "$base" --scale medium \
            --pid "$pid" --label "$label" --out "$out/$label.json" >/dev/null
        [ -n "$scraper" ] && kill "$scraper" 2>/dev/null || true
        if [ "${BACKUP_AFTER:-}" = yes ]; then
            "$python" - "$base" "$dir" <<'PY'
import hashlib, hmac, json, subprocess, sys, time, urllib.request
base, data = sys.argv[1], sys.argv[2]
def call(method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)
# An admin by shared-secret registration (the config's secret below).
nonce = call("GET", "/_synapse/admin/v1/register")["nonce"]
mac = hmac.new(b"bench-secret", digestmod=hashlib.sha1)
mac.update(b"\x00".join([nonce.encode(), b"benchadmin", b"benchpass-123", b"admin"]))
token = call("POST", "/_synapse/admin/v1/register", {
    "nonce": nonce, "username": "benchadmin", "password": "benchpass-123",
    "admin": True, "mac": mac.hexdigest()})["access_token"]
def du(path):
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True).stdout.split()[0])
started = time.perf_counter()
taken = call("POST", "/_conduit/admin/v1/backups", token=token)
took = time.perf_counter() - started
print(f"backup: {took:.2f} s, database {du(data + '/db') / 2**20:.1f} MiB, "
      f"backup directory {du(data + '/backups') / 2**20:.1f} MiB, {taken['files']} files, "
      f"media files {taken['media_files_copied']}")
started = time.perf_counter()
again = call("POST", "/_conduit/admin/v1/backups", token=token)
print(f"second backup, nothing new: {time.perf_counter() - started:.2f} s, "
      f"backup directory {du(data + '/backups') / 2**20:.1f} MiB")
PY
        fi
    )
}

metrics_config='metrics_address = "127.0.0.1:19191"'
for round in $(seq 1 "$rounds"); do
    echo "round $round of $rounds" >&2
    BENCH_RATE_LIMITS=off BENCH_CONFIG="" one_run "neither-$round" 18171
    BENCH_RATE_LIMITS=on BENCH_CONFIG="" one_run "limits-$round" 18172
    BENCH_RATE_LIMITS=off BENCH_CONFIG="$metrics_config" METRICS_PORT=19191 one_run "metrics-$round" 18173
    BENCH_RATE_LIMITS=on BENCH_CONFIG="$metrics_config" METRICS_PORT=19191 one_run "both-$round" 18174
done

echo "online backup of a medium database:"
BENCH_RATE_LIMITS=off BACKUP_AFTER=yes \
    BENCH_CONFIG=$'registration_shared_secret = "bench-secret"\nbackup_directory = "@DIR@/backups"' \
    one_run "backup" 18175

BENCH_RATE_LIMITS=off BENCH_CONFIG="memory_budget_mb = 128" one_run "budget128" 18176

"$python" - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = [("send msg/s", "send", "throughput_per_s"), ("send p50 ms", "send", "p50_ms"),
        ("initial sync p50 ms", "sync_initial", "p50_ms"),
        ("incremental sync p50 ms", "sync_incr_1event", "p50_ms"),
        ("delivery p50 ms", "e2e_delivery", "p50_ms"), ("delivery p99 ms", "e2e_delivery", "p99_ms")]
reports = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
labels = sorted(reports, key=lambda l: (l.rsplit("-", 1)[-1], ["neither", "limits", "metrics", "both", "backup", "budget128"].index(l.rsplit("-", 1)[0]) if "-" in l else 9))
print("| | " + " | ".join(labels) + " |")
print("|---" * (len(labels) + 1) + "|")
for title, scenario, key in rows:
    print(f"| {title} | " + " | ".join(str(reports[l]["scenarios"].get(scenario, {}).get(key)) for l in labels) + " |")
print("| peak RSS (VmHWM) MiB | " + " | ".join(str(reports[l]["server_process"].get("vmhwm_mib")) for l in labels) + " |")
print("| server CPU s | " + " | ".join(str(reports[l]["server_process"].get("cpu_s_total")) for l in labels) + " |")
PY
rm -rf "$out"

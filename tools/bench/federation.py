"""Federation delivery between two Conduit servers on loopback: a room on A
that a user of B has joined, messages sent on A, and the time until B's
user sees each one in a long-polling /sync.

Not a test: it prints figures. Phase 1 sends one message at a time (the
latency of one delivery, send to seen on the other server); phase 2 sends a
burst from several senders at once (events per second delivered end to end).

    python3 tools/bench/federation.py --binary path/to/conduit \
        [--latency-messages 200] [--burst-messages 1000] [--senders 8]

Only the standard library; loopback only; every wait is bounded.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, token=None, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Server:
    def __init__(self, binary, name, port, other, other_port):
        self.dir = tempfile.TemporaryDirectory()
        self.base = f"http://127.0.0.1:{port}"
        config = os.path.join(self.dir.name, "conduit.toml")
        with open(config, "w") as f:
            f.write(
                f'[global]\nserver_name = "{name}"\naddress = "127.0.0.1"\nport = {port}\n'
                f'database_path = "{self.dir.name}/db"\nlog = "warn"\nallow_federation = true\ntrusted_servers = []\n'
                # A benchmark sends as fast as it can: measure the server, not its rate limits.
                "rate_limits.enabled = false\n"
                f'[global.federation_destination_overrides]\n"{other}" = "http://127.0.0.1:{other_port}"\n'
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
        self.proc = subprocess.Popen([binary, "-c", config], env=env)
        for _ in range(500):
            try:
                if call(self.base, "GET", "/_matrix/client/versions", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.01)
        raise SystemExit(f"{name} did not start")

    def register(self, user):
        status, body = call(self.base, "POST", "/_matrix/client/v3/register", body={"username": user, "password": "bench-password"})
        session = body["session"]
        status, body = call(
            self.base,
            "POST",
            "/_matrix/client/v3/register",
            body={"username": user, "password": "bench-password", "auth": {"type": "m.login.dummy", "session": session}},
        )
        assert status == 200, body
        return body["access_token"]

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.dir.cleanup()


def watch(server, token, room, seen, stop):
    """Records when each message body first shows in the user's sync."""
    # A timeline limit above any burst between two syncs: nothing is cut.
    sync_filter = urllib.parse.quote(json.dumps({"room": {"timeline": {"limit": 5000}}}))
    since = call(server.base, "GET", "/_matrix/client/v3/sync?timeout=0", token)[1]["next_batch"]
    while not stop.is_set():
        path = f"/_matrix/client/v3/sync?timeout=5000&filter={sync_filter}&since={urllib.parse.quote(since)}"
        try:
            status, body = call(server.base, "GET", path, token)
        except OSError:
            if stop.is_set():
                return
            raise
        now = time.monotonic()
        if status != 200:
            continue
        since = body["next_batch"]
        events = body.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
        for event in events:
            text = event.get("content", {}).get("body")
            if text is not None and text not in seen:
                seen[text] = now


def send(server, token, room, text, txn):
    path = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/{txn}"
    status, body = call(server.base, "PUT", path, token, {"msgtype": "m.text", "body": text})
    assert status == 200, body


def wait_for(seen, texts, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(t in seen for t in texts):
            return True
        time.sleep(0.01)
    return False


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--latency-messages", type=int, default=200)
    parser.add_argument("--burst-messages", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=8)
    args = parser.parse_args()

    port_a, port_b = free_port(), free_port()
    a = Server(args.binary, "bench-a.test", port_a, "bench-b.test", port_b)
    b = Server(args.binary, "bench-b.test", port_b, "bench-a.test", port_a)
    try:
        alice, bob = a.register("alice"), b.register("bob")
        status, body = call(a.base, "POST", "/_matrix/client/v3/createRoom", alice, {"preset": "public_chat"})
        room = body["room_id"]
        status, body = call(b.base, "POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room)}", bob, {})
        assert status == 200, body

        seen, stop = {}, threading.Event()
        watcher = threading.Thread(target=watch, args=(b, bob, room, seen, stop), daemon=True)
        watcher.start()
        time.sleep(0.5)

        # Phase 1: one at a time.
        latencies = []
        for i in range(args.latency_messages):
            text = f"latency {i}"
            started = time.monotonic()
            send(a, alice, room, text, f"l{i}")
            if not wait_for(seen, [text], 30):
                raise SystemExit(f"{text} not delivered within 30 s")
            latencies.append((seen[text] - started) * 1000)

        # Phase 2: a burst from several senders.
        texts = [f"burst {i}" for i in range(args.burst_messages)]
        started = time.monotonic()
        threads = []
        for s in range(args.senders):
            mine = texts[s :: args.senders]
            t = threading.Thread(target=lambda mine=mine, s=s: [send(a, alice, room, text, f"b{s}-{text.split()[1]}") for text in mine])
            threads.append(t)
            t.start()
        for t in threads:
            t.join()
        sent = time.monotonic()
        if not wait_for(seen, texts, 120):
            missing = sum(1 for t in texts if t not in seen)
            stop.set()
            raise SystemExit(f"{missing} burst messages not seen on B within 120 s")
        delivered = max(seen[t] for t in texts)
        stop.set()

        print(f"latency_messages: {len(latencies)}")
        print(f"delivery_ms_p50: {statistics.median(latencies):.1f}")
        print(f"delivery_ms_p99: {percentile(latencies, 99):.1f}")
        print(f"delivery_ms_max: {max(latencies):.1f}")
        print(f"burst_messages: {len(texts)} from {args.senders} senders")
        print(f"burst_send_s: {sent - started:.2f}")
        print(f"burst_delivered_s: {delivered - started:.2f}")
        print(f"burst_events_per_s: {len(texts) / (delivered - started):.0f}")
        print(f"rss_kib_a: {a.rss_kib()}")
        print(f"rss_kib_b: {b.rss_kib()}")
    finally:
        a.stop()
        b.stop()


if __name__ == "__main__":
    sys.exit(main())

"""Events delivered to an application service: a loopback appservice that
acknowledges every transaction at once, registered on a homeserver (release
Conduit, or Synapse on SQLite from the interop venv) with the same
registration file, and clients sending messages in rooms where one of the
appservice's users (a puppet in its exclusive namespace) is joined. With --control the
registration has no URL, so nothing is pushed: the same sends, timed alone.

Not a test: it prints figures. Phase 1 sends one message at a time and times
each from just before its send request to its arrival at the appservice
(matched by the event ID the send returned). Phase 2 has several client
threads, each in a room of its own (or all in one with --one-room), send as
fast as they can; events per second end to end = events / (last arrival -
first send). Also: the send rate, transactions and events per transaction,
the homeserver's CPU time during the burst and its peak RSS (VmHWM).

The appservice runs in a process of its own (a threaded http.server with
keep-alive), so that the senders' threads do not hold it up; it stamps each
transaction with the monotonic clock, which is the same in every process.
Synapse and the Conduit start-up are the interop suite's
(tests/interop/bridges.py's Homeserver), so run this with the Python of the
virtualenv Synapse is installed in:

    $VENV/bin/python tools/bench/appservice.py --binary path/to/conduit \
        [--homeservers conduit,synapse] [--repeat 2] [--latency-messages 500] \
        [--senders 4] [--burst-messages 1000] [--one-room] [--control] [--keep]

--burst-messages is per sender. Loopback only; every wait is bounded.
"""

import argparse
import http.client
import http.server
import json
import multiprocessing
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

INTEROP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "interop")
# Longest wait for one event in phase 1, and for the whole burst in phase 2.
EVENT_TIMEOUT = 30
BURST_TIMEOUT = 300
PUPPET = "bench_puppet"


# --- The appservice, in a process of its own. ---


def serve_appservice(port, hs_token, arrivals, ready):
    """Answers the homeserver on 127.0.0.1:`port` until killed; puts
    (arrival, txn_id, [event_id, ...]) on `arrivals` for each transaction,
    and ("unauthorized", path) for a request without `hs_token`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real bridge's server
        # One write per answer, sent at once: with the default (headers and
        # body in two writes, Nagle on) the body waits for the client's
        # delayed ACK, 40 ms, and so does the homeserver's next transaction.
        disable_nagle_algorithm = True
        wbufsize = -1  # flushed by handle_one_request after each answer

        def log_message(self, *args):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def read_body(self):
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def authorized(self):
            if self.headers.get("Authorization") == f"Bearer {hs_token}":
                return True
            arrivals.put(("unauthorized", self.path))
            self.reply(403, {"errcode": "M_FORBIDDEN"})
            return False

        def do_PUT(self):
            body = self.read_body()
            arrival = time.monotonic()
            if not self.authorized():
                return
            path = urllib.parse.urlsplit(self.path).path
            if "/transactions/" not in path:
                self.reply(404, {"errcode": "M_UNRECOGNIZED"})
                return
            self.reply(200, {})
            events = json.loads(body).get("events", [])
            txn_id = urllib.parse.unquote(path.rsplit("/", 1)[1])
            arrivals.put((arrival, txn_id, [e.get("event_id") for e in events]))

        def do_GET(self):
            # User and alias queries: nothing here exists but what it made.
            if self.authorized():
                self.reply(404, {"errcode": "M_NOT_FOUND"})

        def do_POST(self):
            self.read_body()
            if self.authorized():
                self.reply(200 if self.path.endswith("/ping") else 404, {})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    ready.set()
    server.serve_forever()


class Appservice:
    """The appservice process and, in this one, what it has received."""

    def __init__(self, port, hs_token):
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self.queue, ready = context.Queue(), context.Event()
        self.proc = context.Process(target=serve_appservice, args=(port, hs_token, self.queue, ready), daemon=True)
        self.proc.start()
        if not ready.wait(30):
            raise RuntimeError("the appservice did not start within 30 s")
        self.arrived = {}  # event_id -> first arrival (monotonic)
        self.transactions = []  # (arrival, txn_id, event count)
        self.duplicates = 0  # events received more than once
        self.unauthorized = 0
        self.changed = threading.Condition()
        threading.Thread(target=self.collect, daemon=True).start()

    def collect(self):
        while True:
            try:
                item = self.queue.get()
            except (EOFError, OSError):
                return
            with self.changed:
                if item[0] == "unauthorized":
                    self.unauthorized += 1
                    continue
                arrival, txn_id, event_ids = item
                self.transactions.append((arrival, txn_id, len(event_ids)))
                for event_id in event_ids:
                    if event_id in self.arrived:
                        self.duplicates += 1
                    else:
                        self.arrived[event_id] = arrival
                self.changed.notify_all()

    def wait_for(self, event_ids, timeout):
        """Waits until every one of `event_ids` has arrived; whether they did."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all(e in self.arrived for e in event_ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def stop(self):
        self.proc.kill()
        self.proc.join(10)


def write_registration(path, port, as_token, hs_token, push):
    """Synapse's registration format; YAML, written as JSON (a subset).
    Without `push`, no URL: the homeserver sends it nothing."""
    registration = {
        "id": "bench",
        "url": f"http://127.0.0.1:{port}" if push else None,
        "as_token": as_token,
        "hs_token": hs_token,
        "sender_localpart": "bench_bot",
        "rate_limited": False,
        "namespaces": {"users": [{"exclusive": True, "regex": "@bench_.*"}], "aliases": [], "rooms": []},
    }
    with open(path, "w") as f:
        json.dump(registration, f, indent=1)


# --- Clients: one keep-alive connection per sending thread. ---


class Session:
    def __init__(self, base, token, user_id=None):
        self.token, self.user_id = token, user_id
        self.connection = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=60)

    def call(self, method, path, body=None, query=None):
        if query:
            path += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        self.connection.request(method, path, body=data, headers=headers)
        response = self.connection.getresponse()
        answer = json.loads(response.read() or b"{}")
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {answer}")
        return answer

    def send_text(self, room_id, text):
        path = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id, safe='')}/send/m.room.message/{uuid.uuid4().hex}"
        return self.call("PUT", path, {"msgtype": "m.text", "body": text})["event_id"]

    def close(self):
        self.connection.close()


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def measure(kind, binary, workdir, args):
    """One fresh homeserver of `kind` and the two phases; the figures."""
    import bridges  # tests/interop: starts Conduit or Synapse with a registration
    import synapse as interop  # tests/interop/synapse.py, not the Synapse package
    from federation_join import cpu_seconds, proc_status_kib  # beside this file

    os.makedirs(workdir)
    port = bridges.harness.free_port()
    as_token, hs_token = uuid.uuid4().hex, uuid.uuid4().hex
    registration = os.path.join(workdir, "registration.yaml")
    push = not args.control
    write_registration(registration, port, as_token, hs_token, push)
    appservice = Appservice(port, hs_token)
    hs = None
    sessions = []
    result = {"homeserver": kind if push else f"{kind} (control)", "load_before": os.getloadavg()[0]}
    try:
        hs = bridges.Homeserver(kind, binary, workdir, registration)
        pid = (hs.conduit.proc if hs.conduit else hs.synapse).pid
        puppet_id = f"@{PUPPET}:{hs.server_name}"
        bridge = Session(hs.base, as_token)
        bridge.call("POST", "/_matrix/client/v3/register",
                    {"type": "m.login.application_service", "username": PUPPET, "inhibit_login": True})
        rooms_wanted = 1 if args.one_room else args.senders
        owners = [interop.register(hs.base, f"sender{i}") for i in range(args.senders)]
        rooms = []
        for owner in owners[:rooms_wanted]:
            room = owner.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})["room_id"]
            bridge.call("POST", f"/_matrix/client/v3/join/{interop.enc(room)}", {}, {"user_id": puppet_id})
            rooms.append(room)
        for owner in owners[rooms_wanted:]:
            owner.call("POST", f"/_matrix/client/v3/join/{interop.enc(rooms[0])}", {})
        sessions = [Session(hs.base, o.token, o.user_id) for o in owners]
        room_of = [rooms[i % len(rooms)] for i in range(args.senders)]
        # Everything before (joins, warm-up messages) delivered: the queue is empty.
        warm = [s.send_text(room_of[i], "warm-up") for i, s in enumerate(sessions)]
        if push and not appservice.wait_for(warm, EVENT_TIMEOUT):
            raise RuntimeError("the warm-up messages did not reach the appservice")

        # Phase 1: one at a time.
        latencies, send_ms = [], []
        first_txn = len(appservice.transactions)
        for i in range(args.latency_messages):
            started = time.monotonic()
            event_id = sessions[0].send_text(room_of[0], f"latency {i}")
            send_ms.append((time.monotonic() - started) * 1000)
            if not push:
                latencies.append(send_ms[-1])  # the control: the send alone
                continue
            if not appservice.wait_for([event_id], EVENT_TIMEOUT):
                raise RuntimeError(f"message {i} did not reach the appservice within {EVENT_TIMEOUT} s")
            latencies.append((appservice.arrived[event_id] - started) * 1000)
        result.update(
            p50_ms=statistics.median(latencies), p99_ms=percentile(latencies, 99), max_ms=max(latencies),
            send_p50_ms=statistics.median(send_ms), latency_txns=len(appservice.transactions) - first_txn,
        )

        # Phase 2: a burst.
        sent_ids = [[] for _ in sessions]
        errors = []

        def burst(i):
            try:
                for n in range(args.burst_messages):
                    sent_ids[i].append(sessions[i].send_text(room_of[i], f"burst {i} {n}"))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=burst, args=(i,)) for i in range(args.senders)]
        first_txn = len(appservice.transactions)
        cpu_before = cpu_seconds(pid)
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(BURST_TIMEOUT)
        sent = time.monotonic()
        if errors or any(t.is_alive() for t in threads):
            raise RuntimeError(f"senders failed: {errors[:3]}")
        all_ids = [e for ids in sent_ids for e in ids]
        if push and not appservice.wait_for(all_ids, BURST_TIMEOUT):
            missing = sum(1 for e in all_ids if e not in appservice.arrived)
            raise RuntimeError(f"{missing} of {len(all_ids)} burst events did not reach the appservice")
        last = max(appservice.arrived[e] for e in all_ids) if push else sent
        cpu = cpu_seconds(pid) - cpu_before
        with appservice.changed:
            txns = appservice.transactions[first_txn:]
        sizes = [n for _, _, n in txns]
        result.update(
            burst=len(all_ids), send_s=sent - started, delivered_s=last - started,
            events_per_s=len(all_ids) / (last - started), send_per_s=len(all_ids) / (sent - started),
            lag_after_send_ms=(last - sent) * 1000, burst_txns=len(txns),
            events_per_txn=statistics.mean(sizes or [0]), max_events_per_txn=max(sizes or [0]), burst_cpu_s=cpu,
            peak_mib=proc_status_kib(pid, "VmHWM") / 1024, rss_mib=proc_status_kib(pid, "VmRSS") / 1024,
            duplicates=appservice.duplicates, unauthorized=appservice.unauthorized, load_after=os.getloadavg()[0],
        )
        return result
    except Exception as e:  # noqa: BLE001 - one failed run is reported, the others go on
        result["error"] = str(e) or repr(e)
        return result
    finally:
        for s in sessions:
            s.close()
        if hs is not None:
            hs.stop()
        appservice.stop()


def show(r):
    figures = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items() if k != "homeserver")
    print(f"{r['homeserver']}: {figures}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", help="the conduit binary (for --homeservers conduit)")
    parser.add_argument("--homeservers", default="conduit,synapse", help="comma-separated: conduit, synapse")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, interleaved")
    parser.add_argument("--latency-messages", type=int, default=500)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--burst-messages", type=int, default=1000, help="per sender")
    parser.add_argument("--one-room", action="store_true", help="all senders in one room")
    parser.add_argument("--control", action="store_true",
                        help="the registration without a URL: nothing is pushed, the sends alone are timed")
    parser.add_argument("--keep", action="store_true", help="keep the servers' directories and logs")
    args = parser.parse_args()
    kinds = args.homeservers.split(",")
    if set(kinds) - {"conduit", "synapse"}:
        parser.error(f"unknown homeservers in {kinds}")
    if "conduit" in kinds and not args.binary:
        parser.error("--binary is needed for conduit")
    binary = os.path.abspath(args.binary) if args.binary else None
    sys.path.insert(0, INTEROP)
    workdir = tempfile.mkdtemp(prefix="conduit-as-bench-")
    results = []
    for n in range(args.repeat):
        for kind in kinds:
            result = measure(kind, binary, os.path.join(workdir, f"{n}-{kind}"), args)
            results.append(result)
            show(result)
    failed = any("error" in r for r in results)
    if args.keep or failed:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    rooms = "one room" if args.one_room else "a room each"
    print(f"\nphase 1: {args.latency_messages} messages one at a time; phase 2: {args.senders} senders x "
          f"{args.burst_messages} messages, {rooms}")
    print("| homeserver | latency p50 / p99 / max | send p50 | burst events/s end to end | sent/s | "
          "lag after last send | txns (events/txn mean, max) | burst CPU | peak RSS | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['homeserver']} | FAILED: {r['error']} |")
            continue
        print(f"| {r['homeserver']} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} ms | "
              f"{r['send_p50_ms']:.1f} ms | {r['events_per_s']:.0f} | {r['send_per_s']:.0f} | "
              f"{r['lag_after_send_ms']:.0f} ms | {r['burst_txns']} ({r['events_per_txn']:.1f}, "
              f"{r['max_events_per_txn']}) | {r['burst_cpu_s']:.1f} s | {r['peak_mib']:.0f} MiB | "
              f"{r['load_before']:.1f}-{r['load_after']:.1f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

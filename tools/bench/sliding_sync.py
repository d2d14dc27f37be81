"""Simplified sliding sync (MSC4186) against /sync v2, on one release
Conduit per room count: a user in N rooms (each with a name and a few
messages from her and from a second user), and what her client waits for.

Not a test: it prints figures. For each N (--rooms, 50 and 500 by default)
a fresh Conduit on a temporary data directory, set up through the API
(setup, not measured), then three phases:

1. Initial responses. A sliding sync request as Element X opens its room
   list: one list, range [0,19], timeline_limit 1, Element X's
   required_state ($LAZY and $ME members, name, topic, avatar, alias,
   encryption, power levels, join rules, create, history visibility,
   tombstone, pinned events, m.call.member *), each run on a new connection
   (a new conn_id, no pos). Next to it the same user's initial /sync v2
   with a filter of timeline.limit = 1 (all her rooms, their whole state).
   --runs of each after 3 warm-ups, interleaved; the time is from just
   before the request to the last byte of the answer (its JSON parse not
   included) on a keep-alive connection: p50, p90, max.
2. Send -> delivery. The second user sends --messages messages, one at a
   time, into the rooms in turn, while the first long-polls in a thread of
   its own: (a) sliding sync with pos and timeout=30000, then, in a phase
   of its own, (b) /sync v2 with since and timeout=30000. Latency = the
   arrival of the answer that holds the event (matched by the ID its send
   returned) minus the moment just before its send request: p50, p99, max.
   The next message is sent once the poller has sent its next request.
   Also counted: the long-polls answered without any of these messages
   (one before its message is an extra round trip in that latency).
   With --load-all the sliding connection's first request asks for every
   room (range [0,N-1]) instead of the first 20, as Element X does once it
   loads its whole room list: the connection then holds all N rooms.
3. The server's peak RSS (VmHWM) after each phase, and its CPU time in it.

The server is the interop suite's Conduit (tests/interop/harness.py's
TlsConduit: its own data directory, config and log, cheap argon2), on
plain HTTP here and logging warnings only (--log to change it), default
config otherwise (every write fsynced). Standard library only:

    python3 tools/bench/sliding_sync.py --binary path/to/conduit \
        [--rooms 50,500] [--runs 30] [--messages 300] [--load-all] [--log warn] [--keep]

Loopback only; every wait is bounded.
"""

import argparse
import concurrent.futures
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "interop"))
sys.path.insert(0, HERE)

import harness  # noqa: E402 - tests/interop: starts and stops Conduit
from appservice import Session, percentile  # noqa: E402 - keep-alive client calls
from federation_join import cpu_seconds, interop, proc_status_kib  # noqa: E402 - interop: tests/interop/synapse.py

SLIDING = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
SYNC = "/_matrix/client/v3/sync"
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 1}}}, separators=(",", ":"))
# What Element X asks for in its room list.
REQUIRED_STATE = [
    ["m.room.encryption", ""],
    ["m.room.member", "$LAZY"],
    ["m.room.member", "$ME"],
    ["m.room.name", ""],
    ["m.room.topic", ""],
    ["m.room.avatar", ""],
    ["m.room.canonical_alias", ""],
    ["m.room.power_levels", ""],
    ["m.room.join_rules", ""],
    ["m.room.create", ""],
    ["m.room.history_visibility", ""],
    ["m.room.tombstone", ""],
    ["m.room.pinned_events", ""],
    ["m.call.member", "*"],
]
LIST_BODY = {"lists": {"all_rooms": {"ranges": [[0, 19]], "timeline_limit": 1, "required_state": REQUIRED_STATE}}}
WARMUPS = 3
LONG_POLL_MS = 30000
# Longest wait for one message's delivery, and for a poller to be waiting.
EVENT_TIMEOUT = 30
SETUP_THREADS = 4
MESSAGES_PER_ROOM = 2  # from each of the two users


class Conduit(harness.TlsConduit):
    """The interop suite's Conduit, named 127.0.0.1:port, but serving plain
    HTTP (its [global.tls] table dropped) and logging with `log`."""

    def __init__(self, binary, directory, log):
        port = harness.free_port()
        os.makedirs(directory)
        ca = harness.make_ca(directory)
        super().__init__(binary, os.path.join(directory, "conduit"), f"127.0.0.1:{port}", port, ca, None, {})
        config = self.command[-1]
        with open(config) as f:
            text = f.read()
        text = text.split("[global.tls]")[0].replace('log = "warn,conduit=debug"', f'log = "{log}"')
        with open(config, "w") as f:
            f.write(text)
        self.base = f"http://127.0.0.1:{port}"


def register(base, name):
    """A new user (the interop suite's registration); her keep-alive session."""
    client = interop.register(base, name)
    return Session(base, client.token, client.user_id)


def build_rooms(base, alice, bob, count):
    """`count` rooms of `alice`'s, each named, `bob` joined, and two messages
    from each of them; their IDs, in the order made."""
    local = threading.local()

    def sessions():
        if not hasattr(local, "alice"):
            local.alice, local.bob = Session(base, alice.token), Session(base, bob.token)
        return local.alice, local.bob

    def make(n):
        a, b = sessions()
        room = a.call("POST", "/_matrix/client/v3/createRoom",
                      {"preset": "private_chat", "name": f"Room {n}", "invite": [bob.user_id]})["room_id"]
        b.call("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room, safe='')}", {})
        for i in range(MESSAGES_PER_ROOM):
            a.send_text(room, f"hello {i} from alice in room {n}")
            b.send_text(room, f"hello {i} from bob in room {n}")
        return room

    with concurrent.futures.ThreadPoolExecutor(SETUP_THREADS) as pool:
        return list(pool.map(make, range(count)))


def reconnect(*sessions):
    """New connections for `sessions`: the server closes a keep-alive
    connection idle for 5 s (actix-web's default), as these may have been
    during the setup or the phase before; a cheap request opens each."""
    for session in sessions:
        session.connection.close()
        session.call("GET", "/_matrix/client/versions")


def timed(session, method, path, body=None, query=None):
    """One request; (milliseconds to the last byte of the answer, answer)."""
    if query:
        path += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {session.token}", "Content-Type": "application/json"}
    started = time.monotonic()
    session.connection.request(method, path, body=data, headers=headers)
    response = session.connection.getresponse()
    raw = response.read()
    elapsed = (time.monotonic() - started) * 1000
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {raw[:500]!r}")
    return elapsed, json.loads(raw), len(raw)


def initial_sliding(session, rooms_count):
    elapsed, answer, size = timed(session, "POST", SLIDING, dict(LIST_BODY, conn_id=uuid.uuid4().hex))
    count = answer["lists"]["all_rooms"]["count"]
    shown = answer.get("rooms", {})
    if count != rooms_count or len(shown) != min(20, rooms_count):
        raise RuntimeError(f"sliding sync: count {count}, {len(shown)} rooms, for {rooms_count} rooms")
    if any(len(r.get("timeline", [])) != 1 for r in shown.values()):
        raise RuntimeError("sliding sync: a room's timeline is not one event")
    return elapsed, size


def initial_sync(session, rooms_count):
    elapsed, answer, size = timed(session, "GET", SYNC, query={"filter": SYNC_FILTER, "timeout": "0"})
    joined = answer["rooms"]["join"]
    if len(joined) != rooms_count:
        raise RuntimeError(f"/sync: {len(joined)} joined rooms, for {rooms_count}")
    return elapsed, size


class Poller:
    """A long-poll loop in a thread of its own, as the first user's client:
    `request(session, token)` makes one request and returns (next token,
    [event IDs in it]); arrivals are stamped with the monotonic clock as
    each answer has been read."""

    def __init__(self, base, token, first_token, request):
        self.session = Session(base, token)  # its 60 s timeout bounds each long-poll
        self.token, self.request = first_token, request
        self.arrived = {}  # event ID -> arrival
        self.delivered_by = {}  # event ID -> the number of the request that brought it
        self.requests = 0
        self.answers = []  # the event IDs of each answer
        self.error = None
        self.stopping = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            while not self.stopping:
                with self.changed:
                    self.requests += 1
                    self.changed.notify_all()
                self.token, event_ids = self.request(self.session, self.token)
                arrival = time.monotonic()
                with self.changed:
                    self.answers.append(event_ids)
                    for event_id in event_ids:
                        if event_id not in self.arrived:
                            self.arrived[event_id] = arrival
                            self.delivered_by[event_id] = self.requests
                    self.changed.notify_all()
        except Exception as e:  # noqa: BLE001 - reported by wait_for
            with self.changed:
                self.error = repr(e)
                self.changed.notify_all()

    def wait_for(self, predicate, what):
        deadline = time.monotonic() + EVENT_TIMEOUT
        with self.changed:
            while not predicate():
                if self.error:
                    raise RuntimeError(f"the poller failed: {self.error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{what}: not within {EVENT_TIMEOUT} s")
                self.changed.wait(left)

    def stop(self, wake):
        """Ends the loop: `wake()` makes something for its last request."""
        self.stopping = True
        wake()
        self.thread.join(EVENT_TIMEOUT)
        self.session.close()


def sliding_request(conn_id):
    def request(session, pos):
        answer = session.call("POST", SLIDING, dict(LIST_BODY, conn_id=conn_id),
                              {"pos": pos, "timeout": str(LONG_POLL_MS)})
        events = [e.get("event_id") for r in answer.get("rooms", {}).values() for e in r.get("timeline", [])]
        return answer["pos"], events
    return request


def sync_request(session, since):
    answer = session.call("GET", SYNC, query={"since": since, "timeout": str(LONG_POLL_MS), "filter": SYNC_FILTER})
    rooms = answer.get("rooms", {}).get("join", {}).values()
    return answer["next_batch"], [e.get("event_id") for r in rooms for e in r.get("timeline", {}).get("events", [])]


def deliveries(poller, bob, rooms, messages):
    """Sends `messages` one at a time into `rooms` in turn; the latencies
    (ms), and how many answers brought none of these messages."""
    latencies, sent = [], set()
    next_request = 1
    for i in range(messages):
        # The poller is in its next request (after the previous arrival).
        poller.wait_for(lambda: poller.requests >= next_request, "the next long-poll")
        started = time.monotonic()
        event_id = bob.send_text(rooms[i % len(rooms)], f"latency {i}")
        sent.add(event_id)
        poller.wait_for(lambda: event_id in poller.arrived, f"message {i}")
        latencies.append((poller.arrived[event_id] - started) * 1000)
        next_request = poller.delivered_by[event_id] + 1
    with poller.changed:
        answers = poller.answers[:next_request - 1]
    return latencies, sum(1 for ids in answers if sent.isdisjoint(ids))


def phase_figures(pid, cpu_before):
    return {"cpu_s": cpu_seconds(pid) - cpu_before, "peak_mib": proc_status_kib(pid, "VmHWM") / 1024,
            "rss_mib": proc_status_kib(pid, "VmRSS") / 1024}


def measure(binary, workdir, rooms_count, args):
    """A fresh Conduit with a user in `rooms_count` rooms, and the phases."""
    result = {"rooms": rooms_count, "load_before": os.getloadavg()[0]}
    conduit = None
    sessions = []
    try:
        conduit = Conduit(binary, workdir, args.log)
        conduit.spawn()
        pid, base = conduit.proc.pid, conduit.base
        alice, bob = register(base, "alice"), register(base, "bob")
        sessions += [alice, bob]
        started = time.monotonic()
        rooms = build_rooms(base, alice, bob, rooms_count)
        result["setup_s"] = time.monotonic() - started
        print(f"{rooms_count} rooms: set up in {result['setup_s']:.0f} s", file=sys.stderr, flush=True)

        # Phase 1: initial responses, interleaved.
        reconnect(alice, bob)
        cpu = cpu_seconds(pid)
        sliding_ms, sync_ms = [], []
        for run in range(WARMUPS + args.runs):
            s_ms, s_size = initial_sliding(alice, rooms_count)
            v_ms, v_size = initial_sync(alice, rooms_count)
            if run >= WARMUPS:
                sliding_ms.append(s_ms)
                sync_ms.append(v_ms)
        result.update(sliding_ms=sliding_ms, sync_ms=sync_ms, sliding_kib=s_size / 1024, sync_kib=v_size / 1024)
        result["initial"] = phase_figures(pid, cpu)

        # Phase 2a: sliding sync long-poll.
        conn_id = "bench-live"
        reconnect(alice, bob)
        opening = copy.deepcopy(LIST_BODY)
        if args.load_all:
            opening["lists"]["all_rooms"]["ranges"] = [[0, rooms_count - 1]]
        result["opening_ms"], answer, _ = timed(alice, "POST", SLIDING, dict(opening, conn_id=conn_id))
        first = answer["pos"]
        cpu = cpu_seconds(pid)
        poller = Poller(base, alice.token, first, sliding_request(conn_id))
        try:
            result["sliding_latency"], result["sliding_idle"] = deliveries(poller, bob, rooms, args.messages)
        finally:
            poller.stop(lambda: bob.send_text(rooms[0], "stop"))
        result["sliding_requests"] = poller.requests
        result["sliding_phase"] = phase_figures(pid, cpu)

        # Phase 2b: /sync v2 long-poll.
        reconnect(alice, bob)
        first = alice.call("GET", SYNC, query={"filter": SYNC_FILTER, "timeout": "0"})["next_batch"]
        cpu = cpu_seconds(pid)
        poller = Poller(base, alice.token, first, sync_request)
        try:
            result["sync_latency"], result["sync_idle"] = deliveries(poller, bob, rooms, args.messages)
        finally:
            poller.stop(lambda: bob.send_text(rooms[0], "stop"))
        result["sync_requests"] = poller.requests
        result["sync_phase"] = phase_figures(pid, cpu)
        result["load_after"] = os.getloadavg()[0]
        return result
    except Exception as e:  # noqa: BLE001 - one failed size is reported, the others go on
        result["error"] = str(e) or repr(e)
        if conduit is not None:
            result["error"] += "\n" + harness.tail(conduit.log, 20)
        return result
    finally:
        for s in sessions:
            s.close()
        if conduit is not None:
            conduit.stop()


def stats(values, high):
    return f"{statistics.median(values):.1f} / {percentile(values, high):.1f} / {max(values):.1f} ms"


def show(r):
    if "error" in r:
        print(f"{r['rooms']} rooms: FAILED: {r['error']}", flush=True)
        return
    print(f"{r['rooms']} rooms (setup {r['setup_s']:.0f} s, load {r['load_before']:.1f}-{r['load_after']:.1f}):\n"
          f"  initial sliding sync p50/p90/max {stats(r['sliding_ms'], 90)} ({r['sliding_kib']:.0f} KiB)\n"
          f"  initial /sync v2     p50/p90/max {stats(r['sync_ms'], 90)} ({r['sync_kib']:.0f} KiB)\n"
          f"  delivery, sliding    p50/p99/max {stats(r['sliding_latency'], 99)} "
          f"({r['sliding_requests']} long-polls, {r['sliding_idle']} answered without a new message; "
          f"the connection's first response {r['opening_ms']:.1f} ms)\n"
          f"  delivery, /sync v2   p50/p99/max {stats(r['sync_latency'], 99)} ({r['sync_requests']} long-polls, "
          f"{r['sync_idle']} answered without a new message)",
          flush=True)
    for phase in ("initial", "sliding_phase", "sync_phase"):
        p = r[phase]
        print(f"  after {phase}: peak RSS {p['peak_mib']:.0f} MiB, RSS {p['rss_mib']:.0f} MiB, "
              f"CPU in it {p['cpu_s']:.1f} s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", required=True, help="the conduit binary (a release build)")
    parser.add_argument("--rooms", default="50,500", help="comma-separated room counts, a fresh server each")
    parser.add_argument("--runs", type=int, default=30, help="initial requests of each kind, after 3 warm-ups")
    parser.add_argument("--messages", type=int, default=300, help="messages per delivery phase")
    parser.add_argument("--load-all", action="store_true",
                        help="the long-poll connection first asks for every room (range [0,N-1]), as Element X "
                             "does when it loads its whole room list, so that it holds them all")
    parser.add_argument("--log", default="warn", help="the server's log filter (e.g. warn,conduit=debug)")
    parser.add_argument("--keep", action="store_true", help="keep the servers' directories and logs")
    args = parser.parse_args()
    counts = [int(n) for n in args.rooms.split(",") if n]
    if not counts or min(counts) < 1 or args.runs < 1 or args.messages < 1:
        parser.error("room counts, --runs and --messages must be positive")
    binary = os.path.abspath(args.binary)
    workdir = tempfile.mkdtemp(prefix="conduit-ss-bench-")
    results = []
    for n in counts:
        result = measure(binary, os.path.join(workdir, f"{n}-rooms"), n, args)
        results.append(result)
        show(result)
    failed = any("error" in r for r in results)
    if args.keep or failed:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ninitial: {args.runs} runs of each after {WARMUPS} warm-ups; delivery: {args.messages} messages "
          f"one at a time, long-poll timeout {LONG_POLL_MS} ms"
          + ("; the sliding connection first asked for every room (--load-all)" if args.load_all else ""))
    print("| rooms | initial sliding sync p50 / p90 / max | initial /sync v2 p50 / p90 / max | "
          "delivery, sliding sync p50 / p99 / max | delivery, /sync v2 p50 / p99 / max | "
          "peak RSS after initial / sliding / v2 phase | load |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['rooms']} | FAILED: {r['error'].splitlines()[0]} |")
            continue
        print(f"| {r['rooms']} | {stats(r['sliding_ms'], 90)} | {stats(r['sync_ms'], 90)} | "
              f"{stats(r['sliding_latency'], 99)} | {stats(r['sync_latency'], 99)} | "
              f"{r['initial']['peak_mib']:.0f} / {r['sliding_phase']['peak_mib']:.0f} / "
              f"{r['sync_phase']['peak_mib']:.0f} MiB | {r['load_before']:.1f}-{r['load_after']:.1f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

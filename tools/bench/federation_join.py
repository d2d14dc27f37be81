"""Joining a big room over federation: a "resident" server holds a public
room of N members (built here: N - 1 users registered and joined, plus the
creator), and a user of a fresh "joining" server joins it. Measured per
join: the join request's duration; the time from the join request until the
joiner's /sync shows a message the resident's creator sent right after the
join returned (time to the first message); the joiner's RSS before the join
and its peak RSS (VmHWM, read once the joiner also lists every member;
each measurement starts a new joining server, so the peak is the join's).
The joiner's CPU time during the join request is printed too.
Joining servers stay up until their resident is done: each later joiner
gets their members' events in the room's state and must verify them, and
Conduit fails the whole join when a state event's origin server cannot be
reached for its keys.

Not a test: it prints figures. Pairs are joiner:resident, among
conduit:conduit, synapse:conduit (Synapse joins the room on Conduit, side
by side with Conduit joining it) and conduit:synapse (Conduit joins a room
built on Synapse). Synapse is the interop suite's (tests/interop/synapse.py,
matrix-synapse from tests/interop/requirements.txt), so run this with the
Python of the virtualenv it is installed in:

    $VENV/bin/python tools/bench/federation_join.py --binary path/to/conduit \
        [--members 1000,10000] [--synapse-members 1000] [--repeat 2] \
        [--pairs conduit:conduit,synapse:conduit,conduit:synapse] [--keep]

Every server is on loopback, named by its IP address and port, and serves
HTTPS with a self-signed certificate; the servers reach each other by those
names and check no certificate. Cheap
password hashing on both (argon2id 64 KiB x 1, bcrypt 4 rounds) so that
building the rooms is quick. Every wait is bounded.
"""

import argparse
import concurrent.futures
import importlib.util
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

# tests/interop/synapse.py, under another name: "synapse" is Synapse's own package.
_spec = importlib.util.spec_from_file_location(
    "interop_synapse", os.path.join(os.path.dirname(__file__), "..", "..", "tests", "interop", "synapse.py")
)
interop = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(interop)
enc = interop.enc

JOIN_TIMEOUT = 600  # seconds for one join, and again for its first message
MEMBERS_TIMEOUT = 600  # until the joiner lists every member
BUILD_THREADS = 8


def use_unverified_tls():
    """Client calls to every Conduit over HTTPS, whichever self-signed
    certificate it has (the interop suite trusts only its one Conduit's)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    interop.OPENER = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )


def make_certificate(directory):
    """A self-signed certificate for 127.0.0.1 (for Synapse: Conduit makes its own)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1"
    command = command.split() + ["-keyout", key, "-out", cert, "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(command, check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    return cert, key


def call(client, method, path, body=None, query=None, timeout=60):
    """One request as `client`; returns (status, answer)."""
    url = client.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {client.token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    return interop.send(request, timeout=timeout)


def cpu_seconds(pid):
    """User and system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def place(server, kind, workdir, log):
    """What the interop suite's Servers sets up for its `kind` of server
    ("conduit" or "synapse") before starting it, for that one server alone
    in `workdir`, on a free port, by the name 127.0.0.1:port, over HTTPS."""
    os.makedirs(workdir)
    server.dir, server.conduit, server.synapse = workdir, None, None
    port = interop.free_port()
    server.name, server.base = f"127.0.0.1:{port}", f"https://127.0.0.1:{port}"
    for attribute, value in (("port", port), ("name", server.name), ("base", server.base),
                             ("log", os.path.join(workdir, log))):
        setattr(server, f"{kind}_{attribute}", value)


class Conduit(interop.Servers):
    """One Conduit of the interop suite's configuration (HTTPS with its own
    certificate, argon2id 64 KiB x 1), reaching other loopback servers by
    their IP-literal names."""

    def __init__(self, binary, workdir):
        place(self, "conduit", workdir, "conduit.log")
        # The interop suite's override for its Synapse; no Synapse here.
        self.synapse_name, self.synapse_port = "no-synapse.invalid", 9
        self.start_conduit(binary)
        use_unverified_tls()  # start_conduit trusts only this Conduit's certificate
        self.proc, self.log = self.conduit, self.conduit_log

    def spawn_conduit(self, wait=True):
        config = self.conduit_command[-1]
        with open(config) as f:
            text = f.read()
        text = text.replace('log = "warn,conduit=debug"', 'log = "warn,conduit=info"').replace(
            "[global]\n",
            "[global]\n"
            # Other servers: straight to their IP-literal names, over
            # HTTPS with self-signed certificates.
            'federation_allowed_ranges = ["127.0.0.0/8"]\nfederation_skip_tls_verification = true\n'
            # Eight registering threads never wait for a 429.
            "password_checks_waiting = 64\n",
            1,
        )
        with open(config, "w") as f:
            f.write(text)
        super().spawn_conduit(wait)

    def stop(self):
        interop.stop(self.conduit)


class Synapse(interop.Servers):
    """One Synapse of the interop suite's configuration (SQLite, bcrypt 4
    rounds, rate limits out of the way), with the per-room join limit (1 a
    second by default) lifted too so that a room of thousands can be built,
    and its listener on HTTPS so that Conduit reaches it by its name."""

    def __init__(self, workdir):
        place(self, "synapse", workdir, "synapse-stderr.log")
        self.start_synapse()
        self.proc, self.log = self.synapse, os.path.join(workdir, "synapse.log")

    def spawn_synapse(self):
        path = self.synapse_command[0][-1]
        with open(path) as f:
            config = json.load(f)
        cert, key = make_certificate(self.dir)
        config["listeners"][0]["tls"] = True
        config.update(tls_certificate_path=cert, tls_private_key_path=key,
                      rc_joins_per_room={"per_second": 1000, "burst_count": 1000})
        with open(path, "w") as f:
            json.dump(config, f, indent=1)
        super().spawn_synapse()

    def stop(self):
        interop.stop(self.synapse)


class Resident:
    """A server with one public room per size, the users registered once and
    reused: the room of 1,000 has the first 999 of the room of 10,000's."""

    def __init__(self, server, kind):
        self.server, self.kind = server, kind
        self.creator = interop.register(server.base, "creator")
        self.users = []
        self.rooms = {}

    def build(self, members):
        started = time.monotonic()
        room = self.creator.call(
            "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": f"{members} members"}
        )["room_id"]
        wanted = members - 1
        with concurrent.futures.ThreadPoolExecutor(BUILD_THREADS) as pool:
            fresh = list(pool.map(lambda i: interop.register(self.server.base, f"member{i}"),
                                  range(len(self.users), wanted)))
            self.users.extend(fresh)
            registered = time.monotonic()
            done = 0
            for _ in pool.map(lambda user: user.call("POST", f"/_matrix/client/v3/join/{enc(room)}", {}),
                              self.users[:wanted]):
                done += 1
                if done % max(1, wanted // 4) == 0:
                    print(f"  {self.kind}: {done}/{wanted} joined ({time.monotonic() - started:.0f} s)", flush=True)
        count = len(self.creator.call("GET", f"/_matrix/client/v3/rooms/{enc(room)}/joined_members")["joined"])
        assert count == members, f"the room has {count} members, not {members}"
        print(f"built {self.kind} room of {members}: {len(fresh)} users registered in {registered - started:.1f} s, "
              f"joined in {time.monotonic() - registered:.1f} s", flush=True)
        self.rooms[members] = room


def watch_for(joiner, room, text, since, deadline, seen):
    """Long-polls the joiner's /sync (lazy-loaded members, as clients ask)
    until `text` shows in the room's timeline; records when."""
    sync_filter = json.dumps({"room": {"state": {"lazy_load_members": True},
                                       "timeline": {"limit": 50, "lazy_load_members": True}}})
    while time.monotonic() < deadline and "at" not in seen and "stop" not in seen:
        try:
            status, body = call(joiner, "GET", "/_matrix/client/v3/sync",
                                query={"since": since, "timeout": "5000", "filter": sync_filter}, timeout=JOIN_TIMEOUT)
        except OSError as e:
            seen["error"] = repr(e)
            time.sleep(0.5)
            continue
        if status != 200:
            seen["error"] = f"{status} {body}"
            time.sleep(0.5)
            continue
        since = body["next_batch"]
        events = body.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
        if any(e.get("content", {}).get("body") == text for e in events):
            seen["at"] = time.monotonic()


def measure(joiner_kind, resident, members, joiner_server):
    """One join of the resident's room of `members` by `joiner_server`, just
    started; returns the figures as a dict (or with "error" when it failed)."""
    room = resident.rooms[members]
    result = {"pair": f"{joiner_kind}:{resident.kind}", "members": members}
    joiner = interop.register(joiner_server.base, "joiner")
    since = call(joiner, "GET", "/_matrix/client/v3/sync", query={"timeout": "0"})[1]["next_batch"]
    time.sleep(1)
    pid = joiner_server.proc.pid
    result["rss_before_mib"] = proc_status_kib(pid, "VmRSS") / 1024
    # The room's members, earlier joiners included, and the one joining.
    path = f"/_matrix/client/v3/rooms/{enc(room)}/joined_members"
    expected = len(resident.creator.call("GET", path)["joined"]) + 1
    text = f"first message {uuid.uuid4().hex}"
    seen = {}
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    watcher = threading.Thread(
        target=watch_for, args=(joiner, room, text, since, started + 2 * JOIN_TIMEOUT, seen), daemon=True
    )
    watcher.start()
    status, answer = call(joiner, "POST", f"/_matrix/client/v3/join/{enc(room)}", {},
                          query={"server_name": resident.server.name, "via": resident.server.name},
                          timeout=JOIN_TIMEOUT)
    result["join_s"] = time.monotonic() - started
    result["join_cpu_s"] = cpu_seconds(pid) - cpu_before
    if status != 200:
        result["error"] = f"join: {status} {answer}"
        seen["stop"] = True
        return result
    resident.creator.send_text(room, text)
    watcher.join(2 * JOIN_TIMEOUT)
    if "at" not in seen:
        result["error"] = f"the first message never showed in the joiner's /sync ({seen.get('error')})"
        return result
    result["first_message_s"] = seen["at"] - started
    result["peak_at_first_message_mib"] = proc_status_kib(pid, "VmHWM") / 1024
    # Until the joiner lists every member (Synapse may join with partial
    # state and fetch the rest afterwards), then the peak.
    deadline = time.monotonic() + MEMBERS_TIMEOUT
    count = 0
    while time.monotonic() < deadline:
        try:
            status, answer = call(joiner, "GET", path, timeout=MEMBERS_TIMEOUT)
            count = len(answer.get("joined", {})) if status == 200 else count
        except OSError:
            pass
        if count == expected:
            break
        time.sleep(0.5)
    result["all_members_s"] = time.monotonic() - started
    result["members_seen"] = count
    result["peak_mib"] = proc_status_kib(pid, "VmHWM") / 1024
    result["rss_after_mib"] = proc_status_kib(pid, "VmRSS") / 1024
    return result


def show(result):
    figures = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items() if k not in ("pair", "members")
    )
    print(f"{result['pair']} members={result['members']} {figures}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True, help="the conduit binary")
    parser.add_argument("--members", default="1000,10000", help="room sizes on Conduit, comma-separated")
    parser.add_argument("--synapse-members", default="1000", help="room sizes on Synapse (conduit:synapse)")
    parser.add_argument("--pairs", default="conduit:conduit,synapse:conduit,conduit:synapse",
                        help="joiner:resident pairs")
    parser.add_argument("--repeat", type=int, default=2, help="joins per pair and size")
    parser.add_argument("--keep", action="store_true", help="keep the servers' directories and logs")
    args = parser.parse_args()
    binary = os.path.abspath(args.binary)
    pairs = args.pairs.split(",")
    unknown = set(pairs) - {"conduit:conduit", "synapse:conduit", "conduit:synapse"}
    if unknown:
        raise SystemExit(f"unknown pairs: {sorted(unknown)}")
    sizes = {
        "conduit": sorted(int(n) for n in args.members.split(",") if n),
        "synapse": sorted(int(n) for n in args.synapse_members.split(",") if n),
    }
    use_unverified_tls()
    workdir = tempfile.mkdtemp(prefix="conduit-join-bench-")
    results, failed, n = [], False, 0
    try:
        for resident_kind in ("conduit", "synapse"):
            joiners = [p.split(":")[0] for p in pairs if p.endswith(":" + resident_kind)]
            if not joiners or not sizes[resident_kind]:
                continue
            if resident_kind == "conduit":
                server = Conduit(binary, os.path.join(workdir, "resident-conduit"))
            else:
                server = Synapse(os.path.join(workdir, "resident-synapse"))
            joiner_servers = []
            try:
                resident = Resident(server, resident_kind)
                for members in sizes[resident_kind]:
                    resident.build(members)
                    for _ in range(args.repeat):
                        for joiner_kind in joiners:
                            n += 1
                            where = os.path.join(workdir, f"joiner-{n}-{joiner_kind}-{members}")
                            joiner_server = Conduit(binary, where) if joiner_kind == "conduit" else Synapse(where)
                            joiner_servers.append(joiner_server)
                            result = measure(joiner_kind, resident, members, joiner_server)
                            failed = failed or "error" in result
                            results.append(result)
                            show(result)
                            if "error" in result:
                                log = "conduit.log" if joiner_kind == "conduit" else "synapse.log"
                                print(f"--- last lines of the joiner's log ---\n{interop.tail(os.path.join(where, log))}")
            finally:
                for joiner_server in joiner_servers + [server]:
                    joiner_server.stop()
    finally:
        if args.keep or failed:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\npair (joiner:resident), members, join s (joiner CPU s), first message s, all members s, "
          "RSS before / peak MiB")
    for r in results:
        if "error" in r:
            print(f"{r['pair']}, {r['members']}, FAILED: {r['error']}")
        else:
            print(f"{r['pair']}, {r['members']}, {r['join_s']:.2f} ({r['join_cpu_s']:.2f}), {r['first_message_s']:.2f}, "
                  f"{r['all_members_s']:.2f}, {r['rss_before_mib']:.1f} / {r['peak_mib']:.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
